//! `cloudcore demo`: the quick start. One command runs, on this machine, what
//! a real fleet has: the hub (in this process, with its embedded broker), a
//! device-local sensor broker standing in for the Pi's mosquitto, a real
//! `edge-agent` process, the reference anomaly model, a deployment,
//! simulated sensor readings, and a live status view until Ctrl-C.
//!
//! The demo drives the system only the way a user does: the REST API
//! (through the client edgectl uses, [`edgefleet_api::Client`]),
//! `edge-agent enroll` and `edge-agent run`.
//! It must never reach into the hub's store or the agent's state, so what it
//! shows is what a real fleet shows.

mod agent;
mod hub;
mod sensor;
mod view;

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgefleet_api::ClientError;
use edgefleet_devcluster::ControlPlane;
use tokio_util::sync::CancellationToken;

pub use agent::AgentError;
pub use hub::HubError;
pub use sensor::SensorError;

/// `cloudcore demo --help`.
pub const ABOUT: &str = "\
Quick start: a hub, a simulated device and its sensor, all on this machine.

Five steps, printed as they happen:
  1/5 starts the hub in this process (embedded MQTT broker, REST API) on free
      loopback ports, and prints the `edgectl` command to look around with;
  2/5 starts a device-local MQTT broker, standing in for mosquitto on a Pi;
  3/5 enrolls and starts a real `edge-agent` process (label site=demo);
  4/5 pushes the reference anomaly model (models/vibration) and applies a
      deployment: run the model on sensors/vibration, send scores > 0.8 to the
      hub; plus a Kubernetes workload (see --kube);
  5/5 publishes simulated vibration readings, about 1 in 10 anomalous.
Then it shows devices, deployments (ready N/M) and the anomaly events that
reach the hub, until Ctrl-C. Needs no external service and works offline.

Kubernetes (--kube): `auto` uses the cluster of a kubeconfig it finds
($KUBECONFIG, ~/.kube/config, /etc/rancher/k3s/k3s.yaml: a ConfigMap is
applied there), else the local control plane when tests/kube/build.sh has
built it (kube-apiserver on kine, controllers, kwok with two fake arm64
nodes: a 2-replica Deployment, a Service and a ConfigMap become ready there);
`local` builds the local control plane first if needed (about 15 minutes,
once); `off` runs the model only.

Everything lives in --dir (wiped at start): hub data, agent state, logs.
Under `cargo run`, a missing edge-agent binary is built first.";

/// Device id and label of the simulated device.
pub const DEVICE_ID: &str = "demo-pi-1";
pub const DEVICE_LABEL: (&str, &str) = ("site", "demo");
/// Name of the deployment the demo applies.
pub const DEPLOYMENT: &str = "demo";
/// The topic sensor readings go to on the device-local broker.
pub const SENSOR_TOPIC: &str = "sensors/vibration";

/// The reference anomaly model, compiled in so the demo runs from anywhere.
const MODEL: &[u8] = include_bytes!("../../../../models/vibration/vibration.onnx");
const MODEL_NAME: &str = "vibration";

/// Written into a directory the demo owns; only such directories are wiped.
const MARKER: &str = ".cloudcore-demo";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot prepare the demo directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} exists and was not created by the demo; remove it or pick another with --dir")]
    NotDemoDir { path: PathBuf },
    #[error("hub")]
    Hub(#[from] HubError),
    #[error("sensor simulation")]
    Sensor(#[from] SensorError),
    #[error("the device agent")]
    Agent(#[from] AgentError),
    #[error("{what} failed")]
    Api {
        what: &'static str,
        #[source]
        source: ClientError,
    },
    #[error("the local Kubernetes control plane")]
    ControlPlane(#[from] edgefleet_devcluster::Error),
    #[error("building the local Kubernetes control plane failed ({0}); see the output above")]
    Build(String),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the demo's Kubernetes workload goes (`--kube`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KubeMode {
    /// A found kubeconfig's cluster, else the local control plane if built.
    Auto,
    /// The local control plane, built first if it is not.
    Local,
    /// No Kubernetes workload.
    Off,
}

/// What `cloudcore demo` was asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Prepared by [`prepare_dir`].
    pub dir: PathBuf,
    pub readings_per_sec: u32,
    pub kube: KubeMode,
}

/// The cluster the agent applies the Kubernetes workload to.
enum Kube {
    /// The local control plane, started by the demo.
    Local(Box<ControlPlane>),
    /// A cluster of the user's (K3s on this node, or `$KUBECONFIG`'s).
    Found(PathBuf),
    /// None, and why.
    None(String),
}

impl Kube {
    fn kubeconfig(&self) -> Option<PathBuf> {
        match self {
            Kube::Local(cp) => Some(cp.kubeconfig()),
            Kube::Found(p) => Some(p.clone()),
            Kube::None(_) => None,
        }
    }
}

/// Creates `dir`, or empties it when a previous demo made it, and returns
/// its absolute path. Anything else already there is left alone (an error).
pub fn prepare_dir(dir: &Path) -> Result<PathBuf, DemoError> {
    let err = |source| DemoError::Dir {
        path: dir.to_owned(),
        source,
    };
    if dir.exists() {
        let ours = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir).map_err(err)?.next().is_none();
        if !ours && !empty {
            return Err(DemoError::NotDemoDir {
                path: dir.to_owned(),
            });
        }
        std::fs::remove_dir_all(dir).map_err(err)?;
    }
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::write(
        dir.join(MARKER),
        "made by `cloudcore demo`; wiped by its next run\n",
    )
    .map_err(err)?;
    std::path::absolute(dir).map_err(err)
}

/// Everything the demo started, so that it can all be stopped in order.
#[derive(Debug, Default)]
struct Parts {
    hub: Option<hub::Hub>,
    agent: Option<agent::Agent>,
    feeder: Option<tokio::task::JoinHandle<()>>,
    control_plane: Option<Box<ControlPlane>>,
}

impl Parts {
    /// Readings first, then the agent (so it goes offline cleanly), then the hub.
    async fn shutdown(mut self) {
        if let Some(f) = self.feeder.take() {
            f.abort();
        }
        if let Some(mut a) = self.agent.take() {
            let status = a.stop(Duration::from_secs(3)).await;
            println!("stopped edge-agent ({status})");
        }
        if let Some(h) = self.hub.take() {
            h.stop().await;
            println!("stopped the hub");
        }
        if let Some(mut cp) = self.control_plane.take() {
            cp.stop().await;
            println!("stopped the local Kubernetes control plane");
        }
    }
}

/// Runs the demo until `stop` fires (Ctrl-C, SIGTERM) or a step fails.
pub async fn run(opts: DemoOptions, stop: CancellationToken) -> Result<(), DemoError> {
    let mut parts = Parts::default();
    let outcome = tokio::select! {
        r = steps(&opts, &mut parts) => r,
        _ = stop.cancelled() => {
            println!("\nstopping…");
            Ok(())
        }
    };
    parts.shutdown().await;
    if outcome.is_ok() {
        println!(
            "demo stopped; its files stay in {} until the next run",
            opts.dir.display()
        );
    }
    outcome
}

/// Prints a numbered step: what happened, then indented details.
fn step(n: u32, what: &str, details: &[String]) {
    println!("\n{n}/5 {what}");
    for d in details {
        println!("    {d}");
    }
}

async fn steps(opts: &DemoOptions, parts: &mut Parts) -> Result<(), DemoError> {
    let dir = &opts.dir;
    println!("edgefleet demo — working directory {}", dir.display());

    // 1. The hub, in this process.
    let hub = parts.hub.insert(hub::Hub::start(&dir.join("hub")).await?);
    let edgectl = edgectl_bin();
    step(
        1,
        "hub started (cloudcore, in this process)",
        &[
            format!("REST API     {}", hub.api_url),
            format!(
                "dashboard    {}/ui/ (sign in with the token in {})",
                hub.api_url,
                hub.token_file.display()
            ),
            format!(
                "MQTT broker  {} (embedded; devices connect here)",
                hub.broker_url
            ),
            format!("data         {}", dir.join("hub").display()),
            format!("hub log      {}", dir.join("hub.log").display()),
            "look around from another terminal while the demo runs:".into(),
            format!(
                "  export EDGECTL_SERVER={} EDGECTL_TOKEN=$(cat {})",
                hub.api_url,
                hub.token_file.display()
            ),
            format!("  {edgectl} get devices"),
            format!("  {edgectl} get deployments -o wide"),
            format!("  {edgectl} events {DEVICE_ID}"),
        ],
    );

    // 2. The device's own MQTT broker, where its sensors publish.
    let sensors = sensor::start_broker()?;
    let sensors_url = format!("mqtt://{sensors}");
    step(
        2,
        "device-local sensor broker started",
        &[format!(
            "{sensors_url} — stands in for mosquitto on the Pi: loopback only, no auth"
        )],
    );

    // 3. A real edge-agent process, enrolled with the hub, and the cluster
    // its Kubernetes workload goes to.
    let bin = agent::locate().await?;
    let kube = kubernetes(opts.kube, dir).await?;
    let kube_line = match &kube {
        Kube::Local(cp) => format!(
            "Kubernetes: local control plane at {} (kine, kube-apiserver, controllers, \
             kwok with 2 fake arm64 nodes), kubeconfig {}",
            cp.url(),
            cp.kubeconfig().display()
        ),
        Kube::Found(path) => format!("K3s: kubeconfig {} found", path.display()),
        Kube::None(why) => format!("K3s: pending — {why}"),
    };
    let agent = parts.agent.insert(
        agent::Agent::enroll_and_start(
            &bin,
            &agent::Setup {
                dir: dir.join("agent"),
                log: dir.join("agent.log"),
                hub_url: hub.api_url.clone(),
                bootstrap_token: hub.bootstrap_token.clone(),
                local_broker_url: sensors_url.clone(),
                kubeconfig: kube.kubeconfig(),
            },
        )
        .await?,
    );
    hub.wait_online(agent).await?;
    step(
        3,
        &format!("edge-agent enrolled and running as device {DEVICE_ID}"),
        &[
            format!(
                "labels {}={}; online at the hub over MQTT",
                DEVICE_LABEL.0, DEVICE_LABEL.1
            ),
            format!("local broker {sensors_url} (EDGEFLEET_LOCAL_BROKER_URL)"),
            format!(
                "local HTTP {} (KServe v2: POST /v2/models/{MODEL_NAME}/infer)",
                agent.http_url
            ),
            format!(
                "edge-agent pid {}, log {}",
                agent.pid().unwrap_or_default(),
                agent.log.display()
            ),
            format!("state and config in {}", dir.join("agent").display()),
            kube_line,
        ],
    );
    let with_kube = match kube {
        Kube::Local(cp) => {
            parts.control_plane = Some(cp);
            WithKube::Local
        }
        Kube::Found(_) => WithKube::ConfigMap,
        Kube::None(_) => WithKube::No,
    };

    // 4. The model and the deployment, with the requests `edgectl` makes.
    println!("\n4/5 model pushed and deployment applied, as edgectl does it:");
    let model_file = write(dir, "vibration.onnx", MODEL)?;
    println!(
        "    $ edgectl models push {} --name {MODEL_NAME}",
        model_file.display()
    );
    let api = |what| move |source| DemoError::Api { what, source };
    let model = hub
        .client
        .push_model(MODEL_NAME, MODEL.to_vec())
        .await
        .map_err(api("edgectl models push"))?;
    println!(
        "    model/{MODEL_NAME} pushed: sha256 {} ({} bytes)",
        model.sha256, model.size
    );
    let manifest = manifest(&hex_sha256(MODEL), with_kube);
    let manifest_file = write(dir, "deployment.yaml", manifest.as_bytes())?;
    println!("    $ edgectl apply -f {}", manifest_file.display());
    let applied = hub
        .client
        .apply(DEPLOYMENT, &manifest)
        .await
        .map_err(api("edgectl apply"))?;
    println!("    deployment/{DEPLOYMENT} {}", applied.result.as_str());
    println!("    the manifest:");
    for line in manifest.lines() {
        println!("      {line}");
    }
    match with_kube {
        WithKube::Local => println!(
            "    Kubernetes: the `web` workload (2 replicas, a Service, a ConfigMap) \
             becomes ready on the fake nodes"
        ),
        WithKube::ConfigMap => println!("    K3s: the `hello` workload applies a ConfigMap there"),
        WithKube::No => {
            println!("    K3s: only the inference workload runs (see the K3s line above)")
        }
    }

    // 5. Simulated sensor readings on the device-local broker.
    parts.feeder = Some(tokio::spawn(sensor::feed(sensors, opts.readings_per_sec)));
    step(
        5,
        "simulated sensor readings flowing",
        &[format!(
            "{}/s on {SENSOR_TOPIC} at {sensors_url}, about 1 in 10 anomalous; the agent \
             scores each and sends scores > 0.8 to the hub",
            opts.readings_per_sec
        )],
    );

    // Then the live view, until Ctrl-C or a failure.
    view::run(hub, agent).await
}

/// How a user runs `edgectl`: the binary built next to this one, else cargo.
fn edgectl_bin() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.join("edgectl")))
        .filter(|p| p.exists())
        .map_or_else(
            || "cargo run -q -p cloudcore --bin edgectl --".into(),
            |p| p.display().to_string(),
        )
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, DemoError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|source| DemoError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Which Kubernetes workload the sample deployment carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WithKube {
    No,
    /// A ConfigMap only: the user's own cluster runs nothing of ours.
    ConfigMap,
    /// The local control plane: a 2-replica Deployment, its Service and a
    /// ConfigMap, ready on kwok's fake nodes.
    Local,
}

/// The sample deployment: the anomaly model on the device's sensor topic,
/// scores above 0.8 sent upstream; plus a Kubernetes workload.
fn manifest(model_sha256: &str, kube: WithKube) -> String {
    let (k, v) = DEVICE_LABEL;
    let mut m = format!(
        "apiVersion: edgefleet.io/v1
kind: Deployment
metadata: {{name: {DEPLOYMENT}}}
spec:
  selector:
    matchLabels: {{{k}: {v}}}
  workloads:
    - name: anomaly
      inference:
        model: {{name: {MODEL_NAME}, sha256: \"{model_sha256}\"}}
        input: {{mqtt: {{topic: {SENSOR_TOPIC}}}}}
        output: {{upstream: true, when: \"score > 0.8\"}}
"
    );
    let config_map = "          - apiVersion: v1
            kind: ConfigMap
            metadata: {name: edgefleet-demo, namespace: default}
            data: {greeting: \"hello from edgefleet\"}
";
    match kube {
        WithKube::No => {}
        WithKube::ConfigMap => {
            m.push_str("    - name: hello\n      kubernetes:\n        manifests:\n");
            m.push_str(config_map);
        }
        WithKube::Local => {
            m.push_str("    - name: web\n      kubernetes:\n        manifests:\n");
            m.push_str(config_map);
            m.push_str(
                "          - apiVersion: apps/v1
            kind: Deployment
            metadata: {name: web, namespace: default}
            spec:
              replicas: 2
              selector: {matchLabels: {app: web}}
              template:
                metadata: {labels: {app: web}}
                spec:
                  containers:
                    - {name: web, image: \"nginx:1.27\", ports: [{containerPort: 80}]}
          - apiVersion: v1
            kind: Service
            metadata: {name: web, namespace: default}
            spec:
              selector: {app: web}
              ports: [{port: 80, targetPort: 80}]
",
            );
        }
    }
    m
}

/// The cluster for the Kubernetes workload, as `--kube` asks.
async fn kubernetes(mode: KubeMode, dir: &Path) -> Result<Kube, DemoError> {
    let local_hint = "build a local control plane once with `bash tests/kube/build.sh` \
                      (about 15 minutes) or run with --kube local";
    if mode == KubeMode::Off {
        return Ok(Kube::None("--kube off".into()));
    }
    if mode == KubeMode::Auto {
        match find_kubeconfig() {
            Ok(path) => return Ok(Kube::Found(path)),
            Err(why) if edgefleet_devcluster::binaries().is_none() => {
                return Ok(Kube::None(format!("{why}; {local_hint}")));
            }
            Err(_) => {}
        }
    }
    let bin = match edgefleet_devcluster::binaries() {
        Some(bin) => bin,
        None => {
            println!("\nbuilding the local Kubernetes control plane (once; cached after)…");
            let script = edgefleet_devcluster::build_script();
            let status = tokio::process::Command::new("bash")
                .arg(&script)
                .status()
                .await
                .map_err(|e| DemoError::Build(format!("{}: {e}", script.display())))?;
            if !status.success() {
                return Err(DemoError::Build(status.to_string()));
            }
            edgefleet_devcluster::binaries()
                .ok_or_else(|| DemoError::Build("the binaries are not where it said".into()))?
        }
    };
    let mut cp = ControlPlane::prepare(&bin, &dir.join("kube"))?;
    cp.start().await?;
    Ok(Kube::Local(Box::new(cp)))
}

/// The kubeconfig the agent would use, or why there is none: `$KUBECONFIG`
/// (each path), `~/.kube/config`, then K3s's own `/etc/rancher/k3s/k3s.yaml`.
fn find_kubeconfig() -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = std::env::var("KUBECONFIG")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".kube/config"));
    }
    candidates.push(PathBuf::from("/etc/rancher/k3s/k3s.yaml"));
    if let Some(found) = candidates
        .iter()
        .find(|p| std::fs::File::open(p).is_ok_and(|f| f.metadata().is_ok_and(|m| m.is_file())))
    {
        return Ok(found.clone());
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(format!(
        "no readable kubeconfig found (tried $KUBECONFIG, {})",
        tried.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_is_a_valid_deployment() {
        for kube in [WithKube::No, WithKube::ConfigMap, WithKube::Local] {
            let m = manifest(&hex_sha256(MODEL), kube);
            let d = edgefleet_protocol::Deployment::from_yaml(&m).expect("valid manifest");
            assert_eq!(d.metadata.name, DEPLOYMENT);
            assert_eq!(
                d.spec.workloads.len(),
                if kube == WithKube::No { 1 } else { 2 }
            );
        }
    }

    #[test]
    fn only_demo_directories_are_wiped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("demo");
        let abs = prepare_dir(&dir).unwrap();
        std::fs::write(abs.join("old"), "x").unwrap();
        prepare_dir(&dir).unwrap();
        assert!(
            !abs.join("old").exists(),
            "a previous demo's files are wiped"
        );
        let other = tmp.path().join("mine");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("keep"), "x").unwrap();
        assert!(matches!(
            prepare_dir(&other),
            Err(DemoError::NotDemoDir { .. })
        ));
        assert!(other.join("keep").exists());
    }
}
