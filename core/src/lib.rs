//! burrow: put a local service on a public TLS address, and choose where TLS
//! is terminated — at the edge, at the agent, or at the upstream service.
//!
//! ```no_run
//! # async fn demo() -> Result<(), burrow_core::Error> {
//! use burrow_core::{Session, Upstream};
//! let session = Session::builder().authtoken_from_env().connect().await?;
//! let fwd = session
//!     .tls_endpoint()
//!     .domain("app.example.com")
//!     .listen_and_forward("tls://localhost:443".parse::<Upstream>()?)
//!     .await?;
//! println!("{}", fwd.url());
//! # Ok(()) }
//! ```

pub mod agent;
pub mod edge;
mod error;
pub mod policy;
mod splice;
pub mod tls;
pub mod wire;

pub use agent::config;
pub use agent::{
    Conn, EndpointSpec, ForwardOptions, Forwarder, HttpEndpointBuilder, Listener, OptionValue,
    ProxyProto, Scope, Session, SessionBuilder, SessionOptions, TcpEndpointBuilder, TerminateAt,
    Termination, TlsEndpointBuilder, Upstream,
};
pub use edge::{Edge, EdgeConfig, SessionInfo};
pub use error::{Error, ErrorCode, ErrorKind, Result};

/// A random 128-bit id in hex, for sessions and endpoints.
pub(crate) fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
