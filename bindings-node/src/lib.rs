//! The native half of the `burrow` Node package.
//!
//! Thin on purpose: `index.js` checks and normalizes ngrok-style config objects; this
//! addon turns them into core builder calls on napi's tokio runtime. Errors carry the
//! core code as a `[CODE] message` prefix, which `index.js` turns into `err.code`.

#![deny(clippy::all)]

use burrow_core::{Edge, EdgeConfig, Forwarder, ProxyProto, Session, TerminateAt, Upstream};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::sync::Mutex;

fn coded(e: burrow_core::Error) -> napi::Error {
    napi::Error::from_reason(format!("[{}] {}", e.code().as_str(), e.message()))
}

fn invalid(message: String) -> napi::Error {
    napi::Error::from_reason(format!("[INVALID_OPTION] {message}"))
}

/// Session settings (already normalized by index.js).
#[napi(object)]
pub struct SessionOptions {
    /// Authtoken presented to the edge.
    pub authtoken: Option<String>,
    /// The edge's tunnel address; none starts an embedded edge.
    pub server_addr: Option<String>,
    /// CA bundle (PEM) for the edge's certificate.
    pub root_cas: Option<Buffer>,
    /// Session metadata.
    pub session_metadata: Option<String>,
}

/// Endpoint settings (already normalized by index.js).
#[napi(object)]
pub struct EndpointOptions {
    /// "tls" or "tcp".
    pub proto: String,
    /// The upstream address.
    pub addr: String,
    /// Hostname for TLS endpoints.
    pub domain: Option<String>,
    /// host:port for TCP endpoints.
    pub remote_addr: Option<String>,
    /// Certificate chain (PEM).
    pub crt: Option<Buffer>,
    /// Private key (PEM).
    pub key: Option<Buffer>,
    /// Client CA bundle (PEM) for mutual TLS.
    pub mutual_tls_cas: Option<Buffer>,
    /// "edge", "agent" or "upstream".
    pub terminate_at: Option<String>,
    /// Traffic policy text.
    pub traffic_policy: Option<String>,
    /// "1" or "2".
    pub proxy_proto: Option<String>,
    /// Endpoint metadata.
    pub metadata: Option<String>,
    /// Description of the upstream.
    pub forwards_to: Option<String>,
    /// Allowed client CIDRs.
    pub allow_cidr: Option<Vec<String>>,
    /// Refused client CIDRs.
    pub deny_cidr: Option<Vec<String>>,
    /// Verify a tls:// upstream (default true).
    pub verify_upstream_tls: Option<bool>,
    /// CA bundle (PEM) for a tls:// upstream.
    pub upstream_root_cas: Option<Buffer>,
}

/// A connection to an edge.
#[napi]
pub struct NativeSession {
    session: Session,
}

#[napi]
impl NativeSession {
    /// Connects and authenticates.
    #[napi(factory)]
    pub async fn connect(opts: SessionOptions) -> Result<NativeSession> {
        let mut b = Session::builder();
        if let Some(t) = opts.authtoken {
            b = b.authtoken(t);
        }
        if let Some(a) = opts.server_addr {
            b = b.server_addr(a);
        }
        if let Some(c) = opts.root_cas {
            b = b.root_cas(c.to_vec());
        }
        if let Some(m) = opts.session_metadata {
            b = b.metadata(m);
        }
        let session = b.connect().await.map_err(coded)?;
        Ok(NativeSession { session })
    }

    /// Binds an endpoint and forwards its connections to `opts.addr`.
    #[napi]
    pub async fn forward(&self, opts: EndpointOptions) -> Result<NativeListener> {
        let fwd = forward(self.session.clone(), opts).await?;
        Ok(NativeListener::new(fwd))
    }

    /// The embedded edge's [tunnel, tls, ca] when this session started one.
    #[napi]
    pub fn embedded_edge(&self) -> Option<Vec<String>> {
        self.session.embedded_edge().map(|e| {
            vec![
                e.tunnel_addr().to_string(),
                e.tls_addr().to_string(),
                e.ca_pem().to_owned(),
            ]
        })
    }

    /// Closes every endpoint and the tunnel.
    #[napi]
    pub async fn close(&self) -> Result<()> {
        self.session.close().await;
        Ok(())
    }
}

async fn forward(session: Session, o: EndpointOptions) -> Result<Forwarder> {
    let mut upstream: Upstream = o.addr.parse().map_err(coded)?;
    upstream = upstream.verify_tls(o.verify_upstream_tls.unwrap_or(true));
    if let Some(ca) = o.upstream_root_cas {
        upstream = upstream.root_cas(ca.to_vec());
    }
    let at = o
        .terminate_at
        .as_deref()
        .map(str::parse::<TerminateAt>)
        .transpose()
        .map_err(coded)?;
    let pp = match o.proxy_proto.as_deref() {
        None | Some("") => None,
        Some(v) => Some(v.parse::<ProxyProto>().map_err(coded)?),
    };
    macro_rules! configure {
        ($b:expr) => {{
            let mut b = $b;
            if let Some(at) = at {
                b = b.terminate_at(at);
            }
            if let Some(c) = o.crt {
                b = b.crt(c.to_vec());
            }
            if let Some(k) = o.key {
                b = b.key(k.to_vec());
            }
            if let Some(c) = o.mutual_tls_cas {
                b = b.mutual_tlsca(c.to_vec());
            }
            if let Some(p) = o.traffic_policy {
                b = b.traffic_policy(p);
            }
            if let Some(v) = pp {
                b = b.proxy_proto(v);
            }
            if let Some(m) = o.metadata {
                b = b.metadata(m);
            }
            if let Some(f) = o.forwards_to {
                b = b.forwards_to(f);
            }
            for c in o.allow_cidr.unwrap_or_default() {
                b = b.allow_cidr(c);
            }
            for c in o.deny_cidr.unwrap_or_default() {
                b = b.deny_cidr(c);
            }
            b.listen_and_forward(upstream).await.map_err(coded)
        }};
    }
    match o.proto.as_str() {
        "tls" => {
            let mut b = session.tls_endpoint();
            if let Some(d) = o.domain {
                b = b.domain(d);
            }
            configure!(b)
        }
        "tcp" => {
            let mut b = session.tcp_endpoint();
            if let Some(a) = o.remote_addr {
                b = b.remote_addr(&a).map_err(coded)?;
            }
            configure!(b)
        }
        other => Err(invalid(format!(
            "proto {other:?} is not supported (use \"tls\" or \"tcp\")"
        ))),
    }
}

/// One forwarding endpoint.
#[napi]
pub struct NativeListener {
    forwarder: Mutex<Option<Forwarder>>,
    id: String,
    url: String,
    proto: String,
    metadata: String,
    forwards_to: String,
    terminate_at: String,
}

impl NativeListener {
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
}

#[napi]
impl NativeListener {
    /// The endpoint id.
    #[napi]
    pub fn id(&self) -> String {
        self.id.clone()
    }
    /// The public URL.
    #[napi]
    pub fn url(&self) -> String {
        self.url.clone()
    }
    /// "tls" or "tcp".
    #[napi]
    pub fn proto(&self) -> String {
        self.proto.clone()
    }
    /// The endpoint's metadata.
    #[napi]
    pub fn metadata(&self) -> String {
        self.metadata.clone()
    }
    /// What the endpoint forwards to.
    #[napi]
    pub fn forwards_to(&self) -> String {
        self.forwards_to.clone()
    }
    /// Where TLS is terminated.
    #[napi]
    pub fn terminate_at(&self) -> String {
        self.terminate_at.clone()
    }

    /// Stops the endpoint (idempotent).
    #[napi]
    pub fn close(&self) {
        let fwd = self
            .forwarder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(fwd) = fwd {
            fwd.close();
        }
    }

    /// Resolves when the endpoint is closed.
    #[napi]
    pub async fn join(&self) -> Result<()> {
        let closed = self
            .forwarder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|f| f.closed());
        if let Some(closed) = closed {
            closed.await;
        }
        Ok(())
    }
}

/// An edge running in this process.
#[napi]
pub struct NativeEdge {
    edge: Mutex<Option<Edge>>,
    tunnel_addr: String,
    tls_addr: String,
    ca_pem: String,
}

#[napi]
impl NativeEdge {
    /// Starts an edge from edge-config TOML (empty: the embedded defaults).
    #[napi(factory)]
    pub async fn start(config_toml: String) -> Result<NativeEdge> {
        let config = if config_toml.trim().is_empty() {
            EdgeConfig::embedded()
        } else {
            EdgeConfig::from_toml(&config_toml).map_err(coded)?
        };
        let edge = Edge::start(config).await.map_err(coded)?;
        Ok(NativeEdge {
            tunnel_addr: edge.tunnel_addr().to_string(),
            tls_addr: edge.tls_addr().to_string(),
            ca_pem: edge.ca_pem().to_owned(),
            edge: Mutex::new(Some(edge)),
        })
    }
    /// Where agents connect.
    #[napi]
    pub fn tunnel_addr(&self) -> String {
        self.tunnel_addr.clone()
    }
    /// The public TLS listener.
    #[napi]
    pub fn tls_addr(&self) -> String {
        self.tls_addr.clone()
    }
    /// The edge CA (PEM).
    #[napi]
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }
    /// Stops the edge (idempotent).
    #[napi]
    pub async fn close(&self) -> Result<()> {
        let edge = self.edge.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(edge) = edge {
            edge.shutdown().await;
        }
        Ok(())
    }
}

mod logs {
    //! Rust log events queued for JavaScript, which drains them on a timer.
    use std::collections::VecDeque;
    use std::sync::{Mutex, OnceLock};
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::{filter::LevelFilter, reload, Layer, Registry};

    pub static QUEUE: Mutex<VecDeque<(String, String)>> = Mutex::new(VecDeque::new());
    pub static RELOAD: OnceLock<reload::Handle<LevelFilter, Registry>> = OnceLock::new();
    const MAX_QUEUED: usize = 10_000;

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

    pub struct Queue;

    impl<S: tracing::Subscriber> Layer<S> for Queue {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut m = Message::default();
            event.record(&mut m);
            let mut q = QUEUE.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() < MAX_QUEUED {
                q.push_back((event.metadata().level().to_string(), m.0));
            }
        }
    }

    pub fn install(filter: LevelFilter) {
        if let Some(h) = RELOAD.get() {
            let _ = h.reload(filter);
            return;
        }
        let (layer, handle) = reload::Layer::new(filter);
        if tracing::subscriber::set_global_default(Registry::default().with(layer).with(Queue))
            .is_ok()
        {
            let _ = RELOAD.set(handle);
        }
    }
}

/// Starts queueing Rust log events at `level` ("ERROR" … "TRACE", or "OFF").
#[napi]
pub fn set_log_level(level: String) -> Result<()> {
    use tracing_subscriber::filter::LevelFilter;
    let filter = match level.to_ascii_uppercase().as_str() {
        "OFF" => LevelFilter::OFF,
        "ERROR" => LevelFilter::ERROR,
        "WARN" | "WARNING" => LevelFilter::WARN,
        "INFO" => LevelFilter::INFO,
        "DEBUG" => LevelFilter::DEBUG,
        "TRACE" => LevelFilter::TRACE,
        other => {
            return Err(invalid(format!(
                "log level {other:?} is not one of OFF, ERROR, WARN, INFO, DEBUG, TRACE"
            )))
        }
    };
    logs::install(filter);
    Ok(())
}

/// Takes the queued log events as [level, message] pairs.
#[napi]
pub fn take_logs() -> Vec<Vec<String>> {
    let mut q = logs::QUEUE.lock().unwrap_or_else(|p| p.into_inner());
    q.drain(..).map(|(l, m)| vec![l, m]).collect()
}

/// Parses a traffic policy; throws a coded error when it is invalid.
#[napi]
pub fn check_policy(policy: String) -> Result<()> {
    burrow_core::policy::TrafficPolicy::parse(&policy)
        .map(|_| ())
        .map_err(coded)
}
