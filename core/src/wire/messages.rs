//! The control messages and the proxy stream header (see docs/protocol.md).

use crate::agent::{EndpointKind, Termination, TlsMaterial};
use crate::error::ErrorCode;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// The protocol version carried in `Auth` and `AuthOk`; a mismatch is refused.
pub const PROTOCOL_VERSION: u32 = 2;

/// PEM text that must never be printed: private keys.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretPem(pub String);

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

/// Messages the agent sends on the control stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMsg {
    /// First message: the protocol version and credentials.
    Auth {
        /// Must equal [`PROTOCOL_VERSION`].
        version: u32,
        /// The authtoken, if any.
        authtoken: Option<SecretPem>,
        /// Free-form metadata describing the session.
        metadata: String,
        /// On reconnect, the id of the session this one replaces.
        resume: Option<String>,
    },
    /// Ask the edge to serve an endpoint.
    Bind {
        /// Echoed in the answer.
        request_id: u64,
        /// What to serve.
        spec: Box<BindSpec>,
    },
    /// Stop serving an endpoint.
    Unbind {
        /// The endpoint to stop.
        endpoint_id: String,
    },
    /// Liveness; sent every heartbeat interval.
    Heartbeat,
}

/// Messages the edge sends on the control stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EdgeMsg {
    /// The session is authenticated.
    AuthOk {
        /// The edge's protocol version.
        version: u32,
        /// Identifies the session, e.g. to resume it.
        session_id: String,
        /// How often both sides send heartbeats, in milliseconds.
        heartbeat_ms: u64,
    },
    /// The endpoint is served.
    BindOk {
        /// The request this answers.
        request_id: u64,
        /// The endpoint's id (as the agent chose it).
        endpoint_id: String,
        /// The public URL.
        url: String,
    },
    /// A refusal; `request_id` names the `Bind` it answers, if any.
    Error {
        /// The request this answers, if any.
        request_id: Option<u64>,
        /// Stable code.
        code: ErrorCode,
        /// What went wrong.
        message: String,
    },
    /// Liveness; sent every heartbeat interval.
    Heartbeat,
    /// The edge is closing the session (shutdown, replaced session).
    Stop {
        /// Why.
        reason: String,
    },
}

/// Public protocol of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// Routed by SNI on the edge's TLS port.
    Tls,
    /// A TCP port of its own.
    Tcp,
}

/// What an agent asks the edge to serve: the endpoint's spec less what stays with the
/// agent (upstream, PROXY protocol, the agent's own TLS material).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindSpec {
    /// Chosen by the agent, unique within its session; names the endpoint in stream headers.
    pub endpoint_id: String,
    /// The public address asked for (a name on the TLS listener, or a TCP port).
    pub kind: EndpointKind,
    /// Where TLS is terminated; the edge matches on it.
    pub termination: Termination,
    /// Traffic policy text (YAML or JSON), evaluated by the edge on every connection.
    #[serde(default)]
    pub traffic_policy: Option<String>,
    /// Client IP ranges allowed (empty: all).
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
    /// Client IP ranges refused.
    #[serde(default)]
    pub deny_cidrs: Vec<String>,
    /// Free-form metadata.
    pub metadata: String,
}

impl BindSpec {
    /// TLS (SNI-routed) or TCP (own port).
    pub fn proto(&self) -> Proto {
        self.kind.proto()
    }

    /// The edge's TLS settings, when the edge terminates.
    pub fn edge_tls(&self) -> Option<&TlsMaterial> {
        match &self.termination {
            Termination::Edge(material) => Some(material),
            Termination::Upstream | Termination::Agent(_) => None,
        }
    }
}

/// Written by the edge at the start of every proxy stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamHeader {
    /// The endpoint the connection arrived on.
    pub endpoint_id: String,
    /// The public client's address.
    pub client_addr: SocketAddr,
    /// True when the edge already terminated TLS and the stream carries plaintext.
    pub edge_terminated: bool,
    /// The SNI the client sent, if any.
    pub sni: Option<String>,
    /// The ALPN protocol negotiated at the edge (edge termination only).
    pub alpn: Option<String>,
    /// The edge address the client connected to.
    #[serde(default)]
    pub server_addr: Option<SocketAddr>,
    /// Subject of the client certificate the edge verified (mutual TLS at the edge).
    #[serde(default)]
    pub client_cert_subject: Option<String>,
}
