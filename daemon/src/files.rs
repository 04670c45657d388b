//! Files a daemon keeps in its directory: every write atomic (a crash leaves
//! the old file or the new one, never half of either), and secrets (private
//! keys, passwords, tokens) under one policy: written 0600, refused on read
//! when group or others can read them, held in memory that is zeroed when
//! dropped, never logged.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// The mode secrets are written with.
pub const SECRET_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is readable by other users (mode {mode:03o}); it holds a secret: run chmod 600 {path}"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{path} does not hold a valid key")]
    Key {
        path: PathBuf,
        #[source]
        source: edgefleet_protocol::sign::KeyError,
    },
}

/// Writes `data` to a temporary file created with `mode`, fsyncs it,
/// renames it over `path` and fsyncs the directory, so a crash leaves the
/// old or the new file.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = (|| {
        let mut f = create_with_mode(&tmp, mode)?;
        f.write_all(data)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

/// Creates (or truncates) `path` for writing with exactly `mode`, set
/// before any byte is written.
pub fn create_with_mode(path: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    // `mode` on open is masked by the umask; make it exact.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(f)
}

/// fsyncs the directory holding `path`: a rename into it is durable once
/// the directory is.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Writes a secret atomically with mode 0600.
pub fn write_secret(path: &Path, data: &[u8]) -> Result<(), SecretError> {
    write_atomic(path, data, SECRET_MODE).map_err(|source| SecretError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Reads a secret, trimmed of surrounding whitespace; `None` when the file
/// does not exist. Refused when group or others may read it.
pub fn read_secret(path: &Path) -> Result<Option<Zeroizing<String>>, SecretError> {
    let read_err = |source| SecretError::Read {
        path: path.to_owned(),
        source,
    };
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    // The mode of the file opened, not of whatever the path names later.
    let mode = f.metadata().map_err(read_err)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = Zeroizing::new(String::new());
    std::io::Read::read_to_string(&mut f, &mut text).map_err(read_err)?;
    let trimmed = text.trim();
    if trimmed.len() == text.len() {
        return Ok(Some(text));
    }
    Ok(Some(Zeroizing::new(trimmed.to_owned())))
}

/// Like [`read_secret`], but a missing file is an error.
pub fn require_secret(path: &Path) -> Result<Zeroizing<String>, SecretError> {
    read_secret(path)?.ok_or_else(|| SecretError::Read {
        path: path.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// A signing key (PKCS#8 PEM) under the secret policy: loaded from `path`,
/// or created there (0600) when there is none yet; `true` when created.
pub fn load_or_create_key(path: &Path) -> Result<(edgefleet_protocol::Signer, bool), SecretError> {
    let bad = |source| SecretError::Key {
        path: path.to_owned(),
        source,
    };
    if let Some(pem) = read_secret(path)? {
        return Ok((
            edgefleet_protocol::Signer::from_pkcs8_pem(&pem).map_err(bad)?,
            false,
        ));
    }
    let signer = edgefleet_protocol::Signer::generate();
    let pem = signer.to_pkcs8_pem().map_err(bad)?;
    write_secret(path, pem.as_bytes())?;
    Ok((signer, true))
}

/// Creates `dir` (and its parents) readable by its owner only, when it does
/// not exist yet; an existing directory is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The permission bits of a file (`None` when it does not exist).
pub fn mode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_written_0600_and_read_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        write_secret(&p, b"s3cret\n").unwrap();
        assert_eq!(mode_of(&p), Some(0o600));
        assert_eq!(read_secret(&p).unwrap().unwrap().as_str(), "s3cret");
        // Overwriting keeps the mode and leaves no temporary file behind.
        write_secret(&p, b"other").unwrap();
        assert_eq!(require_secret(&p).unwrap().as_str(), "other");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn loose_permissions_are_refused_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        assert!(read_secret(&p).unwrap().is_none());
        assert!(matches!(require_secret(&p), Err(SecretError::Read { .. })));
        for mode in [0o640, 0o604, 0o644] {
            std::fs::write(&p, "k").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_secret(&p).unwrap_err();
            assert!(matches!(e, SecretError::Permissions { mode: m, .. } if m == mode));
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_secret(&p).unwrap().unwrap().as_str(), "k");
    }

    #[test]
    fn a_key_is_created_once_and_a_bad_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        let (a, created) = load_or_create_key(&p).unwrap();
        assert!(created);
        assert_eq!(mode_of(&p), Some(0o600));
        let (b, created) = load_or_create_key(&p).unwrap();
        assert!(!created);
        assert_eq!(a.public(), b.public());
        write_secret(
            &p,
            b"-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(matches!(
            load_or_create_key(&p),
            Err(SecretError::Key { .. })
        ));
    }

    #[test]
    fn private_directories_are_the_owners_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b");
        create_private_dir(&p).unwrap();
        assert_eq!(mode_of(&p), Some(0o700));
        create_private_dir(&p).unwrap();
    }

    #[test]
    fn atomic_write_keeps_the_given_mode_despite_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        write_atomic(&p, b"a = 1\n", 0o644).unwrap();
        assert_eq!(mode_of(&p), Some(0o644));
        assert_eq!(std::fs::read(&p).unwrap(), b"a = 1\n");
    }
}
