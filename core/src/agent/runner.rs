//! One tunnel connection of a session, to one edge address: keeps it up, talks on its
//! control stream, rebinds after a reconnect and dispatches proxy streams. A session
//! holds one runner per edge; [`super::edges`] coordinates them.

use super::conn::{Conn, ConnIo};
use super::hooks::AfterCommand;
use super::listener::ConnSink;
use super::observe::EndpointStats;
use super::spec::EndpointKind;
use super::tunnel::{establish, Connected, EdgeAddr, Ids, Settings};
use super::{Registered, SessionInner};
use crate::error::{Error, ErrorCode, Result};
use crate::wire::mux::MuxStream;
use crate::wire::{
    read_header, AgentMsg, BindSpec, Command, ControlChannel, EdgeMsg, StreamHeader,
};
use rustls::server::Acceptor;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{interval, sleep_until, timeout, Instant, MissedTickBehavior};
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;

const STREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const AGENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a closing session waits for the edge to end it before dropping the tunnel.
const CLOSE_GRACE: Duration = Duration::from_millis(500);
/// The shortest heartbeat interval and tolerance accepted.
pub(crate) const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

/// A user's bind: what to serve and where to deliver the answer and the connections.
pub(crate) struct BindRequest {
    pub(crate) spec: BindSpec,
    pub(crate) agent_tls: Option<crate::tls::ServerTls>,
    pub(crate) sink: Arc<ConnSink>,
    pub(crate) stats: Arc<EndpointStats>,
    pub(crate) reply: oneshot::Sender<BindReply>,
}

/// A runner's answer to a user's bind.
pub(crate) enum BindReply {
    /// The edge serves it at this URL; the endpoint is registered.
    Bound(String),
    /// The edge refused it.
    Refused(Error),
    /// The connection was lost (or was not up) before the edge answered: another
    /// connection may take the bind.
    Lost,
}

/// What a user call asks of the runner.
pub(crate) enum Request {
    Bind(Box<BindRequest>),
    /// Bind a registered endpoint (another edge's connection bound it first) here too.
    Follow {
        endpoint_id: String,
    },
    Unbind {
        endpoint_id: String,
    },
}

enum Pending {
    /// A user's bind, waiting for the edge's answer.
    New(Box<BindRequest>),
    /// Binding a registered endpoint on this connection: after a reconnect, or after
    /// another edge's connection bound it.
    Rebind { endpoint_id: String },
}

pub(crate) struct Runner {
    inner: Arc<SessionInner>,
    settings: Arc<Settings>,
    edge: EdgeAddr,
    /// This runner's place in the session's list of edges.
    index: usize,
    requests: mpsc::UnboundedReceiver<Request>,
    pending: HashMap<u64, Pending>,
    /// Endpoints bound (or being bound) on the current connection.
    bound_here: HashSet<String>,
    next_request: u64,
}

enum Ended {
    /// The user closed the session.
    Stopped,
    /// The tunnel broke; reconnecting may help.
    Lost(String),
    /// The edge refused in a way that every reconnect would meet again.
    Fatal(Error),
    /// The edge asked for a restart: reconnect without telling the disconnection hook.
    Restart,
}

/// Errors that a reconnect would only repeat: the connection ends with them instead.
fn repeats(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::AuthFailed
            | ErrorCode::VersionMismatch
            | ErrorCode::Protocol
            | ErrorCode::LimitExceeded
    )
}

impl Runner {
    pub(crate) fn new(
        inner: Arc<SessionInner>,
        settings: Arc<Settings>,
        edge: EdgeAddr,
        index: usize,
        requests: mpsc::UnboundedReceiver<Request>,
    ) -> Self {
        Runner {
            inner,
            settings,
            edge,
            index,
            requests,
            pending: HashMap::new(),
            bound_here: HashSet::new(),
            next_request: 1,
        }
    }

    /// Serves `first` (or connects, when the session's first connection went to another
    /// edge) and keeps a connection up until the session closes or this edge refuses
    /// for good.
    pub(crate) async fn run(mut self, first: Option<Connected>) {
        let mut conn = first;
        let mut resume: Option<String> = None;
        let failure = loop {
            let current = match conn.take() {
                Some(c) => c,
                None => match self.reconnect(resume.clone()).await {
                    Ok(c) => c,
                    Err(failure) => break failure,
                },
            };
            self.inner.renew_id(resume.as_deref(), &current.session_id);
            resume = Some(current.session_id.clone());
            let ended = self.serve(current).await;
            self.connection_ended();
            match ended {
                Ended::Stopped => break None,
                Ended::Fatal(e) => break Some(e),
                // A lost tunnel seen while the user closes the session is that close.
                Ended::Lost(_) if self.inner.stop.is_cancelled() => break None,
                Ended::Restart => {
                    tracing::info!(edge = %self.edge.addr, "the edge asked for a restart; reconnecting")
                }
                Ended::Lost(why) => {
                    tracing::warn!(edge = %self.edge.addr, reason = %why, "tunnel lost; reconnecting");
                    if !self.keep_going(why).await {
                        break None;
                    }
                }
            }
        };
        self.inner
            .edges
            .runner_ended(&self.inner, self.index, failure);
    }

    /// Hands every bind waiting on this connection back to the session, which gives it
    /// to another connection (or to this one once it is back).
    fn connection_ended(&mut self) {
        self.inner.edges.set_connected(self.index, false);
        self.bound_here.clear();
        for (_, pending) in self.pending.drain() {
            if let Pending::New(req) = pending {
                let _ = req.reply.send(BindReply::Lost);
            }
        }
    }

    /// Tells the disconnection hook; when it says stop, closes the session.
    async fn keep_going(&self, why: String) -> bool {
        if self.settings.hooks.disconnection.is_none() {
            return true;
        }
        let hooks = self.settings.hooks.clone();
        let addr = self.edge.addr.clone();
        let keep = run_hook(&self.inner.stop, move || {
            hooks.on_disconnection(&addr, &why)
        })
        .await
        .unwrap_or(false);
        if !keep {
            tracing::info!("the disconnection hook declined to reconnect; closing the session");
            self.inner.stop.cancel();
        }
        keep
    }

    /// Reconnects with capped, jittered backoff; `Err(None)` when the session was
    /// closed meanwhile, `Err(Some(e))` when the edge refused in a way that repeats.
    /// Binds asked of this runner meanwhile are handed back at once.
    async fn reconnect(&mut self, resume: Option<String>) -> Result<Connected, Option<Error>> {
        let mut delay = BACKOFF_MIN;
        let mut attempt = 0u32;
        loop {
            // Jitter: wait between half and all of the current delay.
            let wake = Instant::now() + delay.mul_f64(0.5 + rand::random::<f64>() / 2.0);
            loop {
                tokio::select! {
                    _ = self.inner.stop.cancelled() => return Err(None),
                    _ = sleep_until(wake) => break,
                    Some(request) = self.requests.recv() => {
                        // Registered endpoints are bound by the reconnect itself.
                        if let Request::Bind(req) = request {
                            let _ = req.reply.send(BindReply::Lost);
                        }
                    }
                }
            }
            attempt += 1;
            let ids = Ids {
                resume: resume.clone(),
                join: Some(self.inner.id()),
            };
            match establish(&self.settings, &self.edge, ids, CancellationToken::new()).await {
                Ok(conn) => {
                    tracing::info!(edge = %self.edge.addr, attempt, "tunnel established");
                    self.inner.observer.reconnected();
                    return Ok(conn);
                }
                Err(e) if repeats(e.code()) => return Err(Some(e)),
                Err(e) => {
                    tracing::warn!(edge = %self.edge.addr, attempt, error = %e, "connecting failed");
                    if !self.keep_going(e.to_string()).await {
                        return Err(None);
                    }
                }
            }
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }

    async fn serve(&mut self, mut conn: Connected) -> Ended {
        let result = self.serve_inner(&mut conn).await;
        conn.stop.cancel();
        result
    }

    async fn serve_inner(&mut self, conn: &mut Connected) -> Ended {
        if let Err(e) = self.rebind_all(&mut conn.control).await {
            return Ended::Lost(e.to_string());
        }
        self.inner.edges.set_connected(self.index, true);
        let mut ticker = interval(conn.heartbeat);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let tolerance = self
            .settings
            .heartbeat
            .tolerance
            .unwrap_or(conn.heartbeat * 3);
        // The heartbeat waiting for its ack: its sequence number and when it left.
        let mut in_flight: Option<(u64, Instant)> = None;
        let mut seq = 0u64;
        // The last measured round trip, reported to the edge with the next heartbeat.
        let mut rtt_us: Option<u64> = None;
        loop {
            // Anything from the edge counts as well as the ack: under load the ack may
            // queue behind the data of thousands of streams.
            let ack_deadline =
                in_flight.map(|(_, sent)| sent.max(conn.tunnel.last_heard()) + tolerance);
            tokio::select! {
                _ = self.inner.stop.cancelled() => {
                    // An intended close: end the control stream and give the edge a moment
                    // to see that (it ends the session and frees its routes) before the
                    // tunnel goes, so it is not taken for a lost tunnel.
                    conn.control.close().await;
                    let _ = timeout(CLOSE_GRACE, async {
                        while let Ok(Some(_)) = conn.control.recv::<EdgeMsg>().await {}
                    })
                    .await;
                    return Ended::Stopped;
                }
                _ = sleep_until(ack_deadline.unwrap_or_else(Instant::now)), if ack_deadline.is_some() => {
                    if conn.tunnel.last_heard().elapsed() < tolerance {
                        continue; // data arrived meanwhile: the deadline moves with it
                    }
                    return Ended::Lost(format!("the edge did not answer a heartbeat within {tolerance:?} and sent nothing else"));
                }
                _ = ticker.tick() => {
                    if in_flight.is_none() {
                        seq += 1;
                        in_flight = Some((seq, Instant::now()));
                        let beat = AgentMsg::Heartbeat { seq, rtt_us: rtt_us.take() };
                        if let Err(e) = conn.control.send(&beat).await {
                            return Ended::Lost(e.to_string());
                        }
                    }
                }
                request = self.requests.recv() => {
                    let Some(request) = request else { return Ended::Stopped };
                    if let Err(e) = self.send_request(&mut conn.control, request).await {
                        return Ended::Lost(e.to_string());
                    }
                }
                stream = conn.inbound.recv() => {
                    let Some(stream) = stream else { return Ended::Lost("tunnel closed".into()) };
                    let inner = self.inner.clone();
                    let stop = self.inner.stop.clone();
                    self.inner.tasks.spawn(async move {
                        // Boxed: reading the header and an agent-side handshake take
                        // more room than serving the connection does, and the box is
                        // freed before that begins.
                        let accepted = tokio::select! {
                            _ = stop.cancelled() => None,
                            accepted = Box::pin(accept_stream(inner, stream)) => accepted,
                        };
                        if let Some((sink, conn)) = accepted {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                _ = sink.deliver(conn) => {}
                            }
                        }
                    });
                }
                msg = conn.control.recv::<EdgeMsg>() => {
                    match msg {
                        Ok(Some(EdgeMsg::HeartbeatAck { seq: acked })) => {
                            if let Some((expected, sent)) = in_flight {
                                if acked == expected {
                                    in_flight = None;
                                    let rtt = sent.elapsed();
                                    rtt_us = Some(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX));
                                    self.heartbeat_answered(rtt);
                                }
                            }
                        }
                        Ok(Some(msg)) => {
                            if let Some(ended) = self.on_edge_msg(&mut conn.control, msg).await {
                                return ended;
                            }
                        }
                        Ok(None) => return Ended::Lost("the edge closed the control stream".into()),
                        Err(e) => return Ended::Lost(e.to_string()),
                    }
                }
            }
        }
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    /// Binds every registered endpoint on a new connection.
    async fn rebind_all(&mut self, control: &mut ControlChannel<MuxStream>) -> Result<()> {
        let ids: Vec<String> = self.inner.endpoints().keys().cloned().collect();
        for endpoint_id in ids {
            self.bind_registered(control, endpoint_id).await?;
        }
        Ok(())
    }

    /// Binds a registered endpoint on this connection, unless it is bound here already
    /// or was closed meanwhile.
    async fn bind_registered(
        &mut self,
        control: &mut ControlChannel<MuxStream>,
        endpoint_id: String,
    ) -> Result<()> {
        let Some(spec) = self
            .inner
            .endpoints()
            .get(&endpoint_id)
            .map(|r| r.spec.clone())
        else {
            return Ok(());
        };
        if !self.bound_here.insert(endpoint_id.clone()) {
            return Ok(());
        }
        let request_id = self.request_id();
        self.pending
            .insert(request_id, Pending::Rebind { endpoint_id });
        control
            .send(&AgentMsg::Bind {
                request_id,
                spec: Box::new(spec),
            })
            .await
    }

    async fn send_request(
        &mut self,
        control: &mut ControlChannel<MuxStream>,
        request: Request,
    ) -> Result<()> {
        match request {
            Request::Bind(req) => {
                let request_id = self.request_id();
                let msg = AgentMsg::Bind {
                    request_id,
                    spec: Box::new(req.spec.clone()),
                };
                match control.send(&msg).await {
                    // Too large to send: nothing was written, only this bind fails.
                    Err(e) if e.code() == ErrorCode::LimitExceeded => {
                        let _ = req.reply.send(BindReply::Refused(too_large(&req.spec, &e)));
                        Ok(())
                    }
                    Err(e) => {
                        let _ = req.reply.send(BindReply::Lost);
                        Err(e)
                    }
                    Ok(()) => {
                        self.bound_here.insert(req.spec.endpoint_id.clone());
                        self.pending.insert(request_id, Pending::New(req));
                        Ok(())
                    }
                }
            }
            Request::Follow { endpoint_id } => self.bind_registered(control, endpoint_id).await,
            Request::Unbind { endpoint_id } => {
                if !self.bound_here.remove(&endpoint_id) {
                    return Ok(());
                }
                control.send(&AgentMsg::Unbind { endpoint_id }).await
            }
        }
    }

    /// Hands a measured round trip to the heartbeat hook, off the session's task.
    fn heartbeat_answered(&self, latency: Duration) {
        tracing::trace!(?latency, "heartbeat answered");
        self.inner.observer.heartbeat(latency);
        if let Some(hook) = self.settings.hooks.heartbeat.clone() {
            let stop = self.inner.stop.clone();
            self.inner.tasks.spawn(async move {
                run_hook(&stop, move || hook(latency)).await;
            });
        }
    }

    /// Runs the hook (or default) for an edge command and answers the edge.
    async fn on_command(
        &mut self,
        control: &mut ControlChannel<MuxStream>,
        command_id: u64,
        command: Command,
    ) -> Option<Ended> {
        tracing::info!(?command, "the edge sent a command");
        let hooks = self.settings.hooks.clone();
        let (error, after) = run_hook(&self.inner.stop, move || hooks.on_command(&command))
            .await
            .unwrap_or((None, AfterCommand::Close));
        let answer = AgentMsg::CommandResult { command_id, error };
        if let Err(e) = control.send(&answer).await {
            return Some(Ended::Lost(e.to_string()));
        }
        match after {
            AfterCommand::Continue => None,
            AfterCommand::Reconnect => {
                hand_over(control).await;
                Some(Ended::Restart)
            }
            AfterCommand::Close => {
                hand_over(control).await;
                self.inner.stop.cancel();
                Some(Ended::Stopped)
            }
        }
    }

    async fn on_edge_msg(
        &mut self,
        control: &mut ControlChannel<MuxStream>,
        msg: EdgeMsg,
    ) -> Option<Ended> {
        match msg {
            EdgeMsg::Heartbeat | EdgeMsg::AuthOk { .. } | EdgeMsg::HeartbeatAck { .. } => None,
            EdgeMsg::Command {
                command_id,
                command,
            } => self.on_command(control, command_id, command).await,
            EdgeMsg::Stop { reason } => Some(Ended::Lost(format!(
                "the edge stopped the session: {reason}"
            ))),
            EdgeMsg::Error {
                request_id: None,
                code,
                message,
            } if repeats(code) => Some(Ended::Fatal(Error::new(code, message))),
            EdgeMsg::Error {
                request_id: None,
                code,
                message,
            } => Some(Ended::Lost(format!("the edge reported {code}: {message}"))),
            EdgeMsg::Error {
                request_id: Some(id),
                code,
                message,
            } => {
                match self.pending.remove(&id) {
                    Some(Pending::New(req)) => {
                        self.bound_here.remove(&req.spec.endpoint_id);
                        let _ = req
                            .reply
                            .send(BindReply::Refused(Error::new(code, message)));
                    }
                    Some(Pending::Rebind { endpoint_id }) => {
                        self.bound_here.remove(&endpoint_id);
                        tracing::warn!(edge = %self.edge.addr, %endpoint_id, %code, %message, "this edge refused to serve the endpoint: it is served through the session's other edges, if any, and asked for again when this connection is re-established");
                    }
                    None => {}
                }
                None
            }
            EdgeMsg::BindOk {
                request_id,
                endpoint_id,
                url,
            } => {
                match self.pending.remove(&request_id) {
                    Some(Pending::New(req)) => {
                        let BindRequest {
                            mut spec,
                            agent_tls,
                            sink,
                            stats,
                            reply,
                        } = *req;
                        pin_to_url(&mut spec, &url);
                        stats.bound(&url);
                        self.inner.endpoints().insert(
                            endpoint_id.clone(),
                            Registered {
                                spec,
                                url: url.clone(),
                                origin: self.index,
                                sink,
                                agent_tls,
                                stats,
                            },
                        );
                        if reply.send(BindReply::Bound(url)).is_err() {
                            // The caller gave up (timeout): do not serve an endpoint nobody owns.
                            self.inner.endpoints().remove(&endpoint_id);
                            let _ = control.send(&AgentMsg::Unbind { endpoint_id }).await;
                        }
                    }
                    Some(Pending::Rebind { .. }) => {
                        let known = {
                            let mut endpoints = self.inner.endpoints();
                            match endpoints.get_mut(&endpoint_id) {
                                // Another edge's URL differs in its port at most (the
                                // bind asks for the same name); only the URL the user
                                // was given, by the edge that gave it, may move.
                                Some(reg) if reg.url != url && reg.origin == self.index => {
                                    tracing::warn!(old = %reg.url, new = %url, "endpoint came back under a new URL");
                                    reg.url = url;
                                    true
                                }
                                Some(_) => {
                                    tracing::info!(edge = %self.edge.addr, %url, "endpoint bound");
                                    true
                                }
                                None => false,
                            }
                        };
                        if !known {
                            // Closed while the rebind was in flight.
                            let _ = control.send(&AgentMsg::Unbind { endpoint_id }).await;
                        }
                    }
                    None => {}
                }
                None
            }
        }
    }
}

/// The error for a bind too large for one control message, naming what made it large.
fn too_large(spec: &BindSpec, err: &Error) -> Error {
    let policy = spec.traffic_policy.as_deref().map_or(0, str::len);
    let pem = spec.edge_tls().map_or(0, |t| {
        t.cert.as_ref().map_or(0, |c| c.crt.len() + c.key.0.len())
            + t.client_cas.as_deref().map_or(0, str::len)
    });
    Error::new(
        ErrorCode::LimitExceeded,
        format!(
            "the bind is too large to send ({}; its traffic policy is {policy} bytes, its certificates {pem} bytes): shorten the traffic policy or the certificate bundles",
            err.message()
        ),
    )
}

/// Ends the control stream and lets the edge read what was sent on it (a command's
/// answer) and end the session before the tunnel is dropped: a tunnel torn down at once
/// can lose frames still on their way, and the edge would never get the answer.
async fn hand_over(control: &mut ControlChannel<MuxStream>) {
    control.close().await;
    let _ = timeout(CLOSE_GRACE, async {
        while let Ok(Some(_)) = control.recv::<EdgeMsg>().await {}
    })
    .await;
}

/// Runs a user hook on a blocking thread, so that a slow hook (or one that calls back
/// into the session, e.g. to close it) never stalls or deadlocks the session's task.
/// `None` when the session closed first or the hook panicked.
async fn run_hook<T: Send + 'static>(
    stop: &CancellationToken,
    hook: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    tokio::select! {
        _ = stop.cancelled() => None,
        done = tokio::task::spawn_blocking(hook) => done.ok(),
    }
}

/// Makes a rebind ask for exactly what the first bind got.
fn pin_to_url(spec: &mut BindSpec, url: &str) {
    let Some((_, rest)) = url.split_once("://") else {
        return;
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok()),
        None => (rest, None),
    };
    match &mut spec.kind {
        EndpointKind::Tls { domain, .. } | EndpointKind::Http { domain, .. } => {
            *domain = Some(host.to_owned())
        }
        EndpointKind::Tcp { remote_port } => *remote_port = port,
    }
}

/// Reads a proxy stream's header: the connection it carries, and where that goes
/// (`None` when it is refused).
async fn accept_stream(
    inner: Arc<SessionInner>,
    mut stream: MuxStream,
) -> Option<(Arc<ConnSink>, Box<Conn>)> {
    let header: StreamHeader = match timeout(STREAM_HEADER_TIMEOUT, read_header(&mut stream)).await
    {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "bad proxy stream");
            return None;
        }
        Err(_) => {
            tracing::warn!("proxy stream sent no header in time");
            return None;
        }
    };
    let target = inner
        .endpoints()
        .get(&header.endpoint_id)
        .map(|r| (r.sink.clone(), r.agent_tls.clone(), r.stats.clone()));
    let Some((sink, agent_tls, stats)) = target else {
        tracing::debug!(endpoint_id = %header.endpoint_id, "stream for a closed endpoint");
        return None;
    };
    let refused = |why: &str| stats.refused(header.client_addr, header.sni.as_deref(), why);
    let io = match agent_tls {
        Some(server_tls) if !header.edge_terminated => {
            let handshake = async {
                let start = LazyConfigAcceptor::new(Acceptor::default(), stream).await?;
                let config = server_tls.for_hello(&start.client_hello());
                start.into_stream(config).await
            };
            match timeout(AGENT_HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(tls)) => ConnIo::Tls(Box::new(tls)),
                Ok(Err(e)) => {
                    refused("agent TLS handshake failed");
                    tracing::info!(client = %header.client_addr, error = %e, "agent TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    refused("agent TLS handshake timed out");
                    tracing::info!(client = %header.client_addr, "agent TLS handshake timed out");
                    return None;
                }
            }
        }
        _ => ConnIo::Plain(stream),
    };
    if sink.is_full() {
        refused("refused: too many connections pending (max_pending)");
        tracing::warn!(client = %header.client_addr, "refused: the endpoint already has max_pending connections waiting to be accepted");
        return None;
    }
    let track = stats.opened(header.client_addr, header.sni.as_deref());
    Some((sink, Box::new(Conn::new(header, io, track))))
}
