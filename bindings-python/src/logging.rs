//! Bridges Rust `tracing` events into Python's `logging` (logger "burrow").
//!
//! Events are formatted where they happen and handed to one delivery thread over a
//! bounded channel; only that thread takes the GIL. A tokio task that logs while it
//! holds a lock therefore never waits for the GIL, so a Python thread that holds the
//! GIL and waits for that lock cannot deadlock with it. When the channel is full
//! (Python logging far slower than the tunnel), events are dropped, never waited on.
//! At exit, records still queued are delivered before the interpreter gate closes.

use pyo3::prelude::*;
use std::fmt::Write as _;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{reload, Layer, Registry};

/// Events waiting for the delivery thread, at most.
const QUEUE: usize = 10_000;

/// How long the exit hook waits for queued records to be delivered, at most.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// The level filter of the bridge, set up by the first `set_log_level` call.
static BRIDGE: Mutex<Option<reload::Handle<Targets, Registry>>> = Mutex::new(None);

/// A sender to the delivery thread, for the exit hook's flush.
static QUEUED: Mutex<Option<SyncSender<Item>>> = Mutex::new(None);

/// What the delivery thread receives.
enum Item {
    /// A formatted event: Python logging level and message.
    Record(u8, String),
    /// Answer here once every earlier record is delivered.
    Flush(SyncSender<()>),
}

/// Sends each event, formatted, to the delivery thread.
struct ToChannel(SyncSender<Item>);

/// Collects an event's message and fields as `message key=value ...`.
#[derive(Default)]
struct Message {
    text: String,
    fields: String,
}

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.text, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={:?}", field.name(), value);
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.text.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), value);
        }
    }
}

impl<S: Subscriber> Layer<S> for ToChannel {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut msg = Message::default();
        event.record(&mut msg);
        let level = match *event.metadata().level() {
            Level::ERROR => 40,
            Level::WARN => 30,
            Level::INFO => 20,
            Level::DEBUG => 10,
            Level::TRACE => 5,
        };
        let _ = self.0.try_send(Item::Record(level, msg.text + &msg.fields));
    }
}

/// Delivers records to `logging.getLogger("burrow")` until the interpreter goes away.
fn deliver(items: Receiver<Item>) {
    while let Ok(item) = items.recv() {
        let (level, message) = match item {
            Item::Record(level, message) => (level, message),
            Item::Flush(done) => {
                let _ = done.try_send(());
                continue;
            }
        };
        let delivered = super::interpreter::attach(|py| {
            // A failing handler must not stop the bridge; logging reports its own errors.
            if let Ok(logger) = py
                .import("logging")
                .and_then(|logging| logging.call_method1("getLogger", ("burrow",)))
            {
                let _ = logger.call_method1("log", (level, message));
            }
        });
        if delivered.is_none() {
            return; // the interpreter is exiting
        }
    }
}

/// Delivers the records still queued (GIL released while waiting); `atexit` runs it
/// before the interpreter gate closes.
#[pyfunction]
fn flush(py: Python<'_>) {
    let queue = QUEUED.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (done_tx, done_rx) = sync_channel(1);
    if queue.is_some_and(|q| q.try_send(Item::Flush(done_tx)).is_ok()) {
        py.detach(move || {
            let _ = done_rx.recv_timeout(FLUSH_WAIT);
        });
    }
}

/// The filter for `level`: burrow's own events at `level`, other crates' at WARN at most.
fn targets(level: LevelFilter) -> Targets {
    Targets::new()
        .with_target("burrow_core", level)
        .with_target("_burrow", level)
        .with_default(level.min(LevelFilter::WARN))
}

/// Sets the level of Rust events forwarded to Python logging ("ERROR" ... "TRACE", or "OFF").
#[pyfunction]
pub fn set_log_level(py: Python<'_>, level: &str) -> PyResult<()> {
    let filter = match level.to_ascii_uppercase().as_str() {
        "OFF" | "NOTSET" => LevelFilter::OFF,
        "ERROR" | "CRITICAL" => LevelFilter::ERROR,
        "WARN" | "WARNING" => LevelFilter::WARN,
        "INFO" => LevelFilter::INFO,
        "DEBUG" => LevelFilter::DEBUG,
        "TRACE" => LevelFilter::TRACE,
        other => {
            return Err(super::errors::option(&format!(
                "log level {other:?} is not one of OFF, ERROR, WARNING, INFO, DEBUG, TRACE"
            )))
        }
    };
    let mut bridge = BRIDGE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(handle) = bridge.as_ref() {
        return handle
            .reload(targets(filter))
            .map_err(|e| super::errors::internal(&format!("log level: {e}")));
    }
    let (tx, rx) = sync_channel(QUEUE);
    let (layer, handle) = reload::Layer::new(targets(filter));
    let subscriber = Registry::default().with(layer).with(ToChannel(tx.clone()));
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        return Err(super::errors::internal(
            "another tracing subscriber is already installed in this process",
        ));
    }
    std::thread::Builder::new()
        .name("burrow-log".into())
        .spawn(move || deliver(rx))
        .map_err(|e| super::errors::internal(&format!("log thread: {e}")))?;
    // Registered after the interpreter gate's hook, so it runs before it (atexit is LIFO).
    py.import("atexit")?
        .call_method1("register", (wrap_pyfunction!(flush, py)?,))?;
    *QUEUED.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    *bridge = Some(handle);
    Ok(())
}
