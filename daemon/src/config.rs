//! What both daemons' configuration loading shares: a TOML file read into
//! the daemon's config type (a missing file may mean "defaults"), and
//! environment variables parsed with an error naming the variable, its value
//! and what was expected. The layering itself (defaults, file, environment,
//! flags) and each daemon's settings are the daemon's own.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{name}={value:?} is not valid: {message}")]
    Env {
        name: String,
        value: String,
        message: String,
    },
}

/// Reads `path` as TOML into `T`; a missing file is `Ok(None)` unless
/// `must_exist`.
pub fn read_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    must_exist: bool,
) -> Result<Option<T>, ConfigFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => return Ok(None),
        Err(source) => {
            return Err(ConfigFileError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|source| ConfigFileError::Parse {
            path: path.to_owned(),
            source,
        })
}

/// The error for environment variable `name` set to `value`.
pub fn env_error(name: &str, value: &str, expected: impl Into<String>) -> ConfigFileError {
    ConfigFileError::Env {
        name: name.to_owned(),
        value: value.to_owned(),
        message: expected.into(),
    }
}

/// Parses environment variable `name`'s `value`; the error says what the
/// parser said.
pub fn env_parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, ConfigFileError>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e: T::Err| env_error(name, value, e.to_string()))
}

/// Parses environment variable `name`'s `value`; the error says what was
/// `expected` (for parsers whose own message helps nobody).
pub fn env_parse_as<T: std::str::FromStr>(
    name: &str,
    value: &str,
    expected: &str,
) -> Result<T, ConfigFileError> {
    value.parse().map_err(|_| env_error(name, value, expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct C {
        port: u16,
    }

    #[test]
    fn files_and_variables_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        assert!(read_toml::<C>(&p, false).unwrap().is_none());
        assert!(matches!(
            read_toml::<C>(&p, true),
            Err(ConfigFileError::Read { .. })
        ));
        std::fs::write(&p, "port = 8080\n").unwrap();
        assert_eq!(read_toml::<C>(&p, true).unwrap(), Some(C { port: 8080 }));
        std::fs::write(&p, "port = \"x\"\n").unwrap();
        assert!(matches!(
            read_toml::<C>(&p, true),
            Err(ConfigFileError::Parse { .. })
        ));
        assert_eq!(env_parse::<u16>("PORT", "80").unwrap(), 80);
        let e = env_parse::<u16>("PORT", "eighty").unwrap_err();
        assert!(
            e.to_string().starts_with("PORT=\"eighty\" is not valid: "),
            "{e}"
        );
    }
}
