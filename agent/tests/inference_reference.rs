//! tract serves the reference models like onnxruntime did: same digit class
//! on every held-out image, outputs within the recorded tolerance (1e-4), and
//! the same vibration anomaly scores. References: models/*/reference.json.

use std::path::PathBuf;

use edge_agent::inference::{InferRequest, Model, RequestTensor};
use serde_json::Value;

const TOL: f64 = 1e-4;

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn reference(model: &str) -> anyhow::Result<Value> {
    let path = models_dir().join(model).join("reference.json");
    Ok(serde_json::from_slice(&std::fs::read(&path)?)?)
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

fn request(shape: &[usize], data: Vec<f64>) -> InferRequest {
    InferRequest {
        inputs: vec![RequestTensor::numbers("input", shape, "FP32", &data)],
        ..InferRequest::default()
    }
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= TOL,
            "{what}[{i}]: tract {g} vs onnxruntime {w}"
        );
    }
}

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, x)| {
            if *x > best.1 { (i, *x) } else { best }
        })
        .0
}

#[test]
fn digits_match_onnxruntime_on_every_test_image() -> anyhow::Result<()> {
    let reference = reference("digits")?;
    let model = Model::load("digits", &models_dir().join("digits/digits.onnx"), None)?;
    assert_eq!(model.inputs()[0].shape, vec![-1, 1, 8, 8]);
    let cases = reference["cases"].as_array().cloned().unwrap_or_default();
    assert_eq!(cases.len(), 360);
    let mut correct = 0;
    for case in &cases {
        if check_digits_case(&model, case)? {
            correct += 1;
        }
    }
    let accuracy = f64::from(correct) / cases.len() as f64;
    let recorded = reference["test_accuracy"].as_f64().unwrap_or(0.0);
    assert!(
        (accuracy - recorded).abs() < 1e-9,
        "accuracy {accuracy} vs {recorded}"
    );
    Ok(())
}

/// Runs one reference case and checks it against onnxruntime's outputs;
/// returns whether the predicted class is the true label.
fn check_digits_case(model: &Model, case: &Value) -> anyhow::Result<bool> {
    let idx = &case["index"];
    let out = model.infer_blocking(&request(&[1, 1, 8, 8], numbers(&case["input"])))?;
    let logits = out.iter().find(|t| t.name == "logits").map(|t| t.as_f64());
    let probs = out
        .iter()
        .find(|t| t.name == "probabilities")
        .map(|t| t.as_f64());
    let (Some(logits), Some(probs)) = (logits, probs) else {
        anyhow::bail!(
            "outputs are {:?}",
            out.iter().map(|t| &t.name).collect::<Vec<_>>()
        );
    };
    assert_close(
        &format!("case {idx} logits"),
        &logits,
        &numbers(&case["logits"]),
    );
    assert_close(
        &format!("case {idx} probabilities"),
        &probs,
        &numbers(&case["probabilities"]),
    );
    let class = argmax(&probs);
    assert_eq!(
        Some(class as u64),
        case["class"].as_u64(),
        "case {idx} class"
    );
    Ok(Some(class as u64) == case["label"].as_u64())
}

/// Run states are kept and reused between requests: four threads sharing
/// one model (four kept states) each get exactly their own image's outputs,
/// round after round.
#[test]
fn concurrent_requests_on_kept_states_stay_independent() -> anyhow::Result<()> {
    let reference = reference("digits")?;
    let model = Model::load("digits", &models_dir().join("digits/digits.onnx"), Some(4))?;
    let cases = reference["cases"].as_array().cloned().unwrap_or_default();
    assert_eq!(cases.len(), 360);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (model, cases) = (&model, &cases);
                scope.spawn(move || -> anyhow::Result<()> {
                    for _round in 0..3 {
                        for case in cases.iter().skip(w).step_by(4) {
                            check_digits_case(model, case)?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| anyhow::anyhow!("worker panicked"))?)
    })
}

#[test]
fn vibration_scores_match_onnxruntime() -> anyhow::Result<()> {
    let reference = reference("vibration")?;
    let model = Model::load(
        "vibration",
        &models_dir().join("vibration/vibration.onnx"),
        None,
    )?;
    assert_eq!(model.inputs()[0].shape, vec![-1, 64]);
    let threshold = reference["threshold"].as_f64().unwrap_or(0.8);
    let cases = reference["cases"].as_array().cloned().unwrap_or_default();
    assert_eq!(cases.len(), 200);
    for case in &cases {
        let idx = &case["index"];
        let out = model.infer_blocking(&request(&[1, 64], numbers(&case["input"])))?;
        let score = out.iter().find(|t| t.name == "score").map(|t| t.as_f64());
        let Some(score) = score else {
            anyhow::bail!("no `score` output");
        };
        assert_close(
            &format!("case {idx} score"),
            &score,
            &numbers(&case["score"]),
        );
        assert_eq!(
            Some(score[0] > threshold),
            case["anomaly"].as_bool(),
            "case {idx} anomaly"
        );
    }
    Ok(())
}

#[test]
fn wrong_shape_or_dtype_names_the_expected_shape() -> anyhow::Result<()> {
    let model = Model::load(
        "vibration",
        &models_dir().join("vibration/vibration.onnx"),
        None,
    )?;
    let e = model
        .infer_blocking(&request(&[1, 63], vec![0.0; 63]))
        .unwrap_err();
    assert!(e.is_client_error());
    let msg = e.to_string();
    assert!(
        msg.contains("expected shape [-1, 64]") && msg.contains("[1, 63]"),
        "{msg}"
    );

    let mut req = request(&[1, 64], vec![0.0; 64]);
    req.inputs[0].datatype = "INT64".into();
    let msg = model.infer_blocking(&req).unwrap_err().to_string();
    assert!(
        msg.contains("expected shape [-1, 64] datatype FP32") && msg.contains("INT64"),
        "{msg}"
    );

    let msg = model
        .infer_blocking(&request(&[1, 64], vec![0.0; 3]))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("expected shape [-1, 64]") && msg.contains("3 data"),
        "{msg}"
    );
    Ok(())
}

/// A dynamic batch stays dynamic: a batch of 8 reference images gives, row
/// for row, onnxruntime's batch-1 outputs; each new batch size is planned
/// once and at most `MAX_PLANS` plans are kept.
#[test]
fn digits_batches_match_onnxruntime_and_plans_are_bounded() -> anyhow::Result<()> {
    let reference = reference("digits")?;
    let model = Model::load("digits", &models_dir().join("digits/digits.onnx"), None)?;
    let cases = reference["cases"].as_array().cloned().unwrap_or_default();
    assert_eq!(model.plans_cached(), 1, "batch 1 is planned at load");
    for batch in 1..=6usize {
        let chunk = &cases[..batch];
        let data: Vec<f64> = chunk.iter().flat_map(|c| numbers(&c["input"])).collect();
        let out = model.infer_blocking(&request(&[batch, 1, 8, 8], data))?;
        let logits = out
            .iter()
            .find(|t| t.name == "logits")
            .ok_or_else(|| anyhow::anyhow!("no logits"))?;
        assert_eq!(logits.shape, vec![batch, 10]);
        let want: Vec<f64> = chunk.iter().flat_map(|c| numbers(&c["logits"])).collect();
        assert_close(&format!("batch {batch} logits"), &logits.as_f64(), &want);
        assert_eq!(
            model.plans_cached(),
            batch.min(edge_agent::inference::MAX_PLANS)
        );
    }
    let e = model
        .infer_blocking(&request(&[0, 1, 8, 8], vec![]))
        .unwrap_err();
    assert!(
        e.is_client_error() && e.to_string().contains("[-1, 1, 8, 8]"),
        "{e}"
    );
    Ok(())
}
