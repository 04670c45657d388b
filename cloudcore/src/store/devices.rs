//! Devices: enrollment (keys and broker password hashes), labels, the
//! registry the broker and ingest load, and the rows the API lists.

use std::collections::{BTreeMap, HashMap};

use edgefleet_protocol::DeviceId;
use rusqlite::{OptionalExtension, params};

use edgefleet_api::DeviceHealth;
use edgefleet_protocol::LabelSelector;
use serde::Serialize;

use super::{DeviceRecord, Labels, Presence, Store, StoreError, ms, sql_i64};

/// Which devices a list shows; the default shows all.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub selector: Option<LabelSelector>,
    pub presence: Option<Presence>,
    pub health: Option<DeviceHealth>,
    /// Devices that applied a document with any of these deployments at
    /// the generation (any generation when `None`).
    pub runs: Vec<RunsGeneration>,
}

/// A deployment and, optionally, one of its generations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunsGeneration(pub String, pub Option<u64>);

/// Credentials and key the broker and ingest need per device.
#[derive(Debug, Clone)]
pub struct DeviceAuth {
    pub public_key: String,
    pub password_hash: [u8; 32],
    /// The key a rotation replaced, accepted until the time beside it.
    pub previous_key: Option<(String, u64)>,
}

/// Result of [`Store::enroll_device`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollOutcome {
    New(DeviceId),
    Existing(DeviceId),
    IdTaken,
}

impl Store {
    /// Enrolls a new key, or refreshes the password of a known one (same
    /// id). `IdTaken` when the requested id belongs to another key.
    pub fn enroll_device(
        &self,
        requested: Option<&DeviceId>,
        derived: &DeviceId,
        public_key: &str,
        labels: &BTreeMap<String, String>,
        password_hash: &[u8; 32],
        meta: (&Option<String>, &str, &str),
    ) -> Result<EnrollOutcome, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT id FROM devices WHERE public_key = ?1",
                params![public_key],
                |r| r.get(0),
            )
            .optional()?;
        let (hostname, arch, agent_version) = meta;
        let outcome = if let Some(id) = existing {
            // Same key again: idempotent; new password, labels kept (the
            // operator may have changed them since).
            tx.execute(
                "UPDATE devices SET password_hash = ?2, hostname = ?3, arch = ?4, agent_version = ?5 WHERE id = ?1",
                params![id, &password_hash[..], hostname, arch, agent_version],
            )?;
            EnrollOutcome::Existing(DeviceId::new(id).unwrap_or_else(|_| derived.clone()))
        } else {
            let id = requested.unwrap_or(derived);
            let taken: bool = tx
                .query_row(
                    "SELECT 1 FROM devices WHERE id = ?1",
                    params![id.as_str()],
                    |_| Ok(true),
                )
                .optional()?
                .unwrap_or(false);
            if taken {
                return Ok(EnrollOutcome::IdTaken);
            }
            tx.execute(
                "INSERT INTO devices(id, public_key, labels, password_hash, hostname, arch, agent_version, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    id.as_str(),
                    public_key,
                    serde_json::to_string(labels)?,
                    &password_hash[..],
                    hostname,
                    arch,
                    agent_version,
                    sql_i64(edgefleet_protocol::now_ms())
                ],
            )?;
            EnrollOutcome::New(id.clone())
        };
        tx.commit()?;
        Ok(outcome)
    }

    /// Every device's key and broker password hash (for the auth cache).
    pub fn device_auth(&self) -> Result<HashMap<DeviceId, DeviceAuth>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, public_key, password_hash, previous_key, previous_key_until_ms FROM devices",
        )?;
        let rows = stmt.query_map([], |r| {
            let id: String = r.get(0)?;
            let pk: String = r.get(1)?;
            let hash: Vec<u8> = r.get(2)?;
            let prev: Option<String> = r.get(3)?;
            let until: Option<i64> = r.get(4)?;
            Ok((id, pk, hash, prev.zip(until.map(ms))))
        })?;
        let mut out = HashMap::new();
        for row in rows {
            let (id, public_key, hash, previous_key) = row?;
            let (Ok(id), Ok(password_hash)) = (DeviceId::new(id), <[u8; 32]>::try_from(hash))
            else {
                continue;
            };
            out.insert(
                id,
                DeviceAuth {
                    public_key,
                    password_hash,
                    previous_key,
                },
            );
        }
        Ok(out)
    }

    fn device_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, DeviceRecord)> {
        let id: String = r.get("id")?;
        let labels: String = r.get("labels")?;
        let hb: Option<String> = r.get("heartbeat")?;
        let presence: String = r.get("presence")?;
        let rec = DeviceRecord {
            id: DeviceId::new(id.clone()).map_err(|e| bad_column(0, e))?,
            labels: serde_json::from_str(&labels).map_err(|e| bad_column(1, e))?,
            public_key: r.get("public_key")?,
            hostname: r.get("hostname")?,
            arch: r.get("arch")?,
            agent_version: r.get("agent_version")?,
            created_ms: ms(r.get("created_ms")?),
            last_seen_ms: r.get::<_, Option<i64>>("last_seen_ms")?.map(ms),
            presence: Presence::parse(&presence)
                .ok_or_else(|| bad_column(2, UnknownPresence(presence)))?,
            desired_revision: r.get::<_, Option<i64>>("desired_revision")?.map(ms),
            applied_revision: r.get::<_, Option<i64>>("applied_in_epoch")?.map(ms),
            last_report_ms: r.get::<_, Option<i64>>("last_report_ms")?.map(ms),
            message: r.get("report_message")?,
            k3s_version: r.get("k3s_version")?,
            heartbeat: hb
                .map(|h| serde_json::from_str(&h))
                .transpose()
                .map_err(|e| bad_column(3, e))?,
            conditions: Vec::new(),
            // The select's CASE gives one of the four.
            health: DeviceHealth::parse(&r.get::<_, String>("health")?).unwrap_or_default(),
        };
        Ok((id, rec))
    }

    /// A revision a device applied in another epoch (from the hub before a
    /// restore) is not one of this hub's: it shows as none applied yet.
    /// A device's health (see [`DeviceHealth`]) from its workloads' rows.
    const DEVICE_SELECT: &'static str = "SELECT d.*, ds.revision AS desired_revision,
        CASE WHEN d.applied_epoch = (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'epoch')
             THEN d.applied_revision END AS applied_in_epoch,
        (SELECT CASE WHEN COUNT(*) = 0 THEN 'none'
                     WHEN MAX(w.sync IN ('Failed', 'RolledBack') OR w.health = 'Degraded') THEN 'failed'
                     WHEN MIN(w.sync = 'Synced' AND w.health = 'Healthy') THEN 'healthy'
                     ELSE 'progressing' END
         FROM workload_status w WHERE w.device_id = d.id) AS health
        FROM devices d LEFT JOIN desired ds ON ds.device_id = d.id";

    /// Devices ordered by id, after `after`, at most `limit`.
    pub fn list_devices(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        self.find_devices(&DeviceFilter::default(), after, limit)
    }

    /// Devices `filter` picks, in id order after `after`, at most `limit`.
    /// Presence, health and what a device runs are matched by SQLite; the
    /// label selector on each row read, which stops as soon as the page is
    /// full.
    pub fn find_devices(
        &self,
        filter: &DeviceFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let runs = (!filter.runs.is_empty())
            .then(|| serde_json::to_string(&filter.runs))
            .transpose()?;
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT * FROM ({}) x WHERE x.id > ?1
               AND (?2 IS NULL OR x.presence = ?2)
               AND (?3 IS NULL OR x.health = ?3)
               AND (?4 IS NULL OR (x.applied_in_epoch = x.desired_revision AND EXISTS (
                     SELECT 1 FROM desired ds2, json_each(ds2.workloads) w, json_each(?4) r
                     WHERE ds2.device_id = x.id
                       AND json_extract(w.value, '$.deployment') = json_extract(r.value, '$[0]')
                       AND (json_extract(r.value, '$[1]') IS NULL
                            OR json_extract(w.value, '$.generation') = json_extract(r.value, '$[1]')))))
             ORDER BY x.id",
            Self::DEVICE_SELECT
        ))?;
        let rows = stmt.query_map(
            params![
                after.unwrap_or(""),
                filter.presence.map(Presence::as_str),
                filter.health.map(DeviceHealth::as_str),
                runs,
            ],
            Self::device_from_row,
        )?;
        let mut devices = Vec::new();
        for row in rows {
            let (_, d) = row?;
            if filter
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(&d.labels))
            {
                devices.push(d);
                if devices.len() >= limit {
                    break;
                }
            }
        }
        drop(stmt);
        drop(conn);
        let mut conditions = self.conditions(None)?;
        for d in &mut devices {
            d.conditions = conditions.remove(&d.id).unwrap_or_default();
        }
        Ok(devices)
    }

    pub fn get_device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let found = self
            .lock()
            .query_row(
                &format!("{} WHERE d.id = ?1", Self::DEVICE_SELECT),
                params![id],
                Self::device_from_row,
            )
            .optional()?;
        let Some((_, mut d)) = found else {
            return Ok(None);
        };
        d.conditions = self.conditions(Some(id))?.remove(&d.id).unwrap_or_default();
        Ok(Some(d))
    }

    /// Replaces a device's labels. `false` when the device does not exist.
    pub fn set_labels(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<bool, StoreError> {
        let n = self.lock().execute(
            "UPDATE devices SET labels = ?2 WHERE id = ?1",
            params![id, serde_json::to_string(labels)?],
        )?;
        Ok(n == 1)
    }

    pub fn delete_device(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .execute("DELETE FROM devices WHERE id = ?1", params![id])?
            == 1)
    }

    /// `(id, labels)` of every device, for desired-state computation.
    pub fn device_labels(&self) -> Result<Vec<(DeviceId, Labels)>, StoreError> {
        Self::all_device_labels(&self.lock())
    }

    pub(super) fn all_device_labels(
        conn: &rusqlite::Connection,
    ) -> Result<Vec<(DeviceId, Labels)>, StoreError> {
        let mut stmt = conn.prepare("SELECT id, labels FROM devices ORDER BY id")?;
        let rows = stmt.query_map([], |r| <(String, String)>::try_from(r))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, labels) = row?;
            let id =
                DeviceId::new(id).map_err(|e| StoreError::Corrupt(format!("devices.id: {e}")))?;
            out.push((id, serde_json::from_str(&labels)?));
        }
        Ok(out)
    }

    /// Devices by presence and bad health, for the overview.
    pub fn fleet_counts(&self) -> Result<edgefleet_api::FleetCounts, StoreError> {
        let conn = self.lock();
        let mut c = conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(presence = 'online'), 0),
                    COALESCE(SUM(presence = 'offline'), 0), COALESCE(SUM(presence = 'unknown'), 0)
             FROM devices",
            [],
            |r| {
                Ok(edgefleet_api::FleetCounts {
                    total: ms(r.get(0)?),
                    online: ms(r.get(1)?),
                    offline: ms(r.get(2)?),
                    unknown: ms(r.get(3)?),
                    ..Default::default()
                })
            },
        )?;
        c.failed = conn.query_row(
            "SELECT COUNT(DISTINCT device_id) FROM workload_status
             WHERE sync IN ('Failed', 'RolledBack') OR health = 'Degraded'",
            [],
            |r| r.get(0).map(ms),
        )?;
        c.with_conditions = conn.query_row(
            "SELECT COUNT(DISTINCT device_id) FROM device_conditions",
            [],
            |r| r.get(0).map(ms),
        )?;
        Ok(c)
    }

    pub fn count_devices(&self) -> Result<(u64, u64), StoreError> {
        let conn = self.lock();
        Ok(conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(presence = 'online'), 0) FROM devices",
            [],
            |r| Ok((ms(r.get(0)?), ms(r.get(1)?))),
        )?)
    }
}

/// A stored value this version cannot read: the row is reported as an
/// error, never shown with a made-up value.
fn bad_column(col: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, Box::new(e))
}

#[derive(Debug, thiserror::Error)]
#[error("presence {0:?} is not online, offline or unknown")]
struct UnknownPresence(String);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{enroll, id, labels, store};

    #[test]
    fn the_same_key_enrolls_idempotently_and_an_id_belongs_to_one_key() {
        let s = store();
        let key = enroll(&s, "pi-1", &[("site", "a")]);
        s.set_labels("pi-1", &labels(&[("site", "b")])).unwrap();
        let again = s
            .enroll_device(
                None,
                &id("dev-other"),
                &key.public().to_base64(),
                &labels(&[("site", "a")]),
                &[1; 32],
                (&None, "arm64", "test"),
            )
            .unwrap();
        assert_eq!(again, EnrollOutcome::Existing(id("pi-1")));
        // Labels the operator set since are kept.
        let dev = s.get_device("pi-1").unwrap().unwrap();
        assert_eq!(dev.labels, labels(&[("site", "b")]));
        let other = edgefleet_protocol::Signer::generate();
        let taken = s
            .enroll_device(
                Some(&id("pi-1")),
                &id("dev-x"),
                &other.public().to_base64(),
                &labels(&[]),
                &[2; 32],
                (&None, "arm64", "test"),
            )
            .unwrap();
        assert_eq!(taken, EnrollOutcome::IdTaken);
    }

    #[test]
    fn devices_page_by_id_and_unknown_presence_is_an_error() {
        let s = store();
        for d in ["pi-3", "pi-1", "pi-2"] {
            enroll(&s, d, &[]);
        }
        let page = s.list_devices(None, 2).unwrap();
        let ids: Vec<_> = page.iter().map(|d| d.id.to_string()).collect();
        assert_eq!(ids, ["pi-1", "pi-2"]);
        let rest = s.list_devices(Some("pi-2"), 2).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(page[0].presence, Presence::Unknown);
        assert_eq!(s.count_devices().unwrap(), (3, 0));
        s.lock()
            .execute("UPDATE devices SET presence = 'away' WHERE id = 'pi-1'", [])
            .unwrap();
        let e = s.get_device("pi-1").unwrap_err();
        assert!(
            edgefleet_daemon::error_chain(&e).contains("\"away\""),
            "{e:?}"
        );
        assert!(s.set_labels("pi-9", &labels(&[])).is_ok_and(|found| !found));
        assert!(s.delete_device("pi-3").unwrap());
        assert!(!s.delete_device("pi-3").unwrap());
    }
}
