//! Hub metrics in Prometheus text format (`/metrics`), all prefixed
//! `edgefleet_hub_`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

edgefleet_daemon::declare_metrics! {
    /// Every metric the hub exports.
    pub struct Metrics("edgefleet_hub") {
        /// Enrolled devices
        pub devices: Gauge,
        /// Devices whose presence is online
        pub devices_online: Gauge,
        /// Signed desired-state documents handed to the broker
        #[name = "desired_publishes"]
        pub desired_published: Counter,
        /// Desired-state revisions issued (documents that changed)
        pub desired_revisions: Counter,
        /// Device messages received, by channel
        #[name = "messages_received"]
        pub received: Family<Labels, Counter>,
        /// Device messages dropped unverified because the device was over
        /// its ingest rate, by channel
        #[name = "ingest_throttled"]
        pub throttled: Family<Labels, Counter>,
        /// Stored events removed by retention, by reason (count, age)
        #[name = "events_pruned"]
        pub pruned: Family<Labels, Counter>,
        /// Device messages rejected, by channel and reason
        #[name = "messages_rejected"]
        pub rejected: Family<Labels, Counter>,
        /// Device events stored
        pub events_stored: Counter,
        /// Device events dropped as redeliveries of a stored id
        pub events_duplicate: Counter,
        /// Enrollment attempts, by result
        pub enrollments: Family<Labels, Counter>,
        /// Embedded broker connections refused for bad credentials
        pub broker_auth_failures: Counter,
        /// Device requests the embedded broker refused by its topic ACL, by
        /// action (subscribe, publish, retain)
        pub broker_acl_denials: Family<Labels, Counter>,
        /// Device credentials the hub could not create in or delete from an
        /// external broker (`broker.provision`)
        pub broker_provision_failures: Counter,
        /// REST API connections whose TLS handshake failed or timed out
        pub api_tls_failures: Counter,
        /// REST API request latency, by method, route and status
        #[name = "api_request_duration"]
        #[unit = Seconds]
        #[init = Family::new_with_constructor(latency_histogram as fn() -> Histogram)]
        pub api_requests: Family<Labels, Histogram, fn() -> Histogram>,
        /// Time to recompute, store and publish desired state after a change
        #[name = "publish_pass_duration"]
        #[unit = Seconds]
        #[init = latency_histogram()]
        pub publish_pass: Histogram,
        /// Time to commit one batch of device messages
        #[name = "ingest_batch_duration"]
        #[unit = Seconds]
        #[init = latency_histogram()]
        pub ingest_batch: Histogram,
        /// Device messages received from the broker and not yet stored (nor acknowledged)
        pub ingest_backlog: Gauge,
        /// Commands created, by action
        pub commands_created: Family<Labels, Counter>,
        /// Signed commands handed to the broker (resends on reconnect included)
        pub commands_sent: Counter,
        /// Commands that reached a final state, by state (done, failed, expired)
        pub commands_finished: Family<Labels, Counter>,
        /// Command results from devices not applied, by reason (malformed,
        /// unknown: no open command of that id for that device)
        pub command_results_ignored: Family<Labels, Counter>,
        /// Log chunks from devices, by outcome (delivered to the caller, or
        /// dropped: no_caller, wrong_device, overflow, malformed)
        pub log_chunks: Family<Labels, Counter>,
        /// Logs requests, by result (streamed, offline, throttled, failed)
        pub log_requests: Family<Labels, Counter>,
        /// Signed acknowledgements of committed events and status sent to devices
        pub acks_published: Counter,
        /// Desired-state documents not issued because a device would refuse them (per pass and device)
        pub desired_withheld: Counter,
        /// Publishes the hub's MQTT session dropped from its queue as unsendable (too large)
        pub desired_dropped: Counter,
        /// Devices with a standing condition, by type (DesiredTooLarge, DesiredRejected, DiskPressure)
        pub device_conditions: Family<Labels, Gauge>,
        /// Rollouts by state (Progressing, Paused, Complete, RolledBack, Aborted)
        pub rollouts: Family<Labels, Gauge>,
        /// Rollout state changes, by event (wave_started, wave_healthy, complete, rolled_back, paused, resumed, aborted)
        pub rollout_transitions: Family<Labels, Counter>,
        /// Git source syncs, by outcome (applied, unchanged, fetch_failed,
        /// invalid, unverified, refused)
        pub source_syncs: Family<Labels, Counter>,
        /// Time to fetch a Git source's ref
        #[name = "source_fetch_duration"]
        #[unit = Seconds]
        #[init = latency_histogram()]
        pub source_fetch: Histogram,
        /// Git source webhook calls, by result (accepted, bad_signature,
        /// no_secret, unknown_source)
        pub source_webhooks: Family<Labels, Counter>,
        /// Dashboard sign-ins, by outcome (ok, wrong_token, cross_origin)
        pub ui_sign_ins: Family<Labels, Counter>,
        /// Dashboard requests refused for a missing or wrong CSRF token
        pub ui_csrf_refused: Counter,
        /// Dashboard sessions signed in now
        pub ui_sessions: Gauge,
        /// Dashboard live-update streams open now
        pub ui_streams: Gauge,
        /// Scheduled backups, by result (ok, failed)
        pub backups: Family<Labels, Counter>,
        /// When the last scheduled backup was written (Unix seconds; 0: none since start)
        #[name = "backup_last_success_timestamp_seconds"]
        pub backup_last_success: Gauge,
        /// Seconds since the last scheduled backup was written (-1: none since start)
        #[name = "backup_age_seconds"]
        pub backup_age: Gauge,
        /// Hub signing-key rotations (`cloudcore keys rotate`)
        #[name = "key_rotations"]
        pub hub_key_rotations: Counter,
        /// Old hub keys no longer announced, by reason (all_acknowledged, grace_period, chain_full)
        #[name = "keys_retired"]
        pub hub_keys_retired: Family<Labels, Counter>,
        /// Devices whose last status names a hub key other than the current one (or none)
        #[name = "key_devices_behind"]
        pub hub_key_devices_behind: Gauge,
        /// Device key rotations requested, by result (rotated, repeated, refused)
        pub device_key_rotations: Family<Labels, Counter>,
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::build()
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

    pub fn device_key_rotation(&self, result: &str) {
        self.device_key_rotations
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
    }

    pub fn throttled(&self, channel: &str) {
        self.throttled
            .get_or_create(&vec![("channel", channel.to_owned())])
            .inc();
    }

    pub fn events_pruned(&self, reason: &str, n: u64) {
        self.pruned
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc_by(n);
    }

    pub fn received(&self, channel: &str) {
        self.received
            .get_or_create(&vec![("channel", channel.to_owned())])
            .inc();
    }

    pub fn backup_succeeded(&self, at_ms: u64) {
        self.backups
            .get_or_create(&vec![("result", "ok".to_owned())])
            .inc();
        self.backup_last_success
            .set(i64::try_from(at_ms / 1000).unwrap_or(i64::MAX));
    }

    pub fn backup_failed(&self) {
        self.backups
            .get_or_create(&vec![("result", "failed".to_owned())])
            .inc();
    }

    /// The OpenMetrics text `/metrics` serves.
    pub fn render(&self) -> String {
        // The age is computed at scrape time, so it grows between backups.
        let last = self.backup_last_success.get();
        let now = i64::try_from(edgefleet_protocol::now_ms() / 1000).unwrap_or(i64::MAX);
        self.backup_age.set(if last > 0 {
            now.saturating_sub(last)
        } else {
            -1
        });
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
