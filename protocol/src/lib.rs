//! The one wire contract between `cloudcore` and `edge-agent`.
//!
//! Everything that crosses MQTT or the enrollment API is declared here, once:
//! topic names ([`topic`]), message types ([`desired`], [`status`], [`event`],
//! [`ack`], [`presence`], [`heartbeat`], [`command`], [`enroll`]), the operator-facing
//! Deployment manifest ([`deployment`], [`selector`], [`workload`]), ed25519
//! signing with one verification function ([`sign`]) and size limits
//! ([`limits`]).
//!
//! This crate must never do I/O or depend on a runtime: both sides, tests and
//! third-party tools link it.

pub mod ack;
pub mod command;
pub mod deployment;
pub mod desired;
pub mod duration;
pub mod encrypt;
pub mod enroll;
pub mod event;
pub mod heartbeat;
pub mod limits;
pub mod name;
pub mod presence;
pub mod rollout;
pub mod rotation;
pub mod selector;
pub mod sign;
pub mod status;
pub mod topic;
pub mod validate;
pub mod workload;

mod bounded;

pub use ack::Ack;
pub use command::{
    COMMAND_RESULT_KIND, Command, CommandAction, CommandResult, LOG_CHUNK_KIND, LogChunk,
};
pub use deployment::Deployment;
pub use desired::{DesiredState, DesiredWorkload, TooLarge, Version};
pub use duration::Duration;
pub use enroll::{BrokerCredentials, EnrollRequest, EnrollResponse};
pub use event::Event;
pub use heartbeat::Heartbeat;
pub use name::DeviceId;
pub use presence::{Presence, PresenceState};
pub use rollout::RolloutSpec;
pub use selector::LabelSelector;
pub use sign::{Expect, KeyId, Message, MessageKind, PublicKey, Rejection, Signer, open, open_for};
pub use status::{
    DesiredRejection, Health, StatusReport, SyncState, UpdateFailure, WorkloadStatus,
};
pub use topic::{Channel, Topic, TopicError};
pub use validate::{ValidationError, ValidationErrors};
pub use workload::{
    AgentArtifact, AgentWorkload, InferenceWorkload, KubernetesWorkload, Workload, WorkloadSpec,
};

/// Milliseconds since the Unix epoch, the one time format on the wire.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
