//! The edge's Prometheus metrics: one registry per [`super::Edge`] (no global recorder,
//! so an edge embedded in someone's process never clashes with their metrics).
//!
//! Every family is named `burrow_edge_*` and owned by [`EdgeMetrics`]. Labels are
//! bounded: refusal reasons, protocol names, status classes and error codes are fixed
//! sets; endpoint URLs appear only with `metrics_per_endpoint = true`. Values the edge
//! already keeps elsewhere (sessions, endpoints, ACME counters, the cluster lease) are
//! copied into the registry when it is scraped ([`refresh`]).

use super::Shared;
use crate::agent::Recent;
use crate::error::ErrorCode;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The content type of [`EdgeMetrics::text`] (OpenMetrics text).
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One fixed label.
type Label = [(&'static str, &'static str); 1];
/// An endpoint's protocol and where TLS ends.
type EndpointLabels = [(&'static str, &'static str); 2];
/// An endpoint's URL (opt-in: `metrics_per_endpoint`).
type UrlLabel = [(&'static str, String); 1];

/// Why the edge turned a public connection (or, for http endpoints, a request) away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The ClientHello carries no SNI.
    NoSni,
    /// No endpoint serves the name (or, for http, the `Host`).
    UnknownName,
    /// The endpoint's traffic policy denied the client.
    PolicyDeny,
    /// The endpoint's `allow_cidrs` / `deny_cidrs` refused the client's address.
    IpRestriction,
    /// A rate limit (an http endpoint's `rate-limit` action) refused the request.
    RateLimited,
    /// A configured limit (ClientHello size, streams per session) was reached.
    Limits,
    /// The ClientHello was invalid, or the edge's TLS handshake failed.
    HandshakeFailed,
    /// No complete ClientHello arrived in time.
    HelloTimeout,
    /// The endpoint's agent could not be reached (its tunnel just ended).
    AgentUnavailable,
    /// No other edge of the cluster could take a connection this edge forwards.
    EdgeUnreachable,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::NoSni => "no_sni",
            Refusal::UnknownName => "unknown_name",
            Refusal::PolicyDeny => "policy_deny",
            Refusal::IpRestriction => "ip_restriction",
            Refusal::RateLimited => "rate_limited",
            Refusal::Limits => "limits",
            Refusal::HandshakeFailed => "handshake_failed",
            Refusal::HelloTimeout => "hello_timeout",
            Refusal::AgentUnavailable => "agent_unavailable",
            Refusal::EdgeUnreachable => "edge_unreachable",
        }
    }

    /// A connection-phase policy denial: a `deny` action, else an IP restriction
    /// (`allow_cidrs` / `deny_cidrs` or `restrict-ips`), told apart by the verdict's reason.
    pub(crate) fn of_policy(reason: &str) -> Refusal {
        if reason.starts_with("denied by a deny action") {
            Refusal::PolicyDeny
        } else {
            Refusal::IpRestriction
        }
    }
}

/// Every metric family of one edge, and the registry that encodes them.
pub(crate) struct EdgeMetrics {
    registry: Registry,
    per_endpoint: bool,
    /// Authenticated agent sessions (set when scraped).
    sessions: Gauge,
    /// Agent sessions refused, by error code.
    sessions_refused: Family<Label, Counter>,
    /// Bound endpoints by `proto` and `termination` (set when scraped).
    endpoints: Family<EndpointLabels, Gauge>,
    /// Binds refused, by error code.
    binds_refused: Family<Label, Counter>,
    /// Public connections accepted on the TLS, HTTP and TCP endpoint listeners.
    accepted: Counter,
    /// Public connections (http: requests) refused, by reason.
    refused: Family<Label, Counter>,
    /// Public connections open now.
    active: Gauge,
    /// Bytes from public clients to agents.
    pub(crate) bytes_in: Counter,
    /// Bytes from agents to public clients.
    pub(crate) bytes_out: Counter,
    /// The last connections to agents, for the status page.
    pub(crate) recent: Arc<Recent>,
    /// When the edge started.
    pub(crate) started: Instant,
    /// Time to read a complete ClientHello.
    hello_seconds: Histogram,
    /// Time of the edge's TLS handshakes (edge-terminated endpoints).
    handshake_seconds: Histogram,
    /// Time to serve a `Bind` (success or refusal).
    bind_seconds: Histogram,
    /// Time between two heartbeats from the same agent.
    heartbeat_gap_seconds: Histogram,
    /// Heartbeat round trips, as the agents measured and reported them.
    heartbeat_rtt_seconds: Histogram,
    /// ACME events (`event`: order, renewal, failure, loaded, validation), copied when scraped.
    acme: Family<Label, Counter>,
    /// 1 while this edge holds its cluster lease and serves, else 0 (0 alone).
    cluster_lease: Gauge,
    /// Connections routed to another edge of the cluster.
    remote_lookups: Counter,
    /// Streams between edges of the cluster, by `direction` (out, in).
    link_streams: Family<Label, Counter>,
    /// HTTP responses of http endpoints, by status `class` (1xx..5xx).
    http_responses: Family<Label, Counter>,
    /// Per-endpoint connections (opt-in), copied when scraped.
    endpoint_connections: Family<UrlLabel, Counter>,
    /// Per-endpoint bytes in (opt-in), copied when scraped.
    endpoint_bytes_in: Family<UrlLabel, Counter>,
    /// Per-endpoint bytes out (opt-in), copied when scraped.
    endpoint_bytes_out: Family<UrlLabel, Counter>,
}

fn seconds_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl EdgeMetrics {
    /// Registers every family in a fresh registry.
    pub(crate) fn new(per_endpoint: bool) -> EdgeMetrics {
        let mut m = EdgeMetrics {
            registry: Registry::with_prefix("burrow_edge"),
            per_endpoint,
            sessions: Gauge::default(),
            sessions_refused: Family::default(),
            endpoints: Family::default(),
            binds_refused: Family::default(),
            accepted: Counter::default(),
            refused: Family::default(),
            active: Gauge::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            recent: Arc::new(Recent::default()),
            started: Instant::now(),
            hello_seconds: seconds_histogram(),
            handshake_seconds: seconds_histogram(),
            bind_seconds: seconds_histogram(),
            heartbeat_gap_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            heartbeat_rtt_seconds: seconds_histogram(),
            acme: Family::default(),
            cluster_lease: Gauge::default(),
            remote_lookups: Counter::default(),
            link_streams: Family::default(),
            http_responses: Family::default(),
            endpoint_connections: Family::default(),
            endpoint_bytes_in: Family::default(),
            endpoint_bytes_out: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "sessions",
            "Authenticated agent sessions",
            m.sessions.clone(),
        );
        r.register(
            "sessions_refused",
            "Agent sessions refused, by error code",
            m.sessions_refused.clone(),
        );
        r.register(
            "endpoints",
            "Bound endpoints by proto and termination",
            m.endpoints.clone(),
        );
        r.register(
            "binds_refused",
            "Bind requests refused, by error code",
            m.binds_refused.clone(),
        );
        r.register(
            "public_connections_accepted",
            "Public connections accepted (TLS, plain HTTP and TCP endpoint listeners)",
            m.accepted.clone(),
        );
        r.register(
            "public_connections_refused",
            "Public connections (for http endpoints: requests) refused, by reason",
            m.refused.clone(),
        );
        r.register(
            "public_connections_active",
            "Public connections open now",
            m.active.clone(),
        );
        r.register(
            "bytes_in",
            "Bytes from public clients to agents",
            m.bytes_in.clone(),
        );
        r.register(
            "bytes_out",
            "Bytes from agents to public clients",
            m.bytes_out.clone(),
        );
        r.register(
            "client_hello_seconds",
            "Time to read a public client's complete ClientHello",
            m.hello_seconds.clone(),
        );
        r.register(
            "tls_handshake_seconds",
            "Time of the edge's TLS handshakes with public clients (edge termination)",
            m.handshake_seconds.clone(),
        );
        r.register(
            "bind_seconds",
            "Time to serve an agent's Bind request",
            m.bind_seconds.clone(),
        );
        r.register(
            "heartbeat_gap_seconds",
            "Time between two heartbeats received from the same agent",
            m.heartbeat_gap_seconds.clone(),
        );
        r.register(
            "heartbeat_rtt_seconds",
            "Heartbeat round trips of the sessions, as their agents measured them",
            m.heartbeat_rtt_seconds.clone(),
        );
        r.register(
            "acme_events",
            "ACME events by event (order, renewal, failure, loaded, validation)",
            m.acme.clone(),
        );
        r.register(
            "cluster_lease",
            "1 while this edge holds its cluster lease and serves, else 0",
            m.cluster_lease.clone(),
        );
        r.register(
            "cluster_remote_lookups",
            "Public connections routed to another edge of the cluster",
            m.remote_lookups.clone(),
        );
        r.register(
            "cluster_link_streams",
            "Streams between edges of the cluster, by direction",
            m.link_streams.clone(),
        );
        r.register(
            "http_responses",
            "HTTP responses of http endpoints, by status class",
            m.http_responses.clone(),
        );
        if per_endpoint {
            r.register(
                "endpoint_connections",
                "Connections (tunnel streams) per endpoint URL",
                m.endpoint_connections.clone(),
            );
            r.register(
                "endpoint_bytes_in",
                "Bytes from public clients per endpoint URL",
                m.endpoint_bytes_in.clone(),
            );
            r.register(
                "endpoint_bytes_out",
                "Bytes to public clients per endpoint URL",
                m.endpoint_bytes_out.clone(),
            );
        }
        m
    }

    /// A public connection was accepted; the guard counts it as active until dropped.
    pub(crate) fn accepted(&self) -> ActiveGuard {
        self.accepted.inc();
        self.active.inc();
        ActiveGuard(self.active.clone())
    }

    /// Public connections open now.
    pub(crate) fn active(&self) -> i64 {
        self.active.get()
    }

    /// A public connection (or http request) was refused.
    pub(crate) fn refused(&self, why: Refusal) {
        self.refused.get_or_create(&[("reason", why.label())]).inc();
    }

    /// An agent session was refused with `code`.
    pub(crate) fn session_refused(&self, code: ErrorCode) {
        self.sessions_refused
            .get_or_create(&[("code", code.as_str())])
            .inc();
    }

    /// A bind was refused with `code`.
    pub(crate) fn bind_refused(&self, code: ErrorCode) {
        self.binds_refused
            .get_or_create(&[("code", code.as_str())])
            .inc();
    }

    /// A complete ClientHello took `took` to read.
    pub(crate) fn hello(&self, took: Duration) {
        self.hello_seconds.observe(took.as_secs_f64());
    }

    /// An edge TLS handshake took `took`.
    pub(crate) fn handshake(&self, took: Duration) {
        self.handshake_seconds.observe(took.as_secs_f64());
    }

    /// A bind took `took`.
    pub(crate) fn bind(&self, took: Duration) {
        self.bind_seconds.observe(took.as_secs_f64());
    }

    /// An agent's heartbeat came `gap` after its previous one.
    pub(crate) fn heartbeat_gap(&self, gap: Duration) {
        self.heartbeat_gap_seconds.observe(gap.as_secs_f64());
    }

    /// An agent reported the round trip of its last heartbeat.
    pub(crate) fn heartbeat_rtt(&self, rtt: Duration) {
        self.heartbeat_rtt_seconds.observe(rtt.as_secs_f64());
    }

    /// A connection was routed to another edge.
    pub(crate) fn remote_lookup(&self) {
        self.remote_lookups.inc();
    }

    /// A stream between edges was opened (`"out"`) or accepted (`"in"`).
    pub(crate) fn link_stream(&self, direction: &'static str) {
        self.link_streams
            .get_or_create(&[("direction", direction)])
            .inc();
    }

    /// An http endpoint answered with `status`.
    pub(crate) fn http_response(&self, status: http::StatusCode) {
        let class = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http_responses.get_or_create(&[("class", class)]).inc();
    }

    /// The registry in the OpenMetrics text format.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// Counts one public connection as active while it lives.
pub(crate) struct ActiveGuard(Gauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Copies the values the edge keeps elsewhere into the registry, then encodes it.
pub(crate) fn scrape(shared: &Shared) -> String {
    let m = &shared.metrics;
    m.sessions.set(shared.sessions().len() as i64);
    let endpoints = shared.endpoints();
    m.endpoints.clear();
    for e in endpoints.values() {
        m.endpoints
            .get_or_create(&[("proto", e.proto), ("termination", e.termination)])
            .inc();
    }
    if m.per_endpoint {
        m.endpoint_connections.clear();
        m.endpoint_bytes_in.clear();
        m.endpoint_bytes_out.clear();
        for e in endpoints.values() {
            let label = [("endpoint", e.url.clone())];
            let s = &e.stats;
            let set = |family: &Family<UrlLabel, Counter>, v: u64| {
                family
                    .get_or_create(&label)
                    .inner()
                    .store(v, Ordering::Relaxed);
            };
            set(&m.endpoint_connections, s.connections());
            set(&m.endpoint_bytes_in, s.bytes_in());
            set(&m.endpoint_bytes_out, s.bytes_out());
        }
    }
    drop(endpoints);
    if let Some(acme) = &shared.acme {
        let c = acme.counters();
        for (event, v) in [
            ("order", c.orders),
            ("renewal", c.renewals),
            ("failure", c.failures),
            ("loaded", c.loaded),
            ("validation", c.validations),
        ] {
            m.acme
                .get_or_create(&[("event", event)])
                .inner()
                .store(v, Ordering::Relaxed);
        }
    }
    let serving = shared.cluster.as_ref().is_some_and(|c| c.is_serving());
    m.cluster_lease.set(i64::from(serving));
    m.text()
}

/// Live counters of one endpoint (the admin API's `/api/endpoints`).
#[derive(Debug, Default)]
pub struct EndpointStats {
    url: std::sync::OnceLock<String>,
    connections: AtomicU64,
    open: AtomicI64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl EndpointStats {
    /// The edge bound the endpoint at `url`.
    pub(crate) fn bound(&self, url: &str) {
        let _ = self.url.set(url.to_owned());
    }

    /// Connections (tunnel streams) opened to the endpoint's agent so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Connections (tunnel streams) open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed).max(0) as u64
    }

    /// Bytes from public clients to the agent.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Bytes from the agent to public clients.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }
}

/// A tunnel stream to an endpoint's agent that counts the bytes through it (one
/// relaxed atomic add per read or write; no lock) and is counted as open while it lives.
pub(crate) struct Counted<S> {
    inner: S,
    stats: Arc<EndpointStats>,
    bytes_in: Counter,
    bytes_out: Counter,
    /// This connection in the edge's recent list, and what it carried.
    recent: Arc<Recent>,
    record: u64,
    opened: Instant,
    conn_in: u64,
    conn_out: u64,
}

/// Who a counted stream serves: the public client's address and SNI.
pub(crate) struct StreamClient<'a> {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) sni: Option<&'a str>,
}

impl<S> Counted<S> {
    /// Wraps a freshly opened stream to the endpoint `stats` belongs to.
    pub(crate) fn new(
        inner: S,
        stats: Arc<EndpointStats>,
        metrics: &EdgeMetrics,
        client: StreamClient<'_>,
    ) -> Self {
        stats.connections.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let url = stats.url.get().map_or("", String::as_str);
        let record = metrics.recent.arrived(url, client.addr, client.sni, "open");
        Counted {
            inner,
            stats,
            bytes_in: metrics.bytes_in.clone(),
            bytes_out: metrics.bytes_out.clone(),
            recent: metrics.recent.clone(),
            record,
            opened: Instant::now(),
            conn_in: 0,
            conn_out: 0,
        }
    }
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
        let (took, conn_in, conn_out) = (self.opened.elapsed(), self.conn_in, self.conn_out);
        self.recent
            .closed(self.record, "closed".into(), took, conn_in, conn_out);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.stats.bytes_out.fetch_add(n, Ordering::Relaxed);
            self.bytes_out.inc_by(n);
            self.conn_out += n;
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            let n = *n as u64;
            self.stats.bytes_in.fetch_add(n, Ordering::Relaxed);
            self.bytes_in.inc_by(n);
            self.conn_in += n;
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
