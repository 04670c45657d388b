//! The fault matrix, end to end with real processes, each scenario
//! against the embedded broker and against mosquitto:
//! 1. the broker restarts mid-rollout; a device first connecting after a
//!    broker crash still gets its desired state;
//! 2. the hub is SIGKILLed mid-rollout while several deployments change;
//! 3. one agent is partitioned (network namespace + veth, `fault_netns.rs`);
//! 4. the agent is SIGKILLed 20 times during apply and outbox bursts;
//! 5. the Kubernetes API turns slow, then unreachable, then comes back.
//!
//! Each device has a K3s of its own: a real API server on kine/SQLite (no
//! controllers: the workloads are ConfigMaps), behind a fault proxy that
//! slows it down or makes it refuse connections.
//!
//! Waits are deadlines on observable state; sleeps are only poll intervals,
//! retry backoffs and the random kill points of scenario 4 (seeded, the seed
//! is printed; `EDGEFLEET_FAULT_SEED=N` replays one).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use edgefleet_protocol::PublicKey;
use edgefleet_protocol::sign::{own_payload, signed_version};
use edgefleet_tests::agent::{Agent, AgentOptions, install_crypto};
use edgefleet_tests::control_plane::{Admin, ControlPlane};
use edgefleet_tests::eventually;
use edgefleet_tests::hub::{Hub, HubOptions};
use edgefleet_tests::mosquitto::Mosquitto;
use edgefleet_tests::proxy::FaultProxy;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(40);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broker {
    Embedded,
    Mosquitto,
}

/// A hub on the chosen broker; `None` when mosquitto is missing (skipped).
async fn start_hub(broker: Broker) -> Option<(Hub, Option<Mosquitto>)> {
    install_crypto();
    match broker {
        Broker::Embedded => Some((Hub::start().await, None)),
        Broker::Mosquitto => {
            let m = Mosquitto::start().await?;
            let hub = Hub::start_with(HubOptions {
                external_broker: Some(m.url()),
                ..Default::default()
            })
            .await;
            Some((hub, Some(m)))
        }
    }
}

/// A Deployment `name` for `site=plant-3` whose one Kubernetes workload is
/// one ConfigMap per entry of `configmaps`, each with `data: {v: value}`.
fn deployment(name: &str, configmaps: &[String], value: &str) -> String {
    let maps: Vec<(&str, &str, &str)> = configmaps
        .iter()
        .map(|cm| (cm.as_str(), "v", value))
        .collect();
    edgefleet_tests::fixtures::configmaps(name, ("site", "plant-3"), "cfg", "demo", &maps)
}

/// A device's own K3s: a real API server (on kine/SQLite; no controllers
/// are needed for ConfigMaps), reached through a fault proxy.
struct Site {
    _cp: ControlPlane,
    admin: Admin,
    proxy: FaultProxy,
    _dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
}

impl Site {
    /// `None` when the control plane is not built (skipped loudly).
    async fn start() -> Option<Self> {
        let cp = ControlPlane::start_api_only().await?;
        let admin = cp.admin().await;
        let proxy = FaultProxy::start(cp.url().trim_start_matches("https://")).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        let text = std::fs::read_to_string(cp.kubeconfig()).expect("kubeconfig");
        std::fs::write(
            &kubeconfig,
            text.replace(cp.url().trim_start_matches("https://"), &proxy.addr()),
        )
        .expect("write kubeconfig");
        Some(Self {
            _cp: cp,
            admin,
            proxy,
            _dir: dir,
            kubeconfig,
        })
    }

    /// `data.v` of ConfigMap `demo/name`.
    async fn cm_value(&self, name: &str) -> Option<String> {
        self.admin
            .get("v1", "ConfigMap", Some("demo"), name)
            .await
            .and_then(|o| o["data"]["v"].as_str().map(str::to_owned))
    }

    /// Whether every ConfigMap of `names` holds `value`.
    async fn all(&self, names: &[String], value: &str) -> bool {
        for n in names {
            if self.cm_value(n).await.as_deref() != Some(value) {
                return false;
            }
        }
        true
    }

    /// (name, `data.v`) of every ConfigMap in `demo`.
    async fn configmaps(&self) -> Vec<(String, String)> {
        let list = self
            .admin
            .api("v1", "ConfigMap", Some("demo"))
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        list.iter()
            .filter(|o| o.metadata.name.as_deref() != Some("kube-root-ca.crt"))
            .map(|o| {
                (
                    o.metadata.name.clone().unwrap_or_default(),
                    o.data["data"]["v"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }
}

/// An agent enrolled with `site=plant-3` against its own K3s, on a local
/// HTTP port kept across restarts; not started yet. `None`: skipped.
async fn enrolled_with_kube(hub: &Hub, id: &str) -> Option<(Agent, Site)> {
    let site = Site::start().await?;
    let agent = Agent::enroll_with(
        hub,
        &[("site", "plant-3")],
        AgentOptions {
            device_id: Some(id.into()),
            kubeconfig: Some(site.kubeconfig.clone()),
            http_port: Some(edgefleet_tests::free_port()),
            ..Default::default()
        },
    )
    .await;
    Some((agent, site))
}

/// [`enrolled_with_kube`], started.
async fn agent_with_kube(hub: &Hub, id: &str) -> Option<(Agent, Site)> {
    let (mut agent, site) = enrolled_with_kube(hub, id).await?;
    agent.start().await;
    Some((agent, site))
}

/// Waits until deployment `name` is applied in sync on `targeted` devices.
async fn wait_in_sync(hub: &Hub, name: &str, targeted: u64) {
    eventually(
        &format!("deployment {name} in sync on {targeted} devices"),
        T,
        || async {
            let (code, s) = hub.get(&format!("/deployments/{name}/status")).await;
            (code == 200 && s["targeted"] == targeted && s["inSync"] == targeted).then_some(())
        },
    )
    .await;
}

/// Every `(hubEpoch, revision)` the agent accepted, in the order it logged them.
fn accepted_versions(agent: &Agent) -> Vec<(u64, u64)> {
    agent
        .proc
        .output()
        .iter()
        .filter(|l| l.contains("desired state accepted"))
        .filter_map(|l| {
            let v = l.split("version=").nth(1)?.split_whitespace().next()?;
            let (e, r) = v.split_once('/')?;
            Some((e.parse().ok()?, r.parse().ok()?))
        })
        .collect()
}

/// The agent's stored desired revision equals the hub's for its device,
/// and the revisions it accepted strictly increased.
async fn assert_revisions_consistent(hub: &Hub, agent: &Agent, seen: &[(u64, u64)]) {
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "{}: accepted revisions do not strictly increase: {seen:?}",
        agent.device_id
    );
    let (_, d) = hub.get(&format!("/devices/{}", agent.device_id)).await;
    let st = agent.status().await;
    assert_eq!(
        st["desired"]["revision"], d["desiredRevision"],
        "{}: agent stores {} but the hub's desired revision is {d}",
        agent.device_id, st["desired"]
    );
    assert_eq!(
        seen.last().map(|v| v.1),
        d["desiredRevision"].as_u64(),
        "{}: last accepted revision is not the hub's",
        agent.device_id
    );
    let stale = agent
        .metric("edgefleet_agent_messages_rejected_total{reason=\"stale_revision\"}")
        .await;
    if stale > 0.0 {
        eprintln!(
            "{}: {stale} older documents arrived after a newer one and were refused",
            agent.device_id
        );
    }
}

// ------------------------------------------------ 1. broker restart mid-rollout

async fn broker_restart_mid_rollout(broker: Broker) {
    let Some((mut hub, mut mosquitto)) = start_hub(broker).await else {
        return;
    };
    let cms = ["roll-a".to_owned(), "roll-b".to_owned()];
    let Some((a1, k1)) = agent_with_kube(&hub, "pi-br-1").await else {
        return;
    };
    let Some((a2, k2)) = agent_with_kube(&hub, "pi-br-2").await else {
        return;
    };
    hub.deploy("roll", &deployment("roll", &cms, "v1")).await;
    wait_in_sync(&hub, "roll", 2).await;

    // Change, and take the broker away while the change is on its way.
    hub.deploy("roll", &deployment("roll", &cms, "v2")).await;
    match mosquitto.as_mut() {
        Some(m) => {
            // SIGKILL: retained messages since its last save are gone too.
            m.kill().await;
            // The hub takes changes while its broker is down...
            hub.deploy("roll", &deployment("roll", &cms, "v3")).await;
            m.start_again().await;
        }
        None => {
            // The embedded broker dies with its hub.
            hub.kill().await;
            hub.restart().await;
            hub.deploy("roll", &deployment("roll", &cms, "v3")).await;
        }
    }
    eventually(
        "both devices apply v3 after the broker restart",
        T,
        || async { (k1.all(&cms, "v3").await && k2.all(&cms, "v3").await).then_some(()) },
    )
    .await;
    wait_in_sync(&hub, "roll", 2).await;
    for a in [&a1, &a2] {
        assert_revisions_consistent(&hub, a, &accepted_versions(a)).await;
    }
}

edgefleet_tests::on_both_brokers!(broker_restart_mid_rollout, (Broker::Embedded, Broker::Mosquitto) => broker_restart_mid_rollout_embedded, broker_restart_mid_rollout_mosquitto);

/// A device enrolled just before a broker crash first connects after it.
/// The broker lost its retained documents (mosquitto SIGKILLed before it
/// saved them; the embedded broker's memory), so the hub must publish the
/// device's desired state again once it is reconnected.
async fn late_device_after_broker_crash(broker: Broker) {
    let Some((mut hub, mut mosquitto)) = start_hub(broker).await else {
        return;
    };
    let cms = ["late-a".to_owned()];
    hub.deploy("late", &deployment("late", &cms, "v1")).await;
    let Some((mut agent, kube)) = enrolled_with_kube(&hub, "pi-late").await else {
        return;
    };
    eventually("hub issued the new device's desired state", T, || async {
        let (_, d) = hub.get("/devices/pi-late").await;
        d["desiredRevision"].as_u64()
    })
    .await;
    match mosquitto.as_mut() {
        Some(m) => {
            m.kill().await;
            m.start_again().await;
        }
        None => {
            hub.kill().await;
            hub.restart().await;
        }
    }
    agent.start().await;
    eventually(
        "the late device applies its desired state after the broker crash",
        T,
        || async { (kube.cm_value("late-a").await.as_deref() == Some("v1")).then_some(()) },
    )
    .await;
    wait_in_sync(&hub, "late", 1).await;
    agent.kill().await;
}

// After reconnecting to a mosquitto that lost its state
// (`session_present=false`), the hub must republish every stored document,
// not only those it never handed to the broker.
edgefleet_tests::on_both_brokers!(late_device_after_broker_crash, (Broker::Embedded, Broker::Mosquitto) => late_device_after_broker_crash_embedded, late_device_after_broker_crash_mosquitto);

// ------------------------------------------------ 2. hub SIGKILL mid-rollout

/// `PUT /deployments/{name}` that reports a dead hub instead of panicking.
async fn try_put(
    http: &reqwest::Client,
    api: &str,
    token: &str,
    name: &str,
    yaml: String,
) -> Option<u16> {
    let r = http
        .put(format!("{api}/api/v1/deployments/{name}"))
        .bearer_auth(token)
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await
        .ok()?;
    Some(r.status().as_u16())
}

/// Every desired document published on a mosquitto, as `(device, hub
/// epoch, revision) -> signed payload`. Panics (and so stops) if one version is
/// published with two different contents, i.e. a revision number re-issued.
type Published = Arc<std::sync::Mutex<HashMap<(String, u64, u64), Value>>>;

struct DesiredSniffer {
    seen: Published,
    task: tokio::task::JoinHandle<()>,
}

impl DesiredSniffer {
    async fn start(broker_url: &str, hub_key: PublicKey) -> Self {
        let (host, port) = edgefleet_tests::device::host_port(broker_url);
        let mut opts = rumqttc::MqttOptions::new("fault-sniffer", host, port);
        opts.set_max_packet_size(2 << 20, 2 << 20);
        let (client, mut el) = rumqttc::AsyncClient::new(opts, 100);
        let seen: Published = Arc::default();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut ready = Some(ready_tx);
                loop {
                    match el.poll().await {
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                            let _ = client.try_subscribe(
                                "edgefleet/v1/devices/+/desired",
                                rumqttc::QoS::AtLeastOnce,
                            );
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                        Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                            let Some(id) = p.topic.split('/').nth(3) else {
                                continue;
                            };
                            // Sealed to the device: the sniffer checks the
                            // hub's signature and compares the signed bytes
                            // (a stored revision is republished byte for
                            // byte; a re-issued one is sealed anew).
                            let Some(v) = signed_version(&p.payload, &hub_key) else {
                                panic!("desired document on {} does not verify", p.topic)
                            };
                            let content: Value = own_payload(&p.payload)
                                .and_then(|b| serde_json::from_slice(&b).ok())
                                .expect("signed payload JSON");
                            let key = (id.to_owned(), v.hub_epoch, v.revision);
                            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                            if let Some(before) = seen.get(&key) {
                                assert_eq!(
                                    before, &content,
                                    "{key:?} published twice with different content"
                                );
                            }
                            seen.insert(key, content);
                        }
                        Ok(_) => {}
                        // The broker restarting: reconnect shortly.
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            })
        };
        tokio::time::timeout(T, ready_rx)
            .await
            .expect("sniffer subscribed")
            .expect("sniffer running");
        Self { seen, task }
    }

    /// How many distinct versions were published; fails if the sniffer
    /// stopped (a re-issued revision: see its panic above).
    fn versions(&self) -> usize {
        assert!(
            !self.task.is_finished(),
            "the sniffer stopped: a revision was re-issued with other content"
        );
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for DesiredSniffer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until each agent accepted more revisions than it had (`than`).
async fn accepted_more(agents: [&Agent; 2], than: [usize; 2]) {
    eventually("both devices accept new revisions", T, || async {
        agents
            .iter()
            .zip(than)
            .all(|(a, n)| accepted_versions(a).len() > n)
            .then_some(())
    })
    .await;
}

async fn hub_kill_mid_rollout(broker: Broker) {
    const DEPLOYMENTS: [&str; 3] = ["d0", "d1", "d2"];
    let Some((mut hub, mosquitto)) = start_hub(broker).await else {
        return;
    };
    // On mosquitto (anonymous here) a sniffer checks every document the hub
    // publishes: one content per version, across the crash.
    let sniffer = match &mosquitto {
        Some(m) => {
            let (code, v) = hub.get("/hub/key").await;
            assert_eq!(code, 200);
            let key = v["publicKey"]
                .as_str()
                .and_then(|k| PublicKey::from_base64(k).ok())
                .expect("hub key");
            Some(DesiredSniffer::start(&m.url(), key).await)
        }
        None => None,
    };
    let Some((a1, k1)) = agent_with_kube(&hub, "pi-hk-1").await else {
        return;
    };
    let Some((a2, k2)) = agent_with_kube(&hub, "pi-hk-2").await else {
        return;
    };
    let cms = |d: &str| vec![format!("{d}-cm")];

    // Changes keep coming, round-robin over three deployments, through the kill.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let (api, token) = (hub.api_url().to_owned(), hub.operator_token());
    let changer = {
        let (stop, done) = (stop.clone(), done.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let d = DEPLOYMENTS[i % DEPLOYMENTS.len()];
                let yaml = deployment(d, &cms(d), &format!("r{i}"));
                match try_put(&http, &api, &token, d, yaml).await {
                    Some(code) if code < 300 => {
                        done.fetch_add(1, Ordering::SeqCst);
                        i += 1;
                    }
                    Some(code) => panic!("PUT {d}: {code}"),
                    // The hub is down: try again shortly (bounded by `stop`).
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
    };
    let at_least = |n: usize| {
        let done = done.clone();
        async move {
            eventually(&format!("{n} deployment changes"), T, || async {
                (done.load(Ordering::SeqCst) >= n).then_some(())
            })
            .await;
        }
    };
    // Mid-rollout: both devices are taking in revisions when the hub dies,
    // and again after it is back.
    at_least(6).await;
    accepted_more([&a1, &a2], [0, 0]).await;
    hub.kill().await;
    let killed_at = done.load(Ordering::SeqCst);
    let before = [accepted_versions(&a1).len(), accepted_versions(&a2).len()];
    hub.restart().await;
    at_least(killed_at + 6).await;
    accepted_more([&a1, &a2], before).await;
    stop.store(true, Ordering::SeqCst);
    changer.await.expect("changer");

    for d in DEPLOYMENTS {
        hub.deploy(d, &deployment(d, &cms(d), "final")).await;
    }
    let all_cms: Vec<String> = DEPLOYMENTS.iter().map(|d| format!("{d}-cm")).collect();
    eventually("both devices converge on the final content", T, || async {
        (k1.all(&all_cms, "final").await && k2.all(&all_cms, "final").await).then_some(())
    })
    .await;
    for d in DEPLOYMENTS {
        wait_in_sync(&hub, d, 2).await;
    }
    for a in [&a1, &a2] {
        let seen = accepted_versions(a);
        eprintln!(
            "{}: accepted {} revisions: {seen:?}",
            a.device_id,
            seen.len()
        );
        assert_revisions_consistent(&hub, a, &seen).await;
    }
    if let Some(s) = &sniffer {
        let n = s.versions();
        eprintln!("sniffer: {n} distinct desired versions published, none re-issued");
        assert!(n >= 4, "the sniffer saw only {n} versions");
    }
}

edgefleet_tests::on_both_brokers!(hub_kill_mid_rollout, (Broker::Embedded, Broker::Mosquitto) => hub_sigkill_mid_rollout_embedded, hub_sigkill_mid_rollout_mosquitto);

// ------------------------------------------------ 4. agent SIGKILLed 20 times

/// splitmix64: enough randomness for kill points, and replayable.
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let seed = std::env::var("EDGEFLEET_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("fault matrix: kill points seeded with EDGEFLEET_FAULT_SEED={seed}");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `PRAGMA integrity_check` on the (dead) agent's state DB, read-only.
fn integrity_check(agent: &Agent) -> String {
    let path = agent.state_dir().join("agent.db");
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap_or_else(|e| panic!("integrity_check on {}: {e}", path.display()));
    rows.join("; ")
}

/// The ConfigMaps revision `round` wants: 2 to 4 of them, so revisions
/// both add and prune objects.
fn kill_round_configmaps(round: u64) -> Vec<String> {
    (0..2 + round % 3).map(|i| format!("burst-{i}")).collect()
}

async fn agent_killed_repeatedly(broker: Broker) {
    const KILLS: u64 = 20;
    let Some((hub, _mosquitto)) = start_hub(broker).await else {
        return;
    };
    let mut rng = Rng::seeded();
    let Some((mut agent, kube)) = agent_with_kube(&hub, "pi-kill").await else {
        return;
    };
    let url = format!("{}/v1/events", agent.http_url());

    // Two posters, batches of 20 events, each batch retried until 202: an
    // acknowledged event must reach the hub exactly once whatever the kills.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let mut posters = Vec::new();
    for w in 0..2 {
        let (url, stop, acked) = (url.clone(), stop.clone(), acked.clone());
        posters.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client");
            let mut batch = 0;
            while !stop.load(Ordering::SeqCst) {
                let ids: Vec<String> = (0..20).map(|i| format!("w{w}-b{batch}-{i}")).collect();
                let body: Vec<Value> = ids
                    .iter()
                    .map(|id| json!({"id": id, "kind": "app.telemetry", "payload": {"id": id}}))
                    .collect();
                loop {
                    match http.post(&url).json(&body).send().await {
                        Ok(r) if r.status().as_u16() == 202 => break,
                        Ok(r) => panic!("batch refused: {}", r.status()),
                        // Killed mid-request or not up yet: the same ids again.
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                acked.lock().unwrap_or_else(|e| e.into_inner()).extend(ids);
                batch += 1;
            }
        }));
    }

    // Slow the API a little so that kill points land inside apply passes.
    kube.proxy.set_delay(Duration::from_millis(25));
    for round in 1..=KILLS {
        let (code, _) = hub
            .put_deployment(
                "burst",
                &deployment("burst", &kill_round_configmaps(round), &format!("r{round}")),
            )
            .await;
        assert!(code < 300);
        if round > 1 {
            agent.start().await;
        }
        let wait = Duration::from_millis(rng.below(600));
        // A random kill point: not a synchronization, the fault itself.
        tokio::time::sleep(wait).await;
        agent.kill().await;
        let check = integrity_check(&agent);
        assert_eq!(check, "ok", "after kill {round} ({wait:?} in): {check}");
    }
    kube.proxy.set_delay(Duration::ZERO);
    agent.start().await;
    let before_stop = acked.lock().unwrap_or_else(|e| e.into_inner()).len();
    eventually(
        "posters make progress after the last restart",
        T,
        || async {
            (acked.lock().unwrap_or_else(|e| e.into_inner()).len() >= before_stop + 100)
                .then_some(())
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for p in posters {
        p.await.expect("poster");
    }
    let expected: HashSet<String> = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    eprintln!(
        "{} events acknowledged across {KILLS} kills",
        expected.len()
    );

    let final_cms = kill_round_configmaps(KILLS + 1);
    hub.deploy("burst", &deployment("burst", &final_cms, "final"))
        .await;
    eventually(
        "applied objects match the final desired state",
        T,
        || async {
            let all = kube.configmaps().await;
            let live: BTreeSet<String> = all
                .iter()
                .filter(|(_, v)| v == "final")
                .map(|(n, _)| n.clone())
                .collect();
            (live == final_cms.iter().cloned().collect() && all.len() == final_cms.len())
                .then_some(())
        },
    )
    .await;
    wait_in_sync(&hub, "burst", 1).await;
    eventually("every acknowledged event at the hub", T, || async {
        let ids = hub.event_ids("pi-kill").await;
        let got: HashSet<&String> = ids.iter().collect();
        expected.iter().all(|e| got.contains(e)).then_some(())
    })
    .await;
    let ids = hub.event_ids("pi-kill").await;
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for id in &ids {
        *counts.entry(id).or_default() += 1;
    }
    let dup: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(dup.is_empty(), "events duplicated at the hub: {dup:?}");
    let seen = accepted_versions(&agent);
    assert_revisions_consistent(&hub, &agent, &seen).await;
    agent.kill().await;
    assert_eq!(integrity_check(&agent), "ok");
}

edgefleet_tests::on_both_brokers!(agent_killed_repeatedly, (Broker::Embedded, Broker::Mosquitto) => agent_sigkilled_20_times_embedded, agent_sigkilled_20_times_mosquitto);

// ------------------------------------------------ 5. slow / unreachable K3s API

/// Rewrites `key = …` inside `[section]` of the agent's TOML config.
fn set_config(agent: &Agent, section: &str, key: &str, value: &str) {
    let path = agent.config_path();
    let text = std::fs::read_to_string(path).expect("read agent config");
    let header = format!("[{section}]");
    let start = text
        .find(&header)
        .unwrap_or_else(|| panic!("no {header} in\n{text}"));
    let end = text[start + header.len()..]
        .find("\n[")
        .map_or(text.len(), |i| start + header.len() + i);
    let body: String = text[start..end]
        .lines()
        .map(|l| {
            if l.split('=').next().map(str::trim) == Some(key) {
                format!("{key} = {value}")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        body.contains(&format!("{key} = {value}")),
        "no {key} in {header}"
    );
    let new = format!("{}{body}{}", &text[..start], &text[end..]);
    std::fs::write(path, new).expect("write agent config");
}

/// `/livez` and a `POST /v1/events` each answer within a second.
async fn assert_responsive(agent: &Agent, n: &mut usize) {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let r = http
        .get(format!("{}/livez", agent.http_url()))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("/livez answers");
    assert!(r.status().is_success());
    let livez = started.elapsed();
    *n += 1;
    let started = Instant::now();
    let r = http
        .post(format!("{}/v1/events", agent.http_url()))
        .timeout(Duration::from_secs(5))
        .json(&json!({"id": format!("slow-{n}"), "kind": "app.telemetry", "payload": {}}))
        .send()
        .await
        .expect("/v1/events answers");
    assert_eq!(r.status().as_u16(), 202);
    let events = started.elapsed();
    assert!(
        livez < Duration::from_secs(1) && events < Duration::from_secs(1),
        "agent unresponsive while K3s is slow: /livez {livez:?}, /v1/events {events:?}"
    );
}

fn workload_status(st: &Value) -> (String, String, String) {
    let w = &st["workloads"][0];
    let s = |k: &str| w[k].as_str().unwrap_or_default().to_owned();
    (s("sync"), s("health"), s("message"))
}

async fn slow_kube_api(broker: Broker) {
    let Some((hub, _mosquitto)) = start_hub(broker).await else {
        return;
    };
    let Some((mut agent, kube)) = enrolled_with_kube(&hub, "pi-slow").await else {
        return;
    };
    // A K3s request that takes longer than a second has failed; retries are
    // capped at two seconds so recovery shows quickly.
    set_config(&agent, "kube", "request_timeout_ms", "1000");
    set_config(&agent, "reconcile", "backoff_max_ms", "2000");
    agent.start().await;
    let cms = ["slow-cm".to_owned()];
    hub.deploy("slow", &deployment("slow", &cms, "v1")).await;
    eventually("healthy before the fault", T, || async {
        let (_, s) = hub.get("/deployments/slow/status").await;
        (s["healthy"] == 1).then_some(())
    })
    .await;
    let mut probes = 0;

    // Slow: every response 3 s late, beyond the agent's 1 s timeout.
    kube.proxy.set_delay(Duration::from_secs(3));
    hub.deploy("slow", &deployment("slow", &cms, "v2")).await;
    let deadline = Instant::now() + T;
    let message = loop {
        assert_responsive(&agent, &mut probes).await;
        let (sync, health, message) = workload_status(&agent.status().await);
        if sync == "Failed" && !message.is_empty() {
            assert_ne!(health, "Healthy", "{message}");
            break message;
        }
        assert!(
            Instant::now() < deadline,
            "no failure reported while K3s is slow"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("slow K3s reported as: {message}");
    // Our own deadline, kube-rs's read timeout (same bound) firing first,
    // or on a new connection the TLS handshake timing out.
    assert!(
        message.contains("did not answer within")
            || message.contains("timed out")
            || message.contains("TimedOut"),
        "{message}"
    );
    eventually(
        "hub counts the device failed (degraded rollout)",
        T,
        || async {
            let (_, s) = hub.get("/deployments/slow/status").await;
            (s["failed"] == 1 && s["healthy"] == 0).then_some(())
        },
    )
    .await;

    // Gone: nothing listens any more.
    kube.proxy.set_delay(Duration::ZERO);
    kube.proxy.set_refusing(true).await;
    let deadline = Instant::now() + T;
    loop {
        assert_responsive(&agent, &mut probes).await;
        let (sync, health, message) = workload_status(&agent.status().await);
        if sync == "Failed"
            && message.contains("unreachable")
            && message.contains("Connection refused")
        {
            assert_ne!(health, "Healthy", "{message}");
            eprintln!("refused K3s reported as: {health}, {message}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failure reported while K3s refuses"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(agent.metric("edgefleet_agent_kube_reachable").await, 0.0);

    // Back: the agent applies v2 and reports healthy again by itself.
    kube.proxy.set_refusing(false).await;
    eventually("v2 applied after K3s came back", T, || async {
        (kube.cm_value("slow-cm").await.as_deref() == Some("v2")).then_some(())
    })
    .await;
    eventually("healthy again at the hub", T, || async {
        let (_, s) = hub.get("/deployments/slow/status").await;
        (s["healthy"] == 1 && s["failed"] == 0 && s["inSync"] == 1).then_some(())
    })
    .await;
    let (sync, health, _) = workload_status(&agent.status().await);
    assert_eq!((sync.as_str(), health.as_str()), ("Synced", "Healthy"));
    eprintln!("{probes} responsiveness probes under a slow/unreachable K3s API");
    agent.kill().await;
}

edgefleet_tests::on_both_brokers!(slow_kube_api, (Broker::Embedded, Broker::Mosquitto) => slow_and_unreachable_kube_api_embedded, slow_and_unreachable_kube_api_mosquitto);
