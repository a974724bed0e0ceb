//! ngrok's session settings that are not endpoint options: client info, heartbeat
//! timing and the `handle_*` callbacks, applied to a core `SessionBuilder`.
//!
//! The core runs hooks on a blocking thread; here each one enters Python only through
//! the interpreter gate (`interpreter::attach`), so no callback runs, and no thread
//! touches Python, once the interpreter is exiting.

use burrow_core::SessionBuilder;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::time::Duration;

/// What `SessionBuilder` collected besides options (see `burrow.SessionBuilder`).
#[derive(Default)]
pub struct SessionExtras {
    client_info: Vec<(String, String, Option<String>)>,
    heartbeat_interval: Option<Duration>,
    heartbeat_tolerance: Option<Duration>,
    on_heartbeat: Option<Py<PyAny>>,
    on_disconnection: Option<Py<PyAny>>,
    on_stop: Option<Py<PyAny>>,
    on_restart: Option<Py<PyAny>>,
    on_update: Option<Py<PyAny>>,
}

fn seconds(d: &Bound<'_, PyDict>, key: &str) -> PyResult<Option<Duration>> {
    match d.get_item(key)? {
        Some(v) if !v.is_none() => {
            let secs: f64 = v.extract()?;
            if !(secs > 0.0 && secs.is_finite()) {
                return Err(crate::errors::option(&format!(
                    "{key} must be a positive number of seconds, not {secs}"
                )));
            }
            Ok(Some(Duration::from_secs_f64(secs)))
        }
        _ => Ok(None),
    }
}

fn callable(d: &Bound<'_, PyDict>, key: &str) -> PyResult<Option<Py<PyAny>>> {
    match d.get_item(key)? {
        Some(v) if !v.is_none() => {
            if !v.is_callable() {
                return Err(crate::errors::option(&format!("{key} must be callable")));
            }
            Ok(Some(v.unbind()))
        }
        _ => Ok(None),
    }
}

impl SessionExtras {
    /// Reads the extras dict built by the Python `SessionBuilder`.
    pub fn from_dict(d: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let Some(d) = d else {
            return Ok(Self::default());
        };
        Ok(SessionExtras {
            client_info: match d.get_item("client_info")? {
                Some(v) if !v.is_none() => v.extract()?,
                _ => Vec::new(),
            },
            heartbeat_interval: seconds(d, "heartbeat_interval")?,
            heartbeat_tolerance: seconds(d, "heartbeat_tolerance")?,
            on_heartbeat: callable(d, "handle_heartbeat")?,
            on_disconnection: callable(d, "handle_disconnection")?,
            on_stop: callable(d, "handle_stop_command")?,
            on_restart: callable(d, "handle_restart_command")?,
            on_update: callable(d, "handle_update_command")?,
        })
    }

    /// Applies everything to `b`.
    pub fn apply(self, mut b: SessionBuilder) -> SessionBuilder {
        for (client_type, version, comments) in self.client_info {
            b = b.client_info(client_type, version, comments);
        }
        if let Some(d) = self.heartbeat_interval {
            b = b.heartbeat_interval(d);
        }
        if let Some(d) = self.heartbeat_tolerance {
            b = b.heartbeat_tolerance(d);
        }
        if let Some(h) = self.on_heartbeat {
            // ngrok passes the latency in whole milliseconds.
            b = b.handle_heartbeat(move |latency| {
                let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
                let _ = call(&h, |py, h| h.call1(py, (ms,)));
            });
        }
        if let Some(h) = self.on_disconnection {
            // Raising (or returning False) stops reconnecting, as in ngrok.
            b = b.handle_disconnection(move |addr, error| {
                call(&h, |py, h| {
                    let out = h.call1(py, (addr, error))?;
                    let out = out.bind(py);
                    Ok(out.is_none() || out.is_truthy()?)
                })
                .unwrap_or(false)
            });
        }
        if let Some(h) = self.on_stop {
            // ngrok's stop hook takes no argument; one that takes a positional
            // parameter gets the operator's reason (or None).
            let with_reason = takes_positional(&h);
            b = b.handle_stop_command(move |reason| {
                let reason = reason.map(str::to_owned);
                command(&h, |py, h| match with_reason {
                    true => h.call1(py, (reason,)),
                    false => h.call0(py),
                })
            });
        }
        if let Some(h) = self.on_restart {
            b = b.handle_restart_command(move || command(&h, |py, h| h.call0(py)));
        }
        if let Some(h) = self.on_update {
            b = b.handle_update_command(move |req| {
                let args = (req.version.clone(), req.permit_major_version);
                command(&h, |py, h| h.call1(py, args.clone()))
            });
        }
        b
    }
}

/// Calls `f` with the GIL if the interpreter is alive; a Python exception is printed
/// (as an unraisable error, like other callbacks from threads) and becomes `None`.
fn call<T>(hook: &Py<PyAny>, f: impl FnOnce(Python<'_>, &Py<PyAny>) -> PyResult<T>) -> Option<T> {
    crate::interpreter::attach(|py| match f(py, hook) {
        Ok(v) => Some(v),
        Err(e) => {
            e.write_unraisable(py, Some(hook.bind(py)));
            None
        }
    })
    .flatten()
}

/// A command hook's outcome for the edge: `Err` with the exception's text if it raised.
/// True when `hook` takes a positional argument (`inspect.signature`); false when
/// it takes none or its signature cannot be read (a builtin), as ngrok's hooks.
fn takes_positional(hook: &Py<PyAny>) -> bool {
    call(hook, |py, h| {
        let inspect = py.import("inspect")?;
        let Ok(signature) = inspect.call_method1("signature", (h.bind(py),)) else {
            return Ok(false);
        };
        let kinds = inspect.getattr("Parameter")?;
        let positional = [
            kinds.getattr("POSITIONAL_ONLY")?,
            kinds.getattr("POSITIONAL_OR_KEYWORD")?,
            kinds.getattr("VAR_POSITIONAL")?,
        ];
        for param in signature
            .getattr("parameters")?
            .call_method0("values")?
            .try_iter()?
        {
            let kind = param?.getattr("kind")?;
            for k in &positional {
                if kind.eq(k)? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    })
    .unwrap_or(false)
}

fn command(
    hook: &Py<PyAny>,
    f: impl FnOnce(Python<'_>, &Py<PyAny>) -> PyResult<Py<PyAny>>,
) -> Result<(), String> {
    crate::interpreter::attach(|py| f(py, hook).map(|_| ()).map_err(|e| e.to_string()))
        .unwrap_or_else(|| Err("the Python interpreter is shutting down".to_owned()))
}
