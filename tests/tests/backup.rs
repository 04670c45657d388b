//! Backup, restore and disaster recovery with real processes: a hub backed
//! up while it serves, lost, and restored on another data directory; the
//! same agents reconnect without re-enrolling, converge on the restored
//! state and deliver what they queued meanwhile exactly once. Also: a
//! backup taken in the middle of a 1,000-device rollout, scheduled backups,
//! damaged archives, and a damaged store at start.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgefleet_tests::agent::Agent;
use edgefleet_tests::eventually;
use edgefleet_tests::fixtures::{configmaps, sim_deployment};
use edgefleet_tests::hub::{Hub, HubOptions};
use edgefleet_tests::sim::{Fleet, SimOptions};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

/// `cloudcore backup --data-dir DATA --to ARCHIVE`; returns its stdout.
fn backup(data: &Path, archive: &Path) -> String {
    let (code, out, err) = Hub::cloudcore(&[
        OsStr::new("backup"),
        OsStr::new("--data-dir"),
        data.as_os_str(),
        OsStr::new("--to"),
        archive.as_os_str(),
    ]);
    assert_eq!(code, 0, "cloudcore backup failed: {out}{err}");
    out
}

/// `cloudcore restore --from ARCHIVE --data-dir DATA`: exit code, stdout, stderr.
fn restore(archive: &Path, data: &Path) -> (i32, String, String) {
    Hub::cloudcore(&[
        OsStr::new("restore"),
        OsStr::new("--from"),
        archive.as_os_str(),
        OsStr::new("--data-dir"),
        data.as_os_str(),
    ])
}

/// A deployment of one ConfigMap workload named `workload` on `site=plant-3`.
fn deployment(name: &str, workload: &str) -> String {
    configmaps(
        name,
        ("site", "plant-3"),
        workload,
        "demo",
        &[(name, "v", workload)],
    )
}

/// The agent's stored desired version (epoch, revision) and its workloads.
async fn held(agent: &Agent) -> (u64, u64, BTreeSet<String>) {
    let s = agent.status().await;
    let names = s["workloads"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|w| w["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (
        s["desired"]["hubEpoch"].as_u64().unwrap_or(0),
        s["desired"]["revision"].as_u64().unwrap_or(0),
        names,
    )
}

/// Every agent holds exactly `workloads`, in an epoch of at least `epoch`,
/// and the hub shows each deployment of `deployments` applied on all.
async fn converged(
    hub: &Hub,
    agents: &[Agent],
    epoch: u64,
    workloads: &[&str],
    deployments: &[&str],
) {
    let want: BTreeSet<String> = workloads.iter().map(|w| (*w).to_owned()).collect();
    eventually(
        &format!("every agent holds {want:?} in epoch ≥ {epoch}, applied at the hub"),
        T,
        || async {
            for a in agents {
                let (e, _, names) = held(a).await;
                if e < epoch || names != want {
                    return None;
                }
            }
            for d in deployments {
                let (code, s) = hub.get(&format!("/deployments/{d}/status")).await;
                // Applied as issued (these agents have no K3s, so their
                // workloads do not sync): the hub counts only revisions
                // applied in its own epoch.
                let devices = s["devices"].as_array()?;
                let applied = devices.iter().all(|d| {
                    d["appliedRevision"].is_u64() && d["appliedRevision"] == d["desiredRevision"]
                });
                if code != 200 || devices.len() != agents.len() || !applied {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_restored_from_a_backup_serves_its_devices_without_re_enrolling() {
    let mut hub = Hub::start().await;
    let mut agents = Vec::new();
    for i in 0..3 {
        agents
            .push(Agent::enroll_and_start(&hub, &format!("pi-{i}"), &[("site", "plant-3")]).await);
    }
    hub.deploy("cfg", &deployment("cfg", "base")).await;
    hub.deploy("web", &deployment("web", "v1")).await;
    converged(&hub, &agents, 0, &["cfg.base", "web.v1"], &["cfg", "web"]).await;
    let old_epoch = held(&agents[0]).await.0;

    // 1. Backed up while serving.
    let work = tempfile::tempdir().expect("tempdir");
    let archive = work.path().join("hub.tar");
    let out = backup(hub.data_dir(), &archive);
    assert!(out.contains("3 devices, 2 deployments"), "{out}");

    // A change after the backup: devices run it, the backup does not hold it.
    hub.deploy("web", &deployment("web", "v2")).await;
    converged(&hub, &agents, old_epoch, &["cfg.base", "web.v2"], &["web"]).await;
    let (_, ahead, _) = held(&agents[0]).await;

    // 2. The hub machine is lost: SIGKILL, data directory gone.
    let ports = hub.ports();
    hub.kill().await;
    std::fs::remove_dir_all(hub.data_dir()).expect("delete the data dir");

    // Devices keep running offline, and queue events meanwhile.
    let mut sent: Vec<HashSet<String>> = Vec::new();
    for a in &agents {
        let ids: HashSet<String> = (0..20)
            .map(|i| format!("down-{}-{i}", a.device_id))
            .collect();
        let batch: Vec<Value> = ids
            .iter()
            .map(|id| json!({"id": id, "kind": "app.telemetry", "payload": {"ok": true}}))
            .collect();
        let (code, body) = a.post_events(&Value::Array(batch)).await;
        assert_eq!(code, 202, "{body}");
        sent.push(ids);
    }

    // 3. Restored on another data directory, started on the same address.
    let data = work.path().join("restored-data");
    let (code, out, err) = restore(&archive, &data);
    assert_eq!(code, 0, "restore failed: {out}{err}");
    let epoch: u64 = edgefleet_tests::word_after(&out, "new hub epoch ")
        .trim_end_matches(':')
        .parse()
        .expect("the restore names the new epoch");
    assert!(epoch > old_epoch, "{out}");
    let hub = Hub::start_with(HubOptions {
        data_dir: Some(data),
        ports: Some(ports),
        ..Default::default()
    })
    .await;

    // 4. Every agent reconnects with its own credentials (no re-enrollment)
    // and converges on the restored deployments, although the revision it
    // held was ahead of the backup's.
    converged(
        &hub,
        &agents,
        epoch,
        &["cfg.base", "web.v1"],
        &["cfg", "web"],
    )
    .await;
    for a in &agents {
        let (e, rev, _) = held(a).await;
        assert_eq!(e, epoch, "{}", a.device_id);
        // Newer by its epoch, not by its revision.
        assert!(rev <= ahead, "{} at revision {rev}", a.device_id);
    }
    let (_, devices) = hub.get("/devices").await;
    assert_eq!(
        devices["items"].as_array().map(Vec::len),
        Some(3),
        "{devices}"
    );
    assert_eq!(
        hub.metric("edgefleet_hub_broker_auth_failures_total").await,
        0.0
    );

    // A change made after the restore reaches all three.
    hub.deploy("web", &deployment("web", "v3")).await;
    converged(&hub, &agents, epoch, &["cfg.base", "web.v3"], &["web"]).await;

    // 5. What they queued while the hub was down arrived exactly once.
    for (a, ids) in agents.iter().zip(&sent) {
        eventually(
            &format!("{}'s queued events at the hub", a.device_id),
            T,
            || async {
                let at_hub = hub.event_ids(&a.device_id).await;
                let down: Vec<&String> = at_hub.iter().filter(|e| e.starts_with("down-")).collect();
                (down.len() == ids.len()).then_some(())
            },
        )
        .await;
        let at_hub = hub.event_ids(&a.device_id).await;
        let unique: HashSet<&String> = at_hub.iter().collect();
        assert_eq!(
            unique.len(),
            at_hub.len(),
            "duplicates at the hub: {at_hub:?}"
        );
        assert!(ids.iter().all(|id| unique.contains(id)));
    }
}

/// Rows of a restored store, and its integrity, read with SQLite directly.
fn rows_of(db: &Path) -> (String, [u64; 4]) {
    let conn = rusqlite::Connection::open(db).expect("open the restored store");
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    let n = |t: &str| -> u64 {
        conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| {
            r.get::<_, i64>(0)
        })
        .expect("count") as u64
    };
    (
        ok,
        [n("devices"), n("deployments"), n("desired"), n("events")],
    )
}

/// The counts a `backup`/`restore` printed: devices, deployments, desired
/// documents, events.
fn printed_counts(out: &str) -> [u64; 4] {
    let num = |marker: &str| -> u64 {
        let before = &out[..out
            .find(marker)
            .unwrap_or_else(|| panic!("{marker:?} in {out}"))];
        before
            .rsplit(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .and_then(|s| s.parse().ok())
            .expect("a count")
    };
    [
        num(" devices"),
        num(" deployments"),
        num(" desired documents"),
        num(" events"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_taken_during_a_1000_device_rollout_restore_consistent() {
    const DEVICES: usize = 1000;
    let hub = Hub::start().await;
    let opts = SimOptions {
        devices: DEVICES,
        ..Default::default()
    };
    let fleet = Fleet::start_connected(hub.api_url(), &hub.bootstrap_token(), &opts, T * 2)
        .await
        .expect("the simulated fleet enrolls and connects");
    let sim = |v: &str| sim_deployment("sim", v, None);
    hub.deploy("sim", &sim("one")).await;
    fleet
        .wait_acked(1, Duration::from_secs(120))
        .await
        .expect("first revision everywhere");

    // The rollout of revision 2, and backups taken one after the other
    // while the devices take it and report.
    let work = tempfile::tempdir().expect("tempdir");
    hub.deploy("sim", &sim("two")).await;
    let mut archives = Vec::new();
    for i in 0..3 {
        let archive = work.path().join(format!("during-{i}.tar"));
        let data = hub.data_dir().to_owned();
        let a = archive.clone();
        let out = tokio::task::spawn_blocking(move || backup(&data, &a))
            .await
            .expect("backup");
        archives.push((archive, out));
    }
    let acked_during = fleet
        .acks()
        .iter()
        .filter(|a| a.is_some_and(|a| a.revision >= 2))
        .count();
    fleet
        .wait_acked(2, Duration::from_secs(120))
        .await
        .expect("the rollout completes");
    eprintln!("{acked_during} of {DEVICES} devices had revision 2 when the last backup ended");

    for (i, (archive, out)) in archives.iter().enumerate() {
        let data = work.path().join(format!("restored-{i}"));
        let (code, rout, err) = restore(archive, &data);
        assert_eq!(code, 0, "restore {i}: {rout}{err}");
        let (ok, rows) = rows_of(&data.join("cloudcore.db"));
        assert_eq!(ok, "ok", "integrity of restore {i}");
        assert_eq!(
            rows,
            printed_counts(out),
            "restore {i}: rows vs the manifest"
        );
        assert_eq!(rows[0], DEVICES as u64);
        assert_eq!(rows[2], DEVICES as u64, "one desired document per device");
    }

    // A hub on one of them serves the whole fleet's registry.
    fleet.stop().await;
    drop(hub);
    let restored = Hub::start_with(HubOptions {
        data_dir: Some(work.path().join("restored-1")),
        ..Default::default()
    })
    .await;
    let (code, s) = restored.get("/deployments/sim/status").await;
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["targeted"], DEVICES, "{s}");
}

/// The scheduled archives in `dir`, oldest first.
fn archives_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "tar"));
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_damaged_archives_and_a_damaged_store() {
    let mut hub = Hub::start_with(HubOptions {
        env: vec![
            ("CLOUDCORE_BACKUP_INTERVAL".into(), "1s".into()),
            ("CLOUDCORE_BACKUP_KEEP".into(), "2".into()),
        ],
        ..Default::default()
    })
    .await;
    let agent = Agent::enroll(&hub, &[("site", "plant-3")]).await;
    hub.deploy("cfg", &deployment("cfg", "base")).await;
    let dir = hub.data_dir().join("backups");

    // Every second an archive; the newest two are kept; metrics say so.
    eventually("three scheduled backups", T, || async {
        (hub.metric("edgefleet_hub_backups_total{result=\"ok\"}")
            .await
            >= 3.0)
            .then_some(())
    })
    .await;
    assert_eq!(archives_in(&dir).len(), 2, "{:?}", archives_in(&dir));
    let m = hub.metrics().await;
    let age = edgefleet_tests::hub::metric_value(&m, "edgefleet_hub_backup_age_seconds");
    assert!((0.0..10.0).contains(&age), "backup age {age}\n{m}");
    let last = edgefleet_tests::hub::metric_value(
        &m,
        "edgefleet_hub_backup_last_success_timestamp_seconds",
    );
    assert!(last > 1.7e9, "{m}");
    hub.stop().await;
    let newest = archives_in(&dir).pop().expect("an archive");

    // A truncated archive and a tampered one are refused, and write nothing.
    let bytes = std::fs::read(&newest).expect("read archive");
    let work = tempfile::tempdir().expect("tempdir");
    let target = work.path().join("target");
    let truncated = work.path().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let (code, _, err) = restore(&truncated, &target);
    assert_ne!(code, 0);
    assert!(err.contains("truncated"), "{err}");
    let tampered = work.path().join("tampered.tar");
    let mut altered = bytes.clone();
    altered[512 + 4096] ^= 0x01;
    std::fs::write(&tampered, &altered).expect("write");
    let (code, _, err) = restore(&tampered, &target);
    assert_ne!(code, 0);
    assert!(
        err.contains("cloudcore.db in the archive does not match its manifest")
            && err.contains("altered or damaged"),
        "{err}"
    );
    assert!(!target.join("cloudcore.db").exists());

    // A damaged store: the hub refuses to start, names the newest backup
    // and the command that restores it.
    let db = hub.data_dir().join("cloudcore.db");
    let mut junk = std::fs::read(&db).expect("read store");
    junk[..100].fill(b'x');
    std::fs::write(&db, &junk).expect("damage the store");
    let mut serve = std::process::Command::new(edgefleet_tests::process::bin("cloudcore"));
    serve
        .arg("serve")
        .arg("--data-dir")
        .arg(hub.data_dir())
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--broker-listen",
            "127.0.0.1:0",
        ]);
    let (code, _, err) = edgefleet_tests::process::output(serve);
    assert_eq!(code, 73, "{err}");
    assert!(
        err.contains(&format!("The newest backup is {}", newest.display())),
        "{err}"
    );
    let command = err
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cloudcore restore --from"))
        .unwrap_or_else(|| panic!("no restore command in: {err}"))
        .to_owned();
    assert_eq!(
        command,
        format!(
            "cloudcore restore --from {} --data-dir {} --force",
            newest.display(),
            hub.data_dir().display()
        )
    );

    // Doing what it says brings the hub back with its devices.
    let args: Vec<&OsStr> = command.split(' ').skip(1).map(OsStr::new).collect();
    let (code, out, err) = Hub::cloudcore(&args);
    assert_eq!(code, 0, "{out}{err}");
    hub.restart().await;
    let (code, d) = hub.get(&format!("/devices/{}", agent.device_id)).await;
    assert_eq!(code, 200, "{d}");
    assert_eq!(d["labels"]["site"], "plant-3");
}
