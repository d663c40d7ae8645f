//! The plugin request and decision types the rest of the host uses,
//! re-exported from the generated bindings under short names.

pub use super::bindings::auth::exports::spawner::plugin::authorization::{
    Allow, AuthRequest, Credential, CredentialSource, Deny, Header, HttpRequest, Verdict,
};
pub use super::bindings::auth::spawner::plugin::types::{Backend, Capability, Label, LogLevel, PluginError, TokenError};
pub use super::bindings::idle::exports::spawner::plugin::idleness::{Activity, IdleRequest, IdleVerdict, Termination, TerminationKind};
pub use super::bindings::scheduler::exports::spawner::plugin::scheduling::{Node, PlacedBackend, Placement, PlacementRequest, Resources};

impl PluginError {
    /// A one-line description (the generated `Display` prints `Debug`).
    pub fn describe(&self) -> String {
        match self {
            PluginError::InvalidInput(m) => format!("invalid input: {m}"),
            PluginError::InvalidSettings(m) => format!("invalid settings: {m}"),
            PluginError::Internal(m) => format!("internal error: {m}"),
        }
    }
}

impl Verdict {
    /// A denial with `status` and `reason`.
    pub fn deny(status: u16, reason: impl Into<String>) -> Self {
        Verdict::Deny(Deny { status, reason: reason.into() })
    }

    /// True for `Allow`.
    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow(_))
    }
}

impl TerminationKind {
    /// `idle` or `lifetime`: the terminal reason recorded for the backend.
    pub fn as_str(self) -> &'static str {
        match self {
            TerminationKind::Idle => "idle",
            TerminationKind::Lifetime => "lifetime",
        }
    }
}
