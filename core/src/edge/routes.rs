//! Who serves which hostname: the seam between the public listener and the sessions.
//!
//! The `Routes` table lives in memory and holds this edge's own routes. In a cluster,
//! `Cluster` (etcd) claims a name before the table does, and [`find`] answers Local or
//! Remote (the other edges serving the name).
//!
//! A name is served by one endpoint, or by a pool of endpoints of several sessions
//! that all opted in (ngrok's `pooling_enabled`); connections go round robin across
//! the members whose tunnel is up.

use crate::error::{Error, ErrorCode, Result};
use crate::policy::{ConnInfo, TrafficPolicy, Verdict};
use crate::tls::ServerTls;
use crate::wire::mux::MuxHandle;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// Where connections for one hostname go.
#[derive(Clone)]
pub struct Route {
    /// The session that bound the name.
    pub session_id: String,
    /// The endpoint within that session.
    pub endpoint_id: String,
    /// Opens proxy streams to the agent.
    pub tunnel: MuxHandle,
    /// Set when the edge terminates TLS for this endpoint.
    pub edge_tls: Option<ServerTls>,
    /// The endpoint's traffic policy, with its `terminate-tls` configs built.
    pub policy: Option<Arc<EdgePolicy>>,
    /// The endpoint opted into pooling: endpoints of other sessions that opted in too
    /// may serve the same name.
    pub pooled: bool,
    /// A digest of how the endpoint treats a connection (termination, policy, CIDRs, as
    /// bound): pool members with the same one may stand in for each other once a
    /// connection has been admitted and terminated by one of them.
    pub handling: u64,
    /// Set for an http endpoint: the edge serves its requests as a reverse proxy.
    pub http: Option<Arc<super::http::HttpRoute>>,
    /// The endpoint's live counters (connections, bytes), shared by every copy.
    pub stats: Arc<super::EndpointStats>,
}

/// A traffic policy ready to run at the edge.
pub struct EdgePolicy {
    /// The parsed rules.
    pub policy: TrafficPolicy,
    /// One server config per `terminate-tls` action, in the policy's order.
    pub terminations: Vec<ServerTls>,
}

impl Route {
    /// True when `other` is the same endpoint of the same session.
    fn same_endpoint(&self, other: &Route) -> bool {
        self.session_id == other.session_id && self.endpoint_id == other.endpoint_id
    }

    /// Runs the policy for one connection: `Err(reason)` refuses it, `Ok(config)` says
    /// whether (and how) the edge terminates TLS.
    pub fn decide(&self, conn: &ConnInfo) -> Result<Option<ServerTls>, String> {
        let Some(p) = &self.policy else {
            return Ok(self.edge_tls.clone());
        };
        match p.policy.evaluate(conn) {
            Verdict::Deny(reason) => Err(reason),
            Verdict::Allow { terminate: Some(i) } => Ok(p.terminations.get(i).cloned()),
            Verdict::Allow { terminate: None } => Ok(self.edge_tls.clone()),
        }
    }
}

/// The routing table of an edge.
pub trait Routes: Send + Sync {
    /// Gives `name` to `route`'s session, atomically; fails with `DOMAIN_TAKEN`
    /// when another session holds it, unless both that session's endpoint and `route`
    /// are pooled (then `route` joins the pool).
    fn claim(&self, name: &str, route: Route) -> Result<()>;
    /// The route for exactly `name`; for a pool, the next member round robin whose
    /// tunnel is up.
    fn get(&self, name: &str) -> Option<Route>;
    /// Frees `name` if endpoint `endpoint_id` of `session_id` holds it (a newer
    /// endpoint of the same session that took the name over keeps it); other members
    /// of a pool keep serving it.
    fn release(&self, name: &str, session_id: &str, endpoint_id: &str);
    /// A member of the pool serving `name`, other than `failed`, whose tunnel is up and
    /// which handles connections as `failed` does; `None` when there is none (or this
    /// table keeps no pools).
    fn stand_in(&self, _name: &str, _failed: &Route) -> Option<Route> {
        None
    }
}

/// Where a connection for a name goes.
pub(crate) enum Found {
    /// An endpoint of a session connected to this edge.
    Local(Route),
    /// Other edges of the cluster (their ids and link addresses), to try in order.
    Remote(Vec<(String, std::net::SocketAddr)>),
}

/// Where a connection for `host` goes: this edge's own route (exact name, then
/// wildcard), else the cluster's other edges serving it. A pooled name takes turns over
/// its members on every edge. A connection another edge forwarded (`hops > 0`) is
/// served here or not at all.
pub(crate) fn find(shared: &super::Shared, host: &str, hops: u8) -> Option<Found> {
    let local = lookup(shared.routes.as_ref(), host);
    let cluster = shared.cluster.as_ref().filter(|_| hops == 0);
    let Some(cluster) = cluster else {
        return local.map(Found::Local);
    };
    match local {
        Some(route) if route.pooled => match cluster.pool_turn(host) {
            Some(edges) => Some(Found::Remote(edges)),
            None => Some(Found::Local(route)),
        },
        Some(route) => Some(Found::Local(route)),
        None => {
            let mut edges = cluster.remote(host);
            if edges.is_empty() {
                return None;
            }
            // A different first edge each time: a name several edges serve is spread.
            let start = rand::random::<u32>() as usize % edges.len();
            edges.rotate_left(start);
            Some(Found::Remote(edges))
        }
    }
}

/// Finds the route for a hostname: the exact name first, then `*.parent`.
pub fn lookup(routes: &dyn Routes, host: &str) -> Option<Route> {
    if let Some(route) = routes.get(host) {
        return Some(route);
    }
    routes.get(&wildcard_of(host)?)
}

/// For a connection to `host` that `failed` could not take (its tunnel just ended, and
/// the edge may have released it already): another member of the pool a connection to
/// `host` goes to now (the exact name's, else the wildcard's) that handles it alike.
pub fn lookup_stand_in(routes: &dyn Routes, host: &str, failed: &Route) -> Option<Route> {
    if !failed.pooled {
        return None;
    }
    let name = match routes.get(host) {
        Some(_) => host.to_owned(),
        None => wildcard_of(host)?,
    };
    routes.stand_in(&name, failed)
}

/// `*.parent` for `label.parent`.
pub(crate) fn wildcard_of(host: &str) -> Option<String> {
    let (_, parent) = host.split_once('.')?;
    Some(format!("*.{parent}"))
}

/// The endpoints serving one name: a single one, or several pooled ones (at most one
/// per session).
#[derive(Default)]
struct Pool {
    members: Vec<Route>,
    /// Counts the connections handed out, to take turns.
    turn: AtomicUsize,
}

impl Pool {
    /// The members in the order to try them, starting with the one whose turn it is.
    fn rotation(&self) -> impl Iterator<Item = &Route> {
        let n = self.members.len();
        let start = match n {
            0 | 1 => 0,
            _ => self.turn.fetch_add(1, Ordering::Relaxed) % n,
        };
        (0..n).map(move |i| &self.members[(start + i) % n])
    }

    /// The member whose turn it is, passing over dead tunnels; a dead one still when all
    /// are (the connection then fails as it would for a lone endpoint).
    fn pick(&self) -> Option<Route> {
        let mut first = None;
        for member in self.rotation() {
            if !member.tunnel.is_closed() {
                return Some(member.clone());
            }
            first.get_or_insert(member);
        }
        first.cloned()
    }

    /// True when a member of another session than `route`'s holds the name.
    fn has_foreign(&self, route: &Route) -> bool {
        self.members
            .iter()
            .any(|m| m.session_id != route.session_id)
    }

    /// True when `route` may join: every member of another session and `route` are pooled.
    fn admits(&self, route: &Route) -> bool {
        self.members
            .iter()
            .all(|m| m.session_id == route.session_id || (m.pooled && route.pooled))
    }
}

/// A name of another session that `name` would overlap: a wildcard covering it,
/// or (for a wildcard) a name it covers. Pooling never spans two different names.
fn overlapping(table: &HashMap<String, Pool>, name: &str, route: &Route) -> Option<String> {
    if let Some(parent) = name.strip_prefix("*.") {
        return table
            .iter()
            .find(|(held, pool)| {
                *held != name
                    && held.split_once('.').is_some_and(|(_, p)| p == parent)
                    && pool.has_foreign(route)
            })
            .map(|(held, _)| held.clone());
    }
    let wildcard = wildcard_of(name)?;
    table
        .get(&wildcard)
        .filter(|pool| pool.has_foreign(route))
        .map(|_| wildcard)
}

/// Routes kept in this process.
#[derive(Default)]
pub struct MemoryRoutes {
    table: RwLock<HashMap<String, Pool>>,
}

impl Routes for MemoryRoutes {
    fn claim(&self, name: &str, route: Route) -> Result<()> {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        let mixes_kinds = table.get(name).is_some_and(|pool| {
            pool.members.iter().any(|m| {
                m.session_id != route.session_id && m.http.is_some() != route.http.is_some()
            })
        });
        if mixes_kinds {
            return Err(Error::new(
                ErrorCode::DomainTaken,
                format!("domain {name:?} is served by another session as a different kind of endpoint (http and tls endpoints cannot share a pool)"),
            ));
        }
        if table.get(name).is_some_and(|pool| !pool.admits(&route)) {
            return Err(Error::new(
                ErrorCode::DomainTaken,
                format!("domain {name:?} is already bound by another session"),
            ));
        }
        // The other session's name is its own business: say only that there is one.
        if overlapping(&table, name, &route).is_some() {
            return Err(Error::new(
                ErrorCode::DomainTaken,
                format!("domain {name:?} overlaps a name another session has bound"),
            ));
        }
        let pool = table.entry(name.to_owned()).or_default();
        // A session's newer endpoint takes its older one's place.
        pool.members.retain(|m| m.session_id != route.session_id);
        pool.members.push(route);
        Ok(())
    }

    fn get(&self, name: &str) -> Option<Route> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table.get(name)?.pick()
    }

    fn release(&self, name: &str, session_id: &str, endpoint_id: &str) {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        let Some(pool) = table.get_mut(name) else {
            return;
        };
        pool.members
            .retain(|m| !(m.session_id == session_id && m.endpoint_id == endpoint_id));
        if pool.members.is_empty() {
            table.remove(name);
        }
    }

    fn stand_in(&self, name: &str, failed: &Route) -> Option<Route> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        let stand_in = table
            .get(name)?
            .rotation()
            .find(|m| {
                !m.same_endpoint(failed) && m.handling == failed.handling && !m.tunnel.is_closed()
            })
            .cloned();
        stand_in
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::mux::{self, Side};
    use tokio::io::DuplexStream;
    use tokio_util::sync::CancellationToken;

    /// A route of `session` over a tunnel of its own; the tunnel lives while the
    /// returned peer end does and `stop` is not cancelled.
    pub(crate) fn route(session: &str, pooled: bool) -> (Route, DuplexStream, CancellationToken) {
        let (ours, peer) = tokio::io::duplex(1024);
        let stop = CancellationToken::new();
        let tunnel = mux::start(ours, Side::Edge, stop.clone(), 16).handle;
        let route = Route {
            session_id: session.into(),
            endpoint_id: format!("{session}-e"),
            tunnel,
            edge_tls: None,
            policy: None,
            pooled,
            handling: 7,
            stats: Default::default(),
            http: None,
        };
        (route, peer, stop)
    }

    fn code(r: Result<()>) -> Option<ErrorCode> {
        r.err().map(|e| e.code())
    }

    #[tokio::test]
    async fn pooled_members_take_turns_and_leave_one_by_one() {
        let routes = MemoryRoutes::default();
        let parts: Vec<_> = ["a", "b", "c"].iter().map(|s| route(s, true)).collect();
        for (r, _, _) in &parts {
            routes.claim("app.test", r.clone()).unwrap();
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        for _ in 0..30 {
            *seen
                .entry(routes.get("app.test").unwrap().session_id)
                .or_default() += 1;
        }
        assert_eq!(seen.values().copied().collect::<Vec<_>>(), [10, 10, 10]);

        routes.release("app.test", "b", "b-e");
        let left: std::collections::HashSet<_> = (0..10)
            .map(|_| routes.get("app.test").unwrap().session_id)
            .collect();
        assert_eq!(left.len(), 2);
        assert!(!left.contains("b"));
        routes.release("app.test", "a", "a-e");
        routes.release("app.test", "c", "c-e");
        assert!(routes.get("app.test").is_none());
    }

    #[tokio::test]
    async fn a_pool_never_mixes_with_an_endpoint_that_did_not_opt_in() {
        let routes = MemoryRoutes::default();
        let (pooled, _p1, _s1) = route("a", true);
        let (lone, _p2, _s2) = route("b", false);
        let (pooled2, _p3, _s3) = route("c", true);
        routes.claim("app.test", pooled.clone()).unwrap();
        assert_eq!(
            code(routes.claim("app.test", lone.clone())),
            Some(ErrorCode::DomainTaken)
        );
        routes.claim("app.test", pooled2).unwrap();

        routes.claim("solo.test", lone).unwrap();
        assert_eq!(
            code(routes.claim("solo.test", pooled.clone())),
            Some(ErrorCode::DomainTaken)
        );
        // Pooling joins one name, never overlapping names of other sessions.
        assert_eq!(
            code(routes.claim("*.test", pooled.clone())),
            Some(ErrorCode::DomainTaken)
        );
        let (other, _p4, _s4) = route("d", true);
        routes.claim("*.pool.test", other).unwrap();
        assert_eq!(
            code(routes.claim("x.pool.test", pooled.clone())),
            Some(ErrorCode::DomainTaken)
        );
        // The same session rebinding without pooling replaces its member, and then
        // the pool refuses it, as any non-pooled newcomer.
        let (mut again, _p5, _s5) = route("a", false);
        again.endpoint_id = "a-e2".into();
        assert_eq!(
            code(routes.claim("app.test", again)),
            Some(ErrorCode::DomainTaken)
        );
    }

    #[tokio::test]
    async fn dead_tunnels_are_passed_over_and_stood_in_for() {
        let routes = MemoryRoutes::default();
        let (a, _pa, _sa) = route("a", true);
        let (b, _pb, stop_b) = route("b", true);
        let (mut c, _pc, _sc) = route("c", true);
        c.handling = 8; // treats connections differently: never a stand-in
        for r in [&a, &b, &c] {
            routes.claim("app.test", r.clone()).unwrap();
        }
        stop_b.cancel();
        b.tunnel.closed().await;
        for _ in 0..12 {
            assert_ne!(routes.get("app.test").unwrap().session_id, "b");
        }
        let stand_in = lookup_stand_in(&routes, "app.test", &b).expect("a stands in");
        assert_eq!(stand_in.session_id, "a");
        assert!(lookup_stand_in(&routes, "app.test", &c).is_none());
        // A wildcard's pool stands in too, for the name the client asked for.
        routes.claim("*.w.test", a.clone()).unwrap();
        routes.claim("*.w.test", b.clone()).unwrap();
        let stand_in = lookup_stand_in(&routes, "x.w.test", &b).expect("a stands in");
        assert_eq!(stand_in.session_id, "a");
        // Alone and dead, a member is still what the name routes to (the connection
        // then fails as it does for any dead endpoint).
        routes.release("app.test", "a", "a-e");
        routes.release("app.test", "c", "c-e");
        assert_eq!(routes.get("app.test").unwrap().session_id, "b");
        assert!(lookup_stand_in(&routes, "app.test", &b).is_none());
    }
}
