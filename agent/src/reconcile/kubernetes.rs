//! Kubernetes workloads: each object applied only when needed (absent,
//! recreated, changed, or drifted from what we set), its health read from
//! its real status, objects dropped from a workload pruned, all recorded in
//! the inventory.

use std::collections::{BTreeMap, BTreeSet};

use edgefleet_protocol::{Health, KubernetesWorkload, SyncState};

use super::retry::{SyncError, Synced};
use super::{Reconciler, status, worse};
use crate::runtime::kube::{KubeRuntime, LiveObject, ObjectKey, apply_hash, health_of};
use crate::store::InventoryEntry;

impl Reconciler {
    pub(super) async fn sync_kubernetes(
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
        let mut errors: Vec<SyncError> = Vec::new();
        let mut health = Health::Healthy;
        let mut health_msgs: Vec<String> = Vec::new();
        for manifest in apply_order(&spec.manifests) {
            let Some(key) = ObjectKey::from_manifest(manifest) else {
                errors.push(SyncError::BadManifest);
                continue;
            };
            wanted.insert(key.clone());
            let hash = apply_hash(workload, manifest);
            let live = match kube.get(&key).await {
                Ok(l) => l,
                Err(source) => {
                    errors.push(SyncError::Object { key, source });
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
                    Err(source) => {
                        errors.push(SyncError::Object { key, source });
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
            if let Err(e) = self.prune(kube, entry).await {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            let msg = (!health_msgs.is_empty()).then(|| health_msgs.join("; "));
            return Synced::ok(status(workload, SyncState::Synced, health, msg.as_deref()));
        }
        let h = if health == Health::Healthy {
            Health::Unknown
        } else {
            health
        };
        Synced::failed(workload, h, errors)
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
    pub(super) async fn prune(
        &self,
        kube: &KubeRuntime,
        e: &InventoryEntry,
    ) -> Result<(), SyncError> {
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
                    .map_err(|source| SyncError::Forget { key, source })
            }
            Err(source) => Err(SyncError::Prune { key, source }),
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
pub(super) fn apply_order(
    manifests: &[serde_json::Value],
) -> impl Iterator<Item = &serde_json::Value> {
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

pub fn key_of(e: &InventoryEntry) -> ObjectKey {
    ObjectKey {
        api_version: e.api_version.clone(),
        kind: e.kind.clone(),
        namespace: e.namespace.clone(),
        name: e.name.clone(),
    }
}
