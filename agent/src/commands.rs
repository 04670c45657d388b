//! Commands from the hub: one-off, signed, expiring. The session has
//! verified, decrypted and checked the expiry of each one; here its id is
//! claimed in the store (so it runs at most once, across redeliveries and
//! restarts), the action runs, and the result goes back to the hub through
//! the outbox as a [`COMMAND_RESULT_KIND`] event whose id is the command's.
//!
//! A claim that cannot be stored (full disk) runs nothing: the hub sends the
//! command again when the device reconnects, until it expires.

mod logs;

use std::sync::Arc;

use edgefleet_protocol::{COMMAND_RESULT_KIND, Command, CommandAction, CommandResult, Event};

use crate::shared::Shared;

/// The workload `name` of the stored desired state, and the inventory
/// entries of its Kubernetes objects; `Err` says why not (for a command's
/// result).
pub async fn workload_on_device(
    shared: &Shared,
    name: &str,
) -> Result<
    (
        edgefleet_protocol::Workload,
        Vec<crate::store::InventoryEntry>,
    ),
    String,
> {
    let loaded = shared
        .db
        .call(|s| Ok::<_, crate::store::StoreError>((s.desired()?, s.inventory()?)))
        .await
        .map_err(|e| format!("cannot read the store: {}", crate::error_chain(&e)))?;
    let (desired, inventory) = loaded;
    let workload = desired
        .into_iter()
        .flat_map(|d| d.workloads)
        .find(|w| w.workload.name == name)
        .map(|w| w.workload)
        .ok_or_else(|| format!("no workload {name:?} on this device"))?;
    let objects = inventory
        .into_iter()
        .filter(|e| e.workload == name)
        .collect();
    Ok((workload, objects))
}

/// Runs `cmd` once (by id) and queues its result.
pub async fn run(shared: Arc<Shared>, cmd: Command) {
    let (id, expires) = (cmd.id.clone(), cmd.expires_at_ms);
    let claimed = shared
        .db
        .call(move |s| s.command_claim(&id, expires, edgefleet_protocol::now_ms()))
        .await;
    match claimed {
        Ok(true) => {}
        Ok(false) => {
            shared.metrics.commands_duplicate.inc();
            tracing::debug!(id = %cmd.id, "command already ran; not run again");
            return;
        }
        Err(e) => {
            shared.metrics.store_errors.inc();
            tracing::error!(id = %cmd.id, error = %crate::error_chain(&e),
                "cannot record the command as run; not running it (the hub resends it on reconnect)");
            return;
        }
    }
    let action = cmd.action.name();
    shared
        .metrics
        .commands_run
        .get_or_create(&[("action", action)])
        .inc();
    tracing::info!(id = %cmd.id, action, "running command");
    let (ok, message, workload) = match &cmd.action {
        CommandAction::Resync => {
            shared
                .resync_wanted
                .store(true, std::sync::atomic::Ordering::Relaxed);
            shared.request_report();
            (true, "reconcile pass started".to_owned(), None)
        }
        CommandAction::ReportStatus => {
            shared.request_report();
            (true, "status report queued".to_owned(), None)
        }
        CommandAction::Logs {
            workload,
            container,
            tail_lines,
            since_seconds,
            limit_bytes,
        } => {
            let req = logs::Request {
                workload: workload.clone(),
                container: container.clone(),
                tail: *tail_lines,
                since_secs: *since_seconds,
                limit: *limit_bytes,
            };
            let result = logs::collect(&shared, &req).await;
            let bytes = result.as_ref().map_or(0, String::len);
            let sent = logs::send(&shared, &cmd.id, &result).await;
            match (result, sent) {
                (Ok(_), Ok(n)) => (
                    true,
                    format!("{bytes} bytes of logs sent in {n} chunks"),
                    Some(workload.clone()),
                ),
                (Err(e), _) | (Ok(_), Err(e)) => (false, e, Some(workload.clone())),
            }
        }
        CommandAction::RestartWorkload { name } => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let r = match shared.restarts.tx.send((name.clone(), tx)).await {
                Ok(()) => rx
                    .await
                    .unwrap_or_else(|_| Err("the reconciler stopped".to_owned())),
                Err(_) => Err("the reconciler is not running".to_owned()),
            };
            match r {
                Ok(m) => (true, m, Some(name.clone())),
                Err(m) => (false, m, Some(name.clone())),
            }
        }
    };
    let event = Event {
        id: cmd.id.clone(),
        device_id: shared.device.clone(),
        kind: COMMAND_RESULT_KIND.to_owned(),
        workload,
        created_at_ms: edgefleet_protocol::now_ms(),
        payload: serde_json::to_value(CommandResult {
            command_id: cmd.id.clone(),
            ok,
            message: edgefleet_protocol::status::truncate_message(&message),
        })
        .unwrap_or_default(),
    };
    let sealed = vec![(event.id.clone(), shared.identity.signer().seal(&event))];
    if let Err(e) = shared.queue_events(sealed).await {
        shared.metrics.store_errors.inc();
        tracing::error!(id = %cmd.id, error = %crate::error_chain(&e),
            "command ran, but its result cannot be queued for the hub");
    }
}
