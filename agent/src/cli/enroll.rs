//! `edge-agent enroll`: creates the device key (once), trades the bootstrap
//! token for a device id and broker credentials, pins the hub key and writes
//! the config. Running it again is harmless: the same key gets the same id
//! and a fresh broker password.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgefleet_protocol::{DeviceId, EnrollRequest, EnrollResponse, PublicKey};

use edgefleet_daemon::mqtt::{PemError, read_pem};

use crate::config::{Config, ConfigError, HubConfig};
use crate::exit;
use crate::identity::{self, IdentityError};
use crate::telemetry::AGENT_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot create state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot hand {path} to the state directory's owner (uid {uid})")]
    Chown {
        path: PathBuf,
        uid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("label {0:?} is not key=value")]
    Label(String),
    #[error("cannot reach the hub at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the hub refused enrollment ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the hub's answer is not an enrollment response")]
    BadResponse(#[source] reqwest::Error),
    #[error("the hub's public key is invalid")]
    HubKey(#[source] edgefleet_protocol::sign::KeyError),
    #[error(transparent)]
    HubCa(#[from] PemError),
    #[error(
        "the hub key {got} differs from the pinned key {pinned}; remove {path} to enroll with another hub"
    )]
    HubKeyChanged {
        got: String,
        pinned: String,
        path: PathBuf,
    },
}

impl EnrollError {
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Unreachable { .. } | Self::BadResponse(_) => exit::UNAVAILABLE,
            Self::Refused { status, .. } if *status >= 500 => exit::UNAVAILABLE,
            Self::StateDir { .. } | Self::Chown { .. } => exit::STORE,
            _ => exit::CONFIG,
        }
    }
}

/// Inputs of `edge-agent enroll`.
#[derive(Debug, Clone)]
pub struct EnrollArgs {
    pub hub: String,
    /// CA bundle for the hub's HTTPS certificate (kept as `hub.ca_file`).
    pub hub_ca_file: Option<PathBuf>,
    pub token: String,
    pub labels: Vec<String>,
    pub device_id: Option<DeviceId>,
    pub config_path: PathBuf,
}

/// What `enroll` did: the hub's answer, and to whom it handed the state
/// files when it ran as root in a directory owned by the service user.
#[derive(Debug)]
pub struct Enrolled {
    pub response: EnrollResponse,
    pub state_owner: Option<StateOwner>,
}

/// The state files `enroll` writes (the config file is 0644 and holds no
/// secrets, so its owner does not matter).
const STATE_FILES: [&str; 3] = [
    identity::DEVICE_KEY_FILE,
    identity::HUB_KEY_FILE,
    identity::BROKER_PASSWORD_FILE,
];

pub async fn enroll(mut cfg: Config, args: EnrollArgs) -> Result<Enrolled, EnrollError> {
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| EnrollError::Label(l.clone()))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    cfg.hub.url = args.hub.trim_end_matches('/').to_owned();
    if let Some(ca) = &args.hub_ca_file {
        cfg.hub.ca_file = std::path::absolute(ca).unwrap_or_else(|_| ca.clone());
    }
    cfg.validate()?;
    let dir = cfg.state_dir.clone();
    create_state_dir(&dir)?;
    let signer = identity::load_or_create_signer(&dir)?;
    let requested = args
        .device_id
        .or_else(|| DeviceId::new(cfg.device_id.as_str()).ok());
    let req = EnrollRequest {
        token: args.token,
        public_key: signer.public().to_base64(),
        device_id: requested,
        labels,
        hostname: hostname(),
        arch: std::env::consts::ARCH.to_owned(),
        agent_version: AGENT_VERSION.to_owned(),
    };
    let url = format!("{}/api/v1/enroll", cfg.hub.url);
    let client = http_client(&cfg.hub, Duration::from_millis(cfg.hub.request_timeout_ms))?;
    let resp = client
        .post(&url)
        .json(&req)
        .send()
        .await
        .map_err(|source| EnrollError::Unreachable {
            url: url.clone(),
            source,
        })?;
    let resp = success(resp)
        .await
        .map_err(|(status, message)| EnrollError::Refused { status, message })?;
    let answer: EnrollResponse = resp.json().await.map_err(EnrollError::BadResponse)?;
    let hub_key = PublicKey::from_base64(&answer.hub_public_key).map_err(EnrollError::HubKey)?;
    if let Ok(pinned) = identity::load_hub_key(&dir)
        && pinned != hub_key
    {
        return Err(EnrollError::HubKeyChanged {
            got: hub_key.kid().to_string(),
            pinned: pinned.kid().to_string(),
            path: dir.join(identity::HUB_KEY_FILE),
        });
    }
    identity::store_hub_key(&dir, &hub_key)?;
    identity::store_broker_password(&dir, &answer.broker.password)?;
    cfg.device_id = answer.device_id.to_string();
    cfg.broker.url = answer.broker.url.clone();
    cfg.broker.username = answer.broker.username.clone();
    cfg.write(&args.config_path)?;
    let state_owner = hand_over(&dir, &STATE_FILES)?;
    Ok(Enrolled {
        response: answer,
        state_owner,
    })
}

/// The non-root owner of the state directory that root hands its files to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateOwner {
    pub uid: u32,
    pub gid: u32,
    /// The user name from `/etc/passwd`, when there is one.
    pub name: Option<String>,
}

impl std::fmt::Display for StateOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name} (uid {})", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// With the .deb, `/var/lib/edgefleet` belongs to the `edgefleet` service
/// user (sysusers + postinst) but `sudo edge-agent enroll` runs as root: the
/// files it wrote would be root's 0600 files the service cannot read. When
/// this process is root and `dir` belongs to someone else, give `files`
/// (those that exist) to the directory's owner and group. `lchown`: a
/// symlink planted in the directory is re-owned itself, never its target.
/// Returns the owner when it did so.
pub fn hand_over(dir: &Path, files: &[&str]) -> Result<Option<StateOwner>, EnrollError> {
    use std::os::unix::fs::MetadataExt;
    if effective_uid() != Some(0) {
        return Ok(None);
    }
    let meta = std::fs::metadata(dir).map_err(|source| EnrollError::StateDir {
        path: dir.to_owned(),
        source,
    })?;
    if meta.uid() == 0 {
        return Ok(None);
    }
    let (uid, gid) = (meta.uid(), meta.gid());
    for name in files {
        let path = dir.join(name);
        if std::fs::symlink_metadata(&path).is_err() {
            continue;
        }
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
            .map_err(|source| EnrollError::Chown { path, uid, source })?;
    }
    Ok(Some(StateOwner {
        uid,
        gid,
        name: user_name(uid),
    }))
}

/// This process's effective uid: the owner of `/proc/self` (no unsafe
/// `geteuid`); `None` without procfs, which then hands nothing over.
fn effective_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)? == uid.to_string()).then(|| name.to_owned())
    })
}

fn create_state_dir(dir: &std::path::Path) -> Result<(), EnrollError> {
    edgefleet_daemon::files::create_private_dir(dir).map_err(|source| EnrollError::StateDir {
        path: dir.to_owned(),
        source,
    })
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The hub's answer when it is a success; else its status and the error
/// message it gave (the raw body when it gave none).
pub async fn success(resp: reqwest::Response) -> Result<reqwest::Response, (u16, String)> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or(body);
    Err((status.as_u16(), message))
}

/// A client for the hub's REST API with the given timeout (rustls on ring),
/// trusting only the CAs in `hub.ca_file` when it is set, else the system's.
pub fn http_client(hub: &HubConfig, timeout: Duration) -> Result<reqwest::Client, PemError> {
    let builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)));
    hub_tls(builder, hub)?
        .build()
        .map_err(|e| PemError::Unusable {
            what: "hub.ca_file",
            path: hub.ca_file.clone(),
            reason: e.to_string(),
        })
}

/// `builder` trusting `hub.ca_file` (if set) for the hub's certificate.
pub fn hub_tls(
    builder: reqwest::ClientBuilder,
    hub: &HubConfig,
) -> Result<reqwest::ClientBuilder, PemError> {
    if hub.ca_file.as_os_str().is_empty() {
        return Ok(builder);
    }
    let pem = read_pem("hub.ca_file", &hub.ca_file, "CERTIFICATE")?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| PemError::Unusable {
        what: "hub.ca_file",
        path: hub.ca_file.clone(),
        reason: e.to_string(),
    })?;
    Ok(builder.tls_certs_only(certs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const NOBODY: u32 = 65534;

    /// A temp dir for a test that must chown; `None` (said) when not root.
    fn root_tempdir(test: &str) -> Option<tempfile::TempDir> {
        if effective_uid() != Some(0) {
            eprintln!("SKIP {test}: not root, cannot chown");
            return None;
        }
        Some(tempfile::tempdir().unwrap())
    }

    #[test]
    fn root_hands_state_files_to_the_directory_owner() {
        let Some(dir) = root_tempdir("root_hands_state_files_to_the_directory_owner") else {
            return;
        };
        // Root owns the directory: nothing to hand over.
        identity::store_broker_password(dir.path(), "pw").unwrap();
        assert_eq!(hand_over(dir.path(), &STATE_FILES).unwrap(), None);
        // The .deb case: the directory belongs to the service user.
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
        identity::load_or_create_signer(dir.path()).unwrap();
        let owner = hand_over(dir.path(), &STATE_FILES).unwrap().unwrap();
        assert_eq!((owner.uid, owner.gid), (NOBODY, NOBODY));
        for name in [identity::DEVICE_KEY_FILE, identity::BROKER_PASSWORD_FILE] {
            let meta = std::fs::metadata(dir.path().join(name)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY), "{name}");
        }
        // Missing files (no hub key yet) are skipped, not an error.
        assert!(!dir.path().join(identity::HUB_KEY_FILE).exists());
    }

    #[test]
    fn hand_over_leaves_links_targets_alone() {
        let Some(dir) = root_tempdir("hand_over_leaves_links_targets_alone") else {
            return;
        };
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join(identity::HUB_KEY_FILE))
            .unwrap();
        std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
        hand_over(dir.path(), &STATE_FILES).unwrap();
        assert_eq!(std::fs::metadata(outside.path()).unwrap().uid(), 0);
        let link = std::fs::symlink_metadata(dir.path().join(identity::HUB_KEY_FILE)).unwrap();
        assert_eq!(link.uid(), NOBODY);
    }
}
