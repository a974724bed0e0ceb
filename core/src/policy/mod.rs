//! Traffic policy: rules evaluated at the edge on every public connection and, for
//! HTTP endpoints, on every request and response, in ngrok's format (YAML or JSON),
//! with errors that name the offending path.
//!
//! Phases: `on_tcp_connect` and `on_tls_request` (run by [`TrafficPolicy::evaluate`]),
//! `on_http_request` and `on_http_response` (run by [`TrafficPolicy::on_http_request`]
//! and [`TrafficPolicy::on_http_response`]). ngrok's legacy format, top-level `inbound`
//! and `outbound` lists, is read as `on_http_request` and `on_http_response`.
//!
//! ```yaml
//! on_tcp_connect:
//!   - expressions: ["conn.client_ip != '10.0.0.1'"]
//!     actions:
//!       - type: restrict-ips
//!         config: { allow: ["127.0.0.0/8"] }
//!       - type: terminate-tls
//!         config: { min_version: "1.3", alpn: ["h2"] }
//! on_http_request:
//!   - expressions: ["req.url.path.startsWith('/admin')"]
//!     actions:
//!       - type: basic-auth
//!         config: { credentials: ["admin:correct-horse"] }
//!       - type: add-headers
//!         config: { headers: { x-client-ip: "${conn.client_ip}" } }
//! on_http_response:
//!   - expressions: ["res.status_code >= 500"]
//!     actions:
//!       - type: custom-response
//!         config: { status_code: 503, body: "try again later" }
//! ```

mod expr;
mod http;
mod ratelimit;

pub use expr::{ConnInfo, Expr, Scope};
pub use http::{
    choose_encoding, GeneratedResponse, RequestOutcome, RequestSnapshot, ResponseOutcome,
};
pub(crate) use http::{same_secret, Digests};

use crate::agent::{CertPem, TlsMaterial};
use crate::error::{Error, ErrorCode, Result};
use crate::tls::{parse_version, TlsVersion};
use crate::wire::SecretPem;
use ipnet::IpNet;
use serde_norway::{Mapping, Value};

/// A parsed traffic policy. Clones share the counters of its `rate-limit` actions.
#[derive(Debug, Clone, Default)]
pub struct TrafficPolicy {
    /// `on_tcp_connect` and `on_tls_request`, in the order written.
    rules: Vec<Rule>,
    /// `on_http_request` (or legacy `inbound`).
    http_request: Vec<Rule>,
    /// `on_http_response` (or legacy `outbound`).
    http_response: Vec<Rule>,
    terminations: Vec<TerminateTls>,
}

/// One rule: when every expression matches, its actions run in order.
#[derive(Debug, Clone)]
struct Rule {
    expressions: Vec<Expr>,
    actions: Vec<Action>,
}

#[derive(Debug, Clone)]
enum Action {
    /// Index into `TrafficPolicy::terminations`.
    TerminateTls(usize),
    RestrictIps {
        allow: Vec<IpNet>,
        deny: Vec<IpNet>,
    },
    /// Refuses; the status is the HTTP answer (a connection phase just closes).
    Deny(::http::StatusCode),
    /// An action of the HTTP phases.
    Http(http::HttpAction),
}

/// Where a rule runs: decides its actions and the variables its expressions may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connection,
    HttpRequest,
    HttpResponse,
}

/// Every action type, for telling an unknown one from one in the wrong phase.
const ALL_ACTIONS: [&str; 11] = [
    "terminate-tls",
    "restrict-ips",
    "deny",
    "add-headers",
    "remove-headers",
    "custom-response",
    "redirect",
    "url-rewrite",
    "rate-limit",
    "basic-auth",
    "compress-response",
];

impl Phase {
    /// The phase a top-level key names (legacy `inbound` / `outbound` included).
    fn of(key: &str) -> Phase {
        match key {
            "on_http_request" | "inbound" => Phase::HttpRequest,
            "on_http_response" | "outbound" => Phase::HttpResponse,
            _ => Phase::Connection,
        }
    }

    fn scope(self) -> Scope {
        match self {
            Phase::Connection => Scope::Connection,
            Phase::HttpRequest => Scope::HttpRequest,
            Phase::HttpResponse => Scope::HttpResponse,
        }
    }

    /// The action types this phase runs.
    fn actions(self) -> &'static [&'static str] {
        match self {
            Phase::Connection => &["terminate-tls", "restrict-ips", "deny"],
            Phase::HttpRequest => &[
                "add-headers",
                "remove-headers",
                "deny",
                "custom-response",
                "redirect",
                "url-rewrite",
                "rate-limit",
                "basic-auth",
                "restrict-ips",
                "compress-response",
            ],
            Phase::HttpResponse => &[
                "add-headers",
                "remove-headers",
                "custom-response",
                "deny",
                "compress-response",
                "redirect",
            ],
        }
    }
}

/// The `terminate-tls` action's settings.
#[derive(Debug, Clone, Default)]
pub struct TerminateTls {
    /// Lowest version accepted.
    pub min_version: Option<TlsVersion>,
    /// Highest version accepted.
    pub max_version: Option<TlsVersion>,
    /// Certificate chain (PEM); `None` uses the edge's automatic certificate.
    pub server_certificate: Option<String>,
    /// Key of `server_certificate` (PEM).
    pub server_private_key: Option<SecretPem>,
    /// CA bundles for client certificates.
    pub mutual_tls_certificate_authorities: Vec<String>,
    /// ALPN protocols offered.
    pub alpn: Vec<String>,
}

impl TerminateTls {
    /// The same settings in the form edge termination uses.
    pub fn to_material(&self) -> TlsMaterial {
        let cas = &self.mutual_tls_certificate_authorities;
        let cert = match (&self.server_certificate, &self.server_private_key) {
            (Some(crt), Some(key)) => Some(CertPem {
                crt: crt.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        TlsMaterial {
            cert,
            min_version: self.min_version,
            max_version: self.max_version,
            alpn: self.alpn.clone(),
            client_cas: (!cas.is_empty()).then(|| cas.join("\n")),
        }
    }
}

/// What the policy decided for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Close the connection; the reason is logged.
    Deny(String),
    /// Serve it; `terminate` indexes [`TrafficPolicy::terminations`] when the edge terminates TLS.
    Allow {
        /// Which `terminate-tls` action applies, if any.
        terminate: Option<usize>,
    },
}

fn err(path: &str, message: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::InvalidPolicy, format!("{path}: {message}"))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn mapping<'a>(v: &'a Value, path: &str) -> Result<&'a Mapping> {
    v.as_mapping()
        .ok_or_else(|| err(path, "must be a mapping (key: value)"))
}

/// Fails on keys outside `allowed`; returns the mapping's entries by key.
fn fields<'a>(m: &'a Mapping, path: &str, allowed: &[&str]) -> Result<Vec<(&'a str, &'a Value)>> {
    let mut out = Vec::new();
    for (k, v) in m {
        let key = k
            .as_str()
            .ok_or_else(|| err(path, "keys must be strings"))?;
        if !allowed.contains(&key) {
            return Err(err(
                &join(path, key),
                format!("unknown field (expected one of: {})", allowed.join(", ")),
            ));
        }
        out.push((key, v));
    }
    Ok(out)
}

fn list<'a>(v: &'a Value, path: &str) -> Result<&'a [Value]> {
    match v {
        Value::Sequence(s) => Ok(s),
        Value::Null => Ok(&[]),
        _ => Err(err(path, "must be a list")),
    }
}

fn string(v: &Value, path: &str) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(err(path, "must be a string")),
    }
}

/// A list of strings; a single string is taken as a one-element list.
fn strings(v: &Value, path: &str) -> Result<Vec<String>> {
    if let Value::String(s) = v {
        return Ok(vec![s.clone()]);
    }
    list(v, path)?
        .iter()
        .enumerate()
        .map(|(i, item)| string(item, &format!("{path}[{i}]")))
        .collect()
}

fn cidrs(v: &Value, path: &str) -> Result<Vec<IpNet>> {
    strings(v, path)?
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    err(
                        &format!("{path}[{i}]"),
                        format!("{s:?} is not an IP address or CIDR range"),
                    )
                })
        })
        .collect()
}

/// A status code from a number (or a numeric string) within `range`.
fn status(
    v: &Value,
    path: &str,
    range: std::ops::RangeInclusive<u16>,
) -> Result<::http::StatusCode> {
    let bad = || {
        err(
            path,
            format!(
                "must be a status code from {} to {}",
                range.start(),
                range.end()
            ),
        )
    };
    let n = match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(bad)?;
    u16::try_from(n)
        .ok()
        .filter(|n| range.contains(n))
        .and_then(|n| ::http::StatusCode::from_u16(n).ok())
        .ok_or_else(bad)
}

fn boolean(v: &Value, path: &str) -> Result<bool> {
    v.as_bool()
        .ok_or_else(|| err(path, "must be true or false"))
}

/// The entries of an action's `config` (none when it is absent), refusing unknown keys.
fn config_fields<'a>(
    config: &'a Value,
    cpath: &str,
    allowed: &[&str],
) -> Result<Vec<(&'a str, &'a Value)>> {
    match config {
        Value::Null => Ok(Vec::new()),
        other => fields(mapping(other, cpath)?, cpath, allowed),
    }
}

/// Why `conn`'s client is refused by a `restrict-ips` action, if it is.
fn ip_refused(conn: &ConnInfo, allow: &[IpNet], deny: &[IpNet]) -> Option<String> {
    let ip = conn.client.ip().to_canonical();
    if deny.iter().any(|n| n.contains(&ip)) {
        return Some(format!("restrict-ips: {ip} is in a deny range"));
    }
    if !allow.is_empty() && !allow.iter().any(|n| n.contains(&ip)) {
        return Some(format!("restrict-ips: {ip} is not in an allow range"));
    }
    None
}

const PHASES: [&str; 6] = [
    "on_tcp_connect",
    "on_tls_request",
    "on_http_request",
    "on_http_response",
    "inbound",
    "outbound",
];

impl TrafficPolicy {
    /// Parses a policy from YAML or JSON text.
    pub fn parse(text: &str) -> Result<Self> {
        let value: Value = serde_norway::from_str(text).map_err(|e| {
            Error::new(
                ErrorCode::InvalidPolicy,
                format!("traffic policy is not valid YAML or JSON: {e}"),
            )
        })?;
        Self::from_value(&value, "")
    }

    /// Parses a policy already read as YAML; `path` prefixes every error (e.g. `endpoints[0].traffic_policy`).
    pub fn from_value(value: &Value, path: &str) -> Result<Self> {
        let mut policy = TrafficPolicy::default();
        if value.is_null() {
            return Ok(policy);
        }
        let root = mapping(
            value,
            if path.is_empty() {
                "traffic policy"
            } else {
                path
            },
        )?;
        let entries = fields(root, path, &PHASES)?;
        let legacy = entries
            .iter()
            .find(|(k, _)| matches!(*k, "inbound" | "outbound"));
        let phased = entries.iter().find(|(k, _)| k.starts_with("on_"));
        if let (Some((old, _)), Some((new, _))) = (legacy, phased) {
            return Err(err(
                &join(path, old),
                format!("the legacy format (inbound, outbound) cannot be mixed with phases ({new} is set): write these rules under {}", if *old == "inbound" { "on_http_request" } else { "on_http_response" }),
            ));
        }
        for (key, rules) in entries {
            let phase_path = join(path, key);
            let phase = Phase::of(key);
            for (i, rule) in list(rules, &phase_path)?.iter().enumerate() {
                let rule = policy.parse_rule(rule, &format!("{phase_path}[{i}]"), phase, key)?;
                match phase {
                    Phase::Connection => policy.rules.push(rule),
                    Phase::HttpRequest => policy.http_request.push(rule),
                    Phase::HttpResponse => policy.http_response.push(rule),
                }
            }
        }
        Ok(policy)
    }

    /// One rule of `phase`, written under the top-level key `key`.
    fn parse_rule(&mut self, v: &Value, path: &str, phase: Phase, key: &str) -> Result<Rule> {
        let phase_key = key;
        let mut rule = Rule {
            expressions: Vec::new(),
            actions: Vec::new(),
        };
        let mut saw_actions = false;
        for (key, v) in fields(mapping(v, path)?, path, &["name", "expressions", "actions"])? {
            let p = join(path, key);
            match key {
                "name" => {
                    string(v, &p)?;
                }
                "expressions" => {
                    for (i, e) in strings(v, &p)?.iter().enumerate() {
                        let ep = format!("{p}[{i}]");
                        let expr = Expr::parse_in(e, phase.scope())
                            .map_err(|m| err(&ep, format!("{e:?}: {m}")))?;
                        rule.expressions.push(expr);
                    }
                }
                _ => {
                    saw_actions = true;
                    for (i, a) in list(v, &p)?.iter().enumerate() {
                        let action =
                            self.parse_action(a, &format!("{p}[{i}]"), phase, phase_key)?;
                        rule.actions.push(action);
                    }
                }
            }
        }
        if !saw_actions || rule.actions.is_empty() {
            return Err(err(
                &join(path, "actions"),
                "a rule needs at least one action",
            ));
        }
        Ok(rule)
    }

    fn parse_action(
        &mut self,
        v: &Value,
        path: &str,
        phase: Phase,
        phase_key: &str,
    ) -> Result<Action> {
        let m = mapping(v, path)?;
        let entries = fields(m, path, &["type", "config"])?;
        let kind = entries
            .iter()
            .find(|(k, _)| *k == "type")
            .map(|(_, v)| string(v, &join(path, "type")))
            .transpose()?
            .ok_or_else(|| {
                err(
                    &join(path, "type"),
                    "missing (e.g. terminate-tls, restrict-ips, deny)",
                )
            })?;
        let null = Value::Null;
        let config = entries
            .iter()
            .find(|(k, _)| *k == "config")
            .map_or(&null, |(_, v)| *v);
        let cpath = join(path, "config");
        let tpath = join(path, "type");
        if !phase.actions().contains(&kind.as_str()) {
            let allowed = phase.actions().join(", ");
            return Err(if ALL_ACTIONS.contains(&kind.as_str()) {
                err(
                    &tpath,
                    format!("{kind:?} is not allowed in {phase_key} (allowed: {allowed})"),
                )
            } else {
                err(
                    &tpath,
                    format!("unknown action {kind:?} (supported in {phase_key}: {allowed})"),
                )
            });
        }
        let config_fields = |allowed: &[&str]| config_fields(config, &cpath, allowed);
        match kind.as_str() {
            "terminate-tls" => {
                let mut t = TerminateTls::default();
                let allowed = [
                    "min_version",
                    "max_version",
                    "server_certificate",
                    "server_private_key",
                    "mutual_tls_certificate_authorities",
                    "alpn",
                ];
                for (key, v) in config_fields(&allowed)? {
                    let p = join(&cpath, key);
                    let version = |v: &Value| -> Result<TlsVersion> {
                        let s = string(v, &p)?;
                        parse_version(&s, &p).map_err(|_| {
                            err(
                                &p,
                                format!("{s:?} is not supported (use \"1.2\" or \"1.3\")"),
                            )
                        })
                    };
                    match key {
                        "min_version" => t.min_version = Some(version(v)?),
                        "max_version" => t.max_version = Some(version(v)?),
                        "server_certificate" => t.server_certificate = Some(string(v, &p)?),
                        "server_private_key" => {
                            t.server_private_key = Some(SecretPem(string(v, &p)?))
                        }
                        "mutual_tls_certificate_authorities" => {
                            let cas = strings(v, &p)?;
                            for (i, ca) in cas.iter().enumerate() {
                                let at = format!("{p}[{i}]");
                                crate::tls::parse_certs(ca.as_bytes(), "CA bundle")
                                    .map_err(|e| err(&at, format!("{} (a PEM certificate, \"-----BEGIN CERTIFICATE-----\" to \"-----END CERTIFICATE-----\")", e.message())))?;
                            }
                            t.mutual_tls_certificate_authorities = cas
                        }
                        _ => t.alpn = strings(v, &p)?,
                    }
                }
                if let (Some(lo), Some(hi)) = (t.min_version, t.max_version) {
                    if lo > hi {
                        return Err(err(
                            &cpath,
                            "min_version is above max_version: no TLS version is left",
                        ));
                    }
                }
                match (&t.server_certificate, &t.server_private_key) {
                    (Some(_), None) => {
                        return Err(err(&cpath, "server_certificate needs server_private_key"))
                    }
                    (None, Some(_)) => {
                        return Err(err(&cpath, "server_private_key needs server_certificate"))
                    }
                    _ => {}
                }
                self.terminations.push(t);
                Ok(Action::TerminateTls(self.terminations.len() - 1))
            }
            "restrict-ips" => {
                let (mut allow, mut deny) = (Vec::new(), Vec::new());
                for (key, v) in config_fields(&["allow", "deny"])? {
                    let p = join(&cpath, key);
                    if key == "allow" {
                        allow = cidrs(v, &p)?;
                    } else {
                        deny = cidrs(v, &p)?;
                    }
                }
                if allow.is_empty() && deny.is_empty() {
                    return Err(err(&cpath, "restrict-ips needs an allow or a deny list"));
                }
                Ok(Action::RestrictIps { allow, deny })
            }
            "deny" => {
                let mut code = ::http::StatusCode::FORBIDDEN;
                for (key, v) in config_fields(&["status_code"])? {
                    code = status(v, &join(&cpath, key), 200..=599)?;
                }
                Ok(Action::Deny(code))
            }
            other => Ok(Action::Http(http::HttpAction::parse(
                other,
                config,
                &cpath,
                phase.scope(),
            )?)),
        }
    }

    /// Adds a first rule restricting client IPs (ngrok's `allow_cidr` / `deny_cidr` options).
    pub fn restrict_ips(&mut self, allow: &[String], deny: &[String]) -> Result<()> {
        if allow.is_empty() && deny.is_empty() {
            return Ok(());
        }
        let parse = |list: &[String], what: &str| {
            cidrs(
                &Value::Sequence(list.iter().cloned().map(Value::String).collect()),
                what,
            )
        };
        let action = Action::RestrictIps {
            allow: parse(allow, "allow_cidr")?,
            deny: parse(deny, "deny_cidr")?,
        };
        self.rules.insert(
            0,
            Rule {
                expressions: Vec::new(),
                actions: vec![action],
            },
        );
        Ok(())
    }

    /// The `terminate-tls` actions, in the order [`Verdict::Allow`] indexes them.
    pub fn terminations(&self) -> &[TerminateTls] {
        &self.terminations
    }

    /// True when the policy has no rules (in any phase).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && !self.has_http_phases()
    }

    /// Runs the connection phases (`on_tcp_connect`, `on_tls_request`) for one
    /// connection.
    pub fn evaluate(&self, conn: &ConnInfo) -> Verdict {
        let mut terminate = None;
        for rule in &self.rules {
            if !rule.expressions.iter().all(|e| e.eval(conn)) {
                continue;
            }
            for action in &rule.actions {
                match action {
                    Action::Deny(_) => return Verdict::Deny("denied by a deny action".into()),
                    Action::RestrictIps { allow, deny } => {
                        if let Some(why) = ip_refused(conn, allow, deny) {
                            return Verdict::Deny(why);
                        }
                    }
                    Action::TerminateTls(i) => {
                        terminate.get_or_insert(*i);
                    }
                    Action::Http(_) => {}
                }
            }
        }
        Verdict::Allow { terminate }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn message(text: &str) -> String {
        let e = TrafficPolicy::parse(text).expect_err(text);
        assert_eq!(e.code(), ErrorCode::InvalidPolicy);
        e.message().to_owned()
    }

    #[test]
    fn parses_the_seed_policies() {
        let p =
            TrafficPolicy::parse("on_tcp_connect:\n  - actions:\n      - type: terminate-tls\n")
                .unwrap();
        assert_eq!(p.terminations().len(), 1);
        let p =
            TrafficPolicy::parse("on_tls_request:\n  - actions:\n      - type: terminate-tls\n")
                .unwrap();
        assert_eq!(p.terminations().len(), 1);
        let json = r#"{"on_tcp_connect":[{"actions":[{"type":"terminate-tls","config":{"min_version":"1.3","alpn":["h2"]}}]}]}"#;
        let p = TrafficPolicy::parse(json).unwrap();
        assert_eq!(p.terminations()[0].min_version, Some(TlsVersion::Tls13));
    }

    #[test]
    fn errors_name_the_path() {
        let m = message(
            "on_tcp_connect:\n  - actions:\n      - type: deny\n      - type: terminate-tls\n        config:\n          min_version: \"1.1\"\n",
        );
        assert_eq!(
            m,
            r#"on_tcp_connect[0].actions[1].config.min_version: "1.1" is not supported (use "1.2" or "1.3")"#
        );
        assert!(message("on_http_requests: []").starts_with("on_http_requests: unknown field"));
        assert!(
            message("on_tcp_connect:\n  - actions:\n      - type: fly\n")
                .starts_with("on_tcp_connect[0].actions[0].type: unknown action \"fly\"")
        );
        assert!(message("on_tcp_connect:\n  - actions:\n      - type: terminate-tls\n        config: {cert: x}\n").starts_with("on_tcp_connect[0].actions[0].config.cert: unknown field"));
        assert!(message(
            "on_tls_request:\n  - expressions: [\"req.x == 1\"]\n    actions: [{type: deny}]\n"
        )
        .starts_with("on_tls_request[0].expressions[0]:"));
        assert!(message("on_tcp_connect:\n  - actions:\n      - type: restrict-ips\n        config: {allow: [\"nope\"]}\n").starts_with("on_tcp_connect[0].actions[0].config.allow[0]:"));
        assert!(message("on_tcp_connect:\n  - name: x\n").starts_with("on_tcp_connect[0].actions:"));
        assert!(message("on_tcp_connect: [1]").starts_with("on_tcp_connect[0]: must be a mapping"));
        assert!(
            message("on_tcp_connect:\n  - actions:\n      - config: {}\n")
                .starts_with("on_tcp_connect[0].actions[0].type: missing")
        );
        assert!(message("on_tcp_connect:\n  - actions:\n      - type: terminate-tls\n        config: {max_version: \"1.4\"}\n").contains("max_version: \"1.4\" is not supported"));
        assert!(message("on_tcp_connect:\n  - actions:\n      - type: terminate-tls\n        config: {min_version: \"1.3\", max_version: \"1.2\"}\n").contains("min_version is above max_version"));
        assert!(message("on_tcp_connect:\n  - actions:\n      - type: terminate-tls\n        config: {server_certificate: x}\n").contains("needs server_private_key"));
        assert!(message(": : :").contains("not valid YAML"));
        assert!(message("- 1").starts_with("traffic policy: must be a mapping"));
    }

    #[test]
    fn evaluates_rules_in_order() {
        let p = TrafficPolicy::parse(
            "on_tcp_connect:\n  - actions:\n      - type: restrict-ips\n        config: {allow: [\"127.0.0.0/8\"], deny: [\"127.0.0.9\"]}\n  - expressions: [\"conn.tls.sni == 'no.test'\"]\n    actions: [{type: deny}]\non_tls_request:\n  - actions: [{type: terminate-tls}]\n",
        )
        .unwrap();
        let conn = |ip: &str, sni: &str| ConnInfo {
            client: SocketAddr::new(ip.parse().unwrap(), 1),
            server_port: 443,
            sni: Some(sni.into()),
        };
        assert_eq!(
            p.evaluate(&conn("127.0.0.1", "a.test")),
            Verdict::Allow { terminate: Some(0) }
        );
        assert!(matches!(
            p.evaluate(&conn("127.0.0.9", "a.test")),
            Verdict::Deny(_)
        ));
        assert!(matches!(
            p.evaluate(&conn("10.0.0.1", "a.test")),
            Verdict::Deny(_)
        ));
        assert!(matches!(
            p.evaluate(&conn("127.0.0.1", "no.test")),
            Verdict::Deny(_)
        ));
    }

    /// One HTTP rule with one action, as YAML.
    fn one(phase: &str, action: &str) -> String {
        format!("{phase}:\n  - actions:\n      - {action}\n")
    }

    #[test]
    fn refuses_http_configs_with_their_path() {
        let req = "on_http_request";
        let res = "on_http_response";
        for (phase, action, want) in [
            (req, "{type: terminate-tls}", "on_http_request[0].actions[0].type: \"terminate-tls\" is not allowed in on_http_request"),
            (res, "{type: url-rewrite, config: {to: /x}}", "on_http_response[0].actions[0].type: \"url-rewrite\" is not allowed in on_http_response"),
            (res, "{type: rate-limit}", "on_http_response[0].actions[0].type: \"rate-limit\" is not allowed"),
            (res, "{type: basic-auth}", "on_http_response[0].actions[0].type: \"basic-auth\" is not allowed"),
            (res, "{type: restrict-ips, config: {allow: [10.0.0.0/8]}}", "on_http_response[0].actions[0].type: \"restrict-ips\" is not allowed"),
            ("on_tcp_connect", "{type: add-headers, config: {headers: {a: b}}}", "on_tcp_connect[0].actions[0].type: \"add-headers\" is not allowed in on_tcp_connect"),
            ("on_tls_request", "{type: compress-response}", "on_tls_request[0].actions[0].type: \"compress-response\" is not allowed"),
            (req, "{type: jwt-validation}", "on_http_request[0].actions[0].type: unknown action \"jwt-validation\" (supported in on_http_request:"),
            (req, "{type: deny, config: {status_code: 99}}", "on_http_request[0].actions[0].config.status_code: must be a status code from 200 to 599"),
            (req, "{type: deny, config: {status_code: x}}", "on_http_request[0].actions[0].config.status_code: must be a status code"),
            (req, "{type: add-headers}", "on_http_request[0].actions[0].config.headers: add-headers needs at least one header"),
            (req, "{type: add-headers, config: {headers: {\"bad name\": x}}}", "on_http_request[0].actions[0].config.headers.bad name: \"bad name\" is not a valid header name"),
            (req, "{type: add-headers, config: {headers: [a]}}", "on_http_request[0].actions[0].config.headers: must be a mapping"),
            (req, "{type: add-headers, config: {headers: {a: \"${req.nope}\"}}}", "on_http_request[0].actions[0].config.headers.a: ${req.nope}: unknown variable"),
            (req, "{type: add-headers, config: {headers: {a: \"${res.status_code}\"}}}", "on_http_request[0].actions[0].config.headers.a: ${res.status_code}: res.status_code is only available in on_http_response"),
            (req, "{type: add-headers, config: {header: {a: b}}}", "on_http_request[0].actions[0].config.header: unknown field"),
            (res, "{type: remove-headers, config: {headers: []}}", "on_http_response[0].actions[0].config.headers: remove-headers needs at least one header name"),
            (res, "{type: remove-headers, config: {headers: [\"a b\"]}}", "on_http_response[0].actions[0].config.headers[0]: \"a b\" is not a valid header name"),
            (req, "{type: custom-response, config: {status_code: 700}}", "on_http_request[0].actions[0].config.status_code: must be a status code from 200 to 599"),
            (req, "{type: custom-response, config: {body: a, content: b}}", "on_http_request[0].actions[0].config.content: set body or content, not both"),
            (req, "{type: redirect, config: {status_code: 302}}", "on_http_request[0].actions[0].config.to: missing"),
            (req, "{type: redirect, config: {to: /x, status_code: 200}}", "on_http_request[0].actions[0].config.status_code: must be a status code from 300 to 399"),
            (req, "{type: redirect, config: {from: \"(\", to: /x}}", "on_http_request[0].actions[0].config.from: \"(\" is not a valid regular expression"),
            (req, "{type: url-rewrite, config: {from: /a}}", "on_http_request[0].actions[0].config.to: missing"),
            (req, "{type: url-rewrite, config: {from: \"[\", to: /b}}", "on_http_request[0].actions[0].config.from: \"[\" is not a valid regular expression"),
            (req, "{type: rate-limit, config: {algorithm: sliding_window, capacity: 1, rate: 60s, bucket_key: []}}", "on_http_request[0].actions[0].config.name: missing"),
            (req, "{type: rate-limit, config: {name: a, algorithm: fixed_window, capacity: 1, rate: 60s, bucket_key: []}}", "on_http_request[0].actions[0].config.algorithm: \"fixed_window\" is not supported"),
            (req, "{type: rate-limit, config: {name: a, algorithm: sliding_window, capacity: 0, rate: 60s, bucket_key: []}}", "on_http_request[0].actions[0].config.capacity: must be a whole number"),
            (req, "{type: rate-limit, config: {name: a, algorithm: sliding_window, capacity: 1, rate: 60x, bucket_key: []}}", "on_http_request[0].actions[0].config.rate: \"60x\" is not a duration"),
            (req, "{type: rate-limit, config: {name: a, algorithm: sliding_window, capacity: 1, rate: 25h, bucket_key: []}}", "on_http_request[0].actions[0].config.rate: \"25h\" is longer than 24h"),
            (req, "{type: rate-limit, config: {name: a, algorithm: sliding_window, capacity: 1, rate: 60s}}", "on_http_request[0].actions[0].config.bucket_key: missing"),
            (req, "{type: rate-limit, config: {name: a, algorithm: sliding_window, capacity: 1, rate: 60s, bucket_key: [req.nope]}}", "on_http_request[0].actions[0].config.bucket_key[0]: \"req.nope\": unknown variable"),
            (req, "{type: rate-limit, config: {name: a, algorithm: sliding_window, capacity: 1, rate: 60s, bucket_key: [], enforce: maybe}}", "on_http_request[0].actions[0].config.enforce: must be true or false"),
            (req, "{type: basic-auth, config: {}}", "on_http_request[0].actions[0].config.credentials: basic-auth needs at least one"),
            (req, "{type: basic-auth, config: {credentials: [nocolon]}}", "on_http_request[0].actions[0].config.credentials[0]: must be \"user:password\""),
            (req, "{type: basic-auth, config: {credentials: [\"u:short\"]}}", "on_http_request[0].actions[0].config.credentials[0]: the password must be 8 to 128 characters"),
            (req, "{type: basic-auth, config: {credentials: [\":password1\"]}}", "on_http_request[0].actions[0].config.credentials[0]: the user name is empty"),
            (req, "{type: basic-auth, config: {credentials: [\"u:password1\"], realm: \"a\\\"b\"}}", "on_http_request[0].actions[0].config.realm: may not hold quotes"),
            (res, "{type: compress-response, config: {algorithms: [gzip, deflate]}}", "on_http_response[0].actions[0].config.algorithms[1]: \"deflate\" is not supported (use gzip or br)"),
            (res, "{type: compress-response, config: {algorithms: [compress]}}", "on_http_response[0].actions[0].config.algorithms[0]: \"compress\" is not supported"),
            (res, "{type: compress-response, config: {algorithms: [br, br]}}", "on_http_response[0].actions[0].config.algorithms[1]: \"br\" is listed twice"),
            (res, "{type: compress-response, config: {algorithms: []}}", "on_http_response[0].actions[0].config.algorithms: needs at least one algorithm"),
        ] {
            let m = message(&one(phase, action));
            assert!(m.starts_with(want), "{action}:\n  got  {m}\n  want {want}");
        }
    }

    #[test]
    fn refuses_expressions_outside_their_phase() {
        for (text, want) in [
            ("on_tcp_connect:\n  - expressions: [\"req.method == 'GET'\"]\n    actions: [{type: deny}]\n", "on_tcp_connect[0].expressions[0]: \"req.method == 'GET'\": req.method is only available in on_http_request and on_http_response"),
            ("on_http_request:\n  - expressions: [\"res.status_code == 200\"]\n    actions: [{type: deny}]\n", "on_http_request[0].expressions[0]: \"res.status_code == 200\": res.status_code is only available in on_http_response"),
            ("inbound:\n  - expressions: [\"res.status_code == 200\"]\n    actions: [{type: deny}]\n", "inbound[0].expressions[0]:"),
        ] {
            let m = message(text);
            assert!(m.starts_with(want), "got {m}");
        }
        let ok = "on_http_response:\n  - expressions: [\"res.status_code >= 500 && req.url.path.startsWith('/api')\"]\n    actions: [{type: custom-response, config: {status_code: 503, body: down}}]\n";
        assert!(TrafficPolicy::parse(ok).is_ok());
    }

    #[test]
    fn reads_the_legacy_format() {
        let p = TrafficPolicy::parse(
            "inbound:\n  - name: block admin\n    expressions: [\"req.url.path.startsWith('/admin')\"]\n    actions: [{type: deny}]\noutbound:\n  - actions: [{type: add-headers, config: {headers: {x-a: b}}}]\n",
        )
        .unwrap();
        assert_eq!(
            (p.rules.len(), p.http_request.len(), p.http_response.len()),
            (0, 1, 1)
        );
        assert!(p.has_http_phases() && !p.is_empty());
        assert!(message("inbound:\n  - actions: [{type: deny}]\non_http_request:\n  - actions: [{type: deny}]\n")
            .starts_with("inbound: the legacy format (inbound, outbound) cannot be mixed with phases (on_http_request is set)"));
        assert!(message("on_tcp_connect: []\noutbound: []\n")
            .starts_with("outbound: the legacy format"));
        assert!(message("outbound:\n  - actions: [{type: basic-auth, config: {credentials: [\"u:password1\"]}}]\n")
            .starts_with("outbound[0].actions[0].type: \"basic-auth\" is not allowed in outbound"));
        assert!(message("inbound:\n  - actions: [{type: nope}]\n")
            .starts_with("inbound[0].actions[0].type: unknown action \"nope\""));
    }

    #[test]
    fn http_rules_stay_out_of_the_connection_phases() {
        let p = TrafficPolicy::parse(
            "on_http_request:\n  - actions: [{type: deny}]\non_http_response:\n  - actions: [{type: deny, config: {status_code: 404}}]\n",
        )
        .unwrap();
        assert!(p.has_http_phases() && !p.is_empty());
        let conn = ConnInfo {
            client: SocketAddr::new([127, 0, 0, 1].into(), 1),
            server_port: 443,
            sni: None,
        };
        assert_eq!(p.evaluate(&conn), Verdict::Allow { terminate: None });
        let p = TrafficPolicy::parse("on_tcp_connect:\n  - actions: [{type: deny}]\n").unwrap();
        assert!(!p.has_http_phases() && !p.is_empty());
        assert!(TrafficPolicy::default().is_empty());
        let p = TrafficPolicy::parse("on_http_request: []\non_http_response:\n").unwrap();
        assert!(!p.has_http_phases() && p.is_empty());
    }
}
