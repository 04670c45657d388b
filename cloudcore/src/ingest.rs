//! Ingest: verifies and stores what devices publish (status, events,
//! presence, heartbeats). Every message is checked against the key the
//! device registered at enrollment, for the device named by its topic;
//! rejected ones are logged and counted by reason and never stored. Messages
//! are committed in batches. After each commit the hub tells every device in
//! the batch, in a signed [`Ack`] on its `acks` topic, which of its events
//! and which status it now holds: that, not the broker's PUBACK, is what lets
//! a device delete an outbox row. The broker's own message is acknowledged
//! (PUBACK) after the commit too, as flow control.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use edgefleet_protocol::limits::MAX_ACK_IDS;
use edgefleet_protocol::sign::{Expect, Message};
use edgefleet_protocol::{
    Ack, COMMAND_RESULT_KIND, Channel, CommandResult, DeviceId, Event, Heartbeat, LOG_CHUNK_KIND,
    LogChunk, Presence, PresenceState, Rejection, Signer, StatusReport, Topic, open,
};
use rumqttc::{AsyncClient, Publish, QoS};
use rusqlite::Connection;
use tokio::sync::mpsc;

use crate::config::IngestConfig;
use crate::logs::LogStreams;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{Ingested, Store, StoreError};

/// Most messages committed in one transaction.
const BATCH: usize = 512;
/// Received-but-unstored messages above which ingest warns (once, until the
/// backlog halves).
const BACKLOG_WARN: usize = 20_000;

/// Why a message was not stored, beyond the protocol's own reasons.
#[derive(Debug)]
enum Refusal {
    Topic,
    UnknownDevice,
    WrongDirection,
    /// Over the device's ingest rate: dropped unverified, counted apart.
    Throttled,
    Protocol(Rejection),
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Topic => "bad_topic",
            Refusal::UnknownDevice => "unknown_device",
            Refusal::WrongDirection => "wrong_direction",
            Refusal::Throttled => "throttled",
            Refusal::Protocol(r) => r.reason(),
        }
    }
}

/// A verified message ready for the store.
enum Verified {
    Status(StatusReport),
    Event(Event),
    Presence(Presence),
    Heartbeat(Heartbeat),
}

/// Checks one publish: its topic, its device, the device's rate (before the
/// cost of verifying the signature), then the message.
fn verify(
    registry: &Registry,
    limits: &Limits,
    now: Instant,
    p: &Publish,
) -> (String, Result<Verified, Refusal>) {
    let Ok(topic) = Topic::parse(&p.topic) else {
        return ("unknown".into(), Err(Refusal::Topic));
    };
    let channel = topic.channel.as_str().to_owned();
    let Some(dev) = registry.get(&topic.device) else {
        return (channel, Err(Refusal::UnknownDevice));
    };
    if !limits.admit(&topic.device, topic.channel, now) {
        return (channel, Err(Refusal::Throttled));
    }
    let expect = Expect::device(&topic.device);
    // Signed with the device's key, or, for a while after it rotated, with
    // the one before (what its outbox held then).
    fn v<M: Message>(
        p: &Publish,
        dev: &crate::registry::DeviceEntry,
        e: &Expect<'_>,
    ) -> Result<M, Refusal> {
        match (
            open::<M>(&p.payload, &dev.key, e),
            dev.previous_at(e.now_ms),
        ) {
            (Err(Rejection::UnknownKey { .. }), Some(prev)) => open::<M>(&p.payload, prev, e),
            (r, _) => r,
        }
        .map_err(Refusal::Protocol)
    }
    let r = match topic.channel {
        Channel::Status => v(p, &dev, &expect).map(Verified::Status),
        Channel::Events => v(p, &dev, &expect).map(Verified::Event),
        Channel::Presence => v(p, &dev, &expect).map(Verified::Presence),
        Channel::Heartbeat => v(p, &dev, &expect).map(Verified::Heartbeat),
        Channel::Desired | Channel::Commands | Channel::Acks => Err(Refusal::WrongDirection),
    };
    (channel, r)
}

fn store_one(tx: &Connection, m: &Verified) -> Result<Ingested, StoreError> {
    match m {
        Verified::Status(r) => Store::ingest_status(tx, r),
        Verified::Event(e) => Store::ingest_event(tx, e),
        Verified::Presence(p) => Store::ingest_presence(
            tx,
            &p.device_id,
            p.state == PresenceState::Online,
            p.session,
        ),
        Verified::Heartbeat(h) => Store::ingest_heartbeat(tx, h),
    }
}

/// What one committed batch lets the hub acknowledge to one device.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DeviceAck {
    /// Events stored now or earlier (redeliveries are acknowledged again).
    pub events: Vec<String>,
    /// The newest status time the hub holds, if the batch had a report.
    pub status_reported_at_ms: Option<u64>,
}

/// Acknowledgements of one batch, by device.
pub type Acks = BTreeMap<DeviceId, DeviceAck>;

/// The signed `acks` messages for `acks`: one per device, more when a device
/// has over [`MAX_ACK_IDS`] events in the batch.
pub fn ack_messages(acks: Acks, signer: &Signer, now_ms: u64) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (device, a) in acks {
        let topic = Topic::new(device.clone(), Channel::Acks).to_string();
        let mut status = a.status_reported_at_ms;
        let mut chunks: Vec<Vec<String>> = a
            .events
            .chunks(MAX_ACK_IDS)
            .map(<[String]>::to_vec)
            .collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        for events in chunks {
            let msg = Ack {
                device_id: device.clone(),
                events,
                status_reported_at_ms: status.take(),
                acked_at_ms: now_ms,
            };
            out.push((topic.clone(), signer.seal(&msg)));
        }
    }
    out
}

/// What one device may make the hub verify and keep: a message rate (a
/// token bucket per device) and a number of stored events.
#[derive(Debug, Default)]
pub struct Limits {
    /// Messages per second; 0: no limit.
    rate: f64,
    burst: f64,
    /// Events kept per device; 0: no limit.
    events_per_device: u64,
    /// Only enrolled devices get a bucket (see [`Limits::admit`]).
    buckets: std::sync::Mutex<HashMap<DeviceId, Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Limits {
    pub fn new(ingest: &IngestConfig, events_per_device: u64) -> Self {
        Self {
            rate: f64::from(ingest.rate_per_device),
            burst: f64::from(ingest.burst_per_device),
            events_per_device,
            buckets: Default::default(),
        }
    }

    /// Takes one message's worth from `device`'s bucket; false when it is
    /// empty. Presence is never limited: an `offline` will dropped would
    /// leave the device shown online.
    fn admit(&self, device: &DeviceId, channel: Channel, now: Instant) -> bool {
        if self.rate <= 0.0 || channel == Channel::Presence {
            return true;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let b = buckets.entry(device.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Retention by age: once a minute, removes the events that arrived longer
/// than `max_age` ago (a thousand at a time, so ingest is not held up).
pub async fn prune_by_age(
    store: Store,
    max_age: edgefleet_protocol::Duration,
    metrics: Arc<Metrics>,
    cancel: tokio_util::sync::CancellationToken,
) {
    const CHUNK: u64 = 1_000;
    if max_age.is_zero() {
        return;
    }
    loop {
        let cutoff = edgefleet_protocol::now_ms().saturating_sub(max_age.as_secs() * 1000);
        loop {
            match store
                .run(move |s| s.prune_events_before(cutoff, CHUNK))
                .await
            {
                Ok(n) => {
                    if n > 0 {
                        metrics.events_pruned("age", n);
                    }
                    if n < CHUNK {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot remove old events; trying again in a minute");
                    break;
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
        }
    }
}

/// What one committed batch leads to.
#[derive(Debug, Default)]
struct Committed {
    /// What to acknowledge to devices.
    acks: Acks,
    /// Devices whose `online` presence was stored (their commands are sent).
    online: Vec<DeviceId>,
    /// Devices whose status, presence or events were stored.
    changed: Vec<DeviceId>,
}

/// Applies a device's command result (an event of kind
/// [`COMMAND_RESULT_KIND`]) in the batch's transaction; the outcome for
/// metrics: done, failed, or why it was ignored.
fn apply_command_result(tx: &Connection, e: &Event) -> Result<&'static str, StoreError> {
    let Ok(r) = serde_json::from_value::<CommandResult>(e.payload.clone()) else {
        tracing::warn!(device = %e.device_id, id = %e.id, "command result with a malformed payload ignored");
        return Ok("malformed");
    };
    if !Store::ingest_command_result(tx, &e.device_id, &r, edgefleet_protocol::now_ms())? {
        tracing::warn!(device = %e.device_id, command = %r.command_id, "result for no open command of this device ignored");
        return Ok("unknown");
    }
    tracing::info!(device = %e.device_id, command = %r.command_id, ok = r.ok, message = %r.message, "command finished");
    Ok(if r.ok { "done" } else { "failed" })
}

/// Verifies and commits one batch; returns what to acknowledge to devices
/// and who came online. Other outcomes go to metrics and logs.
fn process(
    store: &Store,
    registry: &Registry,
    metrics: &Metrics,
    (limits, logs): (&Limits, &LogStreams),
    batch: &[Publish],
) -> Result<Committed, StoreError> {
    let mut verified = Vec::with_capacity(batch.len());
    let now = Instant::now();
    for p in batch {
        let (channel, r) = verify(registry, limits, now, p);
        if matches!(r, Err(Refusal::Throttled)) {
            // Unacknowledged: the device sends it again later.
            metrics.throttled(&channel);
            continue;
        }
        metrics.received(&channel);
        match r {
            Ok(m) => verified.push((channel, m)),
            Err(refusal) => {
                let topic = &p.topic;
                tracing::warn!(%topic, reason = refusal.reason(), detail = ?refusal, "rejected device message");
                metrics.reject(&channel, refusal.reason());
            }
        }
    }
    // Log chunks go to the caller waiting for them, never to the store.
    verified.retain(|(_, m)| match m {
        Verified::Event(e) if e.kind == LOG_CHUNK_KIND => {
            let outcome = match serde_json::from_value::<LogChunk>(e.payload.clone()) {
                Ok(chunk) => logs.deliver(&e.device_id, chunk),
                Err(_) => "malformed",
            };
            if outcome != "delivered" {
                tracing::debug!(device = %e.device_id, id = %e.id, outcome, "log chunk dropped");
            }
            metrics
                .log_chunks
                .get_or_create(&vec![("outcome", outcome.to_owned())])
                .inc();
            false
        }
        _ => true,
    });
    let (outcomes, pruned, results) = store.transaction(|tx| {
        let outcomes = verified
            .iter()
            .map(|(_, m)| store_one(tx, m))
            .collect::<Result<Vec<_>, _>>()?;
        let mut results = Vec::new();
        for ((_, m), o) in verified.iter().zip(&outcomes) {
            if let (Verified::Event(e), Ingested::Stored) = (m, o)
                && e.kind == COMMAND_RESULT_KIND
            {
                results.push(apply_command_result(tx, e)?);
            }
        }
        // Retention by count, in the same transaction: no device ever holds
        // more than its limit, whatever it sends.
        let mut pruned = 0;
        if limits.events_per_device > 0 {
            let devices: std::collections::BTreeSet<&DeviceId> = verified
                .iter()
                .zip(&outcomes)
                .filter_map(|((_, m), o)| match (m, o) {
                    (Verified::Event(e), Ingested::Stored) => Some(&e.device_id),
                    _ => None,
                })
                .collect();
            for d in devices {
                pruned += Store::trim_events(tx, d, limits.events_per_device)?;
            }
        }
        Ok::<_, StoreError>((outcomes, pruned, results))
    })?;
    if pruned > 0 {
        metrics.events_pruned("count", pruned);
    }
    for r in results {
        let (family, label) = match r {
            "done" | "failed" => (&metrics.commands_finished, "state"),
            _ => (&metrics.command_results_ignored, "reason"),
        };
        family.get_or_create(&vec![(label, r.to_owned())]).inc();
    }
    let mut acks = Acks::new();
    let mut online = Vec::new();
    // What the dashboard shows changed (not heartbeats: charts are read
    // when a device's page is).
    let mut changed: Vec<DeviceId> = verified
        .iter()
        .zip(&outcomes)
        .filter_map(|((_, m), o)| match (m, o) {
            (Verified::Status(r), Ingested::Stored) => Some(r.device_id.clone()),
            (Verified::Event(e), Ingested::Stored) => Some(e.device_id.clone()),
            (Verified::Presence(p), Ingested::Stored) => Some(p.device_id.clone()),
            _ => None,
        })
        .collect();
    changed.sort();
    changed.dedup();
    for ((channel, m), outcome) in verified.iter().zip(outcomes) {
        match (m, outcome) {
            (Verified::Event(e), Ingested::Stored | Ingested::Duplicate) => {
                if outcome == Ingested::Stored {
                    metrics.events_stored.inc();
                } else {
                    metrics.events_duplicate.inc();
                }
                acks.entry(e.device_id.clone())
                    .or_default()
                    .events
                    .push(e.id.clone());
            }
            (_, Ingested::UnknownDevice) => metrics.reject(channel, "unknown_device"),
            (Verified::Status(r), Ingested::Stored | Ingested::Stale) => {
                if outcome == Ingested::Stale {
                    metrics.reject(channel, "stale_report");
                }
                let a = acks.entry(r.device_id.clone()).or_default();
                a.status_reported_at_ms = a.status_reported_at_ms.max(Some(r.reported_at_ms));
            }
            (Verified::Presence(p), Ingested::Stored) if p.state == PresenceState::Online => {
                online.push(p.device_id.clone());
            }
            _ => {}
        }
    }
    Ok(Committed {
        acks,
        online,
        changed,
    })
}

/// The hub's data directory and the space ingest leaves free on it.
#[derive(Debug, Clone)]
pub struct Disk {
    pub dir: std::path::PathBuf,
    pub reserve: u64,
}

impl Disk {
    /// `Some(free bytes)` when the filesystem is below the reserve.
    fn below_reserve(&self) -> Option<u64> {
        let s = edgefleet_daemon::disk::space(&self.dir).ok()?;
        (s.available < self.reserve).then_some(s.available)
    }
}

/// The ingest loop: batches publishes, commits, then acknowledges them to
/// the devices (signed with `signer`) and to the broker. Below the disk
/// reserve nothing is stored nor acknowledged to devices, which keep their
/// messages and resend them; the broker is always acknowledged (PUBACK is
/// flow control, the device's outbox is the copy that counts).
pub async fn run(
    store: Store,
    registry: Registry,
    metrics: Arc<Metrics>,
    keys: Arc<crate::keys::HubKeys>,
    client: AsyncClient,
    (disk, limits, commands, logs, changes): (
        Disk,
        Arc<Limits>,
        crate::commands::Dispatch,
        LogStreams,
        crate::ui::Changes,
    ),
    mut rx: mpsc::UnboundedReceiver<Publish>,
) {
    let mut backlog_warned = false;
    let mut disk_full_warned = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let backlog = rx.len();
        metrics.ingest_backlog.set(backlog as i64);
        if backlog >= BACKLOG_WARN && !backlog_warned {
            backlog_warned = true;
            tracing::warn!(
                backlog,
                "device messages arrive faster than the hub stores them (backlog held in memory, unacknowledged)"
            );
        } else if backlog < BACKLOG_WARN / 2 {
            backlog_warned = false;
        }
        if let Some(free) = disk.below_reserve() {
            if !disk_full_warned {
                tracing::error!(
                    free,
                    reserve = disk.reserve,
                    dir = %disk.dir.display(),
                    "the hub's disk is at its reserve: device messages are not stored \
                     (devices keep and resend them); desired state and the API are still served"
                );
                disk_full_warned = true;
            }
            for p in &batch {
                let channel = Topic::parse(&p.topic)
                    .map_or_else(|_| "unknown".to_owned(), |t| t.channel.as_str().to_owned());
                metrics.received(&channel);
                metrics.reject(&channel, "hub_disk_full");
            }
            puback(&client, &batch).await;
            continue;
        }
        if disk_full_warned {
            tracing::info!("the hub's disk has room again: storing device messages");
            disk_full_warned = false;
        }
        let started = Instant::now();
        let (s, r, m, limits, logs) = (
            store.clone(),
            registry.clone(),
            metrics.clone(),
            limits.clone(),
            logs.clone(),
        );
        let result = tokio::task::spawn_blocking(move || {
            let res = process(&s, &r, &m, (&limits, &logs), &batch);
            (res, batch)
        })
        .await;
        let Ok((res, batch)) = result else {
            tracing::error!("ingest worker panicked; messages left unacknowledged for redelivery");
            continue;
        };
        metrics
            .ingest_batch
            .observe(started.elapsed().as_secs_f64());
        match res {
            Ok(Committed {
                acks,
                online,
                changed,
            }) => {
                changes.devices(changed);
                for device in online {
                    commands.online(device);
                }
                let (s2, n) = (keys.signer(), acks.len());
                let messages = tokio::task::spawn_blocking(move || {
                    ack_messages(acks, &s2, edgefleet_protocol::now_ms())
                })
                .await
                .unwrap_or_default();
                if messages.len() < n {
                    tracing::error!("cannot sign acknowledgements; devices will resend");
                }
                for (topic, payload) in messages {
                    match client
                        .publish(topic, QoS::AtLeastOnce, false, payload)
                        .await
                    {
                        Ok(()) => {
                            metrics.acks_published.inc();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot queue an acknowledgement; the device will resend")
                        }
                    }
                }
                puback(&client, &batch).await;
            }
            // Not acknowledged to the devices, which resend; the broker gets
            // its PUBACK so it keeps delivering.
            Err(e) => {
                tracing::error!(
                    error = %e,
                    source = ?std::error::Error::source(&e),
                    count = batch.len(),
                    "cannot store device messages; devices will resend them"
                );
                puback(&client, &batch).await;
            }
        }
    }
}

/// Acknowledges a batch to the broker.
async fn puback(client: &AsyncClient, batch: &[Publish]) {
    for p in batch {
        if let Err(e) = client.ack(p).await {
            tracing::warn!(error = %e, "cannot acknowledge a device message");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{enroll, id, metric, store};
    use edgefleet_api::CommandState;
    use edgefleet_protocol::{Health, SyncState, WorkloadStatus};

    /// A hub with two enrolled devices; their keys.
    fn hub() -> (Store, Registry, Metrics, Signer, Signer) {
        let s = store();
        let a = enroll(&s, "pi-1", &[("site", "a")]);
        let b = enroll(&s, "pi-2", &[("site", "a")]);
        let registry = Registry::load(&s).unwrap();
        (s, registry, Metrics::new(), a, b)
    }

    fn publish(device: &str, channel: Channel, payload: Vec<u8>) -> Publish {
        let topic = Topic::new(id(device), channel).to_string();
        Publish::new(topic, QoS::AtLeastOnce, payload)
    }

    fn event(device: &str, event_id: &str) -> Event {
        Event {
            id: event_id.to_owned(),
            device_id: id(device),
            kind: "app.telemetry".into(),
            workload: None,
            created_at_ms: edgefleet_protocol::now_ms(),
            payload: serde_json::json!({"t": 21.5}),
        }
    }

    fn status(device: &str, at_ms: u64, health: Health) -> StatusReport {
        StatusReport {
            device_id: id(device),
            applied: None,
            reported_at_ms: at_ms,
            workloads: vec![WorkloadStatus {
                name: "web.app".into(),
                sync: SyncState::Synced,
                health,
                message: None,
            }],
            message: None,
            agent_version: "test".into(),
            k3s_version: None,
            desired_rejected: None,
            update_failed: None,
            unstored: false,
            hub_key_id: None,
        }
    }

    /// A device's command result event, as its agent sends it.
    fn result_event(device: &str, command: &str, ok: bool) -> Event {
        Event {
            kind: COMMAND_RESULT_KIND.into(),
            payload: serde_json::to_value(CommandResult {
                command_id: command.into(),
                ok,
                message: "ran".into(),
            })
            .unwrap(),
            ..event(device, command)
        }
    }

    /// A device with valid credentials cannot finish another device's
    /// command, nor answer a log request made of another device: both are
    /// acknowledged (stored as its own event, or dropped) and counted.
    #[test]
    fn command_results_and_log_chunks_count_only_from_the_device_asked() {
        use crate::store::NewCommand;
        let (s, reg, m, a, b) = hub();
        s.create_commands(&[NewCommand {
            device_id: id("pi-1"),
            id: "c1".into(),
            action: edgefleet_protocol::CommandAction::Resync,
            created_ms: 1,
            expires_ms: u64::MAX / 2,
        }])
        .unwrap();
        let streams = LogStreams::default();
        let mut waiting = streams.register("c9", id("pi-1"));
        let chunk = |device: &str, signer: &Signer| {
            let e = Event {
                kind: LOG_CHUNK_KIND.into(),
                payload: serde_json::to_value(LogChunk {
                    command_id: "c9".into(),
                    seq: 0,
                    data: "forged\n".into(),
                    last: true,
                    error: None,
                })
                .unwrap(),
                ..event(device, "c9-l0")
            };
            publish(device, Channel::Events, signer.seal(&e))
        };
        let batch = [
            publish(
                "pi-2",
                Channel::Events,
                b.seal(&result_event("pi-2", "c1", false)),
            ),
            chunk("pi-2", &b),
        ];
        let acks = process(&s, &reg, &m, (&Limits::default(), &streams), &batch)
            .unwrap()
            .acks;
        assert_eq!(acks[&id("pi-2")].events, ["c1"]);
        assert_eq!(
            s.get_command("pi-1", "c1").unwrap().unwrap().state,
            CommandState::Queued
        );
        assert!(
            waiting.rx.try_recv().is_err(),
            "a chunk from pi-2 reached pi-1's caller"
        );
        assert_eq!(
            metric(
                &m,
                "edgefleet_hub_command_results_ignored_total{reason=\"unknown\"}"
            ),
            1.0
        );
        assert_eq!(
            metric(
                &m,
                "edgefleet_hub_log_chunks_total{outcome=\"wrong_device\"}"
            ),
            1.0
        );
        // The device asked: its result finishes the command, its chunk
        // reaches the caller and is not stored.
        let batch = [
            publish(
                "pi-1",
                Channel::Events,
                a.seal(&result_event("pi-1", "c1", true)),
            ),
            chunk("pi-1", &a),
        ];
        process(&s, &reg, &m, (&Limits::default(), &streams), &batch).unwrap();
        assert_eq!(
            s.get_command("pi-1", "c1").unwrap().unwrap().state,
            CommandState::Done
        );
        assert_eq!(waiting.rx.try_recv().unwrap().data, "forged\n");
        assert!(
            s.events("pi-1", 0, 10)
                .unwrap()
                .iter()
                .all(|e| e.kind != LOG_CHUNK_KIND)
        );
        assert_eq!(
            metric(&m, "edgefleet_hub_commands_finished_total{state=\"done\"}"),
            1.0
        );
    }

    #[test]
    fn a_device_over_its_rate_is_dropped_unacknowledged_and_counted() {
        let (s, reg, m, a, b) = hub();
        let limits = Limits::new(
            &IngestConfig {
                rate_per_device: 1,
                burst_per_device: 3,
            },
            0,
        );
        let mut batch: Vec<Publish> = (1..=5)
            .map(|i| {
                publish(
                    "pi-1",
                    Channel::Events,
                    a.seal(&event("pi-1", &format!("e-{i}"))),
                )
            })
            .collect();
        batch.push(publish(
            "pi-2",
            Channel::Events,
            b.seal(&event("pi-2", "x")),
        ));
        let acks = process(&s, &reg, &m, (&limits, &LogStreams::default()), &batch)
            .unwrap()
            .acks;
        // Three of pi-1's (its burst), none beyond; pi-2 is not held back.
        assert_eq!(acks[&id("pi-1")].events, ["e-1", "e-2", "e-3"]);
        assert_eq!(acks[&id("pi-2")].events, ["x"]);
        assert_eq!(
            metric(
                &m,
                "edgefleet_hub_ingest_throttled_total{channel=\"events\"}"
            ),
            2.0
        );
        assert_eq!(s.events("pi-1", 0, 100).unwrap().len(), 3);
    }

    #[test]
    fn retention_keeps_each_devices_newest_events_in_the_same_transaction() {
        let (s, reg, m, a, b) = hub();
        let limits = Limits::new(
            &IngestConfig {
                rate_per_device: 0,
                burst_per_device: 0,
            },
            3,
        );
        for round in 0..2 {
            let batch: Vec<Publish> = (1..=4)
                .map(|i| {
                    let e = format!("e-{round}-{i}");
                    publish("pi-1", Channel::Events, a.seal(&event("pi-1", &e)))
                })
                .chain([publish(
                    "pi-2",
                    Channel::Events,
                    b.seal(&event("pi-2", &format!("x-{round}"))),
                )])
                .collect();
            let acks = process(&s, &reg, &m, (&limits, &LogStreams::default()), &batch)
                .unwrap()
                .acks;
            // Everything stored is acknowledged, pruned or not.
            assert_eq!(acks[&id("pi-1")].events.len(), 4);
        }
        let kept: Vec<String> = s
            .events("pi-1", 0, 100)
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(kept, ["e-1-2", "e-1-3", "e-1-4"]);
        // The other device's events are its own count.
        assert_eq!(s.events("pi-2", 0, 100).unwrap().len(), 2);
        assert_eq!(
            metric(&m, "edgefleet_hub_events_pruned_total{reason=\"count\"}"),
            5.0
        );
        // By age: everything arrived before "now + 1 s".
        assert_eq!(
            s.prune_events_before(edgefleet_protocol::now_ms() + 1000, 2)
                .unwrap(),
            2
        );
        assert_eq!(
            s.prune_events_before(edgefleet_protocol::now_ms() + 1000, 10)
                .unwrap(),
            3
        );
    }

    fn rejected(m: &Metrics, channel: &str, reason: &str) -> f64 {
        metric(
            m,
            &format!(
                "edgefleet_hub_messages_rejected_total{{channel=\"{channel}\",reason=\"{reason}\"}}"
            ),
        )
    }

    #[test]
    fn events_are_stored_once_and_acknowledged_every_time() {
        let (s, reg, m, a, _) = hub();
        let e = a.seal(&event("pi-1", "e-1"));
        let batch = [
            publish("pi-1", Channel::Events, e.clone()),
            publish("pi-1", Channel::Events, e.clone()),
        ];
        let acks = process(
            &s,
            &reg,
            &m,
            (&Limits::default(), &LogStreams::default()),
            &batch,
        )
        .unwrap()
        .acks;
        assert_eq!(acks[&id("pi-1")].events, ["e-1", "e-1"]);
        // Redelivered in a later batch (the device never saw the Ack).
        let acks = process(
            &s,
            &reg,
            &m,
            (&Limits::default(), &LogStreams::default()),
            &batch[..1],
        )
        .unwrap()
        .acks;
        assert_eq!(acks[&id("pi-1")].events, ["e-1"]);
        assert_eq!(s.events("pi-1", 0, 10).unwrap().len(), 1, "stored once");
        assert_eq!(m.events_stored.get(), 1);
        assert_eq!(m.events_duplicate.get(), 2);
    }

    #[test]
    fn a_forged_signature_is_refused_and_not_acknowledged() {
        let (s, reg, m, _, _) = hub();
        let forger = Signer::generate();
        let batch = [publish(
            "pi-1",
            Channel::Events,
            forger.seal(&event("pi-1", "e-1")),
        )];
        let acks = process(
            &s,
            &reg,
            &m,
            (&Limits::default(), &LogStreams::default()),
            &batch,
        )
        .unwrap()
        .acks;
        assert!(acks.is_empty(), "nothing acknowledged");
        assert!(s.events("pi-1", 0, 10).unwrap().is_empty());
        let reasons = m.render();
        assert!(
            reasons.contains("edgefleet_hub_messages_rejected_total{channel=\"events\",reason="),
            "{reasons}"
        );
    }

    #[test]
    fn a_device_cannot_speak_for_another() {
        let (s, reg, m, a, b) = hub();
        // pi-1's key, on pi-2's topic, naming pi-2.
        let on_other_topic = publish("pi-2", Channel::Events, a.seal(&event("pi-2", "x")));
        // pi-2's own key, on its own topic, but naming pi-1 inside.
        let naming_other = publish("pi-2", Channel::Events, b.seal(&event("pi-1", "y")));
        let acks = process(
            &s,
            &reg,
            &m,
            (&Limits::default(), &LogStreams::default()),
            &[on_other_topic, naming_other],
        )
        .unwrap()
        .acks;
        assert!(acks.is_empty());
        for dev in ["pi-1", "pi-2"] {
            assert!(s.events(dev, 0, 10).unwrap().is_empty(), "{dev}");
        }
        assert_eq!(metric(&m, "edgefleet_hub_events_stored_total"), 0.0);
    }

    #[test]
    fn unknown_devices_bad_topics_and_wrong_directions_are_refused() {
        let (s, reg, m, a, _) = hub();
        let batch = [
            publish("pi-9", Channel::Events, a.seal(&event("pi-9", "e"))),
            Publish::new("not/an/edgefleet/topic", QoS::AtLeastOnce, b"x".to_vec()),
            publish("pi-1", Channel::Desired, a.seal(&event("pi-1", "e"))),
        ];
        assert!(
            process(
                &s,
                &reg,
                &m,
                (&Limits::default(), &LogStreams::default()),
                &batch
            )
            .unwrap()
            .acks
            .is_empty()
        );
        assert_eq!(rejected(&m, "events", "unknown_device"), 1.0);
        assert_eq!(rejected(&m, "unknown", "bad_topic"), 1.0);
        assert_eq!(rejected(&m, "desired", "wrong_direction"), 1.0);
    }

    #[test]
    fn a_stale_status_is_not_stored_but_the_newest_is_acknowledged() {
        let (s, reg, m, a, _) = hub();
        let now = edgefleet_protocol::now_ms();
        let newer = publish(
            "pi-1",
            Channel::Status,
            a.seal(&status("pi-1", now, Health::Healthy)),
        );
        let older = publish(
            "pi-1",
            Channel::Status,
            a.seal(&status("pi-1", now - 1000, Health::Degraded)),
        );
        let acks = process(
            &s,
            &reg,
            &m,
            (&Limits::default(), &LogStreams::default()),
            &[newer, older],
        )
        .unwrap()
        .acks;
        assert_eq!(acks[&id("pi-1")].status_reported_at_ms, Some(now));
        let w = s.workload_status(Some("pi-1")).unwrap();
        assert_eq!(w[0].health, Health::Healthy, "the older report lost");
        assert_eq!(rejected(&m, "status", "stale_report"), 1.0);
    }

    #[test]
    fn presence_of_an_old_session_does_not_override_the_current_one() {
        let (s, reg, m, a, _) = hub();
        let presence = |state, session| {
            publish(
                "pi-1",
                Channel::Presence,
                a.seal(&Presence {
                    device_id: id("pi-1"),
                    state,
                    session,
                    at_ms: edgefleet_protocol::now_ms(),
                }),
            )
        };
        process(
            &s,
            &reg,
            &m,
            (&Limits::default(), &LogStreams::default()),
            &[presence(PresenceState::Online, 2)],
        )
        .unwrap();
        // The will of the replaced session 1 arrives late.
        process(
            &s,
            &reg,
            &m,
            (&Limits::default(), &LogStreams::default()),
            &[presence(PresenceState::Offline, 1)],
        )
        .unwrap();
        let dev = s.get_device("pi-1").unwrap().unwrap();
        assert_eq!(dev.presence, crate::store::Presence::Online);
        assert!(dev.last_seen_ms.is_some());
        process(
            &s,
            &reg,
            &m,
            (&Limits::default(), &LogStreams::default()),
            &[presence(PresenceState::Offline, 2)],
        )
        .unwrap();
        let dev = s.get_device("pi-1").unwrap().unwrap();
        assert_eq!(dev.presence, crate::store::Presence::Offline);
        assert_eq!(s.count_devices().unwrap(), (2, 0));
    }

    #[test]
    fn a_heartbeat_under_disk_pressure_sets_the_condition_and_clears_it() {
        let (s, reg, m, a, _) = hub();
        let heartbeat = |pressure| {
            publish(
                "pi-1",
                Channel::Heartbeat,
                a.seal(&Heartbeat {
                    device_id: id("pi-1"),
                    at_ms: edgefleet_protocol::now_ms(),
                    uptime_s: 1,
                    cpu_percent: 5.0,
                    mem_used_bytes: 1,
                    mem_total_bytes: 2,
                    disk_used_bytes: 99,
                    disk_total_bytes: 100,
                    disk_pressure: pressure,
                    temperature_c: None,
                    agent_rss_bytes: 1,
                    agent_version: "test".into(),
                    k3s_version: None,
                    outbox_depth: 0,
                    outbox_dropped: 0,
                }),
            )
        };
        process(
            &s,
            &reg,
            &m,
            (&Limits::default(), &LogStreams::default()),
            &[heartbeat(true)],
        )
        .unwrap();
        let dev = s.get_device("pi-1").unwrap().unwrap();
        assert_eq!(
            dev.conditions[0].kind,
            crate::store::ConditionType::DiskPressure
        );
        assert_eq!(dev.heartbeat_summary().unwrap().disk_used_bytes, 99);
        process(
            &s,
            &reg,
            &m,
            (&Limits::default(), &LogStreams::default()),
            &[heartbeat(false)],
        )
        .unwrap();
        assert!(s.get_device("pi-1").unwrap().unwrap().conditions.is_empty());
    }

    #[test]
    fn acknowledgements_are_split_at_the_id_limit() {
        let hub = Signer::generate();
        let mut acks = Acks::new();
        acks.insert(
            id("pi-1"),
            DeviceAck {
                events: (0..MAX_ACK_IDS + 1).map(|i| format!("e{i}")).collect(),
                status_reported_at_ms: Some(7),
            },
        );
        acks.insert(id("pi-2"), DeviceAck::default());
        let msgs = ack_messages(acks, &hub, 1);
        assert_eq!(msgs.len(), 3);
        let pi1 = id("pi-1");
        let first: Ack = open(&msgs[0].1, hub.public(), &Expect::device(&pi1)).unwrap();
        let second: Ack = open(&msgs[1].1, hub.public(), &Expect::device(&pi1)).unwrap();
        assert_eq!(first.events.len() + second.events.len(), MAX_ACK_IDS + 1);
        assert_eq!(
            (first.status_reported_at_ms, second.status_reported_at_ms),
            (Some(7), None),
            "the status is acknowledged once"
        );
        assert!(msgs[2].0.contains("pi-2"));
    }
}
