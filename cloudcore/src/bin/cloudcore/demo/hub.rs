//! The hub, run in this process by [`cloudcore::serve::serve_with`] on free
//! loopback ports, and its REST client ([`edgefleet_api::Client`], the one
//! edgectl uses).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edgefleet_api::{Client, ClientError, Presence};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::DEVICE_ID;
use super::agent::{Agent, AgentError};
use cloudcore::config::{ApiConfig, BrokerConfig, Config};
use cloudcore::serve::{self, ServeError};

/// How long the hub and the agent get to come up.
const STARTUP: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("cannot find a free port on 127.0.0.1")]
    Port(#[source] std::io::Error),
    #[error("the hub failed to start")]
    Start(#[source] ServeError),
    #[error("the hub stopped unexpectedly; see the hub log")]
    Stopped,
    #[error("the hub did not become ready within {0:?}; see the hub log")]
    NotReady(Duration),
    #[error("cannot read {path}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("REST request failed")]
    Request(#[from] ClientError),
    #[error("device {DEVICE_ID} did not come online at the hub within {0:?}; see the agent log")]
    NotOnline(Duration),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// A free TCP port on 127.0.0.1, for the embedded broker (rumqttd binds
/// its own socket and cannot report a port 0 back).
pub fn free_port() -> Result<u16, HubError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(HubError::Port)
}

/// The running in-process hub.
#[derive(Debug)]
pub struct Hub {
    pub api_url: String,
    pub broker_url: String,
    pub bootstrap_token: String,
    /// Where the operator token is, for the `edgectl` hint.
    pub token_file: PathBuf,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
    /// The operator's client.
    pub client: Client,
    http: reqwest::Client,
}

impl Hub {
    /// Starts the hub with its data in `data_dir` and waits until it is ready.
    pub async fn start(data_dir: &Path) -> Result<Self, HubError> {
        let broker = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let cfg = Config {
            data_dir: data_dir.to_owned(),
            api: ApiConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..ApiConfig::default()
            },
            broker: BrokerConfig {
                listen: broker,
                ..BrokerConfig::default()
            },
            ..Config::default()
        };
        let cancel = CancellationToken::new();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(serve::serve_with(cfg, cancel.clone(), Some(tx)));
        let started = match rx.await {
            Ok(s) => s,
            // The hub dropped the sender: it failed before listening.
            Err(_) => {
                return Err(match task.await {
                    Ok(Err(e)) => HubError::Start(e),
                    _ => HubError::Stopped,
                });
            }
        };
        let token = |name: &str| {
            let path = data_dir.join(name);
            std::fs::read_to_string(&path)
                .map(|t| t.trim().to_owned())
                .map_err(|source| HubError::Token { path, source })
        };
        let api_url = format!("http://{}", started.api);
        let hub = Self {
            client: Client::new(&api_url, Some(token("operator-token")?))?,
            api_url,
            broker_url: format!("mqtt://{broker}"),
            bootstrap_token: token("bootstrap-token")?,
            token_file: data_dir.join("operator-token"),
            cancel,
            task,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| HubError::Request(ClientError::Build(e)))?,
        };
        hub.wait_ready().await?;
        Ok(hub)
    }

    /// `/readyz`: the store is open and the hub's own MQTT session is up.
    async fn wait_ready(&self) -> Result<(), HubError> {
        let deadline = Instant::now() + STARTUP;
        loop {
            self.check_running()?;
            let url = format!("{}/readyz", self.api_url);
            if let Ok(r) = self.http.get(url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(HubError::NotReady(STARTUP));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails when the hub's task ended (it only ends on error or shutdown).
    pub fn check_running(&self) -> Result<(), HubError> {
        if self.task.is_finished() {
            return Err(HubError::Stopped);
        }
        Ok(())
    }

    /// Waits until the device reports `online` at the hub, failing early
    /// when the agent process exits.
    pub async fn wait_online(&self, agent: &mut Agent) -> Result<(), HubError> {
        let deadline = Instant::now() + STARTUP;
        loop {
            self.check_running()?;
            agent.check_running()?;
            if let Ok(d) = self.client.device(DEVICE_ID).await
                && d.device.presence == Presence::Online
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(HubError::NotOnline(STARTUP));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Cancels the hub and waits (bounded) for it to drain.
    pub async fn stop(self) {
        self.cancel.cancel();
        let wait = serve::GRACE + Duration::from_secs(1);
        match tokio::time::timeout(wait, self.task).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "hub stopped with an error"),
            Err(_) => tracing::warn!("hub did not stop within {wait:?}"),
            _ => {}
        }
    }
}
