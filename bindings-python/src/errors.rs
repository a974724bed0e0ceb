//! burrow's exception classes and the one mapping from core error codes to them.

use burrow_core::{Error as CoreError, ErrorCode};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

pyo3::create_exception!(
    _burrow,
    Error,
    PyValueError,
    "Every burrow failure; `.code` and `.message` say which and why."
);
pyo3::create_exception!(_burrow, AuthError, Error, "The edge refused the authtoken.");
pyo3::create_exception!(
    _burrow,
    BindError,
    Error,
    "The edge refused the endpoint (domain, port, limits)."
);
pyo3::create_exception!(
    _burrow,
    CertificateError,
    Error,
    "A certificate, key or CA bundle is unusable."
);
pyo3::create_exception!(
    _burrow,
    PolicyError,
    Error,
    "A traffic policy is invalid; the message names the field."
);
pyo3::create_exception!(
    _burrow,
    ConnectionError,
    Error,
    "The edge or the upstream could not be reached."
);

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("AuthError", py.get_type::<AuthError>())?;
    m.add("BindError", py.get_type::<BindError>())?;
    m.add("CertificateError", py.get_type::<CertificateError>())?;
    m.add("PolicyError", py.get_type::<PolicyError>())?;
    m.add("ConnectionError", py.get_type::<ConnectionError>())?;
    Ok(())
}

/// Builds the exception for `code` with `.code` and `.message` set.
fn make(code: &str, message: String, kind: ErrorCode) -> PyErr {
    let err = match kind {
        ErrorCode::AuthFailed | ErrorCode::RateLimited => AuthError::new_err(message.clone()),
        ErrorCode::DomainNotAllowed
        | ErrorCode::DomainTaken
        | ErrorCode::PortUnavailable
        | ErrorCode::LimitExceeded => BindError::new_err(message.clone()),
        ErrorCode::CertDomainMismatch | ErrorCode::KeyMismatch | ErrorCode::InvalidPem => {
            CertificateError::new_err(message.clone())
        }
        ErrorCode::InvalidPolicy => PolicyError::new_err(message.clone()),
        ErrorCode::ConnectFailed
        | ErrorCode::Timeout
        | ErrorCode::Closed
        | ErrorCode::VersionMismatch
        | ErrorCode::Protocol => ConnectionError::new_err(message.clone()),
        _ => Error::new_err(message.clone()),
    };
    Python::attach(|py| {
        let value = err.value(py);
        let _ = value.setattr("code", code);
        let _ = value.setattr("message", message);
    });
    err
}

/// Maps a core error to its Python exception.
pub fn to_py(e: CoreError) -> PyErr {
    make(e.code().as_str(), e.message().to_owned(), e.code())
}

/// An invalid-option error raised by the binding itself.
pub fn option(message: String) -> PyErr {
    make("INVALID_OPTION", message, ErrorCode::InvalidOption)
}

/// An unexpected failure inside the binding.
pub fn internal(message: String) -> PyErr {
    make("INTERNAL", message, ErrorCode::Internal)
}
