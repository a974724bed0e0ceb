//! A small expression language for policy rules: comparisons on the connection.
//!
//! Grammar: `cmp (("&&" | "||") cmp)*`, where `&&` binds tighter than `||`, and
//! `cmp` is `VAR OP LITERAL`, `VAR.startsWith(STRING)`, `VAR.endsWith(STRING)` or
//! `inCidrRange(conn.client_ip, STRING)`. Variables: `conn.client_ip`,
//! `conn.client_port`, `conn.server_port`, `conn.tls.sni`. Anything else is rejected.

use ipnet::IpNet;
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

#[derive(Debug, Clone, Copy, PartialEq)]
enum Var {
    ClientIp,
    ClientPort,
    ServerPort,
    Sni,
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
}

#[derive(Debug, Clone)]
enum Lit {
    Str(String),
    Int(i64),
    Net(IpNet),
}

#[derive(Debug, Clone)]
struct Cmp {
    var: Var,
    op: Op,
    lit: Lit,
}

/// A parsed expression: a disjunction of conjunctions of comparisons.
#[derive(Debug, Clone)]
pub struct Expr {
    any_of: Vec<Vec<Cmp>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
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
                '(' => out.push(Tok::LParen),
                ')' => out.push(Tok::RParen),
                ',' => out.push(Tok::Comma),
                other => return Err(format!("unexpected character {other:?}")),
            }
            i += 1;
        }
    }
    Ok(out)
}

fn var(name: &str) -> Result<Var, String> {
    match name {
        "conn.client_ip" => Ok(Var::ClientIp),
        "conn.client_port" => Ok(Var::ClientPort),
        "conn.server_port" => Ok(Var::ServerPort),
        "conn.tls.sni" => Ok(Var::Sni),
        other => Err(format!(
            "unknown variable {other:?} (supported: conn.client_ip, conn.client_port, conn.server_port, conn.tls.sni)"
        )),
    }
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
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

    fn cmp(&mut self) -> Result<Cmp, String> {
        let ident = match self.next() {
            Some(Tok::Ident(id)) => id,
            _ => return Err("expected a variable such as conn.client_ip".into()),
        };
        if ident == "inCidrRange" {
            self.expect(Tok::LParen, "( after inCidrRange")?;
            let v = match self.next() {
                Some(Tok::Ident(id)) => var(&id)?,
                _ => return Err("inCidrRange needs conn.client_ip as first argument".into()),
            };
            if v != Var::ClientIp {
                return Err("inCidrRange only applies to conn.client_ip".into());
            }
            self.expect(Tok::Comma, ", in inCidrRange")?;
            let net = self.string("the CIDR range")?;
            self.expect(Tok::RParen, ") after inCidrRange")?;
            let net = parse_cidr(&net)?;
            return Ok(Cmp {
                var: v,
                op: Op::Eq,
                lit: Lit::Net(net),
            });
        }
        for (suffix, op) in [(".startsWith", Op::StartsWith), (".endsWith", Op::EndsWith)] {
            if let Some(name) = ident.strip_suffix(suffix) {
                let v = var(name)?;
                self.expect(Tok::LParen, "( after the method name")?;
                let s = self.string("the method argument")?;
                self.expect(Tok::RParen, ") after the method argument")?;
                return Ok(Cmp {
                    var: v,
                    op,
                    lit: Lit::Str(s),
                });
            }
        }
        let v = var(&ident)?;
        let op = match self.next() {
            Some(Tok::Op("==")) => Op::Eq,
            Some(Tok::Op("!=")) => Op::Ne,
            Some(Tok::Op("<")) => Op::Lt,
            Some(Tok::Op("<=")) => Op::Le,
            Some(Tok::Op(">")) => Op::Gt,
            Some(Tok::Op(">=")) => Op::Ge,
            _ => return Err(format!("expected a comparison operator after {ident}")),
        };
        let lit = match (self.next(), v) {
            (Some(Tok::Int(n)), Var::ClientPort | Var::ServerPort) => Lit::Int(n),
            (Some(Tok::Str(s)), Var::ClientIp) => {
                let ip: std::net::IpAddr = s
                    .parse()
                    .map_err(|_| format!("{s:?} is not an IP address"))?;
                Lit::Str(ip.to_string())
            }
            (Some(Tok::Str(s)), Var::Sni) => Lit::Str(s.to_ascii_lowercase()),
            (_, Var::ClientPort | Var::ServerPort) => {
                return Err(format!("{ident} compares with a number"))
            }
            _ => return Err(format!("{ident} compares with a quoted string")),
        };
        if matches!(lit, Lit::Str(_)) && !matches!(op, Op::Eq | Op::Ne) {
            return Err(format!(
                "{ident} supports only == and != (and startsWith/endsWith for conn.tls.sni)"
            ));
        }
        Ok(Cmp { var: v, op, lit })
    }
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR range"))
}

impl Expr {
    /// Parses one expression; the error says what was not understood.
    pub fn parse(s: &str) -> Result<Expr, String> {
        let toks = tokenize(s)?;
        if toks.is_empty() {
            return Err("empty expression".into());
        }
        let mut p = Parser { toks, pos: 0 };
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
        self.any_of
            .iter()
            .any(|all| all.iter().all(|c| c.eval(conn)))
    }
}

impl Cmp {
    fn eval(&self, conn: &ConnInfo) -> bool {
        match (&self.lit, self.var) {
            (Lit::Net(net), _) => net.contains(&conn.client.ip()),
            (Lit::Int(n), Var::ClientPort | Var::ServerPort) => {
                let v = i64::from(if self.var == Var::ClientPort {
                    conn.client.port()
                } else {
                    conn.server_port
                });
                match self.op {
                    Op::Eq => v == *n,
                    Op::Ne => v != *n,
                    Op::Lt => v < *n,
                    Op::Le => v <= *n,
                    Op::Gt => v > *n,
                    Op::Ge => v >= *n,
                    Op::StartsWith | Op::EndsWith => false,
                }
            }
            (Lit::Str(s), Var::ClientIp) => {
                let ip = conn.client.ip().to_canonical().to_string();
                (self.op == Op::Eq) == (ip == *s)
            }
            (Lit::Str(s), Var::Sni) => {
                let sni = conn.sni.as_deref().unwrap_or("");
                match self.op {
                    Op::Eq => sni == s,
                    Op::Ne => sni != s,
                    Op::StartsWith => sni.starts_with(s.as_str()),
                    Op::EndsWith => sni.ends_with(s.as_str()),
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
}
