//! The embedded broker (edgefleet's rumqttd, vendor/rumqttd) under the
//! hub's own traffic pattern: a session that receives at QoS 1 with manual
//! acks and publishes at QoS 1 on the same connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use cloudcore::broker::{self, Credentials, HUB_USERNAME, password_hash};
use cloudcore::metrics::Metrics;
use cloudcore::registry::{DeviceEntry, Registry};
use edgefleet_protocol::{Channel, DeviceId, Signer, Topic};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

fn start_broker() -> SocketAddr {
    let devices = Registry::default();
    devices.insert(
        DeviceId::new("pi-1").unwrap(),
        DeviceEntry {
            key: Signer::generate().public().clone(),
            password_hash: password_hash("device-secret"),
        },
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", edgefleet_tests::free_port())
        .parse()
        .unwrap();
    let creds = Credentials::new("hub-secret", devices, Arc::new(AtomicBool::new(true)));
    broker::start(addr, 100, creds, Arc::new(Metrics::new())).expect("broker starts");
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

    let (hub, mut hub_ev) = client(addr, HUB_USERNAME, "hub-secret", 100);
    hub.subscribe(Channel::Events.filter_all_devices(), QoS::AtLeastOnce)
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

    // The device sends more than the broker's outgoing window to the hub.
    let (dev, mut dev_ev) = client(addr, "pi-1", "device-secret", 1_000);
    let sent = 150;
    for i in 0..sent {
        dev.publish(&events, QoS::AtLeastOnce, false, format!("e{i}"))
            .await
            .unwrap();
    }
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
    for i in 0..published {
        hub.publish(&desired, QoS::AtLeastOnce, true, format!("d{i}"))
            .await
            .unwrap();
    }
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
