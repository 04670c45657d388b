//! Staged rollouts against a real hub and simulated fleets (each device its
//! own MQTT connection, key and signed reports): a bad generation stops in
//! an early wave and rolls back by itself, reaching no device beyond the
//! waves it reached; offline devices neither block a wave nor miss the
//! generation; a hub SIGKILLed mid-rollout resumes without repeating a
//! wave or issuing a revision twice; `edgectl rollout` drives it. And a real
//! agent on a real Kubernetes control plane (controllers, scheduler, kwok
//! nodes) reverts, with its uplink cut, a generation whose Deployment never
//! becomes Available; back online, the hub shows why and rolls back.

use std::time::{Duration, Instant};

use edgefleet_api::{RolloutState, RolloutStatus};
use edgefleet_tests::agent::{Agent, AgentOptions};
use edgefleet_tests::control_plane::Shared;
use edgefleet_tests::eventually;
use edgefleet_tests::fixtures::sim_deployment;
use edgefleet_tests::hub::Hub;
use edgefleet_tests::rollout_bench;
use edgefleet_tests::sim::{Counters, FailPlan, Fleet, SimOptions};

const T: Duration = Duration::from_secs(120);
const NAME: &str = "sim-config";

fn deployment(value: &str, bake: &str) -> String {
    sim_deployment(NAME, value, Some(bake))
}

async fn fleet(hub: &Hub, devices: usize, fail: Option<FailPlan>) -> Fleet {
    let opts = SimOptions {
        devices,
        canary: 10,
        fail,
        ..Default::default()
    };
    Fleet::start_connected(hub.api_url(), &hub.bootstrap_token(), &opts, T)
        .await
        .expect("the simulated fleet enrolls and connects")
}

async fn rollout(hub: &Hub) -> Option<RolloutStatus> {
    hub.client().rollout(NAME).await.ok()
}

async fn ended(hub: &Hub, generation: u64) -> RolloutStatus {
    rollout_bench::ended(hub, NAME, generation)
        .await
        .expect("the rollout ends")
}

async fn all_applied(hub: &Hub, devices: usize) {
    rollout_bench::all_applied(hub, NAME, devices)
        .await
        .expect("every device applied its document");
}

/// `edgectl rollout status NAME --watch` until the rollout ends (off the
/// runtime: the simulated fleet runs on it): exit code and what it printed.
async fn watch(hub: &Hub) -> (i32, String) {
    let mut cmd = std::process::Command::new(edgefleet_tests::process::bin("edgectl"));
    cmd.args(["rollout", "status", NAME, "--watch"])
        .env("EDGECTL_SERVER", hub.api_url())
        .env("EDGECTL_TOKEN", hub.operator_token());
    let (code, out, err) =
        tokio::task::spawn_blocking(move || edgefleet_tests::process::output(cmd))
            .await
            .expect("edgectl");
    (code, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_generation_stops_early_and_rolls_back_by_itself() {
    const DEVICES: usize = 1000;
    let hub = Hub::start().await;
    let plan = FailPlan {
        deployment: NAME.into(),
        generation: 2,
        fraction: 0.3,
        never_healthy: false,
    };
    let fleet = fleet(&hub, DEVICES, Some(plan)).await;

    // Generation 1, good, goes out in its three waves.
    hub.deploy(NAME, &deployment("one", "0s")).await;
    let good = watch(&hub).await;
    let r = ended(&hub, 1).await;
    assert_eq!(r.state, RolloutState::Complete, "{r:?}");
    assert_eq!(good.0, 0, "{}", good.1);
    assert!(good.1.contains("Complete"), "{}", good.1);
    eprintln!(
        "edgectl rollout status --watch, good generation:\n{}",
        good.1
    );
    all_applied(&hub, DEVICES).await;

    // Generation 2 fails on 30 % of the devices.
    hub.deploy(NAME, &deployment("two", "0s")).await;
    let (code, out) = watch(&hub).await;
    eprintln!("edgectl rollout status --watch, failing generation:\n{out}");
    assert_eq!(code, 1, "a rolled-back rollout exits 1:\n{out}");
    assert!(out.contains("RolledBack"), "{out}");
    let r = ended(&hub, 2).await;
    assert_eq!(r.state, RolloutState::RolledBack, "{r:?}");
    assert!(r.current_wave <= 1, "stopped in wave {}", r.current_wave);
    let reason = r.reason.clone().unwrap_or_default();
    assert!(reason.contains("devices failed"), "{reason}");
    assert!(
        reason.contains("generation 2 fails on this device"),
        "{reason}"
    );

    // No device beyond the waves it reached ever got generation 2.
    let reached: u64 = r.waves[..=r.current_wave].iter().map(|w| w.targeted).sum();
    let received = fleet.received(NAME, 2) as u64;
    eprintln!(
        "bad generation: stopped in wave {} ({}), {received} devices ever received it, {reached} in the waves reached",
        r.current_wave, r.waves[r.current_wave].name
    );
    assert!(received > 0);
    assert!(received <= reached, "{received} got it, {reached} reached");

    // Every device runs generation 1 again (those that got generation 2
    // at a newer revision), and applied it.
    fleet
        .wait_running(NAME, 1, T)
        .await
        .expect("every device back on generation 1");
    all_applied(&hub, DEVICES).await;
    assert_eq!(Counters::get(&fleet.counters().refused), 0);

    // The operator's undo goes to every device at once.
    let (code, out, err) = hub.edgectl(&["rollout", "undo", NAME, "--to-generation", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    let r = rollout(&hub).await.expect("rollout");
    assert_eq!(
        (r.generation, r.state),
        (3, RolloutState::Complete),
        "{r:?}"
    );
    let m = hub.metrics().await;
    assert!(
        m.contains("edgefleet_hub_rollout_transitions_total{event=\"rolled_back\"} 1"),
        "{m}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_release_that_fails_on_the_canary_goes_no_further() {
    const DEVICES: usize = 1000;
    const AGENT: &str = "fleet-agent";
    let hub = Hub::start().await;
    // Every device that gets the release reverts it (as the supervisor
    // does with one that exits at once) and reports UpdateFailed.
    let plan = FailPlan {
        deployment: AGENT.into(),
        generation: 1,
        fraction: 1.0,
        never_healthy: false,
    };
    let fleet = fleet(&hub, DEVICES, Some(plan)).await;
    let client = hub.client();
    for arch in ["arm64", "armhf"] {
        client
            .push_agent_release(
                "2.0.0",
                arch,
                format!("not run by fleet-sim {arch}").into_bytes(),
            )
            .await
            .expect("push the release");
    }
    let yaml = format!(
        "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {{name: {AGENT}}}\nspec:\n  \
         selector: {{matchLabels: {{fleet: sim}}}}\n  rollout:\n    waves:\n      \
         - {{name: canary, selector: {{matchLabels: {{ring: canary}}}}}}\n      \
         - {{name: early, percent: 10}}\n      - {{name: rest, percent: 100}}\n    \
         healthTimeout: 60s\n    bake: 0s\n    maxFailures: 5%\n    minSample: 10\n  \
         workloads:\n    - name: agent\n      agent: {{version: \"2.0.0\"}}\n"
    );
    hub.deploy(AGENT, &yaml).await;
    let r = rollout_bench::ended(&hub, AGENT, 1)
        .await
        .expect("the rollout ends");
    eprintln!(
        "agent release rollout: {:?}, wave {}, {:?}",
        r.state, r.current_wave, r.reason
    );
    assert_eq!(r.state, RolloutState::RolledBack, "{r:?}");
    assert_eq!(r.current_wave, 0, "stopped at the canary: {r:?}");
    let reason = r.reason.clone().unwrap_or_default();
    assert!(reason.contains("UpdateFailed: agent 2.0.0"), "{reason}");
    assert!(r.waves[0].failed > 0, "{r:?}");
    let received = fleet.received(AGENT, 1);
    assert_eq!(received, 10, "only the 10 canaries ever got the release");
    // The hub shows UpdateFailed on exactly those devices.
    let devices = client.devices().await.expect("devices");
    let failed = devices
        .iter()
        .filter(|d| {
            d.conditions
                .iter()
                .any(|c| c.kind == edgefleet_api::ConditionType::UpdateFailed)
        })
        .count();
    assert_eq!(failed, received, "UpdateFailed on every device that got it");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_do_not_block_and_converge_when_back() {
    const DEVICES: usize = 200;
    let hub = Hub::start().await;
    let fleet = fleet(&hub, DEVICES, None).await;
    hub.deploy(NAME, &deployment("one", "0s")).await;
    assert_eq!(ended(&hub, 1).await.state, RolloutState::Complete);
    all_applied(&hub, DEVICES).await;

    // 10 % go offline (not canaries), then generation 2 rolls out.
    let away: Vec<usize> = (DEVICES - DEVICES / 10..DEVICES).collect();
    for &i in &away {
        fleet.set_offline(i, true);
    }
    eventually("the hub sees them offline", T, || async {
        let online = hub.metric("edgefleet_hub_devices_online").await;
        (online == (DEVICES - away.len()) as f64).then_some(())
    })
    .await;
    hub.deploy(NAME, &deployment("two", "0s")).await;
    let r = ended(&hub, 2).await;
    assert_eq!(r.state, RolloutState::Complete, "{r:?}");
    let offline: u64 = r.waves.iter().map(|w| w.offline).sum();
    assert_eq!(offline, away.len() as u64, "{r:?}");
    assert_eq!(fleet.received(NAME, 2), DEVICES - away.len());

    // Back online, they take generation 2 at once.
    let back = Instant::now();
    for &i in &away {
        fleet.set_offline(i, false);
    }
    eventually("the offline devices converge", T, || async {
        (fleet.received(NAME, 2) == DEVICES).then_some(())
    })
    .await;
    all_applied(&hub, DEVICES).await;
    eprintln!(
        "{} offline devices converged {:?} after coming back",
        away.len(),
        back.elapsed()
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_in_wave_2_resumes_without_repeating_anything() {
    const DEVICES: usize = 300;
    let mut hub = Hub::start().await;
    let fleet = fleet(&hub, DEVICES, None).await;
    hub.deploy(NAME, &deployment("one", "0s")).await;
    assert_eq!(ended(&hub, 1).await.state, RolloutState::Complete);
    all_applied(&hub, DEVICES).await;
    let verified_before = Counters::get(&fleet.counters().verified);

    // Generation 2 bakes 3 s after each wave: kill the hub in wave 2's.
    hub.deploy(NAME, &deployment("two", "3s")).await;
    eventually("wave 2 running", T, || async {
        rollout(&hub).await.filter(|r| r.current_wave == 1)
    })
    .await;
    hub.kill().await;
    hub.restart().await;

    let r = ended(&hub, 2).await;
    assert_eq!(r.state, RolloutState::Complete, "{r:?}");
    all_applied(&hub, DEVICES).await;
    let of_2: Vec<_> = r
        .events
        .iter()
        .skip_while(|e| !e.message.starts_with("generation 2 rolling out"))
        .collect();
    for wave in ["early", "rest"] {
        let starts = of_2
            .iter()
            .filter(|e| e.message.starts_with(&format!("wave {wave} started")))
            .count();
        assert_eq!(starts, 1, "wave {wave} started {starts} times: {of_2:?}");
    }
    // One new revision per device, however the kill fell: the restarted hub
    // re-issued nothing (devices would have verified a newer revision).
    let c = fleet.counters();
    assert_eq!(
        Counters::get(&c.verified) - verified_before,
        DEVICES as u64,
        "documents verified for generation 2"
    );
    assert_eq!(Counters::get(&c.refused), 0);
    assert_eq!(fleet.received(NAME, 2), DEVICES);
    fleet.stop().await;
}

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
    eventually(
        "the Deployment runs generation 1 again, Available",
        T,
        || async {
            let d = admin.get("apps/v1", "Deployment", Some(NS), "cam").await?;
            let image = d["spec"]["template"]["spec"]["containers"][0]["image"].as_str()?;
            let fresh = d["status"]["observedGeneration"] == d["metadata"]["generation"];
            let ready =
                d["status"]["updatedReplicas"] == 1 && d["status"]["availableReplicas"] == 1;
            (image == "cam:1" && fresh && ready).then_some(())
        },
    )
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
    assert!(
        out.contains("RolledBack") || out.contains("Synced"),
        "{out}"
    );
    eprintln!("edgectl describe device pi-cam:\n{out}");
    let (code, out, _) = hub.edgectl(&["rollout", "status", "cam"]);
    assert_eq!(code, 1, "{out}");
    eprintln!("edgectl rollout status cam:\n{out}");
}
