//! A session connected to several edges at once (`server_addr` with a list): every edge
//! serves every endpoint under the same name, and when one edge dies the others keep
//! every URL working.

use crate::common::*;
use anyhow::{anyhow, Result};
use burrow_core::edge::TokenRule;
use burrow_core::{Edge, EdgeConfig, ErrorCode, Session};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SUFFIX: &str = "multi.test";
const DOMAIN: &str = "app.example.test";

fn open_config(state_dir: Option<std::path::PathBuf>) -> EdgeConfig {
    EdgeConfig {
        open: true,
        domain_suffix: SUFFIX.into(),
        heartbeat_ms: 2_000,
        state_dir,
        ..Default::default()
    }
}

fn state_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "burrow-multi-edge-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Echoes `data` through `tls_addr` with SNI `name`, checking the upstream's certificate.
async fn echo_via(tls_addr: SocketAddr, name: &str, ca: &str, data: &[u8]) -> Result<()> {
    echo_check(tls_connect(tls_addr, name, ca).await?, data)
        .await
        .map_err(|e| anyhow!("{name} via {tls_addr}: {e}"))
}

#[tokio::test]
async fn every_edge_serves_every_url_and_one_edge_dying_breaks_none() -> Result<()> {
    let state_a = state_dir()?;
    let a = Edge::start(open_config(Some(state_a.clone()))).await?;
    let b = Edge::start(open_config(None)).await?;
    let (a_tunnel, a_ca) = (a.tunnel_addr(), a.ca_pem().to_owned());
    let lost: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = lost.clone();
    let session = Session::builder()
        .server_addrs([a_tunnel.to_string(), b.tunnel_addr().to_string()])
        .root_cas(format!("{}\n{}", a.ca_pem(), b.ca_pem()))
        .handle_disconnection(move |addr, _| {
            seen.lock().unwrap().push(addr.to_owned());
            true
        })
        .connect()
        .await?;
    assert!(
        a.sessions().iter().any(|s| s.id == session.id()),
        "Session::id() is the first edge's session"
    );

    // Passthrough: the upstream terminates TLS, for the explicit name and random ones.
    let pki = Pki::new("multi-edge upstream CA");
    let upstream = tls_echo_server(&pki.leaf(&[DOMAIN, &format!("*.{SUFFIX}")])).await;
    let named = session
        .tls_endpoint()
        .domain(DOMAIN)
        .listen_and_forward(upstream.addr.to_string().parse()?)
        .await?;
    let random = session
        .tls_endpoint()
        .listen_and_forward(upstream.addr.to_string().parse()?)
        .await?;
    let urls = (named.url().to_owned(), random.url().to_owned());
    let names = [url_host(&urls.0), url_host(&urls.1)];
    assert!(names[1].ends_with(SUFFIX), "{names:?}");
    for name in &names {
        for edge in [&a, &b] {
            assert!(
                eventually(Duration::from_secs(10), || edge.route(name).is_some()).await,
                "{name} is bound at {}",
                edge.tunnel_addr()
            );
        }
    }
    let b_sessions = b.sessions();
    assert_eq!(b_sessions.len(), 1, "one connection per edge");
    for name in &names {
        assert_eq!(
            b.route(name).map(|r| r.session_id),
            Some(b_sessions[0].id.clone())
        );
    }
    for (i, name) in names.iter().enumerate() {
        let data = pseudo_random(64 * 1024, i as u64);
        echo_via(a.tls_addr(), name, &pki.ca_pem, &data).await?;
        echo_via(b.tls_addr(), name, &pki.ca_pem, &data).await?;
    }

    // A client loop through B keeps going while A shuts down and the agent notices.
    let b_tls = b.tls_addr();
    let running = Arc::new(AtomicBool::new(true));
    let done = Arc::new(AtomicU64::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let client = {
        let (running, done, failures) = (running.clone(), done.clone(), failures.clone());
        let (names, ca) = (names.clone(), pki.ca_pem.clone());
        tokio::spawn(async move {
            let mut round = 0u64;
            while running.load(Ordering::SeqCst) {
                let name = &names[(round % 2) as usize];
                if let Err(e) = echo_via(b_tls, name, &ca, &pseudo_random(16 * 1024, round)).await {
                    failures.lock().unwrap().push(e.to_string());
                }
                done.fetch_add(1, Ordering::SeqCst);
                round += 1;
            }
        })
    };
    let before = done.load(Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(10), || done.load(Ordering::SeqCst)
            > before + 10)
        .await
    );
    a.shutdown().await;
    let a_name = a_tunnel.to_string();
    assert!(
        eventually(Duration::from_secs(15), || lost
            .lock()
            .unwrap()
            .contains(&a_name))
        .await,
        "the disconnection hook names the lost edge: {:?}",
        lost.lock().unwrap()
    );
    let after = done.load(Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(15), || done.load(Ordering::SeqCst)
            > after + 20)
        .await
    );
    running.store(false, Ordering::SeqCst);
    client.await?;
    let failed = failures.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} of {} connections through B failed while A went away: {failed:?}",
        failed.len(),
        done.load(Ordering::SeqCst)
    );
    assert!(!lost.lock().unwrap().contains(&b.tunnel_addr().to_string()));
    assert_eq!((named.url().to_owned(), random.url().to_owned()), urls);
    assert!(session.is_open(), "the session goes on through B");
    assert!(session.failure().is_none());

    // An edge back on A's tunnel port gets the same names back from the agent.
    let a = Edge::start(EdgeConfig {
        tunnel_addr: a_tunnel,
        ..open_config(Some(state_a.clone()))
    })
    .await?;
    assert_eq!(a.ca_pem(), a_ca);
    for name in &names {
        assert!(
            eventually(Duration::from_secs(30), || a.route(name).is_some()).await,
            "{name} is bound again at the restarted edge"
        );
        echo_via(a.tls_addr(), name, &pki.ca_pem, b"back through A").await?;
        echo_via(b.tls_addr(), name, &pki.ca_pem, b"still through B").await?;
    }
    assert_eq!(named.url(), urls.0);
    session.close().await;
    for name in &names {
        assert!(
            eventually(Duration::from_secs(5), || a.route(name).is_none()
                && b.route(name).is_none())
            .await
        );
    }
    std::fs::remove_dir_all(&state_a)?;
    Ok(())
}

#[tokio::test]
async fn a_refusal_by_the_first_edge_fails_the_bind_without_asking_the_others() -> Result<()> {
    let strict = Edge::start(EdgeConfig {
        authtokens: vec![TokenRule {
            token: "multi-token".into(),
            domains: vec![format!("*.ok.test")],
        }],
        domain_suffix: SUFFIX.into(),
        ..Default::default()
    })
    .await?;
    let open = Edge::start(open_config(None)).await?;
    let session = Session::builder()
        .server_addrs([
            strict.tunnel_addr().to_string(),
            open.tunnel_addr().to_string(),
        ])
        .root_cas(format!("{}\n{}", strict.ca_pem(), open.ca_pem()))
        .authtoken("multi-token")
        .connect()
        .await?;
    let err = session
        .tls_endpoint()
        .domain("app.nope.test")
        .listen()
        .await
        .expect_err("the first edge refuses the domain");
    assert_eq!(err.code(), ErrorCode::DomainNotAllowed, "{err}");
    let allowed = session
        .tls_endpoint()
        .domain("app.ok.test")
        .listen()
        .await?;
    assert!(
        eventually(Duration::from_secs(10), || open
            .route("app.ok.test")
            .is_some())
        .await,
        "an accepted bind is made at every edge"
    );
    assert!(
        open.route("app.nope.test").is_none(),
        "a refused bind is not tried elsewhere"
    );
    assert!(strict.route("app.ok.test").is_some());
    drop(allowed);
    assert!(session.is_open());
    Ok(())
}

#[tokio::test]
async fn an_edge_down_at_connect_is_connected_later_and_bad_lists_are_refused() -> Result<()> {
    // The first address answers nothing: the session starts on the second.
    let spare = std::net::TcpListener::bind("127.0.0.1:0")?;
    let down = spare.local_addr()?;
    drop(spare);
    let b = Edge::start(open_config(None)).await?;
    let state = state_dir()?;
    let a_config = EdgeConfig {
        tunnel_addr: down,
        ..open_config(Some(state.clone()))
    };
    // The CA of the edge that will come up at `down`, made before it runs.
    let a_ca = Edge::start(a_config.clone()).await?;
    let ca = a_ca.ca_pem().to_owned();
    a_ca.shutdown().await;
    let session = Session::builder()
        .server_addrs([down.to_string(), b.tunnel_addr().to_string()])
        .root_cas(format!("{ca}\n{}", b.ca_pem()))
        .connect()
        .await?;
    assert!(b.sessions().iter().any(|s| s.id == session.id()));
    let listener = session.tls_endpoint().domain(DOMAIN).listen().await?;
    let a = Edge::start(a_config).await?;
    assert!(
        eventually(Duration::from_secs(30), || a.route(DOMAIN).is_some()).await,
        "the edge that was down at connect gets the endpoints once it is up"
    );
    drop(listener);

    let e = Session::builder()
        .server_addrs(Vec::<String>::new())
        .connect()
        .await
        .expect_err("an empty list");
    assert_eq!(e.code(), ErrorCode::InvalidOption, "{e}");
    let e = Session::builder()
        .server_addr(format!("{},nowhere", b.tunnel_addr()))
        .connect()
        .await
        .expect_err("a bad entry");
    assert_eq!(e.code(), ErrorCode::InvalidUrl, "{e}");
    assert!(e.message().contains("\"nowhere\""), "{e}");
    std::fs::remove_dir_all(&state)?;
    Ok(())
}

#[tokio::test]
async fn the_cli_takes_edges_separated_by_commas() -> Result<()> {
    let (a, b) = (
        Edge::start(open_config(None)).await?,
        Edge::start(open_config(None)).await?,
    );
    let ca = crate::cli::temp_file(
        "multi-edge-cas.pem",
        &format!("{}\n{}", a.ca_pem(), b.ca_pem()),
    )?;
    let service = echo_server().await;
    let (upstream, edges, ca) = (
        service.addr.to_string(),
        format!("{},{}", a.tunnel_addr(), b.tunnel_addr()),
        ca.display().to_string(),
    );
    let args = [
        "tls",
        &upstream,
        "--url",
        "tls://cli.multi.test",
        "--terminate-at",
        "edge",
        "--server-addr",
        &edges,
        "--root-cas",
        &ca,
    ];
    let mut agent = crate::cli::Proc::spawn(&args, &[])?;
    agent.line_with("Forwarding").await?;
    for edge in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(10), || edge
                .route("cli.multi.test")
                .is_some())
            .await,
            "bound at {}",
            edge.tunnel_addr()
        );
        echo_check(
            tls_connect(edge.tls_addr(), "cli.multi.test", edge.ca_pem()).await?,
            b"through the CLI",
        )
        .await?;
    }
    Ok(())
}
