//! Why a workload is not in sync, kept typed until the retry decision, and
//! the retry state of each workload: a workload that fails waits on its own
//! backoff (transient errors) or until the drift interval (permanent ones),
//! while the others go on at their own pace. One failing model no longer
//! slows every other workload's health polling.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use edgefleet_daemon::backoff::Backoff;
use edgefleet_protocol::{Health, SyncState, WorkloadStatus};

use super::status;
use crate::runtime::kube::{KubeError, ObjectKey};

/// Why a workload did not sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The K3s API is not configured or does not answer. Not a workload's
    /// own failure: every Kubernetes workload is tried again as soon as the
    /// API answers (probed every 250 ms), with no backoff of its own.
    #[error("{0}")]
    KubeUnavailable(String),
    #[error("{key}")]
    Object {
        key: ObjectKey,
        #[source]
        source: KubeError,
    },
    #[error("{key}: prune")]
    Prune {
        key: ObjectKey,
        #[source]
        source: KubeError,
    },
    #[error("{key}: pruned, but cannot forget it")]
    Forget {
        key: ObjectKey,
        #[source]
        source: crate::store::StoreError,
    },
    #[error("manifest without apiVersion, kind or metadata.name")]
    BadManifest,
    #[error("workload has none of `kubernetes`, `inference` or `agent`")]
    NoSpec,
    #[error(transparent)]
    Inference(#[from] crate::inference::runtime::SyncError),
    #[error(transparent)]
    Update(#[from] crate::update::UpdateError),
}

impl SyncError {
    /// True when trying again soon may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::KubeUnavailable(_) | Self::Prune { .. } | Self::Forget { .. } => true,
            Self::Object { source, .. } => source.is_transient(),
            Self::BadManifest | Self::NoSpec => false,
            Self::Inference(e) => e.is_transient(),
            Self::Update(e) => e.is_transient(),
        }
    }
}

/// The outcome of syncing one workload.
#[derive(Debug)]
pub struct Synced {
    pub status: WorkloadStatus,
    pub errors: Vec<SyncError>,
}

impl Synced {
    pub fn ok(status: WorkloadStatus) -> Self {
        Self {
            status,
            errors: Vec::new(),
        }
    }

    /// Failed with `errors`; the status message lists them all.
    pub fn failed(workload: &str, health: Health, errors: Vec<SyncError>) -> Self {
        let message: Vec<String> = errors.iter().map(|e| crate::error_chain(e)).collect();
        Self {
            status: status(
                workload,
                SyncState::Failed,
                health,
                Some(&message.join("; ")),
            ),
            errors,
        }
    }

    /// Failed only because the K3s API is not there.
    pub fn waits_for_kube(&self) -> bool {
        !self.errors.is_empty()
            && self
                .errors
                .iter()
                .all(|e| matches!(e, SyncError::KubeUnavailable(_)))
    }
}

/// A fingerprint of a workload's spec: a changed spec is tried at once,
/// whatever its retry state.
pub fn fingerprint(workload: &impl serde::Serialize) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(workload)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

#[derive(Debug)]
struct Waiting {
    spec: u64,
    backoff: Backoff,
    due: Instant,
    status: WorkloadStatus,
}

/// Retry state per workload.
#[derive(Debug)]
pub struct Retries {
    min: Duration,
    max: Duration,
    /// How long a permanent failure waits before it is tried again (the
    /// drift interval: something outside the spec may have changed).
    permanent: Duration,
    waiting: HashMap<String, Waiting>,
}

impl Retries {
    pub fn new(min: Duration, max: Duration, permanent: Duration) -> Self {
        Self {
            min,
            max,
            permanent,
            waiting: HashMap::new(),
        }
    }

    /// Forgets every wait: each workload is synced on the next pass (a
    /// resync command).
    pub fn clear(&mut self) {
        self.waiting.clear();
    }

    /// The status to keep reporting while `workload` waits for its retry;
    /// `None` when it should be synced now.
    pub fn waiting(&self, workload: &str, spec: u64, now: Instant) -> Option<&WorkloadStatus> {
        let w = self.waiting.get(workload)?;
        (w.spec == spec && now < w.due).then_some(&w.status)
    }

    /// Records a failure; returns how long `workload` waits.
    pub fn failed(&mut self, workload: &str, spec: u64, synced: &Synced, now: Instant) -> Duration {
        let transient = synced.errors.iter().any(SyncError::is_transient);
        let w = self
            .waiting
            .entry(workload.to_owned())
            .or_insert_with(|| Waiting {
                spec,
                backoff: Backoff::new(self.min, self.max).with_jitter(),
                due: now,
                status: synced.status.clone(),
            });
        if w.spec != spec {
            w.spec = spec;
            w.backoff.reset();
        }
        let wait = if transient {
            w.backoff.next_delay()
        } else {
            self.permanent
        };
        w.due = now + wait;
        w.status = synced.status.clone();
        wait
    }

    pub fn succeeded(&mut self, workload: &str) {
        self.waiting.remove(workload);
    }

    /// Forgets workloads no longer desired.
    pub fn retain(&mut self, desired: &BTreeSet<&str>) {
        self.waiting.retain(|w, _| desired.contains(w.as_str()));
    }

    /// When the next waiting workload is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting.values().map(|w| w.due).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(transient: bool) -> Synced {
        let e = if transient {
            SyncError::Prune {
                key: ObjectKey {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    namespace: None,
                    name: "c".into(),
                },
                source: KubeError::Timeout {
                    op: "delete".into(),
                    after: Duration::from_secs(1),
                },
            }
        } else {
            SyncError::BadManifest
        };
        Synced::failed("d.w", Health::Unknown, vec![e])
    }

    #[test]
    fn a_failing_workload_waits_alone_and_a_new_spec_goes_at_once() {
        let (min, max, perm) = (
            Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_secs(300),
        );
        let mut r = Retries::new(min, max, perm);
        let t0 = Instant::now();
        let wait = r.failed("d.bad", 1, &failed(true), t0);
        assert!(wait <= min && wait >= min / 2, "{wait:?}");
        assert!(r.waiting("d.bad", 1, t0).is_some(), "waits");
        assert!(r.waiting("d.good", 1, t0).is_none(), "others do not");
        assert!(
            r.waiting("d.bad", 2, t0).is_none(),
            "a changed spec goes now"
        );
        assert!(
            r.waiting("d.bad", 1, t0 + min).is_none(),
            "due after its wait"
        );
        // Transient failures back off; permanent ones wait the long interval.
        let second = r.failed("d.bad", 1, &failed(true), t0);
        assert!(second >= min, "{second:?}");
        assert_eq!(r.failed("d.perm", 1, &failed(false), t0), perm);
        assert_eq!(r.next_due(), Some(t0 + second.min(perm)));
        r.succeeded("d.bad");
        r.retain(&BTreeSet::new());
        assert_eq!(r.next_due(), None);
    }
}
