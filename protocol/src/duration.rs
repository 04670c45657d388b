//! Durations as operators write them in manifests and config files:
//! `90s`, `10m`, `12h`, `1d`, or several units in a row (`1h30m`). A bare
//! number is refused: `interval = 30` could mean seconds or minutes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A span of time, in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration {
    secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{0:?} is not a duration: write a number and a unit, e.g. 30s, 10m, 12h, 1d")]
    Syntax(String),
    #[error("{0:?} is too long")]
    TooLong(String),
}

impl Duration {
    pub const ZERO: Self = Self { secs: 0 };

    pub const fn from_secs(secs: u64) -> Self {
        Self { secs }
    }

    pub const fn as_secs(self) -> u64 {
        self.secs
    }

    pub const fn is_zero(self) -> bool {
        self.secs == 0
    }

    pub const fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.secs)
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || DurationError::Syntax(s.to_owned());
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(syntax());
        }
        if rest == "0" {
            return Ok(Self::ZERO);
        }
        let mut secs: u64 = 0;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .ok_or_else(syntax)?;
            if digits == 0 {
                return Err(syntax());
            }
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| DurationError::TooLong(s.to_owned()))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = match &rest[..unit_len] {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                _ => return Err(syntax()),
            };
            rest = &rest[unit_len..];
            secs = n
                .checked_mul(unit)
                .and_then(|v| secs.checked_add(v))
                .ok_or_else(|| DurationError::TooLong(s.to_owned()))?;
        }
        Ok(Self { secs })
    }
}

impl fmt::Display for Duration {
    /// The shortest form that parses back to the same value (`1h30m`, `0s`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secs == 0 {
            return f.write_str("0s");
        }
        let mut left = self.secs;
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if left >= size {
                write!(f, "{}{unit}", left / size)?;
                left %= size;
            }
        }
        Ok(())
    }
}

/// In OpenAPI: the text form, e.g. `90s` or `1h30m`.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Duration {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "A number and a unit (s, m, h, d), several in a row allowed: 90s, 10m, 1h30m",
            ))
            .examples(["10m"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Duration {}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_runs_of_units() {
        for (text, secs) in [
            ("0", 0),
            ("0s", 0),
            ("90s", 90),
            ("10m", 600),
            ("12h", 43_200),
            ("1d", 86_400),
            ("1h30m", 5400),
            ("2d3h4m5s", 2 * 86_400 + 3 * 3600 + 4 * 60 + 5),
        ] {
            assert_eq!(text.parse::<Duration>().unwrap().as_secs(), secs, "{text}");
        }
    }

    #[test]
    fn refuses_what_is_ambiguous_or_malformed() {
        for text in ["", "30", "m", "10x", "1.5h", "-1s", "h1", "10 m"] {
            assert!(text.parse::<Duration>().is_err(), "{text:?} was accepted");
        }
        assert!(matches!(
            "99999999999999999999d".parse::<Duration>(),
            Err(DurationError::TooLong(_))
        ));
    }

    #[test]
    fn displays_what_parses_back() {
        for secs in [0, 1, 59, 60, 61, 3600, 5400, 86_400, 90_061] {
            let d = Duration::from_secs(secs);
            assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }
        assert_eq!(Duration::from_secs(5400).to_string(), "1h30m");
    }
}
