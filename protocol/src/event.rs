//! Events: the outbox stream from a device — inference results, app
//! telemetry posted to the agent, agent events. Each has a unique id so the
//! hub can drop redeliveries.

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_EVENT_PAYLOAD_BYTES, MAX_ID_LEN};
use crate::name::DeviceId;
use crate::sign::{Message, MessageKind};
use crate::validate::ValidationErrors;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Event {
    /// Unique per device, 1–64 characters of `[A-Za-z0-9_-]`.
    pub id: String,
    pub device_id: DeviceId,
    /// What happened, e.g. `inference.result`, `app.telemetry`.
    pub kind: String,
    /// The workload that produced it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    pub created_at_ms: u64,
    pub payload: serde_json::Value,
}

/// True for a valid event or command id.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Event {
    /// Checks an event's own rules; apps posting events get these errors.
    pub fn check(&self) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        if !is_valid_id(&self.id) {
            errs.push("id", "must be 1-64 characters of [A-Za-z0-9_-]");
        }
        if self.kind.is_empty() || self.kind.len() > 128 {
            errs.push("kind", "must be 1-128 characters");
        }
        let size = serde_json::to_vec(&self.payload)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_EVENT_PAYLOAD_BYTES {
            errs.push(
                "payload",
                format_args!("is {size} bytes, the limit is {MAX_EVENT_PAYLOAD_BYTES}"),
            );
        }
        errs.into_result()
    }
}

impl Message for Event {
    const KIND: MessageKind = MessageKind::Event;

    fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    fn validate(&self) -> Result<(), ValidationErrors> {
        self.check()
    }
}
