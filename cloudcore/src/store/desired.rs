//! Each device's current desired document: its revision, content hash,
//! workloads and signed envelope, and whether it was handed to the broker.

use std::collections::HashMap;

use edgefleet_protocol::DeviceId;
use rusqlite::{OptionalExtension, params};

use super::{ConditionType, Store, StoreError, ms, sql_i64};

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

impl Store {
    /// `device -> (revision, content hash)` of every issued document.
    pub fn desired_hashes(&self) -> Result<HashMap<DeviceId, (u64, String)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT device_id, revision, content_hash FROM desired")?;
        let rows = stmt.query_map([], |r| <(String, i64, String)>::try_from(r))?;
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
        let rows = stmt.query_map([], |r| <(String, i64, Vec<u8>)>::try_from(r))?;
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
}

#[cfg(test)]
mod tests {
    use crate::publisher::compute_pass;
    use crate::testing::{deployment, enroll, id, store};
    use edgefleet_protocol::Signer;

    #[test]
    fn unpublished_documents_are_kept_until_marked() {
        let (s, hub) = (store(), Signer::generate());
        for d in ["pi-1", "pi-2"] {
            enroll(&s, d, &[("site", "a")]);
        }
        s.put_deployment(&deployment("web", "a", &["app"])).unwrap();
        let pass = compute_pass(&s, &hub, s.epoch().unwrap(), true).unwrap();
        assert_eq!(s.desired_envelopes(true).unwrap().len(), 2);
        // Only pi-1's was handed to the broker before a crash.
        s.mark_published(&[(id("pi-1"), 1)]).unwrap();
        let left = s.desired_envelopes(true).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, id("pi-2"));
        assert_eq!(left[0].2, pass.docs[1].2, "the same signed bytes");
        // A stale mark (an older revision) does not count.
        s.put_deployment(&deployment("web", "a", &["app", "b"]))
            .unwrap();
        compute_pass(&s, &hub, s.epoch().unwrap(), true).unwrap();
        s.mark_published(&[(id("pi-1"), 1)]).unwrap();
        assert_eq!(s.desired_envelopes(true).unwrap().len(), 2);
        assert_eq!(s.desired_envelopes(false).unwrap().len(), 2);
        let w = s.desired_workloads("pi-1").unwrap().unwrap();
        assert_eq!(w.as_array().unwrap().len(), 2);
    }
}
