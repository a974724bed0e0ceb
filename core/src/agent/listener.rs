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
use std::sync::{Arc, OnceLock};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
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
            Some(tls::ServerTls::new(&cert, &material.settings())?)
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
    let (queue, rx) = mpsc::channel(session.max_pending());
    let sink = Arc::new(ConnSink {
        queue,
        direct: OnceLock::new(),
    });
    let url = match session
        .bind(bind, agent_tls, sink.clone(), stats.clone())
        .await
    {
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
        sink,
        stats,
    })
}

/// Where a bound endpoint's connections go: into its [`Listener`]'s queue, or, once the
/// listener has become a [`Forwarder`], straight to the upstream from the task that read
/// the stream's header (one task, one queue and one wake-up fewer per connection).
pub(crate) struct ConnSink {
    queue: mpsc::Sender<Conn>,
    direct: OnceLock<Direct>,
}

/// A forwarder's way to its upstream.
struct Direct {
    dialer: Arc<Dialer>,
    proxy_proto: Option<ProxyProto>,
    terminate_at: TerminateAt,
    /// The forwarder's connections (its `open_connections` and `wait_connections`).
    connections: TaskTracker,
    /// Cancelled when the forwarder closes.
    stop: CancellationToken,
    span: tracing::Span,
}

impl ConnSink {
    /// True when a connection would be refused for want of room in the listener's queue.
    pub(crate) fn is_full(&self) -> bool {
        self.direct.get().is_none() && self.queue.capacity() == 0
    }

    /// Hands `conn` to the listener, or forwards it here until it ends. (Boxed: a
    /// future keeps an argument's room twice, at each level it is passed down.)
    pub(crate) async fn deliver(&self, conn: Box<Conn>) {
        if let Some(direct) = self.direct.get() {
            if direct.stop.is_cancelled() {
                return; // closed: dropped unaccepted, the edge resets the client
            }
            let _counted = direct.connections.token();
            let forwarded = forward_one(
                conn,
                &direct.dialer,
                direct.proxy_proto,
                direct.terminate_at,
            );
            return forwarded.instrument(direct.span.clone()).await;
        }
        if let Err(mpsc::error::TrySendError::Full(mut conn)) = self.queue.try_send(*conn) {
            conn.failed("refused: too many connections pending (max_pending)");
            tracing::warn!(client = %conn.client_addr(), "refused: the endpoint already has max_pending connections waiting to be accepted");
        }
    }
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
    sink: Arc<ConnSink>,
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
        // From now on connections go straight to the upstream; the loop below serves
        // those the listener had queued already.
        let _ = listener.sink.direct.set(Direct {
            dialer: dialer.clone(),
            proxy_proto,
            terminate_at: listener.terminate_at,
            connections: connections.clone(),
            stop: stop.clone(),
            span: span.clone(),
        });
        let terminate_at = listener.terminate_at;
        let task = tokio::spawn(
            async move {
                loop {
                    let conn = tokio::select! {
                        _ = stop.cancelled() => break,
                        conn = listener.accept() => match conn { Some(c) => c, None => break },
                    };
                    let dialer = dialer.clone();
                    let session_stop = session.stopped();
                    session.tasks().spawn(connections.track_future(
                        async move {
                            tokio::select! {
                                _ = session_stop.cancelled() => {}
                                _ = forward_one(Box::new(conn), &dialer, proxy_proto, terminate_at) => {}
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

/// Forwards one connection of a forwarder until it ends, logging it and how it ended.
async fn forward_one(
    conn: Box<Conn>,
    dialer: &Dialer,
    proxy_proto: Option<ProxyProto>,
    terminate_at: TerminateAt,
) {
    tracing::info!(client = %conn.client_addr(), sni = conn.sni().unwrap_or("-"), %terminate_at, "connection");
    if let Err(e) = forward(conn, dialer, proxy_proto).await {
        tracing::info!(error = %e, "connection ended");
    }
}

async fn forward(
    mut conn: Box<Conn>,
    dialer: &Dialer,
    proxy_proto: Option<ProxyProto>,
) -> Result<()> {
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
    let result = splice(&mut *conn, &mut upstream).await;
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
