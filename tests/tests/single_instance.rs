//! One process per data directory: a second `edge-agent run` on a running
//! agent's state, or a second `cloudcore serve` on a running hub's data
//! dir, exits at once with the configuration exit code (so systemd does not
//! restart it) and the pid that holds the directory; the first keeps
//! working, a SIGKILLed holder never blocks a restart, and read-only
//! commands work beside the daemon.

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use edgefleet_tests::agent::{Agent, install_crypto};
use edgefleet_tests::eventually;
use edgefleet_tests::hub::Hub;
use edgefleet_tests::process::{Proc, bin};
use serde_json::json;
use tokio::process::Command;

/// EX_CONFIG, as both binaries name it.
const EXIT_CONFIG: i32 = 78;

/// Runs `binary args…` and expects it to exit non-zero within a second,
/// saying that the directory is in use by `holder`.
async fn refused(binary: &str, args: &[&OsStr], holder: u32) {
    let name = format!("second {binary}");
    let mut cmd = Command::new(bin(binary));
    cmd.args(args);
    let started = Instant::now();
    let mut p = Proc::spawn(&name, cmd);
    let code = p.wait(Duration::from_secs(1)).await;
    let took = started.elapsed();
    let out = p.output().join("\n");
    assert_eq!(code, Some(EXIT_CONFIG), "{name} exit code; output:\n{out}");
    assert!(took < Duration::from_secs(1), "{name} took {took:?}");
    assert!(
        out.contains(&format!("pid {holder}")) && out.contains("in use"),
        "{name} must name the holder pid {holder}:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_one_state_dir_is_refused() {
    install_crypto();
    let hub = Hub::start().await;
    let mut agent = Agent::enroll(&hub, &[]).await;
    agent.start().await;
    agent.wait_uplink(true).await;
    let holder = agent.proc.pid().expect("agent pid");

    let config = agent.config_path();
    let args = [
        "run".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--http-port".as_ref(),
        "0".as_ref(),
    ];
    refused("edge-agent", &args, holder).await;

    // The first is undisturbed: still connected, still taking events.
    let (code, _) = agent
        .post_events(&json!({"id": "after-second", "kind": "app.telemetry"}))
        .await;
    assert_eq!(code, 202);
    eventually("event at the hub", Duration::from_secs(20), || async {
        hub.event_ids(&agent.device_id)
            .await
            .contains(&"after-second".to_owned())
            .then_some(())
    })
    .await;
    assert_eq!(
        agent.metric("edgefleet_agent_mqtt_connects_total").await,
        1.0
    );

    // Read-only commands work beside the daemon.
    let st = agent.status().await;
    assert_eq!(st["deviceId"], agent.device_id.as_str());
    let check = Command::new(bin("edge-agent"))
        .arg("check")
        .arg("--config")
        .arg(agent.config_path())
        .output()
        .await
        .expect("run edge-agent check");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains("PASS  store") && text.contains("PASS  broker"),
        "check beside a running daemon:\n{text}"
    );
    assert!(!text.contains("in use"), "{text}");

    // A SIGKILLed holder leaves nothing that blocks the next start.
    agent.kill().await;
    let restarted = Instant::now();
    agent.start().await;
    agent.wait_uplink(true).await;
    eprintln!("agent restarted {:?} after SIGKILL", restarted.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_hub_on_one_data_dir_is_refused() {
    install_crypto();
    let mut hub = Hub::start().await;
    let holder = hub.proc.pid().expect("hub pid");
    let broker = format!("127.0.0.1:{}", edgefleet_tests::free_port());
    let args = [
        "serve".as_ref(),
        "--data-dir".as_ref(),
        hub.data_dir().as_os_str(),
        "--api-listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--broker-listen".as_ref(),
        broker.as_ref(),
    ];
    refused("cloudcore", &args, holder).await;
    let (code, _) = hub.get("/devices").await;
    assert_eq!(code, 200, "the first hub keeps serving");

    hub.kill().await;
    let restarted = Instant::now();
    hub.restart().await;
    eprintln!("hub restarted {:?} after SIGKILL", restarted.elapsed());
    let (code, _) = hub.get("/devices").await;
    assert_eq!(code, 200);
}
