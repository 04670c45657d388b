//! Device credentials and topic ACLs in an external mosquitto, through its
//! dynamic-security plugin (`broker.provision = mosquitto-dynsec`).
//!
//! The hub is a dynamic-security admin on the broker (its `broker.username`)
//! and sends commands on `$CONTROL/dynamic-security/v1` over a session of
//! its own. At start it denies by default what a client may publish or
//! subscribe to, and gives itself the role `edgefleet-hub` (everything under
//! `edgefleet/`). At enrollment it creates the device's client (username =
//! client id = device id, the password it hands the device) with the role
//! `edgefleet-device-{id}`: subscribe to its own hub-to-device topics, publish
//! to its own device-to-hub topics, nothing else. Deleting a device deletes
//! both. mosquitto 2.0's plugin has no `%u` substitution in ACLs, hence a role
//! per device.
//!
//! What mosquitto cannot refuse that the embedded broker does: a retained
//! publish on a device's *own* device-to-hub topics (ACLs do not look at the
//! retain flag). Nobody but that device and the hub can read those topics.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edgefleet_protocol::{Channel, DeviceId, Topic};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Mutex;
use tokio::sync::{oneshot, watch};

use crate::broker::HUB_USERNAME;

const CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";
/// How long one batch of commands may take, connection included.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The hub's own role.
pub const HUB_ROLE: &str = "edgefleet-hub";

/// The role holding one device's ACLs.
pub fn device_role(id: &DeviceId) -> String {
    format!("edgefleet-device-{id}")
}

#[derive(Debug, thiserror::Error)]
pub enum DynsecError {
    #[error("the broker's dynamic-security plugin did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot send to the broker: {0}")]
    Send(#[from] rumqttc::ClientError),
    #[error("the dynamic-security plugin refused {command}: {error}")]
    Refused { command: String, error: String },
}

#[derive(Debug, Deserialize)]
struct Responses {
    responses: Vec<Response>,
}

#[derive(Debug, Deserialize)]
struct Response {
    command: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, rename = "correlationData")]
    correlation: Option<String>,
    #[serde(default)]
    data: Value,
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Vec<Response>>>>>;

/// A session to mosquitto's dynamic-security plugin. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Dynsec {
    client: AsyncClient,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    /// True while the session is subscribed to the plugin's responses.
    ready: watch::Receiver<bool>,
    /// True once [`Dynsec::set_up_hub`] succeeded. Device changes wait for
    /// it: setting up may disconnect this session and lose a command sent
    /// meanwhile.
    hub_set_up: Arc<watch::Sender<bool>>,
}

/// One command and the errors it may answer without failing the batch
/// (e.g. "not found" for a delete of something already gone).
struct Cmd {
    body: Value,
    tolerate: &'static [&'static str],
}

impl Cmd {
    fn new(body: Value) -> Self {
        Self {
            body,
            tolerate: &[],
        }
    }

    fn tolerating(body: Value, tolerate: &'static [&'static str]) -> Self {
        Self { body, tolerate }
    }
}

impl Dynsec {
    /// Starts the session with the hub's broker options (its own client id,
    /// a clean session, automatic acks) on the current runtime.
    pub fn start(mut opts: MqttOptions) -> Self {
        opts.set_client_id(format!("{HUB_USERNAME}-dynsec"))
            .set_clean_session(true)
            .set_manual_acks(false)
            .set_request_channel_capacity(64);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let pending: Pending = Arc::default();
        let (ready_tx, ready) = watch::channel(false);
        let (sub, waiting) = (client.clone(), pending.clone());
        tokio::spawn(async move {
            let mut failed = false;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        failed = false;
                        let _ = sub.try_subscribe(RESPONSE_TOPIC, QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        let ok = ack
                            .return_codes
                            .iter()
                            .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)));
                        if !ok {
                            tracing::error!(
                                "the broker refused the hub a subscription to {RESPONSE_TOPIC}: \
                                 is broker.username a dynamic-security admin?"
                            );
                        }
                        let _ = ready_tx.send(ok);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == RESPONSE_TOPIC => {
                        dispatch(&waiting, &p.payload);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = ready_tx.send(false);
                        if !failed {
                            tracing::warn!(error = %e, "dynamic-security session to the broker lost; retrying");
                            failed = true;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Self {
            client,
            pending,
            next_id: Arc::default(),
            ready,
            hub_set_up: Arc::new(watch::channel(false).0),
        }
    }

    /// Sends one batch, checks every answer and returns them in order.
    async fn call(&self, cmds: Vec<Cmd>) -> Result<Vec<Response>, DynsecError> {
        tokio::time::timeout(CALL_TIMEOUT, self.call_inner(cmds))
            .await
            .map_err(|_| DynsecError::Timeout(CALL_TIMEOUT))?
    }

    async fn call_inner(&self, cmds: Vec<Cmd>) -> Result<Vec<Response>, DynsecError> {
        let mut ready = self.ready.clone();
        // Only an error if the sender is gone, and then the timeout says it.
        let _ = ready.wait_for(|r| *r).await;
        let id = format!("c{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let commands: Vec<Value> = cmds
            .iter()
            .map(|c| {
                let mut b = c.body.clone();
                b["correlationData"] = Value::String(id.clone());
                b
            })
            .collect();
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.clone(), tx);
        // Forgotten however this call ends: answered, failed, or dropped by
        // `call`'s timeout (an answer that never comes must not stay here).
        let _forget = Forget(&self.pending, &id);
        let sent = self
            .client
            .publish(
                CONTROL_TOPIC,
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&json!({ "commands": commands }))
                    .unwrap_or_else(|_| unreachable!("JSON values serialize")),
            )
            .await;
        sent?;
        let Ok(responses) = rx.await else {
            return Err(DynsecError::Timeout(CALL_TIMEOUT));
        };
        for r in &responses {
            let Some(error) = &r.error else { continue };
            let tolerated = cmds
                .iter()
                .filter(|c| c.body["command"] == r.command.as_str())
                .any(|c| c.tolerate.iter().any(|t| error.contains(t)));
            if !tolerated {
                return Err(DynsecError::Refused {
                    command: r.command.clone(),
                    error: error.clone(),
                });
            }
        }
        Ok(responses)
    }

    /// Whether the client `username` holds `role`.
    async fn has_role(&self, username: &str, role: &str) -> Result<bool, DynsecError> {
        let r = self
            .call(vec![Cmd::new(
                json!({"command": "getClient", "username": username}),
            )])
            .await?;
        Ok(r.iter().any(|r| {
            r.data["client"]["roles"]
                .as_array()
                .is_some_and(|roles| roles.iter().any(|x| x["rolename"] == role))
        }))
    }

    /// Denies by default what clients publish and subscribe to, and gives
    /// the hub's user (`hub_username`) full access under `edgefleet/`.
    pub async fn set_up_hub(&self, hub_username: &str) -> Result<(), DynsecError> {
        let acl = |acltype: &str| {
            Cmd::tolerating(
                json!({"command": "addRoleACL", "rolename": HUB_ROLE, "acltype": acltype,
                       "topic": "edgefleet/#", "priority": 0, "allow": true}),
                &["already exists"],
            )
        };
        self.call(vec![
            Cmd::new(json!({"command": "setDefaultACLAccess", "acls": [
                {"acltype": "publishClientSend", "allow": false},
                {"acltype": "subscribe", "allow": false},
            ]})),
            Cmd::tolerating(
                json!({"command": "createRole", "rolename": HUB_ROLE,
                       "textname": "edgefleet hub: everything under edgefleet/"}),
                &["already exists"],
            ),
            acl("publishClientSend"),
            acl("publishClientReceive"),
            acl("subscribePattern"),
        ])
        .await?;
        if self.has_role(hub_username, HUB_ROLE).await? {
            self.hub_set_up.send_replace(true);
            return Ok(());
        }
        // The plugin disconnects every session of a client whose roles
        // change, this one included, usually before it answers: send, then
        // look again once reconnected.
        tracing::info!(
            username = hub_username,
            "giving the hub's broker user the role {HUB_ROLE} (its sessions reconnect once)"
        );
        let id = format!("c{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let body = json!({"commands": [{"command": "addClientRole", "username": hub_username,
            "rolename": HUB_ROLE, "priority": 0, "correlationData": id}]});
        self.client
            .publish(
                CONTROL_TOPIC,
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&body).unwrap_or_else(|_| unreachable!("JSON values serialize")),
            )
            .await?;
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Ok(true) = self.has_role(hub_username, HUB_ROLE).await {
                self.hub_set_up.send_replace(true);
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(DynsecError::Timeout(CALL_TIMEOUT));
            }
        }
    }

    /// Waits (bounded) for the hub's own setup, then runs `cmds`.
    async fn device_call(&self, cmds: Vec<Cmd>) -> Result<(), DynsecError> {
        let mut set_up = self.hub_set_up.subscribe();
        tokio::time::timeout(CALL_TIMEOUT, set_up.wait_for(|s| *s))
            .await
            .map_err(|_| DynsecError::Timeout(CALL_TIMEOUT))?
            .unwrap_or_else(|_| unreachable!("the sender lives in self"));
        self.call(cmds).await.map(drop)
    }

    /// Creates (or re-creates, with a new password) a device's client and
    /// its role. Re-creating disconnects a session on the old password.
    pub async fn provision_device(&self, id: &DeviceId, password: &str) -> Result<(), DynsecError> {
        let role = device_role(id);
        let acls: Vec<Value> = Channel::ALL
            .into_iter()
            .filter_map(|c| {
                let topic = Topic::new(id.clone(), c).to_string();
                let acltype = if c.device_subscribes() {
                    "subscribeLiteral"
                } else if c.device_publishes() {
                    "publishClientSend"
                } else {
                    return None;
                };
                Some(json!({"acltype": acltype, "topic": topic, "priority": 0, "allow": true}))
            })
            .collect();
        let mut cmds = remove_commands(id);
        cmds.push(Cmd::new(json!({"command": "createRole", "rolename": role,
            "textname": format!("edgefleet device {id}"), "acls": acls})));
        cmds.push(Cmd::new(
            json!({"command": "createClient", "username": id.as_str(),
            "clientid": id.as_str(), "password": password,
            "roles": [{"rolename": role, "priority": 0}]}),
        ));
        self.device_call(cmds).await
    }

    /// Deletes a device's client (disconnecting it) and its role.
    pub async fn remove_device(&self, id: &DeviceId) -> Result<(), DynsecError> {
        self.device_call(remove_commands(id)).await
    }
}

fn remove_commands(id: &DeviceId) -> Vec<Cmd> {
    vec![
        Cmd::tolerating(
            json!({"command": "deleteClient", "username": id.as_str()}),
            &["not found"],
        ),
        Cmd::tolerating(
            json!({"command": "deleteRole", "rolename": device_role(id)}),
            &["not found"],
        ),
    ]
}

/// Runs [`Dynsec::set_up_hub`] until it succeeds, backing off from 1 s to
/// 30 s: the broker may come up after the hub. Until then the broker
/// refuses the hub's desired-state publishes; each failure is logged and
/// counted.
pub async fn set_up_until_done(
    d: Dynsec,
    hub_username: String,
    metrics: Arc<crate::metrics::Metrics>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut wait = Duration::from_secs(1);
    loop {
        match d.set_up_hub(&hub_username).await {
            Ok(()) => {
                tracing::info!("mosquitto dynamic security set up: default deny, role {HUB_ROLE}");
                return;
            }
            Err(e) => {
                metrics.broker_provision_failures.inc();
                tracing::warn!(error = %e, retry_in = ?wait, "cannot set up mosquitto dynamic security");
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

/// Removes a call's entry from the pending map when dropped.
struct Forget<'a>(&'a Pending, &'a str);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(self.1);
    }
}

/// Hands a response message to the call waiting for its correlation id.
fn dispatch(pending: &Pending, payload: &[u8]) {
    let Ok(r) = serde_json::from_slice::<Responses>(payload) else {
        tracing::warn!("unreadable dynamic-security response; ignored");
        return;
    };
    let Some(id) = r.responses.iter().find_map(|x| x.correlation.clone()) else {
        return;
    };
    if let Some(tx) = pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&id)
    {
        let _ = tx.send(r.responses);
    }
}
