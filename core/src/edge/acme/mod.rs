//! Automatic certificates from an ACME directory (RFC 8555, e.g. Let's Encrypt),
//! validated with TLS-ALPN-01 (RFC 8737), which the public TLS listener answers.
//!
//! An order starts on the first edge-terminated bind for a name that has no valid
//! certificate; the bind waits for it up to `bind_wait_ms`. Certificates and keys are
//! kept in `<state_dir>/acme/<directory id>/` (keys mode 0600) and reloaded at start, and
//! a background task renews them inside the renewal window. One order runs per name at
//! a time, whoever asked for it (binds, renewal).

mod challenge;
mod client;
mod config;
mod order;
mod store;

use challenge::{challenge_cert, challenge_failure};
use client::{classify, http_client, problem_text, rcgen_err};
pub use config::{AcmeConfig, AcmeMode, ChallengeKind, ACME_TLS_ALPN};
use store::{directory_id, write_private};

use super::certs::{CertStore, Issued};
use super::cluster::Cluster;
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
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Longest an order may run (directory calls, validation, issuance) before it is abandoned.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest the renewal task sleeps before looking at the certificates again.
const MAX_RENEW_SLEEP: Duration = Duration::from_secs(3600);

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
    /// The cluster this edge belongs to: the account, certificates and challenge
    /// answers are shared through it.
    cluster: Option<Arc<Cluster>>,
    account: tokio::sync::Mutex<Option<Account>>,
    /// TLS-ALPN-01 answers by name, while a challenge is pending.
    challenges: Mutex<HashMap<String, CertKey>>,
    /// HTTP-01 key authorizations by token, while a challenge is pending.
    http_tokens: Mutex<HashMap<String, String>>,
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
        cluster: Option<Arc<Cluster>>,
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
            cluster,
            account: tokio::sync::Mutex::new(None),
            challenges: Mutex::new(HashMap::new()),
            http_tokens: Mutex::new(HashMap::new()),
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
                if let Some(cluster) = &acme.cluster {
                    cluster.withdraw_challenge(&name).await;
                }
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
