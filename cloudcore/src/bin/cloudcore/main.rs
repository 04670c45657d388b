//! `cloudcore`: the edgefleet hub. This file owns the command line and the
//! process's signals; the hub is the library, `cloudcore demo` is [`demo`]
//! (binary-only: the library does not carry it).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod demo;
use cloudcore::config::{Config, Overrides};
use cloudcore::{error_chain, exit};
use tokio_util::sync::CancellationToken;

/// jemalloc, not glibc's malloc: under a 1,000-device churn soak the hub's
/// RSS kept creeping with glibc (~1 MiB/min after 20 minutes; freed memory
/// stays fragmented in the per-thread arenas of the broker and runtime
/// threads) and levels off with jemalloc, which returns freed pages
/// (BENCHMARKS.md, soak).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "cloudcore",
    version,
    about = "edgefleet hub: desired-state sync for fleets of edge devices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub: embedded MQTT broker (unless broker.url is set), REST API, store.
    Serve(ServeArgs),
    /// Quick start: hub, a simulated device and sensor, live status; Ctrl-C stops.
    #[command(long_about = demo::ABOUT)]
    Demo(DemoArgs),
    /// Write a backup archive of the hub's data while it runs (an online
    /// snapshot of the store, the key and token files, the model blobs).
    Backup(BackupArgs),
    /// Restore a backup archive into a data directory (a new machine, or
    /// over a damaged store with --force). Devices need no re-enrollment.
    Restore(RestoreArgs),
    /// Signing-key operations on a running hub.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print the REST API's OpenAPI document (JSON), as a running hub
    /// serves it at /api/v1/openapi.json.
    Openapi,
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML config file (see `cloudcore config defaults`).
    #[arg(long, env = "CLOUDCORE_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (store, keys, tokens, model blobs).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// REST API listen address.
    #[arg(long)]
    api_listen: Option<SocketAddr>,
    /// Embedded broker listen address.
    #[arg(long)]
    broker_listen: Option<SocketAddr>,
    /// Use this external broker (mqtt://host:port or mqtts://…) instead of the embedded one.
    #[arg(long)]
    broker_url: Option<String>,
}

#[derive(Debug, clap::Args)]
struct BackupArgs {
    /// The archive to write (mode 0600: it holds the hub's signing key).
    #[arg(long)]
    to: PathBuf,
    /// TOML config file (for data_dir).
    #[arg(long, env = "CLOUDCORE_CONFIG")]
    config: Option<PathBuf>,
    /// The hub's data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Record the models' hashes instead of their blobs.
    #[arg(long)]
    without_models: bool,
}

#[derive(Debug, clap::Args)]
struct RestoreArgs {
    /// The archive `cloudcore backup` wrote.
    #[arg(long)]
    from: PathBuf,
    /// The data directory to restore into (must be empty, or --force).
    #[arg(long)]
    data_dir: PathBuf,
    /// Replace what the data directory holds (moved aside, not deleted).
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Working directory (hub data, agent state, logs); wiped at start if a
    /// previous demo made it.
    #[arg(long, default_value = "cloudcore-demo")]
    dir: PathBuf,
    /// Simulated sensor readings per second.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100))]
    readings_per_sec: u32,
    /// Where the Kubernetes workload goes: a found kubeconfig's cluster or
    /// the local control plane if built (auto), the local control plane,
    /// built first if needed (local), or nowhere (off).
    #[arg(long, value_enum, default_value_t = demo::KubeMode::Auto)]
    kube: demo::KubeMode,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Replace the hub's signing key. The new key is announced to devices
    /// in a message signed by the old one; they verify it and pin the new
    /// key, those offline when they return. The old key is retired once
    /// every device reports the new one, or after keys.rotation_grace.
    Rotate(RotateArgs),
}

#[derive(Debug, clap::Args)]
struct RotateArgs {
    /// TOML config file (for data_dir, api.listen and the operator token).
    #[arg(long, env = "CLOUDCORE_CONFIG")]
    config: Option<PathBuf>,
    /// The hub's data directory (its operator-token file).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The hub's REST API (default: from api.listen, https when TLS is configured).
    #[arg(long)]
    server: Option<String>,
    /// PEM CA bundle the hub's certificate must chain to (an https hub).
    #[arg(long)]
    certificate_authority: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the default configuration as TOML.
    Defaults,
}

/// `CLOUDCORE_LOG`, or info without rumqttd's per-connection noise.
fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("CLOUDCORE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn"))
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .inspect_err(|e| eprintln!("cloudcore: cannot start the runtime: {e}"))
        .ok()
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// SIGINT/SIGTERM cancel the token; `None` (after saying why) when the
/// handlers cannot be installed.
fn stop_on_signals() -> Option<CancellationToken> {
    let cancel = CancellationToken::new();
    match edgefleet_daemon::signal::cancel_on_stop(cancel.clone()) {
        Ok(()) => Some(cancel),
        Err(e) => {
            eprintln!("cloudcore: cannot install signal handlers: {e}");
            None
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Config {
            command: ConfigCommand::Defaults,
        } => print_document(&Config::defaults_toml()),
        Command::Openapi => match cloudcore::api::document().to_pretty_json() {
            Ok(json) => print_document(&(json + "\n")),
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILURE
            }
        },
        Command::Serve(args) => serve(args),
        Command::Backup(args) => backup(args),
        Command::Keys {
            command: KeysCommand::Rotate(args),
        } => rotate_key(args),
        Command::Restore(args) => restore(args),
        Command::Demo(args) => demo(args),
    };
    std::process::exit(code);
}

/// Writes a document the user asked for to stdout. A reader that stops
/// early (`| head`) is not an error; print! would panic on it.
fn print_document(text: &str) -> i32 {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            exit::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> i32 {
    init_logging();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let overrides = Overrides {
        data_dir: args.data_dir,
        api_listen: args.api_listen,
        broker_listen: args.broker_listen,
        broker_url: args.broker_url,
    };
    let cfg = match load_config("cloudcore", args.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(rt) = runtime() else {
        return exit::FAILURE;
    };
    rt.block_on(async {
        let Some(cancel) = stop_on_signals() else {
            return exit::FAILURE;
        };
        match cloudcore::serve::serve(cfg, cancel).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("cloudcore: {}", error_chain(&e));
                if let Some(hint) = e.hint() {
                    eprintln!("cloudcore: {hint}");
                }
                e.exit_code()
            }
        }
    })
}

/// The configuration from `file`, the environment and `overrides`; on an
/// error, says why (as `who`) and gives the exit code.
fn load_config(
    who: &str,
    file: Option<&std::path::Path>,
    overrides: &Overrides,
) -> Result<Config, i32> {
    Config::load(file, |k| std::env::var(k).ok(), overrides).map_err(|e| {
        eprintln!("{who}: bad configuration: {}", error_chain(&e));
        exit::CONFIG
    })
}

fn backup(args: BackupArgs) -> i32 {
    let overrides = Overrides {
        data_dir: args.data_dir,
        ..Default::default()
    };
    let cfg = match load_config("cloudcore backup", args.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let opts = cloudcore::backup::Options {
        without_models: args.without_models,
    };
    let started = std::time::Instant::now();
    match cloudcore::backup::create(&cfg.data_dir, &args.to, opts) {
        Ok(m) => {
            let size = std::fs::metadata(&args.to).map_or(0, |f| f.len());
            println!(
                "cloudcore backup: wrote {} ({}) in {} ms",
                args.to.display(),
                edgefleet_daemon::disk::human(size),
                started.elapsed().as_millis()
            );
            print_manifest(&m);
            0
        }
        Err(e) => {
            eprintln!("cloudcore backup: {}", error_chain(&e));
            exit::FAILURE
        }
    }
}

fn rotate_key(args: RotateArgs) -> i32 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let overrides = Overrides {
        data_dir: args.data_dir,
        ..Default::default()
    };
    let cfg = match load_config("cloudcore keys rotate", args.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let server = args.server.unwrap_or_else(|| {
        let mut addr = cfg.api.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let scheme = if cfg.api_tls() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    });
    let token = if cfg.auth.operator_token.is_empty() {
        let path = cfg.data_dir.join("operator-token");
        match edgefleet_daemon::files::read_secret(&path) {
            Ok(Some(t)) => t.to_string(),
            Ok(None) => {
                eprintln!(
                    "cloudcore keys rotate: no operator token at {} (is this the hub's data directory? --data-dir)",
                    path.display()
                );
                return exit::CONFIG;
            }
            Err(e) => {
                eprintln!("cloudcore keys rotate: {}", error_chain(&e));
                return exit::CONFIG;
            }
        }
    } else {
        cfg.auth.operator_token.clone()
    };
    let client = match edgefleet_api::Client::trusting(
        &server,
        Some(token),
        args.certificate_authority.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cloudcore keys rotate: {}", error_chain(&e));
            return exit::CONFIG;
        }
    };
    let Some(rt) = runtime() else {
        return exit::FAILURE;
    };
    match rt.block_on(client.rotate_hub_key()) {
        Ok(r) => {
            println!(
                "cloudcore keys rotate: hub key {} replaced by {}; every device's desired state is being re-issued",
                r.previous_key_id, r.key_id
            );
            println!("  public key {}", r.public_key);
            0
        }
        Err(e) => {
            eprintln!("cloudcore keys rotate: {} ({server})", error_chain(&e));
            exit::UNAVAILABLE
        }
    }
}

fn print_manifest(m: &cloudcore::backup::Manifest) {
    let c = &m.counts;
    println!(
        "  hub key {}, epoch {}, schema {}\n  {} devices, {} deployments ({} generations), \
         {} desired documents, {} events, {} models ({} blobs left out)",
        m.hub_key_id,
        m.hub_epoch,
        m.schema_version,
        c.devices,
        c.deployments,
        c.generations,
        c.desired_documents,
        c.events,
        c.models,
        m.models_left_out.len()
    );
}

fn restore(args: RestoreArgs) -> i32 {
    match cloudcore::backup::restore::restore(&args.from, &args.data_dir, args.force) {
        Ok(r) => {
            println!(
                "cloudcore restore: restored {} into {} (backup taken {})",
                args.from.display(),
                args.data_dir.display(),
                cloudcore::backup::schedule::utc_text(r.manifest.created_at_ms)
            );
            print_manifest(&r.manifest);
            if let Some(aside) = &r.moved_aside {
                println!(
                    "  the directory's previous contents are in {}",
                    aside.display()
                );
            }
            println!(
                "  new hub epoch {}: every device gets its desired state again in it, \
                 newer than anything it holds",
                r.epoch
            );
            for m in &r.manifest.models_left_out {
                println!(
                    "  model {} ({}) was left out of the backup: upload it again",
                    m.name, m.sha256
                );
            }
            println!(
                "  start the hub with: cloudcore serve --data-dir {}",
                args.data_dir.display()
            );
            0
        }
        Err(e) => {
            eprintln!("cloudcore restore: {}", error_chain(&e));
            match e {
                cloudcore::backup::restore::RestoreError::NotEmpty(_)
                | cloudcore::backup::restore::RestoreError::Lock(_) => exit::CONFIG,
                _ => exit::FAILURE,
            }
        }
    }
}

fn demo(args: DemoArgs) -> i32 {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = match demo::prepare_dir(&args.dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cloudcore demo: {}", error_chain(&e));
            return exit::FAILURE;
        }
    };
    // The hub logs to a file: the terminal belongs to the demo's own view.
    let log = dir.join("hub.log");
    match std::fs::File::create(&log) {
        Ok(f) => {
            tracing_subscriber::fmt()
                .with_env_filter(log_filter())
                .with_writer(std::sync::Mutex::new(f))
                .with_ansi(false)
                .init();
        }
        Err(e) => eprintln!("cloudcore demo: no hub log ({}: {e})", log.display()),
    }
    let Some(rt) = runtime() else {
        return exit::FAILURE;
    };
    let opts = demo::DemoOptions {
        dir,
        readings_per_sec: args.readings_per_sec,
        kube: args.kube,
    };
    let code = rt.block_on(async {
        let Some(cancel) = stop_on_signals() else {
            return exit::FAILURE;
        };
        match demo::run(opts, cancel).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("cloudcore demo: {}", error_chain(&e));
                exit::FAILURE
            }
        }
    });
    // Blocking store calls finish fast; don't let a stuck one delay the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}
