//! Hardening round two (issue 14): unauthenticated tunnel sockets, reconnect loops on
//! errors that repeat, truncation reaching the client, and leaks at the margins.

use crate::common::*;
use anyhow::{anyhow, Context, Result};
use burrow_core::edge::TokenRule;
use burrow_core::tls::tunnel_client_config;
use burrow_core::{Edge, EdgeConfig, ErrorCode, Session, TerminateAt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A TCP connection to `to` from the loopback address `from` (all of 127/8 is loopback).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// Finishes the tunnel's TLS handshake from `from`, then never authenticates; returns
/// how long the edge kept the connection open after the handshake (`None`: the edge
/// refused it before or during the handshake).
async fn idle_tunnel_client(
    edge_tunnel: SocketAddr,
    ca_pem: String,
    from: [u8; 4],
    hold: Duration,
) -> Result<Option<Duration>> {
    let tcp = connect_from(from, edge_tunnel).await?;
    let config = tunnel_client_config(Some(ca_pem.as_bytes()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let Ok(Ok(mut tls)) = tokio::time::timeout(hold, connector.connect(name, tcp)).await else {
        return Ok(None);
    };
    let connected = Instant::now();
    let mut buf = [0u8; 256];
    let ended = tokio::time::timeout(hold, async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    Ok(Some(match ended {
        Ok(()) => connected.elapsed(),
        Err(_) => hold,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_tunnel_connections_are_closed_and_a_real_agent_gets_in() -> Result<()> {
    let edge = Edge::start(EdgeConfig {
        open: true,
        handshake_timeout_ms: 1_000,
        heartbeat_ms: 2_000,
        ..Default::default()
    })
    .await?;
    let service = echo_server().await;
    let hold = Duration::from_secs(8);
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..300 {
        flood.spawn(idle_tunnel_client(
            edge.tunnel_addr(),
            edge.ca_pem().to_owned(),
            [127, 0, 0, 2],
            hold,
        ));
    }
    // While the flood holds its sockets, a real agent connects and serves.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let session = session_for(&edge).await;
    let fwd = session
        .tls_endpoint()
        .domain("during-flood.test")
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    echo_check(
        tls_connect(edge.tls_addr(), &url_host(fwd.url()), edge.ca_pem()).await?,
        &pseudo_random(64 * 1024, 140),
    )
    .await?;
    let (mut closed, mut refused) = (0, 0);
    while let Some(r) = flood.join_next().await {
        match r?? {
            None => refused += 1,
            Some(held) => {
                assert!(
                    held < Duration::from_secs(4),
                    "an unauthenticated tunnel connection was held {held:?}, past the 1 s handshake timeout"
                );
                closed += 1;
            }
        }
    }
    assert_eq!(closed + refused, 300);
    assert!(closed > 0, "some idle clients got past the TLS handshake");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_tunnel_connections_are_bounded_per_address() -> Result<()> {
    let edge = Edge::start(EdgeConfig {
        open: true,
        handshake_timeout_ms: 2_000,
        max_unauthenticated_per_ip: 20,
        ..Default::default()
    })
    .await?;
    let hold = Duration::from_secs(6);
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..60 {
        flood.spawn(idle_tunnel_client(
            edge.tunnel_addr(),
            edge.ca_pem().to_owned(),
            [127, 0, 0, 3],
            hold,
        ));
    }
    // Another address is not counted against the flood's share.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let session = session_for(&edge).await;
    assert!(session.is_open());
    let (mut held, mut refused) = (0, 0);
    while let Some(r) = flood.join_next().await {
        match r?? {
            Some(t) if t >= Duration::from_secs(1) => held += 1,
            _ => refused += 1,
        }
    }
    assert!(
        held <= 20,
        "{held} unauthenticated connections from one address were held"
    );
    assert!(refused >= 40, "only {refused} of 60 were refused");
    Ok(())
}

/// A traffic policy of about `len` bytes (valid YAML: one rule and a long comment).
fn oversized_policy(len: usize) -> String {
    let mut policy = String::from("on_tcp_connect:\n  - actions:\n      - type: deny\n");
    let line = format!("# {}\n", "x".repeat(1000));
    while policy.len() < len {
        policy.push_str(&line);
    }
    policy
}

#[tokio::test]
async fn an_oversized_policy_fails_its_bind_with_a_code_and_the_session_stays() -> Result<()> {
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    let first = session.id();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        session
            .tls_endpoint()
            .traffic_policy(oversized_policy(1_400_000))
            .listen(),
    )
    .await
    .context("the bind must fail at once, not after reconnect cycles")?
    .expect_err("a 1.4 MB policy does not fit in a control message");
    assert_eq!(err.code(), ErrorCode::LimitExceeded, "{err}");
    assert!(err.message().contains("traffic policy"), "{err}");
    // No reconnect happened: the session is the one that sent the bind, and it serves.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(session.id(), first, "the session was not re-established");
    let service = echo_server().await;
    let fwd = session
        .tls_endpoint()
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    echo_check(
        tls_connect(edge.tls_addr(), &url_host(fwd.url()), edge.ca_pem()).await?,
        b"after the refused bind",
    )
    .await?;
    Ok(())
}

fn state_dir(tag: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "burrow-hardening-{tag}-{}-{:x}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[tokio::test]
async fn a_session_whose_token_is_refused_after_a_restart_stops_reconnecting() -> Result<()> {
    let state = state_dir("revoked")?;
    let config = |token: &str| EdgeConfig {
        heartbeat_ms: 2_000,
        state_dir: Some(state.clone()),
        authtokens: vec![TokenRule {
            token: token.into(),
            domains: vec!["*".into()],
        }],
        ..Default::default()
    };
    let edge = Edge::start(config("first-token")).await?;
    let tunnel_addr = edge.tunnel_addr();
    let session = Session::builder()
        .server_addr(tunnel_addr.to_string())
        .root_cas(edge.ca_pem())
        .authtoken("first-token")
        .connect()
        .await?;
    edge.shutdown().await;
    // The restarted edge no longer knows the token: every reconnect would fail alike.
    let _edge = Edge::start(EdgeConfig {
        tunnel_addr,
        ..config("second-token")
    })
    .await?;
    assert!(
        eventually(Duration::from_secs(10), || !session.is_open()).await,
        "a refused authtoken must end the session instead of reconnecting forever"
    );
    let err = session.failure().ok_or_else(|| anyhow!("no failure"))?;
    assert_eq!(err.code(), ErrorCode::AuthFailed, "{err}");
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

/// How the public client saw the end of a response.
#[derive(Debug, PartialEq)]
enum End {
    /// A TLS close_notify after every byte.
    Clean(usize),
    /// The connection was reset.
    Reset,
    /// Some other abnormal end (e.g. EOF without close_notify).
    Abnormal(std::io::ErrorKind),
}

async fn read_until_end(mut tls: ClientTls) -> End {
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
            Err(_) => return End::Abnormal(std::io::ErrorKind::TimedOut),
            Ok(Ok(0)) => return End::Clean(total),
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return End::Reset,
            Ok(Err(e)) => return End::Abnormal(e.kind()),
        }
    }
}

/// A service that sends `len` bytes to each client and then resets (`abort`) or
/// closes cleanly.
async fn sender(len: usize, abort: bool) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(&pseudo_random(len, 141)).await;
                if abort {
                    let _ = s.set_zero_linger();
                } else {
                    let _ = s.shutdown().await;
                }
                drop(s);
            });
        }
    });
    Ok(addr)
}

/// A forwarder for `upstream` in `mode`, and the CA a client must trust for it.
async fn endpoint(
    session: &Session,
    edge: &Edge,
    pki: &Pki,
    name: &str,
    mode: TerminateAt,
    upstream: SocketAddr,
) -> Result<(burrow_core::Forwarder, String)> {
    let builder = session.tls_endpoint().domain(name);
    let (builder, ca) = match mode {
        TerminateAt::Agent => {
            let leaf = pki.leaf(&[name]);
            (
                builder.agent_termination(leaf.crt, leaf.key),
                pki.ca_pem.clone(),
            )
        }
        _ => (builder.terminate_at(mode), edge.ca_pem().to_owned()),
    };
    let fwd = builder
        .listen_and_forward(upstream.to_string().parse()?)
        .await?;
    Ok((fwd, ca))
}

#[tokio::test]
async fn an_upstream_reset_reaches_the_client_as_a_reset_and_a_clean_end_as_clean() -> Result<()> {
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    let pki = Pki::new("truncation CA");
    let aborting = sender(256 * 1024, true).await?;
    let finishing = sender(256 * 1024, false).await?;
    for (mode, tag) in [(TerminateAt::Edge, "edge"), (TerminateAt::Agent, "agent")] {
        let name = format!("reset-{tag}.test");
        let (_fwd, ca) = endpoint(&session, &edge, &pki, &name, mode, aborting).await?;
        let end = read_until_end(tls_connect(edge.tls_addr(), &name, &ca).await?).await;
        assert_eq!(end, End::Reset, "{tag} mode: an upstream reset");

        let name = format!("clean-{tag}.test");
        let (_fwd, ca) = endpoint(&session, &edge, &pki, &name, mode, finishing).await?;
        let end = read_until_end(tls_connect(edge.tls_addr(), &name, &ca).await?).await;
        assert_eq!(end, End::Clean(256 * 1024), "{tag} mode: a clean end");
    }
    Ok(())
}

/// A TCP relay between an agent and the edge's tunnel listener, which the test can cut
/// as if the agent's machine died.
struct Relay {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((mut a, _)) = listener.accept().await {
                pipes.spawn(async move {
                    if let Ok(mut b) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                });
            }
        });
        Ok(Relay { addr, task })
    }

    /// Drops both sides of every relayed connection at once.
    fn cut(&self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn an_agent_that_dies_mid_transfer_reaches_the_client_as_a_reset() -> Result<()> {
    let edge = open_edge().await;
    let pki = Pki::new("dead agent CA");
    let endless = sender(64 * 1024 * 1024, false).await?;
    for (mode, tag) in [(TerminateAt::Edge, "edge"), (TerminateAt::Agent, "agent")] {
        let relay = Relay::start(edge.tunnel_addr()).await?;
        let session = Session::builder()
            .server_addr(relay.addr.to_string())
            .root_cas(edge.ca_pem())
            .connect()
            .await?;
        let name = format!("dies-{tag}.test");
        let (_fwd, ca) = endpoint(&session, &edge, &pki, &name, mode, endless).await?;
        let mut tls = tls_connect(edge.tls_addr(), &name, &ca).await?;
        let mut first = vec![0u8; 128 * 1024];
        tls.read_exact(&mut first).await?;
        relay.cut();
        let end = read_until_end(tls).await;
        assert_eq!(end, End::Reset, "{tag} mode: the agent's tunnel died");
        session.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_refused_wildcard_does_not_name_another_sessions_domain() -> Result<()> {
    let edge = open_edge().await;
    let alice = session_for(&edge).await;
    let mallory = session_for(&edge).await;
    let _a = alice
        .tls_endpoint()
        .domain("secret-app.leak.test")
        .listen()
        .await?;
    let err = mallory
        .tls_endpoint()
        .domain("*.leak.test")
        .listen()
        .await
        .expect_err("wildcard over a held name");
    assert_eq!(err.code(), ErrorCode::DomainTaken);
    assert!(
        !err.message().contains("secret-app"),
        "the refusal names another session's domain: {err}"
    );
    assert!(err.message().contains("*.leak.test"), "{err}");
    Ok(())
}

#[tokio::test]
async fn guessing_from_a_shared_address_does_not_lock_out_a_correct_token() -> Result<()> {
    let edge = Edge::start(EdgeConfig {
        authtokens: vec![TokenRule {
            token: "the-real-token".into(),
            domains: vec!["*".into()],
        }],
        auth_failures_per_minute: 3,
        ..Default::default()
    })
    .await?;
    let attempt = |token: String| {
        Session::builder()
            .server_addr(edge.tunnel_addr().to_string())
            .root_cas(edge.ca_pem())
            .authtoken(token)
            .connect()
    };
    for _ in 0..3 {
        let err = attempt("guess-1".into()).await.expect_err("wrong");
        assert_eq!(err.code(), ErrorCode::AuthFailed);
    }
    let err = attempt("guess-1".into()).await.expect_err("limited");
    assert_eq!(err.code(), ErrorCode::RateLimited, "{err}");
    // The same address with the right token still gets in.
    let ok = attempt("the-real-token".into()).await?;
    assert!(ok.is_open());
    // Guesses that vary their prefix are limited by the per-address ceiling.
    let mut limited = false;
    for i in 0..40 {
        if let Err(e) = attempt(format!("{i:02}x-guess")).await {
            if e.code() == ErrorCode::RateLimited {
                limited = true;
                break;
            }
        }
    }
    assert!(limited, "varied guesses from one address are limited too");
    Ok(())
}
