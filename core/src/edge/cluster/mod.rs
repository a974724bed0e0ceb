//! Several edges as one: routes shared through etcd, and links between edges.
//!
//! Every edge holds an etcd lease and writes what it serves under it, so a dead edge's
//! keys vanish with its lease. A name is claimed in one etcd transaction that checks
//! the name and its wildcard neighbours have not changed since they were read, so two
//! edges can never give one name to two sessions. Lookups stay local: this edge's own
//! routes from memory, the others' from a cache fed by a watch on the prefix.

mod config;
mod keys;
pub(crate) mod link;

pub use config::ClusterConfig;
pub(crate) use keys::RouteValue;

use super::certs::{CertStore, Issued};
use super::routes::wildcard_of;
use crate::error::{Error, ErrorCode, Result};
use crate::tls::CertAuthority;
use crate::tls::CertKey;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use keys::{Cache, CertValue, EdgeValue, Keys, Parsed, SessionValue};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

/// How long one etcd call may take before it counts as a failure.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest wait between two attempts to reach etcd.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Claim attempts before giving up when other claims keep changing the names read.
const CLAIM_ATTEMPTS: usize = 16;

/// This edge's membership in a cluster.
pub(crate) struct Cluster {
    pub(crate) config: ClusterConfig,
    keys: Keys,
    client: Client,
    /// The lease this edge's keys live under; `None` while it has none (etcd lost).
    lease: RwLock<Option<i64>>,
    /// Whether this edge serves: false from the moment its lease may have lapsed
    /// until it holds a new one.
    serving: watch::Sender<bool>,
    cache: RwLock<Cache>,
    /// Where ACME certificates from the other edges go; the ACME directory they must
    /// come from (`None`: this edge uses no ACME, and takes none).
    certs: Arc<CertStore>,
    directory: Option<String>,
    /// Turns taken across the members of pools that span several edges.
    pool_turns: std::sync::atomic::AtomicUsize,
}

/// A failure talking to etcd, as the edge reports it.
fn etcd_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::ConnectFailed, format!("etcd: {what}: {e}"))
}

/// Runs one etcd call under [`CALL_TIMEOUT`].
async fn call<T>(
    what: &str,
    fut: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(etcd_error(what, e)),
        Err(_) => Err(etcd_error(what, "no answer within 3s")),
    }
}

/// A hash of an authtoken, to compare tokens across edges without storing them.
pub(crate) fn token_hash(token: Option<&str>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.unwrap_or("").as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Cluster {
    /// Connects to etcd, retrying (and saying so) until it answers or `stop`. The config
    /// was validated with the edge's.
    pub(crate) async fn connect(
        config: ClusterConfig,
        certs: Arc<CertStore>,
        directory: Option<String>,
        stop: &CancellationToken,
    ) -> Result<Self> {
        let options = connect_options(&config)?;
        let mut delay = Duration::from_millis(100);
        let client = loop {
            let attempt = async {
                let mut client = call(
                    "connect",
                    Client::connect(config.etcd.clone(), Some(options.clone())),
                )
                .await?;
                call("status", client.status()).await?;
                Ok::<_, Error>(client)
            };
            match attempt.await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(etcd = ?config.etcd, error = %e, "etcd is unreachable; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return Err(Error::new(ErrorCode::Closed, "the edge stopped while waiting for etcd")),
                        _ = sleep(delay) => {}
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        };
        let (serving, _) = watch::channel(false);
        Ok(Cluster {
            keys: Keys::new(&config.prefix),
            config,
            client,
            lease: RwLock::new(None),
            serving,
            cache: RwLock::new(Cache::default()),
            certs,
            directory,
            pool_turns: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn client(&self) -> Client {
        self.client.clone()
    }

    /// The cluster's CA: the one in etcd, or a new one this edge puts there first.
    pub(crate) async fn shared_ca(&self) -> Result<CertAuthority> {
        if let Some(ca) = self.stored_ca().await? {
            return Ok(ca);
        }
        let key = self.keys.ca();
        let fresh = CertAuthority::generate()?;
        let value =
            serde_json::json!({"cert": fresh.cert_pem(), "key": fresh.key_pem()}).to_string();
        // Create-if-absent: of edges starting at once, the first one's CA is everyone's.
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        call("storing the cluster CA", self.client().txn(txn)).await?;
        self.stored_ca()
            .await?
            .ok_or_else(|| etcd_error("reading the cluster CA", "it vanished"))
    }

    /// The CA stored in etcd, if any.
    async fn stored_ca(&self) -> Result<Option<CertAuthority>> {
        let got = call(
            "reading the cluster CA",
            self.client().get(self.keys.ca(), None),
        )
        .await?;
        let Some(kv) = got.kvs().first() else {
            return Ok(None);
        };
        let stored: serde_json::Value = serde_json::from_slice(kv.value()).map_err(|e| {
            Error::new(
                ErrorCode::Config,
                format!("the cluster CA in etcd is unreadable: {e}"),
            )
        })?;
        let field = |name: &str| stored.get(name).and_then(|v| v.as_str()).unwrap_or("");
        CertAuthority::from_pem(field("cert"), field("key")).map(Some)
    }

    /// Whether this edge serves right now.
    pub(crate) fn is_serving(&self) -> bool {
        *self.serving.borrow()
    }

    /// This edge's id.
    pub(crate) fn edge_id(&self) -> &str {
        &self.config.edge_id
    }

    fn lease_id(&self) -> Result<i64> {
        let lease = *self.lease.read().unwrap_or_else(|p| p.into_inner());
        lease.filter(|_| self.is_serving()).ok_or_else(|| {
            Error::new(
                ErrorCode::ConnectFailed,
                "this edge is not serving: it lost its etcd lease and is getting a new one; retry",
            )
        })
    }

    /// Takes a new lease, registers this edge under it and loads the cache; then the
    /// edge serves.
    pub(crate) async fn join(&self) -> Result<()> {
        let mut client = self.client();
        let ttl = i64::try_from(self.config.lease_ttl_secs).unwrap_or(i64::MAX);
        let granted = call("granting a lease", client.lease_grant(ttl, None)).await?;
        let lease = granted.id();
        let edge = EdgeValue {
            link_addr: self.config.link_addr,
        };
        let put = PutOptions::new().with_lease(lease);
        let value = serde_json::to_vec(&edge).map_err(|e| etcd_error("encoding", e))?;
        call(
            "registering this edge",
            client.put(self.keys.edge(&self.config.edge_id), value, Some(put)),
        )
        .await?;
        *self.lease.write().unwrap_or_else(|p| p.into_inner()) = Some(lease);
        self.serving.send_replace(true);
        tracing::info!(edge_id = %self.config.edge_id, lease, ttl_secs = ttl, "joined the cluster");
        Ok(())
    }

    /// Gives up the lease at once (graceful shutdown): every key of this edge goes.
    pub(crate) async fn leave(&self) {
        self.serving.send_replace(false);
        let lease = self.lease.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(lease) = lease {
            match call("revoking the lease", self.client().lease_revoke(lease)).await {
                Ok(_) => tracing::info!(lease, "left the cluster: lease revoked"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not revoke the lease; its keys go when it lapses")
                }
            }
        }
    }

    /// Keeps the lease alive; returns when it may have lapsed (this edge must stop
    /// serving at once) or when `stop` is cancelled.
    pub(crate) async fn keep_alive(&self, stop: &CancellationToken) -> Result<()> {
        let Some(lease) = *self.lease.read().unwrap_or_else(|p| p.into_inner()) else {
            return Err(etcd_error("keepalive", "no lease"));
        };
        let ttl = self.config.ttl();
        // Give up a quarter of the TTL early: etcd's clock for the lease started
        // before this edge's, and no name may be served by two owners meanwhile.
        let give_up = ttl - ttl / 4;
        let every = (ttl / 4).max(Duration::from_millis(100));
        let mut last_ok = Instant::now();
        let mut stream = None;
        loop {
            let deadline = last_ok + give_up;
            if Instant::now() >= deadline {
                return Err(etcd_error(
                    "keepalive",
                    format!("no lease renewal for {give_up:?}"),
                ));
            }
            let renewed = async {
                if stream.is_none() {
                    stream = Some(call("keepalive", self.client().lease_keep_alive(lease)).await?);
                }
                let Some((keeper, answers)) = stream.as_mut() else {
                    return Err(etcd_error("keepalive", "no stream"));
                };
                call("keepalive", keeper.keep_alive()).await?;
                match call("keepalive", answers.message()).await? {
                    Some(answer) if answer.ttl() > 0 => Ok(()),
                    Some(_) => Err(Error::new(ErrorCode::Closed, "etcd says the lease expired")),
                    None => Err(etcd_error("keepalive", "stream ended")),
                }
            };
            let result = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                r = timeout_at_deadline(deadline, renewed) => r,
            };
            match result {
                Ok(()) => last_ok = Instant::now(),
                Err(e) if e.code() == ErrorCode::Closed => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "lease keepalive failed; retrying");
                    stream = None;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = sleep(every.min(deadline.saturating_duration_since(Instant::now()))) => {}
            }
        }
    }

    /// Stops serving: the lease may have lapsed. The old lease is revoked when etcd
    /// can be reached again, so its keys cannot outlive this decision.
    pub(crate) fn lost(&self) -> Option<i64> {
        self.serving.send_replace(false);
        self.lease.write().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Revokes a lease this edge gave up (best effort: it lapses anyway).
    pub(crate) async fn revoke(&self, lease: i64) {
        if let Err(e) = call("revoking the old lease", self.client().lease_revoke(lease)).await {
            tracing::debug!(error = %e, lease, "old lease not revoked (it lapses by itself)");
        }
    }

    /// Fills the cache from etcd and keeps it current until the watch fails (then
    /// returns, for the caller to retry) or `stop`.
    pub(crate) async fn watch(&self, stop: &CancellationToken) -> Result<()> {
        let mut client = self.client();
        let all = GetOptions::new().with_prefix();
        let snapshot = call("loading the routes", client.get(self.keys.all(), Some(all))).await?;
        let revision = snapshot.header().map_or(0, |h| h.revision());
        {
            let mut cache = Cache::default();
            for kv in snapshot.kvs() {
                if let Ok(key) = kv.key_str() {
                    cache.apply(&self.keys, key, Some(kv.value()));
                    self.take_cert(key, Some(kv.value()));
                }
            }
            *self.cache.write().unwrap_or_else(|p| p.into_inner()) = cache;
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = call(
            "watching the routes",
            client.watch(self.keys.all(), Some(options)),
        )
        .await?;
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                m = stream.message() => m.map_err(|e| etcd_error("watch", e))?,
            };
            let Some(message) = message else {
                return Err(etcd_error("watch", "stream ended"));
            };
            if message.canceled() {
                return Err(etcd_error("watch", message.cancel_reason()));
            }
            let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
            for event in message.events() {
                let Some(kv) = event.kv() else { continue };
                let Ok(key) = kv.key_str() else { continue };
                let value = match event.event_type() {
                    EventType::Put => Some(kv.value()),
                    EventType::Delete => None,
                };
                cache.apply(&self.keys, key, value);
                self.take_cert(key, value);
            }
        }
    }

    /// Puts a certificate another edge shared into this edge's store, when it is
    /// from this edge's ACME directory and newer than the one held.
    fn take_cert(&self, key: &str, value: Option<&[u8]>) {
        let (Some(Parsed::Cert(name)), Some(value), Some(directory)) =
            (self.keys.parse(key), value, &self.directory)
        else {
            return;
        };
        let Ok(shared) = serde_json::from_slice::<CertValue>(value) else {
            return tracing::warn!(%name, "unreadable certificate in etcd, skipped");
        };
        if shared.directory != *directory {
            return;
        }
        let issued =
            CertKey::from_pem(shared.chain.as_bytes(), shared.key.as_bytes()).and_then(|cert| {
                cert.check_covers(&name)?;
                Issued::new(cert)
            });
        match issued {
            Ok(issued) => {
                let newer = self
                    .certs
                    .automatic(&name)
                    .map_or(true, |held| held.not_after < issued.not_after);
                if newer && !issued.expired() {
                    tracing::info!(%name, not_after = ?issued.not_after, "certificate from the cluster");
                    self.certs.set_automatic(&name, issued);
                }
            }
            Err(e) => tracing::warn!(%name, error = %e, "certificate in etcd skipped"),
        }
    }

    /// Shares a certificate this edge's ACME client got with every edge.
    pub(crate) async fn share_cert(&self, name: &str, chain: &str, key_pem: &str) -> Result<()> {
        let Some(directory) = &self.directory else {
            return Ok(());
        };
        let value = serde_json::to_vec(&CertValue {
            directory: directory.clone(),
            chain: chain.to_owned(),
            key: key_pem.to_owned(),
        })
        .map_err(|e| etcd_error("encoding", e))?;
        call(
            "sharing the certificate",
            self.client().put(self.keys.cert(name), value, None),
        )
        .await?;
        Ok(())
    }

    /// The ACME account the edges share for `directory_id`, if one is stored.
    pub(crate) async fn stored_account(&self, directory_id: &str) -> Result<Option<String>> {
        let got = call(
            "reading the ACME account",
            self.client().get(self.keys.account(directory_id), None),
        )
        .await?;
        Ok(got
            .kvs()
            .first()
            .and_then(|kv| kv.value_str().ok())
            .map(str::to_owned))
    }

    /// Stores `credentials` as the shared account unless another edge stored one first;
    /// returns the one stored.
    pub(crate) async fn share_account(
        &self,
        directory_id: &str,
        credentials: &str,
    ) -> Result<String> {
        let key = self.keys.account(directory_id);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, credentials, None)]);
        call("sharing the ACME account", self.client().txn(txn)).await?;
        self.stored_account(directory_id)
            .await?
            .ok_or_else(|| etcd_error("sharing the ACME account", "it vanished"))
    }

    /// Tells the other edges that this one answers the TLS-ALPN-01 challenge for `name`.
    pub(crate) async fn announce_challenge(&self, name: &str) -> Result<()> {
        let put = PutOptions::new().with_lease(self.lease_id()?);
        call(
            "announcing the challenge",
            self.client().put(
                self.keys.challenge(name),
                self.config.edge_id.as_str(),
                Some(put),
            ),
        )
        .await?;
        Ok(())
    }

    /// Withdraws the announcement (the order is over).
    pub(crate) async fn withdraw_challenge(&self, name: &str) {
        let key = self.keys.challenge(name);
        let txn = Txn::new()
            .when([Compare::value(
                key.clone(),
                CompareOp::Equal,
                self.config.edge_id.as_str(),
            )])
            .and_then([TxnOp::delete(key, None)]);
        if let Err(e) = call("withdrawing the challenge", self.client().txn(txn)).await {
            tracing::debug!(%name, error = %e, "challenge key left (it goes with the lease)");
        }
    }

    /// The other edge answering a TLS-ALPN-01 challenge for `name`, if any.
    pub(crate) fn challenge_owner(&self, name: &str) -> Option<(String, SocketAddr)> {
        if !self.is_serving() {
            return None;
        }
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        cache.challenge_owner(name, &self.config.edge_id)
    }

    /// The other edges serving `host`, with their link addresses (empty when none,
    /// or when this edge is not serving).
    pub(crate) fn remote(&self, host: &str) -> Vec<(String, SocketAddr)> {
        if !self.is_serving() {
            return Vec::new();
        }
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        cache.remote(host, &self.config.edge_id)
    }

    /// For a pooled name this edge serves too: when the round robin over every member
    /// in the cluster falls on a member of another edge, that edge (then the pool's
    /// other edges, should it be unreachable); `None` when this edge takes the turn.
    pub(crate) fn pool_turn(&self, host: &str) -> Option<Vec<(String, SocketAddr)>> {
        if !self.is_serving() {
            return None;
        }
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let pool = cache.pool(host);
        if pool.iter().all(|m| m.edge == self.config.edge_id) {
            return None;
        }
        let turn = self
            .pool_turns
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % pool.len();
        let chosen = &pool[turn].edge;
        if *chosen == self.config.edge_id {
            return None;
        }
        let mut edges: Vec<(String, SocketAddr)> = Vec::new();
        for edge in std::iter::once(chosen).chain(pool.iter().map(|m| &m.edge)) {
            if *edge == self.config.edge_id || edges.iter().any(|(e, _)| e == edge) {
                continue;
            }
            if let Some(v) = cache.edges.get(edge) {
                edges.push((edge.clone(), v.link_addr));
            }
        }
        (!edges.is_empty()).then_some(edges)
    }

    /// How many names the cache holds (for diagnostics and the bench).
    pub(crate) fn cached_names(&self) -> usize {
        self.cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .routes
            .len()
    }

    /// Records that `session` (opened with `token`) is held here, for other edges the
    /// same agent joins.
    pub(crate) async fn add_session(&self, session: &str, token: Option<&str>) -> Result<()> {
        let lease = self.lease_id()?;
        let value = serde_json::to_vec(&SessionValue {
            token_hash: token_hash(token),
        })
        .map_err(|e| etcd_error("encoding", e))?;
        let put = PutOptions::new().with_lease(lease);
        call(
            "recording the session",
            self.client().put(
                self.keys.session(session, &self.config.edge_id),
                value,
                Some(put),
            ),
        )
        .await?;
        Ok(())
    }

    /// Whether an agent with `token` may use session id `session` here: no edge holds
    /// that id for another token.
    pub(crate) async fn may_join(&self, session: &str, token: Option<&str>) -> Result<bool> {
        let options = GetOptions::new().with_prefix();
        let found = call(
            "reading the session",
            self.client()
                .get(self.keys.sessions_of(session), Some(options)),
        )
        .await?;
        let hash = token_hash(token);
        Ok(found.kvs().iter().all(|kv| {
            serde_json::from_slice::<SessionValue>(kv.value()).is_ok_and(|v| v.token_hash == hash)
        }))
    }

    /// Forgets that `session` is held here.
    pub(crate) async fn remove_session(&self, session: &str) {
        let key = self.keys.session(session, &self.config.edge_id);
        if let Err(e) = call("forgetting the session", self.client().delete(key, None)).await {
            tracing::debug!(error = %e, "session key not deleted (it goes with the lease)");
        }
    }

    /// Gives `name` to `route` (an endpoint of `session`) across the cluster, in one
    /// transaction; `DOMAIN_TAKEN` when another session holds it or a name it overlaps
    /// (a pool is shared only by sessions that all opted in).
    pub(crate) async fn claim(&self, name: &str, session: &str, route: &RouteValue) -> Result<()> {
        let pooled = route.pooled;
        let mut ranges = Vec::new();
        match name.strip_prefix("*.") {
            // The wildcard itself, the names it covers (and deeper ones, skipped below).
            Some(parent) => ranges.push(self.keys.names_under(parent)),
            None => {
                ranges.push(self.keys.members_of(name));
                if let Some(wildcard) = wildcard_of(name) {
                    ranges.push(self.keys.members_of(&wildcard));
                }
            }
        }
        let value = serde_json::to_vec(route).map_err(|e| etcd_error("encoding", e))?;
        let key = self.keys.route(name, &self.config.edge_id, session);
        for _ in 0..CLAIM_ATTEMPTS {
            let lease = self.lease_id()?;
            let reads: Vec<TxnOp> = ranges
                .iter()
                .map(|r| TxnOp::get(r.clone(), Some(GetOptions::new().with_prefix())))
                .collect();
            let read = call(
                "reading the name",
                self.client().txn(Txn::new().and_then(reads)),
            )
            .await?;
            let revision = read.header().map_or(0, |h| h.revision());
            for response in read.op_responses() {
                let etcd_client::TxnOpResponse::Get(got) = response else {
                    continue;
                };
                for kv in got.kvs() {
                    let Some(Parsed::Route {
                        name: held,
                        session: holder,
                        ..
                    }) = kv.key_str().ok().and_then(|k| self.keys.parse(k))
                    else {
                        continue;
                    };
                    let held_pooled =
                        serde_json::from_slice::<RouteValue>(kv.value()).is_ok_and(|v| v.pooled);
                    conflict(name, pooled, &held, &holder, held_pooled, session)?;
                }
            }
            let unchanged: Vec<Compare> = ranges
                .iter()
                .map(|r| {
                    Compare::mod_revision(r.clone(), CompareOp::Less, revision + 1).with_prefix()
                })
                .collect();
            let put = TxnOp::put(
                key.clone(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            );
            let done = call(
                "claiming the name",
                self.client()
                    .txn(Txn::new().when(unchanged).and_then([put])),
            )
            .await?;
            if done.succeeded() {
                return Ok(());
            }
        }
        Err(Error::new(
            ErrorCode::Internal,
            format!("domain {name:?}: other claims kept changing it; retry"),
        ))
    }

    /// Frees `name` for `session` if `route` still holds it (a newer endpoint or
    /// connection of the same session that took the name over keeps it).
    pub(crate) async fn release(&self, name: &str, session: &str, route: &RouteValue) {
        let key = self.keys.route(name, &self.config.edge_id, session);
        let Ok(value) = serde_json::to_vec(route) else {
            return;
        };
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, value)])
            .and_then([TxnOp::delete(key, None)]);
        if let Err(e) = call("releasing the name", self.client().txn(txn)).await {
            tracing::warn!(%name, error = %e, "name not released in etcd (it goes with the lease)");
        }
    }
}

/// Refuses a claim of `name` by `session` that a member (`holder` holding `held`)
/// rules out.
fn conflict(
    name: &str,
    pooled: bool,
    held: &str,
    holder: &str,
    held_pooled: bool,
    session: &str,
) -> Result<()> {
    if holder == session {
        return Ok(());
    }
    if held == name {
        if pooled && held_pooled {
            return Ok(());
        }
        return Err(Error::new(
            ErrorCode::DomainTaken,
            format!("domain {name:?} is already bound by another session"),
        ));
    }
    if overlaps(name, held) {
        // The other session's name is its own business: say only that there is one.
        return Err(Error::new(
            ErrorCode::DomainTaken,
            format!("domain {name:?} overlaps a name another session has bound"),
        ));
    }
    Ok(())
}

/// Whether one of two different names is a wildcard covering the other.
fn overlaps(a: &str, b: &str) -> bool {
    let covers = |wild: &str, name: &str| {
        wild.strip_prefix("*.").is_some_and(|parent| {
            name.split_once('.')
                .is_some_and(|(label, rest)| rest == parent && label != "*")
        })
    };
    covers(a, b) || covers(b, a)
}

/// Runs `fut` until `deadline`.
async fn timeout_at_deadline<T>(
    deadline: Instant,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout_at(deadline, fut).await {
        Ok(r) => r,
        Err(_) => Err(etcd_error(
            "keepalive",
            "no answer before the lease deadline",
        )),
    }
}

/// etcd connection settings: TLS when configured.
fn connect_options(config: &ClusterConfig) -> Result<ConnectOptions> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CALL_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    if config.etcd_ca.is_some() || config.etcd_cert.is_some() {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
        };
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &config.etcd_ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&config.etcd_cert, &config.etcd_key) {
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(tls);
    }
    Ok(options)
}

/// Runs the cluster side of an edge until `stop`: keeps the lease and the cache; when
/// the lease may have lapsed, stops serving, ends this edge's sessions (their agents
/// come back and rebind once it serves again) and gets a new lease.
pub(crate) async fn run(shared: Arc<super::Shared>, cluster: Arc<Cluster>) {
    let stop = shared.stop.clone();
    let watcher = {
        let cluster = cluster.clone();
        let stop = stop.clone();
        async move {
            let mut delay = Duration::from_millis(100);
            while !stop.is_cancelled() {
                let started = Instant::now();
                if let Err(e) = cluster.watch(&stop).await {
                    tracing::warn!(error = %e, "route watch ended; restarting it");
                }
                if started.elapsed() > Duration::from_secs(5) {
                    delay = Duration::from_millis(100);
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = sleep(delay) => {}
                }
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    };
    let keeper = async {
        loop {
            match cluster.keep_alive(&stop).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(error = %e, "the etcd lease may have lapsed: this edge stops serving, ends its sessions and rejoins")
                }
            }
            let old = cluster.lost();
            let sessions: Vec<CancellationToken> =
                shared.sessions().values().map(|s| s.kill.clone()).collect();
            for kill in sessions {
                kill.cancel();
            }
            let mut delay = Duration::from_millis(100);
            loop {
                if let Some(old) = old {
                    cluster.revoke(old).await;
                }
                match cluster.join().await {
                    Ok(()) => break,
                    Err(e) => tracing::warn!(error = %e, "rejoining the cluster failed; retrying"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = sleep(delay) => {}
                }
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    };
    tokio::join!(watcher, keeper);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_conflict_as_the_memory_table_does() {
        let taken = |r: Result<()>| r.is_err_and(|e| e.code() == ErrorCode::DomainTaken);
        assert!(conflict("a.x.com", false, "a.x.com", "s1", false, "s1").is_ok());
        assert!(taken(conflict(
            "a.x.com", false, "a.x.com", "s1", false, "s2"
        )));
        assert!(conflict("a.x.com", true, "a.x.com", "s1", true, "s2").is_ok());
        assert!(taken(conflict(
            "a.x.com", true, "a.x.com", "s1", false, "s2"
        )));
        assert!(taken(conflict(
            "a.x.com", false, "*.x.com", "s1", false, "s2"
        )));
        assert!(taken(conflict(
            "*.x.com", false, "a.x.com", "s1", false, "s2"
        )));
        // A pool is one name: overlapping names stay apart even when both are pooled.
        assert!(taken(conflict(
            "*.x.com", true, "a.x.com", "s1", true, "s2"
        )));
        assert!(conflict("*.x.com", false, "b.a.x.com", "s1", false, "s2").is_ok());
    }
}
