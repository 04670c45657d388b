//! Fault matrix, scenario 3: one agent behind a real link that fails. The
//! agent (and its K3s: a real API server on kine, device-local as K3s is) runs in a network
//! namespace joined to the host by a veth pair on a private /30; the hub and
//! the broker listen on the host end. The link is cut from inside the
//! namespace, a new revision is made and events are posted during the
//! partition, the link heals, and both must arrive.
//!
//! Needs root and iproute2: skips loudly otherwise, fails instead under
//! `EDGEFLEET_REQUIRE_NETNS=1` (CI).

use std::collections::HashSet;
use std::time::Duration;

use edgefleet_tests::agent::{Agent, AgentOptions, install_crypto};
use edgefleet_tests::control_plane::ControlPlane;
use edgefleet_tests::eventually;
use edgefleet_tests::fixtures::configmaps;
use edgefleet_tests::hub::{Hub, HubOptions};
use edgefleet_tests::mosquitto::Mosquitto;
use edgefleet_tests::netns::NetNs;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(40);

fn deployment(value: &str) -> String {
    configmaps(
        "cut",
        ("site", "plant-3"),
        "cfg",
        "demo",
        &[("cut-cm", "v", value)],
    )
}

/// The hub's view of the device: (applied revision, desired revision).
async fn revisions(hub: &Hub, device: &str) -> (Option<u64>, Option<u64>) {
    let (_, d) = hub.get(&format!("/devices/{device}")).await;
    (d["appliedRevision"].as_u64(), d["desiredRevision"].as_u64())
}

async fn post_event(ns: &NetNs, port: u16, id: &str) {
    let body = json!({"id": id, "kind": "app.telemetry", "payload": {"id": id}}).to_string();
    let (code, answer) = ns
        .http(port, "POST", "/v1/events", &body, Duration::from_secs(10))
        .await;
    assert_eq!(code, 202, "POST /v1/events inside {}: {answer}", ns.name);
}

async fn partition(external: bool) {
    install_crypto();
    let Some(ns) = NetNs::create() else {
        return;
    };
    // The broker (and the hub's REST API) must be reachable from the host end.
    let mosquitto = if external {
        let Some(m) = Mosquitto::start_with_listeners(&[ns.host_ip]).await else {
            return;
        };
        Some(m)
    } else {
        None
    };
    let hub = Hub::start_with(HubOptions {
        external_broker: mosquitto.as_ref().map(Mosquitto::url),
        listen_ip: Some(ns.host_ip),
        ..Default::default()
    })
    .await;
    let broker_port = edgefleet_tests::device::host_port(&hub.broker_url()).1;
    let device_broker = format!("mqtt://{}:{broker_port}", ns.host_ip);

    // The device's own K3s (a real API server on kine/SQLite) runs inside
    // the namespace with it: cutting the uplink leaves it reachable.
    let Some(kube) = ControlPlane::start_api_only_in(&ns.name).await else {
        return;
    };
    let kubeconfig = kube.kubeconfig();

    let port = edgefleet_tests::free_port();
    let mut agent = Agent::enroll_with(
        &hub,
        &[("site", "plant-3")],
        AgentOptions {
            device_id: Some("pi-cut".into()),
            kubeconfig: Some(kubeconfig),
            http_port: Some(port),
            netns: Some(ns.name.clone()),
            env: vec![
                ("EDGEFLEET_BROKER_URL".into(), device_broker),
                ("EDGEFLEET_HUB_URL".into(), hub.api_url().to_owned()),
            ],
            ..Default::default()
        },
    )
    .await;
    agent.start().await;

    hub.deploy("cut", &deployment("before")).await;
    let before = eventually("revision applied before the partition", T, || async {
        let (applied, desired) = revisions(&hub, "pi-cut").await;
        let (_, s) = hub.get("/deployments/cut/status").await;
        (applied.is_some() && applied == desired && s["inSync"] == 1).then_some(applied)
    })
    .await;
    post_event(&ns, port, "before-0").await;
    eventually("event before the partition at the hub", T, || async {
        (hub.event_ids("pi-cut").await.len() == 1).then_some(())
    })
    .await;

    // Cut. The hub sees the device go offline (last will / keepalive).
    ns.cut();
    eventually("hub sees the device offline", T, || async {
        let (_, d) = hub.get("/devices/pi-cut").await;
        (d["presence"] == "offline").then_some(())
    })
    .await;
    hub.deploy("cut", &deployment("during")).await;
    let mut expected: HashSet<String> = HashSet::from(["before-0".to_owned()]);
    for i in 0..5 {
        let id = format!("during-{i}");
        post_event(&ns, port, &id).await;
        expected.insert(id);
    }
    // Nothing crosses the cut link.
    let (applied, desired) = revisions(&hub, "pi-cut").await;
    assert_eq!(applied, before, "applied changed across a cut link");
    assert!(
        desired > before,
        "the change during the partition made no revision"
    );
    assert_eq!(hub.event_ids("pi-cut").await.len(), 1);
    let st = agent.status().await;
    assert_eq!(
        st["desired"]["revision"].as_u64(),
        before,
        "the agent received a document across a cut link"
    );

    // Heal: the change is applied, the queued events arrive exactly once.
    ns.heal();
    eventually("revision made during the partition applied", T, || async {
        let (applied, d) = revisions(&hub, "pi-cut").await;
        let (_, s) = hub.get("/deployments/cut/status").await;
        (applied == desired && d == desired && s["inSync"] == 1).then_some(())
    })
    .await;
    let (code, v) = ns
        .http(port, "GET", "/livez", "", Duration::from_secs(10))
        .await;
    assert_eq!(code, 200, "{v}");
    eventually(
        "events posted during the partition at the hub",
        T,
        || async { (hub.event_ids("pi-cut").await.len() >= expected.len()).then_some(()) },
    )
    .await;
    let ids = hub.event_ids("pi-cut").await;
    let got: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(got.len(), ids.len(), "duplicate events at the hub: {ids:?}");
    assert_eq!(got, expected);
    let st: Value = agent.status().await;
    assert_eq!(st["desired"]["revision"].as_u64(), desired);
    assert_eq!(st["workloads"][0]["sync"], "Synced", "{st}");
    agent.kill().await;
    drop(kube);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_agent_catches_up_embedded() {
    partition(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_agent_catches_up_mosquitto() {
    partition(true).await;
}
