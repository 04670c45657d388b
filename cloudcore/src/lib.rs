//! `cloudcore`, the edgefleet hub: holds what every device should run,
//! signs it and publishes it over MQTT, and takes in what devices report.
//!
//! Parts: [`config`], [`store`] (SQLite), [`keys`] (hub key, tokens),
//! [`broker`] (embedded rumqttd), [`mqtt`] (the hub's own MQTT session),
//! [`publisher`] (desired-state sync), [`rollout`] (staged rollouts), [`sources`] (Git sources),
//! [`ingest`] (status, events, presence, heartbeats), [`api`] (REST, its
//! types in `edgefleet-api`), [`backup`] (backups and restores), [`serve`]
//! (wiring and shutdown). `cloudcore demo` and `edgectl` are binaries of
//! this package, not part of the library.

pub mod api;
pub mod backup;
pub mod broker;
pub mod commands;
pub mod config;
pub mod desired;
pub mod dynsec;
pub mod ingest;
pub mod keys;
pub mod logs;
pub mod metrics;
pub mod mqtt;
pub mod publisher;
pub mod registry;
pub mod rollout;
pub mod serve;
pub mod sources;
pub mod store;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod ui;

pub use edgefleet_daemon::{error_chain, exit};
