//! The agent API: a session's endpoints and counters as JSON, in the shape of ngrok's
//! agent API (`GET /api/tunnels` at `web_addr`), plus Prometheus metrics and the web
//! status page (`GET /`).

use super::observe::EndpointStatus;
use super::status_page::page_response as status_page;
use super::Session;
use crate::error::{Error, Result};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How long a client may take to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent API's address when none is given (ngrok's `web_addr`).
pub const DEFAULT_WEB_ADDR: &str = "127.0.0.1:4040";

/// Reads a `web_addr`: `host:port` (`localhost` means 127.0.0.1), or `false`/`off` for
/// none.
pub fn parse_web_addr(text: &str) -> Result<Option<SocketAddr>> {
    let text = text.trim();
    if matches!(text, "false" | "off" | "none") {
        return Ok(None);
    }
    let addr = match text.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => text.to_owned(),
    };
    addr.parse().map(Some).map_err(|_| {
        Error::option(format!(
            "web_addr {text:?}: give host:port with an IP address (e.g. 127.0.0.1:4040), or false to turn the agent API off"
        ))
    })
}

/// What an [`AgentApi`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// The whole agent API (`/api/...`) and `/metrics`.
    Full,
    /// `/metrics` only (the CLI's `--metrics-addr`).
    MetricsOnly,
}

/// A running agent API server; dropping it stops it.
#[derive(Debug)]
pub struct AgentApi {
    addr: SocketAddr,
    _stop: DropGuard,
}

impl AgentApi {
    /// Serves `session`'s API on `addr` until the session closes or this is dropped.
    pub async fn serve(session: &Session, addr: SocketAddr, kind: ApiKind) -> Result<AgentApi> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io(format!("agent API: cannot listen on {addr}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("agent API address", e))?;
        let stop = session.stopped().child_token();
        let accept = accept(session.clone(), listener, kind, stop.clone());
        session.tasks().spawn(accept);
        Ok(AgentApi {
            addr,
            _stop: stop.drop_guard(),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

async fn accept(session: Session, listener: TcpListener, kind: ApiKind, stop: CancellationToken) {
    loop {
        let Some((tcp, _)) = crate::edge::accept_next(&listener, &stop, "agent API").await else {
            return;
        };
        let session = session.clone();
        let stop = stop.clone();
        let tasks = session.tasks().clone();
        tasks.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let session = session.clone();
                async move { Ok::<_, Infallible>(answer(&session, kind, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Answers one request; request bodies are never read.
fn answer(session: &Session, kind: ApiKind, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "the agent API is read-only: use GET",
        );
    }
    if kind == ApiKind::Full && matches!(req.uri().path(), "/" | "/status") {
        return status_page();
    }
    let path = req.uri().path().trim_end_matches('/');
    if path == "/metrics" {
        return respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            session.metrics_text(),
        );
    }
    if kind == ApiKind::MetricsOnly {
        return error(StatusCode::NOT_FOUND, "only /metrics is served here");
    }
    let status = session.status();
    let body = match path {
        "/api" => json!({
            "uri": "/api",
            "tunnels_uri": "/api/tunnels",
            "endpoints_uri": "/api/endpoints",
            "status_uri": "/api/status",
            "status_page_uri": "/",
            "metrics_uri": "/metrics",
        }),
        "/api/tunnels" => json!({
            "tunnels": status.endpoints.iter().map(tunnel).collect::<Vec<_>>(),
            "uri": "/api/tunnels",
        }),
        "/api/endpoints" => json!({
            "endpoints": status.endpoints.iter().map(endpoint).collect::<Vec<_>>(),
            "uri": "/api/endpoints",
        }),
        "/api/status" => json!(status),
        _ => {
            let found = if let Some(name) = path.strip_prefix("/api/tunnels/") {
                find(&status.endpoints, name).map(tunnel)
            } else if let Some(name) = path.strip_prefix("/api/endpoints/") {
                find(&status.endpoints, name).map(endpoint)
            } else {
                return error(StatusCode::NOT_FOUND, "no such resource: see GET /api");
            };
            match found {
                Some(v) => v,
                None => return error(StatusCode::NOT_FOUND, "no endpoint by that name or id"),
            }
        }
    };
    respond(StatusCode::OK, "application/json", body.to_string())
}

/// The endpoint named (or with the id) `name`.
fn find<'a>(endpoints: &'a [EndpointStatus], name: &str) -> Option<&'a EndpointStatus> {
    endpoints.iter().find(|e| e.name == name || e.id == name)
}

/// An endpoint as ngrok's `GET /api/tunnels` lists a tunnel.
fn tunnel(e: &EndpointStatus) -> Value {
    json!({
        "name": e.name,
        "ID": e.id,
        "uri": format!("/api/tunnels/{}", e.name),
        "public_url": e.url,
        "proto": e.proto,
        "config": { "addr": e.forwards_to, "inspect": false },
        "metrics": { "conns": e.conns },
    })
}

/// An endpoint as `GET /api/endpoints` lists it: ngrok's fields and burrow's counters.
fn endpoint(e: &EndpointStatus) -> Value {
    json!({
        "id": e.id,
        "name": e.name,
        "uri": format!("/api/endpoints/{}", e.id),
        "url": e.url,
        "public_url": e.url,
        "proto": e.proto,
        "upstream": { "url": e.forwards_to },
        "terminate_at": e.terminate_at,
        "metadata": e.metadata,
        "metrics": { "conns": e.conns },
        "bytes_in": e.bytes_in,
        "bytes_out": e.bytes_out,
        "refused": e.refused,
        "dial_failures": e.dial_failures,
    })
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    response
}

/// An error in ngrok's agent API shape.
fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    let body = json!({ "status_code": status.as_u16(), "msg": msg, "details": {} });
    respond(status, "application/json", body.to_string())
}
