//! Hub configuration: one typed struct with defaults, layered
//! file → env (`CLOUDCORE_*`) → flags. Tests build it directly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use edgefleet_daemon::config::{ConfigFileError, env_error, env_parse, env_parse_as, read_toml};
use edgefleet_daemon::mqtt::{BrokerUrl, BrokerUrlError, PemError, read_pem};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading or parsing the file, or an environment variable.
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    BrokerUrl(#[from] BrokerUrlError),
    /// A PEM file the config names (TLS certificate, key, CA) that is
    /// missing or holds no such block: a clear error at start instead of a
    /// TLS failure on every connection later.
    #[error(transparent)]
    Pem(#[from] PemError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Store, keys, tokens and model blobs live here.
    pub data_dir: PathBuf,
    pub api: ApiConfig,
    pub broker: BrokerConfig,
    pub auth: AuthConfig,
    pub store: StoreConfig,
    pub ingest: IngestConfig,
    pub backup: BackupConfig,
    pub keys: KeysConfig,
    /// Test-only: the size checks to leave out, so a test can show the next
    /// layer holds by itself. Never in a config file; set by the
    /// `CLOUDCORE_TEST_UNCHECKED_LIMITS` variable (`api`, `publisher`, both
    /// comma-separated), and the hub warns at start when it is.
    #[serde(skip)]
    pub unchecked_limits: UncheckedLimits,
}

/// Which size checks of desired state are off (tests only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UncheckedLimits {
    /// `PUT /deployments` and `PATCH /devices` accept what devices would refuse.
    pub api: bool,
    /// The publisher issues what devices would refuse.
    pub publisher: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// REST API listen address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Largest request body except a model upload: deployments, labels,
    /// enrollment (env `CLOUDCORE_API_MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Largest model upload (`POST /api/v1/models`; env
    /// `CLOUDCORE_API_MAX_MODEL_BYTES`). It is held in memory while hashed.
    pub max_model_bytes: usize,
    /// HTTPS: the certificate chain and its key (PEM files; env
    /// `CLOUDCORE_API_TLS_CERT`, `CLOUDCORE_API_TLS_KEY`). Both or neither;
    /// neither: plain HTTP (put it behind a TLS proxy, or on loopback).
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// External broker, `mqtt://host:port` or `mqtts://host:port`. Empty:
    /// run the embedded broker.
    pub url: String,
    /// Hub credentials on the external broker.
    pub username: String,
    pub password: String,
    /// Embedded broker listen address.
    pub listen: SocketAddr,
    /// Embedded broker connection limit (env `CLOUDCORE_BROKER_MAX_CONNECTIONS`).
    /// The hub also raises its soft open-file limit to the hard one; keep
    /// `ulimit -Hn` above this.
    pub max_connections: usize,
    /// Broker URL handed to devices at enrollment; default: derived from
    /// `url` or `listen`.
    pub advertise_url: String,
    /// CA bundle (PEM) trusted for an `mqtts://` external broker; empty: the
    /// system's roots. Devices get their own `broker.ca_file`.
    pub ca_file: PathBuf,
    /// Embedded broker: a TLS (`mqtts://`) listener for devices beside
    /// `listen`, with `tls_cert` (PEM chain) and `tls_key` (PEM key). Unset:
    /// none. Devices are then told `advertise_url`, or `mqtts://tls_listen`.
    pub tls_listen: Option<SocketAddr>,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// External broker: how device credentials and topic ACLs get there
    /// (env `CLOUDCORE_BROKER_PROVISION`). `none`: the broker's own
    /// configuration is trusted as it is. `mosquitto-dynsec`: the hub
    /// drives mosquitto's dynamic-security plugin (see docs/SECURITY.md).
    pub provision: Provision,
}

/// Who gives an external broker its device credentials and ACLs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provision {
    #[default]
    None,
    MosquittoDynsec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Bytes the hub keeps free on the data directory's filesystem: below
    /// it, device messages are not stored (devices keep and resend them)
    /// while desired state and the API keep being served. 0: 5 % of the
    /// filesystem or 256 MiB, whichever is smaller.
    pub disk_reserve_bytes: u64,
    /// Events kept per device, newest first (env
    /// `CLOUDCORE_STORE_EVENTS_PER_DEVICE`; 0: no limit). Enforced in the
    /// transaction that stores them, so no device holds more, ever.
    pub events_per_device: u64,
    /// Events older than this (by arrival) are removed, once a minute (env
    /// `CLOUDCORE_STORE_EVENTS_MAX_AGE`; `0`: kept until the count limit).
    pub events_max_age: edgefleet_protocol::Duration,
}

/// Key rotation (`cloudcore keys rotate`, `edge-agent rotate-key`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// How long a replaced key keeps working (env
    /// `CLOUDCORE_KEYS_ROTATION_GRACE`). An old hub key is announced to
    /// devices still pinned to it until every device reports the new one,
    /// or this long; a device offline longer must enroll again. A device's
    /// old key is accepted this long for what its outbox signed before.
    pub rotation_grace: edgefleet_protocol::Duration,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            rotation_grace: edgefleet_protocol::Duration::from_secs(30 * 24 * 3600),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            disk_reserve_bytes: 0,
            // What one full agent outbox holds (outbox.max_messages): a
            // device's longest outage arrives whole.
            events_per_device: 100_000,
            events_max_age: edgefleet_protocol::Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// What one device may make the hub verify and store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Messages per second each device may send, on average (env
    /// `CLOUDCORE_INGEST_RATE_PER_DEVICE`; 0: no limit). Beyond it
    /// messages are dropped unverified and counted; events and status are
    /// not acknowledged, so the device keeps them and sends them again.
    pub rate_per_device: u32,
    /// Messages a device may send at once above the rate (env
    /// `CLOUDCORE_INGEST_BURST_PER_DEVICE`): room for a full outbox flush
    /// after a long outage, and its resend after a hub restart.
    pub burst_per_device: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            rate_per_device: 1_000,
            burst_per_device: 200_000,
        }
    }
}

/// Scheduled backups (`cloudcore backup` is the same, on demand).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// How often (`12h`, `30m`; `0`: never). On by default, as K3s takes
    /// its etcd snapshots: the hub key and device registry cannot be
    /// re-created without re-enrolling every device.
    pub interval: edgefleet_protocol::Duration,
    /// Archives kept; older ones are deleted.
    pub keep: usize,
    /// Where archives go; empty: `<data_dir>/backups`. Put it on another
    /// disk, or copy the archives off the machine: a backup beside the data
    /// it protects is lost with the disk.
    pub dir: PathBuf,
    /// Record model hashes instead of the blobs (smaller archives; the
    /// models must then be uploaded again after a restore).
    pub without_models: bool,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            interval: edgefleet_protocol::Duration::from_secs(12 * 3600),
            keep: 5,
            dir: PathBuf::new(),
            without_models: false,
        }
    }
}

impl BackupConfig {
    /// The backup directory for the data directory `data`.
    pub fn dir_for(&self, data: &Path) -> PathBuf {
        if self.dir.as_os_str().is_empty() {
            data.join(crate::backup::BACKUPS)
        } else {
            self.dir.clone()
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Operator bearer token; empty: read or create `<data_dir>/operator-token`.
    pub operator_token: String,
    /// Device bootstrap token; empty: read or create `<data_dir>/bootstrap-token`.
    pub bootstrap_token: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./cloudcore-data"),
            api: ApiConfig::default(),
            broker: BrokerConfig::default(),
            auth: AuthConfig::default(),
            store: StoreConfig::default(),
            ingest: IngestConfig::default(),
            backup: BackupConfig::default(),
            keys: KeysConfig::default(),
            unchecked_limits: UncheckedLimits::default(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            // A deployment may carry up to a desired document's worth of
            // manifests (1 MiB) as YAML: room for that, not for more.
            max_body_bytes: 4 * 1024 * 1024,
            max_model_bytes: 256 * 1024 * 1024,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            username: String::new(),
            password: String::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_connections: 20_000,
            advertise_url: String::new(),
            ca_file: PathBuf::new(),
            tls_listen: None,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            provision: Provision::None,
        }
    }
}

/// Command-line overrides (the top layer).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub api_listen: Option<SocketAddr>,
    pub broker_listen: Option<SocketAddr>,
    pub broker_url: Option<String>,
}

impl Config {
    /// Layers: defaults, then `file` (if given), then env, then `overrides`.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut cfg = match file {
            Some(path) => read_toml(path, true)?.unwrap_or_default(),
            None => Config::default(),
        };
        cfg.apply_env(env)?;
        if let Some(d) = &overrides.data_dir {
            cfg.data_dir = d.clone();
        }
        if let Some(a) = overrides.api_listen {
            cfg.api.listen = a;
        }
        if let Some(a) = overrides.broker_listen {
            cfg.broker.listen = a;
        }
        if let Some(u) = &overrides.broker_url {
            cfg.broker.url = u.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn addr(name: &str, v: String) -> Result<SocketAddr, ConfigFileError> {
            v.parse()
                .map_err(|_| env_error(name, &v, "expected host:port, e.g. 127.0.0.1:8080"))
        }
        if let Some(v) = env("CLOUDCORE_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = env("CLOUDCORE_API_LISTEN") {
            self.api.listen = addr("CLOUDCORE_API_LISTEN", v)?;
        }
        if let Some(v) = env("CLOUDCORE_BROKER_LISTEN") {
            self.broker.listen = addr("CLOUDCORE_BROKER_LISTEN", v)?;
        }
        if let Some(v) = env("CLOUDCORE_BROKER_MAX_CONNECTIONS") {
            let expected = "expected a positive number of connections";
            self.broker.max_connections =
                env_parse_as("CLOUDCORE_BROKER_MAX_CONNECTIONS", &v, expected)?;
        }
        if let Some(v) = env("CLOUDCORE_BROKER_URL") {
            self.broker.url = v;
        }
        if let Some(v) = env("CLOUDCORE_BROKER_PROVISION") {
            self.broker.provision = match v.as_str() {
                "none" => Provision::None,
                "mosquitto-dynsec" => Provision::MosquittoDynsec,
                other => {
                    return Err(ConfigError::Invalid(format!(
                        "CLOUDCORE_BROKER_PROVISION={other:?}: expected none or mosquitto-dynsec"
                    )));
                }
            };
        }
        if let Some(v) = env("CLOUDCORE_BROKER_USERNAME") {
            self.broker.username = v;
        }
        if let Some(v) = env("CLOUDCORE_BROKER_PASSWORD") {
            self.broker.password = v;
        }
        if let Some(v) = env("CLOUDCORE_BROKER_CA_FILE") {
            self.broker.ca_file = v.into();
        }
        if let Some(v) = env("CLOUDCORE_BROKER_ADVERTISE_URL") {
            self.broker.advertise_url = v;
        }
        if let Some(v) = env("CLOUDCORE_BROKER_TLS_LISTEN") {
            self.broker.tls_listen = Some(addr("CLOUDCORE_BROKER_TLS_LISTEN", v)?);
        }
        if let Some(v) = env("CLOUDCORE_API_TLS_CERT") {
            self.api.tls_cert = v.into();
        }
        if let Some(v) = env("CLOUDCORE_API_TLS_KEY") {
            self.api.tls_key = v.into();
        }
        if let Some(v) = env("CLOUDCORE_BROKER_TLS_CERT") {
            self.broker.tls_cert = v.into();
        }
        if let Some(v) = env("CLOUDCORE_BROKER_TLS_KEY") {
            self.broker.tls_key = v.into();
        }
        if let Some(v) = env("CLOUDCORE_OPERATOR_TOKEN") {
            self.auth.operator_token = v;
        }
        if let Some(v) = env("CLOUDCORE_BOOTSTRAP_TOKEN") {
            self.auth.bootstrap_token = v;
        }
        if let Some(v) = env("CLOUDCORE_STORE_DISK_RESERVE_BYTES") {
            let expected = "expected a number of bytes";
            self.store.disk_reserve_bytes =
                env_parse_as("CLOUDCORE_STORE_DISK_RESERVE_BYTES", &v, expected)?;
        }
        if let Some(v) = env("CLOUDCORE_STORE_EVENTS_PER_DEVICE") {
            let expected = "expected a number of events (0: no limit)";
            self.store.events_per_device =
                env_parse_as("CLOUDCORE_STORE_EVENTS_PER_DEVICE", &v, expected)?;
        }
        if let Some(v) = env("CLOUDCORE_STORE_EVENTS_MAX_AGE") {
            self.store.events_max_age = env_parse("CLOUDCORE_STORE_EVENTS_MAX_AGE", &v)?;
        }
        if let Some(v) = env("CLOUDCORE_KEYS_ROTATION_GRACE") {
            self.keys.rotation_grace = env_parse("CLOUDCORE_KEYS_ROTATION_GRACE", &v)?;
        }
        if let Some(v) = env("CLOUDCORE_INGEST_RATE_PER_DEVICE") {
            let expected = "expected messages per second (0: no limit)";
            self.ingest.rate_per_device =
                env_parse_as("CLOUDCORE_INGEST_RATE_PER_DEVICE", &v, expected)?;
        }
        if let Some(v) = env("CLOUDCORE_INGEST_BURST_PER_DEVICE") {
            let expected = "expected a number of messages";
            self.ingest.burst_per_device =
                env_parse_as("CLOUDCORE_INGEST_BURST_PER_DEVICE", &v, expected)?;
        }
        if let Some(v) = env("CLOUDCORE_API_MAX_BODY_BYTES") {
            let expected = "expected a number of bytes";
            self.api.max_body_bytes = env_parse_as("CLOUDCORE_API_MAX_BODY_BYTES", &v, expected)?;
        }
        if let Some(v) = env("CLOUDCORE_API_MAX_MODEL_BYTES") {
            let expected = "expected a number of bytes";
            self.api.max_model_bytes = env_parse_as("CLOUDCORE_API_MAX_MODEL_BYTES", &v, expected)?;
        }
        if let Some(v) = env("CLOUDCORE_BACKUP_INTERVAL") {
            self.backup.interval = env_parse("CLOUDCORE_BACKUP_INTERVAL", &v)?;
        }
        if let Some(v) = env("CLOUDCORE_BACKUP_KEEP") {
            let expected = "expected how many archives to keep";
            self.backup.keep = env_parse_as("CLOUDCORE_BACKUP_KEEP", &v, expected)?;
        }
        if let Some(v) = env("CLOUDCORE_BACKUP_DIR") {
            self.backup.dir = v.into();
        }
        if let Some(v) = env("CLOUDCORE_TEST_UNCHECKED_LIMITS") {
            for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match part {
                    "api" => self.unchecked_limits.api = true,
                    "publisher" => self.unchecked_limits.publisher = true,
                    _ => {
                        return Err(env_error(
                            "CLOUDCORE_TEST_UNCHECKED_LIMITS",
                            &v,
                            "expected api, publisher or both, comma-separated",
                        )
                        .into());
                    }
                }
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.broker.url.is_empty() {
            BrokerUrl::parse(&self.broker.url)?;
        }
        if !self.broker.advertise_url.is_empty() {
            BrokerUrl::parse(&self.broker.advertise_url)?;
        }
        for (name, t) in [
            ("auth.operator_token", &self.auth.operator_token),
            ("auth.bootstrap_token", &self.auth.bootstrap_token),
        ] {
            if !t.is_empty() && t.len() < 16 {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be at least 16 characters"
                )));
            }
        }
        if !self.backup.interval.is_zero() && self.backup.keep == 0 {
            return Err(ConfigError::Invalid(
                "backup.keep must be at least 1 (or backup.interval 0: no scheduled backups)"
                    .into(),
            ));
        }
        if self.ingest.rate_per_device > 0 && self.ingest.burst_per_device == 0 {
            return Err(ConfigError::Invalid(
                "ingest.burst_per_device must be at least 1 with a rate limit".into(),
            ));
        }
        if self.broker.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "broker.max_connections must be positive".into(),
            ));
        }
        if self.broker.provision == Provision::MosquittoDynsec
            && (self.embedded_broker() || self.broker.username.is_empty())
        {
            return Err(ConfigError::Invalid(
                "broker.provision = mosquitto-dynsec needs broker.url (an external mosquitto) \
                 and broker.username/password of a dynamic-security admin"
                    .into(),
            ));
        }
        match (
            self.api.tls_cert.as_os_str().is_empty(),
            self.api.tls_key.as_os_str().is_empty(),
        ) {
            (true, true) => {}
            (false, false) => {
                read_pem("api.tls_cert", &self.api.tls_cert, "CERTIFICATE")?;
                read_pem("api.tls_key", &self.api.tls_key, "PRIVATE KEY")?;
            }
            _ => {
                return Err(ConfigError::Invalid(
                    "api.tls_cert and api.tls_key go together (HTTPS needs both)".into(),
                ));
            }
        }
        if self.broker.tls_listen.is_some() {
            if !self.embedded_broker() {
                return Err(ConfigError::Invalid(
                    "broker.tls_listen is a listener of the embedded broker; \
                     with broker.url set, the external broker does TLS"
                        .into(),
                ));
            }
            read_pem("broker.tls_cert", &self.broker.tls_cert, "CERTIFICATE")?;
            read_pem("broker.tls_key", &self.broker.tls_key, "PRIVATE KEY")?;
        }
        Ok(())
    }

    /// Whether the hub runs its own broker.
    /// Whether the REST API speaks HTTPS.
    pub fn api_tls(&self) -> bool {
        !self.api.tls_cert.as_os_str().is_empty()
    }

    pub fn embedded_broker(&self) -> bool {
        self.broker.url.is_empty()
    }

    /// The broker URL devices are told at enrollment.
    pub fn device_broker_url(&self) -> String {
        if !self.broker.advertise_url.is_empty() {
            self.broker.advertise_url.clone()
        } else if let Some(tls) = self.broker.tls_listen {
            // Only with the embedded broker: `validate` refuses it beside `url`.
            format!("mqtts://{tls}")
        } else if !self.broker.url.is_empty() {
            self.broker.url.clone()
        } else {
            format!("mqtt://{}", self.broker.listen)
        }
    }

    /// The defaults as TOML, for `cloudcore config defaults`.
    pub fn defaults_toml() -> String {
        toml::to_string_pretty(&Config::default()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn layers_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "data_dir = \"/from/file\"\n[api]\nlisten = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        let env = |k: &str| (k == "CLOUDCORE_API_LISTEN").then(|| "127.0.0.1:9001".to_owned());
        let c = Config::load(Some(&f), env, &Overrides::default()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.api.listen.port(), 9001);
        let o = Overrides {
            api_listen: Some("127.0.0.1:9002".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::load(Some(&f), env, &o).unwrap();
        assert_eq!(c.api.listen.port(), 9002);
    }

    #[test]
    fn defaults_round_trip_and_bad_config_is_refused() {
        let d: Config = toml::from_str(&Config::defaults_toml()).unwrap();
        assert_eq!(d, Config::default());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[api]\nlisen = 1\n").unwrap();
        assert!(matches!(
            Config::load(Some(&f), no_env, &Overrides::default()),
            Err(ConfigError::File(ConfigFileError::Parse { .. }))
        ));
        let env = |k: &str| (k == "CLOUDCORE_BROKER_URL").then(|| "http://x".to_owned());
        assert!(Config::load(None, env, &Overrides::default()).is_err());
    }

    #[test]
    fn tls_listener_is_advertised_and_only_for_the_embedded_broker() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let env = |url: &'static str| {
            let (cert, key) = (cert.clone(), key.clone());
            move |k: &str| match k {
                "CLOUDCORE_BROKER_TLS_LISTEN" => Some("0.0.0.0:8883".to_owned()),
                "CLOUDCORE_BROKER_TLS_CERT" => Some(cert.clone()),
                "CLOUDCORE_BROKER_TLS_KEY" => Some(key.clone()),
                "CLOUDCORE_BROKER_URL" if !url.is_empty() => Some(url.to_owned()),
                _ => None,
            }
        };
        let c = Config::load(None, env(""), &Overrides::default()).unwrap();
        assert_eq!(c.device_broker_url(), "mqtts://0.0.0.0:8883");
        let err = Config::load(None, env("mqtt://mosquitto:1883"), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("broker.tls_listen"), "{err}");
    }

    #[test]
    fn broker_connection_limit_from_env() {
        assert_eq!(Config::default().broker.max_connections, 20_000);
        let env = |v: &'static str| {
            move |k: &str| (k == "CLOUDCORE_BROKER_MAX_CONNECTIONS").then(|| v.to_owned())
        };
        let c = Config::load(None, env("50000"), &Overrides::default()).unwrap();
        assert_eq!(c.broker.max_connections, 50_000);
        assert!(Config::load(None, env("many"), &Overrides::default()).is_err());
        assert!(Config::load(None, env("0"), &Overrides::default()).is_err());
    }
}
