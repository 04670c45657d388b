//! A Deployment's `spec.rollout`: how a new generation reaches the devices,
//! wave by wave, gated on what each device acknowledged and its health.
//!
//! ```yaml
//! rollout:
//!   waves:
//!     - {name: canary, selector: {matchLabels: {ring: canary}}}
//!     - {name: early, percent: 10}
//!     - {name: rest, percent: 100}
//!   healthTimeout: 10m
//!   bake: 2m
//!   maxFailures: 5%
//!   minSample: 10
//!   onFailure: rollback
//!   deviceRollback: true
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration::Duration;
use crate::name::check_dns_label;
use crate::selector::LabelSelector;
use crate::validate::ValidationErrors;

/// At most this many waves.
pub const MAX_WAVES: usize = 16;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutSpec {
    /// In order; a device is in the first wave that takes it.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 16))]
    pub waves: Vec<Wave>,
    /// A device not Healthy on the new generation this long after it was
    /// online in its wave has failed.
    #[serde(default = "default_health_timeout")]
    pub health_timeout: Duration,
    /// Wait after a wave is healthy, before the next one starts.
    #[serde(default)]
    pub bake: Duration,
    /// Failed devices a wave tolerates: a count (`2`) or a share of the
    /// wave (`5%`, rounded down).
    #[serde(default)]
    pub max_failures: Threshold,
    /// A wave is judged on its failures only once this many of its devices
    /// (or all of a smaller wave) have succeeded or failed.
    #[serde(default = "default_min_sample")]
    pub min_sample: u32,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// The agent keeps the previous desired state and goes back to it by
    /// itself, offline too, when the new one is not Healthy in time.
    #[serde(default)]
    pub device_rollback: bool,
}

fn default_health_timeout() -> Duration {
    Duration::from_secs(600)
}

fn default_min_sample() -> u32 {
    10
}

/// One wave: the devices a selector picks, or a share or number of those
/// not yet in a wave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Wave {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Percent (1–100) of the targeted devices not yet in a wave, rounded up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    /// This many of the targeted devices not yet in a wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub enum OnFailure {
    /// Every device that got the new generation gets the last good one back.
    #[default]
    Rollback,
    /// Stop where it is until an operator resumes or aborts.
    Pause,
}

/// `maxFailures`: a count or a percentage of the wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    Count(u32),
    Percent(u32),
}

impl Default for Threshold {
    fn default() -> Self {
        Threshold::Count(0)
    }
}

impl Threshold {
    /// Failures tolerated in a wave of `size` devices.
    pub fn allowed(self, size: usize) -> usize {
        match self {
            Threshold::Count(n) => n as usize,
            Threshold::Percent(p) => size * p as usize / 100,
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Count(n) => write!(f, "{n}"),
            Threshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for Threshold {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a count (2) or a percentage (5%)");
        match s.trim().strip_suffix('%') {
            Some(p) => {
                let p: u32 = p.trim().parse().map_err(|_| bad())?;
                if p > 100 {
                    return Err(format!("{s:?}: a percentage is at most 100%"));
                }
                Ok(Threshold::Percent(p))
            }
            None => s.trim().parse().map(Threshold::Count).map_err(|_| bad()),
        }
    }
}

/// In OpenAPI: a count (an integer) or a percentage (a string ending in `%`).
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Threshold {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[0-9]+%$")),
            )
            .description(Some(
                "A count of devices (2) or a percentage of the wave (\"5%\")",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Threshold {}

impl Serialize for Threshold {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Threshold::Count(n) => s.serialize_u32(*n),
            Threshold::Percent(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u32),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Count(n) => Ok(Threshold::Count(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl RolloutSpec {
    pub fn validate_into(&self, path: &str, errs: &mut ValidationErrors) {
        if self.waves.is_empty() {
            errs.push(format!("{path}.waves"), "must list at least one wave");
        }
        if self.waves.len() > MAX_WAVES {
            errs.push(
                format!("{path}.waves"),
                format_args!("at most {MAX_WAVES} waves"),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, w) in self.waves.iter().enumerate() {
            let p = format!("{path}.waves[{i}]");
            if let Err(e) = check_dns_label(&w.name, 63) {
                errs.push(format!("{p}.name"), e);
            } else if !names.insert(w.name.as_str()) {
                errs.push(
                    format!("{p}.name"),
                    format_args!("duplicate wave {:?}", w.name),
                );
            }
            let kinds = [w.selector.is_some(), w.percent.is_some(), w.count.is_some()];
            if kinds.iter().filter(|k| **k).count() != 1 {
                errs.push(p.clone(), "give exactly one of selector, percent or count");
            }
            if let Some(s) = &w.selector {
                s.validate_into(&format!("{p}.selector"), errs);
            }
            if let Some(pc) = w.percent
                && !(1..=100).contains(&pc)
            {
                errs.push(format!("{p}.percent"), "must be 1 to 100");
            }
            if w.count == Some(0) {
                errs.push(format!("{p}.count"), "must be at least 1");
            }
        }
        if self.health_timeout.is_zero() {
            errs.push(format!("{path}.healthTimeout"), "must be more than 0s");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_counts_or_percentages() {
        assert_eq!("5%".parse::<Threshold>().unwrap(), Threshold::Percent(5));
        assert_eq!("3".parse::<Threshold>().unwrap(), Threshold::Count(3));
        assert!("101%".parse::<Threshold>().is_err());
        assert!("five".parse::<Threshold>().is_err());
        assert_eq!(Threshold::Percent(5).allowed(99), 4);
        assert_eq!(Threshold::Percent(30).allowed(10), 3);
        assert_eq!(Threshold::Count(2).allowed(1000), 2);
        let json = serde_json::to_string(&Threshold::Percent(5)).unwrap();
        assert_eq!(json, "\"5%\"");
        assert_eq!(serde_json::to_string(&Threshold::Count(2)).unwrap(), "2");
    }
}
