//! What travels between agent and edge: control messages, stream headers,
//! their framing, and the multiplexer that carries them.

mod frame;
mod messages;
pub mod mux;

pub use frame::{read_header, write_header, ControlChannel, MAX_CONTROL_FRAME};
pub use messages::{AgentMsg, BindSpec, EdgeMsg, Proto, SecretPem, StreamHeader, PROTOCOL_VERSION};
