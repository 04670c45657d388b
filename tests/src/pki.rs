//! A throwaway PKI for TLS tests: a CA, a server certificate it signed (for
//! `localhost` and 127.0.0.1), and an unrelated CA, as PEM files in a temp
//! dir.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::mosquitto::TlsFiles;

#[derive(Debug)]
pub struct Pki {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server: TlsFiles,
}

fn ca(name: &str) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    (params, KeyPair::generate().expect("CA key"))
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write PEM");
    path
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_params, ca_key) = ca("edgefleet test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
        let (other_params, other_key) = ca("someone else's CA");
        let other_cert = other_params.self_signed(&other_key).expect("self-sign CA");
        let server_key = KeyPair::generate().expect("server key");
        let mut server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_cert = server_params
            .signed_by(&server_key, &Issuer::new(ca_params, ca_key))
            .expect("sign server certificate");
        let d = dir.path();
        Self {
            ca: write(d, "ca.pem", &ca_cert.pem()),
            other_ca: write(d, "other-ca.pem", &other_cert.pem()),
            server: TlsFiles {
                cert: write(d, "server.pem", &server_cert.pem()),
                key: write(d, "server.key", &server_key.serialize_pem()),
            },
            _dir: dir,
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}
