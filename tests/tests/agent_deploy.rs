//! The agent end to end with the real hub, the real `edge-agent` binary and
//! the Kubernetes API stand-in: deploy, health, prune, restart without
//! mutations, forged documents.

use std::time::Duration;

use edgefleet_protocol::{Channel, DesiredState, DeviceId, MessageKind, Signer, Topic};
use edgefleet_tests::agent::{Agent, AgentOptions};
use edgefleet_tests::device::{MqttDevice, host_port};
use edgefleet_tests::eventually;
use edgefleet_tests::hub::Hub;
use edgefleet_tests::kube_standin::KubeStandIn;
use serde_json::json;

const T: Duration = Duration::from_secs(20);

fn deployment(with_config: bool) -> String {
    let config = if with_config {
        "\n          - {apiVersion: v1, kind: ConfigMap, metadata: {name: web-config, namespace: demo}, data: {greeting: hello}}"
    } else {
        ""
    };
    format!(
        r#"
apiVersion: edgefleet.io/v1
kind: Deployment
metadata: {{name: line-3}}
spec:
  selector:
    matchLabels: {{site: plant-3}}
  workloads:
    - name: web
      kubernetes:
        manifests:
          - apiVersion: apps/v1
            kind: Deployment
            metadata: {{name: web, namespace: demo}}
            spec:
              replicas: 1
              selector: {{matchLabels: {{app: web}}}}
              template:
                metadata: {{labels: {{app: web}}}}
                spec:
                  containers: [{{name: web, image: "nginx:1.27"}}]{config}
"#
    )
}

async fn setup() -> (Hub, KubeStandIn, Agent) {
    edgefleet_tests::agent::install_crypto();
    let hub = Hub::start().await;
    let kube = KubeStandIn::start().await;
    let mut agent = Agent::enroll_with(
        &hub,
        &[("site", "plant-3")],
        AgentOptions::with_kube("pi-deploy", &kube),
    )
    .await;
    agent.start().await;
    (hub, kube, agent)
}

fn available() -> serde_json::Value {
    json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
           "readyReplicas": 1, "availableReplicas": 1})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_health_prune_and_quiet_restart() {
    let (hub, kube, mut agent) = setup().await;
    let (code, body) = hub.put_deployment("line-3", &deployment(true)).await;
    assert!(code < 300, "put deployment: {code} {body}");

    // Server-side applies with our field manager and labels.
    eventually("Deployment and ConfigMap applied", T, || async {
        let d = kube.get("apps/v1", "Deployment", Some("demo"), "web")?;
        kube.get("v1", "ConfigMap", Some("demo"), "web-config")?;
        Some(d)
    })
    .await;
    let applies: Vec<_> = kube
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert!(applies.len() >= 2, "{applies:?}");
    for r in &applies {
        assert_eq!(r.field_manager.as_deref(), Some("edgefleet-agent"), "{r:?}");
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/apply-patch+yaml"),
            "{r:?}"
        );
    }
    let cm = kube
        .get("v1", "ConfigMap", Some("demo"), "web-config")
        .unwrap();
    assert_eq!(
        cm["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "edgefleet"
    );
    assert_eq!(
        cm["metadata"]["labels"]["edgefleet.io/workload"],
        "line-3.web"
    );

    // Available → the hub shows it ready and healthy.
    kube.set_status("apps/v1", "Deployment", Some("demo"), "web", available());
    eventually("hub shows line-3 healthy 1/1", T, || async {
        let (code, s) = hub.get("/deployments/line-3/status").await;
        (code == 200 && s["healthy"] == 1 && s["inSync"] == 1 && s["targeted"] == 1).then_some(())
    })
    .await;
    let st = agent.status().await;
    assert_eq!(st["workloads"][0]["health"], "Healthy", "{st}");

    // Prune: drop the ConfigMap; a foreign object stays untouched.
    kube.insert(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "not-ours", "namespace": "demo"}, "data": {"a": "b"}}));
    let (code, _) = hub.put_deployment("line-3", &deployment(false)).await;
    assert!(code < 300);
    eventually("ConfigMap pruned", T, || async {
        kube.get("v1", "ConfigMap", Some("demo"), "web-config")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        kube.get("v1", "ConfigMap", Some("demo"), "not-ours")
            .is_some()
    );
    assert!(
        kube.get("apps/v1", "Deployment", Some("demo"), "web")
            .is_some()
    );
    eventually("hub healthy after prune", T, || async {
        let (_, s) = hub.get("/deployments/line-3/status").await;
        (s["healthy"] == 1 && s["generation"] == 2).then_some(())
    })
    .await;

    // Restart with unchanged desired state: zero mutating requests.
    assert_eq!(agent.stop().await, Some(0));
    kube.clear_requests();
    agent.start().await;
    eventually("agent reconciled after restart", T, || async {
        (agent.metric("edgefleet_agent_reconcile_passes_total").await >= 1.0
            && agent.metric("edgefleet_agent_kube_reachable").await == 1.0)
            .then_some(())
    })
    .await;
    eventually("status flows after restart", T, || async {
        (agent.metric("edgefleet_agent_outbox_acked_total").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(
        kube.mutating_requests(),
        0,
        "restart sent mutating requests: {:?}",
        kube.requests()
    );

    // Uninstalling the deployment prunes everything we own.
    let (code, _) = hub
        .api(reqwest::Method::DELETE, "/deployments/line-3", None)
        .await;
    assert!(code < 300, "delete deployment: {code}");
    eventually("Deployment pruned", T, || async {
        kube.get("apps/v1", "Deployment", Some("demo"), "web")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        kube.get("v1", "ConfigMap", Some("demo"), "not-ours")
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_desired_documents_are_rejected_and_counted() {
    let (hub, _kube, mut agent) = setup().await;
    let (code, _) = hub.put_deployment("line-3", &deployment(true)).await;
    assert!(code < 300);
    let stored = eventually("desired state stored", T, || async {
        let st = agent.status().await;
        st["desired"]["revision"].as_u64()
    })
    .await;
    let before = agent.status().await;

    // A second device on the same broker publishes straight to our topic.
    let other_key = Signer::generate();
    let other = hub.enroll(&other_key, Some("intruder"), &[]).await;
    let attacker = MqttDevice::connect(&other).await;
    let me = DeviceId::new(agent.device_id.as_str()).unwrap();
    let topic = Topic::new(me.clone(), Channel::Desired).to_string();
    let doc = |device: &str, rev: u64| -> DesiredState {
        serde_json::from_value(json!({"deviceId": device, "revision": rev,
            "hubEpoch": before["desired"]["hubEpoch"], "issuedAtMs": 1, "workloads": []}))
        .unwrap()
    };
    // Wrong key (would wipe everything if accepted).
    attacker
        .publish(&topic, other_key.seal(&doc(me.as_str(), stored + 10)))
        .await;
    // Garbage.
    attacker.publish(&topic, b"{not an envelope".to_vec()).await;
    // A status envelope replayed as desired.
    attacker
        .publish(&topic, other_key.seal_bytes(MessageKind::Desired, b"{}"))
        .await;

    eventually("rejections counted", T, || async {
        let m = agent.metrics().await;
        let v = |r: &str| {
            edgefleet_tests::hub::metric_value(
                &m,
                &format!("edgefleet_agent_messages_rejected_total{{reason=\"{r}\"}}"),
            )
        };
        (v("unknown_key") >= 2.0 && v("malformed") >= 1.0).then_some(())
    })
    .await;
    let after = agent.status().await;
    assert_eq!(after["desired"], before["desired"], "stored state changed");
    assert_eq!(after["workloads"].as_array().map(Vec::len), Some(1));
    agent.kill().await;
}

/// Replays of genuine hub-signed documents: an older revision, and a
/// document for another device, published on our topic by a sniffer on a
/// shared (anonymous) mosquitto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_hub_documents_are_rejected_and_counted() {
    edgefleet_tests::agent::install_crypto();
    let Some(broker) = edgefleet_tests::mosquitto::Mosquitto::start().await else {
        return;
    };
    let hub = Hub::start_with(edgefleet_tests::hub::HubOptions {
        external_broker: Some(broker.url()),
        ..Default::default()
    })
    .await;
    let kube = KubeStandIn::start().await;
    // The sniffer sees every device's desired topic.
    let (host, port) = host_port(&broker.url());
    let mut opts = rumqttc::MqttOptions::new("sniffer", host, port);
    opts.set_max_packet_size(2 << 20, 2 << 20);
    let (sniffer, mut el) = rumqttc::AsyncClient::new(opts, 100);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sub = sniffer.clone();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ = sub
                        .try_subscribe("edgefleet/v1/devices/+/desired", rumqttc::QoS::AtLeastOnce);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let mut agent = Agent::enroll_with(
        &hub,
        &[("site", "plant-3")],
        AgentOptions::with_kube("pi-replay", &kube),
    )
    .await;
    agent.start().await;
    // A second device matching the selector: the hub signs a document for it.
    let _other = hub
        .enroll(
            &Signer::generate(),
            Some("pi-other"),
            &[("site", "plant-3")],
        )
        .await;
    let (code, _) = hub.put_deployment("line-3", &deployment(true)).await;
    assert!(code < 300);
    let me = Topic::new(DeviceId::new("pi-replay").unwrap(), Channel::Desired).to_string();
    let other = Topic::new(DeviceId::new("pi-other").unwrap(), Channel::Desired).to_string();
    let (mut mine_v1, mut other_doc) = (None, None);
    while mine_v1.is_none() || other_doc.is_none() {
        let (topic, payload) = tokio::time::timeout(T, rx.recv())
            .await
            .expect("desired documents within 20 s")
            .expect("sniffer running");
        if payload.is_empty() {
            continue;
        }
        if topic == me && mine_v1.is_none() {
            mine_v1 = Some(payload);
        } else if topic == other {
            other_doc = Some(payload);
        }
    }
    let (code, _) = hub.put_deployment("line-3", &deployment(false)).await;
    assert!(code < 300);
    let revision = eventually("revision 2 stored", T, || async {
        let st = agent.status().await;
        let rev = st["desired"]["revision"].as_u64()?;
        (rev >= 2).then_some(st)
    })
    .await;

    for payload in [mine_v1.unwrap(), other_doc.unwrap()] {
        sniffer
            .publish(me.clone(), rumqttc::QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }
    eventually("replays counted", T, || async {
        let m = agent.metrics().await;
        let v = |r: &str| {
            edgefleet_tests::hub::metric_value(
                &m,
                &format!("edgefleet_agent_messages_rejected_total{{reason=\"{r}\"}}"),
            )
        };
        (v("stale_revision") >= 1.0 && v("wrong_device") >= 1.0).then_some(())
    })
    .await;
    let after = agent.status().await;
    assert_eq!(
        after["desired"], revision["desired"],
        "stored state changed"
    );
    eventually("revision 2 converged (ConfigMap pruned)", T, || async {
        kube.get("v1", "ConfigMap", Some("demo"), "web-config")
            .is_none()
            .then_some(())
    })
    .await;
    task.abort();
    agent.kill().await;
}
