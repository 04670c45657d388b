//! The wire format, pinned: golden JSON examples for every message (also
//! quoted in PROTOCOL.md), round trips, verification and tamper tests.
//!
//! After an intended wire change: `EDGEFLEET_BLESS=1 cargo test -p
//! edgefleet-protocol --test wire`, then update PROTOCOL.md to match.

use std::collections::BTreeMap;
use std::path::PathBuf;

use edgefleet_protocol::command::{Command, CommandAction};
use edgefleet_protocol::desired::DeviceRollback;
use edgefleet_protocol::sign::{Expect, Message, MessageKind, Rejection, Signer, open};
use edgefleet_protocol::workload::{
    Condition, HttpInput, InferenceInput, InferenceOutput, InferenceWorkload, KubernetesWorkload,
    ModelRef, MqttInput, Workload,
};
use edgefleet_protocol::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn dev(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn hub_key() -> Signer {
    Signer::from_seed(&[7; 32])
}

fn device_key() -> Signer {
    Signer::from_seed(&[9; 32])
}

fn desired() -> DesiredState {
    DesiredState {
        device_id: dev("pi-line3-01"),
        revision: 4,
        hub_epoch: 1_764_000_000_000,
        issued_at_ms: 1_764_000_123_456,
        workloads: vec![
            DesiredWorkload {
                deployment: "line-3-vision".into(),
                generation: 2,
                device_rollback: Some(DeviceRollback {
                    health_timeout_secs: 600,
                }),
                workload: Workload {
                    name: "line-3-vision.web".into(),
                    kubernetes: Some(KubernetesWorkload {
                        manifests: vec![serde_json::json!({
                            "apiVersion": "v1",
                            "kind": "ConfigMap",
                            "metadata": {"name": "web-config", "namespace": "line-3"},
                            "data": {"greeting": "hello"}
                        })],
                    }),
                    inference: None,
                    agent: None,
                },
            },
            DesiredWorkload {
                deployment: "line-3-vision".into(),
                generation: 2,
                device_rollback: None,
                workload: Workload {
                    name: "line-3-vision.vibration".into(),
                    kubernetes: None,
                    inference: Some(InferenceWorkload {
                        model: ModelRef {
                            name: "vibration-ae".into(),
                            sha256: SHA.into(),
                        },
                        input: InferenceInput {
                            mqtt: Some(MqttInput {
                                topic: "sensors/vibration".into(),
                            }),
                            http: Some(HttpInput {}),
                        },
                        output: InferenceOutput {
                            upstream: true,
                            topic: Some("alerts/vibration".into()),
                            when: Some("score > 0.8".parse::<Condition>().unwrap()),
                        },
                        concurrency: Some(2),
                    }),
                    agent: None,
                },
            },
        ],
    }
}

fn status() -> StatusReport {
    StatusReport {
        device_id: dev("pi-line3-01"),
        applied: Some(Version {
            hub_epoch: 1_764_000_000_000,
            revision: 4,
        }),
        reported_at_ms: 1_764_000_124_000,
        workloads: vec![
            WorkloadStatus {
                name: "line-3-vision.web".into(),
                sync: SyncState::Synced,
                health: Health::Healthy,
                message: None,
            },
            WorkloadStatus {
                name: "line-3-vision.vibration".into(),
                sync: SyncState::Failed,
                health: Health::Degraded,
                message: Some("model sha256 mismatch: got 3a7b…, want 9f86…".into()),
            },
        ],
        message: None,
        agent_version: "0.1.0".into(),
        k3s_version: Some("v1.31.4+k3s1".into()),
        desired_rejected: None,
        update_failed: None,
        unstored: false,
        hub_key_id: None,
    }
}

fn presence() -> Presence {
    Presence {
        device_id: dev("pi-line3-01"),
        state: PresenceState::Online,
        session: 8_402_117_312_001,
        at_ms: 1_764_000_100_000,
    }
}

fn event() -> Event {
    Event {
        id: "01JDQ7ZK3M4N5P6Q7R8S9T0V1W".into(),
        device_id: dev("pi-line3-01"),
        kind: "inference.result".into(),
        workload: Some("line-3-vision.vibration".into()),
        created_at_ms: 1_764_000_125_000,
        payload: serde_json::json!({"score": 0.93, "model": "vibration-ae"}),
    }
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        device_id: dev("pi-line3-01"),
        at_ms: 1_764_000_130_000,
        uptime_s: 86_400,
        cpu_percent: 12.5,
        mem_used_bytes: 412_000_000,
        mem_total_bytes: 4_000_000_000,
        disk_used_bytes: 9_000_000_000,
        disk_total_bytes: 32_000_000_000,
        disk_pressure: false,
        temperature_c: Some(51.5),
        agent_rss_bytes: 11_534_336,
        agent_version: "0.1.0".into(),
        k3s_version: Some("v1.31.4+k3s1".into()),
        outbox_depth: 0,
        outbox_dropped: 0,
    }
}

fn command() -> Command {
    Command {
        id: "cmd-7f3a".into(),
        device_id: dev("pi-line3-01"),
        issued_at_ms: 1_764_000_200_000,
        expires_at_ms: 1_764_000_500_000,
        action: CommandAction::RestartWorkload {
            name: "line-3-vision.web".into(),
        },
    }
}

fn ack() -> Ack {
    Ack {
        device_id: dev("pi-line3-01"),
        events: vec![
            "01JDQ7ZK3M4N5P6Q7R8S9T0V1W".into(),
            "01JDQ7ZK3M4N5P6Q7R8S9T0V1X".into(),
        ],
        status_reported_at_ms: Some(1_764_000_124_000),
        acked_at_ms: 1_764_000_125_050,
    }
}

fn enroll_request() -> EnrollRequest {
    EnrollRequest {
        token: "bootstrap-token-from-hub-config".into(),
        public_key: device_key().public().to_base64(),
        device_id: Some(dev("pi-line3-01")),
        labels: BTreeMap::from([
            ("arch".into(), "arm64".into()),
            ("site".into(), "plant-3".into()),
        ]),
        hostname: Some("raspberrypi".into()),
        arch: "aarch64".into(),
        agent_version: "0.1.0".into(),
    }
}

fn enroll_response() -> EnrollResponse {
    EnrollResponse {
        device_id: dev("pi-line3-01"),
        broker: BrokerCredentials {
            url: "mqtt://hub.example:1883".into(),
            username: "pi-line3-01".into(),
            password: "d2VsbC1rZXB0LXNlY3JldA".into(),
        },
        hub_public_key: hub_key().public().to_base64(),
        hub_key_id: hub_key().public().kid().to_string(),
    }
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Compares `text` with the golden file, or rewrites it under EDGEFLEET_BLESS.
fn golden(name: &str, text: &str) {
    let path = golden_path(name);
    if std::env::var_os("EDGEFLEET_BLESS").is_some() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (bless with EDGEFLEET_BLESS=1)", path.display()));
    assert_eq!(
        text, want,
        "wire format of {name} changed; if intended, bless and update PROTOCOL.md"
    );
}

fn round_trip_golden<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    name: &str,
    v: &T,
) {
    let text = serde_json::to_string_pretty(v).unwrap() + "\n";
    golden(name, &text);
    let back: T = serde_json::from_str(&text).unwrap();
    assert_eq!(&back, v, "{name} does not round-trip");
}

#[test]
fn golden_messages_round_trip() {
    round_trip_golden("desired.json", &desired());
    round_trip_golden("status.json", &status());
    round_trip_golden("presence.json", &presence());
    round_trip_golden("event.json", &event());
    round_trip_golden("heartbeat.json", &heartbeat());
    round_trip_golden("command.json", &command());
    round_trip_golden("ack.json", &ack());
    round_trip_golden("enroll-request.json", &enroll_request());
    round_trip_golden("enroll-response.json", &enroll_response());
}

#[test]
fn golden_signed_envelope() {
    // ed25519 signatures are deterministic, so the whole envelope is pinned.
    let env = hub_key().seal(&presence_for_envelope());
    golden("envelope.json", &(String::from_utf8(env).unwrap() + "\n"));
}

/// The signed payload of a desired document and of a command sealed to the
/// device, with a fixed random source (HPKE's ephemeral key) so that they
/// are pinned like the rest.
#[test]
fn golden_sealed_payloads() {
    use rand::SeedableRng;
    for (name, bytes) in [
        (
            "desired-sealed.json",
            hub_key().seal_for_with_rng(
                &desired(),
                device_key().public(),
                &mut rand::rngs::StdRng::seed_from_u64(7),
            ),
        ),
        (
            "command-sealed.json",
            hub_key().seal_for_with_rng(
                &command(),
                device_key().public(),
                &mut rand::rngs::StdRng::seed_from_u64(8),
            ),
        ),
    ] {
        let payload = sign::own_payload(&bytes).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        golden(name, &(serde_json::to_string_pretty(&v).unwrap() + "\n"));
    }
}

#[test]
fn sealed_messages_hide_their_private_fields_and_open_only_on_their_device() {
    let d = dev("pi-line3-01");
    let exp = Expect::device(&d).at(1_764_000_300_000);
    let hub = hub_key();
    let me = device_key();
    let doc = hub.seal_for(&desired(), me.public());
    let text = String::from_utf8(sign::own_payload(&doc).unwrap()).unwrap();
    for secret in [
        "web-config",
        "greeting",
        "vibration-ae",
        SHA,
        "sensors/vibration",
    ] {
        assert!(!text.contains(secret), "{secret} readable in {text}");
    }
    // What stays readable: whose, which version, when.
    for public in [
        "\"deviceId\":\"pi-line3-01\"",
        "\"revision\":4",
        "\"hubEpoch\"",
        "\"issuedAtMs\"",
    ] {
        assert!(text.contains(public), "{public} not in {text}");
    }
    let back: DesiredState = open_for(&doc, hub.public(), &exp, &me).unwrap();
    assert_eq!(back, desired());
    let cmd = hub.seal_for(&command(), me.public());
    let back: Command = open_for(&cmd, hub.public(), &exp, &me).unwrap();
    assert_eq!(back, command());

    // Sealed to another key: undecryptable here.
    let stranger = Signer::from_seed(&[11; 32]);
    let to_other = hub.seal_for(&desired(), stranger.public());
    assert_eq!(
        reason(open_for::<DesiredState>(&to_other, hub.public(), &exp, &me)),
        "undecryptable"
    );
    // Another device's document: wrong device, before any decryption.
    let other_doc = DesiredState {
        device_id: dev("pi-other"),
        ..desired()
    };
    let theirs = hub.seal_for(&other_doc, stranger.public());
    assert_eq!(
        reason(open_for::<DesiredState>(&theirs, hub.public(), &exp, &me)),
        "wrong_device"
    );
    // The signature covers the ciphertext: changing it breaks the signature.
    let mut payload = sign::own_payload(&doc).unwrap();
    let at = String::from_utf8_lossy(&payload).find("\"ct\":\"").unwrap() + 6;
    payload[at] = if payload[at] == b'A' { b'B' } else { b'A' };
    let relabelled = Signer::from_seed(&[12; 32]).seal_bytes(MessageKind::Desired, &payload);
    assert_eq!(
        reason(open_for::<DesiredState>(
            &relabelled,
            hub.public(),
            &exp,
            &me
        )),
        "unknown_key"
    );
    // Plain (unsealed) documents from the hub still open: hubs that do not
    // seal yet; the signature is what makes a document authentic.
    let plain = hub.seal(&desired());
    assert!(open_for::<DesiredState>(&plain, hub.public(), &exp, &me).is_ok());
    // The hub's size estimate is exact, plus the room it keeps for a
    // rotated key's announcements.
    assert_eq!(
        sign::sealed_len(
            MessageKind::Desired,
            encrypt::sealed_payload_len(&desired())
        ),
        doc.len() + edgefleet_protocol::rotation::CHAIN_RESERVE
    );
}

fn presence_for_envelope() -> Presence {
    Presence {
        state: PresenceState::Offline,
        ..presence()
    }
}

#[test]
fn protocol_md_quotes_every_golden_file() {
    let doc =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("PROTOCOL.md"))
            .unwrap();
    for entry in std::fs::read_dir(golden_path("")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            doc.contains(text.trim_end()),
            "PROTOCOL.md does not quote {} verbatim",
            path.display()
        );
    }
    for c in Channel::ALL {
        assert!(
            doc.contains(&format!("`{}`", c.as_str())),
            "PROTOCOL.md does not document channel {}",
            c.as_str()
        );
    }
}

fn sealed_open<M: Message + PartialEq + std::fmt::Debug>(
    signer: &Signer,
    msg: &M,
    expect: &Expect<'_>,
) {
    let bytes = signer.seal(msg);
    let back: M = open(&bytes, signer.public(), expect).unwrap();
    assert_eq!(&back, msg);
}

#[test]
fn every_message_round_trips_signed() {
    let d = dev("pi-line3-01");
    let exp = Expect::device(&d).at(1_764_000_300_000);
    sealed_open(&hub_key(), &desired(), &exp);
    sealed_open(&device_key(), &status(), &exp);
    sealed_open(&device_key(), &presence(), &exp);
    sealed_open(&device_key(), &event(), &exp);
    sealed_open(&device_key(), &heartbeat(), &exp);
    sealed_open(&hub_key(), &command(), &exp);
    sealed_open(&hub_key(), &ack(), &exp);
}

fn reason<M: Message + std::fmt::Debug>(r: Result<M, Rejection>) -> &'static str {
    r.expect_err("should be rejected").reason()
}

/// Why `bytes` is refused as an `M` signed by `key`.
fn refused<M: Message + std::fmt::Debug>(
    bytes: &[u8],
    key: &PublicKey,
    e: Expect<'_>,
) -> &'static str {
    reason(open::<M>(bytes, key, &e))
}

#[test]
fn verification_rejects_with_typed_reasons() {
    let d = dev("pi-line3-01");
    let hub = hub_key();
    let doc = hub.seal(&desired());
    let v4 = Version {
        hub_epoch: 1_764_000_000_000,
        revision: 4,
    };

    // Wrong key: a forger with its own key.
    let forged = Signer::generate().seal(&desired());
    assert_eq!(
        refused::<DesiredState>(&forged, hub.public(), Expect::device(&d)),
        "unknown_key"
    );
    // Right key id, wrong signature.
    let text = String::from_utf8(forged.clone()).unwrap();
    let at = text.find("\"kid\":\"").unwrap() + 7;
    let forger_kid = format!("\"kid\":\"{}\"", &text[at..at + 16]);
    let relabelled = String::from_utf8(forged.clone())
        .unwrap()
        .replace(&forger_kid, &format!("\"kid\":\"{}\"", hub.public().kid()))
        .into_bytes();
    assert_ne!(relabelled, forged);
    assert_eq!(
        refused::<DesiredState>(&relabelled, hub.public(), Expect::device(&d)),
        "bad_signature"
    );
    // Another device's document.
    assert_eq!(
        refused::<DesiredState>(&doc, hub.public(), Expect::device(&dev("pi-other"))),
        "wrong_device"
    );
    // Not strictly newer: equal and older.
    assert_eq!(
        refused::<DesiredState>(&doc, hub.public(), Expect::device(&d).newer_than(Some(v4))),
        "stale_revision"
    );
    let v5 = Version { revision: 5, ..v4 };
    assert_eq!(
        refused::<DesiredState>(&doc, hub.public(), Expect::device(&d).newer_than(Some(v5))),
        "stale_revision"
    );
    // A newer epoch wins over a higher revision of an older epoch.
    let old_epoch = Version {
        hub_epoch: 1,
        revision: 1000,
    };
    assert!(
        open::<DesiredState>(
            &doc,
            hub.public(),
            &Expect::device(&d).newer_than(Some(old_epoch))
        )
        .is_ok()
    );
    // A status replayed as an event: the type is bound into the signature.
    let st = device_key().seal(&status());
    assert_eq!(
        refused::<Event>(&st, device_key().public(), Expect::device(&d)),
        "wrong_type"
    );
    // Expired command.
    let cmd = hub.seal(&command());
    assert_eq!(
        refused::<Command>(&cmd, hub.public(), Expect::device(&d).at(1_764_000_500_000)),
        "expired"
    );
    // Oversized.
    let big = vec![b' '; MessageKind::Heartbeat.max_bytes() + 1];
    assert_eq!(
        refused::<Heartbeat>(&big, device_key().public(), Expect::device(&d)),
        "too_large"
    );
    // Signed but invalid: revision 0.
    let zero = DesiredState {
        revision: 0,
        ..desired()
    };
    assert_eq!(
        refused::<DesiredState>(&hub.seal(&zero), hub.public(), Expect::device(&d)),
        "invalid"
    );
    // Signed but not the right shape.
    let junk = hub.seal_bytes(MessageKind::Desired, b"{\"deviceId\":\"pi-line3-01\"}");
    assert_eq!(
        refused::<DesiredState>(&junk, hub.public(), Expect::device(&d)),
        "malformed"
    );
}

/// The must-show case, exhaustively: every single-byte change anywhere in a
/// signed desired document is rejected.
#[test]
fn every_single_byte_tamper_of_desired_state_is_rejected() {
    let d = dev("pi-line3-01");
    let hub = hub_key();
    let doc = hub.seal(&desired());
    assert!(open::<DesiredState>(&doc, hub.public(), &Expect::device(&d)).is_ok());
    for i in 0..doc.len() {
        for delta in [1u8, 0x20, 0x80] {
            let mut t = doc.clone();
            t[i] = t[i].wrapping_add(delta);
            assert!(
                open::<DesiredState>(&t, hub.public(), &Expect::device(&d)).is_err(),
                "byte {i} + {delta:#x} accepted"
            );
        }
    }
}

#[test]
fn desired_state_validation() {
    let mut bad = desired();
    bad.workloads[0].workload.name = "other.web".into();
    bad.workloads[1]
        .workload
        .inference
        .as_mut()
        .unwrap()
        .model
        .sha256 = "x".into();
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("workloads[0].name"), "{err}");
    assert!(
        err.contains("workloads[1].inference.model.sha256: not a sha256"),
        "{err}"
    );
}

#[test]
fn ack_validation_and_bounds() {
    let d = dev("pi-line3-01");
    let hub = hub_key();
    let empty = Ack {
        events: vec![],
        status_reported_at_ms: None,
        ..ack()
    };
    assert_eq!(
        refused::<Ack>(&hub.seal(&empty), hub.public(), Expect::device(&d)),
        "invalid"
    );
    let bad_id = Ack {
        events: vec!["no spaces allowed".into()],
        ..ack()
    };
    let err = bad_id.validate().unwrap_err().to_string();
    assert!(err.contains("events[0]"), "{err}");
    // More ids than the limit are refused while decoding, before validation.
    let many: Vec<String> = (0..=limits::MAX_ACK_IDS).map(|i| format!("e{i}")).collect();
    let payload = serde_json::to_vec(&serde_json::json!({
        "deviceId": "pi-line3-01", "events": many, "ackedAtMs": 1
    }))
    .unwrap();
    let env = hub.seal_bytes(MessageKind::Ack, &payload);
    assert_eq!(
        refused::<Ack>(&env, hub.public(), Expect::device(&d)),
        "malformed"
    );
    // A device's own key cannot acknowledge anything.
    assert_eq!(
        refused::<Ack>(&device_key().seal(&ack()), hub.public(), Expect::device(&d)),
        "unknown_key"
    );
    // Another device's acknowledgement is not ours.
    assert_eq!(
        refused::<Ack>(
            &hub.seal(&ack()),
            hub.public(),
            Expect::device(&dev("pi-other"))
        ),
        "wrong_device"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let d = dev("pi-line3-01");
            let key = hub_key();
            let e = Expect::device(&d);
            let _ = open::<DesiredState>(&bytes, key.public(), &e);
            let _ = open::<StatusReport>(&bytes, key.public(), &e);
            let _ = open::<Event>(&bytes, key.public(), &e);
            let _ = open::<Command>(&bytes, key.public(), &e);
            let _ = open::<Presence>(&bytes, key.public(), &e);
            let _ = open::<Heartbeat>(&bytes, key.public(), &e);
            let _ = Topic::parse(&String::from_utf8_lossy(&bytes));
            let _ = Deployment::from_yaml(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn decode_never_panics_on_mutated_valid_envelopes(
            idx in any::<prop::sample::Index>(),
            insert in proptest::collection::vec(any::<u8>(), 0..8),
            cut in 0usize..4,
        ) {
            let d = dev("pi-line3-01");
            let key = hub_key();
            let mut doc = key.seal(&desired());
            let i = idx.index(doc.len());
            doc.splice(i..(i + cut).min(doc.len()), insert.iter().copied());
            let _ = open::<DesiredState>(&doc, key.public(), &Expect::device(&d));
        }

        #[test]
        fn any_tampering_is_rejected(
            idx in any::<prop::sample::Index>(),
            xor in 1u8..=255,
            extra in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let d = dev("pi-line3-01");
            let key = hub_key();
            let doc = key.seal(&desired());
            let mut t = doc.clone();
            let i = idx.index(t.len());
            t[i] ^= xor;
            prop_assert!(open::<DesiredState>(&t, key.public(), &Expect::device(&d)).is_err());
            // Insertions too, even whitespace JSON would ignore: envelopes are
            // byte-exact.
            let mut t = doc.clone();
            t.splice(i..i, extra.iter().copied());
            if !extra.is_empty() {
                prop_assert!(open::<DesiredState>(&t, key.public(), &Expect::device(&d)).is_err());
            }
        }

        #[test]
        fn topics_round_trip(id in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", c in 0usize..Channel::ALL.len()) {
            let t = Topic::new(DeviceId::new(id).unwrap(), Channel::ALL[c]);
            prop_assert_eq!(Topic::parse(&t.to_string()).unwrap(), t);
        }
    }
}
