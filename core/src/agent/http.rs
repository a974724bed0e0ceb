//! What an HTTP endpoint does to requests at the edge: ngrok's HTTP options, checked.
//!
//! The option parser and the builders fill in [`HttpOptions`]; it travels in the bind
//! (secrets included, since the edge enforces them) and the edge's proxy runs it.

use crate::error::{Error, ErrorCode, Result};
use crate::wire::SecretPem;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Which schemes an HTTP endpoint answers on (ngrok's `schemes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// TLS, terminated by the edge (the default).
    Https,
    /// Plaintext, on the edge's HTTP listener.
    Http,
}

impl FromStr for Scheme {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "https" => Ok(Scheme::Https),
            "http" => Ok(Scheme::Http),
            _ => Err(Error::option(format!(
                "scheme {s:?} is not one of \"HTTPS\", \"HTTP\""
            ))),
        }
    }
}

/// How the edge speaks to the upstream through the agent (ngrok's `app_protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// HTTP/1.1 (the default).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c, or h2 over TLS for an `https://` upstream).
    Http2,
}

impl FromStr for AppProtocol {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "http1" => Ok(AppProtocol::Http1),
            "http2" => Ok(AppProtocol::Http2),
            _ => Err(Error::option(format!(
                "app_protocol {s:?} is not one of \"http1\", \"http2\""
            ))),
        }
    }
}

/// One `user:password` pair of `basic_auth`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// The user name.
    pub username: String,
    /// The password; never printed.
    pub password: SecretPem,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Webhook providers whose signatures the edge verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookProvider {
    /// `X-Hub-Signature-256: sha256=HMAC(secret, body)`.
    Github,
    /// `Stripe-Signature: t=TS,v1=HMAC(secret, "TS.body")`.
    Stripe,
    /// `X-Slack-Signature: v0=HMAC(secret, "v0:TS:body")` with `X-Slack-Request-Timestamp`.
    Slack,
}

/// The providers accepted by name, for messages.
const WEBHOOK_PROVIDERS: &str = "\"github\", \"stripe\", \"slack\"";

impl FromStr for WebhookProvider {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "github" => Ok(WebhookProvider::Github),
            "stripe" => Ok(WebhookProvider::Stripe),
            "slack" => Ok(WebhookProvider::Slack),
            _ => Err(Error::new(
                ErrorCode::Unsupported,
                format!("verify_webhook_provider {s:?} is not supported; burrow verifies {WEBHOOK_PROVIDERS}"),
            )),
        }
    }
}

/// `verify_webhook_provider` and `verify_webhook_secret`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookVerification {
    /// Whose signature scheme.
    pub provider: WebhookProvider,
    /// The shared secret; never printed.
    pub secret: SecretPem,
}

impl fmt::Debug for WebhookVerification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookVerification")
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

/// An HTTP endpoint's request handling at the edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpOptions {
    /// The schemes served; the URL is `https://` when HTTPS is among them.
    pub schemes: Vec<Scheme>,
    /// Clients must present one of these (401 otherwise).
    pub basic_auth: Vec<Credential>,
    /// User-Agent regexes allowed (empty: all).
    pub allow_user_agent: Vec<String>,
    /// User-Agent regexes refused (403).
    pub deny_user_agent: Vec<String>,
    /// Headers added to every request sent upstream.
    pub request_header_add: Vec<(String, String)>,
    /// Headers removed from every request sent upstream.
    pub request_header_remove: Vec<String>,
    /// Headers added to every response sent to the client.
    pub response_header_add: Vec<(String, String)>,
    /// Headers removed from every response sent to the client.
    pub response_header_remove: Vec<String>,
    /// Compress responses (gzip or brotli, by `Accept-Encoding`).
    pub compression: bool,
    /// Fraction of 5xx responses over the window that opens the breaker (`None`: off).
    pub circuit_breaker: Option<f64>,
    /// Accept websockets and hand the upstream a plain byte stream of their messages.
    pub websocket_tcp_converter: bool,
    /// Verify a webhook provider's signature on every request (403 otherwise).
    pub verify_webhook: Option<WebhookVerification>,
    /// The `Host` header sent upstream (`None`: the client's).
    pub host_header: Option<String>,
    /// How the edge speaks to the upstream.
    pub app_protocol: AppProtocol,
    /// Add `X-Forwarded-For`, `-Proto` and `-Host` (default true).
    pub forwarded_headers: bool,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            schemes: vec![Scheme::Https],
            basic_auth: Vec::new(),
            allow_user_agent: Vec::new(),
            deny_user_agent: Vec::new(),
            request_header_add: Vec::new(),
            request_header_remove: Vec::new(),
            response_header_add: Vec::new(),
            response_header_remove: Vec::new(),
            compression: false,
            circuit_breaker: None,
            websocket_tcp_converter: false,
            verify_webhook: None,
            host_header: None,
            app_protocol: AppProtocol::Http1,
            forwarded_headers: true,
        }
    }
}

// `circuit_breaker` is checked to be a finite number, so equality is total.
impl Eq for HttpOptions {}

impl HttpOptions {
    /// True when the endpoint answers on `scheme`.
    pub fn serves(&self, scheme: Scheme) -> bool {
        self.schemes.contains(&scheme)
    }

    /// Checks every value the edge would otherwise refuse at bind time: header names
    /// and values, regexes, the breaker's fraction, credentials.
    pub fn check(&self) -> Result<()> {
        if self.schemes.is_empty() {
            return Err(Error::option(
                "schemes is empty: give \"HTTPS\", \"HTTP\" or both",
            ));
        }
        for c in &self.basic_auth {
            check_credential(&c.username, &c.password.0)?;
        }
        for (name, list) in [
            ("allow_user_agent", &self.allow_user_agent),
            ("deny_user_agent", &self.deny_user_agent),
        ] {
            for re in list {
                regex::Regex::new(re).map_err(|e| {
                    Error::option(format!("{name} {re:?} is not a valid regex: {e}"))
                })?;
            }
        }
        for (name, list) in [
            ("request_header_add", &self.request_header_add),
            ("response_header_add", &self.response_header_add),
        ] {
            for (k, v) in list {
                header_name(name, k)?;
                http::HeaderValue::from_str(v).map_err(|_| {
                    Error::option(format!(
                        "{name}: the value of {k:?} is not a valid header value"
                    ))
                })?;
            }
        }
        for (name, list) in [
            ("request_header_remove", &self.request_header_remove),
            ("response_header_remove", &self.response_header_remove),
        ] {
            for k in list {
                header_name(name, k)?;
            }
        }
        if let Some(f) = self.circuit_breaker {
            if !(f.is_finite() && (0.0..=1.0).contains(&f)) {
                return Err(Error::option(format!(
                    "circuit_breaker {f} must be a fraction of 5xx responses between 0 and 1"
                )));
            }
        }
        if let Some(w) = &self.verify_webhook {
            if w.secret.0.is_empty() {
                return Err(Error::option("verify_webhook_secret is empty"));
            }
        }
        if let Some(h) = &self.host_header {
            http::HeaderValue::from_str(h)
                .ok()
                .filter(|_| !h.is_empty())
                .ok_or_else(|| Error::option(format!("host_header {h:?} is not a valid host")))?;
        }
        Ok(())
    }
}

fn header_name(option: &str, name: &str) -> Result<()> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map(|_| ())
        .map_err(|_| Error::option(format!("{option}: {name:?} is not a valid header name")))
}

/// ngrok's rules for basic auth: a user name without `:`, a password of 8 to 128 characters.
fn check_credential(username: &str, password: &str) -> Result<()> {
    if username.is_empty() || username.contains(':') {
        return Err(Error::option(
            "basic_auth: the user name must be non-empty and contain no ':' (give \"user:password\")",
        ));
    }
    if !(8..=128).contains(&password.chars().count()) {
        return Err(Error::option(format!(
            "basic_auth: the password of {username:?} must be 8 to 128 characters"
        )));
    }
    Ok(())
}

/// Splits ngrok's `"Name:Value"` header form on the first `:`.
pub(crate) fn header_pair(option: &str, text: &str) -> Result<(String, String)> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| Error::option(format!("{option} {text:?} must be \"Name:Value\"")))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

/// Splits ngrok's `"user:password"` basic-auth form on the first `:`.
pub(crate) fn credential(text: &str) -> Result<Credential> {
    let (user, pass) = text
        .split_once(':')
        .ok_or_else(|| Error::option("basic_auth entries must be \"user:password\""))?;
    Ok(Credential {
        username: user.to_owned(),
        password: SecretPem(pass.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug() {
        let mut o = HttpOptions::default();
        o.basic_auth
            .push(credential("ann:hunter2-hunter2").unwrap());
        o.verify_webhook = Some(WebhookVerification {
            provider: WebhookProvider::Github,
            secret: SecretPem("whsec-123".into()),
        });
        let text = format!("{o:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("whsec"),
            "{text}"
        );
        assert!(text.contains("ann"), "{text}");
    }

    #[test]
    fn checks_name_the_option() {
        let bad = |o: HttpOptions| o.check().unwrap_err().to_string();
        let mut o = HttpOptions::default();
        o.basic_auth.push(credential("ann:short").unwrap());
        assert!(bad(o).contains("8 to 128"));
        let o = HttpOptions {
            deny_user_agent: vec!["(".into()],
            ..Default::default()
        };
        assert!(bad(o).contains("deny_user_agent"));
        let o = HttpOptions {
            request_header_add: vec![("bad name".into(), "x".into())],
            ..Default::default()
        };
        assert!(bad(o).contains("request_header_add"));
        let o = HttpOptions {
            circuit_breaker: Some(1.5),
            ..Default::default()
        };
        assert!(bad(o).contains("circuit_breaker"));
        assert!(header_pair("request_header_add", "novalue").is_err());
        assert_eq!(
            header_pair("x", "X-A: b:c").unwrap(),
            ("X-A".to_owned(), "b:c".to_owned())
        );
    }
}
