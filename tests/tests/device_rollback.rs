//! On-device rollback with a real agent and a real Kubernetes control plane
//! (controllers, scheduler, kwok nodes): a new generation whose Deployment
//! never becomes Available is reverted by the agent itself while its uplink
//! is cut, and once it is back the hub shows the device `RolledBack` with
//! the reason and rolls the deployment back.

use std::time::Duration;

use edgefleet_api::RolloutState;
use edgefleet_tests::agent::{Agent, AgentOptions};
use edgefleet_tests::control_plane::Shared;
use edgefleet_tests::eventually;
use edgefleet_tests::hub::Hub;

const T: Duration = Duration::from_secs(90);
const NS: &str = "rollback";

/// Deployment `cam`: one Kubernetes Deployment with `image`, scheduled by
/// `node_selector`; rolled out with an on-device rollback after 20 s.
fn cam(image: &str, node_selector: &str) -> String {
    format!(
        "apiVersion: edgefleet.io/v1
kind: Deployment
metadata: {{name: cam}}
spec:
  selector: {{matchLabels: {{site: plant-9}}}}
  rollout:
    waves: [{{name: all, percent: 100}}]
    healthTimeout: 20s
    maxFailures: 0
    deviceRollback: true
  workloads:
    - name: web
      kubernetes:
        manifests:
          - apiVersion: apps/v1
            kind: Deployment
            metadata: {{name: cam, namespace: {NS}}}
            spec:
              replicas: 1
              selector: {{matchLabels: {{app: cam}}}}
              template:
                metadata: {{labels: {{app: cam}}}}
                spec:
                  nodeSelector: {node_selector}
                  containers: [{{name: cam, image: \"{image}\"}}]
"
    )
}

/// The agent's own view of workload `cam.web` (sync, message).
async fn local_status(agent: &Agent) -> Option<(String, String)> {
    let s = agent.status().await;
    let w = s["workloads"]
        .as_array()?
        .iter()
        .find(|w| w["name"] == "cam.web")?
        .clone();
    Some((
        w["sync"].as_str()?.to_owned(),
        w["message"].as_str().unwrap_or_default().to_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reverts_a_generation_that_never_becomes_available_while_offline() {
    let Some(cp) = Shared::get() else { return };
    let admin = cp.admin().await;
    let hub = Hub::start().await;
    let (mut agent, uplink) = Agent::enroll_behind(
        &hub,
        &hub.broker_url(),
        &[("site", "plant-9")],
        AgentOptions {
            device_id: Some("pi-cam".into()),
            kubeconfig: Some(admin.agent_kubeconfig().await),
            env: vec![("EDGEFLEET_RECONCILE_DRIFT_INTERVAL_SECS".into(), "2".into())],
            ..Default::default()
        },
    )
    .await;
    agent.start().await;
    agent.wait_uplink(true).await;

    // Generation 1 runs on any node: Available, the rollout completes.
    hub.deploy("cam", &cam("cam:1", "{}")).await;
    eventually("generation 1 rolled out", T, || async {
        let r = hub.client().rollout("cam").await.ok()?;
        (r.generation == 1 && r.state == RolloutState::Complete).then_some(())
    })
    .await;

    // Generation 2 can be scheduled nowhere. The agent takes it, then its
    // uplink is cut.
    let (_, d) = hub.get("/devices/pi-cam").await;
    let before = d["desiredRevision"].as_u64().expect("a desired revision");
    hub.deploy("cam", &cam("cam:2", "{edgefleet.io/nowhere: \"true\"}"))
        .await;
    eventually("the agent holds generation 2", T, || async {
        let s = agent.status().await;
        (s["desired"]["revision"].as_u64() > Some(before)).then_some(())
    })
    .await;
    uplink.set_down(true);
    agent.wait_uplink(false).await;

    // Offline, the agent goes back to generation 1 by itself.
    let (sync, why) = eventually("the agent rolls back by itself", T, || async {
        local_status(&agent)
            .await
            .filter(|(sync, _)| sync == "RolledBack")
    })
    .await;
    assert_eq!(sync, "RolledBack");
    assert!(why.contains("generation 2 not Healthy within 20s"), "{why}");
    assert!(why.contains("back on generation 1"), "{why}");
    eventually("the Deployment runs generation 1 again, Available", T, || async {
        let d = admin.get("apps/v1", "Deployment", Some(NS), "cam").await?;
        let image = d["spec"]["template"]["spec"]["containers"][0]["image"].as_str()?;
        let fresh = d["status"]["observedGeneration"] == d["metadata"]["generation"];
        let ready = d["status"]["updatedReplicas"] == 1 && d["status"]["availableReplicas"] == 1;
        (image == "cam:1" && fresh && ready).then_some(())
    })
    .await;
    // The hub has not heard of it yet: its one device is offline, and a
    // wave with no device to judge waits.
    let (_, d) = hub.get("/devices/pi-cam").await;
    assert!(!d.to_string().contains("RolledBack"), "{d}");
    let r = hub.client().rollout("cam").await.expect("rollout");
    assert_eq!(r.state, RolloutState::Progressing, "{r:?}");
    assert_eq!(r.waves[0].offline, 1, "{r:?}");

    // Back online: the hub shows why, and rolls the deployment back.
    uplink.set_down(false);
    let r = eventually("the hub rolls back", T, || async {
        let r = hub.client().rollout("cam").await.ok()?;
        (r.generation == 2 && r.state == RolloutState::RolledBack).then_some(r)
    })
    .await;
    let reason = r.reason.unwrap_or_default();
    assert!(reason.contains("rolled back on the device"), "{reason}");
    assert!(reason.contains("not Healthy within 20s"), "{reason}");
    let (code, out, err) = hub.edgectl(&["describe", "device", "pi-cam"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("RolledBack") || out.contains("Synced"), "{out}");
    eprintln!("edgectl describe device pi-cam:\n{out}");
    let (code, out, _) = hub.edgectl(&["rollout", "status", "cam"]);
    assert_eq!(code, 1, "{out}");
    eprintln!("edgectl rollout status cam:\n{out}");
}
