//! `edge-agent run`: wires the store, reconciler, MQTT session and local HTTP
//! together and owns the process lifecycle through a [`Supervisor`]:
//! SIGTERM/SIGINT stop it, every task gets a grace period to drain, and a
//! task that ends on its own takes the process down (systemd restarts it).
//!
//! systemd: READY=1 once the store is open and the config valid, then
//! WATCHDOG=1 while the store answers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edgefleet_daemon::supervise::Supervisor;
use tokio_util::sync::CancellationToken;

use crate::shared::Shared;

/// How long tasks get to finish after a stop signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("task {0} stopped unexpectedly")]
    TaskDied(&'static str),
}

/// Runs the daemon until a stop signal; `shared` holds an open store.
pub async fn run(shared: Arc<Shared>) -> Result<(), DaemonError> {
    let stop = CancellationToken::new();
    edgefleet_daemon::signal::cancel_on_stop(stop.clone()).map_err(DaemonError::Signals)?;
    // `edge-agent rotate-key` installed a new device key: sign with it.
    let reloading = shared.clone();
    edgefleet_daemon::signal::on_reload(stop.clone(), move || {
        match reloading.identity.reload_signer() {
            Ok(true) => {
                tracing::info!(key_id = %reloading.identity.signer().public().kid(), "device key rotated: signing with the new key");
                reloading.request_report();
            }
            Ok(false) => tracing::info!("device key unchanged"),
            Err(e) => tracing::error!(error = %crate::error_chain(&e), "cannot reload the device key; still signing with the old one"),
        }
    })
    .map_err(DaemonError::Signals)?;
    // A staged agent release: stop like on SIGTERM, then exit for it.
    let staged = shared.clone();
    let stop_for_update = stop.clone();
    tokio::spawn(async move {
        staged.update_wake.notified().await;
        tracing::info!("stopping to start the staged agent release");
        stop_for_update.cancel();
    });
    let sup = Supervisor::<DaemonError>::new();
    let cancel = sup.cancel_token();
    // The first reconcile pass starts before anything touches the network.
    let reconcile = crate::reconcile::run(shared.clone(), cancel.clone());
    sup.critical("reconciler", async move {
        reconcile.await;
        Ok(())
    });
    let listener = crate::http::bind(shared.cfg.http.port).await?;
    let http = crate::http::serve(listener, shared.clone(), cancel.clone());
    sup.critical("http", async move { Ok(http.await?) });
    let session = crate::session::run(shared.clone(), cancel.clone());
    sup.critical("session", async move { Ok(session.await?) });
    sup.spawn(watchdog(shared.clone(), cancel));

    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tracing::info!(device = %shared.device, "edge-agent running");
    let outcome = sup.run(stop, SHUTDOWN_GRACE).await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    shared.connected.store(false, Ordering::Relaxed);
    tracing::info!("edge-agent stopped");
    outcome.map_err(|died| died.error.unwrap_or(DaemonError::TaskDied(died.task)))
}

/// systemd's watchdog, when the unit has one: pings only when the store
/// answers, so a wedged agent gets restarted.
async fn watchdog(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) {
        match crate::update::supervised_watchdog_usec() {
            Some(u) => usec = u,
            None => return,
        }
    }
    let period = Duration::from_micros(usec / 2).max(Duration::from_millis(500));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let alive =
            tokio::time::timeout(period, shared.db.call(|s| s.schema_version().is_ok())).await;
        if matches!(alive, Ok(true)) {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!("store did not answer; withholding the watchdog ping");
        }
    }
}
