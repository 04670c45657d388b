//! The embedded broker (edgefleet's rumqttd, vendor/rumqttd) under the
//! hub's own traffic pattern: a session that receives at QoS 1 with manual
//! acks and publishes at QoS 1 on the same connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cloudcore::broker::{self, Credentials, HUB_USERNAME, password_hash};
use cloudcore::metrics::Metrics;
use cloudcore::registry::{DeviceEntry, Registry};
use edgefleet_protocol::{Channel, DeviceId, Signer, Topic};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

/// A free TCP port on 127.0.0.1 (rumqttd binds its own socket).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

fn start_broker() -> SocketAddr {
    let devices = Registry::default();
    devices.insert(
        DeviceId::new("pi-1").unwrap(),
        DeviceEntry {
            key: Signer::generate().public().clone(),
            password_hash: password_hash("device-secret"),
            previous: None,
        },
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let creds = Credentials::new("hub-secret", devices, Arc::new(AtomicBool::new(true)));
    broker::start(addr, None, 100, creds, Arc::new(Metrics::new())).expect("broker starts");
    // rumqttd binds from its own thread.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "broker never listened on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    addr
}

fn client(addr: SocketAddr, id: &str, password: &str, inflight: u16) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_credentials(id, password)
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(inflight)
        .set_manual_acks(true);
    AsyncClient::new(o, 10_000)
}

/// Polls until `done` says so or the deadline passes; returns whether done.
/// Queues `n` QoS 1 messages to `topic` ("0", "1", ...).
async fn publish_n(client: &AsyncClient, topic: &str, retain: bool, n: usize) {
    for i in 0..n {
        client
            .publish(topic, QoS::AtLeastOnce, retain, i.to_string())
            .await
            .unwrap();
    }
}

async fn poll_until(
    ev: &mut EventLoop,
    deadline: Instant,
    mut done: impl FnMut(&Event) -> bool,
) -> bool {
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), ev.poll()).await {
            Ok(Ok(e)) if done(&e) => return true,
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => panic!("connection failed: {e}"),
        }
    }
    false
}

/// The hub's session, subscribed (SubAck seen) to `channel` of all devices.
async fn hub_subscribed(
    addr: SocketAddr,
    channel: Channel,
    deadline: Instant,
) -> (AsyncClient, EventLoop) {
    let (hub, mut hub_ev) = client(addr, HUB_USERNAME, "hub-secret", 100);
    hub.subscribe(channel.filter_all_devices(), QoS::AtLeastOnce)
        .await
        .unwrap();
    assert!(
        poll_until(&mut hub_ev, deadline, |e| matches!(
            e,
            Event::Incoming(Packet::SubAck(_))
        ))
        .await,
        "hub subscription acknowledged"
    );
    (hub, hub_ev)
}

/// Upstream rumqttd sent a connection's PubAcks only when it scheduled that
/// connection to receive data, and a connection whose outgoing window was
/// full (100 deliveries it had not acknowledged yet) was never scheduled:
/// the hub's publishes went unacknowledged until it acked what it had
/// received, which rumqttc stops doing while it waits for a PubAck. Here the
/// "hub" leaves every delivery unacknowledged and still gets its PubAcks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubacks_flow_while_the_outgoing_window_is_full() {
    let addr = start_broker();
    let events = Topic::new(DeviceId::new("pi-1").unwrap(), Channel::Events).to_string();
    let deadline = Instant::now() + Duration::from_secs(30);

    let (hub, mut hub_ev) = hub_subscribed(addr, Channel::Events, deadline).await;

    // The device sends more than the broker's outgoing window to the hub.
    let (dev, mut dev_ev) = client(addr, "pi-1", "device-secret", 1_000);
    let sent = 150;
    publish_n(&dev, &events, false, sent).await;
    let mut acked = 0;
    let device = tokio::spawn(async move {
        poll_until(&mut dev_ev, deadline, |e| {
            if matches!(e, Event::Incoming(Packet::PubAck(_))) {
                acked += 1;
            }
            acked == sent
        })
        .await
    });

    // The hub receives without acknowledging until the window is full...
    let mut delivered = 0;
    assert!(
        poll_until(&mut hub_ev, deadline, |e| {
            if matches!(e, Event::Incoming(Packet::Publish(_))) {
                delivered += 1;
            }
            delivered == 100
        })
        .await,
        "100 deliveries (the broker's window) reach the hub (got {delivered})"
    );
    assert!(device.await.unwrap(), "the broker acknowledged the device");

    // ...then publishes; every PubAck must arrive regardless.
    let desired = Topic::new(DeviceId::new("pi-1").unwrap(), Channel::Desired).to_string();
    let published = 50;
    publish_n(&hub, &desired, true, published).await;
    let mut pubacks = 0;
    let all = poll_until(&mut hub_ev, Instant::now() + Duration::from_secs(10), |e| {
        if matches!(e, Event::Incoming(Packet::PubAck(_))) {
            pubacks += 1;
        }
        pubacks == published
    })
    .await;
    assert!(
        all,
        "the hub got {pubacks} of {published} PubAcks with its window full"
    );
}

/// A device's connection with a last will (its signed `offline` presence).
fn client_with_will(
    addr: SocketAddr,
    id: &str,
    password: &str,
    will: &str,
) -> (AsyncClient, EventLoop) {
    let presence = Topic::new(DeviceId::new(id).unwrap(), Channel::Presence).to_string();
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_credentials(id, password)
        .set_keep_alive(Duration::from_secs(30))
        .set_last_will(rumqttc::LastWill::new(
            presence,
            will.to_owned(),
            QoS::AtLeastOnce,
            false,
        ));
    AsyncClient::new(o, 100)
}

/// Upstream rumqttd kept wills by client id and published the stored one
/// when any connection with that id died: after a device reconnected while
/// its old connection was still open, the broker dropped the old connection
/// and published the *new* connection's will, so the hub marked a live
/// device offline. The replaced connection's death now publishes nothing;
/// the live connection's will still fires when it dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_connection_does_not_fire_the_live_connections_will() {
    let addr = start_broker();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (_hub, mut hub_ev) = hub_subscribed(addr, Channel::Presence, deadline).await;
    let connected = |e: &Event| matches!(e, Event::Incoming(Packet::ConnAck(_)));

    // The old connection: connected, then left open but no longer polled
    // (as a device whose uplink silently died).
    let (_old, mut old_ev) = client_with_will(addr, "pi-1", "device-secret", "offline-old");
    assert!(
        poll_until(&mut old_ev, deadline, connected).await,
        "old connection up"
    );
    // The device reconnects under the same client id: the broker drops the old one.
    let (_new, mut new_ev) = client_with_will(addr, "pi-1", "device-secret", "offline-new");
    assert!(
        poll_until(&mut new_ev, deadline, connected).await,
        "new connection up"
    );
    let dropped = Arc::new(AtomicBool::new(false));
    let new_device = tokio::spawn({
        let dropped = dropped.clone();
        async move {
            // Keep the live connection serviced for a while, then drop it
            // without DISCONNECT: its will must fire then, not before.
            let _ = poll_until(&mut new_ev, Instant::now() + Duration::from_secs(2), |_| {
                false
            })
            .await;
            dropped.store(true, Ordering::SeqCst);
            drop(new_ev);
        }
    });

    // (payload, whether the live connection had been dropped when it came)
    let mut wills = Vec::new();
    let fired = poll_until(&mut hub_ev, Instant::now() + Duration::from_secs(15), |e| {
        if let Event::Incoming(Packet::Publish(p)) = e {
            let w = String::from_utf8_lossy(&p.payload).into_owned();
            wills.push((w, dropped.load(Ordering::SeqCst)));
        }
        wills.iter().any(|(w, after)| w == "offline-new" && *after)
    })
    .await;
    new_device.await.unwrap();
    assert!(
        fired,
        "the live connection's will fired when it died (got {wills:?})"
    );
    assert_eq!(
        wills,
        [("offline-new".to_owned(), true)],
        "only the live connection's will, and only after it died"
    );
    drop(old_ev);
}
