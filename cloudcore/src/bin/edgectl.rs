//! `edgectl`: the operator CLI. See `cloudcore::ctl`.

use clap::Parser;

fn main() {
    let cli = cloudcore::ctl::Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgectl: cannot start: {e}");
            std::process::exit(1);
        }
    };
    if let Err(f) = rt.block_on(cloudcore::ctl::run(cli)) {
        eprintln!("{}", f.message);
        std::process::exit(f.code);
    }
}
