//! The `edge-agent` binary's offline commands, as a user runs them.

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edge-agent"))
}

#[test]
fn version_and_defaults() {
    let out = agent().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));

    let out = agent().args(["config", "defaults"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let parsed: edge_agent::config::Config =
        toml::from_str(&text).expect("defaults are valid TOML config");
    assert_eq!(parsed, edge_agent::config::Config::default());
}

#[test]
fn bad_config_exits_with_the_config_code() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "this is = not [valid toml").unwrap();
    let out = agent()
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(edge_agent::exit::CONFIG),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).is_empty(),
        "a bad config must say why"
    );
}

/// Tokens are URL-safe base64 and may start with `-`: clap must take them as
/// the value, not as an unknown flag (exit 2). The enroll then fails only
/// because nothing listens at the hub address.
#[test]
fn a_token_starting_with_a_dash_is_a_value() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent()
        .args(["enroll", "--hub", "http://127.0.0.1:9", "--token", "-zAb_x"])
        .arg("--config")
        .arg(dir.path().join("agent.toml"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("unexpected argument"), "{stderr}");
    assert_ne!(out.status.code(), Some(2), "{stderr}");
    assert!(!out.status.success(), "nothing listens on port 9: {stderr}");
}
