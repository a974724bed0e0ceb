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
        parse_x509(cert, what)?;
    }
    Ok(certs)
}

/// Parses one DER certificate, X.509 v1 included (what `openssl x509 -req` makes without
/// extensions); webpki refuses v1, so checks that must accept it read it with x509-parser.
fn parse_x509<'a>(
    der: &'a [u8],
    what: &str,
) -> Result<x509_parser::certificate::X509Certificate<'a>> {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(invalid_pem(
            what,
            format!("not a valid X.509 certificate ({e})"),
        )),
    }
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
        // Compared here rather than with rustls' `keys_match`, which reads the certificate
        // with webpki and so refuses X.509 v1.
        if let Some(key_spki) = signing.public_key() {
            let leaf = parse_x509(&certs[0], "crt")?;
            if leaf.public_key().raw != key_spki.as_ref() {
                return Err(Error::new(
                    ErrorCode::KeyMismatch,
                    "key does not belong to crt: the private key's public half differs from the certificate's",
                ));
            }
        }
        let certified = CertifiedKey::new(certs, signing);
        Ok(CertKey {
            certified: Arc::new(certified),
        })
    }

    /// Fails unless the leaf certificate is valid for `domain` (wildcards included).
    ///
    /// The names are the subject alternative names (DNS), or the subject's common name
    /// when the certificate has no SAN extension (X.509 v1 certificates never do).
    pub fn check_covers(&self, domain: &str) -> Result<()> {
        let leaf = self
            .certified
            .cert
            .first()
            .ok_or_else(|| invalid_pem("crt", "empty chain"))?;
        if !matches!(ServerName::try_from(domain), Ok(ServerName::DnsName(_))) {
            return Err(Error::new(
                ErrorCode::InvalidDomain,
                format!("domain {domain:?} is not a valid DNS name"),
            ));
        }
        let names = cert_dns_names(&parse_x509(leaf, "crt")?)?;
        if names.iter().any(|n| name_matches(n, domain)) {
            return Ok(());
        }
        Err(Error::new(
            ErrorCode::CertDomainMismatch,
            format!(
                "crt is not valid for domain {domain:?}: it names {}",
                if names.is_empty() {
                    "no DNS name".to_owned()
                } else {
                    names.join(", ")
                }
            ),
        ))
    }
}

/// The DNS names a certificate is valid for: its SAN DNS entries, else its common names.
fn cert_dns_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| invalid_pem("crt", format!("unreadable subjectAltName ({e})")))?;
    Ok(match san {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        None => cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_ascii_lowercase)
            .collect(),
    })
}

/// RFC 6125 matching: exact (case-insensitive), or `*.rest` for exactly one more label.
fn name_matches(pattern: &str, domain: &str) -> bool {
    let pattern = pattern.trim_end_matches('.');
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(rest) => domain
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
        None => pattern == domain,
    }
}

/// The subject of a DER certificate, e.g. `CN=client, O=Example`.
pub fn cert_subject(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.subject().to_string())
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn wildcards_cover_one_label_only() {
        assert!(name_matches("app.example.com", "APP.example.com"));
        assert!(name_matches("*.example.com", "app.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("app.example.com", "other.example.com"));
    }
}
