//! Server CPU per full TLS handshake, in memory: burrow's terminating server (which
//! picks AES-128-GCM for a client that lists AES-GCM first) against the same server
//! following the client's order, with the bench's client (rustls, AES-256-GCM first).
//! No sockets and no other process: the time is the server's own calls, interleaved
//! round by round so that a busy stretch of the machine weighs on both alike.

use anyhow::{anyhow, Result};
use burrow_core::tls::{self, CertAuthority, ServerTls, ServerTlsSettings};
use rustls::pki_types::ServerName;
use rustls::server::Acceptor;
use rustls::{ClientConnection, ServerConfig, ServerConnection};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a server config is picked for a hello.
enum Server {
    FollowClient(Arc<ServerConfig>),
    Burrow(ServerTls),
}

/// Runs `rounds` rounds of `count` handshakes with each server and prints the JSON result.
pub fn run(rounds: usize, count: usize) -> Result<()> {
    let ca = CertAuthority::generate()?;
    let cert = ca.issue(&["hs.bench.test".to_owned()])?;
    let settings = ServerTlsSettings::default();
    let servers = [
        (
            "follow_client",
            Server::FollowClient(Arc::new(tls::server_config(&cert, &settings)?)),
        ),
        ("burrow", Server::Burrow(ServerTls::new(&cert, &settings)?)),
    ];
    let mut roots = rustls::RootCertStore::empty();
    for c in tls::parse_certs(ca.cert_pem().as_bytes(), "ca")? {
        roots.add(c)?;
    }
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let mut us: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut suites = [String::new(), String::new()];
    for round in 0..rounds {
        for (i, (name, server)) in servers.iter().enumerate() {
            let mut spent = Duration::ZERO;
            for _ in 0..count {
                let (t, suite) = handshake(&client, server)?;
                spent += t;
                suites[i] = suite;
            }
            let per = spent.as_secs_f64() * 1e6 / count as f64;
            eprintln!(
                "round {}: {name}: {per:.1} µs per handshake ({})",
                round + 1,
                suites[i]
            );
            us[i].push(per);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (follow, burrow) = (median(&mut us[0]), median(&mut us[1]));
    println!(
        "{}",
        json!({"workload": "handshakes", "handshakes": {
            "count": count, "rounds": rounds,
            "follow_client_us": follow, "follow_client_suite": suites[0],
            "burrow_us": burrow, "burrow_suite": suites[1],
            "burrow_over_follow_client": burrow / follow,
        }})
    );
    Ok(())
}

/// One full handshake; the server's time and the suite agreed.
fn handshake(client: &Arc<rustls::ClientConfig>, server: &Server) -> Result<(Duration, String)> {
    let name = ServerName::try_from("hs.bench.test")?;
    let mut client = ClientConnection::new(client.clone(), name)?;
    let mut wire = Vec::new();
    client.write_tls(&mut wire)?;
    let began = Instant::now();
    let mut acceptor = Acceptor::default();
    acceptor.read_tls(&mut wire.as_slice())?;
    let accepted = acceptor
        .accept()
        .map_err(|(e, _)| e)?
        .ok_or_else(|| anyhow!("the ClientHello did not fit one read"))?;
    let config = match server {
        Server::FollowClient(config) => config.clone(),
        Server::Burrow(tls) => tls.for_hello(&accepted.client_hello()),
    };
    let mut server: ServerConnection = accepted.into_connection(config).map_err(|(e, _)| e)?;
    let mut spent = began.elapsed();
    while client.is_handshaking() || server.is_handshaking() {
        let began = Instant::now();
        let mut wire = Vec::new();
        server.write_tls(&mut wire)?;
        spent += began.elapsed();
        client.read_tls(&mut wire.as_slice())?;
        client.process_new_packets()?;
        let mut wire = Vec::new();
        client.write_tls(&mut wire)?;
        let began = Instant::now();
        server.read_tls(&mut wire.as_slice())?;
        server.process_new_packets()?;
        spent += began.elapsed();
    }
    let suite = server
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    Ok((spent, suite))
}
