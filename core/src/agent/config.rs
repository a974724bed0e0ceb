//! The agent config file, in ngrok's v3 format: its endpoints become forward
//! options for the one option parser ([`super::options`]).
//!
//! ```yaml
//! version: 3
//! agent:
//!   authtoken: ...
//!   connect_url: edge.example.com:4443   # or a list: [edge-a.example.com:4443, ...]
//! endpoints:
//!   - name: example
//!     url: tls://app.example.com
//!     upstream:
//!       url: localhost:443
//! ```

use crate::agent::options::{self, OptionValue, Scope};
use crate::agent::{EndpointSpec, Forwarder, Session, SessionBuilder, Upstream};
use crate::error::{Error, ErrorCode, Result};
use crate::policy::TrafficPolicy;
use serde::Deserialize;
use serde_norway::Value;
use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    version: Value,
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    authtoken: Option<String>,
    connect_url: Option<OneOrMany>,
    root_cas: Option<String>,
    connect_cas: Option<String>,
    metadata: Option<String>,
    web_addr: Option<Value>,
}

/// An address, or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    name: String,
    url: Option<String>,
    description: Option<String>,
    metadata: Option<String>,
    upstream: RawUpstream,
    traffic_policy: Option<Value>,
    agent_tls_termination: Option<RawAgentTls>,
    pooling_enabled: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: Value,
    protocol: Option<String>,
    proxy_protocol: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgentTls {
    server_certificate: String,
    server_private_key: String,
    #[serde(default)]
    mutual_tls_certificate_authorities: Vec<String>,
    min_version: Option<String>,
    max_version: Option<String>,
}

/// The `agent:` section.
#[derive(Clone, Default)]
pub struct AgentSection {
    /// Authtoken presented to the edge.
    pub authtoken: Option<String>,
    /// The edges' tunnel addresses (`host:port`): one, or several (the session then
    /// holds a connection to each).
    pub connect_url: Option<Vec<String>>,
    /// CA bundle (PEM) the edge's certificate chains to.
    pub root_cas: Option<Vec<u8>>,
    /// Session metadata.
    pub metadata: Option<String>,
    /// ngrok's `web_addr`: where the agent API listens; `Some(None)` when the file
    /// says `false`, `None` when it says nothing.
    pub web_addr: Option<Option<std::net::SocketAddr>>,
}

impl fmt::Debug for AgentSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentSection")
            .field("authtoken", &self.authtoken.as_ref().map(|_| "<redacted>"))
            .field("connect_url", &self.connect_url)
            .finish_non_exhaustive()
    }
}

/// One endpoint of the file, validated.
#[derive(Clone)]
pub struct EndpointConfig {
    /// The endpoint's name (what `burrow start NAME` selects).
    pub name: String,
    /// The endpoint, as every front door describes it.
    pub spec: EndpointSpec,
    /// Where its connections go.
    pub upstream: Upstream,
}

impl fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("name", &self.name)
            .field("kind", &self.spec.kind)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// A parsed and checked agent config file.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The `agent:` section.
    pub agent: AgentSection,
    /// The endpoints, in file order.
    pub endpoints: Vec<EndpointConfig>,
}

fn config_err(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::Config, message)
}

/// The 1-based line where endpoint `name` is declared, for error messages.
fn line_of(text: &str, name: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start().trim_start_matches('-').trim();
            l.strip_prefix("name:")
                .is_some_and(|v| v.trim().trim_matches(['"', '\'']) == name)
        })
        .map(|i| i + 1)
}

impl AgentConfig {
    /// Reads and checks a config file; errors name the file, the field and, where known, the line.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_yaml(&text, &dir)
            .map_err(|e| Error::new(e.code(), format!("{}: {}", path.display(), e.message())))
    }

    /// Parses config text; relative file paths are resolved against `base_dir`.
    pub fn from_yaml(text: &str, base_dir: &Path) -> Result<Self> {
        let raw: RawFile = serde_norway::from_str(text).map_err(|e| config_err(e.to_string()))?;
        let version_ok = match &raw.version {
            Value::Number(n) => n.as_u64() == Some(3),
            Value::String(s) => s.trim() == "3",
            _ => false,
        };
        if !version_ok {
            return Err(config_err(format!(
                "version: {} is not supported (burrow reads version 3 config files)",
                serde_norway::to_string(&raw.version)
                    .unwrap_or_default()
                    .trim()
            )));
        }
        let read = |p: &str, what: &str| -> Result<Vec<u8>> {
            let path = resolve(base_dir, p);
            std::fs::read(&path).map_err(|e| {
                // The line of the key that names the file.
                let line = text
                    .lines()
                    .position(|l| l.contains(p))
                    .map_or(String::new(), |i| format!(" (line {})", i + 1));
                config_err(format!("{what}{line}: cannot read {}: {e}", path.display()))
            })
        };
        let root_cas = match raw
            .agent
            .root_cas
            .as_deref()
            .or(raw.agent.connect_cas.as_deref())
        {
            None | Some("trusted") | Some("host") => None,
            Some(path) => Some(read(path, "agent.root_cas")?),
        };
        let agent = AgentSection {
            authtoken: raw.agent.authtoken,
            connect_url: raw.agent.connect_url.map(|c| match c {
                OneOrMany::One(a) => vec![a],
                OneOrMany::Many(list) => list,
            }),
            root_cas,
            metadata: raw.agent.metadata,
            web_addr: match raw.agent.web_addr {
                None => None,
                Some(Value::Bool(false)) => Some(None),
                Some(Value::String(text)) => Some(
                    crate::agent::api::parse_web_addr(&text)
                        .map_err(|e| config_err(format!("agent.web_addr: {}", e.message())))?,
                ),
                Some(_) => {
                    return Err(config_err(
                        "agent.web_addr: give host:port (e.g. localhost:4040), or false to turn the agent API off",
                    ))
                }
            },
        };
        let mut endpoints: Vec<EndpointConfig> = Vec::new();
        for (i, ep) in raw.endpoints.into_iter().enumerate() {
            let at = match line_of(text, &ep.name) {
                Some(line) => format!("endpoints[{i}] ({:?}, line {line})", ep.name),
                None => format!("endpoints[{i}] ({:?})", ep.name),
            };
            if endpoints.iter().any(|e| e.name == ep.name) {
                return Err(config_err(format!(
                    "{at}: name is used by an earlier endpoint"
                )));
            }
            let checked = Self::endpoint(ep, i, &read)
                .map_err(|e| Error::new(e.code(), format!("{at}: {}", e.message())))?;
            endpoints.push(checked);
        }
        Ok(AgentConfig { agent, endpoints })
    }

    /// Turns one `endpoints:` entry into forward options (ngrok's names) for the core's
    /// option parser: the file's spelling is the only thing this knows.
    fn endpoint(
        ep: RawEndpoint,
        index: usize,
        read: &dyn Fn(&str, &str) -> Result<Vec<u8>>,
    ) -> Result<EndpointConfig> {
        let mut options: Vec<(String, OptionValue)> = Vec::new();
        let mut push = |name: &str, value: OptionValue| options.push((name.to_owned(), value));
        if let Some(url) = ep.url {
            push("url", url.into());
        }
        if let Some(d) = ep.description {
            push("description", d.into());
        }
        if let Some(m) = ep.metadata {
            push("metadata", m.into());
        }
        let addr = match &ep.upstream.url {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            _ => return Err(config_err("upstream.url: must be a port or an address")),
        };
        // Checked here too, so that the error names the file's key.
        addr.parse::<Upstream>()
            .map_err(|e| Error::new(e.code(), format!("upstream.url: {}", e.message())))?;
        push("addr", addr.into());
        if let Some(p) = &ep.upstream.protocol {
            push("app_protocol", p.as_str().into());
        }
        match &ep.upstream.proxy_protocol {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) => push("proxy_proto", n.to_string().into()),
            Some(Value::String(s)) => push("proxy_proto", s.as_str().into()),
            Some(_) => return Err(config_err("upstream.proxy_protocol: must be 1 or 2")),
        }
        match &ep.pooling_enabled {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => push("pooling_enabled", (*b).into()),
            Some(_) => return Err(config_err("pooling_enabled: must be true or false")),
        }
        match &ep.traffic_policy {
            None | Some(Value::Null) => {}
            Some(value) => {
                // Checked here for the error's path into the file; the parser checks it again
                // as the text every front door sends.
                TrafficPolicy::from_value(value, &format!("endpoints[{index}].traffic_policy"))?;
                let text = serde_norway::to_string(value)
                    .map_err(|e| config_err(format!("traffic_policy: {e}")))?;
                push("traffic_policy", text.into());
            }
        }
        if let Some(t) = ep.agent_tls_termination {
            let at = "agent_tls_termination";
            push("terminate_at", "agent".into());
            push(
                "crt",
                read(&t.server_certificate, &format!("{at}.server_certificate"))?.into(),
            );
            push(
                "key",
                read(&t.server_private_key, &format!("{at}.server_private_key"))?.into(),
            );
            let cas = t
                .mutual_tls_certificate_authorities
                .iter()
                .map(|p| {
                    read(p, &format!("{at}.mutual_tls_certificate_authorities"))
                        .map(OptionValue::Bytes)
                })
                .collect::<Result<Vec<_>>>()?;
            if !cas.is_empty() {
                push("mutual_tls_cas", OptionValue::List(cas));
            }
            if let Some(v) = t.min_version {
                push("min_version", v.into());
            }
            if let Some(v) = t.max_version {
                push("max_version", v.into());
            }
        }
        let mut parsed = options::parse(options, Scope::Endpoint, None)?;
        parsed.endpoint.name = Some(ep.name.clone());
        Ok(EndpointConfig {
            name: ep.name,
            spec: parsed.endpoint,
            upstream: parsed.upstream,
        })
    }

    /// A session builder configured from the `agent:` section.
    pub fn session_builder(&self) -> SessionBuilder {
        let mut b = Session::builder();
        if let Some(t) = &self.agent.authtoken {
            b = b.authtoken(t.clone());
        }
        if let Some(a) = &self.agent.connect_url {
            b = b.server_addrs(a.clone());
        }
        if let Some(ca) = &self.agent.root_cas {
            b = b.root_cas(ca.clone());
        }
        if let Some(m) = &self.agent.metadata {
            b = b.metadata(m.clone());
        }
        b
    }

    /// The endpoints named in `names`, or all when `names` is empty; unknown names are errors.
    pub fn select(&self, names: &[String]) -> Result<Vec<&EndpointConfig>> {
        if names.is_empty() {
            return Ok(self.endpoints.iter().collect());
        }
        names
            .iter()
            .map(|n| {
                self.endpoints.iter().find(|e| &e.name == n).ok_or_else(|| {
                    let known: Vec<&str> = self.endpoints.iter().map(|e| e.name.as_str()).collect();
                    config_err(format!(
                        "no endpoint named {n:?} (the file defines: {})",
                        known.join(", ")
                    ))
                })
            })
            .collect()
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

impl EndpointConfig {
    /// Binds this endpoint on `session` and forwards it to its upstream.
    pub async fn start(&self, session: &Session) -> Result<Forwarder> {
        session
            .forward(self.spec.clone(), &self.upstream)
            .await
            .map_err(|e| {
                Error::new(
                    e.code(),
                    format!("endpoint {:?}: {}", self.name, e.message()),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig> {
        AgentConfig::from_yaml(text, Path::new("."))
    }

    #[test]
    fn seed_examples_parse() {
        let a = parse("version: 3\nendpoints:\n  - name: example\n    url: tls://your-name.ngrok.app\n    upstream:\n      url: 80\n    traffic_policy:\n      on_tcp_connect:\n        - actions:\n            - type: terminate-tls\n").unwrap();
        assert_eq!(a.endpoints[0].upstream.to_string(), "tcp://localhost:80");
        assert!(a.endpoints[0].spec.traffic_policy.is_some());
        let b = parse("version: 3\nendpoints:\n  - name: example\n    url: tls://app.example.com\n    upstream:\n      url: localhost:443\n").unwrap();
        assert!(b.endpoints[0].spec.traffic_policy.is_none());
    }

    #[test]
    fn pooling_enabled_is_an_endpoint_key() {
        let a = parse("version: 3\nendpoints:\n  - name: a\n    url: tls://a.test\n    pooling_enabled: true\n    upstream: {url: 1}\n  - name: b\n    url: tls://b.test\n    upstream: {url: 2}\n").unwrap();
        assert!(a.endpoints[0].spec.pooling_enabled);
        assert!(!a.endpoints[1].spec.pooling_enabled);
        let e = parse("version: 3\nendpoints:\n  - name: a\n    pooling_enabled: yes please\n    upstream: {url: 1}\n").unwrap_err();
        assert_eq!(e.code(), ErrorCode::Config);
        assert!(
            e.message().contains("line 3")
                && e.message()
                    .contains("pooling_enabled: must be true or false"),
            "{e}"
        );
    }

    #[test]
    fn errors_say_where() {
        let e = parse(
            "version: 3\nendpoints:\n  - name: a\n    urll: tls://x.test\n    upstream: {url: 1}\n",
        )
        .unwrap_err();
        assert!(
            e.message().contains("urll") && e.message().contains("line 4"),
            "{e}"
        );
        let e = parse("version: 2\n").unwrap_err();
        assert!(
            e.message().starts_with("version: 2 is not supported"),
            "{e}"
        );
        let e = parse("version: 3\nendpoints:\n  - name: a\n    url: tls://a.test\n    upstream: {url: 1}\n    traffic_policy:\n      on_tcp_connect:\n        - actions: [{type: terminate-tls, config: {min_version: \"1.0\"}}]\n").unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidPolicy);
        assert!(e.message().starts_with("endpoints[0] (\"a\", line 3): endpoints[0].traffic_policy.on_tcp_connect[0].actions[0].config.min_version"), "{e}");
        let e = parse("version: 3\nendpoints:\n  - name: a\n    upstream: {url: \"ftp://x:1\"}\n")
            .unwrap_err();
        assert!(e.message().contains("upstream.url"), "{e}");
        let e = parse(
            "version: 3\nendpoints:\n  - name: a\n    upstream: {url: 1, proxy_protocol: 3}\n",
        )
        .unwrap_err();
        assert!(e.message().contains("proxy_proto"), "{e}");
        let e = parse("version: 3\nendpoints:\n  - name: a\n    upstream: {url: 1}\n    agent_tls_termination:\n      server_certificate: /nonexistent.pem\n      server_private_key: k.pem\n").unwrap_err();
        assert!(e.message().contains("/nonexistent.pem"), "{e}");
        let e = parse("version: 3\nendpoints:\n  - name: a\n    upstream: {url: 1}\n  - name: a\n    upstream: {url: 2}\n").unwrap_err();
        assert!(e.message().contains("used by an earlier"), "{e}");
        let a = parse("version: 3\nendpoints:\n  - name: a\n    upstream: {url: 1}\n").unwrap();
        assert!(a
            .select(&["b".into()])
            .unwrap_err()
            .message()
            .contains("no endpoint named \"b\""));
    }
}
