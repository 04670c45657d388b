//! A real Kubernetes control plane for the end-to-end suites, as close to a
//! device's K3s as can run here: kube-apiserver on kine with SQLite (K3s's
//! own datastore), kube-controller-manager, kube-scheduler, and kwok playing
//! the kubelets of two fake arm64 nodes labelled like Raspberry Pis. Built
//! from Go modules by `tests/kube/build.sh` and cached; server-side apply,
//! discovery, RBAC, admission, controllers and status are the real ones,
//! only containers do not run.
//!
//! [`ControlPlane::start`] skips loudly (`skip("kube", …)`) when the
//! binaries are not built, and fails instead under `EDGEFLEET_REQUIRE_KUBE=1`.
//! Every component listens on loopback; all of it stops when dropped.
//! [`ControlPlane::reset`] wipes the datastore and starts again: a K3s reset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde::Deserialize as _;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::process::Proc;

/// The names of the two fake nodes.
pub const NODES: [&str; 2] = ["pi-node-1", "pi-node-2"];
/// The agent's ServiceAccount, as `packaging/install.sh` creates it.
pub const AGENT_USER: &str = "system:serviceaccount:kube-system:edgefleet-agent";
const ADMIN_TOKEN_USER: &str = "edgefleet-test-admin";
const T: Duration = Duration::from_secs(60);

/// Where `tests/kube/build.sh` put the binaries, if it has: the directory
/// in `EDGEFLEET_KUBE_BIN`, or the script's cache.
pub fn binaries() -> Option<PathBuf> {
    const BINS: [&str; 5] = [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kine",
        "kwok",
    ];
    let complete = |d: &Path| BINS.iter().all(|b| d.join(b).is_file());
    if let Some(d) = std::env::var_os("EDGEFLEET_KUBE_BIN").map(PathBuf::from) {
        return complete(&d).then_some(d);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("kube/build.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("--print-if-built")
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && complete(&dir)).then_some(dir)
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    dir: tempfile::TempDir,
    bin: PathBuf,
    api_port: u16,
    kine_port: u16,
    token: String,
    procs: Vec<Proc>,
    ready_at: Option<Instant>,
    /// Run inside this network namespace (its loopback), not the host's.
    netns: Option<String>,
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A CA and a serving certificate for 127.0.0.1/localhost, PEM.
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "edgefleet test cluster CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("serving key");
    let mut params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default.svc".to_owned(),
    ])
    .expect("serving params");
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([10, 96, 0, 1].into()));
    let cert = params.signed_by(&key, &issuer).expect("serving cert");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// A kubeconfig for `server` trusting `ca_pem`, authenticating with `token`.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: {user}}}\ncurrent-context: test\n"
    )
}

impl ControlPlane {
    /// Starts the control plane, or returns `None` after a loud skip when it
    /// is not built (a failure under `EDGEFLEET_REQUIRE_KUBE=1`).
    pub async fn start() -> Option<Self> {
        let mut cp = Self::prepare()?;
        cp.launch().await;
        Some(cp)
    }

    /// kine and the API server only: objects are stored, validated,
    /// defaulted and served for real, nothing reconciles them (no
    /// controllers, scheduler or nodes). Half the start time and memory, for
    /// suites that need many clusters and only watch objects arrive.
    pub async fn start_api_only() -> Option<Self> {
        let mut cp = Self::prepare()?;
        cp.start_api().await;
        Some(cp)
    }

    /// [`ControlPlane::start_api_only`] inside network namespace `netns`, on
    /// its loopback: a device's K3s stays reachable to the agent in there
    /// when the device's uplink is cut. Readiness is the API server's port
    /// accepting connections (the host cannot reach it to ask `/readyz`).
    pub async fn start_api_only_in(netns: &str) -> Option<Self> {
        let mut cp = Self::prepare()?;
        cp.netns = Some(netns.to_owned());
        cp.start_api().await;
        Some(cp)
    }

    /// Whether something listens on `port` of this control plane's loopback.
    async fn listening(&self, port: u16) -> bool {
        match &self.netns {
            None => tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok(),
            Some(ns) => Command::new("ip")
                .args(["netns", "exec", ns, "bash", "-c"])
                .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}"))
                .status()
                .await
                .is_ok_and(|s| s.success()),
        }
    }

    fn prepare() -> Option<Self> {
        crate::install_crypto();
        let Some(bin) = binaries() else {
            crate::skip(
                "kube",
                "the Kubernetes control plane is not built: run tests/kube/build.sh \
                 (about 20 minutes the first time, cached after)",
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, cert, key) = certificates();
        write(&dir.path().join("ca.crt"), &ca);
        write(&dir.path().join("apiserver.crt"), &cert);
        write(&dir.path().join("apiserver.key"), &key);
        let sa = rcgen::KeyPair::generate().expect("service-account key");
        write(&dir.path().join("sa.key"), &sa.serialize_pem());
        write(&dir.path().join("sa.pub"), &sa.public_key_pem());
        let token = format!("admin-{}", rand::random::<u64>());
        write(
            &dir.path().join("tokens.csv"),
            &format!("{token},{ADMIN_TOKEN_USER},{ADMIN_TOKEN_USER},system:masters\n"),
        );
        // Every mutating request of the agent's ServiceAccount, and nothing
        // else: the test counts what the agent changes.
        write(
            &dir.path().join("audit-policy.yaml"),
            &format!(
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n  users: [\"{AGENT_USER}\"]\n  verbs: [create, update, patch, delete, deletecollection]\n- level: None\n"
            ),
        );
        write(
            &dir.path().join("kwok-stages.yaml"),
            include_str!("../kube/kwok-stages.yaml"),
        );
        let cp = Self {
            dir,
            bin,
            api_port: crate::free_port(),
            kine_port: crate::free_port(),
            token,
            procs: Vec::new(),
            ready_at: None,
            netns: None,
        };
        write(
            &cp.kubeconfig(),
            &kubeconfig(&cp.url(), &ca, "admin", &cp.token),
        );
        Some(cp)
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// The admin (system:masters) kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// The cluster CA, PEM.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ca.crt")).expect("ca.crt")
    }

    fn spawn(&mut self, name: &str, args: &[String]) {
        // Killed with the thread that started it, even if nothing ever
        // drops this fixture (a shared cluster, a test that aborts).
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "setpriv"]);
                c
            }
            None => Command::new("setpriv"),
        };
        cmd.arg("--pdeathsig")
            .arg("KILL")
            .arg("--")
            .arg(self.bin.join(name))
            .args(args);
        self.procs.push(Proc::spawn(name, cmd));
    }

    async fn launch(&mut self) {
        self.start_api().await;
        self.start_controllers().await;
    }

    /// Starts kine and the API server and waits for `/readyz` (see
    /// [`ControlPlane::ready_at`]); the controllers are not started.
    pub async fn start_api(&mut self) {
        let d = self.dir.path().to_owned();
        let p = |f: &str| d.join(f).display().to_string();
        // kine on SQLite, as K3s runs it.
        self.spawn(
            "kine",
            &[
                format!(
                    "--endpoint=sqlite://{}?_journal=WAL&cache=shared&_busy_timeout=30000&_txlock=immediate",
                    p("state.db")
                ),
                format!("--listen-address=127.0.0.1:{}", self.kine_port),
                "--metrics-bind-address=0".into(),
            ],
        );
        crate::eventually("kine listening", T, || async {
            self.listening(self.kine_port).await.then_some(())
        })
        .await;
        self.spawn(
            "kube-apiserver",
            &[
                format!("--etcd-servers=http://127.0.0.1:{}", self.kine_port),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                // No kubernetes Service endpoints: a loopback address may
                // not be in them, and nothing here needs them.
                "--endpoint-reconciler-type=none".into(),
                format!("--secure-port={}", self.api_port),
                format!("--tls-cert-file={}", p("apiserver.crt")),
                format!("--tls-private-key-file={}", p("apiserver.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                format!("--token-auth-file={}", p("tokens.csv")),
                "--authorization-mode=RBAC".into(),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--storage-backend=etcd3".into(),
                format!("--audit-policy-file={}", p("audit-policy.yaml")),
                format!("--audit-log-path={}", p("audit.log")),
                "--profiling=false".into(),
                "--enable-priority-and-fairness=false".into(),
            ],
        );
        if self.netns.is_some() {
            crate::eventually("kube-apiserver listening", T, || async {
                self.listening(self.api_port).await.then_some(())
            })
            .await;
            self.ready_at = Some(Instant::now());
            return;
        }
        let http = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca_pem().as_bytes()).expect("CA PEM"),
            )
            .build()
            .expect("HTTP client");
        let readyz = format!("{}/readyz", self.url());
        crate::eventually("kube-apiserver /readyz", T, || async {
            let r = http
                .get(&readyz)
                .bearer_auth(&self.token)
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        self.ready_at = Some(Instant::now());
    }

    /// Starts the controller manager, scheduler and kwok, and waits for the
    /// nodes and the default ServiceAccount (the API server must be up).
    pub async fn start_controllers(&mut self) {
        let d = self.dir.path().to_owned();
        let p = |f: &str| d.join(f).display().to_string();
        let kubeconfig = p("admin.kubeconfig");
        for name in ["kube-controller-manager", "kube-scheduler"] {
            let mut args = vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=0".into(),
                "--leader-elect=false".into(),
            ];
            if name == "kube-controller-manager" {
                args.extend([
                    format!("--service-account-private-key-file={}", p("sa.key")),
                    format!("--root-ca-file={}", p("ca.crt")),
                    "--use-service-account-credentials=true".into(),
                    "--controllers=*".into(),
                ]);
            }
            self.spawn(name, &args);
        }
        self.spawn(
            "kwok",
            &[
                format!("--kubeconfig={kubeconfig}"),
                format!("--config={}", p("kwok-stages.yaml")),
                "--manage-all-nodes=false".into(),
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                "--node-lease-duration-seconds=40".into(),
                "--cidr=10.244.0.0/16".into(),
                "--node-ip=10.0.0.2".into(),
            ],
        );
        let admin = self.admin().await;
        create_nodes(&admin).await;
        // Pods need their namespace's ServiceAccount (the controller
        // manager's token and service-account controllers).
        let sa: Api<DynamicObject> = admin.api("v1", "ServiceAccount", Some("default"));
        crate::eventually("the default ServiceAccount", T, || async {
            sa.get_opt("default").await.ok().flatten().map(|_| ())
        })
        .await;
    }

    /// The administrator's handle (on the caller's runtime).
    pub async fn admin(&self) -> Admin {
        Admin {
            client: client_for(&self.kubeconfig()).await,
            url: self.url(),
            ca_pem: self.ca_pem(),
            dir: self.dir.path().to_owned(),
        }
    }

    /// Wipes the datastore and starts every component again: a K3s reset.
    pub async fn reset(&mut self) {
        self.stop().await;
        self.wipe();
        self.launch().await;
    }

    /// Deletes the datastore (stop the control plane first).
    pub fn wipe(&self) {
        for f in ["state.db", "state.db-wal", "state.db-shm"] {
            let _ = std::fs::remove_file(self.dir.path().join(f));
        }
    }

    /// When the API server last answered `/readyz` for the first time after
    /// a start.
    pub fn ready_at(&self) -> Instant {
        self.ready_at.expect("control plane started")
    }

    /// Stops every component (the API server is gone until `restart`).
    pub async fn stop(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            p.kill().await;
        }
    }

    /// Starts every component again on the same datastore.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }
}

async fn create_nodes(admin: &Admin) {
    let nodes: Api<DynamicObject> = admin.api("v1", "Node", None);
    for name in NODES {
        let node: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {
                    "kubernetes.io/arch": "arm64",
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/hostname": name,
                    "node.kubernetes.io/instance-type": "raspberry-pi-4b",
                    "type": "kwok",
                },
            },
        }))
        .expect("node");
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            // A restart on the same datastore: the nodes are there.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("create node {name}: {e}"),
        }
    }
    crate::eventually("both fake nodes Ready", T, || async {
        for name in NODES {
            let n = nodes.get_opt(name).await.ok()??;
            let conds = n.data["status"]["conditions"].as_array()?.clone();
            conds
                .iter()
                .find(|c| c["type"] == "Ready" && c["status"] == "True")?;
        }
        Some(())
    })
    .await;
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
        write(
            &path,
            &kubeconfig(&self.url, &self.ca_pem, "edgefleet-agent", &token),
        );
        path
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
                                dir: cp.dir.path().to_owned(),
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

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Each Proc kills its process on drop (kill_on_drop); the API
        // server and its clients go before the datastore.
        while self.procs.pop().is_some() {}
    }
}
