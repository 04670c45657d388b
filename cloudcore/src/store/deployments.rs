//! Deployments as operators applied them, with their generation (bumped only
//! when the spec changes) and the specs of their last generations.

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    DEPLOYMENT_HISTORY, DeploymentGeneration, DeploymentRecord, Store, StoreError, ms, sql_i64,
};

/// `d` as it would be stored at `generation`, for checking a change before
/// it is written.
pub fn proposed(d: &edgefleet_protocol::Deployment, generation: u64) -> DeploymentRecord {
    DeploymentRecord {
        name: d.metadata.name.clone(),
        generation,
        created_ms: 0,
        updated_ms: 0,
        spec: d.clone(),
        source: None,
    }
}

/// The columns [`DeploymentRow::read`] takes, in its order.
const DEPLOYMENT_COLUMNS: &str =
    "name, spec, generation, created_ms, updated_ms, source, source_commit";

/// A `deployments` row as SQLite gives it.
struct DeploymentRow {
    name: String,
    spec: String,
    generation: i64,
    created_ms: i64,
    updated_ms: i64,
    source: Option<String>,
    source_commit: Option<String>,
}

impl DeploymentRow {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            name: r.get(0)?,
            spec: r.get(1)?,
            generation: r.get(2)?,
            created_ms: r.get(3)?,
            updated_ms: r.get(4)?,
            source: r.get(5)?,
            source_commit: r.get(6)?,
        })
    }

    fn record(self) -> Result<DeploymentRecord, StoreError> {
        Ok(DeploymentRecord {
            spec: serde_json::from_str(&self.spec)?,
            name: self.name,
            generation: ms(self.generation),
            created_ms: ms(self.created_ms),
            updated_ms: ms(self.updated_ms),
            source: self.source.map(|name| edgefleet_api::SourceRef {
                name,
                commit: self.source_commit.unwrap_or_default(),
            }),
        })
    }
}

impl Store {
    /// Stores a deployment; bumps the generation only when the spec changed.
    /// Returns the record and whether anything changed.
    pub fn put_deployment(
        &self,
        d: &edgefleet_protocol::Deployment,
    ) -> Result<(DeploymentRecord, bool), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let out = Self::put_deployment_in(&tx, d, None)?;
        tx.commit()?;
        Ok(out)
    }

    /// An operator's rollback: a new generation whose spec is generation
    /// `to` (default: the one before the current), to every device at once.
    /// `Ok(Err(why))`: no such deployment or generation.
    pub fn undo_deployment(
        &self,
        name: &str,
        to: Option<u64>,
    ) -> Result<Result<DeploymentRecord, String>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let Some(current) = Self::deployment_row(&tx, name)? else {
            return Ok(Err(format!("deployment {name} not found")));
        };
        let to = match to {
            Some(g) => g,
            None => {
                let prev = Self::rollout_stable(&tx, name)?
                    .filter(|g| *g != current.generation)
                    .or(current.generation.checked_sub(1).filter(|g| *g > 0));
                let Some(g) = prev else {
                    return Ok(Err(format!(
                        "deployment {name} has only generation {}: nothing to go back to",
                        current.generation
                    )));
                };
                g
            }
        };
        let Some(old) = Self::generation_record(&tx, name, to)? else {
            return Ok(Err(format!(
                "deployment {name} has no generation {to} in its history (the last {DEPLOYMENT_HISTORY} are kept)"
            )));
        };
        if to == current.generation {
            return Ok(Err(format!(
                "deployment {name} is at generation {to} already"
            )));
        }
        let (rec, _) = Self::put_deployment_in(&tx, &old.spec, Some(to))?;
        tx.commit()?;
        Ok(Ok(rec))
    }

    pub(super) fn put_deployment_in(
        tx: &rusqlite::Transaction<'_>,
        d: &edgefleet_protocol::Deployment,
        undo_of: Option<u64>,
    ) -> Result<(DeploymentRecord, bool), StoreError> {
        let spec = serde_json::to_string(d)?;
        let now = sql_i64(edgefleet_protocol::now_ms());
        let old: Option<(String, i64)> = tx
            .query_row(
                "SELECT spec, generation FROM deployments WHERE name = ?1",
                params![d.metadata.name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let changed = match &old {
            Some((s, _)) => *s != spec || undo_of.is_some(),
            None => true,
        };
        if changed {
            tx.execute(
                "INSERT INTO deployments(name, spec, generation, created_ms, updated_ms) VALUES (?1, ?2, 1, ?3, ?3)
                 ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, generation = generation + 1, updated_ms = excluded.updated_ms",
                params![d.metadata.name, spec, now],
            )?;
        }
        let rec = Self::deployment_row(tx, &d.metadata.name)?
            .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        if changed {
            let generation = sql_i64(rec.generation);
            tx.execute(
                "INSERT OR REPLACE INTO deployment_generations(name, generation, spec, created_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![rec.name, generation, spec, now],
            )?;
            // The last good generation of a rollout stays: devices may be
            // sent back to it.
            Self::begin_rollout(tx, &rec, undo_of)?;
            tx.execute(
                "DELETE FROM deployment_generations WHERE name = ?1 AND generation <= ?2
                   AND generation NOT IN (SELECT from_generation FROM rollouts
                                          WHERE name = ?1 AND from_generation IS NOT NULL)",
                params![rec.name, generation - sql_i64(DEPLOYMENT_HISTORY)],
            )?;
        }
        Ok((rec, changed))
    }

    pub(super) fn deployment_row(
        conn: &Connection,
        name: &str,
    ) -> Result<Option<DeploymentRecord>, StoreError> {
        conn.query_row(
            &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE name = ?1"),
            params![name],
            DeploymentRow::read,
        )
        .optional()?
        .map(DeploymentRow::record)
        .transpose()
    }

    pub fn get_deployment(&self, name: &str) -> Result<Option<DeploymentRecord>, StoreError> {
        Self::deployment_row(&self.lock(), name)
    }

    pub fn list_deployments(&self) -> Result<Vec<DeploymentRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments ORDER BY name"
        ))?;
        let rows = stmt.query_map([], DeploymentRow::read)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?.record()?);
        }
        Ok(out)
    }

    /// The generations kept for `name`, newest first (empty when there is
    /// no such deployment).
    pub fn deployment_history(&self, name: &str) -> Result<Vec<DeploymentGeneration>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT generation, created_ms, spec FROM deployment_generations
             WHERE name = ?1 ORDER BY generation DESC",
        )?;
        let rows = stmt.query_map(params![name], |r| <(i64, i64, String)>::try_from(r))?;
        let mut out = Vec::new();
        for row in rows {
            let (g, c, spec) = row?;
            out.push(DeploymentGeneration {
                generation: ms(g),
                created_ms: ms(c),
                spec: serde_json::from_str(&spec)?,
            });
        }
        Ok(out)
    }

    /// Deletes a deployment and its history.
    pub fn delete_deployment(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .execute("DELETE FROM deployments WHERE name = ?1", params![name])?
            == 1)
    }
}
