//! The inventory: every Kubernetes object the agent applied, per workload,
//! with the uid, resourceVersion, apply hash and owned-fields hash it saw,
//! so restarts re-apply nothing unchanged and drift is noticed.

use rusqlite::params;

use super::{Store, StoreError};

/// One Kubernetes object the agent applied for a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryEntry {
    pub workload: String,
    pub api_version: String,
    pub kind: String,
    /// `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    pub apply_hash: String,
    /// [`crate::runtime::kube::LiveObject::owned_fields_hash`] after our
    /// last apply; empty when not known yet.
    pub fields_hash: String,
}

impl Store {
    /// Every inventory entry, ordered by workload then object.
    pub fn inventory(&self) -> Result<Vec<InventoryEntry>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT workload, api_version, kind, namespace, name, uid, resource_version, apply_hash,
                    fields_hash
             FROM inventory ORDER BY workload, api_version, kind, namespace, name",
        )?;
        let rows = stmt.query_map([], |r| {
            let ns: String = r.get(3)?;
            Ok(InventoryEntry {
                workload: r.get(0)?,
                api_version: r.get(1)?,
                kind: r.get(2)?,
                namespace: (!ns.is_empty()).then_some(ns),
                name: r.get(4)?,
                uid: r.get(5)?,
                resource_version: r.get(6)?,
                apply_hash: r.get(7)?,
                fields_hash: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn record_applied(&mut self, e: &InventoryEntry) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO inventory (workload, api_version, kind, namespace, name, uid, resource_version,
                                    apply_hash, fields_hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (workload, api_version, kind, namespace, name) DO UPDATE SET
               uid = excluded.uid, resource_version = excluded.resource_version,
               apply_hash = excluded.apply_hash, fields_hash = excluded.fields_hash",
            params![
                e.workload,
                e.api_version,
                e.kind,
                e.namespace.as_deref().unwrap_or(""),
                e.name,
                e.uid,
                e.resource_version,
                e.apply_hash,
                e.fields_hash
            ],
        )?;
        Ok(())
    }

    pub fn forget_applied(
        &mut self,
        workload: &str,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM inventory WHERE workload = ?1 AND api_version = ?2 AND kind = ?3
               AND namespace = ?4 AND name = ?5",
            params![workload, api_version, kind, namespace.unwrap_or(""), name],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open_temp;

    #[test]
    fn inventory_records_and_forgets_objects() {
        let (_dir, mut s) = open_temp();
        let mut e = InventoryEntry {
            workload: "d.web".into(),
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("ns".into()),
            name: "c".into(),
            uid: "u1".into(),
            resource_version: "1".into(),
            apply_hash: "h1".into(),
            fields_hash: "f1".into(),
        };
        s.record_applied(&e).unwrap();
        e.resource_version = "2".into();
        s.record_applied(&e).unwrap();
        let mut ns = e.clone();
        ns.kind = "Namespace".into();
        ns.namespace = None;
        s.record_applied(&ns).unwrap();
        assert_eq!(s.inventory().unwrap(), vec![e.clone(), ns.clone()]);
        s.forget_applied("d.web", "v1", "ConfigMap", Some("ns"), "c")
            .unwrap();
        assert_eq!(s.inventory().unwrap(), vec![ns]);
    }
}
