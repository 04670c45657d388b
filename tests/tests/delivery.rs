//! End-to-end delivery of the outbox: an event leaves the agent's outbox only
//! when the hub says it has committed it, so neither a hub nor a broker that
//! dies holding acknowledged messages loses any.
//!
//! The scenario that lost 78,543 of 100,000 events before acknowledgements
//! came from the hub: 100,000 events queued offline, the uplink back, and the
//! hub SIGKILLed the moment the agent's broker had acknowledged every one of
//! them (most still sat in the embedded broker's memory, in the hub's
//! process). Then the same against mosquitto, killing mosquitto instead, and
//! hub kills at random points of a flush.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use edgefleet_tests::agent::{Agent, AgentOptions, Uplink, install_crypto, outbox_room};
use edgefleet_tests::eventually;
use edgefleet_tests::fixtures::hub_on_mosquitto;
use edgefleet_tests::hub::Hub;
use serde_json::{Value, json};

const N: usize = 100_000;
/// Long enough for a debug-build hub to restart and take a 100,000-event
/// resend.
const CONVERGE: Duration = Duration::from_secs(300);

/// An agent whose uplink to `broker_url` goes through a cuttable proxy, with
/// room for `N` events and a short wait for the hub's acknowledgements.
/// `unacked`: how many may be out without the hub's acknowledgement; `N`
/// lets the broker take the whole backlog at once, as before end-to-end
/// acknowledgements, so that a kill finds most of it in the broker alone.
async fn agent_behind_uplink(
    hub: &Hub,
    broker_url: &str,
    id: &str,
    unacked: usize,
) -> (Agent, Uplink) {
    let (mut agent, uplink) = Agent::enroll_behind(
        hub,
        broker_url,
        &[],
        AgentOptions {
            device_id: Some(id.into()),
            env: [
                outbox_room(2 * N, 512 << 20),
                vec![
                    ("EDGEFLEET_OUTBOX_ACK_TIMEOUT_SECS".into(), "5".into()),
                    ("EDGEFLEET_OUTBOX_MAX_UNACKED".into(), unacked.to_string()),
                ],
            ]
            .concat(),
            ..Default::default()
        },
    )
    .await;
    agent.start().await;
    agent.wait_uplink(true).await;
    (agent, uplink)
}

/// Posts `n` events named `{prefix}-{i}` in batches; all must get 202.
async fn queue_events(agent: &Agent, prefix: &str, n: usize) -> HashSet<String> {
    let mut ids = HashSet::with_capacity(n);
    for start in (0..n).step_by(1000) {
        let batch: Vec<Value> = (start..(start + 1000).min(n))
            .map(|i| {
                let id = format!("{prefix}-{i}");
                ids.insert(id.clone());
                json!({"id": id, "kind": "app.telemetry", "payload": {"i": i}})
            })
            .collect();
        let (code, body) = agent.post_events(&Value::Array(batch)).await;
        assert_eq!(code, 202, "batch at {start} refused: {body}");
    }
    ids
}

/// Every id of `expected` is at the hub exactly once, and nothing else of
/// that prefix.
async fn assert_exactly_once(hub: &Hub, device: &str, prefix: &str, expected: &HashSet<String>) {
    let ids: Vec<String> = hub
        .event_ids(device)
        .await
        .into_iter()
        .filter(|i| i.starts_with(&format!("{prefix}-")))
        .collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate events at the hub");
    let missing: Vec<_> = expected
        .iter()
        .filter(|i| !unique.contains(i))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} events missing at the hub, e.g. {missing:?}",
        expected.len() - unique.len().min(expected.len()),
        expected.len()
    );
    assert_eq!(ids.len(), expected.len());
}

async fn hub_event_count(hub: &Hub, device: &str, prefix: &str) -> usize {
    hub.event_ids(device)
        .await
        .iter()
        .filter(|i| i.starts_with(&format!("{prefix}-")))
        .count()
}

/// Waits until the agent's broker has acknowledged `n` outbox messages in
/// all (`edgefleet_agent_outbox_sent_total`).
async fn wait_broker_acked(agent: &Agent, n: f64) {
    eventually("the broker to acknowledge the outbox", CONVERGE, || async {
        (agent.metric("edgefleet_agent_outbox_sent_total").await >= n).then_some(())
    })
    .await;
}

async fn wait_delivered(hub: &Hub, agent: &Agent, prefix: &str, n: usize) {
    let device = agent.device_id.clone();
    eventually("every event at the hub", CONVERGE, || async {
        (hub_event_count(hub, &device, prefix).await >= n).then_some(())
    })
    .await;
    eventually(
        "the agent's outbox acknowledged and empty",
        CONVERGE,
        || async { (agent.metric("edgefleet_agent_outbox_depth").await == 0.0).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_killed_when_its_broker_acknowledged_everything_loses_nothing() {
    install_crypto();
    let mut hub = Hub::start().await;
    let (agent, uplink) = agent_behind_uplink(&hub, &hub.broker_url(), "pi-delivery", N).await;
    uplink.set_down(true);
    agent.wait_uplink(false).await;
    let expected = queue_events(&agent, "ev", N).await;
    let sent_before = agent.metric("edgefleet_agent_outbox_sent_total").await;

    let flush = Instant::now();
    uplink.set_down(false);
    wait_broker_acked(&agent, sent_before + N as f64).await;
    hub.kill().await;
    eprintln!(
        "broker acknowledged all {N} events {:?} after the uplink came back; hub SIGKILLed",
        flush.elapsed()
    );
    let st = agent.status().await;
    eprintln!("agent outbox at the kill: {}", st["outbox"]);
    assert!(
        st["outbox"]["depth"].as_u64().unwrap_or(0) > 0,
        "the agent must still hold what the hub had not acknowledged: {}",
        st["outbox"]
    );

    hub.restart().await;
    let at_restart = hub_event_count(&hub, "pi-delivery", "ev").await;
    eprintln!("hub held {at_restart} of {N} events after the restart; the agent resends the rest");
    wait_delivered(&hub, &agent, "ev", N).await;
    assert_exactly_once(&hub, "pi-delivery", "ev", &expected).await;
    let st = agent.status().await;
    assert_eq!(st["outbox"]["queued"], 0, "{}", st["outbox"]);
    assert_eq!(st["outbox"]["sentUnacknowledged"], 0, "{}", st["outbox"]);
    assert!(st["outbox"]["acknowledged"].as_u64().unwrap_or(0) >= N as u64);
    assert_eq!(
        agent.metric("edgefleet_agent_outbox_dropped_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_killed_when_it_acknowledged_everything_loses_nothing() {
    let Some((mut broker, hub)) = hub_on_mosquitto().await else {
        return;
    };
    let (agent, uplink) = agent_behind_uplink(&hub, &broker.url(), "pi-delivery-m", N).await;
    uplink.set_down(true);
    agent.wait_uplink(false).await;
    let expected = queue_events(&agent, "ev", N).await;
    let sent_before = agent.metric("edgefleet_agent_outbox_sent_total").await;

    uplink.set_down(false);
    wait_broker_acked(&agent, sent_before + N as f64).await;
    // SIGKILL: mosquitto loses what it held in memory and never saved.
    broker.kill().await;
    let at_kill = hub_event_count(&hub, "pi-delivery-m", "ev").await;
    eprintln!("mosquitto SIGKILLed with the hub holding {at_kill} of {N} events");
    broker.start_again().await;
    wait_delivered(&hub, &agent, "ev", N).await;
    assert_exactly_once(&hub, "pi-delivery-m", "ev", &expected).await;
}

/// Five flushes of one agent; each time the hub is SIGKILLed at a random
/// point (seeded from the clock, printed) of the flush and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_killed_at_random_points_of_flushes_loses_nothing() {
    const RUNS: usize = 5;
    const PER_RUN: usize = 20_000;
    install_crypto();
    let mut hub = Hub::start().await;
    let (agent, uplink) =
        agent_behind_uplink(&hub, &hub.broker_url(), "pi-delivery-r", 10_000).await;
    let seed = std::env::var("EDGEFLEET_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(edgefleet_protocol::now_ms);
    eprintln!("kill points seeded with {seed} (EDGEFLEET_FAULT_SEED={seed} replays them)");
    let mut x = seed | 1;
    for run in 0..RUNS {
        // xorshift: a kill point between 1 % and 100 % of the run's events.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = 1 + (x % 100) as usize;
        uplink.set_down(true);
        agent.wait_uplink(false).await;
        let prefix = format!("r{run}");
        let expected = queue_events(&agent, &prefix, PER_RUN).await;
        let sent_before = agent.metric("edgefleet_agent_outbox_sent_total").await;
        uplink.set_down(false);
        wait_broker_acked(&agent, sent_before + (PER_RUN * at / 100) as f64).await;
        hub.kill().await;
        eprintln!("run {run}: hub SIGKILLed at {at} % of the flush");
        hub.restart().await;
        wait_delivered(&hub, &agent, &prefix, PER_RUN).await;
        assert_exactly_once(&hub, "pi-delivery-r", &prefix, &expected).await;
    }
}
