//! The hub's own MQTT session, to the embedded broker or an external one:
//! subscribes to every device's upstream channels, hands incoming publishes
//! to ingest (acknowledged only after they are committed), and carries the
//! publisher's signed documents.
//!
//! No one publish can take the session down: one larger than the protocol
//! allows fails the connection on every attempt (the client refuses to write
//! it, or the broker drops the connection), and rumqttc would resend it on
//! each reconnect forever. After a failed connection the session drops such
//! publishes from its queue and reports them, so the device gets a
//! condition and the session recovers by itself.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edgefleet_protocol::Channel;
use edgefleet_protocol::limits::MAX_PAYLOAD_BYTES;
use edgefleet_protocol::{DeviceId, Topic};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, Request};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::HUB_USERNAME;
use edgefleet_daemon::backoff::Backoff;
use edgefleet_daemon::mqtt::{BrokerUrl, next_event, pause, qos, tls_transport};

use crate::config::{Config, ConfigError};

/// The upstream channels the hub subscribes to for all devices.
pub const UPSTREAM: [Channel; 4] = [
    Channel::Status,
    Channel::Presence,
    Channel::Events,
    Channel::Heartbeat,
];

/// Options for the hub's session. `hub_password` is the embedded broker's
/// internal secret; with an external broker the configured credentials are used.
pub fn options(cfg: &Config, hub_password: &str) -> Result<MqttOptions, ConfigError> {
    let (url, username, password) = if cfg.embedded_broker() {
        let a = cfg.broker.listen;
        let host = if a.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            a.ip().to_string()
        };
        (
            BrokerUrl {
                tls: false,
                host,
                port: a.port(),
            },
            HUB_USERNAME.to_owned(),
            hub_password.to_owned(),
        )
    } else {
        (
            BrokerUrl::parse(&cfg.broker.url)?,
            cfg.broker.username.clone(),
            cfg.broker.password.clone(),
        )
    };
    let mut o = MqttOptions::new(HUB_USERNAME, url.host, url.port);
    // 30 s: the broker is next to the hub; a router busy with thousands of
    // device handshakes must not cost the hub its session (10 s did at
    // 10,000 devices: `Last pingreq isn't acked`).
    o.set_keep_alive(Duration::from_secs(30))
        // A persistent session: with an external broker, messages devices
        // send while the hub restarts wait for it.
        .set_clean_session(false)
        .set_max_packet_size(MAX_PAYLOAD_BYTES + 16 * 1024, MAX_PAYLOAD_BYTES + 16 * 1024)
        .set_inflight(1_000)
        .set_request_channel_capacity(20_000)
        .set_manual_acks(true);
    if !username.is_empty() {
        o.set_credentials(username, password);
    }
    if url.tls {
        o.set_transport(tls_transport("broker.ca_file", &cfg.broker.ca_file)?);
    }
    Ok(o)
}

/// A connected-or-reconnecting session.
#[derive(Debug, Clone)]
pub struct Session {
    pub client: AsyncClient,
    connected: Arc<AtomicBool>,
}

impl Session {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// Broker (re)connects, as the publisher needs to know them.
#[derive(Debug, Default)]
pub struct Reconnects {
    notify: tokio::sync::Notify,
    /// Since the last [`Reconnects::next`], the broker answered a connect
    /// without our (persistent) session: it lost its state, and retained
    /// messages with it unless it saved them.
    lost_state: AtomicBool,
}

impl Reconnects {
    fn signal(&self, session_present: bool) {
        if !session_present {
            self.lost_state.store(true, Ordering::Relaxed);
        }
        self.notify.notify_one();
    }

    /// Waits for the next (re)connect; true when the broker had lost our
    /// session in the meantime.
    pub async fn next(&self) -> bool {
        self.notify.notified().await;
        self.lost_state.swap(false, Ordering::Relaxed)
    }
}

/// Starts the session; incoming device publishes go to `ingest`; every
/// (re)connect is signalled on `reconnected` so the publisher can catch up.
///
/// `ingest` is unbounded because the event loop must never wait for ingest:
/// ingest acknowledges through rumqttc's request queue, which only this event
/// loop drains. With a bounded hand-over, a burst larger than both queues
/// (an outbox flush through a broker that does not cap unacknowledged
/// deliveries) left the event loop waiting for ingest, ingest waiting for
/// the request queue, and the hub deaf until restarted. What can pile up is
/// what the broker sends without acknowledgement: the embedded broker's
/// per-connection window; mosquitto 2.0 sent the hub over 20,000 at once
/// despite `max_inflight_messages 1000` (`edgefleet_hub_ingest_backlog`
/// shows it; hub_sync's burst test reproduces it).
/// A publish the session dropped as unsendable: the device it was for and
/// its payload size.
pub type Dropped = (DeviceId, usize);

/// Removes queued publishes no broker may carry (payload over the
/// protocol's limit) and returns them.
pub fn drop_unsendable(pending: &mut VecDeque<Request>) -> Vec<(String, usize)> {
    let mut dropped = Vec::new();
    pending.retain(|r| match r {
        Request::Publish(p) if p.payload.len() > MAX_PAYLOAD_BYTES => {
            dropped.push((p.topic.clone(), p.payload.len()));
            false
        }
        _ => true,
    });
    dropped
}

pub fn start(
    opts: MqttOptions,
    ingest: mpsc::UnboundedSender<Publish>,
    reconnected: Arc<Reconnects>,
    subscribed: Arc<AtomicBool>,
    dropped: mpsc::UnboundedSender<Dropped>,
    sup: &edgefleet_daemon::supervise::Supervisor<crate::serve::TaskError>,
) -> Session {
    let (client, eventloop) = AsyncClient::new(opts, 20_000);
    let connected = Arc::new(AtomicBool::new(false));
    let session = Session {
        client: client.clone(),
        connected: connected.clone(),
    };
    let poll = run(
        client,
        eventloop,
        ingest,
        connected,
        reconnected,
        subscribed,
        dropped,
        sup.cancel_token(),
    );
    sup.critical("MQTT session", async move {
        poll.await;
        Ok(())
    });
    session
}

#[allow(clippy::too_many_arguments)]
async fn run(
    client: AsyncClient,
    mut eventloop: EventLoop,
    ingest: mpsc::UnboundedSender<Publish>,
    connected: Arc<AtomicBool>,
    reconnected: Arc<Reconnects>,
    subscribed: Arc<AtomicBool>,
    dropped: mpsc::UnboundedSender<Dropped>,
    cancel: CancellationToken,
) {
    // SubAcks still due for the subscriptions sent on the last connect.
    let mut subacks_due = 0;
    // The broker is next to the hub: retry fast, at most every 5 s.
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let Some(ev) = next_event(&mut eventloop, &cancel).await else {
            break;
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                connected.store(true, Ordering::Relaxed);
                tracing::info!(
                    session_present = ack.session_present,
                    "hub connected to the broker"
                );
                // Subscribing again is harmless and covers a broker that lost
                // the session.
                subacks_due = UPSTREAM.len();
                for c in UPSTREAM {
                    if let Err(e) = client.try_subscribe(c.filter_all_devices(), qos(c)) {
                        tracing::error!(error = %e, "cannot queue subscription");
                    }
                }
                reconnected.signal(ack.session_present);
            }
            Ok(Event::Incoming(Packet::SubAck(_))) if subacks_due > 0 => {
                subacks_due -= 1;
                if subacks_due == 0 {
                    subscribed.store(true, Ordering::Release);
                    tracing::debug!("hub subscribed to every device channel");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if ingest.send(p).is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if connected.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "lost the broker connection; reconnecting");
                } else {
                    tracing::debug!(error = %e, "broker still unreachable");
                }
                for (topic, size) in drop_unsendable(&mut eventloop.pending) {
                    tracing::error!(
                        %topic,
                        size,
                        max = MAX_PAYLOAD_BYTES,
                        "dropped an unsendable publish from the MQTT queue"
                    );
                    if let Ok(t) = Topic::parse(&topic) {
                        let _ = dropped.send((t.device, size));
                    }
                }
                if !pause(backoff.next_delay(), &cancel).await {
                    break;
                }
            }
        }
    }
    // Clean stop: flush what the event loop still holds, then disconnect.
    edgefleet_daemon::mqtt::disconnect(&client, &mut eventloop, Duration::from_secs(2)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::QoS;

    #[test]
    fn only_publishes_over_the_limit_are_dropped() {
        let small = Publish::new(
            "edgefleet/v1/devices/pi-1/desired",
            QoS::AtLeastOnce,
            vec![0; 10],
        );
        let big = Publish::new(
            "edgefleet/v1/devices/pi-2/desired",
            QoS::AtLeastOnce,
            vec![0; MAX_PAYLOAD_BYTES + 1],
        );
        let mut pending: VecDeque<Request> = [
            Request::Publish(small),
            Request::Publish(big),
            Request::PingReq(rumqttc::PingReq),
        ]
        .into();
        let dropped = drop_unsendable(&mut pending);
        assert_eq!(
            dropped,
            vec![(
                "edgefleet/v1/devices/pi-2/desired".to_owned(),
                MAX_PAYLOAD_BYTES + 1
            )]
        );
        assert_eq!(pending.len(), 2);
    }
}
