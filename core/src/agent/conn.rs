//! One proxied connection as the agent's user sees it.

use super::observe::ConnTrack;
use super::upstream::delegate_io;
use crate::wire::mux::MuxStream;
use crate::wire::StreamHeader;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A public client's connection, delivered through the tunnel.
///
/// It carries plaintext when the edge or the agent terminated TLS, and the client's
/// raw TLS bytes in upstream (passthrough) mode.
pub struct Conn {
    header: StreamHeader,
    io: ConnIo,
    track: ConnTrack,
}

pub(crate) enum ConnIo {
    Plain(MuxStream),
    Tls(Box<tokio_rustls::server::TlsStream<MuxStream>>),
}

delegate_io!(ConnIo { Plain, Tls });

impl Conn {
    pub(crate) fn new(header: StreamHeader, io: ConnIo, track: ConnTrack) -> Self {
        Conn { header, io, track }
    }

    /// Records why the connection failed (shown in the agent API's recent list).
    pub(crate) fn failed(&mut self, why: impl Into<String>) {
        self.track.failed(why);
    }

    pub(crate) fn stats(&self) -> &std::sync::Arc<super::observe::EndpointStats> {
        self.track.stats()
    }

    /// The public client's address as the edge saw it.
    pub fn client_addr(&self) -> SocketAddr {
        self.header.client_addr
    }

    /// The SNI the client sent, if any.
    pub fn sni(&self) -> Option<&str> {
        self.header.sni.as_deref()
    }

    /// The negotiated ALPN protocol, when the edge or agent terminated TLS.
    pub fn alpn(&self) -> Option<String> {
        match &self.io {
            ConnIo::Tls(tls) => tls
                .get_ref()
                .1
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            ConnIo::Plain(_) => self.header.alpn.clone(),
        }
    }

    /// The edge address the client connected to, when known.
    pub fn server_addr(&self) -> Option<SocketAddr> {
        self.header.server_addr
    }

    /// Subject of the verified client certificate (mutual TLS at the edge or agent).
    pub fn client_cert_subject(&self) -> Option<String> {
        match &self.io {
            ConnIo::Tls(tls) => tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::tls::cert_subject(c)),
            ConnIo::Plain(_) => self.header.client_cert_subject.clone(),
        }
    }

    /// The TLS version negotiated where burrow terminated (agent termination only).
    pub fn agent_tls_version(&self) -> Option<rustls::ProtocolVersion> {
        match &self.io {
            ConnIo::Tls(tls) => tls.get_ref().1.protocol_version(),
            ConnIo::Plain(_) => None,
        }
    }

    /// True when burrow (edge or agent) terminated TLS and this carries plaintext.
    pub fn is_terminated(&self) -> bool {
        self.header.edge_terminated || matches!(self.io, ConnIo::Tls(_))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        this.track.read(buf.filled().len() - before);
        polled
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.track.wrote(n);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
