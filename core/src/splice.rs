//! Copying bytes both ways between two connections, half-close included.
//!
//! An idle proxied connection should cost next to nothing, so a pump owns no copy
//! buffer: it reads into a scratch buffer shared by every pump on the thread and
//! writes straight from it. Only bytes the writer cannot take at once (a slow peer)
//! are copied into a buffer of their own, freed as soon as they are written.

use crate::error::{Error, ErrorCode, Result};
use futures::future::poll_fn;
use std::cell::RefCell;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Most bytes one read takes (the scratch buffer's size).
const READ_SIZE: usize = 64 * 1024;
/// Reads one pump may do in one poll before it lets other tasks run.
const READS_PER_POLL: usize = 16;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Copies `a`→`b` and `b`→`a` until both directions finish; a shutdown on one side
/// is passed to the other as a write shutdown. Returns the bytes copied each way.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Pump::default();
    let mut b_to_a = Pump::default();
    poll_fn(|cx| {
        let forward = a_to_b.poll(cx, &mut *a, &mut *b)?;
        let backward = b_to_a.poll(cx, &mut *b, &mut *a)?;
        match (forward, backward) {
            (Poll::Ready(x), Poll::Ready(y)) => Poll::Ready(Ok((x, y))),
            _ => Poll::Pending,
        }
    })
    .await
    .map_err(|e| Error::io("relay", e))
}

/// One direction of a splice.
#[derive(Default)]
struct Pump {
    /// Bytes read but not yet taken by the writer, and how many of them were written.
    unsent: Option<(Box<[u8]>, usize)>,
    /// Bytes were written since the last flush.
    dirty: bool,
    /// The reader reached EOF.
    eof: bool,
    /// The writer was shut down.
    done: bool,
    total: u64,
}

impl Pump {
    /// Moves bytes from `r` to `w`; `Ready` once `r` ended and `w` is shut down.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<std::io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(self.total));
        }
        for _ in 0..READS_PER_POLL {
            if let Some((buf, pos)) = &mut self.unsent {
                while *pos < buf.len() {
                    *pos += ready!(write_some(cx, w, &buf[*pos..]))?;
                }
                self.unsent = None;
            }
            if self.eof {
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(self.total));
            }
            match self.read_and_write(cx, r, w) {
                Poll::Ready(result) => result?,
                Poll::Pending => {
                    // Nothing more to read for now: push out what was written.
                    if self.dirty {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.dirty = false;
                    }
                    return Poll::Pending;
                }
            }
        }
        // Busy: let other tasks run, then come back.
        if self.dirty {
            if let Poll::Ready(flushed) = Pin::new(&mut *w).poll_flush(cx) {
                flushed?;
                self.dirty = false;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// One read into the thread's scratch buffer, written on at once as far as the
    /// writer takes it; the rest is kept in `unsent`.
    fn read_and_write<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<std::io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        SCRATCH.with(|cell| {
            // A pump polled from inside another's read (never expected) gets its own buffer.
            let mut own = Vec::new();
            let mut shared = cell.try_borrow_mut();
            let scratch = match shared.as_deref_mut() {
                Ok(s) => s,
                Err(_) => &mut own,
            };
            if scratch.len() < READ_SIZE {
                scratch.resize(READ_SIZE, 0);
            }
            let mut read = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut *r).poll_read(cx, &mut read))?;
            let data = read.filled();
            if data.is_empty() {
                self.eof = true;
                return Poll::Ready(Ok(()));
            }
            self.total += data.len() as u64;
            self.dirty = true;
            let mut pos = 0;
            while pos < data.len() {
                match write_some(cx, w, &data[pos..]) {
                    Poll::Ready(Ok(n)) => pos += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.unsent = Some((data[pos..].into(), 0));
                        break;
                    }
                }
            }
            Poll::Ready(Ok(()))
        })
    }
}

/// One `poll_write`, with a writer that takes nothing treated as an error.
fn write_some<W: AsyncWrite + Unpin + ?Sized>(
    cx: &mut Context<'_>,
    w: &mut W,
    data: &[u8],
) -> Poll<std::io::Result<usize>> {
    match ready!(Pin::new(w).poll_write(cx, data))? {
        0 => Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
        n => Poll::Ready(Ok(n)),
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

    /// A pattern that makes any reordering, loss or duplication visible.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_directions_arrive_whole_through_small_pipes() {
        // 1 KiB pipes make nearly every write partial, so bytes wait in `unsent`.
        let (mut a, a_peer) = tokio::io::duplex(1024);
        let (mut b, b_peer) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move { splice(&mut a, &mut b).await });
        let sent = pattern(3 * 1024 * 1024 + 17);
        let (mut a_read, mut a_write) = tokio::io::split(a_peer);
        let (mut b_read, mut b_write) = tokio::io::split(b_peer);
        // Each peer writes and reads at the same time, or the small pipes would fill.
        let write_a = async {
            a_write.write_all(&sent).await.unwrap();
            a_write.shutdown().await.unwrap();
        };
        let write_b = async {
            b_write.write_all(&sent[..1000]).await.unwrap();
            b_write.shutdown().await.unwrap();
        };
        let mut there = Vec::new();
        let mut back = Vec::new();
        let read_b = b_read.read_to_end(&mut there);
        let read_a = a_read.read_to_end(&mut back);
        let (_, _, rb, ra) = tokio::join!(write_a, write_b, read_b, read_a);
        rb.unwrap();
        ra.unwrap();
        assert!(there == sent, "a→b differs");
        assert!(back == sent[..1000], "b→a differs");
        let (ab, ba) = relay.await.unwrap().unwrap();
        assert_eq!((ab, ba), (sent.len() as u64, 1000));
    }

    #[tokio::test]
    async fn half_close_keeps_the_other_direction_open() {
        let (mut a, mut a_peer) = tokio::io::duplex(64);
        let (mut b, mut b_peer) = tokio::io::duplex(64);
        let relay = tokio::spawn(async move { splice(&mut a, &mut b).await });
        a_peer.write_all(b"request").await.unwrap();
        a_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        b_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        // The reply still flows after the client's half-close.
        b_peer.write_all(b"reply after EOF").await.unwrap();
        b_peer.shutdown().await.unwrap();
        let mut reply = Vec::new();
        a_peer.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply after EOF");
        assert_eq!(relay.await.unwrap().unwrap(), (7, 15));
    }
}
