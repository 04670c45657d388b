//! `cloudcore`, the edgefleet hub: holds what every device should run,
//! signs it and publishes it over MQTT, and takes in what devices report.
//!
//! Parts: [`config`], [`store`] (SQLite), [`keys`] (hub key, tokens),
//! [`broker`] (embedded rumqttd), [`mqtt`] (the hub's own MQTT session),
//! [`publisher`] (desired-state sync), [`ingest`] (status, events, presence,
//! heartbeats), [`api`] (REST), [`serve`] (wiring and shutdown); [`demo`]
//! is the quick start (`cloudcore demo`).

pub mod api;
pub mod broker;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod desired;
pub mod exit;
pub mod ingest;
pub mod keys;
pub mod metrics;
pub mod mqtt;
pub mod publisher;
pub mod registry;
pub mod serve;
pub mod store;
