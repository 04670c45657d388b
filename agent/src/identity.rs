//! The device's identity in the state directory: its ed25519 key, the pinned
//! hub key and the broker password. Secrets follow the daemons' one policy
//! ([`edgefleet_daemon::files`]): written 0600, refused when others can read
//! them, zeroed in memory, never logged.

use std::path::{Path, PathBuf};

use edgefleet_daemon::files::{
    SecretError, load_or_create_key, require_secret, write_atomic, write_secret,
};
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
    #[error(transparent)]
    File(#[from] SecretError),
    #[error("cannot read {path}")]
    Read {
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
            broker_password: require_secret(&state_dir.join(BROKER_PASSWORD_FILE))?,
        })
    }
}

pub fn load_signer(state_dir: &Path) -> Result<Signer, IdentityError> {
    let path = state_dir.join(DEVICE_KEY_FILE);
    let pem = require_secret(&path)?;
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
    let (signer, _) = load_or_create_key(&state_dir.join(DEVICE_KEY_FILE))?;
    Ok(signer)
}

pub fn store_hub_key(state_dir: &Path, key: &PublicKey) -> Result<(), IdentityError> {
    let path = state_dir.join(HUB_KEY_FILE);
    write_atomic(&path, format!("{}\n", key.to_base64()).as_bytes(), 0o644)
        .map_err(|source| SecretError::Write { path, source }.into())
}

pub fn store_broker_password(state_dir: &Path, password: &str) -> Result<(), IdentityError> {
    let path = state_dir.join(BROKER_PASSWORD_FILE);
    Ok(write_secret(&path, password.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_daemon::files::mode_of;

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

    #[test]
    fn a_secret_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let signer = load_or_create_signer(dir.path()).unwrap();
        store_hub_key(dir.path(), signer.public()).unwrap();
        store_broker_password(dir.path(), "pw").unwrap();
        let pw = dir.path().join(BROKER_PASSWORD_FILE);
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load(dir.path()).unwrap_err();
        assert!(
            matches!(e, IdentityError::File(SecretError::Permissions { .. })),
            "{e:?}"
        );
    }
}
