//! No desired document a device would refuse is ever issued, and no one
//! document can take the hub's MQTT session down.
//!
//! Two deployments, each valid alone, matched to one device: three 200 KB
//! ConfigMaps each (1.6 MB together, over the 1 MiB payload limit), or 40
//! workloads each (80, over the 64 a device accepts). The apply that makes
//! the combination is refused naming the device and the limit; with that
//! check off, the publisher withholds the document and marks the device;
//! with the publisher's check off too, the MQTT session drops the publish
//! and recovers. Throughout, `/readyz` stays ready and a second device
//! keeps getting updates. A device that refuses a document says why, and
//! `edgectl describe device` shows it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use edgefleet_protocol::{DesiredState, DeviceId, Signer};
use edgefleet_tests::agent::{Agent, install_crypto};
use edgefleet_tests::device::{MqttDevice, host_port};
use edgefleet_tests::eventually;
use edgefleet_tests::fixtures::hub_on_mosquitto;
use edgefleet_tests::hub::{Hub, HubOptions};
use edgefleet_tests::mosquitto::Mosquitto;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// A hub on the embedded broker, or on mosquitto (`None`: skipped).
async fn hub_on(mosquitto: bool, env: &[(&str, &str)]) -> Option<(Hub, Option<Mosquitto>)> {
    install_crypto();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if !mosquitto {
        let hub = Hub::start_with(HubOptions {
            env,
            ..Default::default()
        })
        .await;
        return Some((hub, None));
    }
    let m = Mosquitto::start().await?;
    let hub = Hub::start_with(HubOptions {
        external_broker: Some(m.url()),
        env,
        ..Default::default()
    })
    .await;
    Some((hub, Some(m)))
}

/// A deployment for `selector` with `workloads` workloads of `configmaps`
/// ConfigMaps each, every ConfigMap holding `kb` KB of data.
fn deployment(
    name: &str,
    selector: &str,
    workloads: usize,
    configmaps: usize,
    kb: usize,
) -> String {
    let blob = "x".repeat(kb * 1000);
    let mut w = String::new();
    for i in 0..workloads {
        w.push_str(&format!(
            "    - name: w{i}\n      kubernetes:\n        manifests:\n"
        ));
        for j in 0..configmaps {
            w.push_str(&format!(
                "          - {{apiVersion: v1, kind: ConfigMap, metadata: {{name: {name}-{i}-{j}, namespace: demo}}, data: {{blob: \"{blob}\"}}}}\n"
            ));
        }
    }
    format!(
        "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {selector}}}\n  workloads:\n{w}"
    )
}

/// Polls `/readyz` every 50 ms in the background; `ok()` says whether it
/// was ever not ready.
struct ReadyWatch {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyWatch {
    fn start(hub: &Hub) -> Self {
        let url = format!("{}/readyz", hub.api_url());
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let (s, f) = (stop.clone(), failures.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            while !s.load(Ordering::Relaxed) {
                let ok = http
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if !ok {
                    f.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self {
            stop,
            failures,
            task,
        }
    }

    async fn not_ready_polls(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.failures.load(Ordering::Relaxed)
    }
}

async fn started(hub: &Hub, id: &str, labels: &[(&str, &str)]) -> Agent {
    let a = Agent::enroll_and_start(hub, id, labels).await;
    a.wait_uplink(true).await;
    a
}

/// Applies `big1` and `big2` (one workload of 3 × 140 KB each): each fits
/// a device, both together do not.
async fn put_big_pair(hub: &Hub) {
    for name in ["big1", "big2"] {
        hub.deploy(name, &deployment(name, "{site: plant-3}", 1, 3, 140))
            .await;
    }
}

/// Deletes deployment `name`; the condition on `device` then clears.
async fn delete_clears_condition(hub: &Hub, name: &str, device: &str) {
    let (code, _) = hub
        .api(
            reqwest::Method::DELETE,
            &format!("/deployments/{name}"),
            None,
        )
        .await;
    assert_eq!(code, 204);
    eventually("condition cleared", T, || async {
        conditions(hub, device).await.is_empty().then_some(())
    })
    .await;
}

/// The agent holds the hub's current desired revision for it, which is
/// above `above` (the agent's revision before the change waited for).
async fn agent_at_hub_revision_above(hub: &Hub, agent: &Agent, above: f64) {
    eventually("agent at the hub's (new) revision", T, || async {
        let (_, d) = hub.get(&format!("/devices/{}", agent.device_id)).await;
        let want = d["desiredRevision"].as_f64()?;
        let have = agent.metric("edgefleet_agent_desired_revision").await;
        (want > above && have == want).then_some(())
    })
    .await;
}

async fn agent_at_hub_revision(hub: &Hub, agent: &Agent) {
    agent_at_hub_revision_above(hub, agent, 0.0).await;
}

/// The second device still gets updates: a new generation of `small`
/// reaches it.
async fn second_device_keeps_updating(hub: &Hub, other: &Agent, round: usize) {
    let before = other.metric("edgefleet_agent_desired_revision").await;
    hub.deploy("small", &deployment("small", "{role: other}", 1, 1, round))
        .await;
    agent_at_hub_revision_above(hub, other, before).await;
}

async fn conditions(hub: &Hub, id: &str) -> Vec<Value> {
    let (_, d) = hub.get(&format!("/devices/{id}")).await;
    d["conditions"].as_array().cloned().unwrap_or_default()
}

async fn wait_condition(hub: &Hub, id: &str, kind: &str) -> String {
    eventually(&format!("{kind} on {id}"), T, || async {
        conditions(hub, id)
            .await
            .iter()
            .find(|c| c["type"] == kind)
            .map(|c| c["message"].as_str().unwrap_or_default().to_owned())
    })
    .await
}

/// Waits for condition `kind` on `id`; checks its message with `check` and
/// that `edgectl describe device` shows it with `shown`.
async fn condition_reported(hub: &Hub, id: &str, kind: &str, check: &str, shown: &str) {
    let why = wait_condition(hub, id, kind).await;
    assert!(why.contains(check), "{why}");
    let (code, out, _) = hub.edgectl(&["describe", "device", id]);
    assert_eq!(code, 0);
    assert!(out.contains(kind) && out.contains(shown), "{out}");
}

async fn an_oversized_combination_is_refused_at_apply(mosquitto: bool) {
    let Some((hub, _broker)) = hub_on(mosquitto, &[]).await else {
        return;
    };
    let big = started(&hub, "pi-big", &[("site", "plant-3")]).await;
    let other = started(&hub, "pi-other", &[("role", "other")]).await;
    let ready = ReadyWatch::start(&hub);

    let (code, body) = hub
        .put_deployment("big1", &deployment("big1", "{site: plant-3}", 1, 3, 140))
        .await;
    assert_eq!(code, 201, "big1 alone is fine: {body}");
    agent_at_hub_revision(&hub, &big).await;
    let (code, body) = hub
        .put_deployment("big2", &deployment("big2", "{site: plant-3}", 1, 3, 140))
        .await;
    assert_eq!(code, 409, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("device pi-big would receive a desired state of ")
            && msg.contains("bytes signed; the limit is 1048576 (deployments big1, big2)"),
        "{msg}"
    );
    assert_eq!(body["error"]["code"], "limit_exceeded");
    // edgectl says the same and fails.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big2.yaml");
    std::fs::write(&file, deployment("big2", "{site: plant-3}", 1, 3, 140)).unwrap();
    let (code, _, err) = hub.edgectl(&["apply", "-f", file.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("device pi-big would receive"), "{err}");
    let (code, _) = hub.get("/deployments/big2").await;
    assert_eq!(code, 404, "nothing of big2 was stored");

    second_device_keeps_updating(&hub, &other, 1).await;
    assert_eq!(ready.not_ready_polls().await, 0, "/readyz went unready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eighty_workloads_are_refused_at_apply_label_change_and_shown_after_enrollment() {
    install_crypto();
    let hub = Hub::start().await;
    let dev = started(&hub, "pi-many", &[("site", "plant-3")]).await;
    let (code, body) = hub
        .put_deployment("many1", &deployment("many1", "{site: plant-3}", 40, 1, 0))
        .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = hub
        .put_deployment("many2", &deployment("many2", "{site: plant-3}", 40, 1, 0))
        .await;
    assert_eq!(code, 409);
    assert_eq!(
        body["error"]["message"],
        "device pi-many would receive 80 workloads; the limit is 64 (deployments many1, many2)"
    );

    // many2 on another label: fine until a label change would combine them.
    let (code, body) = hub
        .put_deployment("many2", &deployment("many2", "{extra: \"yes\"}", 40, 1, 0))
        .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = hub
        .api(
            reqwest::Method::PATCH,
            "/devices/pi-many",
            Some(("application/json", r#"{"labels":{"extra":"yes"}}"#.into())),
        )
        .await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        body["error"]["message"],
        "device pi-many would receive 80 workloads; the limit is 64 (deployments many1, many2)"
    );
    agent_at_hub_revision(&hub, &dev).await;

    // A device enrolling with both labels is let in and shown why it gets
    // nothing: it can be fixed from the hub, without a visit to the site.
    let late = started(&hub, "pi-late", &[("site", "plant-3"), ("extra", "yes")]).await;
    condition_reported(
        &hub,
        "pi-late",
        "DesiredTooLarge",
        "80 workloads; the limit is 64 (deployments many1, many2)",
        "80 workloads",
    )
    .await;
    assert_eq!(
        late.metric("edgefleet_agent_desired_accepted_total").await,
        0.0
    );

    // Fixing it at the hub clears the condition and the device converges.
    let before = late.metric("edgefleet_agent_desired_revision").await;
    delete_clears_condition(&hub, "many2", "pi-late").await;
    agent_at_hub_revision_above(&hub, &late, before).await;
}

/// The apply check off: the publisher alone withholds the document.
async fn the_publisher_alone_withholds_an_oversized_document(mosquitto: bool) {
    let Some((hub, _broker)) =
        hub_on(mosquitto, &[("CLOUDCORE_TEST_UNCHECKED_LIMITS", "api")]).await
    else {
        return;
    };
    let big = started(&hub, "pi-big", &[("site", "plant-3")]).await;
    let other = started(&hub, "pi-other", &[("role", "other")]).await;
    let ready = ReadyWatch::start(&hub);
    put_big_pair(&hub).await;
    let why = wait_condition(&hub, "pi-big", "DesiredTooLarge").await;
    assert!(
        why.starts_with("desired state not issued: the device would receive a desired state of ")
            && why.contains("(deployments big1, big2)"),
        "{why}"
    );
    // The device keeps its last good document: big1 only.
    agent_at_hub_revision(&hub, &big).await;
    let (_, st) = hub.get("/deployments/big2/status").await;
    assert_eq!(st["devices"][0]["conditions"][0]["type"], "DesiredTooLarge");
    assert!(
        hub.metric("edgefleet_hub_device_conditions{type=\"DesiredTooLarge\"}")
            .await
            >= 1.0
    );
    second_device_keeps_updating(&hub, &other, 1).await;

    delete_clears_condition(&hub, "big2", "pi-big").await;
    assert_eq!(ready.not_ready_polls().await, 0, "/readyz went unready");
}

/// Both checks off: the MQTT session itself drops the unsendable publish,
/// marks the device and recovers, without a restart.
async fn the_mqtt_session_drops_an_unsendable_publish_and_recovers(mosquitto: bool) {
    let Some((hub, _broker)) = hub_on(
        mosquitto,
        &[("CLOUDCORE_TEST_UNCHECKED_LIMITS", "api,publisher")],
    )
    .await
    else {
        return;
    };
    let big = started(&hub, "pi-big", &[("site", "plant-3")]).await;
    let other = started(&hub, "pi-other", &[("role", "other")]).await;
    put_big_pair(&hub).await;
    let why = wait_condition(&hub, "pi-big", "DesiredTooLarge").await;
    assert!(why.contains("dropped from the hub's MQTT queue"), "{why}");
    assert!(hub.metric("edgefleet_hub_desired_dropped_total").await >= 1.0);
    eventually("hub ready again", T, || async {
        let (code, _) = hub.get("/devices").await;
        let r = reqwest::get(format!("{}/readyz", hub.api_url()))
            .await
            .ok()?;
        (code == 200 && r.status().is_success()).then_some(())
    })
    .await;
    second_device_keeps_updating(&hub, &other, 1).await;
    // Deleting one deployment makes a sendable document again.
    let before = big.metric("edgefleet_agent_desired_revision").await;
    let (code, _) = hub
        .api(reqwest::Method::DELETE, "/deployments/big2", None)
        .await;
    assert_eq!(code, 204);
    agent_at_hub_revision_above(&hub, &big, before).await;
    second_device_keeps_updating(&hub, &other, 2).await;
}

/// mosquitto (anonymous publishers, as the test broker allows) carries a
/// document signed with the hub's key but stale; the device refuses it and
/// the hub shows why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_rejection_shows_at_the_hub_with_its_reason() {
    let Some((broker, hub)) = hub_on_mosquitto().await else {
        return;
    };
    let dev = started(&hub, "pi-rej", &[("site", "plant-3")]).await;
    for round in 1..=2 {
        let before = dev.metric("edgefleet_agent_desired_revision").await;
        hub.deploy("d", &deployment("d", "{site: plant-3}", 1, 1, round))
            .await;
        agent_at_hub_revision_above(&hub, &dev, before).await;
    }
    let pem = std::fs::read_to_string(hub.data_dir().join("hub.key")).expect("hub key");
    let hub_key = Signer::from_pkcs8_pem(&pem).expect("hub key parses");
    // Revision 1 of an epoch long past: stale for a device at revision 2.
    let stale: DesiredState = serde_json::from_value(serde_json::json!({
        "deviceId": "pi-rej", "revision": 1, "hubEpoch": 1, "issuedAtMs": 1, "workloads": []
    }))
    .unwrap();
    let (host, port) = host_port(&broker.url());
    let attacker =
        MqttDevice::connect_as(DeviceId::new("replayer").unwrap(), &host, port, None).await;
    attacker
        .publish("edgefleet/v1/devices/pi-rej/desired", hub_key.seal(&stale))
        .await;
    condition_reported(
        &hub,
        "pi-rej",
        "DesiredRejected",
        "desired revision 1 rejected by device: stale_revision: ",
        "rejected by device: stale_revision",
    )
    .await;
    // The device kept what it had.
    assert_eq!(
        dev.metric("edgefleet_agent_messages_rejected_total{reason=\"stale_revision\"}")
            .await,
        1.0
    );
    agent_at_hub_revision(&hub, &dev).await;
}

edgefleet_tests::on_both_brokers!(an_oversized_combination_is_refused_at_apply, (false, true) => oversized_refused_at_apply_embedded, oversized_refused_at_apply_mosquitto);

edgefleet_tests::on_both_brokers!(the_publisher_alone_withholds_an_oversized_document, (false, true) => publisher_withholds_oversized_embedded, publisher_withholds_oversized_mosquitto);

edgefleet_tests::on_both_brokers!(the_mqtt_session_drops_an_unsendable_publish_and_recovers, (false, true) => session_drops_unsendable_embedded, session_drops_unsendable_mosquitto);
