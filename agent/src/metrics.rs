//! The agent's Prometheus metrics, registered once and shared by every task.
//! Names follow `edgefleet_agent_…` with `_total`, `_seconds`, `_bytes`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

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

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub mqtt_connected: Gauge,
    pub mqtt_connects: Counter,
    pub mqtt_disconnects: Counter,
    pub outbox_depth: Gauge,
    pub outbox_bytes: Gauge,
    pub outbox_dropped: Counter,
    pub outbox_acked: Counter,
    pub outbox_sent: Counter,
    pub outbox_unacked: Gauge,
    pub outbox_resent: Counter,
    pub outbox_expired: Counter,
    pub desired_accepted: Counter,
    pub desired_duplicates: Counter,
    pub rejected: Family<Labels, Counter>,
    pub desired_revision: Gauge,
    pub reconcile_duration: Histogram,
    pub reconcile_passes: Counter,
    pub reconcile_errors: Counter,
    pub kube_reachable: Gauge,
    pub kube_applies: Counter,
    pub kube_deletes: Counter,
    pub kube_drift: Counter,
    pub events_accepted: Counter,
    pub events_refused: Family<Labels, Counter>,
    pub disk_pressure: Gauge,
    pub disk_spare_released: Counter,
    pub status_unstored: Counter,
    pub store_errors: Counter,
    pub store_recovered: Counter,
    pub inference_requests: Family<ModelLabels, Counter>,
    pub inference_errors: Family<ModelLabels, Counter>,
    pub inference_latency: HistogramFamily<ModelLabels>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("edgefleet_agent");
        let m = Self {
            mqtt_connected: Gauge::default(),
            mqtt_connects: Counter::default(),
            mqtt_disconnects: Counter::default(),
            outbox_depth: Gauge::default(),
            outbox_bytes: Gauge::default(),
            outbox_dropped: Counter::default(),
            outbox_acked: Counter::default(),
            outbox_sent: Counter::default(),
            outbox_unacked: Gauge::default(),
            outbox_resent: Counter::default(),
            outbox_expired: Counter::default(),
            desired_accepted: Counter::default(),
            desired_duplicates: Counter::default(),
            rejected: Family::default(),
            desired_revision: Gauge::default(),
            reconcile_duration: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            reconcile_passes: Counter::default(),
            reconcile_errors: Counter::default(),
            kube_reachable: Gauge::default(),
            kube_applies: Counter::default(),
            kube_deletes: Counter::default(),
            kube_drift: Counter::default(),
            events_accepted: Counter::default(),
            events_refused: Family::default(),
            disk_pressure: Gauge::default(),
            disk_spare_released: Counter::default(),
            status_unstored: Counter::default(),
            store_errors: Counter::default(),
            store_recovered: Counter::default(),
            inference_requests: Family::default(),
            inference_errors: Family::default(),
            inference_latency: Family::new_with_constructor(inference_latency_histogram),
            registry: Registry::default(),
        };
        for reason in ["invalid", "disk_full", "store"] {
            let _ = m.events_refused.get_or_create(&[("reason", reason)]);
        }
        // Pre-register every rejection reason so dashboards see zeros.
        for reason in edgefleet_protocol::Rejection::REASONS {
            let _ = m.rejected.get_or_create(&[("reason", reason)]);
        }
        r.register(
            "mqtt_connected",
            "1 while the MQTT session is up",
            m.mqtt_connected.clone(),
        );
        r.register(
            "mqtt_connects",
            "MQTT connections established",
            m.mqtt_connects.clone(),
        );
        r.register(
            "mqtt_disconnects",
            "MQTT connections lost or refused",
            m.mqtt_disconnects.clone(),
        );
        r.register(
            "outbox_depth",
            "Messages queued in the outbox",
            m.outbox_depth.clone(),
        );
        r.register_with_unit(
            "outbox",
            "Payload bytes queued in the outbox",
            Unit::Bytes,
            m.outbox_bytes.clone(),
        );
        r.register(
            "outbox_dropped",
            "Outbox messages dropped (oldest first) because it was full",
            m.outbox_dropped.clone(),
        );
        r.register(
            "outbox_acked",
            "Outbox messages the hub acknowledged as committed (then deleted)",
            m.outbox_acked.clone(),
        );
        r.register(
            "outbox_sent",
            "Outbox messages the broker acknowledged (PUBACK), resends included",
            m.outbox_sent.clone(),
        );
        r.register(
            "outbox_unacked",
            "Outbox messages sent on this connection and not yet acknowledged by the hub",
            m.outbox_unacked.clone(),
        );
        r.register(
            "outbox_resent",
            "Outbox messages sent again because the hub did not acknowledge them in time",
            m.outbox_resent.clone(),
        );
        r.register(
            "outbox_expired",
            "Outbox messages deleted unacknowledged for being older than outbox.max_age_secs",
            m.outbox_expired.clone(),
        );
        r.register(
            "desired_accepted",
            "Desired-state documents verified and stored",
            m.desired_accepted.clone(),
        );
        r.register(
            "desired_duplicates",
            "Redeliveries of the stored desired-state version",
            m.desired_duplicates.clone(),
        );
        r.register(
            "messages_rejected",
            "Messages from the hub refused by verification, by reason",
            m.rejected.clone(),
        );
        r.register(
            "desired_revision",
            "Revision of the stored desired state",
            m.desired_revision.clone(),
        );
        r.register_with_unit(
            "reconcile_duration",
            "Duration of reconcile passes",
            Unit::Seconds,
            m.reconcile_duration.clone(),
        );
        r.register(
            "reconcile_passes",
            "Reconcile passes run",
            m.reconcile_passes.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconcile passes that left a workload failed",
            m.reconcile_errors.clone(),
        );
        r.register(
            "kube_reachable",
            "1 when the Kubernetes API answered the last probe",
            m.kube_reachable.clone(),
        );
        r.register(
            "kube_applies",
            "Server-side applies sent",
            m.kube_applies.clone(),
        );
        r.register(
            "kube_deletes",
            "Owned objects deleted (pruned)",
            m.kube_deletes.clone(),
        );
        r.register(
            "kube_drift",
            "Objects restored because another client changed or took fields we set",
            m.kube_drift.clone(),
        );
        r.register(
            "events_accepted",
            "Events committed to the outbox from POST /v1/events",
            m.events_accepted.clone(),
        );
        r.register(
            "events_refused",
            "Events refused by POST /v1/events, by reason (invalid, disk_full, store)",
            m.events_refused.clone(),
        );
        r.register(
            "disk_pressure",
            "1 while the state directory's filesystem is below the agent's reserve",
            m.disk_pressure.clone(),
        );
        r.register(
            "disk_spare_released",
            "Times the agent released its spare space to keep draining on a full disk",
            m.disk_spare_released.clone(),
        );
        r.register(
            "status_unstored",
            "Status reports sent from memory because the disk could not take them",
            m.status_unstored.clone(),
        );
        r.register(
            "store_errors",
            "SQLite operations that failed",
            m.store_errors.clone(),
        );
        r.register(
            "store_recovered",
            "Corrupt databases moved aside at startup",
            m.store_recovered.clone(),
        );
        r.register(
            "inference_requests",
            "Inference requests per model (HTTP and MQTT)",
            m.inference_requests.clone(),
        );
        r.register(
            "inference_errors",
            "Inference requests per model that failed (invalid input or run error)",
            m.inference_errors.clone(),
        );
        r.register_with_unit(
            "inference_latency",
            "Inference latency per model, validation through outputs",
            Unit::Seconds,
            m.inference_latency.clone(),
        );
        Self { registry: r, ..m }
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
