//! What the two edgefleet daemons, `cloudcore` and `edge-agent`, share as
//! processes rather than as protocol: the one-process-per-directory lock
//! ([`lock`]), free space and its reserve ([`disk`]), config files and
//! variables ([`config`]), atomic writes and the
//! secret-file policy ([`files`]), reaching a broker ([`mqtt`]), retry
//! timing ([`backoff`]), stop signals ([`signal`]), exit codes ([`exit`]),
//! supervised tasks ([`supervise`]), the `/metrics` endpoint ([`metrics`])
//! and error messages ([`error_chain`]).
//!
//! Nothing here knows about the messages' meaning or either store; the wire
//! contract is `edgefleet-protocol`.

pub mod backoff;
pub mod config;
pub mod disk;
pub mod exit;
pub mod files;
pub mod lock;
pub mod metrics;
pub mod mqtt;
pub mod signal;
pub mod sqlite;
pub mod supervise;
pub mod time;

/// An error and its sources, `outer: inner: root`, for one log line or one
/// message on stderr. A source whose text its parent already ends with
/// (wrappers that repeat their cause) is not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let msg = inner.to_string();
        if !s.ends_with(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the store")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn error_chain_joins_sources_once() {
        let io = || std::io::Error::other("disk full");
        assert_eq!(
            super::error_chain(&Outer(io())),
            "cannot open the store: disk full"
        );
        assert_eq!(super::error_chain(&Repeats(io())), "wrapped: disk full");
    }
}
