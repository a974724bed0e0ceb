//! ngrok's session surface: client info, heartbeats with latency, disconnection and
//! command hooks, edge commands, X.509 v1 certificates, and the tunnel CA.

use crate::common::*;
use anyhow::{anyhow, Result};
use burrow_core::edge::Command;
use burrow_core::{ErrorCode, Session, TerminateAt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn client_info_reaches_the_edge_most_significant_first() -> Result<()> {
    let edge = open_edge().await;
    let session = Session::builder()
        .server_addr(edge.tunnel_addr().to_string())
        .root_cas(edge.ca_pem())
        .client_info("lib", "0.9", None)
        .client_info("my-app", "1.2", Some("beta".into()))
        .metadata("m1")
        .connect()
        .await?;
    let info = edge
        .sessions()
        .into_iter()
        .find(|s| s.id == session.id())
        .ok_or_else(|| anyhow!("the edge lists the session"))?;
    assert_eq!(info.client_info[0], "my-app/1.2 (beta)");
    assert_eq!(info.client_info[1], "lib/0.9");
    assert!(info.client_info[2].starts_with("burrow/"), "{info:?}");
    assert_eq!(info.metadata, "m1");
    Ok(())
}

#[tokio::test]
async fn the_heartbeat_hook_gets_measured_round_trips() -> Result<()> {
    let edge = open_edge().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = std::time::Instant::now();
    let _session = Session::builder()
        .server_addr(edge.tunnel_addr().to_string())
        .root_cas(edge.ca_pem())
        .heartbeat_interval(Duration::from_millis(50))
        .handle_heartbeat(move |latency| {
            let _ = tx.send(latency);
        })
        .connect()
        .await?;
    for _ in 0..3 {
        let latency = tokio::time::timeout(WAIT, rx.recv())
            .await?
            .ok_or_else(|| anyhow!("hook dropped"))?;
        // A round trip measured on this session cannot be longer than its whole life.
        assert!(latency > Duration::ZERO && latency <= started.elapsed());
    }
    Ok(())
}

#[tokio::test]
async fn an_unanswered_heartbeat_past_the_tolerance_is_a_disconnection() -> Result<()> {
    let edge = open_edge().await;
    let proxy = FreezingProxy::start(edge.tunnel_addr()).await?;
    let seen = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let record = seen.clone();
    let session = Session::builder()
        .server_addr(proxy.addr.to_string())
        .root_cas(edge.ca_pem())
        .heartbeat_interval(Duration::from_millis(50))
        .heartbeat_tolerance(Duration::from_millis(300))
        .handle_disconnection(move |addr, error| {
            record
                .lock()
                .unwrap()
                .push((addr.to_owned(), error.to_owned()));
            true
        })
        .connect()
        .await?;
    let before = session.id();
    proxy.frozen.notify_waiters();
    assert!(
        eventually(WAIT, || !seen.lock().unwrap().is_empty()).await,
        "the disconnection hook is called"
    );
    let (addr, error) = seen.lock().unwrap()[0].clone();
    assert_eq!(addr, proxy.addr.to_string());
    assert!(
        error.contains("did not answer a heartbeat within 300ms"),
        "{error}"
    );
    assert!(
        eventually(WAIT, || session.id() != before).await,
        "the session reconnected"
    );
    assert!(session.is_open());
    Ok(())
}

#[tokio::test]
async fn a_disconnection_hook_returning_false_closes_the_session() -> Result<()> {
    let edge = open_edge().await;
    let proxy = FreezingProxy::start(edge.tunnel_addr()).await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let count = calls.clone();
    let session = Session::builder()
        .server_addr(proxy.addr.to_string())
        .root_cas(edge.ca_pem())
        .heartbeat_interval(Duration::from_millis(50))
        .heartbeat_tolerance(Duration::from_millis(200))
        .handle_disconnection(move |_, _| {
            count.fetch_add(1, Ordering::SeqCst);
            false
        })
        .connect()
        .await?;
    proxy.frozen.notify_waiters();
    assert!(
        eventually(WAIT, || !session.is_open()).await,
        "the session closes instead of reconnecting"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn stop_closes_the_session_unless_a_hook_handles_it() -> Result<()> {
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    edge.send_command(&session.id(), Command::Stop { reason: None })
        .await?;
    assert!(
        eventually(WAIT, || !session.is_open()).await,
        "default stop closes the session"
    );
    assert!(eventually(WAIT, || edge.session_count() == 0).await);

    let stops = Arc::new(AtomicUsize::new(0));
    let count = stops.clone();
    let session = Session::builder()
        .server_addr(edge.tunnel_addr().to_string())
        .root_cas(edge.ca_pem())
        .handle_stop_command(move |_reason| {
            count.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .connect()
        .await?;
    edge.send_command(&session.id(), Command::Stop { reason: None })
        .await?;
    assert_eq!(stops.load(Ordering::SeqCst), 1);
    assert!(session.is_open(), "the hook replaced the default");
    let service = echo_server().await;
    let fwd = session
        .tcp_endpoint()
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    assert!(fwd.url().starts_with("tcp://"), "the session still binds");

    let refusing = Session::builder()
        .server_addr(edge.tunnel_addr().to_string())
        .root_cas(edge.ca_pem())
        .handle_stop_command(|_| Err("not now".into()))
        .connect()
        .await?;
    let err = edge
        .send_command(&refusing.id(), Command::Stop { reason: None })
        .await
        .expect_err("the hook's error reaches the edge");
    assert!(err.message().contains("not now"), "{err}");
    Ok(())
}

#[tokio::test]
async fn restart_reconnects_and_the_endpoint_keeps_working() -> Result<()> {
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    let service = echo_server().await;
    let _fwd = session
        .tls_endpoint()
        .domain("restart.test")
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let before = session.id();
    edge.send_command(&before, Command::Restart).await?;
    assert!(
        eventually(WAIT, || session.id() != before).await,
        "a new tunnel replaced the old one"
    );
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(tls) = tls_connect(edge.tls_addr(), "restart.test", edge.ca_pem()).await {
            if echo_check(tls, b"after restart").await.is_ok() {
                ok = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the endpoint is rebound after the restart");

    let restarts = Arc::new(AtomicUsize::new(0));
    let count = restarts.clone();
    let hooked = Session::builder()
        .server_addr(edge.tunnel_addr().to_string())
        .root_cas(edge.ca_pem())
        .handle_restart_command(move || {
            count.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .connect()
        .await?;
    let id = hooked.id();
    edge.send_command(&id, Command::Restart).await?;
    assert_eq!(restarts.load(Ordering::SeqCst), 1);
    assert_eq!(hooked.id(), id, "the hook replaced the default reconnect");
    Ok(())
}

#[tokio::test]
async fn update_is_refused_unless_a_hook_handles_it() -> Result<()> {
    let edge = open_edge().await;
    let update = Command::Update {
        version: "9.9.9".into(),
        permit_major_version: true,
    };
    let session = session_for(&edge).await;
    let err = edge
        .send_command(&session.id(), update.clone())
        .await
        .expect_err("no hook: refused");
    assert_eq!(err.code(), ErrorCode::Unsupported);
    assert!(session.is_open());

    let (tx, mut rx) = mpsc::unbounded_channel();
    let hooked = Session::builder()
        .server_addr(edge.tunnel_addr().to_string())
        .root_cas(edge.ca_pem())
        .handle_update_command(move |req| {
            let _ = tx.send(req.clone());
            Ok(())
        })
        .connect()
        .await?;
    edge.send_command(&hooked.id(), update).await?;
    let req = rx.recv().await.ok_or_else(|| anyhow!("hook dropped"))?;
    assert_eq!(req.version, "9.9.9");
    assert!(req.permit_major_version);
    let err = edge
        .send_command("no-such-session", Command::Stop { reason: None })
        .await
        .expect_err("unknown session");
    assert_eq!(err.code(), ErrorCode::Closed);
    Ok(())
}

#[tokio::test]
async fn x509_v1_self_signed_certificates_terminate_at_edge_and_agent() -> Result<()> {
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    let service = echo_server().await;
    for (name, at) in [
        ("v1edge.test", TerminateAt::Edge),
        ("v1agent.test", TerminateAt::Agent),
    ] {
        let cert = openssl_v1_cert(name)?;
        let fwd = session
            .tls_endpoint()
            .domain(name)
            .crt_key(cert.crt.clone(), cert.key.clone())
            .terminate_at(at)
            .listen_and_forward(service.addr.to_string().parse()?)
            .await?;
        let tls = tls_connect_with(edge.tls_addr(), name, pinned_client_config(cert.der())).await?;
        assert_eq!(peer_cert(&tls), cert.der(), "{at:?} presents the v1 cert");
        echo_check(tls, &pseudo_random(64 * 1024, 13)).await?;
        drop(fwd);
    }
    let other = openssl_v1_cert("other.test")?;
    for at in [TerminateAt::Edge, TerminateAt::Agent] {
        let err = session
            .tls_endpoint()
            .domain("v1mismatch.test")
            .crt_key(other.crt.clone(), other.key.clone())
            .terminate_at(at)
            .listen()
            .await
            .expect_err("the CN does not cover the domain");
        assert_eq!(err.code(), ErrorCode::CertDomainMismatch, "{err}");
        assert!(err.message().contains("other.test"), "{err}");
    }
    Ok(())
}

/// The embedded edge is started when no server address is given; a CA bundle given
/// with it is applied (the session trusts only it), not silently dropped.
#[tokio::test]
async fn root_cas_applies_to_the_embedded_edge_and_a_bad_one_names_tls() -> Result<()> {
    let err = Session::builder()
        .root_cas(Pki::new("not the embedded edge").ca_pem)
        .connect()
        .await
        .expect_err("a CA that does not sign the embedded edge's certificate");
    assert_eq!(err.code(), ErrorCode::ConnectFailed);
    assert!(err.message().contains("TLS"), "{err}");

    let err = Session::builder()
        .root_cas("this is not a certificate")
        .connect()
        .await
        .expect_err("garbage CA");
    assert_eq!(err.code(), ErrorCode::InvalidPem);
    assert!(err.message().contains("TLS"), "{err}");

    let edge = open_edge().await;
    let err = Session::builder()
        .server_addr(edge.tunnel_addr().to_string())
        .ca_cert("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        .connect()
        .await
        .expect_err("broken PEM");
    assert!(err.message().contains("TLS"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_listener_gets_its_forwarding_target_later() -> Result<()> {
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    let listener = session
        .tls_endpoint()
        .domain("later.test")
        .terminate_at(TerminateAt::Edge)
        .metadata("meta")
        .listen()
        .await?;
    assert_eq!(listener.forwards_to(), "", "no target yet");
    let service = echo_server().await;
    let fwd = listener.forward(&service.addr.to_string().parse()?)?;
    assert_eq!(fwd.forwards_to(), format!("tcp://{}", service.addr));
    assert_eq!(fwd.metadata(), "meta");
    let tls = tls_connect(edge.tls_addr(), "later.test", edge.ca_pem()).await?;
    echo_check(tls, b"forwarded after listen").await
}

/// The agent's answer to a restart or stop reaches the edge before the agent drops the
/// tunnel (it used to be lost now and then on a busy machine: the edge then reported
/// the session gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_to_restart_and_stop_reaches_the_edge_every_time() -> Result<()> {
    let edge = open_edge().await;
    for round in 0..20 {
        let session = session_for(&edge).await;
        let before = session.id();
        edge.send_command(&before, Command::Restart)
            .await
            .map_err(|e| anyhow!("restart, round {round}: {e}"))?;
        assert!(eventually(WAIT, || session.id() != before).await);
        let after = session.id();
        assert!(
            eventually(WAIT, || edge.sessions().iter().any(|s| s.id == after)).await,
            "round {round}: the edge lists the new session"
        );
        edge.send_command(&after, Command::Stop { reason: None })
            .await
            .map_err(|e| anyhow!("stop, round {round}: {e}"))?;
        assert!(eventually(WAIT, || !session.is_open()).await);
    }
    Ok(())
}
