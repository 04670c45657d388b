//! Each workload's sync state and health as last reconciled (what
//! `edge-agent status` shows).

use edgefleet_protocol::{Health, SyncState};
use rusqlite::params;

use super::{Store, StoreError};

/// Sync state and health of one workload as last reconciled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredStatus {
    pub name: String,
    pub sync: SyncState,
    pub health: Health,
    pub message: Option<String>,
    pub updated_at_ms: u64,
}

impl Store {
    /// Replaces the per-workload status table with `statuses`.
    pub fn set_statuses(&mut self, statuses: &[StoredStatus]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM workload_status", [])?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO workload_status (name, sync, health, message, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for s in statuses {
                stmt.execute(params![
                    s.name,
                    s.sync.as_str(),
                    s.health.as_str(),
                    s.message,
                    s.updated_at_ms as i64
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn statuses(&self) -> Result<Vec<StoredStatus>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, sync, health, message, updated_at_ms FROM workload_status ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            <(String, String, String, Option<String>, i64)>::try_from(r)
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (name, sync, health, message, at) = row?;
            let (sync, health) = edgefleet_protocol::status::parse_states(&sync, &health)
                .map_err(|e| StoreError::Corrupt(format!("workload_status: {e}")))?;
            out.push(StoredStatus {
                name,
                sync,
                health,
                message,
                updated_at_ms: at as u64,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open_temp;

    #[test]
    fn statuses_replace_each_other() {
        let (_dir, mut s) = open_temp();
        let st = StoredStatus {
            name: "d.web".into(),
            sync: SyncState::Failed,
            health: Health::Degraded,
            message: Some("boom".into()),
            updated_at_ms: 5,
        };
        s.set_statuses(std::slice::from_ref(&st)).unwrap();
        assert_eq!(s.statuses().unwrap(), vec![st]);
        s.set_statuses(&[]).unwrap();
        assert!(s.statuses().unwrap().is_empty());
    }
}
