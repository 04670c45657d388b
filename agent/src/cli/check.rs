//! `edge-agent check`: one PASS/WARN/FAIL line per prerequisite — config,
//! key files and modes, enrollment, store, hub reachability and pinned key,
//! clock skew against the hub's `Date` header, broker TCP reachability, K3s
//! API, free disk. Never connects to MQTT with the device's client id (that
//! would take over the running daemon's session).

use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::identity::{self, BROKER_PASSWORD_FILE, DEVICE_KEY_FILE, HUB_KEY_FILE};
use edgefleet_daemon::mqtt::BrokerUrl;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Line {
    pub verdict: Verdict,
    pub what: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = match self.verdict {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        write!(f, "{v}  {:<8} {}", self.what, self.detail)
    }
}

fn line(verdict: Verdict, what: &'static str, detail: impl Into<String>) -> Line {
    Line {
        verdict,
        what,
        detail: detail.into(),
    }
}

/// Clock skew above this is a warning; above [`SKEW_FAIL`] a failure.
const SKEW_WARN: Duration = Duration::from_secs(2);
const SKEW_FAIL: Duration = Duration::from_secs(300);
const MIN_FREE_FAIL: u64 = 100 * 1024 * 1024;
const MIN_FREE_WARN: u64 = 1024 * 1024 * 1024;

/// Runs every check; `config` is the load result (an error is a FAIL line).
pub async fn run(config_path: &Path, config: Result<Config, String>) -> Vec<Line> {
    let mut out = Vec::new();
    let cfg = match config {
        Ok(c) => {
            out.push(line(
                Verdict::Pass,
                "config",
                format!("{} is valid", config_path.display()),
            ));
            c
        }
        Err(e) => {
            out.push(line(Verdict::Fail, "config", e));
            return out;
        }
    };
    match cfg.require_enrolled() {
        Ok(()) => out.push(line(
            Verdict::Pass,
            "enrolled",
            format!("device id {}", cfg.device_id),
        )),
        Err(e) => out.push(line(Verdict::Fail, "enrolled", e.to_string())),
    }
    out.extend(check_keys(&cfg.state_dir));
    out.push(check_store(&cfg));
    out.extend(check_hub(&cfg).await);
    out.push(check_broker(&cfg).await);
    out.push(check_kube(&cfg).await);
    out.push(check_disk(&cfg.state_dir));
    out
}

fn check_keys(dir: &Path) -> Vec<Line> {
    let mut out = Vec::new();
    for (file, secret) in [
        (DEVICE_KEY_FILE, true),
        (BROKER_PASSWORD_FILE, true),
        (HUB_KEY_FILE, false),
    ] {
        let path = dir.join(file);
        match edgefleet_daemon::files::mode_of(&path) {
            None => out.push(line(
                Verdict::Fail,
                "keys",
                format!("{} is missing", path.display()),
            )),
            Some(mode) if secret && mode & 0o077 != 0 => out.push(line(
                Verdict::Fail,
                "keys",
                format!(
                    "{} has mode {mode:o}; it must be 600 (chmod 600 it)",
                    path.display()
                ),
            )),
            Some(mode) => out.push(line(
                Verdict::Pass,
                "keys",
                format!("{} mode {mode:o}", path.display()),
            )),
        }
    }
    if let Err(e) = identity::load_signer(dir) {
        out.push(line(Verdict::Fail, "keys", crate::error_chain(&e)));
    }
    if let Err(e) = identity::load_hub_key(dir) {
        out.push(line(Verdict::Fail, "keys", crate::error_chain(&e)));
    }
    out
}

fn check_store(cfg: &Config) -> Line {
    let path = cfg.db_path();
    if !path.exists() {
        return line(
            Verdict::Warn,
            "store",
            format!(
                "{} does not exist yet (created by `edge-agent run`)",
                path.display()
            ),
        );
    }
    match crate::store::Store::open_read_only(&path).and_then(|s| s.schema_version()) {
        Ok(v) => line(
            Verdict::Pass,
            "store",
            format!("{} schema v{v}", path.display()),
        ),
        Err(e) => line(Verdict::Fail, "store", crate::error_chain(&e)),
    }
}

async fn check_hub(cfg: &Config) -> Vec<Line> {
    if cfg.hub.url.is_empty() {
        return vec![line(Verdict::Fail, "hub", "hub.url is not set")];
    }
    let url = format!("{}/api/v1/hub/key", cfg.hub.url);
    let client = match super::enroll::http_client(&cfg.hub, Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) => return vec![line(Verdict::Fail, "hub", e.to_string())],
    };
    let sent = edgefleet_protocol::now_ms();
    let resp = match client.get(&url).send().await {
        Ok(r) => r,
        Err(e) => {
            return vec![line(
                Verdict::Fail,
                "hub",
                format!("{url}: {}", crate::error_chain(&e)),
            )];
        }
    };
    let received = edgefleet_protocol::now_ms();
    let mut out = Vec::new();
    let date = resp
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date);
    let status = resp.status();
    let body: Option<serde_json::Value> = resp.json().await.ok();
    let pinned = identity::load_hub_key(&cfg.state_dir).ok();
    let served = body
        .as_ref()
        .and_then(|b| b["publicKey"].as_str())
        .and_then(|k| edgefleet_protocol::PublicKey::from_base64(k).ok());
    match (status.is_success(), served, pinned) {
        (false, _, _) => out.push(line(Verdict::Fail, "hub", format!("{url}: HTTP {status}"))),
        (true, Some(s), Some(p)) if s == p => out.push(line(
            Verdict::Pass,
            "hub",
            format!(
                "{} reachable, key {} matches the pinned key",
                cfg.hub.url,
                p.kid()
            ),
        )),
        (true, Some(s), Some(p)) => out.push(line(
            Verdict::Fail,
            "hub",
            format!("hub serves key {} but {} is pinned", s.kid(), p.kid()),
        )),
        (true, _, _) => out.push(line(
            Verdict::Warn,
            "hub",
            format!("{} reachable; key not compared", cfg.hub.url),
        )),
    }
    match date {
        Some(hub_ms) => {
            // The Date header has 1 s resolution; compare against the midpoint.
            let local = (sent + received) / 2;
            let skew = Duration::from_millis(local.abs_diff(hub_ms));
            let detail = format!("clock differs from the hub by {:.1}s", skew.as_secs_f64());
            let v = if skew > SKEW_FAIL {
                Verdict::Fail
            } else if skew > SKEW_WARN + Duration::from_secs(1) {
                Verdict::Warn
            } else {
                Verdict::Pass
            };
            out.push(line(v, "clock", detail));
        }
        None => out.push(line(Verdict::Warn, "clock", "hub sent no Date header")),
    }
    out
}

async fn check_broker(cfg: &Config) -> Line {
    let BrokerUrl { host, port, tls } = match BrokerUrl::parse(&cfg.broker.url) {
        Ok(u) => u,
        Err(e) if cfg.broker.url.is_empty() => {
            return line(
                Verdict::Fail,
                "broker",
                format!("broker.url is not set ({e})"),
            );
        }
        Err(e) => return line(Verdict::Fail, "broker", e.to_string()),
    };
    let addr = format!("{host}:{port}");
    let reach = async {
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        if tls {
            tls_handshake(cfg, &host, tcp).await?;
        }
        Ok::<_, String>(())
    };
    match tokio::time::timeout(Duration::from_secs(3), reach).await {
        Ok(Ok(())) => line(
            Verdict::Pass,
            "broker",
            format!(
                "{} reachable ({})",
                cfg.broker.url,
                if tls {
                    "TLS, certificate trusted by broker.ca_file"
                } else {
                    "TCP, no TLS"
                }
            ),
        ),
        Ok(Err(e)) => line(Verdict::Fail, "broker", e),
        Err(_) => line(
            Verdict::Fail,
            "broker",
            format!("{addr}: no answer within 3s"),
        ),
    }
}

/// The TLS handshake the MQTT session will make: the broker's certificate
/// must chain to `broker.ca_file` and be for `host`.
async fn tls_handshake(cfg: &Config, host: &str, tcp: tokio::net::TcpStream) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let bad =
        |e: &dyn std::fmt::Display| format!("broker.ca_file {}: {e}", cfg.broker.ca_file.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&cfg.broker.ca_file).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no certificate in it"));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name =
        ServerName::try_from(host.to_owned()).map_err(|e| format!("broker host {host:?}: {e}"))?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{host}: TLS handshake failed: {e}"))?;
    Ok(())
}

async fn check_kube(cfg: &Config) -> Line {
    use crate::runtime::kube::KubeRuntime;
    let timeout = Duration::from_millis(cfg.kube.request_timeout_ms);
    let kube = match KubeRuntime::connect(cfg.kube.kubeconfig.as_deref(), timeout).await {
        Ok(k) => k,
        Err(e) => {
            // No K3s configured is fine for inference-only devices.
            let v = if cfg.kube.kubeconfig.is_some() {
                Verdict::Fail
            } else {
                Verdict::Warn
            };
            return line(v, "k3s", crate::error_chain(&e));
        }
    };
    match kube.server_version().await {
        Ok(v) => line(Verdict::Pass, "k3s", format!("API reachable, version {v}")),
        Err(e) => line(Verdict::Fail, "k3s", crate::error_chain(&e)),
    }
}

fn check_disk(dir: &Path) -> Line {
    let probe = if dir.exists() { dir } else { Path::new("/") };
    match crate::telemetry::disk_available(probe) {
        Some(free) => {
            let mib = free / (1024 * 1024);
            let v = if free < MIN_FREE_FAIL {
                Verdict::Fail
            } else if free < MIN_FREE_WARN {
                Verdict::Warn
            } else {
                Verdict::Pass
            };
            line(v, "disk", format!("{mib} MiB free for {}", probe.display()))
        }
        None => line(Verdict::Warn, "disk", "cannot determine free space"),
    }
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) to Unix ms.
pub fn parse_http_date(s: &str) -> Option<u64> {
    let mut it = s.split_whitespace();
    let _weekday = it.next()?;
    let day: u64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, mi, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if it.next()? != "GMT" {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m as i64 + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + (h * 3600 + mi * 60 + sec) as i64;
    u64::try_from(secs).ok().map(|s| s * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777_000)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn key_modes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let lines = check_keys(dir.path());
        assert!(lines.iter().all(|l| l.verdict == Verdict::Fail));
        identity::load_or_create_signer(dir.path()).unwrap();
        identity::store_broker_password(dir.path(), "x").unwrap();
        let signer = identity::load_signer(dir.path()).unwrap();
        identity::store_hub_key(dir.path(), signer.public()).unwrap();
        let lines = check_keys(dir.path());
        assert!(
            lines.iter().all(|l| l.verdict == Verdict::Pass),
            "{lines:?}"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join(DEVICE_KEY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(
            check_keys(dir.path())
                .iter()
                .any(|l| l.verdict == Verdict::Fail)
        );
    }
}
