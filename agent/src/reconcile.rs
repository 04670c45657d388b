//! The reconciler: one loop that converges the device to the stored desired
//! state. Woken by a newly accepted document, by a connect (to report), and
//! periodically (drift check, retries with capped backoff, faster polling
//! while a workload is still progressing so K3s coming back or a rollout
//! finishing is noticed quickly).
//!
//! It reads only the store, never the network link to the hub: after an
//! offline reboot the first pass runs immediately from SQLite.
//!
//! For `kubernetes` workloads each object is applied only when needed: when
//! it is absent, its uid differs from the recorded one (K3s was reset), or
//! the apply hash changed. An agent restart with unchanged desired state
//! therefore sends zero mutating requests. Objects recorded in the inventory
//! but no longer desired are deleted — only if they carry our label.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgefleet_protocol::status::truncate_message;
use edgefleet_protocol::{
    DesiredState, Health, KubernetesWorkload, StatusReport, SyncState, WorkloadSpec, WorkloadStatus,
};
use tokio_util::sync::CancellationToken;

use crate::daemon::Shared;
use crate::inference::runtime::InferenceRuntime;
use crate::runtime::kube::{KubeError, KubeRuntime, LiveObject, ObjectKey, apply_hash, health_of};
use crate::store::{InventoryEntry, StoredStatus};

/// Runs passes until `cancel`.
pub async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut r = Reconciler::new(shared.clone());
    let min = Duration::from_millis(shared.cfg.reconcile.backoff_min_ms);
    let max = Duration::from_millis(shared.cfg.reconcile.backoff_max_ms);
    let drift = Duration::from_secs(shared.cfg.reconcile.drift_interval_secs);
    let poll = Duration::from_millis(shared.cfg.reconcile.progress_poll_ms).min(drift);
    let mut backoff = min;
    loop {
        let outcome = r.pass().await;
        let delay = if outcome.kube_down {
            // The local K3s API is coming up (a reboot): probe it often, so
            // stored workloads are submitted as soon as it answers. A probe
            // is one GET /version on the device itself.
            KUBE_PROBE
        } else if outcome.retry {
            let d = backoff;
            backoff = (backoff * 2).min(max);
            tracing::info!(retry_in = ?d, "reconcile pass incomplete; retrying");
            d
        } else {
            backoff = min;
            if outcome.progressing { poll } else { drift }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = shared.reconcile_wake.notified() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Retry period while the K3s API does not answer.
const KUBE_PROBE: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
struct PassOutcome {
    /// Something failed transiently; retry with backoff.
    retry: bool,
    /// Kubernetes workloads are desired and the K3s API did not answer.
    kube_down: bool,
    /// A Kubernetes workload is not healthy yet; poll its status sooner.
    progressing: bool,
}

struct Reconciler {
    shared: Arc<Shared>,
    kube: Option<KubeRuntime>,
    /// What the last status report said (to send only changes).
    reported: Option<Reported>,
    first_pass: bool,
    /// Created on the first inference workload.
    inference: Option<InferenceRuntime>,
}

/// The parts of a status report that make it worth sending again.
type Reported = (
    Option<edgefleet_protocol::Version>,
    Vec<WorkloadStatus>,
    Option<edgefleet_protocol::DesiredRejection>,
);

/// Result of syncing one workload.
struct Synced {
    status: WorkloadStatus,
    retry: bool,
}

impl Reconciler {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            kube: None,
            reported: None,
            first_pass: true,
            inference: None,
        }
    }

    async fn pass(&mut self) -> PassOutcome {
        let started = Instant::now();
        let shared = self.shared.clone();
        let m = &shared.metrics;
        m.reconcile_passes.inc();
        let mut out = PassOutcome::default();
        let loaded = shared
            .db
            .call(|s| Ok::<_, crate::store::StoreError>((s.desired()?, s.inventory()?)))
            .await;
        let (desired, inventory) = match loaded {
            Ok(v) => v,
            Err(e) => {
                m.store_errors.inc();
                tracing::error!(error = %crate::error_chain(&e), "cannot read the store");
                out.retry = true;
                return out;
            }
        };
        let needs_kube = !inventory.is_empty()
            || desired.as_ref().is_some_and(|d| {
                d.workloads
                    .iter()
                    .any(|w| matches!(w.workload.spec(), Some(WorkloadSpec::Kubernetes(_))))
            });
        shared.kube_needed.store(needs_kube, Ordering::Relaxed);
        let kube = if needs_kube {
            match self.kube().await {
                Ok(k) => Ok(k),
                Err(e) => {
                    out.retry = true;
                    out.kube_down = self.kube.is_some();
                    Err(e)
                }
            }
        } else {
            Err(String::new())
        };

        let mut statuses = Vec::new();
        let mut by_workload: BTreeMap<&str, Vec<&InventoryEntry>> = BTreeMap::new();
        for e in &inventory {
            by_workload.entry(e.workload.as_str()).or_default().push(e);
        }
        if let Some(doc) = &desired {
            for w in &doc.workloads {
                let name = w.workload.name.as_str();
                let status = match w.workload.spec() {
                    Some(WorkloadSpec::Kubernetes(k)) => match &kube {
                        Ok(kube) => {
                            let recorded = by_workload.get(name).cloned().unwrap_or_default();
                            let s = self.sync_kubernetes(kube, name, k, &recorded).await;
                            out.retry |= s.retry;
                            if s.status.health != Health::Healthy {
                                out.progressing = true;
                            }
                            s.status
                        }
                        Err(e) => status(name, SyncState::Failed, Health::Unknown, Some(e)),
                    },
                    Some(WorkloadSpec::Inference(i)) => {
                        let shared = &self.shared;
                        let rt = self
                            .inference
                            .get_or_insert_with(|| InferenceRuntime::for_agent(shared));
                        match rt.sync(name, i, Some(&shared.metrics)).await {
                            Ok(()) => status(name, SyncState::Synced, Health::Healthy, None),
                            Err(reason) => {
                                tracing::warn!(workload = name, %reason, "inference workload failed");
                                out.retry = true;
                                status(name, SyncState::Failed, Health::Unknown, Some(&reason))
                            }
                        }
                    }
                    None => status(
                        name,
                        SyncState::Failed,
                        Health::Unknown,
                        Some("workload has neither `kubernetes` nor `inference`"),
                    ),
                };
                statuses.push(status);
            }
        }
        // Prune workloads that are no longer desired at all.
        let desired_names: BTreeSet<&str> = desired
            .iter()
            .flat_map(|d| d.workloads.iter().map(|w| w.workload.name.as_str()))
            .collect();
        if let Some(rt) = &mut self.inference {
            rt.prune(&desired_names);
        }
        if let Ok(kube) = &kube {
            for (workload, entries) in &by_workload {
                if desired_names.contains(workload) {
                    continue;
                }
                for e in entries {
                    if let Err(msg) = self.prune(kube, e).await {
                        tracing::warn!(workload, error = %msg, "prune failed; will retry");
                        out.retry = true;
                    }
                }
            }
        }

        let failed = statuses.iter().any(|s| s.sync == SyncState::Failed);
        if failed {
            m.reconcile_errors.inc();
        }
        let elapsed = started.elapsed();
        m.reconcile_duration.observe(elapsed.as_secs_f64());
        if self.first_pass {
            tracing::info!(
                workloads = statuses.len(),
                elapsed_ms = elapsed.as_millis() as u64,
                "first reconcile pass done"
            );
            self.first_pass = false;
        }
        self.report(desired.as_ref(), statuses).await;
        out
    }

    /// The Kubernetes client, connected and probed.
    async fn kube(&mut self) -> Result<KubeRuntime, String> {
        let shared = self.shared.clone();
        if self.kube.is_none() {
            let timeout = Duration::from_millis(shared.cfg.kube.request_timeout_ms);
            match KubeRuntime::connect(shared.cfg.kube.kubeconfig.as_deref(), timeout).await {
                Ok(k) => self.kube = Some(k),
                Err(e) => {
                    shared.metrics.kube_reachable.set(0);
                    shared.kube_reachable.store(false, Ordering::Relaxed);
                    let msg = format!("Kubernetes API not configured: {}", crate::error_chain(&e));
                    tracing::warn!("{msg}");
                    return Err(msg);
                }
            }
        }
        let Some(kube) = self.kube.clone() else {
            return Err("Kubernetes client missing".into());
        };
        match kube.server_version().await {
            Ok(v) => {
                let was = shared.kube_reachable.swap(true, Ordering::Relaxed);
                if !was {
                    tracing::info!(version = %v, "Kubernetes API reachable");
                }
                shared.metrics.kube_reachable.set(1);
                shared.set_k3s_version(Some(v));
                Ok(kube)
            }
            Err(e) => {
                let was = shared.kube_reachable.swap(false, Ordering::Relaxed);
                shared.metrics.kube_reachable.set(0);
                let msg = format!("K3s API unreachable: {}", crate::error_chain(&e));
                if was || self.first_pass {
                    tracing::warn!("{msg}");
                }
                Err(msg)
            }
        }
    }

    async fn sync_kubernetes(
        &self,
        kube: &KubeRuntime,
        workload: &str,
        spec: &KubernetesWorkload,
        recorded: &[&InventoryEntry],
    ) -> Synced {
        let shared = &self.shared;
        let recorded: BTreeMap<ObjectKey, &InventoryEntry> =
            recorded.iter().map(|e| (key_of(e), *e)).collect();
        let mut wanted = BTreeSet::new();
        let mut errors: Vec<String> = Vec::new();
        let mut retry = false;
        let mut health = Health::Healthy;
        let mut health_msgs: Vec<String> = Vec::new();
        for manifest in apply_order(&spec.manifests) {
            let Some(key) = ObjectKey::from_manifest(manifest) else {
                errors.push("manifest without apiVersion, kind or metadata.name".into());
                continue;
            };
            wanted.insert(key.clone());
            let hash = apply_hash(workload, manifest);
            let live = match kube.get(&key).await {
                Ok(l) => l,
                Err(e) => {
                    retry |= e.is_transient();
                    errors.push(format!("{key}: {}", crate::error_chain(&e)));
                    continue;
                }
            };
            let prior = recorded.get(&key);
            let state = match (&live, prior) {
                (None, _) => Current::Absent,
                (Some(l), Some(r)) if l.uid == r.uid && r.apply_hash == hash => {
                    let fields = l.owned_fields_hash();
                    if r.fields_hash.is_empty() || r.fields_hash == fields {
                        Current::UpToDate
                    } else {
                        Current::Drifted
                    }
                }
                _ => Current::Changed,
            };
            if state == Current::Drifted {
                shared.metrics.kube_drift.inc();
                tracing::warn!(
                    workload,
                    object = %key,
                    "drift: fields we set were changed or taken by another client; restoring"
                );
            }
            let obj: LiveObject = match live {
                Some(l) if state == Current::UpToDate => {
                    if prior.is_some_and(|r| {
                        r.resource_version != l.resource_version || r.fields_hash.is_empty()
                    }) {
                        self.record(workload, &key, &l, &hash).await;
                    }
                    l
                }
                _ => match kube.apply(workload, manifest).await {
                    Ok(o) => {
                        shared.metrics.kube_applies.inc();
                        tracing::info!(workload, object = %key, "applied");
                        self.record(workload, &key, &o, &hash).await;
                        o
                    }
                    Err(e) => {
                        retry |= e.is_transient();
                        errors.push(format!("{key}: {}", apply_error(&e)));
                        continue;
                    }
                },
            };
            let (h, msg) = health_of(&obj);
            health = worse(health, h);
            if let Some(msg) = msg
                && h != Health::Healthy
            {
                health_msgs.push(format!("{} {}: {msg}", key.kind, key.name));
            }
        }
        // Prune objects dropped from this workload.
        for (key, entry) in &recorded {
            if wanted.contains(key) {
                continue;
            }
            if let Err(msg) = self.prune(kube, entry).await {
                retry = true;
                errors.push(msg);
            }
        }
        let status = if errors.is_empty() {
            let msg = (!health_msgs.is_empty()).then(|| health_msgs.join("; "));
            status(workload, SyncState::Synced, health, msg.as_deref())
        } else {
            let h = if health == Health::Healthy {
                Health::Unknown
            } else {
                health
            };
            for e in &errors {
                tracing::warn!(workload, error = %e, "sync failed");
            }
            status(workload, SyncState::Failed, h, Some(&errors.join("; ")))
        };
        Synced { status, retry }
    }

    async fn record(&self, workload: &str, key: &ObjectKey, obj: &LiveObject, hash: &str) {
        let entry = InventoryEntry {
            workload: workload.to_owned(),
            api_version: key.api_version.clone(),
            kind: key.kind.clone(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            uid: obj.uid.clone(),
            resource_version: obj.resource_version.clone(),
            apply_hash: hash.to_owned(),
            fields_hash: obj.owned_fields_hash(),
        };
        if let Err(e) = self.shared.db.call(move |s| s.record_applied(&entry)).await {
            self.shared.metrics.store_errors.inc();
            tracing::error!(error = %crate::error_chain(&e), "cannot record applied object");
        }
    }

    /// Deletes one owned object and forgets it.
    async fn prune(&self, kube: &KubeRuntime, e: &InventoryEntry) -> Result<(), String> {
        let key = key_of(e);
        match kube.delete_owned(&key).await {
            Ok(deleted) => {
                if deleted {
                    self.shared.metrics.kube_deletes.inc();
                    tracing::info!(workload = %e.workload, object = %key, "pruned");
                } else {
                    tracing::info!(workload = %e.workload, object = %key, "already gone or not ours; forgotten");
                }
                let e = e.clone();
                self.shared
                    .db
                    .call(move |s| {
                        s.forget_applied(
                            &e.workload,
                            &e.api_version,
                            &e.kind,
                            e.namespace.as_deref(),
                            &e.name,
                        )
                    })
                    .await
                    .map_err(|err| format!("{key}: {}", crate::error_chain(&err)))
            }
            Err(err) => Err(format!("{key}: prune: {}", crate::error_chain(&err))),
        }
    }

    /// Stores the statuses and queues a signed report when anything changed
    /// (or one was asked for, e.g. on connect).
    async fn report(&mut self, desired: Option<&DesiredState>, statuses: Vec<WorkloadStatus>) {
        let shared = self.shared.clone();
        let applied = desired.map(DesiredState::version);
        let wanted = shared.report_wanted.swap(false, Ordering::Relaxed);
        let rejected = shared.desired_rejected();
        let changed = self
            .reported
            .as_ref()
            .is_none_or(|(v, s, r)| *v != applied || *s != statuses || *r != rejected);
        if !changed && !wanted {
            return;
        }
        let now = edgefleet_protocol::now_ms();
        let stored: Vec<StoredStatus> = statuses
            .iter()
            .map(|s| StoredStatus {
                name: s.name.clone(),
                sync: s.sync,
                health: s.health,
                message: s.message.clone(),
                updated_at_ms: now,
            })
            .collect();
        let report = StatusReport {
            device_id: shared.device.clone(),
            applied,
            reported_at_ms: now,
            workloads: statuses.clone(),
            message: None,
            agent_version: crate::telemetry::AGENT_VERSION.to_owned(),
            k3s_version: shared.k3s_version(),
            desired_rejected: rejected.clone(),
            unstored: false,
        };
        let sealed = shared.identity.signer.seal(&report);
        let limits = shared.outbox_limits();
        let res = shared
            .write_essential(move |s| {
                s.set_statuses(&stored)?;
                s.kv_set("last_reconcile_ms", &now.to_string())?;
                s.outbox_push_status(now, sealed.clone(), limits)?;
                Ok((s.outbox_depth(), s.outbox_dropped()?))
            })
            .await;
        match res {
            Ok((depth, _)) => {
                shared.metrics.set_outbox(depth);
                *shared
                    .unstored_status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                shared.outbox_wake.notify_one();
                self.reported = Some((applied, statuses, rejected));
            }
            Err(e) if e.is_disk_full() => {
                // The one message that says "I am in trouble" still goes out:
                // from memory, marked as such.
                let report = StatusReport {
                    unstored: true,
                    ..report
                };
                *shared
                    .unstored_status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) =
                    Some(shared.identity.signer.seal(&report));
                shared.metrics.status_unstored.inc();
                tracing::warn!("disk full: status report sent from memory, not stored");
                shared.outbox_wake.notify_one();
                self.reported = Some((applied, statuses, rejected));
            }
            Err(e) => {
                shared.metrics.store_errors.inc();
                tracing::error!(error = %crate::error_chain(&e), "cannot queue the status report");
            }
        }
    }
}

/// How a recorded object stands against the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Current {
    /// Ours, as we applied it.
    UpToDate,
    /// Missing (deleted, or a reset K3s).
    Absent,
    /// Our manifest changed, or the object was recreated (new uid).
    Changed,
    /// Someone else changed or took fields we set.
    Drifted,
}

/// A workload's manifests in the order they can be applied: namespaces and
/// CRDs first (what the rest may live in or be an instance of), then the
/// rest as given.
fn apply_order(manifests: &[serde_json::Value]) -> impl Iterator<Item = &serde_json::Value> {
    let first = |m: &serde_json::Value| {
        ObjectKey::from_manifest(m).is_some_and(|k| {
            crate::runtime::kube::is_crd(&k) || (k.kind == "Namespace" && k.api_version == "v1")
        })
    };
    manifests
        .iter()
        .filter(move |m| first(m))
        .chain(manifests.iter().filter(move |m| !first(m)))
}

fn key_of(e: &InventoryEntry) -> ObjectKey {
    ObjectKey {
        api_version: e.api_version.clone(),
        kind: e.kind.clone(),
        namespace: e.namespace.clone(),
        name: e.name.clone(),
    }
}

fn apply_error(e: &KubeError) -> String {
    crate::error_chain(e)
}

fn status(name: &str, sync: SyncState, health: Health, message: Option<&str>) -> WorkloadStatus {
    WorkloadStatus {
        name: name.to_owned(),
        sync,
        health,
        message: message.filter(|m| !m.is_empty()).map(truncate_message),
    }
}

/// The worse of two healths: Degraded > Progressing > Unknown > Healthy.
fn worse(a: Health, b: Health) -> Health {
    let rank = |h: Health| match h {
        Health::Healthy => 0,
        Health::Unknown => 1,
        Health::Progressing => 2,
        Health::Degraded => 3,
    };
    if rank(b) > rank(a) { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_ordering() {
        assert_eq!(
            worse(Health::Healthy, Health::Progressing),
            Health::Progressing
        );
        assert_eq!(
            worse(Health::Degraded, Health::Progressing),
            Health::Degraded
        );
        assert_eq!(worse(Health::Unknown, Health::Healthy), Health::Unknown);
        let s = status("a.b", SyncState::Synced, Health::Healthy, Some(""));
        assert_eq!(s.message, None);
        let long = "x".repeat(5000);
        let s = status("a.b", SyncState::Failed, Health::Unknown, Some(&long));
        assert!(s.message.unwrap().len() <= 1024);
    }
}
