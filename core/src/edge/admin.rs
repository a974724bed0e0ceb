//! The edge's operator surfaces over HTTP/1.1: the metrics listener (`GET /metrics`,
//! no token) and the admin API (JSON, `Authorization: Bearer <admin_token>` on every
//! request).
//!
//! Admin routes:
//! - `GET /api/status`: draining or not, sessions, endpoints, open public connections.
//! - `GET /api/sessions`: every session (id, remote address, token name, since, endpoints).
//! - `GET /api/endpoints`: every endpoint with its live counters.
//! - `POST /api/sessions/{id}/stop` (`{"reason": "..."}` optional): ngrok's Stop.
//! - `POST /api/drain` (`{"deadline_secs": N}` optional): see [`super::Edge::drain`].
//!
//! `GET /` and `GET /status*` are left to the status page: see [`status_page`].
//!
//! Every read is bounded: the request head by a deadline and a size, the body by
//! [`MAX_BODY`] and [`BODY_TIMEOUT`], and each listener serves at most
//! [`MAX_CONNECTIONS`] connections at once.

use super::{metrics, Shared};
use crate::error::{Error, ErrorCode};
use crate::wire::Command;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Deadline for a request's head (and how long an idle keep-alive connection stays).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a request's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a request body (the API's bodies are tiny JSON objects).
const MAX_BODY: usize = 16 * 1024;
/// Most bytes of a request head.
const MAX_HEAD: usize = 16 * 1024;
/// Most connections one listener serves at once.
const MAX_CONNECTIONS: usize = 64;

/// Which surface a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Surface {
    /// `GET /metrics` only.
    Metrics,
    /// The admin API.
    Admin,
}

type Body = Full<Bytes>;

/// Serves `surface` on `listener` until the edge stops.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, surface: Surface) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Some((tcp, peer)) = super::accept_next(&listener, &shared.stop, "admin").await else {
            return;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "admin/metrics connection refused: too many open");
            continue;
        };
        let conn_shared = shared.clone();
        let stop = shared.stop.clone();
        shared.tasks.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let shared = conn_shared.clone();
                async move { Ok::<_, Infallible>(answer(&shared, surface, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                _ = stop.cancelled() => {}
                served = conn => if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "admin/metrics connection ended");
                },
            }
        });
    }
}

async fn answer(shared: &Arc<Shared>, surface: Surface, req: Request<Incoming>) -> Response<Body> {
    match surface {
        Surface::Metrics => match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => {
                let text = metrics::scrape(shared);
                response(StatusCode::OK, metrics::CONTENT_TYPE, text.into())
            }
            _ => response(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found: this listener serves GET /metrics\n".into(),
            ),
        },
        Surface::Admin => admin(shared, req).await,
    }
}

/// `GET /` and `GET /status`: the web status page (the agent's, see
/// `agent::status_page`), answered before the token check — the page holds no secret;
/// its script sends the operator's bearer token (from `#token=`) with each
/// `/api/status` call.
fn status_page(req: &Request<Incoming>) -> Option<Response<Body>> {
    let path = req.uri().path();
    let page =
        matches!(*req.method(), Method::GET | Method::HEAD) && matches!(path, "/" | "/status");
    page.then(crate::agent::page_response)
}

async fn admin(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    if let Some(page) = status_page(&req) {
        return page;
    }
    if !authorized(shared, &req) {
        return error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::AuthFailed,
            "send the edge's admin_token as 'Authorization: Bearer <admin_token>'",
        );
    }
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    match (req.method().clone(), segments.as_slice()) {
        (Method::GET, ["api", "status"]) => ok(status(shared)),
        (Method::GET, ["api", "sessions"]) => ok(json!({ "sessions": sessions(shared) })),
        (Method::GET, ["api", "endpoints"]) => ok(json!({ "endpoints": endpoints(shared) })),
        (Method::POST, ["api", "sessions", id, "stop"]) => {
            let id = (*id).to_owned();
            match read_json::<StopBody>(req).await {
                Ok(body) => stop_session(shared, &id, body.reason).await,
                Err(e) => e,
            }
        }
        (Method::POST, ["api", "drain"]) => match read_json::<DrainBody>(req).await {
            Ok(body) => {
                let deadline = body.deadline_secs.map(Duration::from_secs);
                shared.drain(deadline);
                json_response(
                    StatusCode::ACCEPTED,
                    &json!({ "draining": true, "deadline_secs": body.deadline_secs }),
                )
            }
            Err(e) => e,
        },
        (_, ["api", "status" | "sessions" | "endpoints" | "drain"])
        | (_, ["api", "sessions", _, "stop"]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::InvalidOption,
            "method not allowed here",
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            ErrorCode::InvalidUrl,
            "no such admin API route (see /api/status, /api/sessions, /api/endpoints, /api/drain)",
        ),
    }
}

/// True when the request carries the admin token; compared in constant time (SHA-256
/// digests of both, so neither the length nor a common prefix shows in the timing).
fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    let Some(expected) = &shared.config.admin_token else {
        return false;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .unwrap_or("");
    crate::policy::same_secret(&expected.0, presented)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StopBody {
    reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    deadline_secs: Option<u64>,
}

/// The request's JSON body (an empty body is the default), bounded in size and time.
async fn read_json<T: for<'de> Deserialize<'de> + Default>(
    req: Request<Incoming>,
) -> Result<T, Response<Body>> {
    let limited = Limited::new(req.into_body(), MAX_BODY);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::LimitExceeded,
                &format!("request body: {e} (at most {MAX_BODY} bytes)"),
            ))
        }
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::Timeout,
                "request body not received in time",
            ))
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidOption,
            &format!("request body: {e}"),
        )
    })
}

async fn stop_session(shared: &Arc<Shared>, id: &str, reason: Option<String>) -> Response<Body> {
    tracing::info!(session_id = %id, reason = ?reason, "admin API: stopping a session");
    match super::send_command(shared, id, Command::Stop { reason }).await {
        Ok(()) => ok(json!({ "stopped": true, "session_id": id })),
        Err(e) => {
            let status = match e.code() {
                ErrorCode::Closed => StatusCode::NOT_FOUND,
                ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            };
            error(status, e.code(), e.message())
        }
    }
}

/// The edge now, in the shape the web status page reads (`agent/status.html`): the
/// endpoints with their counters and the last connections, plus the edge's own fields.
fn status(shared: &Shared) -> Value {
    let draining = shared.draining.is_cancelled();
    let id = shared
        .cluster
        .as_ref()
        .map_or_else(|| "edge".to_owned(), |c| c.edge_id().to_owned());
    json!({
        "id": id,
        "status": if draining { "draining" } else { "online" },
        "draining": draining,
        "sessions": shared.sessions().len(),
        "endpoints": endpoints(shared),
        "connections_active": shared.metrics.active(),
        "uptime_secs": shared.metrics.started.elapsed().as_secs_f64(),
        "recent": shared.metrics.recent.list(),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

fn sessions(shared: &Shared) -> Vec<Value> {
    let mut by_session: std::collections::HashMap<&str, Vec<&str>> = Default::default();
    let endpoints = shared.endpoints();
    for ((session, _), e) in endpoints.iter() {
        by_session.entry(session).or_default().push(&e.url);
    }
    let mut list: Vec<Value> = shared
        .sessions()
        .values()
        .map(|s| {
            let mut urls = by_session
                .get(s.info.id.as_str())
                .cloned()
                .unwrap_or_default();
            urls.sort_unstable();
            json!({
                "id": s.info.id,
                "remote_addr": s.info.peer.to_string(),
                "token_name": s.token_name,
                "connected_since": crate::agent::rfc3339_string(s.since),
                "heartbeat_ms": s.heartbeat_rtt.map(|d| d.as_secs_f64() * 1000.0),
                "client_info": s.info.client_info,
                "metadata": s.info.metadata,
                "endpoints": urls,
            })
        })
        .collect();
    list.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    list
}

fn endpoints(shared: &Shared) -> Vec<Value> {
    let mut list: Vec<Value> = shared
        .endpoints()
        .iter()
        .map(|((session, id), e)| {
            json!({
                "id": id,
                "name": session,
                "url": e.url,
                "proto": e.proto,
                "termination": e.termination,
                "terminate_at": e.termination,
                "session_id": session,
                "connections_total": e.stats.connections(),
                "connections_open": e.stats.open(),
                "conns": { "count": e.stats.connections(), "gauge": e.stats.open() },
                "bytes_in": e.stats.bytes_in(),
                "bytes_out": e.stats.bytes_out(),
            })
        })
        .collect();
    list.sort_by(|a, b| a["url"].as_str().cmp(&b["url"].as_str()));
    list
}

fn ok(value: Value) -> Response<Body> {
    json_response(StatusCode::OK, &value)
}

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response<Body> {
    let e = Error::new(code, message);
    json_response(
        status,
        &json!({ "error": { "code": e.code().as_str(), "message": e.message() } }),
    )
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut text = value.to_string();
    text.push('\n');
    response(status, "application/json", text.into())
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    res
}
