//! Observing an edge (issue 17): Prometheus metrics scraped over HTTP and parsed by a
//! real parser after real traffic, the admin API driven as an operator would (bearer
//! token, JSON), stop with a reason, drain, and the Grafana dashboard's metric names.

use crate::cli::{temp_file, Proc};
use crate::common::*;
use crate::web::*;
use anyhow::{anyhow, bail, Context, Result};
use burrow_core::edge::TokenRule;
use burrow_core::wire::SecretPem;
use burrow_core::{Edge, EdgeConfig, ErrorCode, Session};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AUTHTOKEN: &str = "observe-authtoken-4f9d2c";
const ADMIN_TOKEN: &str = "observe-admin-token-8b1e7a3f";
const WAIT: Duration = Duration::from_secs(10);

fn config() -> EdgeConfig {
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    EdgeConfig {
        authtokens: vec![TokenRule {
            token: AUTHTOKEN.into(),
            domains: vec!["*.observe.test".into()],
        }],
        heartbeat_ms: 2_000,
        tcp_ports: Some([0, 0]),
        http_addr: Some(loopback),
        metrics_addr: Some(loopback),
        admin_addr: Some(loopback),
        admin_token: Some(SecretPem(ADMIN_TOKEN.into())),
        ..Default::default()
    }
}

async fn session(edge: &Edge) -> Result<Session> {
    Ok(Session::builder()
        .server_addr(edge.tunnel_addr().to_string())
        .root_cas(edge.ca_pem())
        .authtoken(AUTHTOKEN)
        .connect()
        .await?)
}

/// An HTTP answer: status, content type, body.
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }
}

/// One HTTP/1.1 request with hyper's client, as `curl` would send it.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<Answer> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    let driver = tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    let res = tokio::time::timeout(
        WAIT * 2,
        send.send_request(req.body(Full::new(Bytes::from(body.to_owned())))?),
    )
    .await??;
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = res.into_body().collect().await?.to_bytes();
    driver.abort();
    Ok(Answer {
        status,
        content_type,
        body: String::from_utf8(bytes.to_vec())?,
    })
}

/// Every admin call a test makes, kept to check that none carried a secret.
#[derive(Default, Clone)]
struct Bodies(Arc<Mutex<Vec<String>>>);

impl Bodies {
    async fn admin(
        &self,
        edge: &Edge,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> Result<Answer> {
        let addr = edge
            .admin_addr()
            .ok_or_else(|| anyhow!("no admin listener"))?;
        let answer = request(addr, method, path, token, body).await?;
        if path.starts_with("/api/") {
            assert_eq!(answer.content_type, "application/json", "{path}");
        }
        self.0
            .lock()
            .expect("lock")
            .push(format!("{method} {path}: {}", answer.body));
        Ok(answer)
    }

    fn push(&self, text: String) {
        self.0.lock().expect("lock").push(text);
    }

    fn assert_no_secret(&self, secrets: &[&str]) {
        for body in self.0.lock().expect("lock").iter() {
            for secret in secrets {
                let needle = secret.trim();
                assert!(!needle.is_empty());
                assert!(
                    !body.contains(needle),
                    "a response carries a secret ({}...): {body}",
                    &needle[..needle.len().min(12)]
                );
            }
        }
    }
}

/// The edge's metrics as Prometheus scrapes them, parsed by `prometheus-parse`.
async fn scrape(edge: &Edge) -> Result<prometheus_parse::Scrape> {
    let addr = edge
        .metrics_addr()
        .ok_or_else(|| anyhow!("no metrics listener"))?;
    let answer = request(addr, "GET", "/metrics", None, "").await?;
    assert_eq!(answer.status, 200);
    assert!(
        answer
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        answer.content_type
    );
    parse(&answer.body)
}

fn parse(text: &str) -> Result<prometheus_parse::Scrape> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    Ok(prometheus_parse::Scrape::parse(lines)?)
}

/// The value of the sample `name` whose labels include `labels` (0 when absent).
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value as V;
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            V::Counter(v) | V::Gauge(v) | V::Untyped(v) => *v,
            V::Histogram(_) | V::Summary(_) => f64::NAN,
        })
        .sum()
}

/// The number of observations of histogram `name`.
fn observations(scrape: &prometheus_parse::Scrape, name: &str) -> f64 {
    use prometheus_parse::Value as V;
    let count = format!("{name}_count");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name || s.metric == count)
        .map(|s| match &s.value {
            V::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            V::Counter(v) | V::Gauge(v) | V::Untyped(v) => *v,
            V::Summary(_) => 0.0,
        })
        .fold(0.0, f64::max)
}

/// Every metric name a scrape has (histograms by their family name too).
fn names(scrape: &prometheus_parse::Scrape) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for s in &scrape.samples {
        names.insert(s.metric.clone());
        if let prometheus_parse::Value::Histogram(_) = s.value {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{}{suffix}", s.metric));
            }
        }
        for suffix in ["_bucket", "_sum", "_count", "_total"] {
            if let Some(base) = s.metric.strip_suffix(suffix) {
                names.insert(base.to_owned());
            }
        }
    }
    names
}

const ACCEPTED: &str = "burrow_edge_public_connections_accepted_total";
const REFUSED: &str = "burrow_edge_public_connections_refused_total";

#[tokio::test]
async fn metrics_move_by_exactly_the_traffic_sent() -> Result<()> {
    let edge = Edge::start(config()).await?;
    let service_pki = Pki::new("observe service CA");
    let service_cert = service_pki.leaf(&["echo.observe.test"]);
    let service = tls_echo_server(&service_cert).await;
    let app = web_app().await;
    let session = session(&edge).await?;
    let _echo = session
        .tls_endpoint()
        .domain("echo.observe.test")
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let web = session
        .http_endpoint()
        .domain("web.observe.test")
        .listen_and_forward(app.addr.to_string().parse()?)
        .await?;

    let before = scrape(&edge).await?;
    assert_eq!(value(&before, "burrow_edge_sessions", &[]), 1.0);
    let endpoints = |s: &prometheus_parse::Scrape, proto, termination| {
        value(
            s,
            "burrow_edge_endpoints",
            &[("proto", proto), ("termination", termination)],
        )
    };
    assert_eq!(endpoints(&before, "tls", "upstream"), 1.0);
    assert_eq!(endpoints(&before, "http", "edge"), 1.0);
    assert!(observations(&before, "burrow_edge_bind_seconds") >= 2.0);

    // N connections through a passthrough endpoint, 64 KiB each way.
    const N: usize = 5;
    const LEN: usize = 64 * 1024;
    for i in 0..N {
        let tls = tls_connect(edge.tls_addr(), "echo.observe.test", &service_pki.ca_pem).await?;
        echo_check(tls, &pseudo_random(LEN, i as u64)).await?;
    }
    // The echo checks end when the bytes are back: the edge notes the close a moment later.
    assert!(
        eventually(WAIT, || edge
            .metrics_text()
            .contains("burrow_edge_public_connections_active 0"))
        .await
    );
    let after = scrape(&edge).await?;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(delta(ACCEPTED, &[]), N as f64);
    assert_eq!(delta(REFUSED, &[]), 0.0);
    assert!(delta("burrow_edge_bytes_in_total", &[]) >= (N * LEN) as f64);
    assert!(delta("burrow_edge_bytes_out_total", &[]) >= (N * LEN) as f64);
    assert_eq!(
        observations(&after, "burrow_edge_client_hello_seconds")
            - observations(&before, "burrow_edge_client_hello_seconds"),
        N as f64
    );

    // A name nobody serves: accepted, then refused as unknown_name, exactly once.
    let before = after;
    let refused = tls_connect(edge.tls_addr(), "nobody.observe.test", &service_pki.ca_pem).await;
    assert!(refused.is_err(), "an unknown name must be refused");
    // A ClientHello without SNI (connect by IP): refused as no_sni.
    let no_sni = tls_connect(edge.tls_addr(), "127.0.0.1", &service_pki.ca_pem).await;
    assert!(no_sni.is_err());
    assert!(
        eventually(WAIT, || edge
            .metrics_text()
            .contains("burrow_edge_public_connections_active 0"))
        .await
    );
    let after = scrape(&edge).await?;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(delta(ACCEPTED, &[]), 2.0);
    assert_eq!(delta(REFUSED, &[("reason", "unknown_name")]), 1.0);
    assert_eq!(delta(REFUSED, &[("reason", "no_sni")]), 1.0);
    assert_eq!(delta(REFUSED, &[]), 2.0);

    // HTTP: a 200 and a 404 from the app, one TLS handshake at the edge each.
    let before = after;
    assert_eq!(curl(&edge, web.url(), &["--http1.1"]).await?.status, 200);
    let missing = format!("{}/status/404", web.url());
    assert_eq!(curl(&edge, &missing, &["--http1.1"]).await?.status, 404);
    let after = scrape(&edge).await?;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(
        delta("burrow_edge_http_responses_total", &[("class", "2xx")]),
        1.0
    );
    assert_eq!(
        delta("burrow_edge_http_responses_total", &[("class", "4xx")]),
        1.0
    );
    assert_eq!(
        delta("burrow_edge_http_responses_total", &[("class", "5xx")]),
        0.0
    );
    assert_eq!(delta(ACCEPTED, &[]), 2.0);
    assert_eq!(
        observations(&after, "burrow_edge_tls_handshake_seconds")
            - observations(&before, "burrow_edge_tls_handshake_seconds"),
        2.0
    );

    // Metrics text never carries a secret, and Edge::metrics_text parses too.
    let text = edge.metrics_text();
    parse(&text)?;
    for secret in [AUTHTOKEN, ADMIN_TOKEN, &service_cert.key] {
        assert!(!text.contains(secret.trim()), "metrics carry a secret");
    }

    // Every metric the Grafana dashboard charts exists in this real scrape.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/grafana-burrow-edge.json"
    ))?;
    let dashboard: Value = serde_json::from_str(&dashboard)?;
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 6, "the dashboard has panels");
    let have = names(&after);
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for (i, _) in expr.match_indices("burrow_edge_") {
            let name: String = expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            used.insert(name);
        }
    }
    assert!(used.len() >= 6, "{used:?}");
    let missing: Vec<_> = used.iter().filter(|n| !have.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "dashboard metrics not in a scrape: {missing:?}"
    );
    Ok(())
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, out)),
        _ => {}
    }
}

#[tokio::test]
async fn admin_api_lists_and_stops_sessions_with_a_reason_and_never_leaks_a_secret() -> Result<()> {
    let edge = Edge::start(config()).await?;
    let bodies = Bodies::default();
    let pki = Pki::new("observe edge-terminated CA");
    let edge_cert = pki.leaf(&["term.observe.test"]);
    let agent_cert = pki.leaf(&["agent.observe.test"]);
    let service = echo_server().await;

    // Without the token, or with a wrong one: 401 JSON, for every route.
    for (method, path) in [
        ("GET", "/api/status"),
        ("GET", "/api/sessions"),
        ("GET", "/api/endpoints"),
        ("POST", "/api/drain"),
        ("POST", "/api/sessions/x/stop"),
    ] {
        for token in [None, Some("wrong-token-of-some-length"), Some("")] {
            let got = bodies.admin(&edge, method, path, token, "").await?;
            assert_eq!(got.status, 401, "{method} {path} {token:?}");
            assert_eq!(got.json()?["error"]["code"], "AUTH_FAILED");
        }
    }
    assert!(!edge.is_draining(), "an unauthorized drain did nothing");
    // The status page itself holds no secret: it is served without the token, and its
    // script sends the token (from #token=) with each /api/status call.
    let page = bodies.admin(&edge, "GET", "/", None, "").await?;
    assert_eq!(page.status, 200);
    assert!(
        page.content_type.starts_with("text/html"),
        "{}",
        page.content_type
    );
    assert!(page.body.contains("<title>burrow status</title>"));

    let reasons = Arc::new(Mutex::new(Vec::<Option<String>>::new()));
    let seen = reasons.clone();
    let hooked = Session::builder()
        .server_addr(edge.tunnel_addr().to_string())
        .root_cas(edge.ca_pem())
        .authtoken(AUTHTOKEN)
        .client_info("observer", "1.0", None)
        .handle_stop_command(move |reason| {
            seen.lock().expect("lock").push(reason.map(str::to_owned));
            Ok(())
        })
        .connect()
        .await?;
    let term = hooked
        .tls_endpoint()
        .domain("term.observe.test")
        .termination(edge_cert.crt.clone(), edge_cert.key.clone())
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let _agent = hooked
        .tls_endpoint()
        .domain("agent.observe.test")
        .agent_termination(agent_cert.crt.clone(), agent_cert.key.clone())
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let plain = session(&edge).await?;

    let status = bodies
        .admin(&edge, "GET", "/api/status", Some(ADMIN_TOKEN), "")
        .await?
        .json()?;
    assert_eq!(status["draining"], false);
    assert_eq!(status["sessions"], 2);
    assert_eq!(status["endpoints"].as_array().map(Vec::len), Some(2));
    assert_eq!(status["status"], "online");

    let sessions = bodies
        .admin(&edge, "GET", "/api/sessions", Some(ADMIN_TOKEN), "")
        .await?
        .json()?;
    let list = sessions["sessions"].as_array().context("sessions")?;
    assert_eq!(list.len(), 2);
    let mine = list
        .iter()
        .find(|s| s["id"] == hooked.id().as_str())
        .context("the hooked session is listed")?;
    assert_eq!(mine["token_name"], "authtokens[0]");
    assert!(mine["remote_addr"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.")));
    let since = mine["connected_since"].as_str().context("since")?;
    assert!(
        since.len() >= 20 && since.contains('T') && since.ends_with('Z'),
        "{since}"
    );
    assert!(mine["client_info"].as_array().is_some_and(|c| c
        .iter()
        .any(|i| i.as_str().is_some_and(|i| i.starts_with("observer/1.0")))));
    assert_eq!(mine["endpoints"].as_array().map(Vec::len), Some(2));

    // A connection through the edge-terminated endpoint shows in /api/endpoints.
    let tls = tls_connect(edge.tls_addr(), "term.observe.test", &pki.ca_pem).await?;
    echo_check(tls, &pseudo_random(10_000, 3)).await?;
    let endpoint = |eps: &Value| -> Result<Value> {
        eps["endpoints"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["url"] == term.url()).cloned())
            .context("the endpoint is listed")
    };
    let mut listed = Value::Null;
    for _ in 0..100 {
        let eps = bodies
            .admin(&edge, "GET", "/api/endpoints", Some(ADMIN_TOKEN), "")
            .await?
            .json()?;
        listed = endpoint(&eps)?;
        if listed["connections_open"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed["proto"], "tls");
    assert_eq!(listed["termination"], "edge");
    assert_eq!(listed["session_id"], hooked.id().as_str());
    assert_eq!(listed["connections_total"], 1);
    assert_eq!(listed["connections_open"], 0);
    assert!(listed["bytes_in"].as_u64().is_some_and(|b| b >= 10_000));
    assert!(listed["bytes_out"].as_u64().is_some_and(|b| b >= 10_000));
    // The status page's feed has the same counters and the connection in `recent`.
    let status = bodies
        .admin(&edge, "GET", "/api/status", Some(ADMIN_TOKEN), "")
        .await?
        .json()?;
    let fed = endpoint(&status)?;
    assert_eq!(
        (
            fed["conns"]["count"].as_u64(),
            fed["conns"]["gauge"].as_u64()
        ),
        (Some(1), Some(0))
    );
    let recent = &status["recent"][0];
    assert_eq!(recent["endpoint"], term.url());
    assert_eq!(recent["sni"], "term.observe.test");
    assert_eq!(recent["outcome"], "closed");
    assert!(recent["bytes_in"].as_u64().is_some_and(|b| b >= 10_000));

    // Stop with a reason: the agent's hook gets it, the API answers with its result.
    let path = format!("/api/sessions/{}/stop", hooked.id());
    let stopped = bodies
        .admin(
            &edge,
            "POST",
            &path,
            Some(ADMIN_TOKEN),
            r#"{"reason":"maintenance window"}"#,
        )
        .await?;
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    assert_eq!(stopped.json()?["stopped"], true);
    assert_eq!(
        reasons.lock().expect("lock").as_slice(),
        &[Some("maintenance window".to_owned())]
    );
    // Without a body: no reason.
    let stopped = bodies
        .admin(&edge, "POST", &path, Some(ADMIN_TOKEN), "")
        .await?;
    assert_eq!(stopped.status, 200);
    assert_eq!(reasons.lock().expect("lock").last(), Some(&None));
    // A session without a hook closes, as ngrok's default.
    let path = format!("/api/sessions/{}/stop", plain.id());
    let stopped = bodies
        .admin(
            &edge,
            "POST",
            &path,
            Some(ADMIN_TOKEN),
            r#"{"reason":"bye"}"#,
        )
        .await?;
    assert_eq!(stopped.status, 200);
    assert!(eventually(WAIT, || edge.session_count() == 1).await);
    // Unknown session, bad JSON, unknown route.
    let gone = bodies
        .admin(
            &edge,
            "POST",
            "/api/sessions/nope/stop",
            Some(ADMIN_TOKEN),
            "",
        )
        .await?;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json()?["error"]["code"], "CLOSED");
    let bad = bodies
        .admin(&edge, "POST", "/api/drain", Some(ADMIN_TOKEN), "{not json")
        .await?;
    assert_eq!(bad.status, 400);
    assert!(!edge.is_draining());
    let huge = "x".repeat(64 * 1024);
    let too_big = bodies
        .admin(&edge, "POST", "/api/drain", Some(ADMIN_TOKEN), &huge)
        .await?;
    assert_eq!(too_big.status, 413);
    let nothing = bodies
        .admin(&edge, "GET", "/api/nothing", Some(ADMIN_TOKEN), "")
        .await?;
    assert_eq!(nothing.status, 404);

    // No response, no metric and no Debug output carries a secret.
    bodies.push(edge.metrics_text());
    bodies.push(format!("{:?}", config()));
    bodies.assert_no_secret(&[
        AUTHTOKEN,
        ADMIN_TOKEN,
        &edge_cert.key,
        &agent_cert.key,
        // The PEM body alone, in case a response re-wrapped it.
        edge_cert.key.lines().nth(1).unwrap_or("x"),
        agent_cert.key.lines().nth(1).unwrap_or("x"),
    ]);
    Ok(())
}

/// A passthrough endpoint on `edge` and one open client connection through it.
async fn open_connection(
    edge: &Edge,
) -> Result<(Session, burrow_core::agent::Forwarder, Echo, ClientTls)> {
    let pki = Pki::new("drain CA");
    let cert = pki.leaf(&["drain.observe.test"]);
    let service = tls_echo_server(&cert).await;
    let session = session(edge).await?;
    let fwd = session
        .tls_endpoint()
        .domain("drain.observe.test")
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let mut tls = tls_connect(edge.tls_addr(), "drain.observe.test", &pki.ca_pem).await?;
    roundtrip(&mut tls, b"before the drain").await?;
    Ok((session, fwd, service, tls))
}

async fn roundtrip(tls: &mut ClientTls, data: &[u8]) -> Result<()> {
    tls.write_all(data).await?;
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(WAIT, tls.read_exact(&mut back)).await??;
    if back != data {
        bail!("echo differs");
    }
    Ok(())
}

#[tokio::test]
async fn drain_refuses_new_sessions_lets_open_connections_finish_then_stops() -> Result<()> {
    let edge = Edge::start(config()).await?;
    let (_session, _fwd, _service, mut tls) = open_connection(&edge).await?;
    let bodies = Bodies::default();
    let drained = edge.drained();
    let drain = bodies
        .admin(&edge, "POST", "/api/drain", Some(ADMIN_TOKEN), "")
        .await?;
    assert_eq!(drain.status, 202);
    let status = bodies
        .admin(&edge, "GET", "/api/status", Some(ADMIN_TOKEN), "")
        .await?
        .json()?;
    assert_eq!(status["draining"], true);
    assert_eq!(status["connections_active"], 1);

    // A new agent is refused with a clear code.
    let refused = session(&edge)
        .await
        .err()
        .context("a new session is refused")?;
    let refused = refused
        .downcast_ref::<burrow_core::Error>()
        .context("a burrow error")?;
    assert_eq!(refused.code(), ErrorCode::EdgeDraining, "{refused}");
    // The public listener is closed: new connections are not taken.
    let mut closed = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(edge.tls_addr())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "the public listener still accepts while draining");
    // The open connection keeps working, and the edge waits for it.
    roundtrip(&mut tls, b"during the drain").await?;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), edge.drained())
            .await
            .is_err(),
        "the edge waits for the open connection"
    );
    roundtrip(&mut tls, b"still during the drain").await?;
    drop(tls);
    tokio::time::timeout(WAIT, drained)
        .await
        .context("the edge stops once the last connection ends")?;
    Ok(())
}

#[tokio::test]
async fn drain_stops_the_edge_at_its_deadline() -> Result<()> {
    let edge = Edge::start(config()).await?;
    let (_session, _fwd, _service, mut tls) = open_connection(&edge).await?;
    let start = std::time::Instant::now();
    edge.drain(Some(Duration::from_secs(1)));
    assert!(edge.is_draining());
    roundtrip(&mut tls, b"still here").await?;
    tokio::time::timeout(WAIT, edge.drained())
        .await
        .context("the edge stops at the deadline")?;
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");
    // The stopped edge ended the connection.
    let mut buf = [0u8; 1];
    let end = tokio::time::timeout(WAIT, tls.read(&mut buf)).await?;
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    Ok(())
}

#[test]
fn admin_addr_needs_a_token_and_debug_redacts_it() {
    let err = EdgeConfig::from_toml("admin_addr = \"127.0.0.1:9900\"\n").expect_err("refused");
    assert_eq!(err.code(), ErrorCode::Config);
    assert!(
        err.message().contains("admin_addr") && err.message().contains("admin_token"),
        "{err}"
    );
    assert!(err.message().starts_with("line 1: "), "{err}");
    let ok = EdgeConfig::from_toml(&format!(
        "admin_addr = \"127.0.0.1:9900\"\nadmin_token = \"{ADMIN_TOKEN}\"\nmetrics_addr = \"127.0.0.1:9901\"\nmetrics_per_endpoint = true\n"
    ))
    .expect("valid");
    assert_eq!(
        ok.metrics_addr,
        Some("127.0.0.1:9901".parse().expect("addr"))
    );
    assert!(!format!("{ok:?}").contains(ADMIN_TOKEN));
    assert!(
        EdgeConfig::from_toml("admin_addr = \"127.0.0.1:9900\"\nadmin_token = \"short\"\n")
            .is_err()
    );
}

#[tokio::test]
async fn per_endpoint_metrics_are_opt_in() -> Result<()> {
    let edge = Edge::start(config()).await?;
    let s = session(&edge).await?;
    let service = echo_server().await;
    let fwd = s
        .tcp_endpoint()
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let text = edge.metrics_text();
    assert!(!text.contains("burrow_edge_endpoint_connections"));
    assert!(!text.contains(fwd.url()));
    let edge = Edge::start(EdgeConfig {
        metrics_per_endpoint: true,
        ..config()
    })
    .await?;
    let s = session(&edge).await?;
    let fwd = s
        .tcp_endpoint()
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", url_port(fwd.url()))).await?;
    echo_check(tcp, b"counted per endpoint").await?;
    let url = fwd.url().to_owned();
    assert!(
        eventually(WAIT, || {
            let scraped = parse(&edge.metrics_text()).expect("parses");
            value(
                &scraped,
                "burrow_edge_endpoint_connections_total",
                &[("endpoint", &url)],
            ) == 1.0
                && value(
                    &scraped,
                    "burrow_edge_endpoint_bytes_in_total",
                    &[("endpoint", &url)],
                ) >= 20.0
        })
        .await
    );
    Ok(())
}

#[tokio::test]
async fn burrow_edge_prints_its_metrics_and_admin_addresses_and_exits_0_after_a_drain() -> Result<()>
{
    let config = temp_file(
        "observe-edge.toml",
        &format!(
            "metrics_addr = \"127.0.0.1:0\"\nadmin_addr = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n[[authtokens]]\ntoken = \"{AUTHTOKEN}\"\n"
        ),
    )?;
    let mut edge = Proc::spawn(
        &["edge", "--config", config.to_str().unwrap_or_default()],
        &[],
    )?;
    let metrics = edge.field("metrics:").await?;
    let admin = edge.field("admin:").await?;
    let metrics: SocketAddr = metrics
        .strip_prefix("http://")
        .and_then(|m| m.strip_suffix("/metrics"))
        .context("metrics: http://ADDR/metrics")?
        .parse()?;
    let admin: SocketAddr = admin
        .strip_prefix("http://")
        .and_then(|m| m.strip_suffix("/api/status"))
        .context("admin: http://ADDR/api/status")?
        .parse()?;
    let scraped = request(metrics, "GET", "/metrics", None, "").await?;
    assert_eq!(scraped.status, 200);
    assert_eq!(
        value(&parse(&scraped.body)?, "burrow_edge_sessions", &[]),
        0.0
    );
    let denied = request(admin, "GET", "/api/status", None, "").await?;
    assert_eq!(denied.status, 401);
    let drain = request(
        admin,
        "POST",
        "/api/drain",
        Some(ADMIN_TOKEN),
        r#"{"deadline_secs": 5}"#,
    )
    .await?;
    assert_eq!(drain.status, 202);
    let status = tokio::time::timeout(WAIT, edge.child.wait()).await??;
    assert!(status.success(), "{status:?}");
    let stderr = edge.wait_stderr().await?;
    assert!(
        !stderr.contains(ADMIN_TOKEN) && !stderr.contains(AUTHTOKEN),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn agents_report_their_heartbeat_round_trips_to_the_edge() -> Result<()> {
    let edge = Edge::start(EdgeConfig {
        heartbeat_ms: 100,
        ..config()
    })
    .await?;
    let agent = session(&edge).await?;
    let bodies = Bodies::default();
    // The first round trip rides on the second heartbeat (a tenth of a second later).
    let mut reported = Value::Null;
    for _ in 0..100 {
        let sessions = bodies
            .admin(&edge, "GET", "/api/sessions", Some(ADMIN_TOKEN), "")
            .await?
            .json()?;
        reported = sessions["sessions"][0]["heartbeat_ms"].clone();
        if reported.is_number() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ms = reported.as_f64().context("no heartbeat_ms reported")?;
    assert!(ms > 0.0 && ms < 10_000.0, "{ms}");
    let scraped = scrape(&edge).await?;
    assert!(observations(&scraped, "burrow_edge_heartbeat_rtt_seconds") >= 1.0);
    agent.close().await;
    Ok(())
}
