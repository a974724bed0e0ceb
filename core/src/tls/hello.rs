//! Reading a ClientHello without losing a byte.
//!
//! The edge must route by SNI before it decides whether to terminate or to splice,
//! so it drives rustls' `Acceptor` from its own read loop and keeps every byte read.

use rustls::server::{Accepted, Acceptor};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default for the most bytes read while looking for a complete ClientHello.
pub const MAX_HELLO_BYTES: usize = 16 * 1024;

/// What the edge learns from a ClientHello.
pub struct ClientHelloInfo {
    /// Every byte read from the client so far, to replay to a passthrough target.
    pub raw: Vec<u8>,
    /// The SNI, lowercased; `None` when absent or an IP literal.
    pub sni: Option<String>,
    /// ALPN protocols the client offered.
    pub alpn: Vec<String>,
    /// The parsed hello, to continue a handshake at the edge (boxed: it is large,
    /// and a passthrough connection drops it before splicing).
    pub accepted: Box<Accepted>,
}

/// Why no ClientHello could be read.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The client sent nothing useful before the deadline.
    #[error("no ClientHello within {0:?}")]
    Timeout(Duration),
    /// The hello did not fit in the byte limit.
    #[error("ClientHello larger than the limit")]
    TooLarge,
    /// The client closed before completing the hello.
    #[error("client closed the connection before completing a ClientHello")]
    Eof,
    /// The bytes are not a TLS ClientHello rustls accepts.
    #[error("not a valid TLS ClientHello: {0}")]
    Invalid(rustls::Error),
    /// Reading failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads a ClientHello from `io` within `deadline`, keeping every byte read.
///
/// At most `max_bytes` are read; a hello that does not fit is [`HelloError::TooLarge`].
pub async fn read_client_hello<R: AsyncRead + Unpin>(
    io: &mut R,
    deadline: Duration,
    max_bytes: usize,
) -> Result<ClientHelloInfo, HelloError> {
    // Boxed: the parser's state is freed once the hello is read.
    tokio::time::timeout(deadline, Box::pin(read_inner(io, max_bytes)))
        .await
        .map_err(|_| HelloError::Timeout(deadline))?
}

async fn read_inner<R: AsyncRead + Unpin>(
    io: &mut R,
    max_bytes: usize,
) -> Result<ClientHelloInfo, HelloError> {
    let mut acceptor = Acceptor::default();
    let mut raw = Vec::with_capacity(1024);
    // On the heap, so the connection task does not carry it after the hello.
    let mut buf = vec![0u8; 4096];
    loop {
        let room = max_bytes.saturating_sub(raw.len());
        if room == 0 {
            return Err(HelloError::TooLarge);
        }
        let want = room.min(buf.len());
        let n = io.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(HelloError::Eof);
        }
        raw.extend_from_slice(&buf[..n]);
        let mut fresh = &buf[..n];
        while !fresh.is_empty() {
            let used = acceptor.read_tls(&mut fresh)?;
            if used == 0 {
                return Err(HelloError::TooLarge);
            }
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let sni = hello.server_name().map(str::to_owned);
                let alpn = hello
                    .alpn()
                    .map(|list| {
                        list.map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                return Ok(ClientHelloInfo {
                    raw,
                    sni,
                    alpn,
                    accepted: Box::new(accepted),
                });
            }
            Err((e, _alert)) => return Err(HelloError::Invalid(e)),
        }
    }
}

/// TLS alert descriptions the edge sends when it refuses a hello.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
pub enum RefusalAlert {
    /// No endpoint serves that name (or there was none).
    UnrecognizedName = 112,
    /// The connection is refused for another reason.
    HandshakeFailure = 40,
    /// A traffic policy refused the client.
    AccessDenied = 49,
}

/// Writes a fatal TLS alert record to a client that has not finished a handshake.
pub async fn send_alert<W: AsyncWrite + Unpin>(io: &mut W, alert: RefusalAlert) {
    // Record: type alert(21), version TLS 1.2 (3,3), length 2; body: level fatal(2), description.
    let record = [21u8, 3, 3, 0, 2, 2, alert as u8];
    let _ = io.write_all(&record).await;
    let _ = io.shutdown().await;
}
