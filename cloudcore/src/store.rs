//! The hub's SQLite store: devices, deployments, per-device desired
//! documents, reported workload status, events, models.
//!
//! WAL with `synchronous=NORMAL`: a committed transaction survives a process
//! crash (SIGKILL); an OS crash may lose the last few, which devices then
//! resend (events are deduplicated by id, desired documents are recomputed).
//! Schema versions are tracked with `PRAGMA user_version` and applied as
//! ordered migrations. All calls are synchronous; async callers go through
//! [`Store::run`], which moves the work off the async runtime.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use edgefleet_protocol::{DeviceId, Event, Health, Heartbeat, StatusReport, SyncState};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

mod conditions;

pub use conditions::{Condition, ConditionType};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored JSON is corrupt")]
    Json(#[from] serde_json::Error),
    #[error("cannot create {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("database schema version {found} is newer than this cloudcore supports ({supported})")]
    TooNew { found: i64, supported: i64 },
    #[error("store worker panicked")]
    Join,
}

impl StoreError {
    /// Whether SQLite failed for lack of disk space.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
        )
    }
}

const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        public_key TEXT NOT NULL UNIQUE,
        labels TEXT NOT NULL DEFAULT '{}',
        password_hash BLOB NOT NULL,
        hostname TEXT, arch TEXT, agent_version TEXT,
        created_ms INTEGER NOT NULL,
        last_seen_ms INTEGER,
        presence TEXT NOT NULL DEFAULT 'unknown',
        presence_session INTEGER,
        applied_epoch INTEGER, applied_revision INTEGER,
        last_report_ms INTEGER,
        report_message TEXT,
        k3s_version TEXT,
        heartbeat TEXT
    );
    CREATE TABLE deployments (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        generation INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE desired (
        device_id TEXT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
        revision INTEGER NOT NULL,
        content_hash TEXT NOT NULL,
        workloads TEXT NOT NULL,
        envelope BLOB NOT NULL,
        issued_ms INTEGER NOT NULL,
        published_ms INTEGER
    );
    CREATE TABLE workload_status (
        device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        sync TEXT NOT NULL,
        health TEXT NOT NULL,
        message TEXT,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (device_id, name)
    );
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        id TEXT NOT NULL,
        kind TEXT NOT NULL,
        workload TEXT,
        created_ms INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        payload TEXT NOT NULL,
        UNIQUE (device_id, id)
    );
    CREATE TABLE models (
        sha256 TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        size INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
    );
    "#,
    // 2: standing conditions per device (store/conditions.rs).
    r#"
    CREATE TABLE device_conditions (
        device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        type TEXT NOT NULL,
        message TEXT NOT NULL,
        since_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (device_id, type)
    );
    "#,
];

pub type Labels = BTreeMap<String, String>;

/// A device row as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRecord {
    pub id: DeviceId,
    pub labels: BTreeMap<String, String>,
    pub public_key: String,
    pub hostname: Option<String>,
    pub arch: Option<String>,
    pub agent_version: Option<String>,
    pub created_ms: u64,
    pub last_seen_ms: Option<u64>,
    /// `online`, `offline` or `unknown` (never connected).
    pub presence: String,
    /// Latest desired revision the hub issued for this device.
    pub desired_revision: Option<u64>,
    /// Revision the device last reported as applied.
    pub applied_revision: Option<u64>,
    pub last_report_ms: Option<u64>,
    pub message: Option<String>,
    pub k3s_version: Option<String>,
    pub heartbeat: Option<serde_json::Value>,
    /// What the hub knows is wrong with the device (filled by list and get).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A stored deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRecord {
    pub name: String,
    pub generation: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub spec: edgefleet_protocol::Deployment,
}

/// One workload's reported state on one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatusRecord {
    pub device_id: DeviceId,
    pub name: String,
    pub sync: SyncState,
    pub health: Health,
    pub message: Option<String>,
    pub updated_ms: u64,
}

/// A stored event, with the hub's receive time and sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    pub seq: i64,
    pub id: String,
    pub device_id: String,
    pub kind: String,
    pub workload: Option<String>,
    pub created_at_ms: u64,
    pub received_at_ms: u64,
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelRecord {
    pub sha256: String,
    pub name: String,
    pub size: u64,
    pub created_ms: u64,
}

/// A new desired document for one device, computed by the publisher.
#[derive(Debug, Clone)]
pub struct NewDesired {
    pub device_id: DeviceId,
    pub revision: u64,
    pub content_hash: String,
    pub workloads_json: String,
    pub envelope: Vec<u8>,
    pub issued_ms: u64,
}

/// Credentials and key the broker and ingest need per device.
#[derive(Debug, Clone)]
pub struct DeviceAuth {
    pub public_key: String,
    pub password_hash: [u8; 32],
}

/// Outcome of applying one device message to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    Stored,
    Duplicate,
    Stale,
    UnknownDevice,
}

/// The store. Cheap to clone; one connection behind a mutex (SQLite
/// serialises writers anyway, and batching keeps transactions few).
#[derive(Debug, Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

fn ms(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn sql_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn sync_str(s: SyncState) -> &'static str {
    match s {
        SyncState::Synced => "Synced",
        SyncState::Syncing => "Syncing",
        SyncState::Failed => "Failed",
    }
}

fn health_str(h: Health) -> &'static str {
    match h {
        Health::Healthy => "Healthy",
        Health::Progressing => "Progressing",
        Health::Degraded => "Degraded",
        Health::Unknown => "Unknown",
    }
}

fn parse_sync(s: &str) -> SyncState {
    match s {
        "Synced" => SyncState::Synced,
        "Failed" => SyncState::Failed,
        _ => SyncState::Syncing,
    }
}

fn parse_health(s: &str) -> Health {
    match s {
        "Healthy" => Health::Healthy,
        "Progressing" => Health::Progressing,
        "Degraded" => Health::Degraded,
        _ => Health::Unknown,
    }
}

impl Store {
    /// Opens (creating if needed) `<dir>/cloudcore.db` and migrates it.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let conn = Connection::open(dir.join("cloudcore.db"))?;
        Self::init(conn)
    }

    /// An in-memory store for unit tests.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(StoreError::TooNew {
                found: version,
                supported,
            });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(m)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        // The epoch is fixed when the store is first created.
        conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('epoch', ?1)",
            params![edgefleet_protocol::now_ms().to_string()],
        )?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (the
        // transaction rolls back on drop), so a poisoned lock is usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on a blocking thread.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let s = self.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|_| StoreError::Join)?
    }

    /// The hub epoch: this store's creation time in Unix milliseconds.
    pub fn epoch(&self) -> Result<u64, StoreError> {
        let v: String =
            self.lock()
                .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                    r.get(0)
                })?;
        Ok(v.parse().unwrap_or(0))
    }

    /// Cheap liveness probe for `/readyz`.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.lock().query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    // ---- devices -------------------------------------------------------

    /// Enrolls a new key, or refreshes the password of a known one (same
    /// id). `IdTaken` when the requested id belongs to another key.
    pub fn enroll_device(
        &self,
        requested: Option<&DeviceId>,
        derived: &DeviceId,
        public_key: &str,
        labels: &BTreeMap<String, String>,
        password_hash: &[u8; 32],
        meta: (&Option<String>, &str, &str),
    ) -> Result<EnrollOutcome, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT id FROM devices WHERE public_key = ?1",
                params![public_key],
                |r| r.get(0),
            )
            .optional()?;
        let (hostname, arch, agent_version) = meta;
        let outcome = if let Some(id) = existing {
            // Same key again: idempotent; new password, labels kept (the
            // operator may have changed them since).
            tx.execute(
                "UPDATE devices SET password_hash = ?2, hostname = ?3, arch = ?4, agent_version = ?5 WHERE id = ?1",
                params![id, &password_hash[..], hostname, arch, agent_version],
            )?;
            EnrollOutcome::Existing(DeviceId::new(id).unwrap_or_else(|_| derived.clone()))
        } else {
            let id = requested.unwrap_or(derived);
            let taken: bool = tx
                .query_row(
                    "SELECT 1 FROM devices WHERE id = ?1",
                    params![id.as_str()],
                    |_| Ok(true),
                )
                .optional()?
                .unwrap_or(false);
            if taken {
                return Ok(EnrollOutcome::IdTaken);
            }
            tx.execute(
                "INSERT INTO devices(id, public_key, labels, password_hash, hostname, arch, agent_version, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id.as_str(),
                    public_key,
                    serde_json::to_string(labels)?,
                    &password_hash[..],
                    hostname,
                    arch,
                    agent_version,
                    sql_i64(edgefleet_protocol::now_ms())
                ],
            )?;
            EnrollOutcome::New(id.clone())
        };
        tx.commit()?;
        Ok(outcome)
    }

    /// Every device's key and broker password hash (for the auth cache).
    pub fn device_auth(&self) -> Result<HashMap<DeviceId, DeviceAuth>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT id, public_key, password_hash FROM devices")?;
        let rows = stmt.query_map([], |r| {
            let id: String = r.get(0)?;
            let pk: String = r.get(1)?;
            let hash: Vec<u8> = r.get(2)?;
            Ok((id, pk, hash))
        })?;
        let mut out = HashMap::new();
        for row in rows {
            let (id, public_key, hash) = row?;
            let (Ok(id), Ok(password_hash)) = (DeviceId::new(id), <[u8; 32]>::try_from(hash))
            else {
                continue;
            };
            out.insert(
                id,
                DeviceAuth {
                    public_key,
                    password_hash,
                },
            );
        }
        Ok(out)
    }

    fn device_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, DeviceRecord)> {
        let id: String = r.get("id")?;
        let labels: String = r.get("labels")?;
        let hb: Option<String> = r.get("heartbeat")?;
        let rec = DeviceRecord {
            id: DeviceId::new(id.clone()).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?,
            labels: serde_json::from_str(&labels).unwrap_or_default(),
            public_key: r.get("public_key")?,
            hostname: r.get("hostname")?,
            arch: r.get("arch")?,
            agent_version: r.get("agent_version")?,
            created_ms: ms(r.get("created_ms")?),
            last_seen_ms: r.get::<_, Option<i64>>("last_seen_ms")?.map(ms),
            presence: r.get("presence")?,
            desired_revision: r.get::<_, Option<i64>>("desired_revision")?.map(ms),
            applied_revision: r.get::<_, Option<i64>>("applied_revision")?.map(ms),
            last_report_ms: r.get::<_, Option<i64>>("last_report_ms")?.map(ms),
            message: r.get("report_message")?,
            k3s_version: r.get("k3s_version")?,
            heartbeat: hb.and_then(|h| serde_json::from_str(&h).ok()),
            conditions: Vec::new(),
        };
        Ok((id, rec))
    }

    const DEVICE_SELECT: &'static str = "SELECT d.*, ds.revision AS desired_revision FROM devices d LEFT JOIN desired ds ON ds.device_id = d.id";

    /// Devices ordered by id, after `after`, at most `limit`.
    pub fn list_devices(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "{} WHERE d.id > ?1 ORDER BY d.id LIMIT ?2",
            Self::DEVICE_SELECT
        ))?;
        let rows = stmt.query_map(
            params![after.unwrap_or(""), limit as i64],
            Self::device_from_row,
        )?;
        let mut devices: Vec<DeviceRecord> = rows
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        drop(stmt);
        drop(conn);
        let mut conditions = self.conditions(None)?;
        for d in &mut devices {
            d.conditions = conditions.remove(&d.id).unwrap_or_default();
        }
        Ok(devices)
    }

    pub fn get_device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let found = self
            .lock()
            .query_row(
                &format!("{} WHERE d.id = ?1", Self::DEVICE_SELECT),
                params![id],
                Self::device_from_row,
            )
            .optional()?;
        let Some((_, mut d)) = found else {
            return Ok(None);
        };
        d.conditions = self.conditions(Some(id))?.remove(&d.id).unwrap_or_default();
        Ok(Some(d))
    }

    /// Replaces a device's labels. `false` when the device does not exist.
    pub fn set_labels(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, StoreError> {
        let n = self.lock().execute(
            "UPDATE devices SET labels = ?2 WHERE id = ?1",
            params![id, serde_json::to_string(labels)?],
        )?;
        Ok(n == 1)
    }

    pub fn delete_device(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .execute("DELETE FROM devices WHERE id = ?1", params![id])?
            == 1)
    }

    /// `(id, labels)` of every device, for desired-state computation.
    pub fn device_labels(&self) -> Result<Vec<(DeviceId, Labels)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT id, labels FROM devices ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, labels) = row?;
            if let Ok(id) = DeviceId::new(id) {
                out.push((id, serde_json::from_str(&labels).unwrap_or_default()));
            }
        }
        Ok(out)
    }

    pub fn count_devices(&self) -> Result<(u64, u64), StoreError> {
        let conn = self.lock();
        Ok(conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(presence = 'online'), 0) FROM devices",
            [],
            |r| Ok((ms(r.get(0)?), ms(r.get(1)?))),
        )?)
    }

    // ---- deployments -----------------------------------------------------

    /// Stores a deployment; bumps the generation only when the spec changed.
    /// Returns the record and whether anything changed.
    pub fn put_deployment(
        &self,
        d: &edgefleet_protocol::Deployment,
    ) -> Result<(DeploymentRecord, bool), StoreError> {
        let spec = serde_json::to_string(d)?;
        let now = sql_i64(edgefleet_protocol::now_ms());
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let old: Option<(String, i64)> = tx
            .query_row(
                "SELECT spec, generation FROM deployments WHERE name = ?1",
                params![d.metadata.name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let changed = match &old {
            Some((s, _)) => *s != spec,
            None => true,
        };
        if changed {
            tx.execute(
                "INSERT INTO deployments(name, spec, generation, created_ms, updated_ms) VALUES (?1, ?2, 1, ?3, ?3)
                 ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, generation = generation + 1, updated_ms = excluded.updated_ms",
                params![d.metadata.name, spec, now],
            )?;
        }
        let rec = Self::deployment_row(&tx, &d.metadata.name)?
            .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        tx.commit()?;
        Ok((rec, changed))
    }

    fn deployment_row(
        conn: &Connection,
        name: &str,
    ) -> Result<Option<DeploymentRecord>, StoreError> {
        let row: Option<(String, String, i64, i64, i64)> = conn
            .query_row(
                "SELECT name, spec, generation, created_ms, updated_ms FROM deployments WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        row.map(|(name, spec, g, c, u)| {
            Ok(DeploymentRecord {
                name,
                spec: serde_json::from_str(&spec)?,
                generation: ms(g),
                created_ms: ms(c),
                updated_ms: ms(u),
            })
        })
        .transpose()
    }

    pub fn get_deployment(&self, name: &str) -> Result<Option<DeploymentRecord>, StoreError> {
        Self::deployment_row(&self.lock(), name)
    }

    pub fn list_deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT name, spec, generation, created_ms, updated_ms FROM deployments ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, spec, g, c, u) = row?;
            out.push(DeploymentRecord {
                name,
                spec: serde_json::from_str(&spec)?,
                generation: ms(g),
                created_ms: ms(c),
                updated_ms: ms(u),
            });
        }
        Ok(out)
    }

    pub fn delete_deployment(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .execute("DELETE FROM deployments WHERE name = ?1", params![name])?
            == 1)
    }

    // ---- desired documents -------------------------------------------------

    /// `device -> (revision, content hash)` of every issued document.
    pub fn desired_hashes(&self) -> Result<HashMap<DeviceId, (u64, String)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT device_id, revision, content_hash FROM desired")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = HashMap::new();
        for row in rows {
            let (id, rev, hash) = row?;
            if let Ok(id) = DeviceId::new(id) {
                out.insert(id, (ms(rev), hash));
            }
        }
        Ok(out)
    }

    /// Stores one publisher pass in one transaction: the new documents, and
    /// the `DesiredTooLarge` condition on exactly the `withheld` devices.
    pub fn store_pass(
        &self,
        docs: &[NewDesired],
        withheld: &[(DeviceId, String)],
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for (id, why) in withheld {
            Self::set_condition(&tx, id.as_str(), ConditionType::DesiredTooLarge, why)?;
        }
        for id in Self::devices_with(&tx, ConditionType::DesiredTooLarge)? {
            if !withheld.iter().any(|(w, _)| w.as_str() == id) {
                Self::clear_condition(&tx, &id, ConditionType::DesiredTooLarge)?;
            }
        }
        {
            let mut stmt = tx.prepare(
                "INSERT INTO desired(device_id, revision, content_hash, workloads, envelope, issued_ms, published_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)
                 ON CONFLICT(device_id) DO UPDATE SET revision = excluded.revision,
                   content_hash = excluded.content_hash, workloads = excluded.workloads,
                   envelope = excluded.envelope, issued_ms = excluded.issued_ms, published_ms = NULL",
            )?;
            for d in docs {
                stmt.execute(params![
                    d.device_id.as_str(),
                    sql_i64(d.revision),
                    d.content_hash,
                    d.workloads_json,
                    d.envelope,
                    sql_i64(d.issued_ms)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Marks documents as handed to the broker.
    pub fn mark_published(&self, docs: &[(DeviceId, u64)]) -> Result<(), StoreError> {
        let now = sql_i64(edgefleet_protocol::now_ms());
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "UPDATE desired SET published_ms = ?3 WHERE device_id = ?1 AND revision = ?2",
            )?;
            for (id, rev) in docs {
                stmt.execute(params![id.as_str(), sql_i64(*rev), now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Signed documents to (re)publish: all, or only never-published ones.
    pub fn desired_envelopes(
        &self,
        unpublished_only: bool,
    ) -> Result<Vec<(DeviceId, u64, Vec<u8>)>, StoreError> {
        let conn = self.lock();
        let sql = if unpublished_only {
            "SELECT device_id, revision, envelope FROM desired WHERE published_ms IS NULL"
        } else {
            "SELECT device_id, revision, envelope FROM desired"
        };
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, rev, env) = row?;
            if let Ok(id) = DeviceId::new(id) {
                out.push((id, ms(rev), env));
            }
        }
        Ok(out)
    }

    /// The workloads of a device's current desired document, as JSON.
    pub fn desired_workloads(&self, id: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let w: Option<String> = self
            .lock()
            .query_row(
                "SELECT workloads FROM desired WHERE device_id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(w.map(|w| serde_json::from_str(&w)).transpose()?)
    }

    // ---- ingest -------------------------------------------------------------

    /// Applies a verified status report. Reports older than the stored one
    /// are `Stale`.
    pub fn ingest_status(tx: &Connection, r: &StatusReport) -> Result<Ingested, StoreError> {
        let last: Option<Option<i64>> = tx
            .query_row(
                "SELECT last_report_ms FROM devices WHERE id = ?1",
                params![r.device_id.as_str()],
                |row| row.get(0),
            )
            .optional()?;
        let Some(last) = last else {
            return Ok(Ingested::UnknownDevice);
        };
        if last.is_some_and(|l| ms(l) > r.reported_at_ms) {
            return Ok(Ingested::Stale);
        }
        let now = sql_i64(edgefleet_protocol::now_ms());
        tx.execute(
            "UPDATE devices SET applied_epoch = ?2, applied_revision = ?3, last_report_ms = ?4,
               report_message = ?5, k3s_version = COALESCE(?6, k3s_version), agent_version = ?7, last_seen_ms = ?8
             WHERE id = ?1",
            params![
                r.device_id.as_str(),
                r.applied.map(|v| sql_i64(v.hub_epoch)),
                r.applied.map(|v| sql_i64(v.revision)),
                sql_i64(r.reported_at_ms),
                r.message,
                r.k3s_version,
                r.agent_version,
                now
            ],
        )?;
        tx.execute(
            "DELETE FROM workload_status WHERE device_id = ?1",
            params![r.device_id.as_str()],
        )?;
        let mut stmt = tx.prepare_cached(
            "INSERT INTO workload_status(device_id, name, sync, health, message, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for w in &r.workloads {
            stmt.execute(params![
                r.device_id.as_str(),
                w.name,
                sync_str(w.sync),
                health_str(w.health),
                w.message,
                now
            ])?;
        }
        let device = r.device_id.as_str();
        if r.unstored {
            Self::set_condition(
                tx,
                device,
                ConditionType::DiskPressure,
                "the device's disk is full: its status report was sent from memory, not stored",
            )?;
        }
        match &r.desired_rejected {
            Some(rej) => {
                let what = match rej.version {
                    Some(v) => format!("desired revision {}", v.revision),
                    None => "a desired document".to_owned(),
                };
                let message = format!("{what} rejected by device: {}: {}", rej.reason, rej.message);
                Self::set_condition(tx, device, ConditionType::DesiredRejected, &message)?;
            }
            None => {
                Self::clear_condition(tx, device, ConditionType::DesiredRejected)?;
            }
        }
        Ok(Ingested::Stored)
    }

    /// Stores a verified event once per (device, id).
    pub fn ingest_event(tx: &Connection, e: &Event) -> Result<Ingested, StoreError> {
        let n = tx.prepare_cached(
            "INSERT OR IGNORE INTO events(device_id, id, kind, workload, created_ms, received_ms, payload)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM devices WHERE id = ?1)",
        )?
        .execute(params![
            e.device_id.as_str(),
            e.id,
            e.kind,
            e.workload,
            sql_i64(e.created_at_ms),
            sql_i64(edgefleet_protocol::now_ms()),
            serde_json::to_string(&e.payload)?
        ])?;
        if n == 1 {
            tx.prepare_cached("UPDATE devices SET last_seen_ms = ?2 WHERE id = ?1")?
                .execute(params![
                    e.device_id.as_str(),
                    sql_i64(edgefleet_protocol::now_ms())
                ])?;
            return Ok(Ingested::Stored);
        }
        let exists: bool = tx
            .query_row(
                "SELECT 1 FROM devices WHERE id = ?1",
                params![e.device_id.as_str()],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false);
        Ok(if exists {
            Ingested::Duplicate
        } else {
            Ingested::UnknownDevice
        })
    }

    /// Presence: `online` always wins; `offline` only for the current session.
    pub fn ingest_presence(
        tx: &Connection,
        id: &DeviceId,
        online: bool,
        session: u64,
    ) -> Result<Ingested, StoreError> {
        let now = sql_i64(edgefleet_protocol::now_ms());
        let n = if online {
            tx.execute(
                "UPDATE devices SET presence = 'online', presence_session = ?2, last_seen_ms = ?3 WHERE id = ?1",
                params![id.as_str(), session as i64, now],
            )?
        } else {
            tx.execute(
                "UPDATE devices SET presence = 'offline' WHERE id = ?1 AND (presence_session IS NULL OR presence_session = ?2)",
                params![id.as_str(), session as i64],
            )?
        };
        Ok(if n == 1 {
            Ingested::Stored
        } else {
            Ingested::Stale
        })
    }

    /// Stores a verified heartbeat, and the device's `DiskPressure`
    /// condition as it says.
    pub fn ingest_heartbeat(tx: &Connection, h: &Heartbeat) -> Result<Ingested, StoreError> {
        let id = h.device_id.as_str();
        let n = tx
            .prepare_cached("UPDATE devices SET heartbeat = ?2, last_seen_ms = ?3 WHERE id = ?1")?
            .execute(params![
                id,
                serde_json::to_string(h)?,
                sql_i64(edgefleet_protocol::now_ms())
            ])?;
        if n != 1 {
            return Ok(Ingested::UnknownDevice);
        }
        if h.disk_pressure {
            let free = h.disk_total_bytes.saturating_sub(h.disk_used_bytes);
            let message = format!(
                "{} free of {} on the agent's state filesystem, below its reserve: \
                 new events are refused or dropped",
                edgefleet_daemon::disk::human(free),
                edgefleet_daemon::disk::human(h.disk_total_bytes)
            );
            Self::set_condition(tx, id, ConditionType::DiskPressure, &message)?;
        } else {
            Self::clear_condition(tx, id, ConditionType::DiskPressure)?;
        }
        Ok(Ingested::Stored)
    }

    /// Runs `f` in one transaction (ingest batches).
    pub fn transaction<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let v = f(&tx)?;
        tx.commit()?;
        Ok(v)
    }

    // ---- status and events queries ---------------------------------------------

    pub fn workload_status(
        &self,
        device: Option<&str>,
    ) -> Result<Vec<WorkloadStatusRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT device_id, name, sync, health, message, updated_ms FROM workload_status
             WHERE ?1 IS NULL OR device_id = ?1 ORDER BY device_id, name",
        )?;
        let rows = stmt.query_map(params![device], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, sync, health, message, updated) = row?;
            if let Ok(device_id) = DeviceId::new(id) {
                out.push(WorkloadStatusRecord {
                    device_id,
                    name,
                    sync: parse_sync(&sync),
                    health: parse_health(&health),
                    message,
                    updated_ms: ms(updated),
                });
            }
        }
        Ok(out)
    }

    /// A device's events with `seq > after`, oldest first.
    pub fn events(
        &self,
        device: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT seq, id, device_id, kind, workload, created_ms, received_ms, payload FROM events
             WHERE device_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![device, after, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, String>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, id, device_id, kind, workload, c, rcv, payload) = row?;
            out.push(EventRecord {
                seq,
                id,
                device_id,
                kind,
                workload,
                created_at_ms: ms(c),
                received_at_ms: ms(rcv),
                payload: serde_json::from_str(&payload)?,
            });
        }
        Ok(out)
    }

    // ---- models -------------------------------------------------------------

    pub fn put_model(&self, m: &ModelRecord) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO models(sha256, name, size, created_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(sha256) DO UPDATE SET name = excluded.name",
            params![m.sha256, m.name, sql_i64(m.size), sql_i64(m.created_ms)],
        )?;
        Ok(())
    }

    pub fn get_model(&self, sha256: &str) -> Result<Option<ModelRecord>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT sha256, name, size, created_ms FROM models WHERE sha256 = ?1",
                params![sha256],
                |r| {
                    Ok(ModelRecord {
                        sha256: r.get(0)?,
                        name: r.get(1)?,
                        size: ms(r.get(2)?),
                        created_ms: ms(r.get(3)?),
                    })
                },
            )
            .optional()?)
    }

    pub fn list_models(&self) -> Result<Vec<ModelRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT sha256, name, size, created_ms FROM models ORDER BY name, created_ms",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ModelRecord {
                sha256: r.get(0)?,
                name: r.get(1)?,
                size: ms(r.get(2)?),
                created_ms: ms(r.get(3)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Result of [`Store::enroll_device`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollOutcome {
    New(DeviceId),
    Existing(DeviceId),
    IdTaken,
}
