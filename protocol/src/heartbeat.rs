//! Heartbeat: periodic device metrics (QoS 0; a lost one is replaced by the
//! next).

use serde::{Deserialize, Serialize};

use crate::name::DeviceId;
use crate::sign::{Message, MessageKind};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Heartbeat {
    pub device_id: DeviceId,
    pub at_ms: u64,
    pub uptime_s: u64,
    /// Whole-device CPU use, 0–100.
    pub cpu_percent: f32,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    /// The filesystem of the agent's state directory.
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    /// Free space is below the agent's reserve: it refuses or drops new
    /// events and may not store its status.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disk_pressure: bool,
    /// SoC temperature where the device exposes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f32>,
    /// The agent's own resident memory.
    pub agent_rss_bytes: u64,
    pub agent_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k3s_version: Option<String>,
    pub outbox_depth: u64,
    pub outbox_dropped: u64,
}

impl Message for Heartbeat {
    const KIND: MessageKind = MessageKind::Heartbeat;

    fn device_id(&self) -> &DeviceId {
        &self.device_id
    }
}
