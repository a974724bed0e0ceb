//! Shared test parts: a PKI made at test time, echo servers, TLS clients, data checks.

#![allow(dead_code)]

use anyhow::{anyhow, bail, Context, Result};
use burrow_core::wire::{AgentMsg, BindSpec, ControlChannel, EdgeMsg, PROTOCOL_VERSION};
use burrow_core::{Edge, EdgeConfig, Session};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A test certificate authority.
pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and key, PEM.
#[derive(Clone)]
pub struct Leaf {
    pub crt: String,
    pub key: String,
}

impl Leaf {
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.crt.as_bytes()).expect("test cert")
    }
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("ca");
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A client certificate with this common name.
    pub fn client(&self, cn: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("client");
        Leaf {
            crt: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Leaf {
            crt: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// An edge on loopback that accepts any token.
///
/// Heartbeats are short enough for tests to see a dead agent quickly, but long enough
/// that a busy 2-core machine running many tests at once never misses three in a row.
pub async fn open_edge() -> Edge {
    edge_with_heartbeat(2_000).await
}

pub async fn edge_with_heartbeat(heartbeat_ms: u64) -> Edge {
    Edge::start(EdgeConfig {
        open: true,
        tcp_ports: Some([0, 0]),
        heartbeat_ms,
        ..Default::default()
    })
    .await
    .expect("edge starts")
}

pub async fn session_for(edge: &Edge) -> Session {
    Session::builder()
        .server_addr(edge.tunnel_addr().to_string())
        .root_cas(edge.ca_pem())
        .connect()
        .await
        .expect("session connects")
}

/// A TCP echo server; the task ends when dropped.
pub struct Echo {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_io<S: AsyncRead + AsyncWrite + Unpin>(s: S) {
    let (mut r, mut w) = tokio::io::split(s);
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// Plain TCP echo.
pub async fn echo_server() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(echo_io(s));
        }
    });
    Echo { addr, task }
}

/// TLS echo with `leaf` (the upstream terminates TLS itself).
pub async fn tls_echo_server(leaf: &Leaf) -> Echo {
    tls_server(leaf, echo_io).await
}

/// A TLS service with `leaf` that answers every connection with `name`, then closes
/// (tells which of several upstreams a connection reached).
pub async fn tls_name_server(leaf: &Leaf, name: &str) -> Echo {
    let name = Arc::<str>::from(name);
    tls_server(leaf, move |mut tls| {
        let name = name.clone();
        async move {
            let _ = tls.write_all(name.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    })
    .await
}

/// A TLS server with `leaf` that hands each accepted connection to `serve`.
async fn tls_server<F, Fut>(leaf: &Leaf, serve: F) -> Echo
where
    F: Fn(tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let certs = vec![leaf.der()];
    let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serve = Arc::new(serve);
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (acceptor, serve) = (acceptor.clone(), serve.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    serve(tls).await;
                }
            });
        }
    });
    Echo { addr, task }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of `ca_pem` as a root store.
fn roots(ca_pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("ca");
    }
    roots
}

/// A TLS client config trusting `ca_pem`.
pub fn client_config(ca_pem: &str) -> rustls::ClientConfig {
    client_config_with(
        ca_pem,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        None,
        &[],
    )
}

/// A TLS client config with chosen versions, optional client certificate and ALPN offer.
pub fn client_config_with(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    client_cert: Option<&Leaf>,
    alpn: &[&str],
) -> rustls::ClientConfig {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots(ca_pem));
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der()],
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).expect("client key"),
            )
            .expect("client cert"),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config
}

/// A TLS client config trusting `ca_pem`, with `provider`'s cipher suites in its order.
pub fn client_config_with_provider(
    ca_pem: &str,
    provider: rustls::crypto::CryptoProvider,
) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots(ca_pem))
        .with_no_client_auth()
}

pub type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects to `addr` with SNI `name`, trusting `ca_pem`.
pub async fn tls_connect(addr: SocketAddr, name: &str, ca_pem: &str) -> Result<ClientTls> {
    tls_connect_with(addr, name, client_config(ca_pem)).await
}

pub async fn tls_connect_with(
    addr: SocketAddr,
    name: &str,
    config: rustls::ClientConfig,
) -> Result<ClientTls> {
    let tcp = TcpStream::connect(addr).await.context("tcp connect")?;
    let connector = TlsConnector::from(Arc::new(config));
    let server_name = ServerName::try_from(name.to_owned()).map_err(|e| anyhow!("{e}"))?;
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(server_name, tcp))
        .await
        .context("handshake timed out")?
        .context("handshake")?;
    Ok(tls)
}

/// The certificate the server presented.
pub fn peer_cert(tls: &ClientTls) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().expect("peer certs")[0]
        .clone()
        .into_owned()
}

/// Host part of a `tls://host:port` URL.
pub fn url_host(url: &str) -> String {
    let rest = url.split_once("://").expect("scheme").1;
    rest.split(':').next().expect("host").to_owned()
}

/// Port part of a `scheme://host:port` URL.
pub fn url_port(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .expect("port")
        .parse()
        .expect("port number")
}

/// Deterministic pseudo-random bytes (xorshift) so each test's data differs by seed.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sends `data` and reads the echo concurrently; fails unless it comes back byte-exact.
pub async fn echo_check<S: AsyncRead + AsyncWrite + Unpin>(stream: S, data: &[u8]) -> Result<()> {
    let (mut r, mut w) = tokio::io::split(stream);
    let send = async {
        w.write_all(data).await?;
        w.shutdown().await?;
        anyhow::Ok(())
    };
    let recv = async {
        let mut got = Vec::with_capacity(data.len());
        r.read_to_end(&mut got).await?;
        anyhow::Ok(got)
    };
    let (sent, got) =
        tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(send, recv) })
            .await
            .context("echo timed out")?;
    sent?;
    let got = got?;
    if got.len() != data.len() {
        return Err(anyhow!(
            "echo returned {} bytes, sent {}",
            got.len(),
            data.len()
        ));
    }
    if let Some(i) = got.iter().zip(data).position(|(a, b)| a != b) {
        return Err(anyhow!("echo differs at byte {i}"));
    }
    Ok(())
}

/// Runs `n` concurrent connections made by `connect`, each echoing `len` bytes.
pub async fn concurrent_echo<F, Fut, S>(n: usize, len: usize, connect: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let conn = connect();
        set.spawn(async move {
            let data = pseudo_random(len, 1000 + i as u64);
            echo_check(conn.await?, &data).await
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

/// Waits up to `limit` for `cond`, checking every 20 ms.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

pub const MIB: usize = 1024 * 1024;

/// Relays TCP to `target`; `freeze` stops moving bytes on existing connections without
/// closing them, `cut` resets them (both ends), as a dead host or a broken path would.
pub struct FreezingProxy {
    pub addr: SocketAddr,
    pub frozen: Arc<tokio::sync::Notify>,
    pub cut: Arc<tokio::sync::Notify>,
}

impl FreezingProxy {
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let frozen = Arc::new(tokio::sync::Notify::new());
        let cut = Arc::new(tokio::sync::Notify::new());
        let (freeze, reset) = (frozen.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (freeze, reset) = (freeze.clone(), reset.clone());
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
                        _ = reset.notified() => {
                            // Dropped with a zero linger: both peers get a reset.
                            let _ = inbound.set_zero_linger();
                            let _ = outbound.set_zero_linger();
                        }
                    }
                });
            }
        });
        Ok(FreezingProxy { addr, frozen, cut })
    }
}

/// A self-signed X.509 v1 certificate for `cn` (no extensions, so no SAN), made the way
/// people make them: `openssl req` then `openssl x509 -req -signkey`.
pub fn openssl_v1_cert(cn: &str) -> Result<Leaf> {
    let dir = std::env::temp_dir().join(format!("burrow-v1-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir)?;
    let run = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .context("running openssl")?;
        if !out.status.success() {
            return Err(anyhow!(
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    };
    let subject = format!("/CN={cn}");
    let made = run(&[
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-subj", &subject,
        "-out", "csr.pem",
    ])
    .and_then(|()| {
        run(&[
            "x509", "-req", "-in", "csr.pem", "-signkey", "key.pem", "-days", "2", "-out",
            "crt.pem",
        ])
    })
    .and_then(|()| {
        Ok(Leaf {
            crt: std::fs::read_to_string(dir.join("crt.pem"))?,
            key: std::fs::read_to_string(dir.join("key.pem"))?,
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
    made
}

/// A TLS 1.3 client that trusts exactly one server certificate (by its DER bytes) and
/// checks the handshake signature against its public key; for certificates webpki will
/// not read (X.509 v1).
pub fn pinned_client_config(expected: CertificateDer<'static>) -> rustls::ClientConfig {
    let spki = x509_parser::parse_x509_certificate(&expected)
        .expect("pinned cert parses")
        .1
        .public_key()
        .raw
        .to_vec();
    rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            expected,
            spki: rustls::pki_types::SubjectPublicKeyInfoDer::from(spki),
            provider: provider(),
        }))
        .with_no_client_auth()
}

#[derive(Debug)]
struct Pinned {
    expected: CertificateDer<'static>,
    spki: rustls::pki_types::SubjectPublicKeyInfoDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.expected.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the pinned certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "the pinned client speaks TLS 1.3 only".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        _cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &self.spki,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An agent speaking the wire protocol by hand (authenticated, no token), which can go
/// silent or send what a real agent never would.
pub struct RawAgent {
    pub control: ControlChannel<burrow_core::wire::mux::MuxStream>,
    _stop: tokio_util::sync::DropGuard,
}

impl RawAgent {
    pub async fn connect(edge: &Edge) -> Result<RawAgent> {
        let tcp = TcpStream::connect(edge.tunnel_addr()).await?;
        let config = burrow_core::tls::tunnel_client_config(Some(edge.ca_pem().as_bytes()))?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let stop = tokio_util::sync::CancellationToken::new();
        let mux = burrow_core::wire::mux::start(
            tls,
            burrow_core::wire::mux::Side::Agent,
            stop.clone(),
            16,
        );
        let mut control = ControlChannel::new(mux.handle.open().await?);
        control
            .send(&AgentMsg::Auth {
                version: PROTOCOL_VERSION,
                authtoken: None,
                metadata: String::new(),
                resume: None,
                client_info: Vec::new(),
                heartbeat_ms: None,
                join: None,
            })
            .await?;
        match control.recv::<EdgeMsg>().await? {
            Some(EdgeMsg::AuthOk { .. }) => {}
            other => return Err(anyhow!("expected AuthOk, got {other:?}")),
        }
        Ok(RawAgent {
            control,
            _stop: stop.drop_guard(),
        })
    }

    pub async fn bind(&mut self, spec: BindSpec) -> Result<EdgeMsg> {
        self.control
            .send(&AgentMsg::Bind {
                request_id: 7,
                spec: Box::new(spec),
            })
            .await?;
        loop {
            match self.control.recv::<EdgeMsg>().await? {
                Some(EdgeMsg::Heartbeat) => continue,
                Some(msg) => return Ok(msg),
                None => return Err(anyhow!("control stream closed")),
            }
        }
    }
}
/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Result<TempDir> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "burrow-test-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback TCP port nothing listens on right now.
pub fn free_port() -> Result<u16> {
    Ok(StdTcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `N` loopback ports, distinct from each other and from `taken`. The listeners are held
/// until all are chosen: ports picked one by one can repeat (the kernel hands a just
/// closed port out again), and two servers of one test then fight over one port.
pub fn distinct_free_ports<const N: usize>(taken: &[u16]) -> Result<[u16; N]> {
    let mut held = Vec::new();
    let mut ports = [0u16; N];
    let mut found = 0;
    while found < N {
        let listener = StdTcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        held.push(listener);
        if !taken.contains(&port) {
            ports[found] = port;
            found += 1;
        }
        if held.len() > 10 * N + 10 {
            bail!("no {N} distinct free ports");
        }
    }
    Ok(ports)
}

/// Drains a child's output into `log`, line by line.
pub fn drain(out: impl AsyncRead + Unpin + Send + 'static, log: Arc<Mutex<String>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            log.push_str(&line);
            log.push('\n');
        }
    });
}
