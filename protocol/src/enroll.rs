//! Enrollment (`POST /api/v1/enroll`): a device trades a bootstrap token and
//! its public key for an id, broker credentials and the hub key it pins.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::limits::MAX_LABELS;
use crate::name::{DeviceId, check_label_key, check_label_value};
use crate::sign::PublicKey;
use crate::validate::ValidationErrors;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnrollRequest {
    /// The bootstrap token configured on the hub.
    pub token: String,
    /// The device's ed25519 public key, 32 bytes in standard base64.
    pub public_key: String,
    /// A requested id; the hub derives one from the key when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `std::env::consts::ARCH` of the agent, e.g. `aarch64`.
    pub arch: String,
    pub agent_version: String,
}

impl EnrollRequest {
    pub fn validate(&self) -> Result<PublicKey, ValidationErrors> {
        let mut errs = ValidationErrors::default();
        let key = PublicKey::from_base64(&self.public_key)
            .map_err(|e| errs.push("publicKey", e))
            .ok();
        if self.labels.len() > MAX_LABELS {
            errs.push("labels", format_args!("at most {MAX_LABELS} labels"));
        }
        for (k, v) in &self.labels {
            if let Err(e) = check_label_key(k) {
                errs.push("labels", e);
            }
            if let Err(e) = check_label_value(v) {
                errs.push(format!("labels.{k}"), e);
            }
        }
        match key {
            Some(k) if errs.is_empty() => Ok(k),
            _ => Err(errs),
        }
    }
}

/// Credentials for the device's own MQTT connection.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrokerCredentials {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for BrokerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerCredentials")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnrollResponse {
    pub device_id: DeviceId,
    pub broker: BrokerCredentials,
    /// The hub's ed25519 public key (standard base64), to pin.
    pub hub_public_key: String,
    pub hub_key_id: String,
}
