//! The device agent (`edge-agent`) as a real process: enrolled against a
//! running hub with the real `edge-agent enroll`, then started, killed with
//! SIGKILL, stopped and restarted on the same state directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

use crate::hub::Hub;
use crate::process::{Proc, bin};

/// Installs ring as rustls' process-wide provider (reqwest is built without
/// one); call before creating any HTTP client.
pub use crate::install_crypto;

/// How to run an agent.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// Requested device id (default: the hub derives one).
    pub device_id: Option<String>,
    /// Kubeconfig of the device's K3s API.
    pub kubeconfig: Option<PathBuf>,
    /// Extra environment for `edge-agent run` (e.g. `EDGEFLEET_OUTBOX_MAX_MESSAGES`).
    pub env: Vec<(String, String)>,
    /// A fixed local HTTP port (kept across restarts); `None`: any free port.
    pub http_port: Option<u16>,
    /// Run the daemon inside this network namespace (`ip netns exec`); its
    /// local HTTP is then only reachable from inside it.
    pub netns: Option<String>,
    /// The state directory (e.g. on a small tmpfs); `None`: a temp dir.
    pub state_dir: Option<PathBuf>,
    /// Run under `edge-agent supervise` (as the systemd unit does), which
    /// self-update needs.
    pub supervised: bool,
}

/// An enrolled agent; `start()` runs the daemon.
#[derive(Debug)]
pub struct Agent {
    pub proc: Proc,
    pub device_id: String,
    opts: AgentOptions,
    _tmp: tempfile::TempDir,
    config: PathBuf,
    state_dir: PathBuf,
    http_url: String,
    http: reqwest::Client,
}

impl Agent {
    /// Enrolls a new agent with `labels` (not started).
    pub async fn enroll(hub: &Hub, labels: &[(&str, &str)]) -> Self {
        Self::enroll_with(hub, labels, AgentOptions::default()).await
    }

    /// Enrolls device `id` with `labels` and starts it.
    pub async fn enroll_and_start(hub: &Hub, id: &str, labels: &[(&str, &str)]) -> Self {
        let mut agent = Self::enroll_with(
            hub,
            labels,
            AgentOptions {
                device_id: Some(id.into()),
                ..Default::default()
            },
        )
        .await;
        agent.start().await;
        agent
    }

    pub async fn enroll_with(hub: &Hub, labels: &[(&str, &str)], opts: AgentOptions) -> Self {
        install_crypto();
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = tmp.path().join("agent.toml");
        let state_dir = opts
            .state_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("state"));
        let mut cmd = Command::new(bin("edge-agent"));
        cmd.arg("enroll")
            .arg("--hub")
            .arg(hub.api_url())
            // `=`: a token may start with `-` (URL-safe base64).
            .arg(format!("--token={}", hub.bootstrap_token()))
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state_dir);
        for (k, v) in labels {
            cmd.arg("--label").arg(format!("{k}={v}"));
        }
        if let Some(id) = &opts.device_id {
            cmd.arg("--device-id").arg(id);
        }
        if let Some(ca) = hub.api_ca() {
            cmd.arg("--hub-ca-file").arg(ca);
        }
        let out = cmd.output().await.expect("run edge-agent enroll");
        assert!(
            out.status.success(),
            "edge-agent enroll failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let device_id = crate::word_after(&String::from_utf8_lossy(&out.stdout), "enrolled as ");
        Self {
            proc: Proc::placeholder("edge-agent"),
            device_id,
            opts,
            _tmp: tmp,
            config,
            state_dir,
            http_url: String::new(),
            http: reqwest::Client::new(),
        }
    }

    /// The `edge-agent run` command line for this agent.
    fn command(&self) -> Command {
        let mut cmd = match &self.opts.netns {
            // `ip netns exec` execs the agent itself: the pid is the agent's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.arg("netns").arg("exec").arg(ns).arg(bin("edge-agent"));
                c
            }
            None => Command::new(bin("edge-agent")),
        };
        let port = self.opts.http_port.unwrap_or(0).to_string();
        if self.opts.supervised {
            cmd.arg("supervise")
                .arg("--config")
                .arg(&self.config)
                .args(["--", "--http-port", &port]);
        } else {
            cmd.arg("run")
                .arg("--config")
                .arg(&self.config)
                .arg("--http-port")
                .arg(&port);
        }
        cmd.env("EDGEFLEET_LOG", "info");
        if let Some(k) = &self.opts.kubeconfig {
            cmd.arg("--kubeconfig").arg(k);
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the daemon and waits for its local HTTP endpoint.
    pub async fn start(&mut self) {
        self.proc = Proc::spawn(&format!("edge-agent {}", self.device_id), self.command());
        let line = self
            .proc
            .wait_for_line("local HTTP on http://", Duration::from_secs(20))
            .await;
        self.http_url = crate::word_after(&line, "local HTTP on ");
    }

    /// SIGKILL (of the supervisor and its agent, as systemd stops a unit's
    /// cgroup, when supervised).
    pub async fn kill(&mut self) {
        let agent = self.opts.supervised.then(|| self.agent_pid()).flatten();
        self.proc.kill().await;
        if let Some(pid) = agent {
            let _ = crate::process::send_signal(pid, "KILL");
        }
    }

    /// The pid of the agent the supervisor started last (supervised only).
    pub fn agent_pid(&self) -> Option<u32> {
        self.proc
            .output()
            .iter()
            .rev()
            .find(|l| l.contains("agent started"))
            .and_then(|l| crate::word_after(l, "pid=").parse().ok())
    }

    /// SIGTERM; returns the exit code.
    pub async fn stop(&mut self) -> Option<i32> {
        self.proc.terminate(Duration::from_secs(15)).await
    }

    /// `GET` of a local HTTP path; status code, `None` when unreachable.
    pub async fn get_status(&self, path: &str) -> Option<u16> {
        let url = format!("{}{path}", self.http_url);
        crate::http_status(&self.http, &url)
            .await
            .map(|s| s.as_u16())
    }

    pub fn http_url(&self) -> &str {
        &self.http_url
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Environment for later `start()`s.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.opts.env.retain(|(k, _)| k != key);
        self.opts.env.push((key.to_owned(), value.to_owned()));
    }

    pub async fn metrics(&self) -> String {
        match self
            .http
            .get(format!("{}/metrics", self.http_url))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// One metric value (exact name with labels), or 0.
    pub async fn metric(&self, name_with_labels: &str) -> f64 {
        crate::hub::metric_value(&self.metrics().await, name_with_labels)
    }

    /// Waits (up to 30 s) until the agent reports its MQTT session up
    /// (`connected`) or down, as `edgefleet_agent_mqtt_connected` says.
    pub async fn wait_uplink(&self, connected: bool) {
        let (what, want) = if connected {
            ("agent connected", 1.0)
        } else {
            ("agent noticed the uplink is down", 0.0)
        };
        crate::eventually(what, Duration::from_secs(30), || async {
            (self.metric("edgefleet_agent_mqtt_connected").await == want).then_some(())
        })
        .await;
    }

    /// Starts the agent, waits for its session, then cuts `uplink` and
    /// waits until the agent noticed.
    /// Enrolls an agent (not started) whose uplink to `broker_url` goes
    /// through a cuttable [`Uplink`].
    pub async fn enroll_behind(
        hub: &Hub,
        broker_url: &str,
        labels: &[(&str, &str)],
        mut opts: AgentOptions,
    ) -> (Self, Uplink) {
        let uplink = Uplink::start(broker_url.trim_start_matches("mqtt://")).await;
        opts.env.push(("EDGEFLEET_BROKER_URL".into(), uplink.url()));
        (Self::enroll_with(hub, labels, opts).await, uplink)
    }

    pub async fn start_then_cut(&mut self, uplink: &Uplink) {
        self.start().await;
        self.wait_uplink(true).await;
        uplink.set_down(true);
        self.wait_uplink(false).await;
    }

    /// `POST /v1/events` with a JSON body; returns status and JSON answer.
    pub async fn post_events(&self, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/v1/events", self.http_url))
            .json(body)
            .send()
            .await
            .expect("agent HTTP reachable");
        let code = resp.status().as_u16();
        (code, resp.json().await.unwrap_or(Value::Null))
    }

    /// `edge-agent check` with `env` set: (exit code, its line about
    /// `what`, e.g. `hub` or `broker`).
    pub async fn check_line(&self, what: &str, env: (&str, &Path)) -> (Option<i32>, String) {
        let out = Command::new(bin("edge-agent"))
            .arg("check")
            .arg("--config")
            .arg(&self.config)
            .env(env.0, env.1)
            .output()
            .await
            .expect("run edge-agent check");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(what))
            .unwrap_or_else(|| panic!("no {what} line in:\n{text}"))
            .to_owned();
        (out.status.code(), line)
    }

    /// `edge-agent status --json` (reads the store while the daemon runs).
    pub async fn status(&self) -> Value {
        let out = Command::new(bin("edge-agent"))
            .arg("status")
            .arg("--json")
            .arg("--config")
            .arg(&self.config)
            .output()
            .await
            .expect("run edge-agent status");
        assert!(
            out.status.success(),
            "edge-agent status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }
}

/// A TCP proxy between an agent and its broker that a test can cut: the
/// device's uplink failing while the broker and the hub keep running.
#[derive(Debug)]
pub struct Uplink(crate::proxy::FaultProxy);

/// Agent environment for an outbox that holds `max_messages` and
/// `max_bytes`.
pub fn outbox_room(max_messages: usize, max_bytes: u64) -> Vec<(String, String)> {
    vec![
        (
            "EDGEFLEET_OUTBOX_MAX_MESSAGES".into(),
            max_messages.to_string(),
        ),
        ("EDGEFLEET_OUTBOX_MAX_BYTES".into(), max_bytes.to_string()),
    ]
}

impl Uplink {
    /// Proxies 127.0.0.1:<free port> to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        Self(crate::proxy::FaultProxy::start(target).await)
    }

    /// `mqtt://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.0.addr())
    }

    /// Cuts every connection and refuses new ones.
    pub fn set_down(&self, down: bool) {
        self.0.set_down(down);
    }
}
