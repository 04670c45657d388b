//! `edge-agent`: the edgefleet device daemon.
//!
//! It keeps running the last verified desired state with or without an
//! uplink: the store ([`store`]) is the source of truth, the reconciler
//! ([`reconcile`]) converges K3s to it from SQLite alone, the MQTT session
//! ([`session`]) only feeds it newly verified documents and drains the
//! outbox ([`outbox`]).

pub mod cli;
pub mod config;
pub mod daemon;
pub mod db;
pub mod desired;
pub mod disk;
pub mod exit;
pub mod http;
pub mod identity;
pub mod inference;
pub mod metrics;
pub mod outbox;
pub mod reconcile;
pub mod runtime;
pub mod session;
pub mod store;
pub mod telemetry;

/// An error and its sources, `outer: inner: root`, for one log line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let msg = inner.to_string();
        if !s.ends_with(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = inner.source();
    }
    s
}
