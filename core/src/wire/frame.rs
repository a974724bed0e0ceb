//! Length-prefixed JSON frames with a size cap.

use crate::error::{Error, ErrorCode, Result};
use futures::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Largest control message accepted (a bind carries certificates).
pub const MAX_CONTROL_FRAME: usize = 1024 * 1024;
/// Largest stream header accepted.
const MAX_HEADER: usize = 16 * 1024;

fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(msg).map_err(|e| Error::protocol(format!("cannot encode message: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::protocol(format!("malformed message: {e}")))
}

/// A bidirectional channel of control messages over one stream.
///
/// `recv` is cancel-safe, so it can sit in a `select!` beside timers.
pub struct ControlChannel<S> {
    framed: Framed<S, LengthDelimitedCodec>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ControlChannel<S> {
    /// Wraps a stream.
    pub fn new(stream: S) -> Self {
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(MAX_CONTROL_FRAME)
            .new_codec();
        ControlChannel {
            framed: Framed::new(stream, codec),
        }
    }

    /// Sends one message; one larger than [`MAX_CONTROL_FRAME`] fails with
    /// `LIMIT_EXCEEDED` before anything is written, so the channel stays usable.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        let bytes = encode(msg)?;
        if bytes.len() > MAX_CONTROL_FRAME {
            return Err(Error::new(
                ErrorCode::LimitExceeded,
                format!(
                    "control message of {} bytes exceeds the limit of {MAX_CONTROL_FRAME} bytes",
                    bytes.len()
                ),
            ));
        }
        self.framed
            .send(bytes::Bytes::from(bytes))
            .await
            .map_err(|e| Error::io("control stream", e))
    }

    /// Receives one message; `Ok(None)` when the peer closed the stream.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        match self.framed.next().await {
            None => Ok(None),
            Some(Ok(bytes)) => decode(&bytes).map(Some),
            Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => Err(Error::protocol(
                format!("control message refused: {e} (limit {MAX_CONTROL_FRAME} bytes)"),
            )),
            Some(Err(e)) => Err(Error::io("control stream", e)),
        }
    }

    /// The underlying stream (bytes already buffered by the framing are dropped).
    pub fn into_inner(self) -> S {
        self.framed.into_inner()
    }

    /// Flushes and closes the write side.
    pub async fn close(&mut self) {
        let _ = SinkExt::<bytes::Bytes>::close(&mut self.framed).await;
    }
}

/// Writes a length-prefixed header at the start of a stream, and the stream's first
/// bytes (may be empty) in the same write, so that they travel in one tunnel frame.
pub async fn write_header<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
    first_bytes: &[u8],
) -> Result<()> {
    let bytes = encode(msg)?;
    let len = u32::try_from(bytes.len()).map_err(|_| Error::protocol("header too large"))?;
    let mut buf = Vec::with_capacity(4 + bytes.len() + first_bytes.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&bytes);
    buf.extend_from_slice(first_bytes);
    w.write_all(&buf)
        .await
        .map_err(|e| Error::io("stream header", e))
}

/// Reads a length-prefixed header; reads nothing past it.
pub async fn read_header<R: AsyncRead + Unpin, T: DeserializeOwned>(r: &mut R) -> Result<T> {
    let len = r
        .read_u32()
        .await
        .map_err(|e| Error::io("stream header", e))? as usize;
    if len > MAX_HEADER {
        return Err(Error::protocol(format!(
            "stream header of {len} bytes exceeds {MAX_HEADER}"
        )));
    }
    let mut buf = vec![0; len];
    r.read_exact(&mut buf)
        .await
        .map_err(|e| Error::io("stream header", e))?;
    decode(&buf)
}
