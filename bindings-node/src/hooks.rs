//! ngrok's session settings that are not options: client info, heartbeat timing and
//! the `handle*` callbacks, collected by `SessionBuilder` and applied to a core builder.
//!
//! Callbacks are weak threadsafe functions: they never keep the process alive, and a
//! call made while Node is exiting is dropped by napi rather than run.

use burrow_core::SessionBuilder;
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// A JavaScript callback callable from any thread; `Args` go in, `Ret` comes back.
type Callback<Args, Ret> = Arc<ThreadsafeFunction<Args, Ret, Args, Status, false, true>>;

/// The disconnection callback: `(addr, error)` in, keep reconnecting (or nothing) out.
type DisconnectCallback = Callback<FnArgs<(String, String)>, Option<bool>>;

/// How long a disconnection hook may take to answer before the session reconnects anyway.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// An update request, as ngrok's `UpdateRequest`.
#[napi(object)]
pub struct UpdateRequest {
    /// The version asked for.
    pub version: String,
    /// Whether a new major version is acceptable.
    pub permit_major_version: bool,
}

/// What `SessionBuilder` collected besides options.
#[napi]
#[derive(Default)]
pub struct NativeHooks {
    client_info: Vec<(String, String, Option<String>)>,
    heartbeat_interval: Option<Duration>,
    heartbeat_tolerance: Option<Duration>,
    heartbeat: Option<Callback<u32, ()>>,
    disconnection: Option<DisconnectCallback>,
    stop: Option<Callback<Option<String>, ()>>,
    restart: Option<Callback<(), ()>>,
    update: Option<Callback<UpdateRequest, ()>>,
}

fn seconds(what: &str, secs: f64) -> Result<Duration> {
    if secs > 0.0 && secs.is_finite() {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(napi::Error::from_reason(format!(
            "{what} must be a positive number of seconds, not {secs}"
        )))
    }
}

#[napi]
impl NativeHooks {
    /// Nothing set yet.
    #[napi(constructor)]
    pub fn new() -> Self {
        Self::default()
    }

    /// ngrok's `clientInfo(type, version, comments?)`.
    #[napi]
    pub fn client_info(&mut self, client_type: String, version: String, comments: Option<String>) {
        self.client_info.push((client_type, version, comments));
    }

    /// Seconds between heartbeats.
    #[napi]
    pub fn heartbeat_interval(&mut self, seconds_: f64) -> Result<()> {
        self.heartbeat_interval = Some(seconds("heartbeatInterval", seconds_)?);
        Ok(())
    }

    /// Seconds a heartbeat may go unanswered.
    #[napi]
    pub fn heartbeat_tolerance(&mut self, seconds_: f64) -> Result<()> {
        self.heartbeat_tolerance = Some(seconds("heartbeatTolerance", seconds_)?);
        Ok(())
    }

    /// `handler(latencyMs)` after each answered heartbeat.
    #[napi(ts_args_type = "handler: (latency: number) => void")]
    pub fn handle_heartbeat(&mut self, handler: Function<'_, u32, ()>) -> Result<()> {
        self.heartbeat = Some(Arc::new(weak(&handler)?));
        Ok(())
    }

    /// `handler(addr, error)` on each tunnel loss or failed reconnect; returning false
    /// stops reconnecting.
    #[napi(ts_args_type = "handler: (addr: string, error: string) => boolean | void")]
    pub fn handle_disconnection(
        &mut self,
        handler: Function<'_, FnArgs<(String, String)>, Option<bool>>,
    ) -> Result<()> {
        self.disconnection = Some(Arc::new(weak(&handler)?));
        Ok(())
    }

    /// `handler(reason)` when the edge asks the session to stop (instead of closing it);
    /// `reason` is the operator's, or `null` (ngrok's handlers take no argument: fine).
    #[napi(ts_args_type = "handler: (reason?: string | null) => void")]
    pub fn handle_stop_command(&mut self, handler: Function<'_, Option<String>, ()>) -> Result<()> {
        self.stop = Some(Arc::new(weak(&handler)?));
        Ok(())
    }

    /// `handler()` when the edge asks for a restart (instead of reconnecting).
    #[napi(ts_args_type = "handler: () => void")]
    pub fn handle_restart_command(&mut self, handler: Function<'_, (), ()>) -> Result<()> {
        self.restart = Some(Arc::new(weak(&handler)?));
        Ok(())
    }

    /// `handler(update)` when the edge asks for an update (refused without one).
    #[napi(ts_args_type = "handler: (update: UpdateRequest) => void")]
    pub fn handle_update_command(
        &mut self,
        handler: Function<'_, UpdateRequest, ()>,
    ) -> Result<()> {
        self.update = Some(Arc::new(weak(&handler)?));
        Ok(())
    }
}

fn weak<Args: JsValuesTupleIntoVec + 'static, Ret: FromNapiValue + 'static>(
    f: &Function<'_, Args, Ret>,
) -> Result<ThreadsafeFunction<Args, Ret, Args, Status, false, true>> {
    f.build_threadsafe_function()
        .weak::<true>()
        .callee_handled::<false>()
        .build()
}

impl NativeHooks {
    /// Applies everything to `b` (the callbacks are shared, so `self` stays usable).
    pub fn apply(&self, mut b: SessionBuilder) -> SessionBuilder {
        for (client_type, version, comments) in &self.client_info {
            b = b.client_info(client_type.clone(), version.clone(), comments.clone());
        }
        if let Some(d) = self.heartbeat_interval {
            b = b.heartbeat_interval(d);
        }
        if let Some(d) = self.heartbeat_tolerance {
            b = b.heartbeat_tolerance(d);
        }
        if let Some(h) = self.heartbeat.clone() {
            b = b.handle_heartbeat(move |latency| {
                let ms = u32::try_from(latency.as_millis()).unwrap_or(u32::MAX);
                h.call(ms, ThreadsafeFunctionCallMode::NonBlocking);
            });
        }
        if let Some(h) = self.disconnection.clone() {
            // The core runs this on a blocking thread: wait for JavaScript's answer there.
            b = b.handle_disconnection(move |addr, error| {
                let (tx, rx) = mpsc::channel();
                let status = h.call_with_return_value(
                    FnArgs::from((addr.to_owned(), error.to_owned())),
                    ThreadsafeFunctionCallMode::NonBlocking,
                    move |answer, _env| {
                        let _ = tx.send(answer.ok().flatten().unwrap_or(true));
                        Ok(())
                    },
                );
                if status != Status::Ok {
                    return true;
                }
                rx.recv_timeout(ANSWER_WAIT).unwrap_or(true)
            });
        }
        if let Some(h) = self.stop.clone() {
            b = b.handle_stop_command(move |reason| {
                called(h.call(
                    reason.map(str::to_owned),
                    ThreadsafeFunctionCallMode::NonBlocking,
                ))
            });
        }
        if let Some(h) = self.restart.clone() {
            b = b.handle_restart_command(move || {
                called(h.call((), ThreadsafeFunctionCallMode::NonBlocking))
            });
        }
        if let Some(h) = self.update.clone() {
            b = b.handle_update_command(move |req| {
                let req = UpdateRequest {
                    version: req.version.clone(),
                    permit_major_version: req.permit_major_version,
                };
                called(h.call(req, ThreadsafeFunctionCallMode::NonBlocking))
            });
        }
        b
    }
}

/// A command hook's outcome for the edge: whether JavaScript got the call.
fn called(status: Status) -> std::result::Result<(), String> {
    if status == Status::Ok {
        Ok(())
    } else {
        Err(format!(
            "the JavaScript handler could not be called ({status})"
        ))
    }
}
