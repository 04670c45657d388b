//! Supervised tasks: a daemon runs until it is told to stop or until one of
//! its critical tasks (the MQTT session, the REST server, ingest, the
//! reconciler) ends on its own, which is a failure whatever the task
//! returned: the process exits non-zero and systemd restarts it, instead of
//! running on without, say, its API.
//!
//! Stop signals and task cancellation are two tokens: a stop cancels the
//! tasks only after the supervisor has seen it, so a task that ends because
//! of a stop is never mistaken for one that died.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A critical task that ended by itself, with its error if it returned one.
#[derive(Debug)]
pub struct Died<E> {
    pub task: &'static str,
    pub error: Option<E>,
}

impl<E: std::fmt::Display> std::fmt::Display for Died<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.error {
            Some(e) => write!(f, "task {} failed: {e}", self.task),
            None => write!(f, "task {} stopped unexpectedly", self.task),
        }
    }
}

impl<E: std::fmt::Debug + std::fmt::Display> std::error::Error for Died<E> {}

/// Owns a daemon's tasks.
#[derive(Debug)]
pub struct Supervisor<E> {
    tracker: TaskTracker,
    tasks: CancellationToken,
    died_tx: mpsc::UnboundedSender<Died<E>>,
    died_rx: mpsc::UnboundedReceiver<Died<E>>,
}

impl<E: Send + 'static> Default for Supervisor<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: Send + 'static> Supervisor<E> {
    pub fn new() -> Self {
        let (died_tx, died_rx) = mpsc::unbounded_channel();
        Self {
            tracker: TaskTracker::new(),
            tasks: CancellationToken::new(),
            died_tx,
            died_rx,
        }
    }

    /// The token every task watches; cancelled when the daemon stops.
    pub fn cancel_token(&self) -> CancellationToken {
        self.tasks.clone()
    }

    /// A task the daemon cannot run without.
    pub fn critical<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let died = self.died_tx.clone();
        let handle = self.tracker.spawn(task);
        self.tracker.spawn(async move {
            let error = match handle.await {
                Ok(r) => r.err(),
                Err(e) => {
                    tracing::error!(task = name, error = %e, "task panicked");
                    None
                }
            };
            let _ = died.send(Died { task: name, error });
        });
    }

    /// A task whose end is no failure (it is still cancelled and awaited
    /// on a stop).
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Runs until `stop` is cancelled (`Ok`) or a critical task ends
    /// (`Err`); then cancels every task and waits up to `grace` for them.
    pub async fn run(mut self, stop: CancellationToken, grace: Duration) -> Result<(), Died<E>> {
        let outcome = tokio::select! {
            biased;
            () = stop.cancelled() => Ok(()),
            Some(died) = self.died_rx.recv() => Err(died),
        };
        match &outcome {
            Ok(()) => tracing::info!("stopping"),
            Err(d) => tracing::error!(task = d.task, "a critical task ended; stopping"),
        }
        self.tasks.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(?grace, "tasks did not finish within the grace period");
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(5);

    /// Ends when cancelled, like every well-behaved task.
    async fn until_cancelled(token: CancellationToken) -> Result<(), String> {
        token.cancelled().await;
        Ok(())
    }

    #[tokio::test]
    async fn a_stop_ends_every_task_without_error() {
        let s = Supervisor::<String>::new();
        for name in ["api", "ingest", "session"] {
            s.critical(name, until_cancelled(s.cancel_token()));
        }
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(s.run(stop, GRACE).await.is_ok());
    }

    #[tokio::test]
    async fn a_critical_task_that_fails_stops_the_rest() {
        let s = Supervisor::<String>::new();
        let token = s.cancel_token();
        s.critical("ingest", until_cancelled(s.cancel_token()));
        s.critical("api", async { Err("address in use".to_owned()) });
        let died = s
            .run(CancellationToken::new(), GRACE)
            .await
            .expect_err("the api task died");
        assert_eq!(died.task, "api");
        assert_eq!(died.to_string(), "task api failed: address in use");
        assert!(token.is_cancelled(), "the other tasks were told to stop");
    }

    #[tokio::test]
    async fn a_critical_task_that_panics_has_died() {
        let s = Supervisor::<String>::new();
        s.critical("api", async { panic!("bug") });
        let died = s.run(CancellationToken::new(), GRACE).await.unwrap_err();
        assert_eq!(died.to_string(), "task api stopped unexpectedly");
    }

    #[tokio::test]
    async fn a_critical_task_that_just_returns_has_died_too() {
        let s = Supervisor::<String>::new();
        s.spawn(async {});
        s.critical("publisher", async { Ok(()) });
        let died = s.run(CancellationToken::new(), GRACE).await.unwrap_err();
        assert_eq!(died.task, "publisher");
        assert!(died.error.is_none());
    }
}
