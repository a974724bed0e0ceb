//! A small expression language for policy rules: comparisons on the connection and,
//! in the HTTP phases, on the request and the response.
//!
//! Grammar: `cmp (("&&" | "||") cmp)*`, where `&&` binds tighter than `||`, and
//! `cmp` is `["!"] test`, with `test` one of `VAR OP LITERAL`, `VAR.METHOD(STRING)`
//! (`startsWith`, `endsWith`, `contains`, `matches` (a regular expression)),
//! `STRING in req.headers` / `STRING in res.headers` (presence), or
//! `inCidrRange(conn.client_ip, STRING)`. Variables: `conn.client_ip`,
//! `conn.client_port`, `conn.server_port`, `conn.tls.sni` everywhere; `req.method`,
//! `req.url`, `req.url.path`, `req.url.query`, `req.host`, `req.headers['NAME']` in
//! `on_http_request` and `on_http_response`; `res.status_code`, `res.headers['NAME']`
//! in `on_http_response`. Header names are case-insensitive; `headers['NAME']` is the
//! first value (`headers['NAME'][N]` the value N), and a missing header reads as the
//! empty string. Anything else is rejected.

use super::http::RequestSnapshot;
use http::{HeaderMap, HeaderName, StatusCode};
use ipnet::IpNet;
use regex::Regex;
use std::borrow::Cow;
use std::net::SocketAddr;

/// What an expression can look at.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The public client's address.
    pub client: SocketAddr,
    /// The edge port the client connected to.
    pub server_port: u16,
    /// The SNI, when the connection is TLS and sent one.
    pub sni: Option<String>,
}

/// Where an expression runs, which decides the variables it may use: `conn.*`
/// everywhere, `req.*` from [`Scope::HttpRequest`] on, `res.*` in
/// [`Scope::HttpResponse`] only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// `on_tcp_connect` and `on_tls_request`.
    Connection,
    /// `on_http_request`.
    HttpRequest,
    /// `on_http_response`.
    HttpResponse,
}

/// What an expression is evaluated against: the connection, and in the HTTP phases the
/// request and the response head.
#[derive(Clone, Copy)]
pub(crate) struct Env<'a> {
    pub(crate) conn: &'a ConnInfo,
    pub(crate) req: Option<&'a RequestSnapshot>,
    pub(crate) res: Option<(StatusCode, &'a HeaderMap)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Var {
    ClientIp,
    ClientPort,
    ServerPort,
    Sni,
    Method,
    Url,
    Path,
    Query,
    Host,
    /// A request header's value number `.1` (0, the first, unless indexed `[N]`).
    ReqHeader(HeaderName, usize),
    Status,
    ResHeader(HeaderName, usize),
}

/// How a variable's value compares.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Ip,
    Str,
}

impl Var {
    fn kind(&self) -> Kind {
        match self {
            Var::ClientPort | Var::ServerPort | Var::Status => Kind::Int,
            Var::ClientIp => Kind::Ip,
            _ => Kind::Str,
        }
    }

    fn scope(&self) -> Scope {
        match self {
            Var::ClientIp | Var::ClientPort | Var::ServerPort | Var::Sni => Scope::Connection,
            Var::Status | Var::ResHeader(..) => Scope::HttpResponse,
            _ => Scope::HttpRequest,
        }
    }

    /// True for names compared without case (the literal is lowercased).
    fn folds_case(&self) -> bool {
        matches!(self, Var::Host)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    StartsWith,
    EndsWith,
    Contains,
    Matches,
    Present,
}

#[derive(Debug, Clone)]
enum Lit {
    Str(String),
    Int(i64),
    Net(IpNet),
    Re(Regex),
}

#[derive(Debug, Clone)]
struct Cmp {
    var: Var,
    op: Op,
    lit: Lit,
    negate: bool,
}

/// A parsed expression: a disjunction of conjunctions of comparisons.
#[derive(Debug, Clone)]
pub struct Expr {
    any_of: Vec<Vec<Cmp>>,
}

/// A variable read for its value (a rate-limit `bucket_key`, a `${...}` in a template).
#[derive(Debug, Clone)]
pub(crate) struct Operand(Var);

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Op(&'static str),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        let method_start = c == '.' && chars.get(i + 1).is_some_and(|n| n.is_ascii_alphabetic());
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || method_start {
            let start = i;
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            out.push(Tok::Int(
                text.parse()
                    .map_err(|_| format!("number {text} is too large"))?,
            ));
        } else if c == '\'' || c == '"' {
            let start = i + 1;
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += 1;
            }
            if i >= chars.len() {
                return Err("unterminated string literal".into());
            }
            out.push(Tok::Str(chars[start..i].iter().collect()));
            i += 1;
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let op = ["==", "!=", "<=", ">=", "&&", "||"]
                .into_iter()
                .find(|o| *o == two);
            if let Some(op) = op {
                out.push(Tok::Op(op));
                i += 2;
                continue;
            }
            match c {
                '<' => out.push(Tok::Op("<")),
                '>' => out.push(Tok::Op(">")),
                '!' => out.push(Tok::Op("!")),
                '(' => out.push(Tok::LParen),
                ')' => out.push(Tok::RParen),
                '[' => out.push(Tok::LBracket),
                ']' => out.push(Tok::RBracket),
                ',' => out.push(Tok::Comma),
                other => return Err(format!("unexpected character {other:?}")),
            }
            i += 1;
        }
    }
    Ok(out)
}

const CONN_VARS: &str = "conn.client_ip, conn.client_port, conn.server_port, conn.tls.sni";
const REQ_VARS: &str =
    "req.method, req.url, req.url.path, req.url.query, req.host, req.headers['NAME']";
const RES_VARS: &str = "res.status_code, res.headers['NAME']";

fn var(name: &str, scope: Scope) -> Result<Var, String> {
    let v = match name {
        "conn.client_ip" => Var::ClientIp,
        "conn.client_port" => Var::ClientPort,
        "conn.server_port" => Var::ServerPort,
        "conn.tls.sni" => Var::Sni,
        "req.method" => Var::Method,
        "req.url" => Var::Url,
        "req.url.path" => Var::Path,
        "req.url.query" => Var::Query,
        "req.host" => Var::Host,
        "res.status_code" => Var::Status,
        other => return Err(unknown_variable(other, scope)),
    };
    check_scope(name, &v, scope)?;
    Ok(v)
}

fn unknown_variable(name: &str, scope: Scope) -> String {
    let supported = match scope {
        Scope::Connection => CONN_VARS.to_owned(),
        Scope::HttpRequest => format!("{CONN_VARS}, {REQ_VARS}"),
        Scope::HttpResponse => format!("{CONN_VARS}, {REQ_VARS}, {RES_VARS}"),
    };
    format!("unknown variable {name:?} (supported: {supported})")
}

fn check_scope(name: &str, v: &Var, scope: Scope) -> Result<(), String> {
    match v.scope() {
        need if need <= scope => Ok(()),
        Scope::HttpResponse => Err(format!("{name} is only available in on_http_response")),
        _ => Err(format!(
            "{name} is only available in on_http_request and on_http_response"
        )),
    }
}

/// The method a `VAR.METHOD(...)` identifier ends with, and the variable before it.
fn split_method(ident: &str) -> (&str, Option<Op>) {
    for (suffix, op) in [
        (".startsWith", Op::StartsWith),
        (".endsWith", Op::EndsWith),
        (".contains", Op::Contains),
        (".matches", Op::Matches),
    ] {
        if let Some(name) = ident.strip_suffix(suffix) {
            return (name, Some(op));
        }
    }
    (ident, None)
}

/// A regular expression from a policy, with a bounded compiled size (a policy comes
/// from an agent; a huge pattern must not cost the edge its memory).
pub(crate) fn regex(pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .map_err(|e| format!("{pattern:?} is not a valid regular expression: {e}"))
}

/// The variable for value `index` of header `name` of `headers` (`req.headers` or
/// `res.headers`).
fn header_var(headers: &str, name: &str, index: usize) -> Result<Var, String> {
    let lower = name.to_ascii_lowercase();
    let header = HeaderName::from_bytes(lower.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    Ok(if headers == "req.headers" {
        Var::ReqHeader(header, index)
    } else {
        Var::ResHeader(header, index)
    })
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    scope: Scope,
}

impl Parser {
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn expect(&mut self, want: Tok, what: &str) -> Result<(), String> {
        match self.next() {
            Some(t) if t == want => Ok(()),
            _ => Err(format!("expected {what}")),
        }
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(s),
            _ => Err(format!("expected a quoted string for {what}")),
        }
    }

    /// `['NAME']`, or `['NAME'][N]` (ngrok's headers are lists of values), after
    /// `req.headers` / `res.headers`.
    fn header(&mut self, headers: &str) -> Result<Var, String> {
        self.expect(
            Tok::LBracket,
            &format!("[ after {headers} (e.g. {headers}['user-agent'])"),
        )?;
        let name = self.string("the header name")?;
        self.expect(Tok::RBracket, "] after the header name")?;
        let mut index = 0;
        if self.peek() == Some(&Tok::LBracket) {
            self.pos += 1;
            index = match self.next() {
                Some(Tok::Int(n)) => usize::try_from(n).map_err(|_| "index too large")?,
                _ => return Err("expected a number in [] after the header name".into()),
            };
            self.expect(Tok::RBracket, "] after the index")?;
        }
        let v = header_var(headers, &name, index)?;
        check_scope(headers, &v, self.scope)?;
        Ok(v)
    }

    /// A variable, possibly followed by a method name (`VAR.startsWith`,
    /// `req.headers['x'].contains`).
    fn operand(&mut self, ident: &str) -> Result<(Var, Option<Op>), String> {
        let (name, method) = split_method(ident);
        if name != "req.headers" && name != "res.headers" {
            return Ok((var(name, self.scope)?, method));
        }
        if method.is_some() {
            return Err(format!(
                "index {name} first, e.g. {name}['x'].contains('y')"
            ));
        }
        let v = self.header(name)?;
        if let Some(Tok::Ident(m)) = self.peek() {
            if let ("", Some(op)) = split_method(m) {
                self.pos += 1;
                return Ok((v, Some(op)));
            }
            return Err(format!(
                "unknown method {m:?} (supported: .startsWith, .endsWith, .contains, .matches)"
            ));
        }
        Ok((v, None))
    }

    fn cmp(&mut self) -> Result<Cmp, String> {
        if self.peek() == Some(&Tok::Op("!")) {
            self.pos += 1;
            let mut c = self.cmp()?;
            c.negate = !c.negate;
            return Ok(c);
        }
        let ident = match self.next() {
            Some(Tok::Ident(id)) => id,
            Some(Tok::Str(name)) => return self.presence(name),
            _ => return Err("expected a variable such as conn.client_ip".into()),
        };
        if ident == "inCidrRange" {
            return self.in_cidr_range();
        }
        let (v, method) = self.operand(&ident)?;
        if let Some(op) = method {
            return self.method(v, op);
        }
        let op = match self.next() {
            Some(Tok::Op("==")) => Op::Eq,
            Some(Tok::Op("!=")) => Op::Ne,
            Some(Tok::Op("<")) => Op::Lt,
            Some(Tok::Op("<=")) => Op::Le,
            Some(Tok::Op(">")) => Op::Gt,
            Some(Tok::Op(">=")) => Op::Ge,
            _ => return Err(format!("expected a comparison operator after {ident}")),
        };
        let lit = match (self.next(), v.kind()) {
            (Some(Tok::Int(n)), Kind::Int) => Lit::Int(n),
            (Some(Tok::Str(s)), Kind::Ip) => {
                let ip: std::net::IpAddr = s
                    .parse()
                    .map_err(|_| format!("{s:?} is not an IP address"))?;
                Lit::Str(ip.to_string())
            }
            (Some(Tok::Str(s)), Kind::Str) if v == Var::Sni || v.folds_case() => {
                Lit::Str(s.to_ascii_lowercase())
            }
            (Some(Tok::Str(s)), Kind::Str) => Lit::Str(s),
            (_, Kind::Int) => return Err(format!("{ident} compares with a number")),
            _ => return Err(format!("{ident} compares with a quoted string")),
        };
        if matches!(lit, Lit::Str(_)) && !matches!(op, Op::Eq | Op::Ne) {
            return Err(format!(
                "{ident} supports only == and != (and .startsWith, .endsWith, .contains, .matches)"
            ));
        }
        Ok(Cmp {
            var: v,
            op,
            lit,
            negate: false,
        })
    }

    /// `VAR.METHOD(STRING)`, after the method name.
    fn method(&mut self, v: Var, op: Op) -> Result<Cmp, String> {
        if v.kind() == Kind::Int {
            return Err("string methods do not apply to a number".into());
        }
        self.expect(Tok::LParen, "( after the method name")?;
        let s = self.string("the method argument")?;
        self.expect(Tok::RParen, ") after the method argument")?;
        let lit = match op {
            Op::Matches => Lit::Re(regex(&s)?),
            _ if v.folds_case() => Lit::Str(s.to_ascii_lowercase()),
            _ => Lit::Str(s),
        };
        Ok(Cmp {
            var: v,
            op,
            lit,
            negate: false,
        })
    }

    /// `'NAME' in req.headers`, after the name.
    fn presence(&mut self, name: String) -> Result<Cmp, String> {
        match self.next() {
            Some(Tok::Ident(kw)) if kw == "in" => {}
            _ => return Err(format!("expected `in req.headers` after {name:?}")),
        }
        let headers = match self.next() {
            Some(Tok::Ident(h)) if h == "req.headers" || h == "res.headers" => h,
            _ => return Err("`in` applies to req.headers or res.headers".into()),
        };
        let v = header_var(&headers, &name, 0)?;
        check_scope(&headers, &v, self.scope)?;
        Ok(Cmp {
            var: v,
            op: Op::Present,
            lit: Lit::Str(String::new()),
            negate: false,
        })
    }

    /// `inCidrRange(conn.client_ip, 'CIDR')`, after `inCidrRange`.
    fn in_cidr_range(&mut self) -> Result<Cmp, String> {
        self.expect(Tok::LParen, "( after inCidrRange")?;
        let v = match self.next() {
            Some(Tok::Ident(id)) => var(&id, self.scope)?,
            _ => return Err("inCidrRange needs conn.client_ip as first argument".into()),
        };
        if v != Var::ClientIp {
            return Err("inCidrRange only applies to conn.client_ip".into());
        }
        self.expect(Tok::Comma, ", in inCidrRange")?;
        let net = self.string("the CIDR range")?;
        self.expect(Tok::RParen, ") after inCidrRange")?;
        Ok(Cmp {
            var: v,
            op: Op::Eq,
            lit: Lit::Net(parse_cidr(&net)?),
            negate: false,
        })
    }
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR range"))
}

impl Expr {
    /// Parses one expression of a connection phase (`conn.*` only); the error says
    /// what was not understood.
    pub fn parse(s: &str) -> Result<Expr, String> {
        Self::parse_in(s, Scope::Connection)
    }

    /// Parses one expression for `scope`, which decides the variables it may use.
    pub fn parse_in(s: &str, scope: Scope) -> Result<Expr, String> {
        let toks = tokenize(s)?;
        if toks.is_empty() {
            return Err("empty expression".into());
        }
        let mut p = Parser {
            toks,
            pos: 0,
            scope,
        };
        let mut any_of = vec![vec![p.cmp()?]];
        loop {
            match p.next() {
                None => break,
                Some(Tok::Op("&&")) => {
                    let c = p.cmp()?;
                    if let Some(last) = any_of.last_mut() {
                        last.push(c);
                    }
                }
                Some(Tok::Op("||")) => any_of.push(vec![p.cmp()?]),
                Some(t) => {
                    return Err(format!(
                        "unexpected {t:?}; combine comparisons with && or ||"
                    ))
                }
            }
        }
        Ok(Expr { any_of })
    }

    /// True when the connection matches.
    pub fn eval(&self, conn: &ConnInfo) -> bool {
        self.eval_in(&Env {
            conn,
            req: None,
            res: None,
        })
    }

    /// True when the connection, request and response match (absent parts read as
    /// empty).
    pub(crate) fn eval_in(&self, env: &Env<'_>) -> bool {
        self.any_of
            .iter()
            .any(|all| all.iter().all(|c| c.eval(env)))
    }
}

impl Operand {
    /// Parses a lone variable (`conn.client_ip`, `req.headers['x-api-key']`), also
    /// written `${...}`.
    pub(crate) fn parse(s: &str, scope: Scope) -> Result<Operand, String> {
        let s = s.trim();
        let s = s
            .strip_prefix("${")
            .and_then(|r| r.strip_suffix('}'))
            .unwrap_or(s);
        let mut p = Parser {
            toks: tokenize(s)?,
            pos: 0,
            scope,
        };
        let ident = match p.next() {
            Some(Tok::Ident(id)) => id,
            _ => return Err("expected a variable such as conn.client_ip".into()),
        };
        let (v, method) = p.operand(&ident)?;
        if method.is_some() || p.peek().is_some() {
            return Err("expected a variable alone, such as conn.client_ip".into());
        }
        Ok(Operand(v))
    }

    /// The variable's value as text.
    pub(crate) fn value(&self, env: &Env<'_>) -> String {
        match value(&self.0, env) {
            Val::Str(s) => s.into_owned(),
            Val::Int(n) => n.to_string(),
        }
    }
}

enum Val<'a> {
    Str(Cow<'a, str>),
    Int(i64),
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &HeaderName, index: usize) -> Cow<'a, str> {
    headers
        .and_then(|h| h.get_all(name).iter().nth(index))
        .map_or(Cow::Borrowed(""), |v| String::from_utf8_lossy(v.as_bytes()))
}

fn value<'a>(v: &Var, env: &Env<'a>) -> Val<'a> {
    let req = env.req;
    let text = |f: fn(&'a RequestSnapshot) -> &'a str| Val::Str(Cow::Borrowed(req.map_or("", f)));
    match v {
        Var::ClientIp => Val::Str(Cow::Owned(env.conn.client.ip().to_canonical().to_string())),
        Var::ClientPort => Val::Int(i64::from(env.conn.client.port())),
        Var::ServerPort => Val::Int(i64::from(env.conn.server_port)),
        Var::Sni => Val::Str(Cow::Borrowed(env.conn.sni.as_deref().unwrap_or(""))),
        Var::Method => text(|r| r.method.as_str()),
        Var::Url => text(|r| r.url.as_str()),
        Var::Path => text(|r| r.path.as_str()),
        Var::Query => text(|r| r.query.as_str()),
        Var::Host => text(|r| r.host.as_str()),
        Var::ReqHeader(name, i) => Val::Str(header(req.map(|r| &r.headers), name, *i)),
        Var::Status => Val::Int(env.res.map_or(0, |(s, _)| i64::from(s.as_u16()))),
        Var::ResHeader(name, i) => Val::Str(header(env.res.map(|(_, h)| h), name, *i)),
    }
}

fn present(v: &Var, env: &Env<'_>) -> bool {
    match v {
        Var::ReqHeader(n, _) => env.req.is_some_and(|r| r.headers.contains_key(n)),
        Var::ResHeader(n, _) => env.res.is_some_and(|(_, h)| h.contains_key(n)),
        _ => false,
    }
}

impl Cmp {
    fn eval(&self, env: &Env<'_>) -> bool {
        self.test(env) != self.negate
    }

    fn test(&self, env: &Env<'_>) -> bool {
        if self.op == Op::Present {
            return present(&self.var, env);
        }
        match (&self.lit, value(&self.var, env)) {
            (Lit::Net(net), _) => net.contains(&env.conn.client.ip().to_canonical()),
            (Lit::Int(n), Val::Int(v)) => match self.op {
                Op::Eq => v == *n,
                Op::Ne => v != *n,
                Op::Lt => v < *n,
                Op::Le => v <= *n,
                Op::Gt => v > *n,
                Op::Ge => v >= *n,
                _ => false,
            },
            (Lit::Re(re), Val::Str(v)) => re.is_match(&v),
            (Lit::Str(s), Val::Str(v)) => {
                let v = if self.var.folds_case() {
                    Cow::Owned(v.to_ascii_lowercase())
                } else {
                    v
                };
                match self.op {
                    Op::Eq => *v == **s,
                    Op::Ne => *v != **s,
                    Op::StartsWith => v.starts_with(s.as_str()),
                    Op::EndsWith => v.ends_with(s.as_str()),
                    Op::Contains => v.contains(s.as_str()),
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(ip: &str, sni: Option<&str>) -> ConnInfo {
        ConnInfo {
            client: SocketAddr::new(ip.parse().unwrap(), 5000),
            server_port: 443,
            sni: sni.map(Into::into),
        }
    }

    #[test]
    fn evaluates() {
        let e =
            Expr::parse("conn.client_ip == '127.0.0.1' && conn.tls.sni.endsWith('.example.com')")
                .unwrap();
        assert!(e.eval(&conn("127.0.0.1", Some("a.example.com"))));
        assert!(!e.eval(&conn("127.0.0.2", Some("a.example.com"))));
        let e =
            Expr::parse("conn.server_port >= 1000 || inCidrRange(conn.client_ip, '10.0.0.0/8')")
                .unwrap();
        assert!(e.eval(&conn("10.1.2.3", None)));
        assert!(!e.eval(&conn("11.1.2.3", None)));
        let e = Expr::parse("conn.tls.sni != \"x.test\"").unwrap();
        assert!(e.eval(&conn("1.1.1.1", Some("y.test"))));
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        for bad in [
            "",
            "req.method == 'GET'",
            "conn.client_ip == 5",
            "conn.client_port == 'x'",
            "conn.client_ip == 'nope'",
            "conn.tls.sni < 'a'",
            "conn.client_ip == '1.1.1.1' and true",
            "size(conn.tls.sni) > 3",
            "conn.tls.sni == 'unterminated",
        ] {
            assert!(Expr::parse(bad).is_err(), "{bad}");
        }
    }

    fn request() -> RequestSnapshot {
        let (parts, ()) = http::Request::builder()
            .method("POST")
            .uri("/api/v1/items?id=7&x=y")
            .header("Host", "Shop.Example.com")
            .header("X-Api-Key", "k-123")
            .header("accept", "text/html")
            .header("accept", "application/json")
            .body(())
            .unwrap()
            .into_parts();
        RequestSnapshot::of("https", &parts)
    }

    fn check(scope: Scope, cases: &[(&str, bool)], env: &Env<'_>) {
        for (src, want) in cases {
            let e = Expr::parse_in(src, scope).unwrap_or_else(|m| panic!("{src}: {m}"));
            assert_eq!(e.eval_in(env), *want, "{src}");
        }
    }

    #[test]
    fn evaluates_the_request() {
        let c = conn("10.1.2.3", Some("shop.example.com"));
        let req = request();
        let env = Env {
            conn: &c,
            req: Some(&req),
            res: None,
        };
        check(
            Scope::HttpRequest,
            &[
                ("req.method == 'POST'", true),
                ("req.method == 'post'", false),
                (
                    "req.url == 'https://shop.example.com/api/v1/items?id=7&x=y'",
                    true,
                ),
                ("req.url.path == '/api/v1/items'", true),
                ("req.url.path.startsWith('/api/')", true),
                ("req.url.path.endsWith('/items')", true),
                ("req.url.query == 'id=7&x=y'", true),
                ("req.url.query.contains('x=y')", true),
                ("req.host == 'SHOP.example.com'", true),
                ("req.host.endsWith('.EXAMPLE.com')", true),
                ("req.headers['x-api-key'] == 'k-123'", true),
                ("req.headers['X-API-KEY'] == 'k-123'", true),
                ("req.headers['accept'] == 'text/html'", true),
                ("req.headers['accept'][0] == 'text/html'", true),
                ("req.headers['Accept'][1] == 'application/json'", true),
                ("req.headers['accept'][2] == ''", true),
                ("req.headers['accept'][1].endsWith('/json')", true),
                ("req.headers['missing'] == ''", true),
                ("req.headers['x-api-key'].startsWith('k-')", true),
                ("req.headers['x-api-key'].matches('^k-[0-9]+$')", true),
                ("req.url.path.matches('^/api/v[2-9]/')", false),
                ("'X-Api-Key' in req.headers", true),
                ("'authorization' in req.headers", false),
                ("!'authorization' in req.headers", true),
                ("!req.url.path.startsWith('/admin')", true),
                (
                    "req.method == 'GET' || req.method == 'POST' && conn.client_port == 5000",
                    true,
                ),
                ("conn.client_ip.startsWith('10.')", true),
                ("conn.client_ip.startsWith('11.')", false),
                (
                    "inCidrRange(conn.client_ip, '10.0.0.0/8') && req.url.path.contains('v1')",
                    true,
                ),
            ],
            &env,
        );
    }

    #[test]
    fn evaluates_the_response() {
        let c = conn("10.1.2.3", None);
        let req = request();
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        let env = Env {
            conn: &c,
            req: Some(&req),
            res: Some((StatusCode::NOT_FOUND, &headers)),
        };
        check(
            Scope::HttpResponse,
            &[
                ("res.status_code == 404", true),
                ("res.status_code >= 500", false),
                ("res.status_code >= 400 && res.status_code < 500", true),
                (
                    "res.headers['Content-Type'].startsWith('application/json')",
                    true,
                ),
                ("'content-type' in res.headers", true),
                ("'etag' in res.headers", false),
                ("res.headers['etag'] == ''", true),
                ("req.url.path == '/api/v1/items'", true),
            ],
            &env,
        );
        // Outside the HTTP phases, req.* and res.* read as empty.
        let e = Expr::parse_in("req.method == ''", Scope::HttpRequest).unwrap();
        assert!(e.eval(&c));
    }

    #[test]
    fn refuses_variables_outside_their_phase() {
        for (src, scope, needle) in [
            (
                "req.method == 'GET'",
                Scope::Connection,
                "only available in on_http_request and on_http_response",
            ),
            (
                "req.headers['x'] == 'y'",
                Scope::Connection,
                "only available in on_http_request",
            ),
            (
                "'x' in req.headers",
                Scope::Connection,
                "only available in on_http_request",
            ),
            (
                "res.status_code == 200",
                Scope::HttpRequest,
                "only available in on_http_response",
            ),
            (
                "res.headers['x'] == 'y'",
                Scope::HttpRequest,
                "only available in on_http_response",
            ),
            (
                "req.nope == 'x'",
                Scope::HttpResponse,
                "unknown variable \"req.nope\"",
            ),
            ("req.headers == 'x'", Scope::HttpRequest, "expected ["),
            (
                "req.headers['bad name'] == 'x'",
                Scope::HttpRequest,
                "not a valid header name",
            ),
            (
                "req.headers['x'].size() > 1",
                Scope::HttpRequest,
                "unknown method",
            ),
            (
                "req.headers['x']['y'] == 'z'",
                Scope::HttpRequest,
                "expected a number in []",
            ),
            (
                "req.url.path.matches('(')",
                Scope::HttpRequest,
                "not a valid regular expression",
            ),
            (
                "res.status_code.startsWith('2')",
                Scope::HttpResponse,
                "do not apply to a number",
            ),
            (
                "res.status_code == '200'",
                Scope::HttpResponse,
                "compares with a number",
            ),
            (
                "req.method < 'B'",
                Scope::HttpRequest,
                "supports only == and !=",
            ),
            (
                "'x' in conn.tls.sni",
                Scope::HttpRequest,
                "applies to req.headers or res.headers",
            ),
        ] {
            let m = Expr::parse_in(src, scope).expect_err(src);
            assert!(m.contains(needle), "{src}: {m}");
        }
    }

    #[test]
    fn reads_operands() {
        let c = conn("10.1.2.3", Some("a.test"));
        let req = request();
        let env = Env {
            conn: &c,
            req: Some(&req),
            res: None,
        };
        for (src, want) in [
            ("conn.client_ip", "10.1.2.3"),
            ("${conn.client_ip}", "10.1.2.3"),
            ("conn.client_port", "5000"),
            ("req.headers['X-Api-Key']", "k-123"),
            ("req.host", "shop.example.com"),
        ] {
            let o = Operand::parse(src, Scope::HttpRequest).unwrap();
            assert_eq!(o.value(&env), want, "{src}");
        }
        for bad in [
            "conn.client_ip == 'x'",
            "req.url.path.startsWith('/')",
            "nope",
            "res.status_code",
            "'x'",
        ] {
            assert!(Operand::parse(bad, Scope::HttpRequest).is_err(), "{bad}");
        }
    }
}
