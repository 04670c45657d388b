//! `edge-agent`: the edgefleet device daemon.
//!
//! It keeps running the last verified desired state with or without an
//! uplink: the store ([`store`]) is the source of truth, the reconciler
//! ([`reconcile`]) converges K3s to it from SQLite alone, the MQTT session
//! ([`session`]) only feeds it newly verified documents and drains the
//! outbox ([`outbox`]).

pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod db;
pub mod desired;
pub mod disk;
pub mod http;
pub mod identity;
pub mod inference;
pub mod metrics;
pub mod outbox;
pub mod reconcile;
pub mod runtime;
pub mod session;
pub mod shared;
pub mod store;
pub mod telemetry;
pub mod update;
pub mod worklog;

pub use edgefleet_daemon::{error_chain, exit};
