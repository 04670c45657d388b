//! `edgectl`: the operator CLI over the hub's REST API.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "edgectl", version, about = "edgefleet operator CLI")]
struct Cli {}

fn main() {
    let _ = Cli::parse();
}
