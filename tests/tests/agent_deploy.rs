//! The agent end to end with the real hub, the real `edge-agent` binary and
//! a real Kubernetes control plane (kube-apiserver on kine/SQLite,
//! controllers, scheduler, kwok nodes): deploy a site's workload through its
//! controllers to ready, prune, restore drift, restart without a single
//! mutating request, refuse forged and replayed documents. The agent runs
//! as the ServiceAccount and ClusterRole `packaging/install.sh` creates.

use std::time::Duration;

use edgefleet_protocol::{Channel, DesiredState, DeviceId, MessageKind, Signer, Topic};
use edgefleet_tests::agent::{Agent, AgentOptions};
use edgefleet_tests::control_plane::{Admin, ControlPlane, Shared};
use edgefleet_tests::device::{MqttDevice, host_port};
use edgefleet_tests::eventually;
use edgefleet_tests::fixtures::{WEB, site};
use edgefleet_tests::hub::Hub;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

/// A hub and an agent labelled `site=plant-3` whose K3s is `admin`'s
/// cluster, reached as the install script's ServiceAccount.
/// [`hub_and_agent`] on the test binary's shared control plane; `None`
/// after a loud skip when it is not built.
async fn on_shared_cluster(id: &str) -> Option<(Admin, Hub, Agent)> {
    let admin = Shared::get()?.admin().await;
    let (hub, agent) = hub_and_agent(&admin, id).await;
    Some((admin, hub, agent))
}

async fn hub_and_agent(admin: &Admin, id: &str) -> (Hub, Agent) {
    hub_and_agent_on(admin, id, None).await
}

/// Like [`hub_and_agent`], the hub on `external_broker` if given.
async fn hub_and_agent_on(
    admin: &Admin,
    id: &str,
    external_broker: Option<String>,
) -> (Hub, Agent) {
    edgefleet_tests::agent::install_crypto();
    let hub = Hub::start_with(edgefleet_tests::hub::HubOptions {
        external_broker,
        ..Default::default()
    })
    .await;
    let mut agent = Agent::enroll_with(
        &hub,
        &[("site", "plant-3")],
        AgentOptions {
            device_id: Some(id.into()),
            kubeconfig: Some(admin.agent_kubeconfig().await),
            env: vec![("EDGEFLEET_RECONCILE_DRIFT_INTERVAL_SECS".into(), "2".into())],
            ..Default::default()
        },
    )
    .await;
    agent.start().await;
    (hub, agent)
}

/// Waits until the agent counted at least `n` rejections of each reason.
async fn rejected_at_least(agent: &Agent, counts: &[(&str, f64)]) {
    eventually("rejections counted", T, || async {
        let m = agent.metrics().await;
        counts
            .iter()
            .all(|(r, n)| {
                let series = format!("edgefleet_agent_messages_rejected_total{{reason=\"{r}\"}}");
                edgefleet_tests::hub::metric_value(&m, &series) >= *n
            })
            .then_some(())
    })
    .await;
}

async fn hub_healthy(hub: &Hub, generation: u64) {
    eventually(
        &format!("hub shows line-3 generation {generation} ready 1/1 Healthy"),
        T,
        || async {
            let (code, s) = hub.get("/deployments/line-3/status").await;
            (code == 200
                && s["generation"] == generation
                && s["healthy"] == 1
                && s["inSync"] == 1
                && s["targeted"] == 1)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_to_ready_prune_drift_and_quiet_restart() {
    let Some(cp) = ControlPlane::start().await else {
        return;
    };
    let admin = cp.admin().await;
    let ns = "plant";
    let (hub, mut agent) = hub_and_agent(&admin, "pi-deploy").await;
    hub.deploy("line-3", &site(ns, true)).await;

    // Through the real controllers and kwok: 2 pods Running, the hub shows
    // the deployment ready and healthy.
    hub_healthy(&hub, 1).await;
    let pods = admin.running_pods(ns).await;
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(
        pods.iter().all(|(_, node)| node.starts_with("pi-node-")),
        "{pods:?}"
    );
    let cr = admin
        .get(
            &format!("{ns}.example.edgefleet.io/v1"),
            "Sensor",
            Some(ns),
            "vibration",
        )
        .await
        .expect("custom resource applied");
    assert_eq!(cr["spec"]["rateHz"], 100);
    let cm = admin
        .get("v1", "ConfigMap", Some(ns), "web-config")
        .await
        .expect("ConfigMap");
    assert_eq!(
        cm["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "edgefleet"
    );
    assert_eq!(
        cm["metadata"]["labels"]["edgefleet.io/workload"],
        "line-3.web"
    );
    let st = agent.status().await;
    assert_eq!(st["workloads"][0]["health"], "Healthy", "{st}");

    // Drift: someone edits a field we set, then deletes one of our
    // objects; the next drift check puts both back.
    let cms = admin.api("v1", "ConfigMap", Some(ns));
    let mut edited = cms.get("web-config").await.expect("get");
    edited.data["data"]["greeting"] = json!("tampered");
    cms.replace("web-config", &kube::api::PostParams::default(), &edited)
        .await
        .expect("edit");
    eventually("edited field restored", T, || async {
        let c = admin.get("v1", "ConfigMap", Some(ns), "web-config").await?;
        (c["data"]["greeting"] == "hello").then_some(())
    })
    .await;
    admin
        .api("v1", "Service", Some(ns))
        .delete("web", &Default::default())
        .await
        .expect("delete service");
    admin
        .wait_for(true, ("v1", "Service"), Some(ns), "web")
        .await;
    assert!(agent.metric("edgefleet_agent_kube_drift_total").await >= 1.0);

    // Prune: drop the ConfigMap; a foreign object stays untouched.
    admin
        .apply_as(
            "kubectl",
            &json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "not-ours", "namespace": ns}, "data": {"a": "b"}}),
            false,
        )
        .await
        .expect("foreign object");
    hub.deploy("line-3", &site(ns, false)).await;
    admin
        .wait_for(false, ("v1", "ConfigMap"), Some(ns), "web-config")
        .await;
    admin
        .wait_for(true, ("v1", "ConfigMap"), Some(ns), "not-ours")
        .await;
    hub_healthy(&hub, 2).await;

    // Restart with unchanged desired state: not one mutating request, as
    // the API server's audit log records them.
    assert_eq!(agent.stop().await, Some(0));
    let before = admin.agent_mutations();
    agent.start().await;
    let acked = agent.metric("edgefleet_agent_outbox_acked_total").await;
    eventually("the restarted agent reported", T, || async {
        (agent.metric("edgefleet_agent_kube_reachable").await == 1.0
            && agent.metric("edgefleet_agent_outbox_acked_total").await > acked)
            .then_some(())
    })
    .await;
    // Past at least one drift check too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = admin.agent_mutations();
    assert_eq!(
        after, before,
        "the restart sent mutating requests (audit log, by verb)"
    );
    eprintln!("agent's mutating requests over the whole test, by verb: {after:?}");

    // Uninstalling the deployment prunes everything we own.
    let (code, _) = hub
        .api(reqwest::Method::DELETE, "/deployments/line-3", None)
        .await;
    assert!(code < 300, "delete deployment: {code}");
    admin
        .wait_for(false, ("apps/v1", "Deployment"), Some(ns), "web")
        .await;
    admin
        .wait_for(true, ("v1", "ConfigMap"), Some(ns), "not-ours")
        .await;
    agent.kill().await;
}

/// A workload the server rejects fails with the server's message; the
/// device's other workload keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_object_fails_its_workload_only() {
    let Some((admin, hub, mut agent)) = on_shared_cluster("pi-reject").await else {
        return;
    };
    let yaml = r#"
apiVersion: edgefleet.io/v1
kind: Deployment
metadata: {name: mixed}
spec:
  selector: {matchLabels: {site: plant-3}}
  workloads:
    - name: broken
      kubernetes:
        manifests:
          - apiVersion: apps/v1
            kind: Deployment
            metadata: {name: broken, namespace: reject}
            spec:
              replicas: -1
              selector: {matchLabels: {app: a}}
              template:
                metadata: {labels: {app: b}}
                spec: {containers: [{name: x, image: x}]}
    - name: fine
      kubernetes:
        manifests:
          - {apiVersion: v1, kind: ConfigMap, metadata: {name: fine, namespace: reject}, data: {k: v}}
"#;
    hub.deploy("mixed", yaml).await;
    let rows = eventually("both workloads reported", T, || async {
        let (_, s) = hub.get("/deployments/mixed/status").await;
        let rows = s["devices"][0]["workloads"].as_array()?.clone();
        rows.iter()
            .all(|w| !w["sync"].is_null() && w["sync"] != "Syncing")
            .then_some(rows)
    })
    .await;
    let row = |name: &str| -> Value {
        rows.iter()
            .find(|w| w["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(row("mixed.fine")["sync"], "Synced", "{rows:?}");
    assert_eq!(row("mixed.broken")["sync"], "Failed", "{rows:?}");
    let msg = row("mixed.broken")["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        msg.contains("422") && msg.contains("replicas"),
        "the server's message: {msg}"
    );
    admin
        .wait_for(true, ("v1", "ConfigMap"), Some("reject"), "fine")
        .await;
    agent.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_desired_documents_are_rejected_and_counted() {
    // On a shared anonymous mosquitto: the embedded broker (and a
    // provisioned one) refuses another device's publish on our topic
    // (broker_acl.rs); the agent's own checks must hold without that.
    let Some(shared) = Shared::get() else {
        return;
    };
    let admin = shared.admin().await;
    let Some(broker) = edgefleet_tests::mosquitto::Mosquitto::start().await else {
        return;
    };
    let (hub, mut agent) = hub_and_agent_on(&admin, "pi-forged", Some(broker.url())).await;
    hub.deploy("line-3", &site("forged", true)).await;
    let stored = eventually("desired state stored and reconciled", T, || async {
        let st = agent.status().await;
        (st["workloads"].as_array().map(Vec::len) == Some(1))
            .then(|| st["desired"]["revision"].as_u64())
            .flatten()
    })
    .await;
    let before = agent.status().await;

    // A second device on the same (open) broker publishes straight to our
    // topic.
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

    rejected_at_least(&agent, &[("unknown_key", 2.0), ("malformed", 1.0)]).await;
    let after = agent.status().await;
    assert_eq!(after["desired"], before["desired"], "stored state changed");
    assert_eq!(
        after["workloads"].as_array().map(Vec::len),
        Some(1),
        "{after}"
    );
    agent.kill().await;
}

/// Replays of genuine hub-signed documents: an older revision, and a
/// document for another device, published on our topic by a sniffer on a
/// shared (anonymous) mosquitto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_hub_documents_are_rejected_and_counted() {
    edgefleet_tests::agent::install_crypto();
    let Some(shared) = Shared::get() else {
        return;
    };
    let admin = shared.admin().await;
    let Some(broker) = edgefleet_tests::mosquitto::Mosquitto::start().await else {
        return;
    };
    let hub = Hub::start_with(edgefleet_tests::hub::HubOptions {
        external_broker: Some(broker.url()),
        ..Default::default()
    })
    .await;
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
        AgentOptions {
            device_id: Some("pi-replay".into()),
            kubeconfig: Some(admin.agent_kubeconfig().await),
            ..Default::default()
        },
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
    let ns = "replayed";
    hub.deploy("line-3", &site(ns, true)).await;
    let me = Topic::new(DeviceId::new("pi-replay").unwrap(), Channel::Desired).to_string();
    let other = Topic::new(DeviceId::new("pi-other").unwrap(), Channel::Desired).to_string();
    let (mut mine_v1, mut other_doc) = (None, None);
    while mine_v1.is_none() || other_doc.is_none() {
        let (topic, payload) = tokio::time::timeout(T, rx.recv())
            .await
            .expect("desired documents within a minute")
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
    hub.deploy("line-3", &site(ns, false)).await;
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
    rejected_at_least(&agent, &[("stale_revision", 1.0), ("wrong_device", 1.0)]).await;
    let after = agent.status().await;
    assert_eq!(
        after["desired"], revision["desired"],
        "stored state changed"
    );
    admin
        .wait_for(false, ("v1", "ConfigMap"), Some(ns), "web-config")
        .await;
    task.abort();
    agent.kill().await;
}

/// One workload failing for good (a model tract cannot load) must not slow
/// another's health: a Kubernetes Deployment that becomes Available while
/// the model has been failing for 20 s (long enough for a shared backoff to
/// be at 16 s) is reported Healthy within the progress poll, not at the
/// failing workload's next retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_workload_does_not_delay_another_ones_health() {
    let Some(cp) = Shared::get() else {
        return;
    };
    let admin = cp.admin().await;
    let ns = "mixed";
    let pool = "edgefleet-test/pool";
    let (hub, _agent) = hub_and_agent(&admin, "pi-mixed").await;
    let api = hub.client();
    let broken = api
        .push_model("broken", b"this is not an ONNX model".to_vec())
        .await
        .expect("push model");
    let manifest = format!(
        r#"
apiVersion: edgefleet.io/v1
kind: Deployment
metadata: {{name: line-3}}
spec:
  selector:
    matchLabels: {{site: plant-3}}
  workloads:
    - name: broken
      inference:
        model: {{name: broken, sha256: "{sha}"}}
        input: {{http: {{}}}}
        output: {{upstream: true}}
    - name: web
      kubernetes:
        manifests:
          - apiVersion: apps/v1
            kind: Deployment
            metadata: {{name: late, namespace: {ns}}}
            spec:
              replicas: 1
              selector: {{matchLabels: {{app: late}}}}
              template:
                metadata: {{labels: {{app: late}}}}
                spec:
                  nodeSelector: {{"{pool}": "{ns}"}}
                  containers: [{{name: web, image: "nginx:1.27"}}]
"#,
        sha = broken.sha256
    );
    api.apply("line-3", &manifest).await.expect("apply");
    let workload = |name: &'static str| {
        let api = api.clone();
        async move {
            let d = api.device("pi-mixed").await.ok()?;
            d.workloads.into_iter().find(|w| w.name == name)
        }
    };
    let failed = eventually("the model workload Failed", T, || async {
        let w = workload("line-3.broken").await?;
        (w.sync == edgefleet_protocol::SyncState::Failed).then_some(w)
    })
    .await;
    assert!(
        failed
            .message
            .as_deref()
            .is_some_and(|m| m.contains("cannot load model")),
        "{failed:?}"
    );
    eventually(
        "web Synced and Progressing (no node fits yet)",
        T,
        || async {
            let w = workload("line-3.web").await?;
            (w.sync == edgefleet_protocol::SyncState::Synced
                && w.health == edgefleet_protocol::Health::Progressing)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;

    // A node now fits: the scheduler, controllers and kwok make the
    // Deployment Available; the hub must show it Healthy within seconds.
    let nodes = admin.api("v1", "Node", None);
    let patch = json!({"metadata": {"labels": {pool: ns}}});
    nodes
        .patch(
            edgefleet_tests::control_plane::NODES[0],
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("label node");
    eventually("the Deployment Available in the API server", T, || async {
        let d = admin.get("apps/v1", "Deployment", Some(ns), "late").await?;
        (d["status"]["availableReplicas"] == 1).then_some(())
    })
    .await;
    let available = std::time::Instant::now();
    eventually("web Healthy at the hub", T, || async {
        let w = workload("line-3.web").await?;
        (w.health == edgefleet_protocol::Health::Healthy).then_some(())
    })
    .await;
    let took = available.elapsed();
    eprintln!("web Healthy at the hub {took:?} after it became Available");
    assert!(
        took < Duration::from_secs(6),
        "web's health waited {took:?}: the failing model's retries held it back"
    );
    // The model is still failing, on its own schedule.
    let w = workload("line-3.broken").await.expect("broken reported");
    assert_eq!(w.sync, edgefleet_protocol::SyncState::Failed);
    nodes
        .patch(
            edgefleet_tests::control_plane::NODES[0],
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&json!({"metadata": {"labels": {pool: null}}})),
        )
        .await
        .expect("unlabel node");
}

/// A restart command (`edgectl restart device ID WORKLOAD`) gives the
/// workload's Deployment a new pod template, so its controller replaces the
/// pods, as `kubectl rollout restart` does; the agent's own applies neither
/// undo it nor count it as drift. A workload the device does not run fails
/// with the device's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_command_replaces_the_pods_without_drift() {
    let Some((admin, hub, _agent)) = on_shared_cluster("pi-restart").await else {
        return;
    };
    let ns = "restart";
    hub.deploy("line-3", &site(ns, true)).await;
    hub_healthy(&hub, 1).await;
    let before = admin
        .get("apps/v1", "Deployment", Some(ns), "web")
        .await
        .expect("Deployment web");
    assert_eq!(before["metadata"]["generation"], 1);

    let (code, out, err) =
        hub.edgectl(&["restart", "device", "pi-restart", "line-3.web", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("done: restarted Deployment/web"), "{out}");
    let after = admin
        .get("apps/v1", "Deployment", Some(ns), "web")
        .await
        .expect("Deployment web");
    assert_eq!(after["metadata"]["generation"], 2, "{after}");
    assert!(
        after
            .pointer("/spec/template/metadata/annotations/edgefleet.io~1restartedAt")
            .is_some(),
        "{after}"
    );
    // The controller rolls the pods: a second ReplicaSet, and the
    // Deployment settles on generation 2 with both replicas updated.
    eventually("the Deployment rolled to its new template", T, || async {
        let d = admin.get("apps/v1", "Deployment", Some(ns), "web").await?;
        (d["status"]["observedGeneration"] == 2 && d["status"]["updatedReplicas"] == 2)
            .then_some(())
    })
    .await;
    let replica_sets = admin
        .api("apps/v1", "ReplicaSet", Some(ns))
        .list(&Default::default())
        .await
        .expect("list ReplicaSets");
    assert_eq!(
        replica_sets.items.len(),
        2,
        "a new ReplicaSet for the restart"
    );
    // Drift checks run every 2 s here: the annotation stays and the
    // generation does not move.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later = admin
        .get("apps/v1", "Deployment", Some(ns), "web")
        .await
        .expect("Deployment web");
    assert_eq!(later["metadata"]["generation"], 2, "{later}");

    let (code, out, _) = hub.edgectl(&["restart", "device", "pi-restart", "line-3.nope", "--wait"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("failed: no workload \"line-3.nope\" on this device"),
        "{out}"
    );
}

/// `edgectl logs` of a Kubernetes workload: the hub asks the device, the
/// agent reads its pod's log from the K3s API (kwok serves the fake
/// container log of `edgefleet_devcluster::pod_log_line`), and the lines
/// come back streamed; `--tail 10` gives the last 10; a container the
/// workload does not have is the device's clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edgectl_logs_returns_the_pods_log_lines() {
    let Some((_admin, hub, _agent)) = on_shared_cluster("pi-logs").await else {
        return;
    };
    // The web fixture (one replica, container `web`) in a namespace of
    // this test's own on the shared cluster.
    let manifest = WEB.replace("namespace: demo", "namespace: logs");
    hub.deploy("line-3", &manifest).await;
    hub_healthy(&hub, 1).await;
    let all: Vec<String> = (0..edgefleet_devcluster::POD_LOG_LINES)
        .map(edgefleet_devcluster::pod_log_line)
        .collect();

    let (code, out, err) = hub.edgectl(&["logs", "pi-logs", "line-3.web"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), all, "{out}");

    let (code, out, err) =
        hub.edgectl(&["logs", "pi-logs", "line-3.web", "--tail", "10", "-c", "web"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), all[40..], "{out}");

    let (code, out, err) = hub.edgectl(&["logs", "pi-logs", "line-3.web", "-c", "sidecar"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("no container \"sidecar\""), "{err}");

    // Each request is a command the device ran, audited at the hub.
    let (code, out, _) = hub.edgectl(&["commands", "pi-logs"]);
    assert_eq!(code, 0);
    assert_eq!(out.matches("logs line-3.web").count(), 3, "{out}");
    assert!(
        hub.proc
            .output()
            .iter()
            .any(|l| l.contains("logs requested") && l.contains("pi-logs")),
        "no audit line in the hub's log"
    );
}
