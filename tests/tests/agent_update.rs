//! Agent self-update with real agent processes under `edge-agent
//! supervise` (what the systemd unit runs): a good release is installed and
//! reported; a release that exits at once and one that starts but never
//! connects are both reverted within 60 s, the previous agent reports
//! again and the hub shows `UpdateFailed`; an agent SIGKILLed around the
//! swap comes back as one version or the other. Releases go through
//! `edgectl agents push` and a Deployment's `agent` workload.

use std::path::Path;
use std::time::{Duration, Instant};

use edgefleet_tests::agent::{Agent, AgentOptions};
use edgefleet_tests::eventually;
use edgefleet_tests::hub::Hub;
use edgefleet_tests::process::bin;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);
/// What the packaged binary reports.
const PACKAGED: &str = env!("CARGO_PKG_VERSION");

fn arch() -> &'static str {
    edgefleet_protocol::workload::agent_arch(std::env::consts::ARCH).expect("a release arch")
}

/// A real agent binary with `tag` appended: it runs the same, and is a
/// different release (another sha256).
fn agent_release(dir: &Path, tag: &str) -> std::path::PathBuf {
    let mut bytes = std::fs::read(bin("edge-agent")).expect("edge-agent binary");
    bytes.extend_from_slice(format!("\0edgefleet-test-release {tag}\0").as_bytes());
    let path = dir.join(format!("edge-agent-{tag}"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A release that is a shell script.
fn script_release(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    path
}

/// `edgectl agents push FILE --version V --arch A`.
fn push(hub: &Hub, file: &Path, version: &str) {
    let (code, out, err) = hub.edgectl(&[
        "agents",
        "push",
        file.to_str().unwrap(),
        "--version",
        version,
        "--arch",
        arch(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("agent {version} ({})", arch())),
        "{out}"
    );
}

fn deployment(name: &str, site: &str, version: &str) -> String {
    format!(
        "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  \
         selector: {{matchLabels: {{site: {site}}}}}\n  workloads:\n    - name: agent\n      \
         agent: {{version: \"{version}\"}}\n"
    )
}

async fn device(hub: &Hub, id: &str) -> Value {
    let (code, d) = hub.get(&format!("/devices/{id}")).await;
    assert_eq!(code, 200, "{d}");
    d
}

fn update_failed(d: &Value) -> Option<String> {
    d["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "UpdateFailed")
        .and_then(|c| c["message"].as_str().map(str::to_owned))
}

/// The supervisor's state file.
fn state(agent: &Agent) -> Value {
    let path = agent.state_dir().join("agent/state.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_default()).unwrap_or(Value::Null)
}

async fn supervised(hub: &Hub, id: &str, site: &str) -> Agent {
    let mut agent = Agent::enroll_with(
        hub,
        &[("site", site)],
        AgentOptions {
            device_id: Some(id.into()),
            supervised: true,
            // Kept across the agent's restarts into new releases.
            http_port: Some(edgefleet_tests::free_port()),
            ..Default::default()
        },
    )
    .await;
    agent.start().await;
    agent.wait_uplink(true).await;
    agent
}

/// Waits until the hub has a status report newer than `since_ms` from
/// `id` saying `version`; returns the device.
async fn reports(hub: &Hub, id: &str, version: &str, since_ms: u64) -> Value {
    eventually(&format!("{id} reports agent {version}"), T, || async {
        let d = device(hub, id).await;
        (d["agentVersion"] == version && d["lastReportMs"].as_u64().unwrap_or(0) > since_ms)
            .then_some(d)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_release_is_installed_and_reported() {
    let hub = Hub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = supervised(&hub, "pi-upd-good", "upd-good").await;
    reports(&hub, "pi-upd-good", PACKAGED, 0).await;

    push(&hub, &agent_release(dir.path(), "good"), "9.1.0");
    // The listing names it with its size and hash.
    let (code, out, err) = hub.edgectl(&["agents", "list", "-o", "wide"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("9.1.0") && out.contains(arch()), "{out}");
    let started = edgefleet_protocol::now_ms();
    hub.deploy("agent-good", &deployment("agent-good", "upd-good", "9.1.0"))
        .await;

    let d = reports(&hub, "pi-upd-good", "9.1.0", started).await;
    assert!(update_failed(&d).is_none(), "{d}");
    eventually("the agent workload Synced and Healthy", T, || async {
        let (_, s) = hub.get("/deployments/agent-good/status").await;
        (s["inSync"] == 1 && s["healthy"] == 1).then_some(())
    })
    .await;
    agent.proc.wait_for_line("agent release committed", T).await;
    let s = state(&agent);
    assert_eq!(s["current"]["version"], "9.1.0", "{s}");
    assert!(s["trial"].is_null(), "{s}");
    assert!(
        s["previous"].is_null(),
        "the packaged binary was current: {s}"
    );

    // A second release: the first becomes the previous one.
    push(&hub, &agent_release(dir.path(), "good2"), "9.2.0");
    let started = edgefleet_protocol::now_ms();
    hub.deploy("agent-good", &deployment("agent-good", "upd-good", "9.2.0"))
        .await;
    reports(&hub, "pi-upd-good", "9.2.0", started).await;
    eventually("9.1.0 kept as the previous release", T, || async {
        let s = state(&agent);
        (s["current"]["version"] == "9.2.0" && s["previous"]["version"] == "9.1.0").then_some(())
    })
    .await;
    // `edge-agent status` on the device says the same.
    let st = agent.status().await;
    assert_eq!(st["agentReleases"]["current"]["version"], "9.2.0", "{st}");
    assert_eq!(st["agentReleases"]["previous"]["version"], "9.1.0", "{st}");

    // Back to 9.1.0: the kept binary, not a new download.
    let mark = agent.proc.output().len();
    let started = edgefleet_protocol::now_ms();
    hub.deploy("agent-good", &deployment("agent-good", "upd-good", "9.1.0"))
        .await;
    reports(&hub, "pi-upd-good", "9.1.0", started).await;
    agent
        .proc
        .wait_for_line_after("agent release already on this device", mark, T)
        .await;
    assert!(
        !agent.proc.output()[mark..]
            .iter()
            .any(|l| l.contains("downloading agent release")),
        "the previous release was downloaded again"
    );
    eventually("9.2.0 is now the previous release", T, || async {
        let s = state(&agent);
        (s["current"]["version"] == "9.1.0" && s["previous"]["version"] == "9.2.0").then_some(())
    })
    .await;
    let releases: Vec<_> = std::fs::read_dir(agent.state_dir().join("agent/releases"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(
        releases.len(),
        2,
        "current and previous binaries: {releases:?}"
    );

    // A restart keeps running the current release.
    agent.stop().await;
    let stopped = edgefleet_protocol::now_ms();
    agent.start().await;
    reports(&hub, "pi-upd-good", "9.1.0", stopped).await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_that_crash_or_never_connect_are_reverted_within_a_minute() {
    let hub = Hub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = supervised(&hub, "pi-upd-bad", "upd-bad").await;
    reports(&hub, "pi-upd-bad", PACKAGED, 0).await;

    for (version, body, why) in [
        (
            "9.3.0-crash",
            "echo 'bad release: exiting' >&2; exit 3",
            "exited",
        ),
        ("9.3.1-hang", "exec sleep 600", "did not commit within 30s"),
    ] {
        push(&hub, &script_release(dir.path(), version, body), version);
        let started = Instant::now();
        let since = edgefleet_protocol::now_ms();
        hub.deploy("agent-bad", &deployment("agent-bad", "upd-bad", version))
            .await;
        // The previous agent reports again, with the failure.
        let d = eventually(&format!("{version} reverted"), T, || async {
            let d = device(&hub, "pi-upd-bad").await;
            let failed = update_failed(&d).unwrap_or_default();
            (failed.contains(version)
                && d["agentVersion"] == PACKAGED
                && d["lastReportMs"].as_u64().unwrap_or(0) > since)
                .then_some(d)
        })
        .await;
        let took = started.elapsed();
        let message = update_failed(&d).unwrap();
        eprintln!("{version}: reverted and reported in {took:?}: {message}");
        assert!(took < T, "{took:?}");
        assert!(message.contains(why), "{message}");
        // The workload says so too (what a rollout's wave judges).
        let (_, s) = hub.get("/deployments/agent-bad/status").await;
        let text = s.to_string();
        assert!(text.contains("UpdateFailed"), "{text}");
        assert_eq!(s["failed"], 1, "{s}");
        let st = state(&agent);
        assert!(st["trial"].is_null() && st["current"].is_null(), "{st}");
        let st = agent.status().await;
        assert_eq!(st["updateFailed"]["version"], version, "{st}");
        assert!(
            st["updateFailed"]["reason"]
                .as_str()
                .unwrap_or("")
                .contains(why),
            "{st}"
        );
    }
    assert!(agent.metric("edgefleet_agent_update_errors_total").await >= 1.0);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_around_the_swap_comes_back_as_one_version_or_the_other() {
    let hub = Hub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut agent = supervised(&hub, "pi-upd-kill", "upd-kill").await;
    reports(&hub, "pi-upd-kill", PACKAGED, 0).await;

    let mut before = PACKAGED.to_owned();
    // While it downloads, once the release is staged (the swap written),
    // and while the new release is on trial.
    for (i, at) in [
        "downloading agent release",
        "staged; restarting into it",
        "trial=true",
    ]
    .into_iter()
    .enumerate()
    {
        let version = format!("9.4.{i}");
        push(&hub, &agent_release(dir.path(), &version), &version);
        let mark = agent.proc.output().len();
        hub.deploy(
            "agent-kill",
            &deployment("agent-kill", "upd-kill", &version),
        )
        .await;
        agent.proc.wait_for_line_after(at, mark, T).await;
        agent.kill().await;
        let killed = edgefleet_protocol::now_ms();
        eprintln!("SIGKILLed the supervisor and its agent at {at:?}");
        let s = state(&agent);
        let named: Vec<&str> = [&s["current"]["version"], &s["trial"]["release"]["version"]]
            .into_iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            named.iter().all(|v| *v == before || *v == version),
            "the state names only the two versions: {s}"
        );

        // Started again (systemd's Restart=always): one version or the
        // other reports, then the update completes.
        agent.start().await;
        let d = eventually("an agent reports after the kill", T, || async {
            let d = device(&hub, "pi-upd-kill").await;
            (d["lastReportMs"].as_u64().unwrap_or(0) > killed).then_some(d)
        })
        .await;
        let v = d["agentVersion"].as_str().unwrap_or_default().to_owned();
        assert!(v == before || v == version, "reported {v}");
        reports(&hub, "pi-upd-kill", &version, killed).await;
        assert!(update_failed(&device(&hub, "pi-upd-kill").await).is_none());
        before = version;
    }
    agent.stop().await;
}
