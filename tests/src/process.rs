//! Real child processes: the workspace's binaries, started with captured
//! output, killed with SIGKILL on demand and on drop.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// Runs `cmd` to completion: exit code (-1: killed by a signal), stdout
/// and stderr.
pub fn output(mut cmd: std::process::Command) -> (i32, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Path of a binary built by `cargo test --workspace` (target/debug/NAME),
/// or next to the running binary (`target/release/fleet-sim`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/test-xxxx -> target/debug/NAME;
    // target/release/fleet-sim -> target/release/NAME.
    let parent = exe.parent().expect("target dir");
    let dir = if parent.ends_with("deps") {
        parent.parent().expect("target dir")
    } else {
        parent
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo test --workspace` (it builds every binary) or `cargo build --bins` first",
        path.display()
    );
    path
}

/// A running child whose stdout+stderr lines are collected and echoed with
/// a prefix (visible with `--nocapture`).
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    lines: watch::Receiver<Vec<String>>,
}

impl Proc {
    /// A `Proc` with no process yet (filled in by a later `spawn`).
    pub fn placeholder(name: &str) -> Self {
        let (_tx, rx) = watch::channel(Vec::new());
        Self {
            name: name.to_owned(),
            child: None,
            lines: rx,
        }
    }

    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let (tx, rx) = watch::channel(Vec::new());
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            let prefix = name.to_owned();
            tokio::spawn(async move {
                let mut r = BufReader::new(stream).lines();
                while let Ok(Some(line)) = r.next_line().await {
                    eprintln!("[{prefix}] {line}");
                    tx.send_modify(|v| v.push(line));
                }
            });
        }
        Self {
            name: name.to_owned(),
            child: Some(child),
            lines: rx,
        }
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> Vec<String> {
        self.lines.borrow().clone()
    }

    /// Waits until a printed line contains `needle`; returns that line.
    pub async fn wait_for_line(&mut self, needle: &str, timeout: std::time::Duration) -> String {
        self.wait_for_line_after(needle, 0, timeout).await
    }

    /// Waits until a line printed after the first `skip` contains
    /// `needle`; returns that line.
    pub async fn wait_for_line_after(
        &mut self,
        needle: &str,
        skip: usize,
        timeout: std::time::Duration,
    ) -> String {
        let name = self.name.clone();
        let mut rx = self.lines.clone();
        let fut = rx.wait_for(|v| v.iter().skip(skip).any(|l| l.contains(needle)));
        let found = match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => v.iter().skip(skip).find(|l| l.contains(needle)).cloned(),
            _ => None,
        };
        match found {
            Some(line) => line,
            None => panic!(
                "{name} did not print {needle:?} within {timeout:?}; output:\n{}",
                self.output().join("\n")
            ),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// SIGKILL, then reap.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// Waits for the process to exit by itself; returns the exit code
    /// (`None`: killed by a signal). Panics after `timeout`.
    pub async fn wait(&mut self, timeout: std::time::Duration) -> Option<i32> {
        let c = self.child.take()?;
        reap(&self.name, c, timeout, "").await
    }

    /// SIGTERM, then wait for exit; returns the exit code.
    pub async fn terminate(&mut self, timeout: std::time::Duration) -> Option<i32> {
        let c = self.child.take()?;
        if let Some(pid) = c.id() {
            let _ = send_signal(pid, "TERM");
        }
        reap(&self.name, c, timeout, " of SIGTERM").await
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// Waits up to `timeout` for `c` to exit and returns its exit code; past
/// that, kills it and panics naming `name` (and `after`, what it was waiting
/// since).
async fn reap(
    name: &str,
    mut c: tokio::process::Child,
    timeout: std::time::Duration,
    after: &str,
) -> Option<i32> {
    match tokio::time::timeout(timeout, c.wait()).await {
        Ok(Ok(status)) => status.code(),
        _ => {
            let _ = c.start_kill();
            let _ = c.wait().await;
            panic!("{name} did not exit within {timeout:?}{after}")
        }
    }
}

/// Sends a signal by name (`TERM`, `STOP`, `CONT`, `KILL`) with kill(1);
/// `unsafe` is forbidden in this workspace, so no libc::kill.
pub fn send_signal(pid: u32, sig: &str) -> std::io::Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}
