//! Commands: one-off, signed, expiring instructions from the hub. Devices
//! drop expired ones and execute each id at most once.

use serde::{Deserialize, Serialize};

use crate::event::is_valid_id;
use crate::name::DeviceId;
use crate::sign::{Message, MessageKind};
use crate::validate::ValidationErrors;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Command {
    pub id: String,
    pub device_id: DeviceId,
    pub issued_at_ms: u64,
    pub expires_at_ms: u64,
    pub action: CommandAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum CommandAction {
    /// Re-run the reconciler now, including a full drift check.
    Resync,
    /// Send a status report now.
    ReportStatus,
    /// Restart one workload (Kubernetes rollout restart, or model reload).
    RestartWorkload { name: String },
}

impl CommandAction {
    /// A short name for logs and metrics: `resync`, `reportStatus`,
    /// `restartWorkload`.
    pub fn name(&self) -> &'static str {
        match self {
            CommandAction::Resync => "resync",
            CommandAction::ReportStatus => "reportStatus",
            CommandAction::RestartWorkload { .. } => "restartWorkload",
        }
    }
}

/// The event `kind` of a command's result, sent through the outbox.
pub const COMMAND_RESULT_KIND: &str = "command.result";

/// What a device did with a command: the payload of its
/// [`COMMAND_RESULT_KIND`] event. The event's own id is the command id, so a
/// redelivered result is stored once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandResult {
    pub command_id: String,
    pub ok: bool,
    /// What happened, for the operator (at most 1 KiB).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl Message for Command {
    const KIND: MessageKind = MessageKind::Command;
    /// What to do (and to which workload); id and expiry stay readable.
    const PRIVATE: &'static [&'static str] = &["action"];

    fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    fn expires_at_ms(&self) -> Option<u64> {
        Some(self.expires_at_ms)
    }

    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        if !is_valid_id(&self.id) {
            errs.push("id", "must be 1-64 characters of [A-Za-z0-9_-]");
        }
        if self.expires_at_ms <= self.issued_at_ms {
            errs.push("expiresAtMs", "must be after issuedAtMs");
        }
        errs.into_result()
    }
}
