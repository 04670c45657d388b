//! Desired-state computation: which workloads each device should run, given
//! the deployments and the device's labels. Pure functions; the publisher
//! decides what changed and signs.

use std::collections::BTreeMap;

use edgefleet_protocol::{DesiredWorkload, Workload};
use sha2::{Digest, Sha256};

use crate::store::DeploymentRecord;

/// Every workload of every deployment whose selector matches `labels`, in a
/// stable order (deployment name, then manifest order).
pub fn workloads_for(
    labels: &BTreeMap<String, String>,
    deployments: &[DeploymentRecord],
) -> Vec<DesiredWorkload> {
    let mut out = Vec::new();
    for d in deployments {
        if !d.spec.spec.selector.matches(labels) {
            continue;
        }
        for w in &d.spec.spec.workloads {
            out.push(DesiredWorkload {
                deployment: d.name.clone(),
                generation: d.generation,
                workload: Workload {
                    name: d.spec.workload_id(w),
                    kubernetes: w.kubernetes.clone(),
                    inference: w.inference.clone(),
                },
            });
        }
    }
    out.sort_by(|a, b| a.workload.name.cmp(&b.workload.name));
    out
}

/// Canonical JSON of the workloads and its SHA-256: equal workloads give
/// equal hashes (serde_json sorts object keys; lists keep their order).
pub fn content_hash(workloads: &[DesiredWorkload]) -> (String, String) {
    let json = serde_json::to_string(workloads).unwrap_or_default();
    let hash = hex::encode(Sha256::digest(json.as_bytes()));
    (json, hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_protocol::Deployment;

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
        let (_, h1) = content_hash(&workloads_for(&l, &deps));
        let (_, h2) = content_hash(&workloads_for(&l, &deps));
        assert_eq!(h1, h2);
        let (_, h3) = content_hash(&workloads_for(&l, &[dep("a", 2, "{}")]));
        assert_ne!(h1, h3, "a new generation is a new document");
        let (_, empty) = content_hash(&[]);
        assert_ne!(h1, empty);
    }
}
