//! A network namespace joined to the host by a veth pair on a private /30:
//! a device behind a link the test can really cut (`ip link set … down`
//! inside the namespace) and heal. Needs root and iproute2; [`NetNs::create`]
//! skips loudly (`skip("netns", …)`) when either is missing.
//!
//! Names are unique per process and call; the namespace and both links are
//! deleted on drop, also when the test panics.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command as StdCommand;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::process::Command;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A namespace `name` with `veth` pair `host_if` (host side, `host_ip`) and
/// `dev_if` (inside, `dev_ip`).
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
    pub host_if: String,
    pub dev_if: String,
    pub host_ip: IpAddr,
    pub dev_ip: IpAddr,
}

/// Runs `ip ARGS…`; `Err` with its stderr when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = StdCommand::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Creates the namespace and the pair, both ends up, loopback up inside.
    /// `None` after a loud skip when `ip` or the privilege is missing
    /// (panics instead under `EDGEFLEET_REQUIRE_NETNS=1`).
    pub fn create() -> Option<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Interface names are at most 15 bytes: "ef" + 5 hex + counter + side.
        let tag = format!("ef{:05x}{n}", pid & 0xf_ffff);
        // A /30 per (process, call) in 10.213.0.0/16.
        let block = (pid.wrapping_mul(7).wrapping_add(n * 4)) % (1 << 14);
        let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + block * 4;
        let ns = Self {
            name: format!("{tag}ns"),
            host_if: format!("{tag}h"),
            dev_if: format!("{tag}d"),
            host_ip: IpAddr::V4(Ipv4Addr::from(base + 1)),
            dev_ip: IpAddr::V4(Ipv4Addr::from(base + 2)),
        };
        // From here on, Drop cleans up whatever was created.
        match ns.setup() {
            Ok(()) => Some(ns),
            Err(why) => {
                drop(ns);
                crate::skip("netns", &format!("{why} (needs root and iproute2)"));
                None
            }
        }
    }

    fn setup(&self) -> Result<(), String> {
        let (ns, h, d) = (&self.name, &self.host_if, &self.dev_if);
        ip(&["netns", "add", ns])?;
        ip(&["link", "add", h, "type", "veth", "peer", "name", d])?;
        ip(&["link", "set", d, "netns", ns])?;
        ip(&["addr", "add", &format!("{}/30", self.host_ip), "dev", h])?;
        ip(&["link", "set", h, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/30", self.dev_ip),
            "dev",
            d,
        ])?;
        ip(&["-n", ns, "link", "set", d, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Cuts the link from inside (the device's interface goes down; the
    /// host's address stays local, so the hub keeps serving on it).
    pub fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.dev_if, "down"]).expect("cut the veth link");
    }

    /// Brings the device's interface (and so its /30 route) back.
    pub fn heal(&self) {
        ip(&["-n", &self.name, "link", "set", &self.dev_if, "up"]).expect("heal the veth link");
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.arg("netns").arg("exec").arg(&self.name).arg(program);
        c
    }

    /// One HTTP/1.0 request to `127.0.0.1:port` inside the namespace (bash's
    /// `/dev/tcp`, so no client needs installing); returns the status code
    /// (0 when there was no answer) and the body.
    pub async fn http(
        &self,
        port: u16,
        method: &str,
        path: &str,
        body: &str,
        timeout: Duration,
    ) -> (u16, String) {
        let script = r#"exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 7
printf '%s %s HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n%s' "$2" "$3" "${#4}" "$4" >&3
cat <&3"#;
        let mut cmd = self.command("bash");
        cmd.arg("-c")
            .arg(script)
            .arg("http")
            .arg(port.to_string())
            .arg(method)
            .arg(path)
            .arg(body)
            .kill_on_drop(true);
        let Ok(Ok(out)) = tokio::time::timeout(timeout, cmd.output()).await else {
            return (0, String::new());
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let code = text
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (code, body)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes the device end and with it the pair;
        // the host end is deleted too in case the move never happened.
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}
