//! `edge-agent status`: what the local store says, read-only, safe while the
//! daemon runs (WAL readers never block the writer).

use std::fmt::Write as _;

use serde_json::json;

use crate::config::Config;
use crate::store::{Store, StoreError};

/// Everything `status` shows.
#[derive(Debug)]
pub struct Snapshot {
    pub device_id: String,
    pub version: Option<edgefleet_protocol::Version>,
    pub received_at_ms: Option<u64>,
    pub last_reconcile_ms: Option<u64>,
    pub workloads: Vec<crate::store::StoredStatus>,
    pub outbox: crate::outbox::Stats,
    /// The supervisor's release state (`None`: none written, the packaged
    /// binary runs) and the last release reverted here.
    pub releases: Option<crate::update::State>,
    pub failed: Option<crate::update::Failed>,
}

pub fn snapshot(cfg: &Config) -> Result<Snapshot, StoreError> {
    let store = Store::open_read_only(&cfg.db_path())?;
    let layout = crate::update::Layout::new(&cfg.state_dir);
    Ok(Snapshot {
        device_id: cfg.device_id.clone(),
        version: store.desired_version()?,
        received_at_ms: store.desired_received_at_ms()?,
        last_reconcile_ms: store
            .kv_get("last_reconcile_ms")?
            .and_then(|v| v.parse().ok()),
        workloads: store.statuses()?,
        outbox: store.outbox_stats()?,
        releases: layout.state().ok().filter(|s| *s != Default::default()),
        failed: layout.failed(),
    })
}

fn ago(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(ms) => {
            let secs = edgefleet_protocol::now_ms().saturating_sub(ms) / 1000;
            format!("{secs}s ago")
        }
    }
}

impl Snapshot {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "deviceId": self.device_id,
            "desired": self.version,
            "receivedAtMs": self.received_at_ms,
            "lastReconcileAtMs": self.last_reconcile_ms,
            "workloads": self.workloads.iter().map(|w| json!({
                "name": w.name, "sync": w.sync.as_str(), "health": w.health.as_str(),
                "message": w.message,
            })).collect::<Vec<_>>(),
            "outbox": {
                "depth": self.outbox.queued + self.outbox.unacked,
                "queued": self.outbox.queued,
                "sentUnacknowledged": self.outbox.unacked,
                "bytes": self.outbox.bytes,
                "acknowledged": self.outbox.acked,
                "dropped": self.outbox.dropped,
                "expired": self.outbox.expired,
            },
            "agentReleases": self.releases,
            "updateFailed": self.failed.as_ref().map(|f| json!({
                "version": f.release.version, "sha256": f.release.sha256,
                "reason": f.reason, "atMs": f.at_ms,
            })),
        })
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "device:     {}", self.device_id);
        match self.version {
            Some(v) => {
                let _ = writeln!(
                    s,
                    "desired:    revision {} (hub epoch {}), received {}",
                    v.revision,
                    v.hub_epoch,
                    ago(self.received_at_ms)
                );
            }
            None => {
                let _ = writeln!(s, "desired:    none received yet");
            }
        }
        let _ = writeln!(s, "last sync:  {}", ago(self.last_reconcile_ms));
        let o = &self.outbox;
        let _ = writeln!(
            s,
            "outbox:     {} queued, {} sent and awaiting the hub's acknowledgement ({} bytes)",
            o.queued, o.unacked, o.bytes
        );
        let _ = writeln!(
            s,
            "            {} acknowledged by the hub, {} dropped (full), {} expired (too old)",
            o.acked, o.dropped, o.expired
        );
        let release = |r: &Option<crate::update::Release>| match r {
            Some(r) => format!(
                "{} (sha256 {})",
                r.version,
                &r.sha256[..r.sha256.len().min(12)]
            ),
            None => "the packaged binary".to_owned(),
        };
        if let Some(st) = &self.releases {
            let _ = writeln!(s, "agent:      {}", release(&st.current));
            if st.previous.is_some() {
                let _ = writeln!(s, "            previous: {}", release(&st.previous));
            }
            if let Some(t) = &st.trial {
                let _ = writeln!(
                    s,
                    "            on trial: {} (start {})",
                    release(&Some(t.release.clone())),
                    t.attempts
                );
            }
        }
        if let Some(f) = &self.failed {
            let _ = writeln!(
                s,
                "            reverted: {} {}: {}",
                f.release.version,
                ago(Some(f.at_ms)),
                f.reason
            );
        }
        let _ = writeln!(s, "workloads:  {}", self.workloads.len());
        if !self.workloads.is_empty() {
            let width = self
                .workloads
                .iter()
                .map(|w| w.name.len())
                .max()
                .unwrap_or(4)
                .max(4);
            let _ = writeln!(
                s,
                "  {:width$}  {:8} {:11} MESSAGE",
                "NAME", "SYNC", "HEALTH"
            );
            for w in &self.workloads {
                let _ = writeln!(
                    s,
                    "  {:width$}  {:8} {:11} {}",
                    w.name,
                    w.sync.as_str(),
                    w.health.as_str(),
                    w.message.as_deref().unwrap_or("")
                );
            }
        }
        s
    }
}
