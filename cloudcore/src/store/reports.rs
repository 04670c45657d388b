//! What devices report: status (applied revision, per-workload sync and
//! health), events (stored once per id), presence and heartbeats, applied in
//! ingest's batches; and the queries that read them back.

use edgefleet_protocol::{DeviceId, Event, Heartbeat, StatusReport};
use rusqlite::{Connection, OptionalExtension, params};

use super::{ConditionType, EventRecord, Store, StoreError, WorkloadStatusRecord, ms, sql_i64};

/// Outcome of applying one device message to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    Stored,
    Duplicate,
    Stale,
    UnknownDevice,
}

impl Store {
    /// Applies a verified status report. Reports older than the stored one
    /// are `Stale`.
    pub fn ingest_status(tx: &Connection, r: &StatusReport) -> Result<Ingested, StoreError> {
        let last: Option<Option<i64>> = tx
            .query_row(
                "SELECT last_report_ms FROM devices WHERE id = ?1",
                params![r.device_id.as_str()],
                |row| row.get(0),
            )
            .optional()?;
        let Some(last) = last else {
            return Ok(Ingested::UnknownDevice);
        };
        if last.is_some_and(|l| ms(l) > r.reported_at_ms) {
            return Ok(Ingested::Stale);
        }
        let now = sql_i64(edgefleet_protocol::now_ms());
        tx.execute(
            "UPDATE devices SET applied_epoch = ?2, applied_revision = ?3, last_report_ms = ?4,
               report_message = ?5, k3s_version = COALESCE(?6, k3s_version), agent_version = ?7, last_seen_ms = ?8,
               hub_key_id = COALESCE(?9, hub_key_id)
             WHERE id = ?1",
            params![
                r.device_id.as_str(),
                r.applied.map(|v| sql_i64(v.hub_epoch)),
                r.applied.map(|v| sql_i64(v.revision)),
                sql_i64(r.reported_at_ms),
                r.message,
                r.k3s_version,
                r.agent_version,
                now,
                r.hub_key_id
            ],
        )?;
        tx.execute(
            "DELETE FROM workload_status WHERE device_id = ?1",
            params![r.device_id.as_str()],
        )?;
        let mut stmt = tx.prepare_cached(
            "INSERT INTO workload_status(device_id, name, sync, health, message, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for w in &r.workloads {
            stmt.execute(params![
                r.device_id.as_str(),
                w.name,
                w.sync.as_str(),
                w.health.as_str(),
                w.message,
                now
            ])?;
        }
        let device = r.device_id.as_str();
        if r.unstored {
            Self::set_condition(
                tx,
                device,
                ConditionType::DiskPressure,
                "the device's disk is full: its status report was sent from memory, not stored",
            )?;
        }
        match &r.desired_rejected {
            Some(rej) => {
                let what = match rej.version {
                    Some(v) => format!("desired revision {}", v.revision),
                    None => "a desired document".to_owned(),
                };
                let message = format!("{what} rejected by device: {}: {}", rej.reason, rej.message);
                Self::set_condition(tx, device, ConditionType::DesiredRejected, &message)?;
            }
            None => {
                Self::clear_condition(tx, device, ConditionType::DesiredRejected)?;
            }
        }
        match &r.update_failed {
            Some(u) => {
                let message = format!("agent {} reverted: {}", u.version, u.reason);
                Self::set_condition(tx, device, ConditionType::UpdateFailed, &message)?;
            }
            None => {
                Self::clear_condition(tx, device, ConditionType::UpdateFailed)?;
            }
        }
        Ok(Ingested::Stored)
    }

    /// Stores a verified event once per (device, id).
    pub fn ingest_event(tx: &Connection, e: &Event) -> Result<Ingested, StoreError> {
        let n = tx.prepare_cached(
            "INSERT OR IGNORE INTO events(device_id, id, kind, workload, created_ms, received_ms, payload)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM devices WHERE id = ?1)",
        )?
        .execute(params![
            e.device_id.as_str(),
            e.id,
            e.kind,
            e.workload,
            sql_i64(e.created_at_ms),
            sql_i64(edgefleet_protocol::now_ms()),
            serde_json::to_string(&e.payload)?
        ])?;
        if n == 1 {
            tx.prepare_cached("UPDATE devices SET last_seen_ms = ?2 WHERE id = ?1")?
                .execute(params![
                    e.device_id.as_str(),
                    sql_i64(edgefleet_protocol::now_ms())
                ])?;
            return Ok(Ingested::Stored);
        }
        let exists: bool = tx
            .query_row(
                "SELECT 1 FROM devices WHERE id = ?1",
                params![e.device_id.as_str()],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false);
        Ok(if exists {
            Ingested::Duplicate
        } else {
            Ingested::UnknownDevice
        })
    }

    /// Removes `device`'s events beyond its newest `keep`; returns how many.
    pub fn trim_events(tx: &Connection, device: &DeviceId, keep: u64) -> Result<u64, StoreError> {
        let n = tx
            .prepare_cached(
                "DELETE FROM events WHERE device_id = ?1 AND seq <= (
                   SELECT seq FROM events WHERE device_id = ?1
                   ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            )?
            .execute(params![device.as_str(), sql_i64(keep)])?;
        Ok(n as u64)
    }

    /// Removes events that arrived before `cutoff_ms`, at most `limit` at a
    /// time (the caller repeats while it gets `limit`): one long delete
    /// would hold the store's lock against ingest. Returns how many.
    pub fn prune_events_before(&self, cutoff_ms: u64, limit: u64) -> Result<u64, StoreError> {
        let conn = self.lock();
        let n = conn
            .prepare_cached(
                "DELETE FROM events WHERE seq IN (
                   SELECT seq FROM events WHERE received_ms < ?1 LIMIT ?2)",
            )?
            .execute(params![sql_i64(cutoff_ms), sql_i64(limit)])?;
        Ok(n as u64)
    }

    /// Presence: `online` always wins; `offline` only for the current session.
    pub fn ingest_presence(
        tx: &Connection,
        id: &DeviceId,
        online: bool,
        session: u64,
    ) -> Result<Ingested, StoreError> {
        let now = sql_i64(edgefleet_protocol::now_ms());
        let n = if online {
            tx.execute(
                "UPDATE devices SET presence = 'online', presence_session = ?2, last_seen_ms = ?3 WHERE id = ?1",
                params![id.as_str(), session as i64, now],
            )?
        } else {
            tx.execute(
                "UPDATE devices SET presence = 'offline' WHERE id = ?1 AND (presence_session IS NULL OR presence_session = ?2)",
                params![id.as_str(), session as i64],
            )?
        };
        Ok(if n == 1 {
            Ingested::Stored
        } else {
            Ingested::Stale
        })
    }

    /// Stores a verified heartbeat, and the device's `DiskPressure`
    /// condition as it says.
    pub fn ingest_heartbeat(tx: &Connection, h: &Heartbeat) -> Result<Ingested, StoreError> {
        let id = h.device_id.as_str();
        let now = edgefleet_protocol::now_ms();
        let n = tx
            .prepare_cached("UPDATE devices SET heartbeat = ?2, last_seen_ms = ?3 WHERE id = ?1")?
            .execute(params![id, serde_json::to_string(h)?, sql_i64(now)])?;
        if n != 1 {
            return Ok(Ingested::UnknownDevice);
        }
        Self::record_heartbeat(tx, h, now)?;
        if h.disk_pressure {
            let free = h.disk_total_bytes.saturating_sub(h.disk_used_bytes);
            let message = format!(
                "{} free of {} on the agent's state filesystem, below its reserve: \
                 new events are refused or dropped",
                edgefleet_daemon::disk::human(free),
                edgefleet_daemon::disk::human(h.disk_total_bytes)
            );
            Self::set_condition(tx, id, ConditionType::DiskPressure, &message)?;
        } else {
            Self::clear_condition(tx, id, ConditionType::DiskPressure)?;
        }
        Ok(Ingested::Stored)
    }

    pub fn workload_status(
        &self,
        device: Option<&str>,
    ) -> Result<Vec<WorkloadStatusRecord>, StoreError> {
        self.workload_rows(
            "WHERE ?1 IS NULL OR device_id = ?1 ORDER BY device_id, name",
            params![device],
        )
    }

    /// The newest `limit` workload reports that failed to apply, were
    /// rolled back or are Degraded, newest first.
    pub fn recent_failures(&self, limit: usize) -> Result<Vec<WorkloadStatusRecord>, StoreError> {
        self.workload_rows(
            "WHERE sync IN ('Failed', 'RolledBack') OR health = 'Degraded'
             ORDER BY updated_ms DESC LIMIT ?1",
            params![limit as i64],
        )
    }

    fn workload_rows(
        &self,
        rest: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<WorkloadStatusRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT device_id, name, sync, health, message, updated_ms FROM workload_status {rest}"
        ))?;
        let rows = stmt.query_map(args, |r| {
            <(String, String, String, String, Option<String>, i64)>::try_from(r)
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, sync, health, message, updated) = row?;
            let device_id = DeviceId::new(id)
                .map_err(|e| StoreError::Corrupt(format!("workload_status.device_id: {e}")))?;
            let (sync, health) = edgefleet_protocol::status::parse_states(&sync, &health)
                .map_err(|e| StoreError::Corrupt(format!("workload_status: {e}")))?;
            out.push(WorkloadStatusRecord {
                device_id,
                name,
                sync,
                health,
                message,
                updated_ms: ms(updated),
            });
        }
        Ok(out)
    }

    /// A device's events with `seq > after`, oldest first.
    pub fn events(
        &self,
        device: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.event_rows(
            "WHERE device_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            params![device, after, limit as i64],
        )
    }

    /// The newest `limit` events of `device` (of the fleet: `None`),
    /// newest first.
    pub fn recent_events(
        &self,
        device: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        match device {
            Some(d) => self.event_rows(
                "WHERE device_id = ?1 ORDER BY seq DESC LIMIT ?2",
                params![d, limit as i64],
            ),
            None => self.event_rows("ORDER BY seq DESC LIMIT ?1", params![limit as i64]),
        }
    }

    fn event_rows(
        &self,
        rest: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT seq, id, device_id, kind, workload, created_ms, received_ms, payload FROM events {rest}"
        ))?;
        let rows = stmt.query_map(args, |r| {
            <(
                i64,
                String,
                String,
                String,
                Option<String>,
                i64,
                i64,
                String,
            )>::try_from(r)
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, id, device_id, kind, workload, c, rcv, payload) = row?;
            out.push(EventRecord {
                seq,
                id,
                device_id,
                kind,
                workload,
                created_at_ms: ms(c),
                received_at_ms: ms(rcv),
                payload: serde_json::from_str(&payload)?,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{enroll, id, store};

    fn event(device: &str, n: u32) -> Event {
        Event {
            id: format!("e{n}"),
            device_id: id(device),
            kind: "app.telemetry".into(),
            workload: Some("web.app".into()),
            created_at_ms: u64::from(n),
            payload: serde_json::json!({"n": n}),
        }
    }

    #[test]
    fn events_page_by_sequence_per_device() {
        let s = store();
        enroll(&s, "pi-1", &[]);
        enroll(&s, "pi-2", &[]);
        s.transaction(|tx| {
            for n in 0..5 {
                assert_eq!(
                    Store::ingest_event(tx, &event("pi-1", n))?,
                    Ingested::Stored
                );
            }
            assert_eq!(
                Store::ingest_event(tx, &event("pi-2", 0))?,
                Ingested::Stored
            );
            assert_eq!(
                Store::ingest_event(tx, &event("pi-1", 0))?,
                Ingested::Duplicate
            );
            assert_eq!(
                Store::ingest_event(tx, &event("pi-9", 0))?,
                Ingested::UnknownDevice
            );
            Ok(())
        })
        .unwrap();
        let first = s.events("pi-1", 0, 3).unwrap();
        assert_eq!(first.len(), 3);
        let rest = s.events("pi-1", first[2].seq, 10).unwrap();
        let ids: Vec<_> = rest.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["e3", "e4"]);
        assert_eq!(rest[0].payload["n"], 3);
        assert_eq!(s.events("pi-2", 0, 10).unwrap().len(), 1);
    }

    #[test]
    fn a_refused_document_is_a_condition_until_a_report_without_it() {
        let s = store();
        enroll(&s, "pi-1", &[]);
        let report = |at, rejected: bool| StatusReport {
            device_id: id("pi-1"),
            applied: None,
            reported_at_ms: at,
            workloads: Vec::new(),
            message: None,
            agent_version: "test".into(),
            k3s_version: Some("v1.37.2".into()),
            desired_rejected: rejected.then(|| edgefleet_protocol::DesiredRejection {
                version: Some(edgefleet_protocol::Version {
                    hub_epoch: 1,
                    revision: 4,
                }),
                reason: "too_large".into(),
                message: "65 workloads".into(),
                at_ms: 9,
            }),
            update_failed: None,
            unstored: false,
            hub_key_id: None,
        };
        s.transaction(|tx| Store::ingest_status(tx, &report(10, true)))
            .unwrap();
        let dev = s.get_device("pi-1").unwrap().unwrap();
        assert_eq!(dev.conditions[0].kind, ConditionType::DesiredRejected);
        assert!(dev.conditions[0].message.contains("desired revision 4"));
        assert_eq!(dev.k3s_version.as_deref(), Some("v1.37.2"));
        s.transaction(|tx| Store::ingest_status(tx, &report(11, false)))
            .unwrap();
        assert!(s.get_device("pi-1").unwrap().unwrap().conditions.is_empty());
    }
}
