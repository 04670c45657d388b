//! The real Kubernetes control plane ([`edgefleet_devcluster`]) as the
//! end-to-end suites use it: kube-apiserver on kine (SQLite), the
//! controllers, the scheduler and kwok's two fake Raspberry Pi nodes, in a
//! temporary directory, with an administrator's kube-rs client.
//!
//! [`ControlPlane::start`] skips loudly (`skip("kube", …)`) when the
//! binaries are not built, and fails instead under `EDGEFLEET_REQUIRE_KUBE=1`.
//! Every component listens on loopback; all of it stops when dropped.
//! [`ControlPlane::reset`] wipes the datastore and starts again: a K3s reset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use edgefleet_devcluster as dev;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde::Deserialize as _;
use serde_json::Value;

pub use edgefleet_devcluster::{AGENT_USER, NODES, kubeconfig};

const T: std::time::Duration = std::time::Duration::from_secs(60);

/// A running control plane in a temporary directory.
#[derive(Debug)]
pub struct ControlPlane {
    // Dropped first: the components stop before their directory goes.
    inner: dev::ControlPlane,
    _dir: tempfile::TempDir,
}

fn started(what: &str, r: Result<(), dev::Error>) {
    if let Err(e) = r {
        panic!("{what}: {}", edgefleet_daemon::error_chain(&e));
    }
}

impl ControlPlane {
    /// Starts the control plane, or returns `None` after a loud skip when it
    /// is not built (a failure under `EDGEFLEET_REQUIRE_KUBE=1`).
    pub async fn start() -> Option<Self> {
        let mut cp = Self::prepare(None)?;
        started("control plane", cp.inner.start().await);
        Some(cp)
    }

    /// kine and the API server only: objects are stored, validated,
    /// defaulted and served for real, nothing reconciles them (no
    /// controllers, scheduler or nodes). Half the start time and memory, for
    /// suites that need many clusters and only watch objects arrive.
    pub async fn start_api_only() -> Option<Self> {
        let mut cp = Self::prepare(None)?;
        cp.start_api().await;
        Some(cp)
    }

    /// [`ControlPlane::start_api_only`] inside network namespace `netns`, on
    /// its loopback: a device's K3s stays reachable to the agent in there
    /// when the device's uplink is cut.
    pub async fn start_api_only_in(netns: &str) -> Option<Self> {
        let mut cp = Self::prepare(Some(netns))?;
        cp.start_api().await;
        Some(cp)
    }

    fn prepare(netns: Option<&str>) -> Option<Self> {
        crate::install_crypto();
        let Some(bin) = dev::binaries() else {
            crate::skip(
                "kube",
                "the Kubernetes control plane is not built: run tests/kube/build.sh \
                 (about 15 minutes the first time, cached after)",
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let mut inner = dev::ControlPlane::prepare(&bin, dir.path())
            .unwrap_or_else(|e| panic!("{}", edgefleet_daemon::error_chain(&e)));
        if let Some(ns) = netns {
            inner = inner.in_netns(ns);
        }
        Some(Self { inner, _dir: dir })
    }

    pub fn url(&self) -> String {
        self.inner.url()
    }

    /// The admin (system:masters) kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.inner.kubeconfig()
    }

    /// The cluster CA, PEM.
    pub fn ca_pem(&self) -> String {
        self.inner.ca_pem()
    }

    /// Starts kine and the API server and waits for `/readyz` (see
    /// [`ControlPlane::ready_at`]); the controllers are not started.
    pub async fn start_api(&mut self) {
        started("kube-apiserver", self.inner.start_api().await);
    }

    /// Starts the controller manager, scheduler and kwok, and waits for the
    /// nodes and the default ServiceAccount (the API server must be up).
    pub async fn start_controllers(&mut self) {
        started("controllers", self.inner.start_controllers().await);
    }

    /// The administrator's handle (on the caller's runtime).
    pub async fn admin(&self) -> Admin {
        Admin {
            client: client_for(&self.kubeconfig()).await,
            url: self.url(),
            ca_pem: self.ca_pem(),
            dir: self.inner.dir().to_owned(),
        }
    }

    /// Wipes the datastore and starts every component again: a K3s reset.
    pub async fn reset(&mut self) {
        started("control plane reset", self.inner.reset().await);
    }

    /// Deletes the datastore (stop the control plane first).
    pub fn wipe(&self) {
        self.inner.wipe();
    }

    /// When the API server last answered `/readyz` for the first time after
    /// a start.
    pub fn ready_at(&self) -> Instant {
        self.inner.ready_at().expect("control plane started")
    }

    /// Stops every component (the API server is gone until `restart`).
    pub async fn stop(&mut self) {
        self.inner.stop().await;
    }

    /// Starts every component again on the same datastore.
    pub async fn restart(&mut self) {
        started("control plane restart", self.inner.restart().await);
    }
}

/// What a test does with a control plane as its administrator.
#[derive(Clone)]
pub struct Admin {
    pub client: kube::Client,
    pub url: String,
    pub ca_pem: String,
    dir: PathBuf,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// An admin handle on one kind (`apiVersion`, `kind`; plural guessed as
    /// kube-rs does), namespaced when `ns` is given.
    pub fn api(&self, api_version: &str, kind: &str, ns: Option<&str>) -> Api<DynamicObject> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    /// One object as JSON, `None` when absent.
    pub async fn get(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let obj = self.api(api_version, kind, ns).get_opt(name).await.ok()??;
        serde_json::to_value(obj).ok()
    }

    /// Applies `manifest` as another field manager would (`kubectl apply
    /// --server-side` as `manager`).
    pub async fn apply_as(
        &self,
        manager: &str,
        manifest: &Value,
        force: bool,
    ) -> Result<Value, kube::Error> {
        let api_version = manifest["apiVersion"].as_str().unwrap_or_default();
        let kind = manifest["kind"].as_str().unwrap_or_default();
        let ns = manifest["metadata"]["namespace"].as_str();
        let name = manifest["metadata"]["name"].as_str().unwrap_or_default();
        let mut pp = PatchParams::apply(manager);
        pp.force = force;
        let obj = self
            .api(api_version, kind, ns)
            .patch(name, &pp, &Patch::Apply(manifest))
            .await?;
        Ok(serde_json::to_value(obj).unwrap_or(Value::Null))
    }

    /// A kubeconfig for the agent's ServiceAccount, made the way
    /// `packaging/install.sh` makes it: its RBAC manifest (read from the
    /// script itself) applied, the token the controller manager puts in
    /// the `edgefleet-agent-token` Secret, the cluster's CA.
    pub async fn agent_kubeconfig(&self) -> PathBuf {
        let script = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/install.sh"),
        )
        .expect("packaging/install.sh");
        let start = script
            .find("apply -f - >/dev/null <<'EOF'\n")
            .expect("install.sh applies its RBAC manifest from a heredoc");
        let rest = &script[start..];
        let body = &rest[rest.find('\n').unwrap_or(0) + 1..];
        let manifest = &body[..body.find("\nEOF\n").expect("end of the heredoc")];
        for doc in serde_yaml::Deserializer::from_str(manifest) {
            let v = Value::deserialize(doc).expect("RBAC manifest YAML");
            self.apply_as("install.sh", &v, true)
                .await
                .unwrap_or_else(|e| panic!("apply {v}: {e}"));
        }
        let secrets = self.api("v1", "Secret", Some("kube-system"));
        let token = crate::eventually("the agent's token", T, || async {
            let s = secrets.get_opt("edgefleet-agent-token").await.ok()??;
            let b64 = s.data["data"]["token"].as_str()?.to_owned();
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            String::from_utf8(raw).ok()
        })
        .await;
        let path = self.dir.join("agent.kubeconfig");
        std::fs::write(
            &path,
            kubeconfig(&self.url, &self.ca_pem, "edgefleet-agent", &token),
        )
        .expect("write the agent's kubeconfig");
        path
    }

    /// Waits until the object exists (`present`) or is gone.
    pub async fn wait_for(
        &self,
        present: bool,
        (api_version, kind): (&str, &str),
        ns: Option<&str>,
        name: &str,
    ) {
        let what = format!("{kind} {name} {}", if present { "present" } else { "gone" });
        crate::eventually(&what, T, || async {
            let found = self.get(api_version, kind, ns, name).await.is_some();
            (found == present).then_some(())
        })
        .await;
    }

    /// (name, node) of the Running pods of `ns`.
    pub async fn running_pods(&self, ns: &str) -> Vec<(String, String)> {
        let list = self
            .api("v1", "Pod", Some(ns))
            .list(&Default::default())
            .await
            .expect("list pods");
        list.items
            .iter()
            .filter(|p| p.data["status"]["phase"] == "Running")
            .map(|p| {
                (
                    p.metadata.name.clone().unwrap_or_default(),
                    p.data["spec"]["nodeName"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    /// Mutating requests (create, update, patch, delete) the agent's
    /// ServiceAccount made so far, by verb, from the API server's audit log.
    pub fn agent_mutations(&self) -> BTreeMap<String, u64> {
        mutations_in(&self.dir.join("audit.log"))
    }
}

/// A control plane shared by every test of one test binary (each test in
/// a namespace of its own), for tests that neither reset nor stop it.
#[derive(Debug, Clone)]
pub struct Shared {
    pub url: String,
    pub kubeconfig: PathBuf,
    pub ca_pem: String,
    dir: PathBuf,
}

static SHARED: std::sync::OnceLock<Option<Shared>> = std::sync::OnceLock::new();

impl Shared {
    /// The binary's shared control plane, started on first use on a thread
    /// of its own that lives as long as the process (its components die
    /// with it); `None` after a loud skip when it is not built.
    pub fn get() -> Option<Shared> {
        SHARED
            .get_or_init(|| {
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::Builder::new()
                    .name("control-plane".into())
                    .spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("runtime");
                        rt.block_on(async move {
                            let cp = ControlPlane::start().await;
                            let info = cp.as_ref().map(|cp| Shared {
                                url: cp.url(),
                                kubeconfig: cp.kubeconfig(),
                                ca_pem: cp.ca_pem(),
                                dir: cp.inner.dir().to_owned(),
                            });
                            let _ = tx.send(info);
                            // Keeps the components and their log readers.
                            std::future::pending::<()>().await;
                            drop(cp);
                        });
                    })
                    .expect("control-plane thread");
                rx.recv().expect("control plane started or skipped")
            })
            .clone()
    }

    /// The administrator's handle (on the caller's runtime).
    pub async fn admin(&self) -> Admin {
        Admin {
            client: client_for(&self.kubeconfig).await,
            url: self.url.clone(),
            ca_pem: self.ca_pem.clone(),
            dir: self.dir.clone(),
        }
    }
}

/// A client for `kubeconfig`.
pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    let cfg = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("client config");
    kube::Client::try_from(cfg).expect("client")
}

/// Mutating requests of [`AGENT_USER`] in an audit log, by verb.
fn mutations_in(log: &Path) -> BTreeMap<String, u64> {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["stage"] == "ResponseComplete" && v["user"]["username"] == AGENT_USER {
            *out.entry(v["verb"].as_str().unwrap_or("?").to_owned())
                .or_insert(0) += 1;
        }
    }
    out
}
