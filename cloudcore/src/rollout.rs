//! The rollout engine: steps every progressing rollout (store/rollouts.rs
//! holds the whole state and the rules) and asks the publisher for a pass
//! when a device's generation changed. Fast while a rollout progresses,
//! slow otherwise; it never holds state of its own, so a restarted hub
//! resumes where the store says.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::publisher::Trigger;
use crate::store::Store;

/// Between steps while a rollout progresses.
const ACTIVE: Duration = Duration::from_millis(100);
/// Between steps otherwise (a resume or a new rollout also wakes it).
const IDLE: Duration = Duration::from_secs(1);

pub async fn run(
    store: Store,
    metrics: Arc<Metrics>,
    publish: Trigger,
    wake: Arc<tokio::sync::Notify>,
    changes: crate::ui::Changes,
    cancel: CancellationToken,
) {
    loop {
        let wait = match store.run(|s| s.rollout_step()).await {
            Ok(step) => {
                if step.publish {
                    publish.changed();
                }
                if !step.events.is_empty() {
                    changes.send(crate::ui::Change::Rollouts);
                }
                for (_, kind, _) in &step.events {
                    metrics
                        .rollout_transitions
                        .get_or_create(&vec![("event", (*kind).to_owned())])
                        .inc();
                }
                for state in edgefleet_api::RolloutState::ALL {
                    let n = step
                        .states
                        .iter()
                        .find(|(s, _)| *s == state)
                        .map_or(0, |(_, n)| *n);
                    metrics
                        .rollouts
                        .get_or_create(&vec![("state", state.as_str().to_owned())])
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                if step.active { ACTIVE } else { IDLE }
            }
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "rollout step failed; retrying");
                IDLE
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {}
        }
    }
}
