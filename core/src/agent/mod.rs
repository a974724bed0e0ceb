//! The agent: a session with an edge, its endpoints, and forwarding to upstreams.

mod api;
mod builder;
pub mod config;
mod conn;
mod edges;
mod hooks;
pub mod http;
mod listener;
mod observe;
pub mod options;
mod proxy_proto;
mod runner;
mod spec;
mod status_page;
mod tunnel;
mod upstream;

pub use api::{parse_web_addr, AgentApi, ApiKind, DEFAULT_WEB_ADDR};
pub use builder::{
    EndpointBuilder, HttpEndpointBuilder, HttpKind, TcpEndpointBuilder, TcpKind,
    TlsEndpointBuilder, TlsKind,
};
pub use conn::Conn;
pub use hooks::{CommandHook, DisconnectHook, HeartbeatHook, UpdateHook, UpdateRequest};
pub use listener::{Forwarder, Listener};
pub(crate) use observe::{rfc3339_string, Recent};
pub use observe::{ConnMetrics, ConnectionRecord, EndpointStatus};
pub use options::{ForwardOptions, OptionValue, Scope, SessionOptions};
pub use proxy_proto::ProxyProto;
pub(crate) use spec::{http_phases_refused, tcp_pooling_refused};
pub use spec::{CertPem, EndpointKind, EndpointSpec, TerminateAt, Termination, TlsMaterial};
pub(crate) use status_page::page_response;
pub use status_page::{status_page_csp, status_page_headers, STATUS_PAGE};
pub use upstream::Upstream;

use crate::edge::Edge;
use crate::error::{Error, ErrorCode, Result};
use crate::wire::{BindSpec, ClientInfo, SecretPem};
use edges::Edges;
use hooks::Hooks;
use runner::Runner;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// Environment variable read by [`SessionBuilder::authtoken_from_env`].
pub const AUTHTOKEN_ENV: &str = "BURROW_AUTHTOKEN";
/// Fallback for drop-in use with ngrok's environment.
pub const NGROK_AUTHTOKEN_ENV: &str = "NGROK_AUTHTOKEN";
/// Environment variable naming the edge's tunnel address.
pub const SERVER_ADDR_ENV: &str = "BURROW_SERVER_ADDR";

const BIND_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_PENDING: usize = 1024;

/// Configures and opens a [`Session`].
#[derive(Default)]
pub struct SessionBuilder {
    authtoken: Option<SecretPem>,
    server_addr: Option<Vec<String>>,
    root_cas: Option<Vec<u8>>,
    metadata: String,
    max_pending: Option<usize>,
    client_info: Vec<ClientInfo>,
    heartbeat: tunnel::Heartbeat,
    hooks: Hooks,
}

impl fmt::Debug for SessionBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionBuilder")
            .field("authtoken", &self.authtoken.as_ref().map(|_| "<redacted>"))
            .field("server_addr", &self.server_addr)
            .field("metadata", &self.metadata)
            .field("client_info", &self.client_info)
            .field("heartbeat", &self.heartbeat)
            .field("hooks", &self.hooks)
            .finish_non_exhaustive()
    }
}

impl SessionBuilder {
    /// The authtoken presented to the edge.
    pub fn authtoken(mut self, token: impl Into<String>) -> Self {
        self.authtoken = Some(SecretPem(token.into()));
        self
    }

    /// Reads the authtoken from `BURROW_AUTHTOKEN`, then `NGROK_AUTHTOKEN`.
    pub fn authtoken_from_env(mut self) -> Self {
        let token = std::env::var(AUTHTOKEN_ENV)
            .or_else(|_| std::env::var(NGROK_AUTHTOKEN_ENV))
            .ok()
            .filter(|t| !t.is_empty());
        if let Some(t) = token {
            self.authtoken = Some(SecretPem(t));
        }
        self
    }

    /// The edge's tunnel address (`host:port`), or several separated by commas (see
    /// [`Self::server_addrs`]). Without one (and without `BURROW_SERVER_ADDR`),
    /// `connect` starts an embedded edge in this process.
    pub fn server_addr(mut self, addr: impl Into<String>) -> Self {
        self.server_addr = Some(vec![addr.into()]);
        self
    }

    /// Several edges' tunnel addresses: the session holds a tunnel connection to each,
    /// all serving the same endpoints under the same URLs, so that when one edge dies
    /// the others keep every URL working. A name that resolves to several addresses
    /// counts as one edge per address. `connect` returns once the first edge (in this
    /// order) accepts the session; the others are connected in the background and
    /// reconnected, like the first, whenever they are lost.
    pub fn server_addrs<S: Into<String>>(mut self, addrs: impl IntoIterator<Item = S>) -> Self {
        self.server_addr = Some(addrs.into_iter().map(Into::into).collect());
        self
    }

    /// CA bundle (PEM) the edge's tunnel certificate must chain to; default: platform
    /// roots, or the embedded edge's own CA when no server address is given. Given
    /// together with the embedded edge it still applies: the session then trusts only
    /// this bundle, so it connects only if the bundle holds the embedded edge's CA.
    pub fn root_cas(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_cas = Some(pem.into());
        self
    }

    /// ngrok's name for [`Self::root_cas`].
    pub fn ca_cert(self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_cas(pem)
    }

    /// Identifies the application to the edge, which logs it (ngrok's `client_info`).
    /// May be called several times; the last call is the most significant entry.
    pub fn client_info(
        mut self,
        client_type: impl Into<String>,
        version: impl Into<String>,
        comments: Option<String>,
    ) -> Self {
        self.client_info.insert(
            0,
            ClientInfo {
                client_type: client_type.into(),
                version: version.into(),
                comments,
            },
        );
        self
    }

    /// How often the session sends a heartbeat (default: the edge's interval).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat.interval = Some(interval.max(runner::MIN_HEARTBEAT));
        self
    }

    /// How long a heartbeat may go unanswered before the tunnel counts as lost and the
    /// session reconnects (default: three heartbeat intervals).
    pub fn heartbeat_tolerance(mut self, tolerance: Duration) -> Self {
        self.heartbeat.tolerance = Some(tolerance.max(runner::MIN_HEARTBEAT));
        self
    }

    /// Called with the measured round trip of every answered heartbeat. Runs on the
    /// session's task: keep it short.
    pub fn handle_heartbeat(mut self, hook: impl Fn(Duration) + Send + Sync + 'static) -> Self {
        self.hooks.heartbeat = Some(Arc::new(hook));
        self
    }

    /// Called with the edge address and the error each time the tunnel is lost and each
    /// time a reconnect attempt fails. Return `false` to stop reconnecting: the session
    /// then closes.
    pub fn handle_disconnection(
        mut self,
        hook: impl Fn(&str, &str) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.hooks.disconnection = Some(Arc::new(hook));
        self
    }

    /// Called when the edge asks the session to stop, with the operator's reason if it
    /// gave one; replaces the default, which closes the session. An `Err` is reported
    /// to the edge.
    pub fn handle_stop_command(
        mut self,
        hook: impl Fn(Option<&str>) -> std::result::Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.hooks.stop = Some(Arc::new(hook));
        self
    }

    /// Called when the edge asks the session to restart; replaces the default, which
    /// reconnects. An `Err` is reported to the edge.
    pub fn handle_restart_command(
        mut self,
        hook: impl Fn() -> std::result::Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.hooks.restart = Some(Arc::new(hook));
        self
    }

    /// Called when the edge asks the agent to update; without it the request is
    /// refused (`UNSUPPORTED`). An `Err` is reported to the edge.
    pub fn handle_update_command(
        mut self,
        hook: impl Fn(&UpdateRequest) -> std::result::Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.hooks.update = Some(Arc::new(hook));
        self
    }

    /// Free-form metadata sent to the edge.
    pub fn metadata(mut self, metadata: impl Into<String>) -> Self {
        self.metadata = metadata.into();
        self
    }

    /// Most connections per endpoint delivered but not yet accepted (default 1024);
    /// beyond it new connections are refused until the listener catches up.
    pub fn max_pending(mut self, n: usize) -> Self {
        self.max_pending = Some(n.max(1));
        self
    }

    /// Connects and authenticates; fails with the edge's refusal if there is one.
    pub async fn connect(self) -> Result<Session> {
        let env_addr = std::env::var(SERVER_ADDR_ENV)
            .ok()
            .filter(|a| !a.is_empty());
        let (server_addrs, root_cas, edge) = match self.server_addr.or(env_addr.map(|a| vec![a])) {
            Some(addrs) => (
                options::server_addr_list("server_addr", &addrs)?,
                self.root_cas,
                None,
            ),
            None => {
                let edge = Edge::embedded().await?;
                tracing::info!(
                    tunnel = %edge.tunnel_addr(),
                    tls = %edge.tls_addr(),
                    "no server address given: started an embedded edge in this process"
                );
                // A root_cas of the caller's is applied, not ignored (see `root_cas`).
                let ca = self
                    .root_cas
                    .unwrap_or_else(|| edge.ca_pem().as_bytes().to_vec());
                (vec![edge.tunnel_addr().to_string()], Some(ca), Some(edge))
            }
        };
        let settings = Arc::new(tunnel::Settings::new(
            root_cas.as_deref(),
            self.authtoken,
            self.metadata,
            self.client_info,
            self.heartbeat,
            self.hooks,
        )?);
        let addrs = edges::resolve(&server_addrs).await?;
        let (first_index, first) = edges::first_connection(&settings, &addrs).await?;
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (edges, receivers) = Edges::new(&addrs);
        let inner = Arc::new(SessionInner {
            id: Mutex::new(first.session_id.clone()),
            endpoints: Mutex::new(HashMap::new()),
            edges,
            max_pending: self.max_pending.unwrap_or(DEFAULT_MAX_PENDING),
            stop: stop.clone(),
            tasks: tasks.clone(),
            failure: Mutex::new(None),
            observer: observe::Observer::new(),
            edge,
        });
        // Binds made as soon as this returns go to the edge that accepted the session.
        inner.edges.set_connected(first_index, true);
        let mut first = Some(first);
        for (index, (addr, requests)) in addrs.into_iter().zip(receivers).enumerate() {
            let runner = Runner::new(inner.clone(), settings.clone(), addr, index, requests);
            let conn = if index == first_index {
                first.take()
            } else {
                None
            };
            tasks.spawn(runner.run(conn));
        }
        Ok(Session {
            _guard: Arc::new(stop.clone().drop_guard()),
            inner,
        })
    }
}

/// An endpoint the session serves, as the runner needs it to route and rebind.
pub(crate) struct Registered {
    pub(crate) spec: BindSpec,
    pub(crate) url: String,
    /// The runner whose edge gave `url`.
    pub(crate) origin: usize,
    pub(crate) sink: Arc<listener::ConnSink>,
    pub(crate) agent_tls: Option<crate::tls::ServerTls>,
    pub(crate) stats: Arc<observe::EndpointStats>,
}

pub(crate) struct SessionInner {
    pub(crate) id: Mutex<String>,
    pub(crate) endpoints: Mutex<HashMap<String, Registered>>,
    pub(crate) edges: Edges,
    pub(crate) max_pending: usize,
    pub(crate) stop: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// Why the session ended by itself (the edge refused it for good), if it did.
    pub(crate) failure: Mutex<Option<Error>>,
    /// What the session has seen, for its metrics, the agent API and the console.
    pub(crate) observer: observe::Observer,
    edge: Option<Edge>,
}

impl SessionInner {
    pub(crate) fn endpoints(&self) -> std::sync::MutexGuard<'_, HashMap<String, Registered>> {
        self.endpoints.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session's id: the one its first edge gave it.
    pub(crate) fn id(&self) -> String {
        self.id.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A connection that had id `old` came back as `new`: when `old` was the
    /// session's id, `new` is now.
    pub(crate) fn renew_id(&self, old: Option<&str>, new: &str) {
        let mut id = self.id.lock().unwrap_or_else(|p| p.into_inner());
        if old.is_some_and(|old| *id == old) {
            *id = new.to_owned();
        }
    }

    /// Why binds fail once the session has ended.
    pub(crate) fn closed(&self) -> Error {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| Error::new(ErrorCode::Closed, "the session is closed"))
    }
}

/// A session as [`Session::status`] sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionStatus {
    /// The session id.
    pub id: String,
    /// `online` (a tunnel is up), `reconnecting` or `closed`.
    pub status: String,
    /// burrow's version.
    pub version: String,
    /// Each edge address and whether its tunnel is up.
    pub edges: Vec<EdgeStatus>,
    /// The last heartbeat's round trip, in milliseconds.
    pub heartbeat_ms: Option<f64>,
    /// Seconds since the session connected.
    pub uptime_secs: f64,
    /// Tunnel connections re-established after a loss.
    pub reconnects: u64,
    /// The endpoints, in the order they were bound.
    pub endpoints: Vec<EndpointStatus>,
    /// The last connections, newest first.
    pub recent: Vec<ConnectionRecord>,
}

/// One edge address of a session.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EdgeStatus {
    /// The address as given.
    pub addr: String,
    /// Whether its tunnel connection is up.
    pub connected: bool,
}

/// A connection to an edge (or to several, see [`SessionBuilder::server_addrs`]) that
/// serves endpoints; cheap to clone.
///
/// The session reconnects by itself when a tunnel drops and rebinds the same URLs.
/// It closes when [`Session::close`] is called or the last clone (and every
/// listener made from it) is dropped.
#[derive(Clone)]
pub struct Session {
    inner: Arc<SessionInner>,
    _guard: Arc<DropGuard>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("id", &self.id()).finish()
    }
}

impl Session {
    /// Starts configuring a session.
    pub fn builder() -> SessionBuilder {
        SessionBuilder::default()
    }

    /// The id the edge gave this session (its first edge, when it has several; after
    /// a reconnect to that edge, the id of the new connection).
    pub fn id(&self) -> String {
        self.inner.id()
    }

    /// The embedded edge, when this session started one.
    pub fn embedded_edge(&self) -> Option<&Edge> {
        self.inner.edge.as_ref()
    }

    /// A TLS (SNI-routed) endpoint.
    pub fn tls_endpoint(&self) -> TlsEndpointBuilder {
        TlsEndpointBuilder::new(self.clone())
    }

    /// An HTTP endpoint (`https://NAME`), served by the edge's reverse proxy.
    pub fn http_endpoint(&self) -> HttpEndpointBuilder {
        HttpEndpointBuilder::new(self.clone())
    }

    /// A TCP endpoint on a port of its own.
    pub fn tcp_endpoint(&self) -> TcpEndpointBuilder {
        TcpEndpointBuilder::new(self.clone())
    }

    /// Binds the endpoint `spec` describes (see [`options::parse`]) and returns its connections.
    pub async fn listen(&self, spec: EndpointSpec) -> Result<Listener> {
        listener::listen(self.clone(), spec).await
    }

    /// Binds the endpoint `spec` describes and forwards every connection to `upstream`.
    pub async fn forward(&self, spec: EndpointSpec, upstream: &Upstream) -> Result<Forwarder> {
        listener::listen_and_forward(self.clone(), spec, upstream).await
    }

    /// True until the session is closed, by [`Session::close`] or by a refusal of the
    /// edge that reconnecting would only repeat (see [`Session::failure`]).
    pub fn is_open(&self) -> bool {
        !self.inner.stop.is_cancelled()
    }

    /// The edge's refusal that ended this session by itself (e.g. `AUTH_FAILED` after
    /// a reconnect), if that is how it ended.
    pub fn failure(&self) -> Option<Error> {
        self.inner
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The session's metrics in Prometheus text format: connections, bytes, upstream
    /// dials, heartbeats and reconnects (see the README's "Observing burrow").
    pub fn metrics_text(&self) -> String {
        let up = self
            .inner
            .edges
            .states()
            .iter()
            .filter(|(_, up)| *up)
            .count();
        self.inner.observer.set_tunnels_up(up);
        self.inner.observer.metrics_text()
    }

    /// What the session looks like now: its edges, endpoints with their counters, and
    /// the recent connections (what the agent API and the console show).
    pub fn status(&self) -> SessionStatus {
        let observer = &self.inner.observer;
        let edges: Vec<EdgeStatus> = self
            .inner
            .edges
            .states()
            .into_iter()
            .map(|(addr, connected)| EdgeStatus { addr, connected })
            .collect();
        let status = if !self.is_open() {
            "closed"
        } else if edges.iter().any(|e| e.connected) {
            "online"
        } else {
            "reconnecting"
        };
        SessionStatus {
            id: self.id(),
            status: status.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            edges,
            heartbeat_ms: observer.last_heartbeat().map(|d| d.as_secs_f64() * 1000.0),
            uptime_secs: observer.uptime().as_secs_f64(),
            reconnects: observer.reconnects(),
            endpoints: observer.endpoints(),
            recent: observer.recent(),
        }
    }

    /// Closes every endpoint and the tunnel, and waits until all of the session's tasks ended.
    pub async fn close(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Asks the edge to serve `spec`; returns the public URL.
    pub(crate) async fn bind(
        &self,
        spec: BindSpec,
        agent_tls: Option<crate::tls::ServerTls>,
        sink: Arc<listener::ConnSink>,
        stats: Arc<observe::EndpointStats>,
    ) -> Result<String> {
        if self.inner.stop.is_cancelled() {
            return Err(Error::new(ErrorCode::Closed, "the session is closed"));
        }
        let inner = &self.inner;
        let bind = inner.edges.bind(inner, spec, agent_tls, sink, stats);
        match tokio::time::timeout(BIND_TIMEOUT, bind).await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorCode::Timeout,
                format!("no edge answered the bind within {BIND_TIMEOUT:?}"),
            )),
        }
    }

    /// Stops serving an endpoint.
    pub(crate) fn unbind(&self, endpoint_id: &str) {
        self.inner.observer.endpoint_closed(endpoint_id);
        if self.inner.endpoints().remove(endpoint_id).is_some() {
            self.inner.edges.unbind(endpoint_id);
        }
    }

    pub(crate) fn observer(&self) -> &observe::Observer {
        &self.inner.observer
    }

    pub(crate) fn max_pending(&self) -> usize {
        self.inner.max_pending
    }

    pub(crate) fn stopped(&self) -> CancellationToken {
        self.inner.stop.clone()
    }

    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }
}
