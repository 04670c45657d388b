//! The hub's REST API against its own OpenAPI document, with schemathesis
//! (PyPI), a property-based API tester we did not write. It reads the
//! document the hub serves at `/api/v1/openapi.json`, generates requests for
//! every operation (valid ones, invalid ones, boundary values) and checks
//! every answer:
//! - no 5xx (`not_a_server_error`);
//! - the status code, the content type and the body are the ones the
//!   document gives for that operation (`status_code_conformance`,
//!   `content_type_conformance`, `response_schema_conformance`).
//!
//! The hub holds a device, a deployment and a model first, so the examples
//! in the document reach real objects, not only 404s. Needs the venv of
//! `models/venv.sh` (schemathesis): skipped loudly without it unless
//! `EDGEFLEET_REQUIRE_SCHEMATHESIS` is set.

use std::path::PathBuf;
use std::process::Command;

use edgefleet_protocol::Signer;
use edgefleet_tests::bench::venv_python_with;
use edgefleet_tests::hub::Hub;
use edgefleet_tests::skip;

/// The checks that make "no 5xx and no response outside the spec".
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance";

/// The venv's `schemathesis` when it is installed; with the requirement
/// set, `models/venv.sh` makes it.
fn schemathesis() -> Result<PathBuf, String> {
    let bin = venv_python_with("schemathesis", "schemathesis")?.with_file_name("schemathesis");
    let ok = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Ok(bin)
    } else {
        Err(format!(
            "{} does not run (run models/venv.sh)",
            bin.display()
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_5xx_and_no_answer_outside_the_spec() {
    let bin = match schemathesis() {
        Ok(b) => b,
        Err(why) => return skip("schemathesis", &why),
    };
    let hub = Hub::start().await;
    // What the document's examples name: device sensor-1, deployment demo,
    // model tiny.
    hub.enroll(&Signer::generate(), Some("sensor-1"), &[("site", "a")])
        .await;
    hub.deploy(
        "demo",
        "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {name: demo}\nspec:\n  selector: {matchLabels: {site: a}}\n  workloads:\n    - name: cm\n      kubernetes:\n        manifests:\n          - {apiVersion: v1, kind: ConfigMap, metadata: {name: cm}, data: {k: v}}\n",
    )
    .await;
    hub.push_model("tiny", b"not really onnx".to_vec()).await;
    // And source fleet-config (its repository does not exist: it fails to
    // fetch, as a source may).
    hub.client()
        .apply_source(
            "fleet-config",
            "apiVersion: edgefleet.io/v1\nkind: GitRepo\nmetadata: {name: fleet-config}\nspec: {url: 'file:///nonexistent/fleet.git', ref: {branch: main}, path: deployments/}\n",
        )
        .await
        .expect("apply the source");

    let (code, doc) = hub.get("/openapi.json").await;
    assert_eq!(code, 200, "GET /api/v1/openapi.json");
    let operations: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| item.as_object().expect("path item").len())
        .sum();
    assert!(
        operations >= 20,
        "the document lists {operations} operations"
    );

    let reports = tempfile::tempdir().expect("tempdir");
    let junit = reports.path().join("junit.xml");
    let out = Command::new(&bin)
        .current_dir(reports.path())
        .args(["run", &format!("{}/api/v1/openapi.json", hub.api_url())])
        .args(["--checks", CHECKS])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", hub.operator_token()),
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "40", "--seed", "20261201"])
        // One worker: with two, schemathesis 4.32.5 once failed inside
        // CPython ("AST constructor recursion depth mismatch") on a loaded
        // machine; one is as fast here (14 s against 16 s).
        .args(["--workers", "1", "--request-timeout", "10"])
        // Hypothesis's health checks judge the generator (too slow on a
        // loaded CI machine, too many filtered draws), not the API.
        .args(["--suppress-health-check", "all"])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(&junit)
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "schemathesis found answers outside the spec or 5xx:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It tested every operation the document lists, not a subset.
    let report = std::fs::read_to_string(&junit).expect("junit report");
    let tested = report.matches("<testcase ").count();
    assert_eq!(
        tested, operations,
        "schemathesis tested {tested} of {operations} operations:\n{report}"
    );
    assert_eq!(
        report.matches("<failure").count() + report.matches("<error").count(),
        0,
        "{report}"
    );
}

/// `cloudcore openapi` prints the committed document, and a reader that
/// stops early (`| head`) ends it quietly, with status 0, not a panic.
#[test]
fn cloudcore_openapi_prints_the_document_and_stops_quietly_for_head() {
    let (code, stdout, stderr) = Hub::cloudcore(&["openapi".as_ref()]);
    assert_eq!(code, 0, "{stderr}");
    let committed = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json"),
    )
    .expect("docs/openapi.json");
    assert!(
        stdout == committed,
        "cloudcore openapi != docs/openapi.json"
    );

    let mut child = Command::new(edgefleet_tests::process::bin("cloudcore"))
        .arg("openapi")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start cloudcore openapi");
    // Read a little, then hang up, as `head -1` does. The document is larger
    // than a pipe's buffer, so the writer meets the closed pipe.
    let mut first = [0u8; 16];
    std::io::Read::read_exact(child.stdout.as_mut().expect("stdout"), &mut first)
        .expect("the document's start");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("cloudcore openapi ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
