//! What an agent shows of itself: its Prometheus metrics (read by a real parser), the
//! agent API in ngrok's shapes (read by curl), and the CLI's web_addr and metrics_addr.

use crate::cli::Proc;
use crate::common::*;
use anyhow::{anyhow, Context, Result};
use burrow_core::agent::{AgentApi, ApiKind};
use burrow_core::{Session, Upstream};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Parses Prometheus text with the `prometheus-parse` crate.
fn scrape(text: &str) -> Result<prometheus_parse::Scrape> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    Ok(prometheus_parse::Scrape::parse(lines)?)
}

/// The value of sample `metric` labelled `endpoint=url` (or unlabelled when `url` is
/// empty).
fn sample(scrape: &prometheus_parse::Scrape, metric: &str, url: &str) -> Result<f64> {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && (url.is_empty() || s.labels.get("endpoint") == Some(url)));
    match found.map(|s| &s.value) {
        Some(prometheus_parse::Value::Counter(v))
        | Some(prometheus_parse::Value::Gauge(v))
        | Some(prometheus_parse::Value::Untyped(v)) => Ok(*v),
        Some(other) => Err(anyhow!("{metric}: unexpected value {other:?}")),
        None => Err(anyhow!("no sample {metric} for {url:?}")),
    }
}

/// Sends `len` bytes through a TCP endpoint and reads them back, then closes.
async fn echo_once(url: &str, len: usize) -> Result<SocketAddr> {
    let mut tcp = TcpStream::connect(("127.0.0.1", url_port(url))).await?;
    let local = tcp.local_addr()?;
    let data = pseudo_random(len, len as u64);
    tcp.write_all(&data).await?;
    let mut back = vec![0; len];
    tcp.read_exact(&mut back).await?;
    assert_eq!(back, data, "echoed bytes differ");
    tcp.shutdown().await?;
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).await?;
    Ok(local)
}

/// Runs curl (a real HTTP client) and returns the status and body.
async fn curl(url: &str, args: &[&str]) -> Result<(u16, String)> {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .await
        .context("run curl")?;
    let text = String::from_utf8(out.stdout)?;
    let (body, code) = text
        .rsplit_once('\n')
        .ok_or_else(|| anyhow!("curl printed no status"))?;
    Ok((code.trim().parse()?, body.to_owned()))
}

async fn curl_json(url: &str) -> Result<Value> {
    let (status, body) = curl(url, &[]).await?;
    anyhow::ensure!(status == 200, "GET {url}: {status} {body}");
    Ok(serde_json::from_str(&body)?)
}

/// Waits until every connection the session counted has ended on the agent's side.
async fn settled(session: &Session) -> bool {
    eventually(Duration::from_secs(10), || {
        session
            .status()
            .endpoints
            .iter()
            .all(|e| e.conns.gauge == 0)
    })
    .await
}

#[tokio::test]
async fn agent_metrics_count_connections_bytes_and_dial_failures() -> Result<()> {
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    let echo = echo_server().await;
    let up: Upstream = format!("tcp://{}", echo.addr).parse()?;
    let fwd = session.tcp_endpoint().listen_and_forward(up).await?;
    let dead_port = free_port()?;
    let dead: Upstream = format!("tcp://127.0.0.1:{dead_port}").parse()?;
    let broken = session.tcp_endpoint().listen_and_forward(dead).await?;

    let before = scrape(&session.metrics_text())?;
    assert_eq!(sample(&before, "burrow_agent_endpoints", "")?, 2.0);
    assert_eq!(
        sample(&before, "burrow_agent_connections_total", fwd.url())?,
        0.0
    );

    let mut clients = Vec::new();
    for len in [1_000, 20_000, 300] {
        clients.push(echo_once(fwd.url(), len).await?);
    }
    // The dead upstream: the agent's dial fails and the client's connection is closed.
    let mut tcp = TcpStream::connect(("127.0.0.1", url_port(broken.url()))).await?;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut sink)).await;
    assert!(settled(&session).await, "connections did not end");

    let after = scrape(&session.metrics_text())?;
    let url = fwd.url();
    assert_eq!(sample(&after, "burrow_agent_connections_total", url)?, 3.0);
    assert_eq!(sample(&after, "burrow_agent_connections_open", url)?, 0.0);
    assert_eq!(
        sample(&after, "burrow_agent_bytes_in_total", url)?,
        21_300.0
    );
    assert_eq!(
        sample(&after, "burrow_agent_bytes_out_total", url)?,
        21_300.0
    );
    assert_eq!(
        sample(&after, "burrow_agent_upstream_dial_failures_total", url)?,
        0.0
    );
    assert_eq!(
        sample(
            &after,
            "burrow_agent_upstream_dial_failures_total",
            broken.url()
        )?,
        1.0
    );
    assert_eq!(
        sample(&after, "burrow_agent_connections_total", broken.url())?,
        1.0
    );
    assert_eq!(sample(&after, "burrow_agent_tunnels_connected", "")?, 1.0);
    assert_eq!(sample(&after, "burrow_agent_reconnects_total", "")?, 0.0);

    // The same numbers in the status the agent API and the console read.
    let status = session.status();
    assert_eq!(status.status, "online");
    let ep = status
        .endpoints
        .iter()
        .find(|e| e.url == url)
        .ok_or_else(|| anyhow!("endpoint missing from status"))?;
    assert_eq!((ep.conns.count, ep.conns.gauge), (3, 0));
    assert_eq!((ep.bytes_in, ep.bytes_out), (21_300, 21_300));
    assert!(ep.conns.rate1 > 0.0 && ep.conns.p50 > 0.0, "{:?}", ep.conns);
    assert_eq!(ep.forwards_to, format!("tcp://{}", echo.addr));
    let failed = status
        .recent
        .iter()
        .find(|r| r.endpoint == broken.url())
        .ok_or_else(|| anyhow!("the failed connection is not in the recent list"))?;
    assert!(
        failed.outcome.starts_with("upstream dial failed"),
        "{}",
        failed.outcome
    );
    for client in clients {
        let record = status
            .recent
            .iter()
            .find(|r| r.client_addr == client)
            .ok_or_else(|| anyhow!("client {client} is not in the recent list"))?;
        assert_eq!(record.outcome, "closed");
        assert!(record.duration.is_some());
    }

    // A closed endpoint leaves the metrics and the status.
    broken.close();
    let gone = eventually(Duration::from_secs(5), || {
        !session.metrics_text().contains(broken.url())
    })
    .await;
    assert!(gone, "a closed endpoint is still exported");
    session.close().await;
    Ok(())
}

#[tokio::test]
async fn agent_api_answers_in_ngrok_shapes() -> Result<()> {
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    let echo = echo_server().await;
    let up: Upstream = format!("tcp://{}", echo.addr).parse()?;
    let fwd = session.tcp_endpoint().listen_and_forward(up).await?;
    let api = AgentApi::serve(&session, "127.0.0.1:0".parse()?, ApiKind::Full).await?;
    let base = format!("http://{}", api.local_addr());
    echo_once(fwd.url(), 4_096).await?;
    assert!(settled(&session).await);

    let tunnels = curl_json(&format!("{base}/api/tunnels")).await?;
    assert_eq!(tunnels["uri"], "/api/tunnels");
    let t = &tunnels["tunnels"][0];
    assert_eq!(t["public_url"], fwd.url());
    assert_eq!(t["proto"], "tcp");
    assert_eq!(t["config"]["addr"], format!("tcp://{}", echo.addr));
    assert_eq!(t["metrics"]["conns"]["count"], 1);
    assert_eq!(t["metrics"]["conns"]["gauge"], 0);
    let name = t["name"].as_str().ok_or_else(|| anyhow!("no name"))?;
    let one = curl_json(&format!("{base}/api/tunnels/{name}")).await?;
    assert_eq!(one["public_url"], fwd.url());

    let endpoints = curl_json(&format!("{base}/api/endpoints")).await?;
    let e = &endpoints["endpoints"][0];
    assert_eq!(e["url"], fwd.url());
    assert_eq!(e["upstream"]["url"], format!("tcp://{}", echo.addr));
    assert_eq!(
        (e["bytes_in"].as_u64(), e["bytes_out"].as_u64()),
        (Some(4_096), Some(4_096))
    );

    let status = curl_json(&format!("{base}/api/status")).await?;
    assert_eq!(status["id"], session.id());
    assert_eq!(status["recent"][0]["outcome"], "closed");

    let (code, body) = curl(&format!("{base}/api/tunnels/nope"), &[]).await?;
    assert_eq!(code, 404);
    let err: Value = serde_json::from_str(&body)?;
    assert_eq!(err["status_code"], 404);
    let (code, _) = curl(&format!("{base}/api/tunnels"), &["-X", "DELETE"]).await?;
    assert_eq!(code, 405);

    let (code, metrics) = curl(&format!("{base}/metrics"), &[]).await?;
    assert_eq!(code, 200);
    let parsed = scrape(&metrics)?;
    assert_eq!(
        sample(&parsed, "burrow_agent_connections_total", fwd.url())?,
        1.0
    );

    // A metrics-only listener serves nothing else.
    let metrics_only =
        AgentApi::serve(&session, "127.0.0.1:0".parse()?, ApiKind::MetricsOnly).await?;
    let other = format!("http://{}", metrics_only.local_addr());
    assert_eq!(curl(&format!("{other}/api/tunnels"), &[]).await?.0, 404);
    assert_eq!(curl(&format!("{other}/metrics"), &[]).await?.0, 200);

    // Dropping the API stops it.
    drop(api);
    let stopped = async {
        loop {
            if curl(&format!("{base}/api"), &[])
                .await
                .map_or(true, |r| r.0 == 0)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .context("the agent API still answers after drop")?;
    session.close().await;
    Ok(())
}

#[tokio::test]
async fn cli_serves_web_addr_and_metrics_addr() -> Result<()> {
    let echo = echo_server().await;
    let upstream = echo.addr.to_string();
    let mut proc = Proc::spawn(
        &[
            "tcp",
            &upstream,
            "--web-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        &[],
    )?;
    let forwarding = proc.line_with("Forwarding").await?;
    let url = forwarding
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("no URL in {forwarding:?}"))?
        .to_owned();
    let web = proc.field("Web Interface: ").await?;
    let web = web
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow!("no address"))?
        .to_owned();
    let metrics = proc.field("Metrics: ").await?;
    echo_once(&url, 100).await?;

    // The CLI's endpoint is named as ngrok names it.
    let ok = async {
        loop {
            let t = curl_json(&format!("{web}/api/tunnels/command_line")).await?;
            if t["metrics"]["conns"]["count"] == 1 && t["metrics"]["conns"]["gauge"] == 0 {
                return anyhow::Ok(t);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let t = tokio::time::timeout(Duration::from_secs(10), ok).await??;
    assert_eq!(t["public_url"], url);
    let (_, text) = curl(&metrics, &[]).await?;
    let parsed = scrape(&text)?;
    assert_eq!(sample(&parsed, "burrow_agent_bytes_in_total", &url)?, 100.0);
    proc.kill_and_stderr().await?;

    // A bad address is refused with the flag's name.
    let bad = Proc::spawn(&["tcp", &upstream, "--web-addr", "here"], &[])?;
    let stderr = bad.wait_stderr().await?;
    assert!(stderr.contains("--web-addr"), "{stderr}");
    assert!(
        stderr.contains("false to turn the agent API off"),
        "{stderr}"
    );
    Ok(())
}
