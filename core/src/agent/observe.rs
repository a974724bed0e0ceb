//! What a session has seen: each endpoint's connections and bytes, the recent
//! connections and the tunnel's health. The agent API, the CLI's console and the
//! Prometheus metrics all read this one state.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// How many connections the recent list keeps.
const RECENT: usize = 100;
/// How many connection durations the percentiles are computed from.
const DURATION_SAMPLES: usize = 1024;
/// The longest rate window (15 minutes), in one-second buckets.
const RATE_SECONDS: usize = 900;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Buckets for times from 1 ms to about 33 s.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// A session's observations and the Prometheus registry that exports them.
pub(crate) struct Observer {
    registry: Registry,
    shared: Arc<Shared>,
}

/// What the registry's collector and the session both hold.
#[derive(Debug)]
struct Shared {
    started: Instant,
    endpoints: Mutex<Vec<Arc<EndpointStats>>>,
    recent: Arc<Recent>,
    reconnects: Counter,
    heartbeat: Histogram,
    last_heartbeat: Mutex<Option<Duration>>,
    tunnels_up: Gauge,
}

impl Observer {
    pub(crate) fn new() -> Self {
        let shared = Arc::new(Shared {
            started: Instant::now(),
            endpoints: Mutex::new(Vec::new()),
            recent: Arc::new(Recent::default()),
            reconnects: Counter::default(),
            heartbeat: seconds_histogram(),
            last_heartbeat: Mutex::new(None),
            tunnels_up: Gauge::default(),
        });
        let mut registry = Registry::default();
        registry.register(
            "burrow_agent_reconnects",
            "Tunnel connections re-established after a loss",
            shared.reconnects.clone(),
        );
        registry.register(
            "burrow_agent_heartbeat_rtt_seconds",
            "Round trip of the session's heartbeats",
            shared.heartbeat.clone(),
        );
        registry.register(
            "burrow_agent_tunnels_connected",
            "Tunnel connections (one per edge) that are up",
            shared.tunnels_up.clone(),
        );
        registry.register_collector(Box::new(EndpointCollector(shared.clone())));
        Observer { registry, shared }
    }

    /// The Prometheus text exposition of everything observed.
    pub(crate) fn metrics_text(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Starts observing an endpoint that is about to be bound.
    pub(crate) fn endpoint(&self, info: EndpointInfo) -> Arc<EndpointStats> {
        let stats = Arc::new(EndpointStats::new(info, self.shared.recent.clone()));
        lock(&self.shared.endpoints).push(stats.clone());
        stats
    }

    /// Stops observing endpoint `id` (closed, or its bind failed).
    pub(crate) fn endpoint_closed(&self, id: &str) {
        lock(&self.shared.endpoints).retain(|e| e.info.id != id);
    }

    pub(crate) fn heartbeat(&self, rtt: Duration) {
        self.shared.heartbeat.observe(rtt.as_secs_f64());
        *lock(&self.shared.last_heartbeat) = Some(rtt);
    }

    pub(crate) fn reconnected(&self) {
        self.shared.reconnects.inc();
    }

    pub(crate) fn set_tunnels_up(&self, n: usize) {
        self.shared.tunnels_up.set(n as i64);
    }

    /// The last answered heartbeat's round trip.
    pub(crate) fn last_heartbeat(&self) -> Option<Duration> {
        *lock(&self.shared.last_heartbeat)
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.shared.started.elapsed()
    }

    pub(crate) fn reconnects(&self) -> u64 {
        self.shared.reconnects.get()
    }

    /// Every endpoint's status, in the order they were bound.
    pub(crate) fn endpoints(&self) -> Vec<EndpointStatus> {
        let endpoints = lock(&self.shared.endpoints).clone();
        endpoints
            .iter()
            .filter(|e| e.url.get().is_some())
            .map(|e| e.status())
            .collect()
    }

    /// The most recent connections, newest first.
    pub(crate) fn recent(&self) -> Vec<ConnectionRecord> {
        self.shared.recent.list()
    }
}

/// What the session's user said about an endpoint, before it is bound.
#[derive(Debug, Clone)]
pub(crate) struct EndpointInfo {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) terminate_at: super::TerminateAt,
    pub(crate) metadata: String,
}

/// One endpoint's live counters.
#[derive(Debug)]
pub(crate) struct EndpointStats {
    info: EndpointInfo,
    url: std::sync::OnceLock<String>,
    forwards_to: Mutex<String>,
    connections: Counter,
    open: Gauge,
    bytes_in: Counter,
    bytes_out: Counter,
    refused: Counter,
    dial_failures: Counter,
    dial_seconds: Histogram,
    durations_hist: Histogram,
    opened: Mutex<Window>,
    durations: Mutex<VecDeque<Duration>>,
    recent: Arc<Recent>,
}

impl EndpointStats {
    fn new(info: EndpointInfo, recent: Arc<Recent>) -> Self {
        EndpointStats {
            info,
            url: std::sync::OnceLock::new(),
            forwards_to: Mutex::new(String::new()),
            connections: Counter::default(),
            open: Gauge::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            refused: Counter::default(),
            dial_failures: Counter::default(),
            dial_seconds: seconds_histogram(),
            durations_hist: seconds_histogram(),
            opened: Mutex::new(Window::default()),
            durations: Mutex::new(VecDeque::new()),
            recent,
        }
    }

    /// The edge bound the endpoint at `url`.
    pub(crate) fn bound(&self, url: &str) {
        let _ = self.url.set(url.to_owned());
    }

    pub(crate) fn set_forwards_to(&self, upstream: &str) {
        *lock(&self.forwards_to) = upstream.to_owned();
    }

    fn url(&self) -> &str {
        self.url.get().map_or("", String::as_str)
    }

    /// A connection arrived for this endpoint; its [`ConnTrack`] reports its end.
    pub(crate) fn opened(
        self: &Arc<Self>,
        client_addr: SocketAddr,
        sni: Option<&str>,
    ) -> ConnTrack {
        self.connections.inc();
        self.open.inc();
        lock(&self.opened).mark(self.recent.started.elapsed());
        let id = self.recent.arrived(self.url(), client_addr, sni, "open");
        ConnTrack {
            stats: self.clone(),
            id,
            opened: Instant::now(),
            bytes_in: 0,
            bytes_out: 0,
            outcome: None,
        }
    }

    /// A connection for this endpoint that never reached it (`why`).
    pub(crate) fn refused(&self, client_addr: SocketAddr, sni: Option<&str>, why: &str) {
        self.refused.inc();
        self.recent.arrived(self.url(), client_addr, sni, why);
    }

    /// An upstream dial that took `took`, and whether it worked.
    pub(crate) fn dialled(&self, took: Duration, ok: bool) {
        self.dial_seconds.observe(took.as_secs_f64());
        if !ok {
            self.dial_failures.inc();
        }
    }

    fn status(&self) -> EndpointStatus {
        let now = self.recent.started.elapsed();
        let (rate1, rate5, rate15) = {
            let mut window = lock(&self.opened);
            (
                window.rate(now, 60),
                window.rate(now, 300),
                window.rate(now, 900),
            )
        };
        let mut samples: Vec<f64> = lock(&self.durations)
            .iter()
            .map(|d| d.as_nanos() as f64)
            .collect();
        samples.sort_by(f64::total_cmp);
        let pct = |p: f64| percentile(&samples, p);
        let url = self.url().to_owned();
        EndpointStatus {
            id: self.info.id.clone(),
            name: self.info.name.clone(),
            proto: url.split_once("://").map_or("", |(s, _)| s).to_owned(),
            url,
            terminate_at: self.info.terminate_at.to_string(),
            forwards_to: lock(&self.forwards_to).clone(),
            metadata: self.info.metadata.clone(),
            conns: ConnMetrics {
                count: self.connections.get(),
                gauge: self.open.get(),
                rate1,
                rate5,
                rate15,
                p50: pct(0.50),
                p90: pct(0.90),
                p95: pct(0.95),
                p99: pct(0.99),
            },
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            refused: self.refused.get(),
            dial_failures: self.dial_failures.get(),
        }
    }
}

/// The `p` quantile of sorted `samples` (0 when there are none).
fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let rank = (p * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// One connection's life, carried by its `Conn`: it counts the bytes and reports the
/// end (with its outcome) when dropped.
#[derive(Debug)]
pub(crate) struct ConnTrack {
    stats: Arc<EndpointStats>,
    id: u64,
    opened: Instant,
    bytes_in: u64,
    bytes_out: u64,
    outcome: Option<String>,
}

impl ConnTrack {
    /// Bytes the public client sent.
    pub(crate) fn read(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.bytes_in += n as u64;
        self.stats.bytes_in.inc_by(n as u64);
    }

    /// Bytes sent to the public client.
    pub(crate) fn wrote(&mut self, n: usize) {
        self.bytes_out += n as u64;
        self.stats.bytes_out.inc_by(n as u64);
    }

    /// Why the connection failed, shown as its outcome.
    pub(crate) fn failed(&mut self, why: impl Into<String>) {
        self.outcome = Some(why.into());
    }

    pub(crate) fn stats(&self) -> &Arc<EndpointStats> {
        &self.stats
    }
}

impl Drop for ConnTrack {
    fn drop(&mut self) {
        let took = self.opened.elapsed();
        let stats = &self.stats;
        stats.open.dec();
        stats.durations_hist.observe(took.as_secs_f64());
        {
            let mut durations = lock(&stats.durations);
            if durations.len() == DURATION_SAMPLES {
                durations.pop_front();
            }
            durations.push_back(took);
        }
        let outcome = self.outcome.take().unwrap_or_else(|| "closed".into());
        stats
            .recent
            .closed(self.id, outcome, took, self.bytes_in, self.bytes_out);
    }
}

/// The last [`RECENT`] connections of every endpoint (of a session, or of an edge).
#[derive(Debug)]
pub(crate) struct Recent {
    started: Instant,
    next: AtomicU64,
    list: Mutex<VecDeque<Entry>>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    record: ConnectionRecord,
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            started: Instant::now(),
            next: AtomicU64::new(1),
            list: Mutex::new(VecDeque::with_capacity(RECENT)),
        }
    }
}

impl Recent {
    /// A connection to `endpoint` arrived now, with `outcome` so far (`open`, or why it
    /// was refused); the id lets [`Self::closed`] record its end.
    pub(crate) fn arrived(
        &self,
        endpoint: &str,
        client_addr: SocketAddr,
        sni: Option<&str>,
        outcome: &str,
    ) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let record = ConnectionRecord {
            time: SystemTime::now(),
            endpoint: endpoint.to_owned(),
            client_addr,
            sni: sni.map(str::to_owned),
            outcome: outcome.to_owned(),
            duration: None,
            bytes_in: 0,
            bytes_out: 0,
        };
        let mut list = lock(&self.list);
        if list.len() == RECENT {
            list.pop_front();
        }
        list.push_back(Entry { id, record });
        id
    }

    /// Connection `id` ended after `took`, having carried these bytes (if it is still
    /// in the list).
    pub(crate) fn closed(
        &self,
        id: u64,
        outcome: String,
        took: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let mut list = lock(&self.list);
        if let Some(entry) = list.iter_mut().rev().find(|e| e.id == id) {
            let r = &mut entry.record;
            r.outcome = outcome;
            r.duration = Some(took);
            r.bytes_in = bytes_in;
            r.bytes_out = bytes_out;
        }
    }

    /// The connections, newest first.
    pub(crate) fn list(&self) -> Vec<ConnectionRecord> {
        lock(&self.list)
            .iter()
            .rev()
            .map(|e| e.record.clone())
            .collect()
    }
}

/// Connections opened per second over the last 15 minutes.
#[derive(Debug)]
struct Window {
    buckets: Box<[u32; RATE_SECONDS]>,
    /// The second (since the session started) the newest bucket counts.
    now: u64,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            buckets: Box::new([0; RATE_SECONDS]),
            now: 0,
        }
    }
}

impl Window {
    /// Moves the window to second `at`, emptying the buckets it passes.
    fn advance(&mut self, at: Duration) {
        let sec = at.as_secs();
        if sec <= self.now {
            return;
        }
        let passed = (sec - self.now).min(RATE_SECONDS as u64);
        for s in (sec + 1 - passed)..=sec {
            self.buckets[(s % RATE_SECONDS as u64) as usize] = 0;
        }
        self.now = sec;
    }

    fn mark(&mut self, at: Duration) {
        self.advance(at);
        let slot = &mut self.buckets[(self.now % RATE_SECONDS as u64) as usize];
        *slot = slot.saturating_add(1);
    }

    /// Connections per second over the last `seconds`.
    fn rate(&mut self, at: Duration, seconds: u64) -> f64 {
        self.advance(at);
        let seconds = seconds.clamp(1, RATE_SECONDS as u64);
        let sum: u64 = (0..seconds)
            .filter(|back| *back <= self.now)
            .map(|back| u64::from(self.buckets[((self.now - back) % RATE_SECONDS as u64) as usize]))
            .sum();
        sum as f64 / seconds as f64
    }
}

/// Exports every endpoint's counters under an `endpoint` label (its URL: as many label
/// values as the session has endpoints).
#[derive(Debug)]
struct EndpointCollector(Arc<Shared>);

impl Collector for EndpointCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let endpoints: Vec<Arc<EndpointStats>> = lock(&self.0.endpoints)
            .iter()
            .filter(|e| e.url.get().is_some())
            .cloned()
            .collect();
        let gauge = Gauge::<i64>::default();
        gauge.set(endpoints.len() as i64);
        gauge.encode(encoder.encode_descriptor(
            "burrow_agent_endpoints",
            "Endpoints the session serves",
            None,
            gauge.metric_type(),
        )?)?;
        encode_each(
            &mut encoder,
            &endpoints,
            "burrow_agent_connections",
            "Connections delivered to the endpoint",
            |e| &e.connections,
        )?;
        encode_each(
            &mut encoder,
            &endpoints,
            "burrow_agent_connections_open",
            "Connections open now",
            |e| &e.open,
        )?;
        encode_each(
            &mut encoder,
            &endpoints,
            "burrow_agent_connections_refused",
            "Connections dropped before the endpoint took them (agent TLS handshake failed, too many pending)",
            |e| &e.refused,
        )?;
        encode_each(
            &mut encoder,
            &endpoints,
            "burrow_agent_bytes_in",
            "Bytes from public clients",
            |e| &e.bytes_in,
        )?;
        encode_each(
            &mut encoder,
            &endpoints,
            "burrow_agent_bytes_out",
            "Bytes to public clients",
            |e| &e.bytes_out,
        )?;
        encode_each(
            &mut encoder,
            &endpoints,
            "burrow_agent_upstream_dial_failures",
            "Upstream dials that failed",
            |e| &e.dial_failures,
        )?;
        encode_each(
            &mut encoder,
            &endpoints,
            "burrow_agent_upstream_dial_seconds",
            "Time to dial the upstream",
            |e| &e.dial_seconds,
        )?;
        encode_each(
            &mut encoder,
            &endpoints,
            "burrow_agent_connection_duration_seconds",
            "How long connections lasted",
            |e| &e.durations_hist,
        )
    }
}

/// Encodes one family: `metric(e)` of every endpoint, labelled with its URL.
fn encode_each<M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder,
    endpoints: &[Arc<EndpointStats>],
    name: &str,
    help: &str,
    metric: impl Fn(&EndpointStats) -> &M,
) -> Result<(), std::fmt::Error> {
    let Some(first) = endpoints.first() else {
        return Ok(());
    };
    let mut family = encoder.encode_descriptor(name, help, None, metric(first).metric_type())?;
    for e in endpoints {
        let labels = [("endpoint", e.url())];
        metric(e).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// An endpoint as the agent API and the console show it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointStatus {
    /// The endpoint id.
    pub id: String,
    /// Its name: the config file's, `command_line` for the CLI's, else the id.
    pub name: String,
    /// The public URL.
    pub url: String,
    /// The URL's scheme: `https`, `http`, `tls` or `tcp`.
    pub proto: String,
    /// Where TLS is terminated (`edge`, `agent` or `upstream`).
    pub terminate_at: String,
    /// The upstream it forwards to (empty for a listener the user accepts from).
    pub forwards_to: String,
    /// The endpoint's metadata.
    pub metadata: String,
    /// Connection counters, under ngrok's names.
    pub conns: ConnMetrics,
    /// Bytes from public clients.
    pub bytes_in: u64,
    /// Bytes to public clients.
    pub bytes_out: u64,
    /// Connections dropped before the endpoint took them.
    pub refused: u64,
    /// Upstream dials that failed.
    pub dial_failures: u64,
}

/// ngrok's connection metrics: counts, per-second rates over 1, 5 and 15 minutes, and
/// duration percentiles in nanoseconds (over the last 1,024 connections).
#[derive(Debug, Clone, Serialize)]
pub struct ConnMetrics {
    /// Connections in all.
    pub count: u64,
    /// Connections open now.
    pub gauge: i64,
    /// Connections per second over the last minute.
    pub rate1: f64,
    /// Over the last 5 minutes.
    pub rate5: f64,
    /// Over the last 15 minutes.
    pub rate15: f64,
    /// Median duration (ns).
    pub p50: f64,
    /// 90th percentile duration (ns).
    pub p90: f64,
    /// 95th percentile duration (ns).
    pub p95: f64,
    /// 99th percentile duration (ns).
    pub p99: f64,
}

/// One recent connection.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionRecord {
    /// When it arrived.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// The endpoint's URL.
    pub endpoint: String,
    /// The public client's address.
    pub client_addr: SocketAddr,
    /// The SNI it sent, if any.
    pub sni: Option<String>,
    /// `open`, `closed`, or why it failed.
    pub outcome: String,
    /// How long it lasted, once closed (milliseconds in JSON).
    #[serde(serialize_with = "millis", rename = "duration_ms")]
    pub duration: Option<Duration>,
    /// Bytes from the client.
    pub bytes_in: u64,
    /// Bytes to the client.
    pub bytes_out: u64,
}

/// `time` as RFC 3339 (UTC), as ngrok's API writes times.
pub(crate) fn rfc3339_string(time: SystemTime) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from(time)
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339_string(*time))
}

fn millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_secs_f64() * 1000.0)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_count_the_last_window_only() {
        let mut w = Window::default();
        for _ in 0..60 {
            w.mark(Duration::from_secs(10));
        }
        assert_eq!(w.rate(Duration::from_secs(10), 60), 1.0);
        // 61 s later the minute window is empty, the 5-minute one is not.
        assert_eq!(w.rate(Duration::from_secs(71), 60), 0.0);
        assert_eq!(w.rate(Duration::from_secs(71), 300), 0.2);
        // Past 15 minutes, everything is gone, even after a long silence.
        assert_eq!(w.rate(Duration::from_secs(5000), 900), 0.0);
    }

    #[test]
    fn percentiles_of_sorted_samples() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 0.5), 51.0);
        assert_eq!(percentile(&s, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
