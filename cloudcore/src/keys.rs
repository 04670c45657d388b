//! The hub's secrets on disk: the ed25519 signing key and the operator and
//! bootstrap tokens. Created on first start with mode 0600; never logged.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edgefleet_protocol::Signer;
use rand::RngCore;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
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
    #[error("{path} is not a valid key")]
    Invalid {
        path: PathBuf,
        #[source]
        source: edgefleet_protocol::sign::KeyError,
    },
    #[error("{path} is readable by other users (mode {mode:o}); run chmod 600 {path}")]
    Permissions { path: PathBuf, mode: u32 },
}

/// Writes `contents` to a new file with mode 0600 (fails if it exists).
pub fn write_secret(path: &Path, contents: &[u8]) -> Result<(), KeyError> {
    let err = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)
}

fn read_secret(path: &Path) -> Result<Option<String>, KeyError> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions {
                    path: path.to_owned(),
                    mode,
                });
            }
            Ok(Some(s))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KeyError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A random token: 32 bytes, base64url.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// Loads `<dir>/hub.key`, creating it on first start.
pub fn load_or_create_signer(dir: &Path) -> Result<(Signer, bool), KeyError> {
    let path = dir.join("hub.key");
    if let Some(pem) = read_secret(&path)? {
        let s = Signer::from_pkcs8_pem(&pem).map_err(|source| KeyError::Invalid {
            path: path.clone(),
            source,
        })?;
        return Ok((s, false));
    }
    let s = Signer::generate();
    let pem = s.to_pkcs8_pem().map_err(|source| KeyError::Invalid {
        path: path.clone(),
        source,
    })?;
    write_secret(&path, pem.as_bytes())?;
    Ok((s, true))
}

/// Uses `configured` if set, else reads or creates `<dir>/<name>`.
pub fn load_or_create_token(dir: &Path, name: &str, configured: &str) -> Result<String, KeyError> {
    if !configured.is_empty() {
        return Ok(configured.to_owned());
    }
    let path = dir.join(name);
    if let Some(t) = read_secret(&path)? {
        return Ok(t.trim().to_owned());
    }
    let t = random_token();
    write_secret(&path, format!("{t}\n").as_bytes())?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (a, created) = load_or_create_signer(dir.path()).unwrap();
        assert!(created);
        let mode = std::fs::metadata(dir.path().join("hub.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, created) = load_or_create_signer(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(a.public(), b.public());
    }

    #[test]
    fn world_readable_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let t = load_or_create_token(dir.path(), "operator-token", "").unwrap();
        assert_eq!(
            load_or_create_token(dir.path(), "operator-token", "").unwrap(),
            t
        );
        let p = dir.path().join("operator-token");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create_token(dir.path(), "operator-token", ""),
            Err(KeyError::Permissions { .. })
        ));
        assert_eq!(
            load_or_create_token(dir.path(), "x", "configured-token-123").unwrap(),
            "configured-token-123"
        );
    }
}
