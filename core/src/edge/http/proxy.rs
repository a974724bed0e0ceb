//! Serving one client connection of an http endpoint: hyper on the connection, and
//! each request through the endpoint's options to the agent.

use super::respond::{self, full, Refusal};
use super::upstream::Upstreams;
use super::{compress, webhook, websocket, Body, BoxError, ConnCtx, HttpRoute};
use crate::agent::http::Scheme;
use crate::edge::routes::{lookup, Route};
use crate::edge::Shared;
use crate::error::{Error, ErrorCode, Result};
use crate::policy::{choose_encoding, RequestOutcome, RequestSnapshot, ResponseOutcome};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Most bytes of a request body the edge holds to verify a webhook signature.
const MAX_WEBHOOK_BODY: usize = 25 * 1024 * 1024;

/// The route a TLS connection was routed to by its SNI, and whether its connection
/// policy refused the client (then every request gets 403).
pub(crate) struct Fixed {
    pub(crate) route: Route,
    pub(crate) denied: Option<String>,
}

/// What every request of one client connection shares.
struct ConnState {
    shared: Arc<Shared>,
    ctx: ConnCtx,
    fixed: Option<Fixed>,
    upstreams: Upstreams,
}

/// Serves HTTP/1.1 or h2 on `io` until the client closes or the edge stops. `fixed`
/// is the SNI's route on the TLS listener; without it, each request is routed by `Host`.
pub(crate) async fn serve<IO>(
    shared: Arc<Shared>,
    io: IO,
    ctx: ConnCtx,
    fixed: Option<Fixed>,
) -> Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &shared.config;
    let mut builder = hyper_util::server::conn::auto::Builder::new(Spawner(shared.tasks.clone()));
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.http_header_timeout_ms))
        .max_buf_size(limits.max_request_header_bytes.max(8192))
        .max_headers(limits.max_request_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_request_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    let state = Arc::new(ConnState {
        shared: shared.clone(),
        ctx,
        fixed,
        upstreams: Upstreams::default(),
    });
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move {
            let res = handle(&state, req).await;
            state.shared.metrics.http_response(res.status());
            Ok::<_, Infallible>(res)
        }
    });
    builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await
        .map_err(|e| Error::new(ErrorCode::Closed, format!("http connection: {e}")))
}

/// Spawns hyper's per-stream tasks (h2) on the edge's task tracker.
#[derive(Clone)]
struct Spawner(tokio_util::task::TaskTracker);

impl<F> hyper::rt::Executor<F> for Spawner
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// The host a request names: `Host`, or the URI's authority (h2), without the port.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))?;
    let host = match raw.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => raw.as_str(),
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

async fn handle(state: &ConnState, req: Request<Incoming>) -> Response<Body> {
    if let Some(answer) = acme_http_01(state, &req) {
        return answer;
    }
    let Some(host) = request_host(&req).or_else(|| state.ctx.sni.clone()) else {
        return Refusal::BadRequest.response();
    };
    let (route, denied) = match &state.fixed {
        Some(f) => (Cow::Borrowed(&f.route), f.denied.clone()),
        None => match lookup(state.shared.routes.as_ref(), &host).filter(|r| r.http.is_some()) {
            Some(route) => {
                let denied = route.decide(&state.ctx.conn_info()).err();
                (Cow::Owned(route), denied)
            }
            None => {
                tracing::info!(%host, "refused: no http endpoint serves this host");
                state
                    .shared
                    .metrics
                    .refused(crate::edge::metrics::Refusal::UnknownName);
                return Refusal::NotFound.response();
            }
        },
    };
    let Some(http) = route.http.clone() else {
        return Refusal::NotFound.response();
    };
    if let Some(reason) = denied {
        tracing::info!(%host, %reason, "refused by the endpoint's IP restriction or policy");
        state
            .shared
            .metrics
            .refused(crate::edge::metrics::Refusal::of_policy(&reason));
        return Refusal::IpRestricted.response();
    }
    if !http.options.serves(state.ctx.scheme) {
        return wrong_scheme(state, &host, req.uri());
    }
    let method = req.method().clone();
    // What compression needs of the request, kept past forwarding it.
    let mut accept = HeaderMap::new();
    for v in req.headers().get_all(header::ACCEPT_ENCODING) {
        accept.append(header::ACCEPT_ENCODING, v.clone());
    }
    let mut compress: Vec<String> = if http.options.compression {
        vec!["br".into(), "gzip".into()]
    } else {
        Vec::new()
    };
    let res = match admit(&http, &req) {
        Err(refusal) => {
            tracing::info!(%host, code = refusal.code(), "request refused");
            refusal.response()
        }
        Ok(()) => proxy(state, &route, &http, &host, req, &mut compress).await,
    };
    finish(&http, &method, &accept, &compress, res)
}

/// An ACME directory validating a name over HTTP-01 (plain listener only).
fn acme_http_01(state: &ConnState, req: &Request<Incoming>) -> Option<Response<Body>> {
    if state.ctx.scheme != Scheme::Http {
        return None;
    }
    let token = req
        .uri()
        .path()
        .strip_prefix("/.well-known/acme-challenge/")?;
    let answer = state.shared.acme.as_ref()?.http_challenge(token)?;
    Some(super::respond::text(StatusCode::OK, answer))
}

/// The checks that need only the request's head.
fn admit(http: &HttpRoute, req: &Request<Incoming>) -> std::result::Result<(), Refusal> {
    let o = &http.options;
    if http
        .basic_auth
        .as_ref()
        .is_some_and(|d| !d.admit(req.headers()))
    {
        return Err(Refusal::Unauthorized);
    }
    if !(http.allow_user_agent.is_empty() && http.deny_user_agent.is_empty()) {
        let ua = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !http.user_agent_allowed(ua) {
            return Err(Refusal::UserAgent);
        }
    }
    if let Some(b) = &http.breaker {
        if !b.admit() {
            return Err(Refusal::CircuitOpen);
        }
    }
    if o.websocket_tcp_converter && !websocket::is_upgrade(req) {
        return Err(Refusal::WebsocketExpected);
    }
    Ok(())
}

/// An https endpoint reached over plain HTTP: redirect to https (GET/HEAD), or refuse.
fn wrong_scheme(state: &ConnState, host: &str, uri: &Uri) -> Response<Body> {
    if state.ctx.scheme == Scheme::Https {
        // An http-only endpoint's name reached over TLS.
        return Refusal::NotFound.response();
    }
    let port = match state.shared.tls_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let mut res = Refusal::HttpsOnly.response();
    if let Ok(location) = HeaderValue::from_str(&format!("https://{host}{port}{path}")) {
        res.headers_mut().insert(header::LOCATION, location);
    }
    res
}

/// Forwards an admitted request and returns the upstream's response (or the refusal).
async fn proxy(
    state: &ConnState,
    route: &Route,
    http: &Arc<HttpRoute>,
    host: &str,
    mut req: Request<Incoming>,
    compress: &mut Vec<String>,
) -> Response<Body> {
    let o = &http.options;
    let conn_info = state.ctx.conn_info();
    let scheme = state.ctx.scheme_str();
    // The policy's request phase: it may edit the request or answer it.
    let snapshot = match &http.policy {
        None => None,
        Some(policy) => {
            let (mut parts, body) = req.into_parts();
            let snapshot = RequestSnapshot::of(scheme, &parts);
            match policy.on_http_request(&conn_info, scheme, &mut parts) {
                RequestOutcome::Respond(generated) => {
                    tracing::info!(%host, reason = generated.reason, status = %generated.status, "answered by the traffic policy");
                    if let Some(why) = policy_refusal(generated.reason) {
                        state.shared.metrics.refused(why);
                    }
                    return respond::from_policy(generated);
                }
                RequestOutcome::Forward { compress: c } if !c.is_empty() => *compress = c,
                RequestOutcome::Forward { .. } => {}
            }
            req = Request::from_parts(parts, body);
            Some(snapshot)
        }
    };
    if o.websocket_tcp_converter {
        return websocket::convert(&state.shared, route, &state.ctx, host, req).await;
    }
    let upgrade = websocket::wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let body: Body = match &o.verify_webhook {
        None => body.map_err(|e| Box::new(e) as BoxError).boxed(),
        Some(v) => match Limited::new(body, MAX_WEBHOOK_BODY).collect().await {
            Ok(collected) => {
                let bytes: Bytes = collected.to_bytes();
                if !webhook::verify(v, &parts.headers, &bytes) {
                    tracing::info!(%host, provider = ?v.provider, "refused: webhook signature did not verify");
                    return Refusal::Webhook.response();
                }
                full(bytes)
            }
            Err(_) => return Refusal::BodyTooLarge.response(),
        },
    };
    prepare_request(state, http, host, &mut parts, upgrade.is_some());
    let req = Request::from_parts(parts, body);
    let res = state
        .upstreams
        .send(
            &state.shared,
            route,
            &state.ctx,
            host,
            req,
            upgrade.is_none(),
        )
        .await;
    let mut res = match res {
        Ok(res) => res,
        Err(refusal) => {
            if let Some(b) = &http.breaker {
                b.record(StatusCode::BAD_GATEWAY);
            }
            return refusal.response();
        }
    };
    if let Some(b) = &http.breaker {
        b.record(res.status());
    }
    // The policy's response phase: it may edit the head or replace the response.
    if let (Some(policy), Some(snapshot)) = (&http.policy, &snapshot) {
        let (mut parts, body) = res.into_parts();
        match policy.on_http_response(&conn_info, snapshot, &mut parts) {
            ResponseOutcome::Replace(generated) => return respond::from_policy(generated),
            ResponseOutcome::Forward { compress: c } if !c.is_empty() => *compress = c,
            ResponseOutcome::Forward { .. } => {}
        }
        res = Response::from_parts(parts, body);
    }
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = upgrade {
            let upstream = hyper::upgrade::on(&mut res);
            websocket::splice_upgrades(&state.shared, client, upstream);
        }
    } else {
        strip_hop_by_hop(res.headers_mut(), false);
    }
    res.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed())
}

/// Rewrites a request for the upstream: origin-form URI and `Host` (HTTP/1.1 to the
/// agent), hop-by-hop headers out, the endpoint's header options, `X-Forwarded-*`.
fn prepare_request(
    state: &ConnState,
    http: &HttpRoute,
    host: &str,
    parts: &mut http::request::Parts,
    upgrade: bool,
) {
    let o = &http.options;
    let headers = &mut parts.headers;
    let original_host = headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    strip_hop_by_hop(headers, upgrade);
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = match o.app_protocol {
        crate::agent::http::AppProtocol::Http1 => Uri::from(path),
        // h2 to the upstream needs a scheme and authority (h2c: http).
        crate::agent::http::AppProtocol::Http2 => Uri::builder()
            .scheme("http")
            .authority(host)
            .path_and_query(path.clone())
            .build()
            .unwrap_or_else(|_| Uri::from(path)),
    };
    parts.version = http::Version::HTTP_11;
    if o.forwarded_headers {
        let peer = state.ctx.peer.ip().to_string();
        let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {peer}"),
            None => peer,
        };
        set(headers, "x-forwarded-for", &xff);
        set(headers, "x-forwarded-proto", state.ctx.scheme_str());
        if let Some(h) = &original_host {
            headers.insert(HeaderName::from_static("x-forwarded-host"), h.clone());
        }
    }
    for name in &o.request_header_remove {
        headers.remove(name.as_str());
    }
    for (k, v) in &o.request_header_add {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    match (&o.host_header, original_host) {
        (Some(h), _) => set(headers, "host", h),
        (None, Some(h)) => {
            headers.insert(header::HOST, h);
        }
        (None, None) => set(headers, "host", host),
    }
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

/// Removes the headers that describe one hop, not the message (RFC 9110 7.6.1);
/// `Connection: upgrade` and `Upgrade` stay on an upgrade.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
    ] {
        headers.remove(n);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// The endpoint's response options: header edits and compression (by the options or a
/// policy's compress-response, among `compress`).
fn finish(
    http: &HttpRoute,
    method: &Method,
    request_headers: &HeaderMap,
    compress: &[String],
    mut res: Response<Body>,
) -> Response<Body> {
    let o = &http.options;
    let headers = res.headers_mut();
    for name in &o.response_header_remove {
        headers.remove(name.as_str());
    }
    for (k, v) in &o.response_header_add {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            headers.append(k, v);
        }
    }
    if let Some(enc) = choose_encoding(request_headers, res.headers(), compress) {
        res = compress::apply(method, enc, res);
    }
    res
}

/// The refusal a policy-generated response counts as, if it is one.
fn policy_refusal(reason: &str) -> Option<crate::edge::metrics::Refusal> {
    use crate::edge::metrics::Refusal;
    match reason {
        "RATE_LIMITED" => Some(Refusal::RateLimited),
        "IP_RESTRICTED" => Some(Refusal::IpRestriction),
        "POLICY_DENY" => Some(Refusal::PolicyDeny),
        _ => None,
    }
}
