//! The reconciler: one loop that converges the device to the stored desired
//! state. Woken by a newly accepted document, by a connect (to report), and
//! periodically: the drift check, faster polling while a workload is still
//! progressing (so a rollout finishing is noticed within a second), a probe
//! every 250 ms while the K3s API does not answer, and each failed
//! workload's own retry ([`retry`]): a workload that fails waits alone, the
//! others keep their pace.
//!
//! It reads only the store, never the network link to the hub: after an
//! offline reboot the first pass runs immediately from SQLite.
//!
//! For `kubernetes` workloads each object is applied only when needed: when
//! it is absent, its uid differs from the recorded one (K3s was reset), or
//! the apply hash changed. An agent restart with unchanged desired state
//! therefore sends zero mutating requests. Objects recorded in the inventory
//! but no longer desired are deleted — only if they carry our label.

mod kubernetes;
pub use kubernetes::key_of;
mod retry;
mod rollback;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgefleet_daemon::backoff::Backoff;
use edgefleet_protocol::status::truncate_message;
use edgefleet_protocol::{
    DesiredState, Health, StatusReport, SyncState, WorkloadSpec, WorkloadStatus,
};
use tokio_util::sync::CancellationToken;

use crate::inference::runtime::InferenceRuntime;
use crate::runtime::kube::KubeRuntime;
use crate::shared::Shared;
use crate::store::{InventoryEntry, StoredStatus};
use retry::{Retries, SyncError, Synced, fingerprint};

/// Runs passes until `cancel`.
pub async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let min = Duration::from_millis(shared.cfg.reconcile.backoff_min_ms);
    let max = Duration::from_millis(shared.cfg.reconcile.backoff_max_ms);
    let drift = Duration::from_secs(shared.cfg.reconcile.drift_interval_secs);
    let poll = Duration::from_millis(shared.cfg.reconcile.progress_poll_ms).min(drift);
    let mut r = Reconciler::new(shared.clone(), Retries::new(min, max, drift));
    let mut restarts = shared.restarts.take();
    // For what fails the whole pass (the store, pruning a removed workload).
    let mut pass_backoff = Backoff::new(min, max);
    loop {
        let outcome = r.pass().await;
        let mut delay = if outcome.kube_down {
            // The local K3s API is coming up (a reboot): probe it often, so
            // stored workloads are submitted as soon as it answers. A probe
            // is one GET /version on the device itself.
            KUBE_PROBE
        } else if outcome.progressing {
            poll
        } else {
            drift
        };
        if outcome.retry_pass {
            let d = pass_backoff.next_delay();
            tracing::info!(retry_in = ?d, "reconcile pass incomplete; retrying");
            delay = delay.min(d);
        } else {
            pass_backoff.reset();
        }
        if let Some(due) = r.retries.next_due() {
            delay = delay.min(due.saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = shared.reconcile_wake.notified() => {}
            _ = tokio::time::sleep(delay) => {}
            Some((workload, reply)) = restarts.recv() => {
                let _ = reply.send(r.restart(&workload).await);
            }
        }
    }
}

/// Retry period while the K3s API does not answer.
const KUBE_PROBE: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
struct PassOutcome {
    /// The pass itself failed (the store, a prune): run it again with backoff.
    retry_pass: bool,
    /// Kubernetes workloads are desired and the K3s API did not answer.
    kube_down: bool,
    /// A workload is in sync but not healthy yet; poll its status sooner.
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
    retries: Retries,
    /// This pass's agent workload failed its trial on this device.
    update_failed: Option<edgefleet_protocol::UpdateFailure>,
}

/// The parts of a status report that make it worth sending again.
type Reported = (
    Option<edgefleet_protocol::Version>,
    Vec<WorkloadStatus>,
    Option<edgefleet_protocol::DesiredRejection>,
);

impl Reconciler {
    fn new(shared: Arc<Shared>, retries: Retries) -> Self {
        Self {
            shared,
            kube: None,
            reported: None,
            first_pass: true,
            inference: None,
            retries,
            update_failed: None,
        }
    }

    async fn pass(&mut self) -> PassOutcome {
        let started = Instant::now();
        let shared = self.shared.clone();
        let m = &shared.metrics;
        m.reconcile_passes.inc();
        if shared
            .resync_wanted
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::info!("resync: every workload is synced now, waits for retries dropped");
            self.retries.clear();
        }
        let mut out = PassOutcome::default();
        let loaded = shared
            .db
            .call(|s| {
                Ok::<_, crate::store::StoreError>((
                    s.desired()?,
                    s.inventory()?,
                    s.kv_get(rollback::KEY)?,
                ))
            })
            .await;
        let (desired, inventory, plan) = match loaded {
            Ok(v) => v,
            Err(e) => {
                m.store_errors.inc();
                tracing::error!(error = %crate::error_chain(&e), "cannot read the store");
                out.retry_pass = true;
                return out;
            }
        };
        // What runs: the hub's document, with any deployment the device
        // rolled back by itself on its last good generation.
        let stored_plan = plan;
        let mut plan = rollback::Plan::parse(stored_plan.as_deref());
        let now_ms = edgefleet_protocol::now_ms();
        let running = desired.as_ref().map(|d| DesiredState {
            workloads: plan.effective(d, now_ms),
            ..d.clone()
        });
        let needs_kube = !inventory.is_empty()
            || running.as_ref().is_some_and(|d| {
                d.workloads
                    .iter()
                    .any(|w| matches!(w.workload.spec(), Some(WorkloadSpec::Kubernetes(_))))
            });
        shared.kube_needed.store(needs_kube, Ordering::Relaxed);
        let kube = if needs_kube {
            let k = self.kube().await;
            out.kube_down = k.is_err() && self.kube.is_some();
            k
        } else {
            Err(String::new())
        };

        let mut statuses = Vec::new();
        self.update_failed = None;
        let mut by_workload: BTreeMap<&str, Vec<&InventoryEntry>> = BTreeMap::new();
        for e in &inventory {
            by_workload.entry(e.workload.as_str()).or_default().push(e);
        }
        let now = Instant::now();
        if let Some(doc) = &running {
            for w in &doc.workloads {
                let name = w.workload.name.as_str();
                let spec = fingerprint(&w.workload);
                if let Some(waiting) = self.retries.waiting(name, spec, now) {
                    statuses.push(waiting.clone());
                    continue;
                }
                let synced = match w.workload.spec() {
                    Some(WorkloadSpec::Kubernetes(k)) => match &kube {
                        Ok(kube) => {
                            let recorded = by_workload.get(name).cloned().unwrap_or_default();
                            self.sync_kubernetes(kube, name, k, &recorded).await
                        }
                        Err(e) => Synced::failed(
                            name,
                            Health::Unknown,
                            vec![SyncError::KubeUnavailable(e.clone())],
                        ),
                    },
                    Some(WorkloadSpec::Inference(i)) => {
                        let shared = &self.shared;
                        let rt = self
                            .inference
                            .get_or_insert_with(|| InferenceRuntime::for_agent(shared));
                        match rt.sync(name, i, Some(&shared.metrics)).await {
                            Ok(()) => {
                                Synced::ok(status(name, SyncState::Synced, Health::Healthy, None))
                            }
                            Err(e) => Synced::failed(name, Health::Unknown, vec![e.into()]),
                        }
                    }
                    Some(WorkloadSpec::Agent(a)) => self.sync_agent(name, a).await,
                    None => Synced::failed(name, Health::Unknown, vec![SyncError::NoSpec]),
                };
                if synced.errors.is_empty() {
                    self.retries.succeeded(name);
                    if synced.status.health != Health::Healthy {
                        out.progressing = true;
                    }
                } else if !synced.waits_for_kube() {
                    let wait = self.retries.failed(name, spec, &synced, now);
                    tracing::warn!(
                        workload = name,
                        error = synced.status.message.as_deref().unwrap_or_default(),
                        transient = synced.errors.iter().any(SyncError::is_transient),
                        retry_in = ?wait,
                        "workload failed"
                    );
                }
                statuses.push(synced.status);
            }
        }
        // Prune workloads that are no longer desired at all.
        let desired_names: BTreeSet<&str> = running
            .iter()
            .flat_map(|d| d.workloads.iter().map(|w| w.workload.name.as_str()))
            .collect();
        if let Some(rt) = &mut self.inference {
            rt.prune(&desired_names);
        }
        self.retries.retain(&desired_names);
        if let Ok(kube) = &kube {
            for (workload, entries) in &by_workload {
                if desired_names.contains(workload) {
                    continue;
                }
                for e in entries {
                    if let Err(err) = self.prune(kube, e).await {
                        tracing::warn!(workload, error = %crate::error_chain(&err), "prune failed; will retry");
                        out.retry_pass = true;
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
        let statuses = match &desired {
            Some(doc) => {
                if plan.observe(doc, &statuses, edgefleet_protocol::now_ms()) {
                    // Run the last good generation now, not at the next poll.
                    shared.reconcile_wake.notify_one();
                }
                plan.report(doc, statuses)
            }
            None => statuses,
        };
        // Stored when it changed (or what was stored could not be read).
        let json = plan.to_json();
        if stored_plan.as_deref() != Some(json.as_str()) {
            let saved = shared
                .write_essential(move |s| s.kv_set(rollback::KEY, &json))
                .await;
            if let Err(e) = saved {
                tracing::error!(error = %crate::error_chain(&e), "cannot store the device-rollback plan");
            }
        }
        self.report(desired.as_ref(), statuses).await;
        out
    }

    /// Restarts one workload (a command): its Deployments, StatefulSets and
    /// DaemonSets get a new pod template (their pods are replaced), or its
    /// model is unloaded and loaded again by the pass that follows.
    async fn restart(&mut self, workload: &str) -> Result<String, String> {
        let (found, objects) = crate::commands::workload_on_device(&self.shared, workload).await?;
        let spec = found.spec().ok_or_else(|| {
            format!("workload {workload:?} has no kind (kubernetes, inference or agent)")
        })?;
        match spec {
            WorkloadSpec::Agent(_) => Err(format!(
                "{workload} is the agent itself: it restarts by an update, not by a command"
            )),
            WorkloadSpec::Inference(_) => {
                let unloaded = self
                    .inference
                    .as_mut()
                    .is_some_and(|rt| rt.unload(workload));
                self.shared.reconcile_wake.notify_one();
                Ok(if unloaded {
                    "model unloaded; loaded again now".to_owned()
                } else {
                    "model was not loaded; loading it now".to_owned()
                })
            }
            WorkloadSpec::Kubernetes(_) => {
                let targets: Vec<_> = objects
                    .iter()
                    .filter(|e| crate::runtime::kube::is_restartable(&e.api_version, &e.kind))
                    .map(kubernetes::key_of)
                    .collect();
                if targets.is_empty() {
                    return Err(format!(
                        "nothing to restart: {workload} has no Deployment, StatefulSet or DaemonSet applied"
                    ));
                }
                let kube = self.kube().await?;
                let at = edgefleet_protocol::now_ms().to_string();
                let mut done = Vec::new();
                for key in &targets {
                    match kube.restart(key, &at).await {
                        Ok(true) => done.push(format!("{}/{}", key.kind, key.name)),
                        Ok(false) => {}
                        Err(e) => {
                            return Err(format!("{key}: {}", crate::error_chain(&e)));
                        }
                    }
                }
                if done.is_empty() {
                    return Err(format!("nothing to restart: {workload}'s objects are gone"));
                }
                Ok(format!("restarted {}", done.join(", ")))
            }
        }
    }

    /// An `agent` workload: this process is the release, or the release is
    /// staged and the daemon stops for the supervisor to start it.
    async fn sync_agent(&mut self, name: &str, a: &edgefleet_protocol::AgentWorkload) -> Synced {
        match crate::update::sync(&self.shared, a).await {
            Ok(crate::update::Progress::Running) => Synced::ok(status(
                name,
                SyncState::Synced,
                Health::Healthy,
                Some(&format!("agent {} running", a.version)),
            )),
            Ok(crate::update::Progress::Staged) => {
                self.shared.update_staged.store(true, Ordering::Relaxed);
                self.shared.update_wake.notify_one();
                Synced::ok(status(
                    name,
                    SyncState::Syncing,
                    Health::Progressing,
                    Some(&format!("agent {} staged; restarting into it", a.version)),
                ))
            }
            Err(e) => {
                self.shared.metrics.update_errors.inc();
                if let crate::update::UpdateError::Failed {
                    version,
                    reason,
                    at_ms,
                } = &e
                {
                    self.update_failed = Some(edgefleet_protocol::UpdateFailure {
                        version: version.clone(),
                        reason: edgefleet_protocol::status::truncate_message(reason),
                        at_ms: *at_ms,
                    });
                }
                Synced::failed(name, Health::Degraded, vec![e.into()])
            }
        }
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
            agent_version: crate::update::running().version.clone(),
            k3s_version: shared.k3s_version(),
            desired_rejected: rejected.clone(),
            update_failed: self.update_failed.clone(),
            unstored: false,
            hub_key_id: Some(shared.identity.hub_key().kid().0.clone()),
        };
        let sealed = shared.identity.signer().seal(&report);
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
                    Some(shared.identity.signer().seal(&report));
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
