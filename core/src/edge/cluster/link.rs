//! Links between the edges of a cluster: one mutually-authenticated TLS connection per
//! pair of edges, multiplexed, carrying public connections to the edge that owns them.
//!
//! A forwarded connection is a stream that starts with a [`LinkHeader`], followed by
//! the client's bytes as they arrived (the ClientHello first); the owner runs its
//! normal path on it, so policy, termination and certificates stay with the owner.

use super::ClusterConfig;
use crate::error::{Error, ErrorCode, Result};
use crate::tls::{self, CertAuthority, ServerTlsSettings, TlsVersion};
use crate::wire::mux::{self, MuxHandle, MuxStream, Side};
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

/// The ALPN protocol of the link, so that nothing else is taken for it.
const LINK_ALPN: &str = "burrow-link/1";
/// How long dialing another edge (TCP and TLS) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Streams one link may carry at once, per direction.
const LINK_STREAMS: usize = mux::MAX_STREAMS;
/// How many edges a connection may be carried across: one (from the edge that took it
/// to the owner). A connection arriving with more is a loop, and refused.
pub(crate) const MAX_HOPS: u8 = 1;

/// What the edge that took a public connection tells the owner about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LinkHeader {
    /// The name the client asked for (its SNI).
    pub(crate) sni: String,
    /// The client's real address.
    pub(crate) client_addr: SocketAddr,
    /// The public address (and so the port) the client connected to.
    pub(crate) server_addr: Option<SocketAddr>,
    /// Edges the connection has crossed, this hop included.
    pub(crate) hops: u8,
}

/// This edge's ends of its links.
pub(crate) struct Links {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    /// One link per peer edge, dialed when first needed.
    peers: Mutex<HashMap<String, Peer>>,
    stop: CancellationToken,
}

/// The link to one peer edge.
#[derive(Default)]
struct Peer {
    /// The live link, if any: connections open streams on it without waiting for
    /// each other.
    link: Option<MuxHandle>,
    /// Held while dialing, so that a burst of connections dials once.
    dialing: Arc<tokio::sync::Mutex<()>>,
}

impl Links {
    /// Certificates for this edge's link, issued by the cluster's CA.
    pub(crate) fn new(
        ca: &CertAuthority,
        config: &ClusterConfig,
        stop: CancellationToken,
    ) -> Result<Self> {
        let names = vec![
            config.link_addr.ip().to_string(),
            format!("{}.edges.burrow", config.edge_id),
        ];
        let cert = ca.issue(&names)?;
        let settings = ServerTlsSettings {
            min_version: Some(TlsVersion::Tls13),
            alpn: vec![LINK_ALPN.into()],
            client_ca_pem: Some(ca.cert_pem().as_bytes().to_vec()),
            ..Default::default()
        };
        let server = tls::server_config(&cert, &settings)?;
        let mut client = tls::link_client_config(ca.cert_pem().as_bytes(), &cert)?;
        client.alpn_protocols = vec![LINK_ALPN.as_bytes().to_vec()];
        Ok(Links {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            peers: Mutex::new(HashMap::new()),
            stop,
        })
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Peer>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live link to `edge`, if there is one.
    fn live(&self, edge: &str) -> Option<MuxHandle> {
        self.peers()
            .get(edge)
            .and_then(|p| p.link.clone())
            .filter(|h| !h.is_closed())
    }

    /// Opens a stream to edge `edge` at `addr`, dialing the link if there is none.
    pub(crate) async fn open(&self, edge: &str, addr: SocketAddr) -> Result<MuxStream> {
        if let Some(link) = self.live(edge) {
            if let Ok(stream) = link.open().await {
                return Ok(stream);
            }
        }
        let dialing = self
            .peers()
            .entry(edge.to_owned())
            .or_default()
            .dialing
            .clone();
        let _one_dial = dialing.lock().await;
        // Another connection may have dialed while this one waited.
        if let Some(link) = self.live(edge) {
            if let Ok(stream) = link.open().await {
                return Ok(stream);
            }
        }
        let link = self.dial(addr).await?;
        let stream = link.open().await?;
        self.peers().entry(edge.to_owned()).or_default().link = Some(link);
        Ok(stream)
    }

    async fn dial(&self, addr: SocketAddr) -> Result<MuxHandle> {
        let unreachable = |detail: String| {
            Error::new(
                ErrorCode::ConnectFailed,
                format!("cannot reach the edge at {addr}: {detail}"),
            )
        };
        let handshake = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let tcp = tokio::io::BufReader::with_capacity(mux::READ_BUFFER, tcp);
            self.connector
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await
                .map_err(|e| unreachable(format!("link TLS handshake: {e}")))
        };
        let tls = timeout(DIAL_TIMEOUT, handshake)
            .await
            .map_err(|_| unreachable(format!("no link within {DIAL_TIMEOUT:?}")))??;
        let mux = mux::start(tls, Side::Agent, self.stop.child_token(), LINK_STREAMS);
        tracing::info!(peer = %addr, "link to edge up");
        Ok(mux.handle)
    }
}

/// Accepts links from the other edges until the edge stops; each stream on them is a
/// forwarded public connection.
pub(crate) async fn accept(
    shared: Arc<crate::edge::Shared>,
    listener: TcpListener,
    links: Arc<Links>,
) {
    loop {
        let Some((tcp, peer)) = crate::edge::accept_next(&listener, &shared.stop, "link").await
        else {
            return;
        };
        let shared = shared.clone();
        let acceptor = links.acceptor.clone();
        let tasks = shared.tasks.clone();
        tasks.spawn(async move {
            let tcp = tokio::io::BufReader::with_capacity(mux::READ_BUFFER, tcp);
            let tls = match timeout(DIAL_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::info!(%peer, error = %e, "link refused: TLS handshake failed (not an edge of this cluster?)"),
                Err(_) => return tracing::info!(%peer, "link refused: TLS handshake timed out"),
            };
            let stop = shared.stop.child_token();
            let _end = stop.clone().drop_guard();
            let mut mux = mux::start(tls, Side::Edge, stop, LINK_STREAMS);
            tracing::info!(%peer, "link from edge up");
            while let Some(stream) = mux.inbound.recv().await {
                // A forwarded connection counts against max_connections like any other.
                let Ok(permit) = shared.connections.clone().acquire_owned().await else {
                    break;
                };
                let shared2 = shared.clone();
                shared.tasks.spawn(async move {
                    let _permit = permit;
                    crate::edge::public::serve_forwarded(shared2, stream).await
                });
            }
            tracing::info!(%peer, "link from edge closed");
        });
    }
}
