//! Hub backups: `cloudcore backup`, the scheduled ones (`[backup]`), and
//! `cloudcore restore` ([`restore`]).
//!
//! One tar archive holds what a fleet cannot lose: an online snapshot of the
//! store taken with SQLite's backup API (never a copy of a live WAL file),
//! the hub's key and token files, the model blobs (or, without them,
//! their hashes) and the agent release binaries. The manifest comes last and names the size and sha256 of
//! every part before it, so a truncated archive has none and an altered one
//! fails its hashes. Archives are written 0600 (they hold the signing key)
//! and appear under their name only once complete.
//!
//! Taking a backup only reads the data directory (SQLite may checkpoint
//! the store's WAL when no hub has it open) and takes no lock: it runs
//! beside the hub that owns it.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use edgefleet_daemon::files::{SECRET_MODE, SecretError};

pub mod restore;
pub mod schedule;

/// The archive format this cloudcore writes and reads.
pub const FORMAT: &str = "edgefleet-hub-backup/1";
/// The manifest's name in the archive (its last entry).
pub const MANIFEST: &str = "manifest.json";
/// The store's file name, in the data directory and in the archive.
pub const DB: &str = "cloudcore.db";
/// Key and token files, kept when present.
pub const SECRETS: [&str; 3] = ["hub.key", "operator-token", "bootstrap-token"];
/// The scheduled backups' default directory inside the data directory.
pub const BACKUPS: &str = "backups";
/// The model blobs' directory, in the data directory and in the archive.
pub const MODELS: &str = "models";
/// The agent release binaries' directory (`<sha256>` each), in the data
/// directory and in the archive.
pub const RELEASES: &str = "agent-releases";

/// What an archive holds, checked part by part on restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub cloudcore_version: String,
    pub created_at_ms: u64,
    /// The key id every device has pinned.
    pub hub_key_id: String,
    pub schema_version: i64,
    /// The store's epoch when the snapshot was taken.
    pub hub_epoch: u64,
    pub counts: Counts,
    /// Every entry before the manifest, in archive order.
    pub parts: Vec<Part>,
    /// Models in the store whose blobs are not in the archive
    /// (`--without-models`): their hashes, to upload them again.
    pub models_left_out: Vec<ModelRef>,
}

/// Rows of the snapshot, checked again after a restore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Counts {
    pub devices: u64,
    pub deployments: u64,
    pub generations: u64,
    pub desired_documents: u64,
    pub events: u64,
    pub models: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Part {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelRef {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} holds no hub store ({DB}): is this the hub's data directory?")]
    NoStore(PathBuf),
    #[error("cannot take a snapshot of the store")]
    Snapshot(#[source] rusqlite::Error),
    #[error("the snapshot failed SQLite's integrity check: {0}")]
    Integrity(String),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("the hub key")]
    Key(#[from] SecretError),
    #[error(
        "the hub key was rotated while the backup ran (store {store}, key file {file}); run it again"
    )]
    KeyRotated { store: String, file: String },
    #[error(
        "model {name} ({sha256}) is in the store but its blob {path} is missing; \
         back up with --without-models, or upload the model again"
    )]
    MissingBlob {
        name: String,
        sha256: String,
        path: PathBuf,
    },
    #[error(
        "agent release {version} ({sha256}) is in the store but its binary {path} is missing; \
         push it again (edgectl agents push)"
    )]
    MissingRelease {
        version: String,
        sha256: String,
        path: PathBuf,
    },
}

/// A file a backup or restore could not read or write.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {path}")]
pub struct IoError {
    op: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl IoError {
    /// `map_err` for reading `path`.
    pub fn read(path: &Path) -> impl FnOnce(std::io::Error) -> Self + use<> {
        let path = path.to_owned();
        move |source| Self {
            op: "read",
            path,
            source,
        }
    }

    /// `map_err` for writing `path`.
    pub fn write(path: &Path) -> impl FnOnce(std::io::Error) -> Self + use<> {
        let path = path.to_owned();
        move |source| Self {
            op: "write",
            path,
            source,
        }
    }
}

/// Options of one backup.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Record the models' hashes instead of their blobs.
    pub without_models: bool,
}

/// Writes a backup of the hub data directory `data` to `to` (0600; a
/// temporary file renamed into place once complete).
pub fn create(data: &Path, to: &Path, opts: Options) -> Result<Manifest, BackupError> {
    let db = data.join(DB);
    if !db.is_file() {
        return Err(BackupError::NoStore(data.to_owned()));
    }
    let partial = sibling(to, "partial");
    let snapshot = sibling(to, "snapshot.db");
    let result = write_archive(data, &db, &snapshot, &partial, opts).and_then(|manifest| {
        std::fs::rename(&partial, to).map_err(IoError::write(to))?;
        // Best effort, as before: the archive is complete either way.
        let _ = edgefleet_daemon::files::sync_parent(to);
        Ok(manifest)
    });
    let _ = std::fs::remove_file(&snapshot);
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// `<to>.<pid>.<what>` beside `to`.
fn sibling(to: &Path, what: &str) -> PathBuf {
    let mut name = to.file_name().unwrap_or_default().to_owned();
    name.push(format!(".{}.{what}", std::process::id()));
    to.with_file_name(name)
}

fn write_archive(
    data: &Path,
    db: &Path,
    snapshot: &Path,
    partial: &Path,
    opts: Options,
) -> Result<Manifest, BackupError> {
    take_snapshot(db, snapshot)?;
    let snap = Connection::open_with_flags(snapshot, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(BackupError::Snapshot)?;
    let integrity = integrity_check(&snap).map_err(BackupError::Snapshot)?;
    if integrity != "ok" {
        return Err(BackupError::Integrity(integrity));
    }
    let counts = Counts::of(&snap).map_err(BackupError::Snapshot)?;
    let (schema_version, hub_epoch) = schema_and_epoch(&snap).map_err(BackupError::Snapshot)?;
    let models = models_of(&snap).map_err(BackupError::Snapshot)?;
    let releases = releases_of(&snap).map_err(BackupError::Snapshot)?;
    // The key the snapshot says is current (none before key rotation).
    let snap_kid: Option<String> = snap
        .query_row(
            "SELECT kid FROM hub_keys WHERE rotated_ms IS NULL ORDER BY created_ms DESC, rowid DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .ok();
    drop(snap);

    let key_pem = edgefleet_daemon::files::require_secret(&data.join(SECRETS[0]))?;
    let hub_key_id = edgefleet_protocol::Signer::from_pkcs8_pem(&key_pem)
        .map_err(|source| SecretError::Key {
            path: data.join(SECRETS[0]),
            source,
        })?
        .public()
        .kid()
        .to_string();
    if let Some(kid) = snap_kid
        && kid != hub_key_id
    {
        return Err(BackupError::KeyRotated {
            store: kid,
            file: hub_key_id,
        });
    }

    let file = edgefleet_daemon::files::create_with_mode(partial, SECRET_MODE)
        .map_err(IoError::write(partial))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut parts = Vec::new();
    parts.push(append_file(&mut tar, snapshot, DB, partial)?);
    for name in SECRETS {
        let path = data.join(name);
        if path.exists() {
            edgefleet_daemon::files::require_secret(&path)?;
            parts.push(append_file(&mut tar, &path, name, partial)?);
        }
    }
    let mut models_left_out = Vec::new();
    for m in models {
        if opts.without_models {
            models_left_out.push(m);
            continue;
        }
        let path = data.join(MODELS).join(format!("{}.onnx", m.sha256));
        if !path.is_file() {
            return Err(BackupError::MissingBlob {
                name: m.name,
                sha256: m.sha256,
                path,
            });
        }
        let name = format!("{MODELS}/{}.onnx", m.sha256);
        parts.push(append_file(&mut tar, &path, &name, partial)?);
    }
    // Always in: a device told to run a release downloads it from the hub,
    // and nothing else holds it once pushed.
    for (version, sha256) in releases {
        let name = format!("{RELEASES}/{sha256}");
        let path = data.join(&name);
        if !path.is_file() {
            return Err(BackupError::MissingRelease {
                version,
                sha256,
                path,
            });
        }
        parts.push(append_file(&mut tar, &path, &name, partial)?);
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        cloudcore_version: env!("CARGO_PKG_VERSION").into(),
        created_at_ms: edgefleet_protocol::now_ms(),
        hub_key_id,
        schema_version,
        hub_epoch,
        counts,
        parts,
        models_left_out,
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest always serializes");
    tar.append_data(&mut header(json.len() as u64), MANIFEST, json.as_slice())
        .map_err(IoError::write(partial))?;
    let file = tar
        .into_inner()
        .map_err(IoError::write(partial))?
        .into_inner()
        .map_err(|e| IoError::write(partial)(e.into_error()))?;
    file.sync_all().map_err(IoError::write(partial))?;
    Ok(manifest)
}

/// A regular file's header: mode 0600, no owner names, this size.
fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(SECRET_MODE);
    h.set_size(size);
    h.set_mtime(edgefleet_protocol::now_ms() / 1000);
    h
}

/// Appends `path` as `name`, hashing what goes in.
fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &Path,
    name: &str,
    archive: &Path,
) -> Result<Part, BackupError> {
    let file = File::open(path).map_err(IoError::read(path))?;
    let size = file.metadata().map_err(IoError::read(path))?.len();
    let mut reader = Hashing::new(file.take(size));
    tar.append_data(&mut header(size), name, &mut reader)
        .map_err(IoError::write(archive))?;
    Ok(Part {
        path: name.to_owned(),
        size,
        sha256: reader.finish(),
    })
}

/// Copies the live store `db` into `to` with SQLite's online backup API,
/// in one step: one read transaction, so the copy is one committed state
/// however busy the hub is (a WAL reader does not block its writer, and a
/// stepwise copy would restart on every write the hub makes meanwhile).
fn take_snapshot(db: &Path, to: &Path) -> Result<(), BackupError> {
    let _ = std::fs::remove_file(to);
    let src = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(BackupError::Snapshot)?;
    src.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(BackupError::Snapshot)?;
    let mut dst = Connection::open(to).map_err(BackupError::Snapshot)?;
    let copy = rusqlite::backup::Backup::new(&src, &mut dst).map_err(BackupError::Snapshot)?;
    let mut tries = 0;
    loop {
        match copy.step(-1).map_err(BackupError::Snapshot)? {
            rusqlite::backup::StepResult::Done => break,
            // Another connection holds a lock SQLite could not wait out.
            _ if tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            _ => {
                return Err(BackupError::Snapshot(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                    Some("the store stayed locked for 5 s".into()),
                )));
            }
        }
    }
    drop(copy);
    dst.pragma_update(None, "journal_mode", "DELETE")
        .map_err(BackupError::Snapshot)?;
    Ok(())
}

/// `PRAGMA integrity_check`'s answer (`ok` when sound).
pub fn integrity_check(conn: &Connection) -> rusqlite::Result<String> {
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(lines.join("; "))
}

impl Counts {
    pub fn of(conn: &Connection) -> rusqlite::Result<Self> {
        let n = |table: &str| -> rusqlite::Result<u64> {
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|v| v.max(0) as u64)
        };
        Ok(Self {
            devices: n("devices")?,
            deployments: n("deployments")?,
            generations: n("deployment_generations")?,
            desired_documents: n("desired")?,
            events: n("events")?,
            models: n("models")?,
        })
    }
}

/// The store's schema version and epoch.
pub fn schema_and_epoch(conn: &Connection) -> rusqlite::Result<(i64, u64)> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let epoch: String = conn.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
        r.get(0)
    })?;
    let epoch = epoch.parse().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("meta.epoch is {epoch:?}, not a number").into(),
        )
    })?;
    Ok((version, epoch))
}

fn models_of(conn: &Connection) -> rusqlite::Result<Vec<ModelRef>> {
    let mut stmt = conn.prepare("SELECT name, sha256, size FROM models ORDER BY sha256")?;
    stmt.query_map([], |r| {
        Ok(ModelRef {
            name: r.get(0)?,
            sha256: r.get(1)?,
            size: r.get::<_, i64>(2)?.max(0) as u64,
        })
    })?
    .collect()
}

/// Each agent release binary once: (a version naming it, its sha256). No
/// table before the migration that added releases.
fn releases_of(conn: &Connection) -> rusqlite::Result<Vec<(String, String)>> {
    let table: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'agent_releases'",
        [],
        |r| r.get(0),
    )?;
    if !table {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT min(version), sha256 FROM agent_releases GROUP BY sha256 ORDER BY sha256",
    )?;
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// A reader that hashes what passes through it.
pub(crate) struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R> Hashing<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            hash: Sha256::new(),
        }
    }

    pub(crate) fn finish(self) -> String {
        hex::encode(self.hash.finalize())
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::restore::{RestoreError, restore};
    use super::*;
    use crate::publisher::compute_pass;
    use crate::store::{ModelRecord, Store};
    use crate::testing::{deployment, enroll};

    const MODEL: &[u8] = b"not really onnx, but a blob all the same";
    const AGENT: &[u8] = b"an agent binary, as far as a backup cares";

    /// A hub data directory as `cloudcore serve` leaves it: a device, a
    /// deployment with its desired document issued, keys, tokens, a model.
    fn hub_dir() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let store = Store::open(&data).unwrap();
        let (signer, _) = crate::keys::load_or_create_signer(&data).unwrap();
        crate::keys::load_or_create_token(&data, "operator-token", "").unwrap();
        crate::keys::load_or_create_token(&data, "bootstrap-token", "").unwrap();
        enroll(&store, "pi-1", &[("site", "a")]);
        store
            .put_deployment(&deployment("web", "a", &["app"]))
            .unwrap();
        compute_pass(&store, &signer, store.epoch().unwrap(), true).unwrap();
        let sha256 = hex::encode(Sha256::digest(MODEL));
        std::fs::create_dir_all(data.join(MODELS)).unwrap();
        std::fs::write(data.join(MODELS).join(format!("{sha256}.onnx")), MODEL).unwrap();
        store
            .put_model(&ModelRecord {
                sha256,
                name: "m".into(),
                size: MODEL.len() as u64,
                created_ms: 1,
            })
            .unwrap();
        let sha256 = hex::encode(Sha256::digest(AGENT));
        std::fs::create_dir_all(data.join(RELEASES)).unwrap();
        std::fs::write(data.join(RELEASES).join(&sha256), AGENT).unwrap();
        // One binary under two versions goes in once.
        for version in ["2.0.0", "2.0.0-rc1"] {
            store
                .put_agent_release(&crate::store::AgentRelease {
                    version: version.into(),
                    arch: "arm64".into(),
                    sha256: sha256.clone(),
                    size: AGENT.len() as u64,
                    created_ms: 1,
                })
                .unwrap()
                .unwrap();
        }
        (tmp, data)
    }

    fn backed_up(opts: Options) -> (tempfile::TempDir, PathBuf, PathBuf, Manifest) {
        let (tmp, data) = hub_dir();
        let archive = tmp.path().join("b.tar");
        let manifest = create(&data, &archive, opts).unwrap();
        (tmp, data, archive, manifest)
    }

    #[test]
    fn a_backup_restores_into_an_empty_directory_in_a_new_epoch() {
        let (tmp, data, archive, manifest) = backed_up(Options::default());
        let mode = std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(manifest.counts.devices, 1);
        assert_eq!(manifest.counts.desired_documents, 1);
        assert_eq!(manifest.counts.models, 1);
        assert_eq!(manifest.parts.len(), 6, "{:?}", manifest.parts);
        let old = Store::open(&data).unwrap();
        let (old_epoch, old_rev) = (old.epoch().unwrap(), old.desired_hashes().unwrap());

        let to = tmp.path().join("restored");
        let r = restore(&archive, &to, false).unwrap();
        assert!(r.epoch > old_epoch);
        for name in [DB, "hub.key", "operator-token", "bootstrap-token"] {
            let a = std::fs::read(data.join(name)).unwrap();
            if name != DB {
                assert_eq!(a, std::fs::read(to.join(name)).unwrap(), "{name}");
            }
            let mode = std::fs::metadata(to.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let blob = to
            .join(MODELS)
            .join(format!("{}.onnx", hex::encode(Sha256::digest(MODEL))));
        assert_eq!(std::fs::read(blob).unwrap(), MODEL);
        let agent = to.join(RELEASES).join(hex::encode(Sha256::digest(AGENT)));
        assert_eq!(std::fs::read(agent).unwrap(), AGENT);

        // The restored hub's first pass issues the device a document in the
        // new epoch, at the next revision: newer than anything it holds.
        let restored = Store::open(&to).unwrap();
        assert_eq!(restored.epoch().unwrap(), r.epoch);
        let (signer, created) = crate::keys::load_or_create_signer(&to).unwrap();
        assert!(!created);
        assert_eq!(signer.public().kid().to_string(), manifest.hub_key_id);
        let pass = compute_pass(&restored, &signer, r.epoch, true).unwrap();
        assert_eq!(pass.docs.len(), 1);
        let before = old_rev.values().next().unwrap().0;
        assert_eq!(pass.docs[0].1, before + 1);
    }

    #[test]
    fn without_models_keeps_their_hashes_only() {
        let (tmp, _data, archive, manifest) = backed_up(Options {
            without_models: true,
        });
        assert_eq!(manifest.parts.len(), 5, "the agent release stays in");
        assert_eq!(manifest.models_left_out.len(), 1);
        let r = restore(&archive, &tmp.path().join("r"), false).unwrap();
        assert_eq!(r.manifest.models_left_out[0].name, "m");
    }

    #[test]
    fn a_missing_agent_release_binary_fails_the_backup_and_says_which() {
        let (tmp, data) = hub_dir();
        std::fs::remove_dir_all(data.join(RELEASES)).unwrap();
        let archive = tmp.path().join("b.tar");
        let e = create(&data, &archive, Options::default()).unwrap_err();
        assert!(matches!(e, BackupError::MissingRelease { .. }), "{e}");
        assert!(e.to_string().contains("edgectl agents push"), "{e}");
        assert!(!archive.exists());
    }

    #[test]
    fn a_truncated_or_altered_archive_is_refused_and_nothing_is_written() {
        let (tmp, _data, archive, _) = backed_up(Options::default());
        let bytes = std::fs::read(&archive).unwrap();
        let bad = tmp.path().join("bad.tar");
        let to = tmp.path().join("r");

        // Cut in a part, or in the manifest (the last 1,024 bytes are the
        // end-of-archive blocks, whose loss alone takes nothing).
        for cut in [bytes.len() / 3, bytes.len() - 1024 - 512] {
            std::fs::write(&bad, &bytes[..cut]).unwrap();
            let e = restore(&bad, &to, false).unwrap_err();
            assert!(
                matches!(e, RestoreError::NoManifest | RestoreError::Damaged(_)),
                "cut at {cut}: {e}"
            );
            assert!(
                std::fs::read_dir(&to)
                    .unwrap()
                    .all(|e| { e.unwrap().file_name() == edgefleet_daemon::lock::LOCK_FILE })
            );
        }
        // One byte changed inside the store.
        let mut altered = bytes.clone();
        altered[512 + 2000] ^= 0x55;
        std::fs::write(&bad, &altered).unwrap();
        let e = restore(&bad, &to, false).unwrap_err();
        assert!(
            matches!(&e, RestoreError::Mismatch { path, .. } if path == DB),
            "{e}"
        );
        assert!(e.to_string().contains("altered or damaged"));
        assert!(!to.join(DB).exists());
    }

    #[test]
    fn a_non_empty_directory_is_replaced_only_with_force_and_kept_aside() {
        let (tmp, data, archive, _) = backed_up(Options::default());
        let e = restore(&archive, &data, false).unwrap_err();
        assert!(matches!(e, RestoreError::NotEmpty(_)), "{e}");
        std::fs::write(data.join(DB), b"damaged").unwrap();
        let r = restore(&archive, &data, true).unwrap();
        let aside = r.moved_aside.unwrap();
        assert_eq!(std::fs::read(aside.join(DB)).unwrap(), b"damaged");
        assert!(aside.starts_with(tmp.path()));
        let restored = Store::open(&data).unwrap();
        assert_eq!(restored.count_devices().unwrap().0, 1);
    }
}
