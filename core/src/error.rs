//! The one error type of burrow, with a stable code per failure.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A stable, machine-readable reason for a failure.
///
/// The codes cross the wire (the edge sends them to agents) and the language
/// bindings expose them as `.code`, so their spelling never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The authtoken is missing or not known to the edge.
    AuthFailed,
    /// The authtoken may not bind the requested domain.
    DomainNotAllowed,
    /// Another session already holds the requested domain.
    DomainTaken,
    /// The certificate does not cover the endpoint's domain.
    CertDomainMismatch,
    /// The private key does not belong to the certificate.
    KeyMismatch,
    /// A traffic policy could not be parsed; the message names the offending path.
    InvalidPolicy,
    /// PEM input could not be parsed.
    InvalidPem,
    /// A URL or address could not be understood.
    InvalidUrl,
    /// A domain name is not a valid DNS name.
    InvalidDomain,
    /// An option is unknown or has a bad value.
    InvalidOption,
    /// The option or protocol is known but not implemented.
    Unsupported,
    /// A configured limit was reached (endpoints per session, pending connections).
    LimitExceeded,
    /// Too many failed attempts from one address; retry later.
    RateLimited,
    /// A TCP port could not be given to the endpoint.
    PortUnavailable,
    /// The edge could not be reached or the tunnel handshake failed.
    ConnectFailed,
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// The peer sent something the protocol does not allow.
    Protocol,
    /// An operation took longer than its deadline.
    Timeout,
    /// The session or endpoint is closed.
    Closed,
    /// A configuration file is invalid.
    Config,
    /// An I/O error on a local resource (file, socket).
    Io,
    /// The edge failed in a way the agent cannot fix.
    Internal,
    /// The ACME directory refused or could not complete an order (e.g. the challenge
    /// failed); the message carries the directory's reason.
    AcmeFailed,
    /// The ACME directory could not be reached (network, TLS or HTTP failure).
    AcmeUnreachable,
    /// The ACME directory rate-limited this edge; retry after the time it names.
    AcmeRateLimited,
    /// The edge is draining (an operator is taking it down): it takes no new sessions.
    EdgeDraining,
}

impl ErrorCode {
    /// The code as it appears on the wire and in the bindings.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::DomainNotAllowed => "DOMAIN_NOT_ALLOWED",
            ErrorCode::DomainTaken => "DOMAIN_TAKEN",
            ErrorCode::CertDomainMismatch => "CERT_DOMAIN_MISMATCH",
            ErrorCode::KeyMismatch => "KEY_MISMATCH",
            ErrorCode::InvalidPolicy => "INVALID_POLICY",
            ErrorCode::InvalidPem => "INVALID_PEM",
            ErrorCode::InvalidUrl => "INVALID_URL",
            ErrorCode::InvalidDomain => "INVALID_DOMAIN",
            ErrorCode::InvalidOption => "INVALID_OPTION",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::LimitExceeded => "LIMIT_EXCEEDED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::PortUnavailable => "PORT_UNAVAILABLE",
            ErrorCode::ConnectFailed => "CONNECT_FAILED",
            ErrorCode::VersionMismatch => "VERSION_MISMATCH",
            ErrorCode::Protocol => "PROTOCOL",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Closed => "CLOSED",
            ErrorCode::Config => "CONFIG",
            ErrorCode::Io => "IO",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::AcmeFailed => "ACME_FAILED",
            ErrorCode::AcmeUnreachable => "ACME_UNREACHABLE",
            ErrorCode::AcmeRateLimited => "ACME_RATE_LIMITED",
            ErrorCode::EdgeDraining => "EDGE_DRAINING",
        }
    }
}

impl ErrorCode {
    /// Every code, in declaration order: lets tests and bindings enumerate them all.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::AuthFailed,
        ErrorCode::DomainNotAllowed,
        ErrorCode::DomainTaken,
        ErrorCode::CertDomainMismatch,
        ErrorCode::KeyMismatch,
        ErrorCode::InvalidPolicy,
        ErrorCode::InvalidPem,
        ErrorCode::InvalidUrl,
        ErrorCode::InvalidDomain,
        ErrorCode::InvalidOption,
        ErrorCode::Unsupported,
        ErrorCode::LimitExceeded,
        ErrorCode::RateLimited,
        ErrorCode::PortUnavailable,
        ErrorCode::ConnectFailed,
        ErrorCode::VersionMismatch,
        ErrorCode::Protocol,
        ErrorCode::Timeout,
        ErrorCode::Closed,
        ErrorCode::Config,
        ErrorCode::Io,
        ErrorCode::Internal,
        ErrorCode::AcmeFailed,
        ErrorCode::AcmeUnreachable,
        ErrorCode::AcmeRateLimited,
        ErrorCode::EdgeDraining,
    ];

    /// ngrok's code (`ERR_NGROK_<n>`) for the same failure, where ngrok documents one.
    ///
    /// The bindings report it where ngrok's SDKs do (Python's `args[2]`, Node's
    /// `errorCode`), so code written against ngrok keeps matching; `None` means ngrok has
    /// no code for this failure and burrow's own code is used instead.
    pub fn ngrok_code(self) -> Option<&'static str> {
        match self {
            ErrorCode::AuthFailed => Some("ERR_NGROK_105"),
            ErrorCode::DomainNotAllowed => Some("ERR_NGROK_319"),
            ErrorCode::DomainTaken => Some("ERR_NGROK_334"),
            ErrorCode::KeyMismatch => Some("ERR_NGROK_1923"),
            ErrorCode::InvalidPolicy => Some("ERR_NGROK_2236"),
            ErrorCode::InvalidDomain => Some("ERR_NGROK_326"),
            ErrorCode::Protocol => Some("ERR_NGROK_801"),
            ErrorCode::CertDomainMismatch
            | ErrorCode::InvalidPem
            | ErrorCode::InvalidUrl
            | ErrorCode::InvalidOption
            | ErrorCode::Unsupported
            | ErrorCode::LimitExceeded
            | ErrorCode::RateLimited
            | ErrorCode::PortUnavailable
            | ErrorCode::ConnectFailed
            | ErrorCode::VersionMismatch
            | ErrorCode::Timeout
            | ErrorCode::Closed
            | ErrorCode::Config
            | ErrorCode::Io
            | ErrorCode::Internal
            | ErrorCode::AcmeFailed
            | ErrorCode::AcmeUnreachable
            | ErrorCode::AcmeRateLimited
            | ErrorCode::EdgeDraining => None,
        }
    }

    /// The family of this code; the bindings map each family to one exception class.
    pub fn kind(self) -> ErrorKind {
        match self {
            ErrorCode::AuthFailed | ErrorCode::RateLimited => ErrorKind::Auth,
            ErrorCode::DomainNotAllowed
            | ErrorCode::DomainTaken
            | ErrorCode::InvalidDomain
            | ErrorCode::PortUnavailable
            | ErrorCode::LimitExceeded => ErrorKind::Bind,
            ErrorCode::CertDomainMismatch
            | ErrorCode::KeyMismatch
            | ErrorCode::InvalidPem
            | ErrorCode::AcmeFailed
            | ErrorCode::AcmeUnreachable
            | ErrorCode::AcmeRateLimited => ErrorKind::Certificate,
            ErrorCode::InvalidPolicy => ErrorKind::Policy,
            ErrorCode::ConnectFailed
            | ErrorCode::Timeout
            | ErrorCode::Closed
            | ErrorCode::VersionMismatch
            | ErrorCode::Protocol
            | ErrorCode::EdgeDraining => ErrorKind::Connection,
            ErrorCode::InvalidUrl
            | ErrorCode::InvalidOption
            | ErrorCode::Unsupported
            | ErrorCode::Config
            | ErrorCode::Io
            | ErrorCode::Internal => ErrorKind::Other,
        }
    }

    /// The code with this spelling ([`Self::as_str`]), if there is one.
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        Self::ALL.iter().copied().find(|c| c.as_str() == name)
    }

    /// The code ngrok's SDKs would report: [`Self::ngrok_code`], else [`Self::as_str`].
    pub fn ngrok_or_own(self) -> &'static str {
        self.ngrok_code().unwrap_or_else(|| self.as_str())
    }
}

/// A family of error codes: what the bindings turn into exception classes (Python's
/// `AuthError`, `BindError`, ...). Deliberately exhaustive, so a binding's mapping is too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The edge refused the credentials.
    Auth,
    /// The edge refused the endpoint (domain, port, limits).
    Bind,
    /// A certificate, key or CA bundle is unusable, or one could not be obtained.
    Certificate,
    /// A traffic policy is invalid.
    Policy,
    /// The edge could not be reached, the tunnel failed, or the session is closed.
    Connection,
    /// Everything else (options, URLs, configuration, I/O, internal failures).
    Other,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every failure burrow reports: a [`ErrorCode`] and a message saying what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} [{code}]")]
pub struct Error {
    code: ErrorCode,
    message: String,
}

impl Error {
    /// An error with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }

    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The human-readable message, without the code.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn io(context: impl fmt::Display, err: std::io::Error) -> Self {
        Error::new(ErrorCode::Io, format!("{context}: {err}"))
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Protocol, message)
    }

    pub(crate) fn option(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::InvalidOption, message)
    }
}

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::ErrorCode;
    use std::collections::HashSet;

    /// `ALL` lists every variant once: a variant missing here would be missing from the
    /// bindings' tables too. The match makes adding a variant without listing it a
    /// compile error.
    #[test]
    fn all_lists_every_code_once() {
        let listed = |c: ErrorCode| match c {
            ErrorCode::AuthFailed
            | ErrorCode::DomainNotAllowed
            | ErrorCode::DomainTaken
            | ErrorCode::CertDomainMismatch
            | ErrorCode::KeyMismatch
            | ErrorCode::InvalidPolicy
            | ErrorCode::InvalidPem
            | ErrorCode::InvalidUrl
            | ErrorCode::InvalidDomain
            | ErrorCode::InvalidOption
            | ErrorCode::Unsupported
            | ErrorCode::LimitExceeded
            | ErrorCode::RateLimited
            | ErrorCode::PortUnavailable
            | ErrorCode::ConnectFailed
            | ErrorCode::VersionMismatch
            | ErrorCode::Protocol
            | ErrorCode::Timeout
            | ErrorCode::Closed
            | ErrorCode::Config
            | ErrorCode::Io
            | ErrorCode::Internal
            | ErrorCode::AcmeFailed
            | ErrorCode::AcmeUnreachable
            | ErrorCode::AcmeRateLimited
            | ErrorCode::EdgeDraining => 26,
        };
        assert_eq!(ErrorCode::ALL.len(), listed(ErrorCode::Io));
        let names: HashSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len(), "duplicate spelling");
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_name(code.as_str()), Some(*code));
            let wire = serde_json::to_string(code).unwrap();
            assert_eq!(
                wire,
                format!("\"{}\"", code.as_str()),
                "serde and as_str disagree"
            );
            if let Some(ngrok) = code.ngrok_code() {
                assert!(ngrok.starts_with("ERR_NGROK_"), "{code}: {ngrok}");
                assert_eq!(code.ngrok_or_own(), ngrok);
            } else {
                assert_eq!(code.ngrok_or_own(), code.as_str());
            }
        }
    }
}
