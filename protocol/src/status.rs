//! Status reports: what a device has applied and how each workload is doing.
//! Sync state (did we apply what was asked) and health (is it working) are
//! kept apart, as Argo CD does.

use serde::{Deserialize, Serialize};

use crate::desired::Version;
use crate::limits::{MAX_MESSAGE_BYTES, MAX_WORKLOADS};
use crate::name::DeviceId;
use crate::sign::{Message, MessageKind};
use crate::validate::ValidationErrors;

/// Whether the device applied the workload as desired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "PascalCase")]
pub enum SyncState {
    /// Applied exactly as in the applied revision.
    Synced,
    /// Being applied, or waiting for a dependency (a model download).
    Syncing,
    /// Applying failed; `message` says why. Retried with backoff.
    Failed,
    /// The device went back to this workload's previous generation by
    /// itself (`deviceRollback`): the new one was not Healthy in time.
    RolledBack,
}

/// Whether the workload works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "PascalCase")]
pub enum Health {
    Healthy,
    Progressing,
    Degraded,
    Unknown,
}

/// The one text form of [`SyncState`] and [`Health`], as on the wire: what
/// the hub and the agent store and show.
macro_rules! text_enum {
    ($t:ident { $($v:ident),+ $(,)? }) => {
        impl $t {
            pub const ALL: &'static [$t] = &[$($t::$v),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($t::$v => stringify!($v),)+
                }
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $t {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, UnknownState> {
                $t::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| UnknownState {
                        what: stringify!($t),
                        value: s.to_owned(),
                    })
            }
        }
    };
}

text_enum!(SyncState {
    Synced,
    Syncing,
    Failed,
    RolledBack
});
text_enum!(Health {
    Healthy,
    Progressing,
    Degraded,
    Unknown
});

/// A stored or received text that names no [`SyncState`] or [`Health`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a {what}")]
pub struct UnknownState {
    pub what: &'static str,
    pub value: String,
}

/// A workload's sync state and health from their names (as stored).
pub fn parse_states(sync: &str, health: &str) -> Result<(SyncState, Health), UnknownState> {
    Ok((sync.parse()?, health.parse()?))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadStatus {
    /// The workload id, `<deployment>.<workload>`.
    pub name: String,
    pub sync: SyncState,
    pub health: Health,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusReport {
    pub device_id: DeviceId,
    /// The desired version the workloads below describe; `None` before the
    /// device ever received desired state.
    pub applied: Option<Version>,
    pub reported_at_ms: u64,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_WORKLOADS>")]
    pub workloads: Vec<WorkloadStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub agent_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k3s_version: Option<String>,
    /// The last desired document this device refused, until it accepts a
    /// newer one: why the device is not at the hub's revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_rejected: Option<DesiredRejection>,
    /// The agent release the desired state names failed its trial on this
    /// device (it was reverted); the device runs its previous agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_failed: Option<UpdateFailure>,
    /// This report could not be stored on the device (its disk is full) and
    /// was sent from memory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unstored: bool,
    /// The hub key this device pins (its id): how the hub learns that a
    /// rotated key has reached it ([`crate::rotation`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_key_id: Option<String>,
}

/// A desired document the device refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DesiredRejection {
    /// The refused document's version, when its hub signature held and the
    /// version could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    /// The rejection reason label (`too_large`, `malformed`, `stale_revision`…).
    pub reason: String,
    /// The verifier's message, at most 1 KiB.
    pub message: String,
    pub at_ms: u64,
}

/// An agent update that did not commit: which release, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateFailure {
    pub version: String,
    /// At most 1 KiB.
    pub reason: String,
    pub at_ms: u64,
}

/// Cuts a free-text message to [`MAX_MESSAGE_BYTES`] on a char boundary.
pub fn truncate_message(s: &str) -> String {
    if s.len() <= MAX_MESSAGE_BYTES {
        return s.to_owned();
    }
    format!("{}...", &s[..s.floor_char_boundary(MAX_MESSAGE_BYTES - 3)])
}

impl Message for StatusReport {
    const KIND: MessageKind = MessageKind::Status;

    fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        let long = |m: &Option<String>| m.as_ref().is_some_and(|m| m.len() > MAX_MESSAGE_BYTES);
        if let Some(r) = &self.desired_rejected
            && (r.message.len() > MAX_MESSAGE_BYTES || r.reason.len() > 64)
        {
            errs.push(
                "desiredRejected",
                format_args!(
                    "reason longer than 64 or message longer than {MAX_MESSAGE_BYTES} bytes"
                ),
            );
        }
        if let Some(u) = &self.update_failed
            && (u.reason.len() > MAX_MESSAGE_BYTES || u.version.len() > 64)
        {
            errs.push(
                "updateFailed",
                format_args!(
                    "version longer than 64 or reason longer than {MAX_MESSAGE_BYTES} bytes"
                ),
            );
        }
        if long(&self.message) {
            errs.push(
                "message",
                format_args!("longer than {MAX_MESSAGE_BYTES} bytes"),
            );
        }
        for (i, w) in self.workloads.iter().enumerate() {
            if long(&w.message) {
                errs.push(
                    format!("workloads[{i}].message"),
                    format_args!("longer than {MAX_MESSAGE_BYTES} bytes"),
                );
            }
        }
        errs.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_match_the_wire_and_parse_back() {
        for s in SyncState::ALL {
            let wire = serde_json::to_value(s).unwrap();
            assert_eq!(wire, s.as_str());
            assert_eq!(s.as_str().parse::<SyncState>().unwrap(), *s);
        }
        for h in Health::ALL {
            assert_eq!(serde_json::to_value(h).unwrap(), h.as_str());
            assert_eq!(h.to_string().parse::<Health>().unwrap(), *h);
        }
        let err = "Sinking".parse::<SyncState>().unwrap_err();
        assert_eq!(err.to_string(), "\"Sinking\" is not a SyncState");
    }
}
