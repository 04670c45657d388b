//! A real Kubernetes control plane on this machine, as close to a device's
//! K3s as can run without containers: kube-apiserver on kine with SQLite
//! (K3s's own datastore), kube-controller-manager, kube-scheduler, and kwok
//! playing the kubelets of two fake arm64 nodes labelled like Raspberry
//! Pis. Server-side apply, discovery, RBAC, admission, controllers and
//! status are the real ones; only containers do not run.
//!
//! The binaries come from `tests/kube/build.sh` (Go modules, cached; see
//! [`binaries`]). Every component listens on loopback (or the loopback of
//! a network namespace), logs to `<dir>/<component>.log`, and dies with the
//! thread that started it (`setpriv --pdeathsig`) or when the
//! [`ControlPlane`] is dropped. Used by the end-to-end suites
//! (`edgefleet-tests`) and by `cloudcore demo`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The names of the two fake nodes.
pub const NODES: [&str; 2] = ["pi-node-1", "pi-node-2"];
/// The agent's ServiceAccount, as `packaging/install.sh` creates it.
pub const AGENT_USER: &str = "system:serviceaccount:kube-system:edgefleet-agent";
const ADMIN_USER: &str = "edgefleet-admin";
const BINARIES: [&str; 5] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kine",
    "kwok",
];
/// How long each component gets to come up.
const STARTUP: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make the cluster's certificates")]
    Certificates(#[source] rcgen::Error),
    #[error("cannot start {name}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} not within {timeout:?}; the last lines of {log}:\n{tail}")]
    Timeout {
        what: String,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("the API server refused {what}: HTTP {status}: {body}")]
    Api {
        what: String,
        status: u16,
        body: String,
    },
    #[error("request to the API server failed")]
    Http(#[source] reqwest::Error),
}

/// The path of `tests/kube/build.sh` in this source tree.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/kube/build.sh")
}

/// Where `tests/kube/build.sh` put the binaries, if it has: the directory
/// in `EDGEFLEET_KUBE_BIN`, or the script's cache.
pub fn binaries() -> Option<PathBuf> {
    let complete = |d: &Path| BINARIES.iter().all(|b| d.join(b).is_file());
    if let Some(d) = std::env::var_os("EDGEFLEET_KUBE_BIN").map(PathBuf::from) {
        return complete(&d).then_some(d);
    }
    let out = std::process::Command::new("bash")
        .arg(build_script())
        .arg("--print-if-built")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && complete(&dir)).then_some(dir)
}

/// A free TCP port on 127.0.0.1.
/// The file kwok serves as every fake container's log (CRI format).
pub const POD_LOG_FILE: &str = "pod.log";
/// How many lines it holds.
pub const POD_LOG_LINES: usize = 50;

/// Line `i` (0-based) of every fake container's log.
pub fn pod_log_line(i: usize) -> String {
    format!(
        "10.0.0.{} - - \"GET /healthz HTTP/1.1\" 200 2 \"-\" \"kube-probe\" line {i}",
        i % 250
    )
}

/// [`POD_LOG_LINES`] lines in the CRI log format, one a second up to `now_ms`.
fn fake_pod_log(now_ms: u64) -> String {
    (0..POD_LOG_LINES)
        .map(|i| {
            let at = now_ms - ((POD_LOG_LINES - 1 - i) as u64) * 1000;
            format!("{} stdout F {}\n", rfc3339(at), pod_log_line(i))
        })
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `ms` since the Unix epoch as RFC 3339 in UTC with nanoseconds.
fn rfc3339(ms: u64) -> String {
    let t = edgefleet_daemon::time::Utc::from_unix_ms(ms);
    format!(
        "{}T{:02}:{:02}:{:02}.{:09}Z",
        t.date(),
        t.hour,
        t.minute,
        t.second,
        (ms % 1000) * 1_000_000
    )
}

fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()
        .map(|a| a.port())
}

/// A kubeconfig for `server` trusting `ca_pem`, authenticating with `token`.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: edgefleet-dev\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: edgefleet-dev\n  context: {{cluster: edgefleet-dev, user: {user}}}\ncurrent-context: edgefleet-dev\n"
    )
}

/// A CA and a serving certificate for 127.0.0.1/localhost, PEM.
fn certificates() -> Result<(String, String, String), rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "edgefleet dev cluster CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![
        "localhost".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default.svc".to_owned(),
    ])?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([10, 96, 0, 1].into()));
    let cert = params.signed_by(&key, &issuer)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

/// A control plane in a directory of its own (certificates, tokens, the
/// SQLite datastore, the audit log, one log per component).
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    bin: PathBuf,
    api_port: u16,
    kine_port: u16,
    /// kwok's kubelet API (pod logs), the port every fake node advertises.
    kwok_port: u16,
    token: String,
    procs: Vec<(String, Child)>,
    ready_at: Option<Instant>,
    /// Run inside this network namespace (its loopback), not the host's.
    netns: Option<String>,
    http: Option<reqwest::Client>,
}

impl ControlPlane {
    /// Writes the cluster's files into `dir` (created if needed); starts
    /// nothing. `bin` is what [`binaries`] found.
    pub fn prepare(bin: &Path, dir: &Path) -> Result<Self, Error> {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|source| Error::Write { path, source })
        };
        std::fs::create_dir_all(dir).map_err(|source| Error::Write {
            path: dir.to_owned(),
            source,
        })?;
        let (ca, cert, key) = certificates().map_err(Error::Certificates)?;
        write("ca.crt", &ca)?;
        write("apiserver.crt", &cert)?;
        write("apiserver.key", &key)?;
        let sa = rcgen::KeyPair::generate().map_err(Error::Certificates)?;
        write("sa.key", &sa.serialize_pem())?;
        write("sa.pub", &sa.public_key_pem())?;
        let token = format!("admin-{:016x}", rand::random::<u64>());
        write(
            "tokens.csv",
            &format!("{token},{ADMIN_USER},{ADMIN_USER},system:masters\n"),
        )?;
        // Every mutating request of the agent's ServiceAccount, and nothing
        // else: what the agent changes can be counted.
        write(
            "audit-policy.yaml",
            &format!(
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n  users: [\"{AGENT_USER}\"]\n  verbs: [create, update, patch, delete, deletecollection]\n- level: None\n"
            ),
        )?;
        // kwok's stages, and the logs every container of a fake pod has.
        let logs = dir.join(POD_LOG_FILE);
        write(POD_LOG_FILE, &fake_pod_log(now_ms()))?;
        write(
            "kwok-stages.yaml",
            &format!(
                "{}---\napiVersion: kwok.x-k8s.io/v1alpha1\nkind: ClusterLogs\nmetadata: {{name: every-pod}}\nspec:\n  logs:\n  - logsFile: {}\n",
                include_str!("../../tests/kube/kwok-stages.yaml"),
                logs.display()
            ),
        )?;
        let port = |what: &str| {
            free_port().map_err(|source| Error::Spawn {
                name: what.to_owned(),
                source,
            })
        };
        let cp = Self {
            dir: dir.to_owned(),
            bin: bin.to_owned(),
            api_port: port("kube-apiserver")?,
            kine_port: port("kine")?,
            kwok_port: port("kwok")?,
            token,
            procs: Vec::new(),
            ready_at: None,
            netns: None,
            http: None,
        };
        write(
            "admin.kubeconfig",
            &kubeconfig(&cp.url(), &ca, "admin", &cp.token),
        )?;
        Ok(cp)
    }

    /// Runs the components inside network namespace `netns`, on its
    /// loopback. Readiness is then the API server's port accepting
    /// connections (the host cannot reach it to ask `/readyz`).
    pub fn in_netns(mut self, netns: &str) -> Self {
        self.netns = Some(netns.to_owned());
        self
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The admin (system:masters) kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// The cluster CA, PEM.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("ca.crt")).unwrap_or_default()
    }

    /// The API server's audit log: every mutating request of [`AGENT_USER`].
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// When the API server first answered `/readyz` after the last start.
    pub fn ready_at(&self) -> Option<Instant> {
        self.ready_at
    }

    /// Everything: the API server and the controllers, scheduler, kwok and
    /// its two nodes.
    pub async fn start(&mut self) -> Result<(), Error> {
        self.start_api().await?;
        self.start_controllers().await
    }

    fn spawn(&mut self, name: &str, args: &[String]) -> Result<(), Error> {
        let log = self.dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|source| Error::Write {
                path: log.clone(),
                source,
            })?;
        let err = out.try_clone().map_err(|source| Error::Write {
            path: log.clone(),
            source,
        })?;
        // Killed with the thread that started it, even if nothing ever
        // drops this (a shared cluster, a test that aborts, a demo killed).
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
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            name: name.to_owned(),
            source,
        })?;
        self.procs.push((name.to_owned(), child));
        Ok(())
    }

    /// Polls `check` until it is true; on timeout the error carries the
    /// tail of `component`'s log.
    async fn wait<F, Fut>(&self, what: &str, component: &str, mut check: F) -> Result<(), Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + STARTUP;
        loop {
            if check().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.dir.join(format!("{component}.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                return Err(Error::Timeout {
                    what: what.to_owned(),
                    timeout: STARTUP,
                    log,
                    tail,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

    /// Starts kine and the API server and waits for `/readyz` (see
    /// [`ControlPlane::ready_at`]); the controllers are not started.
    pub async fn start_api(&mut self) -> Result<(), Error> {
        let d = self.dir.clone();
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
        )?;
        self.wait("kine listening", "kine", || self.listening(self.kine_port))
            .await?;
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
                // Pod logs come from kwok's kubelet API on 127.0.0.1 (its
                // test certificate is not verified: no kubelet CA is set).
                "--kubelet-preferred-address-types=InternalIP".into(),
            ],
        )?;
        if self.netns.is_some() {
            self.wait("kube-apiserver listening", "kube-apiserver", || {
                self.listening(self.api_port)
            })
            .await?;
            self.ready_at = Some(Instant::now());
            return Ok(());
        }
        let ca = reqwest::Certificate::from_pem(self.ca_pem().as_bytes()).map_err(Error::Http)?;
        let http = reqwest::Client::builder()
            .add_root_certificate(ca)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(Error::Http)?;
        let readyz = format!("{}/readyz", self.url());
        self.wait("kube-apiserver /readyz", "kube-apiserver", || async {
            http.get(&readyz)
                .bearer_auth(&self.token)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await?;
        self.http = Some(http);
        self.ready_at = Some(Instant::now());
        Ok(())
    }

    /// Starts the controller manager, scheduler and kwok, creates the two
    /// nodes and waits for them to be Ready and for the default
    /// ServiceAccount (pods need it). The API server must be up.
    pub async fn start_controllers(&mut self) -> Result<(), Error> {
        let d = self.dir.clone();
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
            self.spawn(name, &args)?;
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
                // The nodes' kubelet API (pod logs) is kwok's server.
                "--node-ip=127.0.0.1".into(),
                format!("--node-port={}", self.kwok_port),
                format!("--server-address=127.0.0.1:{}", self.kwok_port),
            ],
        )?;
        for name in NODES {
            let node = json!({
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
            });
            match self
                .request(reqwest::Method::POST, "/api/v1/nodes", Some(&node))
                .await?
            {
                // 409: a restart on the same datastore; the node is there.
                (200..=299 | 409, _) => {}
                (status, body) => {
                    return Err(Error::Api {
                        what: format!("creating node {name}"),
                        status,
                        body: body.to_string(),
                    });
                }
            }
        }
        self.wait("both fake nodes Ready", "kwok", || async {
            let mut ready = 0;
            for name in NODES {
                if let Ok(Some(n)) = self.get(&format!("/api/v1/nodes/{name}")).await
                    && n["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                {
                    ready += 1;
                }
            }
            ready == NODES.len()
        })
        .await?;
        self.wait(
            "the default ServiceAccount",
            "kube-controller-manager",
            || async {
                matches!(
                    self.get("/api/v1/namespaces/default/serviceaccounts/default")
                        .await,
                    Ok(Some(_))
                )
            },
        )
        .await
    }

    /// A request as the administrator: status and JSON body (`Null` when
    /// the body is not JSON).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), Error> {
        let http = self.http.as_ref().ok_or_else(|| Error::Api {
            what: path.to_owned(),
            status: 0,
            body: "the API server is not started (or runs in a network namespace)".into(),
        })?;
        let mut req = http
            .request(method, format!("{}{path}", self.url()))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(Error::Http)?;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// `GET path` as the administrator; `None` on 404.
    pub async fn get(&self, path: &str) -> Result<Option<Value>, Error> {
        match self.request(reqwest::Method::GET, path, None).await? {
            (404, _) => Ok(None),
            (200, v) => Ok(Some(v)),
            (status, body) => Err(Error::Api {
                what: format!("GET {path}"),
                status,
                body: body.to_string(),
            }),
        }
    }

    /// Stops every component (SIGKILL; the API server is gone until
    /// [`ControlPlane::restart`]).
    pub async fn stop(&mut self) {
        // The API server and its clients go before the datastore.
        while let Some((_, mut child)) = self.procs.pop() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        self.http = None;
    }

    /// Deletes the datastore (stop the control plane first).
    pub fn wipe(&self) {
        for f in ["state.db", "state.db-wal", "state.db-shm"] {
            let _ = std::fs::remove_file(self.dir.join(f));
        }
    }

    /// Starts every component again on the same datastore.
    pub async fn restart(&mut self) -> Result<(), Error> {
        self.stop().await;
        self.start().await
    }

    /// Wipes the datastore and starts every component again: a K3s reset.
    pub async fn reset(&mut self) -> Result<(), Error> {
        self.stop().await;
        self.wipe();
        self.start().await
    }

    /// Whether every component started is still running.
    pub fn running(&mut self) -> Result<(), String> {
        for (name, child) in &mut self.procs {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{name} exited ({status}); see {}",
                    self.dir.join(format!("{name}.log")).display()
                ));
            }
        }
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Each child is killed on drop (kill_on_drop); the API server and
        // its clients go before the datastore.
        while self.procs.pop().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates_cross_leap_days_and_centuries() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123000000Z");
        assert_eq!(rfc3339(4_102_444_799_000), "2099-12-31T23:59:59.000000000Z");
    }

    #[test]
    fn the_fake_pod_log_is_cri_formatted_and_ends_now() {
        let log = fake_pod_log(951_782_400_000);
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), POD_LOG_LINES);
        assert_eq!(
            lines.last().copied(),
            Some(
                format!(
                    "2000-02-29T00:00:00.000000000Z stdout F {}",
                    pod_log_line(49)
                )
                .as_str()
            )
        );
    }
}
