//! The callbacks a session owner can register (ngrok's `handle_*` hooks), and what
//! the session does when none is registered.

use crate::error::{Error, ErrorCode};
use crate::wire::{Command, CommandError};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Called with the round trip of each answered heartbeat.
pub type HeartbeatHook = Arc<dyn Fn(Duration) + Send + Sync>;
/// Called with the edge address and the reason each time the tunnel is lost or a
/// reconnect attempt fails; returning `false` stops reconnecting and closes the session.
pub type DisconnectHook = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;
/// Called when the edge sends Restart; an `Err` is reported back to the edge.
pub type CommandHook = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;
/// Called when the edge sends Stop, with the operator's reason if it gave one; an
/// `Err` is reported back to the edge.
pub type StopHook = Arc<dyn Fn(Option<&str>) -> Result<(), String> + Send + Sync>;
/// Called when the edge sends Update; an `Err` is reported back to the edge.
pub type UpdateHook = Arc<dyn Fn(&UpdateRequest) -> Result<(), String> + Send + Sync>;

/// An edge's request that the agent update itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRequest {
    /// The version asked for.
    pub version: String,
    /// Whether a new major version is acceptable.
    pub permit_major_version: bool,
}

/// The hooks of one session.
#[derive(Clone, Default)]
pub(crate) struct Hooks {
    pub(crate) heartbeat: Option<HeartbeatHook>,
    pub(crate) disconnection: Option<DisconnectHook>,
    pub(crate) stop: Option<StopHook>,
    pub(crate) restart: Option<CommandHook>,
    pub(crate) update: Option<UpdateHook>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("heartbeat", &self.heartbeat.is_some())
            .field("disconnection", &self.disconnection.is_some())
            .field("stop", &self.stop.is_some())
            .field("restart", &self.restart.is_some())
            .field("update", &self.update.is_some())
            .finish()
    }
}

/// What the session does after answering a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterCommand {
    /// Nothing: a hook handled it (or it was refused).
    Continue,
    /// No stop hook: close the session, as ngrok does by default.
    Close,
    /// No restart hook: drop the tunnel and reconnect, as ngrok does by default.
    Reconnect,
}

impl Hooks {
    /// Runs the hook for `command` (or the default) and returns the answer for the edge.
    pub(crate) fn on_command(&self, command: &Command) -> (Option<CommandError>, AfterCommand) {
        let refused = |message: String| CommandError {
            code: ErrorCode::Internal,
            message,
        };
        match command {
            Command::Stop { reason } => match &self.stop {
                Some(hook) => (
                    hook(reason.as_deref()).err().map(refused),
                    AfterCommand::Continue,
                ),
                None => (None, AfterCommand::Close),
            },
            Command::Restart => match &self.restart {
                Some(hook) => (hook().err().map(refused), AfterCommand::Continue),
                None => (None, AfterCommand::Reconnect),
            },
            Command::Update {
                version,
                permit_major_version,
            } => match &self.update {
                Some(hook) => {
                    let request = UpdateRequest {
                        version: version.clone(),
                        permit_major_version: *permit_major_version,
                    };
                    (hook(&request).err().map(refused), AfterCommand::Continue)
                }
                None => {
                    let e = Error::new(
                        ErrorCode::Unsupported,
                        "this agent does not update itself (no handle_update_command hook)",
                    );
                    (
                        Some(CommandError {
                            code: e.code(),
                            message: e.message().to_owned(),
                        }),
                        AfterCommand::Continue,
                    )
                }
            },
        }
    }

    /// Tells the disconnection hook; `false` means stop reconnecting.
    pub(crate) fn on_disconnection(&self, addr: &str, error: &str) -> bool {
        match &self.disconnection {
            Some(hook) => hook(addr, error),
            None => true,
        }
    }
}
