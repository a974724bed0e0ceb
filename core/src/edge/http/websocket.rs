//! Upgrades: websockets (and any other `Upgrade`) spliced after the upstream's `101`,
//! and ngrok's `websocket_tcp_converter`, where the edge accepts the websocket itself and
//! the upstream gets a plain byte stream of its messages.

use super::respond::{full, Refusal};
use super::upstream::open_stream;
use super::{Body, ConnCtx};
use crate::edge::routes::Route;
use crate::edge::Shared;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};
use tokio_tungstenite::WebSocketStream;

fn has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// True for an HTTP/1.1 request asking to switch protocols.
pub(crate) fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == http::Version::HTTP_11
        && has_token(req, header::CONNECTION, "upgrade")
        && req.headers().contains_key(header::UPGRADE)
}

/// True for a websocket opening handshake.
pub(crate) fn is_upgrade(req: &Request<Incoming>) -> bool {
    wants_upgrade(req)
        && has_token(req, header::UPGRADE, "websocket")
        && req.headers().contains_key(header::SEC_WEBSOCKET_KEY)
}

/// Once both sides have switched protocols, splices the client's connection to the
/// upstream's (a task the edge owns).
pub(crate) fn splice_upgrades(shared: &Arc<Shared>, client: OnUpgrade, upstream: OnUpgrade) {
    let stop = shared.stop.clone();
    let idle = shared.config.idle_timeout();
    shared.tasks.spawn(async move {
        let splice = async {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(pair) => pair,
                Err(e) => return tracing::info!(reason = %e, "upgrade failed"),
            };
            let (mut a, mut b) = (TokioIo::new(client), TokioIo::new(upstream));
            if let Err(e) = crate::splice::splice_idle(&mut a, &mut b, idle).await {
                tracing::debug!(reason = %e, "upgraded connection ended");
            }
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = splice => {}
        }
    });
}

/// Accepts a websocket at the edge and relays its messages' bytes to and from a plain
/// stream to the upstream.
pub(crate) async fn convert(
    shared: &Arc<Shared>,
    route: &Route,
    ctx: &ConnCtx,
    host: &str,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return Refusal::WebsocketExpected.response();
    };
    let accept = derive_accept_key(key.as_bytes());
    let stream = match open_stream(shared, route, ctx, host, None).await {
        Ok(s) => s,
        Err(refusal) => return refusal.response(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let stop = shared.stop.clone();
    shared.tasks.spawn(async move {
        let relay = async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => return tracing::info!(reason = %e, "websocket upgrade failed"),
            };
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            relay(ws, stream).await;
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = relay => {}
        }
    });
    let mut res = Response::new(full(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

/// Message payloads to the stream; the stream's bytes back as binary messages.
async fn relay<S>(
    ws: WebSocketStream<S>,
    stream: crate::edge::metrics::Counted<crate::wire::mux::MuxStream>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut messages) = ws.split();
    let (mut read, mut write) = tokio::io::split(stream);
    let inbound = async {
        while let Some(Ok(msg)) = messages.next().await {
            let data: Bytes = match msg {
                Message::Binary(b) => b,
                Message::Text(t) => Bytes::from(t.as_str().to_owned()),
                Message::Close(_) => break,
                _ => continue,
            };
            if write.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    tokio::join!(inbound, outbound);
}
