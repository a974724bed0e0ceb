//! Certificates at the edge: ACME orders through a real pebble (started here, on
//! 127.0.0.1, validating TLS-ALPN-01 against the edge's public TLS port), reuse after a
//! restart, renewal, failure codes, and the selection order
//! (bind crt/key > operator exact > operator wildcard > automatic).

use crate::common::*;
use anyhow::{anyhow, bail, Context, Result};
use burrow_core::edge::{AcmeConfig, CertFiles};
use burrow_core::{Edge, EdgeConfig, ErrorCode, TerminateAt, Upstream};
use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

const PEBBLE: &str = "/usr/bin/pebble";
const CHALLTESTSRV: &str = "/usr/bin/pebble-challtestsrv";

/// A loopback port free for both UDP and TCP (DNS uses both).
fn free_dns_port() -> Result<u16> {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if StdTcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both UDP and TCP")
}

/// pebble (the ACME test server) and pebble-challtestsrv (its DNS, answering
/// 127.0.0.1 for every name), both on 127.0.0.1 ports of their own. Killed on drop.
/// One pebble at a time: parallel instances raced for "free" ports and starved each other
/// on a busy 2-core machine.
static ONE_PEBBLE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Pebble {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    _pebble: Child,
    _dns: Child,
    log: Arc<Mutex<String>>,
    /// The ACME directory URL.
    directory: String,
    /// The CA that signed pebble's HTTPS certificate (what the edge must trust).
    api_ca: PathBuf,
    api_ca_pem: String,
    management: SocketAddr,
    _dir: TempDir,
}

impl Pebble {
    /// Starts pebble validating TLS-ALPN-01 on `tls_port` of 127.0.0.1; certificates
    /// live `validity_secs` when given (pebble's default is years).
    async fn start(tls_port: u16, validity_secs: Option<u64>) -> Result<Pebble> {
        Self::start_at("127.0.0.1", tls_port, validity_secs).await
    }

    /// Like [`Pebble::start`], validating on `tls_port` of `ip` (every name resolves to it).
    async fn start_at(ip: &str, tls_port: u16, validity_secs: Option<u64>) -> Result<Pebble> {
        Self::start_with(ip, tls_port, None, validity_secs).await
    }

    /// Like [`Pebble::start_at`], validating HTTP-01 on `http_port` when given.
    async fn start_with(
        ip: &str,
        tls_port: u16,
        http_port: Option<u16>,
        validity_secs: Option<u64>,
    ) -> Result<Pebble> {
        let serial = ONE_PEBBLE.lock().await;
        for bin in [PEBBLE, CHALLTESTSRV] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: the ACME tests need pebble. Install it with \
                 `apt-get update && apt-get install -y pebble` (scripts/setup.sh does this)"
            );
        }
        let dir = TempDir::new("pebble")?;
        let pki = Pki::new("pebble API test CA");
        let leaf = pki.leaf(&["127.0.0.1", "localhost"]);
        let (cert, key, api_ca) = (
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
            dir.path().join("ca.pem"),
        );
        std::fs::write(&cert, &leaf.crt)?;
        std::fs::write(&key, &leaf.key)?;
        std::fs::write(&api_ca, &pki.ca_pem)?;

        let log = Arc::new(Mutex::new(String::new()));
        let dns_port = free_dns_port()?;
        let taken = [dns_port, tls_port, http_port.unwrap_or(0)];
        let [dns_management, listen, management, http] = distinct_free_ports::<4>(&taken)?;
        let http = http_port.unwrap_or(http);
        let management = SocketAddr::from(([127, 0, 0, 1], management));
        let mut dns = Command::new(CHALLTESTSRV)
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", ip, "-defaultIPv6", ""])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting pebble-challtestsrv")?;
        drain(dns.stdout.take().context("dns stdout")?, log.clone());
        drain(dns.stderr.take().context("dns stderr")?, log.clone());

        let mut config = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": management.to_string(),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(secs) = validity_secs {
            config["certificateValidityPeriod"] = secs.into();
        }
        let config_path = dir.path().join("pebble.json");
        std::fs::write(
            &config_path,
            serde_json::to_string(&serde_json::json!({ "pebble": config }))?,
        )?;
        let mut pebble = Command::new(PEBBLE)
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting pebble")?;
        drain(pebble.stdout.take().context("pebble stdout")?, log.clone());
        drain(pebble.stderr.take().context("pebble stderr")?, log.clone());

        let pebble = Pebble {
            _serial: serial,
            _pebble: pebble,
            _dns: dns,
            log,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            api_ca,
            api_ca_pem: pki.ca_pem,
            management,
            _dir: dir,
        };
        // Ready when both the directory and the management API answer.
        let acme_addr = SocketAddr::from(([127, 0, 0, 1], listen));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let dir_ok = https_get(acme_addr, "/dir", &pebble.api_ca_pem).await;
            let roots_ok = pebble.root().await;
            if dir_ok.is_ok() && roots_ok.is_ok() {
                return Ok(pebble);
            }
            if Instant::now() > deadline {
                bail!(
                    "pebble did not come up: {dir_ok:?} {roots_ok:?}\n{}",
                    pebble.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// pebble's issuing root (regenerated at every start), from its management API.
    async fn root(&self) -> Result<String> {
        let (status, body) = https_get(self.management, "/roots/0", &self.api_ca_pem).await?;
        if status != 200 || !body.contains("BEGIN CERTIFICATE") {
            bail!("GET /roots/0: {status} {body}");
        }
        Ok(body)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Orders pebble has created (a POST retried after a rejected nonce counts once).
    fn orders(&self) -> usize {
        self.log().matches("Added order \"").count()
    }
}

/// A minimal HTTPS GET (HTTP/1.1, `Connection: close`) returning status and body.
async fn https_get(addr: SocketAddr, path: &str, ca_pem: &str) -> Result<(u16, String)> {
    let mut tls = tls_connect(addr, "127.0.0.1", ca_pem).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    // Go closes without close_notify sometimes; what was read is still the answer.
    let _ = tls.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line: {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("chunk size")?;
        let size = usize::from_str_radix(size.trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("short chunk")?);
        body = rest.get(size + 2..).context("chunk end")?;
    }
}

/// An open edge whose automatic certificates come from `directory`.
fn acme_config(directory: &str, ca_bundle: Option<&Path>, state: &Path) -> EdgeConfig {
    EdgeConfig {
        open: true,
        heartbeat_ms: 2_000,
        state_dir: Some(state.to_owned()),
        acme: Some(AcmeConfig {
            directory: directory.to_owned(),
            contact: Some("ops@burrow.test".into()),
            ca_bundle: ca_bundle.map(Path::to_owned),
            bind_wait_ms: 20_000,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Binds `domain` edge-terminated with an automatic certificate, forwarding to `to`.
async fn bind_auto(
    edge: &Edge,
    domain: &str,
    to: SocketAddr,
) -> burrow_core::Result<(burrow_core::Session, burrow_core::Forwarder)> {
    let session = session_for(edge).await;
    let fwd = session
        .tls_endpoint()
        .domain(domain)
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(Upstream::new("127.0.0.1", to.port())?)
        .await?;
    Ok((session, fwd))
}

/// `https://127.0.0.1:<port>/dir` where nothing listens.
fn dead_directory() -> Result<String> {
    Ok(format!("https://127.0.0.1:{}/dir", free_port()?))
}

#[tokio::test]
async fn acme_order_via_tls_alpn_01_and_the_client_verifies_the_chain() -> Result<()> {
    let state = TempDir::new("order")?;
    let service = echo_server().await;
    // The edge first: pebble must validate on the edge's public TLS port.
    let mut config = acme_config("https://127.0.0.1:1/dir", None, state.path());
    let edge_tls = StdTcpListener::bind("127.0.0.1:0")?;
    config.tls_addr = edge_tls.local_addr()?;
    drop(edge_tls);
    let pebble = Pebble::start(config.tls_addr.port(), None).await?;
    if let Some(acme) = config.acme.as_mut() {
        acme.directory = pebble.directory.clone();
        acme.ca_bundle = Some(pebble.api_ca.clone());
    }
    let edge = Edge::start(config).await?;

    let started = Instant::now();
    let (_session, fwd) = bind_auto(&edge, "app.acme.test", service.addr).await?;
    let took = started.elapsed();
    assert_eq!(fwd.terminate_at(), TerminateAt::Edge);
    let counters = edge.acme_counters().context("acme configured")?;
    assert_eq!((counters.orders, counters.failures), (1, 0), "{counters:?}");
    assert_eq!(pebble.orders(), 1, "pebble log:\n{}", pebble.log());
    // pebble connected to the edge's public port and got the challenge certificate.
    assert!(counters.validations >= 1, "{counters:?}");
    assert!(
        pebble.log().contains("set VALID by completed challenge"),
        "{}",
        pebble.log()
    );

    // A client that trusts only pebble's root verifies the chain the edge serves.
    let root = pebble.root().await?;
    let tls = tls_connect(edge.tls_addr(), "app.acme.test", &root).await?;
    let chain = tls.get_ref().1.peer_certificates().context("chain")?.len();
    assert!(chain >= 2, "leaf and intermediate expected, got {chain}");
    echo_check(tls, &pseudo_random(256 * 1024, 91)).await?;
    // ... and one trusting only the edge's own CA does not.
    assert!(tls_connect(edge.tls_addr(), "app.acme.test", edge.ca_pem())
        .await
        .is_err());

    // Stored in the state directory, key readable by the owner only.
    let acme_dir = std::fs::read_dir(state.path().join("acme"))?
        .next()
        .context("acme dir")??
        .path();
    let key = acme_dir.join("app.acme.test.key");
    assert!(acme_dir.join("app.acme.test.crt").is_file());
    assert!(acme_dir.join("account.json").is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [&key, &acme_dir.join("account.json")] {
            let mode = std::fs::metadata(f)?.permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
    }
    eprintln!("ACME order through pebble took {took:?}");
    Ok(())
}

#[tokio::test]
async fn acme_order_via_http_01_on_the_plain_listener_for_an_http_endpoint() -> Result<()> {
    let state = TempDir::new("order-http01")?;
    let app = crate::web::web_app().await;
    let mut config = acme_config("https://127.0.0.1:1/dir", None, state.path());
    let [tls_port, http_port] = distinct_free_ports::<2>(&[])?;
    config.tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    config.http_addr = Some(SocketAddr::from(([127, 0, 0, 1], http_port)));
    let pebble = Pebble::start_with("127.0.0.1", tls_port, Some(http_port), None).await?;
    if let Some(acme) = config.acme.as_mut() {
        acme.directory = pebble.directory.clone();
        acme.ca_bundle = Some(pebble.api_ca.clone());
        acme.challenge = burrow_core::edge::ChallengeKind::Http01;
    }
    let edge = Edge::start(config).await?;
    let session = session_for(&edge).await;
    let fwd = session
        .http_endpoint()
        .domain("web.acme.test")
        .listen_and_forward(Upstream::new("127.0.0.1", app.addr.port())?)
        .await?;
    let counters = edge.acme_counters().context("acme configured")?;
    assert_eq!((counters.orders, counters.failures), (1, 0), "{counters:?}");
    assert!(counters.validations >= 1, "{counters:?}\n{}", pebble.log());
    assert!(
        pebble.log().contains("set VALID by completed challenge"),
        "{}",
        pebble.log()
    );
    // curl trusting only pebble's root gets the app over https.
    let root = pebble.root().await?;
    let got = crate::web::curl_via(&root, edge.tls_addr().ip(), fwd.url(), &[]).await?;
    assert_eq!((got.status, got.text().as_str()), (200, "hello"));
    Ok(())
}

#[tokio::test]
async fn an_http_01_edge_without_an_http_listener_is_refused_at_start() -> Result<()> {
    let state = TempDir::new("http01-refused")?;
    let mut config = acme_config("https://127.0.0.1:1/dir", None, state.path());
    if let Some(acme) = config.acme.as_mut() {
        acme.challenge = burrow_core::edge::ChallengeKind::Http01;
    }
    let err = Edge::start(config).await.err().context("refused")?;
    assert!(err.to_string().contains("http_addr"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_restarted_edge_serves_the_stored_certificate_without_ordering() -> Result<()> {
    let state = TempDir::new("restart")?;
    let service = echo_server().await;
    let mut config = acme_config("https://127.0.0.1:1/dir", None, state.path());
    let port = StdTcpListener::bind("127.0.0.1:0")?.local_addr()?;
    config.tls_addr = port;
    let pebble = Pebble::start(port.port(), None).await?;
    if let Some(acme) = config.acme.as_mut() {
        acme.directory = pebble.directory.clone();
        acme.ca_bundle = Some(pebble.api_ca.clone());
    }
    let root = pebble.root().await?;

    let edge = Edge::start(config.clone()).await?;
    let (session, _fwd) = bind_auto(&edge, "keep.acme.test", service.addr).await?;
    let first = peer_cert(&tls_connect(edge.tls_addr(), "keep.acme.test", &root).await?);
    drop(session);
    edge.shutdown().await;
    assert_eq!(pebble.orders(), 1);

    config.tls_addr = "127.0.0.1:0".parse()?;
    let edge = Edge::start(config).await?;
    let counters = edge.acme_counters().context("acme configured")?;
    assert_eq!((counters.loaded, counters.orders), (1, 0), "{counters:?}");
    let (_session, _fwd) = bind_auto(&edge, "keep.acme.test", service.addr).await?;
    let tls = tls_connect(edge.tls_addr(), "keep.acme.test", &root).await?;
    assert_eq!(peer_cert(&tls), first, "the stored certificate is served");
    echo_check(tls, b"still here").await?;
    assert_eq!(
        edge.acme_counters().map(|c| c.orders),
        Some(0),
        "no new order"
    );
    assert_eq!(pebble.orders(), 1, "pebble saw no new order");
    Ok(())
}

#[tokio::test]
async fn renewal_swaps_the_certificate_without_dropping_an_open_connection() -> Result<()> {
    let state = TempDir::new("renew")?;
    let service = echo_server().await;
    let mut config = acme_config("https://127.0.0.1:1/dir", None, state.path());
    config.tls_addr = StdTcpListener::bind("127.0.0.1:0")?.local_addr()?;
    // 12 s certificates: the 30-day window is capped at two thirds of the lifetime, so
    // each certificate is renewed about 4 s after it was issued.
    let pebble = Pebble::start(config.tls_addr.port(), Some(12)).await?;
    if let Some(acme) = config.acme.as_mut() {
        acme.directory = pebble.directory.clone();
        acme.ca_bundle = Some(pebble.api_ca.clone());
    }
    let root = pebble.root().await?;
    let edge = Edge::start(config).await?;
    let (_session, _fwd) = bind_auto(&edge, "renew.acme.test", service.addr).await?;

    let mut open = tls_connect(edge.tls_addr(), "renew.acme.test", &root).await?;
    let first = peer_cert(&open);
    let mut buf = [0u8; 5];
    open.write_all(b"hello").await?;
    open.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"hello");

    let deadline = Instant::now() + Duration::from_secs(30);
    let renewed = loop {
        let tls = tls_connect(edge.tls_addr(), "renew.acme.test", &root).await?;
        let cert = peer_cert(&tls);
        if cert != first {
            break cert;
        }
        if Instant::now() > deadline {
            bail!(
                "no renewal within 30 s: {:?}\n{}",
                edge.acme_counters(),
                pebble.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(renewed, first);
    let counters = edge.acme_counters().context("acme configured")?;
    assert!(counters.renewals >= 1, "{counters:?}");
    assert!(pebble.orders() >= 2);

    // The connection opened before the swap still carries data both ways.
    open.write_all(b"world").await?;
    open.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"world");
    echo_check(open, &pseudo_random(64 * 1024, 92)).await?;
    Ok(())
}

#[tokio::test]
async fn a_failing_renewal_is_retried_and_the_old_certificate_keeps_serving() -> Result<()> {
    let state = TempDir::new("renew-fail")?;
    let service = echo_server().await;
    let mut config = acme_config("https://127.0.0.1:1/dir", None, state.path());
    config.tls_addr = StdTcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let pebble = Pebble::start(config.tls_addr.port(), Some(12)).await?;
    if let Some(acme) = config.acme.as_mut() {
        acme.directory = pebble.directory.clone();
        acme.ca_bundle = Some(pebble.api_ca.clone());
        acme.retry_initial_ms = 200;
        acme.retry_max_ms = 400;
    }
    let root = pebble.root().await?;
    let edge = Edge::start(config).await?;
    let (_session, _fwd) = bind_auto(&edge, "stay.acme.test", service.addr).await?;
    let first = peer_cert(&tls_connect(edge.tls_addr(), "stay.acme.test", &root).await?);

    // The directory goes away; renewal (due ~4 s after issuance) fails and is retried.
    drop(pebble);
    let failing = eventually(Duration::from_secs(20), || {
        edge.acme_counters().is_some_and(|c| c.failures >= 2)
    })
    .await;
    assert!(failing, "{:?}", edge.acme_counters());
    let counters = edge.acme_counters().context("acme configured")?;
    assert_eq!(counters.renewals, 0, "{counters:?}");
    let tls = tls_connect(edge.tls_addr(), "stay.acme.test", &root).await?;
    assert_eq!(peer_cert(&tls), first, "the old certificate still serves");
    echo_check(tls, b"old but valid").await
}

#[tokio::test]
async fn mode_own_ca_switches_acme_off() -> Result<()> {
    let state = TempDir::new("own-ca")?;
    let mut config = acme_config(&dead_directory()?, None, state.path());
    if let Some(acme) = config.acme.as_mut() {
        acme.mode = burrow_core::edge::AcmeMode::OwnCa;
    }
    let edge = Edge::start(config).await?;
    assert!(edge.acme_counters().is_none());
    let service = echo_server().await;
    let (_s, _f) = bind_auto(&edge, "app.ownca.test", service.addr).await?;
    let tls = tls_connect(edge.tls_addr(), "app.ownca.test", edge.ca_pem()).await?;
    echo_check(tls, b"own CA").await
}

#[tokio::test]
async fn a_failed_challenge_fails_the_bind_with_acme_failed() -> Result<()> {
    let state = TempDir::new("challenge")?;
    let service = echo_server().await;
    // pebble validates on a port where nothing listens: the challenge cannot succeed.
    let pebble = Pebble::start(free_port()?, None).await?;
    let config = acme_config(&pebble.directory, Some(&pebble.api_ca), state.path());
    let edge = Edge::start(config).await?;
    let err = bind_auto(&edge, "fail.acme.test", service.addr)
        .await
        .err()
        .context("the bind must fail")?;
    assert_eq!(err.code(), ErrorCode::AcmeFailed, "{err}");
    assert!(err.message().contains("challenge failed"), "{err}");
    assert!(err.message().contains("fail.acme.test"), "{err}");
    assert!(edge.route("fail.acme.test").is_none(), "nothing is served");
    let counters = edge.acme_counters().context("acme configured")?;
    assert_eq!(counters.failures, 1, "{counters:?}");

    // A second bind inside the retry delay gets the same reason at once, without an order.
    let again = bind_auto(&edge, "fail.acme.test", service.addr)
        .await
        .err()
        .context("still failing")?;
    assert_eq!(again.code(), ErrorCode::AcmeFailed);
    assert!(again.message().contains("next attempt in"), "{again}");
    assert_eq!(pebble.orders(), 1);
    Ok(())
}

#[tokio::test]
async fn an_unreachable_directory_fails_the_bind_with_acme_unreachable() -> Result<()> {
    let state = TempDir::new("down")?;
    let service = echo_server().await;
    let directory = dead_directory()?;
    let edge = Edge::start(acme_config(&directory, None, state.path())).await?;
    let err = bind_auto(&edge, "down.acme.test", service.addr)
        .await
        .err()
        .context("the bind must fail")?;
    assert_eq!(err.code(), ErrorCode::AcmeUnreachable, "{err}");
    assert!(err.message().contains(&directory), "{err}");
    assert!(edge.route("down.acme.test").is_none());
    Ok(())
}

#[tokio::test]
async fn a_silent_directory_fails_the_bind_after_the_wait_and_the_session_goes_on() -> Result<()> {
    let state = TempDir::new("silent")?;
    let service = echo_server().await;
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let directory = format!("https://{}/dir", silent.local_addr()?);
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let wait = Duration::from_millis(4_000);
    let mut config = acme_config(&directory, None, state.path());
    // Three heartbeat intervals (3 s) are shorter than the wait: a bind that blocked the
    // session's control loop would stall every other bind and get the session dropped.
    config.heartbeat_ms = 1_000;
    if let Some(acme) = config.acme.as_mut() {
        acme.bind_wait_ms = wait.as_millis() as u64;
    }
    let edge = Edge::start(config).await?;
    let session = session_for(&edge).await;
    let started = Instant::now();
    let slow = {
        let session = session.clone();
        let port = service.addr.port();
        tokio::spawn(async move {
            session
                .tls_endpoint()
                .domain("slow.acme.test")
                .terminate_at(TerminateAt::Edge)
                .listen_and_forward(Upstream::new("127.0.0.1", port)?)
                .await
        })
    };
    // Meanwhile the same session binds and serves another endpoint (own CA, no order).
    let other = session
        .tls_endpoint()
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(Upstream::new("127.0.0.1", service.addr.port())?)
        .await?;
    assert!(
        started.elapsed() < wait,
        "the second bind waited for the first: {:?}",
        started.elapsed()
    );
    let host = url_host(other.url());
    echo_check(
        tls_connect(edge.tls_addr(), &host, edge.ca_pem()).await?,
        b"meanwhile",
    )
    .await?;

    let err = slow.await?.err().context("the bind must fail")?;
    let took = started.elapsed();
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
    assert!(err.message().contains("slow.acme.test"), "{err}");
    assert!(took >= wait && took < wait * 3, "{took:?}");
    assert!(edge.route("slow.acme.test").is_none());
    // The session survived the wait: same session, its endpoint still serves.
    assert_eq!(edge.session_count(), 1);
    echo_check(
        tls_connect(edge.tls_addr(), &host, edge.ca_pem()).await?,
        b"afterwards",
    )
    .await?;
    hold.abort();
    Ok(())
}

/// Writes `leaf` as `dir/<stem>.crt` + `.key`.
fn write_pair(dir: &Path, stem: &str, leaf: &Leaf) -> Result<CertFiles> {
    std::fs::create_dir_all(dir)?;
    let crt = dir.join(format!("{stem}.crt"));
    let key = dir.join(format!("{stem}.key"));
    std::fs::write(&crt, &leaf.crt)?;
    std::fs::write(&key, &leaf.key)?;
    Ok(CertFiles { crt, key })
}

#[tokio::test]
async fn selection_the_binds_own_certificate_beats_an_operator_certificate() -> Result<()> {
    let state = TempDir::new("sel-bind")?;
    let operator = Pki::new("operator CA");
    let mut config = acme_config(&dead_directory()?, None, state.path());
    config.certs = vec![write_pair(
        &state.path().join("op"),
        "exact",
        &operator.leaf(&["own.sel.test"]),
    )?];
    let edge = Edge::start(config).await?;
    let service = echo_server().await;
    let pki = Pki::new("bind CA");
    let cert = pki.leaf(&["own.sel.test"]);
    let session = session_for(&edge).await;
    let _fwd = session
        .tls_endpoint()
        .domain("own.sel.test")
        .termination(cert.crt.clone(), cert.key.clone())
        .listen_and_forward(Upstream::new("127.0.0.1", service.addr.port())?)
        .await?;
    let tls = tls_connect(edge.tls_addr(), "own.sel.test", &pki.ca_pem).await?;
    assert_eq!(peer_cert(&tls), cert.der());
    echo_check(tls, b"bind cert").await
}

#[tokio::test]
async fn selection_an_exact_operator_certificate_beats_a_wildcard() -> Result<()> {
    let state = TempDir::new("sel-exact")?;
    let operator = Pki::new("operator CA");
    let exact = operator.leaf(&["a.sel.test"]);
    let wildcard = operator.leaf(&["*.sel.test"]);
    let mut config = acme_config(&dead_directory()?, None, state.path());
    // The exact one from the config, the wildcard from <state_dir>/certs/.
    config.certs = vec![write_pair(&state.path().join("op"), "a", &exact)?];
    write_pair(&state.path().join("certs"), "wild", &wildcard)?;
    let edge = Edge::start(config).await?;
    let service = echo_server().await;
    let (_s1, _f1) = bind_auto(&edge, "a.sel.test", service.addr).await?;
    let (_s2, _f2) = bind_auto(&edge, "b.sel.test", service.addr).await?;

    let tls = tls_connect(edge.tls_addr(), "a.sel.test", &operator.ca_pem).await?;
    assert_eq!(peer_cert(&tls), exact.der(), "exact name first");
    echo_check(tls, b"exact").await?;
    let tls = tls_connect(edge.tls_addr(), "b.sel.test", &operator.ca_pem).await?;
    assert_eq!(
        peer_cert(&tls),
        wildcard.der(),
        "the wildcard serves other names"
    );
    assert_eq!(edge.acme_counters().map(|c| c.orders), Some(0));
    Ok(())
}

#[tokio::test]
async fn selection_a_wildcard_operator_certificate_beats_automatic() -> Result<()> {
    let state = TempDir::new("sel-wild")?;
    let operator = Pki::new("operator CA");
    let wildcard = operator.leaf(&["*.wild.test"]);
    // ACME would fail (nothing listens): serving at all proves it was not asked.
    let mut config = acme_config(&dead_directory()?, None, state.path());
    config.certs = vec![write_pair(&state.path().join("op"), "wild", &wildcard)?];
    let edge = Edge::start(config).await?;
    let service = echo_server().await;
    let session = session_for(&edge).await;
    let mut forwarders = Vec::new();
    // An exact name, and a wildcard endpoint (ACME cannot issue wildcards; the operator
    // certificate serves it).
    for domain in ["x.wild.test", "*.wild.test"] {
        forwarders.push(
            session
                .tls_endpoint()
                .domain(domain)
                .terminate_at(TerminateAt::Edge)
                .listen_and_forward(Upstream::new("127.0.0.1", service.addr.port())?)
                .await?,
        );
    }
    for host in ["x.wild.test", "y.wild.test"] {
        let tls = tls_connect(edge.tls_addr(), host, &operator.ca_pem).await?;
        assert_eq!(peer_cert(&tls), wildcard.der(), "{host}");
        echo_check(tls, host.as_bytes()).await?;
    }
    let counters = edge.acme_counters().context("acme configured")?;
    assert_eq!((counters.orders, counters.failures), (0, 0), "{counters:?}");
    Ok(())
}

#[tokio::test]
async fn selection_automatic_comes_from_acme_when_no_operator_certificate_covers() -> Result<()> {
    let state = TempDir::new("sel-auto")?;
    let service = echo_server().await;
    let mut config = acme_config("https://127.0.0.1:1/dir", None, state.path());
    config.tls_addr = StdTcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let pebble = Pebble::start(config.tls_addr.port(), None).await?;
    if let Some(acme) = config.acme.as_mut() {
        acme.directory = pebble.directory.clone();
        acme.ca_bundle = Some(pebble.api_ca.clone());
    }
    // Operator certificates for other names do not apply.
    let operator = Pki::new("operator CA");
    config.certs = vec![
        write_pair(
            &state.path().join("op"),
            "other",
            &operator.leaf(&["other.acme.test"]),
        )?,
        write_pair(
            &state.path().join("op"),
            "deeper",
            &operator.leaf(&["*.x.auto.acme.test"]),
        )?,
    ];
    let edge = Edge::start(config).await?;
    let (_s, _f) = bind_auto(&edge, "auto.acme.test", service.addr).await?;
    let root = pebble.root().await?;
    let tls = tls_connect(edge.tls_addr(), "auto.acme.test", &root).await?;
    echo_check(tls, b"automatic").await?;
    assert_eq!(edge.acme_counters().map(|c| c.orders), Some(1));
    Ok(())
}

#[tokio::test]
async fn names_under_the_suffix_get_the_own_ca_and_acme_refuses_wildcards() -> Result<()> {
    let state = TempDir::new("suffix")?;
    let edge = Edge::start(acme_config(&dead_directory()?, None, state.path())).await?;
    let service = echo_server().await;
    let session = session_for(&edge).await;
    // A random name under the edge's suffix: the own CA, no order.
    let fwd = session
        .tls_endpoint()
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(Upstream::new("127.0.0.1", service.addr.port())?)
        .await?;
    let host = url_host(fwd.url());
    let tls = tls_connect(edge.tls_addr(), &host, edge.ca_pem()).await?;
    echo_check(tls, b"own ca").await?;
    assert_eq!(edge.acme_counters().map(|c| c.orders), Some(0));

    // A wildcard ACME would have to serve, with no operator certificate: refused, and why.
    let err = bind_auto(&edge, "*.nocert.test", service.addr)
        .await
        .err()
        .context("wildcard without a certificate must fail")?;
    assert_eq!(err.code(), ErrorCode::Unsupported, "{err}");
    assert!(err.message().contains("wildcard"), "{err}");
    Ok(())
}

#[test]
fn acme_config_parses_from_toml_and_bad_values_are_refused() -> Result<()> {
    let config = EdgeConfig::from_toml(
        r#"
        state_dir = "/var/lib/burrow"
        [acme]
        directory = "https://acme-staging-v02.api.letsencrypt.org/directory"
        contact = "ops@example.com"
        challenge = "tls-alpn-01"
        renew_before_days = 20
        [[certs]]
        crt = "/etc/burrow/wild.crt"
        key = "/etc/burrow/wild.key"
        "#,
    )?;
    let acme = config.acme.context("acme section")?;
    assert!(acme.directory.contains("staging"));
    assert_eq!(acme.renew_before_days, 20);
    assert_eq!(acme.bind_wait_ms, 25_000, "default");
    assert_eq!(config.certs.len(), 1);

    for (bad, field) in [
        ("[acme]\ndirectory = \"http://x/dir\"", "directory"),
        ("[acme]\nchallenge = \"dns-01\"", "challenge"),
        ("[acme]\nmode = \"maybe\"", "mode"),
        ("[acme]\ncontact = \"nobody\"", "contact"),
        ("[acme]\nrenew_before_days = 0", "renew_before_days"),
        ("[acme]\ndirectroy = \"https://x\"", "directroy"),
    ] {
        let err = EdgeConfig::from_toml(bad)
            .err()
            .with_context(|| format!("{bad} must be refused"))?;
        assert_eq!(err.code(), ErrorCode::Config, "{err}");
        assert!(err.message().contains(field), "{bad}: {err}");
    }
    Ok(())
}

#[tokio::test]
async fn in_a_cluster_any_edge_answers_the_validation_and_every_edge_serves_the_certificate(
) -> Result<()> {
    use crate::cluster::{edge_config, Etcd};
    use std::net::{IpAddr, Ipv4Addr};
    let etcd = Etcd::start().await?;
    // One public TLS port, free on both edges' addresses.
    let port = loop {
        let p = free_port()?;
        let free = |n| StdTcpListener::bind((Ipv4Addr::new(127, 0, 0, n), p)).is_ok();
        if free(2) && free(3) {
            break p;
        }
    };
    // Every name resolves to edge b: pebble validates there, while edge a orders.
    let pebble = Pebble::start_at("127.0.0.3", port, None).await?;
    let edge = |id: &str, n: u8| -> Result<EdgeConfig> {
        let mut c = edge_config(&etcd, id, n, "/acme/")?;
        c.tls_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)), port);
        c.acme = Some(AcmeConfig {
            directory: pebble.directory.clone(),
            ca_bundle: Some(pebble.api_ca.clone()),
            bind_wait_ms: 20_000,
            ..Default::default()
        });
        Ok(c)
    };
    let a = Edge::start(edge("a", 2)?).await?;
    let b = Edge::start(edge("b", 3)?).await?;
    let service = echo_server().await;
    let upstream = Upstream::new("127.0.0.1", service.addr.port())?;
    let name = "app.cluster-acme.test";

    let on_a = session_for(&a).await;
    let fwd = on_a
        .tls_endpoint()
        .domain(name)
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(upstream.clone())
        .await?;
    assert_eq!(fwd.terminate_at(), TerminateAt::Edge);
    let (ca, cb) = (
        a.acme_counters().context("acme")?,
        b.acme_counters().context("acme")?,
    );
    assert_eq!(
        (ca.orders, cb.orders),
        (1, 0),
        "a orders, b does not: {ca:?} {cb:?}"
    );
    assert!(
        ca.validations >= 1 && cb.validations == 0,
        "pebble reached b, which sent the validation to a: {ca:?} {cb:?}\n{}",
        pebble.log()
    );
    let root = pebble.root().await?;
    // Through b (the connection goes to a, which terminates with the certificate).
    let tls = tls_connect(b.tls_addr(), name, &root).await?;
    let leaf = peer_cert(&tls);
    echo_check(tls, &pseudo_random(64 * 1024, 11)).await?;

    // The agent moves to b: b serves the same certificate without ordering one.
    on_a.close().await;
    let on_b = session_for(&b).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let moved = loop {
        match on_b
            .tls_endpoint()
            .domain(name)
            .terminate_at(TerminateAt::Edge)
            .listen_and_forward(upstream.clone())
            .await
        {
            Ok(f) => break f,
            Err(e) if e.code() == ErrorCode::DomainTaken && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    assert_eq!(moved.terminate_at(), TerminateAt::Edge);
    let tls = tls_connect(b.tls_addr(), name, &root).await?;
    assert_eq!(peer_cert(&tls), leaf, "b must serve the certificate a got");
    echo_check(tls, &pseudo_random(64 * 1024, 12)).await?;
    let cb = b.acme_counters().context("acme")?;
    assert_eq!(cb.orders, 0, "b ordered again: {cb:?}");
    assert_eq!(pebble.orders(), 1, "pebble log:\n{}", pebble.log());
    Ok(())
}
