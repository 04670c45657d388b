//! A Deployment manifest as `PUT /deployments/{name}` takes it.
#![no_main]

use edgefleet_protocol::Deployment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Deployment::from_yaml(text);
    }
});
