//! Stop signals: SIGTERM (systemd, `kill`) and SIGINT (Ctrl-C) cancel one
//! token that every task of the process watches. This is the only place
//! either daemon handles signals.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Installs the SIGTERM and SIGINT handlers now (so a failure is reported
/// before the daemon starts work) and cancels `cancel` on the first of
/// them. Must be called inside a tokio runtime.
pub fn cancel_on_stop(cancel: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            () = cancel.cancelled() => return,
        };
        tracing::info!(signal = name, "stopping");
        cancel.cancel();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sigterm_cancels_the_token() {
        let cancel = CancellationToken::new();
        cancel_on_stop(cancel.clone()).unwrap();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        tokio::time::timeout(std::time::Duration::from_secs(5), cancel.cancelled())
            .await
            .expect("SIGTERM did not cancel the token");
    }
}
