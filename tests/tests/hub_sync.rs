//! The hub's desired-state sync, end to end: a real `cloudcore` process, a
//! plain MQTT client as the device, against the embedded broker and against
//! a real mosquitto (external-broker mode).

use std::time::Duration;

use edgefleet_protocol::sign::Expect;
use edgefleet_protocol::{Channel, DesiredState, PublicKey, Signer, open_for};
use edgefleet_tests::device::MqttDevice;
use edgefleet_tests::fixtures::configmaps;
use edgefleet_tests::hub::{Hub, HubOptions};
use edgefleet_tests::mosquitto::Mosquitto;
use reqwest::Method;

/// One ConfigMap in namespace `demo` for `site=plant-3`.
fn deployment() -> String {
    configmaps(
        "line-3",
        ("site", "plant-3"),
        "web",
        "demo",
        &[("web-config", "greeting", "hello")],
    )
}

async fn hub_key(hub: &Hub) -> PublicKey {
    let (code, v) = hub.get("/hub/key").await;
    assert_eq!(code, 200);
    PublicKey::from_base64(v["publicKey"].as_str().unwrap()).unwrap()
}

/// Waits for the next desired document and verifies it with the hub key.
async fn next_desired(dev: &mut MqttDevice, key: &PublicKey, me: &Signer) -> (DesiredState, bool) {
    loop {
        let msg = dev
            .next(Duration::from_secs(15))
            .await
            .expect("a desired-state document within 15 s");
        if msg.topic != dev.topic(Channel::Desired) || msg.payload.is_empty() {
            continue;
        }
        let doc: DesiredState = open_for(&msg.payload, key, &Expect::device(&dev.id), me)
            .unwrap_or_else(|e| panic!("desired document does not verify: {e}"));
        return (doc, msg.retain);
    }
}

/// A hub (on `external`, else its embedded broker), its key, and device
/// `id` enrolled with label site=plant-3 (and its key).
async fn hub_and_device(
    external: Option<&Mosquitto>,
    id: &str,
) -> (Hub, PublicKey, Signer, edgefleet_protocol::EnrollResponse) {
    let hub = Hub::start_with(HubOptions {
        external_broker: external.map(Mosquitto::url),
        ..Default::default()
    })
    .await;
    let key = hub_key(&hub).await;
    let device_key = Signer::generate();
    let enrolled = hub
        .enroll(&device_key, Some(id), &[("site", "plant-3")])
        .await;
    (hub, key, device_key, enrolled)
}

async fn desired_flow(external: Option<&Mosquitto>) {
    let (mut hub, key, device_key, enrolled) = hub_and_device(external, "pi-1").await;
    assert_eq!(enrolled.device_id.as_str(), "pi-1");
    assert_eq!(enrolled.hub_public_key, key.to_base64());
    let mut dev = MqttDevice::connect(&enrolled).await;

    let (code, body) = hub.put_deployment("line-3", &deployment()).await;
    assert_eq!(code, 201, "{body}");
    let (doc, _) = next_desired(&mut dev, &key, &device_key).await;
    assert_eq!(doc.revision, 1);
    assert_eq!(doc.workloads.len(), 1);
    assert_eq!(doc.workloads[0].workload.name, "line-3.web");

    // Retained: a client connecting now gets it immediately, flagged retained.
    let mut late = MqttDevice::connect(&enrolled).await;
    let (doc_again, retained) = next_desired(&mut late, &key, &device_key).await;
    assert!(retained, "desired state must be published retained");
    assert_eq!(doc_again.revision, 1);
    drop(late);
    // The late client took over the session (same client id); reconnect ours.
    drop(dev);
    let mut dev = MqttDevice::connect(&enrolled).await;
    let (doc, _) = next_desired(&mut dev, &key, &device_key).await;
    assert_eq!(doc.revision, 1);

    // Applying the same manifest again changes nothing.
    let (code, _) = hub.put_deployment("line-3", &deployment()).await;
    assert_eq!(code, 200);

    // Relabel out of the selector: revision 2, no workloads.
    let (code, body) = hub
        .api(
            Method::PATCH,
            "/devices/pi-1",
            Some((
                "application/json",
                r#"{"labels":{"site":"plant-4"}}"#.into(),
            )),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (doc, _) = next_desired(&mut dev, &key, &device_key).await;
    assert_eq!(
        doc.revision, 2,
        "same content must not be re-issued; relabel must be"
    );
    assert!(doc.workloads.is_empty());

    // Restart the hub: no revision 3, ever.
    hub.kill().await;
    hub.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while let Some(left) = deadline.checked_duration_since(tokio::time::Instant::now()) {
        let Some(msg) = dev.next(left).await else {
            break;
        };
        if msg.topic == dev.topic(Channel::Desired) && !msg.payload.is_empty() {
            let d: DesiredState =
                open_for(&msg.payload, &key, &Expect::device(&dev.id), &device_key).unwrap();
            assert_eq!(d.revision, 2, "a hub restart must not issue a new revision");
        }
    }
    let (_, d) = hub.get("/devices/pi-1").await;
    assert_eq!(d["desiredRevision"], 2, "{d}");
    let published = hub.metric("edgefleet_hub_desired_revisions_total").await;
    assert_eq!(published, 0.0, "the restarted hub issued revisions");
}

#[tokio::test]
async fn desired_state_flow_embedded_broker() {
    desired_flow(None).await;
}

#[tokio::test]
async fn desired_state_flow_mosquitto() {
    let Some(m) = Mosquitto::start().await else {
        return;
    };
    desired_flow(Some(&m)).await;
}

fn status(device: &str) -> edgefleet_protocol::StatusReport {
    edgefleet_protocol::StatusReport {
        device_id: device.parse().unwrap(),
        applied: None,
        reported_at_ms: edgefleet_protocol::now_ms(),
        workloads: vec![],
        message: None,
        agent_version: "test".into(),
        k3s_version: None,
        desired_rejected: None,
        update_failed: None,
        unstored: false,
        hub_key_id: None,
    }
}

#[tokio::test]
async fn forged_and_misdirected_status_is_rejected_and_counted() {
    let hub = Hub::start().await;
    let k1 = Signer::generate();
    let k2 = Signer::generate();
    let e1 = hub.enroll(&k1, Some("pi-1"), &[]).await;
    let e2 = hub.enroll(&k2, Some("pi-2"), &[]).await;
    let d1 = MqttDevice::connect(&e1).await;
    let d2 = MqttDevice::connect(&e2).await;
    let pi1_status = d1.topic(Channel::Status);
    let rejected = |reason: &str| {
        format!("edgefleet_hub_messages_rejected_total{{channel=\"status\",reason=\"{reason}\"}}")
    };

    // Genuine status is stored.
    d1.publish(
        &pi1_status,
        k1.seal(&edgefleet_protocol::StatusReport {
            message: Some("genuine".into()),
            ..status("pi-1")
        }),
    )
    .await;
    edgefleet_tests::eventually("genuine status stored", Duration::from_secs(10), || async {
        let (_, d) = hub.get("/devices/pi-1").await;
        (d["message"] == "genuine").then_some(())
    })
    .await;

    // Forged: signed with a key that is not pi-1's.
    d1.publish(&pi1_status, Signer::generate().seal(&status("pi-1")))
        .await;
    // Another device's genuine status, replayed on pi-1's topic (pi-2
    // itself may not publish there: the broker's ACL refuses it, below).
    d1.publish(&pi1_status, k2.seal(&status("pi-2"))).await;
    // pi-1's key, but naming another device.
    d1.publish(&pi1_status, k1.seal(&status("pi-2"))).await;
    // Garbage.
    d1.publish(&pi1_status, b"not an envelope".to_vec()).await;

    edgefleet_tests::eventually("rejections counted", Duration::from_secs(10), || async {
        let m = hub.metrics().await;
        let v = |r: &str| edgefleet_tests::hub::metric_value(&m, &rejected(r));
        (v("unknown_key") == 2.0 && v("wrong_device") == 1.0 && v("malformed") == 1.0).then_some(())
    })
    .await;
    d2.publish(&pi1_status, k2.seal(&status("pi-2"))).await;
    edgefleet_tests::eventually(
        "the broker's refusal counted",
        Duration::from_secs(10),
        || async {
            let v = hub
                .metric("edgefleet_hub_broker_acl_denials_total{action=\"publish\"}")
                .await;
            (v == 1.0).then_some(())
        },
    )
    .await;
    let (_, d) = hub.get("/devices/pi-1").await;
    assert_eq!(
        d["message"], "genuine",
        "a rejected report changed the store"
    );
}

#[tokio::test]
async fn embedded_broker_refuses_unknown_credentials() {
    let hub = Hub::start().await;
    let k = Signer::generate();
    let e = hub.enroll(&k, Some("pi-1"), &[]).await;
    let (host, port) = edgefleet_tests::device::host_port(&e.broker.url);
    let mut o = rumqttc::MqttOptions::new("pi-1", host, port);
    o.set_credentials("pi-1", "wrong-password");
    let (_c, mut ev) = rumqttc::AsyncClient::new(o, 10);
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ev.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .expect("broker answered");
    assert!(!r, "a wrong password was accepted");
    assert!(hub.metric("edgefleet_hub_broker_auth_failures_total").await >= 1.0);
}

/// A burst of events far larger than the hub's internal queues, through a
/// broker that does not cap unacknowledged deliveries (mosquitto handed the
/// hub over 20,000 at once with `max_inflight_messages 1000`): every
/// event is stored once, and the hub still publishes afterwards. Before the
/// fix the hub's MQTT event loop waited on a full ingest queue while ingest
/// waited on the event loop to take its PUBACKs: the hub went deaf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_burst_larger_than_the_hub_queues_mosquitto() {
    const N: usize = 60_000;
    let Some(m) = Mosquitto::start().await else {
        return;
    };
    let (hub, key, device_key, enrolled) = hub_and_device(Some(&m), "pi-burst").await;
    let mut dev = MqttDevice::connect(&enrolled).await;
    let topic = dev.topic(Channel::Events);
    let sealed: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            device_key.seal(&edgefleet_protocol::Event {
                id: format!("e{i}"),
                device_id: dev.id.clone(),
                kind: "app.telemetry".into(),
                workload: None,
                created_at_ms: edgefleet_protocol::now_ms(),
                payload: serde_json::json!({"i": i}),
            })
        })
        .collect();
    for payload in sealed {
        dev.publish(&topic, payload).await;
    }
    edgefleet_tests::eventually(
        "every event of the burst stored",
        Duration::from_secs(90),
        || async {
            let stored = hub.metric("edgefleet_hub_events_stored_total").await;
            (stored as usize == N).then_some(())
        },
    )
    .await;
    assert_eq!(
        hub.metric("edgefleet_hub_ingest_backlog").await,
        0.0,
        "backlog left after the burst"
    );
    let (code, body) = hub.put_deployment("line-3", &deployment()).await;
    assert_eq!(code, 201, "{body}");
    let (doc, _) = next_desired(&mut dev, &key, &device_key).await;
    assert_eq!(doc.revision, 1, "the hub publishes after the burst");
}
