//! The `[cluster]` section of the edge config: how this edge joins the others.

use crate::error::{Error, ErrorCode, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How this edge shares routes with the other edges of its cluster, through etcd.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd client URLs, e.g. `["http://127.0.0.1:2379"]` (`https://` with the TLS keys below).
    pub etcd: Vec<String>,
    /// CA bundle (PEM file) that signs etcd's server certificate.
    #[serde(default)]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM file) this edge shows etcd, with `etcd_key`.
    #[serde(default)]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM file).
    #[serde(default)]
    pub etcd_key: Option<PathBuf>,
    /// This edge's name in the cluster: unique, letters, digits, `-` and `_`.
    pub edge_id: String,
    /// Where this edge listens for the other edges (mutual TLS), and the address they dial.
    pub link_addr: SocketAddr,
    /// Seconds this edge's etcd lease lives without a keepalive: how long a dead edge's
    /// routes outlive it, and how long an edge cut off from etcd keeps serving.
    #[serde(default = "default_ttl")]
    pub lease_ttl_secs: u64,
    /// The etcd key prefix every key of this cluster lives under.
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

fn default_ttl() -> u64 {
    10
}

fn default_prefix() -> String {
    "/burrow/".into()
}

impl ClusterConfig {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::new(ErrorCode::Config, m));
        if self.etcd.is_empty() {
            return bad(
                "cluster.etcd must list at least one etcd URL (e.g. \"http://127.0.0.1:2379\")"
                    .into(),
            );
        }
        for url in &self.etcd {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad(format!(
                    "cluster.etcd: {url:?} is not an http:// or https:// URL"
                ));
            }
        }
        let id_ok = !self.edge_id.is_empty()
            && self.edge_id.len() <= 64
            && self
                .edge_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !id_ok {
            return bad(format!(
                "cluster.edge_id {:?} must be 1 to 64 letters, digits, '-' or '_'",
                self.edge_id
            ));
        }
        if !(1..=3600).contains(&self.lease_ttl_secs) {
            return bad("cluster.lease_ttl_secs must be between 1 and 3600".into());
        }
        if self.link_addr.port() == 0 {
            return bad("cluster.link_addr needs a fixed port: the other edges dial it".into());
        }
        if self.etcd_cert.is_some() != self.etcd_key.is_some() {
            return bad("cluster.etcd_cert and cluster.etcd_key go together".into());
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') {
            return bad(format!(
                "cluster.prefix {:?} must start and end with '/'",
                self.prefix
            ));
        }
        Ok(())
    }

    pub(crate) fn ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs)
    }
}
