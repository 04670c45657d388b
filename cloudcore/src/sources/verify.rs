//! SSH-signed commits checked against an allowed_signers file (the format
//! of ssh-keygen(1) "ALLOWED SIGNERS", which `git config
//! gpg.ssh.allowedSignersFile` uses), without running ssh-keygen.

use ssh_key::{PublicKey, SshSig};

/// Git signs in this namespace.
const NAMESPACE: &str = "git";

/// One line of the file: who, and their key.
#[derive(Debug, Clone)]
pub struct Signer {
    pub principals: String,
    pub key: PublicKey,
}

/// Reads an allowed_signers file. A line it cannot read is an error naming
/// the line (a key silently skipped would refuse good commits unexplained).
pub fn parse_allowed_signers(text: &str) -> Result<Vec<Signer>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (principals, rest) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("line {}: no key", i + 1))?;
        let rest = rest.trim_start();
        // Options come before the key type; the key is "type base64".
        let at = std::iter::once(0)
            .chain(rest.match_indices(char::is_whitespace).map(|(j, _)| j + 1))
            .find(|&j| is_key_type(&rest[j..]))
            .ok_or_else(|| format!("line {}: no public key", i + 1))?;
        let options = rest[..at].trim();
        if let Some(ns) = option(options, "namespaces")
            && !ns.split(',').any(|n| n == NAMESPACE)
        {
            continue;
        }
        let key = PublicKey::from_openssh(rest[at..].trim())
            .map_err(|e| format!("line {}: {e}", i + 1))?;
        out.push(Signer {
            principals: principals.to_owned(),
            key,
        });
    }
    Ok(out)
}

fn is_key_type(s: &str) -> bool {
    ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"]
        .iter()
        .any(|p| s.starts_with(p))
}

/// The value of `name="…"` (or `name=…`) among comma-separated options.
fn option<'a>(options: &'a str, name: &str) -> Option<&'a str> {
    let start = options.find(&format!("{name}="))? + name.len() + 1;
    let v = &options[start..];
    Some(match v.strip_prefix('"') {
        Some(q) => &q[..q.find('"').unwrap_or(q.len())],
        None => &v[..v.find([',', ' ']).unwrap_or(v.len())],
    })
}

/// Checks a commit's signature: `Ok(principals)` of the signer when an
/// allowed key made it, otherwise why not.
pub fn verify_commit(
    signers: &[Signer],
    signature: Option<&(String, Vec<u8>)>,
) -> Result<String, String> {
    let Some((sig, signed)) = signature else {
        return Err("the commit is not signed".into());
    };
    if sig.contains("BEGIN PGP SIGNATURE") {
        return Err("the commit has an OpenPGP signature; only SSH signatures are verified".into());
    }
    let sig = SshSig::from_pem(sig.as_bytes())
        .map_err(|e| format!("the commit's signature is not an SSH signature: {e}"))?;
    if sig.namespace() != NAMESPACE {
        return Err(format!(
            "the signature is for namespace {:?}, not {NAMESPACE:?}",
            sig.namespace()
        ));
    }
    let Some(signer) = signers
        .iter()
        .find(|s| s.key.key_data() == sig.public_key())
    else {
        let fp = PublicKey::new(sig.public_key().clone(), "").fingerprint(ssh_key::HashAlg::Sha256);
        return Err(format!("signed by {fp}, a key not in allowedSignersFile"));
    };
    signer.key.verify(NAMESPACE, signed, &sig).map_err(|e| {
        format!(
            "the signature by {} does not verify: {e}",
            signer.principals
        )
    })?;
    Ok(signer.principals.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOZ7KSqzZ7Gk3Gq3nSqtXa9m0bT7KxG4Xxbb7tBwfh5n";

    #[test]
    fn allowed_signers_lines_with_and_without_options() {
        let text = format!(
            "# ops\n\nalice@example.com {KEY} alice\nbob@example.com,ci@example.com namespaces=\"git,file\" {KEY}\ncarol@example.com namespaces=\"file\" {KEY}\n"
        );
        let s = parse_allowed_signers(&text).unwrap();
        let names: Vec<_> = s.iter().map(|s| s.principals.as_str()).collect();
        assert_eq!(
            names,
            ["alice@example.com", "bob@example.com,ci@example.com"]
        );
        let e = parse_allowed_signers("dave@example.com ssh-ed25519 notbase64\n").unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
        assert!(parse_allowed_signers("eve@example.com\n").is_err());
    }

    #[test]
    fn unsigned_and_pgp_commits_are_refused_with_the_reason() {
        let s = parse_allowed_signers(&format!("a {KEY}\n")).unwrap();
        assert_eq!(
            verify_commit(&s, None).unwrap_err(),
            "the commit is not signed"
        );
        let pgp = ("-----BEGIN PGP SIGNATURE-----\n".to_owned(), Vec::new());
        assert!(
            verify_commit(&s, Some(&pgp))
                .unwrap_err()
                .contains("OpenPGP")
        );
    }
}
