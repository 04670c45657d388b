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
        } => {
            print!("{}", Config::defaults_toml());
            0
        }
        Command::Serve(args) => serve(args),
        Command::Demo(args) => demo(args),
    };
    std::process::exit(code);
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
    let cfg = match Config::load(
        args.config.as_deref(),
        |k| std::env::var(k).ok(),
        &overrides,
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cloudcore: bad configuration: {}", error_chain(&e));
            return exit::CONFIG;
        }
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
                e.exit_code()
            }
        }
    })
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
