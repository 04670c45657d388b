//! Inference workloads end to end with the real hub and `edge-agent`: a model
//! pushed to the hub is downloaded, verified and loaded by the agent
//! (Synced/Healthy), served on the agent's local KServe v2 endpoint with the
//! onnxruntime scores; a corrupted blob on the hub is refused and the
//! workload reports Failed with the hash mismatch.

use std::path::PathBuf;
use std::time::Duration;

use edgefleet_tests::agent::{Agent, AgentOptions};
use edgefleet_tests::eventually;
use edgefleet_tests::hub::Hub;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn deployment(workload: &str, model: &str, sha256: &str) -> String {
    edgefleet_tests::fixtures::inference(workload, model, sha256, "0.8")
}

async fn workload_status(agent: &Agent, name: &str) -> Option<Value> {
    let st = agent.status().await;
    st["workloads"]
        .as_array()?
        .iter()
        .find(|w| w["name"].as_str().is_some_and(|n| n.ends_with(name)))
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_is_downloaded_served_and_corruption_fails() {
    edgefleet_tests::agent::install_crypto();
    let hub = Hub::start().await;
    let agent = Agent::enroll_and_start(&hub, "pi-infer", &[("site", "plant-9")]).await;

    let sha = edgefleet_tests::fixtures::push_vibration(&hub).await;
    hub.deploy("anomaly", &deployment("anomaly", "vibration", &sha))
        .await;

    eventually("inference workload Synced and Healthy", T, || async {
        let w = workload_status(&agent, "anomaly").await?;
        (w["sync"] == "Synced" && w["health"] == "Healthy").then_some(())
    })
    .await;

    // Served on the agent's local KServe v2 endpoint.
    let http = reqwest::Client::new();
    let samples: Value = serde_json::from_slice(
        &std::fs::read(models_dir().join("vibration/samples.json")).expect("samples"),
    )
    .expect("samples JSON");
    let reading = &samples["readings"][0];
    let resp = http
        .post(format!("{}/v2/models/vibration/infer", agent.http_url()))
        .json(&reading["payload"])
        .send()
        .await
        .expect("agent HTTP");
    assert_eq!(resp.status(), 200);
    let out: Value = resp.json().await.expect("infer JSON");
    let score = out["outputs"][0]["data"][0].as_f64().expect("score");
    let want = reading["score"].as_f64().expect("reference score");
    assert!((score - want).abs() <= 1e-4, "{score} vs {want}");
    let resp = http
        .post(format!("{}/v2/models/vibration/infer", agent.http_url()))
        .json(&json!({"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": vec![0.0; 8]}]}))
        .send()
        .await
        .expect("agent HTTP");
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("error JSON");
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|m| m.contains("[-1, 64]")),
        "{err}"
    );
    // Per-model metrics, labelled with the workload's full name.
    let text = agent.metrics().await;
    let requests: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("edgefleet_agent_inference_requests_total{") && l.contains("anomaly")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(requests >= 2.0, "{text}");

    // A blob corrupted on the hub is refused: Failed with the reason.
    let other = std::fs::read(models_dir().join("digits/digits.onnx")).expect("model");
    let bad_sha = hub.push_model("digits", other).await;
    std::fs::write(
        hub.data_dir()
            .join("models")
            .join(format!("{bad_sha}.onnx")),
        b"not the model",
    )
    .expect("corrupt the blob");
    hub.deploy("digits", &deployment("digits", "digits", &bad_sha))
        .await;
    eventually("corrupted model workload Failed", T, || async {
        let w = workload_status(&agent, "digits").await?;
        (w["sync"] == "Failed"
            && w["message"]
                .as_str()
                .is_some_and(|m| m.contains("hash mismatch")))
        .then_some(())
    })
    .await;
    let resp = http
        .get(format!("{}/v2/models/digits/ready", agent.http_url()))
        .send()
        .await
        .expect("agent HTTP");
    assert_eq!(resp.status(), 404, "a corrupted model is never loaded");
}

/// Sensor readings published on the device-local mosquitto become anomaly
/// events at the hub; normal readings (score <= 0.8) are filtered out; with
/// the uplink down, results queue and arrive after the reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mqtt_readings_become_anomaly_events_at_the_hub() {
    edgefleet_tests::agent::install_crypto();
    let Some(local) = edgefleet_tests::mosquitto::Mosquitto::start().await else {
        return;
    };
    let hub = Hub::start().await;
    let opts = AgentOptions {
        device_id: Some("pi-mqtt".into()),
        env: vec![("EDGEFLEET_LOCAL_BROKER_URL".into(), local.url())],
        ..Default::default()
    };
    let (mut agent, uplink) =
        Agent::enroll_behind(&hub, &hub.broker_url(), &[("site", "plant-9")], opts).await;
    agent.start().await;
    let sha = edgefleet_tests::fixtures::push_vibration(&hub).await;
    let yaml = deployment("anomaly", "vibration", &sha).replace(
        "input: {http: {}}",
        "input: {mqtt: {topic: sensors/vibration}}",
    );
    hub.deploy("anomaly", &yaml).await;
    eventually("inference workload Synced and Healthy", T, || async {
        let w = workload_status(&agent, "anomaly").await?;
        (w["sync"] == "Synced" && w["health"] == "Healthy").then_some(())
    })
    .await;

    let samples: Value = serde_json::from_slice(
        &std::fs::read(models_dir().join("vibration/samples.json")).expect("samples"),
    )
    .expect("samples JSON");
    let readings = samples["readings"].as_array().expect("readings").clone();
    let normal = readings
        .iter()
        .find(|r| r["anomaly"] == false)
        .expect("normal");
    let anomalous = readings
        .iter()
        .find(|r| r["anomaly"] == true)
        .expect("anomaly");

    let (host, port) = edgefleet_tests::device::host_port(&local.url());
    let opts = rumqttc::MqttOptions::new("sensor", host, port);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 16);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let publish = |r: &Value| {
        let bytes = serde_json::to_vec(&r["payload"]).expect("payload");
        let _ = client.try_publish("sensors/vibration", rumqttc::QoS::AtLeastOnce, false, bytes);
    };

    // The agent's subscription may not be up yet: republish until seen.
    let events = eventually("anomaly event at the hub", T, || async {
        publish(normal);
        publish(anomalous);
        let (code, page) = hub.get("/devices/pi-mqtt/events?limit=1000").await;
        assert_eq!(code, 200, "{page}");
        let items: Vec<Value> = page["items"]
            .as_array()?
            .iter()
            .filter(|e| e["kind"] == "inference.result")
            .cloned()
            .collect();
        (!items.is_empty()).then_some(items)
    })
    .await;
    let want = anomalous["score"].as_f64().expect("score");
    for e in &events {
        let score = e["payload"]["outputs"][0]["data"][0]
            .as_f64()
            .expect("score");
        assert!(score > 0.8, "only anomalies go upstream: {e}");
        assert!((score - want).abs() <= 1e-4, "{score} vs {want}");
        assert_eq!(e["payload"]["model"], "vibration", "{e}");
    }

    // Uplink down: results queue in the agent's outbox and reach the hub
    // after the reconnect, each exactly once.
    uplink.set_down(true);
    agent.wait_uplink(false).await;
    let before = inference_requests(&agent).await;
    let offline: Vec<String> = (0..5).map(|i| format!("offline-{i}")).collect();
    for id in &offline {
        let mut payload = anomalous["payload"].clone();
        payload["id"] = json!(id);
        let bytes = serde_json::to_vec(&payload).expect("payload");
        client
            .publish("sensors/vibration", rumqttc::QoS::AtLeastOnce, false, bytes)
            .await
            .expect("publish to the local broker");
    }
    eventually("offline readings inferred", T, || async {
        (inference_requests(&agent).await >= before + offline.len() as f64).then_some(())
    })
    .await;
    assert!(
        agent.metric("edgefleet_agent_outbox_depth").await >= offline.len() as f64,
        "results wait in the outbox while the uplink is down"
    );
    assert!(
        result_ids(&hub)
            .await
            .iter()
            .all(|id| !id.starts_with("offline-")),
        "nothing reached the hub while the uplink was down"
    );
    uplink.set_down(false);
    let ids = eventually("offline results at the hub after reconnect", T, || async {
        let ids = result_ids(&hub).await;
        offline.iter().all(|o| ids.contains(o)).then_some(ids)
    })
    .await;
    for o in &offline {
        let n = ids.iter().filter(|id| *id == o).count();
        assert_eq!(n, 1, "{o} arrived {n} times");
    }
}

/// Sum of the agent's inference request counters over all models.
async fn inference_requests(agent: &Agent) -> f64 {
    agent
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("edgefleet_agent_inference_requests_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The request ids of the inference results the hub holds for `pi-mqtt`.
async fn result_ids(hub: &Hub) -> Vec<String> {
    let (code, page) = hub.get("/devices/pi-mqtt/events?limit=1000").await;
    assert_eq!(code, 200, "{page}");
    page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "inference.result")
        .filter_map(|e| e["payload"]["id"].as_str().map(str::to_owned))
        .collect()
}
