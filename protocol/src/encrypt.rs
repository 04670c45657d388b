//! Hub → device messages the broker may not read: the private fields of a
//! desired document (its workloads: manifests, model references) and of a
//! command (its action) travel encrypted to the device's key, and the hub
//! signs the encrypted form.
//!
//! The signed payload is the message with its private fields
//! ([`Message::PRIVATE`]) replaced by one field, `sealed`:
//!
//! ```json
//! {"deviceId":"pi-1","hubEpoch":1,"issuedAtMs":2,"revision":4,
//!  "sealed":{"alg":"hpke-x25519-sha256-chacha20poly1305","enc":"<base64url>","ct":"<base64url>"}}
//! ```
//!
//! `ct` is RFC 9180 HPKE (base mode, DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256, ChaCha20-Poly1305) of the private fields as one JSON object,
//! with `info` = `"edgefleet/v1 sealed " || typ` and `aad` = the device id;
//! `enc` is the encapsulated ephemeral key. Signed after encryption: the
//! device checks the hub's signature, the device id and the version before
//! it decrypts anything.
//!
//! The device's X25519 key is its ed25519 key, converted (the Montgomery
//! form of the public key; the clamped scalar of the private one, as
//! libsodium's `crypto_sign_ed25519_sk_to_curve25519`). So every enrolled
//! device can be sealed to without a new key, a new enrollment step or a
//! re-enrollment, and the hub already holds every public key it needs. The
//! one key then both signs and decrypts; the two uses are domain-separated
//! (signatures cover `"edgefleet/v1\0" || typ || "\0" || payload`, HPKE's
//! key schedule has its own labels), the combination analysed for
//! Ed25519/X25519 by Thormarker ("On using the same key pair for Ed25519 and
//! an X25519 based KEM", 2021).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::sign::{Message, MessageKind, PublicKey, Rejection, Signer};

/// The one algorithm suite, named in every sealed message.
pub const ALG: &str = "hpke-x25519-sha256-chacha20poly1305";
/// The payload field holding the private fields.
pub const FIELD: &str = "sealed";

type Kem = X25519HkdfSha256;

/// The private fields of a message, encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    pub alg: String,
    /// The encapsulated key, base64url.
    pub enc: String,
    /// The ciphertext with its tag, base64url.
    pub ct: String,
}

/// Why a sealed message does not open (all counted as `undecryptable`).
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the payload is not a JSON object")]
    NotAnObject,
    #[error("unsupported algorithm {0:?}")]
    Algorithm(String),
    #[error("`sealed` is not {{alg, enc, ct}} in base64url")]
    Encoding,
    #[error("does not decrypt with this device's key")]
    Decrypt,
    #[error("the decrypted fields are not a JSON object of private fields")]
    Fields,
}

fn info(kind: MessageKind) -> Vec<u8> {
    format!("edgefleet/v1 sealed {}", kind.as_str()).into_bytes()
}

impl PublicKey {
    /// The X25519 form of this ed25519 key.
    fn x25519(&self) -> <Kem as hpke::Kem>::PublicKey {
        let mont = self.verifying_key().to_montgomery();
        <Kem as hpke::Kem>::PublicKey::from_bytes(mont.as_bytes())
            .unwrap_or_else(|_| unreachable!("any 32 bytes are an X25519 public key"))
    }
}

impl Signer {
    /// The X25519 form of this ed25519 key.
    fn x25519(&self) -> <Kem as hpke::Kem>::PrivateKey {
        let scalar = zeroize::Zeroizing::new(self.signing_key().to_scalar_bytes());
        <Kem as hpke::Kem>::PrivateKey::from_bytes(&scalar[..])
            .unwrap_or_else(|_| unreachable!("any 32 bytes are an X25519 private key"))
    }

    /// Signs `msg` with its private fields encrypted to `device`.
    pub fn seal_for<M: Message>(&self, msg: &M, device: &PublicKey) -> Vec<u8> {
        self.seal_for_with_rng(msg, device, &mut rand::rngs::OsRng)
    }

    /// [`Signer::seal_for`] with a given random source (golden files).
    pub fn seal_for_with_rng<M: Message, R: rand::CryptoRng + rand::RngCore>(
        &self,
        msg: &M,
        device: &PublicKey,
        rng: &mut R,
    ) -> Vec<u8> {
        let payload = sealed_payload(msg, device, rng);
        self.seal_bytes(M::KIND, &payload)
    }
}

/// The signed payload of `msg` sealed to `device`.
fn sealed_payload<M: Message, R: rand::CryptoRng + rand::RngCore>(
    msg: &M,
    device: &PublicKey,
    rng: &mut R,
) -> Vec<u8> {
    let (mut outer, private) = split::<M>(msg);
    let plain = serde_json::to_vec(&private).unwrap_or_default();
    let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        &device.x25519(),
        &info(M::KIND),
        &plain,
        msg.device_id().as_str().as_bytes(),
        &mut Compat(rng),
    )
    .unwrap_or_else(|_| unreachable!("HPKE base mode to a valid key does not fail"));
    let sealed = Sealed {
        alg: ALG.to_owned(),
        enc: URL_SAFE_NO_PAD.encode(enc.to_bytes()),
        ct: URL_SAFE_NO_PAD.encode(ct),
    };
    outer.insert(
        FIELD.to_owned(),
        serde_json::to_value(sealed).unwrap_or_default(),
    );
    serde_json::to_vec(&outer).unwrap_or_default()
}

/// rand 0.8's generators as the rand_core 0.9 ones hpke takes.
struct Compat<'a, R>(&'a mut R);

impl<R: rand::RngCore> hpke::rand_core::RngCore for Compat<'_, R> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest);
    }
}

impl<R: rand::RngCore + rand::CryptoRng> hpke::rand_core::CryptoRng for Compat<'_, R> {}

/// `msg` as (public fields, private fields).
fn split<M: Message>(msg: &M) -> (Map<String, Value>, Map<String, Value>) {
    let Ok(Value::Object(mut all)) = serde_json::to_value(msg) else {
        unreachable!("messages serialize to JSON objects")
    };
    let private = M::PRIVATE
        .iter()
        .filter_map(|f| all.remove(*f).map(|v| ((*f).to_owned(), v)))
        .collect();
    (all, private)
}

/// The exact length of the signed payload [`Signer::seal_for`] makes of
/// `msg`: lets the hub check sizes before it issues a document.
pub fn sealed_payload_len<M: Message>(msg: &M) -> usize {
    let (mut outer, private) = split::<M>(msg);
    let plain = serde_json::to_vec(&private).map_or(0, |v| v.len());
    // HPKE: a 32-byte encapsulated key; the ciphertext is the plaintext
    // plus a 16-byte tag. base64url without padding: ⌈4n/3⌉ characters.
    let b64 = |n: usize| (n * 4).div_ceil(3);
    let sealed = Sealed {
        alg: ALG.to_owned(),
        enc: "e".repeat(b64(32)),
        ct: "c".repeat(b64(plain + 16)),
    };
    outer.insert(
        FIELD.to_owned(),
        serde_json::to_value(sealed).unwrap_or_default(),
    );
    serde_json::to_vec(&outer).map_or(usize::MAX / 2, |v| v.len())
}

/// Decrypts the private fields of a verified payload in place: the payload
/// with them restored, ready to deserialize. A payload with no `sealed`
/// field is returned as it is (a hub that does not seal).
pub(crate) fn unseal(
    kind: MessageKind,
    payload: Vec<u8>,
    device: &crate::DeviceId,
    recipient: &Signer,
    private_fields: &[&str],
) -> Result<Vec<u8>, Rejection> {
    let undecryptable = |e: SealError| Rejection::Undecryptable(e);
    let Ok(Value::Object(mut outer)) = serde_json::from_slice::<Value>(&payload) else {
        return Err(undecryptable(SealError::NotAnObject));
    };
    let Some(sealed) = outer.remove(FIELD) else {
        return Ok(payload);
    };
    let sealed: Sealed =
        serde_json::from_value(sealed).map_err(|_| undecryptable(SealError::Encoding))?;
    if sealed.alg != ALG {
        return Err(undecryptable(SealError::Algorithm(sealed.alg)));
    }
    let enc = URL_SAFE_NO_PAD
        .decode(&sealed.enc)
        .ok()
        .and_then(|b| <Kem as hpke::Kem>::EncappedKey::from_bytes(&b).ok())
        .ok_or(undecryptable(SealError::Encoding))?;
    let ct = URL_SAFE_NO_PAD
        .decode(&sealed.ct)
        .map_err(|_| undecryptable(SealError::Encoding))?;
    let plain = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &OpModeR::Base,
        &recipient.x25519(),
        &enc,
        &info(kind),
        &ct,
        device.as_str().as_bytes(),
    )
    .map_err(|_| undecryptable(SealError::Decrypt))?;
    let Ok(Value::Object(private)) = serde_json::from_slice::<Value>(&plain) else {
        return Err(undecryptable(SealError::Fields));
    };
    for (k, v) in private {
        // Only the type's private fields, each once: the signed public
        // fields cannot be overridden from inside.
        if !private_fields.contains(&k.as_str()) || outer.contains_key(&k) {
            return Err(undecryptable(SealError::Fields));
        }
        outer.insert(k, v);
    }
    Ok(serde_json::to_vec(&outer).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeviceId;
    use crate::command::{Command, CommandAction};

    fn cmd(device: &str) -> Command {
        Command {
            id: "c-1".into(),
            device_id: DeviceId::new(device).unwrap(),
            issued_at_ms: 1,
            expires_at_ms: u64::MAX,
            action: CommandAction::RestartWorkload {
                name: "secret-workload".into(),
            },
        }
    }

    /// Seals `private` as the private part of `c` by hand.
    fn hand_sealed(hub: &Signer, dev: &Signer, c: &Command, private: Value) -> Vec<u8> {
        let (mut outer, _) = split(c);
        let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
            &OpModeS::Base,
            &dev.public().x25519(),
            &info(MessageKind::Command),
            &serde_json::to_vec(&private).unwrap(),
            c.device_id.as_str().as_bytes(),
            &mut Compat(&mut rand::rngs::OsRng),
        )
        .unwrap();
        let sealed = Sealed {
            alg: ALG.into(),
            enc: URL_SAFE_NO_PAD.encode(enc.to_bytes()),
            ct: URL_SAFE_NO_PAD.encode(ct),
        };
        outer.insert(FIELD.into(), serde_json::to_value(sealed).unwrap());
        hub.seal_bytes(MessageKind::Command, &serde_json::to_vec(&outer).unwrap())
    }

    #[test]
    fn the_sealed_part_holds_only_private_fields() {
        let hub = Signer::from_seed(&[1; 32]);
        let dev = Signer::from_seed(&[2; 32]);
        let c = cmd("pi-1");
        let id = DeviceId::new("pi-1").unwrap();
        let open = |bytes: &[u8]| {
            crate::sign::open_for::<Command>(
                bytes,
                hub.public(),
                &crate::Expect::device(&id).at(2),
                &dev,
            )
        };
        let action = serde_json::to_value(&c.action).unwrap();
        assert_eq!(
            open(&hand_sealed(
                &hub,
                &dev,
                &c,
                serde_json::json!({"action": action})
            ))
            .unwrap(),
            c
        );
        for private in [
            // A public field from inside: the expiry the device checks.
            serde_json::json!({"action": action, "expiresAtMs": 5}),
            serde_json::json!({"action": action, "other": 1}),
            serde_json::json!([1, 2]),
        ] {
            let r = open(&hand_sealed(&hub, &dev, &c, private.clone())).unwrap_err();
            assert_eq!(r.reason(), "undecryptable", "{private}: {r}");
        }
    }

    #[test]
    fn the_converted_keys_agree() {
        // The X25519 public key derived from the ed25519 public key is the
        // one the derived private key has.
        let s = Signer::from_seed(&[3; 32]);
        let from_private = <Kem as hpke::Kem>::sk_to_pk(&s.x25519());
        assert_eq!(
            from_private.to_bytes(),
            s.public().x25519().to_bytes(),
            "Montgomery form of the public key"
        );
    }

    #[test]
    fn a_sealed_command_hides_its_action_and_opens_only_for_its_device() {
        let hub = Signer::from_seed(&[1; 32]);
        let dev = Signer::from_seed(&[2; 32]);
        let other = Signer::from_seed(&[4; 32]);
        let c = cmd("pi-1");
        let bytes = hub.seal_for(&c, dev.public());
        let text = String::from_utf8(crate::sign::own_payload(&bytes).unwrap()).unwrap();
        assert!(
            !text.contains("secret-workload") && !text.contains("restart"),
            "{text}"
        );
        assert!(text.contains("\"sealed\"") && text.contains("\"deviceId\":\"pi-1\""));
        let id = DeviceId::new("pi-1").unwrap();
        let opened: Command = crate::sign::open_for(
            &bytes,
            hub.public(),
            &crate::Expect::device(&id).at(2),
            &dev,
        )
        .unwrap();
        assert_eq!(opened, c);
        // Another device's key does not open it.
        let r = crate::sign::open_for::<Command>(
            &bytes,
            hub.public(),
            &crate::Expect::device(&id).at(2),
            &other,
        )
        .unwrap_err();
        assert_eq!(r.reason(), "undecryptable", "{r}");
        // The size the hub predicts is the size it makes.
        assert_eq!(
            crate::sign::own_payload(&bytes).unwrap().len(),
            sealed_payload_len(&c)
        );
    }
}
