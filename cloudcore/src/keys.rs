//! The hub's secrets on disk: the ed25519 signing key and the operator and
//! bootstrap tokens. Created on first start, under the daemons' one policy
//! for secrets ([`edgefleet_daemon::files`]): 0600, refused when others can
//! read them, never logged.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edgefleet_daemon::files::{SecretError, load_or_create_key, read_secret, write_secret};
use edgefleet_protocol::Signer;
use rand::RngCore;

/// A random token: 32 bytes, base64url.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// Loads `<dir>/hub.key`, creating it on first start.
pub fn load_or_create_signer(dir: &Path) -> Result<(Signer, bool), SecretError> {
    load_or_create_key(&dir.join("hub.key"))
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
