//! Where the CLI's log lines go in console mode: only warnings and errors reach the
//! terminal. While the console is up they go to a bounded in-memory ring (shown in the
//! console's bottom pane, and printed to stderr once the terminal is restored), never to
//! the screen; before the console starts and after it ends, to stderr. Lines below a
//! warning are dropped: `--log stdout` gives every line, without the console.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// How many log lines the ring keeps; older ones are dropped.
const RING_LINES: usize = 200;

/// The `tracing` writer for console mode: warnings and errors to stderr while the
/// console is down and to the ring while it is up; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct LogSink {
    shared: Arc<Shared>,
}

/// What every clone of a [`LogSink`] shares.
#[derive(Default)]
struct Shared {
    /// Whether the console owns the terminal now.
    console_up: AtomicBool,
    /// The last warnings and errors, oldest first.
    lines: Mutex<VecDeque<String>>,
}

impl LogSink {
    /// Sends lines to the ring (`true`, the console is drawing) or to stderr (`false`).
    pub(crate) fn set_console_up(&self, up: bool) {
        self.shared.console_up.store(up, Ordering::SeqCst);
    }

    /// The last `n` lines in the ring, oldest first.
    pub(crate) fn last(&self, n: usize) -> Vec<String> {
        let lines = self.lock();
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// Takes every line out of the ring (to print them once the terminal is back).
    pub(crate) fn drain(&self) -> Vec<String> {
        self.lock().drain(..).collect()
    }

    /// Adds one line, dropping the oldest beyond [`RING_LINES`].
    fn push(&self, line: String) {
        let mut lines = self.lock();
        if lines.len() == RING_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The ring, even if a thread panicked while holding it (a log line is never worth a panic).
    fn lock(&self) -> MutexGuard<'_, VecDeque<String>> {
        self.shared
            .lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One event's writer, chosen by [`LogSink`] for that event.
pub(crate) enum SinkWriter {
    /// The console is down: straight to stderr.
    Stderr(std::io::Stderr),
    /// The console is up: buffered, and pushed to the ring as one line when dropped.
    Ring(LogSink, Vec<u8>),
    /// The event is below a warning: dropped.
    Discard,
}

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            SinkWriter::Stderr(e) => e.write(buf),
            SinkWriter::Ring(_, bytes) => {
                bytes.extend_from_slice(buf);
                Ok(buf.len())
            }
            SinkWriter::Discard => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            SinkWriter::Stderr(e) => e.flush(),
            _ => Ok(()),
        }
    }
}

impl Drop for SinkWriter {
    fn drop(&mut self) {
        if let SinkWriter::Ring(sink, bytes) = self {
            let text = String::from_utf8_lossy(bytes);
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                sink.push(line.to_owned());
            }
        }
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = SinkWriter;

    fn make_writer(&'a self) -> SinkWriter {
        if self.shared.console_up.load(Ordering::SeqCst) {
            SinkWriter::Ring(self.clone(), Vec::new())
        } else {
            SinkWriter::Stderr(std::io::stderr())
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> SinkWriter {
        if *meta.level() > Level::WARN {
            SinkWriter::Discard
        } else {
            self.make_writer()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_lines_only_while_the_console_is_up() {
        let sink = LogSink::default();
        sink.set_console_up(true);
        for i in 0..RING_LINES + 5 {
            let mut w = sink.make_writer();
            let _ = writeln!(w, "line {i}");
        }
        let last = sink.last(2);
        assert_eq!(
            last,
            vec![
                format!("line {}", RING_LINES + 3),
                format!("line {}", RING_LINES + 4)
            ]
        );
        assert_eq!(sink.drain().len(), RING_LINES);
        assert!(sink.last(1).is_empty());
        sink.set_console_up(false);
        assert!(matches!(sink.make_writer(), SinkWriter::Stderr(_)));
    }
}
