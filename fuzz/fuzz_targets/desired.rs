//! A desired-state payload the hub's key signed (so the fuzzer gets past the
//! signature): parsing, unsealing, validation, size rules.
#![no_main]

use edgefleet_protocol::{DesiredState, DeviceId, Expect, MessageKind, Signer, open_for};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let hub = Signer::from_seed(&[1; 32]);
    let device = Signer::from_seed(&[2; 32]);
    let id = DeviceId::new("pi-line3-01").expect("id");
    let env = hub.seal_bytes(MessageKind::Desired, data);
    if let Ok(doc) = open_for::<DesiredState>(&env, hub.public(), &Expect::device(&id), &device) {
        let _ = doc.check_size();
        let _ = doc.version();
    }
});
