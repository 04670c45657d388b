//! Verifying and storing desired-state documents from the hub. Nothing is
//! stored unless [`edgefleet_protocol::open_for`] accepts it with the pinned
//! hub key, this device's id and a version strictly newer than the stored
//! one, and its workloads decrypt with this device's key.

use std::sync::Arc;

use edgefleet_protocol::{DesiredState, DeviceId, Expect, PublicKey, Rejection, Signer};

use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// What became of one received document.
#[derive(Debug)]
pub enum Outcome {
    /// Stored; the reconciler must run.
    Accepted(DesiredState),
    /// The version we already hold (a retained redelivery): nothing to do.
    Duplicate,
    /// Refused; logged and counted, nothing stored.
    Rejected(Rejection),
    /// Verified, but the store failed; the message must not be acknowledged.
    StoreFailed(StoreError),
}

/// Verifies `payload` and, if accepted, replaces the stored desired state.
pub fn handle(
    store: &mut Store,
    payload: &[u8],
    device: &DeviceId,
    hub_key: &PublicKey,
    me: &[Arc<Signer>],
    metrics: &Metrics,
) -> Outcome {
    let current = match store.desired_version() {
        Ok(v) => v,
        Err(e) => {
            metrics.store_errors.inc();
            return Outcome::StoreFailed(e);
        }
    };
    let expect = Expect::device(device).newer_than(current);
    match crate::identity::open_sealed::<DesiredState>(payload, hub_key, &expect, me) {
        Ok(doc) => match store.replace_desired(&doc) {
            Ok(()) => {
                metrics.desired_accepted.inc();
                metrics.desired_revision.set(doc.revision as i64);
                tracing::info!(
                    version = %doc.version(),
                    workloads = doc.workloads.len(),
                    "desired state accepted"
                );
                Outcome::Accepted(doc)
            }
            Err(e) => {
                metrics.store_errors.inc();
                tracing::error!(error = %crate::error_chain(&e), "cannot store desired state");
                Outcome::StoreFailed(e)
            }
        },
        Err(Rejection::StaleRevision { got, current }) if got == current => {
            metrics.desired_duplicates.inc();
            tracing::debug!(version = %got, "desired state redelivered");
            Outcome::Duplicate
        }
        Err(r) => {
            metrics.reject(r.reason());
            tracing::warn!(reason = r.reason(), error = %r, "desired state rejected");
            Outcome::Rejected(r)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Synchronous;
    use edgefleet_protocol::{MessageKind, Signer};

    fn doc(device: &str, rev: u64) -> DesiredState {
        serde_json::from_value(serde_json::json!({
            "deviceId": device, "revision": rev, "hubEpoch": 1, "issuedAtMs": 1, "workloads": []
        }))
        .unwrap()
    }

    #[test]
    fn accepts_newer_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Store::open(&dir.path().join("a.db"), Synchronous::Normal).unwrap();
        let hub = Signer::from_seed(&[1; 32]);
        let other = Signer::from_seed(&[2; 32]);
        let dev = DeviceId::new("pi-1").unwrap();
        let m = Metrics::new();
        let me = [Arc::new(Signer::from_seed(&[3; 32]))];
        let h = |s: &mut Store, bytes: &[u8]| handle(s, bytes, &dev, hub.public(), &me, &m);

        assert!(matches!(
            h(&mut s, &hub.seal_for(&doc("pi-1", 2), me[0].public())),
            Outcome::Accepted(_)
        ));
        assert!(matches!(
            h(&mut s, &hub.seal(&doc("pi-1", 2))),
            Outcome::Duplicate
        ));
        let r = |o: Outcome| match o {
            Outcome::Rejected(r) => r.reason(),
            o => panic!("expected a rejection, got {o:?}"),
        };
        assert_eq!(r(h(&mut s, &hub.seal(&doc("pi-1", 1)))), "stale_revision");
        assert_eq!(r(h(&mut s, &other.seal(&doc("pi-1", 5)))), "unknown_key");
        assert_eq!(r(h(&mut s, &hub.seal(&doc("pi-2", 5)))), "wrong_device");
        // Sealed to another device's key.
        let stranger = Signer::from_seed(&[4; 32]);
        assert_eq!(
            r(h(&mut s, &hub.seal_for(&doc("pi-1", 5), stranger.public()))),
            "undecryptable"
        );
        let mut forged = hub.seal(&doc("pi-1", 6));
        let n = forged.len();
        forged[n - 5] ^= 1;
        assert!(matches!(h(&mut s, &forged), Outcome::Rejected(_)));
        assert_eq!(
            r(h(&mut s, &hub.seal_bytes(MessageKind::Status, b"{}"))),
            "wrong_type"
        );
        assert_eq!(s.desired().unwrap().unwrap().revision, 2);
        let text = m.encode();
        assert!(text.contains("reason=\"stale_revision\"} 1"), "{text}");
        assert!(text.contains("reason=\"unknown_key\"} 1"));
        assert!(text.contains("reason=\"wrong_device\"} 1"));
    }
}
