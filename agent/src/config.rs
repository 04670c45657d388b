//! Agent configuration: one typed struct with defaults, layered
//! file → env (`EDGEFLEET_*`) → flags. Tests build [`Config`] directly.
//!
//! Secrets never live here: the device key and the broker password are
//! files in the state directory with mode 0600 (see [`crate::identity`]).

use std::path::{Path, PathBuf};

use edgefleet_daemon::config::{ConfigFileError, env_error, env_parse, read_toml};
use edgefleet_daemon::mqtt::BrokerUrl;
use serde::{Deserialize, Serialize};

/// Default config file location.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/edgefleet/agent.toml";
/// Default state directory (store, keys, model cache).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/edgefleet";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading or parsing the file, or an environment variable.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("cannot write config file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Everything `edge-agent` can be configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This device's id, written by `edge-agent enroll`.
    pub device_id: String,
    /// Store, keys and model cache live here.
    pub state_dir: PathBuf,
    pub hub: HubConfig,
    pub broker: BrokerConfig,
    pub http: HttpConfig,
    pub kube: KubeConfig,
    pub outbox: OutboxConfig,
    pub reconcile: ReconcileConfig,
    pub heartbeat: HeartbeatConfig,
    pub store: StoreConfig,
    pub models: ModelsConfig,
    pub local_broker: LocalBrokerConfig,
}

/// The on-disk model cache (`<state_dir>/models`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// Cache bound; least recently used models not in use are evicted beyond it.
    pub cache_max_bytes: u64,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            cache_max_bytes: 512 * 1024 * 1024,
        }
    }
}

/// The device-local MQTT broker inference workloads read inputs from and
/// publish results to; empty `url` = none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalBrokerConfig {
    /// `mqtt://host:port`, e.g. `mqtt://127.0.0.1:1883`.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// REST base URL of the hub, e.g. `https://hub.example:8080`.
    pub url: String,
    /// Timeout of each REST request to the hub.
    pub request_timeout_ms: u64,
    /// CA bundle (PEM) the hub's HTTPS certificate must chain to (env
    /// `EDGEFLEET_HUB_CA_FILE`; `edge-agent enroll --hub-ca-file`). Empty:
    /// the system's roots.
    pub ca_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `mqtt://host:port` or `mqtts://host:port`, from enrollment.
    pub url: String,
    /// MQTT username (the device id); the password is `<state_dir>/broker-password`.
    pub username: String,
    /// Keepalive: a dead link is noticed within about 1.5× this.
    pub keepalive_secs: u64,
    /// TCP + MQTT connect timeout.
    pub connect_timeout_secs: u64,
    /// Reconnect backoff: first delay, doubled per failure up to the max, with jitter.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// CA bundle (PEM) trusted for `mqtts://` brokers.
    pub ca_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Local HTTP port on 127.0.0.1 (0 picks a free port; the agent prints it).
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeConfig {
    /// Kubeconfig of the device's K3s; empty: in-cluster or `$KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// Timeout of each Kubernetes API request.
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Most queued messages; the oldest are dropped (and counted) beyond it.
    pub max_messages: u64,
    /// Most queued payload bytes; same drop-oldest rule.
    pub max_bytes: u64,
    /// QoS 1 publishes in flight (awaiting PUBACK) at once.
    pub window: u16,
    /// Messages sent and not yet acknowledged by the hub (its signed Ack,
    /// not the broker's PUBACK) at once: end-to-end flow control.
    pub max_unacked: u32,
    /// With messages awaiting the hub's Ack and none arriving for this long,
    /// they are sent again; the wait doubles per silent round, up to 10 min.
    pub ack_timeout_secs: u64,
    /// Messages older than this are expired (deleted, counted) unsent or
    /// unacknowledged, so a hub that never comes back, or that deleted this
    /// device, is not sent to forever.
    pub max_age_secs: u64,
    /// When the disk is down to the reserve (`store.disk_reserve_bytes`):
    /// `refuse` new events (503, counted) or `drop-oldest` queued ones to
    /// make room (counted as dropped).
    pub on_disk_full: OnDiskFull,
}

/// What to do with new events when the disk is down to its reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnDiskFull {
    /// Answer 503: what was accepted is kept; the app sees back-pressure.
    /// The default: a 202 is a promise, and the oldest data is often the
    /// most wanted (what happened when the link went down).
    Refuse,
    /// Delete the oldest queued messages to make room for the new ones.
    DropOldest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileConfig {
    /// Periodic drift check even when nothing changed.
    pub drift_interval_secs: u64,
    /// Retry backoff after a failed pass: first delay and cap.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Re-check status this often while a workload is not yet healthy.
    pub progress_poll_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    pub interval_secs: u64,
}

/// SQLite `synchronous` mode (WAL journal in both cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Commits survive a crash of the agent (SIGKILL, OOM, abort) and never
    /// corrupt the database; on power loss the last commits before the WAL
    /// checkpoint may roll back. No fsync per commit: fast on SD cards.
    Normal,
    /// Every commit is fsynced: also survives power loss, at one fsync per commit.
    Full,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub synchronous: Synchronous,
    /// Bytes the agent keeps free on the state directory's filesystem; 0:
    /// 5 % of the filesystem or 256 MiB, whichever is smaller
    /// ([`crate::disk`]).
    pub disk_reserve_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            device_id: String::new(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            hub: HubConfig::default(),
            broker: BrokerConfig::default(),
            http: HttpConfig::default(),
            kube: KubeConfig::default(),
            outbox: OutboxConfig::default(),
            reconcile: ReconcileConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            store: StoreConfig::default(),
            models: ModelsConfig::default(),
            local_broker: LocalBrokerConfig::default(),
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            request_timeout_ms: 10_000,
            ca_file: PathBuf::new(),
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            username: String::new(),
            keepalive_secs: 5,
            connect_timeout_secs: 5,
            reconnect_min_ms: 200,
            reconnect_max_ms: 30_000,
            ca_file: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { port: 9477 }
    }
}

impl Default for KubeConfig {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            request_timeout_ms: 5_000,
        }
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_messages: 100_000,
            max_bytes: 64 * 1024 * 1024,
            window: 1_000,
            max_unacked: 10_000,
            ack_timeout_secs: 30,
            // A week: longer than the outages the outbox bridges in practice
            // (a weekend with the uplink down), short enough that a device
            // its hub forgot stops carrying its backlog.
            max_age_secs: 7 * 24 * 3600,
            on_disk_full: OnDiskFull::Refuse,
        }
    }
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            drift_interval_secs: 60,
            backoff_min_ms: 500,
            backoff_max_ms: 60_000,
            progress_poll_ms: 1_000,
        }
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self { interval_secs: 30 }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Normal,
            disk_reserve_bytes: 0,
        }
    }
}

/// Values given on the command line; they win over file and env.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub state_dir: Option<PathBuf>,
    pub device_id: Option<String>,
    pub http_port: Option<u16>,
    pub kubeconfig: Option<PathBuf>,
}

impl Config {
    /// Loads `path` (a missing file means defaults when `must_exist` is false),
    /// then the environment through `env`, then `flags`, and validates.
    pub fn load(
        path: &Path,
        must_exist: bool,
        env: &dyn Fn(&str) -> Option<String>,
        flags: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut cfg: Self = read_toml(path, must_exist)?.unwrap_or_default();
        cfg.apply_env(env)?;
        cfg.apply_overrides(flags);
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn to_toml(&self) -> String {
        // Our own plain struct always serialises.
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Applies `EDGEFLEET_*` variables; `env` is `std::env::var(..).ok()` in
    /// production and a map in tests.
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = env("EDGEFLEET_DEVICE_ID") {
            self.device_id = v;
        }
        if let Some(v) = env("EDGEFLEET_STATE_DIR") {
            self.state_dir = PathBuf::from(v);
        }
        if let Some(v) = env("EDGEFLEET_HUB_URL") {
            self.hub.url = v;
        }
        if let Some(v) = env("EDGEFLEET_BROKER_URL") {
            self.broker.url = v;
        }
        if let Some(v) = env("EDGEFLEET_HUB_CA_FILE") {
            self.hub.ca_file = PathBuf::from(v);
        }
        if let Some(v) = env("EDGEFLEET_BROKER_CA_FILE") {
            self.broker.ca_file = PathBuf::from(v);
        }
        if let Some(v) = env("EDGEFLEET_LOCAL_BROKER_URL") {
            self.local_broker.url = v;
        }
        if let Some(v) = env("EDGEFLEET_MODELS_CACHE_MAX_BYTES") {
            self.models.cache_max_bytes = env_parse("EDGEFLEET_MODELS_CACHE_MAX_BYTES", &v)?;
        }
        if let Some(v) = env("EDGEFLEET_HTTP_PORT") {
            self.http.port = env_parse("EDGEFLEET_HTTP_PORT", &v)?;
        }
        if let Some(v) = env("EDGEFLEET_KUBECONFIG") {
            self.kube.kubeconfig = (!v.is_empty()).then(|| PathBuf::from(v));
        }
        if let Some(v) = env("EDGEFLEET_OUTBOX_MAX_MESSAGES") {
            self.outbox.max_messages = env_parse("EDGEFLEET_OUTBOX_MAX_MESSAGES", &v)?;
        }
        if let Some(v) = env("EDGEFLEET_OUTBOX_MAX_BYTES") {
            self.outbox.max_bytes = env_parse("EDGEFLEET_OUTBOX_MAX_BYTES", &v)?;
        }
        if let Some(v) = env("EDGEFLEET_OUTBOX_MAX_UNACKED") {
            self.outbox.max_unacked = env_parse("EDGEFLEET_OUTBOX_MAX_UNACKED", &v)?;
        }
        if let Some(v) = env("EDGEFLEET_OUTBOX_ACK_TIMEOUT_SECS") {
            self.outbox.ack_timeout_secs = env_parse("EDGEFLEET_OUTBOX_ACK_TIMEOUT_SECS", &v)?;
        }
        if let Some(v) = env("EDGEFLEET_RECONCILE_DRIFT_INTERVAL_SECS") {
            self.reconcile.drift_interval_secs =
                env_parse("EDGEFLEET_RECONCILE_DRIFT_INTERVAL_SECS", &v)?;
        }
        if let Some(v) = env("EDGEFLEET_STORE_DISK_RESERVE_BYTES") {
            self.store.disk_reserve_bytes = env_parse("EDGEFLEET_STORE_DISK_RESERVE_BYTES", &v)?;
        }
        if let Some(v) = env("EDGEFLEET_OUTBOX_ON_DISK_FULL") {
            self.outbox.on_disk_full = match v.as_str() {
                "refuse" => OnDiskFull::Refuse,
                "drop-oldest" => OnDiskFull::DropOldest,
                _ => {
                    return Err(env_error(
                        "EDGEFLEET_OUTBOX_ON_DISK_FULL",
                        &v,
                        "expected refuse or drop-oldest",
                    )
                    .into());
                }
            };
        }
        if let Some(v) = env("EDGEFLEET_OUTBOX_MAX_AGE_SECS") {
            self.outbox.max_age_secs = env_parse("EDGEFLEET_OUTBOX_MAX_AGE_SECS", &v)?;
        }
        Ok(())
    }

    pub fn apply_overrides(&mut self, o: &Overrides) {
        if let Some(v) = &o.state_dir {
            self.state_dir = v.clone();
        }
        if let Some(v) = &o.device_id {
            self.device_id = v.clone();
        }
        if let Some(v) = o.http_port {
            self.http.port = v;
        }
        if let Some(v) = &o.kubeconfig {
            self.kube.kubeconfig = Some(v.clone());
        }
    }

    /// Structural checks; `edge-agent run` additionally needs [`Config::require_enrolled`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        if !self.device_id.is_empty()
            && let Err(e) = edgefleet_protocol::DeviceId::new(self.device_id.as_str())
        {
            errs.push(format!("device_id: {e}"));
        }
        if self.state_dir.as_os_str().is_empty() {
            errs.push("state_dir: must not be empty".to_owned());
        }
        if !self.hub.ca_file.as_os_str().is_empty()
            && let Err(e) =
                edgefleet_daemon::mqtt::read_pem("hub.ca_file", &self.hub.ca_file, "CERTIFICATE")
        {
            errs.push(e.to_string());
        }
        if !self.broker.url.is_empty()
            && let Err(e) = BrokerUrl::parse(&self.broker.url)
        {
            errs.push(format!("broker.url: {e}"));
        }
        if !self.local_broker.url.is_empty() {
            match BrokerUrl::parse(&self.local_broker.url) {
                Err(e) => errs.push(format!("local_broker.url: {e}")),
                Ok(u) if u.tls => errs.push(format!(
                    "local_broker.url: {:?}: the broker on the device is plain mqtt://",
                    self.local_broker.url
                )),
                Ok(_) => {}
            }
        }
        let hub_ok = ["", "http://", "https://"].iter().any(|p| {
            if p.is_empty() {
                self.hub.url.is_empty()
            } else {
                self.hub.url.starts_with(p)
            }
        });
        if !hub_ok {
            errs.push(format!("hub.url: {:?} is not an http(s) URL", self.hub.url));
        }
        if !(1..=3600).contains(&self.broker.keepalive_secs) {
            errs.push("broker.keepalive_secs: must be 1..=3600".to_owned());
        }
        if self.broker.reconnect_min_ms == 0
            || self.broker.reconnect_min_ms > self.broker.reconnect_max_ms
        {
            errs.push("broker.reconnect_min_ms: must be > 0 and <= reconnect_max_ms".to_owned());
        }
        if self.outbox.max_messages == 0 || self.outbox.max_bytes < 1024 * 1024 {
            errs.push("outbox: max_messages must be > 0 and max_bytes at least 1048576".to_owned());
        }
        if self.outbox.window == 0 || self.outbox.window > 10_000 {
            errs.push("outbox.window: must be 1..=10000".to_owned());
        }
        if u32::from(self.outbox.window) > self.outbox.max_unacked {
            errs.push("outbox.max_unacked: must be at least outbox.window".to_owned());
        }
        if !(1..=600).contains(&self.outbox.ack_timeout_secs) {
            errs.push("outbox.ack_timeout_secs: must be 1..=600".to_owned());
        }
        if !(60..=366 * 24 * 3600).contains(&self.outbox.max_age_secs) {
            errs.push("outbox.max_age_secs: must be 60..=31622400 (a minute to a year)".to_owned());
        }
        if self.reconcile.backoff_min_ms == 0
            || self.reconcile.backoff_min_ms > self.reconcile.backoff_max_ms
        {
            errs.push("reconcile.backoff_min_ms: must be > 0 and <= backoff_max_ms".to_owned());
        }
        if self.reconcile.drift_interval_secs == 0 || self.heartbeat.interval_secs == 0 {
            errs.push(
                "reconcile.drift_interval_secs and heartbeat.interval_secs: must be > 0".to_owned(),
            );
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs.join("; ")))
        }
    }

    /// What `edge-agent run` needs beyond a valid file: an enrolled identity.
    pub fn require_enrolled(&self) -> Result<(), ConfigError> {
        let mut missing = Vec::new();
        if self.device_id.is_empty() {
            missing.push("device_id");
        }
        if self.broker.url.is_empty() {
            missing.push("broker.url");
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(format!(
                "{} not set: run `edge-agent enroll --hub URL --token TOKEN` first",
                missing.join(", ")
            )))
        }
    }

    /// Writes the config as TOML (mode 0644; it holds no secrets).
    pub fn write(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |source| ConfigError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        edgefleet_daemon::files::write_atomic(path, self.to_toml().as_bytes(), 0o644).map_err(err)
    }

    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("agent.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let d = Config::default();
        let text = d.to_toml();
        assert!(text.contains("state_dir = \"/var/lib/edgefleet\""));
        assert_eq!(Config::from_toml(&text).unwrap(), d);
        d.validate().unwrap();
    }

    #[test]
    fn precedence_is_flag_over_env_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "device_id = \"from-file\"\n[http]\nport = 1000\n").unwrap();
        let e = env(&[
            ("EDGEFLEET_HTTP_PORT", "2000"),
            ("EDGEFLEET_DEVICE_ID", "from-env"),
        ]);
        let cfg = Config::load(&path, true, &e, &Overrides::default()).unwrap();
        assert_eq!((cfg.device_id.as_str(), cfg.http.port), ("from-env", 2000));
        let flags = Overrides {
            http_port: Some(3000),
            ..Default::default()
        };
        let cfg = Config::load(&path, true, &e, &flags).unwrap();
        assert_eq!(cfg.http.port, 3000);
    }

    #[test]
    fn invalid_inputs_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "nonsense = 1\n").unwrap();
        let none = env(&[]);
        assert!(matches!(
            Config::load(&path, true, &none, &Overrides::default()),
            Err(ConfigError::File(ConfigFileError::Parse { .. }))
        ));
        std::fs::write(&path, "device_id = \"Bad_ID\"\n").unwrap();
        assert!(matches!(
            Config::load(&path, true, &none, &Overrides::default()),
            Err(ConfigError::Invalid(_))
        ));
        std::fs::write(&path, "").unwrap();
        let bad = env(&[("EDGEFLEET_HTTP_PORT", "x")]);
        assert!(matches!(
            Config::load(&path, true, &bad, &Overrides::default()),
            Err(ConfigError::File(ConfigFileError::Env { .. }))
        ));
        let missing = dir.path().join("missing.toml");
        assert!(Config::load(&missing, false, &none, &Overrides::default()).is_ok());
        assert!(matches!(
            Config::load(&missing, true, &none, &Overrides::default()),
            Err(ConfigError::File(ConfigFileError::Read { .. }))
        ));
        assert!(Config::default().require_enrolled().is_err());
    }
}
