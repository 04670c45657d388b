//! Staged rollouts against a real hub and simulated fleets (each device its
//! own MQTT connection, key and signed reports): a bad generation stops in
//! an early wave and rolls back by itself, reaching no device beyond the
//! waves it reached; offline devices neither block a wave nor miss the
//! generation; a hub SIGKILLed mid-rollout resumes without repeating a
//! wave or issuing a revision twice; and `edgectl rollout` drives it.

use std::time::{Duration, Instant};

use edgefleet_api::{RolloutState, RolloutStatus};
use edgefleet_tests::hub::Hub;
use edgefleet_tests::sim::{Counters, FailPlan, Fleet, SimOptions};

const T: Duration = Duration::from_secs(120);
const NAME: &str = "sim-config";

/// A deployment on every simulated device, rolled out canary (`ring:
/// canary`) / 10 % / the rest, judged at 5 % failures once 10 devices
/// are decided.
fn deployment(value: &str, bake: &str) -> String {
    format!(
        "apiVersion: edgefleet.io/v1
kind: Deployment
metadata: {{name: {NAME}}}
spec:
  selector: {{matchLabels: {{fleet: sim}}}}
  rollout:
    waves:
      - {{name: canary, selector: {{matchLabels: {{ring: canary}}}}}}
      - {{name: early, percent: 10}}
      - {{name: rest, percent: 100}}
    healthTimeout: 30s
    bake: {bake}
    maxFailures: 5%
    minSample: 10
  workloads:
    - name: config
      kubernetes:
        manifests:
          - {{apiVersion: v1, kind: ConfigMap, metadata: {{name: sim, namespace: sim}}, data: {{v: \"{value}\"}}}}
"
    )
}

async fn fleet(hub: &Hub, devices: usize, fail: Option<FailPlan>) -> Fleet {
    edgefleet_tests::sim::raise_open_file_limit();
    let fleet = Fleet::start(
        hub.api_url(),
        &hub.bootstrap_token(),
        &SimOptions {
            devices,
            canary: 10,
            fail,
            ..Default::default()
        },
    )
    .await
    .expect("enroll the simulated fleet");
    fleet
        .wait_connected(T)
        .await
        .expect("every simulated device connects");
    fleet
}

async fn rollout(hub: &Hub) -> Option<RolloutStatus> {
    hub.client().rollout(NAME).await.ok()
}

/// Waits until the rollout of `generation` has ended; returns it.
async fn ended(hub: &Hub, generation: u64) -> RolloutStatus {
    edgefleet_tests::eventually(
        &format!("the rollout of generation {generation} ends"),
        T,
        || async {
            rollout(hub)
                .await
                .filter(|r| r.generation == generation && !r.state.is_active())
        },
    )
    .await
}

/// Every device applied its current desired revision, at the hub.
async fn all_applied(hub: &Hub, devices: usize) {
    edgefleet_tests::eventually("every device applied its document", T, || async {
        let (code, s) = hub.get(&format!("/deployments/{NAME}/status")).await;
        let d = s["devices"].as_array()?;
        let ok = code == 200
            && d.len() == devices
            && d.iter().all(|d| {
                d["appliedRevision"].is_u64() && d["appliedRevision"] == d["desiredRevision"]
            });
        ok.then_some(())
    })
    .await;
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

    // Every device is back on generation 1, at a newer revision.
    all_applied(&hub, DEVICES).await;
    let (_, d) = hub.get(&format!("/devices/{}", fleet.devices[0].id)).await;
    assert!(d["desiredRevision"].as_u64() >= Some(2), "{d}");
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
    edgefleet_tests::eventually("the hub sees them offline", T, || async {
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
    edgefleet_tests::eventually("the offline devices converge", T, || async {
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
    edgefleet_tests::eventually("wave 2 running", T, || async {
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
