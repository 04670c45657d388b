//! The outbox: every status report and event is committed to SQLite before
//! anything is sent, and a row is deleted only after the broker's PUBACK.
//! Bounded by count and bytes; when full the oldest rows are dropped and the
//! drops counted (persistently, and in heartbeats and `/metrics`).
//!
//! The sender itself lives in [`crate::session`]; this module holds the table
//! operations and [`Inflight`], which maps rumqttc packet ids back to rows.
//! Rows hold signed envelopes, so what is sent after a reboot is exactly what
//! was signed when the message was created.

use std::collections::{HashMap, VecDeque};

use edgefleet_protocol::Channel;
use rusqlite::params;

use crate::store::{Store, StoreError};

/// kv key of the persistent drop counter.
const DROPPED_KEY: &str = "outbox_dropped";

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

impl Store {
    /// Enqueues messages for `channel` in one transaction, dropping the
    /// oldest rows when the bounds would be exceeded.
    pub fn outbox_push(
        &mut self,
        channel: Channel,
        payloads: &[Vec<u8>],
        limits: Limits,
    ) -> Result<Pushed, StoreError> {
        let mut count = self.outbox_count;
        let mut bytes = self.outbox_bytes;
        let mut out = Pushed::default();
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO outbox (channel, payload, created_at_ms) VALUES (?1, ?2, ?3)",
            )?;
            let mut drop_oldest = tx.prepare_cached(
                "DELETE FROM outbox WHERE id = (SELECT MIN(id) FROM outbox) RETURNING length(payload)",
            )?;
            let now = edgefleet_protocol::now_ms() as i64;
            for p in payloads {
                let len = p.len() as u64;
                while count > 0
                    && (count + 1 > limits.max_messages || bytes + len > limits.max_bytes)
                {
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
                insert.execute(params![channel.as_str(), p, now])?;
                out.last_id = tx.last_insert_rowid();
                count += 1;
                bytes += len;
            }
            if out.dropped > 0 {
                tx.execute(
                    "INSERT INTO kv (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + ?2",
                    params![DROPPED_KEY, out.dropped as i64],
                )?;
            }
        }
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

    /// Enqueues a status report, replacing queued ones it supersedes (the hub
    /// keeps only the newest report anyway).
    pub fn outbox_push_status(
        &mut self,
        payload: Vec<u8>,
        limits: Limits,
    ) -> Result<Pushed, StoreError> {
        let mut freed_rows = 0u64;
        let mut freed_bytes = 0u64;
        {
            let mut stmt = self.conn.prepare_cached(
                "DELETE FROM outbox WHERE channel = 'status' RETURNING length(payload)",
            )?;
            let rows = stmt.query_map([], |r| r.get::<_, i64>(0))?;
            for r in rows {
                freed_rows += 1;
                freed_bytes += r? as u64;
            }
        }
        self.outbox_count = self.outbox_count.saturating_sub(freed_rows);
        self.outbox_bytes = self.outbox_bytes.saturating_sub(freed_bytes);
        self.outbox_push(Channel::Status, &[payload], limits)
    }

    /// Up to `limit` rows with id greater than `after`, oldest first.
    pub fn outbox_after(&self, after: i64, limit: usize) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, channel, payload FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
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

    /// Deletes acknowledged rows in one transaction; returns how many existed.
    pub fn outbox_delete(&mut self, ids: &[i64]) -> Result<u64, StoreError> {
        let mut n = 0u64;
        let mut freed = 0u64;
        let tx = self.conn.transaction()?;
        {
            let mut stmt =
                tx.prepare_cached("DELETE FROM outbox WHERE id = ?1 RETURNING length(payload)")?;
            for id in ids {
                let mut rows = stmt.query([id])?;
                if let Some(r) = rows.next()? {
                    n += 1;
                    freed += r.get::<_, i64>(0)? as u64;
                }
            }
        }
        tx.commit()?;
        self.outbox_count = self.outbox_count.saturating_sub(n);
        self.outbox_bytes = self.outbox_bytes.saturating_sub(freed);
        Ok(n)
    }

    /// Queued rows and payload bytes.
    pub fn outbox_depth(&self) -> (u64, u64) {
        (self.outbox_count, self.outbox_bytes)
    }

    /// Rows dropped since the store was created.
    pub fn outbox_dropped(&self) -> Result<u64, StoreError> {
        Ok(self
            .kv_get(DROPPED_KEY)?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
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
}

/// What a publish handed to rumqttc was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// An outbox row: delete it on PUBACK.
    Row(i64),
    /// Anything else (presence, heartbeat).
    Other,
}

/// Tracks publishes from hand-off to PUBACK. rumqttc reports
/// `Outgoing::Publish(pkid)` for each publish request in the order requests
/// were queued, so a FIFO of tags pairs each request with its packet id.
/// Only valid while one task is the sole publisher and the queue is reset
/// whenever rumqttc drops its pending requests (on every disconnect).
#[derive(Debug, Default)]
pub struct Inflight {
    queued: VecDeque<Tag>,
    by_pkid: HashMap<u16, Tag>,
    rows: usize,
    /// Highest row id handed to rumqttc on this connection.
    pub last_row: i64,
}

impl Inflight {
    /// A publish was queued with rumqttc.
    pub fn queued(&mut self, tag: Tag) {
        if let Tag::Row(id) = tag {
            self.rows += 1;
            self.last_row = self.last_row.max(id);
        }
        self.queued.push_back(tag);
    }

    /// rumqttc wrote a publish with this packet id (0 for QoS 0).
    pub fn written(&mut self, pkid: u16) {
        let Some(tag) = self.queued.pop_front() else {
            tracing::warn!(pkid, "publish written that was not queued by the session");
            return;
        };
        if pkid == 0 {
            if let Tag::Row(_) = tag {
                // Rows go QoS 1; a QoS 0 row would never be acked.
                self.rows = self.rows.saturating_sub(1);
            }
            return;
        }
        self.by_pkid.insert(pkid, tag);
    }

    /// The broker acknowledged `pkid`; returns the row to delete, if any.
    pub fn acked(&mut self, pkid: u16) -> Option<i64> {
        match self.by_pkid.remove(&pkid)? {
            Tag::Row(id) => {
                self.rows = self.rows.saturating_sub(1);
                Some(id)
            }
            Tag::Other => None,
        }
    }

    /// Rows handed off and not yet acknowledged.
    pub fn rows_in_flight(&self) -> usize {
        self.rows
    }

    /// The connection is gone: everything unacknowledged will be resent.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Synchronous;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = Store::open(&dir.path().join("agent.db"), Synchronous::Normal).unwrap();
        (dir, s)
    }

    const BIG: Limits = Limits {
        max_messages: 1_000_000,
        max_bytes: u64::MAX,
    };

    #[test]
    fn push_read_delete_in_order() {
        let (_d, mut s) = store();
        let msgs: Vec<Vec<u8>> = (0..10).map(|i| format!("m{i}").into_bytes()).collect();
        s.outbox_push(Channel::Events, &msgs, BIG).unwrap();
        assert_eq!(s.outbox_depth(), (10, 20));
        let rows = s.outbox_after(0, 4).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].payload, b"m0");
        assert_eq!(rows[0].channel, Channel::Events);
        let next = s.outbox_after(rows[3].id, 100).unwrap();
        assert_eq!(next.len(), 6);
        assert_eq!(s.outbox_delete(&[rows[0].id, rows[1].id, 999]).unwrap(), 2);
        assert_eq!(s.outbox_depth(), (8, 16));
        assert_eq!(s.outbox_after(0, 1).unwrap()[0].payload, b"m2");
    }

    #[test]
    fn bounded_drop_oldest_and_counted() {
        let (dir, mut s) = store();
        let limits = Limits {
            max_messages: 3,
            max_bytes: 10,
        };
        for i in 0..5 {
            s.outbox_push(Channel::Events, &[vec![b'a' + i; 2]], limits)
                .unwrap();
        }
        assert_eq!(s.outbox_depth(), (3, 6));
        assert_eq!(s.outbox_dropped().unwrap(), 2);
        let rows = s.outbox_after(0, 10).unwrap();
        assert_eq!(rows[0].payload, b"cc");
        // Byte bound.
        let p = s
            .outbox_push(Channel::Events, &[vec![b'z'; 9]], limits)
            .unwrap();
        assert_eq!(p.dropped, 3);
        assert_eq!(s.outbox_depth(), (1, 9));
        drop(s);
        let (s, _) = Store::open(&dir.path().join("agent.db"), Synchronous::Normal).unwrap();
        assert_eq!(s.outbox_depth(), (1, 9));
        assert_eq!(s.outbox_dropped().unwrap(), 5);
    }

    #[test]
    fn status_reports_supersede_queued_ones() {
        let (_d, mut s) = store();
        s.outbox_push(Channel::Events, &[b"e1".to_vec()], BIG)
            .unwrap();
        s.outbox_push_status(b"s1".to_vec(), BIG).unwrap();
        s.outbox_push(Channel::Events, &[b"e2".to_vec()], BIG)
            .unwrap();
        s.outbox_push_status(b"s2".to_vec(), BIG).unwrap();
        let rows: Vec<_> = s
            .outbox_after(0, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.payload)
            .collect();
        assert_eq!(rows, vec![b"e1".to_vec(), b"e2".to_vec(), b"s2".to_vec()]);
        assert_eq!(s.outbox_depth(), (3, 6));
    }

    #[test]
    fn inflight_pairs_packet_ids_with_rows() {
        let mut f = Inflight::default();
        f.queued(Tag::Other);
        f.queued(Tag::Row(10));
        f.queued(Tag::Other);
        f.queued(Tag::Row(11));
        assert_eq!(f.rows_in_flight(), 2);
        f.written(1);
        f.written(2);
        f.written(0);
        f.written(3);
        assert_eq!(f.acked(1), None);
        assert_eq!(f.acked(3), Some(11));
        assert_eq!(f.acked(2), Some(10));
        assert_eq!(f.acked(2), None);
        assert_eq!(f.rows_in_flight(), 0);
        assert_eq!(f.last_row, 11);
        f.reset();
        assert_eq!(f.last_row, 0);
    }
}
