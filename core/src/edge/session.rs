//! Agent sessions at the edge: tunnel handshake, authentication, the control loop.

use super::auth::{authorize, Grant};
use super::bind::{self, Bound};
use super::{SessionEntry, SessionInfo, Shared};
use crate::error::{Error, ErrorCode, Result};
use crate::wire::mux::{self, MuxHandle, MuxStream, Side};
use crate::wire::{AgentMsg, Command, ControlChannel, EdgeMsg, SecretPem, PROTOCOL_VERSION};
use rustls::ServerConfig;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{interval, timeout_at, Instant, MissedTickBehavior};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Accepts agent connections until the edge stops.
pub(crate) async fn accept_agents(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<ServerConfig>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let Some((tcp, peer)) = super::accept_next(&listener, &shared.stop, "tunnel").await else {
            return;
        };
        let Some(pass) = shared.unauthenticated.enter(peer.ip()) else {
            // Closed at once: a client holding its share cannot hold more sockets.
            tracing::debug!(%peer, "tunnel connection refused: too many unauthenticated connections (max_unauthenticated_per_ip, max_unauthenticated)");
            shared.metrics.session_refused(ErrorCode::LimitExceeded);
            continue;
        };
        let shared2 = shared.clone();
        let acceptor = acceptor.clone();
        shared.tasks.spawn(
            async move {
                if let Err(e) = serve_agent(shared2, acceptor, tcp, peer, pass).await {
                    tracing::info!(error = %e, "agent session ended");
                }
            }
            .instrument(tracing::info_span!("agent", %peer)),
        );
    }
}

async fn serve_agent(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    pass: super::gate::Pass,
) -> Result<()> {
    // One deadline for everything before authentication: TLS, control stream, Auth.
    let deadline = Instant::now() + shared.config.handshake_timeout();
    let tcp = tokio::io::BufReader::with_capacity(mux::READ_BUFFER, tcp);
    let tls = timeout_at(deadline, acceptor.accept(tcp))
        .await
        .map_err(|_| Error::new(ErrorCode::Timeout, "tunnel TLS handshake timed out"))?
        .map_err(|e| Error::io("tunnel TLS handshake", e))?;
    let kill = shared.stop.child_token();
    // However this function ends, the tunnel connection (its driver and socket) ends too.
    let _end_tunnel = kill.clone().drop_guard();
    // This tunnel connection, among others that may serve the same session id in turn.
    let conn: u64 = rand::random();
    // Cancelled once this connection's session has let go of everything it held.
    let done = CancellationToken::new();
    let _done = done.clone().drop_guard();
    let mut mux = mux::start(
        tls,
        Side::Edge,
        kill.clone(),
        shared.config.max_streams_per_session,
    );
    let control = timeout_at(deadline, mux.inbound.recv())
        .await
        .map_err(|_| Error::new(ErrorCode::Timeout, "agent opened no control stream"))?
        .ok_or_else(|| Error::protocol("tunnel closed before the control stream"))?;
    // Agents never open other streams; dropping the receiver resets any they try.
    drop(mux.inbound);
    let mut control = ControlChannel::new(control);
    let first = timeout_at(deadline, control.recv::<AgentMsg>())
        .await
        .map_err(|_| Error::new(ErrorCode::Timeout, "agent sent no Auth message"))??;
    let (authtoken, resume, join, hello) = match first {
        Some(AgentMsg::Auth {
            version,
            authtoken,
            resume,
            metadata,
            client_info,
            heartbeat_ms,
            join,
        }) => {
            if version != PROTOCOL_VERSION {
                let err = Error::new(
                    ErrorCode::VersionMismatch,
                    format!("agent speaks protocol {version}, this edge speaks {PROTOCOL_VERSION}"),
                );
                refuse_session(&shared, &mut control, &err).await;
                return Err(err);
            }
            let hello = Hello {
                client_info: client_info.iter().map(ToString::to_string).collect(),
                metadata,
                heartbeat_ms,
            };
            (authtoken.map(|SecretPem(t)| t), resume, join, hello)
        }
        _ => {
            let err = Error::protocol("the first control message must be Auth");
            refuse_session(&shared, &mut control, &err).await;
            return Err(err);
        }
    };
    let limit = shared.config.auth_failures_per_minute;
    let presented = authtoken.as_deref().unwrap_or("");
    let authorized = shared
        .auth_limiter
        .check(peer.ip(), presented, limit)
        .and_then(|()| {
            authorize(
                &shared.config.authtokens,
                authtoken.as_deref(),
                shared.config.open,
            )
            .inspect_err(|_| shared.auth_limiter.failed(peer.ip(), presented))
        });
    let grant = match authorized {
        Ok(g) => g,
        Err(err) => {
            tracing::info!(%peer, reason = %err, "agent refused");
            refuse_session(&shared, &mut control, &err).await;
            return Err(err);
        }
    };
    if shared.draining.is_cancelled() {
        let err = Error::new(
            ErrorCode::EdgeDraining,
            "this edge is draining (an operator asked it to stop): connect to another edge",
        );
        tracing::info!(%peer, "agent refused: the edge is draining");
        refuse_session(&shared, &mut control, &err).await;
        return Err(err);
    }
    let token_name = token_name(&shared.config.authtokens, authtoken.as_deref());
    drop(pass);
    if let Some(old) = resume {
        if let Some(old_done) = replace_session(&shared, &old, authtoken.as_deref()) {
            // The replaced connection lets go of its routes first: the session may keep
            // its id (joined in a cluster), and its rebinds must not meet the old ones.
            let _ =
                tokio::time::timeout(shared.config.handshake_timeout(), old_done.cancelled()).await;
        }
    }
    let session_id = session_id_for(&shared, join.as_deref(), authtoken.as_deref()).await;
    if let Some(cluster) = &shared.cluster {
        // Recorded before anything is bound, and only while this edge holds its lease.
        if let Err(err) = cluster.add_session(&session_id, authtoken.as_deref()).await {
            tracing::info!(%peer, reason = %err, "agent refused: the cluster store is out of reach");
            refuse_session(&shared, &mut control, &err).await;
            return Err(err);
        }
    }
    let (commands, command_rx) = mpsc::unbounded_channel();
    let client = hello.client_info.join(" ");
    shared.sessions().insert(
        session_id.clone(),
        SessionEntry {
            token: authtoken,
            kill: kill.clone(),
            conn,
            done: done.clone(),
            commands,
            info: SessionInfo {
                id: session_id.clone(),
                client_info: hello.client_info,
                metadata: hello.metadata,
                peer,
            },
            token_name,
            since: std::time::SystemTime::now(),
            heartbeat_rtt: None,
        },
    );
    tracing::info!(%session_id, client = %client, "agent authenticated");
    let mut session = AgentSession {
        shared: shared.clone(),
        id: session_id.clone(),
        grant,
        tunnel: mux.handle,
        conn,
        bound: HashMap::new(),
    };
    let agent_heartbeat = hello.heartbeat_ms.map(Duration::from_millis);
    let result = session
        .run(&mut control, kill.clone(), agent_heartbeat, command_rx)
        .await;
    let freed = session.bound.len();
    session.release_all();
    {
        // Unless a newer connection of the session took the id over meanwhile.
        let mut sessions = shared.sessions();
        if sessions.get(&session_id).is_some_and(|e| e.conn == conn) {
            sessions.remove(&session_id);
        }
    }
    if let Some(cluster) = shared.cluster.clone() {
        let id = session_id.clone();
        shared
            .tasks
            .spawn(async move { cluster.remove_session(&id).await });
    }
    kill.cancel();
    match result {
        Ok(reason) => {
            tracing::info!(%session_id, endpoints_freed = freed, %reason, "agent session ended; its routes are freed")
        }
        Err(e) => {
            tracing::info!(%session_id, endpoints_freed = freed, reason = %e, "agent session ended; its routes are freed")
        }
    }
    Ok(())
}

/// What the agent said about itself in `Auth`.
struct Hello {
    client_info: Vec<String>,
    metadata: String,
    heartbeat_ms: Option<u64>,
}

/// An operator's command on its way to a session, with where to put the answer.
pub(crate) struct CommandRequest {
    pub(crate) command: Command,
    pub(crate) reply: oneshot::Sender<Result<()>>,
}

/// The id of the session an authenticated tunnel connection serves.
///
/// `join` is the session the agent says this connection belongs to (it holds that
/// session at another edge too). A cluster edge gives the connection that id when no
/// edge holds it for another token and this edge holds no live connection of it (a
/// reconnect replaced its old one already): the session's binds through every edge
/// then have one owner. A single edge knows nothing of other edges' sessions, so it
/// gives every connection a fresh id.
async fn session_id_for(shared: &Shared, join: Option<&str>, token: Option<&str>) -> String {
    let (Some(join), Some(cluster)) = (join, &shared.cluster) else {
        if let Some(join) = join {
            tracing::debug!(%join, "the agent joins a session held at another edge; this edge is not in a cluster, so the connection gets a session of its own");
        }
        return crate::random_id();
    };
    // Checked here before etcd is asked: the id comes from the agent, and a key built
    // from it must be one of ours.
    let well_formed = join.len() == 32 && join.bytes().all(|b| b.is_ascii_hexdigit());
    let held_here = shared.sessions().contains_key(join);
    let may_join = if well_formed && !held_here {
        cluster.may_join(join, token).await
    } else {
        Ok(false)
    };
    match may_join {
        Ok(true) => {
            tracing::info!(session_id = %join, "the agent joins its session held at another edge");
            join.to_owned()
        }
        Ok(_) => {
            tracing::info!(%join, "the agent cannot join that session here (another token holds it, or this edge already does); it gets a session of its own");
            crate::random_id()
        }
        Err(e) => {
            tracing::warn!(%join, error = %e, "cannot check the session to join; the connection gets a session of its own");
            crate::random_id()
        }
    }
}

/// Ends an older session the reconnecting agent replaces (same token required); returns
/// what is cancelled once it has let go of its routes.
fn replace_session(
    shared: &Shared,
    old_id: &str,
    token: Option<&str>,
) -> Option<CancellationToken> {
    let mut sessions = shared.sessions();
    if !sessions
        .get(old_id)
        .is_some_and(|old| old.token.as_deref() == token)
    {
        return None;
    }
    let old = sessions.remove(old_id)?;
    tracing::info!(session_id = %old_id, "replaced by a reconnecting agent");
    old.kill.cancel();
    Some(old.done)
}

/// Which configured authtoken `token` is, as `authtokens[i]` (never the token itself);
/// `None` for an open edge's agent that presented no known token.
fn token_name(rules: &[super::TokenRule], token: Option<&str>) -> Option<String> {
    let token = token?;
    rules
        .iter()
        .position(|r| r.token == token)
        .map(|i| format!("authtokens[{i}]"))
}

/// Refuses an agent session: counts it, tells the agent why and closes.
async fn refuse_session(shared: &Shared, control: &mut ControlChannel<MuxStream>, err: &Error) {
    shared.metrics.session_refused(err.code());
    refuse(control, err).await;
}

async fn refuse(control: &mut ControlChannel<MuxStream>, err: &Error) {
    let _ = control
        .send(&EdgeMsg::Error {
            request_id: None,
            code: err.code(),
            message: err.message().to_owned(),
        })
        .await;
    control.close().await;
}

/// The answer to `Bind` request `request_id`.
fn bind_reply(shared: &Shared, request_id: u64, result: Result<(String, String)>) -> EdgeMsg {
    match result {
        Ok((endpoint_id, url)) => EdgeMsg::BindOk {
            request_id,
            endpoint_id,
            url,
        },
        Err(e) => {
            tracing::info!(reason = %e, "bind refused");
            shared.metrics.bind_refused(e.code());
            EdgeMsg::Error {
                request_id: Some(request_id),
                code: e.code(),
                message: e.message().to_owned(),
            }
        }
    }
}

/// One authenticated agent and what it has bound.
pub(crate) struct AgentSession {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: String,
    pub(crate) grant: Grant,
    pub(crate) tunnel: MuxHandle,
    /// This tunnel connection (see `SessionEntry::conn`).
    pub(crate) conn: u64,
    pub(crate) bound: HashMap<String, Bound>,
}

impl AgentSession {
    /// The agent measured `us` microseconds for its last heartbeat's round trip.
    fn heartbeat_rtt(&self, us: u64) {
        let rtt = Duration::from_micros(us.min(3_600_000_000));
        self.shared.metrics.heartbeat_rtt(rtt);
        if let Some(entry) = self.shared.sessions().get_mut(&self.id) {
            if entry.conn == self.conn {
                entry.heartbeat_rtt = Some(rtt);
            }
        }
    }

    async fn run(
        &mut self,
        control: &mut ControlChannel<MuxStream>,
        kill: CancellationToken,
        agent_heartbeat: Option<Duration>,
        mut commands: mpsc::UnboundedReceiver<CommandRequest>,
    ) -> Result<&'static str> {
        let heartbeat = self.shared.config.heartbeat();
        // An agent may send its heartbeats less often than the edge does (ngrok's
        // heartbeat_interval); allow three of the longer interval.
        let silence_limit = heartbeat.max(agent_heartbeat.unwrap_or_default()) * 3;
        let mut command_replies: HashMap<u64, oneshot::Sender<Result<()>>> = HashMap::new();
        let mut next_command = 1u64;
        control
            .send(&EdgeMsg::AuthOk {
                version: PROTOCOL_VERSION,
                session_id: self.id.clone(),
                heartbeat_ms: heartbeat.as_millis() as u64,
            })
            .await?;
        let mut ticker = interval(heartbeat);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut last_heartbeat: Option<Instant> = None;
        // Binds waiting for an ACME certificate, beside the loop (see bind::pending_cert).
        let mut waiting = futures::stream::FuturesUnordered::<bind::PendingBind>::new();
        loop {
            tokio::select! {
                Some((request_id, prepared, ready)) = futures::StreamExt::next(&mut waiting), if !waiting.is_empty() => {
                    let result = match ready {
                        Ok(()) => self.bind(*prepared).await,
                        Err(e) => Err(e),
                    };
                    control.send(&bind_reply(&self.shared, request_id, result)).await?;
                }
                _ = kill.cancelled() => {
                    let _ = control.send(&EdgeMsg::Stop { reason: "edge is closing the session".into() }).await;
                    return Ok("the edge closed it (shutdown or a reconnecting agent replaced it)");
                }
                Some(request) = commands.recv() => {
                    let command_id = next_command;
                    next_command += 1;
                    tracing::info!(command = ?request.command, "sending command to the agent");
                    command_replies.insert(command_id, request.reply);
                    control.send(&EdgeMsg::Command { command_id, command: request.command }).await?;
                }
                _ = ticker.tick() => {
                    // Anything from the agent counts: its heartbeat may queue behind data.
                    if last_heard.max(self.tunnel.last_heard()).elapsed() > silence_limit {
                        return Err(Error::new(ErrorCode::Timeout, format!("nothing from the agent (no heartbeat, no data) for {silence_limit:?}")));
                    }
                    control.send(&EdgeMsg::Heartbeat).await?;
                }
                msg = control.recv::<AgentMsg>() => {
                    last_heard = Instant::now();
                    let msg = match msg {
                        Ok(m) => m,
                        Err(e) => {
                            // Oversized or malformed: tell the agent why, then end the session.
                            refuse(control, &e).await;
                            return Err(e);
                        }
                    };
                    match msg {
                        None => return Ok("the agent closed it"),
                        Some(AgentMsg::Heartbeat { seq, rtt_us }) => {
                            let now = Instant::now();
                            if let Some(previous) = last_heartbeat.replace(now) {
                                self.shared.metrics.heartbeat_gap(now - previous);
                            }
                            if let Some(us) = rtt_us {
                                self.heartbeat_rtt(us);
                            }
                            control.send(&EdgeMsg::HeartbeatAck { seq }).await?;
                        }
                        Some(AgentMsg::CommandResult { command_id, error }) => {
                            let result = match error {
                                None => Ok(()),
                                Some(e) => Err(Error::new(e.code, e.message)),
                            };
                            tracing::info!(command_id, ?result, "agent answered a command");
                            if let Some(reply) = command_replies.remove(&command_id) {
                                let _ = reply.send(result);
                            }
                        }
                        Some(AgentMsg::Bind { request_id, spec }) => {
                            let prepared = match bind::Prepared::new(*spec) {
                                Ok(p) => Box::new(p),
                                Err(e) => {
                                    control.send(&bind_reply(&self.shared, request_id, Err(e))).await?;
                                    continue;
                                }
                            };
                            match bind::pending_cert(&self.shared, &self.grant, &prepared) {
                                Some(wait) => waiting.push(Box::pin(async move { (request_id, prepared, wait.await) })),
                                None => {
                                    let result = self.bind(*prepared).await;
                                    control.send(&bind_reply(&self.shared, request_id, result)).await?;
                                }
                            }
                        }
                        Some(AgentMsg::Unbind { endpoint_id }) => self.unbind(&endpoint_id),
                        Some(AgentMsg::Auth { .. }) => {
                            return Err(Error::protocol("Auth sent twice"));
                        }
                    }
                }
            }
        }
    }

    /// Serves a prepared bind, replacing an endpoint of the same id; returns the
    /// endpoint id and public URL.
    async fn bind(&mut self, prepared: bind::Prepared) -> Result<(String, String)> {
        let start = Instant::now();
        let result = self.bind_timed(prepared).await;
        self.shared.metrics.bind(start.elapsed());
        result
    }

    async fn bind_timed(&mut self, prepared: bind::Prepared) -> Result<(String, String)> {
        self.unbind(prepared.endpoint_id());
        let limit = self.shared.config.max_endpoints_per_session;
        if self.bound.len() >= limit {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!("this session already has {limit} endpoints (max_endpoints_per_session)"),
            ));
        }
        let stats = Arc::new(super::EndpointStats::default());
        let owner = bind::Owner {
            shared: &self.shared,
            session_id: &self.id,
            grant: &self.grant,
            tunnel: &self.tunnel,
            conn: self.conn,
            stats: &stats,
        };
        let (bound, url) = bind::bind(&owner, &prepared).await?;
        stats.bound(&url);
        let endpoint_id = prepared.endpoint_id().to_owned();
        self.shared.endpoints().insert(
            (self.id.clone(), endpoint_id.clone()),
            super::EndpointEntry {
                url: url.clone(),
                proto: prepared.proto(),
                termination: prepared.termination(),
                stats,
            },
        );
        tracing::info!(%endpoint_id, %url, terminate_at = %prepared.terminate_at(), "endpoint bound");
        self.bound.insert(endpoint_id.clone(), bound);
        Ok((endpoint_id, url))
    }

    pub(crate) fn unbind(&mut self, endpoint_id: &str) {
        if let Some(bound) = self.bound.remove(endpoint_id) {
            self.forget(endpoint_id);
            bound.release(&self.shared, &self.id, endpoint_id);
            tracing::info!(%endpoint_id, "endpoint closed");
        }
    }

    fn release_all(&mut self) {
        let bound: Vec<_> = self.bound.drain().collect();
        for (endpoint_id, bound) in bound {
            self.forget(&endpoint_id);
            bound.release(&self.shared, &self.id, &endpoint_id);
        }
    }

    /// Drops the endpoint from the admin API's and the metrics' list.
    fn forget(&self, endpoint_id: &str) {
        self.shared
            .endpoints()
            .remove(&(self.id.clone(), endpoint_id.to_owned()));
    }
}
