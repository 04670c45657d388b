//! Presence: retained `online` when a device connects, and the same session's
//! `offline` as its MQTT last will (or on a clean stop). The session id lets
//! the hub ignore a stale will that arrives after a newer `online`.

use serde::{Deserialize, Serialize};

use crate::name::DeviceId;
use crate::sign::{Message, MessageKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceState {
    Online,
    Offline,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Presence {
    pub device_id: DeviceId,
    pub state: PresenceState,
    /// Random per MQTT connection; `offline` only counts for its own session.
    pub session: u64,
    /// When the session began (both for `online` and its will).
    pub at_ms: u64,
}

impl Message for Presence {
    const KIND: MessageKind = MessageKind::Presence;

    fn device_id(&self) -> &DeviceId {
        &self.device_id
    }
}
