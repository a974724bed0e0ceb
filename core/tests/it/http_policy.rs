//! Traffic policy's HTTP phases (issue 16) through the edge's reverse proxy: every
//! action, expressions over the request and response, ngrok's legacy format.

use crate::common::*;
use crate::web::*;
use anyhow::Result;
use burrow_core::agent::OptionValue;
use burrow_core::ErrorCode;

const POLICY: &str = r#"
on_http_request:
  - expressions: ["req.url.path.startsWith('/deny')"]
    actions: [{type: deny, config: {status_code: 418}}]
  - expressions: ["req.url.path == '/custom' && req.method == 'GET'"]
    actions: [{type: custom-response, config: {status_code: 201, body: "custom body", headers: {x-custom: "yes"}}}]
  - expressions: ["req.url.path.startsWith('/old/')"]
    actions: [{type: redirect, config: {from: "^/old/(.*)$", to: "/new/$1", status_code: 301}}]
  - expressions: ["req.url.path.startsWith('/v1/')"]
    actions: [{type: url-rewrite, config: {from: "^/v1/(.*)$", to: "/$1"}}]
  - actions:
      - {type: add-headers, config: {headers: {x-policy: "${conn.client_ip}"}}}
      - {type: remove-headers, config: {headers: [x-drop]}}
  - expressions: ["req.url.path == '/limited'"]
    actions: [{type: rate-limit, config: {name: per-ip, algorithm: sliding_window, capacity: 3, rate: "60s", bucket_key: ["conn.client_ip"]}}]
  - expressions: ["req.url.path.startsWith('/private')"]
    actions: [{type: basic-auth, config: {credentials: ["ann:correct-horse"]}}]
  - expressions: ["req.headers['x-from'] == 'blocked'"]
    actions: [{type: restrict-ips, config: {deny: ["127.0.0.0/8"]}}]
on_http_response:
  - expressions: ["res.status_code == 404"]
    actions: [{type: custom-response, config: {status_code: 404, body: "policy 404"}}]
  - expressions: ["req.url.path == '/text'"]
    actions:
      - {type: compress-response, config: {algorithms: [gzip]}}
      - {type: add-headers, config: {headers: {x-res: "added"}}}
      - {type: remove-headers, config: {headers: [x-app]}}
"#;

#[tokio::test]
async fn every_http_action_runs_at_the_edge() -> Result<()> {
    let edge = open_edge().await;
    let app = web_app().await;
    let (_s, fwd) = forward(
        &edge,
        &app.addr.to_string(),
        &[("traffic_policy", POLICY.into())],
    )
    .await?;
    let url = |path: &str| format!("{}{path}", fwd.url());

    let denied = curl(&edge, &url("/deny/me"), &[]).await?;
    assert_eq!(denied.status, 418);
    assert_eq!(
        denied.header("burrow-error-code"),
        Some("BURROW_POLICY_DENY")
    );

    let custom = curl(&edge, &url("/custom"), &["--http2"]).await?;
    assert_eq!(
        (custom.status, custom.text().as_str()),
        (201, "custom body")
    );
    assert_eq!(custom.header("x-custom"), Some("yes"));

    let moved = curl(&edge, &url("/old/page?x=1"), &[]).await?;
    assert_eq!(moved.status, 301);
    assert!(
        moved
            .header("location")
            .is_some_and(|l| l.ends_with("/new/page?x=1")),
        "{:?}",
        moved.header("location")
    );

    let rewritten = curl(&edge, &url("/v1/headers"), &["-H", "X-Drop: secret"]).await?;
    let seen: serde_json::Value = serde_json::from_slice(&rewritten.body)?;
    assert_eq!(seen["uri"], "/headers", "{seen}");
    assert_eq!(
        seen["headers"]["x-policy"],
        serde_json::json!(["127.0.0.1"])
    );
    assert!(seen["headers"].get("x-drop").is_none(), "{seen}");

    for _ in 0..3 {
        assert_eq!(curl(&edge, &url("/limited"), &[]).await?.status, 200);
    }
    let limited = curl(&edge, &url("/limited"), &[]).await?;
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some());
    assert_eq!(
        curl(&edge, &url("/"), &[]).await?.status,
        200,
        "other paths are not limited"
    );

    let private = curl(&edge, &url("/private"), &[]).await?;
    assert_eq!(private.status, 401);
    assert!(private
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Basic")));
    assert_eq!(
        curl(&edge, &url("/private"), &["-u", "ann:correct-horse"])
            .await?
            .status,
        200
    );

    let blocked = curl(&edge, &url("/"), &["-H", "X-From: blocked"]).await?;
    assert_eq!(blocked.status, 403);
    assert_eq!(blocked.header("ngrok-error-code"), Some("ERR_NGROK_3205"));

    let missing = curl(&edge, &url("/status/404"), &[]).await?;
    assert_eq!(
        (missing.status, missing.text().as_str()),
        (404, "policy 404")
    );

    let text = curl(&edge, &url("/text"), &["-H", "Accept-Encoding: br, gzip"]).await?;
    assert_eq!(
        text.header("content-encoding"),
        Some("gzip"),
        "the policy allows gzip only"
    );
    assert_eq!(text.header("x-res"), Some("added"));
    assert!(text.header("x-app").is_none());
    let decoded = curl(&edge, &url("/text"), &["--compressed"]).await?;
    assert_eq!(decoded.text(), text_body());
    Ok(())
}

#[tokio::test]
async fn ngroks_legacy_inbound_and_outbound_rules_map_onto_the_phases() -> Result<()> {
    let edge = open_edge().await;
    let app = web_app().await;
    let legacy = r#"{
      "inbound": [{"name": "no admin", "expressions": ["req.url.path.startsWith('/admin')"],
                   "actions": [{"type": "deny", "config": {"status_code": 404}}]}],
      "outbound": [{"name": "tag", "actions": [{"type": "add-headers", "config": {"headers": {"x-legacy": "outbound"}}}]}]
    }"#;
    let (_s, fwd) = forward(&edge, &app.addr.to_string(), &[("policy", legacy.into())]).await?;
    assert_eq!(
        curl(&edge, &format!("{}/admin/x", fwd.url()), &[])
            .await?
            .status,
        404
    );
    let ok = curl(&edge, fwd.url(), &[]).await?;
    assert_eq!((ok.status, ok.header("x-legacy")), (200, Some("outbound")));
    Ok(())
}

#[tokio::test]
async fn http_phases_on_a_tls_endpoint_are_refused_with_the_reason() -> Result<()> {
    let edge = open_edge().await;
    let policy = "on_http_request:\n  - actions: [{type: deny}]\n";
    let options = [
        ("proto", OptionValue::from("tls")),
        ("traffic_policy", policy.into()),
    ];
    let Err(err) = forward(&edge, "127.0.0.1:9", &options).await else {
        anyhow::bail!("a tls endpoint took on_http_request");
    };
    let err = err.downcast::<burrow_core::Error>()?;
    assert_eq!(err.code(), ErrorCode::InvalidPolicy, "{err}");
    assert!(err.message().contains("http endpoints"), "{err}");
    let bad = "on_http_request:\n  - actions: [{type: deny, config: {status_code: 99}}]\n";
    let Err(err) = forward(&edge, "127.0.0.1:9", &[("traffic_policy", bad.into())]).await else {
        anyhow::bail!("status_code 99 was taken");
    };
    assert!(
        err.to_string()
            .contains("on_http_request[0].actions[0].config.status_code"),
        "{err}"
    );
    Ok(())
}
