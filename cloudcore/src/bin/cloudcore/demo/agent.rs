//! The simulated device: the real `edge-agent` binary, enrolled with
//! `edge-agent enroll` and run with `edge-agent run`, its output in a log
//! file so it never interleaves with the demo's view.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use super::{DEVICE_ID, DEVICE_LABEL};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("edge-agent not found at {path}; build it with `{build}`, then run the demo again")]
    NotFound { path: PathBuf, build: String },
    #[error("`{command}` failed ({status})")]
    Build { command: String, status: ExitStatus },
    #[error("cannot run {what}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find a free port on 127.0.0.1")]
    Port(#[source] std::io::Error),
    #[error("cannot create {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`edge-agent enroll` failed ({status}):\n{output}")]
    Enroll { status: ExitStatus, output: String },
    #[error("edge-agent exited unexpectedly ({status}); last lines of {}:\n{tail}", log.display())]
    Exited {
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
}

/// Where `edge-agent` should be: next to this executable
/// (`target/<profile>/`). Under `cargo run` (`$CARGO` set) a missing one is
/// built with the same profile; otherwise the error says how to build it.
pub async fn locate() -> Result<PathBuf, AgentError> {
    let exe = std::env::current_exe().map_err(|source| AgentError::Spawn {
        what: "current_exe".into(),
        source,
    })?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let path = dir.join("edge-agent");
    if path.exists() {
        return Ok(path);
    }
    // target/debug -> `--profile dev`, target/release -> `--profile release`.
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(p) => p,
    };
    let build = format!("cargo build -p edge-agent --profile {profile}");
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Err(AgentError::NotFound { path, build });
    };
    println!("building edge-agent (first run only)…");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "edge-agent", "--profile", profile])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .kill_on_drop(true);
    // Built into the same target directory, so it lands next to us.
    if let Some(target) = dir.parent() {
        cmd.arg("--target-dir").arg(target);
    }
    let status = cmd.status().await.map_err(|source| AgentError::Spawn {
        what: build.clone(),
        source,
    })?;
    if !status.success() {
        return Err(AgentError::Build {
            command: build,
            status,
        });
    }
    if !path.exists() {
        return Err(AgentError::NotFound { path, build });
    }
    Ok(path)
}

/// Where the agent lives and what it connects to.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Config and state directory.
    pub dir: PathBuf,
    pub log: PathBuf,
    pub hub_url: String,
    pub bootstrap_token: String,
    /// The device-local broker inference reads sensor readings from.
    pub local_broker_url: String,
    pub kubeconfig: Option<PathBuf>,
}

/// A running `edge-agent run` process.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    pub log: PathBuf,
    pub http_url: String,
}

impl Agent {
    /// `edge-agent enroll`, then `edge-agent run` in the background.
    pub async fn enroll_and_start(bin: &Path, setup: &Setup) -> Result<Self, AgentError> {
        let config = setup.dir.join("agent.toml");
        let state = setup.dir.join("state");
        std::fs::create_dir_all(&setup.dir).map_err(|source| AgentError::Io {
            path: setup.dir.clone(),
            source,
        })?;

        let out = Command::new(bin)
            .arg("enroll")
            .arg("--hub")
            .arg(&setup.hub_url)
            .arg("--label")
            .arg(format!("{}={}", DEVICE_LABEL.0, DEVICE_LABEL.1))
            .arg("--device-id")
            .arg(DEVICE_ID)
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            // The bootstrap token through the environment, not argv.
            .env("EDGEFLEET_TOKEN", &setup.bootstrap_token)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| AgentError::Spawn {
                what: format!("{} enroll", bin.display()),
                source,
            })?;
        if !out.status.success() {
            return Err(AgentError::Enroll {
                status: out.status,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(AgentError::Port)?;
        let log = std::fs::File::create(&setup.log).map_err(|source| AgentError::Io {
            path: setup.log.clone(),
            source,
        })?;
        let log2 = log.try_clone().map_err(|source| AgentError::Io {
            path: setup.log.clone(),
            source,
        })?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--http-port")
            .arg(port.to_string())
            .env("EDGEFLEET_LOCAL_BROKER_URL", &setup.local_broker_url)
            .env("EDGEFLEET_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(true);
        if let Some(k) = &setup.kubeconfig {
            cmd.arg("--kubeconfig").arg(k);
        }
        let child = cmd.spawn().map_err(|source| AgentError::Spawn {
            what: format!("{} run", bin.display()),
            source,
        })?;
        Ok(Self {
            child,
            log: setup.log.clone(),
            http_url: format!("http://127.0.0.1:{port}"),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Fails with the tail of the log when the process has exited.
    pub fn check_running(&mut self) -> Result<(), AgentError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(AgentError::Exited {
                status,
                log: self.log.clone(),
                tail: tail(&self.log, 20),
            }),
            Err(source) => Err(AgentError::Spawn {
                what: "wait for edge-agent".into(),
                source,
            }),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns how it ended.
    pub async fn stop(&mut self, grace: Duration) -> String {
        if let Ok(Some(status)) = self.child.try_wait() {
            return format!("had already exited: {status}");
        }
        if let Some(pid) = self.child.id() {
            // `unsafe` is forbidden here, so no libc::kill: kill(1) sends it.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            _ => {
                let _ = self.child.kill().await;
                format!("killed: no exit within {grace:?} of SIGTERM")
            }
        }
    }
}

/// The last `n` lines of a log file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
