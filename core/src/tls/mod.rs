//! TLS pieces: PEM loading, certificate checks, rustls configs, the edge's CA
//! and the ClientHello reader.

mod ca;
mod config;
mod hello;
mod pem;
mod terminating;

pub use ca::CertAuthority;
pub use config::{
    link_client_config, parse_version, provider, server_config, tunnel_client_config,
    tunnel_server_config, upstream_client_config, ServerTlsSettings, TlsVersion,
};
pub use hello::{
    read_client_hello, send_alert, ClientHelloInfo, HelloError, RefusalAlert, MAX_HELLO_BYTES,
};
pub use pem::{cert_subject, parse_certs, parse_key, CertKey};
pub use terminating::{has_aes_hardware, ServerTls};

/// Test helper: passes records between `client` and `server` until both have finished
/// the handshake.
#[cfg(test)]
fn finish_handshake_in_memory(
    client: &mut rustls::ClientConnection,
    server: &mut rustls::ServerConnection,
) {
    while client.is_handshaking() || server.is_handshaking() {
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        server.read_tls(&mut wire.as_slice()).unwrap();
        server.process_new_packets().unwrap();
        let mut wire = Vec::new();
        server.write_tls(&mut wire).unwrap();
        client.read_tls(&mut wire.as_slice()).unwrap();
        client.process_new_packets().unwrap();
    }
}
