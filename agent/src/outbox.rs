//! The outbox: every status report and event is committed to SQLite before
//! anything is sent, and a row is deleted only when the hub acknowledges
//! that it has committed the message (a signed `Ack` on the device's `acks`
//! topic). The broker's PUBACK only marks a row as sent: a broker can die
//! with what it acknowledged (the embedded one dies with the hub; mosquitto
//! saves its state at intervals). Rows the hub never acknowledges are resent
//! (see [`crate::session`]) until they are older than the age limit, then
//! expired and counted.
//!
//! Bounded by count and bytes; when full the oldest rows are dropped and the
//! drops counted (persistently, and in heartbeats and `/metrics`).
//!
//! Each row carries the key the hub acknowledges it by: an event's id, or a
//! status report's `reportedAtMs`. Rows hold signed envelopes, so what is
//! sent after a reboot is exactly what was signed when the message was
//! created. [`Inflight`] maps rumqttc packet ids back to rows.

use edgefleet_protocol::Channel;
use rusqlite::{Transaction, params};

use crate::store::{Store, StoreError};

mod inflight;
pub use inflight::{Inflight, Tag};

/// Rows deleted per transaction when the hub acknowledges them.
pub const CONFIRM_CHUNK: usize = 128;

/// kv keys of the persistent counters.
const DROPPED_KEY: &str = "outbox_dropped";
const ACKED_KEY: &str = "outbox_acked";
const EXPIRED_KEY: &str = "outbox_expired";
/// kv key: the highest row id the broker has acknowledged (rows up to it
/// were sent at least once).
const SENT_THROUGH_KEY: &str = "outbox_sent_through";

/// Bounds of the outbox.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_messages: u64,
    pub max_bytes: u64,
}

/// One queued message.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: i64,
    pub channel: Channel,
    pub payload: Vec<u8>,
}

/// Result of an enqueue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Id of the last row inserted.
    pub last_id: i64,
    /// Rows dropped (oldest first) to make room.
    pub dropped: u64,
}

/// Result of applying one acknowledgement from the hub.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confirmed {
    /// Rows deleted.
    pub rows: u64,
    /// Of those, rows with an id at or below the `handed_through` given.
    pub handed: u64,
}

/// What `edge-agent status` and `/metrics` show of the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Rows never acknowledged by the broker.
    pub queued: u64,
    /// Rows the broker acknowledged (sent at least once) and the hub has not.
    pub unacked: u64,
    pub bytes: u64,
    /// Rows the hub acknowledged, since the store was created.
    pub acked: u64,
    pub dropped: u64,
    pub expired: u64,
}

/// Adds `n` to a persistent counter in `kv`.
fn kv_add(tx: &Transaction<'_>, key: &str, n: u64) -> Result<(), StoreError> {
    if n > 0 {
        tx.execute(
            "INSERT INTO kv (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + ?2",
            params![key, n as i64],
        )?;
    }
    Ok(())
}

impl Store {
    /// Enqueues `(key, payload)` messages for `channel` in one transaction,
    /// dropping the oldest rows when the bounds would be exceeded.
    pub fn outbox_push(
        &mut self,
        channel: Channel,
        items: &[(String, Vec<u8>)],
        limits: Limits,
    ) -> Result<Pushed, StoreError> {
        let tx = self.conn.transaction()?;
        let (out, count, bytes) = Self::push_in(
            &tx,
            channel,
            items,
            limits,
            (self.outbox_count, self.outbox_bytes),
        )?;
        tx.commit()?;
        self.outbox_count = count;
        self.outbox_bytes = bytes;
        if out.dropped > 0 {
            tracing::warn!(
                dropped = out.dropped,
                "outbox full: dropped the oldest messages"
            );
        }
        Ok(out)
    }

    fn push_in(
        tx: &Transaction<'_>,
        channel: Channel,
        items: &[(String, Vec<u8>)],
        limits: Limits,
        (mut count, mut bytes): (u64, u64),
    ) -> Result<(Pushed, u64, u64), StoreError> {
        let mut out = Pushed::default();
        let mut insert = tx.prepare_cached(
            "INSERT INTO outbox (channel, payload, created_at_ms, msg_key) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut drop_oldest = tx.prepare_cached(
            "DELETE FROM outbox WHERE id = (SELECT MIN(id) FROM outbox) RETURNING length(payload)",
        )?;
        let now = edgefleet_protocol::now_ms() as i64;
        for (key, p) in items {
            let len = p.len() as u64;
            while count > 0 && (count + 1 > limits.max_messages || bytes + len > limits.max_bytes) {
                let freed: Option<i64> = drop_oldest
                    .query_row([], |r| r.get(0))
                    .map(Some)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })?;
                let Some(freed) = freed else { break };
                count -= 1;
                bytes = bytes.saturating_sub(freed as u64);
                out.dropped += 1;
            }
            insert.execute(params![channel.as_str(), p, now, key])?;
            out.last_id = tx.last_insert_rowid();
            count += 1;
            bytes += len;
        }
        kv_add(tx, DROPPED_KEY, out.dropped)?;
        Ok((out, count, bytes))
    }

    /// Enqueues a status report, replacing queued ones it supersedes (the hub
    /// keeps only the newest report anyway).
    pub fn outbox_push_status(
        &mut self,
        reported_at_ms: u64,
        payload: Vec<u8>,
        limits: Limits,
    ) -> Result<Pushed, StoreError> {
        let tx = self.conn.transaction()?;
        let (rows, freed) = tx.query_row(
            "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM outbox WHERE channel = 'status'",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )?;
        tx.execute("DELETE FROM outbox WHERE channel = 'status'", [])?;
        let start = (
            self.outbox_count.saturating_sub(rows),
            self.outbox_bytes.saturating_sub(freed),
        );
        let (out, count, bytes) = Self::push_in(
            &tx,
            Channel::Status,
            &[(reported_at_ms.to_string(), payload)],
            limits,
            start,
        )?;
        tx.commit()?;
        self.outbox_count = count;
        self.outbox_bytes = bytes;
        Ok(out)
    }

    /// Up to `limit` rows with id greater than `after`, oldest first.
    pub fn outbox_after(&self, after: i64, limit: usize) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, channel, payload FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit as i64], |r| {
            <(i64, String, Vec<u8>)>::try_from(r)
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (id, channel, payload) = r?;
            match channel.parse() {
                Ok(channel) => out.push(Row {
                    id,
                    channel,
                    payload,
                }),
                Err(e) => {
                    tracing::error!(id, error = %e, "outbox row with unknown channel skipped")
                }
            }
        }
        Ok(out)
    }

    /// Deletes what the hub acknowledged: the events with these ids and
    /// status reports up to `status_at_ms`. Commits every
    /// [`CONFIRM_CHUNK`] rows, so a delete never needs much WAL space (a
    /// nearly full disk has little); what was committed before an error
    /// stays deleted and is counted in the error's stead by the next call.
    pub fn outbox_confirm(
        &mut self,
        events: &[String],
        status_at_ms: Option<u64>,
        handed_through: i64,
    ) -> Result<Confirmed, StoreError> {
        let mut out = Confirmed::default();
        let mut status = status_at_ms;
        let mut chunks = events.chunks(CONFIRM_CHUNK);
        loop {
            let keys = chunks.next().unwrap_or(&[]);
            if keys.is_empty() && status.is_none() {
                break;
            }
            let (mut rows, mut handed, mut freed) = (0u64, 0u64, 0u64);
            let tx = self.conn.transaction()?;
            {
                let mut count = |id: i64, len: i64| {
                    rows += 1;
                    handed += u64::from(id <= handed_through);
                    freed += len as u64;
                };
                let mut by_key = tx.prepare_cached(
                    "DELETE FROM outbox WHERE channel = 'events' AND msg_key = ?1
                     RETURNING id, length(payload)",
                )?;
                for key in keys {
                    let mut found = by_key.query([key])?;
                    while let Some(r) = found.next()? {
                        count(r.get(0)?, r.get(1)?);
                    }
                }
                if let Some(at) = status.take() {
                    let mut stmt = tx.prepare_cached(
                        "DELETE FROM outbox WHERE channel = 'status' AND CAST(msg_key AS INTEGER) <= ?1
                         RETURNING id, length(payload)",
                    )?;
                    let mut found = stmt.query([at as i64])?;
                    while let Some(r) = found.next()? {
                        count(r.get(0)?, r.get(1)?);
                    }
                }
            }
            kv_add(&tx, ACKED_KEY, rows)?;
            tx.commit()?;
            self.outbox_count = self.outbox_count.saturating_sub(rows);
            self.outbox_bytes = self.outbox_bytes.saturating_sub(freed);
            out.rows += rows;
            out.handed += handed;
        }
        Ok(out)
    }

    /// Drops the oldest rows until at least `bytes` of payload are gone
    /// (room for new events when the disk is full and the policy says so);
    /// returns how many, counted as dropped.
    pub fn outbox_drop_oldest(&mut self, bytes: u64) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let (mut n, mut freed) = (0u64, 0u64);
        {
            let mut stmt = tx.prepare_cached(
                "DELETE FROM outbox WHERE id = (SELECT MIN(id) FROM outbox) RETURNING length(payload)",
            )?;
            while freed < bytes {
                match stmt.query_row([], |r| r.get::<_, i64>(0)) {
                    Ok(len) => {
                        n += 1;
                        freed += len as u64;
                    }
                    Err(rusqlite::Error::QueryReturnedNoRows) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        kv_add(&tx, DROPPED_KEY, n)?;
        tx.commit()?;
        self.outbox_count = self.outbox_count.saturating_sub(n);
        self.outbox_bytes = self.outbox_bytes.saturating_sub(freed);
        Ok(n)
    }

    /// Rows still queued with an id at or below `id`.
    pub fn outbox_count_through(&self, id: i64) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM outbox WHERE id <= ?1", [id], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    /// Records that the broker acknowledged rows up to `through`.
    pub fn outbox_mark_sent(&mut self, through: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO kv (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), ?2)",
            params![SENT_THROUGH_KEY, through],
        )?;
        Ok(())
    }

    /// Deletes rows created before `cutoff_ms` (the hub never acknowledged
    /// them within the age limit); returns how many, counted as expired.
    pub fn outbox_expire(&mut self, cutoff_ms: u64) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let (n, freed) = {
            let mut stmt = tx.prepare_cached(
                "DELETE FROM outbox WHERE created_at_ms < ?1 RETURNING length(payload)",
            )?;
            let mut rows = stmt.query([cutoff_ms as i64])?;
            let (mut n, mut freed) = (0u64, 0u64);
            while let Some(r) = rows.next()? {
                n += 1;
                freed += r.get::<_, i64>(0)? as u64;
            }
            (n, freed)
        };
        kv_add(&tx, EXPIRED_KEY, n)?;
        tx.commit()?;
        self.outbox_count = self.outbox_count.saturating_sub(n);
        self.outbox_bytes = self.outbox_bytes.saturating_sub(freed);
        Ok(n)
    }

    /// Queued rows and payload bytes.
    pub fn outbox_depth(&self) -> (u64, u64) {
        (self.outbox_count, self.outbox_bytes)
    }

    fn kv_u64(&self, key: &str) -> Result<u64, StoreError> {
        Ok(self.kv_get(key)?.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// Rows dropped since the store was created.
    pub fn outbox_dropped(&self) -> Result<u64, StoreError> {
        self.kv_u64(DROPPED_KEY)
    }

    /// Queued, sent-but-unacknowledged and lifetime counters.
    pub fn outbox_stats(&self) -> Result<Stats, StoreError> {
        let sent_through = self.kv_u64(SENT_THROUGH_KEY)?;
        let unacked = self.outbox_count_through(i64::try_from(sent_through).unwrap_or(i64::MAX))?;
        Ok(Stats {
            queued: self.outbox_count.saturating_sub(unacked),
            unacked,
            bytes: self.outbox_bytes,
            acked: self.kv_u64(ACKED_KEY)?,
            dropped: self.kv_u64(DROPPED_KEY)?,
            expired: self.kv_u64(EXPIRED_KEY)?,
        })
    }

    pub(crate) fn load_outbox_counters(&mut self) -> Result<(), StoreError> {
        let (c, b): (i64, i64) = self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM outbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        self.outbox_count = c as u64;
        self.outbox_bytes = b as u64;
        Ok(())
    }

    /// Gives rows queued before acknowledgements existed (schema 1) their
    /// keys, read from the envelopes this device signed itself.
    pub(crate) fn backfill_outbox_keys(&mut self) -> Result<u64, StoreError> {
        let tx = self.conn.transaction()?;
        let mut n = 0u64;
        {
            let mut select = tx.prepare(
                "SELECT id, channel, payload FROM outbox WHERE msg_key IS NULL ORDER BY id",
            )?;
            let mut update = tx.prepare("UPDATE outbox SET msg_key = ?2 WHERE id = ?1")?;
            let rows = select.query_map([], |r| <(i64, String, Vec<u8>)>::try_from(r))?;
            for row in rows {
                let (id, channel, payload) = row?;
                let field = if channel == "status" {
                    "reportedAtMs"
                } else {
                    "id"
                };
                let key = edgefleet_protocol::sign::own_payload(&payload)
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
                    .and_then(|v| match &v[field] {
                        serde_json::Value::String(s) => Some(s.clone()),
                        serde_json::Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    });
                // A row whose key cannot be read can never be acknowledged:
                // it keeps an empty key and ages out.
                update.execute(params![id, key.unwrap_or_default()])?;
                n += 1;
            }
        }
        tx.commit()?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open_temp;

    const BIG: Limits = Limits {
        max_messages: 1_000_000,
        max_bytes: u64::MAX,
    };

    fn events(names: &[&str]) -> Vec<(String, Vec<u8>)> {
        names
            .iter()
            .map(|n| (n.to_string(), format!("m-{n}").into_bytes()))
            .collect()
    }

    /// Events `e0` .. `e{n-1}`.
    fn numbered(n: usize) -> Vec<(String, Vec<u8>)> {
        let names: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
        events(&names.iter().map(String::as_str).collect::<Vec<_>>())
    }

    #[test]
    fn push_read_confirm_in_order() {
        let (_d, mut s) = open_temp();
        s.outbox_push(Channel::Events, &numbered(10), BIG).unwrap();
        assert_eq!(s.outbox_depth(), (10, 40));
        let rows = s.outbox_after(0, 4).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].payload, b"m-e0");
        assert_eq!(rows[0].channel, Channel::Events);
        let next = s.outbox_after(rows[3].id, 100).unwrap();
        assert_eq!(next.len(), 6);
        let c = s
            .outbox_confirm(
                &["e0".into(), "e1".into(), "e9".into(), "nope".into()],
                None,
                rows[3].id,
            )
            .unwrap();
        assert_eq!(c, Confirmed { rows: 3, handed: 2 });
        assert_eq!(s.outbox_depth(), (7, 28));
        assert_eq!(s.outbox_after(0, 1).unwrap()[0].payload, b"m-e2");
        // A replayed acknowledgement changes nothing.
        let again = s.outbox_confirm(&["e0".into()], None, i64::MAX).unwrap();
        assert_eq!(again.rows, 0);
        assert_eq!(s.outbox_stats().unwrap().acked, 3);
    }

    #[test]
    fn bounded_drop_oldest_and_counted() {
        let (dir, mut s) = open_temp();
        let limits = Limits {
            max_messages: 3,
            max_bytes: 10,
        };
        for i in 0..5u8 {
            s.outbox_push(
                Channel::Events,
                &[(format!("k{i}"), vec![b'a' + i; 2])],
                limits,
            )
            .unwrap();
        }
        assert_eq!(s.outbox_depth(), (3, 6));
        assert_eq!(s.outbox_dropped().unwrap(), 2);
        let rows = s.outbox_after(0, 10).unwrap();
        assert_eq!(rows[0].payload, b"cc");
        // Byte bound.
        let p = s
            .outbox_push(Channel::Events, &[("z".into(), vec![b'z'; 9])], limits)
            .unwrap();
        assert_eq!(p.dropped, 3);
        assert_eq!(s.outbox_depth(), (1, 9));
        drop(s);
        let (s, _) = Store::open(
            &dir.path().join("agent.db"),
            crate::config::Synchronous::Normal,
        )
        .unwrap();
        assert_eq!(s.outbox_depth(), (1, 9));
        assert_eq!(s.outbox_dropped().unwrap(), 5);
    }

    #[test]
    fn status_reports_supersede_queued_ones_and_are_acked_by_time() {
        let (_d, mut s) = open_temp();
        s.outbox_push(Channel::Events, &events(&["e1"]), BIG)
            .unwrap();
        s.outbox_push_status(100, b"s1".to_vec(), BIG).unwrap();
        s.outbox_push(Channel::Events, &events(&["e2"]), BIG)
            .unwrap();
        s.outbox_push_status(200, b"s2".to_vec(), BIG).unwrap();
        let rows: Vec<_> = s
            .outbox_after(0, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.payload)
            .collect();
        assert_eq!(
            rows,
            vec![b"m-e1".to_vec(), b"m-e2".to_vec(), b"s2".to_vec()]
        );
        assert_eq!(s.outbox_depth(), (3, 10));
        // The hub holds the report of t=100: the queued t=200 one stays.
        assert_eq!(s.outbox_confirm(&[], Some(100), 0).unwrap().rows, 0);
        assert_eq!(s.outbox_confirm(&[], Some(250), 0).unwrap().rows, 1);
        assert_eq!(s.outbox_depth(), (2, 8));
    }

    #[test]
    fn sent_rows_are_counted_apart_from_queued_ones() {
        let (_d, mut s) = open_temp();
        s.outbox_push(Channel::Events, &events(&["a", "b", "c", "d"]), BIG)
            .unwrap();
        let rows = s.outbox_after(0, 10).unwrap();
        s.outbox_mark_sent(rows[1].id).unwrap();
        s.outbox_mark_sent(rows[0].id).unwrap();
        let st = s.outbox_stats().unwrap();
        assert_eq!((st.queued, st.unacked, st.acked), (2, 2, 0));
        s.outbox_confirm(&["a".into()], None, 0).unwrap();
        let st = s.outbox_stats().unwrap();
        assert_eq!((st.queued, st.unacked, st.acked), (2, 1, 1));
    }

    #[test]
    fn dropping_oldest_for_room_is_counted() {
        let (_d, mut s) = open_temp();
        s.outbox_push(Channel::Events, &events(&["a", "b", "c"]), BIG)
            .unwrap();
        // Each payload is 3 bytes: 4 bytes of room takes two rows.
        assert_eq!(s.outbox_drop_oldest(4).unwrap(), 2);
        assert_eq!(s.outbox_after(0, 10).unwrap()[0].payload, b"m-c");
        assert_eq!(s.outbox_stats().unwrap().dropped, 2);
        assert_eq!(s.outbox_drop_oldest(100).unwrap(), 1);
        assert_eq!(s.outbox_drop_oldest(100).unwrap(), 0);
    }

    #[test]
    fn large_acknowledgements_commit_in_chunks() {
        let (_d, mut s) = open_temp();
        let batch = numbered(300);
        s.outbox_push(Channel::Events, &batch, BIG).unwrap();
        s.outbox_push_status(5, b"st".to_vec(), BIG).unwrap();
        let ids: Vec<String> = batch.into_iter().map(|(id, _)| id).collect();
        let c = s.outbox_confirm(&ids, Some(5), i64::MAX).unwrap();
        assert_eq!(c.rows, 301);
        assert_eq!(s.outbox_depth(), (0, 0));
    }

    #[test]
    fn old_rows_expire_and_are_counted() {
        let (_d, mut s) = open_temp();
        s.outbox_push(Channel::Events, &events(&["old", "new"]), BIG)
            .unwrap();
        s.conn
            .execute(
                "UPDATE outbox SET created_at_ms = 5 WHERE msg_key = 'old'",
                [],
            )
            .unwrap();
        assert_eq!(s.outbox_expire(10).unwrap(), 1);
        assert_eq!(s.outbox_depth().0, 1);
        assert_eq!(s.outbox_stats().unwrap().expired, 1);
    }

    #[test]
    fn rows_from_before_acknowledgements_get_their_keys() {
        let (_d, mut s) = open_temp();
        let signer = edgefleet_protocol::Signer::from_seed(&[3; 32]);
        let event = edgefleet_protocol::Event {
            id: "legacy-1".into(),
            device_id: edgefleet_protocol::DeviceId::new("pi-1").unwrap(),
            kind: "app.telemetry".into(),
            workload: None,
            created_at_ms: 1,
            payload: serde_json::json!({}),
        };
        s.conn
            .execute(
                "INSERT INTO outbox (channel, payload, created_at_ms) VALUES ('events', ?1, 1)",
                [signer.seal(&event)],
            )
            .unwrap();
        s.conn
            .execute(
                "INSERT INTO outbox (channel, payload, created_at_ms) VALUES ('events', x'00', 1)",
                [],
            )
            .unwrap();
        s.load_outbox_counters().unwrap();
        assert_eq!(s.backfill_outbox_keys().unwrap(), 2);
        assert_eq!(
            s.outbox_confirm(&["legacy-1".into()], None, 0)
                .unwrap()
                .rows,
            1
        );
        assert_eq!(s.outbox_depth().0, 1);
    }
}
