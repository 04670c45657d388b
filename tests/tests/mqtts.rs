//! `mqtts://`: the hub and an agent reach mosquitto over TLS only, trusting
//! a private CA (how mosquitto is usually deployed): desired state goes down
//! and events come up. An agent that does not trust the broker's certificate
//! never connects, says why in its log and counts the failures;
//! `edge-agent check` makes the same TLS handshake and tells the two apart.
//! The embedded broker's own TLS listener carries the same round trip, and
//! unusable certificate, key or CA files stop the hub at start.

use std::path::Path;
use std::time::Duration;

use edgefleet_tests::agent::{Agent, AgentOptions, install_crypto};
use edgefleet_tests::control_plane::Shared;
use edgefleet_tests::eventually;
use edgefleet_tests::fixtures::configmaps;
use edgefleet_tests::hub::{Hub, HubOptions};
use edgefleet_tests::mosquitto::Mosquitto;
use edgefleet_tests::pki::Pki;
use edgefleet_tests::process::{Proc, bin};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

/// `edge-agent check` for `agent` with its CA; returns (exit code, the
/// broker line).
async fn check_broker(agent: &Agent, ca: &Path) -> (Option<i32>, String) {
    agent
        .check_line("broker", ("EDGEFLEET_BROKER_CA_FILE", ca))
        .await
}

/// Enrolls and starts a device that trusts `ca`, then: a deployment's
/// ConfigMap reaches its K3s (the real control plane, in namespace `ns`),
/// the hub sees it in sync, and an event it accepts reaches the hub. `None`
/// when the control plane is not built (skipped loudly).
async fn device_round_trip(hub: &Hub, ca: &Path, ns: &str) -> Option<Agent> {
    let admin = Shared::get()?.admin().await;
    let opts = AgentOptions {
        device_id: Some("pi-tls".into()),
        kubeconfig: Some(admin.agent_kubeconfig().await),
        env: vec![("EDGEFLEET_BROKER_CA_FILE".into(), ca.display().to_string())],
        ..Default::default()
    };
    let mut agent = Agent::enroll_with(hub, &[("site", "tls")], opts).await;
    agent.start().await;
    agent.wait_uplink(true).await;

    // One ConfigMap in `ns`, for the devices labelled site=tls.
    let maps = [("tls-config", "transport", "mqtts")];
    let yaml = configmaps("over-tls", ("site", "tls"), "config", ns, &maps);
    hub.deploy("over-tls", &yaml).await;
    eventually(
        "ConfigMap applied from desired state sent over TLS",
        T,
        || async {
            admin
                .get("v1", "ConfigMap", Some(ns), "tls-config")
                .await
                .map(|_| ())
        },
    )
    .await;
    eventually("hub sees the device in sync", T, || async {
        let (_, s) = hub.get("/deployments/over-tls/status").await;
        (s["inSync"] == 1).then_some(())
    })
    .await;
    let (code, _) = agent
        .post_events(&json!({"id": "tls-1", "kind": "app.telemetry", "payload": {"ok": true}}))
        .await;
    assert_eq!(code, 202);
    eventually("event at the hub", T, || async {
        hub.event_ids("pi-tls")
            .await
            .contains(&"tls-1".to_owned())
            .then_some(())
    })
    .await;
    Some(agent)
}

/// The embedded broker with a TLS listener: devices are told its
/// `mqtts://` URL at enrollment and connect through it with their own
/// credentials (the plain listener stays on loopback for the hub), even
/// while another client sits on the listener without ever starting TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_reach_the_embedded_broker_over_tls() {
    install_crypto();
    let pki = Pki::new();
    let port = edgefleet_tests::free_port();
    let hub = Hub::start_with(HubOptions {
        env: vec![
            (
                "CLOUDCORE_BROKER_TLS_LISTEN".into(),
                format!("127.0.0.1:{port}"),
            ),
            (
                "CLOUDCORE_BROKER_TLS_CERT".into(),
                pki.server.cert.display().to_string(),
            ),
            (
                "CLOUDCORE_BROKER_TLS_KEY".into(),
                pki.server.key.display().to_string(),
            ),
            (
                "CLOUDCORE_BROKER_ADVERTISE_URL".into(),
                format!("mqtts://localhost:{port}"),
            ),
        ],
        ..Default::default()
    })
    .await;
    // A client that opens TCP and never starts TLS must not hold up anyone
    // else's handshake.
    let _silent = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the TLS listener");
    let Some(mut agent) = device_round_trip(&hub, &pki.ca, "tls-embedded").await else {
        return;
    };
    let config = std::fs::read_to_string(agent.config_path()).expect("agent config");
    assert!(
        config.contains(&format!("mqtts://localhost:{port}")),
        "enrollment told the device the TLS listener:\n{config}"
    );
    let (_, line) = check_broker(&agent, &pki.ca).await;
    assert!(line.starts_with("PASS") && line.contains("TLS"), "{line}");
    agent.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_and_agent_over_mqtts_with_a_private_ca() {
    install_crypto();
    let pki = Pki::new();
    let Some(broker) = Mosquitto::start_tls(&pki.server).await else {
        return;
    };
    let ca = pki.ca.display().to_string();
    // Ready only once its session to the broker is up, over TLS.
    let hub = Hub::start_with(HubOptions {
        external_broker: Some(broker.url()),
        env: vec![("CLOUDCORE_BROKER_CA_FILE".into(), ca)],
        ..Default::default()
    })
    .await;
    let Some(mut agent) = device_round_trip(&hub, &pki.ca, "tls-mosquitto").await else {
        return;
    };

    // A device told to trust another CA: no connection, a log line that
    // says why, failures counted; it keeps trying (and its outbox keeps
    // what it accepted).
    let mut stranger = Agent::enroll_with(
        &hub,
        &[("site", "elsewhere")],
        AgentOptions {
            device_id: Some("pi-wrong-ca".into()),
            env: vec![(
                "EDGEFLEET_BROKER_CA_FILE".into(),
                pki.other_ca.display().to_string(),
            )],
            ..Default::default()
        },
    )
    .await;
    let (_, good) = check_broker(&agent, &pki.ca).await;
    assert!(
        good.starts_with("PASS") && good.contains("certificate trusted"),
        "{good}"
    );
    let (code, bad) = check_broker(&stranger, &pki.other_ca).await;
    assert!(
        bad.starts_with("FAIL") && bad.contains("TLS handshake failed"),
        "{bad}"
    );
    assert_ne!(code, Some(0), "a failed check exits non-zero");
    stranger.start().await;
    let line = stranger
        .proc
        .wait_for_line("cannot connect to the broker", T)
        .await;
    assert!(
        line.contains("ertificate") || line.contains("UnknownIssuer"),
        "the log line names the certificate problem: {line}"
    );
    eventually("failed connects counted", T, || async {
        (stranger
            .metric("edgefleet_agent_mqtt_disconnects_total")
            .await
            >= 2.0)
            .then_some(())
    })
    .await;
    assert_eq!(stranger.metric("edgefleet_agent_mqtt_connected").await, 0.0);
    let (code, _) = stranger
        .post_events(&json!({"id": "kept-1", "kind": "app.telemetry", "payload": {}}))
        .await;
    assert_eq!(
        code, 202,
        "offline from the broker, events are still accepted"
    );
    stranger.kill().await;
    agent.kill().await;
}

/// Missing or non-PEM TLS files stop the hub at start (exit 78) with the
/// setting and the file named, for an external broker's CA and for the
/// embedded broker's TLS listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_refuses_to_start_with_unusable_tls_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate\n").expect("write");
    let missing = dir.path().join("missing.pem").display().to_string();
    let not_pem = not_pem.display().to_string();
    let listener = |cert: &str| {
        vec![
            ("CLOUDCORE_BROKER_TLS_LISTEN", "127.0.0.1:0".to_owned()),
            ("CLOUDCORE_BROKER_TLS_CERT", cert.to_owned()),
            ("CLOUDCORE_BROKER_TLS_KEY", not_pem.clone()),
        ]
    };
    let external = Some("mqtts://localhost:8883");
    let cases = [
        (
            external,
            vec![("CLOUDCORE_BROKER_CA_FILE", missing.clone())],
            "broker.ca_file",
            "cannot read it",
        ),
        (
            external,
            vec![("CLOUDCORE_BROKER_CA_FILE", not_pem.clone())],
            "broker.ca_file",
            "no PEM CERTIFICATE",
        ),
        (
            None,
            listener(&missing),
            "broker.tls_cert",
            "cannot read it",
        ),
        (
            None,
            listener(&not_pem),
            "broker.tls_cert",
            "no PEM CERTIFICATE",
        ),
    ];
    for (broker_url, env, setting, says) in cases {
        let mut cmd = tokio::process::Command::new(bin("cloudcore"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--api-listen")
            .arg("127.0.0.1:0")
            .arg("--broker-listen")
            .arg("127.0.0.1:0")
            .envs(env);
        if let Some(url) = broker_url {
            cmd.arg("--broker-url").arg(url);
        }
        let mut proc = Proc::spawn("cloudcore", cmd);
        let code = proc.wait(T).await;
        let line = proc.wait_for_line(setting, T).await;
        assert!(line.contains(says), "{line}");
        assert_eq!(
            code,
            Some(78),
            "config errors exit 78 (EX_CONFIG): {:?}",
            proc.output()
        );
    }
}
