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
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{InferenceError, ModelRegistry, TensorSpec};

/// A KServe v2 inference request (the JSON part, with the binary data
/// extension's tensors attached to their inputs).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct InferRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub parameters: serde_json::Map<String, Value>,
    pub inputs: Vec<RequestTensor>,
    /// The outputs wanted, in the order wanted; absent means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// One input tensor: `data` flat or nested (row-major), or raw bytes in the
/// body after the JSON header (`parameters.binary_data_size`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RequestTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub datatype: String,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub parameters: serde_json::Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// This input's bytes from the binary part of the body.
    #[serde(skip)]
    pub raw: Option<Bytes>,
}

impl RequestTensor {
    /// A JSON tensor of numbers.
    pub fn numbers<T: Serialize>(name: &str, shape: &[usize], datatype: &str, data: &[T]) -> Self {
        Self {
            name: name.to_owned(),
            shape: shape.to_vec(),
            datatype: datatype.to_owned(),
            parameters: serde_json::Map::new(),
            data: Some(json!(data)),
            raw: None,
        }
    }
}

/// An output asked for by name; `parameters.binary_data: true` asks for it
/// as raw bytes.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub parameters: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    pub model_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<ResponseTensor>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub datatype: String,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub parameters: serde_json::Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<Value>>,
    /// The bytes sent after the JSON header when binary output was asked for.
    #[serde(skip)]
    pub raw: Option<Vec<u8>>,
}

impl ResponseTensor {
    /// The JSON data as `f64`s (non-numbers skipped; empty when binary).
    pub fn as_f64(&self) -> Vec<f64> {
        self.data
            .iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect()
    }
}

/// The request header of the binary data extension: the length of the JSON
/// part of the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Parses a request body: all JSON, or (with `header_len`) a JSON header
/// followed by the binary tensors of the inputs that give
/// `parameters.binary_data_size`, in input order.
pub fn parse_request(body: &Bytes, header_len: Option<usize>) -> Result<InferRequest, String> {
    let json_len = header_len.unwrap_or(body.len());
    if json_len > body.len() {
        return Err(format!(
            "{HEADER_LENGTH} is {json_len} but the body has {} byte(s)",
            body.len()
        ));
    }
    let mut req: InferRequest = serde_json::from_slice(&body[..json_len])
        .map_err(|e| format!("invalid KServe v2 request body: {e}"))?;
    let mut at = json_len;
    for input in &mut req.inputs {
        let Some(size) = input.parameters.get("binary_data_size") else {
            continue;
        };
        let size = size
            .as_u64()
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(|| {
                format!(
                    "input `{}`: binary_data_size must be a byte count",
                    input.name
                )
            })?;
        if input.data.is_some() {
            return Err(format!(
                "input `{}` has both `data` and binary_data_size",
                input.name
            ));
        }
        let end = at
            .checked_add(size)
            .filter(|end| *end <= body.len())
            .ok_or_else(|| {
                format!(
                    "input `{}`: binary_data_size {size} runs past the end of the body ({} byte(s) of binary data)",
                    input.name,
                    body.len() - json_len
                )
            })?;
        input.raw = Some(body.slice(at..end));
        at = end;
    }
    if at != body.len() {
        return Err(format!(
            "{} byte(s) after the JSON header are not claimed by any input's binary_data_size",
            body.len() - at
        ));
    }
    Ok(req)
}

/// True when the request asks for `name` as binary data: its own
/// `binary_data` parameter, else the request's `binary_data_output`.
pub(super) fn wants_binary(req: &InferRequest, name: &str) -> bool {
    let own = req
        .outputs
        .iter()
        .flatten()
        .find(|o| o.name == name)
        .and_then(|o| o.parameters.get("binary_data"))
        .and_then(Value::as_bool);
    own.or_else(|| {
        req.parameters
            .get("binary_data_output")
            .and_then(Value::as_bool)
    })
    .unwrap_or(false)
}

/// A response body: JSON, or the JSON header and the binary outputs after it
/// (with the header's length in `Inference-Header-Content-Length`).
pub fn response_body(resp: &InferResponse) -> (Option<usize>, Vec<u8>) {
    let mut body = serde_json::to_vec(resp).unwrap_or_default();
    if resp.outputs.iter().all(|o| o.raw.is_none()) {
        return (None, body);
    }
    let json_len = body.len();
    for raw in resp.outputs.iter().filter_map(|o| o.raw.as_ref()) {
        body.extend_from_slice(raw);
    }
    (Some(json_len), body)
}

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
