//! A small filesystem of its own (tmpfs, `mount -o size=…`), so a test can
//! fill a disk without touching the machine's: what a Raspberry Pi's SD
//! card does when container images, logs or the outbox eat it. Needs root;
//! [`Tmpfs::mount`] skips loudly (`skip("tmpfs", …)`) without it, and fails
//! instead under `EDGEFLEET_REQUIRE_TMPFS=1`. Unmounted on drop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug)]
pub struct Tmpfs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` on a fresh directory.
    pub fn mount(bytes: u64) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0755"),
                "tmpfs",
            ])
            .arg(&path)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { _dir: dir, path }),
            Ok(o) => {
                crate::skip(
                    "tmpfs",
                    &format!(
                        "mount -t tmpfs failed (root needed): {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                );
                None
            }
            Err(e) => {
                crate::skip("tmpfs", &format!("cannot run mount: {e}"));
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Free and total bytes now.
    pub fn space(&self) -> (u64, u64) {
        let out = Command::new("stat")
            .args(["-f", "-c", "%a %b %S"])
            .arg(&self.path)
            .output()
            .expect("stat -f");
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Vec<u64> = text
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        assert_eq!(v.len(), 3, "stat -f printed {text:?}");
        (v[0] * v[2], v[1] * v[2])
    }

    /// Another process's file (`name`), written until the filesystem is
    /// full; returns its size.
    pub fn fill(&self, name: &str) -> u64 {
        let mut f = std::fs::File::create(self.path.join(name)).expect("filler");
        let block = vec![0x5au8; 4096];
        let mut n = 0u64;
        while f.write_all(&block).is_ok() {
            n += block.len() as u64;
        }
        let _ = f.sync_all();
        n
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
