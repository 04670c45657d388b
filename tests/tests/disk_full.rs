//! A full disk never wedges the agent. Its state directory sits on a 4 MiB
//! tmpfs, as on a small SD card:
//! 1. the uplink is down and apps post events until the agent refuses them
//!    (503): the agent's own writes never fill the disk (its reserve holds);
//!    when the uplink returns the outbox drains, the hub has every event
//!    that got 202 exactly once, the space comes back, and the hub showed
//!    `DiskPressure` while it lasted and clears it after;
//! 2. another process fills the disk: the agent keeps running, reports
//!    `DiskPressure`, accepts nothing it cannot store, comes back from a
//!    SIGKILL on the full disk with its status reaching the hub, and drains
//!    what it has once the other file is gone.

use std::collections::HashSet;
use std::time::Duration;

use edgefleet_tests::agent::{Agent, AgentOptions, Uplink, install_crypto};
use edgefleet_tests::eventually;
use edgefleet_tests::hub::Hub;
use edgefleet_tests::tmpfs::Tmpfs;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
const DISK: u64 = 4 * 1024 * 1024;
/// The agent's default reserve for a 4 MiB filesystem: 5 %.
const RESERVE: u64 = DISK / 20;

async fn agent_on(hub: &Hub, disk: &Tmpfs, id: &str) -> (Agent, Uplink) {
    let opts = AgentOptions {
        device_id: Some(id.into()),
        state_dir: Some(disk.path().join("state")),
        env: vec![("EDGEFLEET_OUTBOX_ACK_TIMEOUT_SECS".into(), "5".into())],
        ..Default::default()
    };
    let (mut agent, uplink) = Agent::enroll_behind(hub, &hub.broker_url(), &[], opts).await;
    agent.start().await;
    agent.wait_uplink(true).await;
    (agent, uplink)
}

/// A hub and an enrolled, connected agent `id` whose state is on a fresh
/// 4 MiB tmpfs; `None` (skipped) where tmpfs cannot be mounted.
async fn device_on_a_small_disk(id: &str) -> Option<(Tmpfs, Hub, Agent, Uplink)> {
    install_crypto();
    let disk = Tmpfs::mount(DISK)?;
    let hub = Hub::start().await;
    let (agent, uplink) = agent_on(&hub, &disk, id).await;
    Some((disk, hub, agent, uplink))
}

fn event(id: &str) -> Value {
    // About 1 KB stored per event: the 4 MiB card fills within a few thousand.
    json!({"id": id, "kind": "app.telemetry", "payload": {"reading": "r".repeat(400)}})
}

async fn condition(hub: &Hub, id: &str, kind: &str) -> Option<String> {
    let (_, d) = hub.get(&format!("/devices/{id}")).await;
    d["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| c["message"].as_str().unwrap_or_default().to_owned())
}

/// Every id of `accepted` at the hub, exactly once.
async fn all_at_hub_once(hub: &Hub, device: &str, accepted: &HashSet<String>) {
    eventually("every accepted event at the hub", T, || async {
        (hub.event_ids(device).await.len() >= accepted.len()).then_some(())
    })
    .await;
    let ids = hub.event_ids(device).await;
    let unique: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique.len(), ids.len(), "duplicates at the hub");
    assert_eq!(&unique, accepted, "the hub holds exactly what got 202");
}

async fn pressure_cleared(hub: &Hub, device: &str) {
    eventually("DiskPressure cleared at the hub", T, || async {
        condition(hub, device, "DiskPressure")
            .await
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_never_fills_its_disk_and_drains_when_the_uplink_returns() {
    let Some((disk, hub, agent, uplink)) = device_on_a_small_disk("pi-sd").await else {
        return;
    };
    uplink.set_down(true);
    agent.wait_uplink(false).await;

    let mut accepted = HashSet::new();
    let mut refused = 0;
    let mut min_free = u64::MAX;
    for i in 0..20_000 {
        let id = format!("ev-{i}");
        let (code, body) = agent.post_events(&event(&id)).await;
        match code {
            202 => {
                accepted.insert(id);
            }
            503 => {
                assert_eq!(body["error"]["code"], "disk_full", "{body}");
                refused += 1;
                if refused >= 50 {
                    break;
                }
            }
            c => panic!("event {i}: {c} {body}"),
        }
        min_free = min_free.min(disk.space().0);
    }
    let (free, total) = disk.space();
    eprintln!(
        "{} events accepted, {refused} refused; free space never below {min_free} of {total} bytes (reserve {RESERVE}), {free} now",
        accepted.len()
    );
    assert!(
        refused >= 50,
        "the agent never refused: the disk could not fill"
    );
    assert!(accepted.len() > 100, "only {} events fit", accepted.len());
    assert!(
        min_free >= RESERVE / 2,
        "the agent's own writes ate into the disk: {min_free} bytes free at the worst, reserve {RESERVE}"
    );
    assert_eq!(agent.get_status("/livez").await, Some(200));
    assert_eq!(
        agent
            .metric("edgefleet_agent_events_refused_total{reason=\"disk_full\"}")
            .await,
        f64::from(refused)
    );

    // The uplink returns: the hub sees the pressure, then the drain.
    uplink.set_down(false);
    let shown = eventually("DiskPressure at the hub", T, || async {
        condition(&hub, "pi-sd", "DiskPressure").await
    })
    .await;
    eprintln!("hub: DiskPressure: {shown}");
    all_at_hub_once(&hub, "pi-sd", &accepted).await;
    eventually("outbox drained", T, || async {
        (agent.metric("edgefleet_agent_outbox_depth").await == 0.0).then_some(())
    })
    .await;
    eventually("free space back above the reserve", T, || async {
        (disk.space().0 >= RESERVE).then_some(())
    })
    .await;
    // The drained outbox's pages go back to the filesystem, not only to
    // SQLite's free list.
    eventually("the outbox's space given back", T, || async {
        (disk.space().0 >= DISK / 2).then_some(())
    })
    .await;
    pressure_cleared(&hub, "pi-sd").await;
    eprintln!("free after the drain: {} bytes", disk.space().0);
    let (code, _) = agent.post_events(&event("after")).await;
    assert_eq!(code, 202, "events are taken again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filled_by_another_process_does_not_wedge_the_agent() {
    let Some((disk, hub, mut agent, uplink)) = device_on_a_small_disk("pi-full").await else {
        return;
    };
    uplink.set_down(true);
    agent.wait_uplink(false).await;
    let mut accepted = HashSet::new();
    for i in 0..50 {
        let id = format!("queued-{i}");
        let (code, _) = agent.post_events(&event(&id)).await;
        assert_eq!(code, 202);
        accepted.insert(id);
    }

    let filled = disk.fill("other-process.log");
    eprintln!(
        "another process wrote {filled} bytes; {} free",
        disk.space().0
    );
    let (code, body) = agent.post_events(&event("while-full")).await;
    assert_eq!(
        code, 503,
        "nothing is accepted that cannot be stored: {body}"
    );
    assert_eq!(agent.get_status("/livez").await, Some(200));

    // Uplink back while the disk is full: pressure shows at the hub and the
    // status report still gets there.
    let reports = hub_reports(&hub, "pi-full").await;
    uplink.set_down(false);
    let shown = eventually("DiskPressure at the hub", T, || async {
        condition(&hub, "pi-full", "DiskPressure").await
    })
    .await;
    eprintln!("hub: DiskPressure: {shown}");
    eventually("a status report after the disk filled", T, || async {
        (hub_reports(&hub, "pi-full").await > reports).then_some(())
    })
    .await;

    // SIGKILL and restart on the full disk.
    agent.kill().await;
    let filled_more = disk.fill("other-process-2.log");
    eprintln!("filled {filled_more} more bytes; {} free", disk.space().0);
    let reports = hub_reports(&hub, "pi-full").await;
    agent.start().await;
    eventually("/livez after a restart on a full disk", T, || async {
        (agent.get_status("/livez").await == Some(200)).then_some(())
    })
    .await;
    eventually("its status reaches the hub", T, || async {
        (hub_reports(&hub, "pi-full").await > reports).then_some(())
    })
    .await;
    let (code, _) = agent.post_events(&event("still-full")).await;
    assert_eq!(code, 503);

    // The other process's files go: the agent drains what it has.
    std::fs::remove_file(disk.path().join("other-process.log")).unwrap();
    std::fs::remove_file(disk.path().join("other-process-2.log")).unwrap();
    all_at_hub_once(&hub, "pi-full", &accepted).await;
    eventually("outbox drained", T, || async {
        (agent.metric("edgefleet_agent_outbox_depth").await == 0.0).then_some(())
    })
    .await;
    pressure_cleared(&hub, "pi-full").await;
    let (code, _) = agent.post_events(&event("after")).await;
    assert_eq!(code, 202);
}

/// The hub's time of the device's last status report.
async fn hub_reports(hub: &Hub, id: &str) -> u64 {
    let (_, d) = hub.get(&format!("/devices/{id}")).await;
    d["lastReportMs"].as_u64().unwrap_or(0)
}

/// The hub's own data directory fills up: it stores no device messages
/// (devices keep and resend them), says so, keeps serving reads and desired
/// state, refuses changes with 507, and catches up once there is room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_at_the_hub_refuses_events_and_keeps_serving() {
    install_crypto();
    let Some(disk) = Tmpfs::mount(16 * 1024 * 1024) else {
        return;
    };
    let hub = Hub::start_with(edgefleet_tests::hub::HubOptions {
        data_dir: Some(disk.path().join("hub")),
        ..Default::default()
    })
    .await;
    let mut agent = Agent::enroll_with(
        &hub,
        &[("site", "a")],
        AgentOptions {
            device_id: Some("pi-hubfull".into()),
            env: vec![("EDGEFLEET_OUTBOX_ACK_TIMEOUT_SECS".into(), "2".into())],
            ..Default::default()
        },
    )
    .await;
    agent.start().await;
    agent.wait_uplink(true).await;

    disk.fill("hub-neighbour.log");
    let mut accepted = HashSet::new();
    for i in 0..20 {
        let id = format!("while-hub-full-{i}");
        let (code, _) = agent.post_events(&event(&id)).await;
        assert_eq!(code, 202, "the device takes events into its outbox");
        accepted.insert(id);
    }
    eventually("the hub refusing to store them", T, || async {
        (hub.metric(
            "edgefleet_hub_messages_rejected_total{channel=\"events\",reason=\"hub_disk_full\"}",
        )
        .await
            >= 1.0)
            .then_some(())
    })
    .await;
    assert!(hub.event_ids("pi-hubfull").await.is_empty());
    assert!(agent.metric("edgefleet_agent_outbox_depth").await >= 20.0);
    let (code, _) = hub.get("/devices").await;
    assert_eq!(code, 200, "reads keep working");
    let ready = reqwest::get(format!("{}/readyz", hub.api_url()))
        .await
        .unwrap();
    assert!(ready.status().is_success());
    let (code, body) = hub
        .put_deployment(
            "web",
            "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {site: a}}\n  workloads:\n    - name: app\n      kubernetes:\n        manifests: [{apiVersion: v1, kind: ConfigMap, metadata: {name: c}}]\n",
        )
        .await;
    assert_eq!(code, 507, "{body}");
    assert_eq!(body["error"]["code"], "disk_full");

    std::fs::remove_file(disk.path().join("hub-neighbour.log")).unwrap();
    all_at_hub_once(&hub, "pi-hubfull", &accepted).await;
    eventually("outbox drained", T, || async {
        (agent.metric("edgefleet_agent_outbox_depth").await == 0.0).then_some(())
    })
    .await;
}
