//! What a bound endpoint gives back: a [`Listener`] of connections, or a
//! [`Forwarder`] that sends them to an upstream.

use super::conn::Conn;
use super::observe::{EndpointInfo, EndpointStats};
use super::proxy_proto::{self, ProxyProto};
use super::spec::{EndpointSpec, TerminateAt, Termination};
use super::upstream::{Dialer, Upstream};
use super::Session;
use crate::error::{Error, Result};
use crate::splice::splice;
use crate::tls;
use crate::wire::{BindSpec, Proto};
use std::fmt;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Binds `spec` on `session` and returns its connections.
pub(crate) async fn listen(session: Session, spec: EndpointSpec) -> Result<Listener> {
    let agent_tls = match &spec.termination {
        Termination::Agent(material) => {
            let cert = material
                .check(None)?
                .ok_or_else(|| Error::option("terminate_at=\"agent\" needs crt and key"))?;
            let config = tls::server_config(&cert, &material.settings())?;
            Some(TlsAcceptor::from(Arc::new(config)))
        }
        Termination::Upstream | Termination::Edge(_) => None,
    };
    let mode = spec.terminate_at();
    let endpoint_id = crate::random_id();
    let bind = BindSpec {
        endpoint_id: endpoint_id.clone(),
        kind: spec.kind.clone(),
        termination: spec.termination.clone(),
        traffic_policy: spec.traffic_policy.clone(),
        allow_cidrs: spec.allow_cidrs.clone(),
        deny_cidrs: spec.deny_cidrs.clone(),
        metadata: spec.metadata.clone(),
        pooling_enabled: spec.pooling_enabled,
    };
    let stats = session.observer().endpoint(EndpointInfo {
        id: endpoint_id.clone(),
        name: spec.name.clone().unwrap_or_else(|| endpoint_id.clone()),
        terminate_at: mode,
        metadata: spec.metadata.clone(),
    });
    if let Some(upstream) = &spec.forwards_to {
        stats.set_forwards_to(upstream);
    }
    let (tx, rx) = mpsc::channel(session.max_pending());
    let url = match session.bind(bind, agent_tls, tx, stats.clone()).await {
        Ok(url) => url,
        Err(e) => {
            session.observer().endpoint_closed(&endpoint_id);
            return Err(e);
        }
    };
    tracing::info!(%url, terminate_at = %mode, "endpoint online");
    Ok(Listener {
        session,
        id: endpoint_id,
        url,
        proto: spec.kind.proto(),
        terminate_at: mode,
        metadata: spec.metadata,
        forwards_to: spec.forwards_to.unwrap_or_default(),
        proxy_proto: spec.proxy_proto,
        conns: rx,
        stats,
    })
}

/// Binds `spec` on `session` and forwards every connection to `upstream`.
pub(crate) async fn listen_and_forward(
    session: Session,
    mut spec: EndpointSpec,
    upstream: &Upstream,
) -> Result<Forwarder> {
    let dialer = upstream.dialer()?;
    spec.forwards_to.get_or_insert_with(|| upstream.to_string());
    let listener = listen(session, spec).await?;
    Ok(Forwarder::start(listener, dialer))
}

/// A bound endpoint whose connections the caller accepts. Dropping it closes the endpoint.
pub struct Listener {
    session: Session,
    id: String,
    url: String,
    proto: Proto,
    terminate_at: TerminateAt,
    metadata: String,
    forwards_to: String,
    proxy_proto: Option<ProxyProto>,
    conns: mpsc::Receiver<Conn>,
    stats: Arc<EndpointStats>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("id", &self.id)
            .field("url", &self.url)
            .finish()
    }
}

impl Listener {
    /// The next connection; `None` once the endpoint or session is closed.
    pub async fn accept(&mut self) -> Option<Conn> {
        let stopped = self.session.stopped();
        tokio::select! {
            conn = self.conns.recv() => conn,
            _ = stopped.cancelled() => None,
        }
    }

    /// The endpoint id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The public URL, e.g. `tls://app.example.com:8443`; stable across reconnects.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL's scheme, as ngrok's `proto()` gives it: `"https"` (or `"http"` for an
    /// endpoint served over plain HTTP only), `"tls"` or `"tcp"`.
    pub fn proto(&self) -> &'static str {
        match self.proto {
            Proto::Http if self.url.starts_with("http://") => "http",
            Proto::Http => "https",
            p => super::spec::proto_name(p),
        }
    }

    /// Where TLS is terminated for this endpoint.
    pub fn terminate_at(&self) -> TerminateAt {
        self.terminate_at
    }

    /// The endpoint's metadata.
    pub fn metadata(&self) -> &str {
        &self.metadata
    }

    /// What the endpoint forwards to, as described by its owner.
    pub fn forwards_to(&self) -> &str {
        &self.forwards_to
    }

    /// From now on, forwards every connection to `upstream` (ngrok's `Listener.forward`).
    pub fn forward(self, upstream: &Upstream) -> Result<Forwarder> {
        let dialer = upstream.dialer()?;
        let mut listener = self;
        if listener.forwards_to.is_empty() {
            listener.forwards_to = upstream.to_string();
            listener.stats.set_forwards_to(&listener.forwards_to);
        }
        Ok(Forwarder::start(listener, dialer))
    }

    /// Stops serving; connections already accepted keep running.
    pub fn close(&mut self) {
        self.session.unbind(&self.id);
        self.conns.close();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.close();
    }
}

/// A bound endpoint that forwards every connection to an upstream.
/// Dropping it closes the endpoint.
pub struct Forwarder {
    id: String,
    url: String,
    proto: &'static str,
    terminate_at: TerminateAt,
    metadata: String,
    forwards_to: String,
    session: Session,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    /// The connections this forwarder is serving.
    connections: TaskTracker,
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder")
            .field("id", &self.id)
            .field("url", &self.url)
            .finish()
    }
}

impl Forwarder {
    fn start(mut listener: Listener, dialer: Dialer) -> Self {
        let proxy_proto = listener.proxy_proto;
        let stop = listener.session.stopped().child_token();
        let session = listener.session.clone();
        let dialer = Arc::new(dialer);
        let mut forwarder = Forwarder {
            id: listener.id.clone(),
            url: listener.url.clone(),
            proto: listener.proto(),
            terminate_at: listener.terminate_at,
            metadata: listener.metadata.clone(),
            forwards_to: listener.forwards_to.clone(),
            session: listener.session.clone(),
            stop: stop.clone(),
            task: None,
            connections: TaskTracker::new(),
        };
        let connections = forwarder.connections.clone();
        let span = tracing::info_span!("forward", url = %listener.url);
        let task = tokio::spawn(
            async move {
                loop {
                    let conn = tokio::select! {
                        _ = stop.cancelled() => break,
                        conn = listener.accept() => match conn { Some(c) => c, None => break },
                    };
                    let dialer = dialer.clone();
                    let session_stop = session.stopped();
                    tracing::info!(client = %conn.client_addr(), sni = conn.sni().unwrap_or("-"), terminate_at = %listener.terminate_at, "connection");
                    session.tasks().spawn(connections.track_future(
                        async move {
                            tokio::select! {
                                _ = session_stop.cancelled() => {}
                                r = forward(conn, &dialer, proxy_proto) => if let Err(e) = r {
                                    tracing::info!(error = %e, "connection ended");
                                },
                            }
                        }
                        .in_current_span(),
                    ));
                }
                listener.close();
            }
            .instrument(span),
        );
        forwarder.task = Some(task);
        forwarder
    }

    /// The endpoint id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The public URL; stable across reconnects.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL's scheme: `"https"`, `"http"`, `"tls"` or `"tcp"` (see [`Listener::proto`]).
    pub fn proto(&self) -> &'static str {
        self.proto
    }

    /// Where TLS is terminated for this endpoint.
    pub fn terminate_at(&self) -> TerminateAt {
        self.terminate_at
    }

    /// The endpoint's metadata.
    pub fn metadata(&self) -> &str {
        &self.metadata
    }

    /// The upstream it forwards to.
    pub fn forwards_to(&self) -> &str {
        &self.forwards_to
    }

    /// Stops accepting new connections (idempotent); open ones finish on their own.
    ///
    /// The edge is told at once, so a later bind of the same name is ordered after it.
    pub fn close(&self) {
        self.session.unbind(&self.id);
        self.stop.cancel();
    }

    /// A future that resolves once the forwarder is closed (by `close`, drop, or its
    /// session closing); it does not borrow the forwarder.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let stop = self.stop.clone();
        async move { stop.cancelled().await }
    }

    /// Connections this forwarder is serving right now.
    pub fn open_connections(&self) -> usize {
        self.connections.len()
    }

    /// Waits until every connection this forwarder accepted has ended; with
    /// [`Forwarder::close`] first, that is a graceful shutdown (bound it with a timeout).
    pub async fn wait_connections(&self) {
        self.connections.close();
        self.connections.wait().await;
    }

    /// Waits until the forwarder stops (closed, or its session closed).
    pub async fn join(&mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.close();
    }
}

async fn forward(mut conn: Conn, dialer: &Dialer, proxy_proto: Option<ProxyProto>) -> Result<()> {
    let started = std::time::Instant::now();
    // Boxed: dialling's timers and address lookup are not kept for the splice.
    let dialled = Box::pin(dialer.dial()).await;
    conn.stats().dialled(started.elapsed(), dialled.is_ok());
    let mut upstream = match dialled {
        Ok(u) => u,
        Err(e) => {
            conn.failed(format!("upstream dial failed: {}", e.message()));
            return Err(e);
        }
    };
    if let Some(version) = proxy_proto {
        let header = proxy_proto::header(version, conn.client_addr(), conn.server_addr())?;
        upstream
            .write_all(&header)
            .await
            .map_err(|e| Error::io("PROXY header to upstream", e))?;
    }
    let result = splice(&mut conn, &mut upstream).await;
    if let Err(e) = &result {
        conn.failed(format!("reset: {}", e.message()));
    }
    // On failure `conn` is dropped unclosed, which resets the tunnel stream (and sends
    // no close_notify under agent termination): the edge passes that on to the client.
    if result.is_err() {
        upstream.reset_on_close();
    }
    result.map(|_| ())
}
