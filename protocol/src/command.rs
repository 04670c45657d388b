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
    /// Send a workload's recent logs back ([`LogChunk`] events): its pods'
    /// logs from the K3s API, or the agent's own lines about an inference
    /// workload. Bounded by `limitBytes` and, per container, `tailLines`.
    #[serde(rename_all = "camelCase")]
    Logs {
        workload: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tail_lines: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_seconds: Option<u64>,
        limit_bytes: u32,
    },
}

impl CommandAction {
    /// A short name for logs and metrics: `resync`, `reportStatus`,
    /// `restartWorkload`.
    pub fn name(&self) -> &'static str {
        match self {
            CommandAction::Resync => "resync",
            CommandAction::ReportStatus => "reportStatus",
            CommandAction::RestartWorkload { .. } => "restartWorkload",
            CommandAction::Logs { .. } => "logs",
        }
    }
}

/// The event `kind` of a command's result, sent through the outbox.
pub const COMMAND_RESULT_KIND: &str = "command.result";

/// The event `kind` of a piece of a logs command's answer. Sent directly,
/// not through the outbox: nobody waits for logs across a reconnect.
pub const LOG_CHUNK_KIND: &str = "command.logs";

/// Most bytes of log text in one [`LogChunk`] (well under an event's payload
/// limit once JSON-escaped).
pub const LOG_CHUNK_BYTES: usize = 8 * 1024;

/// Most bytes of logs one command may ask for.
pub const MAX_LOG_BYTES: u32 = 4 * 1024 * 1024;

/// A piece of a logs command's answer: the payload of a [`LOG_CHUNK_KIND`]
/// event. Chunks are numbered from 0; the last one says so, and carries the
/// error if the logs could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogChunk {
    pub command_id: String,
    pub seq: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub last: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

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
