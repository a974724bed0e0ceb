//! The responses the edge writes itself: a short plain-text body, burrow's stable
//! error code in `Burrow-Error-Code`, and ngrok's code in `ngrok-error-code` where
//! ngrok documents one for the same case, so code that checks it keeps working.

use super::Body;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

/// burrow's header naming why the edge answered a request itself.
pub(crate) const BURROW_ERROR_HEADER: &str = "burrow-error-code";
/// ngrok's header for the same.
pub(crate) const NGROK_ERROR_HEADER: &str = "ngrok-error-code";

/// Why the edge answers a request itself instead of forwarding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No endpoint serves the request's host.
    NotFound,
    /// The endpoint's agent cannot be reached (its tunnel will not open a stream).
    EndpointOffline,
    /// The agent could not reach the upstream, or the upstream's answer was not HTTP.
    UpstreamFailed,
    /// `basic_auth` is set and the request has no valid credentials.
    Unauthorized,
    /// The client's IP is refused (`allow_cidr`/`deny_cidr` or a policy).
    IpRestricted,
    /// The client's User-Agent is refused.
    UserAgent,
    /// The webhook signature did not verify.
    Webhook,
    /// The circuit breaker is open.
    CircuitOpen,
    /// `websocket_tcp_converter` is set and the request is not a websocket upgrade.
    WebsocketExpected,
    /// An https-only endpoint reached over plain HTTP: the client is sent to https.
    HttpsOnly,
    /// The request body is larger than the edge buffers (webhook verification).
    BodyTooLarge,
    /// The request is malformed in a way the edge catches (bad host, bad URI).
    BadRequest,
}

impl Refusal {
    /// Status, burrow's code, ngrok's code (if it has one) and the message.
    fn parts(self) -> (StatusCode, &'static str, Option<&'static str>, &'static str) {
        use Refusal::*;
        match self {
            NotFound => (
                StatusCode::NOT_FOUND,
                "BURROW_ENDPOINT_NOT_FOUND",
                Some("ERR_NGROK_3200"),
                "No endpoint is served at this host.",
            ),
            EndpointOffline => (
                StatusCode::BAD_GATEWAY,
                "BURROW_ENDPOINT_OFFLINE",
                Some("ERR_NGROK_3200"),
                "The endpoint is offline: its agent cannot be reached.",
            ),
            UpstreamFailed => (
                StatusCode::BAD_GATEWAY,
                "BURROW_UPSTREAM_FAILED",
                Some("ERR_NGROK_8012"),
                "The agent could not get a response from the upstream service.",
            ),
            Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "BURROW_BASIC_AUTH",
                None,
                "Authentication required.",
            ),
            IpRestricted => (
                StatusCode::FORBIDDEN,
                "BURROW_IP_RESTRICTED",
                Some("ERR_NGROK_3205"),
                "Request blocked by the endpoint's IP restriction.",
            ),
            UserAgent => (
                StatusCode::FORBIDDEN,
                "BURROW_USER_AGENT_REFUSED",
                Some("ERR_NGROK_3211"),
                "The server does not authorize requests from your user-agent.",
            ),
            Webhook => (
                StatusCode::FORBIDDEN,
                "BURROW_WEBHOOK_VERIFICATION",
                Some("ERR_NGROK_3204"),
                "Request failed webhook verification.",
            ),
            CircuitOpen => (
                StatusCode::SERVICE_UNAVAILABLE,
                "BURROW_CIRCUIT_BREAKER",
                Some("ERR_NGROK_3202"),
                "Circuit breaker tripped: the upstream is failing; try again shortly.",
            ),
            WebsocketExpected => (
                StatusCode::BAD_REQUEST,
                "BURROW_WEBSOCKET_EXPECTED",
                Some("ERR_NGROK_3206"),
                "Expected a websocket request with a \"Connection: upgrade\" header but did not receive one.",
            ),
            HttpsOnly => (
                StatusCode::PERMANENT_REDIRECT,
                "BURROW_HTTPS_ONLY",
                None,
                "This endpoint is served over https.",
            ),
            BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "BURROW_BODY_TOO_LARGE",
                None,
                "The request body is too large.",
            ),
            BadRequest => (
                StatusCode::BAD_REQUEST,
                "BURROW_BAD_REQUEST",
                None,
                "The request is malformed.",
            ),
        }
    }

    /// burrow's stable code for this refusal.
    pub(crate) fn code(self) -> &'static str {
        self.parts().1
    }

    /// The response the client gets.
    pub(crate) fn response(self) -> Response<Body> {
        let (status, code, ngrok, message) = self.parts();
        let mut res = text(status, format!("{message}\n\n{code}\n"));
        let headers = res.headers_mut();
        headers.insert(BURROW_ERROR_HEADER, HeaderValue::from_static(code));
        if let Some(ngrok) = ngrok {
            headers.insert(NGROK_ERROR_HEADER, HeaderValue::from_static(ngrok));
        }
        if self == Refusal::Unauthorized {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"burrow\""),
            );
        }
        res
    }
}

/// A response a traffic policy generated (deny, custom-response, redirect, rate-limit,
/// basic-auth, restrict-ips); refusals carry their code like the edge's own.
pub(crate) fn from_policy(g: crate::policy::GeneratedResponse) -> Response<Body> {
    let mut res = Response::new(full(g.body));
    *res.status_mut() = g.status;
    *res.headers_mut() = g.headers;
    let (code, ngrok) = match g.reason {
        "POLICY_DENY" => (Some("BURROW_POLICY_DENY"), None),
        "RATE_LIMITED" => (Some("BURROW_RATE_LIMITED"), None),
        "BASIC_AUTH" => (Some("BURROW_BASIC_AUTH"), None),
        "IP_RESTRICTED" => (Some("BURROW_IP_RESTRICTED"), Some("ERR_NGROK_3205")),
        _ => (None, None),
    };
    if let Some(code) = code {
        res.headers_mut()
            .insert(BURROW_ERROR_HEADER, HeaderValue::from_static(code));
    }
    if let Some(ngrok) = ngrok {
        res.headers_mut()
            .insert(NGROK_ERROR_HEADER, HeaderValue::from_static(ngrok));
    }
    res
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut res = Response::new(full(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// A body of bytes already in memory.
pub(crate) fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}
