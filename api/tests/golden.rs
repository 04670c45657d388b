//! The REST API's JSON, pinned: the hub serialises these types and every
//! client decodes them, so a field renamed in the types would pass every
//! round trip. These literals are what operators' scripts read; changing
//! one is changing the API.

use edgefleet_api::*;
use serde_json::{Value, json};

fn device() -> DeviceRecord {
    DeviceRecord {
        id: edgefleet_protocol::DeviceId::new("pi-1").unwrap(),
        labels: [("site".to_owned(), "a".to_owned())].into(),
        public_key: "AAAA".into(),
        hostname: Some("pi".into()),
        arch: Some("arm64".into()),
        agent_version: Some("0.1.0".into()),
        created_ms: 1,
        last_seen_ms: Some(2),
        presence: Presence::Online,
        desired_revision: Some(3),
        applied_revision: Some(3),
        last_report_ms: Some(4),
        message: None,
        k3s_version: None,
        heartbeat: Some(json!({"cpuPercent": 5.0, "outboxDepth": 7})),
        conditions: vec![Condition {
            kind: ConditionType::DiskPressure,
            message: "full".into(),
            since_ms: 5,
            updated_ms: 6,
        }],
        health: DeviceHealth::Healthy,
    }
}

fn check<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
    value: &T,
    golden: Value,
) {
    assert_eq!(serde_json::to_value(value).unwrap(), golden);
    let back: T = serde_json::from_value(golden).unwrap();
    assert_eq!(&back, value);
}

#[test]
fn a_device() {
    check(
        &device(),
        json!({
            "id": "pi-1", "labels": {"site": "a"}, "publicKey": "AAAA",
            "hostname": "pi", "arch": "arm64", "agentVersion": "0.1.0",
            "createdMs": 1, "lastSeenMs": 2, "presence": "online",
            "desiredRevision": 3, "appliedRevision": 3, "lastReportMs": 4,
            "message": null, "k3sVersion": null,
            "heartbeat": {"cpuPercent": 5.0, "outboxDepth": 7},
            "conditions": [{"type": "DiskPressure", "message": "full", "sinceMs": 5, "updatedMs": 6}],
            "health": "healthy"
        }),
    );
    let hb = device().heartbeat_summary().unwrap();
    assert_eq!(
        (hb.cpu_percent, hb.outbox_depth, hb.mem_used_bytes),
        (5.0, 7, 0)
    );
}

#[test]
fn a_page_and_an_error() {
    check(
        &Page {
            items: vec![1, 2],
            continue_token: Some("pi-2".into()),
        },
        json!({"items": [1, 2], "continue": "pi-2"}),
    );
    let last: Page<u8> = serde_json::from_value(json!({"items": []})).unwrap();
    assert_eq!(last.continue_token, None);
    check(
        &ErrorBody {
            error: ErrorDetail {
                code: "not_found".into(),
                message: "device \"x\" not found".into(),
            },
        },
        json!({"error": {"code": "not_found", "message": "device \"x\" not found"}}),
    );
}

#[test]
fn a_deployment_summary_and_its_status() {
    let counts = Counts {
        targeted: 2,
        in_sync: 1,
        healthy: 1,
        failed: 0,
    };
    check(
        &DeploymentSummary {
            name: "web".into(),
            generation: 3,
            workloads: 1,
            updated_ms: 9,
            counts: counts.clone(),
            source: None,
        },
        json!({"name": "web", "generation": 3, "workloads": 1, "updatedMs": 9,
               "targeted": 2, "inSync": 1, "healthy": 1, "failed": 0}),
    );
    check(
        &DeploymentStatus {
            name: "web".into(),
            generation: 3,
            counts,
            source: None,
            devices: vec![DeviceRollout {
                device: "pi-1".into(),
                presence: Presence::Offline,
                desired_revision: Some(2),
                applied_revision: None,
                in_sync: false,
                healthy: false,
                failed: false,
                workloads: vec![WorkloadRow {
                    name: "web.app".into(),
                    sync: Some(edgefleet_protocol::SyncState::Synced),
                    health: None,
                    message: None,
                }],
                conditions: Vec::new(),
            }],
        },
        json!({"name": "web", "generation": 3, "targeted": 2, "inSync": 1, "healthy": 1,
               "failed": 0, "devices": [{"device": "pi-1", "presence": "offline",
               "desiredRevision": 2, "appliedRevision": null, "inSync": false,
               "healthy": false, "failed": false,
               "workloads": [{"name": "web.app", "sync": "Synced", "health": null, "message": null}]}]}),
    );
}

#[test]
fn an_apply_result_and_a_label_patch() {
    let spec = edgefleet_protocol::Deployment::from_yaml(
        "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {site: a}}\n  workloads:\n    - name: app\n      kubernetes:\n        manifests: [{apiVersion: v1, kind: ConfigMap, metadata: {name: c}}]\n",
    )
    .unwrap();
    let applied = Applied {
        deployment: DeploymentRecord {
            name: "web".into(),
            generation: 2,
            created_ms: 1,
            updated_ms: 2,
            spec: spec.clone(),
            source: Some(edgefleet_api::SourceRef {
                name: "fleet-config".into(),
                commit: "3f2a1c9".into(),
            }),
        },
        result: ApplyResult::Configured,
    };
    let v = serde_json::to_value(&applied).unwrap();
    assert_eq!(
        v["source"],
        json!({"name": "fleet-config", "commit": "3f2a1c9"})
    );
    assert_eq!(v["result"], "configured");
    assert_eq!(v["generation"], 2);
    assert_eq!(v["spec"]["metadata"]["name"], "web");
    assert_eq!(serde_json::from_value::<Applied>(v).unwrap(), applied);
    let mut patch = DevicePatch::default();
    patch.labels.insert("site".into(), Some("b".into()));
    patch.labels.insert("old".into(), None);
    check(&patch, json!({"labels": {"old": null, "site": "b"}}));
}
