//! Fixtures for the hub's unit tests: an in-memory store with enrolled
//! devices, deployments from YAML, and metric readings. Nothing here opens
//! a socket.

use std::collections::BTreeMap;

use edgefleet_protocol::{Deployment, DeviceId, Signer};

use crate::metrics::Metrics;
use crate::store::{EnrollOutcome, Store};

pub fn store() -> Store {
    Store::open_in_memory().expect("in-memory store")
}

pub fn id(s: &str) -> DeviceId {
    DeviceId::new(s).expect("device id")
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The key [`enroll`] gives `device` (one per id, so a test can open what
/// the hub sealed to it).
pub fn device_key(device: &str) -> Signer {
    use sha2::Digest;
    Signer::from_seed(&sha2::Sha256::digest(device.as_bytes()).into())
}

/// Enrolls `device` with `labels`; returns the device's signing key.
pub fn enroll(s: &Store, device: &str, l: &[(&str, &str)]) -> Signer {
    let key = device_key(device);
    let outcome = s
        .enroll_device(
            Some(&id(device)),
            &id(device),
            &key.public().to_base64(),
            &labels(l),
            &[0; 32],
            (&None, "arm64", "test"),
        )
        .expect("enroll");
    assert_eq!(outcome, EnrollOutcome::New(id(device)));
    key
}

/// A deployment selecting `site=<site>` with one ConfigMap workload per
/// name in `workloads`.
pub fn deployment(name: &str, site: &str, workloads: &[&str]) -> Deployment {
    let mut yaml = format!(
        "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{site: {site}}}}}\n  workloads:\n"
    );
    for w in workloads {
        yaml.push_str(&format!(
            "    - name: {w}\n      kubernetes:\n        manifests: [{{apiVersion: v1, kind: ConfigMap, metadata: {{name: {w}}}}}]\n"
        ));
    }
    Deployment::from_yaml(&yaml).expect("valid deployment")
}

/// The value of one series in the metrics' text, 0 when absent.
pub fn metric(m: &Metrics, series: &str) -> f64 {
    m.render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}
