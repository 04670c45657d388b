//! A command payload the hub's key signed: parsing, unsealing, validation,
//! expiry.
#![no_main]

use edgefleet_protocol::{Command, DeviceId, Expect, MessageKind, Signer, open_for};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let hub = Signer::from_seed(&[1; 32]);
    let device = Signer::from_seed(&[2; 32]);
    let id = DeviceId::new("pi-line3-01").expect("id");
    let env = hub.seal_bytes(MessageKind::Command, data);
    let _ = open_for::<Command>(&env, hub.public(), &Expect::device(&id), &device);
});
