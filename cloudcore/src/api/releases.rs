//! `/api/v1/agent-releases…`: agent binaries for self-update. An upload
//! names a version and an arch and is stored under its SHA-256; an `agent`
//! workload names the version, and the hub fills in each arch's hash when
//! it stores the deployment. Devices download with `Range` (resume).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use edgefleet_api::{AgentRelease, ErrorBody};
use edgefleet_protocol::workload::{AGENT_ARCHES, agent_arch, is_agent_version};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::openapi::BlobFile;
use super::{ApiError, ApiResult, Page, Shared};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The release's version, e.g. `0.2.0`; required.
    #[param(pattern = r"^[A-Za-z0-9][A-Za-z0-9.+_-]*$", max_length = 64)]
    version: Option<String>,
    /// `amd64`, `arm64` or `armhf` (or `x86_64`, `aarch64`, `armv7`);
    /// required.
    arch: Option<String>,
}

/// Uploads an agent binary (the body) as `version` for `arch`. Uploading
/// the same binary again is fine; another binary under a version and arch
/// that exist is refused (409): releases do not change.
#[utoipa::path(post, path = "/agent-releases", tag = "agent-releases", params(UploadQuery),
    request_body(description = "The edge-agent binary", content = BlobFile, content_type = "application/octet-stream"),
    responses(
        (status = CREATED, body = AgentRelease),
        (status = OK, body = AgentRelease, description = "The same binary was already this release"),
        (status = BAD_REQUEST, body = ErrorBody),
        (status = CONFLICT, body = ErrorBody),
    ))]
pub async fn upload(
    State(st): State<Shared>,
    Query(q): Query<UploadQuery>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<AgentRelease>)> {
    let version = q
        .version
        .ok_or_else(|| ApiError::bad_request("query parameter `version` is required"))?;
    if !is_agent_version(&version) {
        return Err(ApiError::bad_request(
            "version must be 1-64 characters of letters, digits and `.+_-`, starting with a letter or digit",
        ));
    }
    let given = q
        .arch
        .ok_or_else(|| ApiError::bad_request("query parameter `arch` is required"))?;
    let arch = agent_arch(&given).ok_or_else(|| {
        ApiError::bad_request(format!(
            "arch {given:?} is not one of {}",
            AGENT_ARCHES.join(", ")
        ))
    })?;
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the body (the agent binary) is empty",
        ));
    }
    let sha256 = hex::encode(Sha256::digest(&body));
    let size = body.len() as u64;
    super::blobs::store(
        st.releases_dir.clone(),
        sha256.clone(),
        body,
        "agent release",
    )
    .await?;
    let rel = AgentRelease {
        version,
        arch: arch.to_owned(),
        sha256,
        size,
        created_ms: edgefleet_protocol::now_ms(),
    };
    let r2 = rel.clone();
    let stored = st.store.run(move |s| s.put_agent_release(&r2)).await?;
    match stored {
        Ok(kept) if kept.created_ms != rel.created_ms => Ok((StatusCode::OK, Json(kept))),
        Ok(kept) => {
            tracing::info!(version = %kept.version, arch = %kept.arch, sha256 = %kept.sha256, size = kept.size, "agent release stored");
            Ok((StatusCode::CREATED, Json(kept)))
        }
        Err(c) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "agent {} for {} is already the binary {}; releases do not change, push this one as a new version",
                c.existing.version, c.existing.arch, c.existing.sha256
            ),
        )),
    }
}

/// The agent releases the hub holds, newest first.
#[utoipa::path(get, path = "/agent-releases", tag = "agent-releases",
    responses((status = OK, body = Page<AgentRelease>)))]
pub async fn list(State(st): State<Shared>) -> ApiResult<Json<Page<AgentRelease>>> {
    let items = st.store.run(|s| s.list_agent_releases()).await?;
    Ok(Json(Page::whole(items)))
}

/// Downloads an agent binary, with `Range` support. The operator token, or
/// a device's broker credentials as Basic auth.
#[utoipa::path(get, path = "/agent-releases/{sha256}/blob", tag = "agent-releases",
    params(
        ("sha256" = String, Path, description = "The binary's sha256, 64 lower-case hex characters", pattern = r"^[0-9a-f]{64}$"),
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
    let path = st.releases_dir.join(&sha256);
    super::blobs::serve(&path, &sha256, &headers, "agent release").await
}

/// Fills in each `agent` workload's binaries from the releases; a version
/// with none is an error naming it.
pub fn resolve(
    s: &crate::store::Store,
    d: &mut edgefleet_protocol::Deployment,
) -> Result<Result<(), String>, crate::store::StoreError> {
    for w in &mut d.spec.workloads {
        if let Some(a) = &mut w.agent {
            a.artifacts = s.agent_artifacts(&a.version)?;
            if a.artifacts.is_empty() {
                return Ok(Err(format!(
                    "workload {}: no agent release {:?} on the hub; upload it first (edgectl agents push FILE --version {} --arch ARCH)",
                    w.name, a.version, a.version
                )));
            }
        }
    }
    Ok(Ok(()))
}
