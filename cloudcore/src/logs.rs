//! Callers waiting for a device's logs: each logs request registers its
//! command id here, and ingest hands the device's [`LogChunk`] events to it
//! instead of storing them. A chunk for no waiting caller (it gave up), or
//! from another device than the one asked, is dropped and counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use edgefleet_protocol::{DeviceId, LogChunk};
use tokio::sync::mpsc;

/// Chunks buffered per caller before more are dropped (the caller reads
/// them as they come; 4 MiB of logs is 512 chunks).
const BUFFER: usize = 1024;

/// Each waiting command id: the device asked, and where its chunks go.
type Waiters = HashMap<String, (DeviceId, mpsc::Sender<LogChunk>)>;

#[derive(Debug, Default, Clone)]
pub struct LogStreams(Arc<Mutex<Waiters>>);

/// A caller's registration; dropping it stops delivery.
#[derive(Debug)]
pub struct Waiting {
    streams: LogStreams,
    id: String,
    pub rx: mpsc::Receiver<LogChunk>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.streams.lock().remove(&self.id);
    }
}

impl LogStreams {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (DeviceId, mpsc::Sender<LogChunk>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the chunks of command `id` from `device`.
    pub fn register(&self, id: &str, device: DeviceId) -> Waiting {
        let (tx, rx) = mpsc::channel(BUFFER);
        self.lock().insert(id.to_owned(), (device, tx));
        Waiting {
            streams: self.clone(),
            id: id.to_owned(),
            rx,
        }
    }

    /// Hands a chunk from `device` to its caller; the outcome for metrics.
    pub fn deliver(&self, device: &DeviceId, chunk: LogChunk) -> &'static str {
        let streams = self.lock();
        let Some((asked, tx)) = streams.get(&chunk.command_id) else {
            return "no_caller";
        };
        if asked != device {
            return "wrong_device";
        }
        match tx.try_send(chunk) {
            Ok(()) => "delivered",
            Err(_) => "overflow",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(id: &str, seq: u32) -> LogChunk {
        LogChunk {
            command_id: id.into(),
            seq,
            data: format!("line {seq}\n"),
            last: false,
            error: None,
        }
    }

    #[test]
    fn chunks_reach_only_their_caller_from_the_device_asked() {
        let streams = LogStreams::default();
        let (pi1, pi2) = (crate::testing::id("pi-1"), crate::testing::id("pi-2"));
        let mut w = streams.register("c1", pi1.clone());
        assert_eq!(streams.deliver(&pi2, chunk("c1", 0)), "wrong_device");
        assert_eq!(streams.deliver(&pi1, chunk("c2", 0)), "no_caller");
        assert_eq!(streams.deliver(&pi1, chunk("c1", 0)), "delivered");
        assert_eq!(w.rx.try_recv().unwrap().seq, 0);
        assert!(w.rx.try_recv().is_err());
        drop(w);
        assert_eq!(streams.deliver(&pi1, chunk("c1", 1)), "no_caller");
    }
}
