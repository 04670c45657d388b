//! Desired state: everything one device should run, signed by the hub and
//! published retained on `…/{device}/desired`. Each document replaces the
//! previous one whole; devices accept only strictly newer [`Version`]s.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::deployment::MAX_WORKLOAD_ID_LEN;
use crate::limits::MAX_WORKLOADS;
use crate::name::{DeviceId, check_dns_label};
use crate::sign::{Message, MessageKind};
use crate::validate::ValidationErrors;
use crate::workload::Workload;

/// Orders desired documents: first by hub epoch (a new epoch starts when a
/// hub's store is created anew), then by revision within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Version {
    pub hub_epoch: u64,
    pub revision: u64,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hub_epoch, self.revision)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DesiredState {
    pub device_id: DeviceId,
    /// Bumped by one whenever this device's document changes.
    pub revision: u64,
    /// Identifies the hub store that issued the revision (its creation time
    /// in Unix milliseconds), so a rebuilt hub is never mistaken for an old one.
    pub hub_epoch: u64,
    pub issued_at_ms: u64,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_WORKLOADS>")]
    pub workloads: Vec<DesiredWorkload>,
}

/// A workload as a device sees it: `name` is the device-unique workload id
/// `<deployment>.<workload>`. (No `deny_unknown_fields` here: serde does not
/// support it with `flatten`; the flattened [`Workload`] denies them instead.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredWorkload {
    pub deployment: String,
    /// The Deployment's generation this workload came from.
    pub generation: u64,
    /// Go back to the previous generation by itself when this one is not
    /// Healthy in time (the rollout's `deviceRollback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_rollback: Option<DeviceRollback>,
    #[serde(flatten)]
    pub workload: Workload,
}

/// A workload's on-device rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceRollback {
    /// Seconds the new generation has to become Healthy.
    pub health_timeout_secs: u64,
}

/// Why a device would refuse a desired document for its size: the limits a
/// hub checks before it issues one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TooLarge {
    #[error("{count} workloads; the limit is {max}")]
    Workloads { count: usize, max: usize },
    #[error("a desired state of {bytes} bytes signed; the limit is {max}")]
    Bytes { bytes: usize, max: usize },
}

impl DesiredState {
    /// The size of this document as a signed envelope, if a device would
    /// accept that many workloads and bytes. (Per-workload limits, on
    /// manifests, are [`Message::validate`]'s.)
    pub fn check_size(&self) -> Result<usize, TooLarge> {
        if self.workloads.len() > MAX_WORKLOADS {
            return Err(TooLarge::Workloads {
                count: self.workloads.len(),
                max: MAX_WORKLOADS,
            });
        }
        let payload = crate::encrypt::sealed_payload_len(self);
        let bytes = crate::sign::sealed_len(MessageKind::Desired, payload);
        let max = MessageKind::Desired.max_bytes();
        if bytes > max {
            return Err(TooLarge::Bytes { bytes, max });
        }
        Ok(bytes)
    }

    pub fn version(&self) -> Version {
        Version {
            hub_epoch: self.hub_epoch,
            revision: self.revision,
        }
    }
}

impl Message for DesiredState {
    const KIND: MessageKind = MessageKind::Desired;
    /// Manifests and model references: only the device reads them. The
    /// device id, epoch, revision and issue time stay readable: the device
    /// checks them before it decrypts, and the topic already names the
    /// device.
    const PRIVATE: &'static [&'static str] = &["workloads"];

    fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    fn version(&self) -> Option<Version> {
        Some(DesiredState::version(self))
    }

    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        if self.revision == 0 {
            errs.push("revision", "starts at 1");
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, w) in self.workloads.iter().enumerate() {
            let p = format!("workloads[{i}]");
            let id = &w.workload.name;
            let prefix_ok = id
                .strip_prefix(w.deployment.as_str())
                .and_then(|r| r.strip_prefix('.'))
                .is_some_and(|short| check_dns_label(short, MAX_WORKLOAD_ID_LEN).is_ok());
            if check_dns_label(&w.deployment, MAX_WORKLOAD_ID_LEN).is_err()
                || !prefix_ok
                || id.len() > MAX_WORKLOAD_ID_LEN
            {
                errs.push(
                    format!("{p}.name"),
                    format_args!(
                        "{id:?} is not <deployment>.<workload> for deployment {:?}",
                        w.deployment
                    ),
                );
            }
            if !seen.insert(id.as_str()) {
                errs.push(
                    format!("{p}.name"),
                    format_args!("duplicate workload {id:?}"),
                );
            }
            w.workload.validate_spec_into(&p, &mut errs);
        }
        errs.into_result()
    }
}
