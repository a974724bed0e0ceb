//! Where the agent sends proxied connections: a local address, plain or TLS.

use crate::error::{Error, ErrorCode, Result};
use crate::tls;
use rustls::pki_types::ServerName;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an upstream's resolved addresses are reused before the name is looked up
/// again. Resolving `localhost` on every proxied connection costs a trip through the
/// blocking thread pool; a failed dial forgets the addresses at once.
const RESOLVE_TTL: Duration = Duration::from_secs(5);

/// An upstream service address: `8080`, `host:port`, `tcp://host:port`,
/// `tls://host:port`, `http://host:port`, `https://host:port` or `unix:/path`.
#[derive(Clone)]
pub struct Upstream {
    host: String,
    port: u16,
    tls: Option<UpstreamTls>,
    /// A Unix socket path instead of a host and port.
    unix: Option<std::path::PathBuf>,
}

#[derive(Clone)]
struct UpstreamTls {
    verify: bool,
    root_cas: Option<Vec<u8>>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Upstream({self})")
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.unix {
            return write!(f, "unix:{}", path.display());
        }
        let scheme = if self.tls.is_some() { "tls" } else { "tcp" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

fn bad(input: &str, why: &str) -> Error {
    Error::new(
        ErrorCode::InvalidUrl,
        format!("upstream address {input:?} {why} (expected 8080, host:port, tcp://host:port, tls://host:port, http://host:port, https://host:port or unix:/path)"),
    )
}

impl FromStr for Upstream {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        let s = input.trim();
        if let Ok(port) = s.parse::<u16>() {
            return Upstream::new("localhost", port);
        }
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(bad(input, "names no socket path"));
            }
            return Ok(Upstream {
                host: String::new(),
                port: 0,
                tls: None,
                unix: Some(path.into()),
            });
        }
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None => ("tcp".to_owned(), s),
        };
        let rest = rest.trim_end_matches('/');
        let default_port = match scheme.as_str() {
            "tcp" => None,
            "http" => Some(80),
            "tls" | "https" => Some(443),
            _ => return Err(bad(input, &format!("has unknown scheme {scheme:?}"))),
        };
        if rest.contains('/') {
            return Err(bad(input, "must not contain a path"));
        }
        let (host, port) =
            split_host_port(rest, default_port).ok_or_else(|| bad(input, "is not host:port"))?;
        let mut up = Upstream::new(host, port)?;
        if scheme == "tls" || scheme == "https" {
            up.tls = Some(UpstreamTls {
                verify: true,
                root_cas: None,
            });
        }
        Ok(up)
    }
}

fn split_host_port(s: &str, default_port: Option<u16>) -> Option<(&str, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port?,
            None => return None,
        };
        return Some((host, port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, port.parse().ok()?)),
        Some(_) => None,
        None => Some((s, default_port?)),
    }
}

impl Upstream {
    /// A plain TCP upstream.
    pub fn new(host: impl Into<String>, port: u16) -> Result<Self> {
        let host = host.into();
        if host.is_empty() || port == 0 {
            return Err(bad(
                &format!("{host}:{port}"),
                "needs a host and a non-zero port",
            ));
        }
        Ok(Upstream {
            host,
            port,
            tls: None,
            unix: None,
        })
    }

    /// `host:port` as an HTTP `Host` names this upstream (`localhost` for a Unix socket).
    pub fn authority(&self) -> String {
        match (&self.unix, self.host.contains(':')) {
            (Some(_), _) => "localhost".to_owned(),
            (None, true) => format!("[{}]:{}", self.host, self.port),
            (None, false) => format!("{}:{}", self.host, self.port),
        }
    }

    /// True when the agent dials TLS to the upstream.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// For `tls://` upstreams: whether to verify the upstream's certificate (default true).
    pub fn verify_tls(mut self, verify: bool) -> Self {
        if let Some(tls) = &mut self.tls {
            tls.verify = verify;
        }
        self
    }

    /// For `tls://` upstreams: CA bundle (PEM) to verify the upstream against,
    /// instead of the platform roots.
    pub fn root_cas(mut self, pem: impl Into<Vec<u8>>) -> Self {
        if let Some(tls) = &mut self.tls {
            tls.root_cas = Some(pem.into());
        }
        self
    }

    /// Prepares dialling (builds TLS settings once).
    pub(crate) fn dialer(&self) -> Result<Dialer> {
        let tls = match &self.tls {
            None => None,
            Some(t) => {
                let config = tls::upstream_client_config(t.root_cas.as_deref(), t.verify)?;
                let name = ServerName::try_from(self.host.clone()).map_err(|_| {
                    bad(
                        &self.to_string(),
                        "has a host that is not a valid TLS server name",
                    )
                })?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
        };
        Ok(Dialer {
            upstream: self.clone(),
            tls,
            resolved: Mutex::new(None),
        })
    }
}

/// Dials one upstream repeatedly.
pub(crate) struct Dialer {
    upstream: Upstream,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The upstream's addresses, when they were looked up, the one that answered last first.
    resolved: Mutex<Option<(Instant, Vec<SocketAddr>)>>,
}

impl Dialer {
    /// The upstream's addresses, from the cache while it is fresh.
    async fn addresses(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Some((at, addrs)) = &*self.lock_resolved() {
            if at.elapsed() < RESOLVE_TTL {
                return Ok(addrs.clone());
            }
        }
        let up = &self.upstream;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((up.host.as_str(), up.port))
            .await?
            .collect();
        if addrs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} has no address", up.host),
            ));
        }
        *self.lock_resolved() = Some((Instant::now(), addrs.clone()));
        Ok(addrs)
    }

    fn lock_resolved(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Vec<SocketAddr>)>> {
        // The cache holds no invariant a panic could break.
        self.resolved
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Connects to the first address that answers (the cached order, so an upstream
    /// on 127.0.0.1 is not tried on ::1 first every time).
    async fn connect(&self) -> std::io::Result<TcpStream> {
        let addrs = self.addresses().await?;
        let mut last_error = None;
        for (i, addr) in addrs.iter().enumerate() {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    if i > 0 {
                        if let Some((_, cached)) = &mut *self.lock_resolved() {
                            if let Some(pos) = cached.iter().position(|a| a == addr) {
                                cached[..=pos].rotate_right(1);
                            }
                        }
                    }
                    return Ok(tcp);
                }
                Err(e) => last_error = Some(e),
            }
        }
        // The service moved or is down: look the name up again next time.
        *self.lock_resolved() = None;
        Err(last_error.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()))
    }

    pub(crate) async fn dial(&self) -> Result<UpstreamStream> {
        let up = &self.upstream;
        let failed = |e: std::io::Error| {
            Error::new(
                ErrorCode::ConnectFailed,
                format!("cannot reach upstream {up}: {e}"),
            )
        };
        if let Some(path) = &up.unix {
            let unix = tokio::time::timeout(DIAL_TIMEOUT, tokio::net::UnixStream::connect(path))
                .await
                .map_err(|_| {
                    Error::new(
                        ErrorCode::Timeout,
                        format!("upstream {up} did not answer within {DIAL_TIMEOUT:?}"),
                    )
                })?
                .map_err(failed)?;
            return Ok(UpstreamStream::Unix(unix));
        }
        let tcp = tokio::time::timeout(DIAL_TIMEOUT, self.connect())
            .await
            .map_err(|_| {
                Error::new(
                    ErrorCode::Timeout,
                    format!("upstream {up} did not answer within {DIAL_TIMEOUT:?}"),
                )
            })?
            .map_err(failed)?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(UpstreamStream::Plain(tcp)),
            Some((connector, name)) => {
                let tls = tokio::time::timeout(DIAL_TIMEOUT, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| {
                        Error::new(
                            ErrorCode::Timeout,
                            format!("TLS handshake with upstream {up} timed out"),
                        )
                    })?
                    .map_err(failed)?;
                Ok(UpstreamStream::Tls(Box::new(tls)))
            }
        }
    }
}

/// A connection to the upstream.
pub(crate) enum UpstreamStream {
    Plain(TcpStream),
    Unix(tokio::net::UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

macro_rules! delegate_io {
    ($ty:ident { $($variant:ident),* }) => {
        impl AsyncRead for $ty {
            fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_read(cx, buf),)* }
            }
        }
        impl AsyncWrite for $ty {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_write(cx, buf),)* }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_flush(cx),)* }
            }
            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                match self.get_mut() { $($ty::$variant(s) => Pin::new(s).poll_shutdown(cx),)* }
            }
        }
    };
}
pub(crate) use delegate_io;

delegate_io!(UpstreamStream { Plain, Unix, Tls });

impl UpstreamStream {
    /// Makes closing this connection send a TCP reset: the proxied client's end was
    /// abnormal, and the upstream must not take it for a clean one.
    pub(crate) fn reset_on_close(&self) {
        let tcp = match self {
            UpstreamStream::Plain(tcp) => tcp,
            UpstreamStream::Tls(tls) => tls.get_ref().0,
            // A Unix socket has no reset; the close is all the upstream sees.
            UpstreamStream::Unix(_) => return,
        };
        let _ = tcp.set_zero_linger();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        assert_eq!(
            "8080".parse::<Upstream>().unwrap().to_string(),
            "tcp://localhost:8080"
        );
        assert_eq!(
            "127.0.0.1:9".parse::<Upstream>().unwrap().to_string(),
            "tcp://127.0.0.1:9"
        );
        assert_eq!(
            "tcp://h:1".parse::<Upstream>().unwrap().to_string(),
            "tcp://h:1"
        );
        let t = "tls://h.example".parse::<Upstream>().unwrap();
        assert!(t.is_tls());
        assert_eq!(t.to_string(), "tls://h.example:443");
        assert_eq!(
            "[::1]:5".parse::<Upstream>().unwrap().to_string(),
            "tcp://[::1]:5"
        );
        for bad in [
            "",
            "host",
            "ftp://h:1",
            "h:99999",
            "h:0",
            "tcp://h:1/x",
            "unix:",
        ] {
            let e = bad.parse::<Upstream>().unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidUrl, "{bad}: {e}");
        }
        assert_eq!(
            "http://h:1".parse::<Upstream>().unwrap().to_string(),
            "tcp://h:1"
        );
        assert_eq!(
            "http://h".parse::<Upstream>().unwrap().to_string(),
            "tcp://h:80"
        );
        let https = "https://h".parse::<Upstream>().unwrap();
        assert!(https.is_tls());
        assert_eq!(https.to_string(), "tls://h:443");
        assert_eq!(
            "unix:/tmp/app.sock"
                .parse::<Upstream>()
                .unwrap()
                .to_string(),
            "unix:/tmp/app.sock"
        );
    }

    /// A port nothing listens on (bound, then closed).
    fn dead_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn the_address_that_answered_is_tried_first_next_time() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let dead_addr: SocketAddr = ([127, 0, 0, 1], dead_port()).into();
        let dialer = Upstream::new("localhost", live_addr.port())
            .unwrap()
            .dialer()
            .unwrap();
        *dialer.lock_resolved() = Some((Instant::now(), vec![dead_addr, live_addr]));
        dialer.dial().await.unwrap();
        let cached = dialer.lock_resolved().clone().unwrap().1;
        assert_eq!(cached, vec![live_addr, dead_addr]);
    }

    #[tokio::test]
    async fn a_failed_dial_forgets_the_addresses_and_a_restarted_service_is_found() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dialer = Upstream::new("localhost", addr.port())
            .unwrap()
            .dialer()
            .unwrap();
        dialer.dial().await.unwrap();
        assert!(dialer.lock_resolved().is_some(), "addresses are cached");
        drop(listener);
        let err = dialer.dial().await.err().expect("nothing listens");
        assert_eq!(err.code(), ErrorCode::ConnectFailed, "{err}");
        assert!(
            dialer.lock_resolved().is_none(),
            "a failed dial clears the cache"
        );
        let _again = tokio::net::TcpListener::bind(addr).await.unwrap();
        dialer.dial().await.unwrap();
    }
}
