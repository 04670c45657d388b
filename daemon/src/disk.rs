//! Free space on the filesystem holding a daemon's data, and the reserve
//! each daemon keeps free there. A full disk must never wedge a daemon: each
//! refuses new input it would have to store before the disk is full, and
//! keeps enough free to go on deleting, checkpointing and reporting.

use std::path::Path;

/// The default reserve for a filesystem of `total` bytes: 5 % of it or
/// 256 MiB, whichever is smaller. 5 % is what a small SD card can spare
/// (205 KiB of a 4 MiB one); 256 MiB bounds what a large disk sets aside.
pub const fn default_reserve(total: u64) -> u64 {
    let five_percent = total / 20;
    let cap = 256 * 1024 * 1024;
    if five_percent < cap {
        five_percent
    } else {
        cap
    }
}

/// Space on one filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Free to an unprivileged writer (`f_bavail`).
    pub available: u64,
    pub total: u64,
}

/// The space of the filesystem holding `path` (statvfs).
pub fn space(path: &Path) -> std::io::Result<Space> {
    let s = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    let unit = s.f_frsize.max(1);
    Ok(Space {
        available: s.f_bavail.saturating_mul(unit),
        total: s.f_blocks.saturating_mul(unit),
    })
}

/// Whether an I/O error means the disk (or quota) is full.
pub fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Bytes as people read them: `3.2 MiB`, `512 KiB`, `17 B`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_five_percent_capped_at_256_mib() {
        assert_eq!(default_reserve(4 * 1024 * 1024), 209_715);
        assert_eq!(default_reserve(32 << 30), 256 << 20);
        assert_eq!(default_reserve(0), 0);
    }

    #[test]
    fn space_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let s = space(dir.path()).unwrap();
        assert!(s.total > 0 && s.available <= s.total);
        assert!(space(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(17), "17 B");
        assert_eq!(human(3 * 1024 * 1024 + 200_000), "3.2 MiB");
        assert_eq!(human(512 * 1024), "512 KiB");
    }
}
