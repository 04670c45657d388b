//! Hub metrics in Prometheus text format (`/metrics`), all prefixed
//! `edgefleet_hub_`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

pub type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub devices: Gauge,
    pub devices_online: Gauge,
    pub desired_published: Counter,
    pub desired_revisions: Counter,
    pub received: Family<Labels, Counter>,
    pub rejected: Family<Labels, Counter>,
    pub events_stored: Counter,
    pub events_duplicate: Counter,
    pub enrollments: Family<Labels, Counter>,
    pub broker_auth_failures: Counter,
    pub api_requests: Family<Labels, Histogram, fn() -> Histogram>,
    pub publish_pass: Histogram,
    pub ingest_batch: Histogram,
    pub ingest_backlog: Gauge,
    pub acks_published: Counter,
    pub desired_withheld: Counter,
    pub desired_dropped: Counter,
    pub device_conditions: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("edgefleet_hub");
        let m = Self {
            registry: Registry::default(),
            devices: Gauge::default(),
            devices_online: Gauge::default(),
            desired_published: Counter::default(),
            desired_revisions: Counter::default(),
            received: Family::default(),
            rejected: Family::default(),
            events_stored: Counter::default(),
            events_duplicate: Counter::default(),
            enrollments: Family::default(),
            broker_auth_failures: Counter::default(),
            api_requests: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            publish_pass: latency_histogram(),
            ingest_batch: latency_histogram(),
            ingest_backlog: Gauge::default(),
            acks_published: Counter::default(),
            desired_withheld: Counter::default(),
            desired_dropped: Counter::default(),
            device_conditions: Family::default(),
        };
        r.register("devices", "Enrolled devices", m.devices.clone());
        r.register(
            "devices_online",
            "Devices whose presence is online",
            m.devices_online.clone(),
        );
        r.register(
            "desired_publishes",
            "Signed desired-state documents handed to the broker",
            m.desired_published.clone(),
        );
        r.register(
            "desired_revisions",
            "Desired-state revisions issued (documents that changed)",
            m.desired_revisions.clone(),
        );
        r.register(
            "messages_received",
            "Device messages received, by channel",
            m.received.clone(),
        );
        r.register(
            "messages_rejected",
            "Device messages rejected, by channel and reason",
            m.rejected.clone(),
        );
        r.register(
            "events_stored",
            "Device events stored",
            m.events_stored.clone(),
        );
        r.register(
            "events_duplicate",
            "Device events dropped as redeliveries of a stored id",
            m.events_duplicate.clone(),
        );
        r.register(
            "enrollments",
            "Enrollment attempts, by result",
            m.enrollments.clone(),
        );
        r.register(
            "broker_auth_failures",
            "Embedded broker connections refused for bad credentials",
            m.broker_auth_failures.clone(),
        );
        r.register_with_unit(
            "api_request_duration",
            "REST API request latency, by method, route and status",
            Unit::Seconds,
            m.api_requests.clone(),
        );
        r.register_with_unit(
            "publish_pass_duration",
            "Time to recompute, store and publish desired state after a change",
            Unit::Seconds,
            m.publish_pass.clone(),
        );
        r.register_with_unit(
            "ingest_batch_duration",
            "Time to commit one batch of device messages",
            Unit::Seconds,
            m.ingest_batch.clone(),
        );
        r.register(
            "ingest_backlog",
            "Device messages received from the broker and not yet stored (nor acknowledged)",
            m.ingest_backlog.clone(),
        );
        r.register(
            "acks_published",
            "Signed acknowledgements of committed events and status sent to devices",
            m.acks_published.clone(),
        );
        r.register(
            "desired_withheld",
            "Desired-state documents not issued because a device would refuse them (per pass and device)",
            m.desired_withheld.clone(),
        );
        r.register(
            "desired_dropped",
            "Publishes the hub's MQTT session dropped from its queue as unsendable (too large)",
            m.desired_dropped.clone(),
        );
        r.register(
            "device_conditions",
            "Devices with a standing condition, by type (DesiredTooLarge, DesiredRejected, DiskPressure)",
            m.device_conditions.clone(),
        );
        Self {
            registry: root,
            ..m
        }
    }

    /// Counts a rejected device message.
    pub fn reject(&self, channel: &str, reason: &str) {
        self.rejected
            .get_or_create(&vec![
                ("channel", channel.to_owned()),
                ("reason", reason.to_owned()),
            ])
            .inc();
    }

    pub fn received(&self, channel: &str) {
        self.received
            .get_or_create(&vec![("channel", channel.to_owned())])
            .inc();
    }

    /// The OpenMetrics text `/metrics` serves.
    pub fn render(&self) -> String {
        edgefleet_daemon::metrics::render(&self.registry)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_names() {
        let m = Metrics::new();
        m.reject("status", "bad_signature");
        m.desired_published.inc();
        m.api_requests
            .get_or_create(&vec![
                ("method", "GET".into()),
                ("route", "/livez".into()),
                ("status", "200".into()),
            ])
            .observe(0.01);
        let text = m.render();
        assert!(
            text.contains("edgefleet_hub_messages_rejected_total{channel=\"status\",reason=\"bad_signature\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("edgefleet_hub_desired_publishes_total 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE edgefleet_hub_api_request_duration_seconds histogram"),
            "{text}"
        );
    }
}
