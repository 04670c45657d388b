//! The hub's SQLite store: devices, deployments, per-device desired
//! documents, reported workload status, events, models.
//!
//! WAL with `synchronous=NORMAL`: a committed transaction survives a process
//! crash (SIGKILL); an OS crash may lose the last few, which devices then
//! resend (events are deduplicated by id, desired documents are recomputed).
//! Schema versions are tracked with `PRAGMA user_version` and applied as
//! ordered migrations. All calls are synchronous; async callers go through
//! [`Store::run`], which moves the work off the async runtime.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use edgefleet_daemon::sqlite::MigrateError;
use rusqlite::{Connection, params};

pub mod commands;
mod conditions;
mod deployments;
mod desired;
mod devices;
mod history;
mod keys;
mod models;
mod releases;
mod reports;
mod rollouts;
mod sources;

pub use commands::{NewCommand, Refused as CommandRefused};
pub use deployments::proposed;
pub use desired::NewDesired;
pub use devices::{DeviceAuth, DeviceFilter, EnrollOutcome, RunsGeneration};
/// The rows the store returns are the API's types: what is stored is what
/// is served.
pub use edgefleet_api::{
    AgentRelease, Condition, ConditionType, DEPLOYMENT_HISTORY, DeploymentGeneration,
    DeploymentRecord, DeviceRecord, EventRecord, ModelRecord, Presence, WorkloadStatusRecord,
};
pub use keys::{HubKeyRecord, KeySwap};
pub use releases::ReleaseConflict;
pub use reports::Ingested;
pub use rollouts::{ActiveRollouts, RolloutAction, RolloutStep};
pub use sources::{SourceApplied, SourceRefused};

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
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether SQLite failed for lack of disk space.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
        )
    }

    /// Whether SQLite found the database file damaged (or not a database).
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            StoreError::Sqlite(e) if matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            )
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
    // 3: each deployment's last generations (store/deployments.rs), for
    // rollbacks; deployments from before it keep their current one.
    r#"
    CREATE TABLE deployment_generations (
        name TEXT NOT NULL REFERENCES deployments(name) ON DELETE CASCADE,
        generation INTEGER NOT NULL,
        spec TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (name, generation)
    );
    INSERT INTO deployment_generations(name, generation, spec, created_ms)
        SELECT name, generation, spec, updated_ms FROM deployments;
    "#,
    // 4: staged rollouts (store/rollouts.rs): the engine's whole state, so
    // a hub killed mid-rollout resumes where it was.
    r#"
    CREATE TABLE rollouts (
        name TEXT PRIMARY KEY REFERENCES deployments(name) ON DELETE CASCADE,
        generation INTEGER NOT NULL,
        from_generation INTEGER,
        state TEXT NOT NULL,
        paused_by_failure INTEGER NOT NULL DEFAULT 0,
        wave INTEGER NOT NULL,
        wave_healthy_ms INTEGER,
        waves TEXT NOT NULL,
        reason TEXT,
        started_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE rollout_devices (
        name TEXT NOT NULL REFERENCES rollouts(name) ON DELETE CASCADE,
        device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        wave INTEGER NOT NULL,
        online_since_ms INTEGER,
        outcome TEXT,
        reason TEXT,
        PRIMARY KEY (name, device_id)
    );
    CREATE INDEX rollout_devices_wave ON rollout_devices(name, wave);
    CREATE TABLE rollout_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL REFERENCES deployments(name) ON DELETE CASCADE,
        at_ms INTEGER NOT NULL,
        message TEXT NOT NULL
    );
    "#,
    // 5: desired documents are sealed to each device's key from now on:
    // every document is issued again (a new revision) so that what the
    // broker keeps retained is ciphertext.
    r#"
    UPDATE desired SET content_hash = '', published_ms = NULL;
    "#,
    // 6: event retention (store/reports.rs): each device's newest events,
    // and arrival time for the age limit.
    r#"
    CREATE INDEX IF NOT EXISTS events_device_seq ON events(device_id, seq);
    CREATE INDEX IF NOT EXISTS events_received ON events(received_ms);
    "#,
    // 7: key rotation (store/keys.rs): the hub's keys, each with the
    // announcement of its successor; the hub key each device reports; a
    // device's previous key, accepted until its grace period ends.
    r#"
    CREATE TABLE hub_keys (
        kid TEXT PRIMARY KEY,
        public_key TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        next_announcement TEXT,
        rotated_ms INTEGER,
        retired_ms INTEGER,
        retired_reason TEXT
    );
    ALTER TABLE devices ADD COLUMN hub_key_id TEXT;
    ALTER TABLE devices ADD COLUMN previous_key TEXT;
    ALTER TABLE devices ADD COLUMN previous_key_until_ms INTEGER;
    "#,
    // 8: commands to devices (store/commands.rs) and where each is.
    r#"
    CREATE TABLE commands (
        device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        id TEXT NOT NULL,
        action TEXT NOT NULL,
        state TEXT NOT NULL,
        message TEXT,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        delivered_ms INTEGER,
        deliveries INTEGER NOT NULL DEFAULT 0,
        finished_ms INTEGER,
        PRIMARY KEY (device_id, id)
    );
    CREATE INDEX commands_open ON commands(state, expires_ms);
    "#,
    // 9: agent releases (store/releases.rs); the binaries are files.
    r#"
    CREATE TABLE agent_releases (
        version TEXT NOT NULL,
        arch TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (version, arch)
    );
    "#,
    // 10: Git sources (store/sources.rs), and the source (and commit) a
    // deployment came from.
    r#"
    CREATE TABLE sources (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        fetched_commit TEXT,
        applied_commit TEXT,
        applied_ms INTEGER,
        last_fetch_ms INTEGER,
        failure TEXT,
        failures INTEGER NOT NULL DEFAULT 0,
        next_fetch_ms INTEGER,
        refused_commits INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    ALTER TABLE deployments ADD COLUMN source TEXT;
    ALTER TABLE deployments ADD COLUMN source_commit TEXT;
    "#,
    // 11: each device's heartbeat history (store/history.rs): a fixed ring
    // of slots, so its size per device is bounded by the schema.
    r#"
    CREATE TABLE heartbeat_history (
        device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
        slot INTEGER NOT NULL,
        bucket INTEGER NOT NULL,
        n INTEGER NOT NULL,
        cpu REAL NOT NULL,
        mem REAL NOT NULL,
        disk REAL NOT NULL,
        temp REAL,
        PRIMARY KEY (device_id, slot)
    ) WITHOUT ROWID;
    "#,
];

pub type Labels = BTreeMap<String, String>;

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
        edgefleet_daemon::sqlite::migrate(&mut conn, MIGRATIONS).map_err(|e| match e {
            MigrateError::TooNew { found, known } => StoreError::TooNew {
                found,
                supported: known,
            },
            MigrateError::Sql(e) => StoreError::Sqlite(e),
        })?;
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
        v.parse()
            .map_err(|_| StoreError::Corrupt(format!("meta.epoch is {v:?}, not a number")))
    }

    /// Cheap liveness probe for `/readyz`.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.lock().query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::deployment;

    #[test]
    fn the_epoch_is_fixed_at_creation_and_a_corrupt_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let epoch = Store::open(dir.path()).unwrap().epoch().unwrap();
        assert!(epoch > 0);
        assert_eq!(Store::open(dir.path()).unwrap().epoch().unwrap(), epoch);
        let s = Store::open(dir.path()).unwrap();
        s.lock()
            .execute("UPDATE meta SET value = 'soon' WHERE key = 'epoch'", [])
            .unwrap();
        assert!(matches!(s.epoch(), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn an_unchanged_deployment_keeps_its_generation() {
        let s = Store::open_in_memory().unwrap();
        let (rec, changed) = s.put_deployment(&deployment("web", "a", &["app"])).unwrap();
        assert_eq!((rec.generation, changed), (1, true));
        let (rec, changed) = s.put_deployment(&deployment("web", "a", &["app"])).unwrap();
        assert_eq!((rec.generation, changed), (1, false));
        let (rec, changed) = s.put_deployment(&deployment("web", "b", &["app"])).unwrap();
        assert_eq!((rec.generation, changed), (2, true));
        assert_eq!(s.list_deployments().unwrap().len(), 1);
    }

    #[test]
    fn the_last_generations_are_kept_newest_first_and_go_with_the_deployment() {
        let s = Store::open_in_memory().unwrap();
        let sites: Vec<String> = (0..13).map(|i| format!("site-{i}")).collect();
        for site in &sites {
            s.put_deployment(&deployment("web", site, &["app"]))
                .unwrap();
            // An unchanged apply adds no generation.
            s.put_deployment(&deployment("web", site, &["app"]))
                .unwrap();
        }
        let history = s.deployment_history("web").unwrap();
        let generations: Vec<u64> = history.iter().map(|g| g.generation).collect();
        assert_eq!(generations, (4..=13).rev().collect::<Vec<u64>>());
        assert_eq!(history[0].spec, deployment("web", "site-12", &["app"]));
        assert_eq!(history[9].spec, deployment("web", "site-3", &["app"]));
        assert!(s.deployment_history("other").unwrap().is_empty());

        assert!(s.delete_deployment("web").unwrap());
        assert!(s.deployment_history("web").unwrap().is_empty());
        // Made again, it starts over at generation 1 with one entry.
        s.put_deployment(&deployment("web", "again", &["app"]))
            .unwrap();
        let history = s.deployment_history("web").unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].generation, 1);
    }

    #[test]
    fn deployments_from_before_the_history_keep_their_current_generation() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put_deployment(&deployment("web", "a", &["app"])).unwrap();
        s.put_deployment(&deployment("web", "b", &["app"])).unwrap();
        // Back to schema 2, as an older hub left it.
        {
            let conn = s.lock();
            conn.execute_batch(
                "DROP TABLE rollout_events; DROP TABLE rollout_devices; DROP TABLE rollouts;
                 DROP TABLE deployment_generations; DROP TABLE hub_keys; DROP TABLE commands;
                 DROP TABLE agent_releases; DROP TABLE sources; DROP TABLE heartbeat_history;
                 ALTER TABLE deployments DROP COLUMN source;
                 ALTER TABLE deployments DROP COLUMN source_commit;
                 ALTER TABLE devices DROP COLUMN hub_key_id;
                 ALTER TABLE devices DROP COLUMN previous_key;
                 ALTER TABLE devices DROP COLUMN previous_key_until_ms;
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        let history = s.deployment_history("web").unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(
            (history[0].generation, &history[0].spec),
            (2, &deployment("web", "b", &["app"]))
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join("cloudcore.db")).unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        drop(conn);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::TooNew { found: 999, .. })
        ));
    }
}
