//! Device conditions: what the hub knows is wrong with a device, one row per
//! device and type, kept until the cause goes away. `since_ms` is when the
//! condition first appeared; a new message for a standing condition keeps it.
//!
//! - `DesiredTooLarge`: the publisher did not issue the device's document,
//!   which a device would refuse (too many workloads, too many bytes).
//! - `DesiredRejected`: the device reported that it refused a document.
//! - `DiskPressure`: the device reported its disk below its reserve.
//! - `UpdateFailed`: the device reported that an agent release failed its
//!   trial and was reverted.

use std::collections::HashMap;

use edgefleet_protocol::DeviceId;
use rusqlite::{Connection, params};

use super::{Condition, ConditionType, Store, StoreError, ms, sql_i64};

impl Store {
    /// Records `kind` on `device` (keeping `since_ms` if it stands already).
    pub fn set_condition(
        conn: &Connection,
        device: &str,
        kind: ConditionType,
        message: &str,
    ) -> Result<(), StoreError> {
        let now = sql_i64(edgefleet_protocol::now_ms());
        conn.prepare_cached(
            "INSERT INTO device_conditions(device_id, type, message, since_ms, updated_ms)
             SELECT ?1, ?2, ?3, ?4, ?4 WHERE EXISTS (SELECT 1 FROM devices WHERE id = ?1)
             ON CONFLICT(device_id, type) DO UPDATE SET message = excluded.message, updated_ms = excluded.updated_ms",
        )?
        .execute(params![device, kind.as_str(), message, now])?;
        Ok(())
    }

    /// Clears `kind` on `device`; true if it stood.
    pub fn clear_condition(
        conn: &Connection,
        device: &str,
        kind: ConditionType,
    ) -> Result<bool, StoreError> {
        Ok(conn
            .prepare_cached("DELETE FROM device_conditions WHERE device_id = ?1 AND type = ?2")?
            .execute(params![device, kind.as_str()])?
            == 1)
    }

    /// Devices on which `kind` stands.
    pub fn devices_with(conn: &Connection, kind: ConditionType) -> Result<Vec<String>, StoreError> {
        let mut stmt =
            conn.prepare_cached("SELECT device_id FROM device_conditions WHERE type = ?1")?;
        let rows = stmt.query_map([kind.as_str()], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every standing condition, by device (`None`: all devices).
    pub fn conditions(
        &self,
        device: Option<&str>,
    ) -> Result<HashMap<DeviceId, Vec<Condition>>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT device_id, type, message, since_ms, updated_ms FROM device_conditions
             WHERE ?1 IS NULL OR device_id = ?1 ORDER BY device_id, type",
        )?;
        let rows = stmt.query_map(params![device], |r| {
            <(String, String, String, i64, i64)>::try_from(r)
        })?;
        let mut out: HashMap<DeviceId, Vec<Condition>> = HashMap::new();
        for row in rows {
            let (id, kind, message, since, updated) = row?;
            let (Ok(id), Some(kind)) = (DeviceId::new(id), ConditionType::parse(&kind)) else {
                continue;
            };
            out.entry(id).or_default().push(Condition {
                kind,
                message,
                since_ms: ms(since),
                updated_ms: ms(updated),
            });
        }
        Ok(out)
    }

    /// How many devices each condition stands on (every type, zeros too).
    pub fn condition_counts(&self) -> Result<Vec<(ConditionType, u64)>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare_cached("SELECT COUNT(*) FROM device_conditions WHERE type = ?1")?;
        let mut out = Vec::new();
        for kind in ConditionType::ALL {
            let n: i64 = stmt.query_row([kind.as_str()], |r| r.get(0))?;
            out.push((kind, ms(n)));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_are_set_kept_and_cleared_per_device() {
        let s = Store::open_in_memory().unwrap();
        let id = DeviceId::new("pi-1").unwrap();
        s.enroll_device(
            None,
            &id,
            "key-1",
            &Default::default(),
            &[0; 32],
            (&None, "aarch64", "test"),
        )
        .unwrap();
        s.transaction(|tx| {
            Store::set_condition(tx, "pi-1", ConditionType::DiskPressure, "free 1 KiB")?;
            // Unknown devices get no rows.
            Store::set_condition(tx, "pi-9", ConditionType::DiskPressure, "x")
        })
        .unwrap();
        let first = s.conditions(Some("pi-1")).unwrap()[&id][0].clone();
        assert_eq!(first.kind, ConditionType::DiskPressure);
        s.transaction(|tx| {
            Store::set_condition(tx, "pi-1", ConditionType::DiskPressure, "free 2 KiB")
        })
        .unwrap();
        let again = s.conditions(None).unwrap()[&id][0].clone();
        assert_eq!(again.message, "free 2 KiB");
        assert_eq!(
            again.since_ms, first.since_ms,
            "a standing condition keeps since"
        );
        let counts = s.condition_counts().unwrap();
        assert!(counts.contains(&(ConditionType::DiskPressure, 1)));
        assert!(counts.contains(&(ConditionType::DesiredTooLarge, 0)));
        let cleared = s
            .transaction(|tx| Store::clear_condition(tx, "pi-1", ConditionType::DiskPressure))
            .unwrap();
        assert!(cleared);
        assert!(s.conditions(None).unwrap().is_empty());
    }
}
