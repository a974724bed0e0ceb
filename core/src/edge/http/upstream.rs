//! The proxy's connections to an endpoint's agent: HTTP/1.1 (or h2) client
//! connections over tunnel streams, kept for reuse by the client connection that
//! opened them (so PROXY protocol and per-connection state upstream stay the
//! client's own).

use super::respond::Refusal;
use super::{Body, ConnCtx};
use crate::agent::http::AppProtocol;
use crate::edge::metrics::{Counted, StreamClient};
use crate::edge::routes::{lookup_stand_in, Route};
use crate::edge::Shared;
use crate::wire::mux::MuxStream;
use crate::wire::{write_header, StreamHeader};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::{Arc, Mutex};

/// Most idle connections a client connection keeps per endpoint.
const MAX_IDLE: usize = 16;

/// One client connection to an endpoint's agent.
enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

impl Sender {
    fn is_ready(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_ready(),
            Sender::H2(s) => s.is_ready(),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    /// Sends `req`; gives it back when the connection closed before it was sent.
    async fn send(
        &mut self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, (hyper::Error, Option<Request<Body>>)> {
        let result = match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        };
        result.map_err(|mut e| {
            let req = e.take_message();
            (e.into_error(), req)
        })
    }
}

/// The agent connections of one client connection, by endpoint (session and endpoint
/// id); almost always one endpoint, so a list searched without allocating.
#[derive(Default)]
pub(crate) struct Upstreams {
    idle: Mutex<Vec<Idle>>,
}

/// The kept connections to one endpoint.
struct Idle {
    session_id: String,
    endpoint_id: String,
    senders: Vec<Sender>,
}

impl Idle {
    fn is_for(&self, route: &Route) -> bool {
        self.endpoint_id == route.endpoint_id && self.session_id == route.session_id
    }
}

/// A tunnel stream to `route`'s agent, its header written: the upstream's bytes follow.
pub(crate) async fn open_stream(
    shared: &Shared,
    route: &Route,
    ctx: &ConnCtx,
    host: &str,
    alpn: Option<&str>,
) -> Result<Counted<MuxStream>, Refusal> {
    let mut route = std::borrow::Cow::Borrowed(route);
    let mut stream = loop {
        match route.tunnel.open().await {
            Ok(s) => break s,
            Err(e) => match lookup_stand_in(shared.routes.as_ref(), host, &route) {
                Some(stand_in) => route = std::borrow::Cow::Owned(stand_in),
                None => {
                    tracing::info!(reason = %e, endpoint = %route.endpoint_id, "refused: the endpoint's agent is unreachable");
                    shared
                        .metrics
                        .refused(crate::edge::metrics::Refusal::AgentUnavailable);
                    return Err(Refusal::EndpointOffline);
                }
            },
        }
    };
    let header = StreamHeader {
        endpoint_id: route.endpoint_id.clone(),
        client_addr: ctx.peer,
        edge_terminated: true,
        sni: ctx.sni.clone(),
        alpn: alpn.map(str::to_owned),
        server_addr: ctx.server_addr,
        client_cert_subject: ctx.client_cert_subject.clone(),
    };
    write_header(&mut stream, &header, &[]).await.map_err(|e| {
        tracing::info!(reason = %e, "refused: the endpoint's agent is unreachable");
        Refusal::EndpointOffline
    })?;
    let client = StreamClient {
        addr: ctx.peer,
        sni: ctx.sni.as_deref(),
    };
    Ok(Counted::new(
        stream,
        route.stats.clone(),
        &shared.metrics,
        client,
    ))
}

impl Upstreams {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ready idle connection to `route`'s endpoint, if one is kept.
    fn take(&self, route: &Route) -> Option<Sender> {
        let mut idle = self.idle();
        let list = &mut idle.iter_mut().find(|i| i.is_for(route))?.senders;
        list.retain(|s| !s.is_closed());
        let pos = list.iter().position(Sender::is_ready)?;
        match &list[pos] {
            // One h2 connection carries every request at once.
            Sender::H2(s) => Some(Sender::H2(s.clone())),
            Sender::H1(_) => Some(list.swap_remove(pos)),
        }
    }

    fn put(&self, route: &Route, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle();
        let pos = match idle.iter().position(|i| i.is_for(route)) {
            Some(pos) => pos,
            None => {
                idle.push(Idle {
                    session_id: route.session_id.clone(),
                    endpoint_id: route.endpoint_id.clone(),
                    senders: Vec::new(),
                });
                idle.len() - 1
            }
        };
        let list = &mut idle[pos].senders;
        let shared_h2 = matches!(sender, Sender::H2(_)) && !list.is_empty();
        if list.len() < MAX_IDLE && !shared_h2 {
            list.push(sender);
        }
    }

    /// Sends `req` to `route`'s agent: on a kept connection when one is ready, else on
    /// a new one. `reuse` false (an upgrade) keeps the connection out of the pool.
    pub(crate) async fn send(
        &self,
        shared: &Arc<Shared>,
        route: &Route,
        ctx: &ConnCtx,
        host: &str,
        req: Request<Body>,
        reuse: bool,
    ) -> Result<Response<Incoming>, Refusal> {
        let protocol = route
            .http
            .as_ref()
            .map_or(AppProtocol::Http1, |h| h.options.app_protocol);
        let mut req = req;
        // A kept connection may have closed just now: the request then goes on a new one.
        for _ in 0..2 {
            let kept = if reuse { self.take(route) } else { None };
            let fresh = kept.is_none();
            let mut sender = match kept {
                Some(s) => s,
                None => connect(shared, route, ctx, host, protocol).await?,
            };
            match sender.send(req).await {
                Ok(res) => {
                    if reuse {
                        self.put(route, sender);
                    }
                    return Ok(res);
                }
                Err((e, Some(back))) if !fresh => {
                    tracing::debug!(reason = %e, "kept upstream connection closed; retrying on a new one");
                    req = back;
                }
                Err((e, _)) => {
                    tracing::info!(reason = %e, "upstream request failed");
                    return Err(Refusal::UpstreamFailed);
                }
            }
        }
        Err(Refusal::UpstreamFailed)
    }
}

/// Opens a tunnel stream and an HTTP client connection on it.
async fn connect(
    shared: &Arc<Shared>,
    route: &Route,
    ctx: &ConnCtx,
    host: &str,
    protocol: AppProtocol,
) -> Result<Sender, Refusal> {
    let alpn = match protocol {
        AppProtocol::Http1 => "http/1.1",
        AppProtocol::Http2 => "h2",
    };
    let stream = open_stream(shared, route, ctx, host, Some(alpn)).await?;
    let io = TokioIo::new(stream);
    let failed = |e: hyper::Error| {
        tracing::info!(reason = %e, "upstream connection failed");
        Refusal::UpstreamFailed
    };
    match protocol {
        AppProtocol::Http1 => {
            let (send, conn) = http1::Builder::new()
                .handshake::<_, Body>(io)
                .await
                .map_err(failed)?;
            drive(shared, conn.with_upgrades());
            Ok(Sender::H1(send))
        }
        AppProtocol::Http2 => {
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .handshake::<_, Body>(io)
                .await
                .map_err(failed)?;
            drive(shared, conn);
            Ok(Sender::H2(send))
        }
    }
}

/// Runs a client connection's I/O until it ends (its sender dropped and idle) or the
/// edge stops.
fn drive<F>(shared: &Shared, conn: F)
where
    F: std::future::Future<Output = hyper::Result<()>> + Send + 'static,
{
    let stop = shared.stop.clone();
    shared.tasks.spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            r = conn => if let Err(e) = r {
                tracing::debug!(reason = %e, "upstream connection ended");
            },
        }
    });
}
