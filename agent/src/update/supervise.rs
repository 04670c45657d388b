//! `edge-agent supervise`: starts the agent (`run`) from the current
//! release, puts a staged release on trial, and commits or reverts it.
//!
//! A release on trial must commit (the agent writes `committed` once it has
//! opened its store, connected and had a status report acknowledged) within
//! the commit timeout. If it exits first, or the timeout passes (it hangs,
//! or cannot reach the hub), it is stopped, the trial is dropped from the
//! state, the reason is written to `failed.json`, and the release that was
//! current before starts again and reports `UpdateFailed`. A supervisor
//! killed during a trial (power cut, SIGKILL) finds the trial in the state
//! when it starts again and gives it one more start; a trial that never
//! commits in [`MAX_TRIAL_STARTS`] starts is reverted.
//!
//! The supervisor does nothing else: it forwards SIGTERM, SIGINT and SIGHUP
//! to the agent and exits with the agent's code, so systemd's `Restart=`
//! and `RestartPreventExitStatus=` work as they did on `run`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use super::{
    ENV_DIR, ENV_RELEASE, ENV_SUPERVISOR_PID, ENV_TRIAL, EXIT_UPDATE, Failed, Layout, Release,
    State,
};
use crate::exit;

/// Starts a trial gets before it is reverted.
pub const MAX_TRIAL_STARTS: u32 = 2;
/// How long a stopped agent gets before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the supervisor starts.
#[derive(Debug)]
pub struct Supervise {
    pub layout: Layout,
    /// The packaged binary, run when no release is current.
    pub packaged: PathBuf,
    /// Arguments after `run`.
    pub args: Vec<OsString>,
    pub commit_timeout: Duration,
}

/// How the agent's run ended.
enum Ended {
    /// Exited (or was killed) on its own.
    Exited(ExitStatus),
    /// The supervisor was asked to stop; the agent stopped with it.
    Stopped(ExitStatus),
}

fn code(status: ExitStatus) -> i32 {
    status.code().unwrap_or(exit::FAILURE)
}

fn send(child: &Child, sig: rustix::process::Signal) {
    if let Some(pid) = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Stops `child`: SIGTERM, then SIGKILL after the grace period.
async fn stop(child: &mut Child) -> ExitStatus {
    send(child, rustix::process::Signal::TERM);
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(Ok(s)) => s,
        _ => {
            let _ = child.start_kill();
            child.wait().await.unwrap_or_default()
        }
    }
}

impl Supervise {
    /// Runs until the agent exits for any reason but an update, or a stop
    /// signal; returns the exit code.
    pub fn run(self) -> i32 {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("edge-agent supervise: cannot start: {e}");
                return exit::FAILURE;
            }
        };
        rt.block_on(self.main())
    }

    async fn main(self) -> i32 {
        if let Err(e) = std::fs::create_dir_all(self.layout.releases()) {
            tracing::error!(error = %e, dir = %self.layout.dir().display(), "cannot create the release directory");
            return exit::STORE;
        }
        // One supervisor per layout; the agent holds the state dir's lock.
        let _lock = match edgefleet_daemon::lock::DirLock::acquire(self.layout.dir()) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "another supervisor runs");
                return exit::CONFIG;
            }
        };
        let (mut term, mut int, mut hup) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(t), Ok(i), Ok(h)) => (t, i, h),
            _ => return exit::FAILURE,
        };
        loop {
            let mut state = match self.layout.state() {
                Ok(s) => s,
                Err(e) => {
                    // Unreadable: start the packaged binary, which rewrites
                    // the state at its next update.
                    tracing::error!(error = %e, "cannot read the update state; starting the packaged agent");
                    State::default()
                }
            };
            self.adopt_package(&mut state);
            self.prune(&state);
            let trial = match state.trial.as_mut() {
                Some(t) if t.attempts >= MAX_TRIAL_STARTS => {
                    let reason = format!(
                        "it did not commit in {} starts (the supervisor was stopped during its trial)",
                        t.attempts
                    );
                    self.revert(&mut state, &reason);
                    continue;
                }
                Some(t) => {
                    t.attempts += 1;
                    let _ = std::fs::remove_file(self.layout.committed_path());
                    if let Err(e) = self.layout.save_state(&state) {
                        tracing::error!(error = %e, "cannot record the trial start");
                    }
                    state.trial.as_ref().map(|t| t.release.clone())
                }
                None => None,
            };
            let release = trial.clone().or_else(|| state.current.clone());
            let mut child = match self.spawn(release.as_ref(), trial.is_some()) {
                Ok(c) => c,
                Err(e) if trial.is_some() => {
                    self.revert(&mut state, &format!("cannot start it: {e}"));
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the agent");
                    if state.current.is_some() {
                        // Its binary is gone: fall back to the packaged one.
                        state.current = None;
                        let _ = self.layout.save_state(&state);
                        continue;
                    }
                    return exit::FAILURE;
                }
            };
            if let Some(release) = &trial {
                let deadline = tokio::time::sleep(self.commit_timeout);
                tokio::pin!(deadline);
                let mut poll = tokio::time::interval(Duration::from_millis(200));
                // The agent on trial may never ping systemd's watchdog (it
                // hangs): the commit deadline judges it, so the supervisor
                // pings until then.
                let mut usec = 0u64;
                let watchdog = sd_notify::watchdog_enabled(false, &mut usec);
                let committed = loop {
                    tokio::select! {
                        status = child.wait() => {
                            let status = status.unwrap_or_default();
                            // It may have committed just before exiting.
                            if self.layout.committed_path().exists() {
                                self.promote(&mut state);
                                if code(status) == EXIT_UPDATE {
                                    break false;
                                }
                                return code(status);
                            }
                            self.revert(&mut state, &format!("it exited ({status}) before committing"));
                            break false;
                        }
                        _ = poll.tick() => {
                            if self.layout.committed_path().exists() {
                                break true;
                            }
                            if watchdog {
                                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                            }
                        }
                        () = &mut deadline => {
                            let status = stop(&mut child).await;
                            self.revert(&mut state, &format!(
                                "it did not commit within {}s (open its store, connect and have a status report acknowledged); stopped ({status})",
                                self.commit_timeout.as_secs()
                            ));
                            break false;
                        }
                        _ = term.recv() => return code(stop(&mut child).await),
                        _ = int.recv() => return code(stop(&mut child).await),
                        _ = hup.recv() => send(&child, rustix::process::Signal::HUP),
                    }
                };
                if !committed {
                    continue;
                }
                self.promote(&mut state);
                tracing::info!(version = %release.version, "agent release committed");
            }
            match self.wait(&mut child, &mut term, &mut int, &mut hup).await {
                Ended::Exited(s) if code(s) == EXIT_UPDATE => {
                    tracing::info!("agent staged an update; starting it");
                }
                Ended::Exited(s) => {
                    tracing::warn!(status = %s, "agent exited");
                    return code(s);
                }
                Ended::Stopped(s) => return code(s),
            }
        }
    }

    fn spawn(&self, release: Option<&Release>, trial: bool) -> std::io::Result<Child> {
        let bin = match release {
            Some(r) => self.layout.binary(&r.sha256),
            None => self.packaged.clone(),
        };
        let mut cmd = Command::new(&bin);
        cmd.arg("run")
            .args(&self.args)
            .env(ENV_DIR, self.layout.dir())
            .env(ENV_SUPERVISOR_PID, std::process::id().to_string());
        cmd.env_remove(ENV_RELEASE).env_remove(ENV_TRIAL);
        if let Some(r) = release {
            cmd.env(ENV_RELEASE, format!("{} {}", r.version, r.sha256));
        }
        if trial {
            cmd.env(ENV_TRIAL, "1");
        }
        let child = cmd.spawn()?;
        tracing::info!(
            binary = %bin.display(),
            version = release.map_or("packaged", |r| r.version.as_str()),
            trial,
            pid = child.id(),
            "agent started"
        );
        Ok(child)
    }

    async fn wait(
        &self,
        child: &mut Child,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
        hup: &mut tokio::signal::unix::Signal,
    ) -> Ended {
        loop {
            tokio::select! {
                s = child.wait() => return Ended::Exited(s.unwrap_or_default()),
                _ = term.recv() => return Ended::Stopped(stop(child).await),
                _ = int.recv() => return Ended::Stopped(stop(child).await),
                _ = hup.recv() => send(child, rustix::process::Signal::HUP),
            }
        }
    }

    /// The trial's release becomes current; the current one, previous.
    fn promote(&self, state: &mut State) {
        let Some(t) = state.trial.take() else {
            return;
        };
        state.previous = state.current.replace(t.release);
        if let Err(e) = self.layout.save_state(state) {
            tracing::error!(error = %e, "cannot record the committed update; the next start tries it again");
        }
        let _ = std::fs::remove_file(self.layout.committed_path());
        self.layout.clear_failed();
    }

    /// Drops the trial (the current release starts next) and records why.
    fn revert(&self, state: &mut State, reason: &str) {
        let Some(t) = state.trial.take() else {
            return;
        };
        tracing::error!(version = %t.release.version, reason, "agent update failed; going back to the current release");
        let failed = Failed {
            release: t.release.clone(),
            reason: reason.to_owned(),
            at_ms: edgefleet_protocol::now_ms(),
        };
        // failed.json first: a crash between the two writes retries the
        // trial once more instead of forgetting why it failed.
        if let Err(e) = self.layout.save_failed(&failed) {
            tracing::error!(error = %e, "cannot record the failed update");
        }
        if let Err(e) = self.layout.save_state(state) {
            tracing::error!(error = %e, "cannot record the revert");
        }
        let _ = std::fs::remove_file(self.layout.committed_path());
        let _ = std::fs::remove_file(self.layout.binary(&t.release.sha256));
    }

    /// A package installed since the state was written runs instead of
    /// the current release (which becomes the previous one).
    fn adopt_package(&self, state: &mut State) {
        let mine = crate::telemetry::AGENT_VERSION;
        if state.packaged.as_deref() == Some(mine) {
            return;
        }
        if state.packaged.is_some()
            && let Some(current) = state.current.take()
        {
            tracing::info!(package = mine, release = %current.version, "a new agent package was installed: it runs instead of the current release");
            state.previous = Some(current);
            state.trial = None;
        }
        state.packaged = Some(mine.to_owned());
        if let Err(e) = self.layout.save_state(state) {
            tracing::error!(error = %e, "cannot record the packaged version");
        }
    }

    /// Deletes release binaries the state no longer names.
    fn prune(&self, state: &State) {
        let keep: Vec<&str> = [
            state.current.as_ref(),
            state.previous.as_ref(),
            state.trial.as_ref().map(|t| &t.release),
        ]
        .into_iter()
        .flatten()
        .map(|r| r.sha256.as_str())
        .collect();
        let Ok(entries) = std::fs::read_dir(self.layout.releases()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            // `.part` files are downloads the agent resumes.
            if name.ends_with(".part") || keep.contains(&name.as_ref()) {
                continue;
            }
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The packaged binary: this process's own.
pub fn packaged_binary() -> std::io::Result<PathBuf> {
    std::env::current_exe()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supervisor(dir: &std::path::Path) -> Supervise {
        Supervise {
            layout: Layout::new(dir),
            packaged: PathBuf::from("/usr/bin/edge-agent"),
            args: Vec::new(),
            commit_timeout: Duration::from_secs(30),
        }
    }

    fn release(v: &str, c: char) -> Release {
        Release {
            version: v.into(),
            sha256: c.to_string().repeat(64),
        }
    }

    #[test]
    fn a_newly_installed_package_runs_instead_of_the_current_release() {
        let dir = tempfile::tempdir().unwrap();
        let sup = supervisor(dir.path());
        std::fs::create_dir_all(sup.layout.releases()).unwrap();
        // Written by this package: nothing changes.
        let mut state = State {
            current: Some(release("2.0.0", 'a')),
            packaged: Some(crate::telemetry::AGENT_VERSION.into()),
            ..Default::default()
        };
        sup.adopt_package(&mut state);
        assert_eq!(state.current, Some(release("2.0.0", 'a')));
        // Written under another package: the package runs.
        state.packaged = Some("0.0.1-old".into());
        sup.adopt_package(&mut state);
        assert_eq!(state.current, None);
        assert_eq!(state.previous, Some(release("2.0.0", 'a')));
        assert_eq!(sup.layout.state().unwrap(), state);
    }

    #[test]
    fn a_revert_drops_the_trial_records_why_and_prunes_its_binary() {
        let dir = tempfile::tempdir().unwrap();
        let sup = supervisor(dir.path());
        std::fs::create_dir_all(sup.layout.releases()).unwrap();
        for c in ['a', 'b', 'c'] {
            std::fs::write(sup.layout.binary(&c.to_string().repeat(64)), b"x").unwrap();
        }
        let mut state = State {
            current: Some(release("2.0.0", 'a')),
            previous: Some(release("1.0.0", 'b')),
            trial: Some(super::super::Trial {
                release: release("3.0.0", 'c'),
                attempts: 1,
            }),
            packaged: None,
        };
        sup.revert(&mut state, "it exited");
        assert!(state.trial.is_none());
        assert_eq!(state.current, Some(release("2.0.0", 'a')));
        let failed = sup.layout.failed().unwrap();
        assert_eq!(
            (failed.release.version.as_str(), failed.reason.as_str()),
            ("3.0.0", "it exited")
        );
        assert!(!sup.layout.binary(&"c".repeat(64)).exists());
        // Pruning keeps the current and previous binaries, deletes the rest.
        std::fs::write(sup.layout.binary(&"d".repeat(64)), b"x").unwrap();
        sup.prune(&state);
        assert!(sup.layout.binary(&"a".repeat(64)).exists());
        assert!(sup.layout.binary(&"b".repeat(64)).exists());
        assert!(!sup.layout.binary(&"d".repeat(64)).exists());
    }
}
