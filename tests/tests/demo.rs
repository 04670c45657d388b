//! The quick start, as a user runs it: `cloudcore demo` as a real process
//! starts the hub, a sensor broker and a real `edge-agent`, deploys the
//! anomaly model, and shows anomaly events arriving at the hub; SIGINT
//! (Ctrl-C) stops everything, the agent included, and exits 0 promptly.
//! With a kubeconfig (here the control plane built from source) the
//! deployment also carries a Kubernetes workload; with `--kube local` the
//! demo starts the control plane itself and a 2-replica Deployment becomes
//! ready on its fake nodes; with neither it says in one line how to get one.

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

/// Runs `cloudcore demo` in `dir` with `KUBECONFIG=kubeconfig`, a `HOME`
/// without `~/.kube`, `extra` arguments and `env`.
fn start_demo(dir: &Path, kubeconfig: &str, extra: &[&str], env: &[(&str, &Path)]) -> Proc {
    // The demo finds edge-agent next to itself; never let it run cargo here.
    bin("edge-agent");
    let mut cmd = Command::new(bin("cloudcore"));
    cmd.arg("demo")
        .arg("--dir")
        .arg(dir.join("demo"))
        .arg("--readings-per-sec")
        .arg("10")
        .args(extra)
        .env_remove("CARGO")
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
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
    // No control plane built either: the demo says how to get one.
    let no_bin = tmp.path().join("no-kube-bin");
    std::fs::create_dir(&no_bin).unwrap();
    let mut demo = start_demo(tmp.path(), "", &[], &[("EDGEFLEET_KUBE_BIN", &no_bin)]);

    demo.wait_for_line("1/5 hub started", START).await;
    demo.wait_for_line("export EDGECTL_SERVER=http://127.0.0.1:", START)
        .await;
    let pid = agent_pid(&mut demo).await;
    let line = demo
        .wait_for_line("K3s: pending — no readable kubeconfig", START)
        .await;
    assert!(line.contains("tests/kube/build.sh"), "{line}");
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
    let mut demo = start_demo(tmp.path(), &kubeconfig, &[], &[]);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_starts_the_local_control_plane_and_its_workload_becomes_ready() {
    let Some(bin) = edgefleet_devcluster::binaries() else {
        edgefleet_tests::skip(
            "kube",
            "the control plane is not built (tests/kube/build.sh)",
        );
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    // The demo's HOME has no build cache: point it at ours, or it builds.
    let mut demo = start_demo(
        tmp.path(),
        "",
        &["--kube", "local"],
        &[("EDGEFLEET_KUBE_BIN", &bin)],
    );

    let pid = agent_pid(&mut demo).await;
    let line = demo
        .wait_for_line(
            "Kubernetes: local control plane at https://127.0.0.1:",
            START,
        )
        .await;
    let api = edgefleet_tests::word_after(&line, "control plane at ");
    demo.wait_for_line("- name: web", START).await;
    demo.wait_for_line("workload demo.web: Synced, Healthy", START)
        .await;
    demo.wait_for_line("deployment demo: ready 1/1", START)
        .await;
    // Two pods Running on the fake Raspberry Pi nodes, through the real
    // scheduler, controllers and kwok.
    let kubeconfig = tmp.path().join("demo/kube/admin.kubeconfig");
    let client = edgefleet_tests::control_plane::client_for(&kubeconfig).await;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, "default");
    let running = eventually("2 web pods Running", START, || {
        let pods = pods.clone();
        async move {
            let list = pods
                .list(&kube::api::ListParams::default().labels("app=web"))
                .await
                .ok()?;
            let running: Vec<String> = list
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                .collect();
            (running.len() == 2).then_some(running)
        }
    })
    .await;
    for node in &running {
        assert!(
            edgefleet_devcluster::NODES.contains(&node.as_str()),
            "pod on {node}"
        );
    }
    anomaly_arrives(&mut demo).await;
    ctrl_c(demo, pid).await;
    let port = api
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the demo's API server stopped with it"
    );
}
