//! In-memory view of enrolled devices that the hot paths need without a
//! database round trip: each device's verifying key (ingest) and broker
//! password hash (embedded broker auth). Loaded from the store at start,
//! updated on enrollment and deletion.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use edgefleet_protocol::{DeviceId, PublicKey};

use crate::store::{Store, StoreError};

#[derive(Debug, Clone)]
pub struct DeviceEntry {
    pub key: PublicKey,
    pub password_hash: [u8; 32],
    /// The key a rotation replaced and until when (Unix ms) it is still
    /// accepted: what the device's outbox signed before it rotated.
    pub previous: Option<(PublicKey, u64)>,
}

impl DeviceEntry {
    /// The previous key, if its grace period has not ended at `now_ms`.
    pub fn previous_at(&self, now_ms: u64) -> Option<&PublicKey> {
        self.previous
            .as_ref()
            .filter(|(_, until)| now_ms < *until)
            .map(|(k, _)| k)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Registry(Arc<RwLock<HashMap<DeviceId, DeviceEntry>>>);

impl Registry {
    /// Loads every device; rows with an unparsable key are skipped with a log.
    pub fn load(store: &Store) -> Result<Self, StoreError> {
        let mut map = HashMap::new();
        for (id, auth) in store.device_auth()? {
            match PublicKey::from_base64(&auth.public_key) {
                Ok(key) => {
                    let previous = auth
                        .previous_key
                        .and_then(|(k, until)| PublicKey::from_base64(&k).ok().map(|k| (k, until)));
                    map.insert(
                        id,
                        DeviceEntry {
                            key,
                            password_hash: auth.password_hash,
                            previous,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(device = %id, error = %e, "stored device key is invalid; device ignored")
                }
            }
        }
        Ok(Self(Arc::new(RwLock::new(map))))
    }

    pub fn insert(&self, id: DeviceId, entry: DeviceEntry) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, entry);
    }

    pub fn remove(&self, id: &DeviceId) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    pub fn get(&self, id: &DeviceId) -> Option<DeviceEntry> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }
}
