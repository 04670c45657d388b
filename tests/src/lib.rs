//! Shared support for the end-to-end suites in `tests/tests/`: starting real
//! processes and brokers, and waiting on conditions with deadlines.
//! Never shipped.

use std::time::{Duration, Instant};

/// Whether a test must fail, rather than skip, when `what` is missing:
/// true when `EDGEFLEET_REQUIRE_<WHAT>` is set to anything but `0`.
pub fn required(what: &str) -> bool {
    std::env::var(format!("EDGEFLEET_REQUIRE_{}", what.to_ascii_uppercase()))
        .is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Skips loudly, or panics when the dependency is required.
pub fn missing(what: &str, why: &str) {
    let var = format!("EDGEFLEET_REQUIRE_{}", what.to_ascii_uppercase());
    if required(what) {
        panic!("{what} is required ({var} is set) but unavailable: {why}");
    }
    eprintln!("SKIPPED: {what} unavailable ({why}); set {var}=1 to make this a failure");
}

/// Polls `check` until it returns `Some`, or panics after `timeout` saying
/// what was expected.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
