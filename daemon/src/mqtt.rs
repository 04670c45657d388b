//! How both daemons reach a broker with rumqttc: the broker URL
//! (`mqtt://host[:port]`, `mqtts://host[:port]`), the QoS of each channel,
//! and TLS trusting either the system's roots or the CAs of one PEM file.

use std::path::Path;

use edgefleet_protocol::Channel;
use rumqttc::{QoS, TlsConfiguration, Transport};

/// A parsed `mqtt://` or `mqtts://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("broker URL {url:?}: {problem}")]
pub struct BrokerUrlError {
    pub url: String,
    pub problem: &'static str,
}

impl BrokerUrl {
    /// Parses `mqtt://host[:port][/]` (port 1883) or `mqtts://…` (8883);
    /// IPv6 hosts in brackets.
    pub fn parse(url: &str) -> Result<Self, BrokerUrlError> {
        let bad = |problem| BrokerUrlError {
            url: url.to_owned(),
            problem,
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(bad("must start with mqtt:// or mqtts://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("must be scheme://host[:port], nothing more"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in the host"))?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
                ),
            }
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        let port = match port {
            None => {
                if tls {
                    8883
                } else {
                    1883
                }
            }
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(bad("port is not a number from 1 to 65535")),
            },
        };
        if host.is_empty() || (host.contains([':', '[', ']']) && !rest.starts_with('[')) {
            return Err(bad("missing or malformed host"));
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

impl std::str::FromStr for BrokerUrl {
    type Err = BrokerUrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// The QoS a channel is published and subscribed with (the wire contract's
/// 0 or 1, in rumqttc's terms).
pub fn qos(channel: Channel) -> QoS {
    match channel.qos() {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The event loop's next event (rumqttc reconnects on the poll after an
/// error), or `None` once `cancel` fires.
pub async fn next_event(
    eventloop: &mut rumqttc::EventLoop,
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<Result<rumqttc::Event, rumqttc::ConnectionError>> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        ev = eventloop.poll() => Some(ev),
    }
}

/// Waits `delay` (reconnect pacing); false when `cancel` fired first.
pub async fn pause(
    delay: std::time::Duration,
    cancel: &tokio_util::sync::CancellationToken,
) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// A clean stop: DISCONNECT, and the event loop polled (at most `wait`)
/// until it is written, with whatever was queued before it.
pub async fn disconnect(
    client: &rumqttc::AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
    wait: std::time::Duration,
) {
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(wait, async {
        while let Ok(ev) = eventloop.poll().await {
            if matches!(ev, rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{what} {path}: cannot read it")]
    Read {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: no PEM {label} in it")]
    Missing {
        what: &'static str,
        path: std::path::PathBuf,
        label: &'static str,
    },
    #[error("{what} {path}: {reason}")]
    Unusable {
        what: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
}

/// Reads a PEM file that must hold at least one `label` block (e.g.
/// `CERTIFICATE`); `what` names the setting in errors.
pub fn read_pem(what: &'static str, path: &Path, label: &'static str) -> Result<Vec<u8>, PemError> {
    let pem = std::fs::read(path).map_err(|source| PemError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    let begin = format!("-----BEGIN {label}-----");
    let found = String::from_utf8_lossy(&pem)
        .lines()
        .any(|l| l.trim_end() == begin);
    if !found {
        return Err(PemError::Missing {
            what,
            path: path.to_owned(),
            label,
        });
    }
    Ok(pem)
}

/// TLS to a broker: the system's roots when `ca_file` is empty, else only
/// the CAs in it (a private CA, as mosquitto deployments usually have).
/// `what` names the setting in errors.
pub fn tls_transport(what: &'static str, ca_file: &Path) -> Result<Transport, PemError> {
    if ca_file.as_os_str().is_empty() {
        return Ok(Transport::tls_with_default_config());
    }
    let ca = read_pem(what, ca_file, "CERTIFICATE")?;
    Ok(Transport::tls_with_config(TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(tls: bool, host: &str, port: u16) -> BrokerUrl {
        BrokerUrl {
            tls,
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn broker_urls_parse_with_default_ports() {
        let ok = [
            ("mqtt://127.0.0.1:1884", url(false, "127.0.0.1", 1884)),
            ("mqtt://hub", url(false, "hub", 1883)),
            ("mqtts://hub.example/", url(true, "hub.example", 8883)),
            ("mqtts://[::1]:8884", url(true, "::1", 8884)),
            ("mqtt://[fe80::1]", url(false, "fe80::1", 1883)),
        ];
        for (s, want) in ok {
            let got = BrokerUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(got, want, "{s}");
            assert_eq!(BrokerUrl::parse(&got.to_string()).unwrap(), want);
        }
    }

    #[test]
    fn malformed_broker_urls_say_what_is_wrong() {
        for s in [
            "tcp://x:1",
            "http://hub:1",
            "mqtt://",
            "mqtt://:1",
            "mqtt://x:abc",
            "mqtt://x:0",
            "mqtt://x:70000",
            "mqtt://x/y",
            "mqtt://user@x",
            "mqtt://[::1",
            "mqtt://[::1]x",
            "mqtt://::1",
        ] {
            let e = BrokerUrl::parse(s).expect_err(s);
            assert!(e.to_string().contains(s), "{e}");
        }
    }

    #[test]
    fn channel_qos_follows_the_contract() {
        for c in Channel::ALL {
            assert_eq!(qos(c) as u8, c.qos(), "{c:?}");
        }
    }

    #[test]
    fn pem_files_must_hold_the_block() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a cert\n").unwrap();
        assert!(matches!(
            tls_transport("broker.ca_file", &p),
            Err(PemError::Missing { .. })
        ));
        std::fs::write(
            &p,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(tls_transport("broker.ca_file", &p).is_ok());
        assert!(matches!(
            read_pem("x", &dir.path().join("none"), "CERTIFICATE"),
            Err(PemError::Read { .. })
        ));
        // The daemons install ring as rustls' provider at start.
        let _ = rustls::crypto::ring::default_provider().install_default();
        assert!(tls_transport("broker.ca_file", Path::new("")).is_ok());
    }
}
