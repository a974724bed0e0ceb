//! The edge: accepts agents on the tunnel listener and public clients on the
//! TLS listener and TCP ports, and routes each public connection to its agent.

pub(crate) mod acme;
mod admin;
mod auth;
mod bind;
pub(crate) mod certs;
pub(crate) mod cluster;
mod config;
mod gate;
pub(crate) mod http;
pub(crate) mod metrics;
mod public;
mod routes;
pub(crate) mod session;

pub use crate::wire::Command;
pub use acme::{AcmeConfig, AcmeCounters, AcmeMode, ChallengeKind};
pub use auth::{glob_match, Grant, TokenRule};
pub use certs::CertFiles;
pub use cluster::ClusterConfig;
pub use config::EdgeConfig;
pub use metrics::EndpointStats;
pub use routes::{lookup, EdgePolicy, MemoryRoutes, Route, Routes};

use crate::error::{Error, ErrorCode, Result};
use crate::tls::{self, CertAuthority};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// State every task of one edge shares.
pub(crate) struct Shared {
    pub(crate) config: EdgeConfig,
    pub(crate) routes: Arc<dyn Routes>,
    pub(crate) ca: CertAuthority,
    /// Operator and ACME certificates (the selection order is in `certs`).
    pub(crate) certs: Arc<certs::CertStore>,
    /// The ACME client, when `[acme]` is configured.
    pub(crate) acme: Option<Arc<acme::Acme>>,
    /// This edge's membership in a cluster, when `[cluster]` is configured.
    pub(crate) cluster: Option<Arc<cluster::Cluster>>,
    /// The links to the other edges of the cluster.
    pub(crate) links: Option<Arc<cluster::link::Links>>,
    /// Live sessions: id → token that opened it and the switch that ends it.
    pub(crate) sessions: Mutex<HashMap<String, SessionEntry>>,
    pub(crate) tls_port: u16,
    /// The plain HTTP listener's port, when there is one.
    pub(crate) http_port: Option<u16>,
    pub(crate) connections: Arc<Semaphore>,
    pub(crate) auth_limiter: auth::AuthLimiter,
    /// Tunnel connections that have not authenticated yet.
    pub(crate) unauthenticated: Arc<gate::Gate>,
    pub(crate) tasks: TaskTracker,
    pub(crate) stop: CancellationToken,
    /// Every metric family of this edge.
    pub(crate) metrics: metrics::EdgeMetrics,
    /// Bound endpoints by (session id, endpoint id), for the admin API and the metrics.
    pub(crate) endpoints: Mutex<HashMap<(String, String), EndpointEntry>>,
    /// Cancelled when the edge starts draining (no new sessions or public connections).
    pub(crate) draining: CancellationToken,
    /// Cancelled once a drain has finished and the edge has stopped.
    pub(crate) drained: CancellationToken,
}

/// An endpoint a session holds, as the admin API and the metrics see it.
pub(crate) struct EndpointEntry {
    pub(crate) url: String,
    pub(crate) proto: &'static str,
    pub(crate) termination: &'static str,
    pub(crate) stats: Arc<EndpointStats>,
}

pub(crate) struct SessionEntry {
    pub(crate) token: Option<String>,
    pub(crate) kill: CancellationToken,
    /// The tunnel connection serving the session (in a cluster a reconnecting agent
    /// keeps its session id, so the id alone does not tell connections apart).
    pub(crate) conn: u64,
    /// Cancelled once the connection's session has let go of its routes.
    pub(crate) done: CancellationToken,
    /// Commands for the session's control loop.
    pub(crate) commands: mpsc::UnboundedSender<session::CommandRequest>,
    pub(crate) info: SessionInfo,
    /// Which configured authtoken opened the session (`authtokens[i]`), never the token.
    pub(crate) token_name: Option<String>,
    /// When the session authenticated.
    pub(crate) since: std::time::SystemTime,
    /// The last heartbeat round trip its agent reported.
    pub(crate) heartbeat_rtt: Option<std::time::Duration>,
}

/// What the edge knows about an authenticated session, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session id (as the agent's `Session::id()` reports it).
    pub id: String,
    /// The agent's client info entries, e.g. `["my-app/1.2 (beta)", "burrow/0.1"]`.
    pub client_info: Vec<String>,
    /// The agent's session metadata.
    pub metadata: String,
    /// The agent's address.
    pub peer: SocketAddr,
}

/// How long [`Edge::send_command`] waits for the agent's answer.
const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Shared {
    pub(crate) fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionEntry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn endpoints(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(String, String), EndpointEntry>> {
        self.endpoints.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts draining: refuses new sessions and public connections, and stops the edge
    /// once no public connection is open, or at `deadline`.
    pub(crate) fn drain(self: &Arc<Self>, deadline: Option<std::time::Duration>) {
        if self.draining.is_cancelled() {
            return;
        }
        tracing::info!(?deadline, "draining: no new sessions or connections; the edge stops when the open connections end");
        self.draining.cancel();
        let shared = self.clone();
        self.tasks.spawn(async move {
            let until = deadline.map(|d| tokio::time::Instant::now() + d);
            loop {
                if shared.metrics.active() <= 0 {
                    tracing::info!("drained: no public connection is open");
                    break;
                }
                if until.is_some_and(|u| tokio::time::Instant::now() >= u) {
                    tracing::info!(open = shared.metrics.active(), "drain deadline reached");
                    break;
                }
                tokio::select! {
                    _ = shared.stop.cancelled() => break,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                }
            }
            if let Some(cluster) = &shared.cluster {
                cluster.leave().await;
            }
            shared.stop.cancel();
            shared.drained.cancel();
        });
    }
}

/// A running edge. Dropping it stops every listener and session.
pub struct Edge {
    shared: Arc<Shared>,
    tunnel_addr: SocketAddr,
    tls_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
}

impl Edge {
    /// Binds the listeners of `config` and starts serving.
    pub async fn start(config: EdgeConfig) -> Result<Edge> {
        Self::start_with_routes(config, Arc::new(MemoryRoutes::default())).await
    }

    /// Like [`Edge::start`], with a routing table of the caller's.
    pub async fn start_with_routes(config: EdgeConfig, routes: Arc<dyn Routes>) -> Result<Edge> {
        config.validate()?;
        if config.authtokens.is_empty() && !config.open {
            tracing::warn!("this edge has no authtokens and open is not set: it will refuse every agent (add [[authtokens]], or open = true for a test edge)");
        }
        if let Some(addr) = config.admin_addr.filter(|a| !a.ip().is_loopback()) {
            tracing::warn!(%addr, "admin_addr is not a loopback address: the admin API is reachable from the network (its token is the only guard)");
        }
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let certs = Arc::new(certs::CertStore::load(
            &config.certs,
            config.state_dir.as_deref(),
        )?);
        let acme_config = config.acme.clone().filter(|a| a.mode == AcmeMode::Acme);
        let cluster = match &config.cluster {
            Some(c) => Some(Arc::new(
                cluster::Cluster::connect(
                    c.clone(),
                    certs.clone(),
                    acme_config.as_ref().map(|a| a.directory.clone()),
                    &stop,
                )
                .await?,
            )),
            None => None,
        };
        // In a cluster every edge shares one CA, so that agents and clients trust them all.
        let ca = match (&cluster, &config.state_dir) {
            (Some(cluster), _) => cluster.shared_ca().await?,
            (None, Some(dir)) => CertAuthority::load_or_create(dir)?,
            (None, None) => CertAuthority::generate()?,
        };
        let links = match &cluster {
            Some(c) => Some(Arc::new(cluster::link::Links::new(
                &ca,
                &c.config,
                stop.clone(),
            )?)),
            None => None,
        };
        let link_listener = match &cluster {
            Some(c) => Some(bind(c.config.link_addr, "cluster.link_addr").await?),
            None => None,
        };
        let acme = match acme_config {
            Some(a) => Some(acme::Acme::new(
                a,
                config.state_dir.as_deref(),
                certs.clone(),
                cluster.clone(),
                tasks.clone(),
                stop.clone(),
            )?),
            None => None,
        };
        let tunnel_listener = bind(config.tunnel_addr, "tunnel_addr").await?;
        let tls_listener = bind(config.tls_addr, "tls_addr").await?;
        let tunnel_addr = local_addr(&tunnel_listener)?;
        let tls_addr = local_addr(&tls_listener)?;
        let http_listener = match config.http_addr {
            Some(addr) => Some(bind(addr, "http_addr").await?),
            None => None,
        };
        let http_addr = http_listener.as_ref().map(local_addr).transpose()?;
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(bind(addr, "metrics_addr").await?),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().map(local_addr).transpose()?;
        let admin_listener = match config.admin_addr {
            Some(addr) => Some(bind(addr, "admin_addr").await?),
            None => None,
        };
        let admin_addr = admin_listener.as_ref().map(local_addr).transpose()?;

        let mut names = vec!["localhost".to_owned(), tunnel_addr.ip().to_string()];
        names.extend(config.tunnel_names.iter().cloned());
        let tunnel_cert = ca.issue(&names)?;
        let tunnel_tls = Arc::new(tls::tunnel_server_config(&tunnel_cert)?);

        let shared = Arc::new(Shared {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            auth_limiter: auth::AuthLimiter::default(),
            unauthenticated: gate::Gate::new(
                config.max_unauthenticated_per_ip,
                config.max_unauthenticated,
            ),
            metrics: metrics::EdgeMetrics::new(config.metrics_per_endpoint),
            endpoints: Mutex::new(HashMap::new()),
            draining: CancellationToken::new(),
            drained: CancellationToken::new(),
            config,
            routes,
            ca,
            certs,
            acme,
            cluster,
            links,
            sessions: Mutex::new(HashMap::new()),
            tls_port: tls_addr.port(),
            http_port: http_addr.map(|a| a.port()),
            tasks,
            stop,
        });
        if let Some(acme) = &shared.acme {
            shared.tasks.spawn(
                acme::renew_loop(acme.clone()).instrument(tracing::info_span!("acme-renewal")),
            );
        }
        if let (Some(cluster), Some(links), Some(listener)) =
            (&shared.cluster, &shared.links, link_listener)
        {
            cluster.join().await?;
            shared.tasks.spawn(
                cluster::run(shared.clone(), cluster.clone())
                    .instrument(tracing::info_span!("cluster", edge_id = %cluster.edge_id())),
            );
            shared.tasks.spawn(
                cluster::link::accept(shared.clone(), listener, links.clone())
                    .instrument(tracing::info_span!("link", addr = %cluster.config.link_addr)),
            );
        }
        shared.tasks.spawn(
            session::accept_agents(shared.clone(), tunnel_listener, tunnel_tls)
                .instrument(tracing::info_span!("tunnel", addr = %tunnel_addr)),
        );
        shared.tasks.spawn(
            public::accept_tls(shared.clone(), tls_listener)
                .instrument(tracing::info_span!("public", addr = %tls_addr)),
        );
        if let (Some(listener), Some(addr)) = (http_listener, http_addr) {
            shared.tasks.spawn(
                http::accept_http(shared.clone(), listener)
                    .instrument(tracing::info_span!("http", addr = %addr)),
            );
        }
        if let (Some(listener), Some(addr)) = (metrics_listener, metrics_addr) {
            shared.tasks.spawn(
                admin::serve(shared.clone(), listener, admin::Surface::Metrics)
                    .instrument(tracing::info_span!("metrics", %addr)),
            );
        }
        if let (Some(listener), Some(addr)) = (admin_listener, admin_addr) {
            shared.tasks.spawn(
                admin::serve(shared.clone(), listener, admin::Surface::Admin)
                    .instrument(tracing::info_span!("admin", %addr)),
            );
        }
        tracing::info!(%tunnel_addr, %tls_addr, http_addr = ?http_addr, metrics_addr = ?metrics_addr, admin_addr = ?admin_addr, "edge listening");
        Ok(Edge {
            shared,
            tunnel_addr,
            tls_addr,
            http_addr,
            metrics_addr,
            admin_addr,
        })
    }

    /// An edge for this process only: loopback, random ports, any token, a fresh CA.
    pub async fn embedded() -> Result<Edge> {
        Self::start(EdgeConfig::embedded()).await
    }

    /// Where agents connect.
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel_addr
    }

    /// The public TLS listener.
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_addr
    }

    /// The plain HTTP listener, when `http_addr` is set.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The metrics listener (`GET /metrics`), when `metrics_addr` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The admin API listener, when `admin_addr` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// This edge's metrics in the OpenMetrics text format (what `GET /metrics` serves).
    pub fn metrics_text(&self) -> String {
        metrics::scrape(&self.shared)
    }

    /// Starts draining: new agent sessions are refused (`EDGE_DRAINING`), the public
    /// listeners stop accepting, open connections go on; once none is open, or at
    /// `deadline`, the edge stops ([`Edge::drained`] resolves).
    pub fn drain(&self, deadline: Option<std::time::Duration>) {
        self.shared.drain(deadline);
    }

    /// True once [`Edge::drain`] (or `POST /api/drain`) was called.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.is_cancelled()
    }

    /// Resolves once a drain has finished and the edge has stopped (never without one).
    pub fn drained(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let drained = self.shared.drained.clone();
        async move { drained.cancelled().await }
    }

    /// The edge CA certificate (PEM): agents trust it for the tunnel, clients for
    /// automatic certificates.
    pub fn ca_pem(&self) -> &str {
        self.shared.ca.cert_pem()
    }

    /// The route serving `host` right now, if any (for tests and diagnostics); for a pool,
    /// the member whose turn it is (which takes that turn).
    pub fn route(&self, host: &str) -> Option<Route> {
        lookup(self.shared.routes.as_ref(), host)
    }

    /// What the ACME client has done since start; `None` without `[acme]`.
    pub fn acme_counters(&self) -> Option<AcmeCounters> {
        self.shared.acme.as_ref().map(|a| a.counters())
    }

    /// Number of authenticated sessions.
    pub fn session_count(&self) -> usize {
        self.shared.sessions().len()
    }

    /// Every authenticated session, in no particular order.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.shared
            .sessions()
            .values()
            .map(|s| s.info.clone())
            .collect()
    }

    /// Sends `command` (ngrok's Stop, Restart or Update) to session `session_id`; the
    /// future resolves with the agent's answer: `Ok` when it carried the command out,
    /// its refusal otherwise. It borrows nothing, so bindings can await it anywhere.
    pub fn send_command(
        &self,
        session_id: &str,
        command: Command,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        send_command(&self.shared, session_id, command)
    }

    /// How many names of other edges this edge's cluster cache holds (0 alone).
    pub fn cluster_names(&self) -> usize {
        self.shared.cluster.as_ref().map_or(0, |c| c.cached_names())
    }

    /// The edges other than this one that serve `host`, by id (empty alone).
    pub fn remote_edges(&self, host: &str) -> Vec<String> {
        self.shared.cluster.as_ref().map_or_else(Vec::new, |c| {
            c.remote(host).into_iter().map(|(edge, _)| edge).collect()
        })
    }

    /// Stops accepting, ends every session and waits for all tasks to finish. In a
    /// cluster, the edge first gives up its lease, so its names are free at once.
    pub async fn shutdown(self) {
        if let Some(cluster) = &self.shared.cluster {
            cluster.leave().await;
        }
        self.shared.stop.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

/// Sends `command` to session `session_id` and waits for the agent's answer (see
/// [`Edge::send_command`]).
pub(crate) fn send_command(
    shared: &Shared,
    session_id: &str,
    command: Command,
) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
    let (reply, answer) = oneshot::channel();
    let sent = shared
        .sessions()
        .get(session_id)
        .map(|s| s.commands.send(session::CommandRequest { command, reply }));
    let session_id = session_id.to_owned();
    async move {
        let gone = || Error::new(ErrorCode::Closed, format!("no session {session_id:?}"));
        match sent {
            Some(Ok(())) => {}
            Some(Err(_)) | None => return Err(gone()),
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "session {session_id:?} did not answer the command within {COMMAND_TIMEOUT:?}"
                ),
            )),
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    listen(addr).map_err(|e| Error::io(format!("{what}: cannot listen on {addr}"), e))
}

/// The listen backlog the edge asks for; the kernel caps it at `net.core.somaxconn`
/// (4096 by default since Linux 5.4).
const LISTEN_BACKLOG: u32 = 65_535;

/// Listens on `addr` with a backlog as deep as the system allows.
///
/// `TcpListener::bind` asks for 128. Connections the kernel has completed but the
/// edge has not accepted yet wait there: when a burst arrives faster than a busy edge
/// accepts (or `max_connections` is reached), a full backlog makes the kernel drop
/// handshakes and answer with SYN cookies, and clients whose cookie is refused get a
/// TCP reset before the edge ever saw them.
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted edge can listen again at once.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The next connection on `listener` (with TCP_NODELAY set), or `None` once `stop` is
/// cancelled. A failed accept (e.g. out of file descriptors) is logged and retried after
/// a pause, so that it cannot spin.
pub(crate) async fn accept_next(
    listener: &TcpListener,
    stop: &CancellationToken,
    what: &str,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    return Some((tcp, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr> {
    listener
        .local_addr()
        .map_err(|e| Error::io("listener address", e))
}
