//! A session's connections to several edges at once: which edge addresses it holds,
//! which connections are up, where a user's bind goes, and when the session ends.
//!
//! Each edge address has its own [`Runner`](super::runner::Runner) (one tunnel
//! connection and its reconnect loop); they share the session's endpoints. A user's
//! bind goes to one connected runner; once that edge accepts it, the endpoint is
//! registered (pinned to the URL the edge gave) and every other runner binds it too.

use super::listener::ConnSink;
use super::observe::EndpointStats;
use super::runner::{BindReply, BindRequest, Request};
use super::tunnel::{establish, Connected, EdgeAddr, Ids, Settings};
use super::SessionInner;
use crate::error::{Error, ErrorCode, Result};
use crate::wire::BindSpec;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// One edge address of the session, as the coordination sees its runner.
struct Link {
    addr: String,
    requests: mpsc::UnboundedSender<Request>,
    connected: AtomicBool,
    /// The runner ended (the edge refused the session for good, or the session closed).
    ended: AtomicBool,
}

/// The runners of one session.
pub(crate) struct Edges {
    links: Vec<Link>,
    /// Bumped whenever a connection comes up or goes down.
    changes: watch::Sender<u64>,
    /// Serialises the decision that the last runner has ended.
    ending: Mutex<()>,
}

impl Edges {
    /// One link per edge address, and the request queues their runners read.
    pub(crate) fn new(addrs: &[EdgeAddr]) -> (Self, Vec<mpsc::UnboundedReceiver<Request>>) {
        let (links, receivers) = addrs
            .iter()
            .map(|a| {
                let (requests, rx) = mpsc::unbounded_channel();
                let link = Link {
                    addr: a.addr.clone(),
                    requests,
                    connected: AtomicBool::new(false),
                    ended: AtomicBool::new(false),
                };
                (link, rx)
            })
            .unzip();
        let edges = Edges {
            links,
            changes: watch::Sender::new(0),
            ending: Mutex::new(()),
        };
        (edges, receivers)
    }

    /// Each edge address and whether its tunnel connection is up, in the session's order.
    pub(crate) fn states(&self) -> Vec<(String, bool)> {
        self.links
            .iter()
            .map(|l| (l.addr.clone(), l.connected.load(Ordering::SeqCst)))
            .collect()
    }

    /// Marks runner `index`'s connection up (it takes binds) or down.
    pub(crate) fn set_connected(&self, index: usize, up: bool) {
        if self.links[index].connected.swap(up, Ordering::SeqCst) != up {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// Asks an edge to serve `spec`: the first connected one, or the first to connect.
    /// A refusal is the answer; a connection lost before the answer sends the bind to
    /// another connection. Once bound, every other edge is asked to serve it too.
    pub(crate) async fn bind(
        &self,
        inner: &SessionInner,
        spec: BindSpec,
        agent_tls: Option<crate::tls::ServerTls>,
        sink: Arc<ConnSink>,
        stats: Arc<EndpointStats>,
    ) -> Result<String> {
        let mut changes = self.changes.subscribe();
        loop {
            if inner.stop.is_cancelled() {
                return Err(inner.closed());
            }
            changes.borrow_and_update();
            let up = self
                .links
                .iter()
                .position(|l| l.connected.load(Ordering::SeqCst));
            let Some(index) = up else {
                tokio::select! {
                    _ = inner.stop.cancelled() => {}
                    _ = changes.changed() => {}
                }
                continue;
            };
            let (reply, answer) = oneshot::channel();
            let request = Request::Bind(Box::new(BindRequest {
                spec: spec.clone(),
                agent_tls: agent_tls.clone(),
                sink: sink.clone(),
                stats: stats.clone(),
                reply,
            }));
            if self.links[index].requests.send(request).is_err() {
                continue; // that runner has ended, and is no longer marked connected
            }
            match answer.await {
                Ok(BindReply::Bound(url)) => {
                    for (i, link) in self.links.iter().enumerate() {
                        if i != index {
                            let endpoint_id = spec.endpoint_id.clone();
                            let _ = link.requests.send(Request::Follow { endpoint_id });
                        }
                    }
                    return Ok(url);
                }
                Ok(BindReply::Refused(e)) => return Err(e),
                Ok(BindReply::Lost) | Err(_) => {
                    tracing::debug!(edge = %self.links[index].addr, "the connection was lost before the edge answered a bind; asking another");
                }
            }
        }
    }

    /// Stops serving an endpoint on every edge.
    pub(crate) fn unbind(&self, endpoint_id: &str) {
        for link in &self.links {
            let _ = link.requests.send(Request::Unbind {
                endpoint_id: endpoint_id.to_owned(),
            });
        }
    }

    /// Runner `index` has ended, with the edge's lasting refusal if that is why. The
    /// session ends when the user closed it or when every runner has ended.
    pub(crate) fn runner_ended(&self, inner: &SessionInner, index: usize, failure: Option<Error>) {
        let _serial = self.ending.lock().unwrap_or_else(|p| p.into_inner());
        let link = &self.links[index];
        link.ended.store(true, Ordering::SeqCst);
        self.set_connected(index, false);
        if let Some(e) = &failure {
            if !self.links.iter().all(|l| l.ended.load(Ordering::SeqCst)) {
                tracing::error!(edge = %link.addr, error = %e, "this edge refuses the session, and reconnecting would not change that: the session goes on through its other edges");
                return;
            }
            tracing::error!(edge = %link.addr, error = %e, "the session ended: the edge refuses it, and reconnecting would not change that");
        }
        *inner.failure.lock().unwrap_or_else(|p| p.into_inner()) = failure;
        inner.endpoints().clear();
        inner.stop.cancel();
    }
}

/// The edges `entries` name: one per entry, except that a name which resolves to
/// several distinct IPv4 addresses (or IPv6, when it has no IPv4) stands for one edge
/// per address, each verified under the name.
pub(crate) async fn resolve(entries: &[String]) -> Result<Vec<EdgeAddr>> {
    let mut edges = Vec::new();
    for entry in entries {
        let (host, port) = super::options::server_host(entry)?;
        if host.parse::<IpAddr>().is_ok() {
            edges.push(EdgeAddr::new(entry, None)?);
            continue;
        }
        // A name that does not resolve now is dialled as it is, and fails (or not) then.
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map(Iterator::collect)
            .unwrap_or_default();
        let v4: Vec<SocketAddr> = found.iter().copied().filter(SocketAddr::is_ipv4).collect();
        let v6: Vec<SocketAddr> = found.iter().copied().filter(SocketAddr::is_ipv6).collect();
        let mut distinct = if v4.is_empty() { v6 } else { v4 };
        distinct.sort();
        distinct.dedup();
        if distinct.len() < 2 {
            edges.push(EdgeAddr::new(entry, None)?);
        } else {
            for ip in distinct {
                edges.push(EdgeAddr::new(entry, Some(ip))?);
            }
        }
    }
    Ok(edges)
}

/// The session's first connection: the first edge, in order, that authenticates it.
/// When none does, the error of the first (naming the others' when there are several).
pub(crate) async fn first_connection(
    settings: &Settings,
    edges: &[EdgeAddr],
) -> Result<(usize, Connected)> {
    let mut errors: Vec<(usize, Error)> = Vec::new();
    for (i, edge) in edges.iter().enumerate() {
        match establish(settings, edge, Ids::default(), CancellationToken::new()).await {
            Ok(conn) => {
                if !errors.is_empty() {
                    tracing::info!(edge = %edge.addr, "connected; the edges that failed before it are retried in the background");
                }
                return Ok((i, conn));
            }
            Err(e) => {
                tracing::warn!(edge = %edge.addr, error = %e, "cannot connect to this edge");
                errors.push((i, e));
            }
        }
    }
    let mut errors = errors.into_iter();
    let Some((_, first)) = errors.next() else {
        return Err(Error::new(
            ErrorCode::InvalidOption,
            "no edge address given",
        ));
    };
    let rest: Vec<String> = errors
        .map(|(i, e)| format!("{}: {}", edges[i].addr, e.message()))
        .collect();
    if rest.is_empty() {
        return Err(first);
    }
    Err(Error::new(
        first.code(),
        format!(
            "no edge accepted the session: {}; {}",
            first.message(),
            rest.join("; ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_with_one_ipv4_address_is_one_edge() {
        // localhost may also resolve to ::1; IPv4 wins, and 127.0.0.1 is one address.
        let entries = ["localhost:4443".to_owned(), "127.0.0.2:4443".to_owned()];
        let edges = resolve(&entries).await.unwrap();
        let addrs: Vec<&str> = edges.iter().map(|e| e.addr.as_str()).collect();
        assert_eq!(addrs, ["localhost:4443", "127.0.0.2:4443"]);
    }
}
