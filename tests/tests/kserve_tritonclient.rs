//! The agent's KServe v2 endpoint through tritonclient[http], a client we
//! did not write (tests/kserve/tritonclient_check.py), with onnxruntime as
//! the reference: the real hub and `edge-agent`, models pushed and deployed
//! as inference workloads that serve only HTTP (no upstream, no topic).
//!
//! Checked: metadata (`-1` for a dynamic batch), readiness and versions;
//! batch 1 and batch 4 JSON and binary requests on digits, vibration and a
//! model of every datatype served; requested outputs; a wrong input name
//! answered 400 listing the model's inputs; a binary [1,3,224,224] image on
//! MobileNetV2 equal to the JSON request. Needs the venv of `models/venv.sh`
//! (onnxruntime, tritonclient): skipped loudly without it unless
//! `EDGEFLEET_REQUIRE_TRITONCLIENT` is set.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use edgefleet_tests::agent::Agent;
use edgefleet_tests::bench::{generate_mobilenet, repo, venv_python_with};
use edgefleet_tests::hub::Hub;
use edgefleet_tests::{eventually, skip};

/// The venv's python when it has tritonclient; with the requirement set,
/// `models/venv.sh` makes it.
fn python() -> Result<PathBuf, String> {
    venv_python_with("tritonclient", "tritonclient.http, onnxruntime")
}

fn run(python: &Path, args: &[&str]) -> String {
    let out = Command::new(python)
        .arg(repo().join("tests/kserve/tritonclient_check.py"))
        .args(args)
        .output()
        .expect("run tritonclient_check.py");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tritonclient_check.py {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn workload(name: &str, model: &str, sha256: &str) -> String {
    format!(
        "    - name: {name}\n      inference:\n        model: {{name: {model}, sha256: \"{sha256}\"}}\n        input: {{http: {{}}}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_against_the_agent_equals_onnxruntime() {
    let python = match python() {
        Ok(p) => p,
        Err(why) => return skip("tritonclient", &why),
    };
    edgefleet_tests::agent::install_crypto();
    let tmp = tempfile::tempdir().expect("tempdir");
    let types = tmp.path().join("types.onnx");
    run(
        &python,
        &["types-model", types.to_str().expect("utf-8 path")],
    );
    let mobilenet = repo().join("models/mobilenetv2/mobilenetv2.onnx");
    // As .ci/run does before the tests (about 3 s).
    generate_mobilenet(&python, &mobilenet, false).expect("generate MobileNetV2");
    let models = [
        ("digits", repo().join("models/digits/digits.onnx")),
        ("vibration", repo().join("models/vibration/vibration.onnx")),
        ("types", types),
        ("mobilenetv2", mobilenet),
    ];

    let hub = Hub::start().await;
    let agent = Agent::enroll_and_start(&hub, "pi-kserve", &[("site", "lab")]).await;
    let mut manifest = String::from(
        "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {name: serving}\nspec:\n  selector:\n    matchLabels: {site: lab}\n  workloads:\n",
    );
    for (name, path) in &models {
        let sha = hub
            .push_model(name, std::fs::read(path).expect("model file"))
            .await;
        manifest.push_str(&workload(name, name, &sha));
    }
    // HTTP-only workloads with no `output`: valid, results go to the caller.
    hub.deploy("serving", &manifest).await;
    let http = reqwest::Client::new();
    for (name, _) in &models {
        let url = format!("{}/v2/models/{name}/ready", agent.http_url());
        eventually(
            &format!("model {name} served"),
            Duration::from_secs(120),
            || async {
                let ok = http.get(&url).send().await.ok()?.status().is_success();
                ok.then_some(())
            },
        )
        .await;
    }

    let url = agent
        .http_url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut args = vec!["check".to_owned(), "--url".to_owned(), url];
    for (name, path) in &models {
        args.push("--model".to_owned());
        args.push(format!("{name}={}", path.display()));
    }
    args.extend(["--image-model".to_owned(), "mobilenetv2".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&python, &args);
    eprintln!("{out}");
    for must in [
        "digits: batch 4 JSON and binary equal onnxruntime",
        "vibration: batch 4 JSON and binary equal onnxruntime",
        "types: batch 4 JSON and binary equal onnxruntime",
        "digits: requested output",
        "wrong input name -> 400",
        "mobilenetv2: binary [1,3,224,224] request equals the JSON one",
        "all checks passed on 4 model(s)",
    ] {
        assert!(out.contains(must), "missing `{must}` in:\n{out}");
    }
}
