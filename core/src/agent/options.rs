//! ngrok's `forward()` options → a session and an [`EndpointSpec`]: the one parser
//! behind Python's and Node's `forward()`, their builders, the CLI and the config file.
//!
//! It owns every option name and alias, every coercion ngrok applies (`"2"` → PROXY v2,
//! a port number → `localhost:N`, a scalar where a list is expected, dotted keys) and
//! every refusal message. Bindings only turn their language's values into
//! [`OptionValue`]s (bytes, `Path` and `Buffer` become [`OptionValue::Bytes`]).

use super::http::{self, Scheme, WebhookProvider, WebhookVerification};
use super::proxy_proto::ProxyProto;
use super::spec::{proto_name, EndpointDraft, EndpointSpec, Termination};
use super::upstream::Upstream;
use super::{SessionBuilder, AUTHTOKEN_ENV, NGROK_AUTHTOKEN_ENV};
use crate::error::{Error, ErrorCode, Result};
use crate::wire::{Proto, SecretPem};
use std::fmt;

/// One option value, in the few shapes every language has.
#[derive(Clone, PartialEq)]
pub enum OptionValue {
    /// `None` / `null` / `undefined`: the option is dropped, as ngrok does.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number (accepted where an integer is, when it is whole).
    Float(f64),
    /// Text.
    Str(String),
    /// Raw bytes (Python `bytes`/`bytearray`/file contents, Node `Buffer`).
    Bytes(Vec<u8>),
    /// A list.
    List(Vec<OptionValue>),
    /// A mapping (refused where a scalar is expected).
    Map(Vec<(String, OptionValue)>),
}

impl fmt::Debug for OptionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be keys or tokens: show only their shape.
        f.write_str(self.type_name())
    }
}

impl OptionValue {
    fn type_name(&self) -> &'static str {
        match self {
            OptionValue::Null => "null",
            OptionValue::Bool(_) => "a boolean",
            OptionValue::Int(_) | OptionValue::Float(_) => "a number",
            OptionValue::Str(_) => "a string",
            OptionValue::Bytes(_) => "bytes",
            OptionValue::List(_) => "a list",
            OptionValue::Map(_) => "a mapping",
        }
    }
}

impl From<serde_json::Value> for OptionValue {
    fn from(v: serde_json::Value) -> Self {
        use serde_json::Value;
        match v {
            Value::Null => OptionValue::Null,
            Value::Bool(b) => OptionValue::Bool(b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => OptionValue::Int(i),
                None => OptionValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => OptionValue::Str(s),
            Value::Array(a) => OptionValue::List(a.into_iter().map(Into::into).collect()),
            Value::Object(o) => {
                OptionValue::Map(o.into_iter().map(|(k, v)| (k, v.into())).collect())
            }
        }
    }
}

impl From<&str> for OptionValue {
    fn from(s: &str) -> Self {
        OptionValue::Str(s.to_owned())
    }
}

impl From<String> for OptionValue {
    fn from(s: String) -> Self {
        OptionValue::Str(s)
    }
}

impl From<Vec<u8>> for OptionValue {
    fn from(b: Vec<u8>) -> Self {
        OptionValue::Bytes(b)
    }
}

impl From<bool> for OptionValue {
    fn from(b: bool) -> Self {
        OptionValue::Bool(b)
    }
}

/// Which options a call takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `forward()`: session and endpoint options together.
    Forward,
    /// A session builder's `connect()`: session options only.
    Session,
    /// An endpoint builder on an existing session: endpoint options only.
    Endpoint,
}

/// Every option burrow reads, under its canonical (ngrok) name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opt {
    Authtoken,
    AuthtokenFromEnv,
    ServerAddr,
    RootCas,
    SessionMetadata,
    ForceNewSession,
    Addr,
    Proto,
    Domain,
    Url,
    Crt,
    Key,
    MutualTlsCas,
    TerminateAt,
    TrafficPolicy,
    ProxyProto,
    Metadata,
    ForwardsTo,
    Description,
    AllowCidr,
    DenyCidr,
    RemoteAddr,
    VerifyUpstreamTls,
    UpstreamRootCas,
    MinVersion,
    MaxVersion,
    Alpn,
    PoolingEnabled,
    Schemes,
    BasicAuth,
    CircuitBreaker,
    Compression,
    RequestHeaderAdd,
    RequestHeaderRemove,
    ResponseHeaderAdd,
    ResponseHeaderRemove,
    WebsocketTcpConverter,
    AppProtocol,
    AllowUserAgent,
    DenyUserAgent,
    VerifyWebhookProvider,
    VerifyWebhookSecret,
    HostHeader,
    ForwardedHeaders,
}

impl Opt {
    /// Options that only an http endpoint takes.
    fn is_http(self) -> bool {
        matches!(
            self,
            Opt::Schemes
                | Opt::BasicAuth
                | Opt::CircuitBreaker
                | Opt::Compression
                | Opt::RequestHeaderAdd
                | Opt::RequestHeaderRemove
                | Opt::ResponseHeaderAdd
                | Opt::ResponseHeaderRemove
                | Opt::WebsocketTcpConverter
                | Opt::AppProtocol
                | Opt::AllowUserAgent
                | Opt::DenyUserAgent
                | Opt::VerifyWebhookProvider
                | Opt::VerifyWebhookSecret
                | Opt::HostHeader
                | Opt::ForwardedHeaders
        )
    }

    fn is_session(self) -> bool {
        matches!(
            self,
            Opt::Authtoken
                | Opt::AuthtokenFromEnv
                | Opt::ServerAddr
                | Opt::RootCas
                | Opt::SessionMetadata
                | Opt::ForceNewSession
        )
    }
}

/// Option names (ngrok's, then aliases) and what they set.
const NAMES: &[(&str, Opt)] = &[
    ("authtoken", Opt::Authtoken),
    ("authtoken_from_env", Opt::AuthtokenFromEnv),
    ("server_addr", Opt::ServerAddr),
    ("root_cas", Opt::RootCas),
    ("session_ca_cert", Opt::RootCas),
    ("session_metadata", Opt::SessionMetadata),
    ("force_new_session", Opt::ForceNewSession),
    ("addr", Opt::Addr),
    ("proto", Opt::Proto),
    ("domain", Opt::Domain),
    ("hostname", Opt::Domain),
    ("url", Opt::Url),
    ("crt", Opt::Crt),
    ("key", Opt::Key),
    ("mutual_tls_cas", Opt::MutualTlsCas),
    ("terminate_at", Opt::TerminateAt),
    ("traffic_policy", Opt::TrafficPolicy),
    ("policy", Opt::TrafficPolicy),
    ("proxy_proto", Opt::ProxyProto),
    ("metadata", Opt::Metadata),
    ("forwards_to", Opt::ForwardsTo),
    ("description", Opt::Description),
    ("allow_cidr", Opt::AllowCidr),
    ("ip_restriction_allow_cidrs", Opt::AllowCidr),
    ("deny_cidr", Opt::DenyCidr),
    ("ip_restriction_deny_cidrs", Opt::DenyCidr),
    ("remote_addr", Opt::RemoteAddr),
    ("verify_upstream_tls", Opt::VerifyUpstreamTls),
    ("upstream_root_cas", Opt::UpstreamRootCas),
    ("min_version", Opt::MinVersion),
    ("max_version", Opt::MaxVersion),
    ("alpn", Opt::Alpn),
    ("pooling_enabled", Opt::PoolingEnabled),
    ("schemes", Opt::Schemes),
    ("scheme", Opt::Schemes),
    ("basic_auth", Opt::BasicAuth),
    ("auth", Opt::BasicAuth),
    ("circuit_breaker", Opt::CircuitBreaker),
    ("compression", Opt::Compression),
    ("request_header_add", Opt::RequestHeaderAdd),
    ("request_header_remove", Opt::RequestHeaderRemove),
    ("response_header_add", Opt::ResponseHeaderAdd),
    ("response_header_remove", Opt::ResponseHeaderRemove),
    ("websocket_tcp_converter", Opt::WebsocketTcpConverter),
    ("app_protocol", Opt::AppProtocol),
    ("allow_user_agent", Opt::AllowUserAgent),
    ("deny_user_agent", Opt::DenyUserAgent),
    ("verify_webhook_provider", Opt::VerifyWebhookProvider),
    ("verify_webhook_secret", Opt::VerifyWebhookSecret),
    ("host_header", Opt::HostHeader),
    ("forwarded_headers", Opt::ForwardedHeaders),
];

const IDENTITY_PROVIDER: &str =
    "OAuth and OIDC need an identity provider on the internet, which burrow's edge does not reach; use basic_auth or a traffic policy's basic-auth action";
const NOT_IMPLEMENTED: &str = "an ngrok option burrow does not implement";

/// ngrok options burrow knows and refuses, each with the reason given to the user.
/// The one place to switch an option off (add it here) or on (move it to [`NAMES`]).
const UNSUPPORTED: &[(&str, &str)] = &[
    ("oauth_provider", IDENTITY_PROVIDER),
    ("oauth_allow_domains", IDENTITY_PROVIDER),
    ("oauth_allow_emails", IDENTITY_PROVIDER),
    ("oauth_scopes", IDENTITY_PROVIDER),
    ("oauth_client_id", IDENTITY_PROVIDER),
    ("oauth_client_secret", IDENTITY_PROVIDER),
    ("oidc_issuer_url", IDENTITY_PROVIDER),
    ("oidc_client_id", IDENTITY_PROVIDER),
    ("oidc_client_secret", IDENTITY_PROVIDER),
    ("oidc_allow_domains", IDENTITY_PROVIDER),
    ("oidc_allow_emails", IDENTITY_PROVIDER),
    ("oidc_scopes", IDENTITY_PROVIDER),
    ("label", NOT_IMPLEMENTED),
    ("labels", NOT_IMPLEMENTED),
    ("binding", NOT_IMPLEMENTED),
    ("bindings", NOT_IMPLEMENTED),
    ("policy_file", NOT_IMPLEMENTED),
    ("session_ca_certs", NOT_IMPLEMENTED),
    ("on_status_change", NOT_IMPLEMENTED),
    ("onStatusChange", NOT_IMPLEMENTED),
];

/// How to reach the edge, as the options describe it.
#[derive(Clone, Default, PartialEq)]
pub struct SessionOptions {
    /// The authtoken (from `authtoken`, `authtoken_from_env` or the caller's default).
    pub authtoken: Option<SecretPem>,
    /// The edges' tunnel addresses (`host:port`, checked, without duplicates); `None`
    /// uses `BURROW_SERVER_ADDR` or an embedded edge. Several addresses: the session
    /// holds a tunnel connection to each edge.
    pub server_addr: Option<Vec<String>>,
    /// CA bundle (PEM) the edge's tunnel certificate must chain to.
    pub root_cas: Option<Vec<u8>>,
    /// Session metadata.
    pub metadata: Option<String>,
    /// Connect a session of its own instead of reusing a shared one.
    pub force_new_session: bool,
}

impl fmt::Debug for SessionOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionOptions")
            .field("authtoken", &self.authtoken.as_ref().map(|_| "<redacted>"))
            .field("server_addr", &self.server_addr)
            .field("metadata", &self.metadata)
            .field("force_new_session", &self.force_new_session)
            .finish_non_exhaustive()
    }
}

impl SessionOptions {
    /// A session builder with these settings.
    pub fn builder(&self) -> SessionBuilder {
        let mut b = SessionBuilder::default();
        if let Some(t) = &self.authtoken {
            b = b.authtoken(t.0.clone());
        }
        if let Some(a) = &self.server_addr {
            b = b.server_addrs(a.clone());
        }
        if let Some(c) = &self.root_cas {
            b = b.root_cas(c.clone());
        }
        if let Some(m) = &self.metadata {
            b = b.metadata(m.clone());
        }
        b
    }

    /// Identifies the settings a shared session is reused for (a digest: it includes
    /// the authtoken, which must not be kept around as text).
    pub fn reuse_key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.authtoken.as_ref().map(|t| &t.0).hash(&mut h);
        self.server_addr.hash(&mut h);
        self.root_cas.hash(&mut h);
        self.metadata.hash(&mut h);
        format!("{:016x}", h.finish())
    }
}

/// What a `forward()` call asks for: the session, the endpoint and where it forwards.
#[derive(Debug, Clone)]
pub struct ForwardOptions {
    /// How to reach the edge.
    pub session: SessionOptions,
    /// The endpoint.
    pub endpoint: EndpointSpec,
    /// Where connections go (`addr`, default `localhost:80`).
    pub upstream: Upstream,
}

impl ForwardOptions {
    /// A JSON description with secrets left out: what the shared option table compares.
    pub fn describe(&self) -> serde_json::Value {
        let mut endpoint = serde_json::to_value(&self.endpoint).unwrap_or_default();
        let material = match &self.endpoint.termination {
            Termination::Upstream => None,
            Termination::Agent(m) | Termination::Edge(m) => Some(m),
        };
        if let (Some(m), Some(t)) = (material, endpoint.get_mut("termination")) {
            let mut tls = serde_json::to_value(m).unwrap_or_default();
            if m.cert.is_some() {
                tls["cert"] = "present".into();
            }
            t["tls"] = tls;
        }
        // An http endpoint's passwords and webhook secret travel in the bind, not here.
        if let Some(http) = endpoint.pointer_mut("/kind/http") {
            if let Some(creds) = http.get_mut("basic_auth").and_then(|c| c.as_array_mut()) {
                for c in creds {
                    c["password"] = "redacted".into();
                }
            }
            if let Some(w) = http.get_mut("verify_webhook").filter(|w| w.is_object()) {
                w["secret"] = "redacted".into();
            }
        }
        serde_json::json!({
            "session": {
                "authtoken": self.session.authtoken.is_some(),
                "server_addr": self.session.server_addr,
                "root_cas": self.session.root_cas.is_some(),
                "metadata": self.session.metadata,
                "force_new_session": self.session.force_new_session,
            },
            "endpoint": endpoint,
            "upstream": self.upstream.to_string(),
            "terminate_at": self.endpoint.terminate_at().to_string(),
        })
    }
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidOption, message)
}

/// Parses `options` for `scope`. `default_authtoken` is used when no option gives one
/// (the bindings' `set_auth_token`); `authtoken_from_env` reads `BURROW_AUTHTOKEN`,
/// then `NGROK_AUTHTOKEN`.
pub fn parse(
    options: impl IntoIterator<Item = (String, OptionValue)>,
    scope: Scope,
    default_authtoken: Option<&str>,
) -> Result<ForwardOptions> {
    let mut given: Vec<(Opt, String, OptionValue)> = Vec::new();
    for (raw_name, value) in options {
        if value == OptionValue::Null {
            continue;
        }
        let name = raw_name.replace('.', "_");
        if let Some((_, why)) = UNSUPPORTED.iter().find(|(n, _)| *n == name) {
            return Err(Error::new(
                ErrorCode::Unsupported,
                format!("option {raw_name:?} is not supported yet: {why}"),
            ));
        }
        let Some(&(_, key)) = NAMES.iter().find(|(n, _)| *n == name) else {
            return Err(invalid(format!("unknown option {raw_name:?}")));
        };
        match scope {
            Scope::Session if !key.is_session() => {
                return Err(invalid(format!(
                    "option {raw_name:?} belongs to an endpoint, not to a session"
                )))
            }
            Scope::Endpoint if key.is_session() => {
                return Err(invalid(format!(
                    "option {raw_name:?} belongs to the session, not to an endpoint"
                )))
            }
            _ => {}
        }
        if let Some((_, other, _)) = given.iter().find(|(k, _, _)| *k == key) {
            return Err(invalid(format!(
                "options {other:?} and {raw_name:?} are the same setting; give one"
            )));
        }
        given.push((key, raw_name, value));
    }
    let mut p = Parsed::default();
    for (key, name, value) in given {
        p.apply(key, &name, value)?;
    }
    p.finish(default_authtoken)
}

#[derive(Default)]
struct Parsed {
    session: SessionOptions,
    from_env: bool,
    draft: EndpointDraft,
    addr: Option<String>,
    url: Option<(String, String)>,
    verify_upstream_tls: Option<bool>,
    upstream_root_cas: Option<Vec<u8>>,
    webhook_provider: Option<WebhookProvider>,
    webhook_secret: Option<SecretPem>,
    schemes_given: bool,
}

impl Parsed {
    fn apply(&mut self, key: Opt, name: &str, v: OptionValue) -> Result<()> {
        let d = &mut self.draft;
        if key.is_http() && d.http_option_given.is_none() {
            d.http_option_given = Some(name.to_owned());
        }
        let h = &mut d.http;
        match key {
            Opt::Authtoken => self.session.authtoken = Some(SecretPem(text(name, v)?)),
            Opt::AuthtokenFromEnv => self.from_env = boolean(name, v)?,
            Opt::ServerAddr => self.session.server_addr = Some(server_addrs(name, v)?),
            Opt::RootCas => self.session.root_cas = Some(pem(name, v)?),
            Opt::SessionMetadata => self.session.metadata = Some(text(name, v)?),
            Opt::ForceNewSession => self.session.force_new_session = boolean(name, v)?,
            Opt::Addr => self.addr = Some(addr(v)?),
            Opt::Proto => d.proto = Some(proto(&text(name, v)?)?),
            Opt::Domain => d.domain = Some(text(name, v)?),
            Opt::Url => {
                let url = text(name, v)?;
                let (scheme, rest) = url.split_once("://").unwrap_or(("", ""));
                let scheme = scheme.to_ascii_lowercase();
                if !matches!(scheme.as_str(), "tls" | "tcp" | "http" | "https") || rest.is_empty() {
                    return Err(url_error(&url));
                }
                self.url = Some((scheme, rest.to_owned()));
            }
            Opt::Crt => d.crt = Some(pem(name, v)?),
            Opt::Key => d.key = Some(pem(name, v)?),
            Opt::MutualTlsCas => d.mutual_tls_cas = Some(pem(name, v)?),
            Opt::TerminateAt => d.terminate_at = Some(text(name, v)?.parse()?),
            Opt::TrafficPolicy => match v {
                OptionValue::Str(s) => d.traffic_policy = Some(s),
                _ => return Err(invalid(format!("{name} must be a YAML or JSON string"))),
            },
            Opt::ProxyProto => {
                let version = text(name, v)?;
                d.proxy_proto = match version.trim() {
                    "" | "0" => None,
                    v => Some(v.parse::<ProxyProto>()?),
                };
            }
            Opt::Metadata => d.metadata = text(name, v)?,
            Opt::ForwardsTo => d.forwards_to = Some(text(name, v)?),
            Opt::Description => d.description = Some(text(name, v)?),
            Opt::AllowCidr => d.allow_cidrs = list(name, v)?,
            Opt::DenyCidr => d.deny_cidrs = list(name, v)?,
            Opt::RemoteAddr => d.remote_port = Some(remote_port(&text(name, v)?)?),
            Opt::VerifyUpstreamTls => self.verify_upstream_tls = Some(boolean(name, v)?),
            Opt::UpstreamRootCas => self.upstream_root_cas = Some(pem(name, v)?),
            Opt::MinVersion => d.min_version = Some(text(name, v)?),
            Opt::MaxVersion => d.max_version = Some(text(name, v)?),
            Opt::Alpn => d.alpn = list(name, v)?,
            Opt::PoolingEnabled => d.pooling_enabled = boolean(name, v)?,
            Opt::Schemes => {
                let mut schemes = Vec::new();
                for s in list(name, v)? {
                    let scheme: Scheme = s.parse()?;
                    if !schemes.contains(&scheme) {
                        schemes.push(scheme);
                    }
                }
                h.schemes = schemes;
                self.schemes_given = true;
            }
            Opt::BasicAuth => {
                h.basic_auth = list(name, v)?
                    .iter()
                    .map(|c| http::credential(c))
                    .collect::<Result<_>>()?
            }
            Opt::CircuitBreaker => h.circuit_breaker = Some(number(name, v)?),
            Opt::Compression => h.compression = boolean(name, v)?,
            Opt::RequestHeaderAdd => h.request_header_add = header_pairs(name, v)?,
            Opt::RequestHeaderRemove => h.request_header_remove = list(name, v)?,
            Opt::ResponseHeaderAdd => h.response_header_add = header_pairs(name, v)?,
            Opt::ResponseHeaderRemove => h.response_header_remove = list(name, v)?,
            Opt::WebsocketTcpConverter => h.websocket_tcp_converter = boolean(name, v)?,
            Opt::AppProtocol => h.app_protocol = text(name, v)?.parse()?,
            Opt::AllowUserAgent => h.allow_user_agent = list(name, v)?,
            Opt::DenyUserAgent => h.deny_user_agent = list(name, v)?,
            Opt::VerifyWebhookProvider => self.webhook_provider = Some(text(name, v)?.parse()?),
            Opt::VerifyWebhookSecret => self.webhook_secret = Some(SecretPem(text(name, v)?)),
            Opt::HostHeader => h.host_header = Some(text(name, v)?),
            Opt::ForwardedHeaders => h.forwarded_headers = boolean(name, v)?,
        }
        Ok(())
    }

    fn finish(mut self, default_authtoken: Option<&str>) -> Result<ForwardOptions> {
        if let Some((scheme, rest)) = self.url.take() {
            let scheme_proto = proto(&scheme)?;
            match self.draft.proto {
                Some(p) if p != scheme_proto => {
                    return Err(invalid(format!(
                        "url {scheme}://{rest} contradicts proto {:?}",
                        proto_name(p)
                    )))
                }
                _ => self.draft.proto = Some(scheme_proto),
            }
            match scheme_proto {
                Proto::Tls | Proto::Http => {
                    let (host, port) = name_url(&scheme, &rest)?;
                    if scheme == "http" && !self.schemes_given {
                        self.draft.http.schemes = vec![Scheme::Http];
                    }
                    if self.draft.domain.as_deref().is_some_and(|d| d != host) {
                        return Err(invalid(
                            "domain and url name different hosts; give one of them",
                        ));
                    }
                    self.draft.domain = Some(host);
                    self.draft.tls_port = port;
                }
                Proto::Tcp => {
                    if self.draft.remote_port.is_some() {
                        return Err(invalid("give url or remote_addr, not both"));
                    }
                    self.draft.remote_port = Some(remote_port(&rest)?);
                }
            }
        }
        match (self.webhook_provider.take(), self.webhook_secret.take()) {
            (Some(provider), Some(secret)) => {
                self.draft.http.verify_webhook = Some(WebhookVerification { provider, secret })
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(invalid(
                    "verify_webhook_provider needs verify_webhook_secret, the secret the provider signs with",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "verify_webhook_secret needs verify_webhook_provider (\"github\", \"stripe\" or \"slack\")",
                ))
            }
        }
        if self.from_env && self.session.authtoken.is_none() {
            self.session.authtoken = std::env::var(AUTHTOKEN_ENV)
                .or_else(|_| std::env::var(NGROK_AUTHTOKEN_ENV))
                .ok()
                .filter(|t| !t.is_empty())
                .map(SecretPem);
        }
        if self.session.authtoken.is_none() {
            self.session.authtoken = default_authtoken.map(|t| SecretPem(t.to_owned()));
        }
        let mut upstream: Upstream = self.addr.as_deref().unwrap_or("localhost:80").parse()?;
        if let Some(verify) = self.verify_upstream_tls {
            upstream = upstream.verify_tls(verify);
        }
        if let Some(ca) = self.upstream_root_cas {
            upstream = upstream.root_cas(ca);
        }
        // ngrok's agent keywords: "rewrite" sends the upstream's own host, "preserve"
        // (the default) the client's.
        let host_header = &mut self.draft.http.host_header;
        match host_header
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("rewrite") => *host_header = Some(upstream.authority()),
            Some("preserve") => *host_header = None,
            _ => {}
        }
        Ok(ForwardOptions {
            session: self.session,
            endpoint: self.draft.resolve()?,
            upstream,
        })
    }
}

/// Parses a `proto` value.
pub(crate) fn proto(s: &str) -> Result<Proto> {
    match s.trim().to_ascii_lowercase().as_str() {
        "tls" => Ok(Proto::Tls),
        "tcp" => Ok(Proto::Tcp),
        "http" | "https" => Ok(Proto::Http),
        p @ "labeled" => Err(Error::new(
            ErrorCode::Unsupported,
            format!("proto {p:?} is not supported yet: burrow serves http, tls and tcp endpoints"),
        )),
        p => Err(invalid(format!(
            "proto {p:?} is not one of \"http\", \"tls\", \"tcp\""
        ))),
    }
}

fn url_error(url: &str) -> Error {
    Error::new(
        ErrorCode::InvalidUrl,
        format!("url {url:?} must be https://NAME, http://NAME, tls://NAME or tcp://HOST:PORT"),
    )
}

/// The host (and port, if one is given) of a `tls://NAME[:PORT]` URL.
pub(crate) fn tls_url(url: &str) -> Result<(String, Option<u16>)> {
    let rest = url.strip_prefix("tls://").ok_or_else(|| {
        Error::new(
            ErrorCode::InvalidUrl,
            format!("url {url:?} must start with tls:// for a TLS endpoint"),
        )
    })?;
    name_url("tls", rest)
}

/// The host (and port, if one is given) of a `SCHEME://NAME[:PORT]` URL, `rest` being
/// what follows `://`.
pub(crate) fn name_url(scheme: &str, rest: &str) -> Result<(String, Option<u16>)> {
    let url = format!("{scheme}://{rest}");
    let url = url.as_str();
    let rest = rest.trim_end_matches('/');
    if rest.contains(['/', '?', '#', '@']) {
        return Err(Error::new(
            ErrorCode::InvalidUrl,
            format!("url {url:?}: a {scheme}:// url is a hostname, with no path, query or user"),
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => {
            let port = port.parse::<u16>().map_err(|_| {
                Error::new(
                    ErrorCode::InvalidUrl,
                    format!("url {url:?}: {port:?} is not a port number"),
                )
            })?;
            (host, Some(port))
        }
        None => (rest, None),
    };
    if host.is_empty() {
        return Err(Error::new(
            ErrorCode::InvalidUrl,
            format!("url {url:?} has no hostname"),
        ));
    }
    Ok((host.to_owned(), port))
}

/// The port of ngrok's `remote_addr` (`host:port` or `tcp://host:port`; only the port is used).
pub(crate) fn remote_port(addr: &str) -> Result<u16> {
    let rest = addr.strip_prefix("tcp://").unwrap_or(addr);
    rest.rsplit_once(':')
        .and_then(|(_, p)| p.trim_end_matches('/').parse::<u16>().ok())
        .ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidUrl,
                format!("remote_addr {addr:?} is not host:port"),
            )
        })
}

/// `server_addr`: one `host:port`, several separated by commas, or a list of them.
fn server_addrs(name: &str, v: OptionValue) -> Result<Vec<String>> {
    let entries = match v {
        OptionValue::List(items) => items
            .into_iter()
            .map(|i| text(name, i))
            .collect::<Result<Vec<_>>>()?,
        other => vec![text(name, other)?],
    };
    server_addr_list(name, &entries)
}

/// Splits comma-separated entries, checks each is `host:port` and drops duplicates;
/// an empty list is refused (a session needs an edge).
pub(crate) fn server_addr_list(name: &str, entries: &[String]) -> Result<Vec<String>> {
    let mut addrs: Vec<String> = Vec::new();
    for entry in entries.iter().flat_map(|e| e.split(',')) {
        let entry = entry.trim();
        server_host(entry)?;
        if !addrs.iter().any(|a| a == entry) {
            addrs.push(entry.to_owned());
        }
    }
    if addrs.is_empty() {
        return Err(invalid(format!(
            "{name} is empty: give the edge's tunnel address (host:port), or several"
        )));
    }
    Ok(addrs)
}

/// The host (without IPv6 brackets) and port of an edge's tunnel address `host:port`.
pub(crate) fn server_host(addr: &str) -> Result<(String, u16)> {
    let bad = |why: &str| Error::new(ErrorCode::InvalidUrl, format!("server_addr {addr:?} {why}"));
    let (host, port) = match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => match port.parse::<u16>() {
            Ok(port) => (host.trim_start_matches('[').trim_end_matches(']'), port),
            Err(_) => return Err(bad("is not host:port")),
        },
        _ => return Err(bad("is not host:port")),
    };
    rustls::pki_types::ServerName::try_from(host).map_err(|_| bad("has an invalid host"))?;
    Ok((host.to_owned(), port))
}

fn text(name: &str, v: OptionValue) -> Result<String> {
    match v {
        OptionValue::Str(s) => Ok(s),
        OptionValue::Int(i) => Ok(i.to_string()),
        OptionValue::Float(f) if f.fract() == 0.0 && f.is_finite() => Ok((f as i64).to_string()),
        other => Err(invalid(format!(
            "{name} must be a string, not {}",
            other.type_name()
        ))),
    }
}

fn number(name: &str, v: OptionValue) -> Result<f64> {
    match v {
        OptionValue::Float(f) => Ok(f),
        OptionValue::Int(i) => Ok(i as f64),
        other => Err(invalid(format!(
            "{name} must be a number, not {}",
            other.type_name()
        ))),
    }
}

/// ngrok's `"Name:Value"` headers, one or a list.
fn header_pairs(name: &str, v: OptionValue) -> Result<Vec<(String, String)>> {
    list(name, v)?
        .iter()
        .map(|h| http::header_pair(name, h))
        .collect()
}

fn boolean(name: &str, v: OptionValue) -> Result<bool> {
    match v {
        OptionValue::Bool(b) => Ok(b),
        other => Err(invalid(format!(
            "{name} must be true or false, not {}",
            other.type_name()
        ))),
    }
}

/// A string or a list of strings (a scalar becomes a one-item list, as ngrok does).
fn list(name: &str, v: OptionValue) -> Result<Vec<String>> {
    match v {
        OptionValue::List(items) => items.into_iter().map(|i| text(name, i)).collect(),
        other => Ok(vec![text(name, other)?]),
    }
}

/// PEM input: text, bytes, or a list of them (joined, as bundles are).
fn pem(name: &str, v: OptionValue) -> Result<Vec<u8>> {
    match v {
        OptionValue::Str(s) => Ok(s.into_bytes()),
        OptionValue::Bytes(b) => Ok(b),
        OptionValue::List(items) => {
            let parts = items
                .into_iter()
                .map(|i| pem(name, i))
                .collect::<Result<Vec<_>>>()?;
            Ok(parts.join(&b'\n'))
        }
        other => Err(invalid(format!(
            "{name} must be PEM (text or bytes), not {}",
            other.type_name()
        ))),
    }
}

/// `addr`: a port number means `localhost:N`; otherwise an address string.
fn addr(v: OptionValue) -> Result<String> {
    let bad = |what: &str| {
        Error::new(
            ErrorCode::InvalidUrl,
            format!("addr must be a port number or an address string, not {what}"),
        )
    };
    match v {
        OptionValue::Int(port) => match u16::try_from(port) {
            Ok(p) if p > 0 => Ok(format!("localhost:{p}")),
            _ => Err(bad(&format!("{port} (ports are 1-65535)"))),
        },
        OptionValue::Str(s) => Ok(s),
        other => Err(bad(other.type_name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, OptionValue)]) -> Vec<(String, OptionValue)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn coercions() {
        let f = parse(
            opts(&[
                ("addr", OptionValue::Int(8080)),
                ("proxy_proto", "2".into()),
                ("allow_cidr", "10.0.0.0/8".into()),
                ("url", "tls://a.example.com".into()),
                ("session.metadata", OptionValue::Int(5)),
            ]),
            Scope::Forward,
            None,
        )
        .unwrap();
        assert_eq!(f.upstream.to_string(), "tcp://localhost:8080");
        assert_eq!(f.endpoint.proxy_proto, Some(ProxyProto::V2));
        assert_eq!(f.endpoint.allow_cidrs, ["10.0.0.0/8"]);
        assert_eq!(f.session.metadata.as_deref(), Some("5"));
        assert_eq!(
            f.endpoint.kind,
            crate::agent::EndpointKind::Tls {
                domain: Some("a.example.com".into()),
                port: None
            }
        );
    }

    #[test]
    fn refusals_name_the_option() {
        let e = parse(opts(&[("bogus", "x".into())]), Scope::Forward, None).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidOption);
        assert!(e.message().contains("\"bogus\""), "{e}");
        let e = parse(
            opts(&[("domain", "a.test".into()), ("hostname", "b.test".into())]),
            Scope::Forward,
            None,
        )
        .unwrap_err();
        assert!(e.message().contains("same setting"), "{e}");
        let e = parse(opts(&[("addr", "x".into())]), Scope::Session, None).unwrap_err();
        assert!(e.message().contains("belongs to an endpoint"), "{e}");
    }

    #[test]
    fn host_header_rewrite_names_the_upstream() {
        let host = |value: &str| {
            let f = parse(
                opts(&[
                    ("addr", "app.internal:8080".into()),
                    ("host_header", value.into()),
                ]),
                Scope::Forward,
                None,
            )
            .unwrap();
            match f.endpoint.kind {
                crate::agent::EndpointKind::Http { http, .. } => http.host_header,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(host("rewrite").as_deref(), Some("app.internal:8080"));
        assert_eq!(host("preserve"), None);
        assert_eq!(host("example.com").as_deref(), Some("example.com"));
    }

    #[test]
    fn describe_leaves_http_secrets_out() {
        let f = parse(
            opts(&[
                ("basic_auth", "ann:long-enough-password".into()),
                ("verify_webhook_provider", "github".into()),
                ("verify_webhook_secret", "whsec-xyz".into()),
            ]),
            Scope::Forward,
            None,
        )
        .unwrap();
        let text = f.describe().to_string();
        assert!(!text.contains("long-enough-password"), "{text}");
        assert!(!text.contains("whsec-xyz"), "{text}");
        assert!(text.contains("\"ann\""), "{text}");
    }

    #[test]
    fn debug_hides_values() {
        let v = OptionValue::Str("secret-token".into());
        assert!(!format!("{v:?}").contains("secret"));
        let s = SessionOptions {
            authtoken: Some(SecretPem("secret-token".into())),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("secret-token"));
    }
}
