//! Health from the status the cluster's controllers write: Deployment,
//! StatefulSet and DaemonSet rollouts, Job completion, Pod phase and
//! container readiness; other kinds are Healthy once they exist.

use edgefleet_protocol::Health;
use serde_json::Value;

use super::LiveObject;

/// Health from status: Deployment/StatefulSet/DaemonSet rollout, Job
/// completion/failure, Pod phase and container readiness; other kinds are
/// Healthy once they exist. The message says what is missing.
pub fn health_of(obj: &LiveObject) -> (Health, Option<String>) {
    let status = obj.raw.get("status").filter(|s| s.is_object());
    let spec = obj.raw.get("spec");
    match (obj.key.group(), obj.key.kind.as_str()) {
        ("apps", kind @ ("Deployment" | "StatefulSet" | "DaemonSet")) => {
            let Some(status) = status else {
                return progressing("waiting for the controller to report status");
            };
            if let Some(generation) = obj.generation
                && int(status, "observedGeneration") < generation
            {
                return progressing(format!(
                    "waiting for the controller to observe generation {generation}"
                ));
            }
            match kind {
                "Deployment" => deployment_health(spec, status),
                "StatefulSet" => statefulset_health(spec, status),
                _ => daemonset_health(spec, status),
            }
        }
        ("batch", "Job") => job_health(spec, status),
        ("", "Pod") => pod_health(status),
        _ => (Health::Healthy, None),
    }
}

fn progressing(msg: impl Into<String>) -> (Health, Option<String>) {
    (Health::Progressing, Some(msg.into()))
}

fn degraded(msg: impl Into<String>) -> (Health, Option<String>) {
    (Health::Degraded, Some(msg.into()))
}

fn int(v: &Value, field: &str) -> i64 {
    v.get(field).and_then(Value::as_i64).unwrap_or(0)
}

fn str_at<'a>(v: Option<&'a Value>, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v?, |v, p| v.get(p))
        .and_then(Value::as_str)
}

fn desired_replicas(spec: Option<&Value>) -> i64 {
    spec.and_then(|s| s.get("replicas"))
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

/// The condition of `type_` whose status is "True".
fn true_condition<'a>(status: Option<&'a Value>, type_: &str) -> Option<&'a Value> {
    status?.get("conditions")?.as_array()?.iter().find(|c| {
        c.get("type").and_then(Value::as_str) == Some(type_)
            && c.get("status").and_then(Value::as_str) == Some("True")
    })
}

fn condition_text(c: &Value) -> String {
    let reason = c.get("reason").and_then(Value::as_str).unwrap_or("");
    let message = c.get("message").and_then(Value::as_str).unwrap_or("");
    match (reason.is_empty(), message.is_empty()) {
        (false, false) => format!("{reason}: {message}"),
        (false, true) => reason.to_owned(),
        (true, false) => message.to_owned(),
        (true, true) => String::new(),
    }
}

/// `what`, followed by the object's reason and message when it has any.
fn saying(what: &str, c: &Value) -> String {
    match condition_text(c) {
        text if text.is_empty() => what.to_owned(),
        text => format!("{what}: {text}"),
    }
}

fn deployment_health(spec: Option<&Value>, status: &Value) -> (Health, Option<String>) {
    let conditions = status.get("conditions").and_then(Value::as_array);
    for c in conditions.into_iter().flatten() {
        let type_ = c.get("type").and_then(Value::as_str);
        let reason = c.get("reason").and_then(Value::as_str);
        if type_ == Some("Progressing") && reason == Some("ProgressDeadlineExceeded") {
            return degraded(format!("rollout stuck: {}", condition_text(c)));
        }
    }
    if let Some(c) = true_condition(Some(status), "ReplicaFailure") {
        return degraded(format!("replica failure: {}", condition_text(c)));
    }
    let desired = desired_replicas(spec);
    let updated = int(status, "updatedReplicas");
    let total = int(status, "replicas");
    let available = int(status, "availableReplicas");
    if updated < desired {
        return progressing(format!("{updated}/{desired} replicas updated"));
    }
    if total > updated {
        return progressing(format!(
            "{} old replicas pending termination",
            total - updated
        ));
    }
    if available < desired {
        return progressing(format!("{available}/{desired} replicas available"));
    }
    (Health::Healthy, None)
}

fn statefulset_health(spec: Option<&Value>, status: &Value) -> (Health, Option<String>) {
    let desired = desired_replicas(spec);
    let strategy = str_at(spec, &["updateStrategy", "type"]).unwrap_or("RollingUpdate");
    if strategy == "RollingUpdate" {
        let partition = spec
            .and_then(|s| s.pointer("/updateStrategy/rollingUpdate/partition"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let updated = int(status, "updatedReplicas");
        let want_updated = (desired - partition).max(0);
        if updated < want_updated {
            return progressing(format!("{updated}/{want_updated} replicas updated"));
        }
    }
    let ready = int(status, "readyReplicas");
    if ready < desired {
        return progressing(format!("{ready}/{desired} replicas ready"));
    }
    if status.get("availableReplicas").is_some() {
        let available = int(status, "availableReplicas");
        if available < desired {
            return progressing(format!("{available}/{desired} replicas available"));
        }
    }
    (Health::Healthy, None)
}

fn daemonset_health(spec: Option<&Value>, status: &Value) -> (Health, Option<String>) {
    let desired = int(status, "desiredNumberScheduled");
    let strategy = str_at(spec, &["updateStrategy", "type"]).unwrap_or("RollingUpdate");
    let updated = int(status, "updatedNumberScheduled");
    if strategy == "RollingUpdate" && updated < desired {
        return progressing(format!("{updated}/{desired} pods updated"));
    }
    let available = int(status, "numberAvailable");
    if available < desired {
        return progressing(format!("{available}/{desired} pods available"));
    }
    (Health::Healthy, None)
}

fn job_health(spec: Option<&Value>, status: Option<&Value>) -> (Health, Option<String>) {
    if let Some(c) = true_condition(status, "Failed") {
        return degraded(format!("job failed: {}", condition_text(c)));
    }
    if true_condition(status, "Complete").is_some() {
        return (Health::Healthy, None);
    }
    if spec.and_then(|s| s.get("suspend")).and_then(Value::as_bool) == Some(true) {
        return progressing("job suspended");
    }
    let completions = spec
        .and_then(|s| s.get("completions"))
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let succeeded = status.map_or(0, |s| int(s, "succeeded"));
    let failed = status.map_or(0, |s| int(s, "failed"));
    let mut msg = format!("{succeeded}/{completions} completions");
    if failed > 0 {
        msg.push_str(&format!(", {failed} failed pods"));
    }
    progressing(msg)
}

/// Container waiting reasons that will not clear by themselves.
const STUCK_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

fn pod_health(status: Option<&Value>) -> (Health, Option<String>) {
    let Some(status) = status else {
        return progressing("waiting for the pod to be scheduled");
    };
    let containers: Vec<&Value> = ["initContainerStatuses", "containerStatuses"]
        .iter()
        .filter_map(|f| status.get(*f).and_then(Value::as_array))
        .flatten()
        .collect();
    let stuck = containers.iter().find_map(|c| {
        let waiting = c.pointer("/state/waiting")?;
        let reason = waiting.get("reason").and_then(Value::as_str)?;
        STUCK_REASONS.contains(&reason).then(|| {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
            format!("container {name}: {}", condition_text(waiting))
        })
    });
    match status.get("phase").and_then(Value::as_str) {
        Some("Succeeded") => (Health::Healthy, None),
        Some("Failed") => degraded(saying("pod failed", status)),
        Some("Pending") | Some("Running") if stuck.is_some() => degraded(stuck.unwrap_or_default()),
        Some("Running") => {
            if true_condition(Some(status), "Ready").is_some() {
                return (Health::Healthy, None);
            }
            let main: Vec<&Value> = status
                .get("containerStatuses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .collect();
            let ready = main
                .iter()
                .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            progressing(format!("{ready}/{} containers ready", main.len()))
        }
        Some("Pending") => progressing(saying("pod pending", status)),
        Some(other) => (Health::Unknown, Some(format!("pod phase {other}"))),
        None => progressing("waiting for the pod to be scheduled"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::kube::ObjectKey;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn live(manifest: Value) -> LiveObject {
        LiveObject {
            key: ObjectKey::from_manifest(&manifest).expect("key"),
            uid: "u".into(),
            resource_version: "1".into(),
            generation: manifest
                .pointer("/metadata/generation")
                .and_then(Value::as_i64),
            labels: BTreeMap::new(),
            raw: manifest,
        }
    }

    fn deploy(replicas: i64, status: Value) -> LiveObject {
        live(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "demo", "generation": 2},
            "spec": {"replicas": replicas},
            "status": status,
        }))
    }

    /// `(object, health, message)`; a `None` message is not checked.
    type Case = (LiveObject, Health, Option<&'static str>);

    fn check(cases: Vec<Case>) {
        for (obj, want, msg) in cases {
            let (h, m) = health_of(&obj);
            assert_eq!(h, want, "{} {m:?}", obj.raw["status"]);
            if let Some(msg) = msg {
                assert_eq!(m.as_deref(), Some(msg), "{}", obj.raw["status"]);
            }
        }
    }

    #[test]
    #[rustfmt::skip]
    fn deployment_health_follows_rollout() {
        let (h, m) = health_of(&deploy(3, json!({"observedGeneration": 1})));
        assert_eq!(h, Health::Progressing);
        assert!(m.unwrap_or_default().contains("generation 2"));
        let deadline = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}]);
        check(vec![
            (deploy(3, json!(null)), Health::Progressing, None),
            (deploy(3, json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 1})), Health::Progressing, Some("1/3 replicas available")),
            (deploy(3, json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3})), Health::Progressing, Some("1 old replicas pending termination")),
            (deploy(3, json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3, "readyReplicas": 3})), Health::Healthy, None),
            (deploy(1, json!({"observedGeneration": 2, "conditions": deadline})), Health::Degraded, None),
        ]);
        assert_eq!(health_of(&deploy(3, json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3, "readyReplicas": 3}))).1, None);
    }

    #[test]
    #[rustfmt::skip]
    fn statefulset_and_daemonset_health() {
        let sts = |status: Value| live(json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": "d", "generation": 1}, "spec": {"replicas": 2}, "status": status}));
        let ds = |status: Value| live(json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": "d", "generation": 1}, "spec": {}, "status": status}));
        check(vec![
            (sts(json!({"observedGeneration": 1, "updatedReplicas": 2, "readyReplicas": 1})), Health::Progressing, Some("1/2 replicas ready")),
            (sts(json!({"observedGeneration": 1, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2})), Health::Healthy, None),
            (ds(json!({"observedGeneration": 1, "desiredNumberScheduled": 2, "updatedNumberScheduled": 2, "numberAvailable": 1})), Health::Progressing, Some("1/2 pods available")),
            (ds(json!({"observedGeneration": 1, "desiredNumberScheduled": 2, "updatedNumberScheduled": 2, "numberAvailable": 2})), Health::Healthy, None),
        ]);
    }

    #[test]
    fn job_and_pod_health() {
        let job = |status: Value| {
            live(json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "j", "namespace": "d"}, "spec": {"completions": 2},
            "status": status}))
        };
        assert_eq!(
            health_of(&job(json!({"succeeded": 1}))).1.as_deref(),
            Some("1/2 completions")
        );
        let done =
            job(json!({"succeeded": 2, "conditions": [{"type": "Complete", "status": "True"}]}));
        assert_eq!(health_of(&done), (Health::Healthy, None));
        let failed = job(
            json!({"failed": 6, "conditions": [{"type": "Failed", "status": "True",
            "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}),
        );
        assert_eq!(health_of(&failed).0, Health::Degraded);

        let pod = |status: Value| {
            live(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "d"}, "status": status}))
        };
        assert_eq!(
            health_of(&pod(json!({"phase": "Pending"}))).0,
            Health::Progressing
        );
        let pulling = pod(
            json!({"phase": "Pending", "containerStatuses": [{"name": "app",
            "ready": false, "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no"}}}]}),
        );
        assert_eq!(
            health_of(&pulling),
            (
                Health::Degraded,
                Some("container app: ImagePullBackOff: no".into())
            )
        );
        let ready = pod(
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "app", "ready": true, "state": {"running": {}}}]}),
        );
        assert_eq!(health_of(&ready), (Health::Healthy, None));
        let starting = pod(
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": "app", "ready": false, "state": {"running": {}}}]}),
        );
        assert_eq!(
            health_of(&starting).1.as_deref(),
            Some("0/1 containers ready")
        );
        assert_eq!(
            health_of(&pod(json!({"phase": "Failed", "reason": "Evicted"}))).0,
            Health::Degraded
        );
        let cm = live(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}));
        assert_eq!(health_of(&cm), (Health::Healthy, None));
    }
}
