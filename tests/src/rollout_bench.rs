//! `fleet-sim rollout`: staged rollouts on a simulated fleet against a
//! release hub, side by side in one invocation: a good generation through
//! three waves (canary of 10 by label, 10 %, the rest; no bake), a
//! generation that fails on 30 % of devices, and the same change without a
//! rollout block (all at once) as the baseline.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use edgefleet_api::{RolloutState, RolloutStatus};

use crate::fixtures::sim_deployment;
use crate::hub::{Hub, HubOptions};
use crate::sim::{FailPlan, Fleet, SimOptions, percentile};

const NAME: &str = "bench-roll";
const PLAIN: &str = "bench-plain";
const T: Duration = Duration::from_secs(120);
/// The generation that fails (1 good from nothing, 2 good, 3 bad).
const BAD: u64 = 3;

/// Polls `name`'s rollout every 10 ms until `generation`'s has ended.
pub async fn ended(hub: &Hub, name: &str, generation: u64) -> anyhow::Result<RolloutStatus> {
    let client = hub.client();
    let deadline = Instant::now() + T;
    loop {
        if let Ok(r) = client.rollout(name).await
            && r.generation == generation
            && !r.state.is_active()
        {
            return Ok(r);
        }
        if Instant::now() > deadline {
            bail!("the rollout of generation {generation} did not end within {T:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until all `devices` targeted by `name` applied their desired
/// revision (as the hub sees it).
pub async fn all_applied(hub: &Hub, name: &str, devices: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + T;
    loop {
        let (code, s) = hub.get(&format!("/deployments/{name}/status")).await;
        let ok = code == 200
            && s["devices"].as_array().is_some_and(|d| {
                d.len() == devices
                    && d.iter().all(|d| {
                        d["appliedRevision"].is_u64()
                            && d["appliedRevision"] == d["desiredRevision"]
                    })
            });
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name}: not every device applied its document within {T:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Run {
    good_ms: f64,
    bad_ms: f64,
    bad_back_ms: f64,
    bad_wave: String,
    bad_reached: u64,
    bad_received: usize,
    plain_ms: f64,
}

async fn one_run(devices: usize) -> anyhow::Result<Run> {
    let hub = Hub::start_with(HubOptions::quiet()).await;
    let fleet = Fleet::start_connected(
        hub.api_url(),
        &hub.bootstrap_token(),
        &SimOptions {
            devices,
            canary: 10,
            fail: Some(FailPlan {
                deployment: NAME.into(),
                generation: BAD,
                fraction: 0.3,
                never_healthy: false,
            }),
            ..Default::default()
        },
        T,
    )
    .await?;
    hub.deploy(NAME, &sim_deployment(NAME, "one", Some("0s")))
        .await;
    ended(&hub, NAME, 1).await?;
    all_applied(&hub, NAME, devices).await?;

    let t = Instant::now();
    hub.deploy(NAME, &sim_deployment(NAME, "two", Some("0s")))
        .await;
    let r = ended(&hub, NAME, 2).await?;
    let good_ms = t.elapsed().as_secs_f64() * 1e3;
    if r.state != RolloutState::Complete {
        bail!("the good generation ended {}", r.state.as_str());
    }
    all_applied(&hub, NAME, devices).await?;

    let t = Instant::now();
    hub.deploy(NAME, &sim_deployment(NAME, "three", Some("0s")))
        .await;
    let r = ended(&hub, NAME, BAD).await?;
    let bad_ms = t.elapsed().as_secs_f64() * 1e3;
    if r.state != RolloutState::RolledBack {
        bail!("the bad generation ended {}", r.state.as_str());
    }
    fleet.wait_running(NAME, 2, T).await?;
    let bad_back_ms = t.elapsed().as_secs_f64() * 1e3;
    let bad_reached = r.waves[..=r.current_wave].iter().map(|w| w.targeted).sum();
    let bad_received = fleet.received(NAME, BAD);

    // The same change with no rollout block: every device at once.
    hub.deploy(PLAIN, &sim_deployment(PLAIN, "one", None)).await;
    fleet.wait_running(PLAIN, 1, T).await?;
    all_applied(&hub, PLAIN, devices).await?;
    let t = Instant::now();
    hub.deploy(PLAIN, &sim_deployment(PLAIN, "two", None)).await;
    fleet.wait_running(PLAIN, 2, T).await?;
    let plain_ms = t.elapsed().as_secs_f64() * 1e3;
    fleet.stop().await;
    Ok(Run {
        good_ms,
        bad_ms,
        bad_back_ms,
        bad_wave: r.waves[r.current_wave].name.clone(),
        bad_reached,
        bad_received,
        plain_ms,
    })
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 50.0)
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0} ms"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `runs` times on `devices` devices and writes the `rollout` section.
pub async fn run(devices: usize, runs: usize, args: &str) -> anyhow::Result<()> {
    let mut all = Vec::new();
    for i in 0..runs.max(1) {
        eprintln!("fleet-sim: rollout run {} of {runs}", i + 1);
        all.push(
            one_run(devices)
                .await
                .with_context(|| format!("run {}", i + 1))?,
        );
    }
    let good: Vec<f64> = all.iter().map(|r| r.good_ms).collect();
    let bad: Vec<f64> = all.iter().map(|r| r.bad_ms).collect();
    let back: Vec<f64> = all.iter().map(|r| r.bad_back_ms).collect();
    let plain: Vec<f64> = all.iter().map(|r| r.plain_ms).collect();
    let contained = all.iter().all(|r| r.bad_received as u64 <= r.bad_reached);
    let mut body = format!(
        "Release hub (embedded broker), {devices} simulated devices (each its own MQTT connection, key and signed \
         reports; 10 labelled `ring: canary`), {} runs, each on a fresh hub. Waves: canary (10 by label) / 10 % / \
         100 %, `bake: 0s`, `maxFailures: 5%`, `minSample: 10`. Timed from the `PUT` returning to the rollout's \
         state, polled every 10 ms.\n\n\
         | what | median | runs | target | |\n|---|---|---|---|---|\n",
        all.len()
    );
    let g = median(&good);
    let verdict = if g <= 5000.0 { "met" } else { "missed" };
    let rows: [(&str, &[f64], &str, &str); 4] = [
        (
            "good generation, 3 waves, PUT → `Complete`",
            &good,
            "≤ 5 s",
            verdict,
        ),
        (
            "*baseline:* the same change with no rollout block, PUT → every device verified it",
            &plain,
            "",
            "",
        ),
        (
            "generation failing on 30 % of devices, PUT → `RolledBack`",
            &bad,
            "",
            "",
        ),
        (
            "same, PUT → every device verified a document with the last good generation",
            &back,
            "",
            "",
        ),
    ];
    for (what, v, target, verdict) in rows {
        body.push_str(&format!(
            "| {what} | **{:.0} ms** | {} | {target} | {verdict} |\n",
            median(v),
            list(v)
        ));
    }
    body.push_str(&format!(
        "| bad generation: devices that ever received it / devices of the waves reached | {} | | received ≤ reached; 0 beyond the first waves | {} |\n",
        all.iter()
            .map(|r| format!("{} / {} (stopped in {})", r.bad_received, r.bad_reached, r.bad_wave))
            .collect::<Vec<_>>()
            .join("; "),
        if contained { "met" } else { "missed" }
    ));
    body.push_str(
        "\n\"Received\" is counted at the simulator: every (deployment, generation) each device verified in a signed \
         document. A wave is judged on what devices acknowledged: a device counts only once it applied, in this hub \
         epoch, the document carrying the new generation and reported its workloads Synced and Healthy.\n",
    );
    crate::bench::write_fleet_sim_section(
        "rollout",
        "Staged rollouts: waves on 1,000 simulated devices",
        args,
        &body,
    )?;
    Ok(())
}
