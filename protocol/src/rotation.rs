//! Key rotation without re-enrolling.
//!
//! **The hub's key.** A new hub key is announced by the key it replaces: a
//! [`KeyAnnouncement`] in an envelope of type `hubKey` signed by the old key
//! ([`Signer::announce`]). After a rotation the hub signs with the new key
//! and every envelope it seals carries the announcements of its recent
//! rotations, oldest first, in the envelope's `keys` field (outside the
//! signature: each announcement is signed itself). A device pinned to an
//! older key follows the chain from its pinned key, one verified link at a
//! time ([`signing_key`]), and pins the key it arrives at. So a device that
//! was offline through one rotation, or several, converges from the first
//! document it receives; nothing has to reach it while it is away.
//!
//! The hub drops an announcement from the chain (retires the old key) once
//! every device has reported the newer key in its status, or after a grace
//! period; the chain never holds more than [`MAX_CHAIN`] links.
//!
//! **A device's key.** A [`DeviceKeyRotation`] in an envelope of type
//! `deviceKey`, signed by the device's current key, is posted to the hub,
//! which from then on verifies the device with the new key (and the old one
//! for a grace period, for what its outbox signed before) and seals its
//! desired state to the new key.

use serde::{Deserialize, Serialize};

use crate::name::DeviceId;
use crate::sign::{
    Envelope, Message, MessageKind, PublicKey, Rejection, Signer, verified_payload, within_limit,
};
use crate::validate::ValidationErrors;

/// Most announcements an envelope carries.
pub const MAX_CHAIN: usize = 4;

/// Room [`crate::sign::sealed_len`] leaves for a chain of [`MAX_CHAIN`]
/// announcements (each about 330 bytes, escaped).
pub const CHAIN_RESERVE: usize = 2048;

/// A new hub key, announced by the previous one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyAnnouncement {
    /// The new key (standard base64, as at enrollment).
    pub public_key: String,
    pub key_id: String,
    pub issued_at_ms: u64,
}

/// A device's new key, signed by its current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceKeyRotation {
    pub device_id: DeviceId,
    pub public_key: String,
    pub key_id: String,
    pub issued_at_ms: u64,
}

impl Message for DeviceKeyRotation {
    const KIND: MessageKind = MessageKind::DeviceKey;

    fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = ValidationErrors::default();
        match PublicKey::from_base64(&self.public_key) {
            Ok(k) if k.kid().0 == self.key_id => {}
            Ok(_) => errs.push("keyId", "is not the id of publicKey"),
            Err(e) => errs.push("publicKey", e.to_string()),
        }
        errs.into_result()
    }
}

impl DeviceKeyRotation {
    /// The new key; [`Message::validate`] has checked it parses.
    pub fn key(&self) -> Option<PublicKey> {
        PublicKey::from_base64(&self.public_key).ok()
    }
}

impl Signer {
    /// An announcement of `next`, signed by this key (never carrying this
    /// key's own announcements).
    pub fn announce(&self, next: &PublicKey, issued_at_ms: u64) -> String {
        let a = KeyAnnouncement {
            public_key: next.to_base64(),
            key_id: next.kid().0.clone(),
            issued_at_ms,
        };
        let payload = serde_json::to_vec(&a).unwrap_or_default();
        let env = self.bare().seal_bytes(MessageKind::HubKey, &payload);
        String::from_utf8(env).unwrap_or_default()
    }

    /// A request to replace this device key with `next`.
    pub fn rotate_to(&self, device: &DeviceId, next: &PublicKey, issued_at_ms: u64) -> Vec<u8> {
        self.seal(&DeviceKeyRotation {
            device_id: device.clone(),
            public_key: next.to_base64(),
            key_id: next.kid().0.clone(),
            issued_at_ms,
        })
    }
}

/// Verifies one announcement with `by`; the announced key.
pub fn open_announcement(text: &str, by: &PublicKey) -> Result<PublicKey, Rejection> {
    let payload = verified_payload(text.as_bytes(), MessageKind::HubKey, by)?;
    let a: KeyAnnouncement =
        serde_json::from_slice(&payload).map_err(Rejection::MalformedPayload)?;
    let key = PublicKey::from_base64(&a.public_key).map_err(|e| {
        let mut errs = ValidationErrors::default();
        errs.push("publicKey", e.to_string());
        Rejection::Invalid(errs)
    })?;
    if key.kid().0 != a.key_id {
        let mut errs = ValidationErrors::default();
        errs.push("keyId", "is not the id of publicKey");
        return Err(Rejection::Invalid(errs));
    }
    Ok(key)
}

/// The key a message from the hub must verify with, for a device that pins
/// `pinned`: `None` when it is signed by the pinned key itself, or the key
/// reached by following the envelope's announcements from `pinned`, each
/// verified by the key before it. `UnknownKey` when the chain does not lead
/// from `pinned` to the signing key. Checks only the envelope and the
/// chain: the message itself still goes through [`crate::open`].
pub fn signing_key(
    bytes: &[u8],
    kind: MessageKind,
    pinned: &PublicKey,
) -> Result<Option<PublicKey>, Rejection> {
    within_limit(bytes, kind)?;
    let env: Envelope = serde_json::from_slice(bytes).map_err(Rejection::MalformedEnvelope)?;
    if env.kid == pinned.kid().0 {
        return Ok(None);
    }
    let unknown = || Rejection::UnknownKey {
        expected: pinned.kid().clone(),
        got: env.kid.clone(),
    };
    if env.keys.len() > MAX_CHAIN {
        return Err(unknown());
    }
    let mut current = pinned.clone();
    for text in &env.keys {
        // Links before the pinned key are skipped: the device is past them.
        let Ok(link) = serde_json::from_str::<Envelope>(text) else {
            return Err(unknown());
        };
        if link.kid != current.kid().0 {
            continue;
        }
        current = open_announcement(text, &current)?;
    }
    if current.kid().0 == env.kid {
        Ok(Some(current))
    } else {
        Err(unknown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DesiredState;
    use crate::sign::{Expect, open};

    fn doc() -> DesiredState {
        serde_json::from_value(serde_json::json!({
            "deviceId": "pi-1", "revision": 1, "hubEpoch": 1, "issuedAtMs": 1, "workloads": []
        }))
        .unwrap()
    }

    #[test]
    fn a_device_follows_two_rotations_from_its_pinned_key() {
        let (a, b, c) = (
            Signer::from_seed(&[1; 32]),
            Signer::from_seed(&[2; 32]),
            Signer::from_seed(&[3; 32]),
        );
        let chain = vec![a.announce(b.public(), 1), b.announce(c.public(), 2)];
        let c = c.with_announcements(chain);
        let env = c.seal(&doc());
        let id = DeviceId::new("pi-1").unwrap();
        for pinned in [&a, &b] {
            let key = signing_key(&env, MessageKind::Desired, pinned.public())
                .unwrap()
                .unwrap();
            assert_eq!(&key, c.public());
            open::<DesiredState>(&env, &key, &Expect::device(&id)).unwrap();
        }
        assert_eq!(
            signing_key(&env, MessageKind::Desired, c.public()).unwrap(),
            None
        );
    }

    #[test]
    fn a_chain_not_rooted_in_the_pinned_key_is_refused() {
        let (a, evil, c) = (
            Signer::from_seed(&[1; 32]),
            Signer::from_seed(&[9; 32]),
            Signer::from_seed(&[3; 32]),
        );
        // Announced by a key the device never pinned.
        let ann = evil.announce(c.public(), 1);
        let forged = c.with_announcements(vec![ann]);
        let r = signing_key(&forged.seal(&doc()), MessageKind::Desired, a.public());
        assert_eq!(r.unwrap_err().reason(), "unknown_key");
        // An announcement whose signature was tampered with.
        let good = a.announce(forged.public(), 1);
        let mut bad = good.clone();
        let at = bad.find("\"sig\":\"").unwrap() + 8;
        let ch = if &bad[at..at + 1] == "A" { "B" } else { "A" };
        bad.replace_range(at..at + 1, ch);
        let tampered = Signer::from_seed(&[3; 32]).with_announcements(vec![bad]);
        let r = signing_key(&tampered.seal(&doc()), MessageKind::Desired, a.public());
        assert_eq!(r.unwrap_err().reason(), "bad_signature");
        // Announcing a key, then signing with another.
        let other = Signer::from_seed(&[4; 32]).with_announcements(vec![good]);
        let r = signing_key(&other.seal(&doc()), MessageKind::Desired, a.public());
        assert_eq!(r.unwrap_err().reason(), "unknown_key");
    }

    #[test]
    fn the_chain_is_bounded_and_fits_the_reserve() {
        let keys: Vec<Signer> = (0..=6u8).map(|i| Signer::from_seed(&[i + 1; 32])).collect();
        let chain: Vec<String> = keys
            .windows(2)
            .map(|w| w[0].announce(w[1].public(), u64::MAX))
            .collect();
        let last = Signer::from_seed(&[7; 32]).with_announcements(chain);
        assert_eq!(last.announcements().len(), MAX_CHAIN);
        let payload = vec![b'x'; 100];
        let with = last.seal_bytes(MessageKind::Desired, &payload).len();
        let without = last.bare().seal_bytes(MessageKind::Desired, &payload).len();
        assert!(with <= crate::sign::sealed_len(MessageKind::Desired, 100));
        assert!(with - without <= CHAIN_RESERVE, "{}", with - without);
        // Pinned to the oldest key, now out of the chain: refused.
        let r = signing_key(
            &last.seal_bytes(MessageKind::Desired, &payload),
            MessageKind::Desired,
            keys[0].public(),
        );
        assert_eq!(r.unwrap_err().reason(), "unknown_key");
    }

    #[test]
    fn device_rotation_names_its_key_and_is_signed_by_the_old_one() {
        let (old, new) = (Signer::from_seed(&[1; 32]), Signer::from_seed(&[2; 32]));
        let id = DeviceId::new("pi-1").unwrap();
        let env = old.rotate_to(&id, new.public(), 5);
        let r: DeviceKeyRotation = open(&env, old.public(), &Expect::device(&id)).unwrap();
        assert_eq!(r.key().as_ref(), Some(new.public()));
        assert!(open::<DeviceKeyRotation>(&env, new.public(), &Expect::device(&id)).is_err());
        let mut lie = r.clone();
        lie.key_id = "0000000000000000".into();
        let r = open::<DeviceKeyRotation>(&old.seal(&lie), old.public(), &Expect::device(&id));
        assert_eq!(r.unwrap_err().reason(), "invalid");
    }
}
