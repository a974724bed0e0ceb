//! Copying bytes both ways between two connections, half-close included.

use crate::error::{Error, ErrorCode, Result};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Size of each direction's copy buffer.
const BUF: usize = 64 * 1024;

/// Copies `a`→`b` and `b`→`a` until both directions finish; a shutdown on one side
/// is passed to the other as a write shutdown.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, BUF, BUF)
        .await
        .map_err(|e| Error::io("relay", e))
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
