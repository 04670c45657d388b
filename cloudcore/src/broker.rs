//! The embedded MQTT broker (rumqttd, in-process, its own threads).
//!
//! Only enrolled devices (username = client id = device id, password from
//! enrollment) and the hub itself may connect. rumqttd keeps no retained
//! messages across restarts, so the publisher republishes stored desired
//! documents when the hub starts with the embedded broker.
//!
//! Memory: rumqttd keeps an in-memory commit log per subscription filter.
//! Upstream frees a segment only when the log grows past segment size ×
//! count, read or not, so every log sat at its full size forever (the hub's
//! RSS climbed through a soak). edgefleet's rumqttd (vendor/rumqttd,
//! EDGEFLEET.md) also frees the segments every reader has passed, once a
//! second: a log's memory is its unread backlog plus the active segment.
//! Size × count remains the most a backlog may hold. A segment rolls over
//! once it holds at least its size, so one message of any allowed size
//! always fits. Per-device filters (each device's `desired` and `commands`)
//! get small logs: desired state is retained separately and each document
//! replaces the last. The hub's wildcard filters get small segments but
//! many of them: room for a burst the hub has not read yet (an outbox flush
//! of 10,000 events) without holding a large active segment at rest.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use edgefleet_protocol::limits::MAX_PAYLOAD_BYTES;
use edgefleet_protocol::{Channel, DeviceId, Topic};
use rumqttd::{
    AclAction, AclHandler, AclRequest, Broker, Config, ConnectionSettings, RouterConfig,
    SegmentConfig, ServerSettings, TlsConfig,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::metrics::Metrics;
use crate::registry::Registry;

/// Commit-log segment size of per-device filters (rumqttd's minimum is
/// 1 KiB; a larger message still fits, alone).
const DEVICE_SEGMENT_BYTES: usize = 8 * 1024;

/// Username the hub uses on its own broker.
pub const HUB_USERNAME: &str = "cloudcore-hub";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the broker thread")]
    Thread(#[source] std::io::Error),
}

/// SHA-256 of a broker password. Passwords are 32 random bytes, so a fast
/// hash is enough; what is stored cannot be replayed as the password.
pub fn password_hash(password: &str) -> [u8; 32] {
    Sha256::digest(password.as_bytes()).into()
}

/// Who may connect: the hub's own secret and every enrolled device.
#[derive(Debug, Clone)]
pub struct Credentials {
    hub_password_hash: [u8; 32],
    devices: Registry,
    /// Set once the hub's own session has its subscriptions. Until then
    /// devices are turned away: the broker would acknowledge their queued
    /// events with no subscriber to route them to, and the agent deletes
    /// what the broker acknowledged.
    hub_subscribed: Arc<AtomicBool>,
}

impl Credentials {
    pub fn new(hub_password: &str, devices: Registry, hub_subscribed: Arc<AtomicBool>) -> Self {
        Self {
            hub_password_hash: password_hash(hub_password),
            devices,
            hub_subscribed,
        }
    }

    /// Whether a device connecting now would be turned away because the
    /// hub is not subscribed yet.
    fn device_too_early(&self, username: &str) -> bool {
        username != HUB_USERNAME && !self.hub_subscribed.load(Ordering::Acquire)
    }

    /// Constant-time check of one connection attempt.
    pub fn check(&self, client_id: &str, username: &str, password: &str) -> bool {
        let given = password_hash(password);
        if username == HUB_USERNAME {
            return client_id.starts_with(HUB_USERNAME)
                && bool::from(given.ct_eq(&self.hub_password_hash));
        }
        // Devices connect as themselves: client id = username = device id.
        if client_id != username {
            return false;
        }
        let Ok(id) = DeviceId::new(username) else {
            return false;
        };
        self.devices
            .get(&id)
            .is_some_and(|d| bool::from(given.ct_eq(&d.password_hash)))
    }
}

/// The broker ACL: the hub's own user may do anything. A device may
/// subscribe only to its own hub-to-device topics, with no wildcard, publish
/// only to its own device-to-hub topics, and retain only its presence.
pub fn acl_allows(username: &str, action: AclAction, topic: &str) -> bool {
    if username == HUB_USERNAME {
        return true;
    }
    let Ok(t) = Topic::parse(topic) else {
        return false;
    };
    t.device.as_str() == username
        && match action {
            AclAction::Subscribe => t.channel.device_subscribes(),
            AclAction::Publish => t.channel.device_publishes(),
            AclAction::Retain => t.channel.device_publishes() && t.channel.device_retains(),
        }
}

/// The broker ACL as rumqttd calls it: every denial is counted, and the
/// first of a connection's streak of denials is logged.
fn acl_handler(metrics: Arc<Metrics>) -> AclHandler {
    Arc::new(move |req: &AclRequest<'_>| {
        let allowed = acl_allows(req.username, req.action, req.topic);
        if !allowed {
            let action = match req.action {
                AclAction::Subscribe => "subscribe",
                AclAction::Publish => "publish",
                AclAction::Retain => "retain",
            };
            metrics
                .broker_acl_denials
                .get_or_create(&vec![("action", action.to_owned())])
                .inc();
            if req.denied_streak == 0 {
                tracing::warn!(
                    client_id = req.client_id,
                    action,
                    topic = req.topic,
                    "broker refused a device request: not its topic or channel \
                     (further denials in a row are counted, not logged)"
                );
            }
        }
        allowed
    })
}

/// Every device connection is a socket: raises the soft `RLIMIT_NOFILE` to
/// the hard limit (often 1,024 soft by default), and warns when even that
/// cannot hold `max_connections` plus the hub's own files.
fn raise_open_file_limit(max_connections: usize) {
    const HEADROOM: u64 = 256;
    let wanted = max_connections as u64 + HEADROOM;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) if soft < wanted => tracing::warn!(
            open_files = soft,
            max_connections,
            "the open-file limit (ulimit -n, hard) is below broker.max_connections; \
             connections beyond it will be refused"
        ),
        Ok(soft) => tracing::debug!(open_files = soft, "raised the open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// A TLS listener for devices: address, certificate chain and key (PEM
/// files, checked by the config).
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// Starts rumqttd on `listen` (and `tls.listen`, same devices, same
/// credentials) in its own threads. It runs until the process exits
/// (rumqttd has no shutdown); the hub stops using it on shutdown.
pub fn start(
    listen: SocketAddr,
    tls: Option<TlsListener>,
    max_connections: usize,
    creds: Credentials,
    metrics: Arc<Metrics>,
) -> Result<(), BrokerError> {
    raise_open_file_limit(max_connections);
    // Fail early and clearly if a port is taken: rumqttd would only log it
    // from its own thread.
    for addr in std::iter::once(listen).chain(tls.as_ref().map(|t| t.listen)) {
        std::net::TcpListener::bind(addr).map_err(|source| BrokerError::Bind { addr, source })?;
    }

    let mut connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: MAX_PAYLOAD_BYTES + 8 * 1024,
        max_inflight_count: 1_000,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
        acl: Some(acl_handler(metrics.clone())),
    };
    connections.set_auth_handler(
        move |client_id: String, username: String, password: String| {
            // Credentials first: a wrong password is refused and counted
            // whether or not the hub has subscribed yet.
            if !creds.check(&client_id, &username, &password) {
                metrics.broker_auth_failures.inc();
                tracing::warn!(
                    client_id,
                    username,
                    "broker refused a connection: bad credentials"
                );
                return std::future::ready(false);
            }
            if creds.device_too_early(&username) {
                tracing::info!(
                    client_id,
                    "device connection turned away until the hub has subscribed"
                );
                return std::future::ready(false);
            }
            std::future::ready(true)
        },
    );
    let mut servers = HashMap::new();
    if let Some(t) = tls {
        servers.insert(
            "2".to_owned(),
            ServerSettings {
                name: "edgefleet-v4-tls".into(),
                listen: t.listen,
                tls: Some(TlsConfig::Rustls {
                    capath: None,
                    certpath: t.cert.display().to_string(),
                    keypath: t.key.display().to_string(),
                }),
                next_connection_delay_ms: 0,
                connections: connections.clone(),
            },
        );
    }
    servers.insert(
        "1".to_owned(),
        ServerSettings {
            name: "edgefleet-v4".into(),
            listen,
            tls: None,
            next_connection_delay_ms: 0,
            connections,
        },
    );
    let router = RouterConfig {
        max_connections,
        max_outgoing_packet_count: 1_000,
        // Per-device filters: see the module doc.
        max_segment_size: DEVICE_SEGMENT_BYTES,
        max_segment_count: 2,
        // The hub's wildcard subscriptions see every device's traffic: give
        // them room for bursts (an outbox flush of 10,000 events) so the
        // log does not roll past messages the hub has not read yet.
        custom_segment: Some(
            crate::mqtt::UPSTREAM
                .iter()
                .map(|&c| {
                    let segments = if c == Channel::Heartbeat {
                        SegmentConfig {
                            max_segment_size: 256 * 1024,
                            max_segment_count: 16,
                        }
                    } else {
                        SegmentConfig {
                            max_segment_size: 1024 * 1024,
                            max_segment_count: 256,
                        }
                    };
                    (c.filter_all_devices(), segments)
                })
                .collect(),
        ),
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let config = Config {
        id: 0,
        router,
        v4: Some(servers),
        ..Default::default()
    };
    run_in_thread("rumqttd", config).map_err(BrokerError::Thread)
}

/// Runs a rumqttd broker on its own thread (`thread` names it in logs and
/// in `top -H`); an error it stops with is logged.
pub fn run_in_thread(thread: &str, config: Config) -> std::io::Result<()> {
    let mut broker = Broker::new(config);
    let name = thread.to_owned();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, broker = name, "MQTT broker stopped");
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_reads_and_writes_only_its_own_topics_in_their_direction() {
        use AclAction::{Publish, Retain, Subscribe};
        let t = |c: &str| format!("edgefleet/v1/devices/pi-1/{c}");
        for c in ["desired", "commands", "acks"] {
            assert!(acl_allows("pi-1", Subscribe, &t(c)), "{c}");
            assert!(!acl_allows("pi-1", Publish, &t(c)), "{c}");
            assert!(!acl_allows("pi-1", Retain, &t(c)), "{c}");
        }
        for c in ["status", "events", "heartbeat", "presence"] {
            assert!(acl_allows("pi-1", Publish, &t(c)), "{c}");
            assert!(!acl_allows("pi-1", Subscribe, &t(c)), "{c}");
        }
        assert!(acl_allows("pi-1", Retain, &t("presence")));
        assert!(!acl_allows("pi-1", Retain, &t("status")));
        // Someone else's, wildcards, other trees, malformed.
        for topic in [
            "edgefleet/v1/devices/pi-2/desired",
            "edgefleet/v1/devices/+/desired",
            "edgefleet/v1/devices/pi-1/#",
            "edgefleet/v1/devices/pi-1/+",
            "#",
            "$SYS/#",
            "edgefleet/v1/devices/pi-1/desired/x",
            "edgefleet/v1/devices/pi-1/nope",
        ] {
            for a in [Subscribe, Publish, Retain] {
                assert!(!acl_allows("pi-1", a, topic), "{a:?} {topic}");
            }
        }
        // The hub may do anything.
        for a in [Subscribe, Publish, Retain] {
            assert!(acl_allows(HUB_USERNAME, a, "#"));
        }
    }

    #[test]
    fn only_enrolled_devices_and_the_hub_get_in() {
        let devices = Registry::default();
        devices.insert(
            DeviceId::new("pi-1").unwrap(),
            crate::registry::DeviceEntry {
                key: edgefleet_protocol::Signer::generate().public().clone(),
                password_hash: password_hash("device-secret"),
                previous: None,
            },
        );
        let c = Credentials::new("hub-secret", devices, Arc::new(AtomicBool::new(true)));
        assert!(c.check("cloudcore-hub", HUB_USERNAME, "hub-secret"));
        assert!(!c.check("cloudcore-hub", HUB_USERNAME, "nope"));
        assert!(c.check("pi-1", "pi-1", "device-secret"));
        assert!(
            !c.check("pi-2", "pi-1", "device-secret"),
            "client id must be the device id"
        );
        assert!(!c.check("pi-1", "pi-1", "hub-secret"));
        assert!(!c.check("pi-9", "pi-9", "device-secret"));
    }

    /// Devices wait until the hub's session is subscribed (else the broker
    /// would acknowledge their outbox with nobody to route it to); the hub
    /// itself is never turned away.
    #[test]
    fn devices_wait_for_the_hub_subscriptions() {
        let subscribed = Arc::new(AtomicBool::new(false));
        let c = Credentials::new("hub-secret", Registry::default(), subscribed.clone());
        assert!(c.device_too_early("pi-1"));
        assert!(!c.device_too_early(HUB_USERNAME));
        subscribed.store(true, Ordering::Release);
        assert!(!c.device_too_early("pi-1"));
    }
}
