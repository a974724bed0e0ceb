//! Where the cluster's state lives in etcd, and the cache of it each edge keeps.
//!
//! Under the cluster's prefix:
//! - `edges/<edge>`: the edge's link address (under its lease);
//! - `sessions/<session>/<edge>`: a hash of the token that opened the session there;
//! - `routes/<reversed name>/<edge>/<session>`: the endpoint serving the name there;
//! - `challenges/<name>`: the edge answering a TLS-ALPN-01 challenge for the name
//!   (under its lease, while the order runs);
//! - `certs/<name>`: an ACME certificate and its key, for every edge (no lease);
//! - `acme-accounts/<directory id>`: the ACME account the edges share (no lease);
//! - `ca`: the cluster's CA (no lease).
//!
//! Names are stored with their labels reversed (`app.example.com` is
//! `com.example.app`, `*.example.com` is `com.example.*`), so the names a wildcard
//! covers and the wildcard covering a name are each one prefix range away.

use crate::edge::routes::wildcard_of;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A name with its labels reversed.
pub(crate) fn reversed(name: &str) -> String {
    name.rsplit('.').collect::<Vec<_>>().join(".")
}

/// The etcd key layout of one cluster.
#[derive(Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub(crate) fn all(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn ca(&self) -> String {
        format!("{}ca", self.prefix)
    }

    pub(crate) fn edge(&self, edge: &str) -> String {
        format!("{}edges/{edge}", self.prefix)
    }

    pub(crate) fn session(&self, session: &str, edge: &str) -> String {
        format!("{}sessions/{session}/{edge}", self.prefix)
    }

    pub(crate) fn sessions_of(&self, session: &str) -> String {
        format!("{}sessions/{session}/", self.prefix)
    }

    pub(crate) fn challenge(&self, name: &str) -> String {
        format!("{}challenges/{name}", self.prefix)
    }

    pub(crate) fn cert(&self, name: &str) -> String {
        format!("{}certs/{name}", self.prefix)
    }

    pub(crate) fn account(&self, directory_id: &str) -> String {
        format!("{}acme-accounts/{directory_id}", self.prefix)
    }

    /// Every member serving exactly `name`, on any edge.
    pub(crate) fn members_of(&self, name: &str) -> String {
        format!("{}routes/{}/", self.prefix, reversed(name))
    }

    /// Every name under `parent` (its wildcard, the names it covers and deeper ones).
    pub(crate) fn names_under(&self, parent: &str) -> String {
        format!("{}routes/{}.", self.prefix, reversed(parent))
    }

    pub(crate) fn route(&self, name: &str, edge: &str, session: &str) -> String {
        format!("{}{edge}/{session}", self.members_of(name))
    }

    /// What a key of this cluster says, when it is one the cache keeps.
    pub(crate) fn parse(&self, key: &str) -> Option<Parsed> {
        let rest = key.strip_prefix(&self.prefix)?;
        if let Some(edge) = rest.strip_prefix("edges/") {
            return Some(Parsed::Edge(edge.to_owned()));
        }
        if let Some(name) = rest.strip_prefix("challenges/") {
            return Some(Parsed::Challenge(name.to_owned()));
        }
        if let Some(name) = rest.strip_prefix("certs/") {
            return Some(Parsed::Cert(name.to_owned()));
        }
        let route = rest.strip_prefix("routes/")?;
        let mut parts = route.splitn(3, '/');
        let (rname, edge, session) = (parts.next()?, parts.next()?, parts.next()?);
        Some(Parsed::Route {
            name: reversed(rname),
            edge: edge.to_owned(),
            session: session.to_owned(),
        })
    }
}

/// A key the cache keeps, taken apart.
pub(crate) enum Parsed {
    Edge(String),
    Challenge(String),
    Cert(String),
    Route {
        name: String,
        edge: String,
        session: String,
    },
}

/// The value of `edges/<edge>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EdgeValue {
    pub(crate) link_addr: std::net::SocketAddr,
}

/// The value of `routes/<name>/<edge>/<session>`: which endpoint serves the name, over
/// which tunnel connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RouteValue {
    pub(crate) endpoint: String,
    #[serde(default)]
    pub(crate) pooled: bool,
    /// The tunnel connection that bound it: a reconnect of the same session writes the
    /// same key, and the old connection's release must not delete the new claim.
    #[serde(default)]
    pub(crate) conn: u64,
}

/// The value of `certs/<name>`.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct CertValue {
    /// The ACME directory that issued it.
    pub(crate) directory: String,
    pub(crate) chain: String,
    pub(crate) key: String,
}

/// The value of `sessions/<session>/<edge>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionValue {
    pub(crate) token_hash: String,
}

/// One endpoint serving a name somewhere in the cluster.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    pub(crate) edge: String,
    pub(crate) session: String,
    pub(crate) value: RouteValue,
}

/// What an edge knows of the whole cluster, fed by a watch on its prefix.
#[derive(Default)]
pub(crate) struct Cache {
    pub(crate) edges: HashMap<String, EdgeValue>,
    pub(crate) routes: HashMap<String, Vec<Member>>,
    /// Names with a TLS-ALPN-01 challenge pending, and the edge that answers it.
    pub(crate) challenges: HashMap<String, String>,
}

impl Cache {
    /// Applies one key's new value (`None`: deleted).
    pub(crate) fn apply(&mut self, keys: &Keys, key: &str, value: Option<&[u8]>) {
        match keys.parse(key) {
            Some(Parsed::Edge(edge)) => match value.and_then(|v| serde_json::from_slice(v).ok()) {
                Some(v) => {
                    self.edges.insert(edge, v);
                }
                None => {
                    self.edges.remove(&edge);
                }
            },
            Some(Parsed::Route {
                name,
                edge,
                session,
            }) => {
                let members = self.routes.entry(name.clone()).or_default();
                members.retain(|m| !(m.edge == edge && m.session == session));
                if let Some(value) = value.and_then(|v| serde_json::from_slice(v).ok()) {
                    members.push(Member {
                        edge,
                        session,
                        value,
                    });
                }
                if members.is_empty() {
                    self.routes.remove(&name);
                }
            }
            Some(Parsed::Challenge(name)) => {
                match value.and_then(|v| String::from_utf8(v.to_vec()).ok()) {
                    Some(edge) => self.challenges.insert(name, edge),
                    None => self.challenges.remove(&name),
                };
            }
            // Certificates go to the edge's certificate store, not here.
            Some(Parsed::Cert(_)) | None => {}
        }
    }

    /// The members of the pool serving `host` (exactly, else by wildcard), in a stable
    /// order; empty when the name is not pooled.
    pub(crate) fn pool(&self, host: &str) -> Vec<&Member> {
        let members = |name: &str| -> Vec<&Member> {
            let mut found: Vec<&Member> = self
                .routes
                .get(name)
                .into_iter()
                .flatten()
                .filter(|m| m.value.pooled)
                .collect();
            found.sort_by(|a, b| (&a.edge, &a.session).cmp(&(&b.edge, &b.session)));
            found
        };
        let exact = members(host);
        if !exact.is_empty() || self.routes.contains_key(host) {
            return exact;
        }
        wildcard_of(host).map_or_else(Vec::new, |w| members(&w))
    }

    /// The edge other than `me` answering a challenge for `name`, and its link address.
    pub(crate) fn challenge_owner(
        &self,
        name: &str,
        me: &str,
    ) -> Option<(String, std::net::SocketAddr)> {
        let edge = self.challenges.get(name).filter(|e| *e != me)?;
        let addr = self.edges.get(edge)?.link_addr;
        Some((edge.clone(), addr))
    }

    /// The edges other than `me` that serve `host` (exactly, else by wildcard), with
    /// their link addresses.
    pub(crate) fn remote(&self, host: &str, me: &str) -> Vec<(String, std::net::SocketAddr)> {
        let found = |name: &str| -> Vec<(String, std::net::SocketAddr)> {
            let mut edges: Vec<(String, std::net::SocketAddr)> = Vec::new();
            for m in self.routes.get(name).into_iter().flatten() {
                if m.edge == me || edges.iter().any(|(e, _)| *e == m.edge) {
                    continue;
                }
                if let Some(v) = self.edges.get(&m.edge) {
                    edges.push((m.edge.clone(), v.link_addr));
                }
            }
            edges
        };
        let exact = found(host);
        if !exact.is_empty() {
            return exact;
        }
        wildcard_of(host).map_or_else(Vec::new, |w| found(&w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stored_reversed_and_parsed_back() {
        let keys = Keys::new("/b/");
        assert_eq!(
            keys.route("app.example.com", "a", "s1"),
            "/b/routes/com.example.app/a/s1"
        );
        assert_eq!(keys.members_of("*.example.com"), "/b/routes/com.example.*/");
        assert!(keys
            .route("x.example.com", "a", "s")
            .starts_with(&keys.names_under("example.com")));
        match keys.parse("/b/routes/com.example.*/a/s1") {
            Some(Parsed::Route {
                name,
                edge,
                session,
            }) => assert_eq!(
                (name.as_str(), edge.as_str(), session.as_str()),
                ("*.example.com", "a", "s1")
            ),
            _ => panic!("not parsed"),
        }
    }

    #[test]
    fn the_cache_answers_remote_edges_exact_then_wildcard() {
        let keys = Keys::new("/b/");
        let mut cache = Cache::default();
        let addr = |p| {
            serde_json::to_vec(&EdgeValue {
                link_addr: std::net::SocketAddr::from(([127, 0, 0, 2], p)),
            })
            .unwrap()
        };
        let route = serde_json::to_vec(&RouteValue {
            endpoint: "e".into(),
            pooled: false,
            conn: 1,
        })
        .unwrap();
        cache.apply(&keys, "/b/edges/a", Some(&addr(1)));
        cache.apply(&keys, "/b/edges/b", Some(&addr(2)));
        cache.apply(&keys, "/b/routes/com.example.*/a/s1", Some(&route));
        cache.apply(&keys, "/b/routes/com.example.app/b/s2", Some(&route));
        assert_eq!(cache.remote("app.example.com", "c")[0].0, "b");
        assert_eq!(cache.remote("other.example.com", "c")[0].0, "a");
        assert!(cache.remote("other.example.com", "a").is_empty());
        cache.apply(&keys, "/b/routes/com.example.app/b/s2", None);
        assert_eq!(cache.remote("app.example.com", "c")[0].0, "a");
        assert!(!cache.routes.contains_key("app.example.com"));
    }
}
