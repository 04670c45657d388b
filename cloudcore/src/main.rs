//! `cloudcore`: the hub.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cloudcore", version, about = "edgefleet hub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub.
    Serve,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::bail!("`cloudcore {:?}` is not implemented yet", cli.command)
}
