//! The native half of the `burrow` Node package.
//!
//! Thin on purpose: ngrok-style config objects go to the core's one option parser as
//! they come (only JavaScript types are converted here); core calls run on napi's
//! tokio runtime. Errors carry the
//! core code as a `[CODE] message` prefix, which `index.js` turns into `err.code`.

#![deny(clippy::all)]

use burrow_core::{
    Edge, EdgeConfig, ErrorCode, ForwardOptions, Forwarder, OptionValue, Scope, Session,
};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::sync::Mutex;

fn coded(e: burrow_core::Error) -> napi::Error {
    napi::Error::from_reason(format!("[{}] {}", e.code().as_str(), e.message()))
}

fn invalid(message: String) -> napi::Error {
    napi::Error::from_reason(format!("[INVALID_OPTION] {message}"))
}

/// A JavaScript value as an option value: language types only (`Buffer` and typed
/// arrays become bytes); what the value means is the core's business.
fn option_value(name: &str, v: Unknown<'_>) -> Result<OptionValue> {
    Ok(match v.get_type()? {
        ValueType::Undefined | ValueType::Null => OptionValue::Null,
        ValueType::Boolean => OptionValue::Bool(bool::from_unknown(v)?),
        ValueType::Number => {
            let f = f64::from_unknown(v)?;
            if f.fract() == 0.0 && f.abs() < 9.0e15 {
                OptionValue::Int(f as i64)
            } else {
                OptionValue::Float(f)
            }
        }
        ValueType::String => OptionValue::Str(String::from_unknown(v)?),
        ValueType::Object if v.is_buffer()? || v.is_typedarray()? => {
            OptionValue::Bytes(Uint8Array::from_unknown(v)?.to_vec())
        }
        ValueType::Object if v.is_array()? => OptionValue::List(
            Vec::<Unknown>::from_unknown(v)?
                .into_iter()
                .map(|item| option_value(name, item))
                .collect::<Result<_>>()?,
        ),
        ValueType::Object => {
            let object = Object::from_unknown(v)?;
            let mut entries = Vec::new();
            for key in Object::keys(&object)? {
                let value: Unknown = object.get_named_property(&key)?;
                entries.push((key.clone(), option_value(&key, value)?));
            }
            OptionValue::Map(entries)
        }
        other => {
            return Err(coded(burrow_core::Error::new(
                ErrorCode::InvalidOption,
                format!("option {name}: a {other} is not accepted (use a string, Buffer, number, boolean or array)"),
            )))
        }
    })
}

/// Parses ngrok-style options with the core's one parser; `scope` is "forward",
/// "session" or "endpoint", `defaultAuthtoken` the module's `authtoken()` value.
#[napi]
pub fn parse_options(
    options: Object,
    scope: String,
    default_authtoken: Option<String>,
) -> Result<NativeOptions> {
    let scope = match scope.as_str() {
        "forward" => Scope::Forward,
        "session" => Scope::Session,
        "endpoint" => Scope::Endpoint,
        other => return Err(invalid(format!("unknown option scope {other:?}"))),
    };
    let mut pairs = Vec::new();
    for key in Object::keys(&options)? {
        let value: Unknown = options.get_named_property(&key)?;
        let value = option_value(&key, value)?;
        pairs.push((key, value));
    }
    let parsed = burrow_core::agent::options::parse(pairs, scope, default_authtoken.as_deref())
        .map_err(coded)?;
    Ok(NativeOptions { parsed })
}

/// Options after the core parsed them: a session and an endpoint.
#[napi]
pub struct NativeOptions {
    parsed: ForwardOptions,
}

#[napi]
impl NativeOptions {
    /// Identifies the shared session these options may reuse.
    #[napi]
    pub fn reuse_key(&self) -> String {
        self.parsed.session.reuse_key()
    }

    /// True when the caller asked for a session of its own.
    #[napi]
    pub fn force_new_session(&self) -> bool {
        self.parsed.session.force_new_session
    }

    /// The parsed options as JSON, secrets left out (for tests and debugging).
    #[napi]
    pub fn describe(&self) -> String {
        self.parsed.describe().to_string()
    }
}

/// A connection to an edge.
#[napi]
pub struct NativeSession {
    session: Session,
}

#[napi]
impl NativeSession {
    /// Connects and authenticates.
    #[napi(ts_return_type = "Promise<NativeSession>")]
    pub fn connect<'env>(
        env: &'env Env,
        opts: &NativeOptions,
    ) -> Result<PromiseRaw<'env, NativeSession>> {
        let builder = opts.parsed.session.builder();
        env.spawn_future(async move {
            let session = builder.connect().await.map_err(coded)?;
            Ok(NativeSession { session })
        })
    }

    /// Binds the parsed endpoint and forwards its connections to its upstream.
    #[napi(ts_return_type = "Promise<NativeListener>")]
    pub fn forward<'env>(
        &self,
        env: &'env Env,
        opts: &NativeOptions,
    ) -> Result<PromiseRaw<'env, NativeListener>> {
        let session = self.session.clone();
        let (spec, upstream) = (opts.parsed.endpoint.clone(), opts.parsed.upstream.clone());
        env.spawn_future(async move {
            let fwd = session.forward(spec, &upstream).await.map_err(coded)?;
            Ok(NativeListener::new(fwd))
        })
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
    /// Starts an edge; `config_json` holds the edge config file's keys (see
    /// `EdgeConfig::in_process`).
    #[napi(factory)]
    pub async fn start(config_json: String) -> Result<NativeEdge> {
        let config = EdgeConfig::in_process(&config_json).map_err(coded)?;
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
