//! The verified desired state, one row: what the device runs, from SQLite
//! alone after an offline reboot.

use edgefleet_protocol::{DesiredState, Version};
use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};

impl Store {
    /// Version of the stored desired state, if any.
    pub fn desired_version(&self) -> Result<Option<Version>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT hub_epoch, revision FROM desired WHERE id = 1",
                [],
                |r| {
                    Ok(Version {
                        hub_epoch: r.get::<_, i64>(0)? as u64,
                        revision: r.get::<_, i64>(1)? as u64,
                    })
                },
            )
            .optional()?)
    }

    /// The stored desired state, if any.
    pub fn desired(&self) -> Result<Option<DesiredState>, StoreError> {
        let doc: Option<String> = self
            .conn
            .query_row("SELECT document FROM desired WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(doc.map(|d| serde_json::from_str(&d)).transpose()?)
    }

    /// When the stored desired state was received.
    pub fn desired_received_at_ms(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT received_at_ms FROM desired WHERE id = 1", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .map(|v| v as u64))
    }

    /// Replaces the desired state in one transaction. The caller has
    /// verified `doc` (signature, device, strictly newer version).
    pub fn replace_desired(&mut self, doc: &DesiredState) -> Result<(), StoreError> {
        let json = serde_json::to_string(doc)?;
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO desired (id, hub_epoch, revision, document, received_at_ms)
             VALUES (1, ?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET hub_epoch = excluded.hub_epoch,
               revision = excluded.revision, document = excluded.document,
               received_at_ms = excluded.received_at_ms",
            params![
                doc.hub_epoch as i64,
                doc.revision as i64,
                json,
                edgefleet_protocol::now_ms() as i64
            ],
        )?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Synchronous;

    pub(crate) fn desired(rev: u64) -> DesiredState {
        serde_json::from_value(serde_json::json!({
            "deviceId": "pi-1", "revision": rev, "hubEpoch": 7, "issuedAtMs": 1,
            "workloads": [{"deployment": "d", "generation": 1, "name": "d.web",
              "kubernetes": {"manifests": [{"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "ns"}}]}}]
        }))
        .unwrap()
    }

    #[test]
    fn desired_state_round_trips_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, rep) = Store::open(&dir.path().join("agent.db"), Synchronous::Normal).unwrap();
        assert_eq!(rep, super::super::OpenReport::default());
        assert!(s.schema_version().unwrap() >= 3);
        assert!(s.desired().unwrap().is_none());
        s.replace_desired(&desired(3)).unwrap();
        drop(s);
        let (s, _) = Store::open(&dir.path().join("agent.db"), Synchronous::Normal).unwrap();
        assert_eq!(s.desired().unwrap().unwrap(), desired(3));
        assert_eq!(
            s.desired_version().unwrap(),
            Some(Version {
                hub_epoch: 7,
                revision: 3
            })
        );
        let ro = Store::open_read_only(&dir.path().join("agent.db")).unwrap();
        assert_eq!(ro.desired().unwrap().unwrap().revision, 3);
    }
}
