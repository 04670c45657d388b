//! The device's identity in the state directory: its ed25519 key, the pinned
//! hub key and the broker password. Secrets follow the daemons' one policy
//! ([`edgefleet_daemon::files`]): written 0600, refused when others can read
//! them, zeroed in memory, never logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use edgefleet_daemon::files::{
    SecretError, load_or_create_key, require_secret, write_atomic, write_secret,
};
use edgefleet_protocol::{PublicKey, Signer};
use zeroize::Zeroizing;

/// Device private key (PKCS#8 PEM, 0600).
pub const DEVICE_KEY_FILE: &str = "device-key.pem";
/// Pinned hub public key (standard base64).
pub const HUB_KEY_FILE: &str = "hub-key.pub";
/// A device key `edge-agent rotate-key` is installing (0600): it becomes
/// [`DEVICE_KEY_FILE`] once the hub has accepted it.
pub const NEXT_DEVICE_KEY_FILE: &str = "device-key.next.pem";
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

/// Everything a running agent needs to speak for this device. Both keys
/// can change while it runs: the hub's by a rotation announced to it
/// ([`Identity::follow_hub_key`]), its own by `edge-agent rotate-key`
/// ([`Identity::reload_signer`]).
pub struct Identity {
    signer: RwLock<Arc<Signer>>,
    hub_key: RwLock<PublicKey>,
    pub broker_password: Zeroizing<String>,
    state_dir: PathBuf,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("signer", &self.signer())
            .field("hub_key", self.hub_key().kid())
            .field("broker_password", &"<redacted>")
            .finish()
    }
}

impl Identity {
    pub fn load(state_dir: &Path) -> Result<Self, IdentityError> {
        Ok(Self {
            signer: RwLock::new(Arc::new(load_signer(state_dir)?)),
            hub_key: RwLock::new(load_hub_key(state_dir)?),
            broker_password: require_secret(&state_dir.join(BROKER_PASSWORD_FILE))?,
            state_dir: state_dir.to_owned(),
        })
    }

    /// This device's key, to sign with and to open what is sealed to it.
    pub fn signer(&self) -> Arc<Signer> {
        self.signer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The pinned hub key.
    pub fn hub_key(&self) -> PublicKey {
        self.hub_key
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The key a hub message must verify with: the pinned one, or the one
    /// its announcements lead to from it, which is then pinned (on disk
    /// first; if that fails it is used for this message only, and the
    /// next message tries again).
    pub fn follow_hub_key(
        &self,
        payload: &[u8],
        kind: edgefleet_protocol::MessageKind,
    ) -> PublicKey {
        let pinned = self.hub_key();
        match edgefleet_protocol::rotation::signing_key(payload, kind, &pinned) {
            Ok(Some(next)) => {
                match store_hub_key(&self.state_dir, &next) {
                    Ok(()) => {
                        tracing::info!(previous = %pinned.kid(), key_id = %next.kid(), "hub key rotated: pinned the announced key");
                        *self.hub_key.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::error_chain(&e), "cannot pin the hub's new key; trying again with the next message")
                    }
                }
                next
            }
            // Signed by the pinned key, or not verifiable: `open` says why.
            Ok(None) | Err(_) => pinned,
        }
    }

    /// The keys a message sealed to this device may be sealed to: its own,
    /// then the one `edge-agent rotate-key` is installing (the hub seals to
    /// it as soon as it accepts it, before the daemon has reloaded).
    pub fn recipients(&self) -> Vec<Arc<Signer>> {
        let mut keys = vec![self.signer()];
        let next = self.state_dir.join(NEXT_DEVICE_KEY_FILE);
        if next.exists()
            && let Ok(Some(pem)) = edgefleet_daemon::files::read_secret(&next)
            && let Ok(k) = Signer::from_pkcs8_pem(&pem)
        {
            keys.push(Arc::new(k));
        }
        keys
    }

    /// Re-reads the device key (after `edge-agent rotate-key` replaced it);
    /// true when it changed.
    pub fn reload_signer(&self) -> Result<bool, IdentityError> {
        let next = load_signer(&self.state_dir)?;
        let mut cur = self.signer.write().unwrap_or_else(|p| p.into_inner());
        if cur.public() == next.public() {
            return Ok(false);
        }
        *cur = Arc::new(next);
        Ok(true)
    }
}

/// [`edgefleet_protocol::open_for`] with each of `recipients` in turn
/// while the sealed part does not open with it.
pub fn open_sealed<M: edgefleet_protocol::Message>(
    payload: &[u8],
    hub_key: &PublicKey,
    expect: &edgefleet_protocol::Expect<'_>,
    recipients: &[Arc<Signer>],
) -> Result<M, edgefleet_protocol::Rejection> {
    let mut last = None;
    for me in recipients {
        match edgefleet_protocol::open_for::<M>(payload, hub_key, expect, me) {
            Err(r @ edgefleet_protocol::Rejection::Undecryptable(_)) => last = Some(r),
            r => return r,
        }
    }
    Err(last.unwrap_or(edgefleet_protocol::Rejection::BadSignature))
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
        assert_eq!(&id.hub_key(), a.public());
        assert_eq!(id.broker_password.as_str(), "pw");
        let dbg = format!("{id:?}");
        assert!(!dbg.contains("PRIVATE") && !dbg.contains("\"pw\""));
    }

    #[test]
    fn an_announced_hub_key_is_followed_and_pinned_a_forged_one_is_not() {
        use edgefleet_protocol::{MessageKind, Signer};
        let dir = tempfile::tempdir().unwrap();
        load_or_create_signer(dir.path()).unwrap();
        store_broker_password(dir.path(), "pw").unwrap();
        let (old, new) = (Signer::from_seed(&[1; 32]), Signer::from_seed(&[2; 32]));
        store_hub_key(dir.path(), old.public()).unwrap();
        let id = Identity::load(dir.path()).unwrap();
        let forged = Signer::from_seed(&[2; 32])
            .with_announcements(vec![Signer::from_seed(&[9; 32]).announce(new.public(), 1)]);
        let env = forged.seal_bytes(MessageKind::Desired, b"{}");
        assert_eq!(&id.follow_hub_key(&env, MessageKind::Desired), old.public());
        let ann = old.announce(new.public(), 1);
        let new = new.with_announcements(vec![ann]);
        let env = new.seal_bytes(MessageKind::Desired, b"{}");
        assert_eq!(&id.follow_hub_key(&env, MessageKind::Desired), new.public());
        assert_eq!(&id.hub_key(), new.public());
        assert_eq!(&load_hub_key(dir.path()).unwrap(), new.public());
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
