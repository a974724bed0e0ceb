//! The three termination modes (and TCP endpoints), each echoing bytes exactly.

use crate::common::*;
use anyhow::Result;
use burrow_core::{TerminateAt, Upstream};

#[tokio::test]
async fn upstream_mode_passes_tls_through_to_the_service() -> Result<()> {
    let edge = open_edge().await;
    let service_pki = Pki::new("service CA");
    let service_cert = service_pki.leaf(&["app.upstream.test"]);
    let service = tls_echo_server(&service_cert).await;
    let session = session_for(&edge).await;
    let fwd = session
        .tls_endpoint()
        .domain("app.upstream.test")
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    assert_eq!(fwd.terminate_at(), TerminateAt::Upstream);
    assert_eq!(url_host(fwd.url()), "app.upstream.test");
    assert_eq!(url_port(fwd.url()), edge.tls_addr().port());

    // The edge holds no key for this name: its route carries no TLS config.
    let route = edge.route("app.upstream.test").expect("route");
    assert!(route.edge_tls.is_none());

    let tls = tls_connect(edge.tls_addr(), "app.upstream.test", &service_pki.ca_pem).await?;
    assert_eq!(
        peer_cert(&tls),
        service_cert.der(),
        "client must see the upstream's own certificate"
    );
    echo_check(tls, &pseudo_random(10 * MIB, 1)).await?;

    let addr = edge.tls_addr();
    let ca = service_pki.ca_pem.clone();
    concurrent_echo(100, 64 * 1024, move || {
        let ca = ca.clone();
        async move { tls_connect(addr, "app.upstream.test", &ca).await }
    })
    .await
}

#[tokio::test]
async fn agent_mode_terminates_at_the_agent() -> Result<()> {
    let edge = open_edge().await;
    let pki = Pki::new("agent CA");
    let cert = pki.leaf(&["app.agent.test"]);
    let service = echo_server().await;
    let session = session_for(&edge).await;
    let fwd = session
        .tls_endpoint()
        .domain("app.agent.test")
        .agent_termination(cert.crt.clone(), cert.key.clone())
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    assert_eq!(fwd.terminate_at(), TerminateAt::Agent);
    assert!(
        edge.route("app.agent.test")
            .expect("route")
            .edge_tls
            .is_none(),
        "edge must not terminate"
    );

    let tls = tls_connect(edge.tls_addr(), "app.agent.test", &pki.ca_pem).await?;
    assert_eq!(
        peer_cert(&tls),
        cert.der(),
        "client must see the agent's certificate"
    );
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    echo_check(tls, &pseudo_random(10 * MIB, 2)).await?;

    let addr = edge.tls_addr();
    let ca = pki.ca_pem.clone();
    concurrent_echo(100, 64 * 1024, move || {
        let ca = ca.clone();
        async move { tls_connect(addr, "app.agent.test", &ca).await }
    })
    .await
}

#[tokio::test]
async fn edge_mode_with_custom_cert_bytes() -> Result<()> {
    let edge = open_edge().await;
    let pki = Pki::new("custom CA");
    let cert = pki.leaf(&["app.edge.test"]);
    let service = echo_server().await;
    let session = session_for(&edge).await;
    let fwd = session
        .tls_endpoint()
        .domain("app.edge.test")
        .termination(cert.crt.clone(), cert.key.clone())
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    assert_eq!(fwd.terminate_at(), TerminateAt::Edge);
    assert!(edge
        .route("app.edge.test")
        .expect("route")
        .edge_tls
        .is_some());

    let tls = tls_connect(edge.tls_addr(), "app.edge.test", &pki.ca_pem).await?;
    assert_eq!(
        peer_cert(&tls),
        cert.der(),
        "client must see the bytes passed in the bind"
    );
    echo_check(tls, &pseudo_random(10 * MIB, 3)).await?;

    let addr = edge.tls_addr();
    let ca = pki.ca_pem.clone();
    concurrent_echo(100, 64 * 1024, move || {
        let ca = ca.clone();
        async move { tls_connect(addr, "app.edge.test", &ca).await }
    })
    .await
}

#[tokio::test]
async fn edge_mode_with_automatic_cert_and_random_name() -> Result<()> {
    let edge = open_edge().await;
    let service = echo_server().await;
    let session = session_for(&edge).await;
    let fwd = session
        .tls_endpoint()
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let host = url_host(fwd.url());
    assert!(
        host.ends_with(".burrow.localhost"),
        "random name under the suffix: {host}"
    );

    let tls = tls_connect(edge.tls_addr(), &host, edge.ca_pem()).await?;
    echo_check(tls, &pseudo_random(10 * MIB, 4)).await?;

    let addr = edge.tls_addr();
    let ca = edge.ca_pem().to_owned();
    concurrent_echo(100, 64 * 1024, move || {
        let (ca, host) = (ca.clone(), host.clone());
        async move { tls_connect(addr, &host, &ca).await }
    })
    .await
}

#[tokio::test]
async fn agent_dials_tls_upstreams_and_verifies_them() -> Result<()> {
    let edge = open_edge().await;
    let upstream_pki = Pki::new("upstream CA");
    let service = tls_echo_server(&upstream_pki.leaf(&["127.0.0.1"])).await;
    let session = session_for(&edge).await;
    let upstream: Upstream = format!("tls://{}", service.addr).parse()?;
    let fwd = session
        .tls_endpoint()
        .domain("plain.edge.test")
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(upstream.root_cas(upstream_pki.ca_pem.clone()))
        .await?;
    let tls = tls_connect(edge.tls_addr(), "plain.edge.test", edge.ca_pem()).await?;
    echo_check(tls, &pseudo_random(MIB, 5)).await?;
    drop(fwd);

    // An upstream whose certificate the agent cannot verify is never reached.
    let untrusted: Upstream = format!("tls://{}", service.addr).parse()?;
    let _fwd = session
        .tls_endpoint()
        .domain("untrusted.edge.test")
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(untrusted.root_cas(Pki::new("other CA").ca_pem))
        .await?;
    let tls = tls_connect(edge.tls_addr(), "untrusted.edge.test", edge.ca_pem()).await?;
    assert!(
        echo_check(tls, b"hello").await.is_err(),
        "unverified upstream must not get data"
    );
    Ok(())
}

#[tokio::test]
async fn tcp_endpoints_get_a_port_and_echo() -> Result<()> {
    let edge = open_edge().await;
    let service = echo_server().await;
    let session = session_for(&edge).await;
    let fwd = session
        .tcp_endpoint()
        .listen_and_forward(format!("tcp://{}", service.addr).parse()?)
        .await?;
    assert!(fwd.url().starts_with("tcp://127.0.0.1:"), "{}", fwd.url());
    let port = url_port(fwd.url());
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    echo_check(tcp, &pseudo_random(10 * MIB, 6)).await?;
    concurrent_echo(100, 64 * 1024, move || async move {
        Ok(tokio::net::TcpStream::connect(("127.0.0.1", port)).await?)
    })
    .await
}

#[tokio::test]
async fn listen_hands_connections_to_rust_code() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    let mut listener = session
        .tls_endpoint()
        .domain("svc.edge.test")
        .terminate_at(TerminateAt::Edge)
        .listen()
        .await?;
    let server = tokio::spawn(async move {
        let mut conn = listener.accept().await.expect("a connection");
        let sni = conn.sni().map(str::to_owned);
        assert!(conn.is_terminated());
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).await.expect("read");
        conn.write_all(b"world").await.expect("write");
        conn.shutdown().await.expect("shutdown");
        (sni, buf)
    });
    let mut tls = tls_connect(edge.tls_addr(), "svc.edge.test", edge.ca_pem()).await?;
    tls.write_all(b"hello").await?;
    let mut reply = Vec::new();
    tls.read_to_end(&mut reply).await?;
    assert_eq!(reply, b"world");
    let (sni, got) = server.await?;
    assert_eq!(sni.as_deref(), Some("svc.edge.test"));
    assert_eq!(&got, b"hello");
    Ok(())
}

/// A terminating server answers a client that lists AES-256-GCM first (as rustls's and
/// OpenSSL's clients do) with AES-128-GCM, the cheaper handshake, and leaves a client that
/// lists ChaCha20 first its choice; at the edge and at the agent alike.
#[tokio::test]
async fn terminating_servers_prefer_aes_128_gcm_unless_the_client_puts_chacha20_first() -> Result<()>
{
    use rustls::crypto::ring::cipher_suite as suite;
    use rustls::CipherSuite;
    let edge = open_edge().await;
    let pki = Pki::new("suite CA");
    let cert = pki.leaf(&["suite.agent.test"]);
    let service = echo_server().await;
    let session = session_for(&edge).await;
    let _edge_fwd = session
        .tls_endpoint()
        .domain("suite.edge.test")
        .terminate_at(TerminateAt::Edge)
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let _agent_fwd = session
        .tls_endpoint()
        .domain("suite.agent.test")
        .agent_termination(cert.crt.clone(), cert.key.clone())
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let client_default_first = if burrow_core::tls::has_aes_hardware() {
        CipherSuite::TLS13_AES_128_GCM_SHA256
    } else {
        CipherSuite::TLS13_AES_256_GCM_SHA384
    };
    for (name, ca) in [
        ("suite.edge.test", edge.ca_pem().to_owned()),
        ("suite.agent.test", pki.ca_pem.clone()),
    ] {
        let rustls_default = client_config(&ca);
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = vec![
            suite::TLS13_CHACHA20_POLY1305_SHA256,
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_AES_128_GCM_SHA256,
        ];
        let chacha_first = client_config_with_provider(&ca, provider);
        for (config, want) in [
            (rustls_default, client_default_first),
            (chacha_first, CipherSuite::TLS13_CHACHA20_POLY1305_SHA256),
        ] {
            let tls = tls_connect_with(edge.tls_addr(), name, config).await?;
            let got = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
            assert_eq!(got, Some(want), "{name}");
            echo_check(tls, &pseudo_random(64 * 1024, 3)).await?;
        }
    }
    Ok(())
}
