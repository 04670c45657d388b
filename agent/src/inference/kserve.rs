//! The KServe v2 (Open Inference Protocol) subset the agent serves on its
//! local HTTP: health, model metadata/readiness and `infer`, JSON only.
//!
//! `{name}` in `/v2/models/{name}/...` is the inference workload's short name
//! or the model's name (`model.name` in the workload); both resolve through
//! the [`ModelRegistry`].

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;

use super::{InferenceError, ModelRegistry, TensorSpec};

/// A KServe v2 inference request body (JSON tensors).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct InferRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub inputs: Vec<RequestTensor>,
}

/// One input tensor; `data` may be flat or nested (row-major).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RequestTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub datatype: String,
    #[serde(deserialize_with = "flat_numbers")]
    pub data: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    pub model_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<ResponseTensor>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub datatype: String,
    pub data: Vec<serde_json::Value>,
}

impl ResponseTensor {
    /// The data as `f64`s (non-numbers skipped).
    pub fn as_f64(&self) -> Vec<f64> {
        self.data
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .collect()
    }
}

fn flat_numbers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    fn walk(v: &serde_json::Value, out: &mut Vec<f64>) -> Result<(), String> {
        match v {
            serde_json::Value::Array(items) => items.iter().try_for_each(|i| walk(i, out)),
            serde_json::Value::Number(n) => n
                .as_f64()
                .map(|x| out.push(x))
                .ok_or_else(|| format!("number {n} is out of range")),
            other => Err(format!("tensor data must be numbers, found {other}")),
        }
    }
    let v = serde_json::Value::deserialize(d)?;
    let mut out = Vec::new();
    walk(&v, &mut out).map_err(serde::de::Error::custom)?;
    Ok(out)
}

/// `/v2/...` routes over `models`; merge into the agent's local router.
pub fn router(models: Arc<ModelRegistry>) -> Router {
    Router::new()
        .route(
            "/v2/health/live",
            get(|| async { axum::Json(json!({"live": true})) }),
        )
        .route(
            "/v2/health/ready",
            get(|| async { axum::Json(json!({"ready": true})) }),
        )
        .route("/v2/models/{name}", get(metadata))
        .route("/v2/models/{name}/ready", get(ready))
        .route("/v2/models/{name}/infer", post(infer))
        .with_state(models)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({"error": message.to_string()}))).into_response()
}

fn not_found(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format_args!("no loaded model or inference workload named `{name}`"),
    )
}

fn spec_json(s: &TensorSpec) -> serde_json::Value {
    json!({"name": s.name, "datatype": s.dtype.kserve_name(), "shape": s.shape})
}

async fn metadata(State(models): State<Arc<ModelRegistry>>, Path(name): Path<String>) -> Response {
    let Some(m) = models.get(&name) else {
        return not_found(&name);
    };
    axum::Json(json!({
        "name": name,
        "platform": "onnx",
        "versions": [],
        "inputs": m.inputs().iter().map(spec_json).collect::<Vec<_>>(),
        "outputs": m.outputs().iter().map(spec_json).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn ready(State(models): State<Arc<ModelRegistry>>, Path(name): Path<String>) -> Response {
    if models.get(&name).is_none() {
        return not_found(&name);
    }
    axum::Json(json!({"name": name, "ready": true})).into_response()
}

async fn infer(
    State(models): State<Arc<ModelRegistry>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let Some(m) = models.get(&name) else {
        return not_found(&name);
    };
    let req: InferRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format_args!("invalid KServe v2 request body: {e}"),
            );
        }
    };
    match m.infer(req).await {
        Ok(mut resp) => {
            resp.model_name = name;
            axum::Json(resp).into_response()
        }
        Err(e @ InferenceError::Invalid(_)) => error(StatusCode::BAD_REQUEST, e),
        Err(e) => {
            tracing::warn!(model = %name, error = %crate::error_chain(&e), "inference failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, crate::error_chain(&e))
        }
    }
}
