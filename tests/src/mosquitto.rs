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
        let conf = format!(
            "listener {port} 127.0.0.1\n{extra}allow_anonymous true\nuser {}\npersistence true\npersistence_location {}/\nmax_inflight_messages 1000\nmax_queued_messages 100000\nlog_dest stderr\nlog_type error\nlog_type warning\n",
            current_user(),
            dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("write mosquitto.conf");
        let mut m = Self {
            proc: Proc::placeholder("mosquitto"),
            port,
            dir,
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

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
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

/// Run mosquitto as whoever runs the test: as root it would otherwise switch
/// to the `mosquitto` user and fail to write its persistence file here.
fn current_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "root".into())
}
