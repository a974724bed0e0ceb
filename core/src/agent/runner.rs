//! The session's one long-running task: keeps the tunnel up, talks on the
//! control stream, rebinds after a reconnect and dispatches proxy streams.

use super::conn::{Conn, ConnIo};
use super::hooks::{AfterCommand, Hooks};
use super::spec::EndpointKind;
use super::{Registered, SessionInner};
use crate::error::{Error, ErrorCode, Result};
use crate::tls;
use crate::wire::mux::{self, MuxHandle, MuxStream, Side};
use crate::wire::{
    read_header, AgentMsg, BindSpec, ClientInfo, Command, ControlChannel, EdgeMsg, SecretPem,
    StreamHeader, PROTOCOL_VERSION,
};
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{interval, sleep, sleep_until, timeout, Instant, MissedTickBehavior};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const STREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const AGENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a closing session waits for the edge to end it before dropping the tunnel.
const CLOSE_GRACE: Duration = Duration::from_millis(500);
/// The shortest heartbeat interval and tolerance accepted.
pub(crate) const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

/// The session's own heartbeat settings; unset values follow the edge.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Heartbeat {
    pub(crate) interval: Option<Duration>,
    pub(crate) tolerance: Option<Duration>,
}

/// A user's bind: what to serve and where to deliver the answer and the connections.
pub(crate) struct BindRequest {
    pub(crate) spec: BindSpec,
    pub(crate) agent_tls: Option<TlsAcceptor>,
    pub(crate) conns: mpsc::Sender<Conn>,
    pub(crate) reply: oneshot::Sender<Result<String>>,
}

/// What a user call asks of the runner.
pub(crate) enum Request {
    Bind(Box<BindRequest>),
    Unbind { endpoint_id: String },
}

/// How to reach and authenticate with the edge.
pub(crate) struct Settings {
    addr: String,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    authtoken: Option<SecretPem>,
    metadata: String,
    client_info: Vec<ClientInfo>,
    heartbeat: Heartbeat,
    hooks: Hooks,
}

impl Settings {
    pub(crate) fn new(
        addr: String,
        root_cas: Option<&[u8]>,
        authtoken: Option<SecretPem>,
        metadata: String,
        mut client_info: Vec<ClientInfo>,
        heartbeat: Heartbeat,
        hooks: Hooks,
    ) -> Result<Self> {
        let host = match addr.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() && !host.is_empty() => host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            _ => {
                return Err(Error::new(
                    ErrorCode::InvalidUrl,
                    format!("server_addr {addr:?} is not host:port"),
                ))
            }
        };
        let server_name = ServerName::try_from(host).map_err(|_| {
            Error::new(
                ErrorCode::InvalidUrl,
                format!("server_addr {addr:?} has an invalid host"),
            )
        })?;
        let config = tls::tunnel_client_config(root_cas).map_err(|e| {
            Error::new(
                e.code(),
                format!(
                    "the CA bundle for the tunnel's TLS (root_cas / ca_cert) is unusable: {}",
                    e.message()
                ),
            )
        })?;
        client_info.push(ClientInfo {
            client_type: "burrow".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            comments: None,
        });
        Ok(Settings {
            addr,
            server_name,
            connector: TlsConnector::from(Arc::new(config)),
            authtoken,
            metadata,
            client_info,
            heartbeat,
            hooks,
        })
    }
}

/// An authenticated tunnel connection.
pub(crate) struct Connected {
    pub(crate) session_id: String,
    heartbeat: Duration,
    control: ControlChannel<MuxStream>,
    inbound: mpsc::UnboundedReceiver<MuxStream>,
    tunnel: MuxHandle,
    stop: CancellationToken,
}

impl Drop for Connected {
    fn drop(&mut self) {
        // The tunnel lives exactly as long as this value: not a child of the session's
        // stop token, so a closing session can end its control stream first.
        self.stop.cancel();
    }
}

/// Dials the edge, starts the multiplexer and authenticates.
pub(crate) async fn establish(
    settings: &Settings,
    resume: Option<String>,
    stop: CancellationToken,
) -> Result<Connected> {
    let addr = &settings.addr;
    let unreachable = |detail: String| {
        Error::new(
            ErrorCode::ConnectFailed,
            format!("cannot reach the edge at {addr}: {detail}"),
        )
    };
    let tcp = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr.as_str()))
        .await
        .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let tcp = tokio::io::BufReader::with_capacity(mux::READ_BUFFER, tcp);
    let tls = timeout(
        CONNECT_TIMEOUT,
        settings
            .connector
            .connect(settings.server_name.clone(), tcp),
    )
    .await
    .map_err(|_| unreachable("TLS handshake timed out".into()))?
    .map_err(|e| unreachable(format!("TLS handshake failed: {e}{}", trust_hint(&e))))?;
    // The agent opens only the control stream; the edge opens the rest.
    let mux = mux::start(tls, Side::Agent, stop.clone(), 16);
    let fail = |e: Error| {
        stop.cancel();
        e
    };
    let stream = mux.handle.open().await.map_err(fail)?;
    let mut control = ControlChannel::new(stream);
    control
        .send(&AgentMsg::Auth {
            version: PROTOCOL_VERSION,
            authtoken: settings.authtoken.clone(),
            metadata: settings.metadata.clone(),
            resume,
            join: None,
            client_info: settings.client_info.clone(),
            heartbeat_ms: settings
                .heartbeat
                .interval
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        })
        .await
        .map_err(fail)?;
    let answer = timeout(CONNECT_TIMEOUT, control.recv::<EdgeMsg>())
        .await
        .map_err(|_| fail(unreachable("the edge did not answer Auth".into())))?
        .map_err(fail)?;
    match answer {
        Some(EdgeMsg::AuthOk {
            session_id,
            heartbeat_ms,
            ..
        }) => Ok(Connected {
            session_id,
            heartbeat: settings
                .heartbeat
                .interval
                .unwrap_or(Duration::from_millis(heartbeat_ms.max(50))),
            control,
            inbound: mux.inbound,
            tunnel: mux.handle,
            stop,
        }),
        Some(EdgeMsg::Error { code, message, .. }) => Err(fail(Error::new(code, message))),
        Some(other) => Err(fail(Error::protocol(format!(
            "expected AuthOk, the edge sent {other:?}"
        )))),
        None => Err(fail(unreachable(
            "the edge closed the tunnel during Auth".into(),
        ))),
    }
}

/// What to do about a tunnel certificate the agent does not trust.
fn trust_hint(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error as TlsError};
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>());
    match tls {
        Some(TlsError::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => " (the edge's certificate is not signed by a CA this agent trusts: pass the edge's CA with --root-cas, or root_cas in the SDKs)",
        _ => "",
    }
}

enum Pending {
    /// A user's bind, waiting for the edge's answer.
    New(Box<BindRequest>),
    /// Re-binding a registered endpoint after a reconnect.
    Rebind { endpoint_id: String },
}

pub(crate) struct Runner {
    inner: Arc<SessionInner>,
    settings: Settings,
    requests: mpsc::UnboundedReceiver<Request>,
    pending: HashMap<u64, Pending>,
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

/// Errors that a reconnect would only repeat: the session ends with them instead.
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
        settings: Settings,
        requests: mpsc::UnboundedReceiver<Request>,
    ) -> Self {
        Runner {
            inner,
            settings,
            requests,
            pending: HashMap::new(),
            next_request: 1,
        }
    }

    pub(crate) async fn run(mut self, first: Connected) {
        let mut conn = first;
        let failure = loop {
            let session_id = conn.session_id.clone();
            match self.serve(conn).await {
                Ended::Stopped => break None,
                Ended::Fatal(e) => break Some(e),
                // A lost tunnel seen while the user closes the session is that close.
                Ended::Lost(_) if self.inner.stop.is_cancelled() => break None,
                Ended::Restart => tracing::info!("the edge asked for a restart; reconnecting"),
                Ended::Lost(why) => {
                    tracing::warn!(reason = %why, "tunnel lost; reconnecting");
                    if !self.keep_going(why).await {
                        break None;
                    }
                }
            }
            conn = match self.reconnect(session_id).await {
                Ok(c) => c,
                Err(failure) => break failure,
            };
        };
        let reason = match &failure {
            Some(e) => {
                tracing::error!(error = %e, "the session ended: the edge refuses it, and reconnecting would not change that");
                e.clone()
            }
            None => Error::new(ErrorCode::Closed, "the session is closed"),
        };
        *self.inner.failure.lock().unwrap_or_else(|p| p.into_inner()) = failure;
        for (_, pending) in self.pending.drain() {
            if let Pending::New(req) = pending {
                let _ = req.reply.send(Err(reason.clone()));
            }
        }
        self.inner.endpoints().clear();
        self.inner.stop.cancel();
    }

    /// Tells the disconnection hook; when it says stop, closes the session.
    async fn keep_going(&self, why: String) -> bool {
        if self.settings.hooks.disconnection.is_none() {
            return true;
        }
        let hooks = self.settings.hooks.clone();
        let addr = self.settings.addr.clone();
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
    async fn reconnect(&mut self, resume: String) -> Result<Connected, Option<Error>> {
        let mut delay = BACKOFF_MIN;
        let mut attempt = 0u32;
        loop {
            // Jitter: wait between half and all of the current delay.
            let jittered = delay.mul_f64(0.5 + rand::random::<f64>() / 2.0);
            tokio::select! {
                _ = self.inner.stop.cancelled() => return Err(None),
                _ = sleep(jittered) => {}
            }
            attempt += 1;
            match establish(
                &self.settings,
                Some(resume.clone()),
                CancellationToken::new(),
            )
            .await
            {
                Ok(conn) => {
                    tracing::info!(attempt, "tunnel re-established");
                    return Ok(conn);
                }
                Err(e) if repeats(e.code()) => return Err(Some(e)),
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "reconnect failed");
                    if !self.keep_going(e.to_string()).await {
                        return Err(None);
                    }
                }
            }
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }

    async fn serve(&mut self, mut conn: Connected) -> Ended {
        *self.inner.id.lock().unwrap_or_else(|p| p.into_inner()) = conn.session_id.clone();
        let result = self.serve_inner(&mut conn).await;
        conn.stop.cancel();
        result
    }

    async fn serve_inner(&mut self, conn: &mut Connected) -> Ended {
        if let Err(e) = self.rebind_all(&mut conn.control).await {
            return Ended::Lost(e.to_string());
        }
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
                        if let Err(e) = conn.control.send(&AgentMsg::Heartbeat { seq }).await {
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
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = dispatch(inner, stream) => {}
                        }
                    });
                }
                msg = conn.control.recv::<EdgeMsg>() => {
                    match msg {
                        Ok(Some(EdgeMsg::HeartbeatAck { seq: acked })) => {
                            if let Some((expected, sent)) = in_flight {
                                if acked == expected {
                                    in_flight = None;
                                    self.heartbeat_answered(sent.elapsed());
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

    /// Re-sends binds for registered endpoints and for binds that were in flight.
    async fn rebind_all(&mut self, control: &mut ControlChannel<MuxStream>) -> Result<()> {
        let specs: Vec<BindSpec> = self
            .inner
            .endpoints()
            .values()
            .map(|r| r.spec.clone())
            .collect();
        for spec in specs {
            let request_id = self.request_id();
            self.pending.insert(
                request_id,
                Pending::Rebind {
                    endpoint_id: spec.endpoint_id.clone(),
                },
            );
            control
                .send(&AgentMsg::Bind {
                    request_id,
                    spec: Box::new(spec),
                })
                .await?;
        }
        let in_flight: Vec<(u64, BindSpec)> = self
            .pending
            .iter()
            .filter_map(|(id, p)| match p {
                Pending::New(req) => Some((*id, req.spec.clone())),
                Pending::Rebind { .. } => None,
            })
            .collect();
        for (request_id, spec) in in_flight {
            control
                .send(&AgentMsg::Bind {
                    request_id,
                    spec: Box::new(spec),
                })
                .await?;
        }
        Ok(())
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
                        let _ = req.reply.send(Err(too_large(&req.spec, &e)));
                        Ok(())
                    }
                    Err(e) => Err(e),
                    Ok(()) => {
                        self.pending.insert(request_id, Pending::New(req));
                        Ok(())
                    }
                }
            }
            Request::Unbind { endpoint_id } => {
                control.send(&AgentMsg::Unbind { endpoint_id }).await
            }
        }
    }

    /// Hands a measured round trip to the heartbeat hook, off the session's task.
    fn heartbeat_answered(&self, latency: Duration) {
        tracing::trace!(?latency, "heartbeat answered");
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
                        let _ = req.reply.send(Err(Error::new(code, message)));
                    }
                    Some(Pending::Rebind { endpoint_id }) => {
                        tracing::error!(%endpoint_id, %code, %message, "could not rebind endpoint after reconnect; it stays closed until the next reconnect");
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
                            conns,
                            reply,
                        } = *req;
                        pin_to_url(&mut spec, &url);
                        self.inner.endpoints().insert(
                            endpoint_id.clone(),
                            Registered {
                                spec,
                                url: url.clone(),
                                conns,
                                agent_tls,
                            },
                        );
                        if reply.send(Ok(url)).is_err() {
                            // The caller gave up (timeout): do not serve an endpoint nobody owns.
                            self.inner.endpoints().remove(&endpoint_id);
                            let _ = control.send(&AgentMsg::Unbind { endpoint_id }).await;
                        }
                    }
                    Some(Pending::Rebind { .. }) => {
                        let known = {
                            let mut endpoints = self.inner.endpoints();
                            match endpoints.get_mut(&endpoint_id) {
                                Some(reg) if reg.url != url => {
                                    tracing::warn!(old = %reg.url, new = %url, "endpoint came back under a new URL");
                                    reg.url = url;
                                    true
                                }
                                Some(_) => {
                                    tracing::info!(%url, "endpoint rebound");
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
        EndpointKind::Tls { domain, .. } => *domain = Some(host.to_owned()),
        EndpointKind::Tcp { remote_port } => *remote_port = port,
    }
}

/// Reads a proxy stream's header and hands the connection to its endpoint.
async fn dispatch(inner: Arc<SessionInner>, mut stream: MuxStream) {
    let header: StreamHeader = match timeout(STREAM_HEADER_TIMEOUT, read_header(&mut stream)).await
    {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return tracing::warn!(error = %e, "bad proxy stream"),
        Err(_) => return tracing::warn!("proxy stream sent no header in time"),
    };
    let target = inner
        .endpoints()
        .get(&header.endpoint_id)
        .map(|r| (r.conns.clone(), r.agent_tls.clone()));
    let Some((conns, agent_tls)) = target else {
        tracing::debug!(endpoint_id = %header.endpoint_id, "stream for a closed endpoint");
        return;
    };
    let io = match agent_tls {
        Some(acceptor) if !header.edge_terminated => {
            match timeout(AGENT_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => ConnIo::Tls(Box::new(tls)),
                Ok(Err(e)) => {
                    return tracing::info!(client = %header.client_addr, error = %e, "agent TLS handshake failed")
                }
                Err(_) => {
                    return tracing::info!(client = %header.client_addr, "agent TLS handshake timed out")
                }
            }
        }
        _ => ConnIo::Plain(stream),
    };
    if let Err(mpsc::error::TrySendError::Full(conn)) = conns.try_send(Conn::new(header, io)) {
        tracing::warn!(client = %conn.client_addr(), "refused: the endpoint already has max_pending connections waiting to be accepted");
    }
}
