//! rustls configurations: terminating servers, the tunnel, upstream clients.

use super::pem::{parse_certs, CertKey};
use crate::error::{Error, Result};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use std::sync::Arc;

/// The crypto provider burrow uses everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS protocol version that termination can be limited to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum TlsVersion {
    /// TLS 1.2
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3
    #[serde(rename = "1.3")]
    Tls13,
}

/// Parses "1.2" or "1.3"; `what` names the field in the error.
pub fn parse_version(s: &str, what: &str) -> Result<TlsVersion> {
    match s.trim() {
        "1.2" => Ok(TlsVersion::Tls12),
        "1.3" => Ok(TlsVersion::Tls13),
        other => Err(Error::option(format!(
            "{what}: {other:?} is not supported (use \"1.2\" or \"1.3\")"
        ))),
    }
}

/// How a terminating server behaves: versions, ALPN, client certificates.
#[derive(Debug, Clone, Default)]
pub struct ServerTlsSettings {
    /// Lowest version accepted (default 1.2).
    pub min_version: Option<TlsVersion>,
    /// Highest version accepted (default 1.3).
    pub max_version: Option<TlsVersion>,
    /// ALPN protocols offered, in preference order.
    pub alpn: Vec<String>,
    /// PEM CA bundle; when set, clients must present a certificate it issued.
    pub client_ca_pem: Option<Vec<u8>>,
}

fn versions(
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> Result<Vec<&'static SupportedProtocolVersion>> {
    let min = min.unwrap_or(TlsVersion::Tls12);
    let max = max.unwrap_or(TlsVersion::Tls13);
    if min > max {
        return Err(Error::option(
            "min_version is above max_version: no TLS version is left",
        ));
    }
    // Highest first: rustls prefers the earlier entries, so 1.3 wins when both are allowed.
    let mut out = Vec::new();
    if max >= TlsVersion::Tls13 {
        out.push(&rustls::version::TLS13);
    }
    if min <= TlsVersion::Tls12 {
        out.push(&rustls::version::TLS12);
    }
    Ok(out)
}

/// A server config that terminates TLS with `cert` under `settings`.
pub fn server_config(cert: &CertKey, settings: &ServerTlsSettings) -> Result<ServerConfig> {
    let resolver = Arc::new(SingleCert(cert.certified.clone()));
    server_config_from(provider(), resolver, settings)
}

/// A server config with `provider` that asks `resolver` for the certificate of each
/// handshake (a certificate can change without a new config).
pub(super) fn server_config_from(
    provider: Arc<CryptoProvider>,
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    settings: &ServerTlsSettings,
) -> Result<ServerConfig> {
    let verifier_provider = provider.clone();
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions(settings.min_version, settings.max_version)?)
        .map_err(|e| Error::option(format!("TLS versions: {e}")))?;
    let builder = match &settings.client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for ca in parse_certs(pem, "mutual_tls_cas")? {
                roots.add(ca).map_err(|e| {
                    Error::new(
                        crate::ErrorCode::InvalidPem,
                        format!("mutual_tls_cas: unusable CA certificate ({e})"),
                    )
                })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), verifier_provider)
                    .build()
                    .map_err(|e| Error::option(format!("mutual_tls_cas: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = settings
        .alpn
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    Ok(config)
}

/// The provider with the AES-128-GCM suites (TLS 1.3 and 1.2) moved to the front, the
/// others after them in ring's order.
///
/// AES-128 takes 10 rounds to AES-256's 14, and its suites' SHA-256 key schedule is
/// cheaper than SHA-384's (see `terminating` for what a handshake saves).
pub(super) fn aes128_first_provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| !is_aes128_gcm(suite.suite()));
    provider
}

fn is_aes128_gcm(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as S;
    matches!(
        suite,
        S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

/// Always answers with one certificate.
#[derive(Debug)]
pub(super) struct SingleCert(pub(super) Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for SingleCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The edge's tunnel listener config: TLS 1.3 only.
pub fn tunnel_server_config(cert: &CertKey) -> Result<ServerConfig> {
    server_config(
        cert,
        &ServerTlsSettings {
            min_version: Some(TlsVersion::Tls13),
            ..Default::default()
        },
    )
}

fn roots(extra_pem: Option<&[u8]>, what: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match extra_pem {
        Some(pem) => {
            for ca in parse_certs(pem, what)? {
                roots.add(ca).map_err(|e| {
                    Error::new(
                        crate::ErrorCode::InvalidPem,
                        format!("{what}: unusable CA certificate ({e})"),
                    )
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let certs: Vec<CertificateDer<'static>> = found.certs;
            roots.add_parsable_certificates(certs);
        }
    }
    Ok(roots)
}

/// The agent's tunnel client config: TLS 1.3 only, trusting `root_cas` or the platform roots.
pub fn tunnel_client_config(root_cas: Option<&[u8]>) -> Result<ClientConfig> {
    // AES-128-GCM first (the edge follows the client's order): every byte of every
    // connection is encrypted once more on the tunnel. The others stay as fallbacks.
    let config = ClientConfig::builder_with_provider(Arc::new(aes128_first_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::option(format!("TLS versions: {e}")))?
        .with_root_certificates(roots(root_cas, "root_cas")?)
        .with_no_client_auth();
    Ok(config)
}

/// The config an edge dials another edge of its cluster with: TLS 1.3, trusting only
/// the cluster's CA, showing `cert` (which that CA issued).
pub fn link_client_config(ca_pem: &[u8], cert: &CertKey) -> Result<ClientConfig> {
    // AES-128-GCM: the cheapest AEAD with AES instructions, and every byte a link
    // carries is encrypted again on the tunnel.
    let mut link = rustls::crypto::ring::default_provider();
    link.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    let config = ClientConfig::builder_with_provider(Arc::new(link))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::option(format!("TLS versions: {e}")))?
        .with_root_certificates(roots(Some(ca_pem), "cluster CA")?)
        .with_client_cert_resolver(Arc::new(ClientCert(cert.certified.clone())));
    Ok(config)
}

/// Always shows one client certificate.
#[derive(Debug)]
struct ClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The config the agent uses to dial a `tls://` upstream.
///
/// With `verify` false any certificate is accepted (`verify_upstream_tls=False`).
pub fn upstream_client_config(root_cas: Option<&[u8]>, verify: bool) -> Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::option(format!("TLS versions: {e}")))?;
    let config = if verify {
        builder
            .with_root_certificates(roots(root_cas, "upstream root_cas")?)
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth()
    };
    Ok(config)
}

/// Accepts any server certificate; only for `verify_upstream_tls=False`.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::CertAuthority;

    /// The tunnel's cipher suite: the cheapest AEAD, since the tunnel encrypts every
    /// byte once more.
    #[test]
    fn the_tunnel_negotiates_aes_128_gcm() {
        let ca = CertAuthority::generate().unwrap();
        let cert = ca.issue(&["edge.test".to_owned()]).unwrap();
        let server = Arc::new(tunnel_server_config(&cert).unwrap());
        let client = Arc::new(tunnel_client_config(Some(ca.cert_pem().as_bytes())).unwrap());
        let name = rustls::pki_types::ServerName::try_from("edge.test").unwrap();
        let mut client = rustls::ClientConnection::new(client, name).unwrap();
        let mut server = rustls::ServerConnection::new(server).unwrap();
        crate::tls::finish_handshake_in_memory(&mut client, &mut server);
        let suite = server.negotiated_cipher_suite().map(|s| s.suite());
        assert_eq!(suite, Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256));
    }
}
