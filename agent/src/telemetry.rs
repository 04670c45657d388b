//! Heartbeats: device metrics from sysinfo (CPU, memory, disk of the state
//! directory, SoC temperature where exposed, uptime), the agent's own RSS,
//! versions and outbox depth/drops. Sent QoS 0, never through the outbox: a
//! lost heartbeat is replaced by the next one.
//!
//! Keeps one small `System` between samples (CPU usage is a difference of
//! two refreshes) and nothing else.

use std::path::Path;
use std::sync::{Arc, Mutex};

use edgefleet_protocol::Heartbeat;

use crate::shared::Shared;

/// The agent version reported everywhere.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Samples device metrics; cheap to keep between heartbeats.
#[derive(Debug, Clone)]
pub struct Sampler {
    system: Arc<Mutex<Option<sysinfo::System>>>,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    pub fn new() -> Self {
        Self {
            system: Arc::new(Mutex::new(sysinfo::System::new().ok())),
        }
    }

    /// Builds a heartbeat (sysinfo reads /proc, so it runs off the runtime).
    pub async fn heartbeat(&self, shared: &Arc<Shared>) -> Heartbeat {
        let system = self.system.clone();
        let state_dir = shared.cfg.state_dir.clone();
        let sample = tokio::task::spawn_blocking(move || {
            let mut guard = system.lock().unwrap_or_else(|p| p.into_inner());
            sample(guard.as_mut(), &state_dir)
        })
        .await
        .unwrap_or_default();
        let depth = shared
            .db
            .call(|s| (s.outbox_depth(), s.outbox_dropped()))
            .await;
        let ((outbox_depth, _), dropped) = depth;
        Heartbeat {
            device_id: shared.device.clone(),
            at_ms: edgefleet_protocol::now_ms(),
            uptime_s: sample.uptime_s,
            cpu_percent: sample.cpu_percent,
            mem_used_bytes: sample.mem_used,
            mem_total_bytes: sample.mem_total,
            disk_used_bytes: sample.disk_used,
            disk_total_bytes: sample.disk_total,
            disk_pressure: shared.disk.under_pressure(),
            temperature_c: sample.temperature_c,
            agent_rss_bytes: rss_bytes().unwrap_or(0),
            agent_version: crate::update::running().version.clone(),
            k3s_version: shared.k3s_version(),
            outbox_depth,
            outbox_dropped: dropped.unwrap_or(0),
        }
    }
}

#[derive(Debug, Default)]
struct Sample {
    uptime_s: u64,
    cpu_percent: f32,
    mem_used: u64,
    mem_total: u64,
    disk_used: u64,
    disk_total: u64,
    temperature_c: Option<f32>,
}

fn sample(system: Option<&mut sysinfo::System>, state_dir: &Path) -> Sample {
    let mut s = Sample {
        uptime_s: sysinfo::System::uptime().unwrap_or(0),
        ..Default::default()
    };
    if let Some(sys) = system {
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        s.cpu_percent = sys.global_cpu_usage();
        s.mem_used = sys.used_memory();
        s.mem_total = sys.total_memory();
    }
    if let Some((used, total)) = disk_usage(state_dir) {
        s.disk_used = used;
        s.disk_total = total;
    }
    if let Ok(components) = sysinfo::Components::new_with_refreshed_list() {
        s.temperature_c = components
            .iter()
            .filter_map(|c| c.temperature())
            .filter(|t| t.is_finite())
            .reduce(f32::max);
    }
    s
}

/// Used and total bytes of the filesystem holding `path` (statvfs: what
/// an unprivileged writer may still use counts as free).
pub fn disk_usage(path: &Path) -> Option<(u64, u64)> {
    let s = edgefleet_daemon::disk::space(path).ok()?;
    Some((s.total.saturating_sub(s.available), s.total))
}

/// Available bytes on the filesystem holding `path`.
pub fn disk_available(path: &Path) -> Option<u64> {
    edgefleet_daemon::disk::space(path)
        .ok()
        .map(|s| s.available)
}

/// This process's resident set size, from /proc (Linux).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_something_sane() {
        let mut sys = sysinfo::System::new().ok();
        let s = sample(sys.as_mut(), Path::new("/"));
        assert!(s.mem_total >= s.mem_used);
        assert!(s.disk_total >= s.disk_used);
        assert!(rss_bytes().unwrap() > 0);
    }
}
