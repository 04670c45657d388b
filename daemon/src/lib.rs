//! What the two edgefleet daemons, `cloudcore` and `edge-agent`, share as
//! processes rather than as protocol: today the one-process-per-directory
//! lock ([`lock`]).
//!
//! Nothing here knows about MQTT messages or the store's contents; the wire
//! contract is `edgefleet-protocol`.

pub mod lock;
