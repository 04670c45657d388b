//! The K3s runtime: server-side apply of arbitrary Kubernetes objects to the
//! device's own cluster through kube-rs, plus health read from their status.
//!
//! Objects are handled as `DynamicObject`s; apiVersion/kind are mapped to
//! resources by discovery of the one group-version asked for (one request,
//! cached per kind) rather than a full discovery sweep, which costs N+2
//! requests on every start of a small device.
//!
//! This module keeps no state besides that cache and never talks MQTT. It never
//! deletes an object that does not carry our `managed-by` label, never labels
//! a namespace it only created as a prerequisite, and never blocks a caller
//! longer than the request timeout it was built with.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams, PostParams,
    Preconditions, PropagationPolicy,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::gvk::GroupVersion;
use kube::discovery::{ApiResource, Scope};
use kube::{Client, Config};
use serde_json::Value;
use sha2::{Digest, Sha256};

mod health;
mod manifest;

pub use health::health_of;
pub use manifest::apply_hash;
use manifest::{prepare, set_namespace, write_canonical};

/// The field manager of every server-side apply we send.
pub const FIELD_MANAGER: &str = "edgefleet-agent";
/// The field manager of restarts (a pod-template annotation our applies
/// never set, so they neither remove it nor count it as drift).
pub const RESTART_MANAGER: &str = "edgefleet-restart";
/// The pod-template annotation a restart sets, as `kubectl rollout restart`
/// sets `kubectl.kubernetes.io/restartedAt`.
pub const RESTARTED_AT: &str = "edgefleet.io/restartedAt";

/// Whether `kubectl rollout restart` applies to the kind.
pub fn is_restartable(api_version: &str, kind: &str) -> bool {
    api_version == "apps/v1" && matches!(kind, "Deployment" | "StatefulSet" | "DaemonSet")
}
/// Label marking objects as ours; only such objects are ever deleted.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`] on our objects.
pub const MANAGED_BY_VALUE: &str = "edgefleet";
/// Label naming the workload (`<deployment>.<workload>`) an object belongs to.
pub const WORKLOAD_LABEL: &str = "edgefleet.io/workload";
/// Namespace of namespaced objects whose manifest names none (as kubectl does).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Identity of a Kubernetes object we apply.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ObjectKey {
    pub api_version: String,
    pub kind: String,
    /// `None` for cluster-scoped objects, and for namespaced objects whose
    /// manifest names no namespace (the runtime then uses [`DEFAULT_NAMESPACE`]).
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    /// The key of a manifest; `None` unless apiVersion, kind and metadata.name
    /// are non-empty strings.
    pub fn from_manifest(m: &Value) -> Option<Self> {
        let text = |v: Option<&Value>| {
            v.and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let meta = m.get("metadata");
        Some(Self {
            api_version: text(m.get("apiVersion"))?,
            kind: text(m.get("kind"))?,
            namespace: text(meta.and_then(|md| md.get("namespace"))),
            name: text(meta.and_then(|md| md.get("name")))?,
        })
    }

    fn group(&self) -> &str {
        self.api_version
            .split_once('/')
            .map_or("", |(group, _)| group)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {} {}/{}", self.api_version, self.kind, ns, self.name),
            None => write!(f, "{} {} {}", self.api_version, self.kind, self.name),
        }
    }
}

/// An object as the API server returned it.
#[derive(Debug, Clone)]
pub struct LiveObject {
    /// The key as the server reports it (the namespace is always filled in
    /// for namespaced objects).
    pub key: ObjectKey,
    pub uid: String,
    pub resource_version: String,
    pub generation: Option<i64>,
    pub labels: BTreeMap<String, String>,
    pub raw: Value,
}

impl LiveObject {
    /// Whether the object carries our `managed-by` label.
    pub fn is_owned(&self) -> bool {
        self.labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE)
    }

    /// A hash of the fields our server-side applies own, as the server's
    /// `managedFields` records them (empty when we own none). It changes
    /// only when someone takes or removes a field we set: a controller
    /// writing status leaves it alone, another client editing our field
    /// (drift) does not.
    pub fn owned_fields_hash(&self) -> String {
        let ours = self.raw["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["manager"] == FIELD_MANAGER && m["operation"] == "Apply");
        match ours {
            None => String::new(),
            Some(m) => {
                let mut canonical = String::new();
                write_canonical(&m["fieldsV1"], &mut canonical);
                hex::encode(Sha256::digest(canonical.as_bytes()))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration found (no kubeconfig, not in a cluster)")]
    InferConfig(#[source] kube::config::InferConfigError),
    #[error("building the Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    #[error("Kubernetes API unreachable ({op})")]
    Unreachable {
        op: String,
        #[source]
        source: kube::Error,
    },
    #[error("Kubernetes API did not answer within {after:?} ({op})")]
    Timeout { op: String, after: Duration },
    #[error("the API server does not serve kind {kind} in {api_version}")]
    UnknownKind { api_version: String, kind: String },
    #[error("Kubernetes API refused: {code} {reason}: {message}")]
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    #[error("unexpected response from the Kubernetes API ({op})")]
    Decode {
        op: String,
        #[source]
        source: kube::Error,
    },
    #[error("encoding object {key}")]
    Encode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// The request could not be built or sent as HTTP (a name or namespace
    /// that makes no valid URL, a header the client refused): not the
    /// server's answer, and not the manifest's content as such.
    #[error("cannot make the request ({op})")]
    Request {
        op: String,
        #[source]
        source: kube::Error,
    },
}

impl KubeError {
    /// True when retrying the same call later may succeed (API down, slow,
    /// overloaded, racing writers); false for a bad manifest or config.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Timeout { .. } => true,
            // 403 "being terminated": the namespace is going away and the
            // next attempt recreates it; "is terminating": a CRD is being
            // deleted, after which its kind is unknown.
            Self::Api { code, message, .. } => {
                *code >= 500
                    || matches!(code, 408 | 409 | 429)
                    || (*code == 403
                        && (message.contains("being terminated")
                            || message.contains("is terminating")))
            }
            Self::Kubeconfig { .. }
            | Self::InferConfig(_)
            | Self::Client(_)
            | Self::InvalidManifest(_)
            | Self::UnknownKind { .. }
            | Self::Decode { .. }
            | Self::Encode { .. }
            | Self::Request { .. } => false,
        }
    }

    fn from_kube(op: &str, e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) => Self::Api {
                code: status.code,
                reason: status.reason,
                message: status.message,
            },
            kube::Error::SerdeError(_)
            | kube::Error::FromUtf8(_)
            | kube::Error::LinesCodecMaxLineLengthExceeded => Self::Decode {
                op: op.to_owned(),
                source: e,
            },
            kube::Error::BuildRequest(_) | kube::Error::HttpError(_) => Self::Request {
                op: op.to_owned(),
                source: e,
            },
            _ => Self::Unreachable {
                op: op.to_owned(),
                source: e,
            },
        }
    }
}

/// Where an apiVersion/kind lives in the API.
#[derive(Debug, Clone)]
struct Resolved {
    resource: ApiResource,
    namespaced: bool,
}

/// Client for the device's K3s API.
#[derive(Clone)]
pub struct KubeRuntime {
    client: Client,
    timeout: Duration,
    /// (apiVersion, kind) → resource; only positive answers are cached.
    kinds: Arc<RwLock<HashMap<(String, String), Resolved>>>,
}

impl fmt::Debug for KubeRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeRuntime")
            .field("timeout", &self.timeout)
            .field("cached_kinds", &self.kinds.read().map(|k| k.len()).ok())
            .finish_non_exhaustive()
    }
}

impl KubeRuntime {
    /// Builds a client from a kubeconfig file (None: in-cluster/default). Does
    /// not contact the server. `request_timeout` bounds every call below as a
    /// whole, whatever the API server does.
    pub async fn connect(
        kubeconfig: Option<&Path>,
        request_timeout: Duration,
    ) -> Result<Self, KubeError> {
        // kube's rustls stack needs a process-wide provider; ring is the one we
        // build with. Err only means one is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = match kubeconfig {
            Some(path) => {
                let err = |source| KubeError::Kubeconfig {
                    path: path.to_owned(),
                    source,
                };
                let kc = Kubeconfig::read_from(path).map_err(err)?;
                Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(err)?
            }
            None => Config::infer().await.map_err(KubeError::InferConfig)?,
        };
        config.connect_timeout = Some(request_timeout);
        config.read_timeout = Some(request_timeout);
        config.write_timeout = Some(request_timeout);
        // Count the read timeout from the request, not from when a pooled
        // connection went idle.
        config.reset_reader_on_write = true;
        // The reconciler retries with its own backoff; kube's retries would
        // hide an overloaded API behind our timeout.
        config.default_retry = false;
        let client = Client::try_from(config).map_err(KubeError::Client)?;
        Ok(Self {
            client,
            timeout: request_timeout,
            kinds: Arc::default(),
        })
    }

    /// "v1.31.4+k3s1"; also the reachability probe.
    pub async fn server_version(&self) -> Result<String, KubeError> {
        self.bounded("server version", async {
            let info = self
                .client
                .apiserver_version()
                .await
                .map_err(|e| KubeError::from_kube("server version", e))?;
            Ok(info.git_version)
        })
        .await
    }

    /// GET; Ok(None) when absent. Read-only.
    pub async fn get(&self, key: &ObjectKey) -> Result<Option<LiveObject>, KubeError> {
        self.bounded("get", self.get_inner(key)).await
    }

    /// Server-side apply (fieldManager=edgefleet-agent, force) of one manifest
    /// with our two labels added. Creates a missing namespace (unlabelled, so
    /// never pruned). A namespaced manifest without namespace goes to
    /// [`DEFAULT_NAMESPACE`].
    pub async fn apply(
        &self,
        workload_id: &str,
        manifest: &Value,
    ) -> Result<LiveObject, KubeError> {
        self.bounded("apply", self.apply_inner(workload_id, manifest))
            .await
    }

    /// Deletes the object only if the live object carries our `managed-by`
    /// label (never touches anything else). Ok(false) when absent or not ours.
    pub async fn delete_owned(&self, key: &ObjectKey) -> Result<bool, KubeError> {
        self.bounded("delete", self.delete_inner(key)).await
    }

    /// Restarts a Deployment, StatefulSet or DaemonSet we own: a new
    /// pod-template annotation ([`RESTARTED_AT`] = `at`), so its controller
    /// replaces the pods. Ok(false) when absent or not ours.
    pub async fn restart(&self, key: &ObjectKey, at: &str) -> Result<bool, KubeError> {
        self.bounded("restart", async {
            let Some((_, api)) = self.owned(key).await? else {
                return Ok(false);
            };
            let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: at}}}}});
            let params = PatchParams {
                field_manager: Some(RESTART_MANAGER.to_owned()),
                ..Default::default()
            };
            api.patch(&key.name, &params, &Patch::Merge(&patch))
                .await
                .map_err(|e| KubeError::from_kube(&format!("restart {key}"), e))?;
            Ok(true)
        })
        .await
    }

    /// The pods behind `keys` (a workload's objects): Pods themselves, and
    /// the pods each other object selects by its `spec.selector.matchLabels`
    /// (Deployments, StatefulSets, DaemonSets, Jobs, ReplicaSets). Each as
    /// (namespace, name, container names), by name, at most `max`.
    pub async fn workload_pods(
        &self,
        keys: &[ObjectKey],
        max: usize,
    ) -> Result<Vec<(String, String, Vec<String>)>, KubeError> {
        self.bounded("list pods", async {
            let mut out = std::collections::BTreeMap::new();
            for key in keys {
                let Some(live) = self.get_inner(key).await? else {
                    continue;
                };
                let ns = live
                    .key
                    .namespace
                    .clone()
                    .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                let found = if key.api_version == "v1" && key.kind == "Pod" {
                    pods.get_opt(&key.name)
                        .await
                        .map_err(|e| {
                            KubeError::from_kube(&format!("get pod {ns}/{}", key.name), e)
                        })?
                        .into_iter()
                        .collect()
                } else {
                    let Some(labels) = live.raw["spec"]["selector"]["matchLabels"]
                        .as_object()
                        .filter(|l| !l.is_empty())
                    else {
                        continue;
                    };
                    let selector: Vec<String> = labels
                        .iter()
                        .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
                        .collect();
                    pods.list(&ListParams::default().labels(&selector.join(",")))
                        .await
                        .map_err(|e| KubeError::from_kube(&format!("list pods of {key}"), e))?
                        .items
                };
                for pod in found {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    let containers = pod
                        .spec
                        .map(|s| s.containers.into_iter().map(|c| c.name).collect())
                        .unwrap_or_default();
                    out.insert((ns.clone(), name), containers);
                }
            }
            Ok(out
                .into_iter()
                .take(max)
                .map(|((ns, name), c)| (ns, name, c))
                .collect())
        })
        .await
    }

    /// One container's log: the last `tail` lines, since `since_secs` ago,
    /// at most `limit` bytes.
    pub async fn pod_log(
        &self,
        (ns, pod, container): (&str, &str, &str),
        tail: Option<u32>,
        since_secs: Option<u64>,
        limit: u32,
    ) -> Result<String, KubeError> {
        self.bounded("pod log", async {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            let params = LogParams {
                container: Some(container.to_owned()),
                tail_lines: tail.map(i64::from),
                since_seconds: since_secs.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
                limit_bytes: Some(i64::from(limit)),
                ..Default::default()
            };
            pods.logs(pod, &params)
                .await
                .map_err(|e| KubeError::from_kube(&format!("logs of {ns}/{pod} {container}"), e))
        })
        .await
    }

    /// Objects of the given (apiVersion, kind) pairs labelled as ours, in all
    /// namespaces. Kinds the server does not serve have no objects.
    pub async fn list_owned(
        &self,
        kinds: &[(String, String)],
    ) -> Result<Vec<LiveObject>, KubeError> {
        self.bounded("list", async {
            let mut out = Vec::new();
            for (api_version, kind) in kinds {
                let resolved = match self.resolve(api_version, kind).await {
                    Ok(r) => r,
                    Err(KubeError::UnknownKind { .. }) => continue,
                    Err(e) => return Err(e),
                };
                let api: Api<DynamicObject> =
                    Api::all_with(self.client.clone(), &resolved.resource);
                let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}");
                let list = api
                    .list(&ListParams::default().labels(&selector))
                    .await
                    .map_err(|e| KubeError::from_kube("list", e))?;
                for obj in list.items {
                    out.push(live_object(obj, &resolved.resource)?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn bounded<T>(
        &self,
        op: &str,
        fut: impl Future<Output = Result<T, KubeError>>,
    ) -> Result<T, KubeError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| KubeError::Timeout {
                op: op.to_owned(),
                after: self.timeout,
            })?
    }

    async fn get_inner(&self, key: &ObjectKey) -> Result<Option<LiveObject>, KubeError> {
        let resolved = self.resolve(&key.api_version, &key.kind).await?;
        let api = self.api(&resolved, key.namespace.as_deref());
        let op = format!("get {key}");
        match api.get_opt(&key.name).await {
            Ok(Some(obj)) => Ok(Some(live_object(obj, &resolved.resource)?)),
            Ok(None) => Ok(None),
            Err(e) => Err(KubeError::from_kube(&op, e)),
        }
    }

    async fn apply_inner(
        &self,
        workload_id: &str,
        manifest: &Value,
    ) -> Result<LiveObject, KubeError> {
        let mut body = prepare(workload_id, manifest)?;
        let key = ObjectKey::from_manifest(&body).ok_or_else(|| {
            KubeError::InvalidManifest("apiVersion, kind and metadata.name are required".into())
        })?;
        let resolved = self.resolve(&key.api_version, &key.kind).await?;
        let namespace = if resolved.namespaced {
            let ns = key
                .namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
            set_namespace(&mut body, Some(&ns));
            Some(ns)
        } else {
            // The server ignores it; dropping it keeps the field out of our
            // managed fields.
            set_namespace(&mut body, None);
            None
        };
        let api = self.api(&resolved, namespace.as_deref());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let op = format!("apply {key}");
        let applied = match api.patch(&key.name, &params, &Patch::Apply(&body)).await {
            Err(kube::Error::Api(status))
                if status.code == 404
                    && namespace.is_some()
                    && status.details.as_ref().is_some_and(|d| {
                        d.kind == "namespaces" && Some(d.name.as_str()) == namespace.as_deref()
                    }) =>
            {
                let ns = namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
                self.create_namespace(ns).await?;
                api.patch(&key.name, &params, &Patch::Apply(&body)).await
            }
            other => other,
        };
        match applied {
            Ok(obj) => {
                let live = live_object(obj, &resolved.resource)?;
                if is_crd(&key) {
                    self.wait_established(&live).await?;
                }
                Ok(live)
            }
            Err(e) => {
                if let kube::Error::Api(status) = &e
                    && status.code == 404
                {
                    // A 404 that is not about the namespace: the resource went
                    // away (its CRD deleted). Ask discovery again: the kind
                    // is unknown now, or served elsewhere.
                    self.forget(&key.api_version, &key.kind);
                    self.resolve(&key.api_version, &key.kind).await?;
                }
                Err(KubeError::from_kube(&op, e))
            }
        }
    }

    /// After a CRD is applied, waits (within the call's bound) until the
    /// server serves its kind, so a custom resource applied next resolves:
    /// between the CRD's creation and its `Established` condition, discovery
    /// does not know the kind yet.
    async fn wait_established(&self, crd: &LiveObject) -> Result<(), KubeError> {
        let spec = &crd.raw["spec"];
        let (Some(group), Some(kind)) = (
            spec["group"].as_str(),
            spec.pointer("/names/kind").and_then(Value::as_str),
        ) else {
            return Ok(());
        };
        let versions: Vec<String> = spec["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["served"].as_bool().unwrap_or(true))
            .filter_map(|v| v["name"].as_str().map(|n| format!("{group}/{n}")))
            .collect();
        for api_version in versions {
            let mut delay = std::time::Duration::from_millis(50);
            loop {
                self.forget(&api_version, kind);
                match self.resolve(&api_version, kind).await {
                    Ok(_) => break,
                    Err(KubeError::UnknownKind { .. }) => {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(std::time::Duration::from_millis(500));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    async fn create_namespace(&self, name: &str) -> Result<(), KubeError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        match api.create(&params, &ns).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(()),
            Err(e) => Err(KubeError::from_kube(&format!("create namespace {name}"), e)),
        }
    }

    /// The live object if it carries our `managed-by` label, with the API
    /// to change it; `None` when absent or not ours (never touched).
    async fn owned(
        &self,
        key: &ObjectKey,
    ) -> Result<Option<(LiveObject, Api<DynamicObject>)>, KubeError> {
        let Some(live) = self.get_inner(key).await? else {
            return Ok(None);
        };
        if !live.is_owned() {
            return Ok(None);
        }
        let resolved = self.resolve(&key.api_version, &key.kind).await?;
        let api = self.api(&resolved, live.key.namespace.as_deref());
        Ok(Some((live, api)))
    }

    async fn delete_inner(&self, key: &ObjectKey) -> Result<bool, KubeError> {
        let Some((live, api)) = self.owned(key).await? else {
            return Ok(false);
        };
        let params = DeleteParams {
            // Background: the Job API's default is to orphan the Job's pods.
            propagation_policy: Some(PropagationPolicy::Background),
            // Never delete an object that replaced the one we checked.
            preconditions: Some(Preconditions {
                uid: Some(live.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&key.name, &params).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(false),
            Err(e) => Err(KubeError::from_kube(&format!("delete {key}"), e)),
        }
    }

    fn api(&self, resolved: &Resolved, namespace: Option<&str>) -> Api<DynamicObject> {
        if resolved.namespaced {
            Api::namespaced_with(
                self.client.clone(),
                namespace.unwrap_or(DEFAULT_NAMESPACE),
                &resolved.resource,
            )
        } else {
            Api::all_with(self.client.clone(), &resolved.resource)
        }
    }

    async fn resolve(&self, api_version: &str, kind: &str) -> Result<Resolved, KubeError> {
        let cache_key = (api_version.to_owned(), kind.to_owned());
        if let Some(hit) = self
            .kinds
            .read()
            .ok()
            .and_then(|k| k.get(&cache_key).cloned())
        {
            return Ok(hit);
        }
        let unknown = || KubeError::UnknownKind {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        };
        let gv = GroupVersion::from_str(api_version).map_err(|_| {
            KubeError::InvalidManifest(format!("apiVersion {api_version:?} is not group/version"))
        })?;
        let gvk = gv.with_kind(kind);
        let (resource, caps) = match kube::discovery::pinned_kind(&self.client, &gvk).await {
            Ok(found) => found,
            Err(kube::Error::Discovery(_)) => return Err(unknown()),
            Err(kube::Error::Api(status)) if status.code == 404 => return Err(unknown()),
            Err(e) => return Err(KubeError::from_kube("discovery", e)),
        };
        let resolved = Resolved {
            resource,
            namespaced: caps.scope == Scope::Namespaced,
        };
        if let Ok(mut kinds) = self.kinds.write() {
            kinds.insert(cache_key, resolved.clone());
        }
        Ok(resolved)
    }

    fn forget(&self, api_version: &str, kind: &str) {
        if let Ok(mut kinds) = self.kinds.write() {
            kinds.remove(&(api_version.to_owned(), kind.to_owned()));
        }
    }
}

/// Whether `key` names a CustomResourceDefinition.
pub fn is_crd(key: &ObjectKey) -> bool {
    key.kind == "CustomResourceDefinition" && key.group() == "apiextensions.k8s.io"
}

fn live_object(obj: DynamicObject, resource: &ApiResource) -> Result<LiveObject, KubeError> {
    // List items come without apiVersion/kind.
    let (api_version, kind) = match &obj.types {
        Some(t) if !t.api_version.is_empty() && !t.kind.is_empty() => {
            (t.api_version.clone(), t.kind.clone())
        }
        _ => (resource.api_version.clone(), resource.kind.clone()),
    };
    let meta = &obj.metadata;
    let key = ObjectKey {
        api_version: api_version.clone(),
        kind: kind.clone(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
    };
    let mut raw = serde_json::to_value(&obj).map_err(|source| KubeError::Encode {
        key: key.to_string(),
        source,
    })?;
    if let Some(map) = raw.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(api_version));
        map.insert("kind".into(), Value::String(kind));
    }
    Ok(LiveObject {
        uid: meta.uid.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone().unwrap_or_default(),
        generation: meta.generation,
        labels: meta.labels.clone().unwrap_or_default(),
        key,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_from_manifest_and_display() {
        let m = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": "web", "namespace": "demo"}});
        let k = ObjectKey::from_manifest(&m).expect("key");
        assert_eq!(k.to_string(), "apps/v1 Deployment demo/web");
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}});
        let k = ObjectKey::from_manifest(&ns).expect("key");
        assert_eq!(k.namespace, None);
        assert_eq!(k.to_string(), "v1 Namespace demo");
        assert!(ObjectKey::from_manifest(&json!({"kind": "Pod"})).is_none());
        assert!(
            ObjectKey::from_manifest(&json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": ""}}))
            .is_none()
        );
    }

    #[test]
    fn transient_errors() {
        let api = |code| KubeError::Api {
            code,
            reason: String::new(),
            message: String::new(),
        };
        assert!(api(503).is_transient());
        assert!(api(429).is_transient());
        assert!(!api(422).is_transient());
        assert!(!api(403).is_transient());
        assert!(
            KubeError::Timeout {
                op: "x".into(),
                after: Duration::from_secs(1)
            }
            .is_transient()
        );
        assert!(
            !KubeError::UnknownKind {
                api_version: "a/v1".into(),
                kind: "K".into()
            }
            .is_transient()
        );
    }
}
