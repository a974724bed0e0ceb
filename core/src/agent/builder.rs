//! Endpoint builders, as ngrok's Rust SDK spells them: `session.tls_endpoint()
//! .domain(d).termination(crt, key).listen_and_forward(upstream)`.

use super::http::{AppProtocol, Credential, Scheme, WebhookProvider, WebhookVerification};
use super::listener::{self, Forwarder, Listener};
use super::options;
use super::proxy_proto::ProxyProto;
use super::spec::{EndpointDraft, TerminateAt};
use super::upstream::Upstream;
use super::Session;
use crate::error::Result;
use crate::wire::{Proto, SecretPem};
use std::marker::PhantomData;

/// Marks a builder of TLS (SNI-routed) endpoints.
#[derive(Debug)]
pub struct TlsKind;

/// Marks a builder of TCP endpoints.
#[derive(Debug)]
pub struct TcpKind;

/// Marks a builder of HTTP endpoints.
#[derive(Debug)]
pub struct HttpKind;

/// Builds an HTTP endpoint: `https://NAME`, served by the edge's reverse proxy.
pub type HttpEndpointBuilder = EndpointBuilder<HttpKind>;

/// Builds a TLS endpoint, routed by SNI on the edge's TLS port.
pub type TlsEndpointBuilder = EndpointBuilder<TlsKind>;

/// Builds a TCP endpoint on a port of its own.
pub type TcpEndpointBuilder = EndpointBuilder<TcpKind>;

/// Builds an endpoint of kind `K`; see [`TlsEndpointBuilder`] and [`TcpEndpointBuilder`].
pub struct EndpointBuilder<K> {
    session: Session,
    draft: EndpointDraft,
    /// Set once `scheme()` replaced the default scheme list.
    schemes_chosen: bool,
    kind: PhantomData<K>,
}

impl<K> EndpointBuilder<K> {
    fn with_proto(session: Session, proto: Proto) -> Self {
        EndpointBuilder {
            session,
            draft: EndpointDraft {
                proto: Some(proto),
                ..EndpointDraft::default()
            },
            schemes_chosen: false,
            kind: PhantomData,
        }
    }

    /// Free-form metadata for this endpoint.
    pub fn metadata(mut self, metadata: impl Into<String>) -> Self {
        self.draft.metadata = metadata.into();
        self
    }

    /// A description of the upstream, reported by `forwards_to()`.
    pub fn forwards_to(mut self, to: impl Into<String>) -> Self {
        self.draft.forwards_to = Some(to.into());
        self
    }

    /// A free-form description of the endpoint.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.draft.description = Some(description.into());
        self
    }

    /// Edge termination with this certificate chain and key (PEM).
    pub fn termination(self, crt: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.crt_key(crt, key).terminate_at(TerminateAt::Edge)
    }

    /// Agent termination with this certificate chain and key (PEM).
    pub fn agent_termination(self, crt: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.crt_key(crt, key).terminate_at(TerminateAt::Agent)
    }

    /// Sets the certificate and key without choosing where they are used
    /// (alone, they mean edge termination).
    pub fn crt_key(self, crt: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.crt(crt).key(key)
    }

    /// The certificate alone (PEM); pair it with [`Self::key`].
    pub fn crt(mut self, crt: impl Into<Vec<u8>>) -> Self {
        self.draft.crt = Some(crt.into());
        self
    }

    /// The private key alone (PEM); pair it with [`Self::crt`].
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.draft.key = Some(key.into());
        self
    }

    /// Where TLS is terminated; see [`TerminateAt`].
    pub fn terminate_at(mut self, at: TerminateAt) -> Self {
        self.draft.terminate_at = Some(at);
        self
    }

    /// Require client certificates issued by this CA bundle (PEM).
    pub fn mutual_tlsca(mut self, ca: impl Into<Vec<u8>>) -> Self {
        self.draft.mutual_tls_cas = Some(ca.into());
        self
    }

    /// Lowest TLS version accepted where burrow terminates ("1.2" or "1.3").
    pub fn min_version(mut self, v: impl Into<String>) -> Self {
        self.draft.min_version = Some(v.into());
        self
    }

    /// Highest TLS version accepted where burrow terminates ("1.2" or "1.3").
    pub fn max_version(mut self, v: impl Into<String>) -> Self {
        self.draft.max_version = Some(v.into());
        self
    }

    /// ALPN protocols offered where burrow terminates.
    pub fn alpn(mut self, protocols: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.draft.alpn = protocols.into_iter().map(Into::into).collect();
        self
    }

    /// A traffic policy (YAML or JSON) the edge runs on every connection.
    pub fn traffic_policy(mut self, policy: impl Into<String>) -> Self {
        self.draft.traffic_policy = Some(policy.into());
        self
    }

    /// Only clients in this CIDR range (may be given several times).
    pub fn allow_cidr(mut self, cidr: impl Into<String>) -> Self {
        self.draft.allow_cidrs.push(cidr.into());
        self
    }

    /// Refuse clients in this CIDR range (may be given several times).
    pub fn deny_cidr(mut self, cidr: impl Into<String>) -> Self {
        self.draft.deny_cidrs.push(cidr.into());
        self
    }

    /// Send a PROXY protocol header to the upstream (forwarding only).
    pub fn proxy_proto(mut self, version: ProxyProto) -> Self {
        self.draft.proxy_proto = Some(version);
        self
    }

    /// ngrok's `pooling_enabled`: let other sessions that opt in too serve the same
    /// name; the edge spreads connections across them (TLS endpoints).
    pub fn pooling_enabled(mut self, enabled: bool) -> Self {
        self.draft.pooling_enabled = enabled;
        self
    }

    /// Binds the endpoint and returns its connections.
    pub async fn listen(self) -> Result<Listener> {
        listener::listen(self.session, self.draft.resolve()?).await
    }

    /// Binds the endpoint and forwards every connection to `upstream`.
    pub async fn listen_and_forward(self, upstream: Upstream) -> Result<Forwarder> {
        listener::listen_and_forward(self.session, self.draft.resolve()?, &upstream).await
    }
}

impl TlsEndpointBuilder {
    pub(crate) fn new(session: Session) -> Self {
        Self::with_proto(session, Proto::Tls)
    }

    /// The hostname to serve; without one the edge picks a random name.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.draft.domain = Some(domain.into());
        self
    }

    /// The endpoint URL, `tls://NAME` (a port, if given, must be the edge's TLS port).
    pub fn url(mut self, url: &str) -> Result<Self> {
        let (host, port) = options::tls_url(url)?;
        self.draft.domain = Some(host);
        self.draft.tls_port = port;
        Ok(self)
    }
}

impl TcpEndpointBuilder {
    pub(crate) fn new(session: Session) -> Self {
        Self::with_proto(session, Proto::Tcp)
    }

    /// Ask for this public port (it must be in the edge's range and free).
    pub fn remote_port(mut self, port: u16) -> Self {
        self.draft.remote_port = Some(port);
        self
    }

    /// `host:port` or `tcp://host:port` as ngrok spells `remote_addr`; only the port is used.
    pub fn remote_addr(self, addr: &str) -> Result<Self> {
        Ok(self.remote_port(options::remote_port(addr)?))
    }
}

impl HttpEndpointBuilder {
    pub(crate) fn new(session: Session) -> Self {
        Self::with_proto(session, Proto::Http)
    }

    /// The hostname to serve; without one the edge picks a random name.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.draft.domain = Some(domain.into());
        self
    }

    /// Serve this scheme; call twice for both (the first call replaces the default, HTTPS).
    pub fn scheme(mut self, scheme: Scheme) -> Self {
        if !std::mem::replace(&mut self.schemes_chosen, true) {
            self.draft.http.schemes.clear();
        }
        if !self.draft.http.schemes.contains(&scheme) {
            self.draft.http.schemes.push(scheme);
        }
        self
    }

    /// Require HTTP basic auth with this user and password (may be given several times).
    pub fn basic_auth(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.draft.http.basic_auth.push(Credential {
            username: username.into(),
            password: SecretPem(password.into()),
        });
        self
    }

    /// Only User-Agents matching this regex (may be given several times).
    pub fn allow_user_agent(mut self, regex: impl Into<String>) -> Self {
        self.draft.http.allow_user_agent.push(regex.into());
        self
    }

    /// Refuse User-Agents matching this regex (may be given several times).
    pub fn deny_user_agent(mut self, regex: impl Into<String>) -> Self {
        self.draft.http.deny_user_agent.push(regex.into());
        self
    }

    /// Add a header to every request sent upstream.
    pub fn request_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.draft
            .http
            .request_header_add
            .push((name.into(), value.into()));
        self
    }

    /// Add a header to every response.
    pub fn response_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.draft
            .http
            .response_header_add
            .push((name.into(), value.into()));
        self
    }

    /// Remove a header from every request sent upstream.
    pub fn remove_request_header(mut self, name: impl Into<String>) -> Self {
        self.draft.http.request_header_remove.push(name.into());
        self
    }

    /// Remove a header from every response.
    pub fn remove_response_header(mut self, name: impl Into<String>) -> Self {
        self.draft.http.response_header_remove.push(name.into());
        self
    }

    /// Compress responses (gzip or brotli, as the client accepts).
    pub fn compression(mut self) -> Self {
        self.draft.http.compression = true;
        self
    }

    /// Answer 503 for a while once this fraction of responses are 5xx.
    pub fn circuit_breaker(mut self, fraction: f64) -> Self {
        self.draft.http.circuit_breaker = Some(fraction);
        self
    }

    /// Accept websockets at the edge and give the upstream a plain byte stream.
    pub fn websocket_tcp_conversion(mut self) -> Self {
        self.draft.http.websocket_tcp_converter = true;
        self
    }

    /// Verify this provider's webhook signatures with `secret`.
    pub fn webhook_verification(
        mut self,
        provider: WebhookProvider,
        secret: impl Into<String>,
    ) -> Self {
        self.draft.http.verify_webhook = Some(WebhookVerification {
            provider,
            secret: SecretPem(secret.into()),
        });
        self
    }

    /// The `Host` header sent upstream instead of the client's.
    pub fn host_header(mut self, host: impl Into<String>) -> Self {
        self.draft.http.host_header = Some(host.into());
        self
    }

    /// How the edge speaks to the upstream (HTTP/1.1 or h2c).
    pub fn app_protocol(mut self, protocol: AppProtocol) -> Self {
        self.draft.http.app_protocol = protocol;
        self
    }

    /// Whether to add `X-Forwarded-For`, `-Proto` and `-Host` (default true).
    pub fn forwarded_headers(mut self, enabled: bool) -> Self {
        self.draft.http.forwarded_headers = enabled;
        self
    }
}
