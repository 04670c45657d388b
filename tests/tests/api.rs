//! The REST API and `edgectl` against a real `cloudcore serve` process:
//! error status codes and messages, and the operator's first commands.

use std::process::Command;

use edgefleet_tests::hub::Hub;
use reqwest::Method;

fn edgectl(hub: &Hub, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    hub.edgectl_as(token, args)
}

const GOOD: &str = "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {site: a}}\n  workloads:\n    - name: app\n      kubernetes:\n        manifests: [{apiVersion: v1, kind: ConfigMap, metadata: {name: c}}]\n";

/// An error answer with a message containing `says`.
fn assert_says(body: &serde_json::Value, says: &str) {
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{body}");
}

/// An error answer: its code and a message containing `says`.
fn assert_error(body: &serde_json::Value, code: &str, says: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_says(body, says);
}

#[tokio::test]
async fn api_errors_have_status_and_message() {
    let hub = Hub::start().await;

    // Bad token / no token.
    let (code, body) = hub
        .api_as(Method::GET, "/devices", None, Some("wrong"))
        .await;
    assert_eq!(code, 401);
    assert_error(&body, "unauthorized", "operator token");
    let (code, body) = hub.api_as(Method::GET, "/deployments", None, None).await;
    assert_eq!(code, 401);
    assert_says(&body, "Authorization");

    // Bad YAML, and a valid YAML that is not a valid manifest.
    let (code, body) = hub.put_deployment("web", "spec: [unclosed").await;
    assert_eq!(code, 400);
    assert_eq!(body["error"]["code"], "invalid");
    let bad_sha = GOOD.replace(
        "      kubernetes:\n        manifests: [{apiVersion: v1, kind: ConfigMap, metadata: {name: c}}]\n",
        "      inference:\n        model: {name: m, sha256: nope}\n        input: {http: {}}\n        output: {upstream: true}\n",
    );
    let (code, body) = hub.put_deployment("web", &bad_sha).await;
    assert_eq!(code, 400);
    assert_says(
        &body,
        "spec.workloads[0].inference.model.sha256: not a sha256",
    );
    // Name mismatch between URL and manifest.
    let (code, body) = hub.put_deployment("other", GOOD).await;
    assert_eq!(code, 400);
    assert_says(&body, "does not match");

    // Unknown deployment and device.
    for path in [
        "/deployments/nope",
        "/deployments/nope/status",
        "/deployments/nope/history",
        "/devices/nope",
    ] {
        let (code, body) = hub.get(path).await;
        assert_eq!(code, 404, "{path}");
        assert_error(&body, "not_found", "\"nope\" not found");
    }
    let (code, _) = hub.api(Method::DELETE, "/deployments/nope", None).await;
    assert_eq!(code, 404);

    // What axum itself refuses has the same shape: a query it cannot read,
    // a method the route does not have (its Allow header kept), a body that
    // is not JSON.
    let (code, body) = hub.get("/devices?limit=lots").await;
    assert_eq!(code, 400);
    assert_error(&body, "invalid", "limit");
    let resp = reqwest::Client::new()
        .put(format!("{}/api/v1/devices", hub.api_url()))
        .bearer_auth(hub.operator_token())
        .send()
        .await
        .expect("hub reachable");
    assert_eq!(resp.status(), 405);
    assert!(resp.headers().contains_key("allow"), "{:?}", resp.headers());
    let body: serde_json::Value = resp.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "method_not_allowed");
    let (code, body) = hub
        .api(
            Method::POST,
            "/deployments/nope/rollback",
            Some(("application/json", "{not json".into())),
        )
        .await;
    assert_eq!(code, 400);
    assert_error(&body, "invalid", "body");

    // Create, then unchanged.
    assert_eq!(hub.put_deployment("web", GOOD).await.0, 201);
    let (code, body) = hub.put_deployment("web", GOOD).await;
    assert_eq!((code, body["generation"].as_u64()), (200, Some(1)));

    // Bad enrollment token; bad labels on PATCH; pagination bounds.
    let (code, body) = hub
        .api_as(
            Method::POST,
            "/enroll",
            Some((
                "application/json",
                r#"{"token":"x","publicKey":"AAAA","arch":"x","agentVersion":"1"}"#.into(),
            )),
            None,
        )
        .await;
    assert_eq!(code, 401, "{body}");
    let (code, _) = hub.get("/devices?limit=0").await;
    assert_eq!(code, 400);
    // Unknown route: JSON 404 too.
    let (code, body) = hub.get("/nothing-here").await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    let m = hub.metrics().await;
    assert!(m.contains("edgefleet_hub_api_request_duration_seconds_count{method=\"PUT\",route=\"/api/v1/deployments/{name}\",status=\"400\"}"), "{m}");
}

#[tokio::test]
async fn edgectl_first_steps() {
    let hub = Hub::start().await;
    let token = hub.operator_token();

    let (code, out, err) = edgectl(&hub, Some(&token), &["get", "devices"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "NAME   PRESENCE   REVISION   LAST-SEEN   AGE\n");

    let (code, _, err) = edgectl(&hub, Some("wrong-token-wrong-token"), &["get", "devices"]);
    assert_eq!(code, 4);
    assert!(err.contains("unauthorized"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("d.yaml");
    std::fs::write(&f, GOOD).unwrap();
    let f = f.to_str().unwrap();
    let (code, out, err) = edgectl(&hub, Some(&token), &["apply", "-f", f]);
    assert_eq!(
        (code, out.as_str()),
        (0, "deployment/web created\n"),
        "{err}"
    );
    let (_, out, _) = edgectl(&hub, Some(&token), &["apply", "-f", f]);
    assert_eq!(out, "deployment/web unchanged\n");
    let changed = dir.path().join("d2.yaml");
    std::fs::write(&changed, GOOD.replace("site: a", "site: b")).unwrap();
    let (_, out, _) = edgectl(
        &hub,
        Some(&token),
        &["apply", "-f", changed.to_str().unwrap()],
    );
    assert_eq!(out, "deployment/web configured\n");
    let (_, out, _) = edgectl(&hub, Some(&token), &["apply", "-f", f]);
    assert_eq!(out, "deployment/web configured\n");
    // The hub's answer to the PUT says what happened: edgectl never reads
    // the deployment first.
    let m = hub.metrics().await;
    assert!(
        !m.contains("method=\"GET\",route=\"/api/v1/deployments/{name}\""),
        "edgectl sent a GET before its PUTs:\n{m}"
    );
    let (code, out, _) = edgectl(&hub, Some(&token), &["get", "deployments"]);
    assert_eq!(code, 0);
    assert!(out.lines().nth(1).unwrap().starts_with("web "), "{out}");
    assert!(out.contains("0/0") && out.contains("NoDevices"), "{out}");
    let (code, out, _) = edgectl(&hub, Some(&token), &["get", "deployments", "-o", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["name"], "web");

    // Three applies that changed the spec: three generations kept, the
    // newest first, each with the spec it had.
    let (code, out, err) = edgectl(&hub, Some(&token), &["rollout", "history", "web"]);
    assert_eq!(code, 0, "{err}");
    let generations: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(generations, ["3", "2", "1"], "{out}");
    assert!(
        out.starts_with("GENERATION   APPLIED   WORKLOADS\n"),
        "{out}"
    );
    assert!(
        out.lines()
            .all(|l| l.ends_with("app") || l.ends_with("WORKLOADS")),
        "{out}"
    );
    let (_, out, _) = edgectl(
        &hub,
        Some(&token),
        &["rollout", "history", "web", "-o", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[1]["generation"], 2);
    assert_eq!(v[1]["spec"]["spec"]["selector"]["matchLabels"]["site"], "b");
    assert_eq!(v[0]["spec"]["spec"]["selector"]["matchLabels"]["site"], "a");
    let (code, _, err) = edgectl(&hub, Some(&token), &["rollout", "history", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");

    let (code, _, err) = edgectl(&hub, Some(&token), &["delete", "deployment", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
    let (code, out, _) = edgectl(&hub, Some(&token), &["delete", "deployment", "web"]);
    assert_eq!((code, out.as_str()), (0, "deployment/web deleted\n"));

    let model = dir.path().join("tiny.onnx");
    std::fs::write(&model, b"not really onnx, but bytes").unwrap();
    let (code, out, err) = edgectl(
        &hub,
        Some(&token),
        &["models", "push", model.to_str().unwrap(), "--name", "tiny"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("model/tiny pushed: sha256 "), "{out}");
    let (_, out, _) = edgectl(&hub, Some(&token), &["get", "models"]);
    assert!(out.contains("tiny"), "{out}");

    // Unreachable hub: distinct exit code and a helpful message.
    let mut c = Command::new(edgefleet_tests::process::bin("edgectl"));
    let out = c
        .args(["get", "devices", "--server", "http://127.0.0.1:1"])
        .env("EDGECTL_TOKEN", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the hub"));
}
