//! Names that cross the wire: device ids, DNS labels, Kubernetes label keys
//! and values. Device ids end up in MQTT topics and in Kubernetes label
//! values, so they follow the stricter of the two (RFC 1123 labels).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest device id: a Kubernetes label value is at most 63 characters.
pub const MAX_DEVICE_ID_LEN: usize = 63;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("is {len} characters long, the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error(
        "must consist of lower-case letters, digits and '-', and start and end with a letter or digit (got {0:?})"
    )]
    NotDnsLabel(String),
    #[error("is not a valid label key: {0}")]
    LabelKey(String),
    #[error("is not a valid label value: {0}")]
    LabelValue(String),
}

/// A device's identity, unique per hub: an RFC 1123 DNS label of 1–63
/// characters (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`), so it is safe in MQTT topic
/// levels, file names and Kubernetes label values.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

/// The pattern of a DNS label (a device id, a model name), for OpenAPI.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for DeviceId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(DNS_LABEL_PATTERN))
            .max_length(Some(MAX_DEVICE_ID_LEN))
            .examples(["sensor-1"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for DeviceId {}

impl DeviceId {
    /// Validates and wraps a device id.
    pub fn new(id: impl Into<String>) -> Result<Self, NameError> {
        let id = id.into();
        check_dns_label(&id, MAX_DEVICE_ID_LEN)?;
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DeviceId {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> Self {
        id.0
    }
}

impl std::str::FromStr for DeviceId {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most `max` characters.
pub fn check_dns_label(s: &str, max: usize) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > max {
        return Err(NameError::TooLong { len: s.len(), max });
    }
    let ok_inner = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let bytes = s.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !ok_inner || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err(NameError::NotDnsLabel(s.to_owned()));
    }
    Ok(())
}

/// Kubernetes "name" part of a label key or a label value:
/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters.
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// RFC 1123 subdomain (label key prefix): dot-separated DNS labels, ≤ 253.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| check_dns_label(l, 63).is_ok())
}

/// A Kubernetes label key: `[prefix/]name`.
pub fn check_label_key(key: &str) -> Result<(), NameError> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !is_dns_subdomain(p)
    {
        return Err(NameError::LabelKey(format!(
            "prefix {p:?} of {key:?} must be a DNS subdomain"
        )));
    }
    if !is_qualified_name_part(name) {
        return Err(NameError::LabelKey(format!(
            "{key:?}: name part must be 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"
        )));
    }
    Ok(())
}

/// A Kubernetes label value: empty, or a qualified name part.
pub fn check_label_value(value: &str) -> Result<(), NameError> {
    if value.is_empty() || is_qualified_name_part(value) {
        Ok(())
    } else {
        Err(NameError::LabelValue(format!(
            "{value:?}: must be at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        for ok in ["a", "pi-01", "0", "dev-0123456789abcdef", &"a".repeat(63)] {
            assert!(DeviceId::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a/b",
            "a+b",
            "a#",
            "a.b",
            &"a".repeat(64),
        ] {
            assert!(DeviceId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        for ok in [
            "site",
            "edgefleet.io/workload",
            "app.kubernetes.io/managed-by",
            "a_b.c",
        ] {
            assert!(check_label_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/", "-a", "Foo_/x", "a/b/c", &"a".repeat(64)] {
            assert!(check_label_key(bad).is_err(), "{bad}");
        }
        for ok in ["", "plant-3", "arm64", "v1.2_3"] {
            assert!(check_label_value(ok).is_ok(), "{ok}");
        }
        for bad in ["-x", "x-", "a b", &"a".repeat(64)] {
            assert!(check_label_value(bad).is_err(), "{bad}");
        }
    }
}
