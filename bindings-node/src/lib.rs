//! The native half of the `burrow` Node package.
//!
//! Thin on purpose: ngrok-style config objects go to the core's one option parser as
//! they come (only JavaScript types are converted here); core calls run on napi's
//! tokio runtime. Errors are JavaScript `Error`s with `.code` and `.errorCode`, built
//! here (see `errors`).

#![deny(clippy::all)]

mod errors;
mod hooks;

use burrow_core::edge::Command;
use burrow_core::{
    Edge, EdgeConfig, ErrorCode, ForwardOptions, Forwarder, Listener, OptionValue, Scope, Session,
};
pub use errors::{error_codes, CodeInfo};
use errors::{invalid, js_error, promise};
use hooks::NativeHooks;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use std::sync::{Arc, Mutex};

/// A JavaScript value as an option value: language types only (`Buffer` and typed
/// arrays become bytes); what the value means is the core's business.
fn option_value(env: &Env, name: &str, v: Unknown<'_>) -> Result<OptionValue> {
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
                .map(|item| option_value(env, name, item))
                .collect::<Result<_>>()?,
        ),
        ValueType::Object => {
            let object = Object::from_unknown(v)?;
            let mut entries = Vec::new();
            for key in Object::keys(&object)? {
                let value: Unknown = object.get_named_property(&key)?;
                entries.push((key.clone(), option_value(env, &key, value)?));
            }
            OptionValue::Map(entries)
        }
        other => {
            return Err(js_error(env, &burrow_core::Error::new(
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
    env: &Env,
    options: Object,
    scope: String,
    default_authtoken: Option<String>,
) -> Result<NativeOptions> {
    let scope = match scope.as_str() {
        "forward" => Scope::Forward,
        "session" => Scope::Session,
        "endpoint" => Scope::Endpoint,
        other => return Err(invalid(env, format!("unknown option scope {other:?}"))),
    };
    let mut pairs = Vec::new();
    for key in Object::keys(&options)? {
        let value: Unknown = options.get_named_property(&key)?;
        let value = option_value(env, &key, value)?;
        pairs.push((key, value));
    }
    let parsed = burrow_core::agent::options::parse(pairs, scope, default_authtoken.as_deref())
        .map_err(|e| js_error(env, &e))?;
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
    /// Connects and authenticates, with the `SessionBuilder` extras (client info,
    /// heartbeat timing, hooks) when given.
    #[napi(ts_return_type = "Promise<NativeSession>")]
    pub fn connect<'env>(
        env: &'env Env,
        opts: &NativeOptions,
        hooks: Option<&NativeHooks>,
    ) -> Result<PromiseRaw<'env, NativeSession>> {
        let mut builder = opts.parsed.session.builder();
        if let Some(hooks) = hooks {
            builder = hooks.apply(builder);
        }
        promise(env, async move {
            let session = builder.connect().await?;
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
        promise(env, async move {
            let fwd = session.forward(spec, &upstream).await?;
            Ok(NativeListener::new(fwd))
        })
    }

    /// Binds the parsed endpoint with no forwarding target (ngrok's `listen()`).
    #[napi(ts_return_type = "Promise<NativeListener>")]
    pub fn listen<'env>(
        &self,
        env: &'env Env,
        opts: &NativeOptions,
    ) -> Result<PromiseRaw<'env, NativeListener>> {
        let session = self.session.clone();
        let spec = opts.parsed.endpoint.clone();
        promise(env, async move {
            let listener = session.listen(spec).await?;
            Ok(NativeListener::listening(listener))
        })
    }

    /// The session id the edge gave.
    #[napi]
    pub fn id(&self) -> String {
        self.session.id()
    }

    /// True until the session is closed.
    #[napi]
    pub fn is_open(&self) -> bool {
        self.session.is_open()
    }

    /// The session's Prometheus metrics (text format).
    #[napi]
    pub fn metrics_text(&self) -> String {
        self.session.metrics_text()
    }

    /// The session's status (edges, endpoints with counters, recent connections) as JSON.
    #[napi]
    pub fn status_json(&self) -> String {
        serde_json::to_string(&self.session.status()).unwrap_or_default()
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

/// What a listener is doing: bound with no target yet (`listen()`), forwarding, or closed.
enum State {
    Listening(Listener),
    Forwarding(Forwarder),
    Closed,
}

/// One endpoint.
#[napi]
pub struct NativeListener {
    state: Arc<Mutex<State>>,
    id: String,
    url: String,
    proto: String,
    metadata: String,
    forwards_to: Arc<Mutex<String>>,
    terminate_at: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NativeListener {
    fn new(fwd: Forwarder) -> Self {
        NativeListener {
            id: fwd.id().to_owned(),
            url: fwd.url().to_owned(),
            proto: fwd.proto().to_owned(),
            metadata: fwd.metadata().to_owned(),
            forwards_to: Arc::new(Mutex::new(fwd.forwards_to().to_owned())),
            terminate_at: fwd.terminate_at().to_string(),
            state: Arc::new(Mutex::new(State::Forwarding(fwd))),
        }
    }

    fn listening(listener: Listener) -> Self {
        NativeListener {
            id: listener.id().to_owned(),
            url: listener.url().to_owned(),
            proto: listener.proto().to_owned(),
            metadata: listener.metadata().to_owned(),
            forwards_to: Arc::new(Mutex::new(listener.forwards_to().to_owned())),
            terminate_at: listener.terminate_at().to_string(),
            state: Arc::new(Mutex::new(State::Listening(listener))),
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
    /// "http", "tls" or "tcp".
    #[napi]
    pub fn proto(&self) -> String {
        self.proto.clone()
    }
    /// The endpoint's metadata.
    #[napi]
    pub fn metadata(&self) -> String {
        self.metadata.clone()
    }
    /// What the endpoint forwards to (empty until `forward()` for a `listen()`ed one).
    #[napi]
    pub fn forwards_to(&self) -> String {
        lock(&self.forwards_to).clone()
    }
    /// Where TLS is terminated.
    #[napi]
    pub fn terminate_at(&self) -> String {
        self.terminate_at.clone()
    }

    /// Starts forwarding a `listen()`ed endpoint to the upstream of `opts` (parsed
    /// `{addr}`): ngrok's `Listener.forward`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn forward<'env>(
        &self,
        env: &'env Env,
        opts: &NativeOptions,
    ) -> Result<PromiseRaw<'env, ()>> {
        let upstream = opts.parsed.upstream.clone();
        let (state, forwards_to) = (self.state.clone(), self.forwards_to.clone());
        // Started on napi's runtime: the forwarder spawns its accept loop there.
        promise(env, async move {
            let mut state = lock(&state);
            match std::mem::replace(&mut *state, State::Closed) {
                State::Listening(listener) => {
                    let fwd = listener.forward(&upstream)?;
                    *lock(&forwards_to) = fwd.forwards_to().to_owned();
                    *state = State::Forwarding(fwd);
                    Ok(())
                }
                other => {
                    let already = matches!(other, State::Forwarding(_));
                    *state = other;
                    Err(burrow_core::Error::new(
                        ErrorCode::InvalidOption,
                        if already {
                            "this listener already forwards; forward() is for one made by listen()"
                        } else {
                            "this listener is closed"
                        },
                    ))
                }
            }
        })
    }

    /// Stops the endpoint (idempotent).
    #[napi]
    pub fn close(&self) {
        match std::mem::replace(&mut *lock(&self.state), State::Closed) {
            State::Forwarding(fwd) => fwd.close(),
            State::Listening(mut listener) => listener.close(),
            State::Closed => {}
        }
    }

    /// Resolves when the endpoint is closed (at once if it never forwarded).
    #[napi]
    pub async fn join(&self) -> Result<()> {
        let closed = match &*lock(&self.state) {
            State::Forwarding(f) => Some(f.closed()),
            _ => None,
        };
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
    http_addr: Option<String>,
    admin_addr: Option<String>,
    metrics_addr: Option<String>,
    ca_pem: String,
}

#[napi]
impl NativeEdge {
    /// Starts an edge; `config_json` holds the edge config file's keys (see
    /// `EdgeConfig::in_process`).
    #[napi(ts_return_type = "Promise<NativeEdge>")]
    pub fn start(env: &Env, config_json: String) -> Result<PromiseRaw<'_, NativeEdge>> {
        promise(env, async move {
            let config = EdgeConfig::in_process(&config_json)?;
            let edge = Edge::start(config).await?;
            Ok(NativeEdge {
                tunnel_addr: edge.tunnel_addr().to_string(),
                tls_addr: edge.tls_addr().to_string(),
                http_addr: edge.http_addr().map(|a| a.to_string()),
                admin_addr: edge.admin_addr().map(|a| a.to_string()),
                metrics_addr: edge.metrics_addr().map(|a| a.to_string()),
                ca_pem: edge.ca_pem().to_owned(),
                edge: Mutex::new(Some(edge)),
            })
        })
    }

    /// Authenticated sessions: `[id, clientInfo entries, metadata]` each.
    #[napi(ts_return_type = "Array<[string, Array<string>, string]>")]
    pub fn sessions(&self) -> Vec<(String, Vec<String>, String)> {
        lock(&self.edge)
            .as_ref()
            .map(|e| {
                e.sessions()
                    .into_iter()
                    .map(|s| (s.id, s.client_info, s.metadata))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sends ngrok's "stop", "restart" or "update" command to a session; rejects with the
    /// agent's refusal. `reason` goes with "stop".
    #[napi(ts_return_type = "Promise<void>")]
    pub fn send_command<'env>(
        &self,
        env: &'env Env,
        session_id: String,
        command: String,
        version: Option<String>,
        permit_major_version: Option<bool>,
        reason: Option<String>,
    ) -> Result<PromiseRaw<'env, ()>> {
        let command = match command.as_str() {
            "stop" => Command::Stop { reason },
            "restart" => Command::Restart,
            "update" => Command::Update {
                version: version.unwrap_or_default(),
                permit_major_version: permit_major_version.unwrap_or(false),
            },
            other => {
                return Err(invalid(
                    env,
                    format!("command {other:?} is not one of \"stop\", \"restart\", \"update\""),
                ))
            }
        };
        let answer = lock(&self.edge)
            .as_ref()
            .map(|e| e.send_command(&session_id, command));
        promise(env, async move {
            match answer {
                Some(answer) => answer.await,
                None => Err(burrow_core::Error::new(
                    ErrorCode::Closed,
                    "the edge is closed",
                )),
            }
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
    /// The plain-HTTP listener of http endpoints, when the edge has one.
    #[napi]
    pub fn http_addr(&self) -> Option<String> {
        self.http_addr.clone()
    }
    /// The admin API listener, when `admin_addr` is set.
    #[napi]
    pub fn admin_addr(&self) -> Option<String> {
        self.admin_addr.clone()
    }
    /// The metrics listener (`GET /metrics`), when `metrics_addr` is set.
    #[napi]
    pub fn metrics_addr(&self) -> Option<String> {
        self.metrics_addr.clone()
    }
    /// The edge's metrics (OpenMetrics text), as `GET /metrics` serves them.
    #[napi]
    pub fn metrics_text(&self) -> String {
        lock(&self.edge)
            .as_ref()
            .map(Edge::metrics_text)
            .unwrap_or_default()
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
pub fn set_log_level(env: &Env, level: String) -> Result<()> {
    use tracing_subscriber::filter::LevelFilter;
    let filter = match level.to_ascii_uppercase().as_str() {
        "OFF" => LevelFilter::OFF,
        "ERROR" => LevelFilter::ERROR,
        "WARN" | "WARNING" => LevelFilter::WARN,
        "INFO" => LevelFilter::INFO,
        "DEBUG" => LevelFilter::DEBUG,
        "TRACE" => LevelFilter::TRACE,
        other => {
            return Err(invalid(
                env,
                format!("log level {other:?} is not one of OFF, ERROR, WARN, INFO, DEBUG, TRACE"),
            ))
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
pub fn check_policy(env: &Env, policy: String) -> Result<()> {
    burrow_core::policy::TrafficPolicy::parse(&policy)
        .map(|_| ())
        .map_err(|e| js_error(env, &e))
}
