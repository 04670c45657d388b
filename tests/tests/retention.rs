//! A device (compromised, or just chatty) cannot fill the hub's disk: with
//! retention at 1,000 events per device, 100,000 events from one device
//! leave at most 1,000 stored, and the hub's database file stops growing
//! once it holds them.

use std::path::Path;
use std::time::Duration;

use edgefleet_protocol::{Channel, Signer};
use edgefleet_tests::device::MqttDevice;
use edgefleet_tests::hub::{Hub, HubOptions};
use edgefleet_tests::{eventually, install_crypto};

const KEEP: u64 = 1_000;
const ROUNDS: usize = 4;
const PER_ROUND: usize = 25_000;

/// The store's files on disk: the database and its write-ahead log.
fn store_bytes(data_dir: &Path) -> u64 {
    ["cloudcore.db", "cloudcore.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(data_dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// Every event the API lists for the device, page by page.
async fn listed(hub: &Hub) -> usize {
    let (mut n, mut next) = (0, String::new());
    loop {
        let (code, page) = hub
            .get(&format!("/devices/chatty/events?continue={next}"))
            .await;
        assert_eq!(code, 200, "{page}");
        n += page["items"].as_array().map_or(0, Vec::len);
        match page["continue"].as_str() {
            Some(c) => next = c.to_owned(),
            None => return n,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_cannot_grow_the_hubs_store_past_its_event_limit() {
    install_crypto();
    let hub = Hub::start_with(HubOptions {
        env: vec![
            ("CLOUDCORE_STORE_EVENTS_PER_DEVICE".into(), KEEP.to_string()),
            // The rate limit is another test's business.
            ("CLOUDCORE_INGEST_RATE_PER_DEVICE".into(), "0".into()),
        ],
        ..Default::default()
    })
    .await;
    let key = Signer::generate();
    let enrolled = hub.enroll(&key, Some("chatty"), &[]).await;
    let dev = MqttDevice::connect(&enrolled).await;
    let topic = dev.topic(Channel::Events);
    let payload = serde_json::json!({"reading": "x".repeat(200)});

    let mut sizes = Vec::new();
    for round in 0..ROUNDS {
        for i in 0..PER_ROUND {
            let n = round * PER_ROUND + i;
            dev.publish(
                &topic,
                key.seal(&edgefleet_protocol::Event {
                    id: format!("e{n}"),
                    device_id: dev.id.clone(),
                    kind: "app.telemetry".into(),
                    workload: None,
                    created_at_ms: edgefleet_protocol::now_ms(),
                    payload: payload.clone(),
                }),
            )
            .await;
        }
        let sent = ((round + 1) * PER_ROUND) as f64;
        eventually(
            "every event of the round stored (then pruned)",
            Duration::from_secs(120),
            || async {
                (hub.metric("edgefleet_hub_events_stored_total").await >= sent).then_some(())
            },
        )
        .await;
        let stored = hub.metric("edgefleet_hub_events_stored_total").await;
        let pruned = hub
            .metric("edgefleet_hub_events_pruned_total{reason=\"count\"}")
            .await;
        assert_eq!(stored, sent, "each event stored once");
        assert!(
            stored - pruned <= KEEP as f64,
            "{} events kept after {sent} sent",
            stored - pruned
        );
        let kept = listed(&hub).await;
        assert!(kept as u64 <= KEEP, "{kept} events listed");
        sizes.push(store_bytes(hub.data_dir()));
        eprintln!(
            "retention: after {sent} events: {} kept, store {} KiB (db + wal)",
            stored - pruned,
            sizes[round] / 1024
        );
    }
    // Past the first round the store holds the same 1,000 events: its
    // files reuse freed pages instead of growing.
    let (half, last) = (sizes[1], sizes[ROUNDS - 1]);
    assert!(
        last <= half + half / 20,
        "the store grew from {half} to {last} bytes between 50,000 and 100,000 events"
    );
}

/// Over its ingest rate a device's messages are dropped and counted, not
/// lost: they are not acknowledged, so the agent sends them again, and
/// every event arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_its_rate_is_throttled_and_loses_nothing() {
    use edgefleet_tests::agent::{Agent, AgentOptions};
    const N: usize = 2_000;
    install_crypto();
    let hub = Hub::start_with(HubOptions {
        env: vec![
            ("CLOUDCORE_INGEST_RATE_PER_DEVICE".into(), "200".into()),
            ("CLOUDCORE_INGEST_BURST_PER_DEVICE".into(), "300".into()),
        ],
        ..Default::default()
    })
    .await;
    let mut agent = Agent::enroll_with(
        &hub,
        &[],
        AgentOptions {
            device_id: Some("eager".into()),
            env: vec![("EDGEFLEET_OUTBOX_ACK_TIMEOUT_SECS".into(), "2".into())],
            ..Default::default()
        },
    )
    .await;
    agent.start().await;
    agent.wait_uplink(true).await;
    for start in (0..N).step_by(500) {
        let batch: Vec<serde_json::Value> = (start..start + 500)
            .map(|i| serde_json::json!({"id": format!("t-{i}"), "kind": "app.telemetry", "payload": {"i": i}}))
            .collect();
        let (code, body) = agent.post_events(&serde_json::Value::Array(batch)).await;
        assert_eq!(code, 202, "{body}");
    }
    eventually(
        "every event at the hub",
        Duration::from_secs(120),
        || async { (hub.event_ids("eager").await.len() >= N).then_some(()) },
    )
    .await;
    let ids = hub.event_ids("eager").await;
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (N, N), "exactly once");
    let throttled = hub
        .metric("edgefleet_hub_ingest_throttled_total{channel=\"events\"}")
        .await;
    assert!(throttled > 0.0, "the rate limit never applied");
    eprintln!(
        "throttling: {N} events delivered exactly once, {throttled} sends dropped over the rate"
    );
}

/// Request bodies have stated limits: 4 MiB for everything (enrollment,
/// which needs no token, included), and `api.max_model_bytes` for a model.
#[tokio::test]
async fn request_bodies_are_bounded_as_stated() {
    install_crypto();
    let hub = Hub::start_with(HubOptions {
        env: vec![(
            "CLOUDCORE_API_MAX_MODEL_BYTES".into(),
            (1 << 20).to_string(),
        )],
        ..Default::default()
    })
    .await;
    // No pooled connections: each request on its own (the hub closes one
    // it refused a body on).
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let send = |method: reqwest::Method, path: &str, body: Vec<u8>| {
        http.request(method, format!("{}/api/v1{path}", hub.api_url()))
            .header("content-type", "application/json")
            .bearer_auth(hub.operator_token())
            .body(body)
            .send()
    };
    // The hub answers 413 from the Content-Length and closes the
    // connection: a client still writing the body may see only that.
    let refused = |r: reqwest::Result<reqwest::Response>| match r {
        Ok(r) => r.status() == 413,
        Err(e) => e.is_request(),
    };
    let big = vec![b' '; 5 << 20];
    assert!(refused(
        send(reqwest::Method::POST, "/enroll", big.clone()).await
    ));
    assert!(refused(
        send(reqwest::Method::PUT, "/deployments/huge", big.clone()).await
    ));
    assert!(refused(
        send(reqwest::Method::POST, "/models?name=m", vec![7u8; 2 << 20]).await
    ));
    // Each counted as a 413 on its route.
    let metrics = hub.metrics().await;
    for route in [
        "/api/v1/enroll",
        "/api/v1/deployments/{name}",
        "/api/v1/models",
    ] {
        assert!(
            metrics.lines().any(|l| l
                .starts_with("edgefleet_hub_api_request_duration_seconds_count")
                && l.contains(&format!("route=\"{route}\""))
                && l.contains("status=\"413\"")),
            "no 413 counted for {route}: {}",
            metrics
                .lines()
                .filter(|l| l.contains("status=\"4"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let (_, models) = hub.get("/models").await;
    assert!(!models.to_string().contains("\"m\""), "{models}");
    // Within the model limit: stored.
    let r = send(
        reqwest::Method::POST,
        "/models?name=m",
        vec![7u8; 512 << 10],
    )
    .await
    .expect("upload");
    assert_eq!(r.status(), 201);
}
