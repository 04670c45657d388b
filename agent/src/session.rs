//! The MQTT session with the hub's broker (rumqttc): persistent session
//! (clean_session = false), QoS 1, the device id as client id, a signed
//! `offline` presence as last will and a retained signed `online` presence
//! on every connect, capped exponential reconnect backoff with jitter, and a
//! short keepalive so a dead link is noticed in seconds.
//!
//! Two tasks: the *poller* owns the rumqttc `EventLoop` and is never
//! cancelled mid-poll (rumqttc's poll is not cancel-safe); the *session*
//! task is the only publisher: it verifies incoming documents, drains the
//! outbox in order with a window of in-flight publishes, marks rows sent on
//! PUBACK and deletes them on the hub's signed Ack. Publishes are paired
//! with packet ids through [`Inflight`].
//!
//! Delivery is end to end: at most `outbox.max_unacked` rows are out
//! without the hub's Ack. When Acks stop arriving for `ack_timeout_secs`
//! while rows await them (a hub that died after its broker took them), the
//! rows are sent again, waiting twice as long each silent round, up to
//! [`ACK_TIMEOUT_MAX`]; every reconnect resends them too. Rows older than
//! `outbox.max_age_secs` are expired, connected or not, so an agent whose
//! hub never answers does not send forever.
//!
//! This module never decides what runs: it stores verified desired state and
//! wakes the reconciler.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgefleet_protocol::{Channel, Command, Presence, PresenceState, Topic};
use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing,
    Publish, QoS,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::outbox::{Inflight, Tag};
use crate::shared::Shared;
use edgefleet_daemon::backoff::Backoff;
use edgefleet_daemon::mqtt::{
    BrokerUrl, BrokerUrlError, PemError, next_event, pause, qos, tls_transport,
};

mod delivery;

/// Rows the broker acknowledged are recorded as sent in batches of this
/// size, or after [`ACK_FLUSH`].
const ACK_BATCH: usize = 512;
const ACK_FLUSH: Duration = Duration::from_millis(20);
/// The longest wait for the hub's Ack before resending (the wait doubles
/// from `outbox.ack_timeout_secs` per silent round).
pub const ACK_TIMEOUT_MAX: Duration = Duration::from_secs(600);
/// How often expired outbox rows are looked for.
const EXPIRY_EVERY: Duration = Duration::from_secs(60);
/// Outbox payloads are at most an event envelope (128 KiB); leave headroom
/// over the 1 MiB desired-state limit for incoming packets.
const MAX_PACKET: usize = edgefleet_protocol::limits::MAX_PAYLOAD_BYTES + 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    BrokerUrl(#[from] BrokerUrlError),
    #[error(transparent)]
    CaFile(#[from] PemError),
}

/// What the poller reports to the session task.
#[derive(Debug)]
enum Ev {
    Connected { session_present: bool, session: u64 },
    Mqtt(Event),
    Disconnected(ConnectionError),
}

/// Builds the rumqttc options from config and identity.
fn options(shared: &Shared) -> Result<MqttOptions, SessionError> {
    let cfg = &shared.cfg.broker;
    let url = BrokerUrl::parse(&cfg.url)?;
    let mut o = MqttOptions::new(shared.device.as_str(), url.host, url.port);
    let username = if cfg.username.is_empty() {
        shared.device.as_str()
    } else {
        cfg.username.as_str()
    };
    o.set_credentials(username, shared.identity.broker_password.as_str())
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(cfg.keepalive_secs))
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        .set_inflight(shared.cfg.outbox.window.saturating_add(64))
        .set_manual_acks(true);
    if url.tls {
        o.set_transport(tls_transport("broker.ca_file", &cfg.ca_file)?);
    }
    Ok(o)
}

fn presence(shared: &Shared, state: PresenceState, session: u64, at_ms: u64) -> Vec<u8> {
    shared.identity.signer().seal(&Presence {
        device_id: shared.device.clone(),
        state,
        session,
        at_ms,
    })
}

/// Runs the session until `cancel`; on a clean stop publishes `offline`.
pub async fn run(shared: Arc<Shared>, cancel: CancellationToken) -> Result<(), SessionError> {
    let opts = options(&shared)?;
    let window = usize::from(shared.cfg.outbox.window);
    let (client, eventloop) = AsyncClient::new(opts, window + 256);
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    let (resume_tx, resume_rx) = mpsc::channel(1);
    let poller_stop = CancellationToken::new();
    let poller = tokio::spawn(poll_loop(
        eventloop,
        shared.clone(),
        ev_tx,
        resume_rx,
        poller_stop.clone(),
    ));
    let mut s = Session {
        shared: shared.clone(),
        client,
        inflight: Inflight::default(),
        broker_acked: Vec::new(),
        outstanding: 0,
        last_progress: tokio::time::Instant::now(),
        ack_timeout: Backoff::new(
            Duration::from_secs(shared.cfg.outbox.ack_timeout_secs),
            ACK_TIMEOUT_MAX,
        ),
        next_expiry: tokio::time::Instant::now(),
        connected: false,
        last_connect_error: None,
        maybe_more: false,
        need_subscribe: true,
        session: 0,
        telemetry: crate::telemetry::Sampler::new(),
    };
    s.drive(ev_rx, resume_tx, cancel).await;
    poller_stop.cancel();
    let _ = poller.await;
    Ok(())
}

struct Session {
    shared: Arc<Shared>,
    client: AsyncClient,
    inflight: Inflight,
    /// Rows the broker acknowledged, to record as sent.
    broker_acked: Vec<i64>,
    /// Rows handed to rumqttc on this connection (up to `inflight.last_row`)
    /// that the hub has not acknowledged yet.
    outstanding: u64,
    /// Last time the hub acknowledged something, or nothing was awaited.
    last_progress: tokio::time::Instant,
    /// Current wait for the hub's Ack before resending.
    /// How long to wait for the hub's Ack before resending; doubles per
    /// silent round.
    ack_timeout: Backoff,
    next_expiry: tokio::time::Instant,
    connected: bool,
    /// The last failed connect's error, so a retry loop logs it once.
    last_connect_error: Option<String>,
    /// The outbox may hold rows not yet handed to rumqttc.
    maybe_more: bool,
    need_subscribe: bool,
    session: u64,
    telemetry: crate::telemetry::Sampler,
}

impl Session {
    async fn drive(
        &mut self,
        mut ev_rx: mpsc::Receiver<Ev>,
        resume_tx: mpsc::Sender<()>,
        cancel: CancellationToken,
    ) {
        let shared = self.shared.clone();
        let mut heartbeat =
            tokio::time::interval(Duration::from_secs(shared.cfg.heartbeat.interval_secs));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush_at: Option<tokio::time::Instant> = None;
        let mut direct = shared.direct.take();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                ev = ev_rx.recv() => match ev {
                    Some(Ev::Connected { session_present, session }) => {
                        self.on_connected(session_present, session);
                    }
                    Some(Ev::Mqtt(ev)) => self.on_event(ev).await,
                    Some(Ev::Disconnected(e)) => {
                        self.on_disconnected(&e).await;
                        // The poller waits for this before draining rumqttc's queue.
                        let _ = resume_tx.send(()).await;
                    }
                    None => break,
                },
                _ = shared.outbox_wake.notified() => self.maybe_more = true,
                Some(payload) = direct.recv(), if self.connected => {
                    self.publish(Channel::Events, payload, Tag::Other);
                }
                _ = heartbeat.tick() => self.heartbeat().await,
                _ = shared.heartbeat_wake.notified() => self.heartbeat().await,
                _ = housekeeping.tick() => self.housekeeping().await,
                _ = sleep_until(flush_at), if flush_at.is_some() => {
                    self.flush_acks().await;
                }
            }
            if self.broker_acked.len() >= ACK_BATCH {
                self.flush_acks().await;
            }
            flush_at = match (self.broker_acked.is_empty(), flush_at) {
                (true, _) => None,
                (false, None) => Some(tokio::time::Instant::now() + ACK_FLUSH),
                (false, at) => at,
            };
            self.top_up().await;
            self.send_unstored_status();
        }
        self.shutdown(&mut ev_rx).await;
    }

    fn topic(&self, channel: Channel) -> String {
        Topic::new(self.shared.device.clone(), channel).to_string()
    }

    fn publish(&mut self, channel: Channel, payload: Vec<u8>, tag: Tag) -> bool {
        match self.client.try_publish(
            self.topic(channel),
            qos(channel),
            channel.retained(),
            payload,
        ) {
            Ok(()) => {
                self.inflight.queued(tag);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "MQTT request queue full; will retry");
                false
            }
        }
    }

    fn on_connected(&mut self, session_present: bool, session: u64) {
        let m = &self.shared.metrics;
        m.mqtt_connects.inc();
        m.mqtt_connected.set(1);
        self.connected = true;
        self.last_connect_error = None;
        self.shared.connected.store(true, Ordering::Relaxed);
        self.session = session;
        self.inflight.reset();
        // Everything the hub has not acknowledged is sent again.
        self.outstanding = 0;
        self.last_progress = tokio::time::Instant::now();
        self.ack_timeout.reset();
        self.maybe_more = true;
        tracing::info!(session_present, "MQTT connected");
        // Subscribed before `online` is announced: what the hub sends a
        // device it sees come online (commands) is never published before
        // the subscription exists.
        if self.need_subscribe || !session_present {
            let subs = [Channel::Desired, Channel::Commands, Channel::Acks].map(|c| {
                rumqttc::SubscribeFilter {
                    path: self.topic(c),
                    qos: QoS::AtLeastOnce,
                }
            });
            if let Err(e) = self.client.try_subscribe_many(subs) {
                tracing::warn!(error = %e, "cannot queue subscribe; retrying on next connect");
            }
        }
        let online = presence(
            &self.shared,
            PresenceState::Online,
            session,
            edgefleet_protocol::now_ms(),
        );
        self.publish(Channel::Presence, online, Tag::Other);
        // A fresh status report and heartbeat for the hub on every connect.
        self.shared.report_wanted.store(true, Ordering::Relaxed);
        self.shared.reconcile_wake.notify_one();
        self.shared.heartbeat_wake.notify_one();
    }

    async fn on_disconnected(&mut self, e: &ConnectionError) {
        let error = e.to_string();
        if self.connected {
            tracing::warn!(%error, "MQTT connection lost");
        } else if self.last_connect_error.as_deref() != Some(error.as_str()) {
            // Once per streak of the same failure (a wrong CA, a refused
            // password, a broker that is down), not on every retry.
            tracing::warn!(%error, "cannot connect to the broker; retrying with backoff");
        } else {
            tracing::debug!(%error, "MQTT connect failed again");
        }
        self.last_connect_error = Some(error);
        self.shared.metrics.mqtt_disconnects.inc();
        self.shared.metrics.mqtt_connected.set(0);
        self.shared.connected.store(false, Ordering::Relaxed);
        self.connected = false;
        self.flush_acks().await;
        self.inflight.reset();
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) => self.inflight.written(pkid),
            Event::Incoming(Incoming::PubAck(ack)) => {
                if let Some(id) = self.inflight.acked(ack.pkid) {
                    self.broker_acked.push(id);
                }
            }
            Event::Incoming(Incoming::SubAck(ack)) => {
                let ok = ack
                    .return_codes
                    .iter()
                    .all(|c| !matches!(c, rumqttc::SubscribeReasonCode::Failure));
                if ok {
                    self.need_subscribe = false;
                } else {
                    tracing::error!("broker refused our subscriptions (check its ACLs)");
                }
            }
            Event::Incoming(Incoming::Publish(p)) => self.on_publish(p).await,
            _ => {}
        }
    }

    async fn on_publish(&mut self, p: Publish) {
        let channel = Topic::parse(&p.topic)
            .ok()
            .filter(|t| t.device == self.shared.device)
            .map(|t| t.channel);
        let ack = match channel {
            Some(Channel::Desired) => {
                let shared = self.shared.clone();
                let mut outcome = self.store_desired(&p.payload).await;
                if matches!(&outcome, crate::desired::Outcome::StoreFailed(e) if e.is_disk_full())
                    && shared.disk.release_spare()
                {
                    shared.metrics.disk_spare_released.inc();
                    outcome = self.store_desired(&p.payload).await;
                }
                match outcome {
                    crate::desired::Outcome::Accepted(_) => {
                        if shared.desired_rejected().is_some() {
                            shared.set_desired_rejected(None);
                        }
                        shared.reconcile_wake.notify_one();
                        true
                    }
                    // Not stored: let the broker redeliver it.
                    crate::desired::Outcome::StoreFailed(_) => false,
                    crate::desired::Outcome::Rejected(r) => {
                        // The hub learns why in the next status report.
                        let version = match &r {
                            edgefleet_protocol::Rejection::StaleRevision { got, .. } => Some(*got),
                            _ => edgefleet_protocol::sign::signed_version(
                                &p.payload,
                                &shared.identity.follow_hub_key(
                                    &p.payload,
                                    edgefleet_protocol::MessageKind::Desired,
                                ),
                            ),
                        };
                        shared.set_desired_rejected(Some(edgefleet_protocol::DesiredRejection {
                            version,
                            reason: r.reason().to_owned(),
                            message: edgefleet_protocol::status::truncate_message(&r.to_string()),
                            at_ms: edgefleet_protocol::now_ms(),
                        }));
                        true
                    }
                    crate::desired::Outcome::Duplicate => true,
                }
            }
            Some(Channel::Commands) => {
                self.on_command(&p.payload);
                true
            }
            // Always PUBACKed: if the rows cannot be deleted now, they are
            // resent and acknowledged again.
            Some(Channel::Acks) => {
                self.on_ack(&p.payload).await;
                true
            }
            _ => {
                tracing::warn!(topic = %p.topic, "message on an unexpected topic ignored");
                true
            }
        };
        if ack && let Err(e) = self.client.try_ack(&p) {
            tracing::warn!(error = %e, "cannot queue PUBACK");
        }
    }

    /// Verifies and stores one desired document.
    async fn store_desired(&self, payload: &bytes::Bytes) -> crate::desired::Outcome {
        let shared = self.shared.clone();
        let payload = payload.clone();
        // A rotated hub key is pinned as soon as its announcement verifies.
        let hub_key = shared
            .identity
            .follow_hub_key(&payload, edgefleet_protocol::MessageKind::Desired);
        self.shared
            .db
            .call(move |s| {
                crate::desired::handle(
                    s,
                    &payload,
                    &shared.device,
                    &hub_key,
                    &shared.identity.recipients(),
                    &shared.metrics,
                )
            })
            .await
    }

    /// Publishes a status report the disk could not take, from memory.
    fn send_unstored_status(&mut self) {
        if !self.connected {
            return;
        }
        let report = self
            .shared
            .unstored_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(report) = report
            && !self.publish(Channel::Status, report.clone(), Tag::Other)
        {
            *self
                .shared
                .unstored_status
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(report);
        }
    }

    /// A command: verified here, run (once per id) on its own task.
    fn on_command(&mut self, payload: &[u8]) {
        let shared = &self.shared;
        let Some(cmd) = shared.open_from_hub::<Command>(payload, "command") else {
            return;
        };
        tokio::spawn(crate::commands::run(shared.clone(), cmd));
    }

    async fn heartbeat(&mut self) {
        if !self.connected {
            return;
        }
        let hb = self.telemetry.heartbeat(&self.shared).await;
        let payload = self.shared.identity.signer().seal(&hb);
        self.publish(Channel::Heartbeat, payload, Tag::Other);
    }

    /// Clean stop: retained `offline`, DISCONNECT, and wait briefly for both
    /// to be written.
    async fn shutdown(&mut self, ev_rx: &mut mpsc::Receiver<Ev>) {
        if self.connected {
            let offline = presence(
                &self.shared,
                PresenceState::Offline,
                self.session,
                edgefleet_protocol::now_ms(),
            );
            self.publish(Channel::Presence, offline, Tag::Other);
            let _ = self.client.try_disconnect();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            loop {
                match tokio::time::timeout_at(deadline, ev_rx.recv()).await {
                    Ok(Some(Ev::Mqtt(Event::Outgoing(Outgoing::Disconnect)))) => break,
                    Ok(Some(Ev::Mqtt(Event::Incoming(Incoming::PubAck(ack))))) => {
                        if let Some(id) = self.inflight.acked(ack.pkid) {
                            self.broker_acked.push(id);
                        }
                    }
                    Ok(Some(Ev::Mqtt(Event::Outgoing(Outgoing::Publish(pkid))))) => {
                        self.inflight.written(pkid);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            tracing::info!("MQTT session closed (offline presence sent)");
        }
        self.flush_acks().await;
        self.shared.metrics.mqtt_connected.set(0);
        self.shared.connected.store(false, Ordering::Relaxed);
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Owns the rumqttc event loop; reconnects with capped exponential backoff
/// plus jitter. After each disconnect it waits for the session task to
/// reset its bookkeeping, then drops everything rumqttc still had queued:
/// unacknowledged outbox rows are re-read from SQLite and resent instead.
async fn poll_loop(
    mut el: EventLoop,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Ev>,
    mut resume: mpsc::Receiver<()>,
    stop: CancellationToken,
) {
    let cfg = shared.cfg.broker.clone();
    let mut el_opts = el.network_options();
    el_opts.set_connection_timeout(cfg.connect_timeout_secs);
    el.set_network_options(el_opts);
    let presence_topic = Topic::new(shared.device.clone(), Channel::Presence).to_string();
    let mut backoff = Backoff::new(
        Duration::from_millis(cfg.reconnect_min_ms),
        Duration::from_millis(cfg.reconnect_max_ms),
    )
    .with_jitter();
    loop {
        // A new session id per connection; the will carries the same one.
        let session = rand::thread_rng().gen_range(1..(1u64 << 53));
        let at = edgefleet_protocol::now_ms();
        el.mqtt_options.set_last_will(LastWill::new(
            presence_topic.clone(),
            presence(&shared, PresenceState::Offline, session, at),
            QoS::AtLeastOnce,
            true,
        ));
        loop {
            let Some(polled) = next_event(&mut el, &stop).await else {
                return;
            };
            let ev = match polled {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                    backoff.reset();
                    Ev::Connected {
                        session_present: ack.session_present,
                        session,
                    }
                }
                Ok(ev) => Ev::Mqtt(ev),
                Err(e) => {
                    if tx.send(Ev::Disconnected(e)).await.is_err() {
                        return;
                    }
                    tokio::select! {
                        _ = resume.recv() => {}
                        _ = stop.cancelled() => return,
                    }
                    // Drain requests queued before the session task noticed.
                    el.clean();
                    el.pending.clear();
                    if !pause(backoff.next_delay(), &stop).await {
                        return;
                    }
                    break;
                }
            };
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
}
