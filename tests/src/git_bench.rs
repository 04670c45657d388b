//! `fleet-sim git`: Git sources at fleet scale, against a release hub, a
//! real Git server (`git http-backend`, see [`crate::git`]) and simulated
//! devices. Writes the `git-sources` section of BENCHMARKS.md:
//!
//! - push + webhook → every device reports the new commit in sync: each
//!   device's time from the webhook to its in-sync report (p50/p99/max),
//!   and until the hub's fleet view says `commit X on N/N`;
//! - the same by polling alone (no webhook), against interval + 3 s;
//! - a large repository (20,000 files, ~200 MB of history): the hub's
//!   shallow fetch time and RSS growth, beside `git clone --depth 1` and a
//!   full `git clone` of the same repository by the git CLI.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hmac::Mac as _;

use crate::fixtures::sim_deployment;
use crate::git::{GitServer, Repo};
use crate::hub::{Hub, HubOptions};
use crate::sim::{Fleet, SimOptions, percentile, sample};

const SOURCE: &str = "fleet-config";
const NAME: &str = "sim-config";
const T: Duration = Duration::from_secs(180);

fn source_yaml(url: &str, dir: &Path, interval: &str, path: &str) -> String {
    format!(
        "apiVersion: edgefleet.io/v1\nkind: GitRepo\nmetadata: {{name: {SOURCE}}}\nspec:\n  \
         url: {url}\n  ref: {{branch: main}}\n  path: {path}\n  interval: {interval}\n  \
         prune: true\n  webhook: {{secretFile: {}}}\n",
        dir.join("webhook-secret").display()
    )
}

async fn put_source(hub: &Hub, yaml: &str) -> anyhow::Result<()> {
    hub.client()
        .apply_source(SOURCE, yaml)
        .await
        .context("apply the source")?;
    Ok(())
}

async fn webhook(hub: &Hub, secret: &[u8]) -> anyhow::Result<()> {
    let body = r#"{"ref":"refs/heads/main"}"#;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret)?;
    mac.update(body.as_bytes());
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let status = reqwest::Client::new()
        .post(format!("{}/api/v1/sources/{SOURCE}/webhook", hub.api_url()))
        .header("x-github-event", "push")
        .header("x-hub-signature-256", sig)
        .body(body)
        .send()
        .await?
        .status();
    if status != 202 {
        bail!("webhook answered {status}");
    }
    Ok(())
}

async fn applied(hub: &Hub, commit: &str, timeout: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = hub.client().source(SOURCE).await?;
        if s.applied_commit.as_deref() == Some(commit) {
            return Ok(Instant::now());
        }
        if let Some(f) = &s.failure
            && f.commit.as_deref() == Some(commit)
        {
            bail!("commit {commit} refused: {}", f.message);
        }
        if Instant::now() > deadline {
            bail!("commit {commit} not applied within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every device's in-sync report is newer than `since` and
/// holds `generation`; returns each device's time from `since`, in ms, and
/// when the hub's fleet view first said every device runs `commit`.
async fn fleet_in_sync(
    hub: &Hub,
    fleet: &Fleet,
    generation: u64,
    commit: &str,
    since: Instant,
) -> anyhow::Result<(Vec<f64>, f64)> {
    fleet.wait_running(NAME, generation, T).await?;
    let deadline = Instant::now() + T;
    let per_device = loop {
        let acks = fleet.acks();
        let done: Vec<f64> = acks
            .iter()
            .filter_map(|a| a.filter(|a| a.at > since))
            .map(|a| (a.at - since).as_secs_f64() * 1e3)
            .collect();
        if done.len() == fleet.len() {
            break done;
        }
        if Instant::now() > deadline {
            bail!("{} of {} devices reported in sync", done.len(), fleet.len());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    loop {
        let s = hub.client().deployment_status(NAME).await?;
        let n = fleet.len();
        if s.source.as_ref().is_some_and(|r| r.commit == commit) && s.counts.in_sync == n {
            return Ok((per_device, since.elapsed().as_secs_f64() * 1e3));
        }
        if Instant::now() > deadline {
            bail!("the hub shows {}/{n} in sync", s.counts.in_sync);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Pushes {
    /// Every device's latency, all pushes together.
    devices: Vec<f64>,
    /// Per push: until the hub showed every device in sync on the commit.
    hub_view: Vec<f64>,
}

async fn pushes(
    hub: &Hub,
    fleet: &Fleet,
    repo: &Repo,
    secret: Option<&[u8]>,
    first_generation: u64,
    count: usize,
) -> anyhow::Result<Pushes> {
    let mut out = Pushes {
        devices: Vec::new(),
        hub_view: Vec::new(),
    };
    for i in 0..count {
        let generation = first_generation + i as u64;
        let value = format!("{}-{i}", if secret.is_some() { "hook" } else { "poll" });
        let commit = repo.commit(
            &[(
                "deployments/sim.yaml",
                Some(&sim_deployment(NAME, &value, None)),
            )],
            &value,
            &[],
        );
        let t0 = Instant::now();
        if let Some(secret) = secret {
            webhook(hub, secret).await?;
        }
        let (devices, view) = fleet_in_sync(hub, fleet, generation, &commit, t0).await?;
        let mut sorted = devices.clone();
        sorted.sort_by(f64::total_cmp);
        eprintln!(
            "fleet-sim git: push {} ({}): p99 {:.0} ms, hub view {view:.0} ms",
            i + 1,
            &commit[..7],
            percentile(&sorted, 99.0)
        );
        out.devices.extend(devices);
        out.hub_view.push(view);
    }
    Ok(out)
}

/// A repository of `files` small files and about `history_mb` MB of
/// history (incompressible blobs replaced commit after commit), made with
/// `git fast-import`.
fn large_repo(root: &Path, files: usize, history_mb: usize) -> anyhow::Result<Repo> {
    let repo = Repo::create(root, "large");
    let mut child = crate::git::git(&repo.bare)
        .args(["fast-import", "--quiet"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    let mut w = std::io::BufWriter::new(child.stdin.take().context("stdin")?);
    let blob_mb = 5;
    let commits = history_mb.div_ceil(blob_mb);
    let mut mark = 0;
    let mut rng = rand::thread_rng();
    for c in 0..commits {
        mark += 1;
        writeln!(w, "commit refs/heads/main\nmark :{mark}")?;
        writeln!(
            w,
            "committer ops <ops@example.com> {} +0000",
            1_700_000_000 + c
        )?;
        let msg = format!("history {c}");
        writeln!(w, "data {}\n{msg}", msg.len())?;
        if c == 0 {
            for f in 0..files {
                let text = format!("asset {f}\n");
                writeln!(
                    w,
                    "M 100644 inline assets/{:03}/{f}.txt\ndata {}\n{text}",
                    f % 200,
                    text.len()
                )?;
            }
            let dep = sim_deployment(NAME, "large", None);
            writeln!(
                w,
                "M 100644 inline deployments/sim.yaml\ndata {}\n{dep}",
                dep.len()
            )?;
        }
        let mut blob = vec![0u8; blob_mb << 20];
        rand::Rng::fill(&mut rng, &mut blob[..]);
        writeln!(w, "M 100644 inline blobs/data.bin\ndata {}", blob.len())?;
        w.write_all(&blob)?;
        writeln!(w)?;
    }
    drop(w);
    if !child.wait()?.success() {
        bail!("git fast-import failed");
    }
    Ok(repo)
}

fn du_mb(p: &Path) -> f64 {
    fn walk(p: &Path) -> u64 {
        std::fs::read_dir(p).map_or(0, |d| {
            d.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
    }
    walk(p) as f64 / (1 << 20) as f64
}

fn git_clone(url: &str, into: &Path, shallow: bool) -> anyhow::Result<(f64, f64)> {
    let t = Instant::now();
    let mut args = vec!["clone", "-q", "--bare", "--single-branch"];
    if shallow {
        args.extend(["--depth", "1"]);
    }
    let out = crate::git::git(into.parent().unwrap())
        .args(&args)
        .arg(url)
        .arg(into)
        .output()?;
    if !out.status.success() {
        bail!("git clone: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((t.elapsed().as_secs_f64(), du_mb(into)))
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (
        percentile(&s, 50.0),
        percentile(&s, 99.0),
        s.last().copied().unwrap_or(f64::NAN),
    )
}

/// Runs the three measurements and writes the section.
pub async fn run(devices: usize, count: usize, args: &str) -> anyhow::Result<()> {
    crate::git::available().map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir()?;
    let secret = b"bench-secret";
    std::fs::write(dir.path().join("webhook-secret"), secret)?;
    let repo = Repo::create(dir.path(), "fleet");
    let server = GitServer::start(dir.path(), None, None).await;
    let first = repo.commit(
        &[(
            "deployments/sim.yaml",
            Some(&sim_deployment(NAME, "first", None)),
        )],
        "first",
        &[],
    );

    // 1. Webhook.
    let hub = Hub::start_with(HubOptions::quiet()).await;
    let fleet = Fleet::start_connected(
        hub.api_url(),
        &hub.bootstrap_token(),
        &SimOptions {
            devices,
            ..Default::default()
        },
        T,
    )
    .await?;
    put_source(
        &hub,
        &source_yaml(&server.url("fleet"), dir.path(), "1h", "deployments/"),
    )
    .await?;
    applied(&hub, &first, T).await?;
    fleet.wait_running(NAME, 1, T).await?;
    let hook = pushes(&hub, &fleet, &repo, Some(secret), 2, count).await?;

    // 2. Polling alone, every 10 s.
    let interval = 10.0;
    put_source(
        &hub,
        &source_yaml(&server.url("fleet"), dir.path(), "10s", "deployments/"),
    )
    .await?;
    // The changed manifest is fetched at once: start from a quiet source.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let poll_count = count.min(3);
    let poll = pushes(&hub, &fleet, &repo, None, 2 + count as u64, poll_count).await?;
    fleet.stop().await;
    drop(hub);

    // 3. A large repository, fetched shallow by a fresh hub.
    let (files, history_mb) = (20_000, 200);
    eprintln!(
        "fleet-sim git: writing a repository of {files} files and {history_mb} MB of history"
    );
    let large = large_repo(dir.path(), files, history_mb)?;
    let pack_mb = du_mb(&large.bare);
    let hub = Hub::start_with(HubOptions::quiet()).await;
    let pid = hub.proc.pid().context("hub pid")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sample(pid).context("sample the hub")?;
    let head = crate::git::run(&large.bare, &["rev-parse", "main"]);
    let t = Instant::now();
    put_source(
        &hub,
        &source_yaml(&server.url("large"), dir.path(), "1h", "deployments/"),
    )
    .await?;
    applied(&hub, &head, T).await?;
    let fetch_s = t.elapsed().as_secs_f64();
    let after = sample(pid).context("sample the hub")?;
    let cache_mb = du_mb(&hub.data_dir().join("sources"));
    let shallow = git_clone(&server.url("large"), &dir.path().join("shallow.git"), true)?;
    let full = git_clone(&server.url("large"), &dir.path().join("full.git"), false)?;
    drop(hub);
    drop(server);

    let (h50, h99, hmax) = stats(&hook.devices);
    let (p50, p99, pmax) = stats(&poll.devices);
    let (v50, _, vmax) = stats(&hook.hub_view);
    let (pv50, _, pvmax) = stats(&poll.hub_view);
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    let body = format!(
        "Release hub (embedded broker), {devices} simulated devices (each its own MQTT connection, key and signed \
         reports), Debian's `git http-backend` on loopback, commits made and pushed with the git CLI. Each device's \
         time is from the webhook call (or, polling, from the push) to its in-sync status report for the new \
         generation; \"hub view\" is until `GET /deployments/{NAME}/status` says `commit X on {devices}/{devices}`.\n\n\
         | what | p50 | p99 | max | hub view (median / max) | target | |\n|---|---|---|---|---|---|---|\n\
         | push + webhook → device in sync, {count} pushes × {devices} devices | {h50:.0} ms | **{h99:.0} ms** | {hmax:.0} ms | {v50:.0} / {vmax:.0} ms | p99 ≤ 3 s | {} |\n\
         | push, polling alone (`interval: 10s`, no webhook), {poll_count} pushes × {devices} devices | {p50:.0} ms | **{p99:.0} ms** | {pmax:.0} ms | {pv50:.0} / {pvmax:.0} ms | ≤ interval + 3 s = {:.0} s | {} |\n\n\
         Large repository: {files} files plus a 5 MB incompressible blob rewritten in each of {} commits \
         ({pack_mb:.0} MB on the server), fetched over HTTP by a fresh hub (`ref: {{branch: main}}`, the \
         deployments under `deployments/`):\n\n\
         | what | time | on disk | hub RSS |\n|---|---|---|---|\n\
         | hub: shallow fetch (gitoxide, depth 1) → commit applied | **{fetch_s:.1} s** | {cache_mb:.0} MB | {:.0} → {:.0} MiB (peak {:.0} MiB, **+{:.0} MiB**) |\n\
         | *reference:* `git clone --bare --depth 1` | {:.1} s | {:.0} MB | |\n\
         | *reference:* `git clone --bare` (whole history) | {:.1} s | {:.0} MB | |\n",
        verdict(h99 <= 3000.0),
        interval + 3.0,
        verdict(pmax <= (interval + 3.0) * 1e3),
        history_mb.div_ceil(5),
        before.rss_kib as f64 / 1024.0,
        after.rss_kib as f64 / 1024.0,
        after.hwm_kib as f64 / 1024.0,
        (after.hwm_kib.saturating_sub(before.rss_kib)) as f64 / 1024.0,
        shallow.0,
        shallow.1,
        full.0,
        full.1,
    );
    crate::bench::write_fleet_sim_section(
        "git-sources",
        "Git sources: push to a fleet, polling, a large repository",
        args,
        &body,
    )?;
    Ok(())
}
