//! Mosquitto, started by a test as an external broker on a free loopback
//! port, with persistence in a temp dir (so a restart keeps retained
//! messages and sessions, as a production broker would).

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;

use crate::process::Proc;

#[derive(Debug)]
pub struct Mosquitto {
    pub proc: Proc,
    pub port: u16,
    dir: tempfile::TempDir,
    tls: bool,
}

/// A TLS listener's certificate chain and key (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn binary() -> Option<PathBuf> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

impl Mosquitto {
    /// Starts mosquitto, or returns `None` after `skip("mosquitto")` (which
    /// panics when EDGEFLEET_REQUIRE_MOSQUITTO=1).
    pub async fn start() -> Option<Self> {
        Self::start_with_listeners(&[]).await
    }

    /// Like [`Mosquitto::start`], also listening on the same port at each
    /// of `extra` (e.g. the host end of a veth pair).
    pub async fn start_with_listeners(extra: &[std::net::IpAddr]) -> Option<Self> {
        Self::launch_new(extra, None).await
    }

    /// Like [`Mosquitto::start`], but its one listener speaks TLS only
    /// (`mqtts://`) with the given certificate.
    pub async fn start_tls(tls: &TlsFiles) -> Option<Self> {
        Self::launch_new(&[], Some(tls)).await
    }

    /// Like [`Mosquitto::start`], but with no anonymous access: its
    /// dynamic-security plugin holds every client, starting with one admin
    /// (`DYNSEC_ADMIN`, password `admin_password`) made by
    /// `mosquitto_ctrl dynsec init`, as its documentation sets it up.
    pub async fn start_dynsec(admin_password: &str) -> Option<Self> {
        let m = Self::launch_new(&[], None).await?;
        let Some(plugin) = dynsec_plugin() else {
            crate::skip(
                "mosquitto",
                "mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) is not installed",
            );
            return None;
        };
        let mut m = m;
        m.stop().await;
        let file = m.dir.path().join("dynamic-security.json");
        let out = std::process::Command::new("mosquitto_ctrl")
            .args(["dynsec", "init"])
            .arg(&file)
            .args([DYNSEC_ADMIN, admin_password])
            .output()
            .expect("run mosquitto_ctrl");
        assert!(out.status.success(), "mosquitto_ctrl dynsec init: {out:?}");
        let conf_path = m.dir.path().join("mosquitto.conf");
        let conf = std::fs::read_to_string(&conf_path).expect("read mosquitto.conf");
        let conf = conf.replace(
            "allow_anonymous true\n",
            &format!(
                "allow_anonymous false\nplugin {}\nplugin_opt_config_file {}\n",
                plugin.display(),
                file.display()
            ),
        );
        std::fs::write(&conf_path, conf).expect("write mosquitto.conf");
        m.start_again().await;
        Some(m)
    }

    async fn launch_new(extra: &[std::net::IpAddr], tls: Option<&TlsFiles>) -> Option<Self> {
        let Some(_) = binary() else {
            crate::skip(
                "mosquitto",
                "mosquitto is not installed (apt-get install mosquitto)",
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let port = crate::free_port();
        let extra: String = extra
            .iter()
            .map(|ip| format!("listener {port} {ip}\n"))
            .collect();
        let tls_conf = tls
            .map(|t| {
                format!(
                    "certfile {}\nkeyfile {}\n",
                    t.cert.display(),
                    t.key.display()
                )
            })
            .unwrap_or_default();
        let conf = format!(
            "listener {port} 127.0.0.1\n{tls_conf}{extra}allow_anonymous true\nuser {}\npersistence true\npersistence_location {}/\nmax_inflight_messages 1000\nmax_queued_messages 100000\nlog_dest stderr\nlog_type error\nlog_type warning\n",
            current_user(),
            dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("write mosquitto.conf");
        let mut m = Self {
            proc: Proc::placeholder("mosquitto"),
            port,
            dir,
            tls: tls.is_some(),
        };
        m.launch().await;
        Some(m)
    }

    async fn launch(&mut self) {
        let mut cmd = Command::new(binary().expect("mosquitto binary"));
        cmd.arg("-c").arg(self.dir.path().join("mosquitto.conf"));
        self.proc = Proc::spawn("mosquitto", cmd);
        let port = self.port;
        crate::eventually(
            "mosquitto accepting connections",
            Duration::from_secs(10),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
    }

    /// `mqtt://127.0.0.1:PORT`, or `mqtts://localhost:PORT` for a TLS
    /// listener (a name its certificate is for).
    pub fn url(&self) -> String {
        if self.tls {
            format!("mqtts://localhost:{}", self.port)
        } else {
            format!("mqtt://127.0.0.1:{}", self.port)
        }
    }

    /// SIGKILL.
    pub async fn kill(&mut self) {
        self.proc.kill().await;
    }

    /// Stops cleanly (SIGTERM, so it saves its persistence file) and starts again.
    pub async fn restart(&mut self) {
        let _ = self.proc.terminate(Duration::from_secs(10)).await;
        self.launch().await;
    }

    /// Stops cleanly; `start_again` brings it back on the same port.
    pub async fn stop(&mut self) {
        let _ = self.proc.terminate(Duration::from_secs(10)).await;
    }

    pub async fn start_again(&mut self) {
        self.launch().await;
    }
}

/// The admin user [`Mosquitto::start_dynsec`] creates.
pub const DYNSEC_ADMIN: &str = "admin";

fn dynsec_plugin() -> Option<PathBuf> {
    let dirs = std::fs::read_dir("/usr/lib").ok()?;
    std::iter::once(PathBuf::from("/usr/lib"))
        .chain(dirs.flatten().map(|d| d.path()))
        .map(|d| d.join("mosquitto_dynamic_security.so"))
        .find(|p| p.exists())
}

/// Run mosquitto as whoever runs the test: as root it would otherwise switch
/// to the `mosquitto` user and fail to write its persistence file here.
fn current_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "root".into())
}
