//! The device's side of the data: a device-local MQTT broker (an embedded
//! rumqttd standing in for mosquitto on the Pi) and a simulated vibration
//! sensor publishing the reference readings of `models/vibration/samples.json`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};
use serde::Deserialize;
use serde_json::Value;

use super::SENSOR_TOPIC;

/// KServe v2 request bodies with their onnxruntime scores.
const SAMPLES: &str = include_str!("../../../../../models/vibration/samples.json");

/// One reading in `ANOMALY_EVERY` is anomalous.
const ANOMALY_EVERY: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("cannot find a free port on 127.0.0.1 for the sensor broker")]
    Port(#[source] std::io::Error),
    #[error("cannot start the sensor broker thread")]
    Thread(#[source] std::io::Error),
}

/// Starts a broker without authentication on a free loopback port. Like
/// the hub's, it runs in its own threads until the process exits. Its
/// clients (the agent, the sensor) retry until it listens.
pub fn start_broker() -> Result<SocketAddr, SensorError> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(SensorError::Port)?;
    let server = ServerSettings {
        name: "sensors".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 256 * 1024,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
            acl: None,
        },
    };
    let router = RouterConfig {
        max_connections: 64,
        max_outgoing_packet_count: 200,
        max_segment_size: 1024 * 1024,
        max_segment_count: 4,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let config = Config {
        id: 0,
        router,
        v4: Some(HashMap::from([("sensors".to_owned(), server)])),
        ..Default::default()
    };
    cloudcore::broker::run_in_thread("sensor-broker", config).map_err(SensorError::Thread)?;
    Ok(addr)
}

#[derive(Debug, Deserialize)]
struct Samples {
    readings: Vec<Reading>,
}

#[derive(Debug, Deserialize)]
struct Reading {
    anomaly: bool,
    payload: Value,
}

/// The readings split into normal and anomalous ones.
fn samples() -> (Vec<Value>, Vec<Value>) {
    let parsed: Samples = serde_json::from_str(SAMPLES).unwrap_or(Samples {
        readings: Vec::new(),
    });
    let (anomalous, normal): (Vec<Reading>, Vec<Reading>) =
        parsed.readings.into_iter().partition(|r| r.anomaly);
    let payloads = |v: Vec<Reading>| v.into_iter().map(|r| r.payload).collect::<Vec<_>>();
    (payloads(normal), payloads(anomalous))
}

/// Reading `n`: mostly normal, one in [`ANOMALY_EVERY`] anomalous, each
/// with its own request id so the events at the hub can be told apart.
fn reading(n: u64, normal: &[Value], anomalous: &[Value]) -> Option<Value> {
    let pool = if n % ANOMALY_EVERY == 3 {
        anomalous
    } else {
        normal
    };
    let mut body = pool
        .get((n / ANOMALY_EVERY) as usize % pool.len().max(1))?
        .clone();
    body["id"] = Value::String(format!("reading-{n}"));
    Some(body)
}

/// Publishes readings on [`SENSOR_TOPIC`] forever (the demo aborts it).
pub async fn feed(broker: SocketAddr, per_sec: u32) {
    let (normal, anomalous) = samples();
    let mut opts = MqttOptions::new(
        "demo-vibration-sensor",
        broker.ip().to_string(),
        broker.port(),
    );
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(256 * 1024, 256 * 1024);
    let (client, mut events) = AsyncClient::new(opts, 64);
    let drive = async move {
        loop {
            if let Err(e) = events.poll().await {
                tracing::warn!(error = %e, "sensor connection to the local broker");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let publish = async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / per_sec.max(1));
        for n in 0u64.. {
            tick.tick().await;
            let Some(body) = reading(n, &normal, &anomalous) else {
                continue;
            };
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            // Readings are a stream: one lost while (re)connecting is fine.
            let _ = client.try_publish(SENSOR_TOPIC, QoS::AtMostOnce, false, bytes);
        }
    };
    tokio::join!(drive, publish);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_have_both_kinds_and_one_in_ten_is_anomalous() {
        let (normal, anomalous) = samples();
        assert!(!normal.is_empty() && !anomalous.is_empty());
        let bodies: Vec<Value> = (0..20)
            .filter_map(|n| reading(n, &normal, &anomalous))
            .collect();
        assert_eq!(bodies.len(), 20);
        let anomalies = bodies
            .iter()
            .filter(|b| anomalous.iter().any(|a| a["inputs"] == b["inputs"]))
            .count();
        assert_eq!(anomalies, 2);
        assert_eq!(bodies[7]["id"], "reading-7");
    }
}
