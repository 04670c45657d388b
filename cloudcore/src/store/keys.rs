//! Key rotation's records ([`edgefleet_protocol::rotation`]): the hub's
//! keys, oldest first, each with the announcement of its successor, and the
//! device-key swap.

use edgefleet_protocol::{DeviceId, PublicKey};
use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, ms, sql_i64};

/// One of the hub's keys, as `GET /hub/key` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubKeyRecord {
    pub kid: String,
    pub public_key: String,
    pub created_ms: u64,
    /// When a newer key replaced it.
    pub rotated_ms: Option<u64>,
    /// When the hub stopped announcing its successor to devices pinned to
    /// it, and why (`all_acknowledged`, `grace_period`, `chain_full`).
    pub retired: Option<(u64, String)>,
    /// Devices whose last status names this key.
    pub devices: u64,
}

/// Why an old key stops being vouched for.
pub const RETIRED_ACKNOWLEDGED: &str = "all_acknowledged";
pub const RETIRED_GRACE: &str = "grace_period";
pub const RETIRED_CHAIN_FULL: &str = "chain_full";

impl Store {
    /// Records `current` as a hub key if it is not one yet (first start, or
    /// a store from before key rotation).
    pub fn register_hub_key(&self, current: &PublicKey, now_ms: u64) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT OR IGNORE INTO hub_keys(kid, public_key, created_ms) VALUES (?1, ?2, ?3)",
            params![current.kid().0, current.to_base64(), sql_i64(now_ms)],
        )?;
        Ok(())
    }

    /// The id of the hub's current key; `None` before any was recorded.
    pub fn current_hub_key(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT kid FROM hub_keys WHERE rotated_ms IS NULL ORDER BY created_ms DESC, rowid DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Records that `old` was replaced by `new`, with `announcement` (signed
    /// by `old`), in one transaction. Links beyond `max_chain` are retired.
    pub fn record_hub_rotation(
        &self,
        old: &PublicKey,
        new: &PublicKey,
        announcement: &str,
        max_chain: usize,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let now = sql_i64(now_ms);
        let n = tx.execute(
            "UPDATE hub_keys SET next_announcement = ?2, rotated_ms = ?3
             WHERE kid = ?1 AND rotated_ms IS NULL",
            params![old.kid().0, announcement, now],
        )?;
        if n != 1 {
            return Err(StoreError::Corrupt(format!(
                "hub key {} is not the current key in the store",
                old.kid()
            )));
        }
        tx.execute(
            "INSERT INTO hub_keys(kid, public_key, created_ms) VALUES (?1, ?2, ?3)",
            params![new.kid().0, new.to_base64(), now],
        )?;
        tx.execute(
            "UPDATE hub_keys SET retired_ms = ?1, retired_reason = ?2
             WHERE retired_ms IS NULL AND rotated_ms IS NOT NULL AND kid NOT IN (
               SELECT kid FROM hub_keys WHERE rotated_ms IS NOT NULL
               ORDER BY rotated_ms DESC, rowid DESC LIMIT ?3)",
            params![now, RETIRED_CHAIN_FULL, max_chain as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The announcements devices may still need, oldest first.
    pub fn hub_key_chain(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT next_announcement FROM hub_keys
             WHERE next_announcement IS NOT NULL AND retired_ms IS NULL
             ORDER BY rotated_ms, rowid",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every hub key, oldest first, with how many devices report it.
    pub fn hub_keys(&self) -> Result<Vec<HubKeyRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT k.kid, k.public_key, k.created_ms, k.rotated_ms, k.retired_ms, k.retired_reason,
                    (SELECT COUNT(*) FROM devices d WHERE d.hub_key_id = k.kid)
             FROM hub_keys k ORDER BY k.created_ms, k.rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            let retired: Option<i64> = r.get(4)?;
            let reason: Option<String> = r.get(5)?;
            Ok(HubKeyRecord {
                kid: r.get(0)?,
                public_key: r.get(1)?,
                created_ms: ms(r.get(2)?),
                rotated_ms: r.get::<_, Option<i64>>(3)?.map(ms),
                retired: retired.map(|t| (ms(t), reason.unwrap_or_default())),
                devices: ms(r.get(6)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Retires old keys no device needs any more: walking from the oldest
    /// unretired one, a key is retired when no device reports it or an
    /// older unretired key (nor reported none at all, so may still pin
    /// one), or when `grace_ms` has passed since it was replaced. Returns
    /// the retired keys and why.
    pub fn retire_hub_keys(
        &self,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<Vec<(String, &'static str)>, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let old: Vec<(String, u64)> = {
            let mut stmt = tx.prepare(
                "SELECT kid, rotated_ms FROM hub_keys
                 WHERE rotated_ms IS NOT NULL AND retired_ms IS NULL ORDER BY rotated_ms, rowid",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, ms(r.get(1)?))))?;
            rows.collect::<Result<_, _>>()?
        };
        if old.is_empty() {
            return Ok(Vec::new());
        }
        // Devices that reported no hub key yet may pin any of them.
        let silent: i64 = tx.query_row(
            "SELECT COUNT(*) FROM devices WHERE hub_key_id IS NULL",
            [],
            |r| r.get(0),
        )?;
        let mut out = Vec::new();
        let mut behind = silent > 0;
        for (kid, rotated) in old {
            let on_it: i64 = tx.query_row(
                "SELECT COUNT(*) FROM devices WHERE hub_key_id = ?1",
                params![kid],
                |r| r.get(0),
            )?;
            behind |= on_it > 0;
            let reason = if now_ms.saturating_sub(rotated) >= grace_ms {
                RETIRED_GRACE
            } else if !behind {
                RETIRED_ACKNOWLEDGED
            } else {
                continue;
            };
            tx.execute(
                "UPDATE hub_keys SET retired_ms = ?2, retired_reason = ?3 WHERE kid = ?1",
                params![kid, sql_i64(now_ms), reason],
            )?;
            out.push((kid, reason));
        }
        tx.commit()?;
        Ok(out)
    }

    /// Devices whose last status names a hub key other than `current` (or
    /// none).
    pub fn devices_behind_hub_key(&self, current: &str) -> Result<u64, StoreError> {
        let n: i64 = self.lock().query_row(
            "SELECT COUNT(*) FROM devices WHERE hub_key_id IS NOT ?1",
            params![current],
            |r| r.get(0),
        )?;
        Ok(ms(n))
    }

    /// Replaces a device's key with `new` if it is still `old`, keeping
    /// `old` as its previous key until `previous_until_ms`.
    pub fn rotate_device_key(
        &self,
        id: &DeviceId,
        old: &PublicKey,
        new: &PublicKey,
        previous_until_ms: u64,
    ) -> Result<KeySwap, StoreError> {
        let conn = self.lock();
        let taken = conn
            .query_row(
                "SELECT 1 FROM devices WHERE public_key = ?1 OR previous_key = ?1",
                params![new.to_base64()],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if taken {
            return Ok(KeySwap::KeyTaken);
        }
        let n = conn.execute(
            "UPDATE devices SET previous_key = public_key, previous_key_until_ms = ?4, public_key = ?3
             WHERE id = ?1 AND public_key = ?2",
            params![
                id.as_str(),
                old.to_base64(),
                new.to_base64(),
                sql_i64(previous_until_ms)
            ],
        )?;
        Ok(if n == 1 {
            KeySwap::Swapped
        } else {
            KeySwap::Changed
        })
    }
}

/// What [`Store::rotate_device_key`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySwap {
    Swapped,
    /// The device's key is no longer the old one (rotated meanwhile, or
    /// the device was deleted).
    Changed,
    /// Another device has (or just had) that key.
    KeyTaken,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{enroll, store};
    use edgefleet_protocol::Signer;

    fn report_key(s: &Store, id: &str, kid: &str) {
        s.lock()
            .execute(
                "UPDATE devices SET hub_key_id = ?2 WHERE id = ?1",
                params![id, kid],
            )
            .unwrap();
    }

    #[test]
    fn old_keys_retire_once_every_device_moved_or_after_the_grace_period() {
        let s = store();
        enroll(&s, "a", &[]);
        enroll(&s, "b", &[]);
        let (k1, k2, k3) = (
            Signer::from_seed(&[1; 32]),
            Signer::from_seed(&[2; 32]),
            Signer::from_seed(&[3; 32]),
        );
        s.register_hub_key(k1.public(), 0).unwrap();
        s.record_hub_rotation(k1.public(), k2.public(), "a1", 4, 10)
            .unwrap();
        s.record_hub_rotation(k2.public(), k3.public(), "a2", 4, 20)
            .unwrap();
        assert_eq!(s.hub_key_chain().unwrap(), ["a1", "a2"]);
        // b never reported: both links stay.
        report_key(&s, "a", &k3.public().kid().0);
        assert!(s.retire_hub_keys(30, 1000).unwrap().is_empty());
        // b on k2: k1's link goes, k2's stays.
        report_key(&s, "b", &k2.public().kid().0);
        assert_eq!(
            s.retire_hub_keys(30, 1000).unwrap(),
            [(k1.public().kid().0.clone(), RETIRED_ACKNOWLEDGED)]
        );
        assert_eq!(s.hub_key_chain().unwrap(), ["a2"]);
        assert_eq!(s.devices_behind_hub_key(&k3.public().kid().0).unwrap(), 1);
        // The grace period ends with b still behind.
        assert_eq!(
            s.retire_hub_keys(1020, 1000).unwrap(),
            [(k2.public().kid().0.clone(), RETIRED_GRACE)]
        );
        assert!(s.hub_key_chain().unwrap().is_empty());
        let keys = s.hub_keys().unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(keys[2].rotated_ms, None);
        assert_eq!(keys[1].devices, 1);
        // Rotating from a key that is not the current one is refused.
        assert!(
            s.record_hub_rotation(k1.public(), k3.public(), "x", 4, 40)
                .is_err()
        );
    }

    #[test]
    fn the_chain_keeps_its_newest_links() {
        let s = store();
        let keys: Vec<Signer> = (1..=7u8).map(|i| Signer::from_seed(&[i; 32])).collect();
        s.register_hub_key(keys[0].public(), 0).unwrap();
        for (i, w) in keys.windows(2).enumerate() {
            s.record_hub_rotation(w[0].public(), w[1].public(), &format!("a{i}"), 4, i as u64)
                .unwrap();
        }
        assert_eq!(s.hub_key_chain().unwrap(), ["a2", "a3", "a4", "a5"]);
    }

    #[test]
    fn a_device_key_is_swapped_only_from_the_key_it_had() {
        let s = store();
        let old = crate::testing::device_key("a");
        enroll(&s, "a", &[]);
        let id = DeviceId::new("a").unwrap();
        let new = Signer::from_seed(&[8; 32]);
        assert_eq!(
            s.rotate_device_key(&id, new.public(), new.public(), 5)
                .unwrap(),
            KeySwap::Changed
        );
        assert_eq!(
            s.rotate_device_key(&id, old.public(), new.public(), 5)
                .unwrap(),
            KeySwap::Swapped
        );
        let auth = s.device_auth().unwrap().remove(&id).unwrap();
        assert_eq!(auth.public_key, new.public().to_base64());
        assert_eq!(auth.previous_key, Some((old.public().to_base64(), 5)));
        // Another device's key, or a key just replaced, is refused.
        let b = enroll(&s, "b", &[]);
        let newer = Signer::from_seed(&[9; 32]);
        assert_eq!(
            s.rotate_device_key(&id, new.public(), b.public(), 5)
                .unwrap(),
            KeySwap::KeyTaken
        );
        assert_eq!(
            s.rotate_device_key(&DeviceId::new("b").unwrap(), b.public(), old.public(), 5)
                .unwrap(),
            KeySwap::KeyTaken
        );
        assert_eq!(
            s.rotate_device_key(&id, new.public(), newer.public(), 5)
                .unwrap(),
            KeySwap::Swapped
        );
    }
}
