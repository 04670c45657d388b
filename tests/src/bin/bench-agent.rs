//! The agent's targets (docs/ARCHITECTURE.md), measured on the real release binaries:
//! idle RSS/PSS with no model, offline cold start to every stored workload
//! submitted to a real Kubernetes API server (kine + kube-apiserver, built
//! by tests/kube/build.sh): into a running, just reset API server, and
//! through a reboot where the API server comes up after the agent, side by
//! side; and the flush of 10,000 and
//! 100,000 outbox events after the uplink comes back — until the hub stored
//! them all and until the agent's outbox is empty, every row acknowledged by
//! the hub — through the embedded broker and mosquitto side by side. Writes
//! section `agent` of BENCHMARKS.md.
//!
//! ```text
//! cargo build --release -p cloudcore -p edge-agent && \
//!   cargo run --release -p edgefleet-tests --bin bench-agent \
//!   [-- --idle-secs 30 --cold-runs 10 --events 10000,100000]
//! ```
//!
//! The binaries are found next to this one (target/release), so build them
//! first, in release.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use edgefleet_tests::agent::{Agent, AgentOptions, install_crypto, outbox_room};
use edgefleet_tests::control_plane::ControlPlane;
use edgefleet_tests::hub::{Hub, HubOptions};
use edgefleet_tests::mosquitto::Mosquitto;
use serde_json::json;

const COMMAND: &str = "cargo build --release -p cloudcore -p edge-agent && \
                       cargo run --release -p edgefleet-tests --bin bench-agent";
const T: Duration = Duration::from_secs(30);
const MIB: f64 = 1024.0 * 1024.0;

/// Five objects of four kinds, as a small site deployment would have.
use edgefleet_tests::fixtures::BENCH_SITE as DEPLOYMENT;

/// (apiVersion, kind, namespace, name) of every object in [`DEPLOYMENT`].
const OBJECTS: &[(&str, &str, &str, &str)] = &[
    ("apps/v1", "Deployment", "demo", "web"),
    ("v1", "ConfigMap", "demo", "web-config"),
    ("v1", "Service", "demo", "web"),
    ("apps/v1", "DaemonSet", "demo", "collector"),
    ("v1", "ConfigMap", "demo", "collector-config"),
];

struct Args {
    idle_secs: u64,
    cold_runs: usize,
    events: Vec<usize>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        idle_secs: 30,
        cold_runs: 10,
        events: vec![10_000, 100_000],
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut text = || -> anyhow::Result<&String> {
            it.next().with_context(|| format!("{flag} needs a value"))
        };
        let number = |t: &str| -> anyhow::Result<u64> {
            t.parse()
                .with_context(|| format!("{flag}: {t:?} is not a number"))
        };
        match flag.as_str() {
            "--idle-secs" => a.idle_secs = number(text()?)?,
            "--cold-runs" => a.cold_runs = usize::try_from(number(text()?)?)?,
            "--events" => {
                a.events = text()?
                    .split(',')
                    .map(|t| Ok(usize::try_from(number(t)?)?))
                    .collect::<anyhow::Result<_>>()?;
            }
            other => anyhow::bail!(
                "unknown argument {other}; use --idle-secs N, --cold-runs N, --events N[,N…]"
            ),
        }
    }
    Ok(a)
}

/// `Rss` and `Pss` of a process in bytes, from /proc/PID/smaps_rollup.
fn rss_pss(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024)
    };
    Some((field("Rss:")?, field("Pss:")?))
}

fn threads(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

/// Nearest-rank percentile of sorted values.
fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

#[allow(clippy::cast_precision_loss)]
fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / MIB)
}

struct Idle {
    samples: usize,
    rss: (u64, u64, u64),
    pss: (u64, u64, u64),
    threads: u64,
}

/// An enrolled agent connected to a hub, no workloads: RSS/PSS sampled every
/// second for `secs` seconds after startup settled.
async fn idle_rss(secs: u64) -> anyhow::Result<Idle> {
    let hub = Hub::start().await;
    let mut agent = Agent::enroll_and_start(&hub, "bench-idle", &[("site", "idle")]).await;
    agent.wait_uplink(true).await;
    let pid = agent.proc.pid().context("agent pid")?;
    // Let startup settle (first heartbeat, status report, allocator).
    tokio::time::sleep(Duration::from_secs(5)).await;
    eprintln!("bench-agent: sampling idle memory of pid {pid} for {secs} s");
    let (mut rss, mut pss) = (Vec::new(), Vec::new());
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        let (r, p) = rss_pss(pid).context("read smaps_rollup of the agent")?;
        rss.push(r);
        pss.push(p);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let n_threads = threads(pid).unwrap_or(0);
    ensure!(agent.proc.is_running(), "the agent exited while idle");
    agent.kill().await;
    rss.sort_unstable();
    pss.sort_unstable();
    let summary = |v: &[u64]| (v[0], percentile(v, 50.0), v[v.len() - 1]);
    Ok(Idle {
        samples: rss.len(),
        rss: summary(&rss),
        pss: summary(&pss),
        threads: n_threads,
    })
}

/// Polls the API server until every object of [`OBJECTS`] exists; the
/// time since `since` when they all did.
async fn all_submitted(cp: &ControlPlane, since: Instant) -> anyhow::Result<Duration> {
    let admin = cp.admin().await;
    loop {
        let mut present = true;
        for (v, k, ns, n) in OBJECTS {
            if admin.get(v, k, Some(ns), n).await.is_none() {
                present = false;
                break;
            }
        }
        if present {
            return Ok(since.elapsed());
        }
        ensure!(
            since.elapsed() < T,
            "stored workloads not re-applied within {T:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// How an offline cold start meets the device's K3s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColdStart {
    /// The API server is up (just reset: datastore wiped); the agent is
    /// spawned into it. Timed from the spawn.
    IntoRunningApi,
    /// A reboot: the agent starts first, the API server (datastore wiped)
    /// after it. Timed from the API server's first ready `/readyz`.
    ApiComesUpAfter,
}

/// Stored workloads, hub down, K3s reset before every run, `runs` times.
/// `None` when the control plane is not built.
async fn cold_start(how: ColdStart, runs: usize) -> anyhow::Result<Option<Vec<Duration>>> {
    let Some(mut cp) = ControlPlane::start_api_only().await else {
        return Ok(None);
    };
    let mut hub = Hub::start().await;
    let mut agent = Agent::enroll_with(
        &hub,
        &[("site", "bench")],
        AgentOptions {
            device_id: Some(
                match how {
                    ColdStart::IntoRunningApi => "bench-cold",
                    ColdStart::ApiComesUpAfter => "bench-reboot",
                }
                .into(),
            ),
            kubeconfig: Some(cp.kubeconfig()),
            ..Default::default()
        },
    )
    .await;
    agent.start().await;
    let (code, body) = hub.put_deployment("cold", DEPLOYMENT).await;
    ensure!(code < 300, "PUT deployment: {code} {body}");
    all_submitted(&cp, Instant::now()).await?;
    // Uplink gone for good; every run starts from a wiped datastore.
    hub.kill().await;
    let mut times = Vec::with_capacity(runs);
    for run in 0..runs {
        agent.kill().await;
        cp.stop().await;
        cp.wipe();
        let elapsed = match how {
            ColdStart::IntoRunningApi => {
                cp.start_api().await;
                let started = Instant::now();
                agent.start().await;
                all_submitted(&cp, started).await?
            }
            ColdStart::ApiComesUpAfter => {
                agent.start().await;
                cp.start_api().await;
                all_submitted(&cp, cp.ready_at()).await?
            }
        };
        eprintln!(
            "bench-agent: cold start {how:?} {}/{runs}: {elapsed:?}",
            run + 1
        );
        times.push(elapsed);
    }
    agent.kill().await;
    Ok(Some(times))
}

struct Flush {
    broker: &'static str,
    events: usize,
    queue_time: Duration,
    /// Until the hub stored every event.
    at_hub: Duration,
    /// Until the agent's outbox was empty: every row acknowledged by the hub.
    drained: Duration,
    stored: usize,
    lost: usize,
    duplicated: usize,
}

/// `n` events queued while the uplink is down; from reconnect, the time
/// until the hub has stored all of them (its `events_stored` counter) and
/// until the agent's outbox is empty (`edgefleet_agent_outbox_depth`), both
/// polled every 10 ms; then the ids are checked through the REST events API.
async fn outbox_flush(
    hub: &Hub,
    broker_url: &str,
    broker: &'static str,
    n: usize,
) -> anyhow::Result<Flush> {
    let slug: String = broker
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    let device = format!("bench-outbox-{slug}-{n}");
    let opts = AgentOptions {
        device_id: Some(device.clone()),
        // Room for the backlog and the status report beside it.
        env: outbox_room(n + 1000, 1 << 30),
        ..Default::default()
    };
    let (mut agent, uplink) = Agent::enroll_behind(hub, broker_url, &[], opts).await;
    agent.start_then_cut(&uplink).await;

    // Four clients posting batches of 100 events.
    const BATCH: usize = 100;
    let queued = Instant::now();
    let url = format!("{}/v1/events", agent.http_url());
    let mut posters = Vec::new();
    for w in 0..4 {
        let url = url.clone();
        posters.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for start in (w * BATCH..n).step_by(4 * BATCH) {
                let body: Vec<serde_json::Value> = (start..(start + BATCH).min(n))
                    .map(|i| json!({"id": format!("ev-{i}"), "kind": "app.telemetry", "payload": {"i": i}}))
                    .collect();
                let r = http.post(&url).json(&body).send().await?;
                anyhow::ensure!(r.status().as_u16() == 202, "batch at {start}: {}", r.status());
            }
            anyhow::Ok(())
        }));
    }
    for p in posters {
        p.await.context("poster")??;
    }
    let queue_time = queued.elapsed();
    let depth = agent.metric("edgefleet_agent_outbox_depth").await;
    #[allow(clippy::cast_precision_loss)]
    let want = n as f64;
    ensure!(depth >= want, "outbox holds {depth} rows, expected {n}");
    let stored_before = hub.metric("edgefleet_hub_events_stored_total").await;

    let reconnect = Instant::now();
    uplink.set_down(false);
    let deadline = Duration::from_secs(300);
    let mut at_hub = None;
    let drained = loop {
        if at_hub.is_none()
            && hub.metric("edgefleet_hub_events_stored_total").await - stored_before >= want
        {
            at_hub = Some(reconnect.elapsed());
        }
        if at_hub.is_some() && agent.metric("edgefleet_agent_outbox_depth").await == 0.0 {
            break reconnect.elapsed();
        }
        ensure!(
            reconnect.elapsed() < deadline,
            "outbox of {n} not delivered and acknowledged after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let ids = hub.event_ids(&device).await;
    let unique: HashSet<&String> = ids.iter().collect();
    let expected: HashSet<String> = (0..n).map(|i| format!("ev-{i}")).collect();
    let lost = expected.iter().filter(|id| !unique.contains(*id)).count();
    agent.kill().await;
    Ok(Flush {
        broker,
        events: n,
        queue_time,
        at_hub: at_hub.unwrap_or(drained),
        drained,
        stored: unique.len(),
        lost,
        duplicated: ids.len() - unique.len(),
    })
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    install_crypto();
    let args = args()?;

    let idle = idle_rss(args.idle_secs).await?;
    let mut cold = cold_start(ColdStart::IntoRunningApi, args.cold_runs)
        .await?
        .context("the control plane is not built: run tests/kube/build.sh first")?;
    cold.sort_unstable();
    let mut cold_real = cold_start(ColdStart::ApiComesUpAfter, args.cold_runs).await?;
    if let Some(c) = cold_real.as_mut() {
        c.sort_unstable();
    }

    let mut flushes = Vec::new();
    {
        let hub = Hub::start().await;
        for &n in &args.events {
            flushes.push(outbox_flush(&hub, &hub.broker_url(), "embedded (rumqttd)", n).await?);
        }
    }
    let mosquitto = Mosquitto::start().await;
    if let Some(broker) = &mosquitto {
        let hub = Hub::start_with(HubOptions {
            external_broker: Some(broker.url()),
            ..Default::default()
        })
        .await;
        for &n in &args.events {
            flushes.push(outbox_flush(&hub, &broker.url(), "mosquitto", n).await?);
        }
    }

    let target_rss = 15.0 * MIB;
    #[allow(clippy::cast_precision_loss)]
    let rss_met = (idle.rss.1 as f64) <= target_rss;
    let cold_p50 = percentile(&cold, 50.0);
    let cold_max = cold[cold.len() - 1];
    let mut body = format!(
        "Release binaries (`edge-agent`, `cloudcore`), one agent, hub with its embedded broker \
         unless stated.\n\n\
         | what | measured | target | |\n|---|---|---|---|\n\
         | agent idle RSS, no model (VmRSS, median of {} samples over {} s; min–max) | **{}** ({}–{}) | ≤ 15 MiB | {} |\n\
         | agent idle PSS, same samples | {} ({}–{}) | | |\n\
         | offline cold start → {} stored objects submitted, hub down, K3s = a real kube-apiserver on kine/SQLite, up and just reset (datastore wiped) ({} runs; timed from the agent's spawn) | **p50 {}**, max {} | ≤ 300 ms | {} |\n",
        idle.samples,
        args.idle_secs,
        mib(idle.rss.1),
        mib(idle.rss.0),
        mib(idle.rss.2),
        if rss_met { "met" } else { "**missed**" },
        mib(idle.pss.1),
        mib(idle.pss.0),
        mib(idle.pss.2),
        OBJECTS.len(),
        cold.len(),
        ms(cold_p50),
        ms(cold_max),
        if cold_max <= Duration::from_millis(300) {
            "met"
        } else if cold_p50 <= Duration::from_millis(300) {
            "met at p50"
        } else {
            "**missed**"
        },
    );
    // The figure the same agent made against our own Kubernetes API
    // stand-in before it was replaced by the real control plane (it is gone
    // from the tree, so it cannot run beside these any more).
    body.push_str(
        "| *reference:* the same cold start against the deleted K3s API stand-in (`tests/src/kube_standin.rs`; 10 runs at 3b4e0ed, 2026-11-24) | p50 15 ms, max 17 ms | ≤ 300 ms | |\n",
    );
    match &cold_real {
        Some(real) => {
            let (p50, max) = (percentile(real, 50.0), real[real.len() - 1]);
            body.push_str(&format!(
                "| offline reboot → {} stored objects submitted, hub down, K3s = a real kube-apiserver on kine/SQLite, datastore wiped, agent started first ({} runs; timed from the API server's first ready `/readyz`) | **p50 {}**, max {} | ≤ 1 s | {} |\n",
                OBJECTS.len(),
                real.len(),
                ms(p50),
                ms(max),
                if max <= Duration::from_secs(1) { "met" } else { "**missed**" },
            ));
        }
        None => body.push_str(
            "| offline reboot on a real API server | not measured: control plane not built (tests/kube/build.sh) | | |\n",
        ),
    }
    for f in &flushes {
        // Issue targets: 10,000 drained in ≤ 2 s, 100,000 in ≤ 15 s
        // (target: ≤ 10 s to the hub for 10,000).
        let target = if f.events <= 10_000 {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(15)
        };
        let ok = f.drained <= target && f.lost == 0 && f.duplicated == 0;
        body.push_str(&format!(
            "| outbox flush, {} events queued offline, via {} | **{}** until every row is acknowledged by the hub and deleted ({} until all stored at the hub); {} at hub, {} lost, {} duplicated | drained ≤ {} s, 0 lost, 0 duplicated | {} |\n",
            f.events,
            f.broker,
            ms(f.drained),
            ms(f.at_hub),
            f.stored,
            f.lost,
            f.duplicated,
            target.as_secs(),
            if ok { "met" } else { "**missed**" },
        ));
    }
    if mosquitto.is_none() {
        body.push_str("| outbox flush via mosquitto | not measured: mosquitto not on PATH | | |\n");
    }
    body.push_str(&format!(
        "\nHow: idle = enrolled agent connected to the hub, no workloads, sampled every second \
         from /proc/PID/smaps_rollup after 5 s of settling ({} threads at the end). Cold start = \
         SIGKILL the agent, stop the API server, wipe its datastore, start it, spawn \
         `edge-agent run` with the hub down, time until all {} objects of the stored deployment \
         exist in the API (polled every 1 ms); sorted runs: {}. Offline reboot = the same with \
         the agent spawned before the API server. Outbox = uplink (a TCP proxy) cut, \
         the events posted to the agent's `POST /v1/events` by 4 clients in batches of 100 (took {}), \
         uplink restored, time until the hub's `events_stored` counter rose by the count and \
         until the agent's `edgefleet_agent_outbox_depth` was 0 (rows leave the outbox only on \
         the hub's signed acknowledgement; polled every 10 ms); lost/duplicated counted by id \
         through `GET /api/v1/devices/ID/events`.\n",
        idle.threads,
        OBJECTS.len(),
        cold.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", "),
        flushes
            .iter()
            .map(|f| format!("{} for {} via {}", ms(f.queue_time), f.events, f.broker))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    println!("{body}");
    let path = edgefleet_tests::bench::write_section("agent", "Agent", COMMAND, &body)?;
    eprintln!("bench-agent: wrote section `agent` of {}", path.display());
    for f in &flushes {
        ensure!(
            f.lost == 0 && f.duplicated == 0,
            "outbox via {}: {} lost, {} duplicated",
            f.broker,
            f.lost,
            f.duplicated
        );
    }
    Ok(())
}
