//! The agent's discipline on the filesystem of its state directory (SD cards
//! fill up: container images, logs, the outbox itself).
//!
//! - **Reserve.** The agent never fills the disk itself: a write it can
//!   refuse (an app's event, a model download) is admitted only if the
//!   filesystem keeps `store.disk_reserve_bytes` free afterwards (default:
//!   5 % of the filesystem or 256 MiB, whichever is smaller), with room for
//!   SQLite's write-ahead log on top. Below the reserve the agent is under
//!   *disk pressure*: it says so in heartbeats (the hub shows `DiskPressure`)
//!   and in `/metrics`. An event refused for space starts pressure too, so
//!   a device never refuses events without saying why. Pressure ends once
//!   there is room for the spare beside the reserve again, so it does not
//!   flap at the edge.
//! - **Spare.** A file of half the reserve (at most 4 MiB), `.spare` in the
//!   state directory, that only the agent uses: when another process has
//!   filled the disk, deleting acknowledged outbox rows, checkpointing the
//!   WAL and storing the status report need a little space; the agent
//!   releases the spare to get it, and makes it again once the disk has room.
//!
//! Writes the agent cannot refuse (the hub's desired state, its own status
//! report) use the reserve, then the spare; what still cannot be stored is
//! not acknowledged (desired state, redelivered) or sent from memory
//! (status).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use edgefleet_daemon::disk::{Space, default_reserve, human, space};

/// The spare's file name in the state directory.
pub const SPARE_FILE: &str = ".spare";
/// Most the spare ever takes.
const SPARE_MAX: u64 = 4 * 1024 * 1024;
/// SQLite page size (the default), for the WAL allowance.
const PAGE: u64 = 4096;

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the disk holding the agent's state is too full: {} free, {} needed beside the {} reserve",
    human(*.available), human(*.needed), human(*.reserve)
)]
pub struct DiskFull {
    pub available: u64,
    pub needed: u64,
    pub reserve: u64,
}

/// Reserve, spare and pressure for one state directory.
#[derive(Debug)]
pub struct DiskGuard {
    dir: PathBuf,
    reserve: u64,
    spare: u64,
    /// Pages the WAL may grow by before SQLite checkpoints it.
    wal_pages: u64,
    pressure: AtomicBool,
    /// A write was refused since the last [`DiskGuard::check`].
    refused: AtomicBool,
    /// Serialises spare creation and release.
    spare_lock: Mutex<()>,
}

impl DiskGuard {
    /// The guard for `dir`; `reserve` 0 means the default for its filesystem.
    pub fn new(dir: &Path, reserve: u64) -> Self {
        let total = space(dir).map(|s| s.total).unwrap_or(0);
        let reserve = if reserve == 0 {
            default_reserve(total)
        } else {
            reserve
        };
        Self {
            dir: dir.to_owned(),
            reserve,
            spare: (reserve / 2).min(SPARE_MAX),
            wal_pages: wal_pages(reserve),
            pressure: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            spare_lock: Mutex::new(()),
        }
    }

    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// How far SQLite's WAL may grow before an automatic checkpoint; also
    /// its size limit after one (`PRAGMA wal_autocheckpoint`,
    /// `journal_size_limit`).
    pub fn wal_pages(&self) -> u64 {
        self.wal_pages
    }

    /// The filesystem's space now, `None` if it cannot be read.
    pub fn space(&self) -> Option<Space> {
        space(&self.dir).ok()
    }

    /// Whether `bytes` more can be stored keeping the reserve free. SQLite
    /// writes a row twice (WAL, then the database file) and the WAL may
    /// grow to its checkpoint size first, so both count.
    pub fn admit(&self, bytes: u64) -> Result<(), DiskFull> {
        let Some(s) = self.space() else {
            return Ok(());
        };
        let needed = bytes.saturating_mul(2) + self.wal_allowance();
        if s.available >= self.reserve.saturating_add(needed) {
            Ok(())
        } else {
            Err(DiskFull {
                available: s.available,
                needed,
                reserve: self.reserve,
            })
        }
    }

    fn wal_allowance(&self) -> u64 {
        self.wal_pages * PAGE
    }

    /// Notes that a write was refused for lack of space: the next
    /// [`DiskGuard::check`] starts pressure if the disk is still short of
    /// room for the spare.
    pub fn note_refused(&self) {
        self.refused.store(true, Ordering::Relaxed);
    }

    /// Re-reads the free space: `Some(new state)` when pressure began or
    /// ended since the last call. Pressure begins when not even an empty
    /// write would be admitted (free space below the reserve plus the WAL's
    /// allowance) or when a write was refused, and ends when the spare fits
    /// beside that again.
    pub fn check(&self) -> Option<bool> {
        let s = self.space()?;
        let floor = self.reserve + self.wal_allowance();
        let was = self.pressure.load(Ordering::Relaxed);
        let refused = self.refused.swap(false, Ordering::Relaxed);
        let now = pressure(s.available, floor, self.spare, was || refused);
        self.pressure.store(now, Ordering::Relaxed);
        (now != was).then_some(now)
    }

    /// Whether the disk is below the reserve (as last checked).
    pub fn under_pressure(&self) -> bool {
        self.pressure.load(Ordering::Relaxed)
    }

    fn spare_path(&self) -> PathBuf {
        self.dir.join(SPARE_FILE)
    }

    /// Deletes the spare so a write that must happen finds room; true if
    /// there was one.
    pub fn release_spare(&self) -> bool {
        let _g = self.spare_lock.lock().unwrap_or_else(|p| p.into_inner());
        let freed = std::fs::remove_file(self.spare_path()).is_ok();
        if freed {
            tracing::warn!(
                bytes = self.spare,
                "disk full: released the agent's spare space to keep draining"
            );
        }
        freed
    }

    /// Makes the spare if it is missing and the disk has room for it beside
    /// the reserve. Written in full (not sparse), so its blocks are real.
    pub fn ensure_spare(&self) {
        let _g = self.spare_lock.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.spare_path();
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == self.spare) {
            return;
        }
        let Some(s) = self.space() else { return };
        if s.available < self.reserve + self.spare * 2 {
            return;
        }
        let tmp = self.dir.join(".spare.tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            let block = vec![0u8; 64 * 1024];
            let mut left = self.spare;
            while left > 0 {
                let n = left.min(block.len() as u64) as usize;
                f.write_all(&block[..n])?;
                left -= n as u64;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(error = %e, "cannot make the agent's spare space");
        }
    }
}

/// Below `floor`, or short of the spare beside it while pressure holds (or
/// a write was just refused).
fn pressure(available: u64, floor: u64, spare: u64, holding: bool) -> bool {
    available < floor || (holding && available < floor + spare)
}

/// WAL pages between checkpoints: a quarter of the reserve, between 16 and
/// SQLite's default of 1,000.
fn wal_pages(reserve: u64) -> u64 {
    (reserve / 4 / PAGE).clamp(16, 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_is_made_released_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let g = DiskGuard::new(dir.path(), 2 * 1024 * 1024);
        assert_eq!(g.reserve(), 2 * 1024 * 1024);
        g.ensure_spare();
        let spare = dir.path().join(SPARE_FILE);
        assert_eq!(std::fs::metadata(&spare).unwrap().len(), 1024 * 1024);
        assert!(g.release_spare());
        assert!(!spare.exists());
        assert!(!g.release_spare(), "nothing left to release");
        g.ensure_spare();
        assert!(spare.exists());
    }

    #[test]
    fn admit_keeps_the_reserve_and_flags_pressure() {
        let dir = tempfile::tempdir().unwrap();
        let free = space(dir.path()).unwrap().available;
        // A reserve just above what is free: nothing is admitted.
        let g = DiskGuard::new(dir.path(), free + 1);
        let err = g.admit(10).unwrap_err();
        assert_eq!(err.reserve, free + 1);
        assert!(err.to_string().contains("too full"), "{err}");
        assert_eq!(g.check(), Some(true), "pressure begins");
        assert!(g.under_pressure());
        assert_eq!(g.check(), None, "and holds");
        let roomy = DiskGuard::new(dir.path(), 4096);
        assert!(roomy.admit(1000).is_ok());
        assert_eq!(roomy.check(), None, "no pressure, no change");
    }

    #[test]
    fn pressure_begins_below_the_floor_or_at_a_refusal_and_ends_with_room_for_the_spare() {
        let (floor, spare) = (1000, 100);
        for (available, holding, want) in [
            (999, false, true),
            (1000, false, false),
            (1050, false, false),
            (1050, true, true),
            (1099, true, true),
            (1100, true, false),
        ] {
            assert_eq!(
                pressure(available, floor, spare, holding),
                want,
                "{available} free, holding {holding}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let g = DiskGuard::new(dir.path(), 1);
        assert_eq!(g.check(), None, "a roomy disk is not under pressure");
        g.note_refused();
        assert_eq!(g.check(), None, "a refusal on a roomy disk starts nothing");
    }

    #[test]
    fn wal_allowance_scales_with_the_reserve() {
        assert_eq!(wal_pages(209_715), 16);
        assert_eq!(wal_pages(256 << 20), 1000);
        assert_eq!(wal_pages(4 << 20), 256);
        assert_eq!(wal_pages(16 << 20), 1000, "capped at SQLite's default");
    }
}
