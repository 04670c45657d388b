//! Runs the Kubernetes API stand-in by hand, for poking at it with kubectl or
//! running `edge-agent` against it: prints the URL and the kubeconfig path,
//! serves until Ctrl-C. A test fixture; never shipped.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let standin = edgefleet_tests::kube_standin::KubeStandIn::start().await;
    println!("Kubernetes API stand-in at {}", standin.url());
    println!("KUBECONFIG={}", standin.kubeconfig_path().display());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
