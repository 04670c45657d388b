//! Raw bytes off MQTT, as every receiver first sees them: the envelope, its
//! key chain, and each message type's verification.
#![no_main]

use edgefleet_protocol::sign::{open, open_for, own_payload, signed_version};
use edgefleet_protocol::{
    Ack, Command, DesiredState, DeviceId, Event, Expect, Heartbeat, MessageKind, Presence, Signer,
    StatusReport, rotation,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let hub = Signer::from_seed(&[1; 32]);
    let device = Signer::from_seed(&[2; 32]);
    let id = DeviceId::new("pi-line3-01").expect("id");
    let e = Expect::device(&id);
    let _ = open_for::<DesiredState>(data, hub.public(), &e, &device);
    let _ = open_for::<Command>(data, hub.public(), &e, &device);
    let _ = open::<Ack>(data, hub.public(), &e);
    let _ = open::<StatusReport>(data, device.public(), &e);
    let _ = open::<Event>(data, device.public(), &e);
    let _ = open::<Heartbeat>(data, device.public(), &e);
    let _ = open::<Presence>(data, device.public(), &e);
    let _ = rotation::signing_key(data, MessageKind::Desired, hub.public());
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = rotation::open_announcement(text, hub.public());
    }
    let _ = signed_version(data, hub.public());
    let _ = own_payload(data);
});
