//! The one way a Rust thread enters Python, and the `atexit` hook that closes it.
//!
//! A thread the interpreter does not own (tokio workers, the log bridge) that takes the
//! GIL while Python finalizes can abort the process (`PyGILState_Release ... finalizing`)
//! or crash it. So such threads call Python only through [`attach`], which holds a read
//! lock for the whole visit; the `atexit` hook takes the write lock with the GIL
//! released (letting visits in progress finish) and closes the gate before finalization
//! starts. Afterwards [`attach`] does nothing; what it would have delivered is dropped.
//!
//! Awaitables are made by [`future_into_py`], which completes them through the gate.

use pyo3::prelude::*;
use pyo3::types::PyCFunction;
use pyo3::IntoPyObjectExt;
use std::future::Future;
use std::sync::{Mutex, RwLock};
use tokio::task::{AbortHandle, JoinError};

/// True until the interpreter starts exiting.
static OPEN: RwLock<bool> = RwLock::new(true);

/// Runs `f` with the GIL from a thread Python does not own, unless the interpreter is
/// exiting (then `None`, without touching Python). Not for threads that already hold the
/// GIL: while the exit hook waits, such a caller would wait for it in turn.
pub fn attach<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    let open = OPEN.read().unwrap_or_else(|p| p.into_inner());
    if !*open {
        return None;
    }
    // The read guard lives until `f` has returned and the GIL is released.
    let result = Python::try_attach(f);
    drop(open);
    result
}

/// Closes the gate: waits (GIL released) for threads inside Python, then stops new visits.
#[pyfunction]
fn close(py: Python<'_>) {
    py.detach(|| {
        *OPEN.write().unwrap_or_else(|p| p.into_inner()) = false;
    });
}

/// Registers [`close`] with `atexit` (it then runs before the interpreter finalizes).
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let hook = wrap_pyfunction!(close, m)?;
    m.py().import("atexit")?.call_method1("register", (hook,))?;
    Ok(())
}

/// An asyncio future (of the running loop) resolved with the output of `fut`, which runs
/// on the binding's tokio runtime. Cancelling the asyncio future aborts `fut`.
pub fn future_into_py<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let event_loop = pyo3_async_runtimes::get_running_loop(py)?;
    let py_fut = event_loop.call_method0("create_future")?;
    let rt = pyo3_async_runtimes::tokio::get_runtime();
    let task = rt.spawn(fut);
    let abort = task.abort_handle();
    py_fut.call_method1("add_done_callback", (abort_on_cancel(py, abort)?,))?;
    let target = (event_loop.unbind(), py_fut.clone().unbind());
    rt.spawn(async move {
        let outcome = task.await;
        // The GIL is not taken on a tokio worker: a waiting worker would stall other tasks.
        let settle = tokio::task::spawn_blocking(move || {
            attach(|py| deliver(py, target, outcome));
        });
        let _ = settle.await;
    });
    Ok(py_fut)
}

/// A done-callback that aborts the Rust task when the asyncio future was cancelled.
fn abort_on_cancel(py: Python<'_>, abort: AbortHandle) -> PyResult<Bound<'_, PyCFunction>> {
    PyCFunction::new_closure(py, None, None, move |args, _kwargs| -> PyResult<()> {
        let fut = args.get_item(0)?;
        if fut.call_method0("cancelled")?.is_truthy()? {
            abort.abort();
        }
        Ok(())
    })
}

/// Hands the task's outcome to the event loop's thread, which resolves the future
/// unless it is already done (cancelled). A closed loop has no one left to tell.
fn deliver<T>(
    py: Python<'_>,
    (event_loop, py_fut): (Py<PyAny>, Py<PyAny>),
    outcome: Result<PyResult<T>, JoinError>,
) where
    T: for<'a> IntoPyObject<'a>,
{
    if outcome.as_ref().is_err_and(JoinError::is_cancelled) {
        return; // aborted because the future was cancelled: nothing to deliver
    }
    let result = match outcome {
        Ok(result) => result.and_then(|value| value.into_py_any(py)),
        Err(join) => Err(super::errors::internal(&format!(
            "background task failed: {join}"
        ))),
    };
    let result = Mutex::new(Some(result));
    let settle = PyCFunction::new_closure(py, None, None, move |args, _kwargs| -> PyResult<()> {
        let fut = args.get_item(0)?;
        let taken = result.lock().unwrap_or_else(|p| p.into_inner()).take();
        match taken {
            Some(_) if fut.call_method0("done")?.is_truthy()? => Ok(()),
            Some(Ok(value)) => fut.call_method1("set_result", (value,)).map(drop),
            Some(Err(err)) => fut
                .call_method1("set_exception", (err.into_value(args.py()),))
                .map(drop),
            None => Ok(()),
        }
    });
    if let Ok(settle) = settle {
        // Fails only when the loop is closed: the awaiting code is gone.
        let _ = event_loop.call_method1(py, "call_soon_threadsafe", (settle, py_fut));
    }
}
