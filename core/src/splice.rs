//! Copying bytes both ways between two connections, half-close included.

use crate::error::{Error, ErrorCode, Result};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// First size of each direction's copy buffer: small, so idle connections stay cheap.
const MIN_BUF: usize = 4 * 1024;
/// The buffer doubles up to this size while reads keep filling it (bulk transfers).
const MAX_BUF: usize = 64 * 1024;

/// Copies `a`→`b` and `b`→`a` until both directions finish; a shutdown on one side
/// is passed to the other as a write shutdown.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    tokio::try_join!(
        pump(&mut a_read, &mut b_write),
        pump(&mut b_read, &mut a_write)
    )
    .map_err(|e| Error::io("relay", e))
}

/// Copies one direction until EOF, then shuts the writer down.
async fn pump<R, W>(reader: &mut R, writer: &mut W) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; MIN_BUF];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            writer.shutdown().await?;
            return Ok(total);
        }
        writer.write_all(&buf[..n]).await?;
        writer.flush().await?;
        total += n as u64;
        if n == buf.len() && buf.len() < MAX_BUF {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// Like [`splice`], but gives up when no byte moved either way for `idle`.
pub async fn splice_idle<A, B>(a: &mut A, b: &mut B, idle: Option<Duration>) -> Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let Some(idle) = idle else {
        return splice(a, b).await;
    };
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut tracked = Tracked {
        inner: a,
        start,
        last: last.clone(),
    };
    let watchdog = async {
        loop {
            let seen = start + Duration::from_millis(last.load(Ordering::Relaxed));
            if seen.elapsed() >= idle {
                return;
            }
            tokio::time::sleep_until(seen + idle).await;
        }
    };
    tokio::select! {
        r = splice(&mut tracked, b) => r,
        _ = watchdog => Err(Error::new(ErrorCode::Timeout, format!("idle for {idle:?}"))),
    }
}

/// Records when bytes last moved through the wrapped connection.
struct Tracked<'a, S: ?Sized> {
    inner: &'a mut S,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<S: ?Sized> Tracked<'_, S> {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Tracked<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Tracked<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_cut_and_busy_ones_are_not() {
        let (mut a, mut a_peer) = tokio::io::duplex(1024);
        let (mut b, mut b_peer) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move {
            splice_idle(&mut a, &mut b, Some(Duration::from_secs(10))).await
        });
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            a_peer.write_all(b"x").await.unwrap();
            let mut one = [0u8; 1];
            b_peer.read_exact(&mut one).await.unwrap();
        }
        let err = relay.await.unwrap().unwrap_err();
        assert_eq!(err.code(), ErrorCode::Timeout);
    }
}
