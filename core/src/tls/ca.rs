//! The edge's own certificate authority: signs the tunnel certificate and
//! automatic certificates for edge-terminated endpoints.

use super::pem::CertKey;
use crate::error::{Error, ErrorCode, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key";

/// A CA that issues leaf certificates for names on demand and caches them.
pub struct CertAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    issued: Mutex<HashMap<String, CertKey>>,
}

impl fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

fn rcgen_err(e: rcgen::Error) -> Error {
    Error::new(ErrorCode::Internal, format!("certificate generation: {e}"))
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "burrow edge CA");
    dn.push(DnType::OrganizationName, "burrow");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl CertAuthority {
    /// A fresh CA that lives only in memory.
    pub fn generate() -> Result<Self> {
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let cert = ca_params().self_signed(&key).map_err(rcgen_err)?;
        Ok(Self::from_parts(cert.pem(), key))
    }

    /// Loads the CA kept in `dir`, or creates it there (key file mode 0600).
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if cert_path.exists() && key_path.exists() {
            let cert_pem = std::fs::read_to_string(&cert_path)
                .map_err(|e| Error::io(format!("reading {}", cert_path.display()), e))?;
            let key_pem = std::fs::read_to_string(&key_path)
                .map_err(|e| Error::io(format!("reading {}", key_path.display()), e))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|_| {
                Error::new(
                    ErrorCode::InvalidPem,
                    format!("{} is not a valid private key", key_path.display()),
                )
            })?;
            return Ok(Self::from_parts(cert_pem, key));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating state dir {}", dir.display()), e))?;
        let ca = Self::generate()?;
        write_private(&key_path, &ca.issuer.key().serialize_pem())?;
        std::fs::write(&cert_path, &ca.cert_pem)
            .map_err(|e| Error::io(format!("writing {}", cert_path.display()), e))?;
        Ok(ca)
    }

    /// The CA given as PEM text (its certificate and private key), e.g. a cluster's
    /// shared CA.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(|_| {
            Error::new(ErrorCode::InvalidPem, "the CA private key is not valid PEM")
        })?;
        Ok(Self::from_parts(cert_pem.to_owned(), key))
    }

    /// The CA's private key, PEM: for storing it where the CA is shared. Never log it.
    pub(crate) fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    fn from_parts(cert_pem: String, key: KeyPair) -> Self {
        // The issuer only needs the CA's name and key; both are stable across restarts.
        CertAuthority {
            cert_pem,
            issuer: Issuer::new(ca_params(), key),
            issued: Mutex::new(HashMap::new()),
        }
    }

    /// The CA certificate, PEM: what clients and agents trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `names` (DNS names or IP literals) signed by this CA, cached by name list.
    pub fn issue(&self, names: &[String]) -> Result<CertKey> {
        let cache_key = names.join(",");
        if let Some(found) = self.cache().get(&cache_key) {
            return Ok(found.clone());
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(rcgen_err),
            })
            .collect::<Result<_>>()?;
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_err)?;
        let chain = format!("{}{}", cert.pem(), self.cert_pem);
        let issued = CertKey::from_pem(chain.as_bytes(), key.serialize_pem().as_bytes())?;
        self.cache().insert(cache_key, issued.clone());
        Ok(issued)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, CertKey>> {
        self.issued.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts
        .open(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
