//! The fleet simulator: N devices in one process, each enrolled through the
//! hub's REST API with its own ed25519 key and connected as its own MQTT
//! client (client id = username = device id, its own password). Each one
//! verifies the signed desired state with the pinned hub key, acknowledges
//! it with a signed in-sync status report, announces presence and sends
//! heartbeats, like a real agent with nothing to apply. Never shipped.
//!
//! One tokio task per device; a connection costs a socket and a few tens of
//! KiB, so 10,000 fit beside the hub on a 2-core machine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use edgefleet_protocol::{
    Channel, DesiredState, DeviceId, EnrollRequest, EnrollResponse, Expect, Health, Heartbeat,
    Presence, PresenceState, PublicKey, Rejection, Signer, StatusReport, SyncState, Topic, Version,
    WorkloadStatus, open_for,
};
use rand::Rng;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

/// How to build a simulated fleet.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub devices: usize,
    /// Device ids are `{prefix}-{index:05}`.
    pub id_prefix: String,
    /// Labels every device enrolls with.
    pub labels: BTreeMap<String, String>,
    /// When non-zero, each device also gets `site: s{index % sites}`.
    pub sites: usize,
    /// Enrollment requests in flight at once.
    pub enroll_concurrency: usize,
    /// MQTT connection handshakes in flight at once.
    pub connect_concurrency: usize,
    /// Heartbeat period (each device starts at a random phase).
    pub heartbeat: Duration,
    pub keep_alive: Duration,
    /// The first this many devices also get `ring: canary`.
    pub canary: usize,
    /// Devices that fail a chosen generation of a deployment.
    pub fail: Option<FailPlan>,
}

/// A chosen share of the fleet reports a generation's workloads failed.
#[derive(Debug, Clone)]
pub struct FailPlan {
    pub deployment: String,
    pub generation: u64,
    /// Share of devices (0–1), picked by a hash of the device id: the same
    /// devices on every run.
    pub fraction: f64,
    /// `true`: report Synced but never Healthy (a health timeout);
    /// `false`: report Failed.
    pub never_healthy: bool,
}

impl FailPlan {
    /// Whether device `id` is one of the failing ones.
    pub fn picks(&self, id: &str) -> bool {
        // FNV-1a: stable across runs and platforms.
        let h = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (h % 10_000) as f64 / 10_000.0 < self.fraction
    }
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            devices: 100,
            id_prefix: "sim".into(),
            labels: BTreeMap::from([("fleet".to_owned(), "sim".to_owned())]),
            sites: 0,
            enroll_concurrency: 32,
            connect_concurrency: 128,
            heartbeat: Duration::from_secs(30),
            keep_alive: Duration::from_secs(60),
            canary: 0,
            fail: None,
        }
    }
}

/// Fleet-wide counters (all devices together).
#[derive(Debug, Default)]
pub struct Counters {
    /// MQTT sessions established (ConnAcks), reconnects included.
    pub connects: AtomicU64,
    /// Connection errors seen by the event loops (each is retried).
    pub connection_errors: AtomicU64,
    /// Publishes the devices sent (status, presence, heartbeats).
    pub sent: AtomicU64,
    /// Publishes the devices received.
    pub received: AtomicU64,
    /// Desired documents that verified and were newer than the last one.
    pub verified: AtomicU64,
    /// Desired documents refused by `protocol::open` for anything but
    /// staleness (a redelivered retained document is stale, not refused).
    pub refused: AtomicU64,
    /// Hub keys pinned by following a rotation's announcements.
    pub hub_keys_followed: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// A device's latest acknowledgement: the revision it verified and when its
/// in-sync status report was handed to its MQTT client.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pub revision: u64,
    pub at: Instant,
}

#[derive(Debug)]
struct Shared {
    counters: Counters,
    acks: Vec<Mutex<Option<Ack>>>,
    /// Every (deployment, generation) each device was given.
    received: Vec<Mutex<std::collections::BTreeSet<(String, u64)>>>,
    /// Each device's generation of each deployment in its newest document.
    current: Vec<Mutex<BTreeMap<String, u64>>>,
    connected: Vec<AtomicBool>,
    connect_gate: Semaphore,
}

impl Shared {
    fn record_ack(&self, idx: usize, revision: u64) {
        if let Ok(mut a) = self.acks[idx].lock() {
            *a = Some(Ack {
                revision,
                at: Instant::now(),
            });
        }
    }
}

#[derive(Debug)]
enum Control {
    /// Drop the connection and connect again (a new MQTT session).
    Reconnect,
    /// Disconnect cleanly and end the device task.
    Stop,
    /// Disconnect cleanly and stay away until `Online`.
    Offline,
    Online,
}

/// One simulated device as the caller sees it.
#[derive(Debug)]
pub struct SimDevice {
    pub id: DeviceId,
    control: mpsc::UnboundedSender<Control>,
}

/// A running simulated fleet. Dropping it aborts every device task.
#[derive(Debug)]
pub struct Fleet {
    pub devices: Vec<SimDevice>,
    /// The hub key every device pinned at enrollment.
    pub hub_key: PublicKey,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

/// What one device needs to run.
struct Identity {
    idx: usize,
    id: DeviceId,
    key: Signer,
    enrolled: EnrollResponse,
}

/// Enrolls one device through `POST /api/v1/enroll`, retrying transient
/// failures (a busy hub) a few times.
pub async fn enroll(
    http: &reqwest::Client,
    api_url: &str,
    bootstrap_token: &str,
    id: &DeviceId,
    key: &Signer,
    labels: &BTreeMap<String, String>,
) -> anyhow::Result<EnrollResponse> {
    let req = EnrollRequest {
        token: bootstrap_token.to_owned(),
        public_key: key.public().to_base64(),
        device_id: Some(id.clone()),
        labels: labels.clone(),
        hostname: Some(format!("{id}.sim")),
        arch: std::env::consts::ARCH.into(),
        agent_version: "fleet-sim".into(),
    };
    let mut last = None;
    for attempt in 0..5u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
        }
        match http
            .post(format!("{api_url}/api/v1/enroll"))
            .json(&req)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                return r.json().await.context("enroll response is not JSON");
            }
            Ok(r) if r.status().is_client_error() => {
                let code = r.status();
                bail!(
                    "enrolling {id} refused ({code}): {}",
                    r.text().await.unwrap_or_default()
                );
            }
            Ok(r) => last = Some(anyhow::anyhow!("enrolling {id}: HTTP {}", r.status())),
            Err(e) => last = Some(anyhow::Error::new(e).context(format!("enrolling {id}"))),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("enrolling {id} failed")))
}

impl Fleet {
    /// Enrolls `opts.devices` devices against the hub at `api_url` (with at
    /// most `enroll_concurrency` requests in flight) and starts them; they
    /// connect in the background (see [`Fleet::wait_connected`]).
    pub async fn start(
        api_url: &str,
        bootstrap_token: &str,
        opts: &SimOptions,
    ) -> anyhow::Result<Self> {
        crate::install_crypto();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(opts.enroll_concurrency)
            .timeout(Duration::from_secs(60))
            .build()
            .context("HTTP client")?;
        let gate = Arc::new(Semaphore::new(opts.enroll_concurrency.max(1)));
        let mut enrolling = JoinSet::new();
        for idx in 0..opts.devices {
            let id = DeviceId::new(format!("{}-{idx:05}", opts.id_prefix))
                .with_context(|| format!("device id prefix {:?}", opts.id_prefix))?;
            let mut labels = opts.labels.clone();
            if opts.sites > 0 {
                labels.insert("site".into(), format!("s{}", idx % opts.sites));
            }
            if idx < opts.canary {
                labels.insert("ring".into(), "canary".into());
            }
            let (http, gate, url, token) = (
                http.clone(),
                gate.clone(),
                api_url.to_owned(),
                bootstrap_token.to_owned(),
            );
            enrolling.spawn(async move {
                let _permit = gate.acquire_owned().await?;
                let key = Signer::generate();
                let enrolled = enroll(&http, &url, &token, &id, &key, &labels).await?;
                anyhow::Ok(Identity {
                    idx,
                    id,
                    key,
                    enrolled,
                })
            });
        }
        let mut identities = Vec::with_capacity(opts.devices);
        while let Some(r) = enrolling.join_next().await {
            identities.push(r.context("enrollment task")??);
        }
        identities.sort_by_key(|i| i.idx);
        let Some(first) = identities.first() else {
            bail!("a fleet needs at least one device");
        };
        let hub_key = PublicKey::from_base64(&first.enrolled.hub_public_key)
            .context("the hub's public key from enrollment")?;

        let shared = Arc::new(Shared {
            counters: Counters::default(),
            acks: (0..opts.devices).map(|_| Mutex::new(None)).collect(),
            received: (0..opts.devices).map(|_| Mutex::default()).collect(),
            current: (0..opts.devices).map(|_| Mutex::default()).collect(),
            connected: (0..opts.devices).map(|_| AtomicBool::new(false)).collect(),
            connect_gate: Semaphore::new(opts.connect_concurrency.max(1)),
        });
        let mut tasks = JoinSet::new();
        let mut devices = Vec::with_capacity(opts.devices);
        for ident in identities {
            let (tx, rx) = mpsc::unbounded_channel();
            devices.push(SimDevice {
                id: ident.id.clone(),
                control: tx,
            });
            let dev = DeviceTask {
                ident,
                hub_key: hub_key.clone(),
                shared: shared.clone(),
                heartbeat: opts.heartbeat,
                keep_alive: opts.keep_alive,
                current: None,
                fail: opts.fail.clone(),
                last_report: None,
            };
            tasks.spawn(dev.run(rx));
        }
        Ok(Self {
            devices,
            hub_key,
            shared,
            tasks,
        })
    }

    /// [`Fleet::start`], then waits until every device is connected.
    pub async fn start_connected(
        api_url: &str,
        bootstrap_token: &str,
        opts: &SimOptions,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        raise_open_file_limit();
        let fleet = Self::start(api_url, bootstrap_token, opts).await?;
        fleet.wait_connected(timeout).await?;
        Ok(fleet)
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Devices with an established MQTT session right now.
    pub fn connected(&self) -> usize {
        self.shared
            .connected
            .iter()
            .filter(|c| c.load(Ordering::Relaxed))
            .count()
    }

    /// Waits until every device has an MQTT session.
    pub async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.connected();
            if n == self.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "only {n} of {} devices connected within {timeout:?} ({} connection errors)",
                    self.len(),
                    Counters::get(&self.counters().connection_errors)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every device's latest acknowledgement, by index.
    pub fn acks(&self) -> Vec<Option<Ack>> {
        self.shared
            .acks
            .iter()
            .map(|a| a.lock().ok().and_then(|a| *a))
            .collect()
    }

    /// Waits until every device acknowledged `revision` (or a newer one);
    /// returns each device's acknowledgement time. Polls every 2 ms.
    pub async fn wait_acked(
        &self,
        revision: u64,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Instant>> {
        let deadline = Instant::now() + timeout;
        loop {
            let acks = self.acks();
            let done: Vec<Instant> = acks
                .iter()
                .filter_map(|a| a.filter(|a| a.revision >= revision).map(|a| a.at))
                .collect();
            if done.len() == self.len() {
                return Ok(done);
            }
            if Instant::now() > deadline {
                bail!(
                    "only {} of {} devices acknowledged revision {revision} within {timeout:?}",
                    done.len(),
                    self.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// How many devices were ever given `generation` of `deployment`.
    pub fn received(&self, deployment: &str, generation: u64) -> usize {
        let key = (deployment.to_owned(), generation);
        self.shared
            .received
            .iter()
            .filter(|r| r.lock().is_ok_and(|r| r.contains(&key)))
            .count()
    }

    /// How many devices' newest verified document holds `generation` of
    /// `deployment`.
    pub fn running(&self, deployment: &str, generation: u64) -> usize {
        self.shared
            .current
            .iter()
            .filter(|c| {
                c.lock()
                    .is_ok_and(|c| c.get(deployment) == Some(&generation))
            })
            .count()
    }

    /// Waits until every device's newest document holds `generation` of
    /// `deployment`; polls every 2 ms.
    pub async fn wait_running(
        &self,
        deployment: &str,
        generation: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.running(deployment, generation) < self.len() {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {} devices run {deployment} generation {generation} after {timeout:?}",
                    self.running(deployment, generation),
                    self.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// Takes device `idx` off the network (a clean disconnect: it says
    /// offline) or brings it back.
    pub fn set_offline(&self, idx: usize, offline: bool) {
        if let Some(d) = self.devices.get(idx) {
            let _ = d.control.send(if offline {
                Control::Offline
            } else {
                Control::Online
            });
        }
    }

    /// Drops device `idx`'s connection; it connects again at once with a
    /// new session (and gets its retained desired state again).
    pub fn reconnect(&self, idx: usize) {
        if let Some(d) = self.devices.get(idx) {
            let _ = d.control.send(Control::Reconnect);
        }
    }

    /// Disconnects every device cleanly (offline presence) and ends them.
    pub async fn stop(mut self) {
        for d in &self.devices {
            let _ = d.control.send(Control::Stop);
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
    }
}

struct DeviceTask {
    ident: Identity,
    hub_key: PublicKey,
    shared: Arc<Shared>,
    heartbeat: Duration,
    keep_alive: Duration,
    /// The newest desired version verified (kept across reconnects, like an
    /// agent's persisted state).
    current: Option<Version>,
    fail: Option<FailPlan>,
    /// The last signed status report, sent again on every connect (an
    /// agent resends its status until the hub acknowledges it: a report
    /// lost with a broker must not leave the hub waiting).
    last_report: Option<Vec<u8>>,
}

enum Next {
    Reconnect,
    Stop,
    Offline,
}

impl DeviceTask {
    fn topic(&self, c: Channel) -> String {
        Topic::new(self.ident.id.clone(), c).to_string()
    }

    fn options(&self, session: u64) -> MqttOptions {
        let (host, port) = crate::device::host_port(&self.ident.enrolled.broker.url);
        let mut o = MqttOptions::new(self.ident.id.as_str(), host, port);
        let will = self.ident.key.seal(&Presence {
            device_id: self.ident.id.clone(),
            state: PresenceState::Offline,
            session,
            at_ms: edgefleet_protocol::now_ms(),
        });
        o.set_keep_alive(self.keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(256 * 1024, 64 * 1024)
            .set_inflight(16)
            .set_request_channel_capacity(16)
            .set_credentials(
                &self.ident.enrolled.broker.username,
                &self.ident.enrolled.broker.password,
            )
            .set_last_will(LastWill::new(
                self.topic(Channel::Presence),
                will,
                QoS::AtLeastOnce,
                Channel::Presence.retained(),
            ));
        o
    }

    async fn run(mut self, mut control: mpsc::UnboundedReceiver<Control>) {
        loop {
            let session: u64 = rand::thread_rng().r#gen();
            let (client, mut eventloop) = AsyncClient::new(self.options(session), 16);
            // rumqttc gives up on a ConnAck after 5 s; a broker accepting
            // thousands of connections at once is slower than that, and an
            // abandoned handshake only adds a retry to the queue.
            eventloop.network_options.set_connection_timeout(30);
            let next = self
                .session(&client, eventloop, session, &mut control)
                .await;
            self.shared.connected[self.ident.idx].store(false, Ordering::Relaxed);
            match next {
                Next::Reconnect => continue,
                Next::Stop => return,
                Next::Offline => loop {
                    match control.recv().await {
                        Some(Control::Online | Control::Reconnect) => break,
                        Some(Control::Offline) => {}
                        Some(Control::Stop) | None => return,
                    }
                },
            }
        }
    }

    /// One MQTT session, until asked to reconnect or stop.
    async fn session(
        &mut self,
        client: &AsyncClient,
        mut eventloop: EventLoop,
        session: u64,
        control: &mut mpsc::UnboundedReceiver<Control>,
    ) -> Next {
        let phase = rand::thread_rng().gen_range(0..self.heartbeat.as_millis().max(1) as u64);
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_millis(phase),
            self.heartbeat,
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = Instant::now();
        let shared = self.shared.clone();
        // Handshakes are gated so 10,000 devices do not all connect at once.
        let mut permit = shared.connect_gate.acquire().await.ok();
        loop {
            tokio::select! {
                ev = eventloop.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        permit = None;
                        self.shared.connected[self.ident.idx].store(true, Ordering::Relaxed);
                        self.shared.counters.connects.fetch_add(1, Ordering::Relaxed);
                        let _ = client.try_subscribe(self.topic(Channel::Desired), QoS::AtLeastOnce);
                        self.presence(client, PresenceState::Online, session);
                        if let Some(report) = self.last_report.clone() {
                            self.publish(client, Channel::Status, report);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        self.shared.counters.received.fetch_add(1, Ordering::Relaxed);
                        if p.topic == self.topic(Channel::Desired) && !p.payload.is_empty() {
                            self.on_desired(client, &p.payload);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        drop(permit.take());
                        self.shared.connected[self.ident.idx].store(false, Ordering::Relaxed);
                        self.shared.counters.connection_errors.fetch_add(1, Ordering::Relaxed);
                        // rumqttc reconnects on the next poll; back off with
                        // jitter so a refused fleet does not hammer the broker.
                        let ms = rand::thread_rng().gen_range(250..1_000);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        permit = shared.connect_gate.acquire().await.ok();
                    }
                },
                _ = heartbeat.tick() => {
                    if self.shared.connected[self.ident.idx].load(Ordering::Relaxed) {
                        let hb = self.heartbeat_msg(started);
                        self.publish(client, Channel::Heartbeat, hb);
                    }
                }
                c = control.recv() => {
                    let next = match c {
                        Some(Control::Reconnect) => Next::Reconnect,
                        Some(Control::Online) => continue,
                        Some(Control::Offline) => Next::Offline,
                        Some(Control::Stop) | None => Next::Stop,
                    };
                    drop(permit.take());
                    // A clean stop says offline itself (a will only fires on
                    // an unclean drop); a reconnect drops the socket.
                    if matches!(next, Next::Stop | Next::Offline) {
                        self.presence(client, PresenceState::Offline, session);
                        edgefleet_daemon::mqtt::disconnect(
                            client,
                            &mut eventloop,
                            Duration::from_secs(2),
                        )
                        .await;
                    }
                    return next;
                }
            }
        }
    }

    /// Publishes this device's signed presence for `session`.
    fn presence(&self, client: &AsyncClient, state: PresenceState, session: u64) {
        let payload = self.ident.key.seal(&Presence {
            device_id: self.ident.id.clone(),
            state,
            session,
            at_ms: edgefleet_protocol::now_ms(),
        });
        self.publish(client, Channel::Presence, payload);
    }

    fn publish(&self, client: &AsyncClient, channel: Channel, payload: Vec<u8>) -> bool {
        let qos = match channel.qos() {
            0 => QoS::AtMostOnce,
            _ => QoS::AtLeastOnce,
        };
        let ok = client
            .try_publish(self.topic(channel), qos, channel.retained(), payload)
            .is_ok();
        if ok {
            self.shared.counters.sent.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Verifies a desired document with the pinned hub key and, when it is
    /// new, reports every workload Synced and Healthy.
    fn on_desired(&mut self, client: &AsyncClient, payload: &[u8]) {
        let expect = Expect::device(&self.ident.id).newer_than(self.current);
        // A rotated hub key, announced by the pinned one: pinned, as the
        // agent does.
        if let Ok(Some(next)) = edgefleet_protocol::rotation::signing_key(
            payload,
            edgefleet_protocol::MessageKind::Desired,
            &self.hub_key,
        ) {
            self.hub_key = next;
            self.shared
                .counters
                .hub_keys_followed
                .fetch_add(1, Ordering::Relaxed);
        }
        let doc: DesiredState = match open_for(payload, &self.hub_key, &expect, &self.ident.key) {
            Ok(d) => d,
            Err(Rejection::StaleRevision { .. }) => return,
            Err(e) => {
                self.shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "fleet-sim: {} refused a desired document: {e}",
                    self.ident.id
                );
                return;
            }
        };
        self.shared
            .counters
            .verified
            .fetch_add(1, Ordering::Relaxed);
        self.current = Some(doc.version());
        if let (Ok(mut r), Ok(mut c)) = (
            self.shared.received[self.ident.idx].lock(),
            self.shared.current[self.ident.idx].lock(),
        ) {
            c.clear();
            for w in &doc.workloads {
                r.insert((w.deployment.clone(), w.generation));
                c.insert(w.deployment.clone(), w.generation);
            }
        }
        let failing = |w: &edgefleet_protocol::DesiredWorkload| {
            self.fail.as_ref().is_some_and(|f| {
                f.deployment == w.deployment
                    && f.generation == w.generation
                    && f.picks(self.ident.id.as_str())
            })
        };
        let never_healthy = self.fail.as_ref().is_some_and(|f| f.never_healthy);
        // An `agent` workload: the device runs its version, or (failing)
        // reverted it as a real agent's supervisor does.
        let mut agent_version = "fleet-sim".to_owned();
        let mut update_failed = None;
        for w in &doc.workloads {
            if let Some(a) = &w.workload.agent {
                if failing(w) {
                    update_failed = Some(edgefleet_protocol::UpdateFailure {
                        version: a.version.clone(),
                        reason: "fleet-sim: the release exited at once (exit status: 1) before committing".into(),
                        at_ms: edgefleet_protocol::now_ms(),
                    });
                } else {
                    agent_version = a.version.clone();
                }
            }
        }
        let report = StatusReport {
            device_id: self.ident.id.clone(),
            applied: Some(doc.version()),
            reported_at_ms: edgefleet_protocol::now_ms(),
            workloads: doc
                .workloads
                .iter()
                .map(|w| match (failing(w), never_healthy) {
                    (false, _) => WorkloadStatus {
                        name: w.workload.name.clone(),
                        sync: SyncState::Synced,
                        health: Health::Healthy,
                        message: None,
                    },
                    (true, true) => WorkloadStatus {
                        name: w.workload.name.clone(),
                        sync: SyncState::Synced,
                        health: Health::Progressing,
                        message: Some("fleet-sim: never becomes Healthy".into()),
                    },
                    (true, false) => WorkloadStatus {
                        name: w.workload.name.clone(),
                        sync: SyncState::Failed,
                        health: Health::Degraded,
                        message: Some(match (&w.workload.agent, &update_failed) {
                            (Some(_), Some(u)) => {
                                format!(
                                    "UpdateFailed: agent {} was reverted: {}",
                                    u.version, u.reason
                                )
                            }
                            _ => format!(
                                "fleet-sim: generation {} fails on this device",
                                w.generation
                            ),
                        }),
                    },
                })
                .collect(),
            message: None,
            agent_version,
            k3s_version: None,
            desired_rejected: None,
            update_failed,
            unstored: false,
            hub_key_id: Some(self.hub_key.kid().0.clone()),
        };
        let sealed = self.ident.key.seal(&report);
        self.last_report = Some(sealed.clone());
        if self.publish(client, Channel::Status, sealed) {
            self.shared.record_ack(self.ident.idx, doc.revision);
        }
    }

    fn heartbeat_msg(&self, started: Instant) -> Vec<u8> {
        self.ident.key.seal(&Heartbeat {
            device_id: self.ident.id.clone(),
            at_ms: edgefleet_protocol::now_ms(),
            uptime_s: started.elapsed().as_secs(),
            cpu_percent: 1.0,
            mem_used_bytes: 256 << 20,
            mem_total_bytes: 1 << 30,
            disk_used_bytes: 4 << 30,
            disk_total_bytes: 32 << 30,
            disk_pressure: false,
            temperature_c: None,
            agent_rss_bytes: 12 << 20,
            agent_version: "fleet-sim".into(),
            k3s_version: None,
            outbox_depth: 0,
            outbox_dropped: 0,
        })
    }
}

/// CPU time and memory of a process, from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime, seconds.
    pub cpu_s: f64,
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// VmHWM (peak RSS), KiB.
    pub hwm_kib: u64,
}

/// Samples process `pid` (`None` if it is gone).
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, in clock ticks (100 Hz on Linux).
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Some(ProcSample {
        cpu_s: ticks as f64 / 100.0,
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
    })
}

/// The `p`-th percentile (0–100, nearest rank) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Raises this process's soft open-file limit to the hard one (every
/// simulated device is a socket); returns the new soft limit.
pub fn raise_open_file_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).expect("/proc/self");
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib, "{s:?}");
    }
}
