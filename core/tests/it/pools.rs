//! Endpoint pools (ngrok's `pooling_enabled`): several agents serve one name, connections
//! take turns across them, a dead agent leaves the pool, agents that did not opt in
//! never share a name.

use crate::cli::{temp_file, Proc};
use crate::common::*;
use anyhow::{anyhow, Context, Result};
use burrow_core::{Edge, ErrorCode, Forwarder, Session};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

const NAME: &str = "app.pool.test";
const WAIT: Duration = Duration::from_secs(15);

/// One agent of a pool: its session (which never reconnects once its tunnel is lost,
/// so a dead agent stays dead) and its endpoint forwarding to `service`.
async fn agent(
    edge: &Edge,
    via: SocketAddr,
    service: &Echo,
    pooled: bool,
) -> burrow_core::Result<(Session, Forwarder)> {
    let session = Session::builder()
        .server_addr(via.to_string())
        .root_cas(edge.ca_pem())
        .handle_disconnection(|_, _| false)
        .connect()
        .await?;
    let forwarder = session
        .tls_endpoint()
        .domain(NAME)
        .pooling_enabled(pooled)
        .listen_and_forward(service.addr.to_string().parse().expect("address"))
        .await?;
    Ok((session, forwarder))
}

/// The error a bind that must be refused failed with; `what` says what went wrong if it was not.
fn refusal<T>(result: burrow_core::Result<T>, what: &str) -> Result<burrow_core::Error> {
    match result {
        Ok(_) => Err(anyhow!("{what}")),
        Err(e) => Ok(e),
    }
}

/// An edge and one upstream answering `name`, with the CA of the upstream's certificate.
async fn edge_and_service(name: &str) -> (Edge, Pki, Echo) {
    let edge = open_edge().await;
    let pki = Pki::new("pool upstreams");
    let service = tls_name_server(&pki.leaf(&[NAME]), name).await;
    (edge, pki, service)
}

/// Which upstream answered one connection to the pooled name.
async fn answer(edge: &Edge, ca: &str) -> Result<String> {
    let mut tls = tls_connect(edge.tls_addr(), NAME, ca).await?;
    let mut got = String::new();
    tokio::time::timeout(WAIT, tls.read_to_string(&mut got))
        .await
        .context("answer timed out")??;
    Ok(got)
}

/// `n` connections one after the other: how many each upstream answered, and the errors.
async fn spread(edge: &Edge, ca: &str, n: usize) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut answers = BTreeMap::new();
    let mut errors = Vec::new();
    for _ in 0..n {
        match answer(edge, ca).await {
            Ok(name) => *answers.entry(name).or_default() += 1,
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    (answers, errors)
}

#[tokio::test]
async fn pooled_agents_share_a_name_in_turns_and_a_dead_one_leaves_the_pool() -> Result<()> {
    let heartbeat_ms = 1_000;
    let edge = edge_with_heartbeat(heartbeat_ms).await;
    let pki = Pki::new("pool upstreams");
    let leaf = pki.leaf(&[NAME]);
    let mut services = Vec::new();
    for name in ["a", "b", "c"] {
        services.push(tls_name_server(&leaf, name).await);
    }
    // Each agent reaches the edge through a proxy of its own, to cut or freeze it.
    let mut proxies = Vec::new();
    let mut agents = Vec::new();
    for service in &services {
        let proxy = FreezingProxy::start(edge.tunnel_addr()).await?;
        agents.push(agent(&edge, proxy.addr, service, true).await?);
        proxies.push(proxy);
    }
    let url = agents[0].1.url().to_owned();
    assert!(url.starts_with(&format!("tls://{NAME}:")), "{url}");
    for (_, forwarder) in &agents {
        assert_eq!(forwarder.url(), url, "every member serves the same URL");
    }

    let (answers, errors) = spread(&edge, &pki.ca_pem, 30).await;
    assert!(errors.is_empty(), "{errors:?}");
    let turns: Vec<(&str, usize)> = answers.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(turns, [("a", 10), ("b", 10), ("c", 10)], "round robin");

    // A tunnel cut (the agent's host gone): its session ends at the edge, the others serve.
    proxies[1].cut.notify_waiters();
    assert!(
        eventually(WAIT, || edge.session_count() == 2).await,
        "the cut agent's session ends"
    );
    let (answers, errors) = spread(&edge, &pki.ca_pem, 30).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(answers.keys().collect::<Vec<_>>(), ["a", "c"]);

    // A frozen tunnel (nothing arrives, nothing closes): dropped within the heartbeat
    // tolerance (three intervals), as any silent session.
    let frozen = Instant::now();
    proxies[2].frozen.notify_waiters();
    assert!(
        eventually(WAIT, || edge.session_count() == 1).await,
        "the frozen agent's session ends"
    );
    let took = frozen.elapsed();
    // Silence is checked once per interval: the drop comes at most one interval after the
    // tolerance has run out (plus scheduling on a busy machine).
    let tolerance = Duration::from_millis(3 * heartbeat_ms);
    let bound = tolerance + Duration::from_millis(heartbeat_ms + 1_000);
    assert!(
        took <= bound,
        "dropped after {took:?}, tolerance {tolerance:?}"
    );
    let (answers, errors) = spread(&edge, &pki.ca_pem, 30).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(answers.get("a"), Some(&30));
    drop(agents);
    Ok(())
}

#[tokio::test]
async fn a_pool_never_takes_in_an_agent_that_did_not_opt_in() -> Result<()> {
    let (edge, pki, service) = edge_and_service("pooled").await;
    let via = edge.tunnel_addr();
    let _first = agent(&edge, via, &service, true).await?;
    let _second = agent(&edge, via, &service, true).await?;
    let joined = agent(&edge, via, &service, false).await;
    let err = refusal(joined, "a non-pooled agent joined the pool")?;
    assert_eq!(err.code(), ErrorCode::DomainTaken);
    assert!(err.message().contains(NAME), "{err}");
    let (answers, errors) = spread(&edge, &pki.ca_pem, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(answers.get("pooled"), Some(&4));
    Ok(())
}

#[tokio::test]
async fn a_name_held_without_pooling_refuses_pooled_agents() -> Result<()> {
    let (edge, pki, service) = edge_and_service("alone").await;
    let via = edge.tunnel_addr();
    let (owner, _held) = agent(&edge, via, &service, false).await?;
    let took = agent(&edge, via, &service, true).await;
    let err = refusal(took, "a pooled agent took a name held without pooling")?;
    assert_eq!(err.code(), ErrorCode::DomainTaken);
    assert_eq!(edge.route(NAME).context("route")?.session_id, owner.id());
    let (answers, errors) = spread(&edge, &pki.ca_pem, 2).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        answers.get("alone"),
        Some(&2),
        "the holder still serves the name"
    );
    // Pooling shares one name, never a wildcard over another session's name.
    let session = session_for(&edge).await;
    let wildcard = session
        .tls_endpoint()
        .domain("*.pool.test")
        .pooling_enabled(true)
        .listen()
        .await;
    let err = refusal(
        wildcard,
        "a pooled wildcard overlapped another session's name",
    )?;
    assert_eq!(err.code(), ErrorCode::DomainTaken);
    // tcp endpoints each get a port: pooling them is refused by name.
    let tcp = session.tcp_endpoint().pooling_enabled(true).listen().await;
    let err = refusal(tcp, "a pooled tcp endpoint was bound")?;
    assert_eq!(err.code(), ErrorCode::Unsupported);
    assert!(err.message().contains("pooling_enabled"), "{err}");
    Ok(())
}

#[tokio::test]
async fn the_cli_pools_with_pooling_enabled() -> Result<()> {
    let edge = open_edge().await;
    let ca = temp_file("pool-edge-ca.pem", edge.ca_pem())?;
    let tunnel = edge.tunnel_addr().to_string();
    let pki = Pki::new("pool upstreams");
    let leaf = pki.leaf(&[NAME]);
    let services = [
        tls_name_server(&leaf, "one").await,
        tls_name_server(&leaf, "two").await,
    ];
    let url = format!("tls://{NAME}");
    let run = |service: &Echo, extra: &[&str]| {
        let upstream = service.addr.to_string();
        let mut args = vec![
            "tls",
            upstream.as_str(),
            "--url",
            url.as_str(),
            "--server-addr",
            tunnel.as_str(),
            "--root-cas",
            ca.to_str().unwrap_or_default(),
        ];
        args.extend_from_slice(extra);
        Proc::spawn(&args, &[])
    };
    let mut agents = Vec::new();
    for service in &services {
        let mut agent = run(service, &["--pooling-enabled"])?;
        let line = agent.line_with("Forwarding").await?;
        assert!(
            line.contains(&format!("{url}:{}", edge.tls_addr().port())),
            "{line}"
        );
        agents.push(agent);
    }
    let (answers, errors) = spread(&edge, &pki.ca_pem, 6).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(answers.get("one"), Some(&3));
    assert_eq!(answers.get("two"), Some(&3));

    let refused = run(&services[0], &[])?.wait_stderr().await?;
    assert!(refused.contains("DOMAIN_TAKEN"), "{refused}");
    for agent in agents {
        agent.kill_and_stderr().await?;
    }
    Ok(())
}
