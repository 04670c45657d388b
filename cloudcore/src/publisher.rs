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

use crate::desired::{content_hash, deployments_of, workloads_for};
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
    pub signer: Arc<Signer>,
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
    let devices = store.device_labels()?;
    let current = store.desired_hashes()?;
    let now = edgefleet_protocol::now_ms();
    let mut batch = Vec::new();
    let mut withheld = Vec::new();
    for (id, labels) in devices {
        let workloads = workloads_for(&labels, &deployments);
        let (json, hash) = content_hash(&workloads);
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
        batch.push(NewDesired {
            device_id: id,
            revision,
            content_hash: hash,
            workloads_json: json,
            envelope: signer.seal(&doc),
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
        let (signer, epoch, check) = (self.signer.clone(), self.epoch, self.check_limits);
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
