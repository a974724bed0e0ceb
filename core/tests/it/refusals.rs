//! Every refusal carries its code, and public clients get a TLS alert.

use crate::common::*;
use anyhow::Result;
use burrow_core::edge::TokenRule;
use burrow_core::{Edge, EdgeConfig, ErrorCode, Session, TerminateAt};

async fn alert_of(edge: &Edge, config: rustls::ClientConfig, name: &str) -> String {
    let err = tls_connect_with(edge.tls_addr(), name, config)
        .await
        .expect_err("must be refused");
    format!("{err:#}")
}

#[tokio::test]
async fn client_without_sni_gets_an_alert() {
    let edge = open_edge().await;
    let mut config = client_config(edge.ca_pem());
    config.enable_sni = false;
    let err = alert_of(&edge, config, "anything.test").await;
    assert!(
        err.contains("UnrecognisedName") || err.contains("unrecognised"),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_sni_gets_an_alert() {
    let edge = open_edge().await;
    let err = alert_of(&edge, client_config(edge.ca_pem()), "nobody.test").await;
    assert!(
        err.contains("UnrecognisedName") || err.contains("unrecognised"),
        "{err}"
    );
}

#[tokio::test]
async fn garbage_instead_of_a_client_hello_is_closed() -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let edge = open_edge().await;
    let mut tcp = tokio::net::TcpStream::connect(edge.tls_addr()).await?;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut reply = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tcp.read_to_end(&mut reply),
    )
    .await??;
    // A fatal handshake_failure alert record, then close.
    assert_eq!(reply, [21, 3, 3, 0, 2, 2, 40]);
    Ok(())
}

async fn token_edge() -> Edge {
    Edge::start(EdgeConfig {
        authtokens: vec![TokenRule {
            token: "good-token".into(),
            domains: vec!["*.allowed.test".into()],
        }],
        ..Default::default()
    })
    .await
    .expect("edge")
}

async fn connect_with(edge: &Edge, token: Option<&str>) -> burrow_core::Result<Session> {
    let mut b = Session::builder()
        .server_addr(edge.tunnel_addr().to_string())
        .root_cas(edge.ca_pem());
    if let Some(t) = token {
        b = b.authtoken(t);
    }
    b.connect().await
}

#[tokio::test]
async fn bad_or_missing_token_is_refused() {
    let edge = token_edge().await;
    let err = connect_with(&edge, Some("wrong-token"))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), ErrorCode::AuthFailed);
    assert!(
        !err.to_string().contains("wrong-token"),
        "the token must not be echoed: {err}"
    );
    let err = connect_with(&edge, None).await.expect_err("refused");
    assert_eq!(err.code(), ErrorCode::AuthFailed);
    assert!(err.message().contains("authtoken"), "{err}");
    assert_eq!(edge.session_count(), 0);
    assert!(connect_with(&edge, Some("good-token")).await.is_ok());
}

#[tokio::test]
async fn domain_outside_the_tokens_globs_is_refused() -> Result<()> {
    let edge = token_edge().await;
    let session = connect_with(&edge, Some("good-token")).await?;
    let err = session
        .tls_endpoint()
        .domain("app.other.test")
        .listen()
        .await
        .expect_err("refused");
    assert_eq!(err.code(), ErrorCode::DomainNotAllowed);
    assert!(err.message().contains("app.other.test"), "{err}");
    session
        .tls_endpoint()
        .domain("app.allowed.test")
        .listen()
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_domain_bound_by_another_session_is_refused() -> Result<()> {
    let edge = open_edge().await;
    let first = session_for(&edge).await;
    let _held = first.tls_endpoint().domain("taken.test").listen().await?;
    let second = session_for(&edge).await;
    let err = second
        .tls_endpoint()
        .domain("taken.test")
        .listen()
        .await
        .expect_err("refused");
    assert_eq!(err.code(), ErrorCode::DomainTaken);
    assert_eq!(
        edge.route("taken.test").expect("route").session_id,
        first.id(),
        "no hijack"
    );
    Ok(())
}

#[tokio::test]
async fn cert_that_does_not_cover_the_domain_is_refused() {
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    let cert = Pki::new("ca").leaf(&["other.test"]);
    for at in [TerminateAt::Edge, TerminateAt::Agent] {
        let err = session
            .tls_endpoint()
            .domain("app.test")
            .crt_key(cert.crt.clone(), cert.key.clone())
            .terminate_at(at)
            .listen()
            .await
            .expect_err("refused");
        assert_eq!(err.code(), ErrorCode::CertDomainMismatch, "{at}: {err}");
        assert!(err.message().contains("app.test"), "{err}");
    }
}

#[tokio::test]
async fn malformed_pem_and_mismatched_keys_are_refused() {
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    let pki = Pki::new("ca");
    let cert = pki.leaf(&["app.test"]);
    let other = pki.leaf(&["app.test"]);
    let cases: Vec<(&str, String, String, ErrorCode, &str)> = vec![
        (
            "not pem",
            "hello".into(),
            cert.key.clone(),
            ErrorCode::InvalidPem,
            "crt",
        ),
        (
            "broken base64",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".into(),
            cert.key.clone(),
            ErrorCode::InvalidPem,
            "crt",
        ),
        (
            "key not pem",
            cert.crt.clone(),
            "nope".into(),
            ErrorCode::InvalidPem,
            "key",
        ),
        (
            "other key",
            cert.crt.clone(),
            other.key.clone(),
            ErrorCode::KeyMismatch,
            "key",
        ),
    ];
    for (what, crt, key, code, names) in cases {
        let err = session
            .tls_endpoint()
            .domain("app.test")
            .termination(crt, key)
            .listen()
            .await
            .expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err}");
        assert!(err.message().contains(names), "{what}: {err}");
        assert!(
            !err.to_string().contains("PRIVATE KEY-----\n"),
            "no key material in errors"
        );
    }
}

#[tokio::test]
async fn incomplete_termination_options_are_refused() {
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    let cert = Pki::new("ca").leaf(&["app.test"]);
    let err = session
        .tls_endpoint()
        .domain("app.test")
        .crt(cert.crt.clone())
        .listen()
        .await
        .expect_err("no key");
    assert_eq!(err.code(), ErrorCode::InvalidOption);
    assert_eq!(err.message(), "Missing key for tls termination");

    let err = session
        .tls_endpoint()
        .domain("app.test")
        .terminate_at(TerminateAt::Agent)
        .listen()
        .await
        .expect_err("agent");
    assert!(err.message().contains("crt and key"), "{err}");

    let err = session
        .tls_endpoint()
        .agent_termination(cert.crt.clone(), cert.key.clone())
        .listen()
        .await
        .expect_err("agent without domain");
    assert!(err.message().contains("domain"), "{err}");

    let err = session
        .tls_endpoint()
        .domain("app.test")
        .crt_key(cert.crt.clone(), cert.key.clone())
        .terminate_at(TerminateAt::Upstream)
        .listen()
        .await
        .expect_err("upstream with cert");
    assert_eq!(err.code(), ErrorCode::InvalidOption);

    let err = session
        .tls_endpoint()
        .domain("not a domain")
        .listen()
        .await
        .expect_err("bad domain");
    assert_eq!(err.code(), ErrorCode::InvalidDomain);

    let err = "ftp://x:1"
        .parse::<burrow_core::Upstream>()
        .expect_err("bad upstream");
    assert_eq!(err.code(), ErrorCode::InvalidUrl);
}

#[tokio::test]
async fn unreachable_edge_and_untrusted_edge_fail_clearly() {
    let edge = open_edge().await;
    let err = Session::builder()
        .server_addr(edge.tunnel_addr().to_string())
        .root_cas(Pki::new("not the edge").ca_pem)
        .connect()
        .await
        .expect_err("untrusted");
    assert_eq!(err.code(), ErrorCode::ConnectFailed);
    assert!(err.message().contains("TLS"), "{err}");

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let err = Session::builder()
        .server_addr(format!("127.0.0.1:{port}"))
        .connect()
        .await
        .expect_err("nothing there");
    assert_eq!(err.code(), ErrorCode::ConnectFailed);

    let err = Session::builder()
        .server_addr("no-port")
        .connect()
        .await
        .expect_err("bad addr");
    assert_eq!(err.code(), ErrorCode::InvalidUrl);
}

#[tokio::test]
async fn a_port_in_a_tls_url_must_be_the_edges_tls_port() -> Result<()> {
    let edge = open_edge().await;
    let session = session_for(&edge).await;
    let own = edge.tls_addr().port();
    let other = if own == 9 { 10 } else { 9 };
    let err = session
        .tls_endpoint()
        .url(&format!("tls://port.test:{other}"))?
        .listen()
        .await
        .expect_err("a port the edge does not serve");
    assert_eq!(err.code(), ErrorCode::InvalidUrl);
    assert!(
        err.message().contains(&format!("port {other}"))
            && err.message().contains(&format!("port {own} only")),
        "{err}"
    );
    // The edge's own port is honoured: the URL it hands back names it.
    let listener = session
        .tls_endpoint()
        .url(&format!("tls://port.test:{own}"))?
        .listen()
        .await?;
    assert_eq!(listener.url(), format!("tls://port.test:{own}"));
    Ok(())
}
