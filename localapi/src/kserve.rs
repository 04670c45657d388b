//! The KServe v2 inference protocol's bodies, as the agent's local
//! endpoint takes and answers them: JSON, or a JSON header followed by
//! binary tensors (the binary data extension).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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
pub fn wants_binary(req: &InferRequest, name: &str) -> bool {
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
