//! The fleet simulator, small: 50 simulated devices (each its own MQTT
//! connection and key) against a real hub converge on a deployment, and the
//! hub accepts their signed status reports and shows them in sync.

use std::time::Duration;

use edgefleet_tests::fixtures::configmaps;
use edgefleet_tests::hub::{Hub, metric_value};
use edgefleet_tests::sim::{Counters, Fleet, SimOptions};

const DEVICES: usize = 50;

fn deployment(content: &str) -> String {
    configmaps(
        "sim-config",
        ("fleet", "sim"),
        "config",
        "sim",
        &[("sim-config", "content", content)],
    )
}

async fn hub_in_sync(hub: &Hub, revision: u64) -> Option<()> {
    let (code, v) = hub.get("/deployments/sim-config/status").await;
    let devices = v["devices"].as_array()?;
    let all = code == 200
        && v["targeted"] == DEVICES
        && v["inSync"] == DEVICES
        && v["healthy"] == DEVICES
        && devices.len() == DEVICES
        && devices
            .iter()
            .all(|d| d["appliedRevision"] == revision && d["desiredRevision"] == revision);
    all.then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_fleet_converges_with_signed_status() {
    let hub = Hub::start().await;
    let opts = SimOptions {
        devices: DEVICES,
        sites: 5,
        ..Default::default()
    };
    let fleet = Fleet::start_connected(
        hub.api_url(),
        &hub.bootstrap_token(),
        &opts,
        Duration::from_secs(30),
    )
    .await
    .expect("every simulated device enrolls and connects with its own credentials");
    edgefleet_tests::eventually(
        "hub sees every device online",
        Duration::from_secs(30),
        || async {
            (hub.metric("edgefleet_hub_devices_online").await == DEVICES as f64).then_some(())
        },
    )
    .await;

    // Create, then change: every device verifies each signed revision and
    // reports it in sync; the hub accepts the signed reports.
    for (revision, content) in [(1u64, "one"), (2, "two")] {
        let (code, body) = hub.put_deployment("sim-config", &deployment(content)).await;
        assert!((200..300).contains(&code), "PUT: {code} {body}");
        fleet
            .wait_acked(revision, Duration::from_secs(30))
            .await
            .expect("every device acknowledges the new revision");
        edgefleet_tests::eventually(
            &format!("hub shows all {DEVICES} devices in sync at revision {revision}"),
            Duration::from_secs(30),
            || hub_in_sync(&hub, revision),
        )
        .await;
    }

    let c = fleet.counters();
    assert_eq!(Counters::get(&c.refused), 0, "no desired document refused");
    assert_eq!(Counters::get(&c.verified), 2 * DEVICES as u64);
    let m = hub.metrics().await;
    assert!(
        metric_value(
            &m,
            "edgefleet_hub_messages_received_total{channel=\"status\"}"
        ) >= 2.0 * DEVICES as f64,
        "status reports received:\n{m}"
    );
    let rejected: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("edgefleet_hub_messages_rejected_total") && !l.ends_with(" 0"))
        .collect();
    assert!(
        rejected.is_empty(),
        "hub rejected device messages: {rejected:?}"
    );
    assert_eq!(
        metric_value(&m, "edgefleet_hub_broker_auth_failures_total"),
        0.0
    );

    // A device's own view over REST: the applied revision it reported.
    let (code, d) = hub.get(&format!("/devices/{}", fleet.devices[7].id)).await;
    assert_eq!(code, 200);
    assert_eq!(d["appliedRevision"], 2, "{d}");
    assert_eq!(d["presence"], "online", "{d}");

    // A forced reconnect is a new session: it gets the retained document
    // again, recognises it as not newer and stays in sync.
    fleet.reconnect(3);
    edgefleet_tests::eventually("device 3 reconnected", Duration::from_secs(30), || async {
        (Counters::get(&fleet.counters().connects) > DEVICES as u64 && fleet.connected() == DEVICES)
            .then_some(())
    })
    .await;
    assert_eq!(Counters::get(&fleet.counters().refused), 0);
    fleet.stop().await;
}
