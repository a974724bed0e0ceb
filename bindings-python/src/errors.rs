//! burrow's exception classes and the one mapping from error codes to them.

use burrow_core::{Error as CoreError, ErrorCode};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyType;
use pyo3::PyErrArguments;

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
    "The edge or the upstream could not be reached, or the session is closed."
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
    m.add_function(wrap_pyfunction!(new_error, m)?)?;
    Ok(())
}

/// The exception class for an error code: the one place codes meet classes.
///
/// Codes are the strings of [`ErrorCode::as_str`] (plus the binding's own, which use
/// the same spelling); a code not listed here is a plain `burrow.Error`.
fn class_for<'py>(py: Python<'py>, code: &str) -> Bound<'py, PyType> {
    match code {
        "AUTH_FAILED" | "RATE_LIMITED" => py.get_type::<AuthError>(),
        "DOMAIN_NOT_ALLOWED" | "DOMAIN_TAKEN" | "PORT_UNAVAILABLE" | "LIMIT_EXCEEDED" => {
            py.get_type::<BindError>()
        }
        "CERT_DOMAIN_MISMATCH"
        | "KEY_MISMATCH"
        | "INVALID_PEM"
        | "ACME_FAILED"
        | "ACME_UNREACHABLE"
        | "ACME_RATE_LIMITED" => py.get_type::<CertificateError>(),
        "INVALID_POLICY" => py.get_type::<PolicyError>(),
        "CONNECT_FAILED" | "TIMEOUT" | "CLOSED" | "VERSION_MISMATCH" | "PROTOCOL" => {
            py.get_type::<ConnectionError>()
        }
        _ => py.get_type::<Error>(),
    }
}

/// An error's code and message; the exception object is made from them only when the
/// error reaches Python (with the GIL, on a thread Python owns), never where it arose,
/// which is often a tokio worker.
struct Coded {
    code: String,
    message: String,
}

impl PyErrArguments for Coded {
    /// The instance of the code's class (raising an instance of a subclass of `Error` as
    /// `Error` raises it unchanged).
    fn arguments(self, py: Python<'_>) -> Py<PyAny> {
        let built = class_for(py, &self.code)
            .call1((&self.message,))
            .and_then(|value| {
                value.setattr("code", &self.code)?;
                value.setattr("message", &self.message)?;
                Ok(value)
            });
        match built {
            Ok(value) => value.unbind(),
            Err(e) => e.into_value(py).into_any(),
        }
    }
}

/// Builds the exception for `code`, with `.code` and `.message` set (lazily).
fn make(code: &str, message: &str) -> PyErr {
    PyErr::new::<Error, _>(Coded {
        code: code.to_owned(),
        message: message.to_owned(),
    })
}

/// Makes a `burrow.Error` (or the subclass its code maps to) with `.code` and `.message`.
#[pyfunction]
fn new_error(py: Python<'_>, code: &str, message: &str) -> Py<PyAny> {
    make(code, message).into_value(py).into_any()
}

/// Maps a core error to its Python exception.
pub fn to_py(e: CoreError) -> PyErr {
    make(e.code().as_str(), e.message())
}

/// An invalid-option error raised by the binding itself.
pub fn option(message: &str) -> PyErr {
    make(ErrorCode::InvalidOption.as_str(), message)
}

/// An unexpected failure inside the binding.
pub fn internal(message: &str) -> PyErr {
    make(ErrorCode::Internal.as_str(), message)
}
