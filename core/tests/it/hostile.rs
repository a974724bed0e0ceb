//! Hostile input: slow, oversized, garbage and SNI-less clients; name grabs; token
//! guessing; oversized control messages; secrets in logs.

use crate::cli::{temp_file, Proc};
use crate::common::*;
use anyhow::{anyhow, Result};
use burrow_core::edge::TokenRule;
use burrow_core::wire::EdgeMsg;
use burrow_core::{Edge, EdgeConfig, ErrorCode, Session, TerminateAt};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The first bytes of a real ClientHello for `name`, as a client would send them.
async fn hello_bytes(name: &str) -> Result<Vec<u8>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let name = name.to_owned();
    let client = tokio::spawn(async move { tls_connect(addr, &name, &Pki::new("x").ca_pem).await });
    let (mut s, _) = listener.accept().await?;
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await?;
    drop(s);
    let _ = client.await;
    buf.truncate(n);
    Ok(buf)
}

async fn echo_edge(handshake_timeout_ms: u64) -> Result<(Edge, Session, Echo)> {
    let edge = Edge::start(EdgeConfig {
        open: true,
        handshake_timeout_ms,
        heartbeat_ms: 2_000,
        ..Default::default()
    })
    .await?;
    let session = session_for(&edge).await;
    let service = echo_server().await;
    Ok((edge, session, service))
}

/// Connects a legitimate client while an attack runs; it must be served.
async fn legit_client_works(edge: &Edge, name: &str) -> Result<Duration> {
    let start = Instant::now();
    echo_check(
        tls_connect(edge.tls_addr(), name, edge.ca_pem()).await?,
        &pseudo_random(64 * 1024, 60),
    )
    .await?;
    Ok(start.elapsed())
}

#[tokio::test]
async fn slowloris_is_cut_off_and_others_are_served() -> Result<()> {
    let (edge, session, service) = echo_edge(800).await?;
    let _fwd = session
        .tls_endpoint()
        .domain("legit.test")
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let hello = hello_bytes("legit.test").await?;
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let hello = hello.clone();
        let addr = edge.tls_addr();
        attackers.spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            let started = Instant::now();
            // Trickle the hello one byte at a time, never finishing it.
            for b in &hello[..hello.len() - 1] {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                if started.elapsed() > Duration::from_secs(5) {
                    break;
                }
            }
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
            anyhow::Ok(started.elapsed())
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let took = legit_client_works(&edge, "legit.test").await?;
    assert!(
        took < Duration::from_secs(5),
        "a legitimate client waited {took:?}"
    );
    while let Some(r) = attackers.join_next().await {
        let held = r??;
        assert!(
            held < Duration::from_secs(4),
            "a slow client was held {held:?}, past the 800 ms handshake timeout"
        );
    }
    Ok(())
}

#[tokio::test]
async fn oversized_client_hello_is_refused() -> Result<()> {
    let (edge, _session, _service) = echo_edge(5_000).await?;
    let mut s = TcpStream::connect(edge.tls_addr()).await?;
    // A handshake record announcing a 64 KiB ClientHello, then filler.
    let mut bytes = vec![22u8, 3, 1, 0x40, 0x00, 1, 0x00, 0xff, 0xfc];
    bytes.resize(20 * 1024, 0x41);
    let _ = s.write_all(&bytes).await;
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply)).await??;
    assert_eq!(reply.first(), Some(&21), "a TLS alert record, then close");
    Ok(())
}

#[tokio::test]
async fn a_flood_without_sni_does_not_starve_others() -> Result<()> {
    let (edge, session, service) = echo_edge(5_000).await?;
    let _fwd = session
        .tls_endpoint()
        .domain("named.test")
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..500 {
        let addr = edge.tls_addr();
        let ca = edge.ca_pem().to_owned();
        flood.spawn(async move {
            let mut config = client_config(&ca);
            config.enable_sni = false;
            tls_connect_with(addr, "named.test", config).await.is_err()
        });
    }
    let took = legit_client_works(&edge, "named.test").await?;
    assert!(
        took < Duration::from_secs(5),
        "a legitimate client waited {took:?}"
    );
    let mut refused = 0;
    while let Some(r) = flood.join_next().await {
        refused += usize::from(r?);
    }
    assert_eq!(refused, 500, "every SNI-less client is refused");
    Ok(())
}

#[tokio::test]
async fn wildcards_cannot_shadow_or_be_shadowed_by_another_session() -> Result<()> {
    let edge = open_edge().await;
    let alice = session_for(&edge).await;
    let mallory = session_for(&edge).await;
    let _a = alice
        .tls_endpoint()
        .domain("app.shadow.test")
        .listen()
        .await?;
    let err = mallory
        .tls_endpoint()
        .domain("*.shadow.test")
        .listen()
        .await
        .expect_err("wildcard over a held name");
    assert_eq!(err.code(), ErrorCode::DomainTaken);
    assert!(!err.message().contains("app.shadow.test"), "{err}");
    let _w = alice.tls_endpoint().domain("*.wild.test").listen().await?;
    let err = mallory
        .tls_endpoint()
        .domain("x.wild.test")
        .listen()
        .await
        .expect_err("name under a held wildcard");
    assert_eq!(err.code(), ErrorCode::DomainTaken);
    // The owner may still add names under its own wildcard.
    alice.tls_endpoint().domain("y.wild.test").listen().await?;
    Ok(())
}

#[tokio::test]
async fn guessing_tokens_is_rate_limited() -> Result<()> {
    let edge = Edge::start(EdgeConfig {
        authtokens: vec![TokenRule {
            token: "the-real-token".into(),
            domains: vec!["*".into()],
        }],
        auth_failures_per_minute: 3,
        ..Default::default()
    })
    .await?;
    let attempt = |token: &'static str| {
        Session::builder()
            .server_addr(edge.tunnel_addr().to_string())
            .root_cas(edge.ca_pem())
            .authtoken(token)
            .connect()
    };
    for _ in 0..3 {
        assert_eq!(
            attempt("guess").await.expect_err("wrong").code(),
            ErrorCode::AuthFailed
        );
    }
    let err = attempt("guess").await.expect_err("limited");
    assert_eq!(err.code(), ErrorCode::RateLimited);
    assert!(err.message().contains("retry in"), "{err}");
    // The right token is not locked out by guesses (hardening.rs tests the rule).
    attempt("the-real-token").await?;
    Ok(())
}

#[tokio::test]
async fn an_oversized_control_message_is_refused_with_a_code() -> Result<()> {
    let edge = open_edge().await;
    let agent = RawAgent::connect(&edge).await?;
    let mut raw = agent.control.into_inner();
    raw.write_all(&(8u32 * 1024 * 1024).to_be_bytes()).await?;
    raw.write_all(&[b'{'; 1024]).await?;
    let reply = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let len = raw.read_u32().await? as usize;
            let mut body = vec![0u8; len];
            raw.read_exact(&mut body).await?;
            match serde_json::from_slice::<EdgeMsg>(&body)? {
                EdgeMsg::Heartbeat => continue,
                other => return anyhow::Ok(other),
            }
        }
    })
    .await??;
    match reply {
        EdgeMsg::Error { code, message, .. } => {
            assert_eq!(code, ErrorCode::Protocol);
            assert!(message.contains("limit"), "{message}");
        }
        other => return Err(anyhow!("expected a refusal, got {other:?}")),
    }
    Ok(())
}

#[tokio::test]
async fn secrets_never_reach_logs() -> Result<()> {
    let token = "tok-7f3a9c-never-log-me";
    let pki = Pki::new("secret CA");
    let cert = pki.leaf(&["secret.test"]);
    let key_line = cert
        .key
        .lines()
        .nth(1)
        .ok_or_else(|| anyhow!("key body"))?
        .to_owned();
    let state = std::env::temp_dir().join(format!("burrow-secret-{}", std::process::id()));
    let config = temp_file(
        "secret-edge.toml",
        &format!(
            "state_dir = {state:?}\n[[authtokens]]\ntoken = \"{token}\"\ndomains = [\"*.test\"]\n"
        ),
    )?;
    let mut edge = Proc::spawn(
        &["edge", "--config", config.to_str().unwrap_or_default()],
        &[("RUST_LOG", "trace")],
    )?;
    let (tunnel, tls_addr) = edge.edge_addrs().await?;
    let ca = state.join("ca.pem");
    let crt = temp_file("secret-crt.pem", &cert.crt)?;
    let key = temp_file("secret-key.pem", &cert.key)?;
    let service = echo_server().await;
    let up = service.addr.to_string();
    let args = |tok_ok: bool| {
        vec![
            "tls".to_owned(),
            up.clone(),
            "--url".into(),
            "tls://secret.test".into(),
            "--crt".into(),
            crt.display().to_string(),
            "--key".into(),
            key.display().to_string(),
            "--server-addr".into(),
            tunnel.clone(),
            "--root-cas".into(),
            ca.display().to_string(),
            "--authtoken".into(),
            if tok_ok {
                token.to_owned()
            } else {
                format!("{token}-wrong")
            },
        ]
    };
    let bad_args = args(false);
    let bad = Proc::spawn(
        &bad_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("RUST_LOG", "trace")],
    )?;
    let bad_logs = tokio::time::timeout(Duration::from_secs(30), bad.wait_stderr()).await??;
    assert!(bad_logs.contains("AUTH_FAILED"), "{bad_logs}");
    let good_args = args(true);
    let mut agent = Proc::spawn(
        &good_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("RUST_LOG", "trace")],
    )?;
    agent.line_with("Forwarding").await?;
    echo_check(
        tls_connect(tls_addr, "secret.test", &pki.ca_pem).await?,
        b"secret traffic",
    )
    .await?;
    let logs = [
        bad_logs,
        agent.kill_and_stderr().await?,
        edge.kill_and_stderr().await?,
    ]
    .join("\n");
    assert!(
        logs.len() > 1000,
        "trace logging was captured ({} bytes)",
        logs.len()
    );
    assert!(!logs.contains(token), "the authtoken appeared in a log");
    assert!(
        !logs.contains(&key_line),
        "private key material appeared in a log"
    );
    let _ = std::fs::remove_dir_all(&state);

    // Debug output of the types that carry secrets.
    let rule = TokenRule {
        token: token.into(),
        domains: vec![],
    };
    assert!(!format!("{rule:?}").contains(token));
    let builder = Session::builder().authtoken(token);
    assert!(!format!("{builder:?}").contains(token));
    let spec = burrow_core::agent::TlsMaterial {
        cert: Some(burrow_core::agent::CertPem {
            crt: cert.crt.clone(),
            key: burrow_core::wire::SecretPem(cert.key.clone()),
        }),
        ..Default::default()
    };
    assert!(!format!("{spec:?}").contains(&key_line));
    Ok(())
}
