//! What the hub ingests: status, events, heartbeats and presence (and the
//! device-key rotation request of `POST /devices/{id}/key`), signed by the
//! device so the fuzzer reaches parsing and validation. The first byte
//! picks the type.
#![no_main]

use edgefleet_protocol::rotation::DeviceKeyRotation;
use edgefleet_protocol::sign::open;
use edgefleet_protocol::{
    DeviceId, Event, Expect, Heartbeat, MessageKind, Presence, Signer, StatusReport,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let device = Signer::from_seed(&[2; 32]);
    let id = DeviceId::new("pi-line3-01").expect("id");
    let e = Expect::device(&id);
    let key = device.public();
    match pick % 5 {
        0 => {
            let env = device.seal_bytes(MessageKind::Status, payload);
            let _ = open::<StatusReport>(&env, key, &e);
        }
        1 => {
            let env = device.seal_bytes(MessageKind::Event, payload);
            if let Ok(ev) = open::<Event>(&env, key, &e) {
                let _ = ev.check();
            }
        }
        2 => {
            let env = device.seal_bytes(MessageKind::Heartbeat, payload);
            let _ = open::<Heartbeat>(&env, key, &e);
        }
        3 => {
            let env = device.seal_bytes(MessageKind::Presence, payload);
            let _ = open::<Presence>(&env, key, &e);
        }
        _ => {
            let env = device.seal_bytes(MessageKind::DeviceKey, payload);
            if let Ok(r) = open::<DeviceKeyRotation>(&env, key, &e) {
                let _ = r.key();
            }
        }
    }
});
