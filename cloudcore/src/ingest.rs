//! Ingest: verifies and stores what devices publish (status, events,
//! presence, heartbeats). Every message is checked against the key the
//! device registered at enrollment, for the device named by its topic;
//! rejected ones are logged and counted by reason and never stored. Messages
//! are committed in batches, and acknowledged to the broker only after the
//! commit, so an acknowledged message is never lost.

use std::sync::Arc;
use std::time::Instant;

use edgefleet_protocol::sign::{Expect, Message};
use edgefleet_protocol::{
    Channel, Event, Heartbeat, Presence, PresenceState, Rejection, StatusReport, Topic, open,
};
use rumqttc::{AsyncClient, Publish};
use rusqlite::Connection;
use tokio::sync::mpsc;

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
    Protocol(Rejection),
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Topic => "bad_topic",
            Refusal::UnknownDevice => "unknown_device",
            Refusal::WrongDirection => "wrong_direction",
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

fn verify(registry: &Registry, p: &Publish) -> (String, Result<Verified, Refusal>) {
    let Ok(topic) = Topic::parse(&p.topic) else {
        return ("unknown".into(), Err(Refusal::Topic));
    };
    let channel = topic.channel.as_str().to_owned();
    let Some(dev) = registry.get(&topic.device) else {
        return (channel, Err(Refusal::UnknownDevice));
    };
    let expect = Expect::device(&topic.device);
    fn v<M: Message>(
        p: &Publish,
        key: &edgefleet_protocol::PublicKey,
        e: &Expect<'_>,
    ) -> Result<M, Refusal> {
        open::<M>(&p.payload, key, e).map_err(Refusal::Protocol)
    }
    let r = match topic.channel {
        Channel::Status => v(p, &dev.key, &expect).map(Verified::Status),
        Channel::Events => v(p, &dev.key, &expect).map(Verified::Event),
        Channel::Presence => v(p, &dev.key, &expect).map(Verified::Presence),
        Channel::Heartbeat => v(p, &dev.key, &expect).map(Verified::Heartbeat),
        Channel::Desired | Channel::Commands => Err(Refusal::WrongDirection),
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
        Verified::Heartbeat(h) => {
            Store::ingest_heartbeat(tx, &h.device_id, &serde_json::to_string(h)?)
        }
    }
}

/// Verifies and commits one batch; returns nothing: outcomes go to metrics
/// and logs.
fn process(
    store: &Store,
    registry: &Registry,
    metrics: &Metrics,
    batch: &[Publish],
) -> Result<(), StoreError> {
    let mut verified = Vec::with_capacity(batch.len());
    for p in batch {
        let (channel, r) = verify(registry, p);
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
    let outcomes = store.transaction(|tx| {
        verified
            .iter()
            .map(|(_, m)| store_one(tx, m))
            .collect::<Result<Vec<_>, _>>()
    })?;
    for ((channel, m), outcome) in verified.iter().zip(outcomes) {
        match (m, outcome) {
            (Verified::Event(_), Ingested::Stored) => {
                metrics.events_stored.inc();
            }
            (Verified::Event(_), Ingested::Duplicate) => {
                metrics.events_duplicate.inc();
            }
            (_, Ingested::UnknownDevice) => metrics.reject(channel, "unknown_device"),
            (Verified::Status(_), Ingested::Stale) => metrics.reject(channel, "stale_report"),
            _ => {}
        }
    }
    Ok(())
}

/// The ingest loop: batches publishes, commits, then acknowledges them.
pub async fn run(
    store: Store,
    registry: Registry,
    metrics: Arc<Metrics>,
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<Publish>,
) {
    let mut backlog_warned = false;
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
        let started = Instant::now();
        let (s, r, m) = (store.clone(), registry.clone(), metrics.clone());
        let result = tokio::task::spawn_blocking(move || {
            let res = process(&s, &r, &m, &batch);
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
            Ok(()) => {
                for p in &batch {
                    if let Err(e) = client.ack(p).await {
                        tracing::warn!(error = %e, "cannot acknowledge a device message");
                    }
                }
            }
            // Not acknowledged: the broker redelivers after the hub reconnects.
            Err(e) => {
                tracing::error!(error = %e, count = batch.len(), "cannot store device messages")
            }
        }
    }
}
