//! The hub's secrets on disk: the ed25519 signing key and the operator and
//! bootstrap tokens. Created on first start, under the daemons' one policy
//! for secrets ([`edgefleet_daemon::files`]): 0600, refused when others can
//! read them, never logged.
//!
//! The signing key can be rotated while the hub runs ([`HubKeys::rotate`],
//! `cloudcore keys rotate`; the protocol side is
//! [`edgefleet_protocol::rotation`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edgefleet_daemon::files::{
    SecretError, load_or_create_key, read_secret, sync_parent, write_secret,
};
use edgefleet_protocol::rotation::MAX_CHAIN;
use edgefleet_protocol::{KeyId, PublicKey, Signer};
use rand::RngCore;

use crate::store::{Store, StoreError};

const KEY_FILE: &str = "hub.key";
/// The new key of a rotation in progress: it becomes `hub.key` once the
/// store has recorded the rotation.
const NEXT_KEY_FILE: &str = "hub.key.next";

#[derive(Debug, thiserror::Error)]
pub enum HubKeyError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{path} holds hub key {file}, but the store's current hub key is {store}: devices would refuse what this key signs (restore the key file that goes with this store)"
    )]
    Mismatch {
        path: PathBuf,
        file: KeyId,
        store: String,
    },
    #[error("cannot replace {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The hub's current signing key, carrying the announcements devices on an
/// older key need; replaced in place by a rotation.
#[derive(Debug)]
pub struct HubKeys {
    dir: PathBuf,
    current: RwLock<Arc<Signer>>,
    /// One rotation at a time.
    rotating: Mutex<()>,
}

impl HubKeys {
    /// Loads `<dir>/hub.key` (created on first start; `true` then),
    /// finishing a rotation a crash interrupted after the store recorded it
    /// or forgetting one it interrupted before. A key file that is not the
    /// store's current key is refused.
    pub fn load(dir: &Path, store: &Store) -> Result<(Self, bool), HubKeyError> {
        let next = dir.join(NEXT_KEY_FILE);
        if let Some(pem) = read_secret(&next)? {
            let known = Signer::from_pkcs8_pem(&pem)
                .ok()
                .map(|s| {
                    store
                        .current_hub_key()
                        .map(|c| c.as_deref() == Some(&s.public().kid().0))
                })
                .transpose()?
                .unwrap_or(false);
            let path = dir.join(KEY_FILE);
            let io = |source| HubKeyError::Io {
                path: path.clone(),
                source,
            };
            if known {
                tracing::warn!("finishing a hub key rotation interrupted by a stop");
                std::fs::rename(&next, &path).map_err(io)?;
                sync_parent(&path).map_err(io)?;
            } else {
                tracing::warn!(
                    "discarding the new key of a hub key rotation that did not complete"
                );
                std::fs::remove_file(&next).map_err(io)?;
            }
        }
        let path = dir.join(KEY_FILE);
        let (signer, created) = load_or_create_key(&path)?;
        match store.current_hub_key()? {
            None => store.register_hub_key(signer.public(), edgefleet_protocol::now_ms())?,
            Some(kid) if kid == signer.public().kid().0 => {}
            Some(kid) => {
                return Err(HubKeyError::Mismatch {
                    path,
                    file: signer.public().kid().clone(),
                    store: kid,
                });
            }
        }
        let signer = signer.with_announcements(store.hub_key_chain()?);
        Ok((
            Self {
                dir: dir.to_owned(),
                current: RwLock::new(Arc::new(signer)),
                rotating: Mutex::new(()),
            },
            created,
        ))
    }

    /// A key that is not on disk (tests).
    pub fn fixed(signer: Signer) -> Self {
        Self {
            dir: PathBuf::new(),
            current: RwLock::new(Arc::new(signer)),
            rotating: Mutex::new(()),
        }
    }

    /// The key to sign with now.
    pub fn signer(&self) -> Arc<Signer> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn public(&self) -> PublicKey {
        self.signer().public().clone()
    }

    fn set(&self, signer: Signer) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(signer);
    }

    /// Replaces the signing key with a new one, announced by the current
    /// one; returns the old and new key ids. Blocking (file and store I/O).
    ///
    /// The order keeps a crash harmless: the new key is written aside, the
    /// store records the rotation (the commit point), the key file is
    /// replaced; [`HubKeys::load`] finishes or forgets what a crash
    /// interrupted.
    pub fn rotate(&self, store: &Store) -> Result<(KeyId, KeyId), HubKeyError> {
        let _one = self.rotating.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.signer();
        let new = Signer::generate();
        let next = self.dir.join(NEXT_KEY_FILE);
        let pem = new.to_pkcs8_pem().map_err(|source| SecretError::Key {
            path: next.clone(),
            source,
        })?;
        write_secret(&next, pem.as_bytes())?;
        let now = edgefleet_protocol::now_ms();
        let announcement = old.announce(new.public(), now);
        if let Err(e) =
            store.record_hub_rotation(old.public(), new.public(), &announcement, MAX_CHAIN, now)
        {
            let _ = std::fs::remove_file(&next);
            return Err(e.into());
        }
        let path = self.dir.join(KEY_FILE);
        if let Err(source) = std::fs::rename(&next, &path).and_then(|()| sync_parent(&path)) {
            // Recorded: the next start finishes the rename.
            tracing::error!(error = %source, "cannot move the new hub key into place; the next start will");
        }
        let ids = (old.public().kid().clone(), new.public().kid().clone());
        self.set(new.with_announcements(store.hub_key_chain()?));
        Ok(ids)
    }

    /// Re-reads the announcement chain (after old keys were retired).
    pub fn refresh_chain(&self, store: &Store) -> Result<(), StoreError> {
        let _one = self.rotating.lock().unwrap_or_else(|p| p.into_inner());
        let chain = store.hub_key_chain()?;
        self.set(self.signer().bare().with_announcements(chain));
        Ok(())
    }
}

/// A random token: 32 bytes, base64url.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// Once a minute: retires old hub keys every device has moved past, or
/// whose grace period ended (the devices-behind gauge is read at each
/// scrape of /metrics).
pub async fn retire_old(
    store: Store,
    keys: Arc<HubKeys>,
    grace: edgefleet_protocol::Duration,
    metrics: Arc<crate::metrics::Metrics>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let grace_ms = grace.as_secs().saturating_mul(1000);
    loop {
        let k = keys.clone();
        let r = store
            .run(move |st| {
                let retired = st.retire_hub_keys(edgefleet_protocol::now_ms(), grace_ms)?;
                if !retired.is_empty() {
                    k.refresh_chain(st)?;
                }
                Ok::<_, StoreError>(retired)
            })
            .await;
        match r {
            Ok(retired) => {
                for (kid, reason) in retired {
                    tracing::info!(key_id = %kid, reason, "old hub key retired: no longer announced to devices");
                    metrics
                        .hub_keys_retired
                        .get_or_create(&vec![("reason", reason.to_owned())])
                        .inc();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot retire old hub keys; trying again in a minute")
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(RETIRE_EVERY) => {}
        }
    }
}

/// How often [`retire_old`] looks.
const RETIRE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Loads `<dir>/hub.key`, creating it on first start.
pub fn load_or_create_signer(dir: &Path) -> Result<(Signer, bool), SecretError> {
    load_or_create_key(&dir.join(KEY_FILE))
}

/// Uses `configured` if set, else reads or creates `<dir>/<name>`.
pub fn load_or_create_token(
    dir: &Path,
    name: &str,
    configured: &str,
) -> Result<String, SecretError> {
    if !configured.is_empty() {
        return Ok(configured.to_owned());
    }
    let path = dir.join(name);
    if let Some(t) = read_secret(&path)? {
        return Ok(t.as_str().to_owned());
    }
    let t = random_token();
    write_secret(&path, format!("{t}\n").as_bytes())?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
    fn a_rotation_survives_a_restart_and_one_cut_short_is_finished_or_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (keys, created) = HubKeys::load(dir.path(), &store).unwrap();
        assert!(created);
        let first = keys.public();
        let (old, new) = keys.rotate(&store).unwrap();
        assert_eq!(&old, first.kid());
        assert_eq!(keys.signer().announcements().len(), 1);
        let (again, _) = HubKeys::load(dir.path(), &store).unwrap();
        assert_eq!(again.public().kid(), &new);
        assert_eq!(again.signer().announcements().len(), 1);

        // Cut short after the key was written aside, before the store
        // recorded it: forgotten.
        let stray = Signer::generate();
        write_secret(
            &dir.path().join(NEXT_KEY_FILE),
            stray.to_pkcs8_pem().unwrap().as_bytes(),
        )
        .unwrap();
        let (k, _) = HubKeys::load(dir.path(), &store).unwrap();
        assert_eq!(k.public().kid(), &new);
        assert!(!dir.path().join(NEXT_KEY_FILE).exists());

        // Cut short after the store recorded it, before the rename: finished.
        let next = Signer::generate();
        write_secret(
            &dir.path().join(NEXT_KEY_FILE),
            next.to_pkcs8_pem().unwrap().as_bytes(),
        )
        .unwrap();
        let ann = k.signer().announce(next.public(), 1);
        store
            .record_hub_rotation(k.signer().public(), next.public(), &ann, MAX_CHAIN, 1)
            .unwrap();
        let (k, _) = HubKeys::load(dir.path(), &store).unwrap();
        assert_eq!(k.public(), *next.public());
        assert_eq!(k.signer().announcements().len(), 2);

        // A key file that is not the store's current key is refused.
        write_secret(
            &dir.path().join(KEY_FILE),
            Signer::generate().to_pkcs8_pem().unwrap().as_bytes(),
        )
        .unwrap();
        assert!(matches!(
            HubKeys::load(dir.path(), &store),
            Err(HubKeyError::Mismatch { .. })
        ));
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
            Err(SecretError::Permissions { .. })
        ));
        assert_eq!(
            load_or_create_token(dir.path(), "x", "configured-token-123").unwrap(),
            "configured-token-123"
        );
    }
}
