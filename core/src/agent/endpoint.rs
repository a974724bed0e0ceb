//! Endpoint builders, and what they give back: a [`Listener`] of connections or a
//! [`Forwarder`] that sends them to an upstream.

use super::conn::Conn;
use super::proxy_proto::{self, ProxyProto};
use super::upstream::Upstream;
use super::Session;
use crate::error::{Error, ErrorCode, Result};
use crate::policy::TrafficPolicy;
use crate::splice::splice;
use crate::tls::{self, CertKey, ServerTlsSettings, TlsVersion};
use crate::wire::{BindSpec, EdgeTls, Proto, SecretPem};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Where TLS is terminated for an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminateAt {
    /// The edge terminates (custom crt/key or an automatic certificate).
    Edge,
    /// The agent terminates with the given crt/key; the edge sees only SNI.
    Agent,
    /// Nobody in burrow terminates: the upstream service does (passthrough).
    Upstream,
}

impl FromStr for TerminateAt {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "edge" => Ok(TerminateAt::Edge),
            "agent" => Ok(TerminateAt::Agent),
            "upstream" => Ok(TerminateAt::Upstream),
            _ => Err(Error::option(format!(
                "terminate_at {s:?} is not one of \"edge\", \"agent\", \"upstream\""
            ))),
        }
    }
}

impl fmt::Display for TerminateAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TerminateAt::Edge => "edge",
            TerminateAt::Agent => "agent",
            TerminateAt::Upstream => "upstream",
        })
    }
}

/// Settings common to TLS and TCP endpoints.
#[derive(Default)]
struct Options {
    domain: Option<String>,
    remote_port: Option<u16>,
    terminate_at: Option<TerminateAt>,
    crt: Option<Vec<u8>>,
    key: Option<SecretPem>,
    mutual_tls_cas: Option<Vec<u8>>,
    min_version: Option<String>,
    max_version: Option<String>,
    alpn: Vec<String>,
    metadata: String,
    forwards_to: Option<String>,
    traffic_policy: Option<String>,
    allow_cidrs: Vec<String>,
    deny_cidrs: Vec<String>,
    proxy_proto: Option<ProxyProto>,
}

/// What the endpoint's termination resolved to.
enum Resolved {
    Upstream,
    Agent(TlsAcceptor),
    Edge(EdgeTls),
}

impl Options {
    /// Applies the termination rule: crt+key alone means edge, `terminate_at` overrides.
    fn resolve(&self, proto: Proto) -> Result<Resolved> {
        // Parse the policy here too, so that mistakes fail before any network call.
        let mut policy = match &self.traffic_policy {
            Some(text) => TrafficPolicy::parse(text)?,
            None => TrafficPolicy::default(),
        };
        policy.restrict_ips(&self.allow_cidrs, &self.deny_cidrs)?;
        if !policy.terminations().is_empty() {
            if let Some(at @ (TerminateAt::Agent | TerminateAt::Upstream)) = self.terminate_at {
                return Err(Error::option(format!(
                    "the traffic policy's terminate-tls action makes the edge terminate TLS, which contradicts terminate_at=\"{at}\""
                )));
            }
        }
        let has_cert = self.crt.is_some() || self.key.is_some();
        let at = self
            .terminate_at
            .unwrap_or(if has_cert || self.mutual_tls_cas.is_some() {
                TerminateAt::Edge
            } else {
                TerminateAt::Upstream
            });
        let pair = || -> Result<Option<(Vec<u8>, SecretPem)>> {
            match (&self.crt, &self.key) {
                (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
                (None, None) => Ok(None),
                (Some(_), None) => Err(Error::option("Missing key for tls termination")),
                (None, Some(_)) => Err(Error::option("Missing crt for tls termination")),
            }
        };
        let versions = || -> Result<(Option<TlsVersion>, Option<TlsVersion>)> {
            let min = self
                .min_version
                .as_deref()
                .map(|v| tls::parse_version(v, "min_version"))
                .transpose()?;
            let max = self
                .max_version
                .as_deref()
                .map(|v| tls::parse_version(v, "max_version"))
                .transpose()?;
            Ok((min, max))
        };
        match at {
            TerminateAt::Upstream => {
                if has_cert
                    || self.mutual_tls_cas.is_some()
                    || self.min_version.is_some()
                    || self.max_version.is_some()
                    || !self.alpn.is_empty()
                {
                    return Err(Error::option(
                        "terminate_at=\"upstream\" passes TLS through untouched, so crt, key, mutual_tls_cas, TLS versions and ALPN cannot apply; drop them or terminate at \"edge\" or \"agent\"",
                    ));
                }
                Ok(Resolved::Upstream)
            }
            TerminateAt::Edge => {
                let (min, max) = versions()?;
                if let (Some(lo), Some(hi)) = (min, max) {
                    if lo > hi {
                        return Err(Error::option(
                            "min_version is above max_version: no TLS version is left",
                        ));
                    }
                }
                if let Some(cas) = &self.mutual_tls_cas {
                    tls::parse_certs(cas, "mutual_tls_cas")?;
                }
                let cert = pair()?;
                if let Some((crt, key)) = &cert {
                    let parsed = CertKey::from_pem(crt, key.0.as_bytes())?;
                    if let Some(domain) = &self.domain {
                        if !domain.starts_with("*.") {
                            parsed.check_covers(domain)?;
                        }
                    }
                }
                let to_text = |b: &[u8], what: &str| {
                    String::from_utf8(b.to_vec()).map_err(|_| {
                        Error::new(
                            ErrorCode::InvalidPem,
                            format!("{what}: PEM must be text (UTF-8)"),
                        )
                    })
                };
                let (cert_pem, key_pem) = match cert {
                    Some((c, k)) => (Some(to_text(&c, "crt")?), Some(k)),
                    None => (None, None),
                };
                Ok(Resolved::Edge(EdgeTls {
                    cert_pem,
                    key_pem,
                    min_version: self.min_version.clone(),
                    max_version: self.max_version.clone(),
                    alpn: self.alpn.clone(),
                    client_ca_pem: self
                        .mutual_tls_cas
                        .as_ref()
                        .map(|c| to_text(c, "mutual_tls_cas"))
                        .transpose()?,
                }))
            }
            TerminateAt::Agent => {
                let Some((crt, key)) = pair()? else {
                    return Err(Error::option(
                        "terminate_at=\"agent\" needs crt and key: the agent terminates TLS with them",
                    ));
                };
                let cert = CertKey::from_pem(&crt, key.0.as_bytes())?;
                match (&self.domain, proto) {
                    (Some(domain), _) if !domain.starts_with("*.") => cert.check_covers(domain)?,
                    (None, Proto::Tls) => {
                        return Err(Error::option(
                            "terminate_at=\"agent\" needs a domain that the certificate covers (a random name cannot match it)",
                        ))
                    }
                    _ => {}
                }
                let (min, max) = versions()?;
                let settings = ServerTlsSettings {
                    min_version: min,
                    max_version: max,
                    alpn: self.alpn.clone(),
                    client_ca_pem: self.mutual_tls_cas.clone(),
                };
                let config = tls::server_config(&cert, &settings)?;
                Ok(Resolved::Agent(TlsAcceptor::from(Arc::new(config))))
            }
        }
    }
}

macro_rules! common_setters {
    () => {
        /// Free-form metadata for this endpoint.
        pub fn metadata(mut self, metadata: impl Into<String>) -> Self {
            self.opts.metadata = metadata.into();
            self
        }

        /// A description of the upstream, reported by `forwards_to()`.
        pub fn forwards_to(mut self, to: impl Into<String>) -> Self {
            self.opts.forwards_to = Some(to.into());
            self
        }

        /// Edge termination with this certificate chain and key (PEM).
        pub fn termination(mut self, crt: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
            self.opts.crt = Some(crt.into());
            self.opts.key = Some(secret(key.into()));
            self.opts.terminate_at = Some(TerminateAt::Edge);
            self
        }

        /// Agent termination with this certificate chain and key (PEM).
        pub fn agent_termination(
            mut self,
            crt: impl Into<Vec<u8>>,
            key: impl Into<Vec<u8>>,
        ) -> Self {
            self.opts.crt = Some(crt.into());
            self.opts.key = Some(secret(key.into()));
            self.opts.terminate_at = Some(TerminateAt::Agent);
            self
        }

        /// Sets the certificate and key without choosing where they are used.
        pub fn crt_key(mut self, crt: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
            self.opts.crt = Some(crt.into());
            self.opts.key = Some(secret(key.into()));
            self
        }

        /// The certificate alone (PEM); pair it with [`Self::key`].
        pub fn crt(mut self, crt: impl Into<Vec<u8>>) -> Self {
            self.opts.crt = Some(crt.into());
            self
        }

        /// The private key alone (PEM); pair it with [`Self::crt`].
        pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
            self.opts.key = Some(secret(key.into()));
            self
        }

        /// Where TLS is terminated; see [`TerminateAt`].
        pub fn terminate_at(mut self, at: TerminateAt) -> Self {
            self.opts.terminate_at = Some(at);
            self
        }

        /// Require client certificates issued by this CA bundle (PEM).
        pub fn mutual_tlsca(mut self, ca: impl Into<Vec<u8>>) -> Self {
            self.opts.mutual_tls_cas = Some(ca.into());
            self
        }

        /// Lowest TLS version accepted where burrow terminates ("1.2" or "1.3").
        pub fn min_version(mut self, v: impl Into<String>) -> Self {
            self.opts.min_version = Some(v.into());
            self
        }

        /// Highest TLS version accepted where burrow terminates ("1.2" or "1.3").
        pub fn max_version(mut self, v: impl Into<String>) -> Self {
            self.opts.max_version = Some(v.into());
            self
        }

        /// ALPN protocols offered where burrow terminates.
        pub fn alpn(mut self, protocols: impl IntoIterator<Item = impl Into<String>>) -> Self {
            self.opts.alpn = protocols.into_iter().map(Into::into).collect();
            self
        }

        /// A traffic policy (YAML or JSON) the edge runs on every connection.
        pub fn traffic_policy(mut self, policy: impl Into<String>) -> Self {
            self.opts.traffic_policy = Some(policy.into());
            self
        }

        /// Only clients in this CIDR range (may be given several times).
        pub fn allow_cidr(mut self, cidr: impl Into<String>) -> Self {
            self.opts.allow_cidrs.push(cidr.into());
            self
        }

        /// Refuse clients in this CIDR range (may be given several times).
        pub fn deny_cidr(mut self, cidr: impl Into<String>) -> Self {
            self.opts.deny_cidrs.push(cidr.into());
            self
        }

        /// Send a PROXY protocol header to the upstream (forwarding only).
        pub fn proxy_proto(mut self, version: ProxyProto) -> Self {
            self.opts.proxy_proto = Some(version);
            self
        }

        /// Binds the endpoint and returns its connections.
        pub async fn listen(self) -> Result<Listener> {
            listen(self.session, Self::PROTO, self.opts).await
        }

        /// Binds the endpoint and forwards every connection to `upstream`.
        pub async fn listen_and_forward(self, upstream: Upstream) -> Result<Forwarder> {
            let dialer = upstream.dialer()?;
            let mut opts = self.opts;
            opts.forwards_to.get_or_insert_with(|| upstream.to_string());
            let proxy_proto = opts.proxy_proto;
            let listener = listen(self.session, Self::PROTO, opts).await?;
            Ok(Forwarder::start(listener, dialer, proxy_proto))
        }
    };
}

fn secret(bytes: Vec<u8>) -> SecretPem {
    SecretPem(String::from_utf8_lossy(&bytes).into_owned())
}

/// Builds a TLS endpoint, routed by SNI on the edge's TLS port.
pub struct TlsEndpointBuilder {
    session: Session,
    opts: Options,
}

impl TlsEndpointBuilder {
    const PROTO: Proto = Proto::Tls;

    pub(crate) fn new(session: Session) -> Self {
        TlsEndpointBuilder {
            session,
            opts: Options::default(),
        }
    }

    /// The hostname to serve; without one the edge picks a random name.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.opts.domain = Some(domain.into());
        self
    }

    /// The endpoint URL, `tls://NAME` (a port, if given, must be the edge's).
    pub fn url(self, url: &str) -> Result<Self> {
        let rest = url.strip_prefix("tls://").ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidUrl,
                format!("url {url:?} must start with tls:// for a TLS endpoint"),
            )
        })?;
        let host = rest
            .split(':')
            .next()
            .unwrap_or_default()
            .trim_end_matches('/');
        if host.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidUrl,
                format!("url {url:?} has no hostname"),
            ));
        }
        Ok(self.domain(host))
    }

    common_setters!();
}

/// Builds a TCP endpoint on a port of its own.
pub struct TcpEndpointBuilder {
    session: Session,
    opts: Options,
}

impl TcpEndpointBuilder {
    const PROTO: Proto = Proto::Tcp;

    pub(crate) fn new(session: Session) -> Self {
        TcpEndpointBuilder {
            session,
            opts: Options::default(),
        }
    }

    /// Ask for this public port (it must be in the edge's range and free).
    pub fn remote_port(mut self, port: u16) -> Self {
        self.opts.remote_port = Some(port);
        self
    }

    /// `host:port` or `tcp://host:port` as ngrok spells `remote_addr`; only the port is used.
    pub fn remote_addr(self, addr: &str) -> Result<Self> {
        let rest = addr.strip_prefix("tcp://").unwrap_or(addr);
        let port = rest
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidUrl,
                    format!("remote_addr {addr:?} is not host:port"),
                )
            })?;
        Ok(self.remote_port(port))
    }

    common_setters!();
}

async fn listen(session: Session, proto: Proto, opts: Options) -> Result<Listener> {
    let resolved = opts.resolve(proto)?;
    let policy_terminates = match &opts.traffic_policy {
        Some(text) => !TrafficPolicy::parse(text)?.terminations().is_empty(),
        None => false,
    };
    let (edge_tls, agent_tls, mode) = match resolved {
        Resolved::Upstream if policy_terminates => (None, None, TerminateAt::Edge),
        Resolved::Upstream => (None, None, TerminateAt::Upstream),
        Resolved::Agent(acceptor) => (None, Some(acceptor), TerminateAt::Agent),
        Resolved::Edge(tls) => (Some(tls), None, TerminateAt::Edge),
    };
    let endpoint_id = crate::random_id();
    let spec = BindSpec {
        endpoint_id: endpoint_id.clone(),
        proto,
        domain: opts.domain.clone(),
        remote_port: opts.remote_port,
        edge_tls,
        traffic_policy: opts.traffic_policy.clone(),
        allow_cidrs: opts.allow_cidrs.clone(),
        deny_cidrs: opts.deny_cidrs.clone(),
        metadata: opts.metadata.clone(),
    };
    let (tx, rx) = mpsc::channel(session.max_pending());
    let url = session.bind(spec, agent_tls, tx).await?;
    tracing::info!(%url, terminate_at = %mode, "endpoint online");
    Ok(Listener {
        session,
        id: endpoint_id,
        url,
        proto,
        terminate_at: mode,
        metadata: opts.metadata,
        forwards_to: opts.forwards_to.unwrap_or_default(),
        conns: rx,
    })
}

/// A bound endpoint whose connections the caller accepts. Dropping it closes the endpoint.
pub struct Listener {
    session: Session,
    id: String,
    url: String,
    proto: Proto,
    terminate_at: TerminateAt,
    metadata: String,
    forwards_to: String,
    conns: mpsc::Receiver<Conn>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("id", &self.id)
            .field("url", &self.url)
            .finish()
    }
}

impl Listener {
    /// The next connection; `None` once the endpoint or session is closed.
    pub async fn accept(&mut self) -> Option<Conn> {
        let stopped = self.session.stopped();
        tokio::select! {
            conn = self.conns.recv() => conn,
            _ = stopped.cancelled() => None,
        }
    }

    /// The endpoint id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The public URL, e.g. `tls://app.example.com:8443`; stable across reconnects.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `"tls"` or `"tcp"`.
    pub fn proto(&self) -> &'static str {
        match self.proto {
            Proto::Tls => "tls",
            Proto::Tcp => "tcp",
        }
    }

    /// Where TLS is terminated for this endpoint.
    pub fn terminate_at(&self) -> TerminateAt {
        self.terminate_at
    }

    /// The endpoint's metadata.
    pub fn metadata(&self) -> &str {
        &self.metadata
    }

    /// What the endpoint forwards to, as described by its owner.
    pub fn forwards_to(&self) -> &str {
        &self.forwards_to
    }

    /// Stops serving; connections already accepted keep running.
    pub fn close(&mut self) {
        self.session.unbind(&self.id);
        self.conns.close();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.close();
    }
}

/// A bound endpoint that forwards every connection to an upstream.
/// Dropping it closes the endpoint.
pub struct Forwarder {
    id: String,
    url: String,
    proto: &'static str,
    terminate_at: TerminateAt,
    metadata: String,
    forwards_to: String,
    session: Session,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    /// The connections this forwarder is serving.
    connections: TaskTracker,
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder")
            .field("id", &self.id)
            .field("url", &self.url)
            .finish()
    }
}

impl Forwarder {
    fn start(
        mut listener: Listener,
        dialer: super::upstream::Dialer,
        proxy_proto: Option<ProxyProto>,
    ) -> Self {
        let stop = listener.session.stopped().child_token();
        let session = listener.session.clone();
        let dialer = Arc::new(dialer);
        let mut forwarder = Forwarder {
            id: listener.id.clone(),
            url: listener.url.clone(),
            proto: listener.proto(),
            terminate_at: listener.terminate_at,
            metadata: listener.metadata.clone(),
            forwards_to: listener.forwards_to.clone(),
            session: listener.session.clone(),
            stop: stop.clone(),
            task: None,
            connections: TaskTracker::new(),
        };
        let connections = forwarder.connections.clone();
        let span = tracing::info_span!("forward", url = %listener.url);
        let task = tokio::spawn(
            async move {
                loop {
                    let conn = tokio::select! {
                        _ = stop.cancelled() => break,
                        conn = listener.accept() => match conn { Some(c) => c, None => break },
                    };
                    let dialer = dialer.clone();
                    let session_stop = session.stopped();
                    tracing::info!(client = %conn.client_addr(), sni = conn.sni().unwrap_or("-"), terminate_at = %listener.terminate_at, "connection");
                    session.tasks().spawn(connections.track_future(
                        async move {
                            tokio::select! {
                                _ = session_stop.cancelled() => {}
                                r = forward(conn, &dialer, proxy_proto) => if let Err(e) = r {
                                    tracing::info!(error = %e, "connection ended");
                                },
                            }
                        }
                        .in_current_span(),
                    ));
                }
                listener.close();
            }
            .instrument(span),
        );
        forwarder.task = Some(task);
        forwarder
    }

    /// The endpoint id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The public URL; stable across reconnects.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `"tls"` or `"tcp"`.
    pub fn proto(&self) -> &'static str {
        self.proto
    }

    /// Where TLS is terminated for this endpoint.
    pub fn terminate_at(&self) -> TerminateAt {
        self.terminate_at
    }

    /// The endpoint's metadata.
    pub fn metadata(&self) -> &str {
        &self.metadata
    }

    /// The upstream it forwards to.
    pub fn forwards_to(&self) -> &str {
        &self.forwards_to
    }

    /// Stops accepting new connections (idempotent); open ones finish on their own.
    ///
    /// The edge is told at once, so a later bind of the same name is ordered after it.
    pub fn close(&self) {
        self.session.unbind(&self.id);
        self.stop.cancel();
    }

    /// A future that resolves once the forwarder is closed (by `close`, drop, or its
    /// session closing); it does not borrow the forwarder.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let stop = self.stop.clone();
        async move { stop.cancelled().await }
    }

    /// Connections this forwarder is serving right now.
    pub fn open_connections(&self) -> usize {
        self.connections.len()
    }

    /// Waits until every connection this forwarder accepted has ended; with
    /// [`Forwarder::close`] first, that is a graceful shutdown (bound it with a timeout).
    pub async fn wait_connections(&self) {
        self.connections.close();
        self.connections.wait().await;
    }

    /// Waits until the forwarder stops (closed, or its session closed).
    pub async fn join(&mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.close();
    }
}

async fn forward(
    mut conn: Conn,
    dialer: &super::upstream::Dialer,
    proxy_proto: Option<ProxyProto>,
) -> Result<()> {
    // Boxed: dialling's timers and address lookup are not kept for the splice.
    let mut upstream = Box::pin(dialer.dial()).await?;
    if let Some(version) = proxy_proto {
        let header = proxy_proto::header(version, conn.client_addr(), conn.server_addr())?;
        upstream
            .write_all(&header)
            .await
            .map_err(|e| Error::io("PROXY header to upstream", e))?;
    }
    let result = splice(&mut conn, &mut upstream).await;
    // On failure `conn` is dropped unclosed, which resets the tunnel stream (and sends
    // no close_notify under agent termination): the edge passes that on to the client.
    if result.is_err() {
        upstream.reset_on_close();
    }
    result.map(|_| ())
}
