//! `edge-agent`: the device daemon. This entry point only parses the command
//! line; the daemon itself lands with the agent issue.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "edge-agent", version, about = "edgefleet device agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll this device with a hub.
    Enroll {
        #[arg(long)]
        hub: String,
        #[arg(long)]
        token: String,
    },
    /// Run the daemon.
    Run {
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
    /// Show what the local store holds.
    Status,
    /// Check reachability of hub, broker and K3s.
    Check,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::bail!("`edge-agent {:?}` is not implemented yet", cli.command)
}
