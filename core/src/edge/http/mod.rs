//! HTTP endpoints: the edge's reverse proxy.
//!
//! A connection for an http endpoint arrives on the TLS listener (routed by SNI and
//! terminated here, ALPN `h2` or `http/1.1`) or on the plain HTTP listener (routed by
//! `Host`). hyper serves it; each request runs the endpoint's options (and its traffic
//! policy's HTTP phases) and goes to the agent as HTTP/1.1 (or h2 with
//! `app_protocol="http2"`) over a tunnel stream, which the agent splices to the upstream
//! like any edge-terminated connection. Bodies stream both ways; upgrades (websockets)
//! are spliced after the `101`.

mod breaker;
mod compress;
mod plain;
mod proxy;
mod respond;
mod upstream;
mod webhook;
mod websocket;

pub(crate) use plain::accept_http;
pub(crate) use proxy::{serve, Fixed};

use crate::agent::http::{HttpOptions, Scheme};
use crate::error::{Error, Result};
use crate::policy::{Digests, TrafficPolicy};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use regex::Regex;
use std::net::SocketAddr;

/// The error type of bodies the proxy passes on.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A request or response body as the proxy passes it on (streamed).
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// An http endpoint's options, compiled once per bind.
pub struct HttpRoute {
    pub(crate) options: HttpOptions,
    allow_user_agent: Vec<Regex>,
    deny_user_agent: Vec<Regex>,
    breaker: Option<breaker::Breaker>,
    /// `basic_auth`'s credentials as digests; `None` when the option is not set.
    basic_auth: Option<Digests>,
    /// The endpoint's traffic policy, when it has HTTP phases.
    policy: Option<TrafficPolicy>,
}

impl HttpRoute {
    /// Compiles `options` (checked by the agent; checked again here, since the bind
    /// comes from the network) and keeps `policy` when it has HTTP phases.
    pub(crate) fn new(options: &HttpOptions, policy: &TrafficPolicy) -> Result<Self> {
        options.check()?;
        let compile = |list: &[String]| {
            list.iter()
                .map(|re| Regex::new(re).map_err(|e| Error::option(format!("{re:?}: {e}"))))
                .collect::<Result<Vec<_>>>()
        };
        Ok(HttpRoute {
            allow_user_agent: compile(&options.allow_user_agent)?,
            deny_user_agent: compile(&options.deny_user_agent)?,
            basic_auth: (!options.basic_auth.is_empty()).then(|| {
                Digests::of(
                    options
                        .basic_auth
                        .iter()
                        .map(|c| (c.username.as_str(), c.password.0.as_str())),
                )
            }),
            breaker: options
                .circuit_breaker
                .filter(|f| *f > 0.0)
                .map(breaker::Breaker::new),
            policy: Some(policy.clone()).filter(TrafficPolicy::has_http_phases),
            options: options.clone(),
        })
    }

    /// True when the User-Agent passes `allow_user_agent` / `deny_user_agent`.
    fn user_agent_allowed(&self, ua: &str) -> bool {
        if self.deny_user_agent.iter().any(|re| re.is_match(ua)) {
            return false;
        }
        self.allow_user_agent.is_empty() || self.allow_user_agent.iter().any(|re| re.is_match(ua))
    }
}

/// How a client's connection reached the proxy.
#[derive(Clone)]
pub(crate) struct ConnCtx {
    /// The public client's address.
    pub(crate) peer: SocketAddr,
    /// The edge address it connected to.
    pub(crate) server_addr: Option<SocketAddr>,
    /// The SNI, on the TLS listener.
    pub(crate) sni: Option<String>,
    /// `https` on the TLS listener, `http` on the plain one.
    pub(crate) scheme: Scheme,
    /// Subject of the client certificate the edge verified (mutual TLS).
    pub(crate) client_cert_subject: Option<String>,
}

impl ConnCtx {
    fn scheme_str(&self) -> &'static str {
        match self.scheme {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }

    /// What a connection-phase policy expression sees.
    fn conn_info(&self) -> crate::policy::ConnInfo {
        crate::policy::ConnInfo {
            client: self.peer,
            server_port: self.server_addr.map_or(0, |a| a.port()),
            sni: self.sni.clone(),
        }
    }
}
