//! The agent's own recent log lines about each workload (events with a
//! `workload` field), kept in memory for `edgectl logs` of an inference
//! workload, which has no pod to read logs from. Bounded: the newest
//! [`LINES_PER_WORKLOAD`] lines of at most [`WORKLOADS`] workloads (the
//! workload written to longest ago is forgotten first).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// Lines kept per workload.
pub const LINES_PER_WORKLOAD: usize = 200;
/// Workloads kept.
pub const WORKLOADS: usize = 64;

#[derive(Default)]
struct Book {
    lines: HashMap<String, VecDeque<(u64, String)>>,
    /// Workloads, least recently written first.
    order: VecDeque<String>,
}

fn book() -> &'static Mutex<Book> {
    static BOOK: OnceLock<Mutex<Book>> = OnceLock::new();
    BOOK.get_or_init(Mutex::default)
}

/// Keeps `line` (written at `at_ms`) for `workload`.
pub fn record(workload: &str, at_ms: u64, line: String) {
    let mut b = book().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = b.order.iter().position(|w| w == workload) {
        let w = b.order.remove(i).unwrap_or_default();
        b.order.push_back(w);
    } else {
        if b.order.len() >= WORKLOADS
            && let Some(old) = b.order.pop_front()
        {
            b.lines.remove(&old);
        }
        b.order.push_back(workload.to_owned());
    }
    let q = b.lines.entry(workload.to_owned()).or_default();
    if q.len() >= LINES_PER_WORKLOAD {
        q.pop_front();
    }
    q.push_back((at_ms, line));
}

/// `workload`'s kept lines written at or after `since_ms`, the last `tail`
/// of them (all without a tail).
pub fn recent(workload: &str, since_ms: u64, tail: Option<usize>) -> Vec<String> {
    let b = book().lock().unwrap_or_else(|p| p.into_inner());
    let lines: Vec<String> = b
        .lines
        .get(workload)
        .into_iter()
        .flatten()
        .filter(|(at, _)| *at >= since_ms)
        .map(|(_, l)| l.clone())
        .collect();
    let skip = tail.map_or(0, |t| lines.len().saturating_sub(t));
    lines.into_iter().skip(skip).collect()
}

/// A `tracing` layer that records every event carrying a `workload` field.
#[derive(Debug, Default)]
pub struct Layer;

#[derive(Default)]
struct Fields {
    workload: Option<String>,
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "workload" => self.workload = Some(value.to_owned()),
            "message" => self.message = value.to_owned(),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "workload" => self.workload = Some(format!("{value:?}").trim_matches('"').to_owned()),
            "message" => self.message = format!("{value:?}"),
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Layer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let Some(workload) = f.workload else {
            return;
        };
        let now = edgefleet_protocol::now_ms();
        let line = format!(
            "{} {} {}{}",
            timestamp(now),
            event.metadata().level(),
            f.message,
            f.rest
        );
        record(&workload, now, line);
    }
}

/// `ms` since the Unix epoch as `seconds.millis` (the agent's log lines
/// carry no calendar date; journald adds one).
fn timestamp(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded_per_workload_and_filtered_by_time_and_tail() {
        let w = "test-bounded.model";
        for i in 0..(LINES_PER_WORKLOAD + 10) {
            record(w, i as u64, format!("line {i}"));
        }
        let all = recent(w, 0, None);
        assert_eq!(all.len(), LINES_PER_WORKLOAD);
        assert_eq!(all[0], "line 10");
        assert_eq!(
            recent(w, 205, None),
            vec!["line 205", "line 206", "line 207", "line 208", "line 209"]
        );
        assert_eq!(recent(w, 0, Some(2)), vec!["line 208", "line 209"]);
        assert!(recent("test-none.x", 0, None).is_empty());
    }

    #[test]
    fn events_with_a_workload_field_are_kept_through_the_layer() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let subscriber = tracing_subscriber::registry().with(Layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(workload = "test-layer.model", model = "m", "model loaded");
            tracing::info!("no workload here");
        });
        let lines = recent("test-layer.model", 0, None);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].ends_with("INFO model loaded model=\"m\""),
            "{lines:?}"
        );
    }
}
