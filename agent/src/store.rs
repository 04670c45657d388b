//! The agent's durable state in one SQLite file: the verified desired state,
//! the inventory of Kubernetes objects applied per workload, per-workload
//! sync/health, the outbox ([`crate::outbox`]), the model cache index and a
//! small key-value table.
//!
//! Journal: WAL, so `edge-agent status` can read while the daemon writes.
//! `synchronous` is configurable ([`Synchronous`]); the default NORMAL keeps
//! every commit across a crash of the agent (SIGKILL, OOM kill, abort) and
//! never corrupts the file, but the last commits may roll back on power loss.
//! FULL adds an fsync per commit for power-loss durability. The desired state
//! is republished retained by the broker, so it is recovered either way.
//!
//! At open, `PRAGMA integrity_check` runs; a corrupt or foreign file is moved
//! aside with a loud log line and a fresh database is created, so a bad file
//! never turns into a crash loop. Desired state is then refetched from the
//! broker's retained message.
//!
//! This module must never hold a lock across an `.await` or talk to the network.

use std::path::{Path, PathBuf};

use edgefleet_daemon::sqlite::MigrateError;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::config::Synchronous;

mod commands;
mod desired;
mod inventory;
mod models;
mod status;

pub use inventory::InventoryEntry;
pub use models::CachedModel;
pub use status::StoredStatus;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot move corrupt database {path} aside")]
    MoveAside {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SQLite error on {path} ({step})")]
    Open {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("SQLite error")]
    Sql(#[from] rusqlite::Error),
    #[error("stored document does not parse")]
    Json(#[from] serde_json::Error),
    #[error("database schema version {found} is newer than this agent knows ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether SQLite failed for lack of disk space.
    pub fn is_disk_full(&self) -> bool {
        let sql = match self {
            StoreError::Sql(e) | StoreError::Open { source: e, .. } => e,
            _ => return false,
        };
        matches!(sql.sqlite_error_code(), Some(rusqlite::ErrorCode::DiskFull))
    }
}

/// Schema migrations ([`edgefleet_daemon::sqlite::migrate`]). They only
/// add (tables, columns with defaults), never rename, drop or change the
/// meaning of one: an agent reverted after an update that migrated the
/// store opens the newer schema as it is (`Newer::Use`).
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE desired (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    hub_epoch INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    document TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL
);
CREATE TABLE inventory (
    workload TEXT NOT NULL,
    api_version TEXT NOT NULL,
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL,
    resource_version TEXT NOT NULL,
    apply_hash TEXT NOT NULL,
    PRIMARY KEY (workload, api_version, kind, namespace, name)
);
CREATE TABLE workload_status (
    name TEXT PRIMARY KEY,
    sync TEXT NOT NULL,
    health TEXT NOT NULL,
    message TEXT,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE models (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    path TEXT NOT NULL,
    complete INTEGER NOT NULL DEFAULT 0,
    last_used_ms INTEGER NOT NULL
);
CREATE TABLE kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    // 2: outbox rows carry the key the hub acknowledges them by (event id,
    // or a status report's reportedAtMs); rows are deleted on the hub's Ack.
    r#"
ALTER TABLE outbox ADD COLUMN msg_key TEXT;
CREATE INDEX outbox_by_key ON outbox (channel, msg_key);
"#,
    // 3: the fields our applies own, as the server recorded them (hash of
    // our managedFields entry), to notice drift.
    r#"
ALTER TABLE inventory ADD COLUMN fields_hash TEXT NOT NULL DEFAULT '';
"#,
    // 4: commands run, by id (store/commands.rs): each runs at most once.
    r#"
CREATE TABLE commands_run (
    id TEXT PRIMARY KEY,
    expires_at_ms INTEGER NOT NULL,
    run_at_ms INTEGER NOT NULL
);
"#,
];

/// What happened at open, for the startup log and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Where a corrupt database was moved, if one was.
    pub moved_aside: Option<PathBuf>,
}

/// The agent's SQLite store: one connection, owned by whoever holds it.
#[derive(Debug)]
pub struct Store {
    pub(crate) conn: Connection,
    pub(crate) outbox_count: u64,
    pub(crate) outbox_bytes: u64,
}

impl Store {
    /// Opens (creating if needed) the store read-write, moving a corrupt
    /// database aside.
    pub fn open(path: &Path, sync: Synchronous) -> Result<(Self, OpenReport), StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let mut report = OpenReport::default();
        let conn = match Self::open_checked(path, sync) {
            Ok(c) => c,
            Err(Corrupt::No(e)) => return Err(e),
            Err(Corrupt::Yes(why)) => {
                let aside = move_aside(path)?;
                tracing::error!(
                    db = %path.display(),
                    moved_to = %aside.display(),
                    reason = %why,
                    "STORE CORRUPT: database failed its integrity check and was moved aside; \
                     starting with an empty store, desired state will be refetched from the hub"
                );
                report.moved_aside = Some(aside);
                Self::open_checked(path, sync).map_err(|e| match e {
                    Corrupt::No(e) => e,
                    Corrupt::Yes(why) => StoreError::Open {
                        path: path.to_owned(),
                        step: "reopen after moving the corrupt file aside",
                        source: rusqlite::Error::InvalidParameterName(why),
                    },
                })?
            }
        };
        let mut store = Self {
            conn,
            outbox_count: 0,
            outbox_bytes: 0,
        };
        store.migrate()?;
        store.load_outbox_counters()?;
        Ok((store, report))
    }

    /// Opens an existing store read-only (for `edge-agent status` while the
    /// daemon runs); never migrates or repairs.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let err = |source| StoreError::Open {
            path: path.to_owned(),
            step: "open read-only",
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(2))
            .map_err(err)?;
        let mut store = Self {
            conn,
            outbox_count: 0,
            outbox_bytes: 0,
        };
        store.load_outbox_counters()?;
        Ok(store)
    }

    fn open_checked(path: &Path, sync: Synchronous) -> Result<Connection, Corrupt> {
        let classify = |step: &'static str| {
            move |e: rusqlite::Error| {
                if is_corruption(&e) {
                    Corrupt::Yes(e.to_string())
                } else {
                    Corrupt::No(StoreError::Open {
                        path: path.to_owned(),
                        step,
                        source: e,
                    })
                }
            }
        };
        let conn = Connection::open(path).map_err(classify("open"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(classify("busy_timeout"))?;
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(classify("integrity_check"))?;
        if check != "ok" {
            return Err(Corrupt::Yes(format!("integrity_check: {check}")));
        }
        // Free pages can be given back to the filesystem after the outbox
        // drains (incremental vacuum). Only for a new database: on an
        // existing one the pragma writes its header, which a full disk
        // refuses (and older stores get it from `enable_compaction`).
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(classify("page_count"))?;
        if pages == 0 {
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
                .map_err(classify("auto_vacuum"))?;
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(classify("journal_mode"))?;
        let sync = match sync {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(classify("synchronous"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(classify("foreign_keys"))?;
        Ok(conn)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        use edgefleet_daemon::sqlite::{Newer, migrate_with};
        migrate_with(&mut self.conn, MIGRATIONS, Newer::Use).map_err(|e| match e {
            MigrateError::TooNew { found, known } => StoreError::TooNew { found, known },
            MigrateError::Sql(e) => StoreError::Sql(e),
        })?;
        // Idempotent, so a crash between migration 2 and this is harmless.
        let n = self.backfill_outbox_keys()?;
        if n > 0 {
            tracing::info!(
                rows = n,
                "outbox rows from before schema 2 keyed for the hub's acknowledgements"
            );
        }
        Ok(())
    }

    /// Sizes the write-ahead log for the disk: SQLite checkpoints it every
    /// `pages` pages and truncates it back to that size after a checkpoint
    /// (its default, 1,000 pages kept for good, is a quarter of a 4 MiB card).
    pub fn size_wal(&mut self, pages: u64) -> Result<(), StoreError> {
        self.conn
            .pragma_update(None, "wal_autocheckpoint", pages as i64)?;
        self.conn
            .pragma_update(None, "journal_size_limit", (pages * 4096) as i64)?;
        Ok(())
    }

    /// Pages of the database file that hold nothing (deleted rows).
    pub fn free_pages(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Gives up to `pages` free pages back to the filesystem and truncates
    /// the WAL; returns the pages still free. Needs a little space itself
    /// (moved pages go through the WAL), so it works in small steps.
    pub fn compact(&mut self, pages: u64) -> Result<u64, StoreError> {
        let vacuum = self
            .conn
            .pragma_query_value(None, "auto_vacuum", |r| r.get::<_, i64>(0))?;
        if vacuum == 2 {
            // Runs the vacuum step; its rows are not needed.
            let mut stmt = self
                .conn
                .prepare(&format!("PRAGMA incremental_vacuum({pages})"))?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
        }
        self.checkpoint()?;
        self.free_pages()
    }

    /// Copies the WAL into the database and truncates it.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// A store created before incremental vacuum existed (schema 1 and 2)
    /// is rewritten once to get it, when `room` bytes can be spent (a
    /// VACUUM needs about twice the file). True when it was.
    pub fn enable_compaction(&mut self, room: u64) -> Result<bool, StoreError> {
        let vacuum = self
            .conn
            .pragma_query_value(None, "auto_vacuum", |r| r.get::<_, i64>(0))?;
        if vacuum == 2 {
            return Ok(false);
        }
        let (pages, size): (i64, i64) = (
            self.conn
                .pragma_query_value(None, "page_count", |r| r.get(0))?,
            self.conn
                .pragma_query_value(None, "page_size", |r| r.get(0))?,
        );
        let bytes = (pages * size) as u64;
        if bytes.saturating_mul(2) > room {
            return Ok(false);
        }
        self.conn
            .pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        self.conn.execute_batch("VACUUM")?;
        Ok(true)
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    // ---- kv ----

    pub fn kv_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn kv_set(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO kv (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}

enum Corrupt {
    Yes(String),
    No(StoreError),
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Renames the database and its WAL/SHM files to `<name>.corrupt-<ms>`.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = edgefleet_protocol::now_ms();
    let aside = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
    std::fs::rename(path, &aside).map_err(|source| StoreError::MoveAside {
        path: path.to_owned(),
        source,
    })?;
    for ext in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{ext}", path.display()));
        if side.exists() {
            let to = PathBuf::from(format!("{}{ext}", aside.display()));
            std::fs::rename(&side, &to).map_err(|source| StoreError::MoveAside {
                path: side.clone(),
                source,
            })?;
        }
    }
    Ok(aside)
}

/// A store in a temporary directory, for unit tests.
#[cfg(test)]
pub(crate) fn open_temp() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = Store::open(&dir.path().join("agent.db"), Synchronous::Normal).unwrap();
    (dir, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (Store, OpenReport) {
        Store::open(&dir.join("agent.db"), Synchronous::Normal).unwrap()
    }

    #[test]
    fn a_store_a_newer_agent_migrated_still_opens_after_a_revert() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path());
        s.kv_set("kept", "yes").unwrap();
        // What a newer agent's next migration might do: add a table and a
        // column with a default, and count itself.
        let next = MIGRATIONS.len() as i64 + 1;
        s.conn
            .execute_batch(&format!(
                "CREATE TABLE from_the_future (x INTEGER);
                 ALTER TABLE kv ADD COLUMN future INTEGER NOT NULL DEFAULT 0;
                 PRAGMA user_version = {next};"
            ))
            .unwrap();
        drop(s);
        let (mut s, _) = open(dir.path());
        assert_eq!(s.schema_version().unwrap(), next);
        assert_eq!(s.kv_get("kept").unwrap().as_deref(), Some("yes"));
        s.kv_set("after", "revert").unwrap();
        assert_eq!(s.kv_get("after").unwrap().as_deref(), Some("revert"));
    }

    #[test]
    fn kv_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path());
        s.kv_set("a", "1").unwrap();
        s.kv_set("a", "2").unwrap();
        assert_eq!(s.kv_get("a").unwrap().as_deref(), Some("2"));
        assert_eq!(s.kv_get("b").unwrap(), None);
    }

    #[test]
    fn a_drained_outbox_gives_its_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = open(dir.path());
        let size = || {
            std::fs::metadata(dir.path().join("agent.db"))
                .unwrap()
                .len()
        };
        let items: Vec<(String, Vec<u8>)> = (0..3000)
            .map(|i| (format!("e{i}"), vec![7u8; 900]))
            .collect();
        let limits = crate::outbox::Limits {
            max_messages: 1_000_000,
            max_bytes: u64::MAX,
        };
        s.outbox_push(edgefleet_protocol::Channel::Events, &items, limits)
            .unwrap();
        s.checkpoint().unwrap();
        let full = size();
        let keys: Vec<String> = items.into_iter().map(|i| i.0).collect();
        s.outbox_confirm(&keys, None, 0).unwrap();
        assert!(s.free_pages().unwrap() > 500);
        while s.compact(64).unwrap() > 0 {}
        assert!(size() < full / 10, "{} of {full} bytes left", size());
    }

    #[test]
    fn corrupt_file_is_moved_aside_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let (s, rep) = Store::open(&path, Synchronous::Normal).unwrap();
        let aside = rep.moved_aside.expect("moved aside");
        assert!(aside.exists());
        assert!(s.desired().unwrap().is_none());
        drop(s);
        // A healthy file is not touched on the next open.
        let (_, rep) = Store::open(&path, Synchronous::Full).unwrap();
        assert_eq!(rep.moved_aside, None);
    }

    #[test]
    fn damaged_pages_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.db");
        {
            let (mut s, _) = Store::open(&path, Synchronous::Full).unwrap();
            for i in 0..200 {
                s.kv_set(&format!("key-{i}"), &"x".repeat(500)).unwrap();
            }
            s.conn
                .pragma_update(None, "wal_checkpoint", "TRUNCATE")
                .unwrap();
            s.conn
                .pragma_update(None, "journal_mode", "DELETE")
                .unwrap();
        }
        // Scribble over the middle of the file (past the header).
        let mut bytes = std::fs::read(&path).unwrap();
        let len = bytes.len();
        for b in &mut bytes[len / 2..len / 2 + 4096] {
            *b = 0xff;
        }
        std::fs::write(&path, bytes).unwrap();
        let (s, rep) = Store::open(&path, Synchronous::Normal).unwrap();
        assert!(rep.moved_aside.is_some(), "corruption not detected");
        assert_eq!(s.kv_get("key-1").unwrap(), None);
    }
}
