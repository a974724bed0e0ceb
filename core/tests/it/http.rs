//! HTTP endpoints (issue 16): the edge's reverse proxy, reached with curl over
//! HTTP/1.1 and h2 and with Rust clients, in front of a real web app.

use crate::common::*;
use crate::web::*;
use anyhow::Result;
use burrow_core::agent::OptionValue;
use futures::{SinkExt, StreamExt};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn s(v: &str) -> OptionValue {
    v.into()
}

fn list(items: &[&str]) -> OptionValue {
    OptionValue::List(items.iter().map(|i| s(i)).collect())
}

#[tokio::test]
async fn no_proto_gives_an_https_url_that_curl_reaches_over_http1_and_h2() -> Result<()> {
    let edge = open_edge().await;
    let app = web_app().await;
    let (_s, fwd) = forward(&edge, &app.addr.to_string(), &[]).await?;
    assert!(fwd.url().starts_with("https://"), "{}", fwd.url());
    assert_eq!(fwd.proto(), "https", "ngrok's proto() is the URL's scheme");
    let h1 = curl(&edge, fwd.url(), &["--http1.1"]).await?;
    assert_eq!(
        (h1.status, h1.text().as_str(), h1.version.as_str()),
        (200, "hello", "1.1")
    );
    let h2 = curl(&edge, fwd.url(), &["--http2"]).await?;
    assert_eq!(
        (h2.status, h2.text().as_str(), h2.version.as_str()),
        (200, "hello", "2")
    );
    assert_eq!(h2.header("x-app"), Some("yes"));
    Ok(())
}

#[tokio::test]
async fn a_mib_crosses_byte_exact_both_ways_and_chunked_uploads_too() -> Result<()> {
    let edge = open_edge().await;
    let app = web_app().await;
    let (_s, fwd) = forward(&edge, &app.addr.to_string(), &[]).await?;
    let dir = TempDir::new("http-mib")?;
    let file = dir.path().join("upload");
    let data = pseudo_random(MIB, 11);
    std::fs::write(&file, &data)?;
    let upload = format!("@{}", file.display());
    let echo = format!("{}/echo", fwd.url());
    for version in ["--http1.1", "--http2"] {
        let got = curl(&edge, &echo, &[version, "--data-binary", &upload]).await?;
        assert_eq!(got.status, 200);
        assert!(
            got.body == data,
            "{version}: the echoed MiB differs ({} bytes)",
            got.body.len()
        );
        let down = curl(&edge, &format!("{}/bytes/{MIB}", fwd.url()), &[version]).await?;
        assert!(
            down.body == pseudo_random(64 * 1024, 7).repeat(16),
            "{version}: download differs"
        );
    }
    let chunked = curl(
        &edge,
        &echo,
        &[
            "--http1.1",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &upload,
        ],
    )
    .await?;
    assert!(chunked.body == data, "chunked upload differs");
    Ok(())
}

#[tokio::test]
async fn two_hundred_keep_alive_clients_at_once() -> Result<()> {
    let edge = open_edge().await;
    let app = web_app().await;
    let (_s, fwd) = forward(&edge, &app.addr.to_string(), &[]).await?;
    let url = fwd.url();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let client = H1Client::connect(&edge, url).await?;
        tasks.spawn(async move {
            let mut client = client;
            for j in 0..5 {
                let (status, body) = client.get(&format!("/bytes/{}", 1000 + i + j)).await?;
                anyhow::ensure!(
                    status == 200 && body.len() == 1000 + i + j,
                    "client {i} request {j}: {status} {}",
                    body.len()
                );
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        r??;
        ok += 1;
    }
    assert_eq!(ok, 200);
    Ok(())
}

#[tokio::test]
async fn a_websocket_echoes_a_thousand_messages() -> Result<()> {
    use tokio_tungstenite::tungstenite::Message;
    let edge = open_edge().await;
    let app = web_app().await;
    let (_s, fwd) = forward(&edge, &app.addr.to_string(), &[]).await?;
    let (host, port) = host_port(fwd.url());
    let tls = h1_tls(&edge, &host).await?;
    let (mut ws, res) =
        tokio_tungstenite::client_async(format!("wss://{host}:{port}/ws"), tls).await?;
    assert_eq!(res.status(), 101);
    for i in 0..1000 {
        let text = format!("message {i} {}", "x".repeat(i % 97));
        ws.send(Message::text(text.clone())).await?;
        let back = ws.next().await.expect("an echo")?;
        assert_eq!(back.into_text()?.as_str(), text);
    }
    ws.close(None).await?;
    Ok(())
}

#[tokio::test]
async fn websocket_tcp_converter_hands_the_upstream_a_byte_stream() -> Result<()> {
    use tokio_tungstenite::tungstenite::Message;
    let edge = open_edge().await;
    let echo = echo_server().await;
    let (_s, fwd) = forward(
        &edge,
        &echo.addr.to_string(),
        &[("websocket_tcp_converter", true.into())],
    )
    .await?;
    let plain = curl(&edge, fwd.url(), &[]).await?;
    assert_eq!(plain.status, 400);
    assert_eq!(plain.header("ngrok-error-code"), Some("ERR_NGROK_3206"));
    let (host, port) = host_port(fwd.url());
    let tls = h1_tls(&edge, &host).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{host}:{port}/"), tls).await?;
    let data = pseudo_random(100_000, 5);
    let mut back = Vec::new();
    for chunk in data.chunks(10_000) {
        ws.send(Message::binary(chunk.to_vec())).await?;
    }
    while back.len() < data.len() {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await?
            .expect("bytes back")?;
        back.extend_from_slice(&msg.into_data());
    }
    assert!(back == data, "the TCP echo's bytes differ");
    Ok(())
}

#[tokio::test]
async fn basic_auth_asks_for_credentials_and_lets_the_right_ones_in() -> Result<()> {
    let edge = open_edge().await;
    let app = web_app().await;
    let (_s, fwd) = forward(
        &edge,
        &app.addr.to_string(),
        &[(
            "basic_auth",
            list(&["ann:correct-horse", "bob:battery-staple"]),
        )],
    )
    .await?;
    let none = curl(&edge, fwd.url(), &[]).await?;
    assert_eq!(none.status, 401);
    assert_eq!(
        none.header("www-authenticate"),
        Some("Basic realm=\"burrow\"")
    );
    assert_eq!(none.header("burrow-error-code"), Some("BURROW_BASIC_AUTH"));
    let wrong = curl(&edge, fwd.url(), &["-u", "ann:battery-staple"]).await?;
    assert_eq!(wrong.status, 401);
    for user in ["ann:correct-horse", "bob:battery-staple"] {
        let ok = curl(&edge, fwd.url(), &["-u", user]).await?;
        assert_eq!((ok.status, ok.text().as_str()), (200, "hello"), "{user}");
    }
    Ok(())
}

#[tokio::test]
async fn cidr_and_user_agent_rules_answer_403_with_ngroks_codes() -> Result<()> {
    let edge = open_edge().await;
    let app = web_app().await;
    let up = app.addr.to_string();
    let (_a, denied) = forward(&edge, &up, &[("deny_cidr", s("127.0.0.0/8"))]).await?;
    let got = curl(&edge, denied.url(), &[]).await?;
    assert_eq!(got.status, 403);
    assert_eq!(got.header("ngrok-error-code"), Some("ERR_NGROK_3205"));
    let (_b, allowed) = forward(&edge, &up, &[("allow_cidr", s("127.0.0.1/32"))]).await?;
    assert_eq!(curl(&edge, allowed.url(), &[]).await?.status, 200);

    let (_c, ua) = forward(
        &edge,
        &up,
        &[
            ("deny_user_agent", s("(?i)badbot")),
            ("allow_user_agent", list(&["^curl/", "^good"])),
        ],
    )
    .await?;
    let bad = curl(&edge, ua.url(), &["-A", "BadBot/1.0"]).await?;
    assert_eq!(bad.status, 403);
    assert_eq!(bad.header("ngrok-error-code"), Some("ERR_NGROK_3211"));
    let other = curl(&edge, ua.url(), &["-A", "wget/1.0"]).await?;
    assert_eq!(other.status, 403, "not on the allow list");
    assert_eq!(
        curl(&edge, ua.url(), &[]).await?.status,
        200,
        "curl's own agent"
    );
    assert_eq!(
        curl(&edge, ua.url(), &["-A", "good-client"]).await?.status,
        200
    );
    Ok(())
}

#[tokio::test]
async fn header_options_and_forwarded_headers_reach_the_app() -> Result<()> {
    let edge = open_edge().await;
    let app = web_app().await;
    let (_s, fwd) = forward(
        &edge,
        &app.addr.to_string(),
        &[
            (
                "request_header_add",
                list(&["X-Added: one", "X-Added: two"]),
            ),
            ("request_header_remove", s("X-Secret")),
            ("response_header_add", s("X-Served-By: burrow")),
            ("response_header_remove", s("X-App")),
            ("host_header", s("internal.example")),
        ],
    )
    .await?;
    let got = curl(
        &edge,
        &format!("{}/headers", fwd.url()),
        &["-H", "X-Secret: hide", "-H", "X-Forwarded-For: 10.9.9.9"],
    )
    .await?;
    assert_eq!(got.header("x-served-by"), Some("burrow"));
    let seen: serde_json::Value = serde_json::from_slice(&got.body)?;
    let h = &seen["headers"];
    assert_eq!(h["x-added"], serde_json::json!(["one", "two"]));
    assert!(h.get("x-secret").is_none(), "{h}");
    assert_eq!(h["host"], serde_json::json!(["internal.example"]));
    assert_eq!(
        h["x-forwarded-for"],
        serde_json::json!(["10.9.9.9, 127.0.0.1"])
    );
    assert_eq!(h["x-forwarded-proto"], serde_json::json!(["https"]));
    let (host, port) = host_port(fwd.url());
    assert_eq!(
        h["x-forwarded-host"],
        serde_json::json!([format!("{host}:{port}")])
    );
    let plain = curl(&edge, &format!("{}/text", fwd.url()), &[]).await?;
    assert!(plain.header("x-app").is_none(), "response_header_remove");

    let (_t, off) = forward(
        &edge,
        &app.addr.to_string(),
        &[("forwarded_headers", false.into())],
    )
    .await?;
    let got = curl(&edge, &format!("{}/headers", off.url()), &[]).await?;
    let seen: serde_json::Value = serde_json::from_slice(&got.body)?;
    assert!(seen["headers"].get("x-forwarded-for").is_none(), "{seen}");
    Ok(())
}

#[tokio::test]
async fn compression_follows_accept_encoding_with_gzip_and_brotli() -> Result<()> {
    let edge = open_edge().await;
    let app = web_app().await;
    let (_s, fwd) = forward(
        &edge,
        &app.addr.to_string(),
        &[("compression", true.into())],
    )
    .await?;
    let url = format!("{}/text", fwd.url());
    for (accept, encoding) in [("gzip", "gzip"), ("br", "br"), ("gzip, br", "br")] {
        let raw = curl(&edge, &url, &["-H", &format!("Accept-Encoding: {accept}")]).await?;
        assert_eq!(raw.header("content-encoding"), Some(encoding), "{accept}");
        assert!(
            raw.body.len() < text_body().len() / 4,
            "{accept}: {} bytes",
            raw.body.len()
        );
    }
    let decoded = curl(&edge, &url, &["--compressed"]).await?;
    assert_eq!(decoded.text(), text_body());
    let identity = curl(&edge, &url, &[]).await?;
    assert!(identity.header("content-encoding").is_none());
    assert_eq!(identity.text(), text_body());
    Ok(())
}

#[tokio::test]
async fn the_circuit_breaker_answers_503_once_the_app_fails() -> Result<()> {
    let edge = open_edge().await;
    let app = web_app().await;
    let (_s, fwd) = forward(
        &edge,
        &app.addr.to_string(),
        &[("circuit_breaker", OptionValue::Float(0.5))],
    )
    .await?;
    let mut client = H1Client::connect(&edge, fwd.url()).await?;
    for _ in 0..10 {
        let (status, _) = client.get("/status/500").await?;
        assert_eq!(status, 500);
    }
    let (status, body) = client.get("/").await?;
    assert_eq!(status, 503, "{body:?}");
    let got = curl(&edge, fwd.url(), &[]).await?;
    assert_eq!(got.header("ngrok-error-code"), Some("ERR_NGROK_3202"));
    Ok(())
}

#[tokio::test]
async fn github_webhooks_are_verified_before_the_app_sees_them() -> Result<()> {
    let edge = open_edge().await;
    let app = web_app().await;
    let (_s, fwd) = forward(
        &edge,
        &app.addr.to_string(),
        &[
            ("verify_webhook_provider", s("github")),
            ("verify_webhook_secret", s("whsec")),
        ],
    )
    .await?;
    let body = r#"{"action":"opened"}"#;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"whsec");
    let sig: String = ring::hmac::sign(&key, body.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let url = format!("{}/echo", fwd.url());
    let good = curl(
        &edge,
        &url,
        &[
            "-H",
            &format!("X-Hub-Signature-256: sha256={sig}"),
            "--data-binary",
            body,
        ],
    )
    .await?;
    assert_eq!((good.status, good.text().as_str()), (200, body));
    let bad = curl(
        &edge,
        &url,
        &[
            "-H",
            &format!("X-Hub-Signature-256: sha256={sig}"),
            "--data-binary",
            "tampered",
        ],
    )
    .await?;
    assert_eq!(bad.status, 403);
    assert_eq!(bad.header("ngrok-error-code"), Some("ERR_NGROK_3204"));
    Ok(())
}

#[tokio::test]
async fn mutual_tls_lets_only_clients_with_a_certificate_in() -> Result<()> {
    let edge = open_edge().await;
    let app = web_app().await;
    let clients = Pki::new("clients");
    let (_s, fwd) = forward(
        &edge,
        &app.addr.to_string(),
        &[("mutual_tls_cas", s(&clients.ca_pem))],
    )
    .await?;
    assert!(
        curl(&edge, fwd.url(), &[]).await.is_err(),
        "no client certificate"
    );
    let leaf = clients.client("alice");
    let dir = TempDir::new("mtls")?;
    let (crt, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&crt, &leaf.crt)?;
    std::fs::write(&key, &leaf.key)?;
    let got = curl(
        &edge,
        fwd.url(),
        &[
            "--cert",
            crt.to_str().unwrap_or_default(),
            "--key",
            key.to_str().unwrap_or_default(),
        ],
    )
    .await?;
    assert_eq!(got.status, 200);
    Ok(())
}

#[tokio::test]
async fn an_unreachable_app_gives_502_and_an_unknown_host_404() -> Result<()> {
    let edge = http_edge().await;
    let port = free_port()?;
    let (_s, fwd) = forward(&edge, &format!("127.0.0.1:{port}"), &[]).await?;
    let got = curl(&edge, fwd.url(), &[]).await?;
    assert_eq!(got.status, 502);
    assert_eq!(got.header("ngrok-error-code"), Some("ERR_NGROK_8012"));
    assert_eq!(
        got.header("burrow-error-code"),
        Some("BURROW_UPSTREAM_FAILED")
    );
    let http = edge.http_addr().expect("http listener");
    let unknown = curl(
        &edge,
        &format!("http://nobody.example:{}/", http.port()),
        &[],
    )
    .await?;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.header("ngrok-error-code"), Some("ERR_NGROK_3200"));
    Ok(())
}

#[tokio::test]
async fn plain_http_serves_http_endpoints_and_redirects_https_only_ones() -> Result<()> {
    let edge = http_edge().await;
    let app = web_app().await;
    let port = edge.http_addr().expect("http listener").port();
    let (_a, plain) = forward(
        &edge,
        &app.addr.to_string(),
        &[("url", s("http://plain.example"))],
    )
    .await?;
    assert_eq!(plain.url(), format!("http://plain.example:{port}"));
    let got = curl(&edge, &format!("{}/headers", plain.url()), &[]).await?;
    let seen: serde_json::Value = serde_json::from_slice(&got.body)?;
    assert_eq!(
        seen["headers"]["x-forwarded-proto"],
        serde_json::json!(["http"])
    );

    let (_b, both) = forward(
        &edge,
        &app.addr.to_string(),
        &[
            ("domain", s("both.example")),
            ("schemes", list(&["HTTPS", "HTTP"])),
        ],
    )
    .await?;
    assert!(both.url().starts_with("https://both.example"));
    assert_eq!(
        curl(&edge, &format!("http://both.example:{port}/"), &[])
            .await?
            .text(),
        "hello"
    );

    let (_c, secure) = forward(
        &edge,
        &app.addr.to_string(),
        &[("domain", s("secure.example"))],
    )
    .await?;
    let redirected = curl(&edge, &format!("http://secure.example:{port}/a?b=1"), &[]).await?;
    assert_eq!(redirected.status, 308);
    assert_eq!(
        redirected.header("location"),
        Some(format!("{}/a?b=1", secure.url()).as_str())
    );
    Ok(())
}

#[tokio::test]
async fn http2_to_the_app_and_unix_socket_upstreams() -> Result<()> {
    let edge = open_edge().await;
    let app = web_app().await;
    let (_a, h2) = forward(
        &edge,
        &format!("http://{}", app.addr),
        &[("app_protocol", s("http2"))],
    )
    .await?;
    let got = curl(&edge, &format!("{}/headers", h2.url()), &["--http1.1"]).await?;
    let seen: serde_json::Value = serde_json::from_slice(&got.body)?;
    assert_eq!(seen["version"], "HTTP/2.0", "the app saw {seen}");

    let dir = TempDir::new("unix-app")?;
    let sock = dir.path().join("app.sock");
    let _unix = web_app_unix(&sock).await;
    let (_b, unix) = forward(&edge, &format!("unix:{}", sock.display()), &[]).await?;
    assert_eq!(curl(&edge, unix.url(), &["--http2"]).await?.text(), "hello");
    Ok(())
}

/// Writes a raw request over TLS and reads the response head.
async fn raw_request(edge: &burrow_core::Edge, url: &str, request: &[u8]) -> Result<String> {
    let (host, _) = host_port(url);
    let mut tls = h1_tls(edge, &host).await?;
    tls.write_all(request).await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await??;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test]
async fn header_floods_and_smuggling_attempts_are_refused() -> Result<()> {
    let edge = open_edge().await;
    let app = web_app().await;
    let (_s, fwd) = forward(&edge, &app.addr.to_string(), &[]).await?;
    let (host, _) = host_port(fwd.url());
    let mut flood = format!("GET / HTTP/1.1\r\nHost: {host}\r\n");
    for i in 0..500 {
        flood.push_str(&format!("X-Flood-{i}: {}\r\n", "y".repeat(50)));
    }
    flood.push_str("\r\n");
    let head = raw_request(&edge, fwd.url(), flood.as_bytes()).await?;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    // Two lengths that disagree: refused outright.
    let lengths = format!(
        "POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello"
    );
    let head = raw_request(&edge, fwd.url(), lengths.as_bytes()).await?;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    // Content-Length beside Transfer-Encoding: the chunked framing wins (RFC 9112 6.3),
    // the connection closes after the response, and the request hidden behind the
    // chunked body never reaches the app.
    let smuggle = format!(
        "POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 60\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /status/418 HTTP/1.1\r\nHost: {host}\r\n\r\n"
    );
    let mut tls = h1_tls(&edge, &host).await?;
    tls.write_all(smuggle.as_bytes()).await?;
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut all)).await??;
    let all = String::from_utf8_lossy(&all);
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(
        !all.contains("418"),
        "the smuggled request was served: {all}"
    );
    assert_eq!(all.matches("HTTP/1.1").count(), 1, "{all}");
    Ok(())
}

#[tokio::test]
async fn a_client_that_stops_reading_stalls_the_app_instead_of_filling_the_edge() -> Result<()> {
    let edge = open_edge().await;
    let app = web_app().await;
    let (_s, fwd) = forward(&edge, &app.addr.to_string(), &[]).await?;
    let (host, _) = host_port(fwd.url());
    let mut tls = h1_tls(&edge, &host).await?;
    let size = 512 * MIB;
    tls.write_all(format!("GET /bytes/{size} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut first = vec![0u8; 1024];
    let _ = tls.read(&mut first).await?;
    // Not reading: the app is held back by flow control, whatever its size.
    let mut last = 0;
    let mut steady = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = app.sent.load(Ordering::Relaxed);
        if now == last && now > 0 {
            steady = true;
            break;
        }
        last = now;
    }
    let sent = app.sent.load(Ordering::Relaxed) as usize;
    assert!(
        steady,
        "the app kept sending to a client that reads nothing: {sent} bytes"
    );
    assert!(
        sent < 64 * MIB,
        "{sent} bytes left the app for a client that read 1 KiB"
    );
    Ok(())
}

#[tokio::test]
async fn the_rust_builder_and_the_config_file_make_http_endpoints() -> Result<()> {
    let edge = open_edge().await;
    let app = web_app().await;
    let session = session_for(&edge).await;
    let built = session
        .http_endpoint()
        .domain("built.example")
        .basic_auth("ann", "correct-horse")
        .request_header("X-Via", "builder")
        .listen_and_forward(app.addr.to_string().parse()?)
        .await?;
    assert!(
        built.url().starts_with("https://built.example:"),
        "{}",
        built.url()
    );
    let got = curl(
        &edge,
        &format!("{}/headers", built.url()),
        &["-u", "ann:correct-horse"],
    )
    .await?;
    let seen: serde_json::Value = serde_json::from_slice(&got.body)?;
    assert_eq!(seen["headers"]["x-via"], serde_json::json!(["builder"]));

    let yaml = format!(
        "version: 3\nendpoints:\n  - name: web\n    url: https://cfg.example\n    upstream:\n      url: {}\n      protocol: http2\n",
        app.addr
    );
    let config = burrow_core::config::AgentConfig::from_yaml(&yaml, std::path::Path::new("."))?;
    let fwd = config.endpoints[0].start(&session).await?;
    assert!(
        fwd.url().starts_with("https://cfg.example:"),
        "{}",
        fwd.url()
    );
    let got = curl(&edge, &format!("{}/headers", fwd.url()), &[]).await?;
    let seen: serde_json::Value = serde_json::from_slice(&got.body)?;
    assert_eq!(
        seen["version"], "HTTP/2.0",
        "upstream.protocol: http2 reaches the app as h2c"
    );
    Ok(())
}

/// What only a hand-written agent would send: the edge refuses it at bind time.
#[tokio::test]
async fn an_http_bind_that_is_not_edge_terminated_or_has_bad_options_is_refused() -> Result<()> {
    use burrow_core::agent::http::HttpOptions;
    use burrow_core::agent::{EndpointKind, Termination, TlsMaterial};
    use burrow_core::wire::{BindSpec, EdgeMsg};
    let edge = open_edge().await;
    let mut agent = RawAgent::connect(&edge).await?;
    let bind = |http: HttpOptions, termination: Termination| BindSpec {
        endpoint_id: "e1".into(),
        kind: EndpointKind::Http {
            domain: None,
            port: None,
            http: Box::new(http),
        },
        termination,
        traffic_policy: None,
        allow_cidrs: Vec::new(),
        deny_cidrs: Vec::new(),
        metadata: String::new(),
        pooling_enabled: false,
    };
    let refused = agent
        .bind(bind(HttpOptions::default(), Termination::Upstream))
        .await?;
    assert!(
        matches!(&refused, EdgeMsg::Error { message, .. } if message.contains("terminated at the edge")),
        "{refused:?}"
    );
    let bad = HttpOptions {
        deny_user_agent: vec!["(".into()],
        ..Default::default()
    };
    let refused = agent
        .bind(bind(bad, Termination::Edge(TlsMaterial::default())))
        .await?;
    assert!(
        matches!(&refused, EdgeMsg::Error { message, .. } if message.contains("deny_user_agent")),
        "{refused:?}"
    );
    let ok = agent
        .bind(bind(
            HttpOptions::default(),
            Termination::Edge(TlsMaterial::default()),
        ))
        .await?;
    assert!(
        matches!(&ok, EdgeMsg::BindOk { url, .. } if url.starts_with("https://")),
        "{ok:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_https_upstream_is_verified_and_proxy_protocol_reaches_a_plain_one() -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let edge = open_edge().await;
    // An app that terminates TLS itself, with a certificate from a CA made here.
    let pki = Pki::new("upstream CA");
    let tls_app = tls_web_app(&pki.leaf(&["localhost"])).await?;
    let upstream = format!("https://localhost:{}", tls_app.port());
    let (_a, verified) =
        forward(&edge, &upstream, &[("upstream_root_cas", s(&pki.ca_pem))]).await?;
    assert_eq!(
        curl(&edge, verified.url(), &[]).await?.text(),
        "hello over tls"
    );
    let (_b, untrusted) = forward(&edge, &upstream, &[]).await?;
    let got = curl(&edge, untrusted.url(), &[]).await?;
    assert_eq!(
        got.status, 502,
        "the platform roots do not know the upstream's CA"
    );
    let (_c, insecure) =
        forward(&edge, &upstream, &[("verify_upstream_tls", false.into())]).await?;
    assert_eq!(
        curl(&edge, insecure.url(), &[]).await?.text(),
        "hello over tls"
    );

    // PROXY protocol v1 in front of each upstream connection, then HTTP.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut reader = tokio::io::BufReader::new(tcp);
                let mut line = String::new();
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let line = line.trim_end().to_owned();
                let service = hyper::service::service_fn(move |_req| {
                    let body = line.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(reader);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    let (_d, proxied) = forward(
        &edge,
        &format!("127.0.0.1:{port}"),
        &[("proxy_proto", s("1"))],
    )
    .await?;
    let got = curl(&edge, proxied.url(), &[]).await?;
    assert!(
        got.text().starts_with("PROXY TCP4 127.0.0.1 "),
        "{}",
        got.text()
    );
    Ok(())
}

#[tokio::test]
async fn a_pool_never_mixes_an_http_and_a_tls_endpoint() -> Result<()> {
    let edge = open_edge().await;
    let app = web_app().await;
    let up = app.addr.to_string();
    let pooled = |proto: &'static str| {
        vec![
            ("proto", s(proto)),
            ("domain", s("mix.example")),
            ("pooling_enabled", true.into()),
        ]
    };
    let (_a, http) = forward(&edge, &up, &pooled("http")).await?;
    let Err(err) = forward(&edge, &up, &pooled("tls")).await else {
        anyhow::bail!("a tls endpoint joined an http endpoint's pool");
    };
    let err = err.downcast::<burrow_core::Error>()?;
    assert_eq!(err.code(), burrow_core::ErrorCode::DomainTaken, "{err}");
    assert!(err.message().contains("different kind"), "{err}");
    let (_b, second) = forward(&edge, &up, &pooled("http")).await?;
    assert_eq!(second.url(), http.url(), "another http member joins");
    Ok(())
}

#[tokio::test]
async fn burrow_edge_prints_its_http_listener() -> Result<()> {
    let dir = TempDir::new("edge-http-addr")?;
    let config = dir.path().join("edge.toml");
    std::fs::write(&config, "open = true\nhttp_addr = \"127.0.0.1:0\"\n")?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["edge", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await? {
            let is_http = line.starts_with("http:");
            seen.push(line);
            if is_http {
                return Ok::<_, anyhow::Error>(true);
            }
        }
        Ok(false)
    })
    .await??;
    assert!(found, "no http: line in {seen:?}");
    let addr: std::net::SocketAddr = seen
        .last()
        .map(|l| l["http:".len()..].trim())
        .unwrap_or_default()
        .parse()?;
    tokio::net::TcpStream::connect(addr).await?;
    Ok(())
}
