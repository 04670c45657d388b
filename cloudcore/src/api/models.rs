//! `/api/v1/models…`: content-addressed model blobs. Upload stores the body
//! under its SHA-256; devices download with Range support so interrupted
//! transfers resume.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use edgefleet_protocol::name::check_dns_label;
use edgefleet_protocol::validate::is_sha256_hex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::openapi::OnnxFile;
use super::{ApiError, ApiResult, Page, Shared, operator_or_device};
use crate::store::ModelRecord;
use edgefleet_api::ErrorBody;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The model's name (a DNS label); required.
    #[param(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63)]
    name: Option<String>,
}

/// Uploads an ONNX model (the body) as `name`; the answer's sha256 is what
/// workloads name.
#[utoipa::path(post, path = "/models", tag = "models", params(UploadQuery),
    request_body(description = "The ONNX file", content = OnnxFile, content_type = "application/octet-stream"),
    responses((status = CREATED, body = ModelRecord)))]
pub async fn upload(
    State(st): State<Shared>,
    Query(q): Query<UploadQuery>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<ModelRecord>)> {
    let name = q
        .name
        .ok_or_else(|| ApiError::bad_request("query parameter `name` is required"))?;
    check_dns_label(&name, 63).map_err(|e| ApiError::bad_request(format!("name {e}")))?;
    if body.is_empty() {
        return Err(ApiError::bad_request("the body (the model file) is empty"));
    }
    let sha256 = hex::encode(Sha256::digest(&body));
    let dir = st.models_dir.clone();
    let path = dir.join(format!("{sha256}.onnx"));
    let tmp = dir.join(format!(".{sha256}.{}.part", std::process::id()));
    let size = body.len() as u64;
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        if path.exists() {
            return Ok(());
        }
        std::fs::write(&tmp, &body)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot store model blob");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot store the model blob",
            ));
        }
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "model writer panicked",
            ));
        }
    }
    let rec = ModelRecord {
        sha256,
        name,
        size,
        created_ms: edgefleet_protocol::now_ms(),
    };
    let r2 = rec.clone();
    st.store.run(move |s| s.put_model(&r2)).await?;
    tracing::info!(model = %rec.name, sha256 = %rec.sha256, size = rec.size, "model stored");
    Ok((StatusCode::CREATED, Json(rec)))
}

/// The models the hub holds.
#[utoipa::path(get, path = "/models", tag = "models",
    responses((status = OK, body = Page<ModelRecord>)))]
pub async fn list(State(st): State<Shared>) -> ApiResult<Json<Page<ModelRecord>>> {
    let items = st.store.run(|s| s.list_models()).await?;
    Ok(Json(Page::whole(items)))
}

/// Parses `bytes=START-[END]` against a blob of `size` bytes.
fn parse_range(h: &str, size: u64) -> Option<(u64, u64)> {
    let spec = h.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    if a.is_empty() {
        // Suffix range: the last N bytes.
        let n: u64 = b.parse().ok()?;
        if n == 0 || size == 0 {
            return None;
        }
        return Some((size.saturating_sub(n), size - 1));
    }
    let start: u64 = a.parse().ok()?;
    let end = if b.is_empty() {
        size.checked_sub(1)?
    } else {
        b.parse::<u64>().ok()?.min(size.checked_sub(1)?)
    };
    (start <= end && start < size).then_some((start, end))
}

/// Downloads a model, with `Range` support. The operator token, or a
/// device's broker credentials as Basic auth.
#[utoipa::path(get, path = "/models/{sha256}/blob", tag = "models",
    params(
        ("sha256" = String, Path, description = "The model's sha256, 64 lower-case hex characters", pattern = r"^[0-9a-f]{64}$"),
        ("Range" = Option<String>, Header, description = "One range: `bytes=N-`, `bytes=N-M` or `bytes=-N`", pattern = "^bytes=([0-9]+-[0-9]*|-[0-9]+)$"),
    ),
    security(("operator" = []), ("device" = [])),
    responses(
        (status = OK, body = OnnxFile, content_type = "application/octet-stream"),
        (status = PARTIAL_CONTENT, body = OnnxFile, content_type = "application/octet-stream"),
        (status = UNAUTHORIZED, body = ErrorBody),
        (status = NOT_FOUND, body = ErrorBody),
        (status = RANGE_NOT_SATISFIABLE, body = ErrorBody),
    ))]
pub async fn blob(
    State(st): State<Shared>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if !operator_or_device(&st, &headers) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "use the operator token or a device's broker credentials (Basic auth)",
        ));
    }
    if !is_sha256_hex(&sha256) {
        return Err(ApiError::bad_request("not a sha256"));
    }
    let path = st.models_dir.join(format!("{sha256}.onnx"));
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return Err(ApiError::not_found(format_args!("model {sha256}"))),
    };
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, size.saturating_sub(1)),
        Some(r) => match parse_range(r, size) {
            Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e),
            None => {
                let mut resp = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "invalid_range",
                    format!("range {r:?} not satisfiable for {size} bytes"),
                )
                .into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(resp);
            }
        },
    };
    let len = if size == 0 { 0 } else { end - start + 1 };
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "cannot read the model blob",
        ));
    }
    let stream = tokio_util::io::ReaderStream::new(file.take(len));
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&len.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{sha256}\"")) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}"))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-", 10), Some((0, 9)));
        assert_eq!(parse_range("bytes=4-", 10), Some((4, 9)));
        assert_eq!(parse_range("bytes=2-5", 10), Some((2, 5)));
        assert_eq!(parse_range("bytes=2-50", 10), Some((2, 9)));
        assert_eq!(parse_range("bytes=-3", 10), Some((7, 9)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=5-2", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
    }
}
