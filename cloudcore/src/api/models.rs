//! `/api/v1/models…`: content-addressed model blobs. Upload stores the body
//! under its SHA-256; devices download with Range support so interrupted
//! transfers resume.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use edgefleet_protocol::name::check_dns_label;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::openapi::BlobFile;
use super::{ApiError, ApiResult, Page, Shared};
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
    request_body(description = "The ONNX file", content = BlobFile, content_type = "application/octet-stream"),
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
    let size = body.len() as u64;
    super::blobs::store(
        st.models_dir.clone(),
        format!("{sha256}.onnx"),
        body,
        "model",
    )
    .await?;
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

/// Downloads a model, with `Range` support. The operator token, or a
/// device's broker credentials as Basic auth.
#[utoipa::path(get, path = "/models/{sha256}/blob", tag = "models",
    params(
        ("sha256" = String, Path, description = "The model's sha256, 64 lower-case hex characters", pattern = r"^[0-9a-f]{64}$"),
        ("Range" = Option<String>, Header, description = "One range: `bytes=N-`, `bytes=N-M` or `bytes=-N`", pattern = "^bytes=([0-9]+-[0-9]*|-[0-9]+)$"),
    ),
    security(("operator" = []), ("device" = [])),
    responses(
        (status = OK, body = BlobFile, content_type = "application/octet-stream"),
        (status = PARTIAL_CONTENT, body = BlobFile, content_type = "application/octet-stream"),
        (status = UNAUTHORIZED, body = ErrorBody),
        (status = NOT_FOUND, body = ErrorBody),
        (status = RANGE_NOT_SATISFIABLE, body = ErrorBody),
    ))]
pub async fn blob(
    State(st): State<Shared>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    super::blobs::authorize(&st, &headers, &sha256)?;
    let path = st.models_dir.join(format!("{sha256}.onnx"));
    super::blobs::serve(&path, &sha256, &headers, "model").await
}
