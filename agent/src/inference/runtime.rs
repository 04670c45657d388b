//! Inference workloads as the reconciler sees them: make sure each desired
//! workload's model is cached (downloaded and verified) and loaded into the
//! [`ModelRegistry`], unload the ones no longer desired. A download,
//! verification or load error is returned typed ([`SyncError`]), so the
//! reconciler can tell one worth retrying soon from one that is not.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use edgefleet_protocol::InferenceWorkload;

use edgefleet_protocol::Event;
use edgefleet_protocol::workload::InferenceOutput;

use super::local_mqtt::{self, Binding, LocalBroker, Upstream};
use super::model_cache::{HubSource, ModelCache};
use super::{Model, ModelRegistry};
use crate::metrics::Metrics;
use crate::shared::Shared;

/// Why an inference workload is not running.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("model {model}")]
    Fetch {
        model: String,
        #[source]
        source: Box<super::model_cache::CacheError>,
    },
    #[error("model {model}: the load task failed")]
    LoadTask {
        model: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error(transparent)]
    Load(#[from] super::InferenceError),
    #[error("input.mqtt needs a device-local broker: set local_broker.url in the agent config")]
    NoLocalBroker,
    #[error("model {0} is not loaded")]
    NotLoaded(String),
}

impl SyncError {
    /// True when trying again soon may help; a model tract cannot load or a
    /// missing local broker stay as they are until the desired state or the
    /// config changes.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Fetch { source, .. } => source.is_transient(),
            Self::LoadTask { .. } | Self::NotLoaded(_) => true,
            Self::Load(_) | Self::NoLocalBroker => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Loaded {
    model: String,
    sha256: String,
    concurrency: Option<u32>,
}

/// What a running local MQTT binding was started with.
#[derive(Debug, Clone, PartialEq)]
struct BindingKey {
    sha256: String,
    topic: String,
    output: InferenceOutput,
}

#[derive(Debug)]
pub struct InferenceRuntime {
    cache: ModelCache,
    hub: HubSource,
    registry: Arc<ModelRegistry>,
    loaded: HashMap<String, Loaded>,
    local: Option<LocalBroker>,
    upstream: Option<Upstream>,
    bindings: HashMap<String, (BindingKey, Binding)>,
}

impl InferenceRuntime {
    pub fn new(cache: ModelCache, hub: HubSource, registry: Arc<ModelRegistry>) -> Self {
        Self {
            cache,
            hub,
            registry,
            loaded: HashMap::new(),
            local: None,
            upstream: None,
            bindings: HashMap::new(),
        }
    }

    /// Enables `input.mqtt`/`output.topic` on `broker`; results with
    /// `output.upstream` go to `upstream`.
    pub fn with_local(mut self, broker: Option<LocalBroker>, upstream: Option<Upstream>) -> Self {
        self.local = broker;
        self.upstream = upstream;
        self
    }

    /// The runtime of the daemon: cache in `<state_dir>/models`, blobs from
    /// the hub with the device's broker credentials.
    pub fn for_agent(shared: &Arc<Shared>) -> Self {
        let cfg = &shared.cfg;
        let cache = ModelCache::new(
            cfg.state_dir.join("models"),
            cfg.models.cache_max_bytes,
            shared.db.clone(),
        )
        .with_disk(Arc::clone(&shared.disk));
        let hub = HubSource::for_agent(shared);
        // Plain MQTT only (validated in config): the broker is on the device.
        let local = edgefleet_daemon::mqtt::BrokerUrl::parse(&cfg.local_broker.url)
            .ok()
            .filter(|u| !u.tls)
            .map(|u| LocalBroker {
                host: u.host,
                port: u.port,
            });
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(outbox_writer(Arc::clone(shared), rx));
        Self::new(cache, hub, Arc::clone(&shared.models)).with_local(local, Some(tx))
    }

    /// The models this runtime serves (share it with the KServe router).
    pub fn registry(&self) -> Arc<ModelRegistry> {
        Arc::clone(&self.registry)
    }

    /// Ensures `workload`'s model is loaded; `Err` is the Failed reason.
    pub async fn sync(
        &mut self,
        workload: &str,
        spec: &InferenceWorkload,
        metrics: Option<&Metrics>,
    ) -> Result<(), SyncError> {
        let want = Loaded {
            model: spec.model.name.clone(),
            sha256: spec.model.sha256.clone(),
            concurrency: spec.concurrency,
        };
        if self.loaded.get(workload) != Some(&want) || self.registry.get(workload).is_none() {
            self.load(workload, want, metrics).await?;
        }
        self.bind(workload, spec)
    }

    async fn load(
        &mut self,
        workload: &str,
        want: Loaded,
        metrics: Option<&Metrics>,
    ) -> Result<(), SyncError> {
        let in_use: HashSet<String> = self.loaded.values().map(|l| l.sha256.clone()).collect();
        let path = self
            .cache
            .fetch(&want.model, &want.sha256, &self.hub, &in_use)
            .await
            .map_err(|source| SyncError::Fetch {
                model: want.model.clone(),
                source: Box::new(source),
            })?;
        let name = workload.to_owned();
        let model_metrics = metrics.map(|m| m.model(workload));
        let concurrency = want.concurrency;
        let version = Some(want.sha256.clone());
        let model = tokio::task::spawn_blocking(move || {
            Model::load_with_metrics(&name, &path, concurrency, version, model_metrics)
        })
        .await
        .map_err(|source| SyncError::LoadTask {
            model: want.model.clone(),
            source,
        })??;
        if let Some(old) = self.loaded.remove(workload) {
            self.registry.remove(&[old.model.as_str()]);
        }
        self.registry
            .insert(&[workload, want.model.as_str()], model);
        tracing::info!(workload, model = %want.model, sha256 = %want.sha256, "model loaded");
        self.loaded.insert(workload.to_owned(), want);
        Ok(())
    }

    /// Starts, restarts or stops the local MQTT binding of `workload`.
    fn bind(&mut self, workload: &str, spec: &InferenceWorkload) -> Result<(), SyncError> {
        let Some(mqtt) = &spec.input.mqtt else {
            self.bindings.remove(workload);
            return Ok(());
        };
        let Some(broker) = &self.local else {
            return Err(SyncError::NoLocalBroker);
        };
        let key = BindingKey {
            sha256: spec.model.sha256.clone(),
            topic: mqtt.topic.clone(),
            output: spec.output.clone(),
        };
        if self.bindings.get(workload).is_some_and(|(k, _)| *k == key) {
            return Ok(());
        }
        let model = self
            .registry
            .get(workload)
            .ok_or_else(|| SyncError::NotLoaded(spec.model.name.clone()))?;
        self.bindings.remove(workload);
        let binding = local_mqtt::start(
            broker,
            workload,
            &spec.model.name,
            model,
            &mqtt.topic,
            spec.output.clone(),
            self.upstream.clone(),
        );
        self.bindings.insert(workload.to_owned(), (key, binding));
        Ok(())
    }

    /// Unloads workloads not in `desired`.
    pub fn prune(&mut self, desired: &BTreeSet<&str>) {
        let gone: Vec<String> = self
            .loaded
            .keys()
            .filter(|w| !desired.contains(w.as_str()))
            .cloned()
            .collect();
        for w in gone {
            self.unload(&w);
        }
    }

    /// Unloads one workload's model (the next sync loads it again); false
    /// when it was not loaded.
    pub fn unload(&mut self, workload: &str) -> bool {
        self.bindings.remove(workload);
        let Some(l) = self.loaded.remove(workload) else {
            return false;
        };
        self.registry.remove(&[workload, l.model.as_str()]);
        tracing::info!(%workload, model = %l.model, "model unloaded");
        true
    }
}

/// Drains upstream results into the outbox as signed `inference.result`
/// events (so results survive an offline uplink and agent restarts).
async fn outbox_writer(
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::Receiver<(String, serde_json::Value)>,
) {
    while let Some((workload, payload)) = rx.recv().await {
        let event = Event {
            id: uuid::Uuid::now_v7().simple().to_string(),
            device_id: shared.device.clone(),
            kind: super::sink::RESULT_KIND.to_owned(),
            workload: Some(workload),
            created_at_ms: edgefleet_protocol::now_ms(),
            payload,
        };
        if let Err(e) = event.check() {
            tracing::warn!(error = %e, "inference result is not a valid event; dropped");
            continue;
        }
        let sealed = vec![(event.id.clone(), shared.identity.signer().seal(&event))];
        if let Err(e) = shared.queue_events(sealed).await {
            shared.metrics.store_errors.inc();
            tracing::error!(error = %crate::error_chain(&e), "cannot queue inference result; dropped");
        }
    }
}
