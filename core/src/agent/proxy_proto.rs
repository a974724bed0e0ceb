//! PROXY protocol headers (v1 text, v2 binary) that tell an upstream the real client address.

use crate::error::{Error, Result};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// Which PROXY protocol version the agent writes to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProxyProto {
    /// `PROXY TCP4 ...\r\n`
    #[serde(rename = "1")]
    V1,
    /// The binary v2 header.
    #[serde(rename = "2")]
    V2,
}

impl FromStr for ProxyProto {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "1" | "v1" => Ok(ProxyProto::V1),
            "2" | "v2" => Ok(ProxyProto::V2),
            other => Err(Error::option(format!(
                "proxy_proto {other:?} is not supported (use \"1\" or \"2\")"
            ))),
        }
    }
}

impl fmt::Display for ProxyProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyProto::V1 => "1",
            ProxyProto::V2 => "2",
        })
    }
}

/// Gives both addresses the same family (IPv4-mapped IPv6 when they differ).
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

/// The header announcing a connection from `src` to `dst`.
pub(crate) fn header(
    version: ProxyProto,
    src: SocketAddr,
    dst: Option<SocketAddr>,
) -> Result<Vec<u8>> {
    let dst = dst.unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    let (src, dst) = same_family(src, dst);
    match version {
        ProxyProto::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            Ok(format!(
                "PROXY {family} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes())
        }
        ProxyProto::V2 => {
            use ppp::v2::{Builder, Command, Protocol, Version};
            Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst))
                .build()
                .map_err(|e| Error::io("PROXY v2 header", e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_back() {
        let src: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let dst: SocketAddr = "[::1]:443".parse().unwrap();
        let v1 = header(ProxyProto::V1, src, Some(dst)).unwrap();
        assert_eq!(v1, b"PROXY TCP6 ::ffff:127.0.0.1 ::1 5555 443\r\n");
        let v2 = header(ProxyProto::V2, src, Some("127.0.0.2:443".parse().unwrap())).unwrap();
        match ppp::HeaderResult::parse(&v2) {
            ppp::HeaderResult::V2(Ok(h)) => {
                assert!(
                    matches!(h.addresses, ppp::v2::Addresses::IPv4(a) if a.source_port == 5555)
                );
            }
            other => panic!("not a v2 header: {other:?}"),
        }
        assert!("3".parse::<ProxyProto>().is_err());
    }
}
