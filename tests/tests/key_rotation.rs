//! Key rotation without re-enrolling, against a real hub.
//!
//! The hub's key is rotated twice with `cloudcore keys rotate` while 100
//! simulated devices are online and a real agent (on a real Kubernetes
//! control plane) is stopped: the simulated devices follow each
//! announcement as it comes, the agent follows both when it returns, and
//! all of them converge on a deployment made after the rotations.
//!
//! A real agent replaces its own key with `edge-agent rotate-key` while it
//! runs: the hub takes the new key on a request signed by the old one, the
//! agent's events keep arriving, and what the hub seals to the new key
//! opens. A request signed by any other key is refused and counted.

use std::time::Duration;

use edgefleet_tests::agent::{Agent, AgentOptions};
use edgefleet_tests::control_plane::Shared;
use edgefleet_tests::eventually;
use edgefleet_tests::hub::Hub;
use edgefleet_tests::process::{bin, output};
use edgefleet_tests::sim::{Counters, Fleet, SimOptions};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(120);
const NAME: &str = "rotation";
const DEVICES: usize = 100;

/// A ConfigMap for every device labelled `fleet: sim`.
fn deployment(value: &str) -> String {
    format!(
        "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {{name: {NAME}}}\nspec:\n  \
         selector: {{matchLabels: {{fleet: sim}}}}\n  workloads:\n    - name: config\n      \
         kubernetes:\n        manifests:\n          - {{apiVersion: v1, kind: ConfigMap, metadata: \
         {{name: {NAME}, namespace: default}}, data: {{v: \"{value}\"}}}}\n"
    )
}

/// `cloudcore keys rotate` against `hub` (off the runtime): the new key id.
async fn rotate(hub: &Hub) -> String {
    let mut cmd = std::process::Command::new(bin("cloudcore"));
    cmd.args(["keys", "rotate", "--server", hub.api_url()])
        .arg("--data-dir")
        .arg(hub.data_dir())
        .env_remove("CLOUDCORE_CONFIG");
    let (code, out, err) = tokio::task::spawn_blocking(move || output(cmd))
        .await
        .expect("cloudcore keys rotate");
    assert_eq!(code, 0, "cloudcore keys rotate failed: {out}{err}");
    let (_, key) = hub.get("/hub/key").await;
    let kid = key["keyId"].as_str().expect("a key id").to_owned();
    assert!(out.contains(&format!("replaced by {kid}")), "{out}");
    kid
}

/// `edge-agent rotate-key` for `agent` (off the runtime); what it printed.
async fn rotate_device_key(agent: &Agent) -> String {
    let mut cmd = std::process::Command::new(bin("edge-agent"));
    cmd.args(["rotate-key", "--config"])
        .arg(agent.config_path());
    let (code, out, err) = tokio::task::spawn_blocking(move || output(cmd))
        .await
        .expect("edge-agent rotate-key");
    assert_eq!(code, 0, "edge-agent rotate-key failed: {out}{err}");
    out
}

async fn device(hub: &Hub, id: &str) -> Value {
    hub.get(&format!("/devices/{id}")).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_hub_key_reaches_an_online_fleet_and_an_agent_that_was_away() {
    let Some(cp) = Shared::get() else { return };
    let admin = cp.admin().await;
    let hub = Hub::start().await;
    let (_, first) = hub.get("/hub/key").await;
    let first = first["keyId"].as_str().expect("a key id").to_owned();
    let fleet = Fleet::start_connected(
        hub.api_url(),
        &hub.bootstrap_token(),
        &SimOptions {
            devices: DEVICES,
            ..Default::default()
        },
        T,
    )
    .await
    .expect("the simulated fleet enrolls and connects");
    let mut agent = Agent::enroll_with(
        &hub,
        &[("fleet", "sim")],
        AgentOptions {
            device_id: Some("pi-rotate".into()),
            kubeconfig: Some(admin.agent_kubeconfig().await),
            ..Default::default()
        },
    )
    .await;
    agent.start().await;
    agent.wait_uplink(true).await;

    hub.deploy(NAME, &deployment("one")).await;
    fleet.wait_running(NAME, 1, T).await.expect("generation 1");
    eventually("the agent applies generation 1", T, || async {
        let cm = admin.get("v1", "ConfigMap", Some("default"), NAME).await?;
        (cm["data"]["v"] == "one").then_some(())
    })
    .await;
    let pinned = std::fs::read_to_string(agent.state_dir().join("hub-key.pub")).unwrap();

    // The agent goes away; the hub key is rotated twice behind its back.
    agent.kill().await;
    let started = std::time::Instant::now();
    let second = rotate(&hub).await;
    eventually(
        "every simulated device follows the first rotation",
        T,
        || async {
            (Counters::get(&fleet.counters().hub_keys_followed) >= DEVICES as u64).then_some(())
        },
    )
    .await;
    eprintln!(
        "key_rotation: all {DEVICES} simulated devices pinned the new key {:?} after `cloudcore keys rotate` started",
        started.elapsed()
    );
    let third = rotate(&hub).await;
    assert!(first != second && second != third && first != third);
    eventually(
        "every simulated device follows the second rotation",
        T,
        || async {
            (Counters::get(&fleet.counters().hub_keys_followed) >= 2 * DEVICES as u64).then_some(())
        },
    )
    .await;

    // A deployment made after the rotations reaches every online device.
    hub.deploy(NAME, &deployment("two")).await;
    fleet.wait_running(NAME, 2, T).await.expect("generation 2");
    assert_eq!(Counters::get(&fleet.counters().refused), 0);

    // The agent comes back pinned to the first key and converges too.
    agent.start().await;
    eventually("the returning agent applies generation 2", T, || async {
        let cm = admin.get("v1", "ConfigMap", Some("default"), NAME).await?;
        (cm["data"]["v"] == "two").then_some(())
    })
    .await;
    let now_pinned = std::fs::read_to_string(agent.state_dir().join("hub-key.pub")).unwrap();
    assert_ne!(now_pinned, pinned, "the agent pinned the new key");
    let d = eventually("the agent reports the new key", T, || async {
        let d = device(&hub, "pi-rotate").await;
        (d["appliedRevision"] == d["desiredRevision"]).then_some(d)
    })
    .await;
    assert!(d["desiredRevision"].as_u64().is_some());

    // Every device reports the current key; the hub lists all three.
    let key = eventually("all 101 devices report the current key", T, || async {
        let (_, k) = hub.get("/hub/key").await;
        let current = k["keys"]
            .as_array()?
            .iter()
            .find(|e| e["keyId"] == third.as_str())?
            .clone();
        (current["devices"] == DEVICES as u64 + 1).then_some(k)
    })
    .await;
    let keys = key["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    assert_eq!(keys[0]["keyId"], first.as_str());
    assert!(keys[0]["rotatedMs"].is_u64() && keys[2]["rotatedMs"].is_null());
    let metrics = hub.metrics().await;
    assert!(
        metrics.contains("\nedgefleet_hub_key_devices_behind 0\n"),
        "{metrics}"
    );
    assert_eq!(hub.metric("edgefleet_hub_key_rotations_total").await, 2.0);
    // No document was refused on the way (an acknowledgement the hub
    // signed with the middle key before the agent returned may be: it is
    // sent again, signed with the current key).
    let d = device(&hub, "pi-rotate").await;
    assert!(d["conditions"].as_array().is_none_or(Vec::is_empty), "{d}");
    assert_eq!(d["workloads"][0]["sync"], "Synced", "{d}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_rotates_its_own_key_while_it_runs() {
    let hub = Hub::start().await;
    let mut agent = Agent::enroll_with(
        &hub,
        &[("fleet", "sim")],
        AgentOptions {
            device_id: Some("pi-rekey".into()),
            ..Default::default()
        },
    )
    .await;
    agent.start().await;
    agent.wait_uplink(true).await;
    let before = device(&hub, "pi-rekey").await["publicKey"].clone();
    let old_pem = std::fs::read(agent.state_dir().join("device-key.pem")).unwrap();

    // Someone else's key cannot rotate this device's.
    let stranger = edgefleet_protocol::Signer::generate();
    let id = edgefleet_protocol::DeviceId::new("pi-rekey").unwrap();
    let forged = stranger.rotate_to(&id, stranger.public(), edgefleet_protocol::now_ms());
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/devices/pi-rekey/key", hub.api_url()))
        .body(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        hub.metric("edgefleet_hub_device_key_rotations_total{result=\"refused\"}")
            .await,
        1.0
    );

    let out = rotate_device_key(&agent).await;
    assert!(out.contains("signs with the new key now"), "{out}");
    let after = device(&hub, "pi-rekey").await["publicKey"].clone();
    assert_ne!(before, after, "the hub holds the new key");
    assert_ne!(
        std::fs::read(agent.state_dir().join("device-key.pem")).unwrap(),
        old_pem
    );
    assert!(!agent.state_dir().join("device-key.next.pem").exists());

    // Signed with the new key, an event is accepted; sealed to it, a new
    // document opens.
    let (code, _) = agent
        .post_events(&json!({"id": "after-rotation", "kind": "app.telemetry", "payload": {}}))
        .await;
    assert_eq!(code, 202);
    eventually("the event signed with the new key is stored", T, || async {
        let (_, ev) = hub.get("/devices/pi-rekey/events").await;
        ev["items"]
            .as_array()?
            .iter()
            .any(|e| e["id"] == "after-rotation")
            .then_some(())
    })
    .await;
    hub.deploy(NAME, &deployment("rekeyed")).await;
    eventually(
        "the agent opens a document sealed to its new key",
        T,
        || async {
            let s = agent.status().await;
            (s["desired"]["revision"].as_u64()? >= 1).then_some(())
        },
    )
    .await;
    assert_eq!(
        agent
            .metric("edgefleet_agent_messages_rejected_total{reason=\"undecryptable\"}")
            .await,
        0.0
    );
    assert_eq!(
        hub.metric(
            "edgefleet_hub_messages_rejected_total{channel=\"status\",reason=\"unknown_key\"}"
        )
        .await,
        0.0
    );
    // Running it again rotates again (a fresh key each time).
    rotate_device_key(&agent).await;
    assert_ne!(device(&hub, "pi-rekey").await["publicKey"], after);
    assert_eq!(
        hub.metric("edgefleet_hub_device_key_rotations_total{result=\"rotated\"}")
            .await,
        2.0
    );
}
