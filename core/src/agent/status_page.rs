//! The web status page: one static HTML file (`status.html`, no build step) that polls
//! the agent API's `api/status` and draws the session, its endpoints, the recent
//! connections and a throughput chart. The agent API serves it at `GET /` and
//! `GET /status`; the edge's admin API can serve the same page in front of a compatible
//! JSON document (the contract is the comment at the top of the file).

use std::sync::LazyLock;

/// The page.
pub const STATUS_PAGE: &str = include_str!("status.html");

/// The `Content-Security-Policy` the page is served with: nothing but the page's own
/// inline script and inline style (allowed by their SHA-256 hashes, so an injected
/// `<script>` or `style` attribute would not run), fetches to its own origin only, no
/// frames, forms, plugins or `<base>`.
pub fn status_page_csp() -> &'static str {
    static CSP: LazyLock<String> = LazyLock::new(|| {
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            inline_hash(STATUS_PAGE, "script"),
            inline_hash(STATUS_PAGE, "style"),
        )
    });
    &CSP
}

/// The headers the page is served with, besides its length.
pub fn status_page_headers() -> [(&'static str, &'static str); 5] {
    [
        ("content-type", "text/html; charset=utf-8"),
        ("content-security-policy", status_page_csp()),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ]
}

/// The page with its headers (served by the agent API and the edge's admin API).
pub(crate) fn page_response() -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let body = bytes::Bytes::from_static(STATUS_PAGE.as_bytes());
    let mut response = http::Response::new(http_body_util::Full::new(body));
    for (name, value) in status_page_headers() {
        response
            .headers_mut()
            .insert(name, http::HeaderValue::from_static(value));
    }
    response
}

/// `'sha256-...'` of the text inside the page's one `<tag>...</tag>` element (`'none'`
/// if there is none, which the page's tests rule out).
fn inline_hash(page: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let Some(start) = page.find(&open).map(|i| i + open.len()) else {
        return "'none'".to_owned();
    };
    let Some(len) = page[start..].find(&close) else {
        return "'none'".to_owned();
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, &page.as_bytes()[start..start + len]);
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    format!("'sha256-{encoded}'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_one_inline_script_and_style_and_both_are_hashed() {
        for tag in ["script", "style"] {
            assert_eq!(STATUS_PAGE.matches(&format!("<{tag}")).count(), 1, "{tag}");
        }
        let csp = status_page_csp();
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
    }
}
