//! What the two edgefleet daemons, `cloudcore` and `edge-agent`, share as
//! processes rather than as protocol: the one-process-per-directory lock
//! ([`lock`]) and free space with its reserve ([`disk`]).
//!
//! Nothing here knows about MQTT messages or the store's contents; the wire
//! contract is `edgefleet-protocol`.

pub mod disk;
pub mod lock;
