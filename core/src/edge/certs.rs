//! Which certificate an edge-terminated endpoint serves.
//!
//! For a hostname the edge picks, in this order:
//!
//! 1. the certificate and key the bind itself carries (`crt`/`key` of the endpoint);
//! 2. an operator certificate whose names include the hostname exactly;
//! 3. an operator certificate for `*.<parent>` of the hostname (one label deep);
//! 4. an automatic certificate: from ACME when `[acme]` applies to the name, otherwise
//!    from the edge's own CA.
//!
//! Operator certificates come from `[[certs]]` in the edge config and from
//! `<state_dir>/certs/` (each `NAME.crt` or `NAME.pem` next to a `NAME.key`); the names a
//! certificate serves are its subject alternative names. Steps 2 to 4 are looked up at
//! every handshake through [`EndpointCerts`], a rustls `ResolvesServerCert`, so a renewed
//! ACME certificate is served as soon as it is stored, without rebinding.

use super::Shared;
use crate::error::{Error, ErrorCode, Result};
use crate::tls::CertKey;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Subdirectory of the state directory holding operator certificates.
pub const OPERATOR_CERTS_DIR: &str = "certs";

/// An operator certificate in the edge config: a PEM chain and its key.
///
/// The certificate serves every DNS name in its subject alternative names,
/// wildcards (`*.example.com`) included.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    /// PEM certificate chain, leaf first.
    pub crt: PathBuf,
    /// PEM private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A certificate with the validity period of its leaf.
#[derive(Clone)]
pub(crate) struct Issued {
    pub(crate) certified: Arc<CertifiedKey>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Issued {
    /// Reads the validity period of `cert`'s leaf.
    pub(crate) fn new(cert: CertKey) -> Result<Issued> {
        let leaf = cert
            .certified
            .cert
            .first()
            .ok_or_else(|| Error::new(ErrorCode::InvalidPem, "certificate chain is empty"))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| {
            Error::new(
                ErrorCode::InvalidPem,
                format!("certificate is not valid X.509 ({e})"),
            )
        })?;
        let validity = parsed.validity();
        let at = |secs: i64| UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
        Ok(Issued {
            not_before: at(validity.not_before.timestamp()),
            not_after: at(validity.not_after.timestamp()),
            certified: cert.certified,
        })
    }

    /// True once the leaf's `notAfter` has passed.
    pub(crate) fn expired(&self) -> bool {
        SystemTime::now() >= self.not_after
    }
}

/// Operator certificates (fixed at start) and automatic ones (replaced on renewal).
#[derive(Default)]
pub(crate) struct CertStore {
    /// By exact DNS name.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the parent of a `*.parent` name.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// ACME certificates by name.
    automatic: RwLock<HashMap<String, Issued>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the operator certificates of `files` and of `<state_dir>/certs/`.
    pub(crate) fn load(files: &[CertFiles], state_dir: Option<&Path>) -> Result<CertStore> {
        let mut store = CertStore::default();
        for f in files {
            store.add_operator(&f.crt, &f.key)?;
        }
        if let Some(dir) = state_dir.map(|d| d.join(OPERATOR_CERTS_DIR)) {
            if dir.is_dir() {
                for (crt, key) in pem_pairs(&dir)? {
                    store.add_operator(&crt, &key)?;
                }
            }
        }
        Ok(store)
    }

    fn add_operator(&mut self, crt: &Path, key: &Path) -> Result<()> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| Error::io(format!("reading {}", p.display()), e))
        };
        let cert = CertKey::from_pem(&read(crt)?, &read(key)?).map_err(|e| {
            Error::new(
                e.code(),
                format!("operator certificate {}: {}", crt.display(), e.message()),
            )
        })?;
        let names = dns_names(&cert)?;
        let issued = Issued::new(cert.clone())?;
        if issued.expired() {
            tracing::warn!(crt = %crt.display(), "operator certificate has expired; not serving it");
            return Ok(());
        }
        if names.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidPem,
                format!(
                    "operator certificate {} names no DNS host in its subject alternative names",
                    crt.display()
                ),
            ));
        }
        for name in names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(parent) => self
                    .wildcard
                    .insert(parent.to_owned(), cert.certified.clone()),
                None => self.exact.insert(name.clone(), cert.certified.clone()),
            };
            tracing::info!(%name, crt = %crt.display(), "operator certificate loaded");
        }
        Ok(())
    }

    /// The operator certificate for `host`: exact name first, then a wildcard.
    pub(crate) fn operator(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(parent) = host.strip_prefix("*.") {
            return self.wildcard.get(parent).cloned();
        }
        self.exact
            .get(host)
            .or_else(|| {
                host.split_once('.')
                    .and_then(|(_, parent)| self.wildcard.get(parent))
            })
            .cloned()
    }

    /// The ACME certificate for `name`, expired or not.
    pub(crate) fn automatic(&self, name: &str) -> Option<Issued> {
        self.read_automatic().get(name).cloned()
    }

    /// Stores (or replaces) the ACME certificate for `name`; handshakes from now on get it.
    pub(crate) fn set_automatic(&self, name: &str, issued: Issued) {
        self.automatic
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), issued);
    }

    /// Every ACME certificate held, by name.
    pub(crate) fn automatic_all(&self) -> Vec<(String, Issued)> {
        self.read_automatic()
            .iter()
            .map(|(n, i)| (n.clone(), i.clone()))
            .collect()
    }

    fn read_automatic(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Issued>> {
        self.automatic.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// `NAME.crt`/`NAME.pem` files of `dir` with their `NAME.key`.
fn pem_pairs(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    let mut pairs = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
            .path();
        let is_cert = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("crt" | "pem")
        );
        if !is_cert {
            continue;
        }
        let key = path.with_extension("key");
        if !key.is_file() {
            return Err(Error::new(
                ErrorCode::Config,
                format!(
                    "operator certificate {} has no key: expected {}",
                    path.display(),
                    key.display()
                ),
            ));
        }
        pairs.push((path, key));
    }
    pairs.sort();
    Ok(pairs)
}

/// The DNS names in the leaf's subject alternative names.
fn dns_names(cert: &CertKey) -> Result<Vec<String>> {
    let leaf = cert
        .certified
        .cert
        .first()
        .ok_or_else(|| Error::new(ErrorCode::InvalidPem, "certificate chain is empty"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| {
        Error::new(
            ErrorCode::InvalidPem,
            format!("certificate is not valid X.509 ({e})"),
        )
    })?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push((*d).to_owned());
            }
        }
    }
    Ok(names)
}

/// Where the automatic step of the selection order gets its certificate.
enum Automatic {
    /// From the store's ACME certificates, looked up per handshake.
    Acme,
    /// A fixed certificate from the edge's own CA.
    OwnCa(Arc<CertifiedKey>),
    /// Never reached: an operator certificate covers the endpoint's name.
    Unused,
}

/// Resolves the certificate of one endpoint at each handshake (steps 2 to 4 of the
/// selection order; step 1, the bind's own certificate, never needs a resolver).
pub(crate) struct EndpointCerts {
    name: String,
    store: Arc<CertStore>,
    automatic: Automatic,
}

impl fmt::Debug for EndpointCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointCerts")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for EndpointCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let host = hello
            .server_name()
            .map(str::to_ascii_lowercase)
            .unwrap_or_else(|| self.name.clone());
        if let Some(cert) = self.store.operator(&host) {
            return Some(cert);
        }
        let found = match &self.automatic {
            Automatic::Acme => self
                .store
                .automatic(&host)
                .or_else(|| self.store.automatic(&self.name))
                .map(|i| i.certified),
            Automatic::OwnCa(cert) => Some(cert.clone()),
            Automatic::Unused => self.store.operator(&self.name),
        };
        if found.is_none() {
            tracing::warn!(%host, endpoint = %self.name, "no certificate to serve");
        }
        found
    }
}

/// True when ACME (rather than the own CA) provides `name`'s automatic certificate.
pub(crate) fn acme_applies(shared: &Shared, name: &str) -> bool {
    let Some(acme) = &shared.acme else {
        return false;
    };
    let suffix = shared
        .config
        .domain_suffix
        .trim_matches('.')
        .to_ascii_lowercase();
    let under_suffix = name == suffix || name.ends_with(&format!(".{suffix}"));
    // IP addresses, single labels and `localhost` names cannot be validated publicly.
    let public = name.parse::<std::net::IpAddr>().is_err()
        && name.contains('.')
        && !name.ends_with(".localhost");
    acme.enabled() && public && !under_suffix
}

/// True when `name` needs an ACME certificate that the edge does not hold (valid) yet.
pub(crate) fn needs_acme_order(shared: &Shared, name: &str) -> bool {
    acme_applies(shared, name)
        && shared.certs.operator(name).is_none()
        && !shared.certs.automatic(name).is_some_and(|i| !i.expired())
}

/// The resolver for an edge-terminated endpoint named `name` that brought no certificate.
///
/// Fails when the automatic certificate should come from ACME and is not there: the
/// caller must have obtained it first (see `acme::Acme::obtain`).
pub(crate) fn endpoint_resolver(shared: &Shared, name: &str) -> Result<Arc<EndpointCerts>> {
    let automatic = if shared.certs.operator(name).is_some() {
        Automatic::Unused
    } else if acme_applies(shared, name) {
        if name.starts_with("*.") {
            return Err(wildcard_unsupported(name));
        }
        match shared.certs.automatic(name) {
            Some(i) if !i.expired() => {
                if let Some(acme) = &shared.acme {
                    acme.mark_used(name);
                }
                Automatic::Acme
            }
            _ => {
                return Err(Error::new(
                    ErrorCode::AcmeFailed,
                    format!("no ACME certificate for {name} yet"),
                ))
            }
        }
    } else {
        Automatic::OwnCa(shared.ca.issue(&[name.to_owned()])?.certified)
    };
    Ok(Arc::new(EndpointCerts {
        name: name.to_owned(),
        store: shared.certs.clone(),
        automatic,
    }))
}

/// The error for a wildcard name that only ACME could serve.
pub(crate) fn wildcard_unsupported(name: &str) -> Error {
    Error::new(
        ErrorCode::Unsupported,
        format!(
            "{name}: ACME cannot issue wildcard certificates over TLS-ALPN-01; give the edge an \
             operator certificate for it ([[certs]] or {OPERATOR_CERTS_DIR}/ in the state \
             directory), bind with your own crt/key, or set [acme] mode = \"own-ca\""
        ),
    )
}
