//! The multiplexer seam: many streams over one tunnel connection.
//!
//! yamux needs its `Connection` polled all the time, and opening a stream needs
//! `&mut Connection`, so one driver task owns it. The rest of burrow talks to the
//! driver through [`MuxHandle`] (open a stream) and an inbound stream receiver.

use crate::error::{Error, ErrorCode, Result};
use futures::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;

/// Most streams one side may open on a tunnel connection (see [`start`]).
///
/// yamux kills the whole connection when a peer opens more than its
/// `max_num_streams`, so openers wait on a semaphore below this ceiling.
pub const MAX_STREAMS: usize = 32_704;
const YAMUX_MAX_STREAMS: usize = MAX_STREAMS + 64;
/// yamux needs 256 KiB of connection window per possible stream; this caps the
/// memory a tunnel connection may buffer, it is not allocated up front.
const CONNECTION_WINDOW: usize = YAMUX_MAX_STREAMS * 256 * 1024;
/// Larger frames than yamux's default 16 KiB: fewer syscalls for bulk data.
const SPLIT_SEND_SIZE: usize = 64 * 1024;
/// Room for at least one whole frame (12-byte header + body) between yamux and TLS;
/// smaller frames produced together share it (see [`Coalesced`]).
const WRITE_BUFFER: usize = SPLIT_SEND_SIZE + 4 * 1024;
/// Most bytes yamux may write in a row before it must look at what the peer sent
/// (see [`Coalesced::poll_write`]).
const WRITE_BURST: usize = 1024 * 1024;
/// Read buffer under the tunnel's TLS: rustls reads 4 KiB at a time, this makes one
/// syscall of sixteen of those during bulk transfers.
pub const READ_BUFFER: usize = 64 * 1024;

/// Which end of the tunnel this is.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    /// The agent, which dialled.
    Agent,
    /// The edge, which accepted.
    Edge,
}

/// One multiplexed stream, readable and writable with tokio's traits.
///
/// yamux reports a stream the peer reset, or one whose tunnel connection died, as a
/// plain end of file. Here that end is an error (`ConnectionReset`), so that a relay
/// can pass an abnormal end on as abnormal instead of as a clean close.
pub struct MuxStream {
    inner: Compat<yamux::Stream>,
    /// This side shut down its writing half (sent FIN).
    shut_down: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

impl MuxStream {
    fn new(stream: yamux::Stream, permit: Option<OwnedSemaphorePermit>) -> Self {
        MuxStream {
            inner: stream.compat(),
            shut_down: false,
            _permit: permit,
        }
    }

    /// True when the end of file just read was not the peer's clean half-close.
    ///
    /// A FIN from the peer leaves the stream half-open (`RecvClosed`) while this side has
    /// not shut down; a reset or a dead connection closes it entirely. Once this side has
    /// shut down, yamux shows a FIN and a reset alike (both close the stream), so the end
    /// counts as clean: a client that half-closed and then lost the agent is the one case
    /// where truncation stays hidden.
    fn ended_abnormally(&self) -> bool {
        self.inner.get_ref().is_closed() && !self.shut_down
    }
}

/// Most bytes one read of a stream zeroes in a caller's uninitialized buffer.
const READ_CHUNK: usize = 32 * 1024;

impl AsyncRead for MuxStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        if buf.initialized().len() == buf.capacity() {
            std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        } else {
            // The compat layer zeroes all of an uninitialized buffer before it copies
            // into it; callers such as hyper hand over up to 400 KiB of fresh capacity
            // for a few KiB of data. Zero (and fill) one chunk at most.
            let n = buf.remaining().min(READ_CHUNK);
            let mut chunk = ReadBuf::new(buf.initialize_unfilled_to(n));
            std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut chunk))?;
            let filled = chunk.filled().len();
            buf.advance(filled);
        }
        if buf.filled().len() == before && buf.remaining() > 0 && self.ended_abnormally() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the tunnel stream was reset or its tunnel connection ended",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.shut_down = true;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type OpenReply = oneshot::Sender<Result<yamux::Stream, yamux::ConnectionError>>;

/// When bytes last arrived on a tunnel connection.
struct Heard {
    start: Instant,
    /// Milliseconds after `start`.
    at: AtomicU64,
}

impl Heard {
    fn new() -> Self {
        Heard {
            start: Instant::now(),
            at: AtomicU64::new(0),
        }
    }

    fn now(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.at.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.at.load(Ordering::Relaxed))
    }
}

/// Opens streams on a tunnel connection; cheap to clone.
#[derive(Clone)]
pub struct MuxHandle {
    open_tx: mpsc::Sender<OpenReply>,
    heard: Arc<Heard>,
    permits: Arc<Semaphore>,
    closed: CancellationToken,
}

impl MuxHandle {
    /// Opens a new stream, waiting while the connection is at its stream limit.
    pub async fn open(&self) -> Result<MuxStream> {
        let closed = || Error::new(ErrorCode::Closed, "tunnel connection closed");
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        let (tx, rx) = oneshot::channel();
        self.open_tx.send(tx).await.map_err(|_| closed())?;
        let stream = rx
            .await
            .map_err(|_| closed())?
            .map_err(|e| Error::new(ErrorCode::Closed, format!("cannot open stream: {e}")))?;
        Ok(MuxStream::new(stream, Some(permit)))
    }

    /// When bytes last arrived from the peer (or when the connection started).
    ///
    /// Any frame proves the peer and the tunnel alive: under a heavy load the peer's
    /// heartbeat may wait behind the data of thousands of streams, while data arrives.
    pub fn last_heard(&self) -> Instant {
        self.heard.last()
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Resolves when the connection has ended.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }
}

/// A running multiplexed connection.
pub struct Mux {
    /// Opens streams.
    pub handle: MuxHandle,
    /// Streams the peer opened.
    pub inbound: mpsc::UnboundedReceiver<MuxStream>,
}

/// Starts the driver for `io` and returns its handle and inbound streams.
///
/// At most `max_open` streams opened by this side are alive at once (capped at
/// [`MAX_STREAMS`]); further `open` calls wait.
///
/// The driver stops when the connection fails or `stop` is cancelled (streams still
/// open need it, so dropping the handles does not stop it); then `handle.closed()` resolves.
pub fn start<T>(io: T, side: Side, stop: CancellationToken, max_open: usize) -> Mux
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut cfg = yamux::Config::default();
    cfg.set_max_connection_receive_window(Some(CONNECTION_WINDOW));
    cfg.set_max_num_streams(YAMUX_MAX_STREAMS);
    cfg.set_split_send_size(SPLIT_SEND_SIZE);
    let mode = match side {
        Side::Agent => yamux::Mode::Client,
        Side::Edge => yamux::Mode::Server,
    };
    let io = Coalesced {
        inner: Arc::new(Mutex::new(BufWriter::with_capacity(WRITE_BUFFER, io))),
        written_since_read: Arc::new(AtomicUsize::new(0)),
        heard: Arc::new(Heard::new()),
    };
    let heard = io.heard.clone();
    let flusher = io.inner.clone();
    let burst = io.written_since_read.clone();
    let conn = yamux::Connection::new(io.compat(), cfg, mode);
    let (open_tx, open_rx) = mpsc::channel(64);
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let closed = CancellationToken::new();
    tokio::spawn(drive(
        conn,
        flusher,
        burst,
        open_rx,
        in_tx,
        stop,
        closed.clone(),
    ));
    Mux {
        handle: MuxHandle {
            open_tx,
            heard,
            permits: Arc::new(Semaphore::new(max_open.clamp(1, MAX_STREAMS))),
            closed,
        },
        inbound: in_rx,
    }
}

/// The tunnel connection's I/O as yamux sees it.
///
/// yamux writes a frame's header and body separately and flushes after every frame.
/// Here writes only fill a buffer and yamux's flushes do nothing; the driver flushes
/// once yamux has no more work, so the frames of one busy moment (a header and its
/// body, a stream's last data and its FIN, frames of several streams) leave as one
/// batch of TLS records in one syscall. A full buffer is written out at once.
struct Coalesced<T> {
    inner: Shared<T>,
    /// When bytes last arrived.
    heard: Arc<Heard>,
    /// Bytes taken since yamux last tried to read, or since the driver's current poll
    /// began (the driver resets it).
    written_since_read: Arc<AtomicUsize>,
}

/// The buffered tunnel I/O, shared by yamux (through [`Coalesced`]) and the driver.
type Shared<T> = Arc<Mutex<BufWriter<T>>>;

/// Locks the shared I/O; only the driver task ever does, so it is never contended.
fn lock<T>(io: &Mutex<BufWriter<T>>) -> MutexGuard<'_, BufWriter<T>> {
    // A panic cannot leave the buffer in a state worse than a failed write would.
    io.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.written_since_read.store(0, Ordering::Relaxed);
        let before = buf.filled().len();
        let result = Pin::new(&mut *lock(&self.inner)).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.now();
        }
        result
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    /// yamux writes for as long as streams have frames queued, and reads only then. With
    /// a long backlog (thousands of streams sending at once on a busy machine) the
    /// peer's frames, its heartbeats among them, would wait unread until the backlog is
    /// gone, and the session would end for silence. So after [`WRITE_BURST`] bytes this
    /// refuses to write (waking the task at once) until yamux has tried to read or the
    /// driver's next poll begins; yamux reads first. The next poll writes again even
    /// unread, so a frame yamux must send before it reads (a pong) is never held up.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.written_since_read.load(Ordering::Relaxed) >= WRITE_BURST {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = std::task::ready!(Pin::new(&mut *lock(&self.inner)).poll_write(cx, buf))?;
        self.written_since_read.fetch_add(n, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // Deferred to the driver (see `flush_when_idle`).
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *lock(&self.inner)).poll_shutdown(cx)
    }
}

/// Writes out what yamux buffered; called whenever yamux has run out of work.
fn flush_when_idle<T: AsyncWrite + Unpin>(
    io: &Mutex<BufWriter<T>>,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<()>> {
    Pin::new(&mut *lock(io)).poll_flush(cx)
}

async fn drive<T, IO>(
    mut conn: yamux::Connection<T>,
    flusher: Shared<IO>,
    burst: Arc<AtomicUsize>,
    mut open_rx: mpsc::Receiver<OpenReply>,
    in_tx: mpsc::UnboundedSender<MuxStream>,
    stop: CancellationToken,
    closed: CancellationToken,
) where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin,
    IO: AsyncWrite + Unpin,
{
    let mut pending: Option<OpenReply> = None;
    let mut openers_gone = false;
    let run = poll_fn(|cx| {
        // Each poll may write (see `Coalesced::poll_write`).
        burst.store(0, Ordering::Relaxed);
        // What the last poll left buffered goes out first, while this poll's I/O budget
        // is fresh: a poll that ends because reading used the budget up cannot flush,
        // and under a steady inbound stream every poll ends that way, so small frames
        // (heartbeats, window updates) would wait for the buffer to fill.
        if let Poll::Ready(Err(e)) = flush_when_idle(&flusher, cx) {
            return Poll::Ready(Err(yamux::ConnectionError::Io(e)));
        }
        loop {
            if pending.is_none() && !openers_gone {
                match open_rx.poll_recv(cx) {
                    Poll::Ready(Some(reply)) => pending = Some(reply),
                    Poll::Ready(None) => openers_gone = true,
                    Poll::Pending => {}
                }
            }
            if pending.is_some() {
                if let Poll::Ready(result) = conn.poll_new_outbound(cx) {
                    if let Some(reply) = pending.take() {
                        let _ = reply.send(result);
                    }
                    continue;
                }
            }
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    // A dropped receiver simply drops (resets) unwanted streams.
                    let _ = in_tx.send(MuxStream::new(stream, None));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    // Nothing more to send for now: the frames written so far leave together.
                    // A pending flush (full socket) wakes this task when it can go on.
                    if let Poll::Ready(Err(e)) = flush_when_idle(&flusher, cx) {
                        return Poll::Ready(Err(yamux::ConnectionError::Io(e)));
                    }
                    return Poll::Pending;
                }
            }
        }
    });
    let result = tokio::select! {
        r = run => r,
        _ = stop.cancelled() => Ok(()),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "tunnel connection ended");
    }
    closed.cancel();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        poll_fn(|cx| conn.poll_close(cx)),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes are only flushed when the driver runs out of work: a lone small write,
    /// many streams' writes at once and a bulk transfer must all arrive, none stranded
    /// in the buffer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn buffered_frames_always_reach_the_peer() {
        tokio::time::timeout(std::time::Duration::from_secs(30), exchange())
            .await
            .expect("frames stranded in the write buffer");
    }

    /// A stream the peer drops unclosed (a yamux reset) ends in `ConnectionReset`; one
    /// the peer shuts down ends in a clean end of file.
    #[tokio::test]
    async fn a_reset_stream_reads_as_an_error_and_a_closed_one_as_eof() {
        let (agent_io, edge_io) = tokio::io::duplex(64 * 1024);
        let stop = CancellationToken::new();
        let _stopped = stop.clone().drop_guard();
        let agent = start(agent_io, Side::Agent, stop.clone(), 8);
        let mut edge = start(edge_io, Side::Edge, stop.clone(), 8);

        let mut clean = agent.handle.open().await.unwrap();
        clean.write_all(b"all of it").await.unwrap();
        clean.shutdown().await.unwrap();
        let mut got = edge.inbound.recv().await.unwrap();
        let mut body = Vec::new();
        got.read_to_end(&mut body).await.unwrap();
        assert_eq!(body, b"all of it");

        let mut cut = agent.handle.open().await.unwrap();
        cut.write_all(b"part").await.unwrap();
        let mut got = edge.inbound.recv().await.unwrap();
        let mut part = [0u8; 4];
        got.read_exact(&mut part).await.unwrap();
        drop(cut);
        let err = got
            .read(&mut part)
            .await
            .expect_err("a reset is not an end of file");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    }

    /// Counts the bytes written between attempts to read.
    struct Probe {
        inner: tokio::io::DuplexStream,
        since_read: usize,
        max_between_reads: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AsyncRead for Probe {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            // An attempt counts: with nothing to read, there is nothing to wait for.
            self.since_read = 0;
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Probe {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
            self.since_read += n;
            self.max_between_reads
                .fetch_max(self.since_read, std::sync::atomic::Ordering::SeqCst);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// While many streams send at once, the peer's frames (its heartbeats) are still
    /// read: yamux alone writes its whole backlog first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_backlog_does_not_stop_reading() {
        let (agent_io, edge_io) = tokio::io::duplex(64 * 1024 * 1024);
        let max = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let probe = Probe {
            inner: edge_io,
            since_read: 0,
            max_between_reads: max.clone(),
        };
        let stop = CancellationToken::new();
        let mut agent = start(agent_io, Side::Agent, stop.clone(), 64);
        let mut edge = start(probe, Side::Edge, stop.clone(), 128);
        // The agent talks all the time, and the edge reads what it says.
        let mut chatter = agent.handle.open().await.unwrap();
        let talking = tokio::spawn(async move {
            let chunk = vec![1u8; 4 * 1024];
            while chatter.write_all(&chunk).await.is_ok() {}
        });
        let listening = tokio::spawn(async move {
            while let Some(mut s) = edge.inbound.recv().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        // The edge queues 32 MiB on 128 streams at once; the agent drains them.
        let mut writers = Vec::new();
        for _ in 0..128 {
            let mut s = edge.handle.open().await.unwrap();
            writers.push(tokio::spawn(async move {
                s.write_all(&vec![2u8; 256 * 1024]).await.unwrap();
                s.shutdown().await.unwrap();
            }));
        }
        for _ in 0..128 {
            let mut s = agent.inbound.recv().await.unwrap();
            let mut sink = Vec::new();
            s.read_to_end(&mut sink).await.unwrap();
            assert_eq!(sink.len(), 256 * 1024);
        }
        for w in writers {
            w.await.unwrap();
        }
        stop.cancel();
        talking.abort();
        listening.abort();
        let max = max.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            max <= 2 * 1024 * 1024,
            "{max} bytes were written without reading the peer's frames"
        );
    }

    async fn exchange() {
        let (agent_io, edge_io) = tokio::io::duplex(16 * 1024);
        let stop = CancellationToken::new();
        let agent = start(agent_io, Side::Agent, stop.clone(), 64);
        let mut edge = start(edge_io, Side::Edge, stop.clone(), 64);

        // One byte, then silence: only the idle flush can deliver it.
        let mut lone = agent.handle.open().await.unwrap();
        lone.write_all(b"x").await.unwrap();
        let mut got = edge.inbound.recv().await.unwrap();
        let mut one = [0u8; 1];
        got.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"x");

        // Many streams writing small messages at once, each echoed back.
        let echo = tokio::spawn(async move {
            while let Some(mut s) = edge.inbound.recv().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = s.shutdown().await;
                });
            }
        });
        let mut clients = tokio::task::JoinSet::new();
        for i in 0..40usize {
            let handle = agent.handle.clone();
            clients.spawn(async move {
                let s = handle.open().await.unwrap();
                // Stream 0 moves 2 MiB, the rest a few bytes each.
                let len = if i == 0 { 2 * 1024 * 1024 } else { 7 + i };
                let msg: Vec<u8> = (0..len).map(|j| (i * 7 + j) as u8).collect();
                let (mut r, mut w) = tokio::io::split(s);
                let send = msg.clone();
                let writer = tokio::spawn(async move {
                    w.write_all(&send).await.unwrap();
                    w.shutdown().await.unwrap();
                });
                let mut back = Vec::new();
                r.read_to_end(&mut back).await.unwrap();
                writer.await.unwrap();
                assert!(back == msg, "stream {i} came back different");
            });
        }
        while let Some(r) = clients.join_next().await {
            r.unwrap();
        }
        stop.cancel();
        echo.abort();
    }
}
