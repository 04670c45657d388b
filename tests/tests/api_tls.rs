//! The REST API over HTTPS with a private CA: an agent enrolls over it and
//! converges, `edgectl` and `edge-agent check` verify the certificate, and
//! whoever does not trust it is refused before a token crosses the wire
//! (and counted at the hub).

use std::time::Duration;

use edgefleet_tests::agent::{Agent, install_crypto};
use edgefleet_tests::eventually;
use edgefleet_tests::hub::{ApiTls, Hub, HubOptions};
use edgefleet_tests::pki::Pki;
use edgefleet_tests::process::bin;

const T: Duration = Duration::from_secs(30);

const DEPLOYMENT: &str = "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {name: tls}\n\
spec:\n  selector: {matchLabels: {site: tls}}\n  workloads:\n    - name: config\n      \
kubernetes:\n        manifests:\n          - {apiVersion: v1, kind: ConfigMap, metadata: \
{name: tls, namespace: tls}, data: {v: \"1\"}}\n";

/// `edge-agent check` with `ca` as hub.ca_file: (exit code, the hub line).
async fn check_hub(agent: &Agent, ca: &std::path::Path) -> (Option<i32>, String) {
    agent.check_line("hub", ("EDGEFLEET_HUB_CA_FILE", ca)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_operators_reach_the_hub_over_https_with_a_private_ca() {
    install_crypto();
    let pki = Pki::new();
    let hub = Hub::start_with(HubOptions {
        api_tls: Some(ApiTls {
            cert: pki.server.cert.clone(),
            key: pki.server.key.clone(),
            ca: pki.ca.clone(),
        }),
        ..Default::default()
    })
    .await;
    assert!(hub.api_url().starts_with("https://"), "{}", hub.api_url());

    // Enrollment over HTTPS (the harness passes --hub-ca-file), then the
    // device converges on a deployment.
    let mut agent = Agent::enroll_with(&hub, &[("site", "tls")], Default::default()).await;
    let config = std::fs::read_to_string(agent.config_path()).expect("agent.toml");
    assert!(config.contains("ca_file"), "hub.ca_file kept:\n{config}");
    agent.start().await;
    hub.deploy("tls", DEPLOYMENT).await;
    eventually("the device applied its revision", T, || async {
        let (_, d) = hub.get(&format!("/devices/{}", agent.device_id)).await;
        (d["appliedRevision"].is_u64() && d["appliedRevision"] == d["desiredRevision"])
            .then_some(())
    })
    .await;

    // edge-agent check makes the handshake: fine with the hub's CA, a
    // failure naming the certificate with someone else's.
    let (code, line) = check_hub(&agent, &pki.ca).await;
    assert!(
        line.starts_with("ok") || line.contains("reachable"),
        "{line} (exit {code:?})"
    );
    let (code, line) = check_hub(&agent, &pki.other_ca).await;
    assert_ne!(code, Some(0), "{line}");
    assert!(line.to_lowercase().contains("certificate"), "{line}");

    // edgectl verifies it too.
    let (code, out, err) = hub.edgectl(&["get", "devices"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&agent.device_id), "{out}");
    let mut c = std::process::Command::new(bin("edgectl"));
    c.args(["get", "devices", "--certificate-authority"])
        .arg(&pki.other_ca)
        .env("EDGECTL_SERVER", hub.api_url())
        .env("EDGECTL_TOKEN", hub.operator_token())
        .env_remove("EDGECTL_CERTIFICATE_AUTHORITY");
    let (code, _, err) = edgefleet_tests::process::output(c);
    assert_eq!(code, 3, "an untrusted hub is unreachable: {err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // Enrolling without the CA fails before the token is sent, and says so.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("edge-agent"))
        .arg("enroll")
        .arg("--hub")
        .arg(hub.api_url())
        .arg(format!("--token={}", hub.bootstrap_token()))
        .arg("--config")
        .arg(dir.path().join("agent.toml"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env_remove("EDGEFLEET_HUB_CA_FILE")
        .output()
        .expect("run edge-agent enroll");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("certificate"), "{err}");

    // Every refused handshake is counted.
    assert!(
        hub.metric("edgefleet_hub_api_tls_failures_total").await >= 2.0,
        "{}",
        hub.metric("edgefleet_hub_api_tls_failures_total").await
    );
}

#[tokio::test]
async fn the_hub_refuses_to_start_with_half_a_tls_config() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("cloudcore"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--api-listen")
        .arg("127.0.0.1:0")
        .arg("--broker-listen")
        .arg(format!("127.0.0.1:{}", edgefleet_tests::free_port()))
        .env("CLOUDCORE_API_TLS_CERT", &pki.server.cert)
        .output()
        .expect("run cloudcore");
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("api.tls_cert and api.tls_key go together"),
        "{err}"
    );
}
