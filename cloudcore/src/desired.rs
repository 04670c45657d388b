//! Desired-state computation: which workloads each device should run, given
//! the deployments and the device's labels, and whether a device would
//! accept the resulting document (its size limits). Pure functions; the
//! publisher decides what changed and signs, the API refuses changes that
//! would produce a document a device refuses.

use std::collections::{BTreeMap, HashMap};

use edgefleet_protocol::desired::DeviceRollback;
use edgefleet_protocol::{DesiredState, DesiredWorkload, DeviceId, TooLarge, Workload};
use sha2::{Digest, Sha256};

use crate::store::{ActiveRollouts, DeploymentRecord, Labels};

/// Every workload of every deployment whose selector matches device `id`'s
/// `labels`, at the generation each deployment's rollout gives it, in a
/// stable order (by workload id, `<deployment>.<workload>`).
pub fn workloads_for_device(
    id: &str,
    labels: &BTreeMap<String, String>,
    deployments: &[DeploymentRecord],
    rollouts: &ActiveRollouts,
) -> Vec<DesiredWorkload> {
    matched_workloads(
        deployments
            .iter()
            .filter(|d| d.spec.spec.selector.matches(labels))
            .filter_map(|d| rollouts.effective(d, id)),
    )
}

/// Canonical JSON of the workloads and its SHA-256: equal workloads give
/// equal hashes (serde_json sorts object keys; lists keep their order).
pub fn content_hash(workloads: &[DesiredWorkload]) -> Result<(String, String), serde_json::Error> {
    let json = serde_json::to_string(workloads)?;
    let hash = hex::encode(Sha256::digest(json.as_bytes()));
    Ok((json, hash))
}

/// Names of the deployments whose workloads `workloads` holds, in order.
pub fn deployments_of(workloads: &[DesiredWorkload]) -> Vec<String> {
    let mut names: Vec<String> = workloads.iter().map(|w| w.deployment.clone()).collect();
    names.sort();
    names.dedup();
    names
}

/// Devices whose desired document would break a size limit, grouped by the
/// deployments that make it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub devices: Vec<DeviceId>,
    pub deployments: Vec<String>,
    pub error: TooLarge,
}

impl std::fmt::Display for Violation {
    /// `device pi-7 would receive 80 workloads; the limit is 64 (deployments a, b)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 3;
        let names: Vec<&str> = self
            .devices
            .iter()
            .take(SHOWN)
            .map(DeviceId::as_str)
            .collect();
        match self.devices.len() {
            1 => write!(f, "device {}", names[0])?,
            n if n <= SHOWN => write!(f, "devices {}", names.join(", "))?,
            n => write!(f, "devices {} and {} more", names.join(", "), n - SHOWN)?,
        }
        write!(
            f,
            " would receive {} (deployments {})",
            self.error,
            self.deployments.join(", ")
        )
    }
}

/// The documents `deployments` would give each of `devices`, checked against
/// what a device accepts. Devices matched by the same deployments share one
/// check (done with the longest device id and widest numbers among them, so
/// it never under-counts), which keeps this fast for large fleets.
pub fn violations(
    devices: &[(DeviceId, Labels)],
    deployments: &[DeploymentRecord],
    epoch: u64,
) -> Vec<Violation> {
    let mut groups: HashMap<Vec<usize>, Vec<&DeviceId>> = HashMap::new();
    for (id, labels) in devices {
        let matched: Vec<usize> = deployments
            .iter()
            .enumerate()
            .filter(|(_, d)| d.spec.spec.selector.matches(labels))
            .map(|(i, _)| i)
            .collect();
        if !matched.is_empty() {
            groups.entry(matched).or_default().push(id);
        }
    }
    let mut out = Vec::new();
    for (matched, mut ids) in groups {
        let chosen: Vec<&DeploymentRecord> = matched.iter().map(|&i| &deployments[i]).collect();
        let Some(longest) = ids.iter().max_by_key(|d| d.as_str().len()) else {
            continue;
        };
        let probe = DesiredState {
            device_id: (*longest).clone(),
            revision: u64::MAX,
            hub_epoch: epoch,
            issued_at_ms: u64::MAX,
            workloads: matched_workloads(chosen.iter().copied()),
        };
        if let Err(error) = probe.check_size() {
            ids.sort();
            out.push(Violation {
                devices: ids.into_iter().cloned().collect(),
                deployments: chosen.iter().map(|d| d.name.clone()).collect(),
                error,
            });
        }
    }
    out.sort_by(|a, b| a.devices.cmp(&b.devices));
    out
}

/// Every workload of `deployments`, ordered by workload id.
fn matched_workloads<'a>(
    deployments: impl IntoIterator<Item = &'a DeploymentRecord>,
) -> Vec<DesiredWorkload> {
    let mut out: Vec<DesiredWorkload> = deployments
        .into_iter()
        .flat_map(|d| {
            let rollback = d
                .spec
                .spec
                .rollout
                .as_ref()
                .filter(|r| r.device_rollback)
                .map(|r| DeviceRollback {
                    health_timeout_secs: r.health_timeout.as_secs(),
                });
            d.spec.spec.workloads.iter().map(move |w| DesiredWorkload {
                deployment: d.name.clone(),
                generation: d.generation,
                device_rollback: rollback,
                workload: Workload {
                    name: d.spec.workload_id(w),
                    kubernetes: w.kubernetes.clone(),
                    inference: w.inference.clone(),
                    agent: w.agent.clone(),
                },
            })
        })
        .collect();
    out.sort_by(|a, b| a.workload.name.cmp(&b.workload.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_protocol::Deployment;

    /// With no rollout: every matching deployment at its current generation.
    fn workloads_for(
        labels: &BTreeMap<String, String>,
        deployments: &[DeploymentRecord],
    ) -> Vec<DesiredWorkload> {
        workloads_for_device("", labels, deployments, &ActiveRollouts::default())
    }

    fn dep(name: &str, generation: u64, selector: &str) -> DeploymentRecord {
        let yaml = format!(
            "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  selector: {selector}\n  workloads:\n    - name: web\n      kubernetes:\n        manifests: [{{apiVersion: v1, kind: ConfigMap, metadata: {{name: c}}}}]\n"
        );
        DeploymentRecord {
            name: name.into(),
            generation,
            created_ms: 0,
            updated_ms: 0,
            spec: Deployment::from_yaml(&yaml).unwrap(),
            source: None,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selects_matching_deployments_only() {
        let deps = vec![
            dep("a", 1, "{matchLabels: {site: plant-3}}"),
            dep(
                "b",
                4,
                "{matchExpressions: [{key: arch, operator: In, values: [arm64]}]}",
            ),
            dep("c", 1, "{matchLabels: {site: plant-9}}"),
        ];
        let w = workloads_for(&labels(&[("site", "plant-3"), ("arch", "arm64")]), &deps);
        let names: Vec<_> = w.iter().map(|w| w.workload.name.as_str()).collect();
        assert_eq!(names, ["a.web", "b.web"]);
        assert_eq!(w[1].generation, 4);
        assert!(workloads_for(&labels(&[("site", "plant-4")]), &deps).is_empty());
    }

    #[test]
    fn content_hash_tracks_changes_only() {
        let deps = vec![dep("a", 1, "{}")];
        let l = labels(&[]);
        let (_, h1) = content_hash(&workloads_for(&l, &deps)).unwrap();
        let (_, h2) = content_hash(&workloads_for(&l, &deps)).unwrap();
        assert_eq!(h1, h2);
        let (_, h3) = content_hash(&workloads_for(&l, &[dep("a", 2, "{}")])).unwrap();
        assert_ne!(h1, h3, "a new generation is a new document");
        let (_, empty) = content_hash(&[]).unwrap();
        assert_ne!(h1, empty);
    }
}
