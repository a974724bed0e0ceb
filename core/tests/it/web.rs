//! Parts for the HTTP tests: a real web app (hyper) upstream, curl as the client, and
//! a keep-alive HTTP/1.1 client over TLS for load.

#![allow(dead_code)]

use crate::common::*;
use anyhow::{anyhow, bail, Context, Result};
use burrow_core::agent::{Forwarder, OptionValue, Scope};
use burrow_core::{Edge, EdgeConfig, Session};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;

type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A web app upstream: `/echo` streams the body back, `/bytes/N` sends N pseudo-random
/// bytes, `/status/N` answers N, `/headers` lists the request's headers as JSON,
/// `/text` is 64 KiB of text, `/ws` echoes websocket messages, anything else `hello`.
pub struct WebApp {
    pub addr: SocketAddr,
    /// Body bytes the app has handed to its connections.
    pub sent: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for WebApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn text_body() -> String {
    "burrow relays every byte; ".repeat(64 * 1024 / 26 + 1)
}

fn full(b: impl Into<Bytes>) -> AppBody {
    Full::new(b.into()).boxed()
}

async fn app(req: Request<Incoming>, sent: Arc<AtomicU64>) -> Response<AppBody> {
    let path = req.uri().path().to_owned();
    if path == "/echo" {
        let body = req.into_body();
        let echoed = StreamBody::new(futures::stream::unfold(body, |mut body| async move {
            loop {
                match body.frame().await? {
                    Ok(frame) => match frame.into_data() {
                        Ok(data) => {
                            return Some((
                                Ok::<_, Infallible>(hyper::body::Frame::data(data)),
                                body,
                            ))
                        }
                        Err(_) => continue,
                    },
                    Err(_) => return None,
                }
            }
        }));
        return Response::new(BodyExt::boxed(echoed));
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        let chunk = Bytes::from(pseudo_random(64 * 1024, 7));
        let stream = futures::stream::unfold(0usize, move |done| {
            let chunk = chunk.clone();
            let sent = sent.clone();
            async move {
                if done >= n {
                    return None;
                }
                let len = chunk.len().min(n - done);
                sent.fetch_add(len as u64, Ordering::Relaxed);
                Some((Ok(hyper::body::Frame::data(chunk.slice(..len))), done + len))
            }
        });
        let mut res = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        res.headers_mut().insert("content-length", n.into());
        return res;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let mut res = Response::new(full(format!("status {code}")));
        *res.status_mut() = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK);
        return res;
    }
    if path == "/headers" {
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in req.headers() {
            seen.entry(k.as_str().to_owned())
                .or_default()
                .push(v.to_str().unwrap_or("?").to_owned());
        }
        let json = serde_json::json!({"method": req.method().as_str(), "uri": req.uri().to_string(), "headers": seen, "version": format!("{:?}", req.version())});
        let mut res = Response::new(full(json.to_string()));
        res.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return res;
    }
    if path == "/text" {
        let mut res = Response::new(full(text_body()));
        res.headers_mut()
            .insert("content-type", "text/plain".parse().unwrap());
        res.headers_mut().insert("x-app", "yes".parse().unwrap());
        return res;
    }
    if path == "/ws" {
        return websocket_echo(req);
    }
    let mut res = Response::new(full("hello"));
    res.headers_mut().insert("x-app", "yes".parse().unwrap());
    res
}

fn websocket_echo(mut req: Request<Incoming>) -> Response<AppBody> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(key) = req.headers().get("sec-websocket-key") else {
        let mut res = Response::new(full("not a websocket"));
        *res.status_mut() = StatusCode::BAD_REQUEST;
        return res;
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        let (mut tx, mut rx) = ws.split();
        while let Some(Ok(msg)) = rx.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut res = Response::new(full(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    res.headers_mut()
        .insert("connection", "upgrade".parse().unwrap());
    res.headers_mut()
        .insert("upgrade", "websocket".parse().unwrap());
    res.headers_mut()
        .insert("sec-websocket-accept", accept.parse().unwrap());
    res
}

/// Serves the app on 127.0.0.1 (HTTP/1.1 and h2c, upgrades on).
pub async fn web_app() -> WebApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let sent = counter.clone();
            tokio::spawn(serve_app(TokioIo::new(tcp), sent));
        }
    });
    WebApp { addr, sent, task }
}

/// Serves the app on a Unix socket at `path`.
pub async fn web_app_unix(path: &std::path::Path) -> JoinHandle<()> {
    let listener = UnixListener::bind(path).expect("bind unix");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve_app(TokioIo::new(s), Arc::new(AtomicU64::new(0))));
        }
    })
}

async fn serve_app<IO>(io: TokioIo<IO>, sent: Arc<AtomicU64>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let sent = sent.clone();
        async move { Ok::<_, Infallible>(app(req, sent).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(io, service)
        .await;
}

/// An edge with a plain HTTP listener too.
pub async fn http_edge() -> Edge {
    Edge::start(EdgeConfig {
        open: true,
        heartbeat_ms: 2_000,
        http_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await
    .expect("edge starts")
}

/// Forwards `upstream` through `edge` with ngrok-named `options` (the shared parser).
pub async fn forward(
    edge: &Edge,
    upstream: &str,
    options: &[(&str, OptionValue)],
) -> Result<(Session, Forwarder)> {
    let mut all: Vec<(String, OptionValue)> = vec![
        ("addr".into(), upstream.into()),
        ("server_addr".into(), edge.tunnel_addr().to_string().into()),
        ("root_cas".into(), edge.ca_pem().into()),
    ];
    all.extend(options.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    let parsed = burrow_core::agent::options::parse(all, Scope::Forward, None)?;
    let session = parsed.session.builder().connect().await?;
    let fwd = session.forward(parsed.endpoint, &parsed.upstream).await?;
    Ok((session, fwd))
}

/// The host and port of an http(s):// URL (which may have a path).
pub fn host_port(url: &str) -> (String, u16) {
    let (scheme, rest) = url.split_once("://").expect("scheme");
    let authority = rest.split('/').next().expect("authority");
    match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse().expect("port")),
        None => (
            authority.to_owned(),
            if scheme == "http" { 80 } else { 443 },
        ),
    }
}

/// What curl got.
pub struct Got {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub version: String,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Runs curl against `url` (an https:// URL of `edge`, or http:// on its HTTP listener),
/// trusting the edge's CA and resolving the name to the edge.
pub async fn curl(edge: &Edge, url: &str, args: &[&str]) -> Result<Got> {
    curl_via(edge.ca_pem(), edge.tls_addr().ip(), url, args).await
}

/// Runs curl against `url`, trusting `ca_pem` and resolving the name to `ip`.
pub async fn curl_via(ca_pem: &str, ip: std::net::IpAddr, url: &str, args: &[&str]) -> Result<Got> {
    let dir = TempDir::new("curl")?;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem)?;
    let headers = dir.path().join("headers");
    let body = dir.path().join("body");
    let (host, port) = host_port(url);
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "--cacert"])
        .arg(&ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:{ip}"))
        .arg("-D")
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_version}"])
        .args(args)
        .arg(url)
        .output()
        .await
        .context("running curl")?;
    if !out.status.success() {
        bail!(
            "curl {url} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let head = std::fs::read_to_string(&headers)?;
    // The last response's head (after any 100 Continue).
    let last = head
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .ok_or_else(|| anyhow!("no response head"))?;
    let mut lines = last.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Got {
        status,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
        version: String::from_utf8_lossy(&out.stdout).into_owned(),
    })
}

/// A TLS connection to `edge` for `host`, offering ALPN `http/1.1` (for clients that
/// write HTTP/1.1 themselves).
pub async fn h1_tls(edge: &Edge, host: &str) -> Result<ClientTls> {
    let config = client_config_with(
        edge.ca_pem(),
        &[&rustls::version::TLS13],
        None,
        &["http/1.1"],
    );
    tls_connect_with(edge.tls_addr(), host, config).await
}

/// An HTTP/1.1 keep-alive client over TLS to an https:// URL of `edge`.
pub struct H1Client {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl H1Client {
    pub async fn connect(edge: &Edge, url: &str) -> Result<H1Client> {
        let (host, _) = host_port(url);
        let tls = h1_tls(edge, &host).await?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(H1Client { send, host })
    }

    /// GETs `path`; the status and the whole body.
    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, Bytes)> {
        self.send.ready().await?;
        let req = Request::get(path)
            .header("host", &self.host)
            .body(Full::new(Bytes::new()))?;
        let res = self.send.send_request(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// A web app that terminates TLS itself with `leaf`; answers `hello over tls`.
pub async fn tls_web_app(leaf: &Leaf) -> Result<SocketAddr> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(leaf.crt.as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key.as_bytes())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"hello over tls",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(addr)
}
