//! Acknowledgements: the hub tells a device which of its outbox messages it
//! has committed to its store. A device deletes an outbox row only on such
//! an acknowledgement; the broker's PUBACK only means the broker holds the
//! message, and a broker (embedded in the hub, or mosquitto between its
//! persistence intervals) can die with it.
//!
//! Replaying an old acknowledgement is harmless: it names events the hub
//! already holds, and a status time the hub already has or has passed.

use serde::{Deserialize, Serialize};

use crate::event::is_valid_id;
use crate::limits::MAX_ACK_IDS;
use crate::name::DeviceId;
use crate::sign::{Message, MessageKind};
use crate::validate::ValidationErrors;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ack {
    pub device_id: DeviceId,
    /// Ids of events the hub has stored, now or earlier (a redelivered event
    /// is acknowledged again).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::bounded::vec::<_, _, MAX_ACK_IDS>"
    )]
    pub events: Vec<String>,
    /// The hub holds this device's status as reported at this time, or a
    /// newer one: queued reports up to it are done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reported_at_ms: Option<u64>,
    pub acked_at_ms: u64,
}

impl Message for Ack {
    const KIND: MessageKind = MessageKind::Ack;

    fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        if self.events.is_empty() && self.status_reported_at_ms.is_none() {
            errs.push(
                "events",
                "an acknowledgement names events, a status, or both",
            );
        }
        for (i, id) in self.events.iter().enumerate() {
            if !is_valid_id(id) {
                errs.push(
                    format!("events[{i}]"),
                    "must be 1-64 characters of [A-Za-z0-9_-]",
                );
            }
        }
        errs.into_result()
    }
}
