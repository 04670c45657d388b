//! The body an app posts to the agent's local `POST /v1/events`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = edgefleet_localapi::events::parse_events(data);
});
