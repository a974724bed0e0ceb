//! Automatic certificates from an ACME directory (RFC 8555, e.g. Let's Encrypt),
//! validated with TLS-ALPN-01 (RFC 8737), which the public TLS listener answers.
//!
//! An order starts on the first edge-terminated bind for a name that has no valid
//! certificate; the bind waits for it up to `bind_wait_ms`. Certificates and keys are
//! kept in `<state_dir>/acme/<directory id>/` (keys mode 0600) and reloaded at start, and
//! a background task renews them inside the renewal window. One order runs per name at
//! a time, whoever asked for it (binds, renewal).

use super::certs::{CertStore, Issued};
use crate::error::{Error, ErrorCode, Result};
use crate::tls::{self, CertKey, ServerTlsSettings};
use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType, Identifier,
    NewAccount, NewOrder, Order, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::server::Accepted;
use rustls::ServerConfig;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The ALPN protocol of TLS-ALPN-01 validation connections.
pub const ACME_TLS_ALPN: &str = "acme-tls/1";

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Longest an order may run (directory calls, validation, issuance) before it is abandoned.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest the renewal task sleeps before looking at the certificates again.
const MAX_RENEW_SLEEP: Duration = Duration::from_secs(3600);

/// Where automatic certificates come from when `[acme]` is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AcmeMode {
    /// Order certificates from the ACME directory.
    #[default]
    Acme,
    /// Ignore the rest of `[acme]`: every automatic certificate comes from the edge's own CA.
    OwnCa,
}

/// How the ACME directory validates that the edge controls a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[non_exhaustive]
pub enum ChallengeKind {
    /// TLS-ALPN-01, answered on the public TLS listener (the directory connects to port 443
    /// of the name, so the listener must be reachable there).
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// The `[acme]` section of the edge config.
///
/// Names under the edge's `domain_suffix` (random endpoint names) and IP addresses always
/// get certificates from the edge's own CA; give the edge an operator wildcard
/// certificate for `*.<domain_suffix>` to serve publicly trusted ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// `"acme"` (default) or `"own-ca"`.
    pub mode: AcmeMode,
    /// The directory URL (https); default Let's Encrypt production.
    pub directory: String,
    /// Contact email given to the directory when registering the account.
    pub contact: Option<String>,
    /// The challenge type; only `"tls-alpn-01"` is supported.
    pub challenge: ChallengeKind,
    /// Extra PEM CA certificates to trust for the directory's HTTPS (e.g. pebble's).
    pub ca_bundle: Option<PathBuf>,
    /// How long a bind waits for a new certificate before it fails (milliseconds).
    /// Keep it below the agent's 30 s bind timeout.
    pub bind_wait_ms: u64,
    /// Renew when a certificate expires within this many days (capped at two thirds of
    /// the certificate's lifetime, so short-lived certificates are not renewed constantly).
    pub renew_before_days: u32,
    /// First delay before retrying a failed order (milliseconds); doubles on every
    /// failure, with ±25 % jitter.
    pub retry_initial_ms: u64,
    /// Longest delay between retries (milliseconds).
    pub retry_max_ms: u64,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            mode: AcmeMode::Acme,
            directory: LETS_ENCRYPT_DIRECTORY.to_owned(),
            contact: None,
            challenge: ChallengeKind::TlsAlpn01,
            ca_bundle: None,
            bind_wait_ms: 25_000,
            renew_before_days: 30,
            retry_initial_ms: 60_000,
            retry_max_ms: 6 * 3600 * 1000,
        }
    }
}

impl AcmeConfig {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::new(ErrorCode::Config, format!("acme.{m}")));
        if !self.directory.starts_with("https://") {
            return bad(format!(
                "directory: {:?} must be an https:// URL",
                self.directory
            ));
        }
        if let Some(c) = &self.contact {
            if !c.trim_start_matches("mailto:").contains('@') {
                return bad(format!("contact: {c:?} is not an email address"));
            }
        }
        if self.bind_wait_ms < 100 {
            return bad("bind_wait_ms must be at least 100".into());
        }
        if self.renew_before_days == 0 {
            return bad("renew_before_days must be at least 1".into());
        }
        if self.retry_initial_ms == 0 || self.retry_initial_ms > self.retry_max_ms {
            return bad("retry_initial_ms must be at least 1 and at most retry_max_ms".into());
        }
        Ok(())
    }

    fn renew_window(&self) -> Duration {
        Duration::from_secs(u64::from(self.renew_before_days) * 86_400)
    }
}

/// What the edge's ACME client has done since the edge started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AcmeCounters {
    /// Orders placed with the directory (first certificates and renewals).
    pub orders: u64,
    /// Renewals that replaced a certificate.
    pub renewals: u64,
    /// Orders that failed.
    pub failures: u64,
    /// Stored certificates loaded from the state directory at start.
    pub loaded: u64,
    /// TLS-ALPN-01 validation handshakes the public listener completed.
    pub validations: u64,
}

#[derive(Default)]
struct Counters {
    orders: AtomicU64,
    renewals: AtomicU64,
    failures: AtomicU64,
    loaded: AtomicU64,
    validations: AtomicU64,
}

/// A failed order and when the next one may be tried.
struct Failure {
    error: Error,
    attempts: u32,
    retry_at: SystemTime,
}

type Https = hyper_rustls::HttpsConnector<HttpConnector>;
type Outcome = Option<Result<()>>;

/// The edge's ACME client: account, orders in flight, challenge answers, renewal.
pub(crate) struct Acme {
    config: AcmeConfig,
    /// `<state_dir>/acme/<directory id>`; `None` keeps everything in memory.
    dir: Option<PathBuf>,
    http: HyperClient<Https, BodyWrapper<Bytes>>,
    store: Arc<CertStore>,
    account: tokio::sync::Mutex<Option<Account>>,
    /// TLS-ALPN-01 answers by name, while a challenge is pending.
    challenges: Mutex<HashMap<String, CertKey>>,
    inflight: Mutex<HashMap<String, watch::Receiver<Outcome>>>,
    failures: Mutex<HashMap<String, Failure>>,
    /// Names some bind used; the renewal task keeps these fresh.
    used: Mutex<HashSet<String>>,
    counters: Counters,
    wake: Notify,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl fmt::Debug for Acme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acme")
            .field("directory", &self.config.directory)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Acme {
    /// Sets up the client and loads the certificates stored for this directory.
    pub(crate) fn new(
        config: AcmeConfig,
        state_dir: Option<&Path>,
        store: Arc<CertStore>,
        tasks: TaskTracker,
        stop: CancellationToken,
    ) -> Result<Arc<Acme>> {
        config.validate()?;
        let http = http_client(config.ca_bundle.as_deref())?;
        let dir = match state_dir {
            Some(state) => {
                let dir = state.join("acme").join(directory_id(&config.directory));
                std::fs::create_dir_all(&dir)
                    .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
                let note = dir.join("directory.txt");
                if !note.exists() {
                    std::fs::write(&note, format!("{}\n", config.directory))
                        .map_err(|e| Error::io(format!("writing {}", note.display()), e))?;
                }
                Some(dir)
            }
            None => {
                tracing::warn!("no state_dir: ACME certificates and the account live in memory and are ordered again after a restart");
                None
            }
        };
        let acme = Arc::new(Acme {
            config,
            dir,
            http,
            store,
            account: tokio::sync::Mutex::new(None),
            challenges: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            used: Mutex::new(HashSet::new()),
            counters: Counters::default(),
            wake: Notify::new(),
            tasks,
            stop,
        });
        acme.load_stored();
        Ok(acme)
    }

    /// False when `mode = "own-ca"`.
    pub(crate) fn enabled(&self) -> bool {
        self.config.mode == AcmeMode::Acme
    }

    /// The counters so far.
    pub(crate) fn counters(&self) -> AcmeCounters {
        let c = &self.counters;
        AcmeCounters {
            orders: c.orders.load(Ordering::Relaxed),
            renewals: c.renewals.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            loaded: c.loaded.load(Ordering::Relaxed),
            validations: c.validations.load(Ordering::Relaxed),
        }
    }

    /// Records that an endpoint serves `name`, so renewal keeps its certificate fresh.
    pub(crate) fn mark_used(&self, name: &str) {
        if lock(&self.used).insert(name.to_owned()) {
            self.wake.notify_one();
        }
    }

    /// Makes sure a valid certificate for `name` is in the store, ordering one if needed
    /// and waiting for it up to `bind_wait_ms`.
    pub(crate) async fn obtain(self: &Arc<Self>, name: &str) -> Result<()> {
        self.mark_used(name);
        if self.store.automatic(name).is_some_and(|i| !i.expired()) {
            return Ok(());
        }
        if let Some(err) = self.backing_off(name) {
            return Err(err);
        }
        let mut outcome = self.start_order(name, false);
        let wait = Duration::from_millis(self.config.bind_wait_ms);
        let done = tokio::time::timeout(wait, async {
            outcome
                .wait_for(Option::is_some)
                .await
                .map(|v| v.clone().unwrap_or(Ok(())))
        })
        .await;
        match done {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::new(
                ErrorCode::Closed,
                "the edge stopped before the certificate order finished",
            )),
            Err(_) => Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "no certificate for {name} from {} within {wait:?}; the order goes on in the background, bind again shortly",
                    self.config.directory
                ),
            )),
        }
    }

    /// The last failure for `name` while its retry delay runs.
    fn backing_off(&self, name: &str) -> Option<Error> {
        let failures = lock(&self.failures);
        let f = failures.get(name)?;
        let left = f.retry_at.duration_since(SystemTime::now()).ok()?;
        Some(Error::new(
            f.error.code(),
            format!(
                "{} (failed {} time(s); next attempt in {}s)",
                f.error.message(),
                f.attempts,
                left.as_secs().max(1)
            ),
        ))
    }

    /// Starts an order for `name` unless one is running; returns where its outcome appears.
    fn start_order(self: &Arc<Self>, name: &str, renewal: bool) -> watch::Receiver<Outcome> {
        let mut inflight = lock(&self.inflight);
        if let Some(rx) = inflight.get(name) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        inflight.insert(name.to_owned(), rx.clone());
        drop(inflight);
        let acme = self.clone();
        let owned = name.to_owned();
        self.tasks.spawn(
            async move {
                let name = owned;
                tracing::info!(renewal, directory = %acme.config.directory, "ordering a certificate");
                let result = tokio::select! {
                    _ = acme.stop.cancelled() => Err(Error::new(ErrorCode::Closed, "the edge stopped during the order")),
                    r = tokio::time::timeout(ORDER_TIMEOUT, acme.order(&name)) => r.unwrap_or_else(|_| Err(Error::new(
                        ErrorCode::AcmeFailed,
                        format!("the order for {name} did not complete within {ORDER_TIMEOUT:?}"),
                    ))),
                };
                lock(&acme.challenges).remove(&name);
                let outcome = match result {
                    Ok(issued) => {
                        tracing::info!(renewal, not_after = ?issued.not_after, "certificate issued");
                        acme.store.set_automatic(&name, issued);
                        lock(&acme.failures).remove(&name);
                        if renewal {
                            acme.counters.renewals.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(())
                    }
                    Err(e) => {
                        acme.counters.failures.fetch_add(1, Ordering::Relaxed);
                        let delay = acme.record_failure(&name, &e);
                        tracing::warn!(renewal, error = %e, retry_in = ?delay, "certificate order failed");
                        Err(e)
                    }
                };
                lock(&acme.inflight).remove(&name);
                let _ = tx.send(Some(outcome));
                acme.wake.notify_one();
            }
            .instrument(tracing::info_span!("acme", %name)),
        );
        rx
    }

    fn record_failure(&self, name: &str, error: &Error) -> Duration {
        let mut failures = lock(&self.failures);
        let attempts = failures.get(name).map_or(0, |f| f.attempts) + 1;
        let delay = backoff(
            attempts,
            Duration::from_millis(self.config.retry_initial_ms),
            Duration::from_millis(self.config.retry_max_ms),
        );
        failures.insert(
            name.to_owned(),
            Failure {
                error: error.clone(),
                attempts,
                retry_at: SystemTime::now() + delay,
            },
        );
        delay
    }

    /// The account, loaded from the state directory or registered on first use.
    async fn account(&self) -> Result<Account> {
        let mut cached = self.account.lock().await;
        if let Some(account) = &*cached {
            return Ok(account.clone());
        }
        let directory = &self.config.directory;
        let builder = || Account::builder_with_http(Box::new(self.http.clone()));
        let path = self.dir.as_ref().map(|d| d.join("account.json"));
        let stored = match &path {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
                let creds: AccountCredentials = serde_json::from_str(&text).map_err(|e| {
                    Error::new(
                        ErrorCode::Config,
                        format!(
                            "{} is not a valid ACME account ({e}); delete it to register a new account",
                            p.display()
                        ),
                    )
                })?;
                Some(creds)
            }
            _ => None,
        };
        let account = match stored {
            Some(creds) => builder()
                .from_credentials(creds)
                .await
                .map_err(|e| classify(e, directory, "loading the ACME account"))?,
            None => {
                let contact =
                    self.config
                        .contact
                        .as_ref()
                        .map(|c| match c.strip_prefix("mailto:") {
                            Some(_) => c.clone(),
                            None => format!("mailto:{c}"),
                        });
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, creds) = builder()
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| classify(e, directory, "registering an ACME account"))?;
                if let Some(p) = &path {
                    let json = serde_json::to_string(&creds).map_err(|e| {
                        Error::new(ErrorCode::Internal, format!("ACME account: {e}"))
                    })?;
                    write_private(p, json.as_bytes())?;
                }
                tracing::info!(%directory, account = %account.id(), "ACME account registered");
                account
            }
        };
        *cached = Some(account.clone());
        Ok(account)
    }

    /// One order for `name`, from new-order to the stored certificate.
    async fn order(&self, name: &str) -> Result<Issued> {
        let directory = &self.config.directory;
        let account = self.account().await?;
        self.counters.orders.fetch_add(1, Ordering::Relaxed);
        let identifiers = [Identifier::Dns(name.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| classify(e, directory, &format!("ordering a certificate for {name}")))?;
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz =
                    authz.map_err(|e| classify(e, directory, "fetching the authorization"))?;
                match authz.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => {
                        return Err(Error::new(
                            ErrorCode::AcmeFailed,
                            format!("{directory}: the authorization for {name} is {other:?}"),
                        ))
                    }
                }
                let mut challenge = authz.challenge(ChallengeType::TlsAlpn01).ok_or_else(|| {
                    Error::new(
                        ErrorCode::AcmeFailed,
                        format!("{directory} offers no tls-alpn-01 challenge for {name}"),
                    )
                })?;
                let answer = challenge_cert(name, challenge.key_authorization().digest().as_ref())?;
                lock(&self.challenges).insert(name.to_owned(), answer);
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| classify(e, directory, "answering the challenge"))?;
            }
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .backoff(1.5)
            .timeout(ORDER_TIMEOUT);
        match order.poll_ready(&retry).await {
            Ok(OrderStatus::Ready) => {}
            Ok(_) => return Err(challenge_failure(&mut order, name, directory, None).await),
            Err(instant_acme::Error::Api(p)) => {
                return Err(challenge_failure(&mut order, name, directory, Some(p)).await)
            }
            Err(e) => return Err(classify(e, directory, "waiting for validation")),
        }
        lock(&self.challenges).remove(name);
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(rcgen_err)?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(rcgen_err)?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| classify(e, directory, "finalizing the order"))?;
        let chain = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| classify(e, directory, "downloading the certificate"))?;
        let key_pem = key.serialize_pem();
        let cert = CertKey::from_pem(chain.as_bytes(), key_pem.as_bytes())?;
        cert.check_covers(name)?;
        let issued = Issued::new(cert)?;
        self.persist(name, &chain, &key_pem)?;
        Ok(issued)
    }

    /// Writes the key (0600) and then the chain, each replaced atomically.
    fn persist(&self, name: &str, chain: &str, key_pem: &str) -> Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        write_private(&dir.join(format!("{name}.key")), key_pem.as_bytes())?;
        write_private(&dir.join(format!("{name}.crt")), chain.as_bytes())
    }

    /// Loads the certificates stored for this directory; unusable ones are skipped (and
    /// ordered again when a bind needs them).
    fn load_stored(&self) {
        let Some(dir) = &self.dir else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("crt") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                continue;
            };
            match load_pair(&path, &path.with_extension("key"), &name) {
                Ok(issued) if issued.expired() => {
                    tracing::info!(%name, "stored certificate has expired; a bind orders a new one")
                }
                Ok(issued) => {
                    tracing::info!(%name, not_after = ?issued.not_after, "stored certificate loaded");
                    self.store.set_automatic(&name, issued);
                    self.counters.loaded.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(%name, error = %e, "stored certificate skipped"),
            }
        }
    }

    /// Completes a TLS-ALPN-01 validation handshake with the challenge certificate of
    /// `config` (from [`Acme::challenge_config`]), then closes.
    pub(crate) async fn answer_challenge(
        &self,
        accepted: Accepted,
        tcp: TcpStream,
        config: Arc<ServerConfig>,
        deadline: Duration,
    ) {
        let start = tokio_rustls::StartHandshake::from_parts(accepted, tcp);
        match tokio::time::timeout(deadline, start.into_stream(config)).await {
            Ok(Ok(mut tls)) => {
                self.counters.validations.fetch_add(1, Ordering::Relaxed);
                tracing::info!("answered a TLS-ALPN-01 validation");
                let _ = tls.shutdown().await;
            }
            Ok(Err(e)) => tracing::info!(error = %e, "TLS-ALPN-01 validation handshake failed"),
            Err(_) => tracing::info!("TLS-ALPN-01 validation handshake timed out"),
        }
    }

    /// The server config answering a TLS-ALPN-01 validation for `sni`, when the client
    /// offers `acme-tls/1` and a challenge for that name is pending.
    pub(crate) fn challenge_config(&self, sni: &str, alpn: &[String]) -> Option<Arc<ServerConfig>> {
        if !alpn.iter().any(|p| p == ACME_TLS_ALPN) {
            return None;
        }
        let cert = lock(&self.challenges).get(sni).cloned()?;
        let settings = ServerTlsSettings {
            alpn: vec![ACME_TLS_ALPN.to_owned()],
            ..Default::default()
        };
        match tls::server_config(&cert, &settings) {
            Ok(config) => Some(Arc::new(config)),
            Err(e) => {
                tracing::warn!(%sni, error = %e, "cannot build the TLS-ALPN-01 answer");
                None
            }
        }
    }
}

/// Renews the certificates of names in use when they enter their renewal window,
/// until the edge stops. Failed renewals are retried with jittered backoff; the old
/// certificate serves until a new one is stored.
pub(crate) async fn renew_loop(acme: Arc<Acme>) {
    let window = acme.config.renew_window();
    loop {
        let now = SystemTime::now();
        let mut next = now + MAX_RENEW_SLEEP;
        let used = lock(&acme.used).clone();
        for (name, issued) in acme.store.automatic_all() {
            if !used.contains(&name) {
                continue;
            }
            let mut due = renew_at(&issued, window);
            if let Some(f) = lock(&acme.failures).get(&name) {
                due = due.max(f.retry_at);
            }
            if due <= now {
                if !lock(&acme.inflight).contains_key(&name) {
                    tracing::info!(%name, not_after = ?issued.not_after, "certificate is due for renewal");
                    drop(acme.start_order(&name, true));
                }
            } else {
                next = next.min(due);
            }
        }
        let nap = next
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .max(Duration::from_millis(20));
        tokio::select! {
            _ = acme.stop.cancelled() => return,
            _ = tokio::time::sleep(nap) => {}
            _ = acme.wake.notified() => {}
        }
    }
}

/// When `issued` should be renewed: `window` before it expires, but never earlier than
/// a third into its lifetime.
fn renew_at(issued: &Issued, window: Duration) -> SystemTime {
    let lifetime = issued
        .not_after
        .duration_since(issued.not_before)
        .unwrap_or_default();
    let window = window.min(lifetime * 2 / 3);
    issued
        .not_after
        .checked_sub(window)
        .unwrap_or(issued.not_before)
}

/// `initial` doubled per earlier failure, at most `max`, then ±25 % jitter.
fn backoff(attempts: u32, initial: Duration, max: Duration) -> Duration {
    let doubled = initial.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    doubled.min(max).mul_f64(0.75 + rand::random::<f64>() * 0.5)
}

/// The self-signed certificate answering TLS-ALPN-01 (RFC 8737 section 3).
fn challenge_cert(name: &str, digest: &[u8]) -> Result<CertKey> {
    if digest.len() != 32 {
        return Err(Error::new(
            ErrorCode::Internal,
            "key authorization digest is not SHA-256",
        ));
    }
    let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(rcgen_err)?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let cert = params.self_signed(&key).map_err(rcgen_err)?;
    // Not through `CertKey::from_pem`: webpki rightly refuses the critical acmeIdentifier
    // extension in an end-entity certificate, and this one is only for the validator.
    let signing = tls::provider()
        .key_provider
        .load_private_key(rustls::pki_types::PrivateKeyDer::Pkcs8(
            key.serialize_der().into(),
        ))
        .map_err(|e| Error::new(ErrorCode::Internal, format!("challenge key: {e}")))?;
    Ok(CertKey {
        certified: Arc::new(rustls::sign::CertifiedKey::new(
            vec![cert.der().clone()],
            signing,
        )),
    })
}

/// Why validation failed, from the challenge's error when the directory gives one.
async fn challenge_failure(
    order: &mut Order,
    name: &str,
    directory: &str,
    order_problem: Option<instant_acme::Problem>,
) -> Error {
    let mut reason = order_problem.as_ref().map(problem_text);
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if let Ok(state) = authz.refresh().await {
            if let Some(p) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
                reason = Some(problem_text(p));
            }
        }
    }
    let reason = reason.unwrap_or_else(|| "the order became invalid".to_owned());
    Error::new(
        ErrorCode::AcmeFailed,
        format!(
            "{directory} could not validate {name} with tls-alpn-01 (challenge failed): {reason}"
        ),
    )
}

fn problem_text(p: &instant_acme::Problem) -> String {
    let detail = p.detail.as_deref().unwrap_or("no detail");
    match &p.r#type {
        Some(t) => format!("{detail} ({t})"),
        None => detail.to_owned(),
    }
}

/// Maps an ACME client error to a coded error saying what failed, while doing `what`.
fn classify(e: instant_acme::Error, directory: &str, what: &str) -> Error {
    use instant_acme::Error as E;
    match e {
        E::Api(p)
            if p.r#type
                .as_deref()
                .is_some_and(|t| t.ends_with(":rateLimited")) =>
        {
            Error::new(
                ErrorCode::AcmeRateLimited,
                format!(
                    "{directory} rate-limited this edge while {what}: {}",
                    problem_text(&p)
                ),
            )
        }
        E::Api(p) => Error::new(
            ErrorCode::AcmeFailed,
            format!("{directory} refused {what}: {}", problem_text(&p)),
        ),
        E::Other(_) | E::Hyper(_) | E::Http(_) | E::InvalidUri(_) => Error::new(
            ErrorCode::AcmeUnreachable,
            format!(
                "ACME directory {directory} unreachable while {what}: {}",
                chain(&e)
            ),
        ),
        other => Error::new(
            ErrorCode::AcmeFailed,
            format!("{directory}: {what} failed: {}", chain(&other)),
        ),
    }
}

/// An error and its sources, joined.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

fn rcgen_err(e: rcgen::Error) -> Error {
    Error::new(ErrorCode::Internal, format!("certificate generation: {e}"))
}

/// An HTTPS client (ring, TLS 1.2+) trusting the platform roots and `bundle`.
fn http_client(bundle: Option<&Path>) -> Result<HyperClient<Https, BodyWrapper<Bytes>>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = bundle {
        let pem = std::fs::read(path)
            .map_err(|e| Error::io(format!("reading acme.ca_bundle {}", path.display()), e))?;
        for ca in tls::parse_certs(&pem, "acme.ca_bundle")? {
            roots.add(ca).map_err(|e| {
                Error::new(
                    ErrorCode::InvalidPem,
                    format!("acme.ca_bundle: unusable CA certificate ({e})"),
                )
            })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::option(format!("TLS versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(HyperClient::builder(hyper_util::rt::TokioExecutor::new()).build(https))
}

/// A short stable id for a directory URL, naming its folder in the state directory.
fn directory_id(url: &str) -> String {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in url.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn load_pair(crt: &Path, key: &Path, name: &str) -> Result<Issued> {
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| Error::io(format!("reading {}", p.display()), e));
    let cert = CertKey::from_pem(&read(crt)?, &read(key)?)?;
    cert.check_covers(name)?;
    Issued::new(cert)
}

/// Writes `contents` to `path` with mode 0600, through a temporary file and a rename so a
/// reader never sees half a file.
fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{:08x}", rand::random::<u32>()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = opts
        .open(&tmp)
        .and_then(|mut f| f.write_all(contents).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(format!("writing {}", path.display()), e));
    }
    Ok(())
}
