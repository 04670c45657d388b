//! MQTT topics: `edgefleet/v1/devices/{device_id}/{channel}`.

use std::fmt;

use crate::name::{DeviceId, NameError};

/// Every topic starts with this.
pub const PREFIX: &str = "edgefleet/v1/devices";

/// Who publishes on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    HubToDevice,
    DeviceToHub,
}

/// The last level of a device topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Desired,
    Status,
    Presence,
    Events,
    Heartbeat,
    Commands,
    /// Hub → device: which outbox messages the hub has committed.
    Acks,
}

impl Channel {
    pub const ALL: [Channel; 7] = [
        Channel::Desired,
        Channel::Status,
        Channel::Presence,
        Channel::Events,
        Channel::Heartbeat,
        Channel::Commands,
        Channel::Acks,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Desired => "desired",
            Channel::Status => "status",
            Channel::Presence => "presence",
            Channel::Events => "events",
            Channel::Heartbeat => "heartbeat",
            Channel::Commands => "commands",
            Channel::Acks => "acks",
        }
    }

    /// The MQTT QoS this channel is published with.
    pub fn qos(self) -> u8 {
        match self {
            Channel::Heartbeat => 0,
            _ => 1,
        }
    }

    /// Whether messages on this channel are published retained.
    pub fn retained(self) -> bool {
        matches!(self, Channel::Desired | Channel::Presence)
    }

    pub fn direction(self) -> Direction {
        match self {
            Channel::Desired | Channel::Commands | Channel::Acks => Direction::HubToDevice,
            _ => Direction::DeviceToHub,
        }
    }

    /// Whether a device may subscribe to its own topic on this channel
    /// (the broker ACL: it reads only what the hub sends it).
    pub fn device_subscribes(self) -> bool {
        self.direction() == Direction::HubToDevice
    }

    /// Whether a device may publish on its own topic on this channel.
    pub fn device_publishes(self) -> bool {
        self.direction() == Direction::DeviceToHub
    }

    /// Whether a device may publish retained on its own topic on this
    /// channel: only its presence (the will that says it went offline).
    pub fn device_retains(self) -> bool {
        self == Channel::Presence
    }

    /// Subscription filter for this channel of every device: `edgefleet/v1/devices/+/status`.
    pub fn filter_all_devices(self) -> String {
        format!("{PREFIX}/+/{}", self.as_str())
    }
}

impl std::str::FromStr for Channel {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Channel::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| TopicError::UnknownChannel(s.to_owned()))
    }
}

/// Why a topic string is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {0:?} is not under {PREFIX}/")]
    WrongPrefix(String),
    #[error("topic {0:?} must have exactly 5 levels: {PREFIX}/{{device_id}}/{{channel}}")]
    Malformed(String),
    #[error("device id in topic {topic:?} {source}")]
    BadDeviceId {
        topic: String,
        #[source]
        source: NameError,
    },
    #[error("unknown channel {0:?}")]
    UnknownChannel(String),
}

/// A parsed device topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    pub device: DeviceId,
    pub channel: Channel,
}

impl Topic {
    pub fn new(device: DeviceId, channel: Channel) -> Self {
        Self { device, channel }
    }

    /// Parses `edgefleet/v1/devices/{id}/{channel}`.
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let rest = topic
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| TopicError::WrongPrefix(topic.to_owned()))?;
        let mut parts = rest.split('/');
        let (Some(id), Some(channel), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TopicError::Malformed(topic.to_owned()));
        };
        let device = DeviceId::new(id).map_err(|source| TopicError::BadDeviceId {
            topic: topic.to_owned(),
            source,
        })?;
        Ok(Self {
            device,
            channel: channel.parse()?,
        })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}/{}/{}", self.device, self.channel.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(s: &str) -> DeviceId {
        DeviceId::new(s).unwrap()
    }

    #[test]
    fn build_and_parse_every_channel() {
        for c in Channel::ALL {
            let t = Topic::new(dev("pi-7"), c);
            let s = t.to_string();
            assert_eq!(s, format!("edgefleet/v1/devices/pi-7/{}", c.as_str()));
            assert_eq!(Topic::parse(&s).unwrap(), t);
        }
    }

    #[test]
    fn rejects_foreign_and_malformed_topics() {
        let kind = |t: &str| match Topic::parse(t) {
            Err(TopicError::WrongPrefix(_)) => "prefix",
            Err(TopicError::Malformed(_)) => "malformed",
            Err(TopicError::BadDeviceId { .. }) => "device",
            Err(TopicError::UnknownChannel(_)) => "channel",
            Ok(_) => "ok",
        };
        for (topic, want) in [
            ("other/v1/devices/pi/status", "prefix"),
            ("edgefleet/v2/devices/pi/status", "prefix"),
            ("edgefleet/v1/devicesX/pi/status", "prefix"),
            ("edgefleet/v1/devices/pi", "malformed"),
            ("edgefleet/v1/devices/pi/status/x", "malformed"),
            ("edgefleet/v1/devices/+/status", "device"),
            ("edgefleet/v1/devices/Pi/status", "device"),
            ("edgefleet/v1/devices/pi/telemetry", "channel"),
        ] {
            assert_eq!(kind(topic), want, "{topic}");
        }
    }

    #[test]
    fn channel_properties_match_design() {
        assert_eq!(Channel::Heartbeat.qos(), 0);
        assert!(Channel::Desired.retained() && Channel::Presence.retained());
        assert!(!Channel::Status.retained() && !Channel::Events.retained());
        assert_eq!(Channel::Commands.direction(), Direction::HubToDevice);
        assert_eq!(
            Channel::Status.filter_all_devices(),
            "edgefleet/v1/devices/+/status"
        );
    }
}
