//! Core errors as JavaScript errors: `.code` is burrow's code, `.errorCode` ngrok's
//! (where ngrok has one for the same failure, else burrow's). The error object is built
//! here, on the JavaScript thread, so nothing parses a message to find the code.

use burrow_core::{Error as CoreError, ErrorCode};
use napi::bindgen_prelude::*;
use std::future::Future;

/// The JavaScript `Error` for `e`, as a napi error that throws or rejects with exactly
/// that object.
pub fn js_error(env: &Env, e: &CoreError) -> napi::Error {
    let built = (|| -> Result<napi::Error> {
        let mut obj = env.create_error(napi::Error::from_reason(e.message().to_owned()))?;
        obj.set_named_property("code", e.code().as_str())?;
        obj.set_named_property("errorCode", e.code().ngrok_or_own())?;
        Ok(napi::Error::from(obj.into_unknown(env)?))
    })();
    built.unwrap_or_else(|failed| failed)
}

/// An invalid-option error raised by the binding itself.
pub fn invalid(env: &Env, message: String) -> napi::Error {
    js_error(env, &CoreError::new(ErrorCode::InvalidOption, message))
}

/// Runs `fut` on napi's runtime; a core error rejects the promise with [`js_error`].
pub fn promise<'env, T, F>(env: &'env Env, fut: F) -> Result<PromiseRaw<'env, T>>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = std::result::Result<T, CoreError>> + Send + 'static,
{
    env.spawn_future_with_callback(async move { Ok(fut.await) }, |env, outcome| {
        outcome.map_err(|e| js_error(env, &e))
    })
}

/// A core error code and ngrok's code for the same failure, if ngrok has one.
#[napi_derive::napi(object)]
pub struct CodeInfo {
    /// burrow's code (`.code` of errors).
    pub code: String,
    /// ngrok's `ERR_NGROK_<n>`, or null.
    pub ngrok_code: Option<String>,
}

/// Every core error code: lets index.js and the tests see the one mapping.
#[napi_derive::napi]
pub fn error_codes() -> Vec<CodeInfo> {
    ErrorCode::ALL
        .iter()
        .map(|c| CodeInfo {
            code: c.as_str().to_owned(),
            ngrok_code: c.ngrok_code().map(str::to_owned),
        })
        .collect()
}
