//! The device's identity in the state directory: its ed25519 key, the pinned
//! hub key and the broker password. Secret files are written 0600 and their
//! contents never reach a log line.

use std::io::Write;
use std::path::{Path, PathBuf};

use edgefleet_protocol::{PublicKey, Signer};
use zeroize::Zeroizing;

/// Device private key (PKCS#8 PEM, 0600).
pub const DEVICE_KEY_FILE: &str = "device-key.pem";
/// Pinned hub public key (standard base64).
pub const HUB_KEY_FILE: &str = "hub-key.pub";
/// Broker password from enrollment (0600).
pub const BROKER_PASSWORD_FILE: &str = "broker-password";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
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
    #[error("{path} does not hold a valid key")]
    Key {
        path: PathBuf,
        #[source]
        source: edgefleet_protocol::sign::KeyError,
    },
}

/// Everything a running agent needs to speak for this device.
pub struct Identity {
    pub signer: Signer,
    pub hub_key: PublicKey,
    pub broker_password: Zeroizing<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("signer", &self.signer)
            .field("hub_key", self.hub_key.kid())
            .field("broker_password", &"<redacted>")
            .finish()
    }
}

impl Identity {
    pub fn load(state_dir: &Path) -> Result<Self, IdentityError> {
        Ok(Self {
            signer: load_signer(state_dir)?,
            hub_key: load_hub_key(state_dir)?,
            broker_password: read_secret(&state_dir.join(BROKER_PASSWORD_FILE))?,
        })
    }
}

fn read_secret(path: &Path) -> Result<Zeroizing<String>, IdentityError> {
    std::fs::read_to_string(path)
        .map(|s| Zeroizing::new(s.trim().to_owned()))
        .map_err(|source| IdentityError::Read {
            path: path.to_owned(),
            source,
        })
}

pub fn load_signer(state_dir: &Path) -> Result<Signer, IdentityError> {
    let path = state_dir.join(DEVICE_KEY_FILE);
    let pem = read_secret(&path)?;
    Signer::from_pkcs8_pem(&pem).map_err(|source| IdentityError::Key { path, source })
}

pub fn load_hub_key(state_dir: &Path) -> Result<PublicKey, IdentityError> {
    let path = state_dir.join(HUB_KEY_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| IdentityError::Read {
        path: path.clone(),
        source,
    })?;
    PublicKey::from_base64(text.trim()).map_err(|source| IdentityError::Key { path, source })
}

/// Loads the device key, or creates one (0600) when there is none yet.
pub fn load_or_create_signer(state_dir: &Path) -> Result<Signer, IdentityError> {
    let path = state_dir.join(DEVICE_KEY_FILE);
    if path.exists() {
        return load_signer(state_dir);
    }
    let signer = Signer::generate();
    let pem = signer.to_pkcs8_pem().map_err(|source| IdentityError::Key {
        path: path.clone(),
        source,
    })?;
    write_atomic(&path, pem.as_bytes(), 0o600)
        .map_err(|source| IdentityError::Write { path, source })?;
    Ok(signer)
}

pub fn store_hub_key(state_dir: &Path, key: &PublicKey) -> Result<(), IdentityError> {
    let path = state_dir.join(HUB_KEY_FILE);
    write_atomic(&path, format!("{}\n", key.to_base64()).as_bytes(), 0o644)
        .map_err(|source| IdentityError::Write { path, source })
}

pub fn store_broker_password(state_dir: &Path, password: &str) -> Result<(), IdentityError> {
    let path = state_dir.join(BROKER_PASSWORD_FILE);
    write_atomic(&path, password.as_bytes(), 0o600)
        .map_err(|source| IdentityError::Write { path, source })
}

/// Writes `data` to a temp file with `mode` from the start, fsyncs it and
/// renames it over `path`, so a crash leaves the old or the new file.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    // `mode` on open is masked by the umask; make it exact.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}

/// The permission bits of a file (`None` when it does not exist).
pub fn mode_of(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_signer(dir.path()).unwrap();
        let b = load_or_create_signer(dir.path()).unwrap();
        assert_eq!(a.public(), b.public());
        assert_eq!(mode_of(&dir.path().join(DEVICE_KEY_FILE)), Some(0o600));
        store_broker_password(dir.path(), "pw").unwrap();
        assert_eq!(mode_of(&dir.path().join(BROKER_PASSWORD_FILE)), Some(0o600));
        store_hub_key(dir.path(), a.public()).unwrap();
        let id = Identity::load(dir.path()).unwrap();
        assert_eq!(&id.hub_key, a.public());
        assert_eq!(id.broker_password.as_str(), "pw");
        let dbg = format!("{id:?}");
        assert!(!dbg.contains("PRIVATE") && !dbg.contains("\"pw\""));
    }
}
