//! [`Shared`]: the state every task of the daemon holds (config, identity,
//! store, metrics, disk guard, wake-ups), and the two writes more than one
//! task makes: queueing events and writes the agent cannot skip.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use edgefleet_protocol::DeviceId;
use tokio::sync::Notify;

use crate::config::{Config, OnDiskFull};
use crate::db::Db;
use crate::disk::{DiskFull, DiskGuard};
use crate::identity::Identity;
use crate::inference::ModelRegistry;
use crate::metrics::Metrics;
use crate::outbox::Limits;

/// State shared by the daemon's tasks.
#[derive(Debug)]
pub struct Shared {
    pub cfg: Config,
    pub device: DeviceId,
    pub identity: Identity,
    pub db: Db,
    pub metrics: Metrics,
    /// Reserve, spare and pressure of the state directory's disk.
    pub disk: Arc<DiskGuard>,
    /// A status report that could not be stored (full disk), sent from
    /// memory until a stored one replaces it.
    pub unstored_status: Mutex<Option<Vec<u8>>>,
    /// Sends a heartbeat now (disk pressure began or ended).
    pub heartbeat_wake: Notify,
    /// Models the reconciler loaded, served by the KServe endpoints.
    pub models: Arc<ModelRegistry>,
    /// Wakes the reconciler (new desired state, connect, commands).
    pub reconcile_wake: Notify,
    /// The next pass must queue a status report even if nothing changed.
    pub report_wanted: AtomicBool,
    /// The next pass syncs every workload, including those waiting for a
    /// retry (a resync command).
    pub resync_wanted: AtomicBool,
    /// New outbox rows were committed.
    pub outbox_wake: Notify,
    /// Signed events the session publishes as they are, not through the
    /// outbox (log chunks: ephemeral, for a caller waiting now).
    pub direct: Handoff<Vec<u8>>,
    /// Workload restarts asked by commands, run by the reconciler.
    pub restarts: Handoff<RestartRequest>,
    pub connected: AtomicBool,
    /// Kubernetes workloads exist (so `/readyz` needs the API).
    pub kube_needed: AtomicBool,
    pub kube_reachable: AtomicBool,
    k3s_version: Mutex<Option<String>>,
    /// The last desired document refused, reported until a newer one is accepted.
    desired_rejected: Mutex<Option<edgefleet_protocol::DesiredRejection>>,
    /// Process start, for the cold-start log line.
    pub started_ms: AtomicU64,
    /// An agent release is staged: the daemon stops and exits with
    /// [`crate::update::EXIT_UPDATE`] for the supervisor to start it.
    pub update_staged: AtomicBool,
    pub update_wake: Notify,
}

impl Shared {
    pub fn new(cfg: Config, device: DeviceId, identity: Identity, db: Db, disk: DiskGuard) -> Self {
        Self {
            cfg,
            device,
            identity,
            db,
            metrics: Metrics::new(),
            disk: Arc::new(disk),
            unstored_status: Mutex::new(None),
            heartbeat_wake: Notify::new(),
            models: ModelRegistry::new(),
            reconcile_wake: Notify::new(),
            report_wanted: AtomicBool::new(true),
            resync_wanted: AtomicBool::new(false),
            outbox_wake: Notify::new(),
            restarts: Handoff::new(16),
            direct: Handoff::new(64),
            connected: AtomicBool::new(false),
            kube_needed: AtomicBool::new(false),
            kube_reachable: AtomicBool::new(false),
            k3s_version: Mutex::new(None),
            desired_rejected: Mutex::new(None),
            started_ms: AtomicU64::new(edgefleet_protocol::now_ms()),
            update_staged: AtomicBool::new(false),
            update_wake: Notify::new(),
        }
    }

    pub fn outbox_limits(&self) -> Limits {
        Limits {
            max_messages: self.cfg.outbox.max_messages,
            max_bytes: self.cfg.outbox.max_bytes,
        }
    }

    /// Commits sealed events, each with its id, to the outbox, updates the
    /// outbox metrics and wakes the sender. `Ok` means they are durable.
    /// Refused with [`QueueError::DiskFull`] when storing them would eat
    /// into the disk reserve, unless `outbox.on_disk_full` is `drop-oldest`:
    /// then the oldest queued messages make room.
    pub async fn queue_events(&self, sealed: Vec<(String, Vec<u8>)>) -> Result<(), QueueError> {
        let bytes: u64 = sealed.iter().map(|(k, p)| (k.len() + p.len()) as u64).sum();
        if let Err(full) = self.disk.admit(bytes) {
            self.disk.note_refused();
            if self.cfg.outbox.on_disk_full == OnDiskFull::Refuse {
                return Err(QueueError::DiskFull(full));
            }
            let dropped = self
                .db
                .call(move |s| s.outbox_drop_oldest(bytes.saturating_mul(2)))
                .await
                .map_err(QueueError::Store)?;
            self.metrics.outbox_dropped.inc_by(dropped);
            tracing::warn!(
                dropped,
                "disk at its reserve: dropped the oldest outbox messages for new events"
            );
        }
        let limits = self.outbox_limits();
        let (pushed, depth) = self
            .db
            .call(move |s| {
                s.outbox_push(edgefleet_protocol::Channel::Events, &sealed, limits)
                    .map(|p| (p, s.outbox_depth()))
            })
            .await
            .map_err(|e| {
                if e.is_disk_full() {
                    self.disk.note_refused();
                    QueueError::DiskFull(DiskFull {
                        available: self.disk.space().map_or(0, |s| s.available),
                        needed: bytes,
                        reserve: self.disk.reserve(),
                    })
                } else {
                    QueueError::Store(e)
                }
            })?;
        self.metrics.outbox_dropped.inc_by(pushed.dropped);
        self.metrics.set_outbox(depth);
        self.outbox_wake.notify_one();
        Ok(())
    }

    /// Runs a store write the agent cannot skip (deleting acknowledged
    /// rows, its status report, desired state); on a full disk it releases
    /// the spare once and tries again.
    pub async fn write_essential<T, F>(&self, f: F) -> Result<T, crate::store::StoreError>
    where
        T: Send + 'static,
        F: Fn(&mut crate::store::Store) -> Result<T, crate::store::StoreError>
            + Clone
            + Send
            + 'static,
    {
        match self.db.call(f.clone()).await {
            Err(e) if e.is_disk_full() && self.disk.release_spare() => {
                self.metrics.disk_spare_released.inc();
                self.db.call(f).await
            }
            r => r,
        }
    }

    /// A hub-signed message for this device, verified and, if sealed,
    /// decrypted; `None` (counted and logged as `what` rejected) when it is
    /// not.
    pub fn open_from_hub<M: edgefleet_protocol::sign::Message>(
        &self,
        payload: &[u8],
        what: &str,
    ) -> Option<M> {
        let expect = edgefleet_protocol::Expect::device(&self.device);
        let hub_key = self.identity.follow_hub_key(payload, M::KIND);
        match crate::identity::open_sealed::<M>(
            payload,
            &hub_key,
            &expect,
            &self.identity.recipients(),
        ) {
            Ok(m) => Some(m),
            Err(r) => {
                self.metrics.reject(r.reason());
                tracing::warn!(reason = r.reason(), error = %r, "{what} rejected");
                None
            }
        }
    }

    /// Asks the reconciler for a status report soon.
    pub fn request_report(&self) {
        self.report_wanted.store(true, Ordering::Relaxed);
        self.reconcile_wake.notify_one();
    }

    pub fn k3s_version(&self) -> Option<String> {
        self.k3s_version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_k3s_version(&self, v: Option<String>) {
        *self.k3s_version.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }

    pub fn desired_rejected(&self) -> Option<edgefleet_protocol::DesiredRejection> {
        self.desired_rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records (or clears, with `None`) the refused desired document the
    /// next status reports carry, and asks for a report.
    pub fn set_desired_rejected(&self, r: Option<edgefleet_protocol::DesiredRejection>) {
        *self
            .desired_rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = r;
        self.request_report();
    }
}

/// A channel to one task: any task sends, the one that takes the receiving
/// end (once, at its start) receives.
#[derive(Debug)]
pub struct Handoff<T> {
    pub tx: tokio::sync::mpsc::Sender<T>,
    rx: Mutex<Option<tokio::sync::mpsc::Receiver<T>>>,
}

impl<T> Handoff<T> {
    fn new(capacity: usize) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// The receiving end; a second taker gets one that never receives.
    pub fn take(&self) -> Inbox<T> {
        Inbox(self.rx.lock().unwrap_or_else(|p| p.into_inner()).take())
    }
}

/// The receiving end of a [`Handoff`].
#[derive(Debug)]
pub struct Inbox<T>(Option<tokio::sync::mpsc::Receiver<T>>);

impl<T> Inbox<T> {
    /// The next message; pending forever without a receiver (a branch of a
    /// `select!` that never fires).
    pub async fn recv(&mut self) -> Option<T> {
        match &mut self.0 {
            Some(rx) => rx.recv().await,
            None => std::future::pending().await,
        }
    }
}

/// A workload to restart, and where the reconciler answers: what it did,
/// or why it could not.
pub type RestartRequest = (String, tokio::sync::oneshot::Sender<Result<String, String>>);

/// Why events were not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    DiskFull(DiskFull),
    #[error("cannot commit to the outbox")]
    Store(#[source] crate::store::StoreError),
}
