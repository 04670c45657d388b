//! Commands from the hub to real agent processes: a resync to an online
//! device runs within a second; one to an offline device runs when it comes
//! back; one that expired while it was away is never run; each shows its
//! final state in `edgectl`. Bad requests are refused with the API's one
//! error shape.

use std::time::Duration;

use edgefleet_protocol::Signer;
use edgefleet_tests::agent::{Agent, install_crypto};
use edgefleet_tests::eventually;
use edgefleet_tests::hub::Hub;
use reqwest::Method;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

async fn presence(hub: &Hub, device: &str, want: &str) {
    eventually(&format!("hub shows {device} {want}"), T, || async {
        let (_, d) = hub.get(&format!("/devices/{device}")).await;
        (d["presence"] == want).then_some(())
    })
    .await;
}

async fn send(hub: &Hub, device: &str, body: Value) -> (u16, Value) {
    hub.api(
        Method::POST,
        &format!("/devices/{device}/commands"),
        Some(("application/json", body.to_string())),
    )
    .await
}

async fn command(hub: &Hub, device: &str, id: &str) -> Value {
    let (code, c) = hub.get(&format!("/devices/{device}/commands/{id}")).await;
    assert_eq!(code, 200, "{c}");
    c
}

async fn wait_state(hub: &Hub, device: &str, id: &str, state: &str) -> Value {
    eventually(&format!("command {id} {state}"), T, || async {
        let c = command(hub, device, id).await;
        (c["state"] == state).then_some(c)
    })
    .await
}

/// The command ids the agent's store recorded as run.
fn run_ids(agent: &Agent) -> Vec<String> {
    let db = rusqlite::Connection::open_with_flags(
        agent.state_dir().join("agent.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = db
        .prepare("SELECT id FROM commands_run ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_once_online_after_reconnect_and_never_once_expired() {
    install_crypto();
    let hub = Hub::start().await;
    let mut agent = Agent::enroll_and_start(&hub, "pi-cmd", &[("site", "cmd")]).await;
    agent.wait_uplink(true).await;
    presence(&hub, "pi-cmd", "online").await;

    // Online: edgectl waits for the result.
    let (code, out, err) = hub.edgectl(&["resync", "device", "pi-cmd", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("to device/pi-cmd: done"), "{out}");
    let online_id = edgefleet_tests::word_after(&out, "command/");
    let c = command(&hub, "pi-cmd", &online_id).await;
    let took = c["finishedMs"].as_u64().unwrap() - c["createdMs"].as_u64().unwrap();
    assert!(
        took <= 1000,
        "resync to an online device took {took} ms: {c}"
    );
    assert_eq!(c["deliveries"], 1, "{c}");
    assert_eq!(
        agent
            .metric("edgefleet_agent_commands_run_total{action=\"resync\"}")
            .await,
        1.0
    );

    // Offline: one command waits, one expires while the device is away.
    assert_eq!(agent.stop().await, Some(0));
    presence(&hub, "pi-cmd", "offline").await;
    let (code, waiting) = send(&hub, "pi-cmd", json!({"action": {"type": "resync"}})).await;
    assert_eq!(code, 201, "{waiting}");
    assert_eq!(waiting["state"], "queued");
    let (code, short) = send(
        &hub,
        "pi-cmd",
        json!({"action": {"type": "reportStatus"}, "expiresIn": "1s"}),
    )
    .await;
    assert_eq!(code, 201, "{short}");
    let (waiting, short) = (
        waiting["id"].as_str().unwrap().to_owned(),
        short["id"].as_str().unwrap().to_owned(),
    );
    let expired = wait_state(&hub, "pi-cmd", &short, "expired").await;
    assert_eq!(expired["deliveries"], 0, "{expired}");
    assert!(
        expired["message"].as_str().unwrap().contains("never sent"),
        "{expired}"
    );
    assert_eq!(command(&hub, "pi-cmd", &waiting).await["state"], "queued");

    agent.start().await;
    let done = wait_state(&hub, "pi-cmd", &waiting, "done").await;
    assert_eq!(done["deliveries"], 1, "{done}");
    // Settled: the expired one stays expired and was never run.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(command(&hub, "pi-cmd", &short).await["state"], "expired");
    assert_eq!(
        agent
            .metric("edgefleet_agent_commands_run_total{action=\"reportStatus\"}")
            .await,
        0.0
    );
    let mut ran = vec![online_id.clone(), waiting.clone()];
    ran.sort();
    assert_eq!(run_ids(&agent), ran, "the agent ran exactly these");

    // Each final state, in edgectl.
    let (code, out, err) = hub.edgectl(&["commands", "pi-cmd"]);
    assert_eq!(code, 0, "{err}");
    for (id, state) in [
        (&online_id, "done"),
        (&waiting, "done"),
        (&short, "expired"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("{id} not listed:\n{out}"));
        assert!(line.contains(state), "{id} should be {state}: {line}");
    }

    // By selector.
    let (code, out, err) = hub.edgectl(&["resync", "device", "-l", "site=cmd", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("to device/pi-cmd: done"), "{out}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_command_requests_are_refused() {
    install_crypto();
    let hub = Hub::start().await;
    hub.enroll(&Signer::generate(), Some("pi-bad"), &[("site", "x")])
        .await;
    for (body, why) in [
        (
            json!({"action": {"type": "resync"}, "expiresIn": "0s"}),
            "zero expiry",
        ),
        (
            json!({"action": {"type": "resync"}, "expiresIn": "2d"}),
            "over 24h",
        ),
        (json!({"action": {"type": "reboot"}}), "unknown action"),
        (
            json!({"action": {"type": "restartWorkload", "name": "Bad Name"}}),
            "bad workload",
        ),
        (
            json!({"action": {"type": "resync"}, "extra": 1}),
            "unknown field",
        ),
    ] {
        let (code, e) = send(&hub, "pi-bad", body).await;
        assert_eq!(code, 400, "{why}: {e}");
        assert_eq!(e["error"]["code"], "invalid", "{why}: {e}");
    }
    let (code, e) = send(&hub, "pi-none", json!({"action": {"type": "resync"}})).await;
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (code, e) = hub.get("/devices/pi-bad/commands/nope").await;
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    // A bulk command needs a selector that names a label.
    let (code, e) = hub
        .api(
            Method::POST,
            "/commands",
            Some((
                "application/json",
                json!({"selector": {}, "action": {"type": "resync"}}).to_string(),
            )),
        )
        .await;
    assert_eq!(code, 400, "{e}");
    // A device offline collects at most its limit of open commands.
    let mut last = 0;
    for _ in 0..=64 {
        let (code, _) = send(&hub, "pi-bad", json!({"action": {"type": "resync"}})).await;
        last = code;
        if code != 201 {
            break;
        }
    }
    assert_eq!(last, 429);
    let (code, out, err) = hub.edgectl(&["resync", "device", "pi-bad", "-l", "site=x"]);
    assert_eq!(code, 2, "{out}{err}");
}

/// `edgectl logs` of an inference workload returns the agent's own recent
/// lines about it; a device that is offline is a clear error at once; the
/// rate per device is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_an_inference_workload_offline_devices_and_the_rate_limit() {
    install_crypto();
    let hub = Hub::start().await;
    let mut agent = Agent::enroll_and_start(&hub, "pi-log", &[("site", "log")]).await;
    agent.wait_uplink(true).await;
    let broken = hub
        .client()
        .push_model("broken", b"this is not an ONNX model".to_vec())
        .await
        .expect("push model");
    hub.deploy(
        "line-3",
        &format!(
            r#"
apiVersion: edgefleet.io/v1
kind: Deployment
metadata: {{name: line-3}}
spec:
  selector:
    matchLabels: {{site: log}}
  workloads:
    - name: model
      inference:
        model: {{name: broken, sha256: "{}"}}
        input: {{http: {{}}}}
        output: {{upstream: true}}
"#,
            broken.sha256
        ),
    )
    .await;
    eventually("the model workload failed", T, || async {
        let d = hub.client().device("pi-log").await.ok()?;
        d.workloads
            .iter()
            .any(|w| w.name == "line-3.model" && w.sync == edgefleet_protocol::SyncState::Failed)
            .then_some(())
    })
    .await;
    let (code, out, err) = hub.edgectl(&["logs", "pi-log", "line-3.model", "--tail", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("workload failed") && out.contains("cannot load model"),
        "{out}"
    );
    let (code, _, err) = hub.edgectl(&["logs", "pi-log", "line-3.nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");

    // Over the rate: 6 a minute per device (one was used above; the
    // unknown workload was refused before counting).
    let mut codes = Vec::new();
    for _ in 0..6 {
        let (code, _) = hub.get("/devices/pi-log/logs/line-3.model?tail=1").await;
        codes.push(code);
    }
    assert_eq!(codes, [200, 200, 200, 200, 200, 429], "{codes:?}");

    // Offline: refused at once, saying so.
    assert_eq!(agent.stop().await, Some(0));
    presence(&hub, "pi-log", "offline").await;
    let started = std::time::Instant::now();
    let (code, out, err) = hub.edgectl(&["logs", "pi-log", "line-3.model"]);
    let took = started.elapsed();
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("is offline"), "{err}");
    assert!(took <= Duration::from_secs(2), "took {took:?}");
}
