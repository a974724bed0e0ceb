//! Traffic policy, TLS handshake controls, mutual TLS and PROXY protocol.

use crate::common::*;
use anyhow::{anyhow, Result};
use burrow_core::{ErrorCode, ProxyProto, Session, TerminateAt};
use ppp::PartialResult;
use rustls::version::{TLS12, TLS13};
use rustls::ProtocolVersion;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

fn terminate_policy(config: &str) -> String {
    format!(
        "on_tcp_connect:\n  - actions:\n      - type: terminate-tls\n        config: {config}\n"
    )
}

/// Connects with `config` and checks a small echo; Err when refused at any point.
async fn try_echo(
    addr: SocketAddr,
    name: &str,
    config: rustls::ClientConfig,
) -> Result<Option<ProtocolVersion>> {
    let tls = tls_connect_with(addr, name, config).await?;
    let version = tls.get_ref().1.protocol_version();
    echo_check(tls, b"ping through burrow").await?;
    Ok(version)
}

async fn edge_endpoint(
    session: &Session,
    domain: &str,
    policy: &str,
    upstream: SocketAddr,
) -> Result<burrow_core::Forwarder> {
    Ok(session
        .tls_endpoint()
        .domain(domain)
        .traffic_policy(policy)
        .listen_and_forward(upstream.to_string().parse()?)
        .await?)
}

#[tokio::test]
async fn tls_versions_at_the_edge() -> Result<()> {
    let edge = open_edge().await;
    let service = echo_server().await;
    let session = session_for(&edge).await;
    let ca = edge.ca_pem().to_owned();
    let only13 = edge_endpoint(
        &session,
        "v13.test",
        &terminate_policy("{min_version: \"1.3\"}"),
        service.addr,
    )
    .await?;
    assert_eq!(only13.terminate_at(), TerminateAt::Edge);
    let _only12 = edge_endpoint(
        &session,
        "v12.test",
        &terminate_policy("{max_version: \"1.2\"}"),
        service.addr,
    )
    .await?;
    let _default =
        edge_endpoint(&session, "vdef.test", &terminate_policy("{}"), service.addr).await?;
    let addr = edge.tls_addr();

    assert!(
        try_echo(
            addr,
            "v13.test",
            client_config_with(&ca, &[&TLS12], None, &[])
        )
        .await
        .is_err(),
        "1.2 client refused by min 1.3"
    );
    assert_eq!(
        try_echo(addr, "v13.test", client_config(&ca)).await?,
        Some(ProtocolVersion::TLSv1_3)
    );
    assert!(
        try_echo(
            addr,
            "v12.test",
            client_config_with(&ca, &[&TLS13], None, &[])
        )
        .await
        .is_err(),
        "1.3 client refused by max 1.2"
    );
    assert_eq!(
        try_echo(addr, "v12.test", client_config(&ca)).await?,
        Some(ProtocolVersion::TLSv1_2)
    );
    assert_eq!(
        try_echo(addr, "vdef.test", client_config(&ca)).await?,
        Some(ProtocolVersion::TLSv1_3),
        "1.3 preferred"
    );
    assert_eq!(
        try_echo(
            addr,
            "vdef.test",
            client_config_with(&ca, &[&TLS12], None, &[])
        )
        .await?,
        Some(ProtocolVersion::TLSv1_2),
        "1.2 still allowed by default"
    );
    Ok(())
}

#[tokio::test]
async fn tls_versions_at_the_agent_are_configurable() -> Result<()> {
    let edge = open_edge().await;
    let pki = Pki::new("agent CA");
    let cert = pki.leaf(&["v.agent.test", "w.agent.test"]);
    let service = echo_server().await;
    let session = session_for(&edge).await;
    let upstream = || service.addr.to_string().parse().expect("addr");
    let _a = session
        .tls_endpoint()
        .domain("v.agent.test")
        .agent_termination(cert.crt.clone(), cert.key.clone())
        .min_version("1.3")
        .listen_and_forward(upstream())
        .await?;
    let _b = session
        .tls_endpoint()
        .domain("w.agent.test")
        .agent_termination(cert.crt.clone(), cert.key.clone())
        .max_version("1.2")
        .listen_and_forward(upstream())
        .await?;
    let addr = edge.tls_addr();
    assert!(try_echo(
        addr,
        "v.agent.test",
        client_config_with(&pki.ca_pem, &[&TLS12], None, &[])
    )
    .await
    .is_err());
    assert_eq!(
        try_echo(addr, "v.agent.test", client_config(&pki.ca_pem)).await?,
        Some(ProtocolVersion::TLSv1_3)
    );
    assert!(try_echo(
        addr,
        "w.agent.test",
        client_config_with(&pki.ca_pem, &[&TLS13], None, &[])
    )
    .await
    .is_err());
    assert_eq!(
        try_echo(addr, "w.agent.test", client_config(&pki.ca_pem)).await?,
        Some(ProtocolVersion::TLSv1_2)
    );
    let err = session
        .tls_endpoint()
        .domain("v.agent.test")
        .agent_termination(cert.crt.clone(), cert.key.clone())
        .min_version("1.1")
        .listen()
        .await
        .expect_err("1.1");
    assert!(
        err.message().contains("min_version") && err.message().contains("1.1"),
        "{err}"
    );
    Ok(())
}

/// Accepts one connection on `listener` and reports its client certificate subject and ALPN.
async fn serve_one(mut listener: burrow_core::Listener) -> (Option<String>, Option<String>) {
    let mut conn = listener.accept().await.expect("a connection");
    let seen = (conn.client_cert_subject(), conn.alpn());
    let mut buf = [0u8; 4];
    if conn.read_exact(&mut buf).await.is_ok() {
        let _ = conn.write_all(&buf).await;
        let _ = conn.shutdown().await;
    }
    seen
}

async fn ping(tls: ClientTls) -> Result<()> {
    let (mut r, mut w) = tokio::io::split(tls);
    w.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    r.read_exact(&mut buf).await?;
    if &buf != b"ping" {
        return Err(anyhow!("wrong echo"));
    }
    Ok(())
}

#[tokio::test]
async fn mutual_tls_at_the_edge_and_at_the_agent() -> Result<()> {
    let edge = open_edge().await;
    let clients = Pki::new("client CA");
    let strangers = Pki::new("stranger CA");
    let good = clients.client("alice");
    let bad = strangers.client("mallory");
    let agent_pki = Pki::new("agent CA");
    let agent_cert = agent_pki.leaf(&["m.agent.test"]);
    let session = session_for(&edge).await;

    for (name, at_edge) in [("m.edge.test", true), ("m.agent.test", false)] {
        let (builder, server_ca) = if at_edge {
            (
                session.tls_endpoint().domain(name).traffic_policy(format!(
                    "on_tcp_connect:\n  - actions:\n      - type: terminate-tls\n        config:\n          mutual_tls_certificate_authorities: [{:?}]\n",
                    clients.ca_pem
                )),
                edge.ca_pem().to_owned(),
            )
        } else {
            (
                session
                    .tls_endpoint()
                    .domain(name)
                    .agent_termination(agent_cert.crt.clone(), agent_cert.key.clone())
                    .mutual_tlsca(clients.ca_pem.clone()),
                agent_pki.ca_pem.clone(),
            )
        };
        let listener = builder.listen().await?;
        let served = tokio::spawn(serve_one(listener));
        let addr = edge.tls_addr();
        for (who, cert) in [
            ("no certificate", None),
            ("a certificate from another CA", Some(&bad)),
        ] {
            let refused = match tls_connect_with(
                addr,
                name,
                client_config_with(&server_ca, &[&TLS13, &TLS12], cert, &[]),
            )
            .await
            {
                Err(_) => true,
                Ok(tls) => ping(tls).await.is_err(),
            };
            assert!(refused, "{name}: a client with {who} must be refused");
        }
        let tls = tls_connect_with(
            addr,
            name,
            client_config_with(&server_ca, &[&TLS13, &TLS12], Some(&good), &[]),
        )
        .await?;
        ping(tls).await?;
        let (subject, _) = served.await?;
        assert_eq!(
            subject.as_deref(),
            Some("CN=alice"),
            "{name}: the verified subject reaches the agent"
        );
    }
    Ok(())
}

#[tokio::test]
async fn alpn_h2_is_negotiated_and_passed_on() -> Result<()> {
    let edge = open_edge().await;
    let agent_pki = Pki::new("agent CA");
    let agent_cert = agent_pki.leaf(&["h2.agent.test"]);
    let session = session_for(&edge).await;
    let at_edge = session
        .tls_endpoint()
        .domain("h2.edge.test")
        .traffic_policy(terminate_policy("{alpn: [h2, http/1.1]}"))
        .listen()
        .await?;
    let at_agent = session
        .tls_endpoint()
        .domain("h2.agent.test")
        .agent_termination(agent_cert.crt.clone(), agent_cert.key.clone())
        .alpn(["h2", "http/1.1"])
        .listen()
        .await?;
    for (listener, name, ca) in [
        (at_edge, "h2.edge.test", edge.ca_pem().to_owned()),
        (at_agent, "h2.agent.test", agent_pki.ca_pem.clone()),
    ] {
        let served = tokio::spawn(serve_one(listener));
        let tls = tls_connect_with(
            edge.tls_addr(),
            name,
            client_config_with(&ca, &[&TLS13], None, &["h2"]),
        )
        .await?;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "{name}");
        ping(tls).await?;
        let (_, alpn) = served.await?;
        assert_eq!(
            alpn.as_deref(),
            Some("h2"),
            "{name}: the agent learns the negotiated protocol"
        );
    }
    Ok(())
}

#[tokio::test]
async fn restrict_ips_and_deny_run_before_any_byte_reaches_the_agent() -> Result<()> {
    let edge = open_edge().await;
    let service = echo_server().await;
    let session = session_for(&edge).await;
    let ca = edge.ca_pem().to_owned();
    let rule = |action: &str| {
        format!("on_tcp_connect:\n  - actions:\n{action}      - type: terminate-tls\n")
    };
    let _allow = edge_endpoint(
        &session,
        "allow.test",
        &rule("      - type: restrict-ips\n        config: {allow: [\"127.0.0.0/8\"]}\n"),
        service.addr,
    )
    .await?;
    let _deny = edge_endpoint(
        &session,
        "deny.test",
        &rule("      - type: restrict-ips\n        config: {deny: [\"127.0.0.1/32\"]}\n"),
        service.addr,
    )
    .await?;
    let _other = edge_endpoint(
        &session,
        "other.test",
        &rule("      - type: restrict-ips\n        config: {allow: [\"10.0.0.0/8\"]}\n"),
        service.addr,
    )
    .await?;
    let _denied = edge_endpoint(&session, "denied.test", "on_tls_request:\n  - expressions: [\"conn.tls.sni == 'denied.test'\"]\n    actions: [{type: deny}]\n", service.addr).await?;
    let addr = edge.tls_addr();
    try_echo(addr, "allow.test", client_config(&ca)).await?;
    for name in ["deny.test", "other.test"] {
        let err = try_echo(addr, name, client_config(&ca))
            .await
            .expect_err(name);
        assert!(
            format!("{err:#}").contains("AccessDenied"),
            "{name}: {err:#}"
        );
    }
    assert!(tls_connect(addr, "denied.test", &ca).await.is_err());

    // The same through ngrok's allow_cidr / deny_cidr options, on a passthrough endpoint.
    let pki = Pki::new("svc CA");
    let tls_service = tls_echo_server(&pki.leaf(&["cidr.test", "cidr2.test"])).await;
    let up = || tls_service.addr.to_string().parse().expect("addr");
    let _c1 = session
        .tls_endpoint()
        .domain("cidr.test")
        .allow_cidr("127.0.0.1/32")
        .listen_and_forward(up())
        .await?;
    let _c2 = session
        .tls_endpoint()
        .domain("cidr2.test")
        .deny_cidr("127.0.0.0/8")
        .listen_and_forward(up())
        .await?;
    try_echo(addr, "cidr.test", client_config(&pki.ca_pem)).await?;
    assert!(tls_connect(addr, "cidr2.test", &pki.ca_pem).await.is_err());
    let err = session
        .tls_endpoint()
        .domain("cidr3.test")
        .allow_cidr("nope")
        .listen()
        .await
        .expect_err("bad cidr");
    assert!(err.message().contains("allow_cidr"), "{err}");
    Ok(())
}

#[tokio::test]
async fn tcp_endpoints_terminate_tls_by_policy() -> Result<()> {
    let edge = open_edge().await;
    let service = echo_server().await;
    let session = session_for(&edge).await;
    let fwd = session
        .tcp_endpoint()
        .traffic_policy(terminate_policy("{min_version: \"1.3\"}"))
        .listen_and_forward(service.addr.to_string().parse()?)
        .await?;
    let port = url_port(fwd.url());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    // The automatic certificate covers the edge's public host.
    assert_eq!(
        try_echo(addr, "127.0.0.1", client_config(edge.ca_pem())).await?,
        Some(ProtocolVersion::TLSv1_3)
    );
    Ok(())
}

#[tokio::test]
async fn policy_errors_fail_the_bind_and_name_the_field() -> Result<()> {
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    let cases = [
        (
            terminate_policy("{min_version: \"1.1\"}"),
            r#"on_tcp_connect[0].actions[0].config.min_version: "1.1" is not supported (use "1.2" or "1.3")"#,
        ),
        (
            "on_tcp_connect:\n  - actions: [{type: teleport}]\n".to_owned(),
            "on_tcp_connect[0].actions[0].type: unknown action",
        ),
        ("on_connect: []\n".to_owned(), "on_connect: unknown field"),
        (
            "on_tcp_connect:\n  - expressions: [\"conn.bytes > 1\"]\n    actions: [{type: deny}]\n"
                .to_owned(),
            "on_tcp_connect[0].expressions[0]",
        ),
        (
            terminate_policy("{ciphers: [x]}"),
            "on_tcp_connect[0].actions[0].config.ciphers: unknown field",
        ),
    ];
    for (policy, expected) in cases {
        let err = session
            .tls_endpoint()
            .domain("p.test")
            .traffic_policy(policy.clone())
            .listen()
            .await
            .expect_err(&policy);
        assert_eq!(err.code(), ErrorCode::InvalidPolicy, "{err}");
        assert!(
            err.message().starts_with(expected),
            "got {:?}, want {expected:?}",
            err.message()
        );
    }
    let err = session
        .tls_endpoint()
        .domain("p.test")
        .traffic_policy(terminate_policy("{}"))
        .terminate_at(TerminateAt::Upstream)
        .listen()
        .await
        .expect_err("contradiction");
    assert_eq!(err.code(), ErrorCode::InvalidOption);
    Ok(())
}

/// An upstream that parses a PROXY header with `ppp`, reports the source address, then echoes.
async fn proxy_upstream() -> Result<(SocketAddr, mpsc::UnboundedReceiver<String>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 512];
                let consumed = loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    match ppp::HeaderResult::parse(&buf) {
                        ppp::HeaderResult::V2(Ok(h)) => {
                            let src = match h.addresses {
                                ppp::v2::Addresses::IPv4(a) => {
                                    format!("v2 {}:{}", a.source_address, a.source_port)
                                }
                                ppp::v2::Addresses::IPv6(a) => {
                                    format!("v2 [{}]:{}", a.source_address, a.source_port)
                                }
                                other => format!("v2 {other:?}"),
                            };
                            let _ = tx.send(src);
                            break h.len();
                        }
                        ppp::HeaderResult::V1(Ok(h)) => {
                            let src = match h.addresses {
                                ppp::v1::Addresses::Tcp4(a) => {
                                    format!("v1 {}:{}", a.source_address, a.source_port)
                                }
                                other => format!("v1 {other:?}"),
                            };
                            let _ = tx.send(src);
                            break h.header.len();
                        }
                        r if r.is_incomplete() => continue,
                        _ => return,
                    }
                };
                let rest = buf[consumed..].to_vec();
                let (mut r, mut w) = s.into_split();
                let _ = w.write_all(&rest).await;
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok((addr, rx))
}

#[tokio::test]
async fn proxy_protocol_tells_the_upstream_the_client_address() -> Result<()> {
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    let (up, mut seen) = proxy_upstream().await?;
    for (version, name) in [(ProxyProto::V2, "pp2.test"), (ProxyProto::V1, "pp1.test")] {
        let _fwd = session
            .tls_endpoint()
            .domain(name)
            .terminate_at(TerminateAt::Edge)
            .proxy_proto(version)
            .listen_and_forward(up.to_string().parse()?)
            .await?;
        let tls = tls_connect(edge.tls_addr(), name, edge.ca_pem()).await?;
        let client = tls.get_ref().0.local_addr()?;
        echo_check(tls, &pseudo_random(256 * 1024, 30)).await?;
        let src = seen.recv().await.ok_or_else(|| anyhow!("no header seen"))?;
        assert_eq!(
            src,
            format!("v{version} {client}"),
            "the upstream sees the real client"
        );
    }
    Ok(())
}
