//! `burrow-bench`: the load tool behind `bench/run.sh`.
//!
//! It serves (`echo`), drives workloads against any TLS address (`run`), holds idle
//! connections (`idle`), measures burrow's bind latency (`bind`) and a TLS server's CPU
//! per handshake (`handshakes`). Every workload checks every byte it gets back. Results
//! are one JSON object per run on stdout.

mod handshakes;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[derive(Parser)]
#[command(about = "Load tool for burrow's benchmark suite")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve an echo service (TLS with --cert/--key, else plain TCP).
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Certificate chain (PEM) for a TLS echo service.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Private key (PEM).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Serve a web app for the HTTP rows: `/1k` and `/64k` answer that many bytes
    /// (HTTP/1.1 keep-alive and h2c).
    HttpApp {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Run one workload against a TLS address and print a JSON result.
    Run(RunArgs),
    /// Open N TLS connections, echo once on each, print "ready", then hold them.
    Idle(Target),
    /// Measure burrow's bind latency: forward() to the first byte echoed.
    Bind {
        /// The edge's tunnel address.
        #[arg(long)]
        server_addr: String,
        /// The edge's CA (PEM file).
        #[arg(long)]
        root_cas: PathBuf,
        /// A plain echo service to forward to.
        #[arg(long)]
        upstream: String,
        /// How many binds.
        #[arg(long, default_value_t = 50)]
        count: usize,
    },
    /// Measure the server CPU of a full TLS handshake in memory: burrow's cipher suite
    /// choice against following the client's order.
    Handshakes {
        /// Rounds (each runs both servers; the medians are printed).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Handshakes per server per round.
        #[arg(long, default_value_t = 2000)]
        count: usize,
    },
    /// Measure a cluster edge's lookup of a name another edge serves, with `routes`
    /// names in its cache, against the same lookups with one name cached.
    Lookup {
        /// etcd client URL.
        #[arg(long)]
        etcd: String,
        /// Names held in the cache.
        #[arg(long, default_value_t = 10_000)]
        routes: usize,
        /// Lookups timed.
        #[arg(long, default_value_t = 1_000_000)]
        lookups: usize,
    },
}

#[derive(clap::Args, Clone)]
struct Target {
    /// Address to connect to.
    #[arg(long)]
    target: SocketAddr,
    /// SNI and the name the certificate is checked against.
    #[arg(long)]
    sni: String,
    /// CA (PEM file) the server's certificate chains to.
    #[arg(long)]
    ca: PathBuf,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1)]
    conns: usize,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    target: Target,
    /// What to measure.
    #[arg(long)]
    workload: Workload,
    /// Seconds to run.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Message size for `rr` (bytes).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// New connections per second for `steady`.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Workload {
    /// Echo as fast as possible on each connection; bytes/s, all checked.
    Bulk,
    /// Full handshake + 32-byte round trip + close, repeated; connections/s and connect latency.
    Connect,
    /// Request/response of `size` bytes on each connection; latency percentiles.
    Rr,
    /// New connections at a constant `rate` (at most `conns` open), each echoing 1 KiB to
    /// 256 KiB, checked, then closing: the soak's load.
    Steady,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Echo { listen, cert, key } => echo(listen, cert, key).await,
        Command::HttpApp { listen } => http_app(listen).await,
        Command::Run(args) => {
            let result = match args.workload {
                Workload::Bulk => bulk(&args).await?,
                Workload::Connect => connect(&args).await?,
                Workload::Rr => rr(&args).await?,
                Workload::Steady => steady(&args).await?,
            };
            println!("{result}");
            Ok(())
        }
        Command::Idle(target) => idle(target).await,
        Command::Bind {
            server_addr,
            root_cas,
            upstream,
            count,
        } => bind(server_addr, root_cas, upstream, count).await,
        Command::Handshakes { rounds, count } => handshakes::run(rounds, count),
        Command::Lookup {
            etcd,
            routes,
            lookups,
        } => lookup(etcd, routes, lookups).await,
    }
}

/// The HTTP rows' upstream: fixed bodies, as cheap as an app can be.
async fn http_app(listen: SocketAddr) -> Result<()> {
    use http_body_util::Full;
    let listener = TcpListener::bind(listen).await?;
    println!("listening {}", listener.local_addr()?);
    let small = bytes::Bytes::from(vec![b'k'; 1024]);
    let large = bytes::Bytes::from(vec![b'K'; 64 * 1024]);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let (small, large) = (small.clone(), large.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body = match req.uri().path() {
                        "/1k" => small.clone(),
                        "/64k" => large.clone(),
                        _ => bytes::Bytes::from_static(b"ok"),
                    };
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(body)))
                    }
                });
            let io = hyper_util::rt::TokioIo::new(tcp);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(io, service)
                    .await;
        });
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

async fn echo(listen: SocketAddr, cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<()> {
    let acceptor = match (cert, key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(&cert)
                .context("cert")?
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_file(&key).context("key")?;
            let config = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(certs, key)?;
            Some(TlsAcceptor::from(Arc::new(config)))
        }
        _ => None,
    };
    let listener = TcpListener::bind(listen).await?;
    println!("listening {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => echo_io(tcp).await,
                Some(a) => {
                    if let Ok(tls) = a.accept(tcp).await {
                        echo_io(tls).await
                    }
                }
            }
        });
    }
}

async fn echo_io<S: AsyncRead + AsyncWrite + Unpin>(s: S) {
    let (mut r, mut w) = tokio::io::split(s);
    let _ = tokio::io::copy_buf(
        &mut tokio::io::BufReader::with_capacity(64 * 1024, &mut r),
        &mut w,
    )
    .await;
    let _ = w.shutdown().await;
}

fn connector(ca: &PathBuf) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).context("ca")? {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Every connection pays a full handshake, as a new client would.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn dial(t: &Target, tls: &TlsConnector) -> Result<Tls> {
    let tcp = TcpStream::connect(t.target).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(t.sni.clone())?;
    Ok(tls.connect(name, tcp).await?)
}

/// A repeating pseudo-random pattern: byte `i` of a stream is `PATTERN[i % len]`.
fn pattern() -> Arc<Vec<u8>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(1 << 20);
    while out.len() < 1 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    Arc::new(out)
}

async fn bulk(args: &RunArgs) -> Result<serde_json::Value> {
    let tls = connector(&args.target.ca)?;
    let pat = pattern();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    for _ in 0..args.target.conns {
        conns.push(dial(&args.target, &tls).await?);
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for conn in conns {
        let (pat, stop, received) = (pat.clone(), stop.clone(), received.clone());
        tasks.spawn(async move {
            let (mut r, mut w) = tokio::io::split(conn);
            // The reader stops once it has every byte the writer sent, so no contender
            // is judged on how it closes (nginx's ssl proxy sends no close_notify).
            let (sent_tx, mut sent_rx) = tokio::sync::watch::channel(None::<u64>);
            let writer = async {
                let mut off = 0usize;
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let chunk = &pat[off..off + 64 * 1024];
                    w.write_all(chunk).await?;
                    sent += chunk.len() as u64;
                    off = (off + 64 * 1024) % pat.len();
                }
                w.flush().await?;
                let _ = sent_tx.send(Some(sent));
                anyhow::Ok(())
            };
            let reader = async {
                let mut buf = vec![0u8; 64 * 1024];
                let mut pos = 0usize;
                loop {
                    if let Some(sent) = *sent_rx.borrow_and_update() {
                        if pos as u64 >= sent {
                            return anyhow::Ok(());
                        }
                    }
                    let n = tokio::select! {
                        n = r.read(&mut buf) => n?,
                        _ = sent_rx.changed() => continue,
                    };
                    if n == 0 {
                        bail!("connection closed after {pos} bytes echoed");
                    }
                    for (i, b) in buf[..n].iter().enumerate() {
                        if *b != pat[(pos + i) % pat.len()] {
                            bail!("byte {} differs", pos + i);
                        }
                    }
                    pos += n;
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
            };
            let (w, r) = tokio::join!(writer, reader);
            w?;
            r
        });
    }
    tokio::time::sleep(Duration::from_secs_f64(args.secs)).await;
    let bytes = received.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(
        json!({"workload": "bulk", "conns": args.target.conns, "bytes": bytes, "secs": elapsed,
              "mib_per_s": bytes as f64 / elapsed / 1048576.0}),
    )
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    json!({"p50_us": h.value_at_quantile(0.5), "p99_us": h.value_at_quantile(0.99),
           "p999_us": h.value_at_quantile(0.999), "count": h.len()})
}

async fn connect(args: &RunArgs) -> Result<serde_json::Value> {
    let tls = connector(&args.target.ca)?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.target.conns {
        let (t, tls) = (args.target.clone(), tls.clone());
        tasks.spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            while Instant::now() < deadline {
                let start = Instant::now();
                let mut conn = dial(&t, &tls).await?;
                hist.record(start.elapsed().as_micros() as u64)?;
                conn.write_all(&[7u8; 32]).await?;
                let mut buf = [0u8; 32];
                conn.read_exact(&mut buf).await?;
                if buf != [7u8; 32] {
                    bail!("echo differs");
                }
                conn.shutdown().await?;
            }
            anyhow::Ok(hist)
        });
    }
    let start = Instant::now();
    let mut hist = Histogram::<u64>::new(3)?;
    while let Some(r) = tasks.join_next().await {
        hist.add(r??)?;
    }
    let secs = start.elapsed().as_secs_f64().max(args.secs);
    Ok(
        json!({"workload": "connect", "conns": args.target.conns, "per_s": hist.len() as f64 / secs,
              "connect": percentiles(&hist)}),
    )
}

async fn rr(args: &RunArgs) -> Result<serde_json::Value> {
    let tls = connector(&args.target.ca)?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.secs);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.target.conns {
        let mut conn = dial(&args.target, &tls).await?;
        let size = args.size;
        tasks.spawn(async move {
            let mut hist = Histogram::<u64>::new(3)?;
            let msg: Vec<u8> = (0..size).map(|j| (i + j) as u8).collect();
            let mut buf = vec![0u8; size];
            while Instant::now() < deadline {
                let start = Instant::now();
                conn.write_all(&msg).await?;
                conn.read_exact(&mut buf).await?;
                hist.record(start.elapsed().as_micros() as u64)?;
                if buf != msg {
                    bail!("echo differs");
                }
            }
            anyhow::Ok(hist)
        });
    }
    let start = Instant::now();
    let mut hist = Histogram::<u64>::new(3)?;
    while let Some(r) = tasks.join_next().await {
        hist.add(r??)?;
    }
    let secs = start.elapsed().as_secs_f64().max(args.secs);
    Ok(
        json!({"workload": "rr", "conns": args.target.conns, "size": args.size,
              "per_s": hist.len() as f64 / secs, "latency": percentiles(&hist)}),
    )
}

async fn steady(args: &RunArgs) -> Result<serde_json::Value> {
    if !args.rate.is_finite() || args.rate <= 0.0 {
        bail!("--rate must be above 0");
    }
    let tls = connector(&args.target.ca)?;
    let pat = pattern();
    let slots = Arc::new(tokio::sync::Semaphore::new(args.target.conns.max(1)));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.secs);
    let (mut started, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    let mut settle = |done: Result<Result<u64>, tokio::task::JoinError>| match done
        .map_err(anyhow::Error::from)
        .and_then(|r| r)
    {
        Ok(n) => bytes += n,
        Err(e) => {
            errors += 1;
            eprintln!("steady: {e:#}");
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < deadline {
        ticks.tick().await;
        let slot = slots.clone().acquire_owned().await?;
        let (t, tls, pat) = (args.target.clone(), tls.clone(), pat.clone());
        // Sizes cycle through 1 KiB ..= 256 KiB, from a place in the pattern that moves.
        let len = 1024 + (started as usize * 7919) % (255 * 1024);
        let off = (started as usize * 4099) % (pat.len() - len);
        started += 1;
        tasks.spawn(async move {
            let _slot = slot;
            let conn = dial(&t, &tls).await?;
            let (mut r, mut w) = tokio::io::split(conn);
            let msg = &pat[off..off + len];
            let mut back = vec![0u8; len];
            let (sent, got) = tokio::join!(w.write_all(msg), r.read_exact(&mut back));
            sent?;
            got?;
            if back != msg {
                bail!("echo differs");
            }
            w.shutdown().await?;
            anyhow::Ok(2 * len as u64)
        });
        while let Some(done) = tasks.try_join_next() {
            settle(done);
        }
    }
    while let Some(done) = tasks.join_next().await {
        settle(done);
    }
    let secs = start.elapsed().as_secs_f64();
    if errors > 0 {
        bail!("{errors} of {started} connections failed");
    }
    Ok(
        json!({"workload": "steady", "conns": args.target.conns, "started": started,
              "per_s": started as f64 / secs, "bytes_checked": bytes, "secs": secs}),
    )
}

async fn idle(t: Target) -> Result<()> {
    let tls = connector(&t.ca)?;
    let sem = Arc::new(tokio::sync::Semaphore::new(200));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..t.conns {
        let (t, tls, sem) = (t.clone(), tls.clone(), sem.clone());
        tasks.spawn(async move {
            let _slot = sem.acquire().await?;
            let mut conn = dial(&t, &tls).await?;
            conn.write_all(b"ping").await?;
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf).await?;
            anyhow::Ok(conn)
        });
    }
    let mut held = Vec::new();
    while let Some(r) = tasks.join_next().await {
        held.push(r??);
    }
    println!("ready {}", held.len());
    // Hold until stdin closes (the driver script ends us).
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    drop(held);
    Ok(())
}

async fn bind(
    server_addr: String,
    root_cas: PathBuf,
    upstream: String,
    count: usize,
) -> Result<()> {
    let ca = std::fs::read(&root_cas)?;
    let session = burrow_core::Session::builder()
        .server_addr(server_addr)
        .root_cas(ca.clone())
        .connect()
        .await?;
    let edge_ca = std::env::temp_dir().join(format!("burrow-bench-ca-{}.pem", std::process::id()));
    std::fs::write(&edge_ca, &ca)?;
    let mut hist = Histogram::<u64>::new(3)?;
    for i in 0..count {
        let name = format!("bind{i}.bench.test");
        let start = Instant::now();
        let fwd = session
            .tls_endpoint()
            .domain(name.clone())
            .terminate_at(burrow_core::TerminateAt::Edge)
            .listen_and_forward(upstream.parse()?)
            .await?;
        let port: u16 = fwd
            .url()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("no port in {}", fwd.url()))?;
        let target = Target {
            target: SocketAddr::from(([127, 0, 0, 1], port)),
            sni: name,
            ca: edge_ca.clone(),
            conns: 1,
        };
        let mut conn = dial(&target, &connector(&edge_ca)?).await?;
        conn.write_all(b"x").await?;
        let mut b = [0u8; 1];
        conn.read_exact(&mut b).await?;
        hist.record(start.elapsed().as_micros() as u64)?;
        fwd.close();
    }
    let _ = std::fs::remove_file(&edge_ca);
    println!(
        "{}",
        json!({"workload": "bind", "bind": percentiles(&hist)})
    );
    session.close().await;
    Ok(())
}

/// A cluster edge on 127.0.0.`n` for the lookup measurement.
fn cluster_edge(etcd: &str, id: &str, n: u8, prefix: &str) -> Result<burrow_core::EdgeConfig> {
    let ip = std::net::Ipv4Addr::new(127, 0, 0, n);
    let link = std::net::TcpListener::bind((ip, 0))?.local_addr()?;
    Ok(burrow_core::EdgeConfig {
        open: true,
        tunnel_addr: SocketAddr::new(ip.into(), 0),
        tls_addr: SocketAddr::new(ip.into(), 0),
        max_endpoints_per_session: 100_000,
        cluster: Some(burrow_core::edge::ClusterConfig {
            etcd: vec![etcd.to_owned()],
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            edge_id: id.to_owned(),
            link_addr: link,
            lease_ttl_secs: 10,
            prefix: prefix.to_owned(),
        }),
        ..Default::default()
    })
}

/// Nanoseconds per lookup on `edge` over `names`, `lookups` times (every one must
/// find the owner).
fn time_lookups(edge: &burrow_core::Edge, names: &[String], lookups: usize) -> Result<f64> {
    let start = Instant::now();
    let mut found = 0usize;
    for i in 0..lookups {
        // A cheap spread over the names (a multiplicative hash of i).
        let name = &names[(i.wrapping_mul(2_654_435_761)) % names.len()];
        found += usize::from(!edge.remote_edges(name).is_empty());
    }
    let ns = start.elapsed().as_nanos() as f64 / lookups as f64;
    if found != lookups {
        bail!("{} of {lookups} lookups found no owner", lookups - found);
    }
    Ok(ns)
}

/// Waits until `edge`'s cluster cache holds `n` names.
async fn wait_for_names(edge: &burrow_core::Edge, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while edge.cluster_names() < n {
        if Instant::now() > deadline {
            bail!("the cache holds {} of {n} names", edge.cluster_names());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn lookup(etcd: String, routes: usize, lookups: usize) -> Result<()> {
    let prefix = format!("/bench-lookup-{}/", std::process::id());
    let owner = burrow_core::Edge::start(cluster_edge(&etcd, "owner", 5, &prefix)?).await?;
    let reader = burrow_core::Edge::start(cluster_edge(&etcd, "reader", 6, &prefix)?).await?;
    let session = burrow_core::Session::builder()
        .server_addr(owner.tunnel_addr().to_string())
        .root_cas(owner.ca_pem())
        .connect()
        .await?;
    let upstream: burrow_core::Upstream = "127.0.0.1:9".parse()?;
    let names: Vec<String> = (0..routes).map(|i| format!("n{i}.lookup.test")).collect();
    let mut held = Vec::with_capacity(routes);
    let bind = |name: String| {
        session
            .tls_endpoint()
            .domain(name)
            .listen_and_forward(upstream.clone())
    };
    let one = bind(names[0].clone()).await?;
    wait_for_names(&reader, 1).await?;
    let one_ns = time_lookups(&reader, &names[..1], lookups)?;
    for chunk in names[1..].chunks(64) {
        held.extend(futures::future::try_join_all(chunk.iter().cloned().map(&bind)).await?);
    }
    wait_for_names(&reader, routes).await?;
    let many_ns = time_lookups(&reader, &names, lookups)?;
    println!(
        "{}",
        json!({"workload": "lookup", "lookup": {"routes": routes, "ns_per_lookup": many_ns, "ns_per_lookup_one_route": one_ns}})
    );
    drop(held);
    drop(one);
    session.close().await;
    Ok(())
}
