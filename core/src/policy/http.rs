//! The HTTP phases of a traffic policy: `on_http_request` runs on a request before
//! it is forwarded, `on_http_response` on the upstream's response head. Both are pure:
//! the proxy passes the parts in and acts on the outcome.

use super::expr::{regex, Env, Operand, Scope};
use super::ratelimit::Limiter;
use super::{
    boolean, config_fields, err, ip_refused, join, mapping, status, string, strings, Action,
    ConnInfo, Rule, TrafficPolicy,
};
use crate::error::Result;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use regex::Regex;
use serde_norway::Value;
use std::time::{Duration, Instant};

/// What the proxy does with a request, before it is forwarded.
#[derive(Debug, Clone)]
pub enum RequestOutcome {
    /// Forward the (possibly rewritten) request; `compress` lists the algorithms a
    /// compress-response action allowed ("gzip", "br"), in preference order, empty
    /// when none ran (the last one that ran wins); see [`choose_encoding`].
    Forward {
        /// Algorithms the response may be compressed with.
        compress: Vec<String>,
    },
    /// Answer the client with this response instead (deny, custom-response, redirect,
    /// rate-limit, basic-auth, restrict-ips).
    Respond(GeneratedResponse),
}

/// What the proxy does with the upstream's response.
#[derive(Debug, Clone)]
pub enum ResponseOutcome {
    /// Send the (possibly edited) response; `compress` lists the algorithms a
    /// compress-response action allowed, in preference order, empty when none ran
    /// (the last one that ran wins); see [`choose_encoding`].
    Forward {
        /// Algorithms the response may be compressed with.
        compress: Vec<String>,
    },
    /// Send this response instead of the upstream's (deny, custom-response, redirect).
    Replace(GeneratedResponse),
}

/// A response the policy generates.
#[derive(Debug, Clone)]
pub struct GeneratedResponse {
    /// Its status.
    pub status: StatusCode,
    /// Its headers (`content-type` set when there is a body).
    pub headers: HeaderMap,
    /// Its body: short plain text, or a custom-response's content.
    pub body: Bytes,
    /// Why, for the edge's log and its error-code header: "POLICY_DENY",
    /// "RATE_LIMITED", "BASIC_AUTH", "IP_RESTRICTED", "CUSTOM_RESPONSE", "REDIRECT".
    pub reason: &'static str,
}

/// What an expression can see of a request: in `on_http_request` the request as the
/// client sent it (actions do not change what later rules see), in `on_http_response`
/// the snapshot the proxy passes (take it before `on_http_request` to match ngrok,
/// whose `req.*` variables describe the client's request).
#[derive(Debug, Clone)]
pub struct RequestSnapshot {
    /// The method.
    pub method: Method,
    /// The full URL as the client asked it: `https://host/path?query`.
    pub url: String,
    /// The path, e.g. `/a/b`.
    pub path: String,
    /// The query without `?`, empty when there is none.
    pub query: String,
    /// The `Host` header (or the URI's authority, for HTTP/2), lowercased.
    pub host: String,
    /// The headers.
    pub headers: HeaderMap,
}

impl RequestSnapshot {
    /// The snapshot of a request received over `scheme` ("http" or "https").
    pub fn of(scheme: &str, parts: &http::request::Parts) -> Self {
        let host = host_of(parts);
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or("").to_owned();
        RequestSnapshot {
            method: parts.method.clone(),
            url: url_of(scheme, &host, &parts.uri),
            path,
            query,
            host,
            headers: parts.headers.clone(),
        }
    }
}

/// The request's host: the `Host` header, else the URI's authority (HTTP/2).
fn host_of(parts: &http::request::Parts) -> String {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn url_of(scheme: &str, host: &str, uri: &Uri) -> String {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    format!("{scheme}://{host}{pq}")
}

/// A string with `${VARIABLE}` parts filled in when it is used (ngrok's CEL
/// interpolation, for lone variables). `${...}` holding anything but a `conn.`, `req.`
/// or `res.` variable (e.g. a regex group `${1}`) stays as written.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Var(Operand),
}

impl Template {
    fn parse(s: &str, scope: Scope, path: &str) -> Result<Template> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(at) = rest.find("${") {
            let Some(len) = rest[at..].find('}') else {
                break;
            };
            let inner = &rest[at + 2..at + len];
            let t = inner.trim_start();
            if !(t.starts_with("conn.") || t.starts_with("req.") || t.starts_with("res.")) {
                parts.push(Part::Text(rest[..at + len + 1].to_owned()));
                rest = &rest[at + len + 1..];
                continue;
            }
            let v = Operand::parse(inner, scope)
                .map_err(|m| err(path, format!("${{{inner}}}: {m}")))?;
            parts.push(Part::Text(rest[..at].to_owned()));
            parts.push(Part::Var(v));
            rest = &rest[at + len + 1..];
        }
        parts.push(Part::Text(rest.to_owned()));
        parts.retain(|p| !matches!(p, Part::Text(t) if t.is_empty()));
        Ok(Template { parts })
    }

    /// The text with its variables' values; with `escape`, `$` in values is doubled
    /// (the text is a regex replacement).
    fn render(&self, env: &Env<'_>, escape: bool) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) if escape => out.push_str(&v.value(env).replace('$', "$$")),
                Part::Var(v) => out.push_str(&v.value(env)),
            }
        }
        out
    }

    /// The text alone, variables left out (to check what can be checked up front).
    fn literal(&self) -> String {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                Part::Var(_) => None,
            })
            .collect()
    }
}

/// SHA-256 of each `user:password` of a basic-auth action: compared in constant time,
/// never kept in clear, and left out of `Debug`.
#[derive(Clone)]
pub(crate) struct Digests(Vec<[u8; 32]>);

impl Digests {
    /// The digests of `user:password` pairs (the `basic_auth` option's credentials).
    pub(crate) fn of<'a>(credentials: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Digests(
            credentials
                .into_iter()
                .map(|(user, password)| sha256(format!("{user}:{password}").as_bytes()))
                .collect(),
        )
    }

    /// True when `headers` carry Basic credentials one of these digests matches.
    pub(crate) fn admit(&self, headers: &HeaderMap) -> bool {
        authorized(headers, &self.0)
    }
}

impl std::fmt::Debug for Digests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} credentials>", self.0.len())
    }
}

/// An action of the HTTP phases (deny and restrict-ips are shared with the connection
/// phases and live in [`Action`]).
#[derive(Debug, Clone)]
pub(crate) enum HttpAction {
    AddHeaders(Vec<(HeaderName, Template)>),
    RemoveHeaders(Vec<HeaderName>),
    CustomResponse {
        status: StatusCode,
        headers: Vec<(HeaderName, Template)>,
        body: Template,
    },
    Redirect {
        from: Option<Regex>,
        to: Template,
        status: StatusCode,
        headers: Vec<(HeaderName, Template)>,
    },
    UrlRewrite {
        from: Option<Regex>,
        to: Template,
    },
    RateLimit {
        keys: Vec<Operand>,
        enforce: bool,
        limiter: Limiter,
    },
    BasicAuth {
        digests: Digests,
        realm: String,
        enforce: bool,
    },
    CompressResponse(Vec<String>),
}

fn header_name(name: &str, path: &str) -> Result<HeaderName> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| err(path, format!("{name:?} is not a valid header name")))
}

/// A `headers` map of name to value (values may hold `${...}`).
fn header_map(v: &Value, path: &str, scope: Scope) -> Result<Vec<(HeaderName, Template)>> {
    let mut out = Vec::new();
    for (k, value) in mapping(v, path)? {
        let name = k
            .as_str()
            .ok_or_else(|| err(path, "header names must be strings"))?;
        let p = join(path, name);
        let name = header_name(name, &p)?;
        let t = Template::parse(&string(value, &p)?, scope, &p)?;
        HeaderValue::from_str(&t.literal())
            .map_err(|_| err(&p, "is not a valid header value (no control characters)"))?;
        out.push((name, t));
    }
    Ok(out)
}

fn optional_regex(v: &Value, path: &str) -> Result<Regex> {
    regex(&string(v, path)?).map_err(|m| err(path, m))
}

/// A duration such as "60s", "10m", "1h" or "1h30m".
fn duration(v: &Value, path: &str) -> Result<Duration> {
    let s = string(v, path)?;
    let bad = || {
        err(
            path,
            format!("{s:?} is not a duration (e.g. \"60s\", \"10m\", \"1h\")"),
        )
    };
    let mut total = 0u64;
    let mut digits = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    if total > 24 * 3600 {
        return Err(err(path, format!("{s:?} is longer than 24h")));
    }
    Ok(Duration::from_secs(total))
}

fn required<'a>(v: Option<&'a Value>, cpath: &str, key: &str) -> Result<&'a Value> {
    v.ok_or_else(|| err(&join(cpath, key), "missing"))
}

impl HttpAction {
    /// Parses the `config` of an action of type `kind` (already checked against the
    /// phase); `cpath` is the config's path for errors.
    pub(crate) fn parse(kind: &str, config: &Value, cpath: &str, scope: Scope) -> Result<Self> {
        match kind {
            "add-headers" => Self::add_headers(config, cpath, scope),
            "remove-headers" => Self::remove_headers(config, cpath),
            "custom-response" => Self::custom_response(config, cpath, scope),
            "redirect" => Self::redirect(config, cpath, scope),
            "url-rewrite" => Self::url_rewrite(config, cpath, scope),
            "rate-limit" => Self::rate_limit(config, cpath, scope),
            "basic-auth" => Self::basic_auth(config, cpath),
            "compress-response" => Self::compress(config, cpath),
            other => Err(err(cpath, format!("unknown action {other:?}"))),
        }
    }

    fn add_headers(config: &Value, cpath: &str, scope: Scope) -> Result<Self> {
        let mut headers = None;
        for (key, v) in config_fields(config, cpath, &["headers"])? {
            headers = Some(header_map(v, &join(cpath, key), scope)?);
        }
        match headers {
            Some(h) if !h.is_empty() => Ok(HttpAction::AddHeaders(h)),
            _ => Err(err(
                &join(cpath, "headers"),
                "add-headers needs at least one header",
            )),
        }
    }

    fn remove_headers(config: &Value, cpath: &str) -> Result<Self> {
        let mut names = Vec::new();
        for (key, v) in config_fields(config, cpath, &["headers"])? {
            let p = join(cpath, key);
            for (i, name) in strings(v, &p)?.iter().enumerate() {
                names.push(header_name(name, &format!("{p}[{i}]"))?);
            }
        }
        if names.is_empty() {
            return Err(err(
                &join(cpath, "headers"),
                "remove-headers needs at least one header name",
            ));
        }
        Ok(HttpAction::RemoveHeaders(names))
    }

    fn custom_response(config: &Value, cpath: &str, scope: Scope) -> Result<Self> {
        let (mut code, mut headers, mut body) = (StatusCode::OK, Vec::new(), None);
        let allowed = ["status_code", "body", "content", "headers"];
        for (key, v) in config_fields(config, cpath, &allowed)? {
            let p = join(cpath, key);
            match key {
                "status_code" => code = status(v, &p, 200..=599)?,
                "headers" => headers = header_map(v, &p, scope)?,
                _ => {
                    if body.is_some() {
                        return Err(err(&p, "set body or content, not both"));
                    }
                    body = Some(Template::parse(&string(v, &p)?, scope, &p)?);
                }
            }
        }
        let body = body.unwrap_or(Template { parts: Vec::new() });
        Ok(HttpAction::CustomResponse {
            status: code,
            headers,
            body,
        })
    }

    fn redirect(config: &Value, cpath: &str, scope: Scope) -> Result<Self> {
        let (mut from, mut to, mut code, mut headers) = (None, None, StatusCode::FOUND, Vec::new());
        let allowed = ["from", "to", "status_code", "headers"];
        for (key, v) in config_fields(config, cpath, &allowed)? {
            let p = join(cpath, key);
            match key {
                "from" => from = Some(optional_regex(v, &p)?),
                "to" => to = Some(Template::parse(&string(v, &p)?, scope, &p)?),
                "status_code" => code = status(v, &p, 300..=399)?,
                _ => headers = header_map(v, &p, scope)?,
            }
        }
        Ok(HttpAction::Redirect {
            from,
            to: to.ok_or_else(|| err(&join(cpath, "to"), "missing (the URL to redirect to)"))?,
            status: code,
            headers,
        })
    }

    fn url_rewrite(config: &Value, cpath: &str, scope: Scope) -> Result<Self> {
        let (mut from, mut to) = (None, None);
        for (key, v) in config_fields(config, cpath, &["from", "to"])? {
            let p = join(cpath, key);
            if key == "from" {
                from = Some(optional_regex(v, &p)?);
            } else {
                to = Some(Template::parse(&string(v, &p)?, scope, &p)?);
            }
        }
        Ok(HttpAction::UrlRewrite {
            from,
            to: to.ok_or_else(|| err(&join(cpath, "to"), "missing (the replacement URL)"))?,
        })
    }

    fn rate_limit(config: &Value, cpath: &str, scope: Scope) -> Result<Self> {
        let allowed = [
            "name",
            "algorithm",
            "capacity",
            "rate",
            "bucket_key",
            "enforce",
        ];
        let fields = config_fields(config, cpath, &allowed)?;
        let get = |k: &str| fields.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let name = string(required(get("name"), cpath, "name")?, &join(cpath, "name"))?;
        if name.is_empty() || name.len() >= 1024 {
            return Err(err(&join(cpath, "name"), "must be 1 to 1023 characters"));
        }
        let ap = join(cpath, "algorithm");
        let algorithm = string(required(get("algorithm"), cpath, "algorithm")?, &ap)?;
        if algorithm != "sliding_window" {
            return Err(err(
                &ap,
                format!("{algorithm:?} is not supported (use \"sliding_window\")"),
            ));
        }
        let cp = join(cpath, "capacity");
        let capacity = required(get("capacity"), cpath, "capacity")?
            .as_u64()
            .filter(|n| (1..=2_000_000_000).contains(n))
            .ok_or_else(|| err(&cp, "must be a whole number from 1 to 2000000000"))?;
        let rp = join(cpath, "rate");
        let window = duration(required(get("rate"), cpath, "rate")?, &rp)?;
        let kp = join(cpath, "bucket_key");
        let mut keys = Vec::new();
        for (i, k) in strings(required(get("bucket_key"), cpath, "bucket_key")?, &kp)?
            .iter()
            .enumerate()
        {
            let at = format!("{kp}[{i}]");
            keys.push(Operand::parse(k, scope).map_err(|m| err(&at, format!("{k:?}: {m}")))?);
        }
        let enforce = get("enforce")
            .map(|v| boolean(v, &join(cpath, "enforce")))
            .transpose()?
            .unwrap_or(true);
        Ok(HttpAction::RateLimit {
            keys,
            enforce,
            limiter: Limiter::new(capacity, window),
        })
    }

    fn basic_auth(config: &Value, cpath: &str) -> Result<Self> {
        let (mut digests, mut realm, mut enforce) = (Vec::new(), "burrow".to_owned(), true);
        let allowed = ["credentials", "realm", "enforce"];
        for (key, v) in config_fields(config, cpath, &allowed)? {
            let p = join(cpath, key);
            match key {
                "credentials" => {
                    let creds = strings(v, &p)?;
                    if creds.len() > 10 {
                        return Err(err(&p, "at most 10 credentials"));
                    }
                    for (i, c) in creds.iter().enumerate() {
                        digests.push(credential(c, &format!("{p}[{i}]"))?);
                    }
                }
                "realm" => {
                    realm = string(v, &p)?;
                    if realm
                        .chars()
                        .any(|c| c == '"' || c == '\\' || c.is_control())
                    {
                        return Err(err(
                            &p,
                            "may not hold quotes, backslashes or control characters",
                        ));
                    }
                }
                _ => enforce = boolean(v, &p)?,
            }
        }
        if digests.is_empty() {
            return Err(err(
                &join(cpath, "credentials"),
                "basic-auth needs at least one \"user:password\"",
            ));
        }
        Ok(HttpAction::BasicAuth {
            digests: Digests(digests),
            realm,
            enforce,
        })
    }

    fn compress(config: &Value, cpath: &str) -> Result<Self> {
        let mut algorithms = vec!["gzip".to_owned(), "br".to_owned()];
        for (key, v) in config_fields(config, cpath, &["algorithms"])? {
            let p = join(cpath, key);
            algorithms = Vec::new();
            for (i, a) in strings(v, &p)?.iter().enumerate() {
                let at = format!("{p}[{i}]");
                let a = a.to_ascii_lowercase();
                if !matches!(a.as_str(), "gzip" | "br") {
                    return Err(err(&at, format!("{a:?} is not supported (use gzip or br)")));
                }
                if algorithms.contains(&a) {
                    return Err(err(&at, format!("{a:?} is listed twice")));
                }
                algorithms.push(a);
            }
            if algorithms.is_empty() {
                return Err(err(&p, "needs at least one algorithm (gzip, br)"));
            }
        }
        Ok(HttpAction::CompressResponse(algorithms))
    }
}

/// The digest of one `user:password` entry, checked as ngrok does.
fn credential(c: &str, path: &str) -> Result<[u8; 32]> {
    let Some((user, pass)) = c.split_once(':') else {
        return Err(err(path, "must be \"user:password\""));
    };
    if user.is_empty() {
        return Err(err(path, "the user name is empty"));
    }
    let n = pass.chars().count();
    if !(8..=128).contains(&n) {
        return Err(err(path, "the password must be 8 to 128 characters"));
    }
    Ok(sha256(c.as_bytes()))
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Decodes standard base64 (padding optional); `None` when it is not base64.
/// Basic credentials' base64, padded or not (RFC 7235 clients differ).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::engine::{general_purpose, DecodePaddingMode, Engine, GeneralPurpose};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        general_purpose::GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(s).ok()
}

/// True when the digests are equal, compared in constant time.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// True when `presented` is the secret `expected` (a bearer token, say): compared as
/// SHA-256 digests in constant time, so neither the length nor a common prefix shows
/// in the timing. An empty `presented` never matches.
pub(crate) fn same_secret(expected: &str, presented: &str) -> bool {
    same_digest(&sha256(expected.as_bytes()), &sha256(presented.as_bytes()))
        && !presented.is_empty()
}

/// True when `headers` carry Basic credentials whose digest is one of `digests`; every
/// digest is compared, in constant time.
fn authorized(headers: &HeaderMap, digests: &[[u8; 32]]) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Some(decoded) = base64_decode(token.trim()) else {
        return false;
    };
    let got = sha256(&decoded);
    // Every digest is compared, so the time does not tell which one matched.
    digests
        .iter()
        .fold(false, |ok, d| same_digest(d, &got) | ok)
}

/// A generated response with a short plain-text body.
fn plain(status: StatusCode, reason: &'static str, text: String) -> GeneratedResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    GeneratedResponse {
        status,
        headers,
        body: Bytes::from(text + "\n"),
        reason,
    }
}

/// ngrok infers a custom response's content type when none is given.
fn infer_content_type(body: &str) -> &'static str {
    let t = body.trim_start();
    if (t.starts_with('{') || t.starts_with('['))
        && serde_json::from_str::<serde_json::Value>(body).is_ok()
    {
        "application/json"
    } else if t.starts_with('<') {
        "text/html; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    }
}

/// Renders `(name, value)` pairs into `headers`, appending (a value that renders to an
/// invalid header value is skipped).
/// The `(name, value)` pairs with their variables filled in; a value that renders to an
/// invalid header value is left out.
fn rendered(add: &[(HeaderName, Template)], env: &Env<'_>) -> Vec<(HeaderName, HeaderValue)> {
    add.iter()
        .filter_map(|(n, t)| {
            HeaderValue::from_str(&t.render(env, false))
                .ok()
                .map(|v| (n.clone(), v))
        })
        .collect()
}

fn add_to(
    headers: &mut HeaderMap,
    add: &[(HeaderName, Template)],
    env: &Env<'_>,
    replace_host: bool,
) {
    for (name, value) in rendered(add, env) {
        if replace_host && name == header::HOST {
            headers.insert(name, value);
        } else {
            headers.append(name, value);
        }
    }
}

fn custom(
    status: StatusCode,
    add: &[(HeaderName, Template)],
    body: &Template,
    env: &Env<'_>,
) -> GeneratedResponse {
    let body = body.render(env, false);
    let mut headers = HeaderMap::new();
    add_to(&mut headers, add, env, false);
    if !body.is_empty() && !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(infer_content_type(&body)),
        );
    }
    GeneratedResponse {
        status,
        headers,
        body: Bytes::from(body),
        reason: "CUSTOM_RESPONSE",
    }
}

/// `url` with `from` replaced by `to` (all of it when there is no `from`); when `from`
/// does not match the full URL, it is tried on the path and query alone (so `^/old`
/// works as people expect). `None` when nothing matched.
fn rewrite(
    url: &str,
    path_query: &str,
    from: Option<&Regex>,
    to: &Template,
    env: &Env<'_>,
) -> Option<String> {
    let Some(re) = from else {
        return Some(to.render(env, false));
    };
    let to = to.render(env, true);
    if re.is_match(url) {
        Some(re.replace_all(url, to.as_str()).into_owned())
    } else if re.is_match(path_query) {
        Some(re.replace_all(path_query, to.as_str()).into_owned())
    } else {
        None
    }
}

fn redirect(
    snap: &RequestSnapshot,
    from: Option<&Regex>,
    to: &Template,
    status: StatusCode,
    add: &[(HeaderName, Template)],
    env: &Env<'_>,
) -> Option<GeneratedResponse> {
    let pq = path_query(&snap.path, &snap.query);
    let location = rewrite(&snap.url, &pq, from, to, env)?;
    if location == snap.url || location == pq {
        return None;
    }
    let value = HeaderValue::from_str(&location).ok()?;
    let mut g = plain(status, "REDIRECT", format!("redirecting to {location}"));
    add_to(&mut g.headers, add, env, false);
    g.headers.insert(header::LOCATION, value);
    Some(g)
}

fn path_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

/// Points `req` at `target`: a full URL (its authority becomes the host) or a path.
fn apply_rewrite(req: &mut http::request::Parts, target: &str) {
    let Ok(uri) = target.parse::<Uri>() else {
        tracing::debug!(
            url = target,
            "url-rewrite produced an invalid URL; request left as is"
        );
        return;
    };
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let mut parts = req.uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    if let Some(authority) = uri.authority() {
        if parts.authority.is_some() {
            parts.authority = Some(authority.clone());
        }
        if req.headers.contains_key(header::HOST) || parts.authority.is_none() {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                req.headers.insert(header::HOST, v);
            }
        }
    }
    match Uri::from_parts(parts) {
        Ok(u) => req.uri = u,
        Err(e) => tracing::debug!(url = target, "url-rewrite: {e}; request left as is"),
    }
}

/// What one action decided.
enum Step {
    Continue,
    Compress(Vec<String>),
    Respond(GeneratedResponse),
}

impl HttpAction {
    fn on_request(
        &self,
        env: &Env<'_>,
        snap: &RequestSnapshot,
        scheme: &str,
        req: &mut http::request::Parts,
        now: Instant,
    ) -> Step {
        match self {
            HttpAction::AddHeaders(add) => add_to(&mut req.headers, add, env, true),
            HttpAction::RemoveHeaders(names) => {
                for n in names {
                    req.headers.remove(n);
                }
            }
            HttpAction::CustomResponse {
                status,
                headers,
                body,
            } => return Step::Respond(custom(*status, headers, body, env)),
            HttpAction::Redirect {
                from,
                to,
                status,
                headers,
            } => {
                if let Some(g) = redirect(snap, from.as_ref(), to, *status, headers, env) {
                    return Step::Respond(g);
                }
            }
            HttpAction::UrlRewrite { from, to } => {
                let host = host_of(req);
                let url = url_of(scheme, &host, &req.uri);
                let pq = req
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                if let Some(target) = rewrite(&url, &pq, from.as_ref(), to, env) {
                    apply_rewrite(req, &target);
                }
            }
            HttpAction::RateLimit {
                keys,
                enforce,
                limiter,
            } => {
                let key: Vec<String> = keys.iter().map(|k| k.value(env)).collect();
                if let Err(wait) = limiter.check(&key, now) {
                    if *enforce {
                        return Step::Respond(rate_limited(wait));
                    }
                }
            }
            HttpAction::BasicAuth {
                digests,
                realm,
                enforce,
            } => {
                if *enforce && !authorized(&req.headers, &digests.0) {
                    return Step::Respond(unauthorized(realm));
                }
            }
            HttpAction::CompressResponse(list) => return Step::Compress(list.clone()),
        }
        Step::Continue
    }

    fn on_response(
        &self,
        conn: &ConnInfo,
        snap: &RequestSnapshot,
        res: &mut http::response::Parts,
    ) -> Step {
        let env = Env {
            conn,
            req: Some(snap),
            res: Some((res.status, &res.headers)),
        };
        match self {
            HttpAction::AddHeaders(add) => {
                for (name, value) in rendered(add, &env) {
                    res.headers.append(name, value);
                }
            }
            HttpAction::RemoveHeaders(names) => {
                for n in names {
                    res.headers.remove(n);
                }
            }
            HttpAction::CustomResponse {
                status,
                headers,
                body,
            } => return Step::Respond(custom(*status, headers, body, &env)),
            HttpAction::Redirect {
                from,
                to,
                status,
                headers,
            } => {
                if let Some(g) = redirect(snap, from.as_ref(), to, *status, headers, &env) {
                    return Step::Respond(g);
                }
            }
            HttpAction::CompressResponse(list) => return Step::Compress(list.clone()),
            // Refused in on_http_response when the policy is parsed.
            HttpAction::UrlRewrite { .. }
            | HttpAction::RateLimit { .. }
            | HttpAction::BasicAuth { .. } => {}
        }
        Step::Continue
    }
}

/// The `q` an `Accept-Encoding` value gives `coding`: its own entry, else `*`'s, else 0.
fn quality(accept: &str, coding: &str) -> f32 {
    let mut star = None;
    for item in accept.split(',') {
        let mut params = item.split(';');
        let name = params.next().unwrap_or("").trim();
        let q = params
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case(coding) {
            return q;
        }
        if name == "*" {
            star = Some(q);
        }
    }
    star.unwrap_or(0.0)
}

/// The algorithm to compress a response with, as ngrok's compress-response does:
/// among `allowed` (from [`RequestOutcome::Forward`] / [`ResponseOutcome::Forward`]),
/// the one the request's `Accept-Encoding` gives the highest `q` (ties go to the
/// earlier in `allowed`); `None` when the request accepts none of them, or the response
/// is already encoded or marked `Cache-Control: no-transform`. The proxy still skips
/// responses without a body (HEAD, 204, 304).
pub fn choose_encoding(
    request: &HeaderMap,
    response: &HeaderMap,
    allowed: &[String],
) -> Option<&'static str> {
    let encoded = response
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let no_transform = response
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("no-transform"));
    if encoded || no_transform {
        return None;
    }
    let accept: Vec<&str> = request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let accept = accept.join(",");
    let mut best: Option<(&'static str, f32)> = None;
    for a in allowed {
        let coding = match a.as_str() {
            "gzip" => "gzip",
            "br" => "br",
            _ => continue,
        };
        let q = quality(&accept, coding);
        if q > 0.0 && best.map_or(true, |(_, b)| q > b) {
            best = Some((coding, q));
        }
    }
    best.map(|(c, _)| c)
}

fn rate_limited(wait: Duration) -> GeneratedResponse {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let secs = secs.max(1);
    let mut g = plain(
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        format!("rate limit exceeded; retry in {secs}s"),
    );
    g.headers
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    g
}

fn unauthorized(realm: &str) -> GeneratedResponse {
    let mut g = plain(
        StatusCode::UNAUTHORIZED,
        "BASIC_AUTH",
        "authentication required".into(),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\"")) {
        g.headers.insert(header::WWW_AUTHENTICATE, v);
    }
    g
}

fn denied(status: StatusCode) -> GeneratedResponse {
    plain(status, "POLICY_DENY", "denied by traffic policy".into())
}

fn matches(rule: &Rule, env: &Env<'_>) -> bool {
    rule.expressions.iter().all(|e| e.eval_in(env))
}

impl TrafficPolicy {
    /// True when the policy has on_http_request or on_http_response rules (or legacy
    /// inbound/outbound).
    pub fn has_http_phases(&self) -> bool {
        !self.http_request.is_empty() || !self.http_response.is_empty()
    }

    /// Runs on_http_request on a request about to be forwarded, received over `scheme`
    /// ("http" or "https"): may edit headers, rewrite the URI, or answer it.
    pub fn on_http_request(
        &self,
        conn: &ConnInfo,
        scheme: &str,
        req: &mut http::request::Parts,
    ) -> RequestOutcome {
        self.on_http_request_at(conn, scheme, req, Instant::now())
    }

    /// [`TrafficPolicy::on_http_request`] with the time rate limits count at.
    fn on_http_request_at(
        &self,
        conn: &ConnInfo,
        scheme: &str,
        req: &mut http::request::Parts,
        now: Instant,
    ) -> RequestOutcome {
        let mut compress = Vec::new();
        if self.http_request.is_empty() {
            return RequestOutcome::Forward { compress };
        }
        let snap = RequestSnapshot::of(scheme, req);
        let env = Env {
            conn,
            req: Some(&snap),
            res: None,
        };
        for rule in self.http_request.iter().filter(|r| matches(r, &env)) {
            for action in &rule.actions {
                let step = match action {
                    Action::Deny(code) => Step::Respond(denied(*code)),
                    Action::RestrictIps { allow, deny } => match ip_refused(conn, allow, deny) {
                        Some(why) => {
                            Step::Respond(plain(StatusCode::FORBIDDEN, "IP_RESTRICTED", why))
                        }
                        None => Step::Continue,
                    },
                    Action::Http(a) => a.on_request(&env, &snap, scheme, req, now),
                    Action::TerminateTls(_) => Step::Continue,
                };
                match step {
                    Step::Continue => {}
                    Step::Compress(list) => compress = list,
                    Step::Respond(g) => return RequestOutcome::Respond(g),
                }
            }
        }
        RequestOutcome::Forward { compress }
    }

    /// Runs on_http_response on the upstream's response head to the request `req`
    /// (edits headers, may replace it).
    pub fn on_http_response(
        &self,
        conn: &ConnInfo,
        req: &RequestSnapshot,
        res: &mut http::response::Parts,
    ) -> ResponseOutcome {
        let mut compress = Vec::new();
        for rule in &self.http_response {
            let env = Env {
                conn,
                req: Some(req),
                res: Some((res.status, &res.headers)),
            };
            if !matches(rule, &env) {
                continue;
            }
            for action in &rule.actions {
                let step = match action {
                    Action::Deny(code) => Step::Respond(denied(*code)),
                    Action::Http(a) => a.on_response(conn, req, res),
                    Action::RestrictIps { .. } | Action::TerminateTls(_) => Step::Continue,
                };
                match step {
                    Step::Continue => {}
                    Step::Compress(list) => compress = list,
                    Step::Respond(g) => return ResponseOutcome::Replace(g),
                }
            }
        }
        ResponseOutcome::Forward { compress }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn conn() -> ConnInfo {
        ConnInfo {
            client: SocketAddr::new([10, 1, 2, 3].into(), 5000),
            server_port: 443,
            sni: Some("app.test".into()),
        }
    }

    fn policy(yaml: &str) -> TrafficPolicy {
        TrafficPolicy::parse(yaml).unwrap_or_else(|e| panic!("{yaml}: {}", e.message()))
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri).header("host", "app.test");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn res(status: u16, headers: &[(&str, &str)]) -> http::response::Parts {
        let mut b = http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn respond(p: &TrafficPolicy, r: &mut http::request::Parts) -> GeneratedResponse {
        match p.on_http_request(&conn(), "https", r) {
            RequestOutcome::Respond(g) => g,
            other => panic!("forwarded: {other:?}"),
        }
    }

    fn forward(p: &TrafficPolicy, r: &mut http::request::Parts) -> Vec<String> {
        match p.on_http_request(&conn(), "https", r) {
            RequestOutcome::Forward { compress } => compress,
            RequestOutcome::Respond(g) => panic!("answered: {g:?}"),
        }
    }

    fn header<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn snapshots_http1_and_http2_requests() {
        let s = RequestSnapshot::of("https", &req("/a/b?c=d", &[]));
        assert_eq!(
            (
                s.url.as_str(),
                s.path.as_str(),
                s.query.as_str(),
                s.host.as_str()
            ),
            ("https://app.test/a/b?c=d", "/a/b", "c=d", "app.test")
        );
        let h2 = http::Request::builder()
            .uri("https://App.Test:8443/x")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let s = RequestSnapshot::of("https", &h2);
        assert_eq!(
            (s.url.as_str(), s.host.as_str(), s.query.as_str()),
            ("https://app.test:8443/x", "app.test:8443", "")
        );
    }

    #[test]
    fn adds_and_removes_request_headers() {
        let p = policy(
            "on_http_request:\n  - actions:\n      - type: remove-headers\n        config: {headers: [x-secret]}\n      - type: add-headers\n        config:\n          headers: {X-Client-IP: \"${conn.client_ip}\", x-tag: b, host: upstream.internal, x-was: \"${req.headers['x-secret']}\"}\n",
        );
        let mut r = req("/", &[("x-tag", "a"), ("x-secret", "s")]);
        assert!(forward(&p, &mut r).is_empty());
        assert_eq!(header(&r.headers, "x-client-ip"), ["10.1.2.3"]);
        assert_eq!(header(&r.headers, "x-tag"), ["a", "b"], "appended");
        assert_eq!(
            header(&r.headers, "host"),
            ["upstream.internal"],
            "host is replaced"
        );
        assert!(r.headers.get("x-secret").is_none());
        assert_eq!(
            header(&r.headers, "x-was"),
            ["s"],
            "expressions see the request as received"
        );
    }

    #[test]
    fn rules_run_only_when_their_expressions_match() {
        let p = policy(
            "on_http_request:\n  - expressions: [\"req.method == 'DELETE'\", \"!req.url.path.startsWith('/public')\"]\n    actions: [{type: deny}]\n",
        );
        let mut get = req("/x", &[]);
        forward(&p, &mut get);
        let mut delete = req("/x", &[]);
        delete.method = Method::DELETE;
        let g = respond(&p, &mut delete);
        assert_eq!((g.status, g.reason), (StatusCode::FORBIDDEN, "POLICY_DENY"));
        assert_eq!(
            header(&g.headers, "content-type"),
            ["text/plain; charset=utf-8"]
        );
        let mut public = req("/public/x", &[]);
        public.method = Method::DELETE;
        forward(&p, &mut public);
    }

    #[test]
    fn denies_with_a_status_and_restricts_ips() {
        let p =
            policy("on_http_request:\n  - actions: [{type: deny, config: {status_code: 404}}]\n");
        assert_eq!(
            respond(&p, &mut req("/", &[])).status,
            StatusCode::NOT_FOUND
        );
        let p = policy(
            "on_http_request:\n  - actions: [{type: restrict-ips, config: {deny: [10.0.0.0/8]}}]\n",
        );
        let g = respond(&p, &mut req("/", &[]));
        assert_eq!(
            (g.status, g.reason),
            (StatusCode::FORBIDDEN, "IP_RESTRICTED")
        );
        let p = policy("on_http_request:\n  - actions: [{type: restrict-ips, config: {allow: [10.0.0.0/8]}}]\n");
        forward(&p, &mut req("/", &[]));
    }

    #[test]
    fn answers_with_a_custom_response() {
        let p = policy(
            "on_http_request:\n  - actions:\n      - type: custom-response\n        config: {status_code: 418, body: '{\"ip\": \"${conn.client_ip}\"}', headers: {x-a: b}}\n",
        );
        let g = respond(&p, &mut req("/", &[]));
        assert_eq!(
            (g.status, g.reason),
            (StatusCode::IM_A_TEAPOT, "CUSTOM_RESPONSE")
        );
        assert_eq!(&g.body[..], br#"{"ip": "10.1.2.3"}"#);
        assert_eq!(header(&g.headers, "content-type"), ["application/json"]);
        assert_eq!(header(&g.headers, "x-a"), ["b"]);
        // The legacy `content`, a default 200, and an explicit content type.
        let p = policy(
            "inbound:\n  - actions: [{type: custom-response, config: {content: '<p>hi</p>', headers: {content-type: text/x}}}]\n",
        );
        let g = respond(&p, &mut req("/", &[]));
        assert_eq!((g.status, &g.body[..]), (StatusCode::OK, &b"<p>hi</p>"[..]));
        assert_eq!(header(&g.headers, "content-type"), ["text/x"]);
        assert_eq!(infer_content_type("<html>"), "text/html; charset=utf-8");
        assert_eq!(infer_content_type("{nope"), "text/plain; charset=utf-8");
    }

    #[test]
    fn redirects() {
        let p = policy(
            "on_http_request:\n  - actions:\n      - type: redirect\n        config: {from: '^https://app.test/old/(.*)', to: 'https://new.test/$1', status_code: 301, headers: {x-r: y}}\n",
        );
        let g = respond(&p, &mut req("/old/a?b=c", &[]));
        assert_eq!(
            (g.status, g.reason),
            (StatusCode::MOVED_PERMANENTLY, "REDIRECT")
        );
        assert_eq!(header(&g.headers, "location"), ["https://new.test/a?b=c"]);
        assert_eq!(header(&g.headers, "x-r"), ["y"]);
        forward(&p, &mut req("/other", &[]));
        // A path pattern works too; without `from`, `to` is the location.
        let p = policy("on_http_request:\n  - actions: [{type: redirect, config: {from: '^/docs$', to: '/docs/'}}]\n");
        let g = respond(&p, &mut req("/docs", &[]));
        assert_eq!(
            (g.status, header(&g.headers, "location")),
            (StatusCode::FOUND, vec!["/docs/"])
        );
        forward(&p, &mut req("/docs/", &[]));
        let p = policy(
            "on_http_request:\n  - expressions: [\"req.url.path == '/'\"]\n    actions: [{type: redirect, config: {to: 'https://${req.host}/home'}}]\n",
        );
        let g = respond(&p, &mut req("/", &[]));
        assert_eq!(header(&g.headers, "location"), ["https://app.test/home"]);
        // A redirect to the same URL is skipped, as ngrok does.
        let p = policy("on_http_request:\n  - actions: [{type: redirect, config: {to: 'https://app.test/'}}]\n");
        forward(&p, &mut req("/", &[]));
    }

    #[test]
    fn rewrites_the_url() {
        let p = policy(
            "on_http_request:\n  - actions: [{type: url-rewrite, config: {from: '^/api/v1/(.*)', to: '/v2/$1'}}]\n",
        );
        let mut r = req("/api/v1/items?id=7", &[]);
        forward(&p, &mut r);
        assert_eq!(r.uri, "/v2/items?id=7");
        assert_eq!(header(&r.headers, "host"), ["app.test"]);
        let mut r = req("/other", &[]);
        forward(&p, &mut r);
        assert_eq!(r.uri, "/other");
        // ngrok matches the full URL; a new host becomes the Host header.
        let p = policy(
            "on_http_request:\n  - actions: [{type: url-rewrite, config: {from: 'https://app.test/(.*)', to: 'https://internal.test/app/$1'}}]\n",
        );
        let mut r = req("/x?y", &[]);
        forward(&p, &mut r);
        assert_eq!(
            (r.uri.to_string(), header(&r.headers, "host")),
            ("/app/x?y".to_owned(), vec!["internal.test"])
        );
        // An HTTP/2 request keeps an absolute URI.
        let mut h2 = http::Request::builder()
            .uri("https://app.test/x")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        forward(&p, &mut h2);
        assert_eq!(h2.uri, "https://internal.test/app/x");
        // A bare origin is its root; what is not a URL leaves the request as it is.
        let p = policy("on_http_request:\n  - actions: [{type: url-rewrite, config: {to: 'https://other.test'}}]\n");
        let mut r = req("/x", &[]);
        forward(&p, &mut r);
        assert_eq!(
            (r.uri.to_string(), header(&r.headers, "host")),
            ("/".to_owned(), vec!["other.test"])
        );
        let p = policy(
            "on_http_request:\n  - actions: [{type: url-rewrite, config: {to: 'not a url'}}]\n",
        );
        let mut r = req("/x", &[]);
        forward(&p, &mut r);
        assert_eq!(r.uri, "/x");
        // Two rewrites chain.
        let p = policy(
            "on_http_request:\n  - actions:\n      - {type: url-rewrite, config: {from: '^/a', to: '/b'}}\n      - {type: url-rewrite, config: {from: '/b$', to: '/c'}}\n",
        );
        let mut r = req("/a", &[]);
        forward(&p, &mut r);
        assert_eq!(r.uri, "/c");
    }

    #[test]
    fn rate_limits_per_bucket() {
        let p = policy(
            "on_http_request:\n  - actions:\n      - type: rate-limit\n        config: {name: api, algorithm: sliding_window, capacity: 2, rate: 60s, bucket_key: [\"req.headers['x-api-key']\", conn.client_ip]}\n",
        );
        let shared = p.clone();
        let t0 = Instant::now();
        let run = |p: &TrafficPolicy, key: &str, at: Instant| {
            p.on_http_request_at(&conn(), "https", &mut req("/", &[("x-api-key", key)]), at)
        };
        assert!(matches!(run(&p, "a", t0), RequestOutcome::Forward { .. }));
        assert!(matches!(
            run(&shared, "a", t0),
            RequestOutcome::Forward { .. }
        ));
        let RequestOutcome::Respond(g) = run(&p, "a", t0) else {
            panic!("a third request passed (clones share counters)");
        };
        assert_eq!(
            (g.status, g.reason),
            (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED")
        );
        assert_eq!(header(&g.headers, "retry-after"), ["90"]);
        assert!(matches!(run(&p, "b", t0), RequestOutcome::Forward { .. }));
        assert!(matches!(
            run(&p, "a", t0 + Duration::from_secs(121)),
            RequestOutcome::Forward { .. }
        ));
        // enforce: false counts but lets requests through.
        let p = policy(
            "on_http_request:\n  - actions:\n      - type: rate-limit\n        config: {name: x, algorithm: sliding_window, capacity: 1, rate: 1m, bucket_key: [], enforce: false}\n",
        );
        for _ in 0..3 {
            assert!(matches!(run(&p, "a", t0), RequestOutcome::Forward { .. }));
        }
    }

    #[test]
    fn enforces_basic_auth() {
        let p = policy(
            "on_http_request:\n  - actions: [{type: basic-auth, config: {credentials: [\"ann:password1\", \"bob:pass:word2\"], realm: Staff}}]\n",
        );
        let g = respond(&p, &mut req("/", &[]));
        assert_eq!(
            (g.status, g.reason),
            (StatusCode::UNAUTHORIZED, "BASIC_AUTH")
        );
        assert_eq!(
            header(&g.headers, "www-authenticate"),
            ["Basic realm=\"Staff\""]
        );
        // ann:password1, bob:pass:word2, ann:wrongpass1
        forward(
            &p,
            &mut req("/", &[("authorization", "Basic YW5uOnBhc3N3b3JkMQ==")]),
        );
        forward(
            &p,
            &mut req("/", &[("authorization", "basic Ym9iOnBhc3M6d29yZDI")]),
        );
        respond(
            &p,
            &mut req("/", &[("authorization", "Basic YW5uOndyb25ncGFzczE=")]),
        );
        respond(
            &p,
            &mut req("/", &[("authorization", "Bearer YW5uOnBhc3N3b3JkMQ==")]),
        );
        respond(&p, &mut req("/", &[("authorization", "Basic !!!")]));
        let p = policy(
            "on_http_request:\n  - actions: [{type: basic-auth, config: {credentials: [\"ann:password1\"], enforce: false}}]\n",
        );
        forward(&p, &mut req("/", &[]));
        let g = respond(&policy("on_http_request:\n  - actions: [{type: basic-auth, config: {credentials: [\"a:password1\"]}}]\n"), &mut req("/", &[]));
        assert_eq!(
            header(&g.headers, "www-authenticate"),
            ["Basic realm=\"burrow\""]
        );
        assert_eq!(
            base64_decode("YW5uOnBhc3N3b3JkMQ").as_deref(),
            Some(&b"ann:password1"[..])
        );
        assert_eq!(base64_decode("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode("YQ").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode("not base64!"), None);
        let debug = format!("{p:?}");
        assert!(
            debug.contains("<1 credentials>") && !debug.contains("password1"),
            "{debug}"
        );
    }

    #[test]
    fn same_secret_needs_the_whole_secret() {
        assert!(same_secret("s3cret-token", "s3cret-token"));
        assert!(!same_secret("s3cret-token", "s3cret-toke"));
        assert!(!same_secret("s3cret-token", "s3cret-token2"));
        assert!(!same_secret("", ""));
    }

    #[test]
    fn reports_compression() {
        let p = policy("on_http_request:\n  - actions: [{type: compress-response}]\n");
        assert_eq!(forward(&p, &mut req("/", &[])), ["gzip", "br"]);
        let p = policy("on_http_response:\n  - actions: [{type: compress-response, config: {algorithms: [br]}}]\n");
        let snap = RequestSnapshot::of("https", &req("/", &[]));
        let out = p.on_http_response(&conn(), &snap, &mut res(200, &[]));
        assert!(matches!(out, ResponseOutcome::Forward { compress } if compress == ["br"]));
    }

    #[test]
    fn runs_the_response_phase() {
        let p = policy(
            "on_http_response:\n  - actions:\n      - {type: remove-headers, config: {headers: [server]}}\n      - {type: add-headers, config: {headers: {x-status: \"${res.status_code}\", x-path: \"${req.url.path}\"}}}\n  - expressions: [\"res.status_code >= 500\"]\n    actions: [{type: custom-response, config: {status_code: 503, body: sorry}}]\n  - expressions: [\"res.headers['x-internal'] == 'yes'\"]\n    actions: [{type: deny}]\n",
        );
        let snap = RequestSnapshot::of("https", &req("/p", &[]));
        let mut r = res(200, &[("server", "x"), ("x-status", "old")]);
        let out = p.on_http_response(&conn(), &snap, &mut r);
        assert!(matches!(out, ResponseOutcome::Forward { ref compress } if compress.is_empty()));
        assert!(r.headers.get("server").is_none());
        assert_eq!(header(&r.headers, "x-status"), ["old", "200"]);
        assert_eq!(header(&r.headers, "x-path"), ["/p"]);
        let ResponseOutcome::Replace(g) = p.on_http_response(&conn(), &snap, &mut res(502, &[]))
        else {
            panic!("not replaced");
        };
        assert_eq!(
            (g.status, &g.body[..], g.reason),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                &b"sorry"[..],
                "CUSTOM_RESPONSE"
            )
        );
        let ResponseOutcome::Replace(g) =
            p.on_http_response(&conn(), &snap, &mut res(200, &[("x-internal", "yes")]))
        else {
            panic!("not denied");
        };
        assert_eq!((g.status, g.reason), (StatusCode::FORBIDDEN, "POLICY_DENY"));
        let p = policy("outbound:\n  - expressions: [\"res.status_code == 404\"]\n    actions: [{type: redirect, config: {to: /}}]\n");
        let ResponseOutcome::Replace(g) = p.on_http_response(&conn(), &snap, &mut res(404, &[]))
        else {
            panic!("not redirected");
        };
        assert_eq!(
            (g.status, header(&g.headers, "location")),
            (StatusCode::FOUND, vec!["/"])
        );
    }

    #[test]
    fn chooses_an_encoding() {
        let both = ["gzip".to_owned(), "br".to_owned()];
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            m
        };
        let none = h(&[]);
        for (accept, allowed, want) in [
            ("gzip, br", &both[..], Some("gzip")),
            ("gzip;q=0.5, br", &both[..], Some("br")),
            ("gzip;q=1.0, br; q=0.5, *;q=0", &both[..], Some("gzip")),
            ("*", &both[..], Some("gzip")),
            ("br;q=0, *", &both[..], Some("gzip")),
            ("deflate", &both[..], None),
            ("identity", &both[..], None),
            ("gzip", &both[1..], None),
            ("GZIP", &both[..], Some("gzip")),
        ] {
            let req = h(&[("accept-encoding", accept)]);
            assert_eq!(choose_encoding(&req, &none, allowed), want, "{accept}");
        }
        let req = h(&[("accept-encoding", "gzip")]);
        assert_eq!(
            choose_encoding(&none, &none, &both),
            None,
            "no Accept-Encoding"
        );
        assert_eq!(
            choose_encoding(&req, &h(&[("content-encoding", "br")]), &both),
            None
        );
        assert_eq!(
            choose_encoding(&req, &h(&[("content-encoding", "identity")]), &both),
            Some("gzip")
        );
        assert_eq!(
            choose_encoding(
                &req,
                &h(&[("cache-control", "public, no-transform")]),
                &both
            ),
            None
        );
        assert_eq!(choose_encoding(&req, &none, &[]), None);
    }

    #[test]
    fn templates_keep_what_is_not_a_variable() {
        let t = Template::parse("a ${1} ${conn.client_port} ${x", Scope::Connection, "p").unwrap();
        let c = conn();
        let env = Env {
            conn: &c,
            req: None,
            res: None,
        };
        assert_eq!(t.render(&env, false), "a ${1} 5000 ${x");
        assert_eq!(t.literal(), "a ${1}  ${x");
    }
}
