//! The web status page the agent API serves at `GET /`: its headers (a strict CSP), and
//! that its script asks only for URLs the API serves and reads only fields the API's
//! JSON has. The page in a real browser: tests-js/status_page.test.js.

use crate::common::*;
use anyhow::{bail, Context, Result};
use burrow_core::agent::{AgentApi, ApiKind, TerminateAt};
use regex::Regex;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on its own connection; the whole answer.
async fn request(addr: SocketAddr, method: &str, path: &str) -> Result<Answer> {
    let mut tcp = TcpStream::connect(addr).await?;
    let head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    tcp.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw)).await??;
    let raw = String::from_utf8(raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no end of head")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .context("no status line")?
        .parse()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_owned(),
    })
}

fn inline(page: &str, tag: &str) -> Result<String> {
    let open = format!("<{tag}>");
    let start = page.find(&open).context("no inline element")? + open.len();
    let len = page[start..]
        .find(&format!("</{tag}>"))
        .context("unclosed")?;
    Ok(page[start..start + len].to_owned())
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_csp() -> Result<()> {
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    let api = AgentApi::serve(&session, "127.0.0.1:0".parse()?, ApiKind::Full).await?;
    let metrics_only =
        AgentApi::serve(&session, "127.0.0.1:0".parse()?, ApiKind::MetricsOnly).await?;

    for path in ["/", "/status"] {
        let res = request(api.local_addr(), "GET", path).await?;
        assert_eq!(res.status, 200, "{path}");
        assert_eq!(res.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(res.body, burrow_core::agent::STATUS_PAGE, "{path}");
        let csp = res.header("content-security-policy").context("CSP")?;
        for directive in [
            "default-src 'none'",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{directive} in {csp}");
        }
        assert!(!csp.contains("unsafe"), "no unsafe-* source: {csp}");
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
        assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(res.header("cache-control"), Some("no-store"));
    }
    let head = request(api.local_addr(), "HEAD", "/").await?;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    // Only the exact paths: the page fetches `api/status` relative to itself.
    assert_eq!(
        request(api.local_addr(), "GET", "/status/x").await?.status,
        404
    );
    assert_eq!(request(api.local_addr(), "GET", "/").await?.status, 200);
    assert_eq!(
        request(metrics_only.local_addr(), "GET", "/").await?.status,
        404
    );
    assert_eq!(request(api.local_addr(), "POST", "/").await?.status, 405);

    // The page writes network strings as text, never as HTML.
    let page = burrow_core::agent::STATUS_PAGE;
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!page.contains(sink), "the page uses {sink}");
    }
    // One inline script and style (what the hashes cover), no external ones, no inline
    // event handlers or style attributes (a hash-based CSP would block them).
    assert_eq!(page.matches("<script").count(), 1);
    assert_eq!(page.matches("<style").count(), 1);
    assert!(!Regex::new(r#"\s(on[a-z]+|style)="#)?.is_match(page));
    Ok(())
}

#[tokio::test]
async fn the_page_asks_only_for_what_the_api_serves() -> Result<()> {
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    let service = echo_server().await;
    let fwd = session
        .tls_endpoint()
        .domain("page.test")
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let api = AgentApi::serve(&session, "127.0.0.1:0".parse()?, ApiKind::Full).await?;
    // A real connection, so `recent` has a row whose fields can be checked.
    let tls = tls_connect(edge.tls_addr(), "page.test", edge.ca_pem()).await?;
    echo_check(tls, b"hello page").await?;
    assert!(
        eventually(WAIT, || session
            .status()
            .recent
            .iter()
            .any(|r| r.outcome == "closed"))
        .await,
        "the connection is recorded"
    );

    let script = inline(burrow_core::agent::STATUS_PAGE, "script")?;
    // Every URL the script names: the API's paths (relative or absolute).
    let urls: BTreeSet<String> = Regex::new(r#"['"`](/?(?:api|metrics)[^'"`]*)['"`]"#)?
        .captures_iter(&script)
        .map(|c| c[1].to_owned())
        .collect();
    assert_eq!(urls, BTreeSet::from(["api/status".to_owned()]), "{urls:?}");
    let mut status = Value::Null;
    for url in &urls {
        // The page is at `/`, so a relative URL resolves against it.
        let path = if url.starts_with('/') {
            url.clone()
        } else {
            format!("/{url}")
        };
        let res = request(api.local_addr(), "GET", &path).await?;
        assert_eq!(res.status, 200, "{url}");
        assert_eq!(res.header("content-type"), Some("application/json"));
        status = serde_json::from_str(&res.body)?;
    }
    assert_eq!(status["endpoints"][0]["url"], fwd.url());

    // Every field the script reads (`doc.x`, `edge.x`, `ep.x`, `conns.x`, `rec.x` in
    // normalise()) is in the API's answer.
    let objects = [
        ("doc", &status),
        ("edge", &status["edges"][0]),
        ("ep", &status["endpoints"][0]),
        ("conns", &status["endpoints"][0]["conns"]),
        ("rec", &status["recent"][0]),
    ];
    let reads = Regex::new(r"\b(doc|edge|ep|conns|rec)\.([a-z][a-z0-9_]*)\b")?;
    let mut checked = 0;
    for c in reads.captures_iter(&script) {
        let (_, value) = objects
            .iter()
            .find(|(name, _)| *name == &c[1])
            .context("known object")?;
        let Some(fields) = value.as_object() else {
            bail!("{} is not an object in {status}", &c[1]);
        };
        assert!(
            fields.contains_key(&c[2]),
            "the page reads {}.{} but the API has no such field: {value}",
            &c[1],
            &c[2]
        );
        checked += 1;
    }
    assert!(checked >= 30, "the page's reads were found ({checked})");
    Ok(())
}
