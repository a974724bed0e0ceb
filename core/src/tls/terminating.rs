//! A terminating server's TLS: which cipher suite a client gets.
//!
//! rustls follows either the client's order or the server's, for every client. burrow's
//! terminating servers (edge and agent termination) choose per ClientHello, as Go's
//! crypto/tls does: on a machine with AES instructions, a client whose first choice is
//! an AES-GCM suite gets AES-128-GCM (its SHA-256 key schedule and 10 rounds are the
//! cheapest handshake and records: about 15 % less server CPU per handshake than
//! AES-256-GCM-SHA384, which rustls and OpenSSL clients list first); a client that
//! puts ChaCha20 first (usually one without AES instructions) keeps its choice.

use super::config::{aes128_first_provider, provider, server_config_from, SingleCert};
use super::{CertKey, ServerTlsSettings};
use crate::error::Result;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::{CipherSuite, ServerConfig};
use std::sync::Arc;

/// The server configs of one terminating endpoint; cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    /// Follows the client's order.
    follow_client: Arc<ServerConfig>,
    /// AES-128-GCM first, whatever the client's order.
    aes128_first: Arc<ServerConfig>,
}

impl ServerTls {
    /// Terminates with `cert` under `settings`.
    pub fn new(cert: &CertKey, settings: &ServerTlsSettings) -> Result<Self> {
        Self::with_resolver(Arc::new(SingleCert(cert.certified.clone())), settings)
    }

    /// Terminates with the certificate `resolver` gives each handshake (renewals need
    /// no new config).
    pub fn with_resolver(
        resolver: Arc<dyn ResolvesServerCert>,
        settings: &ServerTlsSettings,
    ) -> Result<Self> {
        let follow_client = server_config_from(provider(), resolver.clone(), settings)?;
        let provider = Arc::new(aes128_first_provider());
        let mut aes128_first = server_config_from(provider, resolver, settings)?;
        aes128_first.ignore_client_order = true;
        // One session cache: a client resumes whichever config its next hello picks.
        aes128_first.session_storage = follow_client.session_storage.clone();
        Ok(ServerTls {
            follow_client: Arc::new(follow_client),
            aes128_first: Arc::new(aes128_first),
        })
    }

    /// The config for the handshake `hello` begins.
    pub fn for_hello(&self, hello: &ClientHello<'_>) -> Arc<ServerConfig> {
        if has_aes_hardware() && prefers_aes_gcm(hello.cipher_suites()) {
            self.aes128_first.clone()
        } else {
            self.follow_client.clone()
        }
    }
}

/// Whether the first suite of the client's list that burrow knows is an AES-GCM one.
fn prefers_aes_gcm(suites: &[CipherSuite]) -> bool {
    use CipherSuite as S;
    for suite in suites {
        match *suite {
            S::TLS13_AES_128_GCM_SHA256
            | S::TLS13_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => return true,
            S::TLS13_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => return false,
            _ => continue,
        }
    }
    false
}

/// Whether this machine has AES and carry-less multiply instructions (fast AES-GCM): only
/// then do terminating servers answer an AES-GCM-first client with AES-128-GCM.
pub fn has_aes_hardware() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{CertAuthority, TlsVersion};
    use rustls::crypto::ring::cipher_suite as suite;
    use rustls::server::Acceptor;
    use rustls::SupportedCipherSuite;

    /// A terminating endpoint for `app.test` allowing TLS up to `max`, and its CA.
    fn endpoint(max: TlsVersion) -> (ServerTls, rustls::RootCertStore) {
        let ca = CertAuthority::generate().unwrap();
        let cert = ca.issue(&["app.test".to_owned()]).unwrap();
        let settings = ServerTlsSettings {
            max_version: Some(max),
            ..Default::default()
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in crate::tls::parse_certs(ca.cert_pem().as_bytes(), "ca").unwrap() {
            roots.add(c).unwrap();
        }
        (ServerTls::new(&cert, &settings).unwrap(), roots)
    }

    /// Handshakes in memory with a client offering `offered` in that order, the server's
    /// config chosen by the hello as the edge and the agent choose it; the suite agreed.
    fn negotiate(max: TlsVersion, offered: &[SupportedCipherSuite]) -> CipherSuite {
        let (tls, roots) = endpoint(max);
        let mut client_provider = rustls::crypto::ring::default_provider();
        client_provider.cipher_suites = offered.to_vec();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(client_provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("app.test").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        let mut acceptor = Acceptor::default();
        acceptor.read_tls(&mut wire.as_slice()).unwrap();
        let accepted = acceptor.accept().ok().flatten().unwrap();
        let config = tls.for_hello(&accepted.client_hello());
        let mut server = accepted.into_connection(config).ok().unwrap();
        crate::tls::finish_handshake_in_memory(&mut client, &mut server);
        assert_eq!(
            client.negotiated_cipher_suite(),
            server.negotiated_cipher_suite()
        );
        server.negotiated_cipher_suite().unwrap().suite()
    }

    /// rustls's and OpenSSL's clients list AES-256-GCM first: with AES instructions the
    /// server answers with AES-128-GCM (before, it followed them to AES-256-GCM-SHA384).
    #[test]
    fn a_client_listing_aes_256_gcm_first_gets_aes_128_gcm() {
        let offered = [
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS13_CHACHA20_POLY1305_SHA256,
        ];
        let expected = if has_aes_hardware() {
            CipherSuite::TLS13_AES_128_GCM_SHA256
        } else {
            CipherSuite::TLS13_AES_256_GCM_SHA384
        };
        assert_eq!(negotiate(TlsVersion::Tls13, &offered), expected);
    }

    #[test]
    fn a_tls12_client_listing_aes_256_gcm_first_gets_aes_128_gcm() {
        let offered = [
            suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ];
        let expected = if has_aes_hardware() {
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        } else {
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        };
        assert_eq!(negotiate(TlsVersion::Tls12, &offered), expected);
    }

    /// A client that puts ChaCha20 first (one without AES instructions, usually) keeps it.
    #[test]
    fn a_client_listing_chacha20_first_keeps_it() {
        let offered = [
            suite::TLS13_CHACHA20_POLY1305_SHA256,
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_AES_128_GCM_SHA256,
        ];
        let got = negotiate(TlsVersion::Tls13, &offered);
        assert_eq!(got, CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    }

    /// The preference never refuses a client: one offering only AES-256-GCM gets it.
    #[test]
    fn a_client_offering_only_aes_256_gcm_gets_it() {
        let got = negotiate(TlsVersion::Tls13, &[suite::TLS13_AES_256_GCM_SHA384]);
        assert_eq!(got, CipherSuite::TLS13_AES_256_GCM_SHA384);
    }

    #[test]
    fn the_first_known_suite_decides() {
        use CipherSuite as S;
        let grease = S::Unknown(0x0a0a);
        assert!(prefers_aes_gcm(&[grease, S::TLS13_AES_256_GCM_SHA384]));
        assert!(!prefers_aes_gcm(&[
            grease,
            S::TLS13_CHACHA20_POLY1305_SHA256,
            S::TLS13_AES_128_GCM_SHA256
        ]));
        assert!(!prefers_aes_gcm(&[grease]));
    }
}
