//! The native half of the `burrow` Python package (`burrow._burrow`).
//!
//! Thin on purpose: option values arrive already checked and normalized by the
//! pure-Python layer; this module turns them into core builder calls, runs them on a
//! tokio runtime with the GIL released, and maps core errors to Python exceptions.

mod errors;
mod interpreter;
mod logging;

use burrow_core::{
    Edge, EdgeConfig, Forwarder, ProxyProto, Session, TerminateAt, TlsEndpointBuilder, Upstream,
};
use pyo3::conversion::FromPyObjectOwned;
use pyo3::prelude::*;
use pyo3::types::PyDict;
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

/// `d[key]` converted to `T`; `None` when the key is absent or its value is `None`.
fn get<'py, T: FromPyObjectOwned<'py>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Option<T>> {
    match d.get_item(key)? {
        Some(v) if !v.is_none() => match v.extract::<T>() {
            Ok(value) => Ok(Some(value)),
            Err(e) => {
                let e: PyErr = e.into();
                Err(errors::option(&format!("option {key}: {e}")))
            }
        },
        _ => Ok(None),
    }
}

/// Session settings, taken from the options dict.
struct SessionOptions {
    authtoken: Option<String>,
    server_addr: Option<String>,
    root_cas: Option<Vec<u8>>,
    metadata: Option<String>,
}

impl SessionOptions {
    /// Reads the session keys of a normalized options dict.
    fn from_dict(d: &Bound<'_, PyDict>) -> PyResult<Self> {
        Ok(SessionOptions {
            authtoken: get(d, "authtoken")?,
            server_addr: get(d, "server_addr")?,
            root_cas: get(d, "root_cas")?,
            metadata: get(d, "session_metadata")?,
        })
    }

    /// Connects and authenticates.
    async fn connect(self) -> PyResult<Session> {
        let mut b = Session::builder();
        if let Some(t) = self.authtoken {
            b = b.authtoken(t);
        }
        if let Some(a) = self.server_addr {
            b = b.server_addr(a);
        }
        if let Some(c) = self.root_cas {
            b = b.root_cas(c);
        }
        if let Some(m) = self.metadata {
            b = b.metadata(m);
        }
        b.connect().await.map_err(errors::to_py)
    }
}

/// Endpoint settings, taken from the options dict.
struct EndpointOptions {
    proto: String,
    upstream: String,
    domain: Option<String>,
    remote_addr: Option<String>,
    crt: Option<Vec<u8>>,
    key: Option<Vec<u8>>,
    mutual_tls_cas: Option<Vec<u8>>,
    terminate_at: Option<String>,
    traffic_policy: Option<String>,
    proxy_proto: Option<String>,
    metadata: Option<String>,
    forwards_to: Option<String>,
    allow_cidr: Vec<String>,
    deny_cidr: Vec<String>,
    verify_upstream_tls: bool,
    upstream_root_cas: Option<Vec<u8>>,
}

impl EndpointOptions {
    /// Reads the endpoint keys of a normalized options dict.
    fn from_dict(d: &Bound<'_, PyDict>) -> PyResult<Self> {
        Ok(EndpointOptions {
            proto: get(d, "proto")?.unwrap_or_else(|| "tls".to_owned()),
            upstream: get(d, "addr")?.unwrap_or_else(|| "localhost:80".to_owned()),
            domain: get(d, "domain")?,
            remote_addr: get(d, "remote_addr")?,
            crt: get(d, "crt")?,
            key: get(d, "key")?,
            mutual_tls_cas: get(d, "mutual_tls_cas")?,
            terminate_at: get(d, "terminate_at")?,
            traffic_policy: get(d, "traffic_policy")?,
            proxy_proto: get(d, "proxy_proto")?,
            metadata: get(d, "metadata")?,
            forwards_to: get(d, "forwards_to")?,
            allow_cidr: get(d, "allow_cidr")?.unwrap_or_default(),
            deny_cidr: get(d, "deny_cidr")?.unwrap_or_default(),
            verify_upstream_tls: get(d, "verify_upstream_tls")?.unwrap_or(true),
            upstream_root_cas: get(d, "upstream_root_cas")?,
        })
    }

    /// Binds the endpoint on `session` and starts forwarding to the upstream.
    async fn forward(self, session: Session) -> PyResult<Forwarder> {
        let mut upstream: Upstream = self.upstream.parse().map_err(errors::to_py)?;
        upstream = upstream.verify_tls(self.verify_upstream_tls);
        if let Some(ca) = self.upstream_root_cas.clone() {
            upstream = upstream.root_cas(ca);
        }
        let terminate_at = self
            .terminate_at
            .as_deref()
            .map(str::parse::<TerminateAt>)
            .transpose()
            .map_err(errors::to_py)?;
        let proxy_proto = match self.proxy_proto.as_deref() {
            None | Some("") => None,
            Some(v) => Some(v.parse::<ProxyProto>().map_err(errors::to_py)?),
        };
        macro_rules! configure {
            ($b:expr) => {{
                let mut b = $b;
                if let Some(at) = terminate_at {
                    b = b.terminate_at(at);
                }
                if let Some(c) = self.crt {
                    b = b.crt(c);
                }
                if let Some(k) = self.key {
                    b = b.key(k);
                }
                if let Some(c) = self.mutual_tls_cas {
                    b = b.mutual_tlsca(c);
                }
                if let Some(p) = self.traffic_policy {
                    b = b.traffic_policy(p);
                }
                if let Some(v) = proxy_proto {
                    b = b.proxy_proto(v);
                }
                if let Some(m) = self.metadata {
                    b = b.metadata(m);
                }
                if let Some(f) = self.forwards_to {
                    b = b.forwards_to(f);
                }
                for c in self.allow_cidr {
                    b = b.allow_cidr(c);
                }
                for c in self.deny_cidr {
                    b = b.deny_cidr(c);
                }
                b.listen_and_forward(upstream).await.map_err(errors::to_py)
            }};
        }
        match self.proto.as_str() {
            "tls" => {
                let mut b: TlsEndpointBuilder = session.tls_endpoint();
                if let Some(d) = self.domain {
                    b = b.domain(d);
                }
                configure!(b)
            }
            "tcp" => {
                let mut b = session.tcp_endpoint();
                if let Some(a) = self.remote_addr {
                    b = b.remote_addr(&a).map_err(errors::to_py)?;
                }
                configure!(b)
            }
            other => Err(errors::option(&format!(
                "proto {other:?} is not supported (use \"tls\" or \"tcp\")"
            ))),
        }
    }
}

/// A connection to an edge (the native side of `burrow.Session`).
#[pyclass(module = "burrow._burrow", frozen)]
struct NativeSession {
    session: Session,
}

#[pymethods]
impl NativeSession {
    /// Connects with the session options in `opts`, blocking (GIL released).
    #[staticmethod]
    fn connect(py: Python<'_>, opts: &Bound<'_, PyDict>) -> PyResult<Self> {
        let options = SessionOptions::from_dict(opts)?;
        let session = block_on(py, options.connect())?;
        Ok(NativeSession { session })
    }

    /// Like `connect`, as an awaitable.
    #[staticmethod]
    fn connect_async<'py>(
        py: Python<'py>,
        opts: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = SessionOptions::from_dict(opts)?;
        interpreter::future_into_py(py, async move {
            let session = options.connect().await?;
            Ok(NativeSession { session })
        })
    }

    /// Binds an endpoint and forwards it to `opts["addr"]`, blocking.
    fn forward(&self, py: Python<'_>, opts: &Bound<'_, PyDict>) -> PyResult<NativeListener> {
        let options = EndpointOptions::from_dict(opts)?;
        let session = self.session.clone();
        let fwd = block_on(py, async move { options.forward(session).await })?;
        Ok(NativeListener::new(fwd))
    }

    /// Like `forward`, as an awaitable.
    fn forward_async<'py>(
        &self,
        py: Python<'py>,
        opts: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = EndpointOptions::from_dict(opts)?;
        let session = self.session.clone();
        interpreter::future_into_py(py, async move {
            let fwd = options.forward(session).await?;
            Ok(NativeListener::new(fwd))
        })
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

    /// Closes every endpoint and the tunnel.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let session = self.session.clone();
        block_on(py, async move {
            session.close().await;
            Ok(())
        })
    }
}

/// One forwarding endpoint (the native side of `burrow.Listener`).
#[pyclass(module = "burrow._burrow", frozen)]
struct NativeListener {
    forwarder: Mutex<Option<Forwarder>>,
    id: String,
    url: String,
    proto: String,
    metadata: String,
    forwards_to: String,
    terminate_at: String,
}

impl NativeListener {
    /// Wraps a running forwarder, keeping its descriptive fields readable after close.
    fn new(fwd: Forwarder) -> Self {
        NativeListener {
            id: fwd.id().to_owned(),
            url: fwd.url().to_owned(),
            proto: fwd.proto().to_owned(),
            metadata: fwd.metadata().to_owned(),
            forwards_to: fwd.forwards_to().to_owned(),
            terminate_at: fwd.terminate_at().to_string(),
            forwarder: Mutex::new(Some(fwd)),
        }
    }

    /// A future resolving when the endpoint is closed.
    fn wait_closed(&self) -> impl Future<Output = PyResult<()>> + Send + 'static {
        let fut = self
            .forwarder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|f| f.closed());
        async move {
            if let Some(fut) = fut {
                fut.await;
            }
            Ok(())
        }
    }
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
    /// `"tls"` or `"tcp"`.
    fn proto(&self) -> &str {
        &self.proto
    }
    /// The endpoint's metadata.
    fn metadata(&self) -> &str {
        &self.metadata
    }
    /// The upstream it forwards to.
    fn forwards_to(&self) -> &str {
        &self.forwards_to
    }
    /// `"edge"`, `"agent"` or `"upstream"`.
    fn terminate_at(&self) -> &str {
        &self.terminate_at
    }

    /// Stops the endpoint (idempotent).
    fn close(&self, py: Python<'_>) {
        let fwd = self
            .forwarder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(fwd) = fwd {
            // Without the GIL: closing takes a session lock other threads may hold.
            py.detach(move || fwd.close());
        }
    }

    /// Blocks until the endpoint is closed (Ctrl-C interrupts).
    fn join(&self, py: Python<'_>) -> PyResult<()> {
        block_on(py, self.wait_closed())
    }

    /// Awaitable that resolves when the endpoint is closed.
    fn join_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        interpreter::future_into_py(py, self.wait_closed())
    }
}

/// An edge running in this process (the native side of `burrow.Edge`).
#[pyclass(module = "burrow._burrow", frozen)]
struct NativeEdge {
    edge: Mutex<Option<Edge>>,
    tunnel_addr: String,
    tls_addr: String,
    ca_pem: String,
}

#[pymethods]
impl NativeEdge {
    /// Starts an edge; `config_toml` uses the edge config file's keys.
    #[staticmethod]
    fn start(py: Python<'_>, config_toml: &str) -> PyResult<Self> {
        let config = if config_toml.trim().is_empty() {
            EdgeConfig::embedded()
        } else {
            EdgeConfig::from_toml(config_toml).map_err(errors::to_py)?
        };
        let edge = block_on(py, async move {
            Edge::start(config).await.map_err(errors::to_py)
        })?;
        Ok(NativeEdge {
            tunnel_addr: edge.tunnel_addr().to_string(),
            tls_addr: edge.tls_addr().to_string(),
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
    /// The edge's CA certificate (PEM): trust it to reach the tunnel and edge-made certs.
    fn ca_pem(&self) -> &str {
        &self.ca_pem
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
    m.add_function(wrap_pyfunction!(logging::set_log_level, m)?)?;
    Ok(())
}
