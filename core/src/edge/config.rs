//! The edge's settings, from code or from a TOML file.

use super::auth::TokenRule;
use crate::error::{Error, ErrorCode, Result};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything an edge needs to run. Defaults bind loopback on random ports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Where agents connect (TLS 1.3).
    pub tunnel_addr: SocketAddr,
    /// The public TLS listener (SNI-routed; https endpoints too).
    pub tls_addr: SocketAddr,
    /// The plain HTTP listener for http endpoints (routed by `Host`); `None`: none.
    pub http_addr: Option<SocketAddr>,
    /// Host name or address put in public URLs of TCP endpoints.
    pub public_host: String,
    /// Address TCP endpoint listeners bind to.
    pub tcp_bind: IpAddr,
    /// First and last port TCP endpoints may get (inclusive); empty disables TCP endpoints.
    pub tcp_ports: Option<[u16; 2]>,
    /// Random endpoint names are `<random>.<domain_suffix>`.
    pub domain_suffix: String,
    /// Extra names (besides `localhost` and the tunnel IP) on the tunnel certificate.
    pub tunnel_names: Vec<String>,
    /// Accepted authtokens; with none, and `open` unset, every agent is refused.
    pub authtokens: Vec<TokenRule>,
    /// Accept any authtoken (or none) and any domain.
    pub open: bool,
    /// Keeps the CA across restarts; `None` keeps it in memory only.
    pub state_dir: Option<PathBuf>,
    /// Heartbeat interval in milliseconds; a session silent for 3 intervals is dropped.
    pub heartbeat_ms: u64,
    /// Deadline for a public client's ClientHello and for TLS handshakes, in milliseconds.
    pub handshake_timeout_ms: u64,
    /// Most public connections served at once.
    pub max_connections: usize,
    /// Most proxied connections open at once per agent session (tunnel streams).
    pub max_streams_per_session: usize,
    /// Most endpoints one session may bind.
    pub max_endpoints_per_session: usize,
    /// A proxied connection with no bytes either way for this long is closed (0: never).
    pub idle_timeout_ms: u64,
    /// Most bytes read from a public client while waiting for a complete ClientHello.
    pub max_client_hello_bytes: usize,
    /// Most bytes of an HTTP request's head (request line and headers).
    pub max_request_header_bytes: usize,
    /// Most header fields in an HTTP request.
    pub max_request_headers: usize,
    /// Deadline for an HTTP request's head, from the moment the connection is ready
    /// for it (so also how long an idle keep-alive connection is kept), in milliseconds.
    pub http_header_timeout_ms: u64,
    /// Failed authentications allowed per client IP and token prefix per minute (ten
    /// times as many per client IP in all) before refusing outright.
    pub auth_failures_per_minute: u32,
    /// Most tunnel connections one client IP may hold before they authenticate.
    pub max_unauthenticated_per_ip: usize,
    /// Most tunnel connections held before they authenticate, from all clients.
    pub max_unauthenticated: usize,
    /// Automatic certificates from an ACME directory; `None`: from the edge's own CA.
    pub acme: Option<super::acme::AcmeConfig>,
    /// Operator certificates for edge-terminated names (see `edge::certs` for the order).
    pub certs: Vec<super::certs::CertFiles>,
    /// Several edges as one, sharing routes through etcd; `None`: this edge alone.
    pub cluster: Option<super::cluster::ClusterConfig>,
    /// Serves Prometheus metrics at `GET /metrics` here; `None`: no metrics listener.
    pub metrics_addr: Option<SocketAddr>,
    /// Adds per-endpoint families labelled with each endpoint's URL (opt-in: one series
    /// per endpoint, so a busy edge's series count grows with its endpoints).
    pub metrics_per_endpoint: bool,
    /// Serves the admin API (JSON) here; requires `admin_token`. Keep it on loopback.
    pub admin_addr: Option<SocketAddr>,
    /// The bearer token every admin API request must present (never logged).
    pub admin_token: Option<crate::wire::SecretPem>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        let loopback = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        EdgeConfig {
            tunnel_addr: loopback(0),
            tls_addr: loopback(0),
            http_addr: None,
            public_host: "127.0.0.1".into(),
            tcp_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            tcp_ports: None,
            domain_suffix: "burrow.localhost".into(),
            tunnel_names: Vec::new(),
            authtokens: Vec::new(),
            open: false,
            state_dir: None,
            heartbeat_ms: 10_000,
            handshake_timeout_ms: 10_000,
            max_connections: 16_384,
            max_streams_per_session: 16_384,
            max_endpoints_per_session: 1_000,
            idle_timeout_ms: 15 * 60 * 1000,
            max_client_hello_bytes: crate::tls::MAX_HELLO_BYTES,
            max_request_header_bytes: 64 * 1024,
            max_request_headers: 100,
            http_header_timeout_ms: 30_000,
            auth_failures_per_minute: 10,
            max_unauthenticated_per_ip: 64,
            max_unauthenticated: 1024,
            acme: None,
            certs: Vec::new(),
            cluster: None,
            metrics_addr: None,
            metrics_per_endpoint: false,
            admin_addr: None,
            admin_token: None,
        }
    }
}

impl EdgeConfig {
    /// The embedded edge: loopback, random ports, any token, TCP ports picked by the OS.
    pub fn embedded() -> Self {
        EdgeConfig {
            open: true,
            tcp_ports: Some([0, 0]),
            http_addr: Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)),
            ..Default::default()
        }
    }

    /// Reads a TOML file; errors name the file, the offending key and its line, and
    /// files named by `[[certs]]` that cannot be read.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let in_file = |e: Error| {
            Error::new(
                ErrorCode::Config,
                format!("{}: {}", path.display(), e.message()),
            )
        };
        let config = Self::from_toml(&text).map_err(in_file)?;
        for (i, files) in config.certs.iter().enumerate() {
            for (key, file) in [("crt", &files.crt), ("key", &files.key)] {
                if let Err(e) = std::fs::File::open(file) {
                    let at = value_line(&text, &file.display().to_string())
                        .map_or(String::new(), |n| format!("line {n}: "));
                    return Err(in_file(Error::new(
                        ErrorCode::Config,
                        format!("{at}certs[{i}].{key}: cannot read {}: {e}", file.display()),
                    )));
                }
            }
        }
        Ok(config)
    }

    /// Parses TOML text; a value that parses but cannot work is refused with its line.
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: EdgeConfig =
            toml::from_str(text).map_err(|e| Error::new(ErrorCode::Config, e.to_string()))?;
        config
            .validate()
            .map_err(|e| match key_line(text, e.message()) {
                Some(n) => Error::new(e.code(), format!("line {n}: {}", e.message())),
                None => e,
            })?;
        Ok(config)
    }

    /// The config of an edge the SDKs run in-process (`burrow.Edge(...)` in Python,
    /// `Edge.start({...})` in Node): the edge config file's keys as a JSON object, where
    /// an edge without `authtokens` is open unless it says otherwise, and TCP ports and
    /// the plain HTTP listener come from the OS unless `tcp_ports` / `http_addr` are
    /// given. An empty object is the embedded edge.
    pub fn in_process(json: &str) -> Result<Self> {
        let mut value: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| Error::new(ErrorCode::Config, format!("edge config: {e}")))?;
        let Some(map) = value.as_object_mut() else {
            return Err(Error::new(
                ErrorCode::Config,
                "edge config must be an object",
            ));
        };
        if map.is_empty() {
            return Ok(Self::embedded());
        }
        let has_tokens = map
            .get("authtokens")
            .and_then(|t| t.as_array())
            .is_some_and(|t| !t.is_empty());
        map.entry("open")
            .or_insert(serde_json::Value::Bool(!has_tokens));
        map.entry("tcp_ports").or_insert(serde_json::json!([0, 0]));
        map.entry("http_addr")
            .or_insert(serde_json::json!("127.0.0.1:0"));
        let config: EdgeConfig = serde_json::from_value(value)
            .map_err(|e| Error::new(ErrorCode::Config, format!("edge config: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::new(ErrorCode::Config, m));
        if let Some([lo, hi]) = self.tcp_ports {
            if lo > hi {
                return bad(format!(
                    "tcp_ports: first port {lo} is above last port {hi}"
                ));
            }
        }
        if self.handshake_timeout_ms < 100 {
            return bad(format!(
                "handshake_timeout_ms = {} is too short: every public connection and agent would be cut before its handshake (use at least 100; the default is 10000)",
                self.handshake_timeout_ms
            ));
        }
        if self.heartbeat_ms < 50 {
            return bad("heartbeat_ms must be at least 50".into());
        }
        if self.domain_suffix.trim_matches('.').is_empty() {
            return bad("domain_suffix must not be empty".into());
        }
        if self.max_streams_per_session == 0
            || self.max_streams_per_session > crate::wire::mux::MAX_STREAMS
        {
            return bad(format!(
                "max_streams_per_session must be between 1 and {}",
                crate::wire::mux::MAX_STREAMS
            ));
        }
        if self.max_client_hello_bytes < 512 {
            return bad("max_client_hello_bytes must be at least 512".into());
        }
        if self.max_unauthenticated == 0 || self.max_unauthenticated_per_ip == 0 {
            return bad(
                "max_unauthenticated and max_unauthenticated_per_ip must be at least 1".into(),
            );
        }
        if self.max_connections == 0 || self.max_endpoints_per_session == 0 {
            return bad("max_connections and max_endpoints_per_session must be at least 1".into());
        }
        if let Some(acme) = &self.acme {
            acme.validate()?;
            if acme.challenge == super::acme::ChallengeKind::Http01 && self.http_addr.is_none() {
                return Err(Error::new(
                    ErrorCode::Config,
                    "acme.challenge: \"http-01\" is answered on the plain HTTP listener: set http_addr (the directory connects to port 80)",
                ));
            }
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        match (&self.admin_addr, &self.admin_token) {
            (Some(addr), None) => {
                return bad(format!(
                    "admin_addr = \"{addr}\" needs admin_token: the admin API refuses every request without it (set admin_token to a long random secret)"
                ))
            }
            (_, Some(token)) if token.0.trim().len() < 16 => {
                return bad("admin_token must be at least 16 characters (a long random secret)".into())
            }
            _ => {}
        }
        for rule in &self.authtokens {
            if rule.token.is_empty() {
                return bad("authtokens: a token must not be empty".into());
            }
        }
        Ok(())
    }

    pub(crate) fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    pub(crate) fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_ms > 0).then(|| Duration::from_millis(self.idle_timeout_ms))
    }
}

/// The 1-based line that sets the key an error message starts with (`key must ...`).
fn key_line(text: &str, message: &str) -> Option<usize> {
    let key: String = message
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if key.is_empty() {
        return None;
    }
    text.lines()
        .position(|line| {
            line.trim_start()
                .strip_prefix(key.as_str())
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// The 1-based line where the string value `value` is written.
fn value_line(text: &str, value: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(value)).map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_toml_and_rejects_unknown_keys() {
        let c = EdgeConfig::from_toml(
            r#"
            tunnel_addr = "127.0.0.1:4443"
            tls_addr = "127.0.0.1:8443"
            tcp_ports = [20000, 20010]
            [[authtokens]]
            token = "t"
            domains = ["*.example.com"]
            "#,
        )
        .unwrap();
        assert_eq!(c.tunnel_addr.port(), 4443);
        assert_eq!(c.authtokens[0].domains, vec!["*.example.com"]);
        let err = EdgeConfig::from_toml("tunel_addr = \"x\"").unwrap_err();
        assert!(err.message().contains("tunel_addr"), "{err}");
        let err = EdgeConfig::from_toml("tcp_ports = [3, 2]").unwrap_err();
        assert!(err.message().contains("tcp_ports"), "{err}");
    }
}
