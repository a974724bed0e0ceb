//! Sessions that die, edges that restart, endpoints that close.

use crate::common::*;
use anyhow::{anyhow, Result};
use burrow_core::agent::{CertPem, EndpointKind, TlsMaterial};
use burrow_core::tls::TlsVersion;
use burrow_core::wire::{BindSpec, EdgeMsg, SecretPem};
use burrow_core::{Edge, EdgeConfig, ErrorCode, TerminateAt, Termination};
use std::time::Duration;

fn tls_spec(domain: &str) -> BindSpec {
    BindSpec {
        endpoint_id: "e1".into(),
        kind: EndpointKind::Tls {
            domain: Some(domain.into()),
            port: None,
        },
        termination: Termination::Upstream,
        traffic_policy: None,
        allow_cidrs: Vec::new(),
        deny_cidrs: Vec::new(),
        metadata: String::new(),
        pooling_enabled: false,
    }
}

#[tokio::test]
async fn silent_agent_loses_its_routes_within_the_heartbeat_timeout() -> Result<()> {
    let edge = edge_with_heartbeat(200).await; // dropped after 600 ms of silence
    let mut agent = RawAgent::connect(&edge).await?;
    assert!(matches!(
        agent.bind(tls_spec("silent.test")).await?,
        EdgeMsg::BindOk { .. }
    ));
    assert!(edge.route("silent.test").is_some());
    // The agent now sends nothing while keeping its TCP connection open.
    assert!(
        eventually(Duration::from_secs(5), || edge
            .route("silent.test")
            .is_none())
        .await
    );
    assert!(eventually(Duration::from_secs(1), || edge.session_count() == 0).await);
    drop(agent);
    Ok(())
}

#[tokio::test]
async fn the_edge_checks_certificates_itself() -> Result<()> {
    // A modified agent could skip its own checks; the edge must refuse anyway.
    let edge = open_edge().await;
    let mut agent = RawAgent::connect(&edge).await?;
    let cert = Pki::new("ca").leaf(&["other.test"]);
    let mut spec = tls_spec("app.test");
    spec.termination = Termination::Edge(TlsMaterial {
        cert: Some(CertPem {
            crt: cert.crt.clone(),
            key: SecretPem(cert.key.clone()),
        }),
        ..Default::default()
    });
    match agent.bind(spec).await? {
        EdgeMsg::Error { code, message, .. } => {
            assert_eq!(code, ErrorCode::CertDomainMismatch);
            assert!(message.contains("app.test"), "{message}");
        }
        other => return Err(anyhow!("expected a refusal, got {other:?}")),
    }
    let mut spec = tls_spec("app.test");
    spec.termination = Termination::Edge(TlsMaterial {
        min_version: Some(TlsVersion::Tls13),
        max_version: Some(TlsVersion::Tls12),
        ..Default::default()
    });
    match agent.bind(spec).await? {
        EdgeMsg::Error { code, message, .. } => {
            assert_eq!(code, ErrorCode::InvalidOption);
            assert!(message.contains("min_version"), "{message}");
        }
        other => return Err(anyhow!("expected a refusal, got {other:?}")),
    }
    assert!(edge.route("app.test").is_none());
    Ok(())
}

#[tokio::test]
async fn closed_session_routes_are_gone_at_once() -> Result<()> {
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    let _l = session.tls_endpoint().domain("gone.test").listen().await?;
    assert!(edge.route("gone.test").is_some());
    session.close().await;
    assert!(eventually(Duration::from_secs(2), || edge.route("gone.test").is_none()).await);
    Ok(())
}

#[tokio::test]
async fn closing_one_endpoint_leaves_the_others_working() -> Result<()> {
    let edge = open_edge().await;
    let service = echo_server().await;
    let session = session_for(&edge).await;
    let upstream = || service.addr.to_string().parse().expect("addr");
    let a = session
        .tls_endpoint()
        .domain("a.test")
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(upstream())
        .await?;
    let b = session
        .tls_endpoint()
        .domain("b.test")
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(upstream())
        .await?;
    echo_check(
        tls_connect(edge.tls_addr(), "a.test", edge.ca_pem()).await?,
        b"a",
    )
    .await?;
    a.close();
    a.close(); // idempotent
    assert!(eventually(Duration::from_secs(2), || edge.route("a.test").is_none()).await);
    assert!(tls_connect(edge.tls_addr(), "a.test", edge.ca_pem())
        .await
        .is_err());
    echo_check(
        tls_connect(edge.tls_addr(), "b.test", edge.ca_pem()).await?,
        &pseudo_random(MIB, 9),
    )
    .await?;
    drop(b);
    assert!(eventually(Duration::from_secs(2), || edge.route("b.test").is_none()).await);
    Ok(())
}

/// One round trip of `data` on an open connection.
async fn round_trip<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    conn: &mut S,
    data: &[u8],
) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(data).await?;
    let mut back = vec![0; data.len()];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut back)).await??;
    anyhow::ensure!(back == data, "echo differs");
    Ok(())
}

/// Closing an endpoint stops new connections; the ones already open finish (what the
/// CLI's graceful shutdown relies on), for a tcp:// endpoint as for a tls:// one.
#[tokio::test]
async fn closing_an_endpoint_lets_its_open_connections_finish() -> Result<()> {
    let edge = open_edge().await;
    let service = echo_server().await;
    let session = session_for(&edge).await;
    let upstream = || service.addr.to_string().parse().expect("addr");

    let tcp = session
        .tcp_endpoint()
        .listen_and_forward(upstream())
        .await?;
    let port = url_port(tcp.url());
    let mut open = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    round_trip(&mut open, b"before").await?;
    tcp.close();
    let refused = eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    })
    .await;
    assert!(refused, "the closed tcp endpoint still accepts");
    round_trip(&mut open, &pseudo_random(64 * 1024, 1)).await?;

    let tls = session
        .tls_endpoint()
        .domain("finish.test")
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(upstream())
        .await?;
    let mut open = tls_connect(edge.tls_addr(), "finish.test", edge.ca_pem()).await?;
    round_trip(&mut open, b"before").await?;
    tls.close();
    assert!(
        eventually(Duration::from_secs(5), || edge
            .route("finish.test")
            .is_none())
        .await
    );
    round_trip(&mut open, &pseudo_random(64 * 1024, 2)).await?;
    Ok(())
}

#[tokio::test]
async fn agent_reconnects_after_an_edge_restart_and_keeps_its_urls() -> Result<()> {
    let state = tempdir()?;
    let config = EdgeConfig {
        open: true,
        heartbeat_ms: 2_000,
        tcp_ports: Some([0, 0]),
        state_dir: Some(state.clone()),
        ..Default::default()
    };
    let edge = Edge::start(config.clone()).await?;
    let (tunnel_addr, tls_addr) = (edge.tunnel_addr(), edge.tls_addr());
    let ca = edge.ca_pem().to_owned();
    let service = echo_server().await;
    let session = session_for(&edge).await;
    let fwd = session
        .tls_endpoint()
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let tcp_fwd = session
        .tcp_endpoint()
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let host = url_host(fwd.url());
    echo_check(tls_connect(tls_addr, &host, &ca).await?, b"before").await?;
    let first_session = session.id();

    edge.shutdown().await;
    let edge = Edge::start(EdgeConfig {
        tunnel_addr,
        tls_addr,
        ..config
    })
    .await?;
    assert_eq!(
        edge.ca_pem(),
        ca,
        "the CA survives a restart through the state dir"
    );
    assert!(
        eventually(Duration::from_secs(15), || edge.route(&host).is_some()).await,
        "agent rebinds"
    );
    assert_ne!(session.id(), first_session);
    assert_eq!(url_host(fwd.url()), host, "the URL does not change");
    echo_check(
        tls_connect(tls_addr, &host, &ca).await?,
        &pseudo_random(MIB, 10),
    )
    .await?;
    let port = url_port(tcp_fwd.url());
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            if echo_check(tcp, b"tcp after restart").await.is_ok() {
                ok = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the tcp endpoint is back on the same port");
    std::fs::remove_dir_all(&state)?;
    Ok(())
}

#[tokio::test]
async fn reconnecting_agent_replaces_its_old_session() -> Result<()> {
    // The tunnel TCP connection breaks without the edge noticing at once: the agent's new
    // session must get its names back instead of finding them taken by its own ghost.
    let edge = Edge::start(EdgeConfig {
        open: true,
        heartbeat_ms: 5_000,
        ..Default::default()
    })
    .await?;
    let proxy = BreakableProxy::start(edge.tunnel_addr()).await?;
    let session = burrow_core::Session::builder()
        .server_addr(proxy.addr.to_string())
        .root_cas(edge.ca_pem())
        .connect()
        .await?;
    let service = echo_server().await;
    let _fwd = session
        .tls_endpoint()
        .domain("ghost.test")
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let old = edge.route("ghost.test").expect("route").session_id;
    proxy.break_all();
    assert!(
        eventually(Duration::from_secs(15), || edge
            .route("ghost.test")
            .is_some_and(|r| r.session_id != old))
        .await,
        "the new session holds the name"
    );
    echo_check(
        tls_connect(edge.tls_addr(), "ghost.test", edge.ca_pem()).await?,
        b"back",
    )
    .await?;
    Ok(())
}

/// A TCP relay whose connections can be cut: the far side sees no FIN from the agent
/// until the relay closes it, so the edge learns late.
struct BreakableProxy {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<u64>,
    _task: tokio::task::JoinHandle<()>,
}

impl BreakableProxy {
    async fn start(target: std::net::SocketAddr) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, watch) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watch = watch.clone();
                watch.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.changed() => {
                            // Cut the agent side now; hold the edge side open a while.
                            drop(inbound);
                            tokio::time::sleep(Duration::from_secs(3)).await;
                        }
                    }
                });
            }
        });
        Ok(BreakableProxy {
            addr,
            cut,
            _task: task,
        })
    }

    fn break_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("burrow-test-{:x}", rand_u64()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

#[tokio::test]
async fn closing_and_rebinding_a_name_at_once_keeps_the_new_endpoint() -> Result<()> {
    // Regression: the late unbind of the old endpoint removed the new endpoint's route.
    let edge = open_edge().await;
    let service = echo_server().await;
    let session = session_for(&edge).await;
    for round in 0..20u64 {
        let fwd = session
            .tls_endpoint()
            .domain("again.test")
            .terminate_at(TerminateAt::Edge)
            .listen_and_forward(service.addr.to_string().parse()?)
            .await?;
        echo_check(
            tls_connect(edge.tls_addr(), "again.test", edge.ca_pem()).await?,
            &pseudo_random(1024, round),
        )
        .await?;
        fwd.close();
    }
    Ok(())
}
