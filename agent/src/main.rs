//! `edge-agent`: command line, logging, runtime and exit codes. Everything
//! else lives in the library.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use edge_agent::cli::{check, enroll, rotate, status};
use edge_agent::config::{Config, DEFAULT_CONFIG_PATH, Overrides};
use edge_agent::db::Db;
use edge_agent::exit;
use edgefleet_protocol::DeviceId;

#[derive(Debug, Parser)]
#[command(name = "edge-agent", version, about = "edgefleet device agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Config file.
    #[arg(long, env = "EDGEFLEET_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// State directory (store, keys, model cache); overrides the config.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll this device with a hub: creates the device key, writes the
    /// config and pins the hub key. Safe to run again.
    Enroll {
        #[command(flatten)]
        common: Common,
        /// Hub REST URL, e.g. https://hub.example:8080.
        #[arg(long)]
        hub: String,
        /// CA bundle (PEM) the hub's HTTPS certificate chains to, kept in
        /// the config as hub.ca_file (default: the system's roots).
        #[arg(long, env = "EDGEFLEET_HUB_CA_FILE")]
        hub_ca_file: Option<PathBuf>,
        /// Bootstrap token from the hub (URL-safe base64: may start with `-`).
        #[arg(
            long,
            env = "EDGEFLEET_TOKEN",
            hide_env_values = true,
            allow_hyphen_values = true
        )]
        token: String,
        /// Device label, k=v (repeatable).
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// Requested device id (default: derived by the hub).
        #[arg(long)]
        device_id: Option<DeviceId>,
    },
    /// Replace this device's key without enrolling again: the hub accepts
    /// the new key on a request signed by the old one, and a running agent
    /// switches to it. Safe to run again if interrupted.
    RotateKey {
        #[command(flatten)]
        common: Common,
    },
    /// Run the daemon.
    Run {
        #[command(flatten)]
        common: Common,
        /// Local HTTP port on 127.0.0.1 (0: any free port).
        #[arg(long)]
        http_port: Option<u16>,
        /// Kubeconfig of the device's K3s.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Run the daemon under the update supervisor (what the systemd unit
    /// starts): the agent runs from the current release, a new release is
    /// on trial until it commits, and one that does not is reverted.
    Supervise {
        #[command(flatten)]
        common: Common,
        /// Seconds a release on trial has to open its store, connect and
        /// have a status report acknowledged.
        #[arg(long, env = "EDGEFLEET_UPDATE_COMMIT_TIMEOUT", default_value_t = 30)]
        commit_timeout: u64,
        /// Passed to `edge-agent run` (after `--`).
        #[arg(last = true)]
        run_args: Vec<std::ffi::OsString>,
    },
    /// Show what the local store says (works while the daemon runs).
    Status {
        #[command(flatten)]
        common: Common,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check config, keys, hub, broker, K3s, clock and disk.
    Check {
        #[command(flatten)]
        common: Common,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the default configuration as TOML.
    Defaults,
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Log filter from `EDGEFLEET_LOG`, else `RUST_LOG`, else `default`; each is
/// a `target=level,...` list (e.g. `info`, `warn,edge_agent=debug`). A value
/// that is empty or does not parse (said on stderr) falls through to the next.
/// `filter::Targets` rather than `EnvFilter`: no span/field directives, but
/// no `env-filter` feature (regex matchers) in the Pi binary either
/// (BENCHMARKS.md agent-binary-size).
fn log_filter(
    default: &str,
    var: &dyn Fn(&str) -> Option<String>,
) -> tracing_subscriber::filter::Targets {
    ["EDGEFLEET_LOG", "RUST_LOG"]
        .iter()
        .filter_map(|name| Some((*name, var(name)?)))
        .filter(|(_, value)| !value.trim().is_empty())
        .find_map(|(name, value)| match value.parse() {
            Ok(f) => Some(f),
            Err(e) => {
                // Logging is not up yet: say it on stderr, where logs go.
                eprintln!("edge-agent: ignoring {name}={value:?}: {e}");
                None
            }
        })
        .or_else(|| default.parse().ok())
        .unwrap_or_default()
}

fn init_logging(default: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false),
        )
        .with(edge_agent::worklog::Layer)
        .with(log_filter(default, &env_var))
        .init();
}

fn load(common: &Common, must_exist: bool, extra: Overrides) -> Result<Config, i32> {
    let flags = Overrides {
        state_dir: common.state_dir.clone().or(extra.state_dir),
        ..extra
    };
    Config::load(&common.config, must_exist, &env_var, &flags).map_err(|e| {
        eprintln!("edge-agent: {}", edge_agent::error_chain(&e));
        exit::CONFIG
    })
}

fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, i32> {
    // Two workers and a small blocking pool keep the idle footprint small.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(4)
        .thread_stack_size(512 * 1024)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("edge-agent: cannot start the async runtime: {e}");
            exit::FAILURE
        })
}

fn main() {
    // reqwest, kube and rumqttc share rustls with ring as the provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Config {
            command: ConfigCommand::Defaults,
        } => {
            print!("{}", Config::default().to_toml());
            exit::OK
        }
        Command::Enroll {
            common,
            hub,
            hub_ca_file,
            token,
            labels,
            device_id,
        } => {
            init_logging("warn");
            let args = enroll::EnrollArgs {
                hub,
                hub_ca_file,
                token,
                labels,
                device_id,
                config_path: common.config.clone(),
            };
            cmd_enroll(&common, args).unwrap_or_else(|c| c)
        }
        Command::Run {
            common,
            http_port,
            kubeconfig,
        } => {
            init_logging("info");
            cmd_run(
                &common,
                Overrides {
                    http_port,
                    kubeconfig,
                    ..Default::default()
                },
            )
            .unwrap_or_else(|c| c)
        }
        Command::Supervise {
            common,
            commit_timeout,
            run_args,
        } => {
            init_logging("info");
            cmd_supervise(&common, commit_timeout, run_args).unwrap_or_else(|c| c)
        }
        Command::RotateKey { common } => {
            init_logging("warn");
            cmd_rotate(&common).unwrap_or_else(|c| c)
        }
        Command::Status { common, json } => {
            init_logging("warn");
            cmd_status(&common, json).unwrap_or_else(|c| c)
        }
        Command::Check { common } => {
            init_logging("error");
            cmd_check(&common).unwrap_or_else(|c| c)
        }
    };
    std::process::exit(code);
}

fn cmd_supervise(
    common: &Common,
    commit_timeout: u64,
    run_args: Vec<std::ffi::OsString>,
) -> Result<i32, i32> {
    let cfg = load(common, true, Overrides::default())?;
    let packaged = edge_agent::update::supervise::packaged_binary().map_err(|e| {
        eprintln!("edge-agent: cannot find this binary: {e}");
        exit::FAILURE
    })?;
    let mut args: Vec<std::ffi::OsString> = vec!["--config".into(), common.config.clone().into()];
    if let Some(dir) = &common.state_dir {
        args.extend(["--state-dir".into(), dir.clone().into()]);
    }
    args.extend(run_args);
    Ok(edge_agent::update::supervise::Supervise {
        layout: edge_agent::update::Layout::new(&cfg.state_dir),
        packaged,
        args,
        commit_timeout: std::time::Duration::from_secs(commit_timeout.max(1)),
    }
    .run())
}

fn cmd_enroll(common: &Common, args: enroll::EnrollArgs) -> Result<i32, i32> {
    let cfg = load(common, false, Overrides::default())?;
    let rt = runtime(1)?;
    match rt.block_on(enroll::enroll(cfg, args)) {
        Ok(enroll::Enrolled {
            response: resp,
            state_owner,
        }) => {
            println!(
                "enrolled as {} (broker {}); config written to {}",
                resp.device_id,
                resp.broker.url,
                common.config.display()
            );
            if let Some(owner) = state_owner {
                println!("state owned by {owner}, the owner of its directory");
            }
            Ok(exit::OK)
        }
        Err(e) => {
            eprintln!("edge-agent enroll: {}", edge_agent::error_chain(&e));
            Err(e.exit_code())
        }
    }
}

fn cmd_rotate(common: &Common) -> Result<i32, i32> {
    let cfg = load(common, true, Overrides::default())?;
    let rt = runtime(1)?;
    match rt.block_on(rotate::rotate_key(&cfg)) {
        Ok(r) => {
            println!(
                "device key {} replaced by {}; the hub accepts the old key until {} (Unix ms)",
                r.previous, r.answer.key_id, r.answer.previous_key_valid_until_ms
            );
            match r.reloaded {
                Some(pid) => println!("the running agent (pid {pid}) signs with the new key now"),
                None => println!("the agent uses the new key from its next start"),
            }
            Ok(exit::OK)
        }
        Err(e) => {
            eprintln!("edge-agent rotate-key: {}", edge_agent::error_chain(&e));
            Err(e.exit_code())
        }
    }
}

fn cmd_run(common: &Common, extra: Overrides) -> Result<i32, i32> {
    if !edge_agent::update::die_with_supervisor() {
        eprintln!("edge-agent: the supervisor that started this agent is gone");
        return Err(exit::UNAVAILABLE);
    }
    let cfg = load(common, true, extra)?;
    let fail_config = |msg: String| {
        tracing::error!("{msg}");
        eprintln!("edge-agent: {msg}");
        exit::CONFIG
    };
    cfg.require_enrolled()
        .map_err(|e| fail_config(edge_agent::error_chain(&e)))?;
    let device = DeviceId::new(cfg.device_id.as_str())
        .map_err(|e| fail_config(format!("device_id: {e}")))?;
    let identity = edge_agent::identity::Identity::load(&cfg.state_dir)
        .map_err(|e| fail_config(format!("not enrolled: {}", edge_agent::error_chain(&e))))?;
    // One daemon per state directory, held until exit.
    let _lock = edgefleet_daemon::lock::DirLock::acquire(&cfg.state_dir).map_err(|e| {
        let msg = edge_agent::error_chain(&e);
        tracing::error!("{msg}");
        eprintln!("edge-agent: {msg}");
        match e {
            edgefleet_daemon::lock::LockError::Held { .. } => exit::CONFIG,
            edgefleet_daemon::lock::LockError::Io { .. } => exit::STORE,
        }
    })?;
    let disk = edge_agent::disk::DiskGuard::new(&cfg.state_dir, cfg.store.disk_reserve_bytes);
    if disk.admit(0).is_err() && disk.release_spare() {
        // A full disk must not stop the store from opening (WAL recovery,
        // the shared-memory index): the daemon makes the spare again later.
        tracing::warn!("started on a full disk: released the spare space");
    }
    let (mut store, report) = edge_agent::store::Store::open(&cfg.db_path(), cfg.store.synchronous)
        .map_err(|e| {
            let msg = edge_agent::error_chain(&e);
            tracing::error!("cannot open the store: {msg}");
            eprintln!("edge-agent: cannot open the store: {msg}");
            exit::STORE
        })?;
    if let Err(e) = store.size_wal(disk.wal_pages()) {
        tracing::warn!(error = %edge_agent::error_chain(&e), "cannot size the WAL for this disk");
    }
    let room = disk
        .space()
        .map_or(0, |s| s.available.saturating_sub(disk.reserve()));
    match store.enable_compaction(room) {
        Ok(true) => tracing::info!("store rewritten once to give freed space back to the disk"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %edge_agent::error_chain(&e), "cannot rewrite the store"),
    }
    let shared = Arc::new(edge_agent::shared::Shared::new(
        cfg,
        device,
        identity,
        Db::new(store),
        disk,
    ));
    if report.moved_aside.is_some() {
        shared.metrics.store_recovered.inc();
    }
    let (depth, dropped) = shared
        .db
        .call_sync(|s| (s.outbox_depth(), s.outbox_dropped()));
    shared.metrics.set_outbox(depth);
    shared.metrics.outbox_dropped.inc_by(dropped.unwrap_or(0));
    let rt = runtime(2)?;
    match rt.block_on(edge_agent::daemon::run(shared.clone())) {
        Ok(())
            if shared
                .update_staged
                .load(std::sync::atomic::Ordering::Relaxed) =>
        {
            Ok(edge_agent::update::EXIT_UPDATE)
        }
        Ok(()) => Ok(exit::OK),
        Err(e) => {
            let msg = edge_agent::error_chain(&e);
            tracing::error!("{msg}");
            Err(match e {
                edge_agent::daemon::DaemonError::Http(_) => exit::UNAVAILABLE,
                edge_agent::daemon::DaemonError::Session(_) => exit::CONFIG,
                _ => exit::FAILURE,
            })
        }
    }
}

fn cmd_status(common: &Common, json: bool) -> Result<i32, i32> {
    let cfg = load(common, false, Overrides::default())?;
    match status::snapshot(&cfg) {
        Ok(s) => {
            if json {
                println!("{}", s.to_json());
            } else {
                print!("{}", s.to_text());
            }
            Ok(exit::OK)
        }
        Err(e) => {
            eprintln!(
                "edge-agent status: cannot read {}: {}",
                cfg.db_path().display(),
                edge_agent::error_chain(&e)
            );
            Err(exit::STORE)
        }
    }
}

fn cmd_check(common: &Common) -> Result<i32, i32> {
    let cfg = Config::load(
        &common.config,
        true,
        &env_var,
        &Overrides {
            state_dir: common.state_dir.clone(),
            ..Default::default()
        },
    )
    .map_err(|e| edge_agent::error_chain(&e));
    let rt = runtime(1)?;
    let lines = rt.block_on(check::run(&common.config, cfg));
    for l in &lines {
        println!("{l}");
    }
    let failed = lines
        .iter()
        .filter(|l| l.verdict == check::Verdict::Fail)
        .count();
    if failed > 0 {
        println!("{failed} check(s) failed");
        Ok(exit::FAILURE)
    } else {
        println!("all checks passed");
        Ok(exit::OK)
    }
}

#[cfg(test)]
mod tests {
    use super::log_filter;
    use tracing::Level;

    fn filter(default: &str, vars: &[(&str, &str)]) -> tracing_subscriber::filter::Targets {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        log_filter(default, &move |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn log_filter_prefers_edgefleet_log_then_rust_log_then_default() {
        let f = filter("warn", &[]);
        assert!(f.would_enable("edge_agent::sync", &Level::WARN));
        assert!(!f.would_enable("edge_agent::sync", &Level::INFO));

        let f = filter(
            "warn",
            &[
                ("RUST_LOG", "info"),
                ("EDGEFLEET_LOG", "error,edge_agent=debug"),
            ],
        );
        assert!(f.would_enable("edge_agent::sync", &Level::DEBUG));
        assert!(!f.would_enable("kube_client", &Level::WARN));
        assert!(f.would_enable("kube_client", &Level::ERROR));

        let f = filter("warn", &[("RUST_LOG", "info")]);
        assert!(f.would_enable("rumqttc", &Level::INFO));
        assert!(!f.would_enable("rumqttc", &Level::DEBUG));
    }

    #[test]
    fn log_filter_skips_empty_and_unparsable_values() {
        let f = filter(
            "info",
            &[("EDGEFLEET_LOG", " "), ("RUST_LOG", "edge_agent=loud")],
        );
        assert!(f.would_enable("edge_agent", &Level::INFO));
        assert!(!f.would_enable("edge_agent", &Level::DEBUG));
    }
}
