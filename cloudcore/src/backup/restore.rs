//! `cloudcore restore`: a backup archive into a data directory, onto a
//! fresh machine or over a damaged store.
//!
//! Everything is checked before the data directory is touched: each part
//! against the manifest's size and sha256, nothing missing and nothing
//! unlisted, then the store's integrity and row counts and the key id. The
//! parts are unpacked into a staging directory beside the data directory
//! and moved in only then. A data directory in use by a hub is never
//! written (its lock is taken first), and one with contents is replaced
//! only with `force`, its old contents moved aside, not deleted.
//!
//! Devices never go backwards: they accept only desired versions newer than
//! the one they hold, ordered by (hub epoch, revision), and a restored store
//! is older than what they applied since the backup. The restore starts a
//! new epoch (now, and always above the archived one) and marks every
//! device's document for re-issue, so the hub's first pass signs each
//! device a document in the new epoch, which every device takes.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use edgefleet_daemon::lock::{DirLock, LOCK_FILE, LockError};
use rusqlite::{Connection, params};

use super::{
    BACKUPS, Counts, DB, FORMAT, Hashing, IoError, MANIFEST, MODELS, Manifest, RELEASES, SECRETS,
};

/// A manifest larger than this is not one of ours.
const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("the archive is damaged or truncated")]
    Damaged(#[source] std::io::Error),
    #[error("the archive has no manifest: it is truncated, or not a cloudcore backup")]
    NoManifest,
    #[error("the archive's manifest is not valid")]
    Manifest(#[source] serde_json::Error),
    #[error("this is a {found:?} archive; this cloudcore restores {FORMAT:?}")]
    Format { found: String },
    #[error("the archive holds an entry no backup has: {0:?}")]
    Unexpected(String),
    #[error(
        "{path} in the archive does not match its manifest ({what}): the archive was altered or damaged"
    )]
    Mismatch { path: String, what: String },
    #[error("{0} is listed in the manifest but missing from the archive: it is truncated")]
    Missing(String),
    #[error("the restored store does not match the manifest: {0}")]
    Inconsistent(String),
    #[error("the restored store")]
    Store(#[from] rusqlite::Error),
    #[error(
        "{0} is not empty; restoring replaces what it holds: pass --force (its contents are moved aside, not deleted)"
    )]
    NotEmpty(PathBuf),
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub manifest: Manifest,
    /// The epoch the restored hub issues desired state in.
    pub epoch: u64,
    /// Where the data directory's previous contents went (`force`).
    pub moved_aside: Option<PathBuf>,
}

/// Restores the archive `from` into `data`.
pub fn restore(from: &Path, data: &Path, force: bool) -> Result<Restored, RestoreError> {
    let occupied = contents(data)?;
    if !occupied.is_empty() && !force {
        return Err(RestoreError::NotEmpty(data.to_owned()));
    }
    edgefleet_daemon::files::create_private_dir(data).map_err(IoError::write(data))?;
    // No hub may run on it meanwhile; held until the restore is done.
    let _lock = DirLock::acquire(data)?;
    let staging = beside(data, &format!("restore.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    for dir in [MODELS, RELEASES] {
        edgefleet_daemon::files::create_private_dir(&staging.join(dir))
            .map_err(IoError::write(&staging))?;
    }
    let result = unpack_and_check(from, &staging).and_then(|manifest| {
        let epoch = start_new_epoch(&staging.join(DB), manifest.hub_epoch)?;
        let moved_aside = if occupied.is_empty() {
            None
        } else {
            Some(move_aside(data, &occupied)?)
        };
        move_in(&staging, data, &manifest)?;
        Ok(Restored {
            manifest,
            epoch,
            moved_aside,
        })
    });
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// The entries of `data` other than its lock file and the scheduled
/// backups' default directory, which stays where it is (none if `data` is
/// missing).
fn contents(data: &Path) -> Result<Vec<PathBuf>, RestoreError> {
    let entries = match std::fs::read_dir(data) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(IoError::read(data)(e).into()),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(IoError::read(data))?;
        if e.file_name() != LOCK_FILE && e.file_name() != BACKUPS {
            out.push(e.path());
        }
    }
    Ok(out)
}

/// `<parent>/.<data dir name>.<what>`: on the data directory's filesystem,
/// so moving in is a rename.
fn beside(data: &Path, what: &str) -> PathBuf {
    let name = data.file_name().unwrap_or_default().to_string_lossy();
    data.with_file_name(format!(".{name}.{what}"))
}

/// The archive path a part may have, checked before anything is written.
fn allowed(path: &str) -> bool {
    if path == DB || path == MANIFEST || SECRETS.contains(&path) {
        return true;
    }
    path.strip_prefix(&format!("{MODELS}/"))
        .and_then(|f| f.strip_suffix(".onnx"))
        .or_else(|| path.strip_prefix(&format!("{RELEASES}/")))
        .is_some_and(edgefleet_protocol::validate::is_sha256_hex)
}

/// Unpacks every part into `staging` and checks it against the manifest.
fn unpack_and_check(from: &Path, staging: &Path) -> Result<Manifest, RestoreError> {
    let file = std::fs::File::open(from).map_err(IoError::read(from))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut found: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut manifest: Option<Vec<u8>> = None;
    for entry in archive.entries().map_err(RestoreError::Damaged)? {
        let mut entry = entry.map_err(RestoreError::Damaged)?;
        let path = entry
            .path()
            .map_err(RestoreError::Damaged)?
            .to_string_lossy()
            .into_owned();
        let regular = entry.header().entry_type() == tar::EntryType::Regular;
        if !regular || !allowed(&path) || found.contains_key(&path) || manifest.is_some() {
            return Err(RestoreError::Unexpected(path));
        }
        if path == MANIFEST {
            let mut buf = Vec::new();
            (&mut entry)
                .take(MAX_MANIFEST_BYTES)
                .read_to_end(&mut buf)
                .map_err(RestoreError::Damaged)?;
            manifest = Some(buf);
            continue;
        }
        let target = staging.join(&path);
        // 0600 like every file of a data directory: secrets among them.
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(edgefleet_daemon::files::SECRET_MODE)
            .open(&target)
            .map_err(IoError::write(&target))?;
        let mut reader = Hashing::new(&mut entry);
        let size = std::io::copy(&mut reader, &mut out).map_err(RestoreError::Damaged)?;
        out.sync_all().map_err(IoError::write(&target))?;
        found.insert(path, (size, reader.finish()));
    }
    let manifest = manifest.ok_or(RestoreError::NoManifest)?;
    // The format first, so another format is said as such, not as a field error.
    let format = serde_json::from_slice::<serde_json::Value>(&manifest)
        .map_err(RestoreError::Manifest)?
        .get("format")
        .and_then(|f| f.as_str().map(str::to_owned))
        .unwrap_or_default();
    if format != FORMAT {
        return Err(RestoreError::Format { found: format });
    }
    let manifest: Manifest = serde_json::from_slice(&manifest).map_err(RestoreError::Manifest)?;
    for part in &manifest.parts {
        let Some((size, sha256)) = found.remove(&part.path) else {
            return Err(RestoreError::Missing(part.path.clone()));
        };
        if size != part.size {
            return Err(RestoreError::Mismatch {
                path: part.path.clone(),
                what: format!("{size} bytes, the manifest says {}", part.size),
            });
        }
        if sha256 != part.sha256 {
            return Err(RestoreError::Mismatch {
                path: part.path.clone(),
                what: format!("sha256 {sha256}, the manifest says {}", part.sha256),
            });
        }
    }
    if let Some(extra) = found.into_keys().next() {
        return Err(RestoreError::Unexpected(extra));
    }
    for required in [DB, SECRETS[0]] {
        if !manifest.parts.iter().any(|p| p.path == required) {
            return Err(RestoreError::Missing(required.into()));
        }
    }
    check_store(&staging.join(DB), &manifest)?;
    check_key(&staging.join(SECRETS[0]), &manifest)?;
    Ok(manifest)
}

/// The unpacked store is sound and is the one the manifest describes.
fn check_store(db: &Path, manifest: &Manifest) -> Result<(), RestoreError> {
    let conn = Connection::open(db)?;
    let integrity = super::integrity_check(&conn)?;
    if integrity != "ok" {
        return Err(RestoreError::Inconsistent(format!(
            "integrity check: {integrity}"
        )));
    }
    let counts = Counts::of(&conn)?;
    if counts != manifest.counts {
        return Err(RestoreError::Inconsistent(format!(
            "rows {counts:?}, the manifest says {:?}",
            manifest.counts
        )));
    }
    let (version, epoch) = super::schema_and_epoch(&conn)?;
    if (version, epoch) != (manifest.schema_version, manifest.hub_epoch) {
        return Err(RestoreError::Inconsistent(format!(
            "schema {version} epoch {epoch}, the manifest says schema {} epoch {}",
            manifest.schema_version, manifest.hub_epoch
        )));
    }
    Ok(())
}

/// The archived key is the one devices pinned, as the manifest says.
fn check_key(key: &Path, manifest: &Manifest) -> Result<(), RestoreError> {
    let pem = std::fs::read_to_string(key).map_err(IoError::read(key))?;
    let kid = edgefleet_protocol::Signer::from_pkcs8_pem(&pem)
        .map_err(|e| RestoreError::Inconsistent(format!("hub.key is not a valid key: {e}")))?
        .public()
        .kid()
        .to_string();
    if kid != manifest.hub_key_id {
        return Err(RestoreError::Inconsistent(format!(
            "hub.key has key id {kid}, the manifest says {}",
            manifest.hub_key_id
        )));
    }
    Ok(())
}

/// Starts a new epoch in the restored store (above `archived`, and now if
/// the clock allows) and marks every device's desired document for
/// re-issue in it. Returns the new epoch.
fn start_new_epoch(db: &Path, archived: u64) -> Result<u64, RestoreError> {
    let epoch = edgefleet_protocol::now_ms().max(archived.saturating_add(1));
    let mut conn = Connection::open(db)?;
    let tx = conn.transaction()?;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'epoch'",
        params![epoch.to_string()],
    )?;
    tx.execute(
        "INSERT INTO meta(key, value) VALUES ('restored_from_epoch', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![archived.to_string()],
    )?;
    // An empty hash never matches: the first pass issues every document
    // again, at the next revision, in the new epoch.
    tx.execute(
        "UPDATE desired SET content_hash = '', published_ms = NULL",
        [],
    )?;
    tx.commit()?;
    Ok(epoch)
}

/// Moves the data directory's `entries` into a sibling directory.
fn move_aside(data: &Path, entries: &[PathBuf]) -> Result<PathBuf, RestoreError> {
    let name = data.file_name().unwrap_or_default().to_string_lossy();
    let aside = data.with_file_name(format!(
        "{name}.before-restore-{}",
        edgefleet_protocol::now_ms()
    ));
    edgefleet_daemon::files::create_private_dir(&aside).map_err(IoError::write(&aside))?;
    for e in entries {
        let to = aside.join(e.file_name().unwrap_or_default());
        std::fs::rename(e, &to).map_err(IoError::write(&to))?;
    }
    Ok(aside)
}

/// Moves the checked parts from `staging` into `data`.
fn move_in(staging: &Path, data: &Path, manifest: &Manifest) -> Result<(), RestoreError> {
    let has_models = manifest.parts.iter().any(|p| p.path.starts_with(MODELS));
    if has_models || manifest.counts.models > 0 {
        edgefleet_daemon::files::create_private_dir(&data.join(MODELS))
            .map_err(IoError::write(&data.join(MODELS)))?;
    }
    if manifest.parts.iter().any(|p| p.path.starts_with(RELEASES)) {
        edgefleet_daemon::files::create_private_dir(&data.join(RELEASES))
            .map_err(IoError::write(&data.join(RELEASES)))?;
    }
    for part in &manifest.parts {
        let (from, to) = (staging.join(&part.path), data.join(&part.path));
        std::fs::rename(&from, &to).map_err(IoError::write(&to))?;
        let _ = edgefleet_daemon::files::sync_parent(&to);
    }
    Ok(())
}
