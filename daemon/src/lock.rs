//! One process per data directory: an advisory `flock` on `<dir>/.lock`,
//! held for the life of the process. A second daemon on the same directory
//! would sign, publish and reconcile from the same state as the first (two
//! MQTT sessions with one client id throwing each other off, two
//! reconcilers fighting over one K3s); it is refused at start instead.
//!
//! The kernel releases a `flock` when its holder dies, however it dies, so a
//! lock left by a killed process never blocks a restart. The file itself
//! stays (deleting it would let two processes lock two different files);
//! it holds the pid of the current holder, for the refusal message only.
//!
//! Read-only commands (`edge-agent status`, `edge-agent check`) never take
//! the lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the directory.
pub const LOCK_FILE: &str = ".lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{dir} is in use by another process{}; one process per data directory (stop it first)",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Held { dir: PathBuf, holder: Option<u32> },
    #[error("cannot lock {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Holds the directory's lock until dropped (in practice: until exit).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Locks `dir` (which must exist) or fails at once, naming the pid that
    /// holds it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    dir: dir.to_owned(),
                    holder: read_pid(&mut file),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_the_holders_pid_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err();
        match &err {
            LockError::Held { holder, .. } => assert_eq!(*holder, Some(std::process::id())),
            e => panic!("expected Held, got {e:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        drop(first);
        let again = DirLock::acquire(dir.path()).unwrap();
        assert!(again.path().ends_with(LOCK_FILE));
    }

    #[test]
    fn a_missing_directory_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = DirLock::acquire(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(err, LockError::Io { .. }), "{err:?}");
    }
}
