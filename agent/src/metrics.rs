//! The agent's Prometheus metrics, registered once and shared by every task.
//! Names follow `edgefleet_agent_…` with `_total`, `_seconds`, `_bytes`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = [(&'static str, &'static str); 1];
/// `model="<served name>"`.
type ModelLabels = [(&'static str, String); 1];
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn inference_latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
}

/// One model's metrics, cheap to clone (shared counters).
#[derive(Debug, Clone)]
pub struct ModelMetrics {
    pub requests: Counter,
    pub errors: Counter,
    pub latency: Histogram,
}

edgefleet_daemon::declare_metrics! {
    /// Every metric the agent exports.
    pub struct Metrics("edgefleet_agent") {
        /// 1 while the MQTT session is up
        pub mqtt_connected: Gauge,
        /// MQTT connections established
        pub mqtt_connects: Counter,
        /// MQTT connections lost or refused
        pub mqtt_disconnects: Counter,
        /// Messages queued in the outbox
        pub outbox_depth: Gauge,
        /// Payload bytes queued in the outbox
        #[name = "outbox"]
        #[unit = Bytes]
        pub outbox_bytes: Gauge,
        /// Outbox messages dropped (oldest first) because it was full
        pub outbox_dropped: Counter,
        /// Outbox messages the hub acknowledged as committed (then deleted)
        pub outbox_acked: Counter,
        /// Outbox messages the broker acknowledged (PUBACK), resends included
        pub outbox_sent: Counter,
        /// Outbox messages sent on this connection and not yet acknowledged by the hub
        pub outbox_unacked: Gauge,
        /// Outbox messages sent again because the hub did not acknowledge them in time
        pub outbox_resent: Counter,
        /// Outbox messages deleted unacknowledged for being older than outbox.max_age_secs
        pub outbox_expired: Counter,
        /// Desired-state documents verified and stored
        pub desired_accepted: Counter,
        /// Redeliveries of the stored desired-state version
        pub desired_duplicates: Counter,
        /// Messages from the hub refused by verification, by reason
        #[name = "messages_rejected"]
        pub rejected: Family<Labels, Counter>,
        /// Commands from the hub run, by action (each id once)
        pub commands_run: Family<Labels, Counter>,
        /// Commands from the hub not run again: their id already ran
        pub commands_duplicate: Counter,
        /// Revision of the stored desired state
        pub desired_revision: Gauge,
        /// Duration of reconcile passes
        #[unit = Seconds]
        #[init = Histogram::new([ 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, ])]
        pub reconcile_duration: Histogram,
        /// Reconcile passes run
        pub reconcile_passes: Counter,
        /// Reconcile passes that left a workload failed
        pub reconcile_errors: Counter,
        /// Agent updates that could not be applied (no binary for this arch, download, a failed trial)
        pub update_errors: Counter,
        /// 1 when the Kubernetes API answered the last probe
        pub kube_reachable: Gauge,
        /// Server-side applies sent
        pub kube_applies: Counter,
        /// Owned objects deleted (pruned)
        pub kube_deletes: Counter,
        /// Objects restored because another client changed or took fields we set
        pub kube_drift: Counter,
        /// Events committed to the outbox from POST /v1/events
        pub events_accepted: Counter,
        /// Events refused by POST /v1/events, by reason (invalid, disk_full, store)
        pub events_refused: Family<Labels, Counter>,
        /// 1 while the state directory's filesystem is below the agent's reserve
        pub disk_pressure: Gauge,
        /// Times the agent released its spare space to keep draining on a full disk
        pub disk_spare_released: Counter,
        /// Status reports sent from memory because the disk could not take them
        pub status_unstored: Counter,
        /// SQLite operations that failed
        pub store_errors: Counter,
        /// Corrupt databases moved aside at startup
        pub store_recovered: Counter,
        /// Inference requests per model (HTTP and MQTT)
        pub inference_requests: Family<ModelLabels, Counter>,
        /// Inference requests per model that failed (invalid input or run error)
        pub inference_errors: Family<ModelLabels, Counter>,
        /// Inference latency per model, validation through outputs
        #[unit = Seconds]
        #[init = Family::new_with_constructor(inference_latency_histogram)]
        pub inference_latency: HistogramFamily<ModelLabels>,
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self::build();
        for reason in ["invalid", "disk_full", "store"] {
            let _ = m.events_refused.get_or_create(&[("reason", reason)]);
        }
        // Pre-register every rejection reason so dashboards see zeros.
        for reason in edgefleet_protocol::Rejection::REASONS {
            let _ = m.rejected.get_or_create(&[("reason", reason)]);
        }
        m
    }

    /// The metrics of the model served as `model`.
    pub fn model(&self, model: &str) -> ModelMetrics {
        let labels = [("model", model.to_owned())];
        ModelMetrics {
            requests: self.inference_requests.get_or_create(&labels).clone(),
            errors: self.inference_errors.get_or_create(&labels).clone(),
            latency: self.inference_latency.get_or_create(&labels).clone(),
        }
    }

    /// The OpenMetrics text `/metrics` serves.
    pub fn encode(&self) -> String {
        edgefleet_daemon::metrics::render(&self.registry)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected.get_or_create(&[("reason", reason)]).inc();
    }

    pub fn set_outbox(&self, depth: (u64, u64)) {
        self.outbox_depth.set(depth.0 as i64);
        self.outbox_bytes.set(depth.1 as i64);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_names_and_reasons() {
        let m = Metrics::new();
        m.reject("bad_signature");
        m.outbox_dropped.inc_by(3);
        let text = m.encode();
        assert!(
            text.contains("edgefleet_agent_messages_rejected_total{reason=\"bad_signature\"} 1")
        );
        assert!(
            text.contains("edgefleet_agent_messages_rejected_total{reason=\"stale_revision\"} 0")
        );
        assert!(text.contains("edgefleet_agent_outbox_dropped_total 3"));
        assert!(text.contains("edgefleet_agent_reconcile_duration_seconds_bucket"));
        assert!(text.contains("edgefleet_agent_outbox_bytes"));
    }

    #[test]
    fn per_model_inference_metrics() {
        let m = Metrics::new();
        let mm = m.model("anomaly");
        mm.requests.inc();
        mm.requests.inc();
        mm.errors.inc();
        mm.latency.observe(0.002);
        let text = m.encode();
        assert!(
            text.contains("edgefleet_agent_inference_requests_total{model=\"anomaly\"} 2"),
            "{text}"
        );
        assert!(text.contains("edgefleet_agent_inference_errors_total{model=\"anomaly\"} 1"));
        assert!(
            text.contains("edgefleet_agent_inference_latency_seconds_count{model=\"anomaly\"} 1")
        );
    }
}
