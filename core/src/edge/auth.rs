//! Authtokens and the domains each may bind.

use crate::error::{Error, ErrorCode, Result};
use serde::Deserialize;
use std::fmt;

/// One accepted authtoken and the domain globs it may bind.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRule {
    /// The secret the agent presents.
    pub token: String,
    /// Globs such as `*.example.com` or `app.example.com`; `*` matches any characters.
    #[serde(default)]
    pub domains: Vec<String>,
}

impl fmt::Debug for TokenRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRule")
            .field("token", &"<redacted>")
            .field("domains", &self.domains)
            .finish()
    }
}

/// What an authenticated session may bind.
#[derive(Debug, Clone)]
pub enum Grant {
    /// Any domain (an open edge, such as the embedded one).
    Any,
    /// Domains matching one of these globs.
    Globs(Vec<String>),
}

impl Grant {
    /// Fails with `DOMAIN_NOT_ALLOWED` unless `domain` matches.
    pub fn check(&self, domain: &str) -> Result<()> {
        match self {
            Grant::Any => Ok(()),
            Grant::Globs(globs) if globs.iter().any(|g| glob_match(g, domain)) => Ok(()),
            Grant::Globs(globs) => Err(Error::new(
                ErrorCode::DomainNotAllowed,
                format!(
                    "this authtoken may not bind {domain:?} (allowed: {})",
                    globs.join(", ")
                ),
            )),
        }
    }
}

/// Checks `token` against `rules`; `open` edges accept anything.
pub fn authorize(rules: &[TokenRule], token: Option<&str>, open: bool) -> Result<Grant> {
    if open {
        return Ok(Grant::Any);
    }
    let token = token.unwrap_or("");
    // Compare every rule fully so timing does not reveal which prefix matched.
    let mut found = None;
    for rule in rules {
        if constant_time_eq(rule.token.as_bytes(), token.as_bytes()) {
            found = Some(rule);
        }
    }
    match found {
        Some(rule) => Ok(Grant::Globs(rule.domains.clone())),
        None if token.is_empty() => Err(Error::new(
            ErrorCode::AuthFailed,
            "an authtoken is required by this edge (CLI: --authtoken or BURROW_AUTHTOKEN; SDKs: authtoken, or authtoken_from_env with BURROW_AUTHTOKEN)",
        )),
        None => Err(Error::new(
            ErrorCode::AuthFailed,
            "the authtoken is not valid for this edge",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Case-insensitive glob where `*` matches any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.to_ascii_lowercase().into_bytes();
    let t = text.to_ascii_lowercase().into_bytes();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.example.com", "app.example.com"));
        assert!(glob_match("*.example.com", "a.b.example.com"));
        assert!(!glob_match("*.example.com", "example.com"));
        assert!(!glob_match("*.example.com", "app.example.org"));
        assert!(glob_match("app.example.com", "APP.example.com"));
        assert!(glob_match("*", "anything"));
    }

    #[test]
    fn tokens() {
        let rules = vec![TokenRule {
            token: "s3cret".into(),
            domains: vec!["*.a.test".into()],
        }];
        assert!(authorize(&rules, Some("s3cret"), false).is_ok());
        let err = authorize(&rules, Some("wrong"), false).unwrap_err();
        assert_eq!(err.code(), ErrorCode::AuthFailed);
        assert!(!err.to_string().contains("wrong"));
        assert_eq!(
            authorize(&rules, None, false).unwrap_err().code(),
            ErrorCode::AuthFailed
        );
        assert!(authorize(&rules, None, true).is_ok());
    }
}

/// Counts failed authentications to slow down token guessing.
///
/// Failures count per client IP and token prefix, and per client IP in all with a ten
/// times higher ceiling: someone guessing from a shared address (NAT, a CI runner) does
/// not lock out a correct token there, whose prefix differs from the guesses, while
/// guesses that vary their prefix still meet the per-address ceiling.
#[derive(Default)]
pub(crate) struct AuthLimiter {
    failures: std::sync::Mutex<std::collections::HashMap<FailureKey, (u32, std::time::Instant)>>,
}

/// A client IP, with the first characters of the token it presented (`None`: all of them).
type FailureKey = (std::net::IpAddr, Option<String>);

const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Entries kept before expired ones are swept, so the map stays bounded.
const SWEEP_AT: usize = 4096;
/// Characters of a presented token that key its failures.
const PREFIX_CHARS: usize = 4;
/// The per-IP ceiling is this many times the per-prefix limit.
const IP_CEILING_FACTOR: u32 = 10;

fn prefix(token: &str) -> Option<String> {
    Some(token.chars().take(PREFIX_CHARS).collect())
}

impl AuthLimiter {
    /// Fails with `RATE_LIMITED` when `ip` failed `limit` times within the last minute
    /// with tokens starting like `token`, or ten times `limit` times with any.
    pub(crate) fn check(&self, ip: std::net::IpAddr, token: &str, limit: u32) -> Result<()> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let over = |key: &FailureKey, limit: u32| match map.get(key) {
            Some((count, since)) if *count >= limit && since.elapsed() < WINDOW => {
                Some(WINDOW.saturating_sub(since.elapsed()).as_secs() + 1)
            }
            _ => None,
        };
        let wait = over(&(ip, prefix(token)), limit)
            .or_else(|| over(&(ip, None), limit.saturating_mul(IP_CEILING_FACTOR)));
        match wait {
            Some(secs) => Err(Error::new(
                ErrorCode::RateLimited,
                format!("too many failed authentications from {ip}; retry in {secs}s"),
            )),
            None => Ok(()),
        }
    }

    /// Records one failed authentication from `ip` with `token`.
    pub(crate) fn failed(&self, ip: std::net::IpAddr, token: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SWEEP_AT {
            map.retain(|_, (_, since)| since.elapsed() < WINDOW);
        }
        for key in [(ip, None), (ip, prefix(token))] {
            // Still full of live entries: only the per-IP totals keep counting.
            if map.len() >= SWEEP_AT && key.1.is_some() && !map.contains_key(&key) {
                continue;
            }
            let entry = map.entry(key).or_insert((0, std::time::Instant::now()));
            if entry.1.elapsed() >= WINDOW {
                *entry = (0, std::time::Instant::now());
            }
            entry.0 += 1;
        }
    }
}
