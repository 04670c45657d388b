//! `cloudcore serve`: wires the store, keys, broker, MQTT session, ingest,
//! publisher and API together, and shuts them down in order.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use edgefleet_daemon::supervise::Supervisor;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::{Config, ConfigError};
use crate::keys;
use crate::metrics::Metrics;
use crate::publisher::{Publisher, Trigger};
use crate::registry::Registry;
use crate::store::{Store, StoreError};
use crate::{broker, exit, ingest, mqtt};
use edgefleet_daemon::files::SecretError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    #[error("cannot open the store")]
    Store(#[from] StoreError),
    /// The store is damaged; `restore` says how to bring back a backup.
    #[error("cannot open the store {path}")]
    Damaged {
        path: std::path::PathBuf,
        #[source]
        source: StoreError,
        restore: String,
    },
    #[error("cannot take the data directory")]
    Lock(#[from] edgefleet_daemon::lock::LockError),
    #[error("cannot load or create the hub's secrets")]
    Keys(#[from] SecretError),
    #[error("cannot load the hub's signing key")]
    HubKey(#[from] crate::keys::HubKeyError),
    #[error("embedded broker")]
    Broker(#[from] broker::BrokerError),
    #[error("REST API TLS")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A task the hub cannot run without (REST server, MQTT session,
    /// ingest, publisher) ended.
    #[error(transparent)]
    TaskDied(#[from] edgefleet_daemon::supervise::Died<TaskError>),
}

/// What a hub task can fail with.
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

impl ServeError {
    /// What the operator can do next, when the error has an answer.
    pub fn hint(&self) -> Option<&str> {
        match self {
            ServeError::Damaged { restore, .. } => Some(restore),
            _ => None,
        }
    }

    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            ServeError::Config(_)
            | ServeError::Tls(_)
            | ServeError::Lock(edgefleet_daemon::lock::LockError::Held { .. }) => exit::CONFIG,
            ServeError::Lock(_) => exit::STORE,
            ServeError::Store(_)
            | ServeError::Damaged { .. }
            | ServeError::Keys(_)
            | ServeError::HubKey(_) => exit::STORE,
            ServeError::Broker(_) | ServeError::Listen { .. } | ServeError::TaskDied(_) => {
                exit::UNAVAILABLE
            }
        }
    }
}

/// A store SQLite calls corrupt becomes [`ServeError::Damaged`], naming the
/// newest scheduled backup and the command that restores it.
fn damaged(cfg: &Config, e: StoreError) -> ServeError {
    if !e.is_corrupt() {
        return ServeError::Store(e);
    }
    let data = &cfg.data_dir;
    let backups = cfg.backup.dir_for(data);
    let restore = match crate::backup::schedule::list(&backups).first() {
        Some(newest) => format!(
            "the store is damaged. The newest backup is {newest}; restore it with:\n  \
             cloudcore restore --from {newest} --data-dir {dir} --force\n\
             (the damaged files are moved aside, not deleted; devices keep running meanwhile)",
            newest = newest.display(),
            dir = data.display()
        ),
        None => format!(
            "the store is damaged and there is no backup in {}. Restore one taken with \
             `cloudcore backup` elsewhere:\n  cloudcore restore --from FILE --data-dir {} --force",
            backups.display(),
            data.display()
        ),
    };
    ServeError::Damaged {
        path: data.join(crate::backup::DB),
        source: e,
        restore,
    }
}

/// How long tasks get to finish after a stop signal.
pub const GRACE: Duration = Duration::from_secs(5);

/// What an in-process hub tells its caller once the REST API listens.
#[derive(Debug, Clone)]
pub struct Started {
    /// The REST API's actual address (port 0 in the config picks one).
    pub api: std::net::SocketAddr,
    pub key_id: String,
}

/// Runs the hub until `cancel` fires.
pub async fn serve(cfg: Config, cancel: CancellationToken) -> Result<(), ServeError> {
    serve_with(cfg, cancel, None).await
}

/// [`serve`] for callers that run the hub in-process (`cloudcore demo`):
/// with `started`, the hub prints nothing and sends its address there instead.
pub async fn serve_with(
    cfg: Config,
    cancel: CancellationToken,
    started: Option<tokio::sync::oneshot::Sender<Started>>,
) -> Result<(), ServeError> {
    let announce = started.is_none();
    let data = cfg.data_dir.clone();
    // Secrets and password hashes live here: owner-only.
    edgefleet_daemon::files::create_private_dir(&data).map_err(|source| {
        ServeError::Store(StoreError::Io {
            path: data.display().to_string(),
            source,
        })
    })?;
    // One hub per data directory (one signing key, one revision sequence),
    // held until this function returns.
    let _lock = edgefleet_daemon::lock::DirLock::acquire(&data)?;
    let store = Store::open(&data).map_err(|e| damaged(&cfg, e))?;
    let epoch = store.epoch()?;
    let (hub_keys, created) = keys::HubKeys::load(&data, &store)?;
    if created {
        tracing::info!(key_id = %hub_keys.public().kid(), "created the hub signing key");
    }
    let hub_keys = Arc::new(hub_keys);
    let operator_token =
        keys::load_or_create_token(&data, "operator-token", &cfg.auth.operator_token)?;
    let bootstrap_token =
        keys::load_or_create_token(&data, "bootstrap-token", &cfg.auth.bootstrap_token)?;
    let registry = Registry::load(&store)?;
    let metrics = Arc::new(Metrics::new());
    if cfg.unchecked_limits != Default::default() {
        tracing::warn!(
            unchecked = ?cfg.unchecked_limits,
            "TEST ONLY: desired-state size checks are off (CLOUDCORE_TEST_UNCHECKED_LIMITS)"
        );
    }
    let sup = Supervisor::<TaskError>::new();
    let tasks = sup.cancel_token();

    let hub_password = keys::random_token();
    let hub_subscribed = Arc::new(AtomicBool::new(false));
    if cfg.embedded_broker() {
        let creds =
            broker::Credentials::new(&hub_password, registry.clone(), hub_subscribed.clone());
        broker::start(
            cfg.broker.listen,
            cfg.broker.tls_listen.map(|listen| broker::TlsListener {
                listen,
                cert: cfg.broker.tls_cert.clone(),
                key: cfg.broker.tls_key.clone(),
            }),
            cfg.broker.max_connections,
            creds,
            metrics.clone(),
        )?;
        if announce {
            let tls = cfg
                .broker
                .tls_listen
                .map(|a| format!(" and mqtts://{a}"))
                .unwrap_or_default();
            println!(
                "cloudcore: MQTT broker (embedded) on mqtt://{}{tls}; devices are told {}",
                cfg.broker.listen,
                cfg.device_broker_url()
            );
        }
    } else if announce {
        println!("cloudcore: MQTT broker (external) at {}", cfg.broker.url);
    }

    let reserve = match cfg.store.disk_reserve_bytes {
        0 => edgefleet_daemon::disk::space(&data)
            .map_or(0, |s| edgefleet_daemon::disk::default_reserve(s.total)),
        n => n,
    };
    sup.spawn(crate::backup::schedule::run(
        cfg.backup.clone(),
        data.clone(),
        reserve,
        metrics.clone(),
        tasks.clone(),
    ));

    // Unbounded on purpose: see `mqtt::start`.
    let (ingest_tx, ingest_rx) = mpsc::unbounded_channel();
    let reconnected = Arc::new(mqtt::Reconnects::default());
    let (dropped_tx, mut dropped_rx) = mpsc::unbounded_channel::<mqtt::Dropped>();
    let session = mqtt::start(
        mqtt::options(&cfg, &hub_password)?,
        ingest_tx,
        reconnected.clone(),
        hub_subscribed,
        dropped_tx,
        &sup,
    );
    let dynsec = (cfg.broker.provision == crate::config::Provision::MosquittoDynsec).then(|| {
        let d = crate::dynsec::Dynsec::start(mqtt::options(&cfg, &hub_password)?);
        sup.spawn(crate::dynsec::set_up_until_done(
            d.clone(),
            cfg.broker.username.clone(),
            metrics.clone(),
            tasks.clone(),
        ));
        Ok::<_, ConfigError>(d)
    });
    let dynsec = dynsec.transpose()?;
    // Publishes the session had to drop: the device gets the condition.
    {
        let (store, metrics) = (store.clone(), metrics.clone());
        sup.spawn(async move {
            while let Some((device, size)) = dropped_rx.recv().await {
                metrics.desired_dropped.inc();
                let why = format!(
                    "desired state of {size} bytes could not be published (the limit is {}); \
                     dropped from the hub's MQTT queue",
                    edgefleet_protocol::limits::MAX_PAYLOAD_BYTES
                );
                let r = store
                    .run(move |s| {
                        s.transaction(|tx| {
                            crate::store::Store::set_condition(
                                tx,
                                device.as_str(),
                                crate::store::ConditionType::DesiredTooLarge,
                                &why,
                            )
                        })
                    })
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "cannot record a dropped publish");
                }
            }
        });
    }
    let (commands, commands_rx) = crate::commands::Dispatch::new();
    let logs = crate::logs::LogStreams::default();
    {
        let dispatcher = crate::commands::Dispatcher {
            store: store.clone(),
            keys: hub_keys.clone(),
            registry: registry.clone(),
            client: session.client.clone(),
            metrics: metrics.clone(),
        };
        let run = dispatcher.run(commands_rx, tasks.clone());
        sup.critical("command dispatcher", async move {
            run.await;
            Ok(())
        });
    }
    let changes = crate::ui::Changes::default();
    let ingest = ingest::run(
        store.clone(),
        registry.clone(),
        metrics.clone(),
        hub_keys.clone(),
        session.client.clone(),
        (
            ingest::Disk {
                dir: data.clone(),
                reserve,
            },
            Arc::new(ingest::Limits::new(
                &cfg.ingest,
                cfg.store.events_per_device,
            )),
            commands.clone(),
            logs.clone(),
            changes.clone(),
        ),
        ingest_rx,
    );
    sup.spawn(crate::ingest::prune_by_age(
        store.clone(),
        cfg.store.events_max_age,
        metrics.clone(),
        tasks.clone(),
    ));
    sup.critical("ingest", async move {
        ingest.await;
        Ok(())
    });
    let trigger = Trigger::default();
    sup.spawn(keys::retire_old(
        store.clone(),
        hub_keys.clone(),
        cfg.keys.rotation_grace,
        metrics.clone(),
        tasks.clone(),
    ));
    let publisher = Publisher {
        store: store.clone(),
        keys: hub_keys.clone(),
        epoch,
        client: session.client.clone(),
        metrics: metrics.clone(),
        check_limits: !cfg.unchecked_limits.publisher,
    };
    let kid = hub_keys.public().kid().clone();
    let publish = publisher.run(
        trigger.clone(),
        reconnected,
        cfg.embedded_broker(),
        tasks.clone(),
    );
    sup.critical("publisher", async move {
        publish.await;
        Ok(())
    });

    let rollout_wake = Arc::new(tokio::sync::Notify::new());
    {
        let engine = crate::rollout::run(
            store.clone(),
            metrics.clone(),
            trigger.clone(),
            rollout_wake.clone(),
            changes.clone(),
            tasks.clone(),
        );
        sup.critical("rollout engine", async move {
            engine.await;
            Ok(())
        });
    }
    let api_metrics = metrics.clone();
    let state = Arc::new(AppState {
        store,
        metrics,
        registry,
        publish: trigger,
        session,
        hub_keys,
        rotation_grace_ms: cfg.keys.rotation_grace.as_secs().saturating_mul(1000),
        operator_token,
        bootstrap_token,
        device_broker_url: cfg.device_broker_url(),
        models_dir: data.join(crate::backup::MODELS),
        releases_dir: data.join(crate::backup::RELEASES),
        sources_dir: data.join("sources"),
        sources: crate::sources::Triggers::default(),
        epoch,
        check_limits: !cfg.unchecked_limits.api,
        fleet_changes: tokio::sync::Mutex::new(()),
        rollout_wake,
        commands,
        logs,
        log_requests: std::sync::Mutex::default(),
        dynsec,
        broker_username: cfg.broker.username.clone(),
        ui: crate::ui::Ui::new(changes, cfg.api_tls()),
    });
    let listener = tokio::net::TcpListener::bind(cfg.api.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: cfg.api.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: cfg.api.listen,
        source,
    })?;
    sup.spawn(crate::sources::run(state.clone(), tasks.clone()));
    let app = api::router(state, cfg.api.max_body_bytes, cfg.api.max_model_bytes);
    let stop = tasks.clone();
    let tls = if cfg.api_tls() {
        Some(crate::tls::server_config(
            &cfg.api.tls_cert,
            &cfg.api.tls_key,
        )?)
    } else {
        None
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    sup.critical("REST API server", async move {
        let served = match tls {
            Some(config) => {
                let listener = crate::tls::TlsListener::new(listener, config, api_metrics);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            }
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            }
        };
        served.map_err(|e| {
            tracing::error!(error = %e, "REST API server failed");
            TaskError::from(e)
        })
    });
    match started {
        Some(tx) => {
            let _ = tx.send(Started {
                api: addr,
                key_id: kid.to_string(),
            });
        }
        None => {
            println!("cloudcore: REST API on {scheme}://{addr}");
            println!(
                "cloudcore: data in {} (operator token: {}, bootstrap token: {})",
                data.display(),
                data.join("operator-token").display(),
                data.join("bootstrap-token").display()
            );
            println!("cloudcore: ready (hub key id {kid})");
        }
    }

    // Until a stop, or a task the hub cannot run without ends: then every
    // task is cancelled and given GRACE to finish.
    sup.run(cancel, GRACE).await?;
    Ok(())
}
