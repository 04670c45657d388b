//! The quick start, as a user runs it: `cloudcore demo` as a real process
//! starts the hub, a sensor broker and a real `edge-agent`, deploys the
//! anomaly model, and shows anomaly events arriving at the hub; SIGINT
//! (Ctrl-C) stops everything, the agent included, and exits 0 promptly.
//! With a kubeconfig (here the control plane built from source) the deployment also
//! carries a Kubernetes workload; without one the demo says it is pending.

use std::path::Path;
use std::time::Duration;

use edgefleet_tests::control_plane::Shared;
use edgefleet_tests::eventually;
use edgefleet_tests::process::{Proc, bin, send_signal};
use tokio::process::Command;

/// Start-up on a loaded CI machine with debug binaries.
const START: Duration = Duration::from_secs(90);
/// "Ctrl-C exits within a few seconds".
const STOP: Duration = Duration::from_secs(10);

/// Runs `cloudcore demo` in `dir` with `KUBECONFIG=kubeconfig` and a
/// `HOME` without `~/.kube`.
fn start_demo(dir: &Path, kubeconfig: &str) -> Proc {
    // The demo finds edge-agent next to itself; never let it run cargo here.
    bin("edge-agent");
    let mut cmd = Command::new(bin("cloudcore"));
    cmd.arg("demo")
        .arg("--dir")
        .arg(dir.join("demo"))
        .arg("--readings-per-sec")
        .arg("10")
        .env_remove("CARGO")
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", dir);
    Proc::spawn("cloudcore demo", cmd)
}

/// The pid the demo printed for its edge-agent child.
async fn agent_pid(demo: &mut Proc) -> u32 {
    let line = demo.wait_for_line("edge-agent pid ", START).await;
    line.rsplit("edge-agent pid ")
        .next()
        .and_then(|s| s.split(',').next()?.trim().parse().ok())
        .unwrap_or_else(|| panic!("an agent pid in {line:?}"))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits for an anomaly event line and checks its score.
async fn anomaly_arrives(demo: &mut Proc) {
    let event = demo.wait_for_line("anomaly event at the hub:", START).await;
    let score: f64 = event
        .rsplit("score ")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("a score in {event:?}"));
    assert!(score > 0.8, "only anomalies reach the hub: {event}");
}

/// SIGINT, as Ctrl-C sends: exit 0 within [`STOP`], the agent stopped
/// with SIGTERM and gone.
async fn ctrl_c(mut demo: Proc, agent_pid: u32) {
    assert!(alive(agent_pid), "the agent runs while the demo does");
    let pid = demo.pid().expect("demo running");
    send_signal(pid, "INT").expect("send SIGINT");
    eventually("the demo to exit after SIGINT", STOP, || {
        let running = demo.is_running();
        async move { (!running).then_some(()) }
    })
    .await;
    // It has exited already: this only collects the exit code.
    let code = demo.terminate(STOP).await;
    let out = demo.output().join("\n");
    assert_eq!(code, Some(0), "exit code after Ctrl-C; output:\n{out}");
    assert!(
        !alive(agent_pid),
        "the agent (pid {agent_pid}) is gone after the demo exits"
    );
    assert!(
        out.contains("stopped edge-agent (exit status: 0)"),
        "the agent was stopped cleanly:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_shows_anomalies_and_stops_cleanly_on_ctrl_c() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut demo = start_demo(tmp.path(), "");

    demo.wait_for_line("1/5 hub started", START).await;
    demo.wait_for_line("export EDGECTL_SERVER=http://127.0.0.1:", START)
        .await;
    let pid = agent_pid(&mut demo).await;
    demo.wait_for_line("K3s: pending — no readable kubeconfig", START)
        .await;
    demo.wait_for_line("5/5 simulated sensor readings", START)
        .await;
    demo.wait_for_line("deployment demo: ready 1/1", START)
        .await;
    anomaly_arrives(&mut demo).await;
    ctrl_c(demo, pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_adds_a_kubernetes_workload_when_a_kubeconfig_is_found() {
    let Some(cp) = Shared::get() else {
        return;
    };
    let admin = cp.admin().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let kubeconfig = cp.kubeconfig.display().to_string();
    let mut demo = start_demo(tmp.path(), &kubeconfig);

    let pid = agent_pid(&mut demo).await;
    demo.wait_for_line(&format!("K3s: kubeconfig {kubeconfig} found"), START)
        .await;
    demo.wait_for_line("- name: hello", START).await;
    demo.wait_for_line("deployment demo: ready 1/1", START)
        .await;
    assert!(
        admin
            .get("v1", "ConfigMap", Some("default"), "edgefleet-demo")
            .await
            .is_some(),
        "the agent applied the demo's ConfigMap"
    );
    anomaly_arrives(&mut demo).await;
    ctrl_c(demo, pid).await;
}
