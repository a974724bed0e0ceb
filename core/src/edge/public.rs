//! The public side: the SNI-routed TLS listener and per-endpoint TCP listeners.

use super::acme::ACME_TLS_ALPN;
use super::cluster::link::{LinkHeader, MAX_HOPS};
use super::metrics::{Counted, EdgeMetrics, Refusal, StreamClient};
use super::routes::{find, lookup_stand_in, Found, Route, Routes};
use super::Shared;
use crate::error::{Error, ErrorCode, Result};
use crate::policy::ConnInfo;
use crate::splice::splice_idle;
use crate::tls::{
    cert_subject, read_client_hello, send_alert, ClientHelloInfo, HelloError, RefusalAlert,
    ServerTls,
};
use crate::wire::mux::MuxStream;
use crate::wire::{read_header, write_header, StreamHeader};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{LazyConfigAcceptor, StartHandshake};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Accepts on `listener` until `stop`, handing each connection to `serve` under the
/// edge's connection limit.
pub(crate) async fn accept_loop<F, Fut>(
    shared: Arc<Shared>,
    listener: TcpListener,
    stop: CancellationToken,
    serve: F,
) where
    F: Fn(Arc<Shared>, TcpStream, SocketAddr) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // Draining: the listener closes; connections already accepted go on.
    let draining = shared.draining.clone();
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            _ = draining.cancelled() => return,
            p = shared.connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = draining.cancelled() => return,
            a = super::accept_next(&listener, &stop, "public") => a,
        };
        let Some((tcp, peer)) = accepted else {
            return;
        };
        let active = shared.metrics.accepted();
        // Accepted connections end with the edge, not with `stop`: a tcp:// endpoint's
        // listener stops when it is unbound, and its open connections finish.
        let conn_stop = shared.stop.clone();
        let (serve, conn_shared) = (serve.clone(), shared.clone());
        shared.tasks.spawn(
            async move {
                let _permit: OwnedSemaphorePermit = permit;
                let _active = active;
                // `serve` is called here, not before the block: a future moved into a
                // block is kept twice in it, and this one lives as long as the connection.
                tokio::select! {
                    _ = conn_stop.cancelled() => {}
                    _ = serve(conn_shared, tcp, peer) => {}
                }
            }
            .instrument(tracing::info_span!("conn", client = %peer)),
        );
    }
}

/// Serves the public TLS listener.
pub(crate) async fn accept_tls(shared: Arc<Shared>, listener: TcpListener) {
    let stop = shared.stop.clone();
    accept_loop(shared, listener, stop, serve_tls_conn).await
}

/// Serves one TCP endpoint's listener until `stop` (unbind or session end).
pub(crate) async fn accept_tcp(
    shared: Arc<Shared>,
    listener: TcpListener,
    route: Route,
    stop: CancellationToken,
) {
    // The endpoint also ends when its session's tunnel does.
    let tunnel = route.tunnel.clone();
    let watch = stop.clone();
    let route = Arc::new(route);
    tokio::select! {
        _ = tunnel.closed() => watch.cancel(),
        _ = accept_loop(shared, listener, stop, move |shared, tcp, peer| {
            let route = route.clone();
            async move {
                // Boxed, as for tls:// below: setting up is transient, relaying is not.
                match Box::pin(set_up_tcp_conn(shared, route, tcp, peer)).await {
                    Ok(mut relay) => relay.run().await,
                    Err(e) => tracing::info!(reason = %e, "connection ended"),
                }
            }
        }) => {}
    }
}

async fn serve_tls_conn(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    // Boxed: setting a connection up (its ClientHello, a handshake, opening the stream
    // to the agent) takes several times the room relaying it does, and the box is freed
    // before the relay begins; an idle connection keeps only the relay's state.
    if let Some(mut relay) = Box::pin(set_up_tls_conn(shared, tcp, peer)).await {
        relay.run().await
    }
}

async fn set_up_tls_conn(
    shared: Arc<Shared>,
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> Option<Relay<TcpStream>> {
    let hello = read_hello(&shared, &mut tcp).await?;
    let client = Client::direct(&tcp, peer);
    let (tcp, hello) = answer_challenge(&shared, tcp, hello).await?;
    // A validation for a name another edge of the cluster is ordering: that edge answers.
    if hello.info.alpn.iter().any(|p| p == ACME_TLS_ALPN) {
        if let Some(owner) = shared
            .cluster
            .as_ref()
            .and_then(|c| c.challenge_owner(&hello.sni))
        {
            let raw = hello.info.raw;
            // Boxed: rare, and a task is allocated at the size of its largest state.
            let owners = [owner];
            let forwarded = Box::pin(forward(&shared, tcp, &raw, &hello.sni, client, &owners));
            if let Err(e) = forwarded.await {
                tracing::info!(reason = %e, "forwarded ACME validation ended");
            }
            return None;
        }
    }
    route_tls(shared, tcp, hello, client).await
}

/// Answers an ACME directory validating a name this edge is ordering a certificate for;
/// hands the connection back when it is not such a validation.
async fn answer_challenge<IO: PublicIo>(
    shared: &Shared,
    io: IO,
    hello: Hello,
) -> Option<(IO, Hello)> {
    let Some(acme) = &shared.acme else {
        return Some((io, hello));
    };
    let Some(config) = acme.challenge_config(&hello.sni, &hello.info.alpn) else {
        return Some((io, hello));
    };
    let deadline = shared.config.handshake_timeout();
    Box::pin(acme.answer_challenge(*hello.info.accepted, io, config, deadline)).await;
    None
}

/// Serves a public connection another edge of the cluster took and carried here.
pub(crate) async fn serve_forwarded(shared: Arc<Shared>, mut stream: MuxStream) {
    let deadline = shared.config.handshake_timeout();
    let header: LinkHeader = match timeout(deadline, read_header(&mut stream)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            return tracing::info!(reason = %e, "forwarded connection refused: bad link header")
        }
        Err(_) => return tracing::info!("forwarded connection refused: no link header in time"),
    };
    shared.metrics.link_stream("in");
    if header.hops == 0 || header.hops > MAX_HOPS {
        return tracing::warn!(hops = header.hops, sni = %header.sni, "forwarded connection refused: it crossed too many edges (a routing loop)");
    }
    let span = tracing::info_span!("forwarded", client = %header.client_addr);
    async move {
        // Boxed, as in `serve_tls_conn`.
        let set_up = Box::pin(async move {
            let hello = read_hello(&shared, &mut stream).await?;
            let (stream, hello) = answer_challenge(&shared, stream, hello).await?;
            let client = Client {
                peer: header.client_addr,
                server_addr: header.server_addr,
                hops: header.hops,
            };
            route_tls(shared, stream, hello, client).await
        });
        if let Some(mut relay) = set_up.await {
            relay.run().await
        }
    }
    .instrument(span)
    .await
}

/// A ClientHello that names an endpoint.
struct Hello {
    sni: String,
    info: ClientHelloInfo,
}

/// Reads the ClientHello; refuses (with the alert that says why) one that is invalid,
/// too large, late or without SNI.
async fn read_hello<IO>(shared: &Shared, io: &mut IO) -> Option<Hello>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = shared.config.handshake_timeout();
    let max = shared.config.max_client_hello_bytes;
    let start = std::time::Instant::now();
    let info = match read_client_hello(io, deadline, max).await {
        Ok(h) => {
            shared.metrics.hello(start.elapsed());
            h
        }
        Err(HelloError::Eof) => return None,
        Err(e) => {
            tracing::info!(reason = %e, "refused");
            match &e {
                HelloError::Timeout(_) => shared.metrics.refused(Refusal::HelloTimeout),
                HelloError::TooLarge => shared.metrics.refused(Refusal::Limits),
                HelloError::Invalid(_) => shared.metrics.refused(Refusal::HandshakeFailed),
                _ => {}
            }
            if matches!(e, HelloError::Invalid(_) | HelloError::TooLarge) {
                send_alert(io, RefusalAlert::HandshakeFailure).await;
            }
            return None;
        }
    };
    let Some(sni) = info.sni.clone() else {
        tracing::info!("refused: the ClientHello carries no SNI, so no endpoint can be chosen");
        shared.metrics.refused(Refusal::NoSni);
        send_alert(io, RefusalAlert::UnrecognizedName).await;
        return None;
    };
    Some(Hello { sni, info })
}

/// Where a public connection came from.
#[derive(Clone, Copy)]
struct Client {
    peer: SocketAddr,
    server_addr: Option<SocketAddr>,
    /// Edges it crossed before reaching this one.
    hops: u8,
}

impl Client {
    /// A client connected to this edge's own listener.
    fn direct(tcp: &TcpStream, peer: SocketAddr) -> Self {
        Client {
            peer,
            server_addr: tcp.local_addr().ok(),
            hops: 0,
        }
    }
}

/// Routes a connection by its SNI: to a local endpoint (the relay to run, unless it was
/// refused or is served as HTTP), or (when another edge of the cluster serves the name)
/// across the link to that edge.
async fn route_tls<IO: PublicIo>(
    shared: Arc<Shared>,
    mut io: IO,
    hello: Hello,
    client: Client,
) -> Option<Relay<IO>> {
    let sni = hello.sni;
    let deadline = shared.config.handshake_timeout();
    let route = match find(&shared, &sni, client.hops) {
        Some(Found::Local(route)) => route,
        Some(Found::Remote(edges)) => {
            shared.metrics.remote_lookup();
            let raw = hello.info.raw;
            drop(hello.info.accepted);
            // Boxed, as the http path below: a task's size is that of its largest state.
            let forwarded = Box::pin(forward(&shared, io, &raw, &sni, client, &edges));
            if let Err(e) = forwarded.await {
                tracing::info!(%sni, reason = %e, "forwarded connection ended");
            }
            return None;
        }
        None => {
            tracing::info!(%sni, "refused: no endpoint serves this SNI");
            shared.metrics.refused(Refusal::UnknownName);
            send_alert(&mut io, RefusalAlert::UnrecognizedName).await;
            return None;
        }
    };
    if route.http.is_some() {
        let hello = Hello {
            sni,
            info: hello.info,
        };
        // Boxed: a task is allocated at the size of its largest state, and an HTTP
        // server's (hyper's connection, its buffers, the proxy) would otherwise be
        // carried by every idle tls:// connection too (it was ~10 KiB of each).
        Box::pin(serve_http(shared, io, hello, client, route)).await;
        return None;
    }
    let target =
        Target::new(&shared, &route, client, Some(sni.clone())).pooled_in(shared.routes.as_ref());
    let termination = match route.decide(&target.conn_info()) {
        Ok(t) => t,
        Err(reason) => {
            tracing::info!(%sni, %reason, "refused by traffic policy");
            shared.metrics.refused(Refusal::of_policy(&reason));
            send_alert(&mut io, RefusalAlert::AccessDenied).await;
            return None;
        }
    };
    let relay = match termination {
        Some(config) => terminate(target, *hello.info.accepted, io, config, deadline).await,
        None => {
            tracing::info!(%sni, mode = "passthrough", "connection");
            let raw = hello.info.raw;
            drop(hello.info.accepted);
            relay_raw(target, io, raw).await
        }
    };
    relay
        .inspect_err(|e| tracing::info!(reason = %e, "connection ended"))
        .ok()
}

/// An http endpoint: terminate TLS here, then serve requests (a client the connection
/// policy refuses gets 403 on every request, so it learns why).
async fn serve_http<IO: PublicIo + 'static>(
    shared: Arc<Shared>,
    io: IO,
    hello: Hello,
    client: Client,
    route: Route,
) {
    let Some(config) = route.edge_tls.clone() else {
        return tracing::warn!(sni = %hello.sni, "http endpoint without an edge TLS config");
    };
    let conn_info = ConnInfo {
        client: client.peer,
        server_port: client.server_addr.map_or(0, |a| a.port()),
        sni: Some(hello.sni.clone()),
    };
    let denied = route.decide(&conn_info).err();
    let start = StartHandshake::from_parts(*hello.info.accepted, io);
    let config = config.for_hello(&start.client_hello());
    let began = std::time::Instant::now();
    let tls = match timeout(shared.config.handshake_timeout(), start.into_stream(config)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            shared.metrics.refused(Refusal::HandshakeFailed);
            return tracing::info!(reason = %e, "edge TLS handshake failed");
        }
        Err(_) => {
            shared.metrics.refused(Refusal::HandshakeFailed);
            return tracing::info!("edge TLS handshake timed out");
        }
    };
    shared.metrics.handshake(began.elapsed());
    let subject = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|c| cert_subject(c));
    tracing::info!(sni = %hello.sni, mode = "http", "connection");
    let ctx = super::http::ConnCtx {
        peer: client.peer,
        server_addr: client.server_addr,
        sni: Some(hello.sni),
        scheme: crate::agent::http::Scheme::Https,
        client_cert_subject: subject,
    };
    let fixed = super::http::Fixed { route, denied };
    if let Err(e) = super::http::serve(shared, tls, ctx, Some(fixed)).await {
        tracing::debug!(reason = %e, "http connection ended");
    }
}

/// Carries a connection to the first of `edges` (in order) that takes it, then splices.
async fn forward<IO: PublicIo>(
    shared: &Shared,
    mut io: IO,
    raw: &[u8],
    sni: &str,
    client: Client,
    edges: &[(String, SocketAddr)],
) -> Result<()> {
    let (Some(cluster), Some(links)) = (&shared.cluster, &shared.links) else {
        return Err(Error::new(ErrorCode::Internal, "not in a cluster"));
    };
    let header = LinkHeader {
        sni: sni.to_owned(),
        client_addr: client.peer,
        server_addr: client.server_addr,
        hops: client.hops + 1,
    };
    let mut last = None;
    for (edge, addr) in edges {
        let opened = async {
            let mut stream = links.open(edge, *addr).await?;
            write_header(&mut stream, &header, raw).await?;
            Ok::<_, Error>(stream)
        };
        match opened.await {
            Ok(mut stream) => {
                shared.metrics.link_stream("out");
                tracing::info!(%sni, edge = %edge, via = %cluster.edge_id(), mode = "forwarded", "connection");
                let result = splice_idle(&mut io, &mut stream, shared.config.idle_timeout()).await;
                end_abnormally_on_error(&result, &io);
                return result.map(|_| ());
            }
            Err(e) => {
                tracing::warn!(%sni, edge = %edge, error = %e, "edge unreachable over its link; trying the next");
                last = Some(e);
            }
        }
    }
    shared.metrics.refused(Refusal::EdgeUnreachable);
    send_alert(&mut io, RefusalAlert::UnrecognizedName).await;
    Err(last.unwrap_or_else(|| Error::new(ErrorCode::ConnectFailed, "no edge to forward to")))
}

/// A public connection's byte stream: a client's TCP socket, or a stream on a link
/// from another edge.
pub(crate) trait PublicIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Makes the close the client sees abnormal (a TCP reset), where the stream can.
    fn abort(&self);
}

impl PublicIo for TcpStream {
    fn abort(&self) {
        let _ = self.set_zero_linger();
    }
}

impl PublicIo for MuxStream {
    fn abort(&self) {
        // Dropped without a FIN, the stream is reset; the edge that forwarded it
        // passes that on to its client.
    }
}

async fn set_up_tcp_conn(
    shared: Arc<Shared>,
    route: Arc<Route>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<Relay<TcpStream>> {
    let client = Client::direct(&tcp, peer);
    let target = Target::new(&shared, &route, client, None);
    let termination = route.decide(&target.conn_info()).map_err(|reason| {
        shared.metrics.refused(Refusal::of_policy(&reason));
        Error::new(
            ErrorCode::Closed,
            format!("refused by traffic policy: {reason}"),
        )
    })?;
    let Some(config) = termination else {
        tracing::info!(mode = "tcp", "connection");
        return relay_raw(target, tcp, Vec::new()).await;
    };
    let accept = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let handshake = async {
        let start = accept.await?;
        let config = config.for_hello(&start.client_hello());
        start.into_stream(config).await
    };
    let began = std::time::Instant::now();
    let tls = timeout(shared.config.handshake_timeout(), handshake)
        .await
        .map_err(|_| Error::new(ErrorCode::Timeout, "edge TLS handshake timed out"))
        .and_then(|r| r.map_err(|e| Error::io("edge TLS handshake", e)))
        .inspect_err(|_| shared.metrics.refused(Refusal::HandshakeFailed))?;
    shared.metrics.handshake(began.elapsed());
    let sni = tls.get_ref().1.server_name().map(str::to_owned);
    tracing::info!(mode = "tcp+edge-tls", "connection");
    relay_terminated(Target { sni, ..target }, tls).await
}

/// How many members of a pool may stand in, one after the other, for a connection
/// whose endpoint's tunnel has just ended.
const MAX_STAND_INS: usize = 8;

/// Where a public connection goes, and what the agent is told about it.
struct Target<'a> {
    route: &'a Route,
    /// The table to find a stand-in in, for a connection routed by SNI.
    routes: Option<&'a dyn Routes>,
    peer: SocketAddr,
    server_addr: Option<SocketAddr>,
    sni: Option<String>,
    idle: Option<Duration>,
    metrics: &'a EdgeMetrics,
}

impl<'a> Target<'a> {
    fn new(shared: &'a Shared, route: &'a Route, client: Client, sni: Option<String>) -> Self {
        Target {
            metrics: &shared.metrics,
            route,
            routes: None,
            peer: client.peer,
            server_addr: client.server_addr,
            sni,
            idle: shared.config.idle_timeout(),
        }
    }

    /// Lets another member of the route's pool take the connection if the route's
    /// tunnel fails as it opens.
    fn pooled_in(self, routes: &'a dyn Routes) -> Self {
        Target {
            routes: Some(routes),
            ..self
        }
    }

    /// Opens a proxy stream on the route's tunnel; when that tunnel has just ended (the
    /// edge has not dropped the agent yet) and the route is pooled, on a member that
    /// handles connections alike, so the client never hears of the dead agent.
    async fn open_stream(&self) -> Result<(Cow<'a, Route>, crate::wire::mux::MuxStream)> {
        let mut route = Cow::Borrowed(self.route);
        for _ in 0..MAX_STAND_INS {
            let error = match route.tunnel.open().await {
                Ok(stream) => return Ok((route, stream)),
                Err(e) => e,
            };
            let stand_in = match (self.routes, &self.sni) {
                (Some(routes), Some(host)) => lookup_stand_in(routes, host, &route),
                _ => None,
            };
            let Some(stand_in) = stand_in else {
                return Err(error);
            };
            tracing::info!(reason = %error, endpoint = %route.endpoint_id, stand_in = %stand_in.endpoint_id, "pool member unreachable; another takes the connection");
            route = Cow::Owned(stand_in);
        }
        let stream = route.tunnel.open().await?;
        Ok((route, stream))
    }

    /// What the traffic policy may look at.
    fn conn_info(&self) -> ConnInfo {
        ConnInfo {
            client: self.peer,
            server_port: self.server_addr.map_or(0, |a| a.port()),
            sni: self.sni.clone(),
        }
    }

    /// Opens a proxy stream to the agent and sends its header, followed by the
    /// client's first bytes.
    async fn open(
        self,
        edge_terminated: bool,
        alpn: Option<String>,
        client_cert_subject: Option<String>,
        first_bytes: &[u8],
    ) -> Result<Counted<crate::wire::mux::MuxStream>> {
        let (route, mut stream) = self.open_stream().await.inspect_err(|e| {
            self.metrics.refused(match e.code() {
                ErrorCode::LimitExceeded => Refusal::Limits,
                _ => Refusal::AgentUnavailable,
            })
        })?;
        let header = StreamHeader {
            endpoint_id: route.endpoint_id.clone(),
            client_addr: self.peer,
            edge_terminated,
            sni: self.sni,
            alpn,
            server_addr: self.server_addr,
            client_cert_subject,
        };
        write_header(&mut stream, &header, first_bytes).await?;
        let client = StreamClient {
            addr: self.peer,
            sni: header.sni.as_deref(),
        };
        Ok(Counted::new(
            stream,
            route.stats.clone(),
            self.metrics,
            client,
        ))
    }
}

/// Edge termination: finish the handshake the client started; plaintext is relayed.
async fn terminate<IO: PublicIo>(
    target: Target<'_>,
    accepted: rustls::server::Accepted,
    tcp: IO,
    config: ServerTls,
    deadline: Duration,
) -> Result<Relay<IO>> {
    let start = StartHandshake::from_parts(accepted, tcp);
    let config = config.for_hello(&start.client_hello());
    let began = std::time::Instant::now();
    let metrics = target.metrics;
    let handshake = timeout(deadline, start.into_stream(config)).await;
    match &handshake {
        Ok(Ok(_)) => metrics.handshake(began.elapsed()),
        _ => metrics.refused(Refusal::HandshakeFailed),
    }
    match handshake {
        Ok(Ok(tls)) => {
            tracing::info!(
                sni = target.sni.as_deref().unwrap_or("-"),
                mode = "edge",
                "connection"
            );
            relay_terminated(target, tls).await
        }
        Ok(Err(e)) => Err(Error::io("edge TLS handshake", e)),
        Err(_) => Err(Error::new(
            ErrorCode::Timeout,
            "edge TLS handshake timed out",
        )),
    }
}

/// Passthrough: open the stream to the agent with what was read; raw bytes are relayed.
async fn relay_raw<IO: PublicIo>(
    target: Target<'_>,
    client: IO,
    already_read: Vec<u8>,
) -> Result<Relay<IO>> {
    let idle = target.idle;
    let stream = target.open(false, None, None, &already_read).await?;
    Ok(Relay {
        client: RelayClient::Raw(client),
        stream,
        idle,
    })
}

/// Edge termination: open the stream to the agent; decrypted bytes are relayed.
async fn relay_terminated<IO: PublicIo>(
    target: Target<'_>,
    tls: TlsStream<IO>,
) -> Result<Relay<IO>> {
    let session = tls.get_ref().1;
    let alpn = session
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let subject = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|c| cert_subject(c));
    let idle = target.idle;
    let stream = target.open(true, alpn, subject, &[]).await?;
    Ok(Relay {
        client: RelayClient::Tls(Box::new(tls)),
        stream,
        idle,
    })
}

/// A public connection that is set up: the client's side and its stream to the agent,
/// relayed until both directions end.
struct Relay<IO> {
    client: RelayClient<IO>,
    stream: Counted<MuxStream>,
    idle: Option<Duration>,
}

/// The client's side of a relay: its raw bytes, or TLS terminated here.
enum RelayClient<IO> {
    Raw(IO),
    Tls(Box<TlsStream<IO>>),
}

impl<IO: PublicIo> Relay<IO> {
    /// Relays until both directions end, an idle timeout or a failure (logged).
    async fn run(&mut self) {
        let (stream, idle) = (&mut self.stream, self.idle);
        let result = match &mut self.client {
            RelayClient::Raw(io) => {
                let result = splice_idle(io, stream, idle).await;
                end_abnormally_on_error(&result, io);
                result
            }
            RelayClient::Tls(tls) => {
                let result = splice_idle(&mut **tls, stream, idle).await;
                // Dropping the TLS stream sends no close_notify: with the reset, the
                // client sees a truncated response as truncated.
                end_abnormally_on_error(&result, tls.get_ref().0);
                result
            }
        };
        if let Err(e) = result {
            tracing::info!(reason = %e, "connection ended");
        }
    }
}

/// When a relay failed (the agent or the upstream ended abnormally, or the client
/// did), the client's socket is closed with a TCP reset instead of a FIN, so the client
/// cannot take a cut-off response for a complete one. An idle cut stays a plain close.
fn end_abnormally_on_error<T>(result: &Result<T>, client: &impl PublicIo) {
    if let Err(e) = result {
        if e.code() != ErrorCode::Timeout {
            client.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::routes::tests::route;
    use crate::edge::routes::MemoryRoutes;
    use crate::wire::mux::{self, Side};
    use crate::wire::read_header;
    use tokio::io::AsyncReadExt;

    /// The window no lookup can close: a member chosen while its tunnel was up, which
    /// ends before the stream opens. Another member takes the connection.
    #[tokio::test]
    async fn a_pool_member_stands_in_when_the_chosen_tunnel_will_not_open() {
        let routes = MemoryRoutes::default();
        let (dead, _peer, stop) = route("dead", true);
        let (edge_io, agent_io) = tokio::io::duplex(64 * 1024);
        let live = Route {
            session_id: "live".into(),
            endpoint_id: "live-e".into(),
            tunnel: mux::start(edge_io, Side::Edge, CancellationToken::new(), 16).handle,
            ..dead.clone()
        };
        let mut agent = mux::start(agent_io, Side::Agent, CancellationToken::new(), 16);
        routes.claim("app.test", dead.clone()).unwrap();
        routes.claim("app.test", live).unwrap();
        stop.cancel();
        dead.tunnel.closed().await;
        // The edge may have released the dead member already: the pool still answers.
        routes.release("app.test", "dead", "dead-e");

        let _stream = target(&dead, Some(&routes))
            .open(false, None, None, b"hello")
            .await
            .expect("a stand-in takes the connection");
        let mut inbound = agent
            .inbound
            .recv()
            .await
            .expect("a stream on the live tunnel");
        let header: StreamHeader = read_header(&mut inbound).await.unwrap();
        assert_eq!(header.endpoint_id, "live-e");
        let mut first = [0u8; 5];
        inbound.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"hello");

        // With nowhere to look for a stand-in (a tcp endpoint), the failure is the caller's.
        match target(&dead, None).open(false, None, None, b"").await {
            Ok(_) => panic!("a dead tunnel opened a stream"),
            Err(e) => assert_eq!(e.code(), ErrorCode::Closed),
        }
    }

    fn target<'a>(route: &'a Route, routes: Option<&'a dyn Routes>) -> Target<'a> {
        Target {
            route,
            routes,
            peer: "127.0.0.1:9".parse().unwrap(),
            server_addr: None,
            sni: Some("app.test".into()),
            idle: None,
            metrics: Box::leak(Box::new(EdgeMetrics::new(false))),
        }
    }
}
