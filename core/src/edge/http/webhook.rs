//! Webhook signature verification (ngrok's `verify_webhook`): the edge checks the
//! provider's HMAC over the body before the request reaches the upstream.

use crate::agent::http::{WebhookProvider, WebhookVerification};
use http::HeaderMap;
use ring::hmac;
use std::time::{SystemTime, UNIX_EPOCH};

/// How old a signed timestamp may be (Stripe's and Slack's documented tolerance).
const TOLERANCE_SECS: u64 = 300;

/// True when `body` carries a valid signature of `verification`'s provider.
pub(crate) fn verify(verification: &WebhookVerification, headers: &HeaderMap, body: &[u8]) -> bool {
    let secret = verification.secret.0.as_bytes();
    match verification.provider {
        WebhookProvider::Github => header(headers, "x-hub-signature-256")
            .and_then(|s| s.strip_prefix("sha256="))
            .is_some_and(|sig| matches(secret, &[body], sig)),
        WebhookProvider::Stripe => {
            let Some(value) = header(headers, "stripe-signature") else {
                return false;
            };
            let mut ts = None;
            let mut sigs = Vec::new();
            for part in value.split(',') {
                match part.trim().split_once('=') {
                    Some(("t", t)) => ts = Some(t),
                    Some(("v1", s)) => sigs.push(s),
                    _ => {}
                }
            }
            let Some(ts) = ts.filter(|t| fresh(t)) else {
                return false;
            };
            sigs.iter()
                .any(|sig| matches(secret, &[ts.as_bytes(), b".", body], sig))
        }
        WebhookProvider::Slack => {
            let (Some(ts), Some(sig)) = (
                header(headers, "x-slack-request-timestamp"),
                header(headers, "x-slack-signature"),
            ) else {
                return false;
            };
            fresh(ts)
                && sig
                    .strip_prefix("v0=")
                    .is_some_and(|sig| matches(secret, &[b"v0:", ts.as_bytes(), b":", body], sig))
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A unix timestamp within the tolerance of now.
fn fresh(ts: &str) -> bool {
    let Ok(ts) = ts.trim().parse::<u64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    now.abs_diff(ts) <= TOLERANCE_SECS
}

/// Checks a hex HMAC-SHA256 of the concatenated `parts`, in constant time.
fn matches(secret: &[u8], parts: &[&[u8]], hex_sig: &str) -> bool {
    let Some(sig) = decode_hex(hex_sig.trim()) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let data: Vec<u8> = parts.concat();
    hmac::verify(&key, &data, &sig).is_ok()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::SecretPem;

    /// The hex HMAC-SHA256 a provider would send (test helper).
    pub(crate) fn sign(secret: &str, data: &[u8]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        hmac::sign(&key, data)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn check(provider: WebhookProvider, headers: &[(&str, String)], body: &[u8]) -> bool {
        let v = WebhookVerification {
            provider,
            secret: SecretPem("s3cret".into()),
        };
        let mut map = HeaderMap::new();
        for (k, val) in headers {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                val.parse().unwrap(),
            );
        }
        verify(&v, &map, body)
    }

    #[test]
    fn each_provider_accepts_its_signature_and_nothing_else() {
        let body = b"{\"ok\":true}";
        let gh = format!("sha256={}", sign("s3cret", body));
        assert!(check(
            WebhookProvider::Github,
            &[("x-hub-signature-256", gh.clone())],
            body
        ));
        assert!(!check(
            WebhookProvider::Github,
            &[("x-hub-signature-256", gh)],
            b"tampered"
        ));
        assert!(!check(WebhookProvider::Github, &[], body));

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let signed = [now.to_string().as_bytes(), b".", body].concat();
        let stripe = format!("t={now},v1={}", sign("s3cret", &signed));
        assert!(check(
            WebhookProvider::Stripe,
            &[("stripe-signature", stripe)],
            body
        ));
        let old = now - 3600;
        let signed = [old.to_string().as_bytes(), b".", body].concat();
        let stale = format!("t={old},v1={}", sign("s3cret", &signed));
        assert!(
            !check(
                WebhookProvider::Stripe,
                &[("stripe-signature", stale)],
                body
            ),
            "replayed"
        );

        let base = [b"v0:", now.to_string().as_bytes(), b":", body].concat();
        let slack = vec![
            ("x-slack-request-timestamp", now.to_string()),
            ("x-slack-signature", format!("v0={}", sign("s3cret", &base))),
        ];
        assert!(check(WebhookProvider::Slack, &slack, body));
        assert!(!check(WebhookProvider::Slack, &slack, b"other"));
    }
}
