//! The operator's Deployment manifest (`edgectl apply -f`):
//! `apiVersion: edgefleet.io/v1`, `kind: Deployment`, a label selector over
//! devices and the workloads every matching device runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_PAYLOAD_BYTES, MAX_WORKLOADS};
use crate::name::{check_dns_label, check_label_key, check_label_value};
use crate::rollout::RolloutSpec;
use crate::selector::LabelSelector;
use crate::validate::ValidationErrors;
use crate::workload::Workload;

pub const API_VERSION: &str = "edgefleet.io/v1";
pub const KIND: &str = "Deployment";

/// Longest workload id on a device, `<deployment>.<workload>`: it becomes the
/// `edgefleet.io/workload` Kubernetes label value.
pub const MAX_WORKLOAD_ID_LEN: usize = 63;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deployment {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^edgefleet\.io/v1$"))]
    pub api_version: String,
    #[cfg_attr(feature = "openapi", schema(pattern = "^Deployment$"))]
    pub kind: String,
    pub metadata: Metadata,
    pub spec: DeploymentSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 61)
    )]
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentSpec {
    #[serde(default)]
    pub selector: LabelSelector,
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_WORKLOADS>")]
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 64))]
    pub workloads: Vec<Workload>,
    /// How a new generation reaches the devices; none: all at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {size} bytes, the limit is {MAX_PAYLOAD_BYTES}")]
    TooLarge { size: usize },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{0}")]
    Invalid(#[from] ValidationErrors),
}

impl Deployment {
    /// Parses and validates a YAML (or JSON, a YAML subset) manifest.
    pub fn from_yaml(text: &str) -> Result<Self, ManifestError> {
        if text.len() > MAX_PAYLOAD_BYTES {
            return Err(ManifestError::TooLarge { size: text.len() });
        }
        let de = serde_yaml::Deserializer::from_str(text);
        let d: Deployment = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ManifestError::Syntax {
                path: if path == "." || path == "?" {
                    "manifest".into()
                } else {
                    path
                },
                message: e.into_inner().to_string(),
            }
        })?;
        d.validate()?;
        Ok(d)
    }

    /// Every rule a manifest must satisfy, each error with its path.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        if self.api_version != API_VERSION {
            errs.push("apiVersion", format_args!("must be {API_VERSION:?}"));
        }
        if self.kind != KIND {
            errs.push("kind", format_args!("must be {KIND:?}"));
        }
        let name = &self.metadata.name;
        if let Err(e) = check_dns_label(name, MAX_WORKLOAD_ID_LEN - 2) {
            errs.push("metadata.name", e);
        }
        for (k, v) in &self.metadata.labels {
            if let Err(e) = check_label_key(k) {
                errs.push("metadata.labels", e);
            }
            if let Err(e) = check_label_value(v) {
                errs.push(format!("metadata.labels.{k}"), e);
            }
        }
        self.spec.selector.validate_into("spec.selector", &mut errs);
        if let Some(r) = &self.spec.rollout {
            r.validate_into("spec.rollout", &mut errs);
        }
        if self.spec.workloads.is_empty() {
            errs.push("spec.workloads", "must list at least one workload");
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, w) in self.spec.workloads.iter().enumerate() {
            let p = format!("spec.workloads[{i}]");
            if let Err(e) = check_dns_label(&w.name, MAX_WORKLOAD_ID_LEN) {
                errs.push(format!("{p}.name"), e);
            } else if name.len() + 1 + w.name.len() > MAX_WORKLOAD_ID_LEN {
                errs.push(
                    format!("{p}.name"),
                    format_args!(
                        "workload id {name}.{} is longer than {MAX_WORKLOAD_ID_LEN} characters \
                         (it is used as a Kubernetes label value); shorten the deployment or workload name",
                        w.name
                    ),
                );
            }
            if !names.insert(w.name.as_str()) {
                errs.push(
                    format!("{p}.name"),
                    format_args!("duplicate workload name {:?}", w.name),
                );
            }
            w.validate_spec_into(&p, &mut errs);
        }
        if self
            .spec
            .workloads
            .iter()
            .filter(|w| w.agent.is_some())
            .count()
            > 1
        {
            errs.push(
                "spec.workloads",
                "at most one workload may be of kind `agent` (a device runs one agent)",
            );
        }
        errs.into_result()
    }

    /// `<deployment>.<workload>`: the id of one of this deployment's
    /// workloads on a device.
    pub fn workload_id(&self, workload: &Workload) -> String {
        format!("{}.{}", self.metadata.name, workload.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: edgefleet.io/v1
kind: Deployment
metadata: {name: line-3-vision}
spec:
  selector:
    matchLabels: {site: plant-3}
    matchExpressions: [{key: arch, operator: In, values: [arm64]}]
  workloads:
    - name: web
      kubernetes:
        manifests:
          - {apiVersion: v1, kind: ConfigMap, metadata: {name: web-config, namespace: demo}, data: {a: b}}
    - name: vibration
      inference:
        model: {name: vibration-ae, sha256: "0000000000000000000000000000000000000000000000000000000000000000"}
        input: {mqtt: {topic: sensors/vibration}}
        output: {upstream: true, topic: alerts/vibration, when: "score > 0.8"}
"#;

    #[test]
    fn a_rollout_block_parses_and_is_checked() {
        let with = GOOD.replace(
            "  workloads:\n",
            "  rollout:\n    waves:\n      - {name: canary, selector: {matchLabels: {ring: canary}}}\n      - {name: early, percent: 10}\n      - {name: rest, percent: 100}\n    healthTimeout: 10m\n    bake: 2m\n    maxFailures: 5%\n    onFailure: rollback\n    deviceRollback: true\n  workloads:\n",
        );
        let d = Deployment::from_yaml(&with).unwrap();
        let r = d.spec.rollout.as_ref().unwrap();
        assert_eq!(r.waves.len(), 3);
        assert_eq!(r.health_timeout.as_secs(), 600);
        assert_eq!(r.max_failures, crate::rollout::Threshold::Percent(5));
        assert!(r.device_rollback);
        let bad = with.replace("percent: 10}", "percent: 10, count: 3}");
        assert!(errors_of(&bad).contains("spec.rollout.waves[1]: give exactly one"));
        let bad = with.replace("bake: 2m", "bake: 2");
        assert!(
            errors_of(&bad).contains("spec.rollout.bake"),
            "{}",
            errors_of(&bad)
        );
    }

    #[test]
    fn the_design_example_parses() {
        let d = Deployment::from_yaml(GOOD).unwrap();
        assert_eq!(d.metadata.name, "line-3-vision");
        assert_eq!(d.spec.workloads.len(), 2);
        assert_eq!(
            d.workload_id(&d.spec.workloads[1]),
            "line-3-vision.vibration"
        );
        let w = d.spec.workloads[1].inference.as_ref().unwrap();
        assert_eq!(w.output.when.as_ref().unwrap().to_string(), "score > 0.8");
    }

    fn errors_of(yaml: &str) -> String {
        match Deployment::from_yaml(yaml) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(e) => e.to_string(),
        }
    }

    /// Each edit of the good manifest, and a part of the error it must get.
    #[test]
    fn errors_are_named_by_path() {
        let no_kubernetes = "      kubernetes:\n        manifests:\n          - {apiVersion: v1, kind: ConfigMap, metadata: {name: web-config, namespace: demo}, data: {a: b}}\n";
        let long = format!("name: {}", "a".repeat(50));
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[(&"0".repeat(64), "nope")],
                "spec.workloads[1].inference.model.sha256: not a sha256",
            ),
            (
                &[("upstream: true", "upstream: maybe")],
                "spec.workloads[1].inference.output.upstream:",
            ),
            (
                &[("operator: In", "operator: Near")],
                "spec.selector.matchExpressions[0].operator",
            ),
            (&[("score > 0.8", "score >>> 0.8")], "when"),
            (&[("selector:", "selectr:")], "unknown field `selectr`"),
            (&[(no_kubernetes, "")], "spec.workloads[0]: exactly one of"),
            (
                &[("name: vibration", "name: web")],
                "duplicate workload name",
            ),
            (&[("name: vibration", &long)], "longer than 63"),
            // Every semantic error at once.
            (
                &[
                    ("kind: Deployment", "kind: Deploymnt"),
                    ("name: web\n", "name: Web\n"),
                    ("kind: ConfigMap, ", ""),
                ],
                "kind: must be \"Deployment\"",
            ),
        ];
        for (edits, want) in cases {
            let y = edits
                .iter()
                .fold(GOOD.to_owned(), |y, (from, to)| y.replace(from, to));
            let e = errors_of(&y);
            assert!(e.contains(want), "{want:?} not in {e}");
        }
        let all = errors_of(
            &GOOD
                .replace("name: web\n", "name: Web\n")
                .replace("kind: ConfigMap, ", ""),
        );
        for want in [
            "spec.workloads[0].name:",
            "spec.workloads[0].kubernetes.manifests[0].kind: is required",
        ] {
            assert!(all.contains(want), "{want:?} not in {all}");
        }
        assert!(errors_of("{").contains("manifest"));
    }

    #[test]
    fn too_many_workloads_fail_while_parsing() {
        let mut y = String::from(
            "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  workloads:\n",
        );
        for i in 0..=MAX_WORKLOADS {
            y.push_str(&format!("    - {{name: w{i}, inference: {{model: {{name: m, sha256: x}}, input: {{http: {{}}}}}}}}\n"));
        }
        let e = errors_of(&y);
        assert!(e.contains("too many elements"), "{e}");
    }
}
