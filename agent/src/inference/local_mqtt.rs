//! An inference workload's device-local MQTT binding: subscribe to
//! `input.mqtt.topic` on the local broker (config `local_broker.url`), run
//! each message (a KServe v2 request body) through the model, and emit the
//! result when `output.when` holds: upstream (handed to [`Upstream`], which
//! the daemon drains into the outbox as `inference.result` events, so offline
//! results are never lost) and/or on `output.topic` of the local broker.
//!
//! Messages are handled in order, one at a time per workload; a malformed
//! message is counted as a model error and logged, never fatal.

use std::sync::Arc;
use std::time::Duration;

use edgefleet_daemon::mqtt::{next_event, pause};
use edgefleet_protocol::workload::InferenceOutput;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

use super::{InferRequest, Model, sink};

/// Results bound for the hub: (workload, event payload).
pub type Upstream = tokio::sync::mpsc::Sender<(String, serde_json::Value)>;

/// A running binding; dropped or [`Binding::stop`]ped = unsubscribed.
#[derive(Debug)]
pub struct Binding {
    cancel: CancellationToken,
}

impl Binding {
    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Where the local broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalBroker {
    pub host: String,
    pub port: u16,
}

/// Starts the binding of `workload` on the current tokio runtime.
pub fn start(
    broker: &LocalBroker,
    workload: &str,
    model_name: &str,
    model: Arc<Model>,
    topic: &str,
    output: InferenceOutput,
    upstream: Option<Upstream>,
) -> Binding {
    let cancel = CancellationToken::new();
    let client_id = format!("edge-agent-{}", workload.replace(['.', '/'], "-"));
    let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(4 * 1024 * 1024, 4 * 1024 * 1024);
    let (client, mut events) = AsyncClient::new(opts, 64);
    let ctx = Ctx {
        workload: workload.to_owned(),
        model_name: model_name.to_owned(),
        model,
        output,
        upstream,
        client: client.clone(),
    };
    let topic = topic.to_owned();
    let stop = cancel.clone();
    tokio::spawn(async move {
        loop {
            let Some(ev) = next_event(&mut events, &stop).await else {
                break;
            };
            match ev {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    if let Err(e) = client.try_subscribe(topic.as_str(), QoS::AtLeastOnce) {
                        tracing::warn!(workload = %ctx.workload, error = %e, "cannot subscribe");
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => ctx.handle(&p.payload).await,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(workload = %ctx.workload, error = %e, "local broker unreachable; retrying");
                    if !pause(Duration::from_millis(500), &stop).await {
                        break;
                    }
                }
            }
        }
        let _ = client.try_disconnect();
    });
    Binding { cancel }
}

struct Ctx {
    workload: String,
    model_name: String,
    model: Arc<Model>,
    output: InferenceOutput,
    upstream: Option<Upstream>,
    client: AsyncClient,
}

impl Ctx {
    async fn handle(&self, payload: &[u8]) {
        let req: InferRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                self.model.record_error();
                tracing::warn!(workload = %self.workload, error = %e, "input is not a KServe v2 request body");
                return;
            }
        };
        let resp = match self.model.infer(req).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(workload = %self.workload, error = %crate::error_chain(&e), "inference failed");
                return;
            }
        };
        let Some(result) = sink::result_payload(
            &self.workload,
            &self.model_name,
            resp.id.as_deref(),
            &resp.outputs,
            self.output.when.as_ref(),
        ) else {
            return;
        };
        if let Some(topic) = &self.output.topic {
            let bytes = serde_json::to_vec(&result).unwrap_or_default();
            if let Err(e) = self
                .client
                .try_publish(topic.as_str(), QoS::AtLeastOnce, false, bytes)
            {
                tracing::warn!(workload = %self.workload, error = %e, "cannot publish result locally");
            }
        }
        if self.output.upstream
            && let Some(up) = &self.upstream
            && up.send((self.workload.clone(), result)).await.is_err()
        {
            tracing::warn!(workload = %self.workload, "outbox writer gone; result dropped");
        }
    }
}
