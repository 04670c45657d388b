//! The KServe v2 (Open Inference Protocol) the agent serves on its local
//! HTTP: server metadata and health, model metadata and readiness (also
//! under `/versions/{version}`, the model's sha256), and `infer` with JSON
//! tensors or the binary data extension (`Inference-Header-Content-Length`,
//! `binary_data_size`) both ways. Inputs are matched by name; requested
//! outputs are honoured.
//!
//! `{name}` in `/v2/models/{name}/...` is the inference workload's short name
//! or the model's name (`model.name` in the workload); both resolve through
//! the [`ModelRegistry`].

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{InferenceError, ModelRegistry, TensorSpec};

pub use edgefleet_localapi::kserve::{
    HEADER_LENGTH, InferRequest, InferResponse, RequestTensor, RequestedOutput, ResponseTensor,
    parse_request, response_body, wants_binary,
};

/// The largest request body the endpoint takes: a batch of 8 224x224 RGB
/// images is 4.8 MB as binary data, about 20 MB as JSON numbers.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// `/v2/...` routes over `models`; merge into the agent's local router.
pub fn router(models: Arc<ModelRegistry>) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route(
            "/v2/health/live",
            get(|| async { axum::Json(json!({"live": true})) }),
        )
        .route(
            "/v2/health/ready",
            get(|| async { axum::Json(json!({"ready": true})) }),
        )
        .route("/v2/models/{name}", get(metadata))
        .route("/v2/models/{name}/versions/{version}", get(metadata))
        .route("/v2/models/{name}/ready", get(ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(models)
}

async fn server_metadata() -> Response {
    axum::Json(json!({
        "name": "edge-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
    .into_response()
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({"error": message.to_string()}))).into_response()
}

/// The model served as `name` (and `version`, when the path names one).
fn lookup(
    models: &ModelRegistry,
    Path(ModelPath { name, version }): Path<ModelPath>,
) -> Result<(String, Arc<super::Model>), Box<Response>> {
    let Some(m) = models.get(&name) else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format_args!("no loaded model or inference workload named `{name}`"),
        )));
    };
    if let Some(v) = version
        && m.version() != Some(v.as_str())
    {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format_args!(
                "model `{name}` has no version `{v}`; it serves {}",
                m.version()
                    .map_or("no versions".to_owned(), |v| format!("version `{v}`"))
            ),
        )));
    }
    Ok((name, m))
}

#[derive(Debug, Deserialize)]
struct ModelPath {
    name: String,
    version: Option<String>,
}

fn spec_json(s: &TensorSpec) -> Value {
    json!({"name": s.name, "datatype": s.dtype.kserve_name(), "shape": s.shape})
}

async fn metadata(State(models): State<Arc<ModelRegistry>>, path: Path<ModelPath>) -> Response {
    let (name, m) = match lookup(&models, path) {
        Ok(found) => found,
        Err(r) => return *r,
    };
    axum::Json(json!({
        "name": name,
        "platform": "onnx",
        "versions": m.version().into_iter().collect::<Vec<_>>(),
        "inputs": m.inputs().iter().map(spec_json).collect::<Vec<_>>(),
        "outputs": m.outputs().iter().map(spec_json).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn ready(State(models): State<Arc<ModelRegistry>>, path: Path<ModelPath>) -> Response {
    match lookup(&models, path) {
        Ok((name, _)) => axum::Json(json!({"name": name, "ready": true})).into_response(),
        Err(r) => *r,
    }
}

async fn infer(
    State(models): State<Arc<ModelRegistry>>,
    path: Path<ModelPath>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (name, m) = match lookup(&models, path) {
        Ok(found) => found,
        Err(r) => return *r,
    };
    let header_len = match headers
        .get(HEADER_LENGTH)
        .map(|v| v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()))
    {
        None => None,
        Some(Some(n)) => Some(n),
        Some(None) => {
            m.record_error();
            return error(
                StatusCode::BAD_REQUEST,
                format_args!("{HEADER_LENGTH} must be a byte count"),
            );
        }
    };
    let req = match parse_request(&body, header_len) {
        Ok(r) => r,
        Err(e) => {
            m.record_error();
            tracing::info!(model = %name, error = %e, "inference request refused");
            return error(StatusCode::BAD_REQUEST, e);
        }
    };
    match m.infer(req).await {
        Ok(mut resp) => {
            resp.model_name = name;
            let (json_len, body) = response_body(&resp);
            let mut r = body.into_response();
            let h = r.headers_mut();
            match json_len {
                Some(n) => {
                    h.insert(HEADER_LENGTH, HeaderValue::from(n));
                    h.insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                }
                None => {
                    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
            }
            r
        }
        Err(e @ InferenceError::Invalid(_)) => {
            tracing::info!(model = %name, error = %e, "inference request refused");
            error(StatusCode::BAD_REQUEST, e)
        }
        Err(e) => {
            tracing::warn!(model = %name, error = %crate::error_chain(&e), "inference failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, crate::error_chain(&e))
        }
    }
}
