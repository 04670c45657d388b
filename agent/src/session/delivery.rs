//! End-to-end delivery, the session's half of the outbox: hands rows to
//! rumqttc within the window and the unacknowledged limit, records what the
//! broker acknowledged as sent, deletes what the hub acknowledged, resends
//! what the hub left unacknowledged too long, expires rows past the age
//! limit, and looks after the disk once a second.

use std::sync::atomic::Ordering;
use std::time::Duration;

use edgefleet_protocol::Ack;

use super::{EXPIRY_EVERY, Session};
use crate::outbox::Tag;

impl Session {
    /// The hub committed these messages: delete their rows.
    pub(super) async fn on_ack(&mut self, payload: &[u8]) {
        let shared = self.shared.clone();
        let Some(ack) = shared.open_from_hub::<Ack>(payload, "acknowledgement") else {
            return;
        };
        // The hub has a status report this process made (not one queued
        // for an earlier process): an update on trial commits.
        if ack
            .status_reported_at_ms
            .is_some_and(|at| at >= shared.started_ms.load(Ordering::Relaxed))
        {
            crate::update::commit();
        }
        let handed_through = self.inflight.last_row;
        let res = shared
            .write_essential(move |s| {
                let c = s.outbox_confirm(&ack.events, ack.status_reported_at_ms, handed_through)?;
                Ok((c, s.outbox_depth()))
            })
            .await;
        match res {
            Ok((confirmed, depth)) => {
                shared.metrics.outbox_acked.inc_by(confirmed.rows);
                shared.metrics.set_outbox(depth);
                self.outstanding = self.outstanding.saturating_sub(confirmed.handed);
                shared.metrics.outbox_unacked.set(self.outstanding as i64);
                if confirmed.rows > 0 {
                    self.last_progress = tokio::time::Instant::now();
                    self.ack_timeout.reset();
                    self.maybe_more = true;
                }
            }
            Err(e) => {
                // The rows stay, are resent and acknowledged again.
                shared.metrics.store_errors.inc();
                tracing::error!(error = %crate::error_chain(&e), "cannot delete acknowledged outbox rows");
            }
        }
    }

    /// Disk pressure: notices it begin and end (heartbeat now, metric, one
    /// log line each), makes the spare again when there is room, and gives
    /// the store's free pages back to the filesystem, a step at a time.
    async fn disk_housekeeping(&mut self) {
        let shared = self.shared.clone();
        match shared.disk.check() {
            Some(true) => {
                shared.metrics.disk_pressure.set(1);
                let space = shared.disk.space();
                tracing::warn!(
                    free = space.map_or(0, |s| s.available),
                    reserve = shared.disk.reserve(),
                    "disk pressure: the state directory's filesystem is at the agent's reserve; \
                     new events are refused (outbox.on_disk_full) until it has room"
                );
                shared.heartbeat_wake.notify_one();
            }
            Some(false) => {
                shared.metrics.disk_pressure.set(0);
                tracing::info!("disk pressure over");
                shared.heartbeat_wake.notify_one();
                // A report that could not be stored is stored now.
                shared.report_wanted.store(true, Ordering::Relaxed);
                shared.reconcile_wake.notify_one();
            }
            None => {}
        }
        let pressure = shared.disk.under_pressure();
        if !pressure {
            let d = shared.clone();
            let _ = tokio::task::spawn_blocking(move || d.disk.ensure_spare()).await;
        }
        // Compact when the outbox has drained a lot (over 1 MiB of free
        // pages), or any amount under pressure: steps the size of the WAL's
        // allowance (each checkpointed, so the WAL never outgrows it), for
        // at most 100 ms a second.
        let step = shared.disk.wal_pages();
        let res = shared
            .db
            .call(move |s| {
                let mut free = s.free_pages()?;
                if free <= 256 && !(pressure && free > 0) {
                    return Ok(());
                }
                let started = std::time::Instant::now();
                while free > 0 && started.elapsed() < Duration::from_millis(100) {
                    free = s.compact(step)?;
                }
                Ok::<_, crate::store::StoreError>(())
            })
            .await;
        if let Err(e) = res {
            // Space will come back with the next step; no need to shout.
            tracing::debug!(error = %crate::error_chain(&e), "store compaction step failed");
        }
    }

    /// Once a second: resends what the hub left unacknowledged too long,
    /// expires rows past the age limit, refreshes the outstanding count,
    /// looks after the disk.
    pub(super) async fn housekeeping(&mut self) {
        self.disk_housekeeping().await;
        let now = tokio::time::Instant::now();
        let shared = self.shared.clone();
        if now >= self.next_expiry {
            self.next_expiry = now + EXPIRY_EVERY;
            let cutoff = edgefleet_protocol::now_ms()
                .saturating_sub(shared.cfg.outbox.max_age_secs.saturating_mul(1000));
            match shared
                .db
                .call(move |s| s.outbox_expire(cutoff).map(|n| (n, s.outbox_depth())))
                .await
            {
                Ok((0, _)) => {}
                Ok((n, depth)) => {
                    shared.metrics.outbox_expired.inc_by(n);
                    shared.metrics.set_outbox(depth);
                    tracing::warn!(
                        expired = n,
                        max_age_secs = shared.cfg.outbox.max_age_secs,
                        "outbox messages the hub never acknowledged expired"
                    );
                }
                Err(e) => {
                    shared.metrics.store_errors.inc();
                    tracing::error!(error = %crate::error_chain(&e), "cannot expire old outbox rows");
                }
            }
        }
        if !self.connected {
            return;
        }
        if self.outstanding > 0 {
            // Rows can leave the outbox without an Ack (dropped when full,
            // superseded, expired): count what is really still out.
            let through = self.inflight.last_row;
            if let Ok(n) = shared
                .db
                .call(move |s| s.outbox_count_through(through))
                .await
            {
                self.outstanding = n;
            }
        }
        shared.metrics.outbox_unacked.set(self.outstanding as i64);
        if self.outstanding == 0 {
            self.last_progress = now;
            return;
        }
        let waited = now.duration_since(self.last_progress);
        if waited < self.ack_timeout.current() || self.inflight.rows_in_flight() > 0 {
            return;
        }
        tracing::warn!(
            unacknowledged = self.outstanding,
            waited_secs = waited.as_secs(),
            "the hub has not acknowledged sent messages; sending them again"
        );
        shared.metrics.outbox_resent.inc_by(self.outstanding);
        self.inflight.last_row = 0;
        self.outstanding = 0;
        self.maybe_more = true;
        self.last_progress = now;
        self.ack_timeout.next_delay();
    }

    /// Hands outbox rows to rumqttc while the window, and the hub's
    /// acknowledgements, leave room.
    pub(super) async fn top_up(&mut self) {
        let window = usize::from(self.shared.cfg.outbox.window);
        if !self.connected || !self.maybe_more {
            return;
        }
        let in_flight = self.inflight.rows_in_flight();
        let unacked_room =
            (self.shared.cfg.outbox.max_unacked as usize).saturating_sub(self.outstanding as usize);
        let room = window.saturating_sub(in_flight).min(unacked_room);
        // Read in batches: wait for a quarter of the window to free up.
        if room == 0 || (in_flight > 0 && room < window / 4) {
            return;
        }
        let after = self.inflight.last_row;
        let rows = self
            .shared
            .db
            .call(move |s| s.outbox_after(after, room))
            .await;
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                self.shared.metrics.store_errors.inc();
                tracing::error!(error = %crate::error_chain(&e), "cannot read the outbox");
                return;
            }
        };
        if rows.len() < room {
            self.maybe_more = false;
        }
        for row in rows {
            if !self.publish(row.channel, row.payload, Tag::Row(row.id)) {
                self.maybe_more = true;
                break;
            }
            self.outstanding += 1;
        }
    }

    /// Records rows the broker acknowledged as sent (they stay until the
    /// hub's Ack).
    pub(super) async fn flush_acks(&mut self) {
        let Some(&through) = self.broker_acked.iter().max() else {
            return;
        };
        let n = self.broker_acked.len() as u64;
        self.broker_acked.clear();
        self.shared.metrics.outbox_sent.inc_by(n);
        if let Err(e) = self
            .shared
            .db
            .call(move |s| s.outbox_mark_sent(through))
            .await
        {
            // Only `edge-agent status` reads it; delivery does not.
            self.shared.metrics.store_errors.inc();
            tracing::warn!(error = %crate::error_chain(&e), "cannot record sent outbox rows");
        }
    }
}
