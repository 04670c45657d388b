//! The desired-state publisher. After any change that can alter what a
//! device should run (deployment put/delete, device labels, enrollment), it
//! recomputes every device's workloads and, only for documents whose content
//! changed, bumps the revision, signs, stores the whole batch in one
//! transaction, then publishes retained at QoS 1. Unchanged documents are
//! never re-issued, so restarts never bump revisions.
//!
//! Changes are coalesced: a burst of API calls becomes one pass.
//!
//! A document a device would refuse for its size (too many workloads, too
//! many bytes signed) is never issued nor handed to the MQTT client: the
//! device keeps its previous document and gets a `DesiredTooLarge`
//! condition saying why, cleared once its document fits again. The API
//! refuses such changes up front; this guard is for what gets past it (two
//! changes at once, an enrollment).

use std::sync::Arc;
use std::time::Instant;

use edgefleet_protocol::{Channel, DesiredState, DeviceId, Signer, Topic};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::desired::{content_hash, deployments_of, workloads_for_device};
use crate::metrics::Metrics;
use crate::mqtt::Reconnects;
use crate::store::{NewDesired, Store, StoreError};

/// What one pass decided.
#[derive(Debug, Default)]
pub struct Pass {
    /// New documents to publish: device, revision, signed envelope.
    pub docs: Vec<(DeviceId, u64, Vec<u8>)>,
    /// Devices whose new document was not issued, and why.
    pub withheld: Vec<(DeviceId, String)>,
}

/// Wait before running a failed pass again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// A handle to wake the publisher.
#[derive(Debug, Clone, Default)]
pub struct Trigger(Arc<Notify>);

impl Trigger {
    /// Asks for a pass soon; many calls before it runs make one pass.
    pub fn changed(&self) {
        self.0.notify_one();
    }
}

#[derive(Debug)]
pub struct Publisher {
    pub store: Store,
    /// The hub's key, read at each pass: a rotation re-issues every
    /// document signed with the new key.
    pub keys: Arc<crate::keys::HubKeys>,
    pub epoch: u64,
    pub client: AsyncClient,
    pub metrics: Arc<Metrics>,
    /// Withhold documents a device would refuse (off only in tests of the
    /// MQTT session's own guard).
    pub check_limits: bool,
}

/// Computes and stores new documents for every device whose workloads
/// changed, withholding any a device would refuse (when `check_limits`).
pub fn compute_pass(
    store: &Store,
    signer: &Signer,
    epoch: u64,
    check_limits: bool,
) -> Result<Pass, StoreError> {
    let deployments = store.list_deployments()?;
    let rollouts = store.active_rollouts()?;
    let devices = store.device_labels()?;
    let auth = store.device_auth()?;
    let current = store.desired_hashes()?;
    let now = edgefleet_protocol::now_ms();
    let mut batch = Vec::new();
    let mut withheld = Vec::new();
    for (id, labels) in devices {
        let workloads = workloads_for_device(id.as_str(), &labels, &deployments, &rollouts);
        let Some(key) = auth
            .get(&id)
            .and_then(|a| edgefleet_protocol::PublicKey::from_base64(&a.public_key).ok())
        else {
            tracing::error!(device = %id, "no usable public key stored for the device; document not issued");
            continue;
        };
        let (json, hash) = content_hash(&workloads)?;
        // A new hub key or a new device key makes a new document too:
        // signed and sealed anew.
        let hash = keyed_hash(&hash, signer.public(), &key);
        let prev = current.get(&id);
        // A device with nothing to run and nothing issued yet gets no
        // document: revision 1 is its first real assignment.
        match prev {
            Some((_, h)) if *h == hash => continue,
            None if workloads.is_empty() => continue,
            _ => {}
        }
        let revision = prev.map_or(1, |(r, _)| r + 1);
        let doc = DesiredState {
            device_id: id.clone(),
            revision,
            hub_epoch: epoch,
            issued_at_ms: now,
            workloads,
        };
        if check_limits && let Err(e) = doc.check_size() {
            let why = format!(
                "desired state not issued: the device would receive {e} (deployments {})",
                deployments_of(&doc.workloads).join(", ")
            );
            withheld.push((id, why));
            continue;
        }
        // Sealed to the device's key: the broker sees no manifest.
        batch.push(NewDesired {
            device_id: id,
            revision,
            content_hash: hash,
            workloads_json: json,
            envelope: signer.seal_for(&doc, &key),
            issued_ms: now,
        });
    }
    store.store_pass(&batch, &withheld)?;
    Ok(Pass {
        docs: batch
            .into_iter()
            .map(|d| (d.device_id, d.revision, d.envelope))
            .collect(),
        withheld,
    })
}

/// A document's content hash bound to the keys it is signed with and
/// sealed to.
fn keyed_hash(
    content: &str,
    hub: &edgefleet_protocol::PublicKey,
    device: &edgefleet_protocol::PublicKey,
) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [content, &hub.kid().0, &device.kid().0] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

impl Publisher {
    /// Hands documents to the broker (retained, QoS 1) and records that.
    pub async fn publish(&self, docs: Vec<(DeviceId, u64, Vec<u8>)>) {
        let mut done = Vec::with_capacity(docs.len());
        for (id, revision, envelope) in docs {
            let topic = Topic::new(id.clone(), Channel::Desired).to_string();
            match self
                .client
                .publish(topic, QoS::AtLeastOnce, true, envelope)
                .await
            {
                Ok(()) => {
                    self.metrics.desired_published.inc();
                    done.push((id, revision));
                }
                Err(e) => {
                    // Left unpublished in the store; the next connect retries it.
                    tracing::error!(device = %id, revision, error = %e, "cannot queue desired state");
                }
            }
        }
        if done.is_empty() {
            return;
        }
        if let Err(e) = self.store.run(move |s| s.mark_published(&done)).await {
            tracing::error!(error = %e, "cannot record published desired state");
        }
    }

    /// Republishes stored documents: all of them (embedded broker, which
    /// lost its retained messages) or only those never handed to the broker.
    pub async fn republish(&self, all: bool) {
        match self.store.run(move |s| s.desired_envelopes(!all)).await {
            Ok(docs) if !docs.is_empty() => {
                tracing::info!(count = docs.len(), "republishing stored desired state");
                self.publish(docs).await;
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cannot read stored desired state"),
        }
    }

    /// One recompute-store-publish pass; false when it failed (it is
    /// retried).
    pub async fn pass(&self) -> bool {
        let started = Instant::now();
        let (signer, epoch, check) = (self.keys.signer(), self.epoch, self.check_limits);
        match self
            .store
            .run(move |s| compute_pass(s, &signer, epoch, check))
            .await
        {
            Ok(Pass { docs, withheld }) => {
                for (device, why) in &withheld {
                    tracing::warn!(%device, "{why}");
                }
                self.metrics.desired_withheld.inc_by(withheld.len() as u64);
                let n = docs.len();
                self.metrics.desired_revisions.inc_by(n as u64);
                self.publish(docs).await;
                if n > 0 {
                    tracing::info!(
                        devices = n,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "published new desired state"
                    );
                }
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    source = ?std::error::Error::source(&e),
                    "desired-state pass failed; retrying in {RETRY:?}"
                );
                self.metrics
                    .publish_pass
                    .observe(started.elapsed().as_secs_f64());
                return false;
            }
        }
        self.metrics
            .publish_pass
            .observe(started.elapsed().as_secs_f64());
        true
    }

    /// Runs passes on every trigger until cancelled. `reconnected` fires on
    /// each broker (re)connect: then unpublished documents are sent, or all
    /// of them when the broker lost its state (an external broker that
    /// crashed before saving its retained messages; the embedded broker on
    /// every hub start).
    pub async fn run(
        self,
        trigger: Trigger,
        reconnected: Arc<Reconnects>,
        republish_all_first: bool,
        cancel: CancellationToken,
    ) {
        let mut first_connect = true;
        // A failed pass (a full disk, a locked store) is run again.
        let mut retry = false;
        loop {
            let ok = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = trigger.0.notified() => self.pass().await,
                _ = tokio::time::sleep(RETRY), if retry => self.pass().await,
                lost_state = reconnected.next() => {
                    self.republish(lost_state || (first_connect && republish_all_first)).await;
                    if first_connect {
                        first_connect = false;
                        self.pass().await
                    } else {
                        !retry
                    }
                }
            };
            retry = !ok;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ConditionType;
    use crate::testing::{deployment, device_key, enroll, id, labels, store};
    use edgefleet_protocol::{Expect, open_for};

    /// A store with `pi-1` (site=a) and deployment `web` (workload `app`)
    /// selecting it, and a hub key.
    fn one_device_one_deployment() -> (Store, Signer) {
        let (s, hub) = (store(), Signer::generate());
        enroll(&s, "pi-1", &[("site", "a")]);
        s.put_deployment(&deployment("web", "a", &["app"])).unwrap();
        (s, hub)
    }

    fn pass(s: &Store, signer: &Signer) -> Pass {
        compute_pass(s, signer, s.epoch().unwrap(), true).expect("pass")
    }

    /// The workloads of a published envelope, checked with the hub key.
    fn workloads(signer: &Signer, envelope: &[u8], device: &str) -> Vec<String> {
        let device = id(device);
        let doc: DesiredState = open_for(
            envelope,
            signer.public(),
            &Expect::device(&device),
            &device_key(device.as_str()),
        )
        .unwrap();
        doc.workloads
            .iter()
            .map(|w| w.workload.name.clone())
            .collect()
    }

    #[test]
    fn no_change_issues_no_new_revision() {
        let (s, hub) = one_device_one_deployment();
        let first = pass(&s, &hub);
        assert_eq!(first.docs.len(), 1);
        assert_eq!((first.docs[0].0.as_str(), first.docs[0].1), ("pi-1", 1));
        // Nothing changed: nothing issued, the revision stays.
        assert!(pass(&s, &hub).docs.is_empty());
        // Re-applying the same spec changes nothing either.
        s.put_deployment(&deployment("web", "a", &["app"])).unwrap();
        assert!(pass(&s, &hub).docs.is_empty());
        assert_eq!(s.desired_hashes().unwrap()[&id("pi-1")].0, 1);
    }

    #[test]
    fn a_device_with_nothing_to_run_gets_no_first_document() {
        let (s, hub) = (store(), Signer::generate());
        enroll(&s, "pi-1", &[("site", "b")]);
        s.put_deployment(&deployment("web", "a", &["app"])).unwrap();
        assert!(pass(&s, &hub).docs.is_empty());
        assert!(s.desired_hashes().unwrap().is_empty());
    }

    #[test]
    fn labels_move_a_device_in_and_out_of_a_selector() {
        let (s, hub) = (store(), Signer::generate());
        enroll(&s, "pi-1", &[("site", "a")]);
        enroll(&s, "pi-2", &[("site", "b")]);
        s.put_deployment(&deployment("web", "a", &["app"])).unwrap();
        pass(&s, &hub);
        // Out: an empty document at the next revision (the agent prunes).
        s.set_labels("pi-1", &labels(&[("site", "b")])).unwrap();
        let out = pass(&s, &hub);
        assert_eq!(out.docs.len(), 1, "only pi-1 changed");
        assert_eq!(out.docs[0].1, 2);
        assert!(workloads(&hub, &out.docs[0].2, "pi-1").is_empty());
        // In again: the workload is back at revision 3; pi-2 is untouched.
        s.set_labels("pi-1", &labels(&[("site", "a")])).unwrap();
        let back = pass(&s, &hub);
        assert_eq!(back.docs.len(), 1);
        assert_eq!(back.docs[0].1, 3);
        assert_eq!(workloads(&hub, &back.docs[0].2, "pi-1"), ["web.app"]);
        assert!(!s.desired_hashes().unwrap().contains_key(&id("pi-2")));
    }

    #[test]
    fn a_device_enrolled_later_gets_its_first_document_alone() {
        let (s, hub) = one_device_one_deployment();
        pass(&s, &hub);
        enroll(&s, "pi-2", &[("site", "a")]);
        let p = pass(&s, &hub);
        assert_eq!(p.docs.len(), 1);
        assert_eq!((p.docs[0].0.as_str(), p.docs[0].1), ("pi-2", 1));
        // A deleted device's document goes with it; the others stay.
        assert!(s.delete_device("pi-2").unwrap());
        assert!(pass(&s, &hub).docs.is_empty());
        assert_eq!(s.desired_hashes().unwrap().len(), 1);
    }

    #[test]
    fn deleting_a_deployment_empties_the_devices_documents() {
        let (s, hub) = one_device_one_deployment();
        pass(&s, &hub);
        assert!(s.delete_deployment("web").unwrap());
        assert!(!s.delete_deployment("web").unwrap(), "already gone");
        let p = pass(&s, &hub);
        assert_eq!(p.docs.len(), 1);
        assert_eq!(p.docs[0].1, 2);
        assert!(workloads(&hub, &p.docs[0].2, "pi-1").is_empty());
    }

    #[test]
    fn two_deployments_on_one_device_make_one_document() {
        let (s, hub) = one_device_one_deployment();
        s.put_deployment(&deployment("metrics", "a", &["agent", "push"]))
            .unwrap();
        let p = pass(&s, &hub);
        assert_eq!(p.docs.len(), 1);
        let mut names = workloads(&hub, &p.docs[0].2, "pi-1");
        names.sort();
        assert_eq!(names, ["metrics.agent", "metrics.push", "web.app"]);
        // Changing one of them is one new revision carrying both.
        s.put_deployment(&deployment("web", "a", &["app", "cache"]))
            .unwrap();
        let p = pass(&s, &hub);
        assert_eq!(p.docs[0].1, 2);
        assert_eq!(workloads(&hub, &p.docs[0].2, "pi-1").len(), 4);
    }

    #[test]
    fn documents_carry_the_stores_epoch() {
        let (s, hub) = one_device_one_deployment();
        let p = pass(&s, &hub);
        let doc: DesiredState = open_for(
            &p.docs[0].2,
            hub.public(),
            &Expect::device(&id("pi-1")),
            &device_key("pi-1"),
        )
        .unwrap();
        // Sealed: the manifest is not in what the broker carries.
        let payload = edgefleet_protocol::sign::own_payload(&p.docs[0].2).unwrap();
        assert!(!String::from_utf8_lossy(&payload).contains("ConfigMap"));
        assert_eq!(doc.hub_epoch, s.epoch().unwrap());
        assert_eq!(doc.revision, 1);
    }

    #[test]
    fn a_document_the_device_would_refuse_is_withheld_with_a_condition() {
        let (s, hub) = (store(), Signer::generate());
        enroll(&s, "pi-1", &[("site", "a")]);
        s.put_deployment(&deployment("small", "a", &["app"]))
            .unwrap();
        pass(&s, &hub);
        // Each deployment fits; together they are over the device's limit.
        let half: Vec<String> = (0..edgefleet_protocol::limits::MAX_WORKLOADS / 2 + 1)
            .map(|i| format!("w{i}"))
            .collect();
        let half: Vec<&str> = half.iter().map(String::as_str).collect();
        s.put_deployment(&deployment("big", "a", &half)).unwrap();
        s.put_deployment(&deployment("bigger", "a", &half)).unwrap();
        let p = pass(&s, &hub);
        assert!(p.docs.is_empty(), "nothing issued");
        assert_eq!(p.withheld.len(), 1);
        assert!(p.withheld[0].1.contains("big"), "{}", p.withheld[0].1);
        // The device keeps revision 1 and carries the condition.
        assert_eq!(s.desired_hashes().unwrap()[&id("pi-1")].0, 1);
        let dev = s.get_device("pi-1").unwrap().unwrap();
        assert_eq!(dev.conditions[0].kind, ConditionType::DesiredTooLarge);
        // Once it fits again the condition goes and revision 2 is issued.
        s.delete_deployment("bigger").unwrap();
        s.delete_deployment("big").unwrap();
        s.put_deployment(&deployment("small", "a", &["app", "two"]))
            .unwrap();
        let p = pass(&s, &hub);
        assert_eq!(p.docs[0].1, 2);
        assert!(s.get_device("pi-1").unwrap().unwrap().conditions.is_empty());
    }
}
