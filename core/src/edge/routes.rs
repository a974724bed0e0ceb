//! Who serves which hostname: the seam between the public listener and the sessions.
//!
//! The first implementation lives in memory. A scale-out edge replaces it with one
//! backed by a shared store, where `claim` is a compare-and-set.

use crate::error::{Error, ErrorCode, Result};
use crate::policy::{ConnInfo, TrafficPolicy, Verdict};
use crate::wire::mux::MuxHandle;
use rustls::ServerConfig;
use std::collections::HashMap;
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
    pub edge_tls: Option<Arc<ServerConfig>>,
    /// The endpoint's traffic policy, with its `terminate-tls` configs built.
    pub policy: Option<Arc<EdgePolicy>>,
}

/// A traffic policy ready to run at the edge.
pub struct EdgePolicy {
    /// The parsed rules.
    pub policy: TrafficPolicy,
    /// One server config per `terminate-tls` action, in the policy's order.
    pub terminations: Vec<Arc<ServerConfig>>,
}

impl Route {
    /// Runs the policy for one connection: `Err(reason)` refuses it, `Ok(config)` says
    /// whether (and how) the edge terminates TLS.
    pub fn decide(&self, conn: &ConnInfo) -> Result<Option<Arc<ServerConfig>>, String> {
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
    /// when another session holds it.
    fn claim(&self, name: &str, route: Route) -> Result<()>;
    /// The route for exactly `name`.
    fn get(&self, name: &str) -> Option<Route>;
    /// Frees `name` if endpoint `endpoint_id` of `session_id` holds it (a newer
    /// endpoint of the same session that took the name over keeps it).
    fn release(&self, name: &str, session_id: &str, endpoint_id: &str);
}

/// Finds the route for a hostname: the exact name first, then `*.parent`.
pub fn lookup(routes: &dyn Routes, host: &str) -> Option<Route> {
    if let Some(route) = routes.get(host) {
        return Some(route);
    }
    let (_, parent) = host.split_once('.')?;
    routes.get(&format!("*.{parent}"))
}

/// A name of another session that `name` would overlap: a wildcard covering it,
/// or (for a wildcard) a name it covers.
fn overlapping(
    table: &HashMap<String, Route>,
    name: &str,
    foreign: impl Fn(&Route) -> bool,
) -> Option<String> {
    if let Some(parent) = name.strip_prefix("*.") {
        return table
            .iter()
            .find(|(held, r)| held.split_once('.').is_some_and(|(_, p)| p == parent) && foreign(r))
            .map(|(held, _)| held.clone());
    }
    let (_, parent) = name.split_once('.')?;
    let wildcard = format!("*.{parent}");
    table
        .get(&wildcard)
        .filter(|r| foreign(r))
        .map(|_| wildcard)
}

/// Routes kept in this process.
#[derive(Default)]
pub struct MemoryRoutes {
    table: RwLock<HashMap<String, Route>>,
}

impl Routes for MemoryRoutes {
    fn claim(&self, name: &str, route: Route) -> Result<()> {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        let foreign = |held: &Route| held.session_id != route.session_id;
        if table.get(name).is_some_and(foreign) {
            return Err(Error::new(
                ErrorCode::DomainTaken,
                format!("domain {name:?} is already bound by another session"),
            ));
        }
        // The other session's name is its own business: say only that there is one.
        if overlapping(&table, name, foreign).is_some() {
            return Err(Error::new(
                ErrorCode::DomainTaken,
                format!("domain {name:?} overlaps a name another session has bound"),
            ));
        }
        table.insert(name.to_owned(), route);
        Ok(())
    }

    fn get(&self, name: &str) -> Option<Route> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table.get(name).cloned()
    }

    fn release(&self, name: &str, session_id: &str, endpoint_id: &str) {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        if table
            .get(name)
            .is_some_and(|r| r.session_id == session_id && r.endpoint_id == endpoint_id)
        {
            table.remove(name);
        }
    }
}
