//! Parsing PEM text into rustls types and checking a certificate against a domain and key.

use crate::error::{Error, ErrorCode, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use std::fmt;
use std::sync::Arc;

fn invalid_pem(what: &str, detail: impl fmt::Display) -> Error {
    Error::new(ErrorCode::InvalidPem, format!("{what}: {detail}"))
}

/// A PEM parse error in words: markers and lines as text, not as byte lists.
fn describe(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { end_marker } => format!(
            "missing section end marker \"-----END {}-----\"",
            String::from_utf8_lossy(end_marker).trim()
        ),
        E::IllegalSectionStart { line } => format!(
            "illegal section start \"{}\"",
            String::from_utf8_lossy(line).trim()
        ),
        other => other.to_string(),
    }
}

/// Parses every certificate in `pem`; `what` names the input in errors.
pub fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| invalid_pem(what, format!("not valid PEM ({})", describe(&e))))?;
    if certs.is_empty() {
        return Err(invalid_pem(
            what,
            "contains no \"-----BEGIN CERTIFICATE-----\" block",
        ));
    }
    for cert in &certs {
        webpki::EndEntityCert::try_from(cert)
            .map_err(|e| invalid_pem(what, format!("not a valid X.509 certificate ({e})")))?;
    }
    Ok(certs)
}

/// Parses the first private key (PKCS#8, PKCS#1 or SEC1) in `pem`.
pub fn parse_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => invalid_pem(
            what,
            "contains no \"-----BEGIN ... PRIVATE KEY-----\" block",
        ),
        // Never echo key material: the message names the input only.
        _ => invalid_pem(what, "not a valid PEM private key"),
    })
}

/// A certificate chain and its key, checked to belong together.
#[derive(Clone)]
pub struct CertKey {
    /// The rustls form, ready for a server config.
    pub certified: Arc<CertifiedKey>,
}

impl fmt::Debug for CertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertKey")
            .field("certs", &self.certified.cert.len())
            .finish_non_exhaustive()
    }
}

impl CertKey {
    /// Parses `crt` and `key` PEM and checks that the key belongs to the leaf certificate.
    pub fn from_pem(crt: &[u8], key: &[u8]) -> Result<Self> {
        let certs = parse_certs(crt, "crt")?;
        let key = parse_key(key, "key")?;
        let signing = super::provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| invalid_pem("key", format!("unsupported private key ({e})")))?;
        let certified = CertifiedKey::new(certs, signing);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => {
                return Err(Error::new(
                    ErrorCode::KeyMismatch,
                    "key does not belong to crt: the private key's public half differs from the certificate's",
                ))
            }
        }
        Ok(CertKey {
            certified: Arc::new(certified),
        })
    }

    /// Fails unless the leaf certificate is valid for `domain` (wildcards included).
    pub fn check_covers(&self, domain: &str) -> Result<()> {
        let leaf = self
            .certified
            .cert
            .first()
            .ok_or_else(|| invalid_pem("crt", "empty chain"))?;
        let cert = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| invalid_pem("crt", format!("not a valid X.509 certificate ({e})")))?;
        let name = ServerName::try_from(domain)
            .map_err(|_| Error::option(format!("domain {domain:?} is not a valid DNS name")))?;
        cert.verify_is_valid_for_subject_name(&name).map_err(|_| {
            Error::new(
                ErrorCode::CertDomainMismatch,
                format!("crt is not valid for domain {domain:?}: its subject alternative names do not include it"),
            )
        })
    }
}

/// The subject of a DER certificate, e.g. `CN=client, O=Example`.
pub fn cert_subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.subject().to_string())
}
