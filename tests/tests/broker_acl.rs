//! The broker is not trusted to keep devices apart, so it is told to: an
//! attacker holding one enrolled device's valid credentials tries what it
//! can against the embedded broker and against a mosquitto the hub
//! provisions through its dynamic-security plugin. It may not read another
//! device's topics, write to them, or replace its own retained desired
//! document; the victim's retained document stays the hub's; a real agent
//! still works under the same rules.

use std::time::Duration;

use edgefleet_protocol::sign::Signer;
use edgefleet_protocol::{Channel, DeviceId, EnrollResponse, Topic};
use edgefleet_tests::agent::Agent;
use edgefleet_tests::device::{MqttDevice, host_port};
use edgefleet_tests::hub::{Hub, HubOptions};
use edgefleet_tests::mosquitto::{DYNSEC_ADMIN, Mosquitto};
use edgefleet_tests::{eventually, install_crypto};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, LastWill, MqttOptions, Packet, QoS, SubscribeReasonCode,
};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(30);
const ADMIN_PASSWORD: &str = "dynsec-admin-password-for-tests";

/// One deployment on every device labelled `fleet: acl`, whose manifest
/// holds a string the test looks for.
const DEPLOYMENT: &str = "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {name: acl}\n\
spec:\n  selector: {matchLabels: {fleet: acl}}\n  workloads:\n    - name: config\n      \
kubernetes:\n        manifests:\n          - {apiVersion: v1, kind: ConfigMap, metadata: \
{name: acl, namespace: acl}, data: {v: \"acl-marker\"}}\n";

/// A raw MQTT client showing what the broker answers: every event of its
/// session goes to the test.
struct Raw {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Packet>,
    task: tokio::task::JoinHandle<()>,
}

impl Raw {
    async fn connect(
        url: &str,
        id: &str,
        user: &str,
        password: &str,
        will: Option<LastWill>,
    ) -> Self {
        let (host, port) = host_port(url);
        let mut o = MqttOptions::new(id, host, port);
        o.set_keep_alive(Duration::from_secs(5))
            .set_credentials(user, password)
            .set_max_packet_size(2 << 20, 2 << 20);
        if let Some(w) = will {
            o.set_last_will(w);
        }
        let (client, mut el) = AsyncClient::new(o, 100);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        let mut raw = Self {
            client,
            events,
            task,
        };
        match raw.next(T).await {
            Some(Packet::ConnAck(a)) => {
                assert_eq!(a.code, ConnectReturnCode::Success, "{id} refused: {a:?}")
            }
            other => panic!("{id}: no ConnAck: {other:?}"),
        }
        raw
    }

    async fn next(&mut self, timeout: Duration) -> Option<Packet> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Subscribes to `filter` and returns its SubAck code.
    async fn subscribe(&mut self, filter: &str) -> SubscribeReasonCode {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        loop {
            match self.next(T).await {
                Some(Packet::SubAck(a)) => return a.return_codes[0],
                Some(_) => {}
                None => panic!("no SubAck for {filter}"),
            }
        }
    }

    /// Publishes at QoS 1 and waits for the PubAck (a broker acknowledges
    /// a publish it drops, as MQTT 3.1.1 gives it no other answer).
    async fn publish(&mut self, topic: &str, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
            .await
            .expect("publish");
        loop {
            match self.next(T).await {
                Some(Packet::PubAck(_)) => return,
                Some(_) => {}
                None => panic!("no PubAck for {topic}"),
            }
        }
    }

    /// Every publish that arrives within `window`.
    async fn publishes(&mut self, window: Duration) -> Vec<rumqttc::Publish> {
        let mut got = Vec::new();
        let until = tokio::time::Instant::now() + window;
        while let Ok(Some(p)) = tokio::time::timeout_at(until, self.events.recv()).await {
            if let Packet::Publish(p) = p {
                got.push(p);
            }
        }
        got
    }

    /// Drops the connection without a DISCONNECT: the broker fires the will.
    fn vanish(self) {
        self.task.abort();
    }
}

fn topic(id: &DeviceId, c: Channel) -> String {
    Topic::new(id.clone(), c).to_string()
}

/// The retained desired document of `device`, read as that device (a
/// document published live, just after the connection, is not what the
/// broker keeps: it reconnects until it is given the retained one).
async fn retained_desired(enrolled: &EnrollResponse) -> Vec<u8> {
    let want = topic(&enrolled.device_id, Channel::Desired);
    eventually("the retained desired document", T, || async {
        let mut d = MqttDevice::connect(enrolled).await;
        loop {
            let r = d.next(Duration::from_secs(2)).await?;
            if r.topic == want {
                return r.retain.then_some(r.payload);
            }
        }
    })
    .await
}

/// A desired document as the broker holds it: the hub's signature over
/// ciphertext, with no trace of the manifest it carries.
fn assert_ciphertext(doc: &[u8]) {
    let payload = edgefleet_protocol::sign::own_payload(doc).expect("an envelope");
    let text = String::from_utf8_lossy(&payload);
    for plain in ["acl-marker", "ConfigMap", "namespace"] {
        assert!(
            !text.contains(plain),
            "{plain:?} readable on the broker: {text}"
        );
    }
    assert!(text.contains("\"sealed\""), "{text}");
}

fn is_failure(c: SubscribeReasonCode) -> bool {
    matches!(c, SubscribeReasonCode::Failure)
}

/// What both brokers must refuse; the victim's retained document is the
/// same after the attack as before.
async fn attack(attacker: &EnrollResponse, victim: &EnrollResponse, refuses_own_retain: bool) {
    let a = &attacker.device_id;
    let v = &victim.device_id;
    let before = retained_desired(victim).await;
    assert!(!before.is_empty(), "the victim has a desired document");
    assert_ciphertext(&before);

    let mut raw = Raw::connect(
        &attacker.broker.url,
        a.as_str(),
        &attacker.broker.username,
        &attacker.broker.password,
        // A will on the victim's desired topic, retained: a way to write
        // there after the fact.
        Some(LastWill::new(
            topic(v, Channel::Desired),
            b"will-junk".to_vec(),
            QoS::AtLeastOnce,
            true,
        )),
    )
    .await;

    // Reading: everything, every device's desired, the victim's topics.
    for f in [
        "#".to_owned(),
        "edgefleet/#".to_owned(),
        Channel::Desired.filter_all_devices(),
        format!("edgefleet/v1/devices/{v}/+"),
        topic(v, Channel::Desired),
        topic(v, Channel::Commands),
        topic(v, Channel::Status),
        // Its own device-to-hub topics: what other devices of a shared
        // broker would be reading there is not its business either.
        topic(a, Channel::Status),
    ] {
        let code = raw.subscribe(&f).await;
        assert!(
            is_failure(code),
            "subscribe {f}: {code:?}, expected a refusal"
        );
    }
    // Its own desired topic is allowed, and delivers only its own document.
    let own = raw.subscribe(&topic(a, Channel::Desired)).await;
    assert!(!is_failure(own), "own desired refused: {own:?}");

    // Writing: the victim's topics, and its own desired (retained).
    for (t, retain) in [
        (topic(v, Channel::Desired), true),
        (topic(v, Channel::Desired), false),
        (topic(v, Channel::Commands), false),
        (topic(v, Channel::Status), false),
        (topic(v, Channel::Events), false),
        (topic(a, Channel::Desired), true),
    ] {
        raw.publish(&t, retain, b"junk").await;
    }
    if refuses_own_retain {
        raw.publish(&topic(a, Channel::Status), true, b"junk").await;
    }
    let seen = raw.publishes(Duration::from_secs(1)).await;
    for p in &seen {
        assert_eq!(
            p.topic,
            topic(a, Channel::Desired),
            "the attacker read {} ({} bytes)",
            p.topic,
            p.payload.len()
        );
        assert_ne!(&p.payload[..], b"junk", "its own retained junk was kept");
    }
    raw.vanish();

    // The victim's retained document is still the hub's, byte for byte,
    // once the attacker's will had its chance.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        retained_desired(victim).await,
        before,
        "the victim's retained desired document changed"
    );
    // And the attacker's own is still the hub's (not "junk").
    assert_ne!(retained_desired(attacker).await, b"junk".to_vec());
}

async fn enroll(hub: &Hub, id: &str) -> EnrollResponse {
    hub.enroll(&Signer::generate(), Some(id), &[("fleet", "acl")])
        .await
}

#[tokio::test]
async fn the_embedded_broker_refuses_a_device_everything_but_its_own_topics() {
    install_crypto();
    let hub = Hub::start().await;
    hub.deploy("acl", DEPLOYMENT).await;
    let attacker = enroll(&hub, "attacker").await;
    let victim = enroll(&hub, "victim").await;
    attack(&attacker, &victim, true).await;

    // Each denial counted, by action: 8 subscriptions; 4 plain publishes
    // to the victim; 3 retained publishes (the victim's desired, its own
    // desired, its own status) and the will.
    let count = |action: &'static str| {
        let hub = &hub;
        async move {
            hub.metric(&format!(
                "edgefleet_hub_broker_acl_denials_total{{action=\"{action}\"}}"
            ))
            .await
        }
    };
    assert_eq!(count("subscribe").await, 8.0);
    assert_eq!(count("publish").await, 4.0);
    assert_eq!(count("retain").await, 4.0);
    // One warning per streak, not one per denial.
    let logged = hub
        .proc
        .output()
        .iter()
        .filter(|l| l.contains("broker refused a device request"))
        .count();
    assert!(
        (1..=4).contains(&logged),
        "{logged} denial log lines for 16 denials in a few streaks"
    );

    // A real agent works under the same rules.
    let agent = Agent::enroll_and_start(&hub, "real", &[("fleet", "acl")]).await;
    applied(&hub, &agent).await;
}

/// The hub counts `agent`'s revision as applied: it read its desired
/// document and its status came back.
async fn applied(hub: &Hub, agent: &Agent) {
    eventually("the real agent applied its desired revision", T, || async {
        let (_, d) = hub.get(&format!("/devices/{}", agent.device_id)).await;
        (d["appliedRevision"].is_u64() && d["appliedRevision"] == d["desiredRevision"])
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_mosquitto_provisioned_by_the_hub_refuses_the_same() {
    install_crypto();
    let Some(broker) = Mosquitto::start_dynsec(ADMIN_PASSWORD).await else {
        return;
    };
    let hub = Hub::start_with(HubOptions {
        external_broker: Some(broker.url()),
        env: vec![
            (
                "CLOUDCORE_BROKER_PROVISION".into(),
                "mosquitto-dynsec".into(),
            ),
            ("CLOUDCORE_BROKER_USERNAME".into(), DYNSEC_ADMIN.into()),
            ("CLOUDCORE_BROKER_PASSWORD".into(), ADMIN_PASSWORD.into()),
        ],
        ..Default::default()
    })
    .await;
    hub.deploy("acl", DEPLOYMENT).await;
    let attacker = enroll(&hub, "attacker").await;
    let victim = enroll(&hub, "victim").await;
    // mosquitto's ACLs do not look at the retain flag: a retained publish
    // on the device's own status topic is not refused there.
    attack(&attacker, &victim, false).await;

    // A real agent works under the provisioned ACLs, and applies what it
    // alone can read.
    let agent = Agent::enroll_and_start(&hub, "real", &[("fleet", "acl")]).await;
    applied(&hub, &agent).await;

    // The hub's own user reads everything on the broker: every retained
    // desired document it finds is ciphertext.
    let mut watcher =
        Raw::connect(&broker.url(), "watcher", DYNSEC_ADMIN, ADMIN_PASSWORD, None).await;
    assert!(!is_failure(
        watcher
            .subscribe(&Channel::Desired.filter_all_devices())
            .await
    ));
    let docs = watcher.publishes(Duration::from_secs(2)).await;
    assert_eq!(docs.len(), 3, "attacker, victim and real: {docs:?}");
    for d in &docs {
        assert!(d.retain);
        assert_ciphertext(&d.payload);
    }
    watcher.vanish();

    // No device may be named after the hub's broker identities: it would
    // replace the admin user, or take over the hub's sessions.
    for id in [DYNSEC_ADMIN, "cloudcore-hub", "cloudcore-hub-dynsec"] {
        let req = edgefleet_protocol::EnrollRequest {
            token: hub.bootstrap_token(),
            public_key: Signer::generate().public().to_base64(),
            device_id: Some(id.parse().expect("device id")),
            labels: Default::default(),
            hostname: None,
            arch: "x86_64".into(),
            agent_version: "test".into(),
        };
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/enroll", hub.api_url()))
            .json(&req)
            .send()
            .await
            .expect("enroll");
        assert_eq!(r.status(), 400, "device id {id}");
        assert!(r.text().await.unwrap_or_default().contains("reserved"));
    }
    Raw::connect(
        &broker.url(),
        "admin-check",
        DYNSEC_ADMIN,
        ADMIN_PASSWORD,
        None,
    )
    .await
    .vanish();

    // A deleted device loses its login at once.
    let (code, _) = hub
        .api(reqwest::Method::DELETE, "/devices/attacker", None)
        .await;
    assert_eq!(code, 204);
    let (host, port) = host_port(&attacker.broker.url);
    let mut o = MqttOptions::new("attacker", host, port);
    o.set_credentials("attacker", attacker.broker.password.clone());
    let (_c, mut el) = AsyncClient::new(o, 10);
    let refused = tokio::time::timeout(T, el.poll()).await.expect("an answer");
    assert!(
        refused.is_err(),
        "a deleted device still logs in: {refused:?}"
    );
}
