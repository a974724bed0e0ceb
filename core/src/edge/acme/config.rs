//! How the edge talks to its ACME directory: the `[acme]` settings.

use super::*;

/// The ALPN protocol of TLS-ALPN-01 validation connections.
pub const ACME_TLS_ALPN: &str = "acme-tls/1";

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Where automatic certificates come from when `[acme]` is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AcmeMode {
    /// Order certificates from the ACME directory.
    #[default]
    Acme,
    /// Ignore the rest of `[acme]`: every automatic certificate comes from the edge's own CA.
    OwnCa,
}

/// How the ACME directory validates that the edge controls a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[non_exhaustive]
pub enum ChallengeKind {
    /// TLS-ALPN-01, answered on the public TLS listener (the directory connects to port 443
    /// of the name, so the listener must be reachable there).
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// HTTP-01, answered on the plain HTTP listener (`http_addr`; the directory connects
    /// to port 80 of the name).
    #[serde(rename = "http-01")]
    Http01,
}

/// The `[acme]` section of the edge config.
///
/// Names under the edge's `domain_suffix` (random endpoint names) and IP addresses always
/// get certificates from the edge's own CA; give the edge an operator wildcard
/// certificate for `*.<domain_suffix>` to serve publicly trusted ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// `"acme"` (default) or `"own-ca"`.
    pub mode: AcmeMode,
    /// The directory URL (https); default Let's Encrypt production.
    pub directory: String,
    /// Contact email given to the directory when registering the account.
    pub contact: Option<String>,
    /// The challenge type: `"tls-alpn-01"` (default) or `"http-01"` (needs `http_addr`).
    pub challenge: ChallengeKind,
    /// Extra PEM CA certificates to trust for the directory's HTTPS (e.g. pebble's).
    pub ca_bundle: Option<PathBuf>,
    /// How long a bind waits for a new certificate before it fails (milliseconds).
    /// Keep it below the agent's 30 s bind timeout.
    pub bind_wait_ms: u64,
    /// Renew when a certificate expires within this many days (capped at two thirds of
    /// the certificate's lifetime, so short-lived certificates are not renewed constantly).
    pub renew_before_days: u32,
    /// First delay before retrying a failed order (milliseconds); doubles on every
    /// failure, with ±25 % jitter.
    pub retry_initial_ms: u64,
    /// Longest delay between retries (milliseconds).
    pub retry_max_ms: u64,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            mode: AcmeMode::Acme,
            directory: LETS_ENCRYPT_DIRECTORY.to_owned(),
            contact: None,
            challenge: ChallengeKind::TlsAlpn01,
            ca_bundle: None,
            bind_wait_ms: 25_000,
            renew_before_days: 30,
            retry_initial_ms: 60_000,
            retry_max_ms: 6 * 3600 * 1000,
        }
    }
}

impl AcmeConfig {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::new(ErrorCode::Config, format!("acme.{m}")));
        if !self.directory.starts_with("https://") {
            return bad(format!(
                "directory: {:?} must be an https:// URL",
                self.directory
            ));
        }
        if let Some(c) = &self.contact {
            if !c.trim_start_matches("mailto:").contains('@') {
                return bad(format!("contact: {c:?} is not an email address"));
            }
        }
        if self.bind_wait_ms < 100 {
            return bad("bind_wait_ms must be at least 100".into());
        }
        if self.renew_before_days == 0 {
            return bad("renew_before_days must be at least 1".into());
        }
        if self.retry_initial_ms == 0 || self.retry_initial_ms > self.retry_max_ms {
            return bad("retry_initial_ms must be at least 1 and at most retry_max_ms".into());
        }
        Ok(())
    }

    pub(super) fn renew_window(&self) -> Duration {
        Duration::from_secs(u64::from(self.renew_before_days) * 86_400)
    }
}
