//! Each device's heartbeat history for the dashboard's charts: one point per
//! [`INTERVAL_MS`] over the last [`SLOTS`] intervals (24 hours), each the
//! average of the heartbeats the hub received in it.
//!
//! The table is a ring: a point's slot is its interval number modulo
//! [`SLOTS`] and the primary key is `(device, slot)`, so a device never has
//! more than [`SLOTS`] rows whatever it sends. Intervals are the hub's
//! receive time, not the device's clock (a device cannot spread its points
//! over more slots by lying about the time). Cost: 10.7 KiB a device on disk
//! for a full day (105 MiB at 10,000 devices; `fleet-sim ui` measures it,
//! BENCHMARKS.md); nothing is held in memory beyond SQLite's page cache.

use edgefleet_api::{HeartbeatHistory, HistoryPoint};
use edgefleet_protocol::Heartbeat;
use rusqlite::{Connection, params};

use super::{Store, StoreError, ms, sql_i64};

/// One point's interval: five minutes.
pub const INTERVAL_MS: u64 = 5 * 60 * 1000;
/// Points kept per device: 24 hours.
pub const SLOTS: u64 = 24 * 60 * 60 * 1000 / INTERVAL_MS;

fn percent(used: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (used as f64 / total as f64 * 100.0).clamp(0.0, 100.0)
    }
}

impl Store {
    /// Adds heartbeat `h`, received at `now_ms`, to its device's current
    /// interval (a running average). A new interval replaces whatever its
    /// slot held a day ago.
    pub fn record_heartbeat(tx: &Connection, h: &Heartbeat, now_ms: u64) -> Result<(), StoreError> {
        let bucket = now_ms / INTERVAL_MS;
        let cpu = f64::from(h.cpu_percent).clamp(0.0, 100.0);
        let cpu = if cpu.is_finite() { cpu } else { 0.0 };
        let temp = h
            .temperature_c
            .map(f64::from)
            .filter(|t| t.is_finite() && (-100.0..=200.0).contains(t));
        tx.prepare_cached(
            "INSERT INTO heartbeat_history(device_id, slot, bucket, n, cpu, mem, disk, temp)
             VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7)
             ON CONFLICT(device_id, slot) DO UPDATE SET
               cpu = CASE WHEN bucket = excluded.bucket THEN (cpu * n + excluded.cpu) / (n + 1) ELSE excluded.cpu END,
               mem = CASE WHEN bucket = excluded.bucket THEN (mem * n + excluded.mem) / (n + 1) ELSE excluded.mem END,
               disk = CASE WHEN bucket = excluded.bucket THEN (disk * n + excluded.disk) / (n + 1) ELSE excluded.disk END,
               temp = CASE WHEN bucket = excluded.bucket AND temp IS NOT NULL AND excluded.temp IS NOT NULL
                           THEN (temp * n + excluded.temp) / (n + 1) ELSE excluded.temp END,
               n = CASE WHEN bucket = excluded.bucket THEN n + 1 ELSE 1 END,
               bucket = excluded.bucket",
        )?
        .execute(params![
            h.device_id.as_str(),
            sql_i64(bucket % SLOTS),
            sql_i64(bucket),
            cpu,
            percent(h.mem_used_bytes, h.mem_total_bytes),
            percent(h.disk_used_bytes, h.disk_total_bytes),
            temp,
        ])?;
        Ok(())
    }

    /// Device `id`'s points of the last 24 hours before `now_ms`.
    pub fn heartbeat_history(&self, id: &str, now_ms: u64) -> Result<HeartbeatHistory, StoreError> {
        let oldest = (now_ms / INTERVAL_MS).saturating_sub(SLOTS - 1);
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT bucket, n, cpu, mem, disk, temp FROM heartbeat_history
             WHERE device_id = ?1 AND bucket >= ?2 ORDER BY bucket",
        )?;
        let points = stmt
            .query_map(params![id, sql_i64(oldest)], |r| {
                Ok(HistoryPoint {
                    at_ms: ms(r.get(0)?).saturating_mul(INTERVAL_MS),
                    samples: u32::try_from(r.get::<_, i64>(1)?).unwrap_or(u32::MAX),
                    cpu_percent: r.get(2)?,
                    mem_percent: r.get(3)?,
                    disk_percent: r.get(4)?,
                    temperature_c: r.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(HeartbeatHistory {
            device_id: id.to_owned(),
            interval_secs: INTERVAL_MS / 1000,
            points,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{enroll, store};

    fn beat(id: &str, cpu: f32, temp: Option<f32>) -> Heartbeat {
        Heartbeat {
            device_id: edgefleet_protocol::DeviceId::new(id).unwrap(),
            at_ms: 0,
            uptime_s: 1,
            cpu_percent: cpu,
            mem_used_bytes: 1,
            mem_total_bytes: 4,
            disk_used_bytes: 1,
            disk_total_bytes: 2,
            disk_pressure: false,
            temperature_c: temp,
            agent_rss_bytes: 1,
            agent_version: "1".into(),
            k3s_version: None,
            outbox_depth: 0,
            outbox_dropped: 0,
        }
    }

    #[test]
    fn points_average_within_an_interval_and_a_day_of_them_is_all_a_device_keeps() {
        let store = store();
        enroll(&store, "pi-1", &[]);
        let day = SLOTS * INTERVAL_MS;
        let t0 = 1_000 * day;
        store
            .transaction(|tx| {
                Store::record_heartbeat(tx, &beat("pi-1", 10.0, Some(40.0)), t0)?;
                Store::record_heartbeat(tx, &beat("pi-1", 30.0, Some(60.0)), t0 + 1000)?;
                Store::record_heartbeat(tx, &beat("pi-1", f32::NAN, Some(1e9)), t0 + 2000)
            })
            .unwrap();
        let h = store.heartbeat_history("pi-1", t0 + 3000).unwrap();
        assert_eq!(h.points.len(), 1);
        let p = &h.points[0];
        assert_eq!((p.samples, p.at_ms), (3, t0));
        assert!((p.cpu_percent - 40.0 / 3.0).abs() < 1e-9, "{p:?}");
        assert_eq!((p.mem_percent, p.disk_percent), (25.0, 50.0));
        // An impossible temperature is no temperature.
        assert_eq!(p.temperature_c, None);

        // Two days of a heartbeat every minute: one row a slot, the last
        // day's points only, the first of them replaced.
        store
            .transaction(|tx| {
                for m in 0..2 * 24 * 60 {
                    Store::record_heartbeat(tx, &beat("pi-1", 50.0, None), t0 + m * 60_000)?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let end = t0 + 2 * day;
        let rows: i64 = store
            .lock()
            .query_row("SELECT COUNT(*) FROM heartbeat_history", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, SLOTS as i64);
        let h = store.heartbeat_history("pi-1", end).unwrap();
        assert_eq!(
            h.points.len() as u64,
            SLOTS - 1,
            "the current interval is empty"
        );
        assert!(
            h.points
                .iter()
                .all(|p| p.samples == 5 && p.cpu_percent == 50.0)
        );
        assert!(h.points.first().unwrap().at_ms > end - day);

        store.delete_device("pi-1").unwrap();
        let rows: i64 = store
            .lock()
            .query_row("SELECT COUNT(*) FROM heartbeat_history", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0, "a deleted device's history goes with it");
    }
}
