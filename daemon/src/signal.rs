//! Stop signals: SIGTERM (systemd, `kill`) and SIGINT (Ctrl-C) cancel one
//! token that every task of the process watches; SIGHUP (`systemctl
//! reload`) asks for files to be read again ([`on_reload`]). This is the
//! only place either daemon handles signals.

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

/// Installs a SIGHUP handler now and calls `reload` on each SIGHUP until
/// `cancel`. Must be called inside a tokio runtime.
pub fn on_reload(
    cancel: CancellationToken,
    reload: impl Fn() + Send + 'static,
) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!(signal = "SIGHUP", "reloading");
                    reload();
                }
                () = cancel.cancelled() => return,
            }
        }
    });
    Ok(())
}

/// Sends SIGHUP to `pid` (a running daemon, named by its lock file): the
/// other side of [`on_reload`].
pub fn ask_reload(pid: u32) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).map_err(Into::into)
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
