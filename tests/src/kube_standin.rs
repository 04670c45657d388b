//! An in-process stand-in for the Kubernetes API subset the agent uses;
//! never shipped. Every suite now runs against a real control plane
//! ([`crate::control_plane`], faults through [`crate::proxy`]); this stays
//! only as the baseline `bench-agent` measures the offline cold start
//! against, side by side with the real API server, and should go once that
//! comparison is no longer wanted.
//!
//! What it serves, with the real server's semantics and error bodies:
//! - discovery as kube-rs performs it: `/version`, `/api`, `/api/v1`, `/apis`,
//!   `/apis/{group}`, `/apis/{group}/{version}`, and aggregated discovery
//!   (`Accept: …as=APIGroupDiscoveryList`) on `/api` and `/apis`;
//! - core/v1 namespaces, configmaps, secrets, services, serviceaccounts, pods;
//!   apps/v1 deployments, statefulsets, daemonsets; batch/v1 jobs; any other
//!   path answers `404 page not found` as the real server does;
//! - server-side apply (`PATCH`, `application/apply-patch+yaml`, fieldManager,
//!   force) with per-manager field ownership: create or merge, fields the
//!   manager applied before and no longer applies are removed unless another
//!   manager owns them, conflicts (409) without force, `managedFields`
//!   recorded, `resourceVersion` bumped only on a real change, `generation`
//!   only on a change outside metadata and status;
//! - GET, LIST with label selectors (equality and set-based), POST create,
//!   DELETE (with uid/resourceVersion preconditions; deleting a namespace
//!   deletes its objects at once).
//!
//! Fault injection: [`KubeStandIn::set_latency`] (slow or hung API),
//! [`KubeStandIn::set_unavailable`] (503s), [`KubeStandIn::set_refusing`]
//! (nothing listening: connections refused).
//!
//! Known simplifications: no defaulting (a Deployment without `replicas`
//! stays without it), no admission, no watch, no subresources (status is set
//! by the test through [`KubeStandIn::set_status`]), `stringData` is not
//! folded into `data`, and list items whose elements all carry a `name` are
//! merged by name while every other list is atomic (the real server knows
//! each list's merge keys from the OpenAPI schema).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use edgefleet_protocol::name::{check_dns_label, check_label_key, check_label_value};
use serde_json::{Map, Value, json};

/// What the stand-in reports as its version (a K3s on a Raspberry Pi).
pub const SERVER_VERSION: &str = "v1.31.4+k3s1";
/// The bearer token the generated kubeconfig carries; other requests get 401.
pub const TOKEN: &str = "edgefleet-standin-token";
/// Namespaces a fresh K3s has.
const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// One served kind.
#[derive(Debug)]
struct Kind {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    /// Has a status subresource: `status` in an apply is ignored.
    status: bool,
    /// Tracks `metadata.generation`.
    generation: bool,
    short_names: &'static [&'static str],
}

impl Kind {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// "deployments.apps", as the real server names resources in messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// `kind!(group, version, Kind, plural, singular, namespaced, status, generation, [short names])`
macro_rules! kind {
    ($g:literal, $v:literal, $k:literal, $p:literal, $s:literal, $ns:literal, $st:literal, $gen:literal, $short:expr) => {
        Kind {
            group: $g,
            version: $v,
            kind: $k,
            plural: $p,
            singular: $s,
            namespaced: $ns,
            status: $st,
            generation: $gen,
            short_names: $short,
        }
    };
}

static KINDS: &[Kind] = &[
    kind!(
        "",
        "v1",
        "Namespace",
        "namespaces",
        "namespace",
        false,
        true,
        false,
        &["ns"]
    ),
    kind!(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        false,
        false,
        &["cm"]
    ),
    kind!(
        "",
        "v1",
        "Secret",
        "secrets",
        "secret",
        true,
        false,
        false,
        &[]
    ),
    kind!(
        "",
        "v1",
        "Service",
        "services",
        "service",
        true,
        true,
        false,
        &["svc"]
    ),
    kind!(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        false,
        false,
        &["sa"]
    ),
    kind!("", "v1", "Pod", "pods", "pod", true, true, false, &["po"]),
    kind!(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        true,
        true,
        true,
        &["deploy"]
    ),
    kind!(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        true,
        true,
        true,
        &["sts"]
    ),
    kind!(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        true,
        true,
        true,
        &["ds"]
    ),
    kind!("batch", "v1", "Job", "jobs", "job", true, true, true, &[]),
];

const VERBS: &[&str] = &["create", "delete", "get", "list", "patch"];

fn kind_by_plural(group: &str, version: &str, plural: &str) -> Option<&'static Kind> {
    KINDS
        .iter()
        .find(|k| k.group == group && k.version == version && k.plural == plural)
}

fn kind_by_name(api_version: &str, kind: &str) -> Option<&'static Kind> {
    KINDS
        .iter()
        .find(|k| k.api_version() == api_version && k.kind == kind)
}

fn groups() -> Vec<&'static str> {
    let mut gs: Vec<&str> = KINDS
        .iter()
        .map(|k| k.group)
        .filter(|g| !g.is_empty())
        .collect();
    gs.dedup();
    gs
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The `fieldManager` query parameter, if any.
    pub field_manager: Option<String>,
    pub content_type: Option<String>,
}

impl RequestRecord {
    /// POST, PUT, PATCH or DELETE.
    pub fn is_mutating(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
}

/// Where an object lives: (group, plural, namespace or "", name).
type StoreKey = (String, String, String, String);

/// One step into an object: a map field, or the item of a list merged by
/// name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Field(String),
    Item(String),
}

type FieldPath = Vec<Step>;
type FieldSet = BTreeSet<FieldPath>;

#[derive(Debug, Clone)]
struct Manager {
    operation: &'static str,
    api_version: String,
    time: String,
    fields: FieldSet,
}

#[derive(Debug, Clone)]
struct Stored {
    kind: &'static Kind,
    /// The object without `managedFields` (rendered on the way out).
    obj: Value,
    /// Keyed by (manager, operation).
    managers: BTreeMap<(String, &'static str), Manager>,
}

impl Stored {
    fn render(&self) -> Value {
        let mut obj = self.obj.clone();
        let entries: Vec<Value> = self
            .managers
            .iter()
            .filter(|(_, m)| !m.fields.is_empty())
            .map(|((name, _), m)| {
                json!({
                    "manager": name,
                    "operation": m.operation,
                    "apiVersion": m.api_version,
                    "time": m.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields_v1(&m.fields),
                })
            })
            .collect();
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("managedFields".into(), Value::Array(entries));
        }
        obj
    }

    fn rendered_item(&self) -> Value {
        // Items of a typed list carry no apiVersion/kind.
        let mut obj = self.render();
        if let Some(map) = obj.as_object_mut() {
            map.remove("apiVersion");
            map.remove("kind");
        }
        obj
    }
}

#[derive(Debug, Default)]
struct Store {
    objects: BTreeMap<StoreKey, Stored>,
    last_rv: u64,
    last_uid: u64,
}

impl Store {
    fn next_rv(&mut self) -> String {
        self.last_rv += 1;
        self.last_rv.to_string()
    }

    fn next_uid(&mut self) -> String {
        self.last_uid += 1;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let a = (nanos as u64) ^ (u64::from(std::process::id()) << 32);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            (a as u16) & 0xfff,
            (self.last_uid as u16) & 0xfff,
            self.last_uid & 0xffff_ffff_ffff
        )
    }

    fn reset(&mut self) {
        self.objects.clear();
        for ns in INITIAL_NAMESPACES {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
                             "spec": {"finalizers": ["kubernetes"]}});
            self.create_stored(&KINDS[0], obj, "k3s", "Update");
        }
    }

    /// Stores a new object, filling in what the server owns.
    fn create_stored(
        &mut self,
        kind: &'static Kind,
        mut obj: Value,
        manager: &str,
        operation: &'static str,
    ) -> Stored {
        let fields = field_set(&config_part(kind, &obj));
        let uid = self.next_uid();
        let rv = self.next_rv();
        let now = now_rfc3339();
        if let Some(map) = obj.as_object_mut() {
            map.insert("apiVersion".into(), Value::String(kind.api_version()));
            map.insert("kind".into(), Value::String(kind.kind.to_owned()));
            if kind.kind == "Namespace" {
                map.insert("status".into(), json!({"phase": "Active"}));
            }
            let meta = map
                .entry("metadata")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert("uid".into(), Value::String(uid));
                meta.insert("resourceVersion".into(), Value::String(rv));
                meta.insert("creationTimestamp".into(), Value::String(now.clone()));
                if kind.generation {
                    meta.insert("generation".into(), json!(1));
                }
                meta.remove("managedFields");
            }
        }
        let mut managers = BTreeMap::new();
        if !fields.is_empty() {
            managers.insert(
                (manager.to_owned(), operation),
                Manager {
                    operation,
                    api_version: kind.api_version(),
                    time: now,
                    fields,
                },
            );
        }
        let stored = Stored {
            kind,
            obj,
            managers,
        };
        self.objects
            .insert(store_key(kind, &stored.obj), stored.clone());
        stored
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.objects.contains_key(&(
            String::new(),
            "namespaces".to_owned(),
            String::new(),
            ns.to_owned(),
        ))
    }
}

fn store_key(kind: &Kind, obj: &Value) -> StoreKey {
    let meta = obj.get("metadata");
    let text = |f: &str| {
        meta.and_then(|m| m.get(f))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (
        kind.group.to_owned(),
        kind.plural.to_owned(),
        if kind.namespaced {
            text("namespace")
        } else {
            String::new()
        },
        text("name"),
    )
}

#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    log: Mutex<Vec<RequestRecord>>,
    mutating: AtomicU64,
    latency_ms: AtomicU64,
    down: AtomicBool,
    address: String,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        // A panicking test thread must not take every later test with it.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A Kubernetes API server stand-in on 127.0.0.1:0, plain HTTP, with a
/// generated kubeconfig. Stops when dropped.
#[derive(Debug)]
pub struct KubeStandIn {
    shared: Arc<Shared>,
    url: String,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
    /// Serving generations after [`KubeStandIn::set_refusing`]: the stop
    /// signal of the current one, and every task to abort on drop.
    serving: Mutex<Serving>,
}

#[derive(Debug, Default)]
struct Serving {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for KubeStandIn {
    fn drop(&mut self) {
        self.task.abort();
        let serving = self.serving.get_mut().unwrap_or_else(|e| e.into_inner());
        for t in &serving.tasks {
            t.abort();
        }
    }
}

/// Serves `shared` on `listener` until `stop` fires (then closes the
/// listener and every idle connection: the API goes away).
fn serve(
    shared: &Arc<Shared>,
    listener: tokio::net::TcpListener,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    let app = Router::new()
        .fallback(handle)
        .with_state(Arc::clone(shared));
    tokio::spawn(async move {
        let signal = async move {
            let _ = stop.await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await
        {
            eprintln!("kube stand-in stopped: {e}");
        }
    })
}

impl KubeStandIn {
    /// Starts serving a freshly installed K3s: the four initial namespaces.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the Kubernetes stand-in");
        let addr = listener.local_addr().expect("stand-in local address");
        let url = format!("http://{addr}");
        let mut store = Store::default();
        store.reset();
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            log: Mutex::default(),
            mutating: AtomicU64::new(0),
            latency_ms: AtomicU64::new(0),
            down: AtomicBool::new(false),
            address: addr.to_string(),
        });
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let task = serve(&shared, listener, stop_rx);
        let dir = tempfile::tempdir().expect("temp dir for the stand-in kubeconfig");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&url)).expect("write stand-in kubeconfig");
        Self {
            shared,
            url,
            kubeconfig,
            _dir: dir,
            task,
            serving: Mutex::new(Serving {
                stop: Some(stop),
                tasks: Vec::new(),
            }),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// A kubeconfig pointing at this stand-in (with its bearer token).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Every stored object, as a GET would return it, in key order.
    pub fn objects(&self) -> Vec<Value> {
        self.shared
            .store()
            .objects
            .values()
            .map(Stored::render)
            .collect()
    }

    /// One object as a GET would return it.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let key = lookup_key(api_version, kind, namespace, name);
        self.shared.store().objects.get(&key).map(Stored::render)
    }

    /// Stores an object created by someone else (manager
    /// `kubectl-client-side-apply`), as-is apart from server-owned metadata.
    /// Panics on a kind the stand-in does not serve.
    pub fn insert(&self, obj: Value) {
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind_name = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        let kind = kind_by_name(api_version, kind_name)
            .unwrap_or_else(|| panic!("stand-in does not serve {api_version} {kind_name}"));
        self.shared
            .store()
            .create_stored(kind, obj, "kubectl-client-side-apply", "Update");
    }

    /// Replaces an object's status, as its controller would; bumps
    /// resourceVersion but not generation. Panics if the object is absent.
    pub fn set_status(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        status: Value,
    ) {
        let key = lookup_key(api_version, kind, namespace, name);
        let mut store = self.shared.store();
        let rv = store.next_rv();
        let stored = store
            .objects
            .get_mut(&key)
            .unwrap_or_else(|| panic!("set_status: no {api_version} {kind} {namespace:?}/{name}"));
        if let Some(map) = stored.obj.as_object_mut() {
            map.insert("status".into(), status);
        }
        set_meta(&mut stored.obj, "resourceVersion", Value::String(rv));
    }

    /// POST/PUT/PATCH/DELETE requests served (not those refused while down).
    pub fn mutating_requests(&self) -> u64 {
        self.shared.mutating.load(Ordering::SeqCst)
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Forgets the request log and the mutating counter.
    pub fn clear_requests(&self) {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.shared.mutating.store(0, Ordering::SeqCst);
    }

    /// Wipes everything: a freshly reset K3s (only the initial namespaces,
    /// with new uids).
    pub fn reset(&self) {
        self.shared.store().reset();
    }

    /// Delays every response by `d` (a slow or hung API).
    pub fn set_latency(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.shared.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// While down, every request gets 503 ServiceUnavailable.
    pub fn set_unavailable(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// While refusing, nothing listens on the stand-in's address (new
    /// connections are refused, idle ones are closed): an API server that is
    /// gone, not just failing. Serving again rebinds the same address, so
    /// the kubeconfig stays valid.
    pub async fn set_refusing(&self, refusing: bool) {
        if refusing {
            let stop = self
                .serving
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .stop
                .take();
            if let Some(stop) = stop {
                let _ = stop.send(());
            }
            // Refused from now on, not once the old listener happens to close.
            let addr = self.shared.address.clone();
            crate::eventually("stand-in listener closed", Duration::from_secs(10), || {
                let addr = addr.clone();
                async move {
                    tokio::net::TcpStream::connect(&addr)
                        .await
                        .is_err()
                        .then_some(())
                }
            })
            .await;
            return;
        }
        if self
            .serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop
            .is_some()
        {
            return;
        }
        let listener = tokio::net::TcpListener::bind(&self.shared.address)
            .await
            .unwrap_or_else(|e| panic!("rebind the stand-in on {}: {e}", self.shared.address));
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let task = serve(&self.shared, listener, stop_rx);
        let mut serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        serving.stop = Some(stop);
        serving.tasks.push(task);
    }
}

fn lookup_key(api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> StoreKey {
    let k = kind_by_name(api_version, kind)
        .unwrap_or_else(|| panic!("stand-in does not serve {api_version} {kind}"));
    (
        k.group.to_owned(),
        k.plural.to_owned(),
        if k.namespaced {
            namespace.unwrap_or("default").to_owned()
        } else {
            String::new()
        },
        name.to_owned(),
    )
}

fn kubeconfig_yaml(url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: standin
  cluster:
    server: {url}
contexts:
- name: standin
  context:
    cluster: standin
    user: standin
    namespace: default
current-context: standin
users:
- name: standin
  user:
    token: {TOKEN}
"
    )
}

// ---------------------------------------------------------------- HTTP

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: BTreeMap<String, String> = uri
        .query()
        .map(|q| {
            form_urlencoded(q)
                .into_iter()
                .collect::<BTreeMap<String, String>>()
        })
        .unwrap_or_default();
    let header_text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let record = RequestRecord {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        field_manager: query.get("fieldManager").cloned(),
        content_type: header_text(header::CONTENT_TYPE),
    };
    let mutating = record.is_mutating();
    shared
        .log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(record);

    let latency = shared.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if shared.down.load(Ordering::SeqCst) {
        return status_error(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request".into(),
            None,
        );
    }
    if header_text(header::AUTHORIZATION).as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return status_error(401, "Unauthorized", "Unauthorized".into(), None);
    }
    if mutating {
        shared.mutating.fetch_add(1, Ordering::SeqCst);
    }
    let req = Request {
        method,
        path: uri.path().to_owned(),
        query,
        accept: header_text(header::ACCEPT).unwrap_or_default(),
        content_type: header_text(header::CONTENT_TYPE).unwrap_or_default(),
        user_agent: header_text(header::USER_AGENT).unwrap_or_default(),
        body,
    };
    route(&shared, &req)
}

#[derive(Debug)]
struct Request {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    accept: String,
    content_type: String,
    user_agent: String,
    body: Bytes,
}

fn form_urlencoded(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(code: u16, body: &Value) -> Response {
    json_typed(code, body, "application/json")
}

fn json_typed(code: u16, body: &Value, content_type: &'static str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A `kind: Status` failure body, as the real server sends.
fn status_error(code: u16, reason: &str, message: String, details: Option<Value>) -> Response {
    let mut body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    if let Some(d) = details {
        body["details"] = d;
    }
    json_response(code, &body)
}

fn not_found(kind: &Kind, name: &str) -> Response {
    status_error(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", kind.qualified()),
        Some(json!({"name": name, "group": kind.group, "kind": kind.plural})),
    )
}

fn namespace_not_found(ns: &str) -> Response {
    status_error(
        404,
        "NotFound",
        format!("namespaces \"{ns}\" not found"),
        Some(json!({"name": ns, "kind": "namespaces"})),
    )
}

fn bad_request(message: String) -> Response {
    status_error(400, "BadRequest", message, None)
}

/// What the real server answers for a path no handler serves.
fn page_not_found() -> Response {
    let mut resp = (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn method_not_allowed(method: &Method) -> Response {
    status_error(
        405,
        "MethodNotAllowed",
        format!("the server does not allow this method on the requested resource ({method})"),
        None,
    )
}

fn route(shared: &Shared, req: &Request) -> Response {
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let get = req.method == Method::GET;
    match segs.as_slice() {
        ["version"] if get => json_response(200, &version_info()),
        ["livez" | "readyz" | "healthz"] if get => (StatusCode::OK, "ok").into_response(),
        ["api"] if get => {
            if wants_aggregated(&req.accept) {
                aggregated(&[""])
            } else {
                json_response(
                    200,
                    &json!({"kind": "APIVersions", "versions": ["v1"],
                        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                        "serverAddress": shared.address}]}),
                )
            }
        }
        ["api", "v1"] if get => resource_list("", "v1"),
        ["apis"] if get => {
            if wants_aggregated(&req.accept) {
                aggregated(&groups())
            } else {
                let gs: Vec<Value> = groups().into_iter().map(api_group).collect();
                json_response(
                    200,
                    &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": gs}),
                )
            }
        }
        ["apis", g] if get && groups().contains(g) => json_response(200, &api_group(g)),
        ["apis", g, v] if get && KINDS.iter().any(|k| k.group == *g && k.version == *v) => {
            resource_list(g, v)
        }
        ["api", "v1", rest @ ..] => resource(shared, req, "", "v1", rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => resource(shared, req, g, v, rest),
        _ => page_not_found(),
    }
}

fn version_info() -> Value {
    json!({
        "major": "1", "minor": "31", "gitVersion": SERVER_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2024-12-13T00:00:00Z", "goVersion": "go1.22.9", "compiler": "gc",
        "platform": "linux/arm64",
    })
}

fn wants_aggregated(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=APIGroupDiscoveryList"))
}

fn api_group(group: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/v1"), "version": "v1"});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": group,
           "versions": [gv.clone()], "preferredVersion": gv})
}

fn resource_list(group: &str, version: &str) -> Response {
    let resources: Vec<Value> = KINDS
        .iter()
        .filter(|k| k.group == group && k.version == version)
        .map(|k| {
            json!({"name": k.plural, "singularName": k.singular, "namespaced": k.namespaced,
                   "kind": k.kind, "verbs": VERBS, "shortNames": k.short_names})
        })
        .collect();
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json_response(
        200,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                "resources": resources}),
    )
}

/// Aggregated discovery (apidiscovery.k8s.io/v2) of the given groups.
fn aggregated(groups: &[&str]) -> Response {
    let items: Vec<Value> = groups
        .iter()
        .map(|g| {
            let resources: Vec<Value> = KINDS
                .iter()
                .filter(|k| k.group == *g)
                .map(|k| {
                    json!({"resource": k.plural,
                           "responseKind": {"group": k.group, "version": k.version, "kind": k.kind},
                           "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
                           "singularResource": k.singular, "verbs": VERBS,
                           "shortNames": k.short_names})
                })
                .collect();
            json!({"metadata": {"name": g},
                   "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}]})
        })
        .collect();
    json_typed(
        200,
        &json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
                "metadata": {}, "items": items}),
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
    )
}

/// `/api/v1/...` or `/apis/{g}/{v}/...` below the group-version.
fn resource(shared: &Shared, req: &Request, group: &str, version: &str, rest: &[&str]) -> Response {
    let by_plural = |p: &str| kind_by_plural(group, version, p);
    let (kind, namespace, name) = match rest {
        [plural] => match by_plural(plural) {
            Some(k) => (k, None, None),
            None => return page_not_found(),
        },
        ["namespaces", ns, plural] if by_plural(plural).is_some_and(|k| k.namespaced) => {
            (by_plural(plural).unwrap_or(&KINDS[0]), Some(*ns), None)
        }
        ["namespaces", ns, plural, name] if by_plural(plural).is_some_and(|k| k.namespaced) => (
            by_plural(plural).unwrap_or(&KINDS[0]),
            Some(*ns),
            Some(*name),
        ),
        [plural, name] if by_plural(plural).is_some_and(|k| !k.namespaced) => {
            (by_plural(plural).unwrap_or(&KINDS[0]), None, Some(*name))
        }
        _ => {
            // Subresources and unknown resources.
            return status_error(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
                None,
            );
        }
    };
    match (name, &req.method) {
        (None, &Method::GET) => {
            if req
                .query
                .get("watch")
                .is_some_and(|w| w == "true" || w == "1")
            {
                return bad_request("watch is not supported by the stand-in".into());
            }
            list(shared, kind, namespace, req)
        }
        (None, &Method::POST) => match namespace {
            Some(ns) => create(shared, kind, Some(ns), req),
            None if !kind.namespaced => create(shared, kind, None, req),
            None => method_not_allowed(&req.method),
        },
        (Some(name), &Method::GET) => {
            let key = object_key(kind, namespace, name);
            match shared.store().objects.get(&key) {
                Some(s) => json_response(200, &s.render()),
                None => not_found(kind, name),
            }
        }
        (Some(name), &Method::PATCH) => patch(shared, kind, namespace, name, req),
        (Some(name), &Method::DELETE) => delete(shared, kind, namespace, name, req),
        _ => method_not_allowed(&req.method),
    }
}

fn object_key(kind: &Kind, namespace: Option<&str>, name: &str) -> StoreKey {
    (
        kind.group.to_owned(),
        kind.plural.to_owned(),
        namespace.unwrap_or("").to_owned(),
        name.to_owned(),
    )
}

fn list(shared: &Shared, kind: &Kind, namespace: Option<&str>, req: &Request) -> Response {
    let selector = match req.query.get("labelSelector") {
        Some(s) => match Selector::parse(s) {
            Ok(sel) => sel,
            Err(e) => return bad_request(format!("unable to parse requirement: {e}")),
        },
        None => Selector::default(),
    };
    let store = shared.store();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((g, p, ns, _), _)| {
            g == kind.group && p == kind.plural && namespace.is_none_or(|want| want == ns)
        })
        .filter(|(_, s)| selector.matches(&labels_of(&s.obj)))
        .map(|(_, s)| s.rendered_item())
        .collect();
    json_response(
        200,
        &json!({"kind": format!("{}List", kind.kind), "apiVersion": kind.api_version(),
                "metadata": {"resourceVersion": store.last_rv.to_string()}, "items": items}),
    )
}

fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn parse_body(req: &Request) -> Result<Value, Box<Response>> {
    let parsed: Result<Value, String> = if req.content_type.contains("yaml") {
        serde_yaml::from_slice(&req.body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice(&req.body).map_err(|e| e.to_string())
    };
    match parsed {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(Box::new(bad_request(
            "the body of the request must be an object".into(),
        ))),
        Err(e) => Err(Box::new(bad_request(format!(
            "error decoding request body: {e}"
        )))),
    }
}

/// Checks the body names the URL's kind, name and namespace, and that its
/// name and labels are valid. Fills in the namespace from the URL.
fn check_identity(
    kind: &Kind,
    namespace: Option<&str>,
    url_name: Option<&str>,
    body: &mut Value,
) -> Result<String, Box<Response>> {
    let api_version = body.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let body_kind = body.get("kind").and_then(Value::as_str).unwrap_or("");
    if api_version.is_empty() || body_kind.is_empty() {
        return Err(Box::new(bad_request(
            "Object 'Kind' is missing in the request body".into(),
        )));
    }
    if api_version != kind.api_version() || body_kind != kind.kind {
        return Err(Box::new(bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            kind.api_version()
        ))));
    }
    let name = body
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if let Some(url_name) = url_name
        && name != url_name
    {
        return Err(Box::new(bad_request(format!(
            "the name of the object ({name}) does not match the name on the URL ({url_name})"
        ))));
    }
    let body_ns = body
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if kind.namespaced {
        let ns = namespace.unwrap_or("default");
        if body_ns.as_deref().is_some_and(|b| b != ns) {
            return Err(Box::new(bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
                    .into(),
            )));
        }
        set_meta(body, "namespace", Value::String(ns.to_owned()));
    } else if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("namespace");
    }
    Ok(name)
}

/// The validation the real server runs after admission (so after the
/// namespace check): name and label syntax. 422 Invalid otherwise.
fn validate(kind: &Kind, name: &str, body: &Value) -> Result<(), Box<Response>> {
    let mut causes = Vec::new();
    let name_ok = if kind.kind == "Namespace" {
        check_dns_label(name, 63).is_ok()
    } else {
        is_dns_subdomain(name)
    };
    if !name_ok {
        causes.push(json!({"reason": "FieldValueInvalid", "field": "metadata.name",
            "message": format!("Invalid value: \"{name}\": a lowercase RFC 1123 name is required")}));
    }
    for (k, v) in labels_of(body) {
        if let Err(e) = check_label_key(&k) {
            causes.push(
                json!({"reason": "FieldValueInvalid", "field": "metadata.labels",
                               "message": format!("Invalid value: \"{k}\": {e}")}),
            );
        }
        if let Err(e) = check_label_value(&v) {
            causes.push(
                json!({"reason": "FieldValueInvalid", "field": "metadata.labels",
                               "message": format!("Invalid value: \"{v}\": {e}")}),
            );
        }
    }
    if !causes.is_empty() {
        let messages: Vec<String> = causes
            .iter()
            .map(|c| {
                format!(
                    "{}: {}",
                    c["field"].as_str().unwrap_or(""),
                    c["message"].as_str().unwrap_or("")
                )
            })
            .collect();
        return Err(Box::new(status_error(
            422,
            "Invalid",
            format!(
                "{} \"{name}\" is invalid: {}",
                kind.kind,
                messages.join(", ")
            ),
            Some(json!({"name": name, "group": kind.group, "kind": kind.kind, "causes": causes})),
        )));
    }
    Ok(())
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| check_dns_label(l, 63).is_ok())
}

fn set_meta(obj: &mut Value, field: &str, value: Value) {
    if let Some(map) = obj.as_object_mut() {
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(field.to_owned(), value);
        }
    }
}

/// The manager name a request acts as: `fieldManager`, else the user agent's
/// program name, as the real server derives it.
fn manager_of(req: &Request) -> String {
    req.query.get("fieldManager").cloned().unwrap_or_else(|| {
        req.user_agent
            .split('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_owned()
    })
}

fn create(
    shared: &Shared,
    kind: &'static Kind,
    namespace: Option<&str>,
    req: &Request,
) -> Response {
    let mut body = match parse_body(req) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    let name = match check_identity(kind, namespace, None, &mut body) {
        Ok(n) => n,
        Err(resp) => return *resp,
    };
    let mut store = shared.store();
    if let Some(ns) = namespace
        && !store.namespace_exists(ns)
    {
        return namespace_not_found(ns);
    }
    if let Err(resp) = validate(kind, &name, &body) {
        return *resp;
    }
    if store.objects.contains_key(&store_key(kind, &body)) {
        return status_error(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", kind.qualified()),
            Some(json!({"name": name, "group": kind.group, "kind": kind.plural})),
        );
    }
    strip_server_metadata(&mut body);
    let stored = store.create_stored(kind, body, &manager_of(req), "Update");
    json_response(201, &stored.render())
}

/// Metadata only the server sets; ignored in what clients send.
const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
];

fn strip_server_metadata(body: &mut Value) {
    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in SERVER_METADATA {
            meta.remove(*f);
        }
    }
}

fn patch(
    shared: &Shared,
    kind: &'static Kind,
    namespace: Option<&str>,
    name: &str,
    req: &Request,
) -> Response {
    if !req.content_type.starts_with("application/apply-patch+yaml") {
        return status_error(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/apply-patch+yaml (the stand-in serves server-side apply only), got {:?}",
                req.content_type
            ),
            None,
        );
    }
    let Some(manager) = req.query.get("fieldManager").filter(|m| !m.is_empty()) else {
        return bad_request(
            "PATCH /apply requires a non-empty fieldManager query parameter".into(),
        );
    };
    let force = req.query.get("force").is_some_and(|f| f == "true");
    let mut body = match parse_body(req) {
        Ok(b) => b,
        Err(resp) => return *resp,
    };
    if let Err(resp) = check_identity(kind, namespace, Some(name), &mut body) {
        return *resp;
    }
    let mut store = shared.store();
    if let Some(ns) = namespace
        && !store.namespace_exists(ns)
    {
        return namespace_not_found(ns);
    }
    if let Err(resp) = validate(kind, name, &body) {
        return *resp;
    }
    let key = object_key(kind, namespace, name);
    let config = config_part(kind, &body);
    let new_fields = field_set(&config);
    let Some(existing) = store.objects.get(&key).cloned() else {
        let mut obj = config.clone();
        set_meta(&mut obj, "name", Value::String(name.to_owned()));
        if let Some(ns) = namespace {
            set_meta(&mut obj, "namespace", Value::String(ns.to_owned()));
        }
        let stored = store.create_stored(kind, obj, manager, "Apply");
        return json_response(201, &stored.render());
    };
    match server_side_apply(&existing, manager, &config, new_fields, force) {
        Err(conflicts) => conflict_response(kind, &conflicts),
        Ok(None) => json_response(200, &existing.render()),
        Ok(Some(mut updated)) => {
            let rv = store.next_rv();
            set_meta(&mut updated.obj, "resourceVersion", Value::String(rv));
            if kind.generation && spec_part(&updated.obj) != spec_part(&existing.obj) {
                let generation = existing
                    .obj
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                set_meta(&mut updated.obj, "generation", json!(generation + 1));
            }
            let now = now_rfc3339();
            if let Some(m) = updated.managers.get_mut(&(manager.clone(), "Apply")) {
                m.time = now;
            }
            let rendered = updated.render();
            store.objects.insert(key, updated);
            json_response(200, &rendered)
        }
    }
}

/// A field another manager owns with a different value.
#[derive(Debug)]
struct Conflict {
    manager: String,
    api_version: String,
    path: FieldPath,
}

fn conflict_response(kind: &Kind, conflicts: &[Conflict]) -> Response {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({"reason": "FieldManagerConflict",
                   "message": format!("conflict with \"{}\" using {}", c.manager, c.api_version),
                   "field": path_text(&c.path)})
        })
        .collect();
    let lines: Vec<String> = conflicts
        .iter()
        .map(|c| {
            format!(
                "conflict with \"{}\" using {}: {}",
                c.manager,
                c.api_version,
                path_text(&c.path)
            )
        })
        .collect();
    let noun = if conflicts.len() == 1 {
        "conflict"
    } else {
        "conflicts"
    };
    status_error(
        409,
        "Conflict",
        format!(
            "Apply failed with {} {noun}: {}",
            conflicts.len(),
            lines.join("\n")
        ),
        Some(json!({"kind": kind.plural, "group": kind.group, "causes": causes})),
    )
}

/// Applies `config` as `manager` onto `existing`. Ok(None) when nothing would
/// change (no write at all), Err with the conflicts when not forced.
fn server_side_apply(
    existing: &Stored,
    manager: &str,
    config: &Value,
    new_fields: FieldSet,
    force: bool,
) -> Result<Option<Stored>, Vec<Conflict>> {
    let mut managers = existing.managers.clone();
    let me = (manager.to_owned(), "Apply");
    // Fields someone else owns with a value different from ours.
    let mut conflicts = Vec::new();
    for ((other, op), m) in &managers {
        if (other.as_str(), *op) == (manager, "Apply") {
            continue;
        }
        for path in new_fields.intersection(&m.fields) {
            if value_at(&existing.obj, path) != value_at(config, path) {
                conflicts.push(Conflict {
                    manager: other.clone(),
                    api_version: m.api_version.clone(),
                    path: path.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    // Forced: the fields change hands; equal values stay shared.
    for c in &conflicts {
        for ((other, _), m) in managers.iter_mut() {
            if *other == c.manager {
                m.fields.remove(&c.path);
            }
        }
    }
    let old_fields = managers
        .get(&me)
        .map(|m| m.fields.clone())
        .unwrap_or_default();
    let mut obj = existing.obj.clone();
    merge(&mut obj, config);
    let entry = managers.entry(me).or_insert_with(|| Manager {
        operation: "Apply",
        api_version: existing.kind.api_version(),
        time: String::new(),
        fields: FieldSet::new(),
    });
    entry.fields = new_fields.clone();
    entry.api_version = existing.kind.api_version();
    // Fields we applied before and no longer apply go, unless someone else
    // owns them or they are now a parent of what we apply.
    // Key fields (an item's `name`) last: the item is found by it.
    let mut removed: Vec<&FieldPath> = old_fields.difference(&new_fields).collect();
    removed.sort_by_key(|p| is_key_field(p));
    for path in removed {
        let owned_elsewhere = managers.iter().any(|((n, op), m)| {
            (n.as_str(), *op) != (manager, "Apply") && m.fields.iter().any(|p| p.starts_with(path))
        });
        let parent_of_new = new_fields.iter().any(|p| p.starts_with(path));
        if !owned_elsewhere && !parent_of_new {
            remove_path(&mut obj, path);
            prune_empty_parents(&mut obj, path, &managers);
        }
    }
    managers.retain(|_, m| !m.fields.is_empty());
    let managers_changed = managers.len() != existing.managers.len()
        || managers
            .iter()
            .zip(existing.managers.iter())
            .any(|((ka, a), (kb, b))| ka != kb || a.fields != b.fields);
    if obj == existing.obj && !managers_changed {
        return Ok(None);
    }
    Ok(Some(Stored {
        kind: existing.kind,
        obj,
        managers,
    }))
}

/// The part of an applied body the manager owns fields in: everything but
/// identity, server-owned metadata and (for kinds with a status
/// subresource) status.
fn config_part(kind: &Kind, body: &Value) -> Value {
    let mut c = body.clone();
    if let Some(map) = c.as_object_mut() {
        map.remove("apiVersion");
        map.remove("kind");
        if kind.status {
            map.remove("status");
        }
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("name");
            meta.remove("namespace");
            for f in SERVER_METADATA {
                meta.remove(*f);
            }
            if meta.is_empty() {
                map.remove("metadata");
            }
        }
    }
    c
}

/// What a generation bump looks at: everything but metadata and status.
fn spec_part(obj: &Value) -> Value {
    let mut c = obj.clone();
    if let Some(map) = c.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    c
}

/// A list merged by name: every element an object with a string `name`.
fn keyed_list(items: &[Value]) -> bool {
    !items.is_empty()
        && items
            .iter()
            .all(|i| i.get("name").and_then(Value::as_str).is_some())
}

fn item_name(item: &Value) -> Option<&str> {
    item.get("name").and_then(Value::as_str)
}

/// The leaf fields a value sets: scalars, atomic lists, empty maps.
fn field_set(v: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    collect_fields(v, &mut Vec::new(), &mut out);
    out
}

fn collect_fields(v: &Value, prefix: &mut FieldPath, out: &mut FieldSet) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                prefix.push(Step::Field(k.clone()));
                collect_fields(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) if keyed_list(items) => {
            for item in items {
                prefix.push(Step::Item(item_name(item).unwrap_or("").to_owned()));
                collect_fields(item, prefix, out);
                prefix.pop();
            }
        }
        _ => {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
        }
    }
}

fn merge(live: &mut Value, config: &Value) {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) => {
            for (k, cv) in c {
                match l.get_mut(k) {
                    Some(lv) => merge(lv, cv),
                    None => {
                        l.insert(k.clone(), cv.clone());
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(c)) if keyed_list(c) && keyed_list(l) => {
            for citem in c {
                let name = item_name(citem);
                match l.iter_mut().find(|i| item_name(i) == name) {
                    Some(litem) => merge(litem, citem),
                    None => l.push(citem.clone()),
                }
            }
        }
        (live, config) => *live = config.clone(),
    }
}

fn value_at<'a>(v: &'a Value, path: &[Step]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, step| match step {
        Step::Field(f) => v.get(f),
        Step::Item(n) => v
            .as_array()?
            .iter()
            .find(|i| item_name(i) == Some(n.as_str())),
    })
}

fn value_at_mut<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, step| match step {
        Step::Field(f) => v.get_mut(f),
        Step::Item(n) => v
            .as_array_mut()?
            .iter_mut()
            .find(|i| item_name(i) == Some(n.as_str())),
    })
}

/// An item's key field: `[..., Item(n), Field("name")]`.
fn is_key_field(path: &[Step]) -> bool {
    matches!(path, [.., Step::Item(_), Step::Field(f)] if f == "name")
}

fn remove_path(v: &mut Value, path: &[Step]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    if is_key_field(path) {
        // The key goes with its item, and only once nothing else is left in
        // it (what remains belongs to another manager).
        let only_key = value_at(v, parent)
            .and_then(Value::as_object)
            .is_some_and(|item| item.len() == 1);
        if only_key {
            remove_path(v, parent);
        }
        return;
    }
    let Some(parent) = value_at_mut(v, parent) else {
        return;
    };
    match last {
        Step::Field(f) => {
            if let Some(map) = parent.as_object_mut() {
                map.remove(f);
            }
        }
        Step::Item(n) => {
            if let Some(items) = parent.as_array_mut() {
                items.retain(|i| item_name(i) != Some(n.as_str()));
            }
        }
    }
}

/// Removes maps, list items and lists that `path`'s removal left empty and
/// that no manager owns anything in.
fn prune_empty_parents(
    obj: &mut Value,
    path: &[Step],
    managers: &BTreeMap<(String, &'static str), Manager>,
) {
    for depth in (1..path.len()).rev() {
        let prefix = &path[..depth];
        let empty = match value_at(obj, prefix) {
            // Already gone (an item removed with its key).
            None => continue,
            Some(Value::Object(m)) => m.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(_) => false,
        };
        let owned = managers
            .values()
            .any(|m| m.fields.iter().any(|p| p.starts_with(prefix)));
        if !empty || owned {
            return;
        }
        remove_path(obj, prefix);
    }
}

fn path_text(path: &[Step]) -> String {
    path.iter()
        .map(|s| match s {
            Step::Field(f) => format!(".{f}"),
            Step::Item(n) => format!("[name=\"{n}\"]"),
        })
        .collect()
}

/// managedFields' FieldsV1 encoding of a field set.
fn fields_v1(fields: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut node = &mut root;
        for step in path {
            let (k, item) = match step {
                Step::Field(f) => (format!("f:{f}"), false),
                Step::Item(n) => (format!("k:{}", json!({"name": n})), true),
            };
            let child = node.entry(k).or_insert_with(|| Value::Object(Map::new()));
            if !child.is_object() {
                *child = Value::Object(Map::new());
            }
            let Some(child) = child.as_object_mut() else {
                break;
            };
            if item {
                child.insert(".".into(), Value::Object(Map::new()));
            }
            node = child;
        }
    }
    Value::Object(root)
}

fn delete(
    shared: &Shared,
    kind: &Kind,
    namespace: Option<&str>,
    name: &str,
    req: &Request,
) -> Response {
    let options: Value = if req.body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => return bad_request(format!("error decoding DeleteOptions: {e}")),
        }
    };
    let key = object_key(kind, namespace, name);
    let mut store = shared.store();
    let Some(existing) = store.objects.get(&key) else {
        return not_found(kind, name);
    };
    let meta_text = |f: &str| {
        existing
            .obj
            .pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let uid = meta_text("uid");
    if let Some(want) = options
        .pointer("/preconditions/uid")
        .and_then(Value::as_str)
        && want != uid
    {
        return status_error(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {want}, UID in object meta: {uid}",
                kind.qualified()
            ),
            Some(json!({"name": name, "group": kind.group, "kind": kind.plural})),
        );
    }
    let rv = meta_text("resourceVersion");
    if let Some(want) = options
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
        && want != rv
    {
        return status_error(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rv}",
                kind.qualified()
            ),
            Some(json!({"name": name, "group": kind.group, "kind": kind.plural})),
        );
    }
    store.objects.remove(&key);
    if kind.kind == "Namespace" {
        store.objects.retain(|(_, _, ns, _), _| ns != name);
    }
    store.last_rv += 1;
    json_response(
        200,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "group": kind.group, "kind": kind.plural, "uid": uid}}),
    )
}

// ---------------------------------------------------------------- selectors

/// A parsed label selector (equality- and set-based requirements, ANDed).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
}

impl Selector {
    /// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_top_level(s) {
            let term = term.trim();
            if term.is_empty() {
                if s.trim().is_empty() {
                    continue;
                }
                return Err(format!("{s:?}: empty requirement"));
            }
            reqs.push(parse_requirement(term)?);
        }
        Ok(Self(reqs))
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_requirement(term: &str) -> Result<Requirement, String> {
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        check_label_key(k).map_err(|e| format!("{term:?}: {e}"))?;
        Ok(k.to_owned())
    };
    let value = |v: &str| -> Result<String, String> {
        let v = v.trim();
        check_label_value(v).map_err(|e| format!("{term:?}: {e}"))?;
        Ok(v.to_owned())
    };
    if let Some(rest) = term.strip_prefix('!') {
        return Ok(Requirement::NotExists(key(rest)?));
    }
    if let Some((head, tail)) = term.split_once('(') {
        let Some(inner) = tail.trim_end().strip_suffix(')') else {
            return Err(format!("{term:?}: missing ')'"));
        };
        let mut words = head.split_whitespace();
        let (Some(k), Some(op), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("{term:?}: expected `key in (values)`"));
        };
        let values = inner
            .split(',')
            .map(value)
            .collect::<Result<BTreeSet<String>, String>>()?;
        return match op {
            "in" => Ok(Requirement::In(key(k)?, values)),
            "notin" => Ok(Requirement::NotIn(key(k)?, values)),
            other => Err(format!("{term:?}: unknown operator {other:?}")),
        };
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(key(k)?, value(v)?));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Requirement::Equals(key(k)?, value(v)?));
    }
    Ok(Requirement::Exists(key(term)?))
}

// ---------------------------------------------------------------- time

fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selectors() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let yes = [
            "",
            "app=web",
            "app==web",
            "app!=db",
            "missing!=x",
            "app in (web,db)",
            "app in (web, db),tier",
            "tier notin (back)",
            "missing notin (x)",
            "app,!missing",
        ];
        for s in yes {
            assert!(Selector::parse(s).expect(s).matches(&l), "{s}");
        }
        let no = [
            "app=db",
            "app!=web",
            "app in (db)",
            "tier notin (front)",
            "missing",
            "!app",
        ];
        for s in no {
            assert!(!Selector::parse(s).expect(s).matches(&l), "{s}");
        }
        for bad in ["app in (web", "a b c (x)", "app=we b", "=x", "app,,tier"] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fields_v1_encoding() {
        let v = json!({"metadata": {"labels": {"a": "1"}},
                       "spec": {"containers": [{"name": "web", "image": "x"}], "args": ["a"]}});
        let enc = fields_v1(&field_set(&v));
        assert_eq!(
            enc,
            json!({"f:metadata": {"f:labels": {"f:a": {}}},
                   "f:spec": {"f:args": {}, "f:containers": {"k:{\"name\":\"web\"}":
                       {".": {}, "f:image": {}, "f:name": {}}}}})
        );
    }

    #[test]
    fn time_format() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%3Db%2Cc+d"), "a=b,c d");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
