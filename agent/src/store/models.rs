//! The index of the model cache (`crate::inference::model_cache`): which
//! verified model files are on disk, and when each was last used.

use std::path::PathBuf;

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};

/// A row of the model cache index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedModel {
    pub sha256: String,
    pub name: String,
    pub size_bytes: u64,
    pub path: PathBuf,
    pub complete: bool,
    pub last_used_ms: u64,
}

impl CachedModel {
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            sha256: r.get(0)?,
            name: r.get(1)?,
            size_bytes: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            path: PathBuf::from(r.get::<_, String>(3)?),
            complete: r.get(4)?,
            last_used_ms: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
        })
    }
}

impl Store {
    /// The cached model with this hash, complete or not.
    pub fn model_get(&self, sha256: &str) -> Result<Option<CachedModel>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT sha256, name, size_bytes, path, complete, last_used_ms
                 FROM models WHERE sha256 = ?1",
                [sha256],
                CachedModel::from_row,
            )
            .optional()?)
    }

    /// Records a verified, complete model file.
    pub fn model_put(&mut self, m: &CachedModel) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO models (sha256, name, size_bytes, path, complete, last_used_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (sha256) DO UPDATE SET name = excluded.name,
               size_bytes = excluded.size_bytes, path = excluded.path,
               complete = excluded.complete, last_used_ms = excluded.last_used_ms",
            params![
                m.sha256,
                m.name,
                i64::try_from(m.size_bytes).unwrap_or(i64::MAX),
                m.path.to_string_lossy(),
                m.complete,
                i64::try_from(m.last_used_ms).unwrap_or(i64::MAX),
            ],
        )?;
        Ok(())
    }

    pub fn model_touch(&mut self, sha256: &str, now_ms: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE models SET last_used_ms = ?2 WHERE sha256 = ?1",
            params![sha256, i64::try_from(now_ms).unwrap_or(i64::MAX)],
        )?;
        Ok(())
    }

    pub fn model_delete(&mut self, sha256: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM models WHERE sha256 = ?1", [sha256])?;
        Ok(())
    }

    /// Every cached model, least recently used first.
    pub fn models_lru(&self) -> Result<Vec<CachedModel>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT sha256, name, size_bytes, path, complete, last_used_ms
             FROM models ORDER BY last_used_ms ASC, sha256 ASC",
        )?;
        let rows = stmt.query_map([], CachedModel::from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}
