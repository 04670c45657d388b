//! Agent self-update: the release layout on the device, the step the
//! running agent takes for an `agent` workload, and the commit of an agent
//! on trial. The process that starts, judges and reverts agents is the
//! supervisor ([`supervise`], `edge-agent supervise`).
//!
//! Layout, under `<state_dir>/agent/`:
//! - `releases/<sha256>`: release binaries, verified against the signed
//!   desired state before they are named there;
//! - `state.json`: which release is `current`, which was `previous`, and the
//!   one on `trial`. Written atomically: the swap is this one rename, so an
//!   agent killed during it comes back as one version or the other;
//! - `failed.json`: the last release that failed its trial, and why;
//! - `committed`: written by an agent on trial once it is healthy.
//!
//! With no current release the supervisor runs its own binary (the one the
//! package installed), which no update ever replaces: there is always an
//! agent to fall back to.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use edgefleet_protocol::AgentWorkload;
use serde::{Deserialize, Serialize};

use crate::inference::model_cache::{CacheError, HubSource, fetch_verified};
use crate::shared::Shared;

pub mod supervise;

/// The exit code of an agent that staged an update: the supervisor starts
/// the new release at once (EX_TEMPFAIL).
pub const EXIT_UPDATE: i32 = 75;
/// Set by the supervisor: the layout directory. Its absence means the agent
/// runs unsupervised and cannot update itself.
pub const ENV_DIR: &str = "EDGEFLEET_UPDATE_DIR";
/// Set by the supervisor: `<version> <sha256>` of the release it started.
pub const ENV_RELEASE: &str = "EDGEFLEET_AGENT_RELEASE";
/// Set by the supervisor when the release is on trial.
pub const ENV_TRIAL: &str = "EDGEFLEET_UPDATE_TRIAL";
/// Set by the supervisor: its pid.
pub const ENV_SUPERVISOR_PID: &str = "EDGEFLEET_SUPERVISOR_PID";

/// systemd's watchdog period for an agent under the supervisor: the
/// unit's watchdog names the supervisor (the main pid), and the agent pings
/// for it (`NotifyAccess=all`).
pub fn supervised_watchdog_usec() -> Option<u64> {
    let var = |k| std::env::var(k).ok();
    let supervisor = var(ENV_SUPERVISOR_PID)?;
    (var("WATCHDOG_PID")? == supervisor)
        .then(|| var("WATCHDOG_USEC")?.parse().ok())
        .flatten()
}

/// An agent started by a supervisor stops when the supervisor dies (under
/// systemd the unit's cgroup is stopped anyway; elsewhere nothing else
/// would stop it, and it would hold the state directory against the next
/// supervisor's agent). Returns false when the supervisor is gone already.
pub fn die_with_supervisor() -> bool {
    let Some(pid) = std::env::var(ENV_SUPERVISOR_PID)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return true;
    };
    if let Err(e) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
    {
        tracing::warn!(error = %e, "cannot ask to be stopped with the supervisor");
    }
    // Checked after asking: a supervisor that died before is seen here.
    rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) == Some(pid)
}

/// One release: what the operator named it and its binary's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: String,
    pub sha256: String,
}

/// A release started and not yet committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub release: Release,
    /// Starts so far (a supervisor killed during a trial counts one).
    pub attempts: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// `None`: the packaged binary.
    pub current: Option<Release>,
    pub previous: Option<Release>,
    pub trial: Option<Trial>,
    /// The packaged agent's version when the supervisor last wrote this:
    /// a package installed since (apt, install.sh) runs instead of the
    /// current release, until the desired state updates it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packaged: Option<String>,
}

/// A release that failed its trial on this device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failed {
    pub release: Release,
    pub reason: String,
    pub at_ms: u64,
}

/// The files of `<state_dir>/agent/`.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("agent"),
        }
    }

    /// The layout named by [`ENV_DIR`].
    pub fn at(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn releases(&self) -> PathBuf {
        self.dir.join("releases")
    }

    pub fn binary(&self, sha256: &str) -> PathBuf {
        self.releases().join(sha256)
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn failed_path(&self) -> PathBuf {
        self.dir.join("failed.json")
    }

    pub fn committed_path(&self) -> PathBuf {
        self.dir.join("committed")
    }

    fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<Option<T>> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write<T: Serialize>(path: &Path, v: &T) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(v).map_err(std::io::Error::other)?;
        edgefleet_daemon::files::write_atomic(path, &json, 0o600)
    }

    pub fn state(&self) -> std::io::Result<State> {
        Ok(Self::read(&self.state_path())?.unwrap_or_default())
    }

    pub fn save_state(&self, s: &State) -> std::io::Result<()> {
        Self::write(&self.state_path(), s)
    }

    pub fn failed(&self) -> Option<Failed> {
        Self::read(&self.failed_path()).ok().flatten()
    }

    pub fn save_failed(&self, f: &Failed) -> std::io::Result<()> {
        Self::write(&self.failed_path(), f)
    }

    pub fn clear_failed(&self) {
        let _ = std::fs::remove_file(self.failed_path());
    }
}

/// What this process is.
#[derive(Debug)]
pub struct Running {
    /// Reported as `agentVersion`: the release's version, or the package's.
    pub version: String,
    pub release: Option<Release>,
    /// Started by the supervisor, which keeps this layout.
    pub layout: Option<Layout>,
    pub trial: bool,
}

/// This process, from what the supervisor set in its environment.
pub fn running() -> &'static Running {
    static RUNNING: OnceLock<Running> = OnceLock::new();
    RUNNING.get_or_init(|| {
        let var = |k| std::env::var(k).ok().filter(|v| !v.is_empty());
        let release = var(ENV_RELEASE).and_then(|v| {
            let (version, sha256) = v.split_once(' ')?;
            Some(Release {
                version: version.to_owned(),
                sha256: sha256.to_owned(),
            })
        });
        Running {
            version: release.as_ref().map_or_else(
                || crate::telemetry::AGENT_VERSION.to_owned(),
                |r| r.version.clone(),
            ),
            release,
            layout: var(ENV_DIR).map(|d| Layout::at(PathBuf::from(d))),
            trial: var(ENV_TRIAL).is_some(),
        }
    })
}

/// The sha256 of the binary this process runs.
fn running_sha256() -> Option<String> {
    static SHA: OnceLock<Option<String>> = OnceLock::new();
    SHA.get_or_init(|| match &running().release {
        Some(r) => Some(r.sha256.clone()),
        None => {
            use sha2::Digest;
            let mut f = std::fs::File::open(std::env::current_exe().ok()?).ok()?;
            let mut h = sha2::Sha256::new();
            std::io::copy(&mut f, &mut h).ok()?;
            Some(hex::encode(h.finalize()))
        }
    })
    .clone()
}

/// Marks this agent, on trial, as healthy: it opened its store, connected,
/// and the hub acknowledged a status report. Once per process.
pub fn commit() {
    static DONE: OnceLock<()> = OnceLock::new();
    let me = running();
    let (true, Some(layout)) = (me.trial, &me.layout) else {
        return;
    };
    DONE.get_or_init(|| {
        let path = layout.committed_path();
        match edgefleet_daemon::files::write_atomic(&path, b"", 0o600) {
            Ok(()) => tracing::info!(version = %me.version, "update committed: a status report was acknowledged"),
            // The supervisor reverts at its deadline; nothing else to do.
            Err(e) => tracing::error!(error = %e, path = %path.display(), "cannot commit the update"),
        }
    });
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("agent release {version} has no {arch} binary")]
    NoArtifact { version: String, arch: String },
    #[error(
        "this agent runs without its supervisor (`edge-agent supervise`, what the systemd unit starts), so it cannot update itself"
    )]
    Unsupervised,
    #[error("UpdateFailed: agent {version} was reverted: {reason}")]
    Failed {
        version: String,
        reason: String,
        at_ms: u64,
    },
    #[error("cannot download agent {version}")]
    Download {
        version: String,
        #[source]
        source: CacheError,
    },
    #[error("cannot stage agent {version} in {path}")]
    Io {
        version: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl UpdateError {
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Download { source, .. } => source.is_transient(),
            Self::Io { .. } => true,
            Self::NoArtifact { .. } | Self::Unsupervised | Self::Failed { .. } => false,
        }
    }
}

/// Where an `agent` workload stands on this device.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// This process is the release.
    Running,
    /// The release is on trial from the next start: exit with
    /// [`EXIT_UPDATE`].
    Staged,
}

/// Brings this device to `want`: nothing if it runs it; otherwise
/// downloads (resuming) and verifies the binary, names it on trial in the
/// state, and says the process must exit for the supervisor to start it.
pub async fn sync(shared: &Shared, want: &AgentWorkload) -> Result<Progress, UpdateError> {
    let arch = edgefleet_protocol::workload::agent_arch(std::env::consts::ARCH)
        .unwrap_or(std::env::consts::ARCH);
    let artifact = want.artifact(arch).ok_or_else(|| UpdateError::NoArtifact {
        version: want.version.clone(),
        arch: arch.to_owned(),
    })?;
    if running_sha256().as_deref() == Some(artifact.sha256.as_str()) {
        return Ok(Progress::Running);
    }
    let me = running();
    let layout = me.layout.as_ref().ok_or(UpdateError::Unsupervised)?;
    let release = Release {
        version: want.version.clone(),
        sha256: artifact.sha256.clone(),
    };
    match layout.failed() {
        Some(f) if f.release.sha256 == release.sha256 => {
            return Err(UpdateError::Failed {
                version: release.version,
                reason: f.reason,
                at_ms: f.at_ms,
            });
        }
        // Another release is wanted now: the failure is history (the same
        // release named again after it is tried again).
        Some(_) => layout.clear_failed(),
        None => {}
    }
    let io = |path: &Path| {
        let version = release.version.clone();
        let path = path.to_owned();
        move |source| UpdateError::Io {
            version,
            path,
            source,
        }
    };
    let dir = layout.releases();
    tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
    let bin = layout.binary(&release.sha256);
    let part = dir.join(format!("{}.part", release.sha256));
    // The previous release (a rollback) is still here: checked, not
    // downloaded again, so going back works offline too.
    let kept = crate::inference::model_cache::file_sha256(&bin)
        .await
        .is_ok_and(|h| h == release.sha256);
    if kept {
        tracing::info!(version = %release.version, "agent release already on this device");
    } else {
        let hub = HubSource::for_agent(shared);
        let url = format!("/api/v1/agent-releases/{}/blob", release.sha256);
        tracing::info!(version = %release.version, sha256 = %release.sha256, size = artifact.size, "downloading agent release");
        fetch_verified(&hub, &url, &release.sha256, &part, Some(&shared.disk))
            .await
            .map_err(|source| UpdateError::Download {
                version: release.version.clone(),
                source,
            })?;
    }
    let staged = {
        let (part, bin, release) = (part.clone(), bin.clone(), release.clone());
        let layout = layout.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if !kept {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o700))?;
                std::fs::rename(&part, &bin)?;
                edgefleet_daemon::files::sync_parent(&bin)?;
            }
            let mut state = layout.state()?;
            state.trial = Some(Trial {
                release,
                attempts: 0,
            });
            // The swap: from this rename on, the next start is the new one.
            layout.save_state(&state)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    };
    staged.map_err(io(&bin))?;
    tracing::info!(version = %release.version, "agent release verified and staged; restarting into it");
    Ok(Progress::Staged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_defaults_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::new(dir.path());
        assert_eq!(l.state().unwrap(), State::default());
        std::fs::create_dir_all(l.dir()).unwrap();
        let s = State {
            current: Some(Release {
                version: "1.0.0".into(),
                sha256: "a".repeat(64),
            }),
            previous: None,
            trial: Some(Trial {
                release: Release {
                    version: "1.1.0".into(),
                    sha256: "b".repeat(64),
                },
                attempts: 1,
            }),
            packaged: Some("0.1.0".into()),
        };
        l.save_state(&s).unwrap();
        assert_eq!(l.state().unwrap(), s);
        std::fs::write(l.dir().join("state.json"), b"{not json").unwrap();
        assert!(
            l.state().is_err(),
            "a corrupt state is an error, not a default"
        );
    }
}
