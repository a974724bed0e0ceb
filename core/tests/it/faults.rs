//! Faults: a killed agent, failing upstreams, stalled peers, dead tunnels, half-close.

use crate::cli::Proc;
use crate::common::*;
use anyhow::{anyhow, Result};
use burrow_core::{Session, TerminateAt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A service that writes an endless pseudo-random stream, counting what it wrote.
async fn firehose() -> Result<(SocketAddr, Arc<AtomicU64>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let written = Arc::new(AtomicU64::new(0));
    let count = written.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let chunk = pseudo_random(64 * 1024, 77);
                while s.write_all(&chunk).await.is_ok() {
                    count.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
            });
        }
    });
    Ok((addr, written))
}

fn agent_args<'a>(upstream: &'a str, url: &'a str, tunnel: &'a str, ca: &'a str) -> Vec<&'a str> {
    vec![
        "tls",
        upstream,
        "--url",
        url,
        "--terminate-at",
        "edge",
        "--server-addr",
        tunnel,
        "--root-cas",
        ca,
    ]
}

#[tokio::test]
async fn agent_killed_mid_transfer() -> Result<()> {
    let edge = open_edge().await;
    let (service, _) = firehose().await?;
    let ca_file = crate::cli::temp_file("kill-edge-ca.pem", edge.ca_pem())?;
    let (up, tunnel, ca) = (
        service.to_string(),
        edge.tunnel_addr().to_string(),
        ca_file.display().to_string(),
    );
    let mut agent = Proc::spawn(&agent_args(&up, "tls://kill.test", &tunnel, &ca), &[])?;
    agent.line_with("Forwarding").await?;
    let mut tls = tls_connect(edge.tls_addr(), "kill.test", edge.ca_pem()).await?;
    let mut buf = vec![0u8; 256 * 1024];
    tls.read_exact(&mut buf).await?; // the transfer is under way

    agent.child.start_kill()?;
    agent.child.wait().await?;
    // The client's connection ends promptly instead of hanging.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "client connection must close when the agent dies"
    );
    assert!(
        eventually(Duration::from_secs(10), || edge
            .route("kill.test")
            .is_none())
        .await
    );

    // A new agent can bind the same domain afterwards.
    let mut again = Proc::spawn(&agent_args(&up, "tls://kill.test", &tunnel, &ca), &[])?;
    again.line_with("Forwarding").await?;
    let mut tls = tls_connect(edge.tls_addr(), "kill.test", edge.ca_pem()).await?;
    tls.read_exact(&mut buf).await?;
    assert_eq!(
        &buf[..16],
        &pseudo_random(16, 77)[..],
        "fresh stream from the new agent"
    );
    Ok(())
}

#[tokio::test]
async fn upstream_refusing_or_resetting_ends_the_client_abnormally() -> Result<()> {
    let edge = open_edge().await;
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let ca_file = crate::cli::temp_file("refuse-edge-ca.pem", edge.ca_pem())?;
    let (up, tunnel, ca) = (
        format!("127.0.0.1:{dead_port}"),
        edge.tunnel_addr().to_string(),
        ca_file.display().to_string(),
    );
    let mut agent = Proc::spawn(&agent_args(&up, "tls://refused.test", &tunnel, &ca), &[])?;
    agent.line_with("Forwarding").await?;
    let mut tls = tls_connect(edge.tls_addr(), "refused.test", edge.ca_pem()).await?;
    tls.write_all(b"anyone there?").await?;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut got)).await?;
    // No answer is not an empty answer: a reset, never a close_notify (issue 14, item 3).
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "an unreachable upstream reaches the client as a reset: {read:?}"
    );
    assert!(got.is_empty());
    let logs = agent.kill_and_stderr().await?;
    assert!(
        logs.contains("cannot reach upstream"),
        "the agent logs why: {logs}"
    );

    // An upstream that accepts and then resets: the client sees the end; the session lives on.
    let resetting = TcpListener::bind("127.0.0.1:0").await?;
    let reset_addr = resetting.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = resetting.accept().await {
            let _ = s.set_zero_linger();
            drop(s);
        }
    });
    let service = echo_server().await;
    let session = session_for(&edge).await;
    let _reset = session
        .tls_endpoint()
        .domain("reset.test")
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(reset_addr.to_string().parse()?)
        .await?;
    let mut tls = tls_connect(edge.tls_addr(), "reset.test", edge.ca_pem()).await?;
    let _ = tls.write_all(b"hello").await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the client is not left hanging");
    let _ok = session
        .tls_endpoint()
        .domain("fine.test")
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    echo_check(
        tls_connect(edge.tls_addr(), "fine.test", edge.ca_pem()).await?,
        b"still alive",
    )
    .await?;
    echo_check(
        tls_connect(edge.tls_addr(), "fine.test", edge.ca_pem()).await?,
        &pseudo_random(MIB, 50),
    )
    .await
}

#[tokio::test]
async fn a_stalled_reader_is_held_back_without_blocking_others() -> Result<()> {
    let edge = open_edge().await;
    let (service, written) = firehose().await?;
    let echo = echo_server().await;
    let session = session_for(&edge).await;
    let _hose = session
        .tcp_endpoint()
        .listen_and_forward(service.to_string().parse()?)
        .await?;
    let other = session
        .tcp_endpoint()
        .listen_and_forward(echo.addr.to_string().parse()?)
        .await?;
    let hose_port = url_port(_hose.url());

    // Connect and never read: backpressure must stop the upstream.
    let mut stalled = TcpStream::connect(("127.0.0.1", hose_port)).await?;
    let mut plateau = 0;
    let mut last = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = written.load(Ordering::SeqCst);
        plateau = if now == last && now > 0 {
            plateau + 1
        } else {
            0
        };
        last = now;
        if plateau >= 5 {
            break;
        }
    }
    assert!(
        plateau >= 5,
        "the upstream kept writing into a stalled connection ({last} bytes)"
    );
    assert!(
        last < 64 * MIB as u64,
        "buffered {last} bytes for one stalled reader"
    );
    eprintln!("stall: the upstream stopped after {last} bytes for a reader that never read");

    // Other connections on the same tunnel still flow.
    let port = url_port(other.url());
    echo_check(
        TcpStream::connect(("127.0.0.1", port)).await?,
        &pseudo_random(4 * MIB, 51),
    )
    .await?;

    // Resuming gets every byte, in order.
    let mut buf = vec![0u8; (last as usize).min(8 * MIB)];
    stalled.read_exact(&mut buf).await?;
    let chunk = pseudo_random(64 * 1024, 77);
    for (i, piece) in buf.chunks(chunk.len()).enumerate() {
        assert_eq!(piece, &chunk[..piece.len()], "chunk {i} differs");
    }
    Ok(())
}

/// Relays TCP to `target`; `freeze` stops moving bytes on existing connections without closing them.
struct FreezingProxy {
    addr: SocketAddr,
    frozen: Arc<tokio::sync::Notify>,
}

impl FreezingProxy {
    async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let frozen = Arc::new(tokio::sync::Notify::new());
        let freeze = frozen.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let freeze = freeze.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = freeze.notified() => {
                            // Hold both sockets open, silently, until the test ends.
                            tokio::time::sleep(Duration::from_secs(60)).await;
                        }
                    }
                });
            }
        });
        Ok(FreezingProxy { addr, frozen })
    }
}

#[tokio::test]
async fn the_agent_detects_a_dead_tunnel_by_heartbeat_and_reconnects() -> Result<()> {
    let edge = edge_with_heartbeat(200).await;
    let proxy = FreezingProxy::start(edge.tunnel_addr()).await?;
    let session = Session::builder()
        .server_addr(proxy.addr.to_string())
        .root_cas(edge.ca_pem())
        .connect()
        .await?;
    let service = echo_server().await;
    let _fwd = session
        .tls_endpoint()
        .domain("frozen.test")
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let before = session.id();
    proxy.frozen.notify_waiters();
    assert!(
        eventually(Duration::from_secs(15), || session.id() != before).await,
        "a silent tunnel is replaced"
    );
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(tls) = tls_connect(edge.tls_addr(), "frozen.test", edge.ca_pem()).await {
            if echo_check(tls, b"after the freeze").await.is_ok() {
                ok = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the endpoint works again after the reconnect");
    Ok(())
}

/// A service that sends a greeting, shuts its write side, then reports what it reads.
async fn half_closing_service(
) -> Result<(SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = s.write_all(b"greeting").await;
                let _ = s.shutdown().await;
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got).await;
                let _ = tx.send(got);
            });
        }
    });
    Ok((addr, rx))
}

#[tokio::test]
async fn half_close_travels_both_ways() -> Result<()> {
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    // Client closes first: it shuts its write side, then still reads the whole echo.
    let echo = echo_server().await;
    let echo_fwd = session
        .tcp_endpoint()
        .listen_and_forward(echo.addr.to_string().parse()?)
        .await?;
    let s = TcpStream::connect(("127.0.0.1", url_port(echo_fwd.url()))).await?;
    echo_check(s, &pseudo_random(MIB, 52)).await?;

    // Upstream closes first: the client sees EOF and can still send.
    let (service, mut seen) = half_closing_service().await?;
    let tcp = session
        .tcp_endpoint()
        .listen_and_forward(service.to_string().parse()?)
        .await?;
    let _tls = session
        .tls_endpoint()
        .domain("half.test")
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(service.to_string().parse()?)
        .await?;

    let mut plain = TcpStream::connect(("127.0.0.1", url_port(tcp.url()))).await?;
    let mut got = Vec::new();
    plain.read_to_end(&mut got).await?;
    assert_eq!(got, b"greeting");
    plain.write_all(b"reply after EOF").await?;
    plain.shutdown().await?;
    assert_eq!(
        seen.recv().await.ok_or_else(|| anyhow!("no report"))?,
        b"reply after EOF"
    );

    let mut secure = tls_connect(edge.tls_addr(), "half.test", edge.ca_pem()).await?;
    let mut got = Vec::new();
    secure.read_to_end(&mut got).await?;
    assert_eq!(got, b"greeting");
    secure.write_all(b"tls reply after close_notify").await?;
    secure.shutdown().await?;
    assert_eq!(
        seen.recv().await.ok_or_else(|| anyhow!("no report"))?,
        b"tls reply after close_notify"
    );
    Ok(())
}
