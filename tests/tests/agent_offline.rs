//! Offline behaviour of the real agent binary: a reboot without uplink onto
//! a reset K3s (a real control plane whose datastore was wiped) re-applies
//! the stored desired state by itself, and events queued while the broker
//! is down (across SIGKILLs) reach the hub exactly once after reconnect.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use edgefleet_tests::agent::{Agent, AgentOptions, install_crypto};
use edgefleet_tests::control_plane::ControlPlane;
use edgefleet_tests::eventually;
use edgefleet_tests::fixtures::{WEB, hub_on_mosquitto};
use edgefleet_tests::hub::Hub;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

fn assert_exactly_once(ids: &[String], expected: &HashSet<String>) {
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate events at the hub");
    let got: HashSet<String> = ids.iter().cloned().collect();
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    assert!(
        missing.is_empty(),
        "events missing at the hub, e.g. {missing:?}"
    );
    assert_eq!(ids.len(), expected.len());
}

/// Posts events `<prefix>-0` … `<prefix>-4`; each must be accepted (202).
async fn post_five(agent: &Agent, prefix: &str, expected: &mut HashSet<String>) {
    for i in 0..5 {
        let id = format!("{prefix}-{i}");
        let (code, _) = agent
            .post_events(&json!({"id": id, "kind": "app.telemetry", "payload": {"i": i}}))
            .await;
        assert_eq!(code, 202);
        expected.insert(id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_reboot_reapplies_stored_state_and_resyncs() {
    install_crypto();
    let Some(mut cp) = ControlPlane::start().await else {
        return;
    };
    let mut hub = Hub::start().await;
    // The admin kubeconfig: a ServiceAccount token would not outlive the
    // wiped datastore (nor does one on a reset K3s).
    let mut agent = Agent::enroll_with(
        &hub,
        &[("site", "plant-3")],
        AgentOptions {
            device_id: Some("pi-offline".into()),
            kubeconfig: Some(cp.kubeconfig()),
            ..Default::default()
        },
    )
    .await;
    agent.start().await;
    hub.deploy("line-3", WEB).await;
    eventually("hub shows line-3 healthy", T, || async {
        let (_, s) = hub.get("/deployments/line-3/status").await;
        (s["healthy"] == 1).then_some(())
    })
    .await;
    let mut expected = HashSet::new();
    post_five(&agent, "online", &mut expected).await;
    eventually("online events at the hub", T, || async {
        (hub.event_ids("pi-offline").await.len() == 5).then_some(())
    })
    .await;

    // Power cut: hub unreachable, agent and K3s down, K3s's datastore gone.
    hub.kill().await;
    agent.kill().await;
    cp.stop().await;
    cp.wipe();

    // The agent boots first and K3s's API server after it, as on a Pi;
    // the objects are back before the controllers even start.
    agent.start().await;
    cp.start_api().await;
    let ready = cp.ready_at();
    let admin = cp.admin().await;
    eventually("stored workloads re-applied without uplink", T, || async {
        admin
            .get("apps/v1", "Deployment", Some("demo"), "web")
            .await?;
        admin
            .get("v1", "ConfigMap", Some("demo"), "web-config")
            .await?;
        Some(())
    })
    .await;
    let elapsed = ready.elapsed();
    cp.start_controllers().await;
    eprintln!(
        "offline reboot: every stored object back {elapsed:?} after the API server was ready"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "re-apply took {elapsed:?} after the API server was ready"
    );
    post_five(&agent, "offline", &mut expected).await;

    // Uplink back: status flows again, events arrive exactly once.
    hub.restart().await;
    eventually("hub shows line-3 healthy again", T, || async {
        let (_, s) = hub.get("/deployments/line-3/status").await;
        (s["healthy"] == 1 && s["inSync"] == 1).then_some(())
    })
    .await;
    eventually("all events at the hub", T, || async {
        (hub.event_ids("pi-offline").await.len() >= expected.len()).then_some(())
    })
    .await;
    assert_exactly_once(&hub.event_ids("pi-offline").await, &expected);
    agent.kill().await;
}

/// The outbox scenario against one broker: the agent's uplink (a cuttable
/// proxy) goes down, 10,000 events are posted while the agent is SIGKILLed
/// twice, the uplink comes back, the hub must hold every event exactly once.
async fn outbox_burst(hub: &Hub, broker_url: &str) {
    const N: usize = 10_000;
    let opts = AgentOptions {
        device_id: Some("pi-outbox".into()),
        http_port: Some(edgefleet_tests::free_port()),
        ..Default::default()
    };
    let (mut agent, uplink) = Agent::enroll_behind(hub, broker_url, &[], opts).await;
    agent.start_then_cut(&uplink).await;

    // Four posters; each retries an event until it gets 202 (a kill may
    // cut a request whose commit did or did not happen: the hub dedups).
    let url = format!("{}/v1/events", agent.http_url());
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut posters = Vec::new();
    for w in 0..4 {
        let url = url.clone();
        let accepted = accepted.clone();
        posters.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in (w..N).step_by(4) {
                let body =
                    json!({"id": format!("ev-{i}"), "kind": "app.telemetry", "payload": {"i": i}});
                loop {
                    match http.post(&url).json(&body).send().await {
                        Ok(r) if r.status().as_u16() == 202 => break,
                        Ok(r) => panic!("event {i} refused: {}", r.status()),
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                accepted.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for at in [N * 3 / 10, N * 65 / 100] {
        eventually("posters progressing", Duration::from_secs(120), || async {
            (accepted.load(Ordering::Relaxed) >= at).then_some(())
        })
        .await;
        agent.kill().await;
        agent.start().await;
    }
    for p in posters {
        p.await.expect("poster");
    }
    let depth = agent.metric("edgefleet_agent_outbox_depth").await;
    assert!(
        depth >= N as f64,
        "outbox holds {depth} rows, expected at least {N}"
    );

    let reconnect = Instant::now();
    uplink.set_down(false);
    let expected: HashSet<String> = (0..N).map(|i| format!("ev-{i}")).collect();
    eventually("all events at the hub", Duration::from_secs(60), || async {
        (hub.event_ids("pi-outbox").await.len() >= N).then_some(())
    })
    .await;
    eprintln!(
        "outbox: {N} events at the hub {:?} after the uplink came back",
        reconnect.elapsed()
    );
    assert_exactly_once(&hub.event_ids("pi-outbox").await, &expected);
    eventually("outbox drained", T, || async {
        (agent.metric("edgefleet_agent_outbox_depth").await == 0.0).then_some(())
    })
    .await;
    assert_eq!(
        agent.metric("edgefleet_agent_outbox_dropped_total").await,
        0.0
    );
    agent.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_burst_through_mosquitto() {
    let Some((broker, hub)) = hub_on_mosquitto().await else {
        return;
    };
    outbox_burst(&hub, &broker.url()).await;
}

/// The same burst through the embedded rumqttd. Its per-filter commit log
/// once rolled past unread messages of the hub's `+/events` subscription
/// ("Read cursor start jumped"); the hub now sizes those logs for bursts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_burst_through_the_embedded_broker() {
    install_crypto();
    let hub = Hub::start().await;
    outbox_burst(&hub, &hub.broker_url()).await;
}
