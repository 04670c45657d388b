//! A cloneable handle on the one read-write [`Store`] of the daemon. Every
//! call runs on tokio's blocking pool so SQLite never stalls an async task.

use std::sync::{Arc, Mutex};

use crate::store::Store;

#[derive(Debug, Clone)]
pub struct Db(Arc<Mutex<Store>>);

impl Db {
    pub fn new(store: Store) -> Self {
        Self(Arc::new(Mutex::new(store)))
    }

    /// Runs `f` with exclusive access to the store, off the async runtime.
    pub async fn call<R, F>(&self, f: F) -> R
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> R + Send + 'static,
    {
        let inner = self.0.clone();
        let job = tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves a consistent SQLite
            // connection (transactions roll back on drop): keep using it.
            let mut guard = inner.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        });
        match job.await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Runs `f` on the calling thread (startup, before the runtime is busy).
    pub fn call_sync<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}
