//! Pairs rumqttc packet ids with outbox rows, from hand-off to PUBACK.

use std::collections::{HashMap, VecDeque};

/// What a publish handed to rumqttc was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// An outbox row: marked sent on PUBACK, deleted on the hub's Ack.
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
    /// Highest row id handed to rumqttc on this connection (since the last
    /// resend).
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

    /// The broker acknowledged `pkid`; returns the row it carried, if any.
    pub fn acked(&mut self, pkid: u16) -> Option<i64> {
        match self.by_pkid.remove(&pkid)? {
            Tag::Row(id) => {
                self.rows = self.rows.saturating_sub(1);
                Some(id)
            }
            Tag::Other => None,
        }
    }

    /// Rows handed off and not yet acknowledged by the broker.
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
