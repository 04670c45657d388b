//! KServe v2 over real loopback HTTP: metadata, readiness, a correct infer,
//! and 400s naming the expected shape for wrong shapes, dtypes and bodies.

use std::path::PathBuf;
use std::sync::Arc;

use edge_agent::inference::{InferResponse, Model, ModelRegistry, kserve};
use serde_json::{Value, json};

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

async fn serve(models: Arc<ModelRegistry>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, kserve::router(models)).await });
    Ok(format!("http://{addr}"))
}

#[tokio::test]
async fn kserve_v2_serves_vibration_and_refuses_bad_requests() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let model = Model::load(
        "vibration",
        &models_dir().join("vibration/vibration.onnx"),
        Some(2),
    )?;
    let models = ModelRegistry::new();
    models.insert(&["anomaly", "vibration"], model);
    let base = serve(models).await?;
    let http = reqwest::Client::new();

    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/anomaly/ready",
    ] {
        let r = http.get(format!("{base}{path}")).send().await?;
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = http
        .get(format!("{base}/v2/models/nope/ready"))
        .send()
        .await?;
    assert_eq!(r.status(), 404);

    let meta: Value = http
        .get(format!("{base}/v2/models/vibration"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "input", "datatype": "FP32", "shape": [-1, 64]})
    );
    assert_eq!(meta["outputs"][0]["name"], "score");

    // Every sample request body, as published on MQTT, scores like onnxruntime.
    let samples: Value =
        serde_json::from_slice(&std::fs::read(models_dir().join("vibration/samples.json"))?)?;
    let readings = samples["readings"].as_array().cloned().unwrap_or_default();
    assert!(!readings.is_empty());
    for reading in &readings {
        let r = http
            .post(format!("{base}/v2/models/anomaly/infer"))
            .json(&reading["payload"])
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        let resp: InferResponse = r.json().await?;
        assert_eq!(resp.model_name, "anomaly");
        let score = resp.outputs[0].as_f64()[0];
        let want = reading["score"].as_f64().unwrap_or(f64::NAN);
        assert!(
            (score - want).abs() <= 1e-4,
            "seq {}: {score} vs {want}",
            reading["seq"]
        );
    }

    let bad_bodies = [
        (
            json!({"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": vec![0.0; 32]}]}),
            "[1, 32]",
        ),
        (
            json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "INT64", "data": vec![0; 64]}]}),
            "INT64",
        ),
        (
            json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec!["x"; 64]}]}),
            "not a number",
        ),
        (json!({"inputs": []}), "missing input `input`"),
        (
            json!({"inputs": [{"name": "score", "shape": [1, 64], "datatype": "FP32", "data": vec![0.0; 64]}]}),
            "unknown input `score`",
        ),
        (
            json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec![0.0; 64]}],
                   "outputs": [{"name": "nope"}]}),
            "unknown output `nope`",
        ),
        (json!({"nope": 1}), "inputs"),
    ];
    for (body, mention) in bad_bodies {
        let r = http
            .post(format!("{base}/v2/models/anomaly/infer"))
            .json(&body)
            .send()
            .await?;
        assert_eq!(r.status(), 400, "{body}");
        let err: Value = r.json().await?;
        let msg = err["error"].as_str().unwrap_or_default();
        assert!(msg.contains(mention), "{msg}");
        if mention != "inputs" && !mention.starts_with("unknown output") {
            assert!(msg.contains("[-1, 64]"), "{msg}");
        }
    }
    let r = http
        .post(format!("{base}/v2/models/anomaly/infer"))
        .body("not json")
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    Ok(())
}
