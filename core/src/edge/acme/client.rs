//! The HTTP client that reaches the directory, and its errors in burrow's terms.

use super::*;

pub(super) fn problem_text(p: &instant_acme::Problem) -> String {
    let detail = p.detail.as_deref().unwrap_or("no detail");
    match &p.r#type {
        Some(t) => format!("{detail} ({t})"),
        None => detail.to_owned(),
    }
}

/// Maps an ACME client error to a coded error saying what failed, while doing `what`.
pub(super) fn classify(e: instant_acme::Error, directory: &str, what: &str) -> Error {
    use instant_acme::Error as E;
    match e {
        E::Api(p)
            if p.r#type
                .as_deref()
                .is_some_and(|t| t.ends_with(":rateLimited")) =>
        {
            Error::new(
                ErrorCode::AcmeRateLimited,
                format!(
                    "{directory} rate-limited this edge while {what}: {}",
                    problem_text(&p)
                ),
            )
        }
        E::Api(p) => Error::new(
            ErrorCode::AcmeFailed,
            format!("{directory} refused {what}: {}", problem_text(&p)),
        ),
        E::Other(_) | E::Hyper(_) | E::Http(_) | E::InvalidUri(_) => Error::new(
            ErrorCode::AcmeUnreachable,
            format!(
                "ACME directory {directory} unreachable while {what}: {}",
                chain(&e)
            ),
        ),
        other => Error::new(
            ErrorCode::AcmeFailed,
            format!("{directory}: {what} failed: {}", chain(&other)),
        ),
    }
}

/// An error and its sources, joined.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

pub(super) fn rcgen_err(e: rcgen::Error) -> Error {
    Error::new(ErrorCode::Internal, format!("certificate generation: {e}"))
}

/// An HTTPS client (ring, TLS 1.2+) trusting the platform roots and `bundle`.
pub(super) fn http_client(bundle: Option<&Path>) -> Result<HyperClient<Https, BodyWrapper<Bytes>>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = bundle {
        let pem = std::fs::read(path)
            .map_err(|e| Error::io(format!("reading acme.ca_bundle {}", path.display()), e))?;
        for ca in tls::parse_certs(&pem, "acme.ca_bundle")? {
            roots.add(ca).map_err(|e| {
                Error::new(
                    ErrorCode::InvalidPem,
                    format!("acme.ca_bundle: unusable CA certificate ({e})"),
                )
            })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::option(format!("TLS versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(HyperClient::builder(hyper_util::rt::TokioExecutor::new()).build(https))
}
