//! TLS-ALPN-01 (RFC 8737): the challenge certificate and the handshake that answers it.

use super::*;

impl Acme {
    /// Completes a TLS-ALPN-01 validation handshake with the challenge certificate of
    /// `config` (from [`Acme::challenge_config`]), then closes.
    pub(crate) async fn answer_challenge(
        &self,
        accepted: Accepted,
        tcp: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        config: Arc<ServerConfig>,
        deadline: Duration,
    ) {
        let start = tokio_rustls::StartHandshake::from_parts(accepted, tcp);
        match tokio::time::timeout(deadline, start.into_stream(config)).await {
            Ok(Ok(mut tls)) => {
                self.counters.validations.fetch_add(1, Ordering::Relaxed);
                tracing::info!("answered a TLS-ALPN-01 validation");
                let _ = tls.shutdown().await;
            }
            Ok(Err(e)) => tracing::info!(error = %e, "TLS-ALPN-01 validation handshake failed"),
            Err(_) => tracing::info!("TLS-ALPN-01 validation handshake timed out"),
        }
    }

    /// The key authorization answering an HTTP-01 validation of `token`, while that
    /// challenge is pending.
    pub(crate) fn http_challenge(&self, token: &str) -> Option<String> {
        let answer = lock(&self.http_tokens).get(token).cloned();
        if answer.is_some() {
            self.counters.validations.fetch_add(1, Ordering::Relaxed);
            tracing::info!("answered an HTTP-01 validation");
        }
        answer
    }

    /// The server config answering a TLS-ALPN-01 validation for `sni`, when the client
    /// offers `acme-tls/1` and a challenge for that name is pending.
    pub(crate) fn challenge_config(&self, sni: &str, alpn: &[String]) -> Option<Arc<ServerConfig>> {
        if !alpn.iter().any(|p| p == ACME_TLS_ALPN) {
            return None;
        }
        let cert = lock(&self.challenges).get(sni).cloned()?;
        let settings = ServerTlsSettings {
            alpn: vec![ACME_TLS_ALPN.to_owned()],
            ..Default::default()
        };
        match tls::server_config(&cert, &settings) {
            Ok(config) => Some(Arc::new(config)),
            Err(e) => {
                tracing::warn!(%sni, error = %e, "cannot build the TLS-ALPN-01 answer");
                None
            }
        }
    }
}

/// The self-signed certificate answering TLS-ALPN-01 (RFC 8737 section 3).
pub(super) fn challenge_cert(name: &str, digest: &[u8]) -> Result<CertKey> {
    if digest.len() != 32 {
        return Err(Error::new(
            ErrorCode::Internal,
            "key authorization digest is not SHA-256",
        ));
    }
    let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(rcgen_err)?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let cert = params.self_signed(&key).map_err(rcgen_err)?;
    // Not through `CertKey::from_pem`: webpki rightly refuses the critical acmeIdentifier
    // extension in an end-entity certificate, and this one is only for the validator.
    let signing = tls::provider()
        .key_provider
        .load_private_key(rustls::pki_types::PrivateKeyDer::Pkcs8(
            key.serialize_der().into(),
        ))
        .map_err(|e| Error::new(ErrorCode::Internal, format!("challenge key: {e}")))?;
    Ok(CertKey {
        certified: Arc::new(rustls::sign::CertifiedKey::new(
            vec![cert.der().clone()],
            signing,
        )),
    })
}

/// Why validation failed, from the challenge's error when the directory gives one.
pub(super) async fn challenge_failure(
    order: &mut Order,
    name: &str,
    directory: &str,
    order_problem: Option<instant_acme::Problem>,
) -> Error {
    let mut reason = order_problem.as_ref().map(problem_text);
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if let Ok(state) = authz.refresh().await {
            if let Some(p) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
                reason = Some(problem_text(p));
            }
        }
    }
    let reason = reason.unwrap_or_else(|| "the order became invalid".to_owned());
    Error::new(
        ErrorCode::AcmeFailed,
        format!(
            "{directory} could not validate {name} with tls-alpn-01 (challenge failed): {reason}"
        ),
    )
}
