//! `edge-agent rotate-key`: replaces the device key without enrolling again.
//!
//! A new key is made beside the current one ([`NEXT_DEVICE_KEY_FILE`]), the
//! hub is asked to accept it with a request signed by the current key
//! (`POST /api/v1/devices/{id}/key`), and only once it has does the new key
//! replace the old one on disk. A running daemon is told to reload it
//! (SIGHUP); until then it opens what the hub seals to the new key with the
//! key beside its own, and the hub still accepts what it signed with the
//! old one for `keys.rotation_grace`. Interrupted anywhere, running it again
//! finishes the same rotation (the hub answers a repeated request again).

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgefleet_daemon::files::{load_or_create_key, sync_parent};
use edgefleet_daemon::lock::{DirLock, LockError};
use edgefleet_protocol::{DeviceId, KeyId};

use crate::config::{Config, ConfigError};
use crate::exit;
use crate::identity::{self, DEVICE_KEY_FILE, IdentityError, NEXT_DEVICE_KEY_FILE};

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("not enrolled: {0}")]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Secret(#[from] edgefleet_daemon::files::SecretError),
    #[error(transparent)]
    HubCa(#[from] edgefleet_daemon::mqtt::PemError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("device_id {0:?} is not a device id")]
    DeviceId(String),
    #[error("cannot reach the hub at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the hub refused the new key ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the hub's answer is not a key rotation")]
    BadResponse(#[source] reqwest::Error),
    #[error("cannot move {path} into place")]
    Install {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RotateError {
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Unreachable { .. } | Self::BadResponse(_) => exit::UNAVAILABLE,
            Self::Refused { status, .. } if *status >= 500 => exit::UNAVAILABLE,
            Self::Install { .. } | Self::Secret(_) => exit::STORE,
            _ => exit::CONFIG,
        }
    }
}

/// The hub's answer (`edgefleet_api::DeviceKeyRotated`; the agent does not
/// link the API crate).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceKeyRotated {
    pub key_id: String,
    pub previous_key_valid_until_ms: u64,
}

/// What `rotate-key` did.
#[derive(Debug)]
pub struct Rotated {
    pub previous: KeyId,
    pub answer: DeviceKeyRotated,
    /// The running daemon told to reload, if there was one.
    pub reloaded: Option<u32>,
}

pub async fn rotate_key(cfg: &Config) -> Result<Rotated, RotateError> {
    cfg.require_enrolled()?;
    let dir = &cfg.state_dir;
    let device = DeviceId::new(cfg.device_id.as_str())
        .map_err(|_| RotateError::DeviceId(cfg.device_id.clone()))?;
    // Held while the daemon is stopped, so none starts halfway; a running
    // daemon is told to reload at the end instead.
    let (_lock, daemon) = match DirLock::acquire(dir) {
        Ok(l) => (Some(l), None),
        Err(LockError::Held { holder, .. }) => (None, holder),
        Err(e) => return Err(e.into()),
    };
    let current = identity::load_signer(dir)?;
    let (next, _) = load_or_create_key(&dir.join(NEXT_DEVICE_KEY_FILE))?;
    let body = current.rotate_to(&device, next.public(), edgefleet_protocol::now_ms());
    let url = format!("{}/api/v1/devices/{device}/key", cfg.hub.url);
    let client = crate::cli::enroll::http_client(
        &cfg.hub,
        Duration::from_millis(cfg.hub.request_timeout_ms),
    )?;
    let resp = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|source| RotateError::Unreachable {
            url: url.clone(),
            source,
        })?;
    let resp = crate::cli::enroll::success(resp)
        .await
        .map_err(|(status, message)| RotateError::Refused { status, message })?;
    let answer: DeviceKeyRotated = resp.json().await.map_err(RotateError::BadResponse)?;
    install(dir)?;
    // Run as root on the service user's directory: the service must read it.
    if let Err(e) = crate::cli::enroll::hand_over(dir, &[DEVICE_KEY_FILE]) {
        eprintln!(
            "edge-agent rotate-key: warning: {}; the agent may not be able to read its new key",
            crate::error_chain(&e)
        );
    }
    let reloaded = daemon.filter(|pid| match edgefleet_daemon::signal::ask_reload(*pid) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("edge-agent rotate-key: cannot signal the running agent (pid {pid}): {e}; restart it (systemctl reload edge-agent)");
            false
        }
    });
    Ok(Rotated {
        previous: current.public().kid().clone(),
        answer,
        reloaded,
    })
}

/// The accepted key replaces the old one (which is gone: the hub seals to
/// the new key from now on).
fn install(dir: &Path) -> Result<(), RotateError> {
    let (from, to) = (dir.join(NEXT_DEVICE_KEY_FILE), dir.join(DEVICE_KEY_FILE));
    std::fs::rename(&from, &to)
        .and_then(|()| sync_parent(&to))
        .map_err(|source| RotateError::Install { path: to, source })
}
