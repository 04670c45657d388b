//! `edge-agent enroll`: creates the device key (once), trades the bootstrap
//! token for a device id and broker credentials, pins the hub key and writes
//! the config. Running it again is harmless: the same key gets the same id
//! and a fresh broker password.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use edgefleet_protocol::{DeviceId, EnrollRequest, EnrollResponse, PublicKey};

use crate::config::{Config, ConfigError};
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
            Self::StateDir { .. } => exit::STORE,
            _ => exit::CONFIG,
        }
    }
}

/// Inputs of `edge-agent enroll`.
#[derive(Debug, Clone)]
pub struct EnrollArgs {
    pub hub: String,
    pub token: String,
    pub labels: Vec<String>,
    pub device_id: Option<DeviceId>,
    pub config_path: PathBuf,
}

pub async fn enroll(mut cfg: Config, args: EnrollArgs) -> Result<EnrollResponse, EnrollError> {
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| EnrollError::Label(l.clone()))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    cfg.hub.url = args.hub.trim_end_matches('/').to_owned();
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
    let client = http_client(Duration::from_millis(cfg.hub.request_timeout_ms));
    let resp = client
        .post(&url)
        .json(&req)
        .send()
        .await
        .map_err(|source| EnrollError::Unreachable {
            url: url.clone(),
            source,
        })?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(body);
        return Err(EnrollError::Refused {
            status: status.as_u16(),
            message,
        });
    }
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
    Ok(answer)
}

fn create_state_dir(dir: &std::path::Path) -> Result<(), EnrollError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| EnrollError::StateDir {
        path: dir.to_owned(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    Ok(())
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// A reqwest client with the given timeout (rustls on ring).
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}
