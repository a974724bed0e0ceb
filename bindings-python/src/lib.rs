//! The native half of the `burrow` Python package (`burrow._burrow`).
//!
//! Thin on purpose: options go to the core's one parser as they come (only Python types
//! are converted here); this module runs core calls on a tokio runtime with the GIL
//! released, and maps core errors to Python exceptions.

mod errors;
mod hooks;
mod interpreter;
mod logging;

use burrow_core::edge::Command;
use burrow_core::{
    Edge, EdgeConfig, Error as CoreError, ErrorCode, ForwardOptions, Forwarder, Listener,
    OptionValue, Scope, Session,
};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple,
};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

/// Runs `fut` to completion with the GIL released, checking for Ctrl-C every 100 ms.
fn block_on<T, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + 'static,
{
    let rt = pyo3_async_runtimes::tokio::get_runtime();
    let mut task = rt.spawn(fut);
    loop {
        let step = py.detach(|| {
            rt.block_on(async { tokio::time::timeout(Duration::from_millis(100), &mut task).await })
        });
        match step {
            Ok(Ok(result)) => return result,
            Ok(Err(join)) => {
                return Err(errors::internal(&format!("background task failed: {join}")));
            }
            Err(_elapsed) => {
                if let Err(interrupt) = py.check_signals() {
                    task.abort();
                    return Err(interrupt);
                }
            }
        }
    }
}

/// A Python value as an option value: language types only (bytes, `bytearray` and
/// `os.PathLike` file contents become bytes); what the value means is the core's business.
fn option_value(name: &str, v: &Bound<'_, PyAny>) -> PyResult<OptionValue> {
    if v.is_none() {
        return Ok(OptionValue::Null);
    }
    if let Ok(b) = v.cast::<PyBool>() {
        return Ok(OptionValue::Bool(b.is_true()));
    }
    if let Ok(i) = v.cast::<PyInt>() {
        return i
            .extract::<i64>()
            .map(OptionValue::Int)
            .map_err(|_| errors::option(&format!("option {name}: the number is out of range")));
    }
    if let Ok(f) = v.cast::<PyFloat>() {
        return Ok(OptionValue::Float(f.value()));
    }
    if v.cast::<PyString>().is_ok() {
        return Ok(OptionValue::Str(v.extract::<String>()?));
    }
    if let Ok(b) = v.cast::<PyBytes>() {
        return Ok(OptionValue::Bytes(b.as_bytes().to_vec()));
    }
    if let Ok(b) = v.cast::<PyByteArray>() {
        return Ok(OptionValue::Bytes(b.to_vec()));
    }
    if v.hasattr("__fspath__")? {
        let path: std::path::PathBuf = v.extract()?;
        return std::fs::read(&path).map(OptionValue::Bytes).map_err(|e| {
            errors::to_py(CoreError::new(
                ErrorCode::Io,
                format!("{name}: cannot read {}: {e}", path.display()),
            ))
        });
    }
    if let Ok(d) = v.cast::<PyDict>() {
        let mut entries = Vec::new();
        for (k, v) in d.iter() {
            let key: String = k.extract()?;
            entries.push((key.clone(), option_value(&key, &v)?));
        }
        return Ok(OptionValue::Map(entries));
    }
    if v.cast::<PyList>().is_ok() || v.cast::<PyTuple>().is_ok() {
        let items = v
            .try_iter()?
            .map(|item| option_value(name, &item?))
            .collect::<PyResult<Vec<_>>>()?;
        return Ok(OptionValue::List(items));
    }
    let type_name = v.get_type().name()?.to_string();
    Err(errors::option(&format!(
        "option {name}: a {type_name} is not accepted (use str, bytes, bytearray, pathlib.Path, int, bool or a list)"
    )))
}

/// Parses ngrok-style options with the core's one parser.
///
/// `scope` is `"forward"`, `"session"` or `"endpoint"`; `default_authtoken` is the
/// module's `set_auth_token` value.
#[pyfunction]
#[pyo3(signature = (options, scope, default_authtoken=None))]
fn parse_options(
    options: &Bound<'_, PyDict>,
    scope: &str,
    default_authtoken: Option<&str>,
) -> PyResult<NativeOptions> {
    let scope = match scope {
        "forward" => Scope::Forward,
        "session" => Scope::Session,
        "endpoint" => Scope::Endpoint,
        other => return Err(errors::internal(&format!("unknown option scope {other:?}"))),
    };
    let mut pairs = Vec::new();
    for (k, v) in options.iter() {
        let key: String = k.extract()?;
        let value = option_value(&key, &v)?;
        pairs.push((key, value));
    }
    let parsed = burrow_core::agent::options::parse(pairs, scope, default_authtoken)
        .map_err(errors::to_py)?;
    Ok(NativeOptions { parsed })
}

/// Options after the core parsed them: a session and an endpoint.
#[pyclass(module = "burrow._burrow", frozen)]
struct NativeOptions {
    parsed: ForwardOptions,
}

#[pymethods]
impl NativeOptions {
    /// Identifies the shared session these options may reuse.
    fn reuse_key(&self) -> String {
        self.parsed.session.reuse_key()
    }

    /// True when the caller asked for a session of its own.
    fn force_new_session(&self) -> bool {
        self.parsed.session.force_new_session
    }

    /// The parsed options as JSON, secrets left out (for tests and debugging).
    fn describe(&self) -> String {
        self.parsed.describe().to_string()
    }
}

/// Binds the parsed endpoint on `session` and forwards it to its upstream.
fn forward(
    session: Session,
    parsed: &ForwardOptions,
) -> impl Future<Output = PyResult<Forwarder>> + Send + 'static {
    let (spec, upstream) = (parsed.endpoint.clone(), parsed.upstream.clone());
    async move {
        session
            .forward(spec, &upstream)
            .await
            .map_err(errors::to_py)
    }
}

/// Binds the parsed endpoint on `session` with no forwarding target.
fn listen(
    session: Session,
    parsed: &ForwardOptions,
) -> impl Future<Output = PyResult<Listener>> + Send + 'static {
    let spec = parsed.endpoint.clone();
    async move { session.listen(spec).await.map_err(errors::to_py) }
}

/// A connection to an edge (the native side of `burrow.Session`).
#[pyclass(module = "burrow._burrow", frozen)]
struct NativeSession {
    session: Session,
}

#[pymethods]
impl NativeSession {
    /// Connects with the session options in `opts` and the `SessionBuilder` extras
    /// (client info, heartbeat timing, hooks), blocking (GIL released).
    #[staticmethod]
    #[pyo3(signature = (opts, extras = None))]
    fn connect(
        py: Python<'_>,
        opts: &NativeOptions,
        extras: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let builder = hooks::SessionExtras::from_dict(extras)?.apply(opts.parsed.session.builder());
        let session = block_on(
            py,
            async move { builder.connect().await.map_err(errors::to_py) },
        )?;
        Ok(NativeSession { session })
    }

    /// Like `connect`, as an awaitable.
    #[staticmethod]
    #[pyo3(signature = (opts, extras = None))]
    fn connect_async<'py>(
        py: Python<'py>,
        opts: &NativeOptions,
        extras: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let builder = hooks::SessionExtras::from_dict(extras)?.apply(opts.parsed.session.builder());
        interpreter::future_into_py(py, async move {
            let session = builder.connect().await.map_err(errors::to_py)?;
            Ok(NativeSession { session })
        })
    }

    /// Binds an endpoint and forwards it to `opts["addr"]`, blocking.
    fn forward(&self, py: Python<'_>, opts: &NativeOptions) -> PyResult<NativeListener> {
        let fut = forward(self.session.clone(), &opts.parsed);
        let fwd = block_on(py, fut)?;
        Ok(NativeListener::new(fwd))
    }

    /// Like `forward`, as an awaitable.
    fn forward_async<'py>(
        &self,
        py: Python<'py>,
        opts: &NativeOptions,
    ) -> PyResult<Bound<'py, PyAny>> {
        let fut = forward(self.session.clone(), &opts.parsed);
        interpreter::future_into_py(py, async move { Ok(NativeListener::new(fut.await?)) })
    }

    /// Binds the parsed endpoint without a forwarding target (ngrok's `listen()`), blocking.
    fn listen(&self, py: Python<'_>, opts: &NativeOptions) -> PyResult<NativeListener> {
        let fut = listen(self.session.clone(), &opts.parsed);
        Ok(NativeListener::listening(block_on(py, fut)?))
    }

    /// Like `listen`, as an awaitable.
    fn listen_async<'py>(
        &self,
        py: Python<'py>,
        opts: &NativeOptions,
    ) -> PyResult<Bound<'py, PyAny>> {
        let fut = listen(self.session.clone(), &opts.parsed);
        interpreter::future_into_py(py, async move { Ok(NativeListener::listening(fut.await?)) })
    }

    /// The embedded edge's addresses and CA, when this session started one.
    fn embedded_edge(&self) -> Option<(String, String, String)> {
        self.session.embedded_edge().map(|e| {
            (
                e.tunnel_addr().to_string(),
                e.tls_addr().to_string(),
                e.ca_pem().to_owned(),
            )
        })
    }

    /// The session id the edge gave.
    fn id(&self) -> String {
        self.session.id()
    }

    /// True until the session is closed.
    fn is_open(&self) -> bool {
        self.session.is_open()
    }

    /// The session's Prometheus metrics (text format).
    fn metrics_text(&self) -> String {
        self.session.metrics_text()
    }

    /// The session's status (edges, endpoints with counters, recent connections) as JSON.
    fn status_json(&self) -> String {
        serde_json::to_string(&self.session.status()).unwrap_or_default()
    }

    /// Closes every endpoint and the tunnel.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let session = self.session.clone();
        block_on(py, async move {
            session.close().await;
            Ok(())
        })
    }

    /// Like `close`, as an awaitable; the close starts at once, awaited or not.
    fn close_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let session = self.session.clone();
        interpreter::future_into_py(py, async move {
            session.close().await;
            Ok(())
        })
    }
}

/// What a listener is doing: bound with no target yet (`listen()`), forwarding, or closed.
enum State {
    Listening(Listener),
    Forwarding(Forwarder),
    Closed,
}

/// One endpoint (the native side of `burrow.Listener`).
#[pyclass(module = "burrow._burrow", frozen)]
struct NativeListener {
    state: Mutex<State>,
    /// Becomes true once the forwarder stops; set when forwarding starts.
    closed: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
    id: String,
    url: String,
    proto: String,
    metadata: String,
    forwards_to: Mutex<String>,
    terminate_at: String,
}

impl NativeListener {
    /// Wraps a running forwarder, keeping its descriptive fields readable after close.
    fn new(fwd: Forwarder) -> Self {
        let closed = closed_token(&fwd);
        NativeListener {
            id: fwd.id().to_owned(),
            url: fwd.url().to_owned(),
            proto: fwd.proto().to_owned(),
            metadata: fwd.metadata().to_owned(),
            forwards_to: Mutex::new(fwd.forwards_to().to_owned()),
            terminate_at: fwd.terminate_at().to_string(),
            closed: Mutex::new(Some(closed)),
            state: Mutex::new(State::Forwarding(fwd)),
        }
    }

    /// Wraps a bound listener that forwards nowhere yet (ngrok's `listen()`).
    fn listening(listener: Listener) -> Self {
        NativeListener {
            id: listener.id().to_owned(),
            url: listener.url().to_owned(),
            proto: listener.proto().to_owned(),
            metadata: listener.metadata().to_owned(),
            forwards_to: Mutex::new(listener.forwards_to().to_owned()),
            terminate_at: listener.terminate_at().to_string(),
            closed: Mutex::new(None),
            state: Mutex::new(State::Listening(listener)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A future resolving when the endpoint is closed.
    fn wait_closed(&self) -> PyResult<impl Future<Output = PyResult<()>> + Send + 'static> {
        let token = self
            .closed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if token.is_none() && matches!(*self.state(), State::Listening(_)) {
            return Err(errors::option(
                "this listener forwards nowhere yet: call forward(addr) before join()",
            ));
        }
        Ok(async move {
            if let Some(mut token) = token {
                // An error means the watcher ended, which it does only after the close.
                let _ = token.wait_for(|closed| *closed).await;
            }
            Ok(())
        })
    }
}

/// A flag that becomes true when `fwd` stops (closed, dropped, or its session closed).
fn closed_token(fwd: &Forwarder) -> tokio::sync::watch::Receiver<bool> {
    let (done, flag) = tokio::sync::watch::channel(false);
    let closed = fwd.closed();
    pyo3_async_runtimes::tokio::get_runtime().spawn(async move {
        closed.await;
        let _ = done.send(true);
    });
    flag
}

#[pymethods]
impl NativeListener {
    /// The endpoint id the edge gave.
    fn id(&self) -> &str {
        &self.id
    }
    /// The public URL.
    fn url(&self) -> &str {
        &self.url
    }
    /// `"http"`, `"tls"` or `"tcp"`.
    fn proto(&self) -> &str {
        &self.proto
    }
    /// The endpoint's metadata.
    fn metadata(&self) -> &str {
        &self.metadata
    }
    /// The upstream it forwards to (empty until `forward()` for a `listen()`ed one).
    fn forwards_to(&self) -> String {
        self.forwards_to
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// `"edge"`, `"agent"` or `"upstream"`.
    fn terminate_at(&self) -> &str {
        &self.terminate_at
    }

    /// True until the listener is closed.
    fn is_open(&self) -> bool {
        !matches!(*self.state(), State::Closed)
    }

    /// Starts forwarding to the upstream of `opts` (parsed `{"addr": ...}`); ngrok's
    /// `Listener.forward`.
    fn forward(&self, opts: &NativeOptions) -> PyResult<()> {
        // The forwarder's task is spawned on the binding's runtime.
        let _runtime = pyo3_async_runtimes::tokio::get_runtime().enter();
        let mut state = self.state();
        match std::mem::replace(&mut *state, State::Closed) {
            State::Listening(listener) => match listener.forward(&opts.parsed.upstream) {
                Ok(fwd) => {
                    *self.forwards_to.lock().unwrap_or_else(|p| p.into_inner()) =
                        fwd.forwards_to().to_owned();
                    *self.closed.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(closed_token(&fwd));
                    *state = State::Forwarding(fwd);
                    Ok(())
                }
                Err(e) => Err(errors::to_py(e)),
            },
            other => {
                let already = matches!(other, State::Forwarding(_));
                *state = other;
                Err(errors::option(if already {
                    "this listener already forwards; forward() is for one made by listen()"
                } else {
                    "this listener is closed"
                }))
            }
        }
    }

    /// Stops the endpoint (idempotent).
    fn close(&self, py: Python<'_>) {
        let state = std::mem::replace(&mut *self.state(), State::Closed);
        // Without the GIL: closing takes a session lock other threads may hold.
        py.detach(move || match state {
            State::Forwarding(fwd) => fwd.close(),
            State::Listening(mut listener) => listener.close(),
            State::Closed => {}
        });
    }

    /// Blocks until the endpoint is closed (Ctrl-C interrupts).
    fn join(&self, py: Python<'_>) -> PyResult<()> {
        block_on(py, self.wait_closed()?)
    }

    /// Awaitable that resolves when the endpoint is closed.
    fn join_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        interpreter::future_into_py(py, self.wait_closed()?)
    }
}

/// An edge running in this process (the native side of `burrow.Edge`).
#[pyclass(module = "burrow._burrow", frozen)]
struct NativeEdge {
    edge: Mutex<Option<Edge>>,
    tunnel_addr: String,
    tls_addr: String,
    http_addr: Option<String>,
    admin_addr: Option<String>,
    metrics_addr: Option<String>,
    ca_pem: String,
}

#[pymethods]
impl NativeEdge {
    /// Starts an edge; `config_json` holds the edge config file's keys (see
    /// `EdgeConfig::in_process`).
    #[staticmethod]
    fn start(py: Python<'_>, config_json: &str) -> PyResult<Self> {
        let config = EdgeConfig::in_process(config_json).map_err(errors::to_py)?;
        let edge = block_on(py, async move {
            Edge::start(config).await.map_err(errors::to_py)
        })?;
        Ok(NativeEdge {
            tunnel_addr: edge.tunnel_addr().to_string(),
            tls_addr: edge.tls_addr().to_string(),
            http_addr: edge.http_addr().map(|a| a.to_string()),
            admin_addr: edge.admin_addr().map(|a| a.to_string()),
            metrics_addr: edge.metrics_addr().map(|a| a.to_string()),
            ca_pem: edge.ca_pem().to_owned(),
            edge: Mutex::new(Some(edge)),
        })
    }

    /// Where agents connect (`host:port`).
    fn tunnel_addr(&self) -> &str {
        &self.tunnel_addr
    }
    /// The public TLS listener (`host:port`).
    fn tls_addr(&self) -> &str {
        &self.tls_addr
    }
    /// The plain-HTTP listener of http endpoints (`host:port`), when the edge has one.
    fn http_addr(&self) -> Option<&str> {
        self.http_addr.as_deref()
    }
    /// The admin API listener (`host:port`), when `admin_addr` is set.
    fn admin_addr(&self) -> Option<&str> {
        self.admin_addr.as_deref()
    }
    /// The metrics listener (`host:port`), when `metrics_addr` is set.
    fn metrics_addr(&self) -> Option<&str> {
        self.metrics_addr.as_deref()
    }
    /// The edge's metrics (OpenMetrics text), as `GET /metrics` serves them.
    fn metrics_text(&self) -> String {
        let edge = self.edge.lock().unwrap_or_else(|p| p.into_inner());
        edge.as_ref().map(Edge::metrics_text).unwrap_or_default()
    }
    /// The edge's CA certificate (PEM): trust it to reach the tunnel and edge-made certs.
    fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Authenticated sessions: `(id, client_info entries, metadata)`.
    fn sessions(&self) -> Vec<(String, Vec<String>, String)> {
        let edge = self.edge.lock().unwrap_or_else(|p| p.into_inner());
        edge.as_ref()
            .map(|e| {
                e.sessions()
                    .into_iter()
                    .map(|s| (s.id, s.client_info, s.metadata))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sends ngrok's `"stop"`, `"restart"` or `"update"` command to a session and waits
    /// for the agent's answer; raises the agent's refusal. `reason` goes with `"stop"`.
    #[pyo3(signature = (session_id, command, version = String::new(), permit_major_version = false, reason = None))]
    fn send_command(
        &self,
        py: Python<'_>,
        session_id: &str,
        command: &str,
        version: String,
        permit_major_version: bool,
        reason: Option<String>,
    ) -> PyResult<()> {
        let command = match command {
            "stop" => Command::Stop { reason },
            "restart" => Command::Restart,
            "update" => Command::Update {
                version,
                permit_major_version,
            },
            other => {
                return Err(errors::option(&format!(
                    "command {other:?} is not one of \"stop\", \"restart\", \"update\""
                )))
            }
        };
        let answer = {
            let edge = self.edge.lock().unwrap_or_else(|p| p.into_inner());
            match edge.as_ref() {
                Some(e) => e.send_command(session_id, command),
                None => {
                    return Err(errors::to_py(burrow_core::Error::new(
                        burrow_core::ErrorCode::Closed,
                        "the edge is closed",
                    )))
                }
            }
        };
        block_on(py, async move { answer.await.map_err(errors::to_py) })
    }

    /// Stops the edge and waits for its tasks (idempotent).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let edge = self.edge.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(edge) = edge {
            block_on(py, async move {
                edge.shutdown().await;
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// The Python module `burrow._burrow`.
#[pymodule]
fn _burrow(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    interpreter::register(m)?;
    m.add_class::<NativeSession>()?;
    m.add_class::<NativeListener>()?;
    m.add_class::<NativeEdge>()?;
    m.add_class::<NativeOptions>()?;
    m.add_function(wrap_pyfunction!(parse_options, m)?)?;
    m.add_function(wrap_pyfunction!(logging::set_log_level, m)?)?;
    Ok(())
}
