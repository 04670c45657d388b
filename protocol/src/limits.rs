//! Size limits, enforced on decode before the payload is parsed. Brokers must
//! be configured to carry at least [`MAX_PAYLOAD_BYTES`].

/// Largest MQTT payload either side sends or accepts (a signed desired state
/// with many manifests is the biggest message).
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;
/// Workloads in one Deployment, and in one device's desired state.
pub const MAX_WORKLOADS: usize = 64;
/// Kubernetes objects in one `kubernetes` workload.
pub const MAX_MANIFESTS: usize = 64;
/// One Kubernetes object, serialised as compact JSON.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;
/// An event's `payload`, serialised as compact JSON.
pub const MAX_EVENT_PAYLOAD_BYTES: usize = 64 * 1024;
/// Labels on a device or in a selector.
pub const MAX_LABELS: usize = 64;
/// Free-text messages in status reports are cut to this many bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Event ids and command ids.
pub const MAX_ID_LEN: usize = 64;
/// Event ids in one acknowledgement from the hub.
pub const MAX_ACK_IDS: usize = 1024;
