//! Dialling one edge and authenticating a tunnel connection with it.

use super::hooks::Hooks;
use crate::error::{Error, ErrorCode, Result};
use crate::tls;
use crate::wire::mux::{self, MuxHandle, MuxStream, Side};
use crate::wire::{AgentMsg, ClientInfo, ControlChannel, EdgeMsg, SecretPem, PROTOCOL_VERSION};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The session's own heartbeat settings; unset values follow the edge.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Heartbeat {
    pub(crate) interval: Option<Duration>,
    pub(crate) tolerance: Option<Duration>,
}

/// One edge to connect to: where to dial and the name its certificate must carry.
#[derive(Clone)]
pub(crate) struct EdgeAddr {
    /// How logs and the disconnection hook name it: the address as given, with the IP
    /// when one name stands for several edges.
    pub(crate) addr: String,
    dial: String,
    server_name: ServerName<'static>,
}

impl EdgeAddr {
    /// `addr` (`host:port`), dialled as given; `ip`: dial that address instead, still
    /// verifying the edge's certificate for the host of `addr`.
    pub(crate) fn new(addr: &str, ip: Option<std::net::SocketAddr>) -> Result<Self> {
        let (host, _) = super::options::server_host(addr)?;
        let server_name = ServerName::try_from(host).map_err(|_| {
            Error::new(
                ErrorCode::InvalidUrl,
                format!("server_addr {addr:?} has an invalid host"),
            )
        })?;
        Ok(match ip {
            Some(ip) => EdgeAddr {
                addr: format!("{addr} ({ip})"),
                dial: ip.to_string(),
                server_name,
            },
            None => EdgeAddr {
                addr: addr.to_owned(),
                dial: addr.to_owned(),
                server_name,
            },
        })
    }
}

/// How to authenticate with the edges; the same for each of a session's connections.
pub(crate) struct Settings {
    connector: TlsConnector,
    authtoken: Option<SecretPem>,
    metadata: String,
    client_info: Vec<ClientInfo>,
    pub(crate) heartbeat: Heartbeat,
    pub(crate) hooks: Hooks,
}

impl Settings {
    pub(crate) fn new(
        root_cas: Option<&[u8]>,
        authtoken: Option<SecretPem>,
        metadata: String,
        mut client_info: Vec<ClientInfo>,
        heartbeat: Heartbeat,
        hooks: Hooks,
    ) -> Result<Self> {
        let config = tls::tunnel_client_config(root_cas).map_err(|e| {
            Error::new(
                e.code(),
                format!(
                    "the CA bundle for the tunnel's TLS (root_cas / ca_cert) is unusable: {}",
                    e.message()
                ),
            )
        })?;
        client_info.push(ClientInfo {
            client_type: "burrow".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            comments: None,
        });
        Ok(Settings {
            connector: TlsConnector::from(Arc::new(config)),
            authtoken,
            metadata,
            client_info,
            heartbeat,
            hooks,
        })
    }
}

/// An authenticated tunnel connection.
pub(crate) struct Connected {
    pub(crate) session_id: String,
    pub(crate) heartbeat: Duration,
    pub(crate) control: ControlChannel<MuxStream>,
    pub(crate) inbound: mpsc::UnboundedReceiver<MuxStream>,
    pub(crate) tunnel: MuxHandle,
    pub(crate) stop: CancellationToken,
}

impl Drop for Connected {
    fn drop(&mut self) {
        // The tunnel lives exactly as long as this value: not a child of the session's
        // stop token, so a closing session can end its control stream first.
        self.stop.cancel();
    }
}

/// The session ids an authentication presents.
#[derive(Default)]
pub(crate) struct Ids {
    /// The id this connection had before it was lost (the edge ends that session).
    pub(crate) resume: Option<String>,
    /// The session this connection belongs to, held at another edge too.
    pub(crate) join: Option<String>,
}

/// Dials the edge, starts the multiplexer and authenticates.
pub(crate) async fn establish(
    settings: &Settings,
    edge: &EdgeAddr,
    ids: Ids,
    stop: CancellationToken,
) -> Result<Connected> {
    let addr = &edge.addr;
    let unreachable = |detail: String| {
        Error::new(
            ErrorCode::ConnectFailed,
            format!("cannot reach the edge at {addr}: {detail}"),
        )
    };
    let tcp = timeout(CONNECT_TIMEOUT, TcpStream::connect(edge.dial.as_str()))
        .await
        .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let tcp = tokio::io::BufReader::with_capacity(mux::READ_BUFFER, tcp);
    let tls = timeout(
        CONNECT_TIMEOUT,
        settings.connector.connect(edge.server_name.clone(), tcp),
    )
    .await
    .map_err(|_| unreachable("TLS handshake timed out".into()))?
    .map_err(|e| unreachable(format!("TLS handshake failed: {e}{}", trust_hint(&e))))?;
    // The agent opens only the control stream; the edge opens the rest.
    let mux = mux::start(tls, Side::Agent, stop.clone(), 16);
    let fail = |e: Error| {
        stop.cancel();
        e
    };
    let stream = mux.handle.open().await.map_err(fail)?;
    let mut control = ControlChannel::new(stream);
    control
        .send(&AgentMsg::Auth {
            version: PROTOCOL_VERSION,
            authtoken: settings.authtoken.clone(),
            metadata: settings.metadata.clone(),
            resume: ids.resume,
            join: ids.join,
            client_info: settings.client_info.clone(),
            heartbeat_ms: settings
                .heartbeat
                .interval
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        })
        .await
        .map_err(fail)?;
    let answer = timeout(CONNECT_TIMEOUT, control.recv::<EdgeMsg>())
        .await
        .map_err(|_| fail(unreachable("the edge did not answer Auth".into())))?
        .map_err(fail)?;
    match answer {
        Some(EdgeMsg::AuthOk {
            session_id,
            heartbeat_ms,
            ..
        }) => Ok(Connected {
            session_id,
            heartbeat: settings
                .heartbeat
                .interval
                .unwrap_or(Duration::from_millis(heartbeat_ms.max(50))),
            control,
            inbound: mux.inbound,
            tunnel: mux.handle,
            stop,
        }),
        Some(EdgeMsg::Error { code, message, .. }) => Err(fail(Error::new(code, message))),
        Some(other) => Err(fail(Error::protocol(format!(
            "expected AuthOk, the edge sent {other:?}"
        )))),
        None => Err(fail(unreachable(
            "the edge closed the tunnel during Auth".into(),
        ))),
    }
}

/// What to do about a tunnel certificate the agent does not trust.
fn trust_hint(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error as TlsError};
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>());
    match tls {
        Some(TlsError::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => " (the edge's certificate is not signed by a CA this agent trusts: pass the edge's CA with --root-cas, or root_cas in the SDKs)",
        _ => "",
    }
}
