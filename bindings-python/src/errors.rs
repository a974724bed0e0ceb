//! burrow's exception classes and the one mapping from error codes to them.

use burrow_core::{Error as CoreError, ErrorCode, ErrorKind};
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
    m.add_function(wrap_pyfunction!(error_codes, m)?)?;
    // `args` is ngrok's `(message, cause, code)`; `str()` stays the message alone.
    let message_only = py.eval(
        c"lambda self: str(self.args[0]) if self.args else ''",
        None,
        None,
    )?;
    py.get_type::<Error>().setattr("__str__", message_only)?;
    Ok(())
}

/// The exception class for an error code: the one place codes meet classes.
///
/// The family comes from the core ([`ErrorCode::kind`]), whose match is exhaustive, so a
/// new code cannot land here without being placed on purpose. A spelling the core does
/// not know (never made by burrow itself) is a plain `burrow.Error`.
fn class_for<'py>(py: Python<'py>, code: &str) -> Bound<'py, PyType> {
    let Some(kind) = ErrorCode::from_name(code).map(ErrorCode::kind) else {
        return py.get_type::<Error>();
    };
    match kind {
        ErrorKind::Auth => py.get_type::<AuthError>(),
        ErrorKind::Bind => py.get_type::<BindError>(),
        ErrorKind::Certificate => py.get_type::<CertificateError>(),
        ErrorKind::Policy => py.get_type::<PolicyError>(),
        ErrorKind::Connection => py.get_type::<ConnectionError>(),
        ErrorKind::Other => py.get_type::<Error>(),
    }
}

/// The code ngrok's SDK would put in `args[2]`: ngrok's own where it has one.
fn ngrok_code(code: &str) -> &str {
    ErrorCode::from_name(code)
        .map(ErrorCode::ngrok_or_own)
        .unwrap_or(code)
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
    /// `Error` raises it unchanged), with `args == (message, cause, code)` as ngrok's:
    /// `code` is ngrok's where it has one; burrow's own is on `.code`.
    fn arguments(self, py: Python<'_>) -> Py<PyAny> {
        let built = class_for(py, &self.code)
            .call1((&self.message, &self.message, ngrok_code(&self.code)))
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

/// Every code of the core, with ngrok's code for it (or `None`): lets tests check that
/// each one maps to a class on purpose.
#[pyfunction]
fn error_codes() -> Vec<(&'static str, Option<&'static str>)> {
    ErrorCode::ALL
        .iter()
        .map(|c| (c.as_str(), c.ngrok_code()))
        .collect()
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
