//! Shared support for the end-to-end suites in `tests/tests/`, written so a
//! test reads like the scenario: start a hub, an agent, a broker, a real
//! Kubernetes control plane; kill them; wait for conditions with deadlines.
//! Never shipped.
//!
//! The suites run the real `cloudcore` and `edge-agent` binaries that
//! `cargo test --workspace` builds next to the test executables.

pub mod agent;
pub mod bench;
pub mod control_plane;
pub mod device;
pub mod fixtures;
pub mod git;
pub mod git_bench;
pub mod hub;
pub mod mosquitto;
pub mod netns;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod rollout_bench;
pub mod sim;
pub mod tmpfs;
pub mod ui_bench;

use std::time::{Duration, Instant};

/// reqwest is built without a default TLS crypto provider (we pick ring);
/// every test process installs it before its first HTTP client.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Whether a test must fail, rather than skip, when `what` is missing:
/// true when `EDGEFLEET_REQUIRE_<WHAT>` is set to anything but `0`.
pub fn required(what: &str) -> bool {
    std::env::var(require_var(what)).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn require_var(what: &str) -> String {
    format!("EDGEFLEET_REQUIRE_{}", what.to_ascii_uppercase())
}

/// Skips loudly, or panics when the dependency is required. Call as
/// `if !have { return skip("mosquitto", "not on PATH"); }`.
pub fn skip(what: &str, why: &str) {
    let var = require_var(what);
    if required(what) {
        panic!("{what} is required ({var} is set) but unavailable: {why}");
    }
    eprintln!("SKIPPED: {what} unavailable ({why}); set {var}=1 to make this a failure");
}

/// Polls `check` until it returns `Some`, or panics after `timeout` saying
/// what was expected.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The first word after `marker` in a line a process printed (a URL, a
/// device id); panics naming `marker` when it is not there.
pub fn word_after(text: &str, marker: &str) -> String {
    let Some((_, rest)) = text.split_once(marker) else {
        panic!("no {marker:?} in {text:?}");
    };
    rest.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The status code of `GET url`, `None` when nothing answers.
pub async fn http_status(http: &reqwest::Client, url: &str) -> Option<reqwest::StatusCode> {
    http.get(url).send().await.ok().map(|r| r.status())
}

/// A free TCP port on 127.0.0.1 (for servers that cannot bind port 0
/// themselves, like mosquitto).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Two `#[tokio::test]`s running one scenario, against the hub's embedded
/// broker and against mosquitto: `on_both_brokers!(scenario, (embedded_arg,
/// mosquitto_arg) => test_embedded, test_mosquitto);`
#[macro_export]
macro_rules! on_both_brokers {
    ($scenario:ident, ($embedded:expr, $mosquitto:expr) => $e_test:ident, $m_test:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $e_test() {
            $scenario($embedded).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $m_test() {
            $scenario($mosquitto).await;
        }
    };
}
