//! The index of uploaded model blobs (the blobs are files in the data dir).

use rusqlite::{OptionalExtension, params};

use super::{ModelRecord, Store, StoreError, ms, sql_i64};

impl Store {
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
