//! Several edges as one: a real etcd (started here from a temp dir on 127.0.0.1) and
//! edges on 127.0.0.2, .3 and .4 sharing routes through it.

use crate::common::*;
use anyhow::{bail, Context, Result};
use burrow_core::edge::ClusterConfig;
use burrow_core::{Edge, EdgeConfig, ErrorCode, Session, TerminateAt};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const ETCD: &str = "/usr/bin/etcd";

/// A single-member etcd on 127.0.0.1 with its data in a temp dir; killed on drop.
pub struct Etcd {
    pub url: String,
    client_port: u16,
    peer_port: u16,
    dir: TempDir,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Etcd {
    pub async fn start() -> Result<Etcd> {
        let mut etcd = Etcd::new()?;
        etcd.run().await?;
        Ok(etcd)
    }

    /// An etcd with its ports and data dir chosen, not started yet.
    pub fn new() -> Result<Etcd> {
        if !std::path::Path::new(ETCD).exists() {
            bail!(
                "{ETCD} is missing: the cluster tests need etcd. Install it with \
                 `apt-get update && apt-get install -y etcd-server` (scripts/setup.sh does this)"
            );
        }
        let [client_port, peer_port] = distinct_free_ports::<2>(&[])?;
        Ok(Etcd {
            url: format!("http://127.0.0.1:{client_port}"),
            client_port,
            peer_port,
            dir: TempDir::new("etcd")?,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
        })
    }

    /// Starts (or starts again, on the same data and ports) and waits until it answers.
    pub async fn run(&mut self) -> Result<()> {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut child = Command::new(ETCD)
            .args(["--name", "burrow-test"])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.url])
            .args(["--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("burrow-test={peer}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting etcd")?;
        drain(
            child.stdout.take().context("etcd stdout")?,
            self.log.clone(),
        );
        drain(
            child.stderr.take().context("etcd stderr")?,
            self.log.clone(),
        );
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.healthy().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("etcd did not come up:\n{}", self.log())
    }

    async fn healthy(&self) -> bool {
        let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", self.client_port)).await else {
            return false;
        };
        let request = "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
        if tcp.write_all(request.as_bytes()).await.is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer).await;
        answer.contains("\"health\":\"true\"")
    }

    /// Kills etcd (SIGKILL, by PID) and waits for it to be gone.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A loopback port free on `ip` right now.
pub fn free_port_on(ip: Ipv4Addr) -> Result<u16> {
    Ok(StdTcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// The config of cluster edge `id` on 127.0.0.`n`.
pub fn edge_config(etcd: &Etcd, id: &str, n: u8, prefix: &str) -> Result<EdgeConfig> {
    let ip = Ipv4Addr::new(127, 0, 0, n);
    let at = |port| SocketAddr::new(IpAddr::V4(ip), port);
    Ok(EdgeConfig {
        open: true,
        tunnel_addr: at(0),
        tls_addr: at(0),
        heartbeat_ms: 500,
        cluster: Some(ClusterConfig {
            etcd: vec![etcd.url.clone()],
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            edge_id: id.to_owned(),
            link_addr: at(free_port_on(ip)?),
            lease_ttl_secs: 2,
            prefix: prefix.to_owned(),
        }),
        ..Default::default()
    })
}

/// Three edges, a (.2), b (.3) and c (.4), in one cluster named by `prefix`.
async fn three_edges(etcd: &Etcd, prefix: &str) -> Result<[Edge; 3]> {
    let a = Edge::start(edge_config(etcd, "a", 2, prefix)?).await?;
    let b = Edge::start(edge_config(etcd, "b", 3, prefix)?).await?;
    let c = Edge::start(edge_config(etcd, "c", 4, prefix)?).await?;
    Ok([a, b, c])
}

async fn session_on(edge: &Edge) -> Result<Session> {
    Ok(Session::builder()
        .server_addr(edge.tunnel_addr().to_string())
        .root_cas(edge.ca_pem())
        .connect()
        .await?)
}

/// Waits until `edge` knows that edge `owner` serves `name`.
async fn sees(edge: &Edge, name: &str, owner: &str) -> bool {
    eventually(Duration::from_secs(10), || {
        edge.remote_edges(name).iter().any(|e| e == owner)
    })
    .await
}

#[tokio::test]
async fn an_agent_on_one_edge_is_reached_byte_exact_through_every_other_edge() -> Result<()> {
    let etcd = Etcd::start().await?;
    let [a, b, c] = three_edges(&etcd, "/reach/").await?;
    // Every edge shares the cluster's CA.
    assert_eq!(a.ca_pem(), b.ca_pem());
    assert_eq!(a.ca_pem(), c.ca_pem());

    let pki = Pki::new("cluster test CA");
    let up_cert = pki.leaf(&["up.cluster.test"]);
    let agent_cert = pki.leaf(&["agent.cluster.test"]);
    let edge_cert = pki.leaf(&["edge.cluster.test"]);
    let tls_service = tls_echo_server(&up_cert).await;
    let service = echo_server().await;
    let session = session_on(&a).await?;
    let _up = session
        .tls_endpoint()
        .domain("up.cluster.test")
        .listen_and_forward(tls_service.addr.to_string().parse()?)
        .await?;
    let agent = session
        .tls_endpoint()
        .domain("agent.cluster.test")
        .agent_termination(agent_cert.crt.clone(), agent_cert.key.clone())
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    assert_eq!(agent.terminate_at(), TerminateAt::Agent);
    let edge_term = session
        .tls_endpoint()
        .domain("edge.cluster.test")
        .termination(edge_cert.crt.clone(), edge_cert.key.clone())
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    assert_eq!(edge_term.terminate_at(), TerminateAt::Edge);

    for (name, cert, seed) in [
        ("up.cluster.test", &up_cert, 1),
        ("agent.cluster.test", &agent_cert, 2),
        ("edge.cluster.test", &edge_cert, 3),
    ] {
        for (via, edge) in [("b", &b), ("c", &c)] {
            assert!(
                sees(edge, name, "a").await,
                "{via} never learned that a serves {name}"
            );
            let tls = tls_connect(edge.tls_addr(), name, &pki.ca_pem).await?;
            assert_eq!(
                peer_cert(&tls),
                cert.der(),
                "{name} through {via}: wrong certificate"
            );
            echo_check(tls, &pseudo_random(10 * MIB, seed)).await?;
            let addr = edge.tls_addr();
            let ca = pki.ca_pem.clone();
            concurrent_echo(100, 64 * 1024, move || {
                let ca = ca.clone();
                async move { tls_connect(addr, name, &ca).await }
            })
            .await
            .with_context(|| format!("100 concurrent connections to {name} through {via}"))?;
        }
    }
    // An unknown name is still refused everywhere.
    assert!(
        tls_connect(b.tls_addr(), "nobody.cluster.test", &pki.ca_pem)
            .await
            .is_err()
    );
    Ok(())
}

/// An http endpoint is reached through every edge: the edge that takes the connection
/// forwards the TLS bytes to the owner, which terminates and runs the endpoint's options.
#[tokio::test]
async fn an_http_endpoint_on_one_edge_is_served_through_the_others() -> Result<()> {
    let etcd = Etcd::start().await?;
    let [a, b, c] = three_edges(&etcd, "/web/").await?;
    let app = crate::web::web_app().await;
    let session = session_on(&a).await?;
    let fwd = session
        .http_endpoint()
        .domain("web.cluster.test")
        .basic_auth("ann", "correct-horse")
        .listen_and_forward(app.addr.to_string().parse()?)
        .await?;
    for (via, edge) in [("a", &a), ("b", &b), ("c", &c)] {
        assert!(
            via == "a" || sees(edge, "web.cluster.test", "a").await,
            "{via} never learned that a serves the name"
        );
        let addr = edge.tls_addr();
        let url = format!("https://web.cluster.test:{}/headers", addr.port());
        for version in ["--http1.1", "--http2"] {
            let args = [version, "-u", "ann:correct-horse"];
            let got = crate::web::curl_via(edge.ca_pem(), addr.ip(), &url, &args).await?;
            assert_eq!(got.status, 200, "through {via} {version}");
            let seen: serde_json::Value = serde_json::from_slice(&got.body)?;
            assert_eq!(
                seen["headers"]["x-forwarded-for"],
                serde_json::json!(["127.0.0.1"]),
                "through {via}"
            );
            let refused = crate::web::curl_via(edge.ca_pem(), addr.ip(), &url, &[version]).await?;
            assert_eq!(refused.status, 401, "through {via} {version}");
        }
    }
    drop(fwd);
    Ok(())
}

#[tokio::test]
async fn two_agents_on_two_edges_claiming_one_name_at_once_one_wins_every_time() -> Result<()> {
    let etcd = Etcd::start().await?;
    let a = Edge::start(edge_config(&etcd, "a", 2, "/race/")?).await?;
    let b = Edge::start(edge_config(&etcd, "b", 3, "/race/")?).await?;
    let on_a = session_on(&a).await?;
    let on_b = session_on(&b).await?;
    let service = echo_server().await;
    let upstream: burrow_core::Upstream = service.addr.to_string().parse()?;
    for round in 0..50 {
        let name = format!("race{round}.cluster.test");
        let (ra, rb) = tokio::join!(
            on_a.tls_endpoint()
                .domain(&name)
                .listen_and_forward(upstream.clone()),
            on_b.tls_endpoint()
                .domain(&name)
                .listen_and_forward(upstream.clone()),
        );
        let won = [ra.is_ok(), rb.is_ok()];
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: exactly one claim must win: a={:?} b={:?}",
            ra.as_ref().err(),
            rb.as_ref().err()
        );
        let loser = ra.as_ref().err().or(rb.as_ref().err()).map(|e| e.code());
        assert_eq!(loser, Some(ErrorCode::DomainTaken), "round {round}");
    }
    Ok(())
}

#[tokio::test]
async fn a_wildcard_on_one_edge_refuses_a_name_it_covers_on_another() -> Result<()> {
    let etcd = Etcd::start().await?;
    let a = Edge::start(edge_config(&etcd, "a", 2, "/wild/")?).await?;
    let b = Edge::start(edge_config(&etcd, "b", 3, "/wild/")?).await?;
    let service = echo_server().await;
    let upstream: burrow_core::Upstream = service.addr.to_string().parse()?;
    let on_a = session_on(&a).await?;
    let on_b = session_on(&b).await?;
    let _wild = on_a
        .tls_endpoint()
        .domain("*.wild.test")
        .listen_and_forward(upstream.clone())
        .await?;
    let err = on_b
        .tls_endpoint()
        .domain("app.wild.test")
        .listen_and_forward(upstream.clone())
        .await
        .err()
        .context("a covered name must be refused")?;
    assert_eq!(err.code(), ErrorCode::DomainTaken, "{err}");
    // Deeper names are not covered, and the wildcard answers through b.
    on_b.tls_endpoint()
        .domain("x.app.wild.test")
        .listen_and_forward(upstream)
        .await?;
    assert!(sees(&b, "anything.wild.test", "a").await);
    Ok(())
}

#[tokio::test]
async fn a_gracefully_stopped_edge_frees_its_names_at_once() -> Result<()> {
    let etcd = Etcd::start().await?;
    let mut config = edge_config(&etcd, "a", 2, "/graceful/")?;
    if let Some(c) = config.cluster.as_mut() {
        // Long enough that only the revoke can explain a quick release.
        c.lease_ttl_secs = 60;
    }
    let a = Edge::start(config).await?;
    let b = Edge::start(edge_config(&etcd, "b", 3, "/graceful/")?).await?;
    let service = echo_server().await;
    let session = session_on(&a).await?;
    let _l = session
        .tls_endpoint()
        .domain("bye.cluster.test")
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    assert!(sees(&b, "bye.cluster.test", "a").await);
    let started = Instant::now();
    a.shutdown().await;
    assert!(
        eventually(Duration::from_secs(5), || b
            .remote_edges("bye.cluster.test")
            .is_empty())
        .await,
        "b still routes to a after a's graceful shutdown"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    // And the name can be claimed through b at once.
    let other = session_on(&b).await?;
    other
        .tls_endpoint()
        .domain("bye.cluster.test")
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    drop(session);
    Ok(())
}

/// Watches the edges' own routing tables for `name` and records every moment two
/// sessions served it at once.
struct OwnerChecker {
    violations: Arc<Mutex<Vec<String>>>,
    samples: Arc<std::sync::atomic::AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
}

impl OwnerChecker {
    fn start(edges: Vec<Arc<Edge>>, name: &'static str) -> OwnerChecker {
        let violations = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let (v, n, s) = (violations.clone(), samples.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.is_cancelled() {
                let owners: std::collections::BTreeSet<String> = edges
                    .iter()
                    .filter_map(|e| e.route(name).map(|r| r.session_id))
                    .collect();
                if owners.len() > 1 {
                    v.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("{owners:?}"));
                }
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        OwnerChecker {
            violations,
            samples,
            stop,
        }
    }

    fn finish(self) -> (Vec<String>, u64) {
        self.stop.cancel();
        let v = self
            .violations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (v, self.samples.load(std::sync::atomic::Ordering::Relaxed))
    }
}

#[tokio::test]
async fn etcd_down_for_ten_seconds_never_gives_a_name_two_owners_and_edges_recover() -> Result<()> {
    let mut etcd = Etcd::start().await?;
    let a = Arc::new(Edge::start(edge_config(&etcd, "a", 2, "/outage/")?).await?);
    let b = Arc::new(Edge::start(edge_config(&etcd, "b", 3, "/outage/")?).await?);
    let pki = Pki::new("outage CA");
    let service = tls_echo_server(&pki.leaf(&["outage.cluster.test"])).await;
    let upstream: burrow_core::Upstream = service.addr.to_string().parse()?;
    let first = session_on(&a).await?;
    let _held = first
        .tls_endpoint()
        .domain("outage.cluster.test")
        .listen_and_forward(upstream.clone())
        .await?;
    assert!(sees(&b, "outage.cluster.test", "a").await);
    let checker = OwnerChecker::start(vec![a.clone(), b.clone()], "outage.cluster.test");
    // A second agent keeps trying to take the name through b the whole time.
    let contender = session_on(&b).await?;
    let contend = {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let mut won = None;
            for _ in 0..150 {
                if let Ok(l) = contender
                    .tls_endpoint()
                    .domain("outage.cluster.test")
                    .listen_and_forward(upstream.clone())
                    .await
                {
                    won = Some(l);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (contender, won)
        })
    };

    etcd.kill().await?;
    // Within the lease's TTL (2 s) both edges stop serving what they cannot vouch for.
    assert!(
        eventually(Duration::from_secs(5), || a
            .route("outage.cluster.test")
            .is_none())
        .await,
        "edge a kept serving a name after losing etcd"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    etcd.run().await?;

    // The edges rejoin and the name is served again, by one session, through both edges.
    let recovered = eventually(Duration::from_secs(30), || {
        a.route("outage.cluster.test").is_some() || b.route("outage.cluster.test").is_some()
    })
    .await;
    assert!(
        recovered,
        "nobody serves the name after etcd came back:\n{}",
        etcd.log()
    );
    let (_contender, _won) = contend.await?;
    let (violations, samples) = checker.finish();
    assert!(samples > 100, "the checker barely ran ({samples} samples)");
    assert!(violations.is_empty(), "two owners seen: {violations:?}");
    for (via, edge) in [("a", &a), ("b", &b)] {
        let mut last = None;
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let attempt = async {
                let tls = tls_connect(edge.tls_addr(), "outage.cluster.test", &pki.ca_pem).await?;
                echo_check(tls, &pseudo_random(64 * 1024, 7)).await
            };
            match attempt.await {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(e) = last {
            bail!("the name does not answer through edge {via} after recovery: {e:#}");
        }
    }
    Ok(())
}

/// A `burrow edge` process in the cluster, on 127.0.0.`n`: what a test can SIGKILL.
async fn edge_process(
    etcd: &Etcd,
    id: &str,
    n: u8,
    prefix: &str,
) -> Result<(crate::cli::Proc, String, String)> {
    let ip = Ipv4Addr::new(127, 0, 0, n);
    let config = format!(
        "open = true\ntunnel_addr = \"{ip}:0\"\ntls_addr = \"{ip}:0\"\nheartbeat_ms = 500\n\n\
         [cluster]\netcd = [\"{}\"]\nedge_id = \"{id}\"\nlink_addr = \"{ip}:{}\"\nlease_ttl_secs = 2\nprefix = \"{prefix}\"\n",
        etcd.url,
        free_port_on(ip)?
    );
    let path = crate::cli::temp_file(
        &format!("edge-{id}-{prefix}.toml").replace('/', ""),
        &config,
    )?;
    let path = path.to_string_lossy().into_owned();
    let mut proc = crate::cli::Proc::spawn(&["edge", "--config", &path], &[])?;
    let (tunnel, _tls) = proc.edge_addrs().await?;
    let ca_file = proc.field("root-cas:").await?;
    let ca = std::fs::read_to_string(&ca_file)?;
    Ok((proc, tunnel, ca))
}

#[tokio::test]
async fn a_killed_edge_leaves_every_cache_within_its_lease_ttl() -> Result<()> {
    let etcd = Etcd::start().await?;
    let (mut a, a_tunnel, ca) = edge_process(&etcd, "a", 2, "/kill/").await?;
    let b = Edge::start(edge_config(&etcd, "b", 3, "/kill/")?).await?;
    let c = Edge::start(edge_config(&etcd, "c", 4, "/kill/")?).await?;
    assert_eq!(
        b.ca_pem(),
        ca,
        "the process edge and the in-process edges share the cluster CA"
    );
    let pki = Pki::new("kill CA");
    let service = tls_echo_server(&pki.leaf(&["kill.cluster.test"])).await;
    let session = Session::builder()
        .server_addr(a_tunnel)
        .root_cas(ca.clone())
        .connect()
        .await?;
    let _l = session
        .tls_endpoint()
        .domain("kill.cluster.test")
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    for edge in [&b, &c] {
        assert!(sees(edge, "kill.cluster.test", "a").await);
        let tls = tls_connect(edge.tls_addr(), "kill.cluster.test", &pki.ca_pem).await?;
        echo_check(tls, &pseudo_random(MIB, 9)).await?;
    }

    a.child.start_kill()?; // SIGKILL: no lease revoke, no goodbye
    a.child.wait().await?;
    let killed = Instant::now();
    for (via, edge) in [("b", &b), ("c", &c)] {
        let gone = eventually(Duration::from_secs(6), || {
            edge.remote_edges("kill.cluster.test").is_empty()
        })
        .await;
        assert!(gone, "{via} still routes to the dead edge");
    }
    let took = killed.elapsed();
    println!("the dead edge's routes left every cache {took:?} after SIGKILL (lease TTL 2 s)");
    // TTL 2 s; etcd checks expiry every 500 ms.
    assert!(
        took < Duration::from_secs(4),
        "the dead edge's routes lingered {took:?}"
    );
    drop(session);
    Ok(())
}
/// Connections made one after another through `via` until `stop`, each echoing a
/// little; counts successes and failures, with when each failure happened.
struct ClientLoop {
    ok: Arc<std::sync::atomic::AtomicU64>,
    failures: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ClientLoop {
    fn start(via: SocketAddr, name: &'static str, ca: String) -> ClientLoop {
        let ok = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let (o, f, s) = (ok.clone(), failures.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            while !s.is_cancelled() {
                i += 1;
                let attempt = async {
                    let tls = tls_connect(via, name, &ca).await?;
                    echo_check(tls, &pseudo_random(4096, i)).await
                };
                match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                    Ok(Ok(())) => {
                        o.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(Err(e)) => f
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((Instant::now(), format!("{e:#}"))),
                    Err(_) => f
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((Instant::now(), "timed out".into())),
                }
            }
        });
        ClientLoop {
            ok,
            failures,
            stop,
            task,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn finish(self) -> (u64, Vec<(Instant, String)>) {
        self.stop.cancel();
        let _ = self.task.await;
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (self.ok.load(std::sync::atomic::Ordering::Relaxed), failures)
    }
}

#[tokio::test]
async fn an_agent_on_two_edges_keeps_every_url_when_one_edge_is_killed() -> Result<()> {
    const NAME: &str = "ha.cluster.test";
    let etcd = Etcd::start().await?;
    let (mut a, a_tunnel, ca) = edge_process(&etcd, "a", 2, "/ha/").await?;
    let b = Edge::start(edge_config(&etcd, "b", 3, "/ha/")?).await?;
    let c = Edge::start(edge_config(&etcd, "c", 4, "/ha/")?).await?;
    let pki = Pki::new("ha CA");
    let service = tls_echo_server(&pki.leaf(&[NAME])).await;
    let session = Session::builder()
        .server_addrs([a_tunnel, b.tunnel_addr().to_string()])
        .root_cas(ca.clone())
        .connect()
        .await?;
    let listener = session
        .tls_endpoint()
        .domain(NAME)
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let url = listener.url().to_owned();
    // Both connections bound the name, for one session: one owner.
    assert!(eventually(Duration::from_secs(10), || b.route(NAME).is_some()).await);
    assert_eq!(b.route(NAME).map(|r| r.session_id), Some(session.id()));
    assert!(sees(&c, NAME, "a").await && sees(&c, NAME, "b").await);

    let through_b = ClientLoop::start(b.tls_addr(), NAME, pki.ca_pem.clone());
    let through_c = ClientLoop::start(c.tls_addr(), NAME, pki.ca_pem.clone());
    assert!(
        eventually(Duration::from_secs(10), || through_b.ok() >= 20
            && through_c.ok() >= 20)
        .await
    );

    a.child.start_kill()?; // SIGKILL
    a.child.wait().await?;
    let killed = Instant::now();
    assert!(
        eventually(Duration::from_secs(6), || c.remote_edges(NAME) == ["b"]).await,
        "c still lists the dead edge"
    );
    let switched = Instant::now();
    let (b_then, c_then) = (through_b.ok(), through_c.ok());
    assert!(
        eventually(Duration::from_secs(20), || through_b.ok() >= b_then + 50
            && through_c.ok() >= c_then + 50)
        .await,
        "the loops stalled after the switch"
    );
    let (b_ok, b_failed) = through_b.finish().await;
    let (c_ok, c_failed) = through_c.finish().await;
    let after = |f: &[(Instant, String)]| f.iter().filter(|(t, _)| *t > switched).count();
    println!(
        "SIGKILL of edge a ({:?} until c dropped it): through b {b_ok} ok, {} failed; through c {c_ok} ok, {} failed ({} after the switch)",
        switched - killed,
        b_failed.len(),
        c_failed.len(),
        after(&c_failed)
    );
    assert_eq!(
        after(&b_failed) + after(&c_failed),
        0,
        "failures after the switch: b {b_failed:?} c {c_failed:?}"
    );
    assert!(
        b_failed.is_empty(),
        "b serves the name itself, yet: {b_failed:?}"
    );
    assert_eq!(listener.url(), url, "the URL changed");
    Ok(())
}

#[tokio::test]
async fn a_pool_spans_edges_loses_a_frozen_agent_and_refuses_one_that_did_not_opt_in() -> Result<()>
{
    const NAME: &str = "pool.cluster.test";
    let etcd = Etcd::start().await?;
    let [a, b, c] = three_edges(&etcd, "/pool/").await?;
    let pki = Pki::new("pool CA");
    let leaf = pki.leaf(&[NAME]);
    let mut services = Vec::new();
    let mut proxies = Vec::new();
    let mut agents = Vec::new();
    // One pooled agent per edge, each answering with its own name, each through a proxy
    // that can freeze its tunnel.
    for (id, edge) in [("a", &a), ("b", &b), ("c", &c)] {
        let service = tls_name_server(&leaf, id).await;
        let proxy = FreezingProxy::start(edge.tunnel_addr()).await?;
        // "localhost": the proxy is on 127.0.0.1, and the tunnel certificate names it.
        let session = Session::builder()
            .server_addr(format!("localhost:{}", proxy.addr.port()))
            .root_cas(edge.ca_pem())
            .handle_disconnection(|_, _| false)
            .connect()
            .await?;
        let listener = session
            .tls_endpoint()
            .domain(NAME)
            .pooling_enabled(true)
            .listen_and_forward(service.addr.to_string().parse()?)
            .await?;
        services.push(service);
        proxies.push(proxy);
        agents.push((session, listener));
    }
    for (via, edge) in [("a", &a), ("b", &b), ("c", &c)] {
        let others: Vec<&str> = ["a", "b", "c"].into_iter().filter(|e| *e != via).collect();
        for other in others {
            assert!(
                sees(edge, NAME, other).await,
                "{via} never learned that {other} pools {NAME}"
            );
        }
    }
    let answer = |edge: SocketAddr| {
        let ca = pki.ca_pem.clone();
        async move {
            let attempt = async {
                let mut tls = tls_connect(edge, NAME, &ca).await?;
                let mut got = String::new();
                tls.read_to_string(&mut got).await?;
                anyhow::Ok(got)
            };
            tokio::time::timeout(Duration::from_secs(5), attempt)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")))
        }
    };
    // Connections through any one edge reach every member.
    for (via, edge) in [("a", &a), ("c", &c)] {
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..30 {
            *seen.entry(answer(edge.tls_addr()).await?).or_default() += 1;
        }
        assert_eq!(seen.len(), 3, "through {via}: {seen:?}");
    }
    // An agent that did not opt in is refused, on any edge.
    let outsider = session_on(&b).await?;
    let err = outsider
        .tls_endpoint()
        .domain(NAME)
        .listen_and_forward(services[0].addr.to_string().parse()?)
        .await
        .err()
        .context("a non-pooled agent must be refused")?;
    assert_eq!(err.code(), ErrorCode::DomainTaken, "{err}");

    // b's agent freezes (no FIN, nothing): b drops it within its heartbeat tolerance
    // (3 x 500 ms), and every edge's cache forgets it.
    proxies[1].frozen.notify_waiters();
    let frozen = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || b.route(NAME).is_none()
            && !a.remote_edges(NAME).contains(&"b".to_owned())
            && !c.remote_edges(NAME).contains(&"b".to_owned()))
        .await,
        "the frozen member never left the pool"
    );
    println!(
        "the frozen member left every edge's pool {:?} after it froze",
        frozen.elapsed()
    );
    let mut failures = Vec::new();
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..60 {
        let via = [&a, &b, &c][i % 3].tls_addr();
        match answer(via).await {
            Ok(who) => *seen.entry(who).or_default() += 1,
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    assert!(
        failures.is_empty(),
        "failures after the member left: {failures:?}"
    );
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["a", "c"], "{seen:?}");
    Ok(())
}

#[tokio::test]
async fn an_edge_started_before_etcd_waits_for_it_and_then_serves() -> Result<()> {
    let mut etcd = Etcd::new()?;
    let starting = tokio::spawn(Edge::start(edge_config(&etcd, "a", 2, "/late/")?));
    // etcd comes up a second later: the edge keeps trying meanwhile (and says so).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!starting.is_finished(), "the edge started without etcd");
    etcd.run().await?;
    let edge = tokio::time::timeout(Duration::from_secs(20), starting)
        .await
        .context("the edge never joined once etcd was up")???;
    let pki = Pki::new("late CA");
    let service = tls_echo_server(&pki.leaf(&["late.cluster.test"])).await;
    let session = session_on(&edge).await?;
    let _l = session
        .tls_endpoint()
        .domain("late.cluster.test")
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let tls = tls_connect(edge.tls_addr(), "late.cluster.test", &pki.ca_pem).await?;
    echo_check(tls, &pseudo_random(64 * 1024, 13)).await?;
    Ok(())
}

#[tokio::test]
async fn a_bad_cluster_section_is_refused_with_its_key() -> Result<()> {
    let etcd = Etcd::new()?;
    let mut config = edge_config(&etcd, "a", 2, "/bad/")?;
    let cluster = config.cluster.as_mut().context("cluster")?;
    cluster.edge_id = "not an id".into();
    let err = Edge::start(config.clone())
        .await
        .err()
        .context("a bad edge_id must fail")?;
    assert!(err.message().contains("cluster.edge_id"), "{err}");
    let toml = format!(
        "open = true\n[cluster]\netcd = [\"{}\"]\nedge_id = \"a\"\nlink_addr = \"127.0.0.2:0\"\n",
        etcd.url
    );
    let err = EdgeConfig::from_toml(&toml)
        .err()
        .context("link_addr port 0 must fail")?;
    assert!(err.message().contains("cluster.link_addr"), "{err}");
    let err = EdgeConfig::from_toml(
        "[cluster]\netcd = [\"127.0.0.1:2379\"]\nedge_id = \"a\"\nlink_addr = \"127.0.0.2:7443\"\n",
    )
    .err()
    .context("an etcd address without a scheme must fail")?;
    assert!(err.message().contains("cluster.etcd"), "{err}");
    let err = EdgeConfig::from_toml(
        "[cluster]\netcd = []\nedge_id = \"a\"\nlink_addr = \"127.0.0.2:7443\"\nfoo = 1\n",
    )
    .err()
    .context("an unknown key must fail")?;
    assert!(err.message().contains("foo"), "{err}");
    Ok(())
}
