//! The README's first command: a local service put behind burrow on the embedded
//! edge, reached through TLS in each of the three termination modes, and a web app on
//! an https:// endpoint (ngrok's default) reached over h2.

use anyhow::{Context, Result};
use burrow_core::{Session, TerminateAt, Upstream};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NAME: &str = "app.example.com";

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,burrow_core::agent=info".into()),
        )
        .with_target(false)
        .init();

    // The user's own certificate for app.example.com, from a CA made just now.
    let (ca_pem, crt_pem, key_pem) = make_cert(NAME)?;

    // "Local services": a plaintext one, and one that terminates TLS itself.
    let plain = serve(None).await?;
    let tls_service = serve(Some((&crt_pem, &key_pem))).await?;

    // No server address: burrow starts an embedded edge in this process.
    let session = Session::builder().connect().await?;
    let edge = session.embedded_edge().context("embedded edge")?;
    let edge_addr = edge.tls_addr();
    let edge_ca = edge.ca_pem().to_owned();

    println!("\n== upstream: the service terminates TLS; the edge only sees SNI");
    let fwd = session
        .tls_endpoint()
        .domain(NAME)
        .listen_and_forward(Upstream::new("127.0.0.1", tls_service.port())?)
        .await?;
    talk(edge_addr, NAME, &ca_pem, fwd.url()).await?;
    fwd.close();

    println!("\n== agent: the agent terminates with the user's crt/key; the edge only sees SNI");
    let fwd = session
        .tls_endpoint()
        .domain(NAME)
        .agent_termination(crt_pem.clone(), key_pem.clone())
        .listen_and_forward(Upstream::new("127.0.0.1", plain.port())?)
        .await?;
    talk(edge_addr, NAME, &ca_pem, fwd.url()).await?;
    fwd.close();

    println!("\n== edge: the edge terminates with an automatic certificate from its own CA");
    let fwd = session
        .tls_endpoint()
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(Upstream::new("127.0.0.1", plain.port())?)
        .await?;
    let host = fwd
        .url()
        .trim_start_matches("tls://")
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    talk(edge_addr, &host, &edge_ca, fwd.url()).await?;

    println!("\n== https (the default endpoint): the edge's reverse proxy in front of a web app");
    let web = serve_web().await?;
    let fwd = session
        .http_endpoint()
        .listen_and_forward(Upstream::new("127.0.0.1", web.port())?)
        .await?;
    get(edge_addr, &edge_ca, fwd.url()).await?;

    println!("\nAll three modes and the https endpoint carried bytes through the tunnel.");
    session.close().await;
    Ok(())
}

/// Connects through the edge like any TLS client, sends a line, prints what came back.
async fn talk(edge: SocketAddr, name: &str, ca_pem: &str, url: &str) -> Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(edge).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_owned())?, tcp)
        .await
        .context("TLS handshake through the edge")?;
    let version = tls
        .get_ref()
        .1
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    tls.write_all(b"hello through burrow\n").await?;
    tls.shutdown().await?;
    let mut reply = String::new();
    tls.read_to_string(&mut reply).await?;
    println!("   {url}  ({version}, certificate verified for {name})");
    println!("   service answered: {}", reply.trim_end());
    Ok(())
}

/// A local web app answering every request with one line.
async fn serve_web() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let line = format!("hello from the web app: {} {}\n", req.method(), req.uri());
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from(line)),
                    ))
                },
            );
            let io = hyper_util::rt::TokioIo::new(tcp);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
        }
    });
    Ok(addr)
}

/// GETs `url` through the edge over h2, trusting `ca_pem`; prints what came back.
async fn get(edge: SocketAddr, ca_pem: &str, url: &str) -> Result<()> {
    use http_body_util::BodyExt;
    let name = url
        .trim_start_matches("https://")
        .split(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(edge).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.clone())?, tcp)
        .await
        .context("TLS handshake through the edge")?;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await?;
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("{url}/demo"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let res = send.send_request(req).await?;
    let status = res.status();
    let version = res.version();
    let body = res.into_body().collect().await?.to_bytes();
    println!("   GET {url}/demo  ({version:?} {status}, certificate verified for {name})");
    println!(
        "   app answered: {}",
        String::from_utf8_lossy(&body).trim_end()
    );
    Ok(())
}

/// A local echo service, plaintext or TLS with the given crt/key; returns its address.
async fn serve(tls: Option<(&str, &str)>) -> Result<SocketAddr> {
    let acceptor = match tls {
        None => None,
        Some((crt, key)) => {
            let certs =
                CertificateDer::pem_slice_iter(crt.as_bytes()).collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = match acceptor {
                    None => echo_upper(tcp).await,
                    Some(a) => match a.accept(tcp).await {
                        Ok(tls) => echo_upper(tls).await,
                        Err(e) => Err(e),
                    },
                };
            });
        }
    });
    Ok(addr)
}

/// Answers with the request upper-cased, so the reply visibly comes from the service.
async fn echo_upper<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    s.write_all(&buf.to_ascii_uppercase()).await?;
    s.shutdown().await
}

/// A throwaway CA and a certificate for `name` signed by it: (ca, crt, key) PEM.
fn make_cert(name: &str) -> Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![name.to_owned()])?.signed_by(&key, &issuer)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}
