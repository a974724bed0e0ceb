//! Load: thousands of concurrent connections and hundreds of endpoints through one
//! session, every byte checked. The CI form is the default; the long form and the
//! soak are documented in the README ("Limits and hardening").
//!
//! Knobs: `BURROW_LOAD_CONNS` (default 10000), `BURROW_LOAD_BYTES` per connection
//! (default 16384), `BURROW_SOAK_SECS` for the ignored soak test, `BURROW_LOAD_EDGE_LOG`
//! (the edge process's log filter), `BURROW_LOAD_HEARTBEAT_MS` (default 5000: a session
//! silent for three of them ends).

use crate::common::*;
use anyhow::{anyhow, Context, Result};
use burrow_core::{Listener, TerminateAt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::{Barrier, Semaphore};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raises this process's open-file limit to its hard limit (children inherit it) and
/// checks it covers `per_process` descriptors.
fn raise_fd_limit(per_process: usize) -> Result<()> {
    let want = per_process as u64 + 1_000;
    let got = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    if got < want {
        return Err(anyhow!(
            "this test needs RLIMIT_NOFILE >= {want} per process (hard limit is {got}): raise `ulimit -Hn`"
        ));
    }
    Ok(())
}

/// A `burrow edge` process (so its sockets count against its own descriptor limit):
/// returns the process, its tunnel address and its CA.
async fn edge_process() -> Result<(crate::cli::Proc, String, String)> {
    let heartbeat_ms = env_usize("BURROW_LOAD_HEARTBEAT_MS", 5_000);
    let state = std::env::temp_dir().join(format!(
        "burrow-load-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let config = crate::cli::temp_file(
        &format!("load-edge-{}.toml", rand_suffix()),
        &format!("open = true\ntcp_ports = [0, 0]\nheartbeat_ms = {heartbeat_ms}\nmax_connections = 30000\nstate_dir = {state:?}\n"),
    )?;
    // Session starts and ends, with their reasons, explain a failed run.
    let log = std::env::var("BURROW_LOAD_EDGE_LOG")
        .unwrap_or_else(|_| "warn,burrow_core::edge::session=info".into());
    let mut edge = crate::cli::Proc::spawn(
        &["edge", "--config", config.to_str().unwrap_or_default()],
        &[("RUST_LOG", &log)],
    )?;
    let tunnel = edge.field("tunnel:").await?;
    let ca = std::fs::read_to_string(state.join("ca.pem"))?;
    Ok((edge, tunnel, ca))
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// Echoes every connection of `listener`, counting how many are open at once; each
/// connection waits at `barrier` first, so all of them are open through the tunnel together.
fn echo_listener(
    mut listener: Listener,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    barrier: Arc<Barrier>,
) {
    tokio::spawn(async move {
        while let Some(conn) = listener.accept().await {
            let (open, peak, barrier) = (open.clone(), peak.clone(), barrier.clone());
            tokio::spawn(async move {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                barrier.wait().await;
                let (mut r, mut w) = tokio::io::split(conn);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
}

/// The warnings of the in-process agent, kept for a failure report.
#[derive(Clone, Default)]
struct AgentLog(Arc<std::sync::Mutex<Vec<u8>>>);

impl AgentLog {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl std::io::Write for AgentLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `test` on a two-thread runtime whose threads (the agent's tasks run there)
/// log warnings and errors to `log`, without touching the other tests of this process.
fn with_agent_log<F: std::future::Future<Output = Result<()>>>(
    log: &AgentLog,
    test: impl FnOnce(AgentLog) -> F,
) -> Result<()> {
    let writer = log.clone();
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let on_start = dispatch.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            // For the thread's whole life.
            std::mem::forget(tracing::dispatcher::set_default(&on_start));
        })
        .build()?;
    let _guard = tracing::dispatcher::set_default(&dispatch);
    runtime.block_on(test(log.clone()))
}

#[test]
fn ten_thousand_concurrent_connections_through_one_session() -> Result<()> {
    with_agent_log(&AgentLog::default(), ten_thousand_connections)
}

async fn ten_thousand_connections(agent_log: AgentLog) -> Result<()> {
    let conns = env_usize("BURROW_LOAD_CONNS", 10_000);
    let bytes = env_usize("BURROW_LOAD_BYTES", 16 * 1024);
    raise_fd_limit(conns)?;
    let (edge, tunnel, ca) = edge_process().await?;
    let session = burrow_core::Session::builder()
        .server_addr(tunnel)
        .root_cas(ca)
        .max_pending(conns)
        .connect()
        .await?;
    let first_session = session.id();
    let listener = session.tcp_endpoint().listen().await?;
    let port = url_port(listener.url());
    let (open, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // No connection is echoed until all of them are open at the agent.
    echo_listener(
        listener,
        open.clone(),
        peak.clone(),
        Arc::new(Barrier::new(conns)),
    );

    let started = Instant::now();
    let connecting = Arc::new(Semaphore::new(256));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..conns {
        let connecting = connecting.clone();
        tasks.spawn(async move {
            let stream = {
                let _slot = connecting.acquire().await?;
                TcpStream::connect(("127.0.0.1", port)).await?
            };
            echo_check(stream, &pseudo_random(bytes, i as u64))
                .await
                .with_context(|| format!("after {:.1}s", started.elapsed().as_secs_f64()))
        });
    }
    let mut errors = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.map_err(anyhow::Error::from).and_then(|r| r) {
            errors.push(format!("{e:#}"));
        }
    }
    let peak = peak.load(Ordering::SeqCst);
    eprintln!(
        "load: {conns} connections, {} bytes checked, peak {peak} open at the agent, {} errors, {:.1}s",
        conns * bytes * 2,
        errors.len(),
        started.elapsed().as_secs_f64()
    );
    if !errors.is_empty() {
        // What the session and the edge saw: a future failure explains itself.
        eprintln!(
            "load: session {first_session} -> {} (open: {}, failure: {:?})",
            session.id(),
            session.is_open(),
            session.failure()
        );
        eprintln!("load: the agent's log:\n{}", agent_log.text());
        match edge.kill_and_stderr().await {
            Ok(log) => eprintln!("load: the edge's log:\n{log}"),
            Err(e) => eprintln!("load: the edge's log is unavailable: {e:#}"),
        }
        // In the order the connections ended.
        eprintln!(
            "load: first and last errors: {:?} .. {:?}",
            errors.first(),
            errors.last()
        );
        return Err(anyhow!(
            "{} of {conns} connections failed; first: {}",
            errors.len(),
            errors[0]
        ));
    }
    assert_eq!(
        peak, conns,
        "every connection was open through the tunnel at once"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_endpoints_on_one_session_all_at_once() -> Result<()> {
    let endpoints = 500;
    let edge = open_edge().await;
    let service = echo_server().await;
    let session = session_for(&edge).await;
    let mut binds = tokio::task::JoinSet::new();
    for i in 0..endpoints {
        let session = session.clone();
        let up = service.addr.to_string();
        binds.spawn(async move {
            let fwd = session
                .tls_endpoint()
                .domain(format!("ep{i}.many.test"))
                .terminate_at(TerminateAt::Edge)
                .listen_and_forward(up.parse()?)
                .await?;
            anyhow::Ok(fwd)
        });
    }
    let mut forwarders = Vec::new();
    while let Some(r) = binds.join_next().await {
        forwarders.push(r??);
    }
    assert_eq!(forwarders.len(), endpoints);
    let mut traffic = tokio::task::JoinSet::new();
    let ca = Arc::new(edge.ca_pem().to_owned());
    let addr = edge.tls_addr();
    for i in 0..endpoints {
        let ca = ca.clone();
        traffic.spawn(async move {
            let tls = tls_connect(addr, &format!("ep{i}.many.test"), &ca).await?;
            echo_check(tls, &pseudo_random(8 * 1024, i as u64)).await
        });
    }
    while let Some(r) = traffic.join_next().await {
        r??;
    }
    Ok(())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The long-running mix: `BURROW_SOAK_SECS=600 cargo test --release -p burrow-core --test it soak -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: run on demand with BURROW_SOAK_SECS"]
async fn soak() -> Result<()> {
    let secs = env_usize("BURROW_SOAK_SECS", 60) as u64;
    let edge = open_edge().await;
    let service = echo_server().await;
    let session = session_for(&edge).await;
    let tls_fwd = session
        .tls_endpoint()
        .domain("soak.test")
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let tcp_fwd = session
        .tcp_endpoint()
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let tcp_port = url_port(tcp_fwd.url());
    let first_session = session.id();
    let rss_start = rss_kib();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (mut rounds, mut errors, mut bytes) = (0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..200u64 {
            let ca = edge.ca_pem().to_owned();
            let addr = edge.tls_addr();
            let len = 1024 + (i as usize * 997) % (256 * 1024);
            set.spawn(async move {
                if i % 2 == 0 {
                    echo_check(
                        tls_connect(addr, "soak.test", &ca).await?,
                        &pseudo_random(len, i),
                    )
                    .await?;
                } else {
                    echo_check(
                        TcpStream::connect(("127.0.0.1", tcp_port)).await?,
                        &pseudo_random(len, i),
                    )
                    .await?;
                }
                anyhow::Ok(len as u64)
            });
        }
        while let Some(r) = set.join_next().await {
            match r.map_err(anyhow::Error::from).and_then(|r| r) {
                Ok(n) => bytes += 2 * n,
                Err(e) => {
                    errors += 1;
                    eprintln!("soak error: {e:#}");
                }
            }
        }
        rounds += 1;
    }
    let reconnects = u64::from(session.id() != first_session);
    eprintln!(
        "soak: {secs}s, {rounds} rounds, {} connections, {bytes} bytes checked, {errors} errors, session changed: {reconnects}, RSS {rss_start} KiB -> {} KiB",
        rounds * 200,
        rss_kib()
    );
    drop((tls_fwd, tcp_fwd));
    assert_eq!(errors, 0);
    Ok(())
}

/// A burst larger than the 128-deep backlog `TcpListener::bind` asks for waits in the
/// kernel until the edge accepts it: with a shallow backlog, the kernel drops the
/// handshakes of the surplus (and resets clients whose SYN cookie it then refuses)
/// while a busy edge catches up. Here the edge is at `max_connections`, so it accepts
/// nothing while the burst arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_2000_waits_in_the_backlog_for_a_busy_edge() -> Result<()> {
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if somaxconn < 2_048 {
        eprintln!("skipped: net.core.somaxconn is {somaxconn}, the kernel caps every backlog below this burst");
        return Ok(());
    }
    let burst = 2_000;
    raise_fd_limit(burst)?;
    let edge = burrow_core::Edge::start(burrow_core::EdgeConfig {
        open: true,
        max_connections: 1,
        handshake_timeout_ms: 60_000,
        ..Default::default()
    })
    .await?;
    // Sends no ClientHello: it holds the edge's only place until the end of the test.
    let _held = TcpStream::connect(edge.tls_addr()).await?;
    let addr = edge.tls_addr();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..burst {
        clients.spawn(async move {
            tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
                .await
                .context("the handshake was dropped (backlog full)")?
                .context("connect")
        });
    }
    let (mut connected, mut errors) = (Vec::new(), Vec::new());
    while let Some(r) = clients.join_next().await {
        match r.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(stream) => connected.push(stream),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {burst} connections were not queued for the edge; first: {}",
        errors.len(),
        errors[0]
    );
    Ok(())
}
