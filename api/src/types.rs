//! What `/api/v1` sends and takes, field for field. The hub serialises these
//! types and every client (edgectl, `cloudcore demo`, the tests) reads them,
//! so a field renamed on one side is renamed on both; `tests/golden.rs`
//! pins the JSON itself, so a rename is a visible change to the contract.
//!
//! Clients ignore fields they do not know: a newer hub may add some.

use std::collections::BTreeMap;

use edgefleet_protocol::{DeviceId, Health, SyncState};
use serde::{Deserialize, Serialize};

/// A page of a list: `{"items": [...], "continue": "<token>"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `?continue=` for the next page; absent on the last one.
    #[serde(rename = "continue", default, skip_serializing_if = "Option::is_none")]
    pub continue_token: Option<String>,
}

impl<T> Page<T> {
    /// The only page: every item, no `continue`.
    pub fn whole(items: Vec<T>) -> Self {
        Self {
            items,
            continue_token: None,
        }
    }
}

/// Every error response: `{"error": {"code": "not_found", "message": "…"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable: `invalid`, `unauthorized`, `not_found`, `conflict`,
    /// `limit_exceeded`, `disk_full`, `internal`, …
    pub code: String,
    pub message: String,
}

/// Whether a device is connected, as its last presence message said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Online,
    Offline,
    /// Enrolled, never connected.
    Unknown,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Online => "online",
            Presence::Offline => "offline",
            Presence::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Presence::Online, Presence::Offline, Presence::Unknown]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An enrolled device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRecord {
    pub id: DeviceId,
    pub labels: BTreeMap<String, String>,
    pub public_key: String,
    pub hostname: Option<String>,
    pub arch: Option<String>,
    pub agent_version: Option<String>,
    pub created_ms: u64,
    pub last_seen_ms: Option<u64>,
    pub presence: Presence,
    /// Latest desired revision the hub issued for this device.
    pub desired_revision: Option<u64>,
    /// Revision the device last reported as applied.
    pub applied_revision: Option<u64>,
    pub last_report_ms: Option<u64>,
    pub message: Option<String>,
    pub k3s_version: Option<String>,
    /// The device's last heartbeat as it sent it (see
    /// [`HeartbeatSummary`] for the fields edgectl shows).
    pub heartbeat: Option<serde_json::Value>,
    /// What the hub knows is wrong with the device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The worst of its reported workloads.
    #[serde(default)]
    pub health: DeviceHealth,
}

/// A device's workloads, summed up: `failed` when any failed to apply, was
/// rolled back or is Degraded; `healthy` when all are Synced and Healthy;
/// `progressing` otherwise; `none` when it reported no workloads.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceHealth {
    Healthy,
    Progressing,
    Failed,
    #[default]
    #[serde(rename = "none")]
    NoWorkloads,
}

impl DeviceHealth {
    pub const ALL: [DeviceHealth; 4] = [
        DeviceHealth::Healthy,
        DeviceHealth::Progressing,
        DeviceHealth::Failed,
        DeviceHealth::NoWorkloads,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceHealth::Healthy => "healthy",
            DeviceHealth::Progressing => "progressing",
            DeviceHealth::Failed => "failed",
            DeviceHealth::NoWorkloads => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.as_str() == s)
    }
}

/// `GET /overview`: the fleet at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    pub devices: FleetCounts,
    /// Every deployment with its ready counts.
    pub deployments: Vec<DeploymentSummary>,
    /// Rollouts progressing or paused.
    pub rollouts: Vec<RolloutStatus>,
    /// The newest workload reports that failed, were rolled back or are
    /// Degraded (at most 20).
    pub failures: Vec<WorkloadStatusRecord>,
    /// The fleet's newest events (at most 20), newest first.
    pub events: Vec<EventRecord>,
}

/// Devices by presence, and by health where it is bad.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetCounts {
    pub total: u64,
    pub online: u64,
    pub offline: u64,
    /// Enrolled, never connected.
    pub unknown: u64,
    /// Devices whose health is `failed`.
    pub failed: u64,
    /// Devices with a standing condition.
    pub with_conditions: u64,
}

/// `GET /devices/{id}/history`: the device's heartbeats over the last
/// 24 hours, averaged per interval, oldest first (intervals with no
/// heartbeat are absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatHistory {
    pub device_id: String,
    /// The length of one point's interval.
    pub interval_secs: u64,
    pub points: Vec<HistoryPoint>,
}

/// One interval's average.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPoint {
    /// The interval's start.
    pub at_ms: u64,
    /// Heartbeats averaged.
    pub samples: u32,
    pub cpu_percent: f64,
    pub mem_percent: f64,
    pub disk_percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f64>,
}

impl DeviceRecord {
    /// The heartbeat's resource figures, where it has them.
    pub fn heartbeat_summary(&self) -> Option<HeartbeatSummary> {
        self.heartbeat
            .as_ref()
            .and_then(|h| serde_json::from_value(h.clone()).ok())
    }
}

/// The figures of a heartbeat an operator looks at; missing ones are 0.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HeartbeatSummary {
    pub cpu_percent: f64,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    pub disk_pressure: bool,
    pub agent_rss_bytes: u64,
    pub outbox_depth: u64,
    pub outbox_dropped: u64,
}

/// The kinds of condition the hub records on a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ConditionType {
    /// The hub did not issue the device's document: the device would refuse
    /// it (too many workloads, too many bytes).
    DesiredTooLarge,
    /// The device reported that it refused a document.
    DesiredRejected,
    /// The device reported its disk at its reserve.
    DiskPressure,
    /// The device reported that the agent release it was sent failed its
    /// trial and was reverted.
    UpdateFailed,
}

impl ConditionType {
    pub const ALL: [ConditionType; 4] = [
        ConditionType::DesiredTooLarge,
        ConditionType::DesiredRejected,
        ConditionType::DiskPressure,
        ConditionType::UpdateFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::DesiredTooLarge => "DesiredTooLarge",
            ConditionType::DesiredRejected => "DesiredRejected",
            ConditionType::DiskPressure => "DiskPressure",
            ConditionType::UpdateFailed => "UpdateFailed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// One standing condition of a device, kept until its cause goes away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: ConditionType,
    pub message: String,
    /// When the condition first appeared (a new message keeps it).
    pub since_ms: u64,
    pub updated_ms: u64,
}

/// One workload's reported state on one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatusRecord {
    pub device_id: DeviceId,
    pub name: String,
    pub sync: SyncState,
    pub health: Health,
    pub message: Option<String>,
    pub updated_ms: u64,
}

/// `GET /devices/{id}`: a device with what it should run and what it reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub device: DeviceRecord,
    /// Workload ids of the device's current desired document.
    pub desired_workloads: Vec<String>,
    pub workloads: Vec<WorkloadStatusRecord>,
}

/// `PATCH /devices/{id}`: a merge-patch of labels; `None` (JSON `null`)
/// removes one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    #[serde(default)]
    pub labels: BTreeMap<String, Option<String>>,
}

/// A stored event, with the hub's receive time and sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    /// Increasing per hub; `?continue=` takes the last one seen.
    pub seq: i64,
    pub id: String,
    pub device_id: String,
    pub kind: String,
    pub workload: Option<String>,
    pub created_at_ms: u64,
    pub received_at_ms: u64,
    pub payload: serde_json::Value,
}

/// A stored deployment.
/// One generation of a deployment's spec, as the hub keeps it (the last
/// [`DEPLOYMENT_HISTORY`] generations of each deployment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentGeneration {
    pub generation: u64,
    /// When this generation was applied.
    pub created_ms: u64,
    pub spec: edgefleet_protocol::Deployment,
}

/// How many generations of each deployment the hub keeps.
pub const DEPLOYMENT_HISTORY: u64 = 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRecord {
    pub name: String,
    /// Bumped on every change of the spec (an unchanged apply keeps it).
    pub generation: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub spec: edgefleet_protocol::Deployment,
    /// The Git source that owns it, and the commit in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::SourceRef>,
}

/// What `PUT /deployments/{name}` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApplyResult {
    /// New deployment (HTTP 201).
    Created,
    /// The spec changed: a new generation.
    Configured,
    /// Same spec as stored: nothing happened.
    Unchanged,
}

impl ApplyResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyResult::Created => "created",
            ApplyResult::Configured => "configured",
            ApplyResult::Unchanged => "unchanged",
        }
    }
}

/// `PUT /deployments/{name}`'s answer: the stored record and what changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    #[serde(flatten)]
    pub deployment: DeploymentRecord,
    pub result: ApplyResult,
}

/// Rollout counts across the devices a deployment targets.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Devices the selector matches.
    pub targeted: usize,
    /// Devices that applied the latest revision with every workload Synced.
    pub in_sync: usize,
    /// Devices in sync whose workloads are all Healthy.
    pub healthy: usize,
    /// Devices with a workload whose sync Failed or health is Degraded.
    pub failed: usize,
}

impl Counts {
    /// `Healthy` when every targeted device is healthy, `Degraded` when any
    /// failed, `Progressing` otherwise, `NoDevices` when nothing matches.
    pub fn status(&self) -> &'static str {
        if self.targeted == 0 {
            "NoDevices"
        } else if self.failed > 0 {
            "Degraded"
        } else if self.healthy == self.targeted {
            "Healthy"
        } else {
            "Progressing"
        }
    }
}

/// `GET /deployments`: one line per deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSummary {
    pub name: String,
    pub generation: u64,
    pub workloads: usize,
    pub updated_ms: u64,
    #[serde(flatten)]
    pub counts: Counts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::SourceRef>,
}

/// One targeted device in a deployment's rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRollout {
    pub device: String,
    pub presence: Presence,
    pub desired_revision: Option<u64>,
    pub applied_revision: Option<u64>,
    pub in_sync: bool,
    pub healthy: bool,
    pub failed: bool,
    pub workloads: Vec<WorkloadRow>,
    /// The device's standing conditions (e.g. `DesiredTooLarge`: its
    /// document with this deployment was not issued).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One of a deployment's workloads on one device (`None`: not reported yet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRow {
    pub name: String,
    pub sync: Option<SyncState>,
    pub health: Option<Health>,
    pub message: Option<String>,
}

/// `GET /deployments/{name}/status`: the rollout across targeted devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    pub name: String,
    pub generation: u64,
    #[serde(flatten)]
    pub counts: Counts,
    /// The Git source that owns it, and the commit its current generation
    /// came from: `inSync` devices run that commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::SourceRef>,
    pub devices: Vec<DeviceRollout>,
}

/// A model blob in the hub's registry (content-addressed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelRecord {
    pub sha256: String,
    pub name: String,
    pub size: u64,
    pub created_ms: u64,
}

/// An agent release binary for one architecture (content-addressed). A
/// version and arch name one binary for good: releases are immutable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentRelease {
    pub version: String,
    /// `amd64`, `arm64` or `armhf`.
    pub arch: String,
    pub sha256: String,
    pub size: u64,
    pub created_ms: u64,
}

/// `GET /hub/key`: the key devices pin at enrollment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HubKey {
    pub public_key: String,
    pub key_id: String,
    /// Every key the hub has signed with, oldest first (after a rotation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<HubKeyInfo>,
}

/// One of the hub's keys, current or replaced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HubKeyInfo {
    pub key_id: String,
    pub public_key: String,
    pub created_ms: u64,
    /// When a newer key replaced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_ms: Option<u64>,
    /// When the hub stopped announcing its successor to devices pinned to
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_ms: Option<u64>,
    /// Why: every device acknowledged the newer key (`all_acknowledged`),
    /// the grace period ended (`grace_period`), or the chain was full
    /// (`chain_full`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_reason: Option<String>,
    /// Devices whose last status names this key.
    pub devices: u64,
}

/// `POST /hub/key/rotate`: what a rotation did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HubKeyRotation {
    pub previous_key_id: String,
    pub key_id: String,
    pub public_key: String,
}

/// `POST /devices/{id}/key`: a device's key, rotated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceKeyRotated {
    pub device_id: String,
    pub key_id: String,
    /// Until when (Unix ms) the hub still accepts the previous key.
    pub previous_key_valid_until_ms: u64,
}

/// Where a deployment's rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum RolloutState {
    /// Waves are going out.
    Progressing,
    /// Held by an operator, or by a failed wave with `onFailure: pause`.
    Paused,
    /// Every wave reached and healthy.
    Complete,
    /// A wave failed; every device was given the last good generation.
    RolledBack,
    /// An operator stopped it; every device was given the last good generation.
    Aborted,
}

impl RolloutState {
    pub const ALL: [RolloutState; 5] = [
        RolloutState::Progressing,
        RolloutState::Paused,
        RolloutState::Complete,
        RolloutState::RolledBack,
        RolloutState::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Progressing => "Progressing",
            RolloutState::Paused => "Paused",
            RolloutState::Complete => "Complete",
            RolloutState::RolledBack => "RolledBack",
            RolloutState::Aborted => "Aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether the engine still acts on it.
    pub fn is_active(self) -> bool {
        matches!(self, RolloutState::Progressing | RolloutState::Paused)
    }

    /// Whether it ended without the new generation everywhere.
    pub fn is_failure(self) -> bool {
        matches!(self, RolloutState::RolledBack | RolloutState::Aborted)
    }
}

/// `GET /api/v1/deployments/{name}/rollout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub name: String,
    /// The generation rolling out.
    pub generation: u64,
    /// The last good generation, which devices not yet reached run (none:
    /// a new deployment).
    pub from_generation: Option<u64>,
    pub state: RolloutState,
    /// Why it is paused, rolled back or aborted.
    pub reason: Option<String>,
    /// Index of the newest wave started.
    pub current_wave: usize,
    pub waves: Vec<WaveStatus>,
    pub started_ms: u64,
    pub updated_ms: u64,
    /// The newest state changes, oldest first.
    pub events: Vec<RolloutEvent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaveStatus {
    pub name: String,
    pub targeted: u64,
    /// Reported the new generation applied.
    pub updated: u64,
    pub healthy: u64,
    pub failed: u64,
    /// Offline and not yet decided.
    pub offline: u64,
    pub started_ms: Option<u64>,
    pub completed_ms: Option<u64>,
    /// A few failed devices and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutEvent {
    pub at_ms: u64,
    pub message: String,
}

/// `POST /api/v1/deployments/{name}/rollback` (`toGeneration` optional:
/// the generation before the current one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_generation: Option<u64>,
}

/// `POST /api/v1/devices/{id}/commands`: what to do, and how long the
/// command may wait for an offline device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandRequest {
    pub action: edgefleet_protocol::CommandAction,
    /// How long the command stays valid (default 10m, at most 24h). A device
    /// that comes back later never runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<edgefleet_protocol::Duration>,
}

/// `POST /api/v1/commands`: one command to every device the selector matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BulkCommandRequest {
    /// Kubernetes label-selector semantics; it must name at least one label.
    pub selector: edgefleet_protocol::LabelSelector,
    pub action: edgefleet_protocol::CommandAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<edgefleet_protocol::Duration>,
}

/// Where a command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum CommandState {
    /// Waiting for the device to be online.
    Queued,
    /// Sent to the device, no result yet (sent again each time it reconnects,
    /// until it expires; it runs once).
    Delivered,
    /// The device ran it.
    Done,
    /// The device tried and failed; `message` says why.
    Failed,
    /// No result before it expired; `message` says whether it was delivered.
    Expired,
}

impl CommandState {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::Queued => "queued",
            CommandState::Delivered => "delivered",
            CommandState::Done => "done",
            CommandState::Failed => "failed",
            CommandState::Expired => "expired",
        }
    }

    /// Done, failed or expired: it will not change again (a late result can
    /// still turn `expired` into `done` or `failed`).
    pub fn is_final(self) -> bool {
        !matches!(self, CommandState::Queued | CommandState::Delivered)
    }
}

impl std::str::FromStr for CommandState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "queued" => CommandState::Queued,
            "delivered" => CommandState::Delivered,
            "done" => CommandState::Done,
            "failed" => CommandState::Failed,
            "expired" => CommandState::Expired,
            other => return Err(format!("unknown command state {other:?}")),
        })
    }
}

/// A command and where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandRecord {
    pub id: String,
    pub device_id: String,
    pub action: edgefleet_protocol::CommandAction,
    pub state: CommandState,
    /// The device's message (done, failed), or why it expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub created_ms: u64,
    pub expires_ms: u64,
    /// When it was last sent to the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_ms: Option<u64>,
    /// How many times it was sent (a device runs it once).
    pub deliveries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
}

/// The answer to a bulk command: one command per matched device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkCommandResponse {
    pub items: Vec<CommandRecord>,
    /// Matched devices that got no command: they already have the most open
    /// commands a device may have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}
