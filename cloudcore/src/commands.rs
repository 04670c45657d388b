//! Sends commands to devices. A command is created by the API (stored
//! `queued`), signed and sealed to its device's key here, and published
//! (QoS 1, not retained) on the device's `commands` topic while the device is
//! online:
//! - at once when it is created, if the device is online;
//! - when the device comes online (ingest stored its `online` presence);
//!   then commands already delivered without a result are sent again too;
//! - on hub start, and every [`RESEND`], to online devices with open
//!   commands (a publish lost with a broker that restarted).
//!
//! The device runs each id at most once (it records the id before running
//! it) and answers through its outbox ([`edgefleet_protocol::CommandResult`],
//! applied by ingest). Open commands past their expiry are marked expired
//! every second; the device refuses an expired command by its signature
//! anyway, whatever the broker still holds.

use std::sync::Arc;
use std::time::Duration;

use edgefleet_api::CommandRecord;
use edgefleet_protocol::{Channel, Command, DeviceId, Topic};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::Store;

/// How often open commands are sent again to online devices.
const RESEND: Duration = Duration::from_secs(30);
/// How often open commands are checked for expiry.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);

/// Wakes the dispatcher for one device.
#[derive(Debug, Clone)]
pub struct Dispatch(mpsc::UnboundedSender<(DeviceId, bool)>);

impl Dispatch {
    /// A handle and the receiver [`run`] takes.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<(DeviceId, bool)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    /// New commands for `device`: sent now if it is online.
    pub fn created(&self, device: DeviceId) {
        let _ = self.0.send((device, false));
    }

    /// `device` came online: its open commands are sent (again).
    pub fn online(&self, device: DeviceId) {
        let _ = self.0.send((device, true));
    }
}

#[derive(Debug)]
pub struct Dispatcher {
    pub store: Store,
    pub keys: Arc<crate::keys::HubKeys>,
    pub registry: Registry,
    pub client: AsyncClient,
    pub metrics: Arc<Metrics>,
}

impl Dispatcher {
    /// Sends `device`'s commands (queued ones; with `resend` the delivered
    /// ones without a result too) if it is online, and records them as
    /// delivered.
    async fn send(&self, device: DeviceId, resend: bool) {
        let now = edgefleet_protocol::now_ms();
        let dev = device.clone();
        let cmds = match self
            .store
            .run(move |s| s.commands_to_send(dev.as_str(), resend, now))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(%device, error = %e, "cannot read the device's commands; sent on its next reconnect");
                return;
            }
        };
        if cmds.is_empty() {
            return;
        }
        let Some(entry) = self.registry.get(&device) else {
            return;
        };
        let signer = self.keys.signer();
        let topic = Topic::new(device.clone(), Channel::Commands).to_string();
        let mut sent = Vec::with_capacity(cmds.len());
        for c in cmds {
            let payload = signer.seal_for(&command(&device, &c), &entry.key);
            match self
                .client
                .publish(&topic, QoS::AtLeastOnce, false, payload)
                .await
            {
                Ok(()) => {
                    self.metrics.commands_sent.inc();
                    tracing::info!(%device, id = %c.id, action = c.action.name(), "command sent");
                    sent.push(c.id);
                }
                Err(e) => {
                    tracing::warn!(%device, id = %c.id, error = %e, "cannot queue a command; sent on the device's next reconnect");
                }
            }
        }
        let dev = device.clone();
        if let Err(e) = self
            .store
            .run(move |s| s.commands_delivered(dev.as_str(), &sent, now))
            .await
        {
            tracing::error!(%device, error = %e, "cannot record commands as delivered (they are sent again; each runs once)");
        }
    }

    /// Every online device with open commands, all of them sent again.
    async fn resend_all(&self) {
        let now = edgefleet_protocol::now_ms();
        match self
            .store
            .run(move |s| s.devices_with_open_commands(now))
            .await
        {
            Ok(devices) => {
                for d in devices {
                    if let Ok(d) = DeviceId::new(d) {
                        self.send(d, true).await;
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot list devices with open commands"),
        }
    }

    async fn expire(&self) {
        let now = edgefleet_protocol::now_ms();
        match self.store.run(move |s| s.expire_commands(now)).await {
            Ok(0) => {}
            Ok(n) => {
                self.metrics
                    .commands_finished
                    .get_or_create(&vec![("state", "expired".to_owned())])
                    .inc_by(n);
                tracing::info!(commands = n, "commands expired without a result");
            }
            Err(e) => tracing::error!(error = %e, "cannot expire commands"),
        }
    }

    /// Sends commands as devices come online or get new ones, until
    /// `cancel`.
    pub async fn run(
        self,
        mut rx: mpsc::UnboundedReceiver<(DeviceId, bool)>,
        cancel: CancellationToken,
    ) {
        let mut expire = tokio::time::interval(EXPIRE_EVERY);
        expire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once: what was open when the hub stopped is
        // sent to the devices online now.
        let mut resend = tokio::time::interval(RESEND);
        resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some((device, again)) = rx.recv() => self.send(device, again).await,
                _ = expire.tick() => self.expire().await,
                _ = resend.tick() => self.resend_all().await,
            }
        }
    }
}

/// The signed form of a stored command.
fn command(device: &DeviceId, c: &CommandRecord) -> Command {
    Command {
        id: c.id.clone(),
        device_id: device.clone(),
        issued_at_ms: c.created_ms,
        expires_at_ms: c.expires_ms,
        action: c.action.clone(),
    }
}
