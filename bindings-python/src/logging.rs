//! Bridges Rust `tracing` events into Python's `logging` (logger "burrow").

use pyo3::prelude::*;
use std::sync::OnceLock;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{filter::LevelFilter, reload, Layer, Registry};

static RELOAD: OnceLock<reload::Handle<LevelFilter, Registry>> = OnceLock::new();

/// Sends each event to `logging.getLogger("burrow")` at the matching level.
struct PythonLogger;

#[derive(Default)]
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            self.0.push_str(&format!(" {}={:?}", field.name(), value));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            self.0.push_str(&format!(" {}={}", field.name(), value));
        }
    }
}

impl<S: Subscriber> Layer<S> for PythonLogger {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut msg = Message::default();
        event.record(&mut msg);
        let level = match *event.metadata().level() {
            Level::ERROR => 40,
            Level::WARN => 30,
            Level::INFO => 20,
            _ => 10,
        };
        Python::attach(|py| {
            if let Ok(logging) = py.import("logging") {
                if let Ok(logger) = logging.call_method1("getLogger", ("burrow",)) {
                    let _ = logger.call_method1("log", (level, msg.0));
                }
            }
        });
    }
}

/// Sets the level of Rust events forwarded to Python logging ("ERROR" ... "TRACE", or "OFF").
#[pyfunction]
pub fn set_log_level(level: &str) -> PyResult<()> {
    let filter = match level.to_ascii_uppercase().as_str() {
        "OFF" => LevelFilter::OFF,
        "ERROR" | "CRITICAL" => LevelFilter::ERROR,
        "WARN" | "WARNING" => LevelFilter::WARN,
        "INFO" => LevelFilter::INFO,
        "DEBUG" => LevelFilter::DEBUG,
        "TRACE" => LevelFilter::TRACE,
        other => {
            return Err(super::errors::option(format!(
                "log level {other:?} is not one of OFF, ERROR, WARNING, INFO, DEBUG, TRACE"
            )))
        }
    };
    if let Some(handle) = RELOAD.get() {
        return handle
            .reload(filter)
            .map_err(|e| super::errors::internal(format!("log level: {e}")));
    }
    let (layer, handle) = reload::Layer::new(filter);
    let subscriber = Registry::default().with(layer).with(PythonLogger);
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        let _ = RELOAD.set(handle);
    }
    Ok(())
}
