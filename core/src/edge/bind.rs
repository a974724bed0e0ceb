//! Turning a `Bind` request into a served endpoint.

use super::auth::Grant;
use super::cluster::RouteValue;
use super::public;
use super::routes::{EdgePolicy, Route};
use super::Shared;
use crate::agent::http::Scheme;
use crate::agent::{EndpointKind, TlsMaterial};
use crate::error::{Error, ErrorCode, Result};
use crate::policy::TrafficPolicy;
use crate::tls::ServerTls;
use crate::wire::mux::MuxHandle;
use crate::wire::BindSpec;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Something a session holds until it unbinds or ends.
pub(crate) enum Bound {
    /// A hostname on the TLS listener, and how the cluster (if any) knows the claim.
    Name(String, RouteValue),
    /// A TCP listener of its own.
    Port(CancellationToken),
}

impl Bound {
    pub(crate) fn release(self, shared: &Shared, session_id: &str, endpoint_id: &str) {
        match self {
            Bound::Name(name, claim) => {
                shared.routes.release(&name, session_id, endpoint_id);
                if let Some(cluster) = shared.cluster.clone() {
                    let session_id = session_id.to_owned();
                    shared.tasks.spawn(async move {
                        cluster.release(&name, &session_id, &claim).await;
                    });
                }
            }
            Bound::Port(stop) => stop.cancel(),
        }
    }
}

/// A `Bind` request with its traffic policy parsed (once, for the whole bind).
pub(crate) struct Prepared {
    spec: BindSpec,
    policy: TrafficPolicy,
}

impl Prepared {
    /// Parses the spec's policy and IP restrictions; fails with `INVALID_POLICY` or
    /// `INVALID_OPTION` naming what is wrong.
    pub(crate) fn new(spec: BindSpec) -> Result<Self> {
        let mut policy = match &spec.traffic_policy {
            Some(text) if !text.trim().is_empty() => TrafficPolicy::parse(text)?,
            _ => TrafficPolicy::default(),
        };
        policy.restrict_ips(&spec.allow_cidrs, &spec.deny_cidrs)?;
        if spec.proto() != crate::wire::Proto::Http && policy.has_http_phases() {
            return Err(crate::agent::http_phases_refused(spec.proto()));
        }
        Ok(Prepared { spec, policy })
    }
}

/// Who a bind is for: the session's identity, grant and tunnel (not the session itself,
/// which owns what a bind returns).
pub(crate) struct Owner<'a> {
    pub(crate) shared: &'a Arc<Shared>,
    pub(crate) session_id: &'a str,
    pub(crate) grant: &'a Grant,
    pub(crate) tunnel: &'a MuxHandle,
    /// The tunnel connection (see `SessionEntry::conn`).
    pub(crate) conn: u64,
    /// The new endpoint's live counters.
    pub(crate) stats: &'a Arc<super::EndpointStats>,
}

/// Serves a prepared bind for `owner`; returns what the session must hold until the
/// endpoint closes, and the public URL.
pub(crate) async fn bind(owner: &Owner<'_>, prepared: &Prepared) -> Result<(Bound, String)> {
    if prepared.spec.endpoint_id.is_empty() || prepared.spec.endpoint_id.len() > 128 {
        return Err(Error::protocol("endpoint_id must be 1 to 128 characters"));
    }
    match &prepared.spec.kind {
        EndpointKind::Tls { domain, port } | EndpointKind::Http { domain, port, .. } => {
            bind_name(owner, prepared, domain.as_deref(), *port).await
        }
        EndpointKind::Tcp { remote_port } => bind_port(owner, prepared, *remote_port).await,
    }
}

impl Prepared {
    /// The endpoint id the agent chose.
    pub(crate) fn endpoint_id(&self) -> &str {
        &self.spec.endpoint_id
    }

    /// The endpoint's protocol, as a metric label.
    pub(crate) fn proto(&self) -> &'static str {
        match self.spec.proto() {
            crate::wire::Proto::Tls => "tls",
            crate::wire::Proto::Tcp => "tcp",
            crate::wire::Proto::Http => "http",
        }
    }

    /// Where TLS is terminated, as a metric label.
    pub(crate) fn termination(&self) -> &'static str {
        match self.terminate_at() {
            crate::agent::TerminateAt::Edge => "edge",
            crate::agent::TerminateAt::Agent => "agent",
            crate::agent::TerminateAt::Upstream => "upstream",
        }
    }

    /// Where TLS is terminated, for logs.
    pub(crate) fn terminate_at(&self) -> crate::agent::TerminateAt {
        self.spec.termination.terminate_at()
    }
}

async fn bind_name(
    owner: &Owner<'_>,
    prepared: &Prepared,
    domain: Option<&str>,
    port: Option<u16>,
) -> Result<(Bound, String)> {
    let shared = owner.shared;
    let (scheme, own_port) = public_scheme(shared, &prepared.spec.kind)?;
    if let Some(port) = port.filter(|p| *p != own_port) {
        return Err(Error::new(
            ErrorCode::InvalidUrl,
            format!(
                "port {port} in the url: this edge serves {scheme}:// endpoints on port {own_port} only (leave the port out)"
            ),
        ));
    }
    let suffix = shared
        .config
        .domain_suffix
        .trim_matches('.')
        .to_ascii_lowercase();
    let name = match domain {
        Some(domain) => {
            let name = normalize_domain(domain)?;
            if !is_random_name(&name, &suffix) {
                owner.grant.check(&name)?;
            }
            name
        }
        None => format!("{:016x}.{suffix}", rand::random::<u64>()),
    };
    let route = route(owner, prepared, &name)?;
    let claim = claim(owner, &name, route).await?;
    let url = match (scheme, own_port) {
        ("tls" | "https", 443) | ("http", 80) => format!("{scheme}://{name}"),
        (_, port) => format!("{scheme}://{name}:{port}"),
    };
    Ok((Bound::Name(name, claim), url))
}

/// The scheme and port of a named endpoint's public URL: `tls://` on the TLS listener,
/// `https://` there for an http endpoint, `http://` on the HTTP listener for an
/// http endpoint served over plain HTTP only.
fn public_scheme(shared: &Shared, kind: &EndpointKind) -> Result<(&'static str, u16)> {
    let EndpointKind::Http { http, .. } = kind else {
        return Ok(("tls", shared.tls_port));
    };
    if http.serves(Scheme::Https) {
        return Ok(("https", shared.tls_port));
    }
    match shared.http_port {
        Some(port) => Ok(("http", port)),
        None => Err(Error::new(
            ErrorCode::Unsupported,
            "schemes=[\"HTTP\"]: this edge has no plain HTTP listener (http_addr); serve the endpoint over HTTPS",
        )),
    }
}

/// Gives `name` to the route: across the cluster first (when there is one), then here.
/// Returns how the cluster knows the claim, for its release.
async fn claim(owner: &Owner<'_>, name: &str, route: Route) -> Result<RouteValue> {
    let shared = owner.shared;
    let claim = RouteValue {
        endpoint: route.endpoint_id.clone(),
        pooled: route.pooled,
        conn: owner.conn,
    };
    let Some(cluster) = &shared.cluster else {
        shared.routes.claim(name, route)?;
        return Ok(claim);
    };
    cluster.claim(name, owner.session_id, &claim).await?;
    if let Err(e) = shared.routes.claim(name, route) {
        cluster.release(name, owner.session_id, &claim).await;
        return Err(e);
    }
    Ok(claim)
}

/// The route for a prepared bind, served under `name`: edge TLS and policy built and checked.
fn route(owner: &Owner<'_>, prepared: &Prepared, name: &str) -> Result<Route> {
    let shared = owner.shared;
    let http = match &prepared.spec.kind {
        EndpointKind::Http { http, .. } => Some(Arc::new(super::http::HttpRoute::new(
            http,
            &prepared.policy,
        )?)),
        _ => None,
    };
    let edge_tls = prepared
        .spec
        .edge_tls()
        .map(|t| match &http {
            // Browsers and curl negotiate h2 or HTTP/1.1 with the edge's proxy.
            Some(_) if t.alpn.is_empty() => {
                let mut t = t.clone();
                t.alpn = vec!["h2".into(), "http/1.1".into()];
                edge_server_config(shared, name, &t)
            }
            _ => edge_server_config(shared, name, t),
        })
        .transpose()?;
    if http.is_some() && edge_tls.is_none() {
        return Err(Error::protocol(
            "an http endpoint is terminated at the edge: its termination must be \"edge\"",
        ));
    }
    let policy = if prepared.policy.is_empty() {
        None
    } else {
        let terminations = prepared
            .policy
            .terminations()
            .iter()
            .map(|t| edge_server_config(shared, name, &t.to_material()))
            .collect::<Result<Vec<_>>>()?;
        Some(Arc::new(EdgePolicy {
            policy: prepared.policy.clone(),
            terminations,
        }))
    };
    Ok(Route {
        session_id: owner.session_id.to_owned(),
        endpoint_id: prepared.spec.endpoint_id.clone(),
        tunnel: owner.tunnel.clone(),
        edge_tls,
        policy,
        pooled: prepared.spec.pooling_enabled,
        handling: handling(&prepared.spec),
        http,
        stats: owner.stats.clone(),
    })
}

/// A digest of what decides how a connection is treated: pool members that agree on it
/// admit and terminate connections alike.
fn handling(spec: &BindSpec) -> u64 {
    use std::hash::{Hash, Hasher};
    let http = match &spec.kind {
        EndpointKind::Http { http, .. } => Some(http),
        _ => None,
    };
    let what = (
        http,
        &spec.termination,
        &spec.traffic_policy,
        &spec.allow_cidrs,
        &spec.deny_cidrs,
    );
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&what)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

/// Random names are one label under the edge's suffix; any session may rebind them.
fn is_random_name(name: &str, suffix: &str) -> bool {
    name.strip_suffix(suffix)
        .and_then(|head| head.strip_suffix('.'))
        .is_some_and(|label| !label.is_empty() && !label.contains('.') && !label.contains('*'))
}

/// Lowercases and checks a hostname (a leading `*.` is allowed).
pub(crate) fn normalize_domain(domain: &str) -> Result<String> {
    let name = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let bare = name.strip_prefix("*.").unwrap_or(&name);
    let valid = !bare.is_empty()
        && bare.contains('.')
        && matches!(ServerName::try_from(bare), Ok(ServerName::DnsName(_)));
    if !valid {
        return Err(Error::new(
            ErrorCode::InvalidDomain,
            format!("domain {domain:?} is not a valid DNS name (expected e.g. app.example.com)"),
        ));
    }
    Ok(name)
}

/// A `Bind` request waiting for its certificate: request id, the bind, outcome of the wait.
pub(crate) type PendingBind = futures::future::BoxFuture<'static, (u64, Box<Prepared>, Result<()>)>;

/// What a bind must wait for before it can be served, if anything: an ACME certificate
/// for an edge-terminated name that has no valid one yet. The session runs the returned
/// future outside its control loop, so heartbeats and other binds go on meanwhile.
pub(crate) fn pending_cert(
    shared: &Arc<Shared>,
    grant: &super::auth::Grant,
    prepared: &Prepared,
) -> Option<futures::future::BoxFuture<'static, Result<()>>> {
    let spec = &prepared.spec;
    let automatic = |t: &TlsMaterial| t.cert.is_none();
    let by_policy = || {
        prepared
            .policy
            .terminations()
            .iter()
            .any(|t| automatic(&t.to_material()))
    };
    if !(spec.edge_tls().is_some_and(automatic) || by_policy()) {
        return None;
    }
    let name = match &spec.kind {
        EndpointKind::Tcp { .. } => shared.config.public_host.to_ascii_lowercase(),
        // Random names are under the suffix: the own CA serves them.
        EndpointKind::Tls { domain, .. } | EndpointKind::Http { domain, .. } => {
            normalize_domain(domain.as_deref()?).ok()?
        }
    };
    if name.starts_with("*.") || !super::certs::needs_acme_order(shared, &name) {
        return None;
    }
    if let Err(e) = grant.check(&name) {
        return Some(Box::pin(std::future::ready(Err(e))));
    }
    let acme = shared.acme.clone()?;
    Some(Box::pin(async move { acme.obtain(&name).await }))
}

/// The rustls config for an edge-terminated endpoint named `name`.
fn edge_server_config(shared: &Shared, name: &str, material: &TlsMaterial) -> Result<ServerTls> {
    // A wildcard endpoint needs a wildcard certificate: probe with a random label.
    let probe = match name.strip_prefix("*.") {
        Some(parent) => format!("w{:08x}.{parent}", rand::random::<u32>()),
        None => name.to_owned(),
    };
    let settings = material.settings();
    match material.check(Some(&probe))? {
        Some(cert) => ServerTls::new(&cert, &settings),
        None => {
            let resolver = super::certs::endpoint_resolver(shared, name)?;
            ServerTls::with_resolver(resolver, &settings)
        }
    }
}

async fn bind_port(
    owner: &Owner<'_>,
    prepared: &Prepared,
    remote_port: Option<u16>,
) -> Result<(Bound, String)> {
    let shared = owner.shared;
    if prepared.spec.pooling_enabled {
        return Err(crate::agent::tcp_pooling_refused());
    }
    let Some([lo, hi]) = shared.config.tcp_ports else {
        return Err(Error::new(
            ErrorCode::Unsupported,
            "this edge serves no tcp:// endpoints (tcp_ports is not configured)",
        ));
    };
    let listener = listen_in_range(shared, lo, hi, remote_port).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("tcp endpoint address", e))?;
    let host = &shared.config.public_host;
    let route = route(owner, prepared, host)?;
    let stop = shared.stop.child_token();
    shared.tasks.spawn(
        public::accept_tcp(shared.clone(), listener, route, stop.clone())
            .instrument(tracing::info_span!("tcp", port = addr.port())),
    );
    Ok((Bound::Port(stop), format!("tcp://{host}:{}", addr.port())))
}

async fn listen_in_range(
    shared: &Arc<Shared>,
    lo: u16,
    hi: u16,
    wanted: Option<u16>,
) -> Result<TcpListener> {
    let ip = shared.config.tcp_bind;
    let unavailable = |m: String| Error::new(ErrorCode::PortUnavailable, m);
    if let Some(port) = wanted {
        let in_range = (lo == 0 && hi == 0) || (lo..=hi).contains(&port);
        if !in_range {
            return Err(unavailable(format!(
                "port {port} is outside this edge's tcp_ports {lo}-{hi}"
            )));
        }
        return super::listen(SocketAddr::new(ip, port))
            .map_err(|e| unavailable(format!("port {port} is not available: {e}")));
    }
    if lo == 0 && hi == 0 {
        return super::listen(SocketAddr::new(ip, 0))
            .map_err(|e| unavailable(format!("no free port: {e}")));
    }
    let span = u32::from(hi - lo) + 1;
    let start = rand::random::<u32>() % span;
    for i in 0..span {
        let port = lo + ((start + i) % span) as u16;
        if let Ok(listener) = super::listen(SocketAddr::new(ip, port)) {
            return Ok(listener);
        }
    }
    Err(unavailable(format!("every port in {lo}-{hi} is in use")))
}
