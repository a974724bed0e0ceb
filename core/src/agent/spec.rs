//! What an endpoint is: the one description that every front door (the Rust builders,
//! the option parser behind Python, Node, the CLI and the config file) produces, and
//! the one place where the termination rule and its refusals live.

use super::http::HttpOptions;
use super::proxy_proto::ProxyProto;
use crate::error::{Error, ErrorCode, Result};
use crate::policy::TrafficPolicy;
use crate::tls::{self, CertKey, ServerTlsSettings, TlsVersion};
use crate::wire::{Proto, SecretPem};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where TLS is terminated for an endpoint, as users name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TerminateAt {
    /// The edge terminates (custom crt/key or an automatic certificate).
    Edge,
    /// The agent terminates with the given crt/key; the edge sees only SNI.
    Agent,
    /// Nobody in burrow terminates: the upstream service does (passthrough).
    Upstream,
}

impl FromStr for TerminateAt {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "edge" => Ok(TerminateAt::Edge),
            "agent" => Ok(TerminateAt::Agent),
            "upstream" => Ok(TerminateAt::Upstream),
            _ => Err(Error::option(format!(
                "terminate_at {s:?} is not one of \"edge\", \"agent\", \"upstream\""
            ))),
        }
    }
}

impl fmt::Display for TerminateAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TerminateAt::Edge => "edge",
            TerminateAt::Agent => "agent",
            TerminateAt::Upstream => "upstream",
        })
    }
}

/// A certificate chain and its private key, as PEM text.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertPem {
    /// The certificate chain, leaf first.
    pub crt: String,
    /// The leaf's private key; never printed.
    pub key: SecretPem,
}

impl fmt::Debug for CertPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertPem").finish_non_exhaustive()
    }
}

/// How a terminating side runs TLS: certificate, versions, ALPN and client CAs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsMaterial {
    /// The certificate and key; `None` at the edge means an automatic certificate.
    #[serde(default)]
    pub cert: Option<CertPem>,
    /// Lowest TLS version accepted (default 1.2).
    #[serde(default)]
    pub min_version: Option<TlsVersion>,
    /// Highest TLS version accepted (default 1.3).
    #[serde(default)]
    pub max_version: Option<TlsVersion>,
    /// ALPN protocols offered, in preference order.
    #[serde(default)]
    pub alpn: Vec<String>,
    /// CA bundle (PEM); when set, clients must present a certificate it issued.
    #[serde(default)]
    pub client_cas: Option<String>,
}

impl TlsMaterial {
    /// The server settings rustls needs (everything but the certificate).
    pub fn settings(&self) -> ServerTlsSettings {
        ServerTlsSettings {
            min_version: self.min_version,
            max_version: self.max_version,
            alpn: self.alpn.clone(),
            client_ca_pem: self.client_cas.as_ref().map(|c| c.as_bytes().to_vec()),
        }
    }

    /// Checks versions and the client CA bundle; with a certificate, that it parses,
    /// matches its key and covers `domain` (when one is given and is not a wildcard).
    pub(crate) fn check(&self, domain: Option<&str>) -> Result<Option<CertKey>> {
        if let (Some(lo), Some(hi)) = (self.min_version, self.max_version) {
            if lo > hi {
                return Err(Error::option(
                    "min_version is above max_version: no TLS version is left",
                ));
            }
        }
        if let Some(cas) = &self.client_cas {
            tls::parse_certs(cas.as_bytes(), "mutual_tls_cas")?;
        }
        let Some(cert) = &self.cert else {
            return Ok(None);
        };
        let parsed = CertKey::from_pem(cert.crt.as_bytes(), cert.key.0.as_bytes())?;
        if let Some(domain) = domain.filter(|d| !d.starts_with("*.")) {
            parsed.check_covers(domain)?;
        }
        Ok(Some(parsed))
    }
}

/// Where TLS is terminated, with what the terminating side needs.
///
/// It travels in the bind as itself; the agent's material never leaves the agent
/// (it is skipped on the wire, so the edge sees `Agent` with empty material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "WireTermination", from = "WireTermination")]
pub enum Termination {
    /// Passthrough: the upstream service terminates (unless a traffic policy's
    /// `terminate-tls` action runs at the edge).
    Upstream,
    /// The agent terminates; the edge splices the encrypted bytes.
    Agent(TlsMaterial),
    /// The edge terminates; the agent receives plaintext.
    Edge(TlsMaterial),
}

/// [`Termination`] as serialized: the agent's material stays behind.
#[derive(Serialize, Deserialize)]
#[serde(tag = "mode", content = "tls", rename_all = "lowercase")]
enum WireTermination {
    Upstream,
    Agent,
    Edge(TlsMaterial),
}

impl From<Termination> for WireTermination {
    fn from(t: Termination) -> Self {
        match t {
            Termination::Upstream => WireTermination::Upstream,
            Termination::Agent(_) => WireTermination::Agent,
            Termination::Edge(m) => WireTermination::Edge(m),
        }
    }
}

impl From<WireTermination> for Termination {
    fn from(t: WireTermination) -> Self {
        match t {
            WireTermination::Upstream => Termination::Upstream,
            WireTermination::Agent => Termination::Agent(TlsMaterial::default()),
            WireTermination::Edge(m) => Termination::Edge(m),
        }
    }
}

impl Termination {
    /// The user-facing name of this mode.
    pub fn terminate_at(&self) -> TerminateAt {
        match self {
            Termination::Upstream => TerminateAt::Upstream,
            Termination::Agent(_) => TerminateAt::Agent,
            Termination::Edge(_) => TerminateAt::Edge,
        }
    }
}

/// Which public address an endpoint asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "proto", rename_all = "lowercase")]
pub enum EndpointKind {
    /// A name on the edge's TLS listener, routed by SNI.
    Tls {
        /// The hostname; `None` asks for a random name.
        domain: Option<String>,
        /// A port the user named in `tls://NAME:PORT`; the edge refuses it unless it is
        /// its own TLS port.
        #[serde(default)]
        port: Option<u16>,
    },
    /// A TCP port of its own.
    Tcp {
        /// The port; `None` asks for any port of the edge's range.
        remote_port: Option<u16>,
    },
    /// A name served over HTTPS (and/or HTTP) by the edge's reverse proxy, routed by
    /// SNI and `Host`.
    Http {
        /// The hostname; `None` asks for a random name.
        domain: Option<String>,
        /// A port the user named in the url; the edge refuses it unless it is its own.
        #[serde(default)]
        port: Option<u16>,
        /// What the edge does to requests and responses.
        #[serde(default)]
        http: Box<HttpOptions>,
    },
}

impl EndpointKind {
    /// The wire protocol of this kind.
    pub fn proto(&self) -> Proto {
        match self {
            EndpointKind::Tls { .. } => Proto::Tls,
            EndpointKind::Tcp { .. } => Proto::Tcp,
            EndpointKind::Http { .. } => Proto::Http,
        }
    }
}

/// A complete, checked description of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    /// The public address asked for.
    pub kind: EndpointKind,
    /// Where TLS is terminated.
    pub termination: Termination,
    /// Traffic policy text (YAML or JSON), run by the edge on every connection.
    pub traffic_policy: Option<String>,
    /// Client IP ranges allowed (empty: all).
    pub allow_cidrs: Vec<String>,
    /// Client IP ranges refused.
    pub deny_cidrs: Vec<String>,
    /// PROXY protocol header written to the upstream (forwarding only).
    pub proxy_proto: Option<ProxyProto>,
    /// Free-form metadata.
    pub metadata: String,
    /// What the endpoint forwards to, as its owner describes it.
    pub forwards_to: Option<String>,
    /// Free-form description.
    pub description: Option<String>,
    /// The endpoint's name in the agent API (a config file's endpoint name, or
    /// `command_line` for the CLI's); kept by the agent, never sent to the edge.
    #[serde(default)]
    pub name: Option<String>,
    /// True when the traffic policy has a `terminate-tls` action (decided when the
    /// spec was resolved, so the policy is not parsed again).
    pub policy_terminates: bool,
    /// ngrok's `pooling_enabled`: other sessions that opt in too may serve the same
    /// name, and the edge spreads connections across them.
    #[serde(default)]
    pub pooling_enabled: bool,
}

impl EndpointSpec {
    /// Where TLS ends up terminated: the termination's mode, or the edge when the
    /// traffic policy terminates (which passthrough endpoints allow).
    pub fn terminate_at(&self) -> TerminateAt {
        match &self.termination {
            Termination::Upstream if self.policy_terminates => TerminateAt::Edge,
            t => t.terminate_at(),
        }
    }
}

/// The user's endpoint settings before the termination rule is applied: what the
/// builders and the option parser fill in, field by field.
#[derive(Default, Clone)]
pub(crate) struct EndpointDraft {
    pub(crate) proto: Option<Proto>,
    pub(crate) domain: Option<String>,
    pub(crate) tls_port: Option<u16>,
    pub(crate) remote_port: Option<u16>,
    pub(crate) terminate_at: Option<TerminateAt>,
    pub(crate) crt: Option<Vec<u8>>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) mutual_tls_cas: Option<Vec<u8>>,
    pub(crate) min_version: Option<String>,
    pub(crate) max_version: Option<String>,
    pub(crate) alpn: Vec<String>,
    pub(crate) metadata: String,
    pub(crate) forwards_to: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) traffic_policy: Option<String>,
    pub(crate) allow_cidrs: Vec<String>,
    pub(crate) deny_cidrs: Vec<String>,
    pub(crate) proxy_proto: Option<ProxyProto>,
    pub(crate) pooling_enabled: bool,
    pub(crate) http: HttpOptions,
    /// The first HTTP-only option given (for the refusal on a tls or tcp endpoint).
    pub(crate) http_option_given: Option<String>,
}

/// The user-facing name of a protocol.
pub(crate) fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tls => "tls",
        Proto::Tcp => "tcp",
        Proto::Http => "http",
    }
}

/// A policy's HTTP phases on an endpoint that carries no HTTP (refused by the agent
/// and, for agents that skip the check, by the edge).
pub(crate) fn http_phases_refused(proto: Proto) -> Error {
    Error::new(
        ErrorCode::InvalidPolicy,
        format!(
            "on_http_request and on_http_response (and legacy inbound/outbound rules) apply to http endpoints; this is a {} endpoint (use on_tcp_connect or on_tls_request)",
            proto_name(proto)
        ),
    )
}

/// Pools are names on the TLS listener; a TCP endpoint has a port of its own (refused
/// by the agent and, for agents that skip the check, by the edge).
pub(crate) fn tcp_pooling_refused() -> Error {
    Error::new(
        ErrorCode::Unsupported,
        "pooling_enabled is not supported yet for tcp endpoints (each gets a port of its own); tls endpoints can be pooled",
    )
}

/// PEM input as text: strictly UTF-8, or an `INVALID_PEM` naming the input.
pub(crate) fn pem_text(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        Error::new(
            ErrorCode::InvalidPem,
            format!("{what}: PEM must be text (UTF-8)"),
        )
    })
}

impl EndpointDraft {
    /// Applies the termination rule and every check that needs no network:
    /// crt+key alone mean edge termination, `terminate_at` overrides, a policy's
    /// `terminate-tls` makes the edge terminate.
    pub(crate) fn resolve(self) -> Result<EndpointSpec> {
        // HTTP is the default, as in ngrok; agent or upstream termination exist only
        // for tls endpoints, so asking for them without a proto means tls.
        let proto = self.proto.unwrap_or(match self.terminate_at {
            Some(TerminateAt::Agent | TerminateAt::Upstream) => Proto::Tls,
            _ => Proto::Http,
        });
        if proto != Proto::Http {
            if let Some(name) = &self.http_option_given {
                return Err(Error::option(format!(
                    "{name} applies to http endpoints, not to a {} endpoint",
                    proto_name(proto)
                )));
            }
        }
        let mut policy = match &self.traffic_policy {
            Some(text) => TrafficPolicy::parse(text)?,
            None => TrafficPolicy::default(),
        };
        policy.restrict_ips(&self.allow_cidrs, &self.deny_cidrs)?;
        if proto != Proto::Http && policy.has_http_phases() {
            return Err(http_phases_refused(proto));
        }
        if !policy.terminations().is_empty() {
            if let Some(at @ (TerminateAt::Agent | TerminateAt::Upstream)) = self.terminate_at {
                return Err(Error::option(format!(
                    "the traffic policy's terminate-tls action makes the edge terminate TLS, which contradicts terminate_at=\"{at}\""
                )));
            }
        }
        let has_cert = self.crt.is_some() || self.key.is_some();
        let at = self.terminate_at.unwrap_or(
            if has_cert || self.mutual_tls_cas.is_some() || proto == Proto::Http {
                TerminateAt::Edge
            } else {
                TerminateAt::Upstream
            },
        );
        if proto == Proto::Http {
            if at != TerminateAt::Edge {
                return Err(Error::option(format!(
                    "terminate_at=\"{at}\": an http endpoint is always terminated at the edge; agent and upstream termination are for tls endpoints (proto=\"tls\")"
                )));
            }
            if !policy.terminations().is_empty() {
                return Err(Error::option(
                    "the traffic policy's terminate-tls action applies to tls endpoints; an http endpoint is always terminated at the edge",
                ));
            }
            self.http.check()?;
        }
        let cert = match (&self.crt, &self.key) {
            (Some(c), Some(k)) => Some(CertPem {
                crt: pem_text(c, "crt")?,
                key: SecretPem(pem_text(k, "key")?),
            }),
            (None, None) => None,
            (Some(_), None) => return Err(Error::option("Missing key for tls termination")),
            (None, Some(_)) => return Err(Error::option("Missing crt for tls termination")),
        };
        let version = |v: &Option<String>, what: &str| {
            v.as_deref()
                .map(|v| tls::parse_version(v, what))
                .transpose()
        };
        let material = TlsMaterial {
            cert,
            min_version: version(&self.min_version, "min_version")?,
            max_version: version(&self.max_version, "max_version")?,
            alpn: self.alpn.clone(),
            client_cas: self
                .mutual_tls_cas
                .as_deref()
                .map(|c| pem_text(c, "mutual_tls_cas"))
                .transpose()?,
        };
        let domain = self.domain.as_deref();
        let termination = match at {
            TerminateAt::Upstream => {
                if material != TlsMaterial::default() {
                    return Err(Error::option(
                        "terminate_at=\"upstream\" passes TLS through untouched, so crt, key, mutual_tls_cas, TLS versions and ALPN cannot apply; drop them or terminate at \"edge\" or \"agent\"",
                    ));
                }
                Termination::Upstream
            }
            TerminateAt::Edge => {
                material.check(domain)?;
                Termination::Edge(material)
            }
            TerminateAt::Agent => {
                if material.cert.is_none() {
                    return Err(Error::option(
                        "terminate_at=\"agent\" needs crt and key: the agent terminates TLS with them",
                    ));
                }
                if domain.is_none() && proto == Proto::Tls {
                    return Err(Error::option(
                        "terminate_at=\"agent\" needs a domain that the certificate covers (a random name cannot match it)",
                    ));
                }
                material.check(domain)?;
                Termination::Agent(material)
            }
        };
        if proto != Proto::Tcp && self.remote_port.is_some() {
            return Err(Error::option(format!(
                "remote_addr applies to tcp endpoints; a {} endpoint is routed by its domain",
                proto_name(proto)
            )));
        }
        let kind = match proto {
            Proto::Http => EndpointKind::Http {
                domain: self.domain,
                port: self.tls_port,
                http: Box::new(self.http),
            },
            Proto::Tls => EndpointKind::Tls {
                domain: self.domain,
                port: self.tls_port,
            },
            Proto::Tcp => {
                if self.pooling_enabled {
                    return Err(tcp_pooling_refused());
                }
                if self.domain.is_some() {
                    return Err(Error::option(
                        "domain applies to tls and http endpoints; a tcp endpoint is reached by its port (remote_addr)",
                    ));
                }
                EndpointKind::Tcp {
                    remote_port: self.remote_port,
                }
            }
        };
        Ok(EndpointSpec {
            kind,
            termination,
            policy_terminates: !policy.terminations().is_empty(),
            traffic_policy: self.traffic_policy,
            allow_cidrs: self.allow_cidrs,
            deny_cidrs: self.deny_cidrs,
            proxy_proto: self.proxy_proto,
            metadata: self.metadata,
            forwards_to: self.forwards_to,
            description: self.description,
            name: None,
            pooling_enabled: self.pooling_enabled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_key_never_leaves_the_agent() {
        let material = TlsMaterial {
            cert: Some(CertPem {
                crt: "CRT".into(),
                key: SecretPem("KEY-TEXT".into()),
            }),
            ..Default::default()
        };
        let json = serde_json::to_string(&Termination::Agent(material.clone())).unwrap();
        assert_eq!(json, r#"{"mode":"agent"}"#);
        let back: Termination = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Termination::Agent(TlsMaterial::default()));
        let edge = serde_json::to_string(&Termination::Edge(material)).unwrap();
        let back: Termination = serde_json::from_str(&edge).unwrap();
        assert!(matches!(back, Termination::Edge(m) if m.cert.is_some()));
        let up: Termination = serde_json::from_str(r#"{"mode":"upstream"}"#).unwrap();
        assert_eq!(up, Termination::Upstream);
    }
}
