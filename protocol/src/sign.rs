//! Signed envelopes and the one verification function, [`open`].
//!
//! Every MQTT payload is an envelope:
//! `{"v":1,"typ":"desired","kid":"…","payload":"<base64url>","sig":"<base64url>"}`.
//! The signature covers the exact payload bytes (not a re-serialisation) with
//! the message type bound in: `"edgefleet/v1\0" || typ || "\0" || payload`.
//! So a status signed by a device can never be replayed as an event, and the
//! verifier never has to canonicalise JSON.
//!
//! Nothing here ever logs or prints a private key.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::desired::Version;
use crate::limits::MAX_PAYLOAD_BYTES;
use crate::name::DeviceId;
use crate::topic::Channel;
use crate::validate::ValidationErrors;

/// Envelope format version.
pub const ENVELOPE_VERSION: u8 = 1;
const DOMAIN: &[u8] = b"edgefleet/v1\0";

/// The type of a signed message; each travels on one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Desired,
    Status,
    Presence,
    Event,
    Heartbeat,
    Command,
    Ack,
    /// A new hub key, signed by the one it replaces ([`crate::rotation`]).
    HubKey,
    /// A device's new key, signed by the one it replaces.
    DeviceKey,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Desired => "desired",
            MessageKind::Status => "status",
            MessageKind::Presence => "presence",
            MessageKind::Event => "event",
            MessageKind::Heartbeat => "heartbeat",
            MessageKind::Command => "command",
            MessageKind::Ack => "ack",
            MessageKind::HubKey => "hubKey",
            MessageKind::DeviceKey => "deviceKey",
        }
    }

    /// The MQTT channel it travels on; key announcements travel inside
    /// other envelopes or over HTTPS, on none.
    pub fn channel(self) -> Option<Channel> {
        match self {
            MessageKind::Desired => Some(Channel::Desired),
            MessageKind::Status => Some(Channel::Status),
            MessageKind::Presence => Some(Channel::Presence),
            MessageKind::Event => Some(Channel::Events),
            MessageKind::Heartbeat => Some(Channel::Heartbeat),
            MessageKind::Command => Some(Channel::Commands),
            MessageKind::Ack => Some(Channel::Acks),
            MessageKind::HubKey | MessageKind::DeviceKey => None,
        }
    }

    /// Largest envelope of this kind accepted on decode.
    pub fn max_bytes(self) -> usize {
        match self {
            MessageKind::Desired => MAX_PAYLOAD_BYTES,
            MessageKind::Status => 256 * 1024,
            MessageKind::Event => 128 * 1024,
            // MAX_ACK_IDS ids of at most 64 characters, base64 in the envelope.
            MessageKind::Ack => 128 * 1024,
            MessageKind::Presence
            | MessageKind::Heartbeat
            | MessageKind::Command
            | MessageKind::HubKey
            | MessageKind::DeviceKey => 16 * 1024,
        }
    }
}

/// A message that travels signed.
pub trait Message: Serialize + DeserializeOwned {
    const KIND: MessageKind;
    /// The device the message is for (hub → device) or from (device → hub).
    fn device_id(&self) -> &DeviceId;
    /// Ordering for documents that replace each other (desired state).
    fn version(&self) -> Option<Version> {
        None
    }
    /// When the message stops being valid (commands).
    fn expires_at_ms(&self) -> Option<u64> {
        None
    }
    /// Structural rules beyond what the type system holds.
    fn validate(&self) -> Result<(), ValidationErrors> {
        Ok(())
    }
    /// Fields that travel encrypted to the device ([`Signer::seal_for`]);
    /// none for device → hub messages.
    const PRIVATE: &'static [&'static str] = &[];
}

/// Identifies a public key: the first 8 bytes of its SHA-256, in hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyId(pub String);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn key_id(key: &VerifyingKey) -> KeyId {
    KeyId(hex::encode(&Sha256::digest(key.as_bytes())[..8]))
}

/// Key-handling failures.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("public key is not 32 bytes of standard base64")]
    PublicKeyEncoding,
    #[error("public key is not a valid ed25519 point")]
    PublicKey(#[source] ed25519_dalek::SignatureError),
    #[error("private key is not a PKCS#8 PEM ed25519 key")]
    PrivateKey(#[source] ed25519_dalek::pkcs8::Error),
}

/// A verifying key with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    kid: KeyId,
}

impl PublicKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(KeyError::PublicKey)?;
        Ok(Self {
            kid: key_id(&key),
            key,
        })
    }

    /// Parses the wire form: 32 raw bytes in standard base64.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD
            .decode(s.trim())
            .map_err(|_| KeyError::PublicKeyEncoding)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| KeyError::PublicKeyEncoding)?;
        Self::from_bytes(&arr)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.key.as_bytes())
    }

    pub fn kid(&self) -> &KeyId {
        &self.kid
    }

    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }
}

/// A private signing key. Its `Debug` shows only the key id.
pub struct Signer {
    key: SigningKey,
    public: PublicKey,
    /// Key announcements every envelope carries (a rotated hub key: the
    /// chain from keys devices may still pin to this one).
    announcements: Vec<String>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.public.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    fn from_key(key: SigningKey) -> Self {
        let vk = key.verifying_key();
        Self {
            public: PublicKey {
                kid: key_id(&vk),
                key: vk,
            },
            key,
            announcements: Vec::new(),
        }
    }

    /// This key, carrying `announcements` (oldest first, at most
    /// [`crate::rotation::MAX_CHAIN`]) in every envelope it seals, so a
    /// device pinned to an older key can follow the chain to it.
    pub fn with_announcements(mut self, mut announcements: Vec<String>) -> Self {
        let extra = announcements
            .len()
            .saturating_sub(crate::rotation::MAX_CHAIN);
        announcements.drain(..extra);
        self.announcements = announcements;
        self
    }

    /// The same key, without its announcements.
    pub fn bare(&self) -> Self {
        Self::from_key(self.key.clone())
    }

    pub fn announcements(&self) -> &[String] {
        &self.announcements
    }

    /// A fresh key from the OS random source.
    pub fn generate() -> Self {
        Self::from_key(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// A key from a 32-byte seed (tests and simulators only).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self::from_key(SigningKey::from_bytes(seed))
    }

    /// Loads a PKCS#8 PEM private key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(Self::from_key)
            .map_err(KeyError::PrivateKey)
    }

    /// The key as PKCS#8 PEM, zeroed on drop. Write it with mode 0600.
    pub fn to_pkcs8_pem(&self) -> Result<zeroize::Zeroizing<String>, KeyError> {
        self.key
            .to_pkcs8_pem(Default::default())
            .map_err(KeyError::PrivateKey)
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// Serialises `msg` and wraps it in a signed envelope.
    pub fn seal<M: Message>(&self, msg: &M) -> Vec<u8> {
        // Serialising our own types cannot fail: no maps with non-string keys.
        let payload = serde_json::to_vec(msg).unwrap_or_default();
        self.seal_bytes(M::KIND, &payload)
    }

    /// Signs payload bytes as they are; for tests of hostile peers.
    pub fn seal_bytes(&self, kind: MessageKind, payload: &[u8]) -> Vec<u8> {
        let sig = self.key.sign(&signed_bytes(kind.as_str(), payload));
        let env = Envelope {
            v: ENVELOPE_VERSION,
            typ: kind.as_str().to_owned(),
            kid: self.public.kid.0.clone(),
            keys: self.announcements.clone(),
            payload: URL_SAFE_NO_PAD.encode(payload),
            sig: URL_SAFE_NO_PAD.encode(sig.to_bytes()),
        };
        serde_json::to_vec(&env).unwrap_or_default()
    }
}

/// The payload of an envelope, verifying nothing. Only for a sender reading
/// back envelopes it sealed itself (a device's own outbox); received
/// messages go through [`open`].
pub fn own_payload(bytes: &[u8]) -> Option<Vec<u8>> {
    let env: Envelope = serde_json::from_slice(bytes).ok()?;
    URL_SAFE_NO_PAD.decode(&env.payload).ok()
}

fn signed_bytes(typ: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(DOMAIN.len() + typ.len() + 1 + payload.len());
    v.extend_from_slice(DOMAIN);
    v.extend_from_slice(typ.as_bytes());
    v.push(0);
    v.extend_from_slice(payload);
    v
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Envelope {
    v: u8,
    pub(crate) typ: String,
    pub(crate) kid: String,
    /// Announcements of the signing key, oldest first
    /// ([`crate::rotation`]); outside the signature, each signed itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) keys: Vec<String>,
    payload: String,
    sig: String,
}

/// What the verifier requires of a message beyond a good signature.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The device the message must name (the topic's device).
    pub device: &'a DeviceId,
    /// Versioned messages must be strictly newer than this.
    pub newer_than: Option<Version>,
    /// "Now", for expiry checks, in Unix milliseconds.
    pub now_ms: u64,
}

impl<'a> Expect<'a> {
    pub fn device(device: &'a DeviceId) -> Self {
        Self {
            device,
            newer_than: None,
            now_ms: crate::now_ms(),
        }
    }

    pub fn newer_than(mut self, v: Option<Version>) -> Self {
        self.newer_than = v;
        self
    }

    pub fn at(mut self, now_ms: u64) -> Self {
        self.now_ms = now_ms;
        self
    }
}

/// Why a message was refused; `reason()` is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("message is {size} bytes, the limit for {kind} is {max}")]
    TooLarge {
        kind: &'static str,
        size: usize,
        max: usize,
    },
    #[error("malformed envelope: {0}")]
    MalformedEnvelope(#[source] serde_json::Error),
    #[error(
        "envelope is not in canonical form (compact JSON, fields in order v, typ, kid, payload, sig)"
    )]
    NotCanonical,
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    #[error("expected a {expected} message, got {got:?}")]
    WrongType { expected: &'static str, got: String },
    #[error("signed by key {got:?}, expected key {expected}")]
    UnknownKey { expected: KeyId, got: String },
    #[error("payload or signature is not canonical base64url")]
    Encoding,
    #[error("signature does not verify")]
    BadSignature,
    #[error("signed payload is malformed: {0}")]
    MalformedPayload(#[source] serde_json::Error),
    #[error("signed payload is invalid: {0}")]
    Invalid(#[source] ValidationErrors),
    #[error("message is for device {got}, expected {expected}")]
    WrongDevice { expected: DeviceId, got: DeviceId },
    #[error("version {got} is not newer than {current}")]
    StaleRevision { got: Version, current: Version },
    #[error("expired at {expires_at_ms}, now is {now_ms}")]
    Expired { expires_at_ms: u64, now_ms: u64 },
    #[error("the sealed part does not open: {0}")]
    Undecryptable(#[source] crate::encrypt::SealError),
}

impl Rejection {
    /// A short stable label for metrics: `edgefleet_…_rejected_total{reason=…}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::TooLarge { .. } => "too_large",
            Rejection::MalformedEnvelope(_)
            | Rejection::NotCanonical
            | Rejection::UnsupportedVersion(_)
            | Rejection::Encoding
            | Rejection::MalformedPayload(_) => "malformed",
            Rejection::WrongType { .. } => "wrong_type",
            Rejection::UnknownKey { .. } => "unknown_key",
            Rejection::BadSignature => "bad_signature",
            Rejection::Invalid(_) => "invalid",
            Rejection::WrongDevice { .. } => "wrong_device",
            Rejection::StaleRevision { .. } => "stale_revision",
            Rejection::Expired { .. } => "expired",
            Rejection::Undecryptable(_) => "undecryptable",
        }
    }

    /// Every label `reason()` can return, for pre-registering metrics.
    pub const REASONS: [&'static str; 10] = [
        "too_large",
        "malformed",
        "wrong_type",
        "unknown_key",
        "bad_signature",
        "invalid",
        "wrong_device",
        "stale_revision",
        "expired",
        "undecryptable",
    ];
}

/// Verifies and decodes a signed message: size, envelope, type, key id,
/// signature, payload, validation, intended device, version, expiry — in
/// that order, and nothing is parsed beyond the envelope before the
/// signature holds.
pub fn open<M: Message>(
    bytes: &[u8],
    key: &PublicKey,
    expect: &Expect<'_>,
) -> Result<M, Rejection> {
    let payload = verified_payload(bytes, M::KIND, key)?;
    checked(&payload, expect)
}

/// [`open`] for a message that may travel sealed to this device
/// ([`Signer::seal_for`]): checks the signature, then that it is for
/// `expect.device`, then decrypts its private fields with `recipient` (this
/// device's key), then everything [`open`] checks. A message without a
/// sealed part opens as with [`open`] (signed by the hub all the same).
pub fn open_for<M: Message>(
    bytes: &[u8],
    key: &PublicKey,
    expect: &Expect<'_>,
    recipient: &Signer,
) -> Result<M, Rejection> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct For {
        device_id: DeviceId,
    }
    let payload = verified_payload(bytes, M::KIND, key)?;
    // Another device's document is "wrong device", not "undecryptable".
    let head: For = serde_json::from_slice(&payload).map_err(Rejection::MalformedPayload)?;
    if &head.device_id != expect.device {
        return Err(Rejection::WrongDevice {
            expected: expect.device.clone(),
            got: head.device_id,
        });
    }
    let payload = crate::encrypt::unseal(M::KIND, payload, expect.device, recipient, M::PRIVATE)?;
    checked(&payload, expect)
}

/// Parses a verified (and unsealed) payload and applies every rule.
fn checked<M: Message>(payload: &[u8], expect: &Expect<'_>) -> Result<M, Rejection> {
    let msg: M = serde_json::from_slice(payload).map_err(Rejection::MalformedPayload)?;
    msg.validate().map_err(Rejection::Invalid)?;
    if msg.device_id() != expect.device {
        return Err(Rejection::WrongDevice {
            expected: expect.device.clone(),
            got: msg.device_id().clone(),
        });
    }
    if let (Some(got), Some(current)) = (msg.version(), expect.newer_than)
        && got <= current
    {
        return Err(Rejection::StaleRevision { got, current });
    }
    if let Some(expires_at_ms) = msg.expires_at_ms()
        && expires_at_ms <= expect.now_ms
    {
        return Err(Rejection::Expired {
            expires_at_ms,
            now_ms: expect.now_ms,
        });
    }
    Ok(msg)
}

/// `TooLarge` when `bytes` exceed the limit for `kind`.
pub(crate) fn within_limit(bytes: &[u8], kind: MessageKind) -> Result<(), Rejection> {
    let max = kind.max_bytes();
    if bytes.len() > max {
        return Err(Rejection::TooLarge {
            kind: kind.as_str(),
            size: bytes.len(),
            max,
        });
    }
    Ok(())
}

/// The first steps of [`open`]: size, canonical envelope, type, key id and
/// signature; returns the signed payload bytes, not yet parsed.
pub(crate) fn verified_payload(
    bytes: &[u8],
    kind: MessageKind,
    key: &PublicKey,
) -> Result<Vec<u8>, Rejection> {
    within_limit(bytes, kind)?;
    let env: Envelope = serde_json::from_slice(bytes).map_err(Rejection::MalformedEnvelope)?;
    // Byte-exact envelopes: what was received must be exactly what a signer
    // emits, so no change to the bytes, not even whitespace, goes unnoticed.
    if serde_json::to_vec(&env).is_ok_and(|canon| canon != bytes) {
        return Err(Rejection::NotCanonical);
    }
    if env.v != ENVELOPE_VERSION {
        return Err(Rejection::UnsupportedVersion(env.v));
    }
    if env.typ != kind.as_str() {
        return Err(Rejection::WrongType {
            expected: kind.as_str(),
            got: env.typ,
        });
    }
    if env.kid != key.kid.0 {
        return Err(Rejection::UnknownKey {
            expected: key.kid.clone(),
            got: env.kid,
        });
    }
    let payload = URL_SAFE_NO_PAD
        .decode(&env.payload)
        .map_err(|_| Rejection::Encoding)?;
    let sig: [u8; 64] = URL_SAFE_NO_PAD
        .decode(&env.sig)
        .map_err(|_| Rejection::Encoding)?
        .try_into()
        .map_err(|_| Rejection::Encoding)?;
    key.key
        .verify_strict(
            &signed_bytes(&env.typ, &payload),
            &Signature::from_bytes(&sig),
        )
        .map_err(|_| Rejection::BadSignature)?;
    Ok(payload)
}

/// The version of a desired-state document whose signature verifies with
/// `key`, read leniently (the document may break other rules): lets a device
/// say which revision it refused. `None` when the signature does not hold or
/// the version cannot be read.
pub fn signed_version(bytes: &[u8], key: &PublicKey) -> Option<Version> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct VersionOnly {
        hub_epoch: u64,
        revision: u64,
    }
    let payload = verified_payload(bytes, MessageKind::Desired, key).ok()?;
    let v: VersionOnly = serde_json::from_slice(&payload).ok()?;
    Some(Version {
        hub_epoch: v.hub_epoch,
        revision: v.revision,
    })
}

/// The largest envelope [`Signer::seal`] makes of a payload of
/// `payload_len` bytes: exact for a key without announcements, and
/// [`crate::rotation::CHAIN_RESERVE`] more to leave room for a rotated hub
/// key's. Lets the hub check a document against the limits before it is
/// issued.
pub fn sealed_len(kind: MessageKind, payload_len: usize) -> usize {
    envelope_len(kind, payload_len) + crate::rotation::CHAIN_RESERVE
}

/// The exact size of an envelope without announcements.
fn envelope_len(kind: MessageKind, payload_len: usize) -> usize {
    let empty = Envelope {
        v: ENVELOPE_VERSION,
        typ: kind.as_str().to_owned(),
        kid: "0".repeat(16),
        keys: Vec::new(),
        payload: String::new(),
        sig: URL_SAFE_NO_PAD.encode([0u8; 64]),
    };
    let overhead = serde_json::to_vec(&empty).map_or(0, |v| v.len());
    // base64url without padding: 4 characters per 3 bytes, rounded up.
    overhead + (payload_len * 4).div_ceil(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_len_is_exact() {
        let s = Signer::from_seed(&[1; 32]);
        for n in [0usize, 1, 2, 3, 4, 100, 1001] {
            let payload = vec![b'x'; n];
            assert_eq!(
                s.seal_bytes(MessageKind::Desired, &payload).len(),
                envelope_len(MessageKind::Desired, n),
                "payload of {n} bytes"
            );
        }
    }

    #[test]
    fn key_round_trips_and_debug_hides_secret() {
        let s = Signer::generate();
        let pem = s.to_pkcs8_pem().unwrap();
        let back = Signer::from_pkcs8_pem(&pem).unwrap();
        assert_eq!(back.public(), s.public());
        assert_eq!(s.public().kid().0.len(), 16);
        let dbg = format!("{s:?}");
        assert!(dbg.contains(&s.public().kid().0) && !dbg.contains("PRIVATE"));
        let p = PublicKey::from_base64(&s.public().to_base64()).unwrap();
        assert_eq!(&p, s.public());
        assert!(PublicKey::from_base64("AAAA").is_err());
        assert!(Signer::from_pkcs8_pem("not a key").is_err());
    }
}
