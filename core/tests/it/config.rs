//! The v3 agent config file: the seed examples, `burrow start`, `burrow config check`.

use crate::cli::{parse_hint, temp_file, Proc};
use crate::common::*;
use anyhow::{anyhow, Result};
use burrow_core::config::AgentConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The seed's "Cloud service" config, as written except for the upstream port
/// (the seed's port 80 is the user's service; the test's service listens elsewhere).
fn seed_cloud(port: u16) -> String {
    format!(
        "version: 3
endpoints:
  - name: example
    url: tls://your-name.ngrok.app
    upstream:
      url: {port}
    traffic_policy:
      on_tcp_connect:
        - actions:
            - type: terminate-tls
"
    )
}

/// The seed's "Terminate at Upstream" config, as written except for the upstream port.
fn seed_upstream(port: u16) -> String {
    format!(
        "version: 3
endpoints:
  - name: example
    url: tls://app.example.com
    upstream:
      url: localhost:{port}
"
    )
}

#[tokio::test]
async fn seed_cloud_service_config_runs_on_the_embedded_edge() -> Result<()> {
    let service = echo_server().await;
    let file = temp_file("seed-cloud.yml", &seed_cloud(service.addr.port()))?;
    let mut proc = Proc::spawn(
        &[
            "start",
            "--config",
            file.to_str().unwrap_or_default(),
            "--all",
        ],
        &[],
    )?;
    let line = proc.line_with("forwarding").await?;
    assert!(
        line.starts_with("example: forwarding tls://your-name.ngrok.app:"),
        "{line}"
    );
    assert!(line.contains("terminated at edge"), "{line}");
    let (addr, name, ca) = parse_hint(&proc.line_with("openssl s_client").await?)?;
    let ca =
        std::fs::read_to_string(ca.ok_or_else(|| anyhow!("edge termination prints -CAfile"))?)?;
    let tls = tls_connect(addr, &name, &ca).await?;
    echo_check(tls, &pseudo_random(MIB, 40)).await
}

#[tokio::test]
async fn seed_terminate_at_upstream_config_runs_on_the_embedded_edge() -> Result<()> {
    let pki = Pki::new("service CA");
    let cert = pki.leaf(&["app.example.com"]);
    let service = tls_echo_server(&cert).await;
    let file = temp_file("seed-upstream.yml", &seed_upstream(service.addr.port()))?;
    let mut proc = Proc::spawn(
        &[
            "start",
            "--config",
            file.to_str().unwrap_or_default(),
            "example",
        ],
        &[],
    )?;
    let line = proc.line_with("forwarding").await?;
    assert!(line.contains("terminated at upstream"), "{line}");
    let (addr, name, _) = parse_hint(&proc.line_with("openssl s_client").await?)?;
    let tls = tls_connect(addr, &name, &pki.ca_pem).await?;
    assert_eq!(peer_cert(&tls), cert.der());
    echo_check(tls, &pseudo_random(MIB, 41)).await
}

#[tokio::test]
async fn config_check_explains_errors_with_line_numbers() -> Result<()> {
    let good = temp_file("good.yml", &seed_cloud(8080))?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["config", "check"])
        .arg(&good)
        .output()?;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok, 1 endpoint(s): example"));

    let bad = temp_file("bad.yml", "version: 3\nendpoints:\n  - name: example\n    url: tls://a.test\n    upstream:\n      url: 80\n      proxy: 2\n")?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["config", "check"])
        .arg(&bad)
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field `proxy`") && err.contains("line 7"),
        "{err}"
    );

    let policy = temp_file(
        "bad-policy.yml",
        "version: 3\nendpoints:\n  - name: first\n    upstream: {url: 1}\n  - name: second\n    url: tls://b.test\n    upstream: {url: 2}\n    traffic_policy:\n      on_tcp_connect:\n        - actions:\n            - type: terminate-tls\n              config: {max_version: \"1.1\"}\n",
    )?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["config", "check"])
        .arg(&policy)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("endpoints[1] (\"second\", line 5)")
            && err.contains("traffic_policy.on_tcp_connect[0].actions[0].config.max_version: \"1.1\" is not supported"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_burrow"))
        .args(["start", "--config"])
        .arg(&good)
        .output()?;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--all"),
        "start without names says what to do"
    );
    Ok(())
}

#[tokio::test]
async fn agent_tls_termination_mtls_and_proxy_protocol_from_the_file() -> Result<()> {
    let edge = open_edge().await;
    let pki = Pki::new("agent CA");
    let cert = pki.leaf(&["files.example.com"]);
    let clients = Pki::new("client CA");
    let crt = temp_file("files-crt.pem", &cert.crt)?;
    let key = temp_file("files-key.pem", &cert.key)?;
    let cas = temp_file("files-cas.pem", &clients.ca_pem)?;
    let edge_ca = temp_file("files-edge-ca.pem", edge.ca_pem())?;
    // An upstream that reads a PROXY v2 header and reports the source port it names.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let up_port = listener.local_addr()?.port();
    let upstream = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut head = [0u8; 16];
        s.read_exact(&mut head).await?;
        let len = u16::from_be_bytes([head[14], head[15]]) as usize;
        let mut rest = vec![0u8; len];
        s.read_exact(&mut rest).await?;
        let whole = [head.to_vec(), rest].concat();
        let port = match ppp::v2::Header::try_from(&whole[..])
            .map_err(|e| anyhow!("{e:?}"))?
            .addresses
        {
            ppp::v2::Addresses::IPv4(a) => a.source_port,
            other => return Err(anyhow!("unexpected {other:?}")),
        };
        s.write_all(b"pong").await?;
        anyhow::Ok(port)
    });
    let text = format!(
        "version: 3
agent:
  connect_url: {tunnel}
  root_cas: {edge_ca}
endpoints:
  - name: files
    description: agent termination from files
    url: tls://files.example.com
    upstream:
      url: 127.0.0.1:{up_port}
      proxy_protocol: 2
    agent_tls_termination:
      server_certificate: {crt}
      server_private_key: {key}
      mutual_tls_certificate_authorities: [{cas}]
",
        tunnel = edge.tunnel_addr(),
        edge_ca = edge_ca.display(),
        crt = crt.display(),
        key = key.display(),
        cas = cas.display(),
    );
    let config = AgentConfig::from_yaml(&text, std::path::Path::new("/"))?;
    let session = config.session_builder().connect().await?;
    let fwd = config.select(&[])?[0].start(&session).await?;
    assert_eq!(fwd.terminate_at(), burrow_core::TerminateAt::Agent);
    assert!(edge
        .route("files.example.com")
        .expect("route")
        .edge_tls
        .is_none());

    let no_cert = tls_connect(edge.tls_addr(), "files.example.com", &pki.ca_pem).await;
    if let Ok(mut tls) = no_cert {
        let _ = tls.write_all(b"ping").await;
        let mut buf = Vec::new();
        let r = tls.read_to_end(&mut buf).await;
        assert!(
            r.is_err() || buf.is_empty(),
            "a client without certificate is refused"
        );
    }
    let config_ok = client_config_with(
        &pki.ca_pem,
        &[&rustls::version::TLS13],
        Some(&clients.client("bob")),
        &[],
    );
    let mut tls = tls_connect_with(edge.tls_addr(), "files.example.com", config_ok).await?;
    let client_port = tls.get_ref().0.local_addr()?.port();
    tls.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"pong");
    assert_eq!(
        upstream.await??,
        client_port,
        "PROXY v2 names the real client"
    );
    Ok(())
}

#[tokio::test]
async fn seed_cloud_service_cli_with_a_traffic_policy_file() -> Result<()> {
    let service = echo_server().await;
    let policy = temp_file(
        "traffic-policy.yml",
        "on_tcp_connect:\n  - actions:\n      - type: terminate-tls\n",
    )?;
    let port = service.addr.port().to_string();
    let mut proc = Proc::spawn(
        &[
            "tls",
            &port,
            "--url",
            "tls://your-name.ngrok.app",
            "--traffic-policy-file",
            policy.to_str().unwrap_or_default(),
        ],
        &[],
    )?;
    let line = proc.line_with("Forwarding").await?;
    assert!(line.contains("terminated at edge"), "{line}");
    let (addr, name, ca) = parse_hint(&proc.line_with("openssl s_client").await?)?;
    let ca = std::fs::read_to_string(ca.ok_or_else(|| anyhow!("-CAfile"))?)?;
    echo_check(tls_connect(addr, &name, &ca).await?, b"seed cli").await
}

#[tokio::test]
async fn pooling_enabled_in_the_file_lets_two_agents_serve_one_endpoint() -> Result<()> {
    let edge = open_edge().await;
    let edge_ca = temp_file("pool-config-ca.pem", edge.ca_pem())?;
    let pki = Pki::new("pooled service");
    let leaf = pki.leaf(&["pooled.example.com"]);
    let mut forwarders = Vec::new();
    for name in ["first", "second"] {
        let service = tls_name_server(&leaf, name).await;
        let text = format!(
            "version: 3
agent:
  connect_url: {tunnel}
  root_cas: {edge_ca}
endpoints:
  - name: pooled
    url: tls://pooled.example.com
    pooling_enabled: true
    upstream:
      url: {upstream}
",
            tunnel = edge.tunnel_addr(),
            edge_ca = edge_ca.display(),
            upstream = service.addr,
        );
        let config = AgentConfig::from_yaml(&text, std::path::Path::new("/"))?;
        assert!(config.endpoints[0].spec.pooling_enabled);
        let session = config.session_builder().connect().await?;
        let fwd = config.select(&[])?[0].start(&session).await?;
        forwarders.push((service, session, fwd));
    }
    let mut answers = Vec::new();
    for _ in 0..2 {
        let mut tls = tls_connect(edge.tls_addr(), "pooled.example.com", &pki.ca_pem).await?;
        let mut got = String::new();
        tls.read_to_string(&mut got).await?;
        answers.push(got);
    }
    answers.sort();
    assert_eq!(answers, ["first", "second"]);
    Ok(())
}
