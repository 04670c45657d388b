//! A plain MQTT client standing in for a device: connects with its enrolled
//! credentials, collects what arrives on its topics, and publishes whatever
//! a test wants (signed correctly or not).

use std::time::Duration;

use edgefleet_protocol::{Channel, DeviceId, EnrollResponse, Topic};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// One received publish.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub retain: bool,
    pub payload: Vec<u8>,
}

#[derive(Debug)]
pub struct MqttDevice {
    pub id: DeviceId,
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Received>,
    task: tokio::task::JoinHandle<()>,
}

/// `(host, port)` of an `mqtt://host:port` URL.
pub fn host_port(url: &str) -> (String, u16) {
    let rest = url.trim_start_matches("mqtt://");
    let (h, p) = rest.rsplit_once(':').expect("host:port");
    (h.to_owned(), p.parse().expect("port"))
}

impl MqttDevice {
    /// Connects as the enrolled device and subscribes to its `desired` and
    /// `commands` topics.
    pub async fn connect(enrolled: &EnrollResponse) -> Self {
        let (host, port) = host_port(&enrolled.broker.url);
        Self::connect_as(
            enrolled.device_id.clone(),
            &host,
            port,
            Some((&enrolled.broker.username, &enrolled.broker.password)),
        )
        .await
    }

    pub async fn connect_as(
        id: DeviceId,
        host: &str,
        port: u16,
        creds: Option<(&str, &str)>,
    ) -> Self {
        let mut o = MqttOptions::new(id.as_str(), host, port);
        o.set_keep_alive(Duration::from_secs(5))
            .set_clean_session(true)
            .set_max_packet_size(2 << 20, 2 << 20);
        if let Some((u, p)) = creds {
            o.set_credentials(u, p);
        }
        let (client, mut eventloop) = AsyncClient::new(o, 1000);
        let (tx, rx) = mpsc::unbounded_channel();
        let sub = client.clone();
        let topics: Vec<String> = [Channel::Desired, Channel::Commands]
            .into_iter()
            .map(|c| Topic::new(id.clone(), c).to_string())
            .collect();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    // Clean sessions: subscribe again after every connect.
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for t in &topics {
                            let _ = sub.try_subscribe(t.clone(), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Received {
                            topic: p.topic.clone(),
                            retain: p.retain,
                            payload: p.payload.to_vec(),
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Self {
            id,
            client,
            rx,
            task,
        }
    }

    /// The next publish, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Received> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Publishes raw bytes on one of this (or any) device's channels.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }

    pub fn topic(&self, c: Channel) -> String {
        Topic::new(self.id.clone(), c).to_string()
    }
}

impl Drop for MqttDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}
