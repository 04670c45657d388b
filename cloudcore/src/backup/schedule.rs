//! Scheduled backups (`[backup]`): every `interval` the hub writes an
//! archive named after its UTC time into the backup directory and keeps the
//! newest `keep`. A backup that cannot be written (no room, an unreadable
//! blob) is logged and counted, and the hub goes on serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgefleet_daemon::time::Utc;
use tokio_util::sync::CancellationToken;

use super::Options;
use crate::config::BackupConfig;
use crate::metrics::Metrics;

const PREFIX: &str = "cloudcore-backup-";
const SUFFIX: &str = ".tar";

/// `cloudcore-backup-20261130T142035Z.tar` for a time in Unix milliseconds.
pub fn file_name(at_ms: u64) -> String {
    let t = Utc::from_unix_ms(at_ms);
    format!(
        "{PREFIX}{:04}{:02}{:02}T{:02}{:02}{:02}Z{SUFFIX}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// `2026-11-30 14:20:35 UTC` for a time in Unix milliseconds.
pub fn utc_text(at_ms: u64) -> String {
    let t = Utc::from_unix_ms(at_ms);
    format!(
        "{} {:02}:{:02}:{:02} UTC",
        t.date(),
        t.hour,
        t.minute,
        t.second
    )
}

/// The scheduled archives in `dir`, newest first (their names sort by time).
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        })
        .collect();
    out.sort();
    out.reverse();
    out
}

/// Deletes all but the newest `keep` scheduled archives in `dir`.
pub fn prune(dir: &Path, keep: usize) {
    for old in list(dir).into_iter().skip(keep) {
        match std::fs::remove_file(&old) {
            Ok(()) => tracing::info!(archive = %old.display(), "old backup deleted"),
            Err(e) => {
                tracing::warn!(archive = %old.display(), error = %e, "cannot delete an old backup")
            }
        }
    }
}

/// Bytes a backup of `data` will take, about: the store, its WAL, the blobs.
fn estimate(data: &Path, opts: Options) -> u64 {
    let size = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut total = size(data.join(super::DB)) + size(data.join(format!("{}-wal", super::DB)));
    if !opts.without_models
        && let Ok(entries) = std::fs::read_dir(data.join(super::MODELS))
    {
        total += entries
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum::<u64>();
    }
    total
}

/// One scheduled backup: room checked first (the archive must leave the
/// hub's `reserve` free), then written and old ones pruned.
pub fn run_once(cfg: &BackupConfig, data: &Path, reserve: u64) -> Result<PathBuf, String> {
    let dir = cfg.dir_for(data);
    edgefleet_daemon::files::create_private_dir(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let opts = Options {
        without_models: cfg.without_models,
    };
    let need = estimate(data, opts) + reserve;
    let space = edgefleet_daemon::disk::space(&dir)
        .map_err(|e| format!("cannot read the free space of {}: {e}", dir.display()))?;
    if space.available < need {
        return Err(format!(
            "not enough room in {}: {} free, a backup needs about {} beside the hub's reserve",
            dir.display(),
            edgefleet_daemon::disk::human(space.available),
            edgefleet_daemon::disk::human(need)
        ));
    }
    let to = dir.join(file_name(edgefleet_protocol::now_ms()));
    super::create(data, &to, opts).map_err(|e| crate::error_chain(&e))?;
    prune(&dir, cfg.keep);
    Ok(to)
}

/// Backs up every `cfg.interval` until `cancel`.
pub async fn run(
    cfg: BackupConfig,
    data: PathBuf,
    reserve: u64,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    if cfg.interval.is_zero() {
        return;
    }
    tracing::info!(
        interval = %cfg.interval,
        keep = cfg.keep,
        dir = %cfg.dir_for(&data).display(),
        "scheduled backups on"
    );
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + cfg.interval.to_std(),
        cfg.interval.to_std(),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (cfg2, data2) = (cfg.clone(), data.clone());
        let started = std::time::Instant::now();
        let done = tokio::task::spawn_blocking(move || run_once(&cfg2, &data2, reserve))
            .await
            .unwrap_or_else(|_| Err("the backup worker panicked".into()));
        match done {
            Ok(path) => {
                metrics.backup_succeeded(edgefleet_protocol::now_ms());
                tracing::info!(
                    archive = %path.display(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "scheduled backup written"
                );
            }
            Err(why) => {
                metrics.backup_failed();
                tracing::error!(error = %why, "scheduled backup failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_time_in_utc() {
        assert_eq!(file_name(0), "cloudcore-backup-19700101T000000Z.tar");
        // 2026-11-30T14:20:35Z
        assert_eq!(
            file_name(1_796_048_435_000),
            "cloudcore-backup-20261130T142035Z.tar"
        );
        // 2024-02-29 (leap day) 23:59:59
        assert_eq!(
            file_name(1_709_251_199_000),
            "cloudcore-backup-20240229T235959Z.tar"
        );
        assert!(file_name(1_000_000_000_000) < file_name(1_000_000_001_000));
        assert_eq!(utc_text(1_796_048_435_000), "2026-11-30 14:20:35 UTC");
    }

    #[test]
    fn prune_keeps_the_newest_and_leaves_other_files() {
        let dir = tempfile::tempdir().unwrap();
        for t in [1, 2, 3, 4] {
            std::fs::write(dir.path().join(file_name(t * 1_000_000_000)), b"x").unwrap();
        }
        std::fs::write(dir.path().join("manual.tar"), b"x").unwrap();
        prune(dir.path(), 2);
        let left = list(dir.path());
        assert_eq!(
            left,
            vec![
                dir.path().join(file_name(4_000_000_000)),
                dir.path().join(file_name(3_000_000_000))
            ]
        );
        assert!(dir.path().join("manual.tar").exists());
    }
}
