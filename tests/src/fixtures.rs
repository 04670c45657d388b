//! Deployments the suites apply, and setups several suites share. Larger
//! manifests live in `tests/fixtures/*.yaml`.

use crate::hub::{Hub, HubOptions};
use crate::mosquitto::Mosquitto;

/// One web Deployment (1 replica) and its ConfigMap in namespace `demo`,
/// for devices labelled `site=plant-3`.
pub const WEB: &str = include_str!("../fixtures/web.yaml");

/// Five objects of four kinds in namespace `demo`, for `site=bench`.
pub const BENCH_SITE: &str = include_str!("../fixtures/bench-site.yaml");

/// The site workload in namespace `ns`: a Deployment of 2 replicas, its
/// Service and ConfigMap (left out without `with_config`), a CRD and a
/// custom resource of it; for `site=plant-3`.
pub fn site(ns: &str, with_config: bool) -> String {
    include_str!("../fixtures/site.yaml")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| with_config || !l.contains("kind: ConfigMap"))
        .map(|l| l.replace("NS", ns) + "\n")
        .collect()
}

/// A deployment `name` for devices labelled `label`, whose Kubernetes
/// workload `workload` holds ConfigMaps in namespace `ns`, each given as
/// `(name, key, value)`.
pub fn configmaps(
    name: &str,
    label: (&str, &str),
    workload: &str,
    ns: &str,
    maps: &[(&str, &str, &str)],
) -> String {
    let (k, v) = label;
    let mut y = format!(
        "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  selector:\n    matchLabels: {{{k}: {v}}}\n  workloads:\n    - name: {workload}\n      kubernetes:\n        manifests:\n"
    );
    for (cm, key, value) in maps {
        y.push_str(&format!(
            "          - {{apiVersion: v1, kind: ConfigMap, metadata: {{name: {cm}, namespace: {ns}}}, data: {{{key}: \"{value}\"}}}}\n"
        ));
    }
    y
}

/// A deployment `name` on every simulated device (`fleet: sim`): one
/// ConfigMap holding `value`. With `bake`, it is rolled out canary (`ring:
/// canary`) / 10 % / the rest, at most 5 % failed once 10 are decided,
/// 60 s to become Healthy.
pub fn sim_deployment(name: &str, value: &str, bake: Option<&str>) -> String {
    let rollout = bake.map_or(String::new(), |bake| {
        format!(
            "  rollout:\n    waves:\n      - {{name: canary, selector: {{matchLabels: {{ring: canary}}}}}}\n      \
             - {{name: early, percent: 10}}\n      - {{name: rest, percent: 100}}\n    healthTimeout: 60s\n    \
             bake: {bake}\n    maxFailures: 5%\n    minSample: 10\n"
        )
    });
    format!(
        "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  \
         selector: {{matchLabels: {{fleet: sim}}}}\n{rollout}  workloads:\n    - name: config\n      \
         kubernetes:\n        manifests:\n          - {{apiVersion: v1, kind: ConfigMap, metadata: \
         {{name: {name}, namespace: sim}}, data: {{v: \"{value}\"}}}}\n"
    )
}

/// Deployment `name` with one inference workload of the same name: model
/// `model` (its sha256) on the agent's local HTTP input, scores above
/// `threshold` sent upstream; for `site=plant-9`.
pub fn inference(name: &str, model: &str, sha256: &str, threshold: &str) -> String {
    format!(
        r#"
apiVersion: edgefleet.io/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  selector:
    matchLabels: {{site: plant-9}}
  workloads:
    - name: {name}
      inference:
        model: {{name: {model}, sha256: "{sha256}"}}
        input: {{http: {{}}}}
        output: {{upstream: true, when: "score > {threshold}"}}
"#
    )
}

/// The reference anomaly model (`models/vibration`), pushed to `hub`;
/// its sha256.
pub async fn push_vibration(hub: &Hub) -> String {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/vibration/vibration.onnx");
    let model = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hub.push_model("vibration", model).await
}

/// A hub whose broker is a fresh mosquitto; `None` after a loud skip when
/// mosquitto is not installed.
pub async fn hub_on_mosquitto() -> Option<(Mosquitto, Hub)> {
    crate::install_crypto();
    let broker = Mosquitto::start().await?;
    let hub = Hub::start_with(HubOptions {
        external_broker: Some(broker.url()),
        ..Default::default()
    })
    .await;
    Some((broker, hub))
}

#[cfg(test)]
mod tests {
    #[test]
    fn fixtures_are_valid_deployments() {
        for y in [
            super::WEB.to_owned(),
            super::BENCH_SITE.to_owned(),
            super::site("plant", true),
            super::site("plant", false),
            super::configmaps(
                "c",
                ("site", "a"),
                "cfg",
                "demo",
                &[("a", "k", "v"), ("b", "k", "v")],
            ),
        ] {
            edgefleet_protocol::Deployment::from_yaml(&y).unwrap_or_else(|e| panic!("{e}:\n{y}"));
        }
        assert!(!super::site("x", false).contains("web-config"));
        assert!(super::site("x", true).contains("sensors.x.example.edgefleet.io"));
    }
}
