//! The control messages and the proxy stream header (see docs/protocol.md).

use crate::agent::{EndpointKind, Termination, TlsMaterial};
use crate::error::ErrorCode;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// The protocol version carried in `Auth` and `AuthOk`; a mismatch is refused.
///
/// 2 carried the endpoint spec (with its termination) in `bind`; 3 added client info,
/// heartbeat sequence numbers and acks, and edge commands; 4 added `join` in `auth`;
/// 5 added http endpoints.
pub const PROTOCOL_VERSION: u32 = 5;

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
        /// Who is connecting (e.g. `ngrok-python/1.4.0`), most significant first.
        #[serde(default)]
        client_info: Vec<ClientInfo>,
        /// How often this agent sends heartbeats, in milliseconds (the edge allows
        /// three silent intervals of the longer of its own and this one).
        #[serde(default)]
        heartbeat_ms: Option<u64>,
        /// The session this connection belongs to, which the agent also holds at
        /// another edge (a session connected to several edges at once); `None` for
        /// the session's first connection.
        #[serde(default)]
        join: Option<String>,
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
    /// Liveness, sent every heartbeat interval; the edge answers with `HeartbeatAck`.
    Heartbeat {
        /// Echoed in the ack, so the agent can measure the round trip.
        #[serde(default)]
        seq: u64,
        /// The round trip the agent measured for its previous heartbeat, in
        /// microseconds (the edge's heartbeat metric and admin API show it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rtt_us: Option<u64>,
    },
    /// The agent's answer to an edge `Command`.
    CommandResult {
        /// The command this answers.
        command_id: u64,
        /// Why the agent refused or failed it; `None` when it was carried out.
        error: Option<CommandError>,
    },
}

/// Who is connecting: a client type, its version and optional comments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// E.g. `burrow-python` or an application's name.
    pub client_type: String,
    /// The client's version.
    pub version: String,
    /// Free-form comments (RFC 7230 comment syntax, as ngrok's User-Agent entries).
    #[serde(default)]
    pub comments: Option<String>,
}

impl fmt::Display for ClientInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.client_type, self.version)?;
        match &self.comments {
            Some(c) => write!(f, " ({c})"),
            None => Ok(()),
        }
    }
}

/// What an edge may ask of a session (ngrok's Stop, Restart and Update commands).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Command {
    /// End the session.
    ///
    /// Wire-compatible with the reason-less `{"kind":"stop"}`: the reason is left out
    /// when there is none, an agent that predates it ignores it, and an edge that
    /// predates it sends none.
    Stop {
        /// Why the operator stops the session (the agent logs it and passes it to its
        /// `handle_stop_command` hook).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Reconnect the session.
    Restart,
    /// Update the agent to `version`.
    Update {
        /// The version asked for.
        version: String,
        /// Whether a new major version is acceptable.
        permit_major_version: bool,
    },
}

/// Why an agent did not carry out a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandError {
    /// Stable code.
    pub code: ErrorCode,
    /// What went wrong.
    pub message: String,
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
    /// The answer to the agent's `Heartbeat` with the same `seq`.
    HeartbeatAck {
        /// The agent's sequence number.
        seq: u64,
    },
    /// An operator's command for this session; the agent answers with `CommandResult`.
    Command {
        /// Echoed in the answer.
        command_id: u64,
        /// What to do.
        command: Command,
    },
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
    /// HTTPS (and/or HTTP) served by the edge's reverse proxy, routed by SNI and `Host`.
    Http,
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
    /// Other sessions that opt in too may serve the same name (ngrok's `pooling_enabled`).
    #[serde(default)]
    pub pooling_enabled: bool,
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

#[cfg(test)]
mod stop_reason_tests {
    use super::Command;
    use serde::Deserialize;

    /// `Command` as it was before Stop carried a reason.
    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum OldCommand {
        Stop,
        Restart,
    }

    #[test]
    fn stop_reason_is_wire_compatible_both_ways() {
        let plain = Command::Stop { reason: None };
        assert_eq!(serde_json::to_string(&plain).unwrap(), r#"{"kind":"stop"}"#);
        let old: Command = serde_json::from_str(r#"{"kind":"stop"}"#).unwrap();
        assert_eq!(old, plain);
        let with = Command::Stop {
            reason: Some("maintenance".into()),
        };
        let text = serde_json::to_string(&with).unwrap();
        assert_eq!(
            serde_json::from_str::<OldCommand>(&text).unwrap(),
            OldCommand::Stop,
            "an older agent ignores the reason"
        );
        assert_eq!(serde_json::from_str::<Command>(&text).unwrap(), with);
        let restart: OldCommand = serde_json::from_str(r#"{"kind":"restart"}"#).unwrap();
        assert_eq!(restart, OldCommand::Restart);
    }
}
