//! `/api/v1/sources…`: Git sources (apply, list, get, delete), an
//! operator's "fetch now", and the webhook a Git host calls on a push.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use edgefleet_api::{ErrorBody, GitRepo, Page, SourceStatus, SourceTriggered};
use hmac::{Hmac, Mac};
use serde::Deserialize;

use super::{ApiError, ApiResult, Shared};

/// `{name}` in a source's paths.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SourcePath {
    /// The source's metadata.name
    #[param(example = "fleet-config")]
    pub name: String,
}

/// The header a webhook is signed in, as GitHub, Gitea and Forgejo send it.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Every Git source, with the commit fetched and the one in force.
#[utoipa::path(get, path = "/sources", tag = "sources",
    responses((status = OK, body = Page<SourceStatus>)))]
pub async fn list(State(st): State<Shared>) -> ApiResult<Json<Page<SourceStatus>>> {
    let items = st.store.run(|s| s.list_sources()).await?;
    Ok(Json(Page::whole(items)))
}

/// One source: its manifest, where its sync is, and why not.
#[utoipa::path(get, path = "/sources/{name}", tag = "sources", params(SourcePath),
    responses((status = OK, body = SourceStatus), (status = NOT_FOUND, body = ErrorBody)))]
pub async fn get_one(
    State(st): State<Shared>,
    Path(SourcePath { name }): Path<SourcePath>,
) -> ApiResult<Json<SourceStatus>> {
    let n = name.clone();
    st.store
        .run(move |s| s.get_source(&n))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format_args!("source {name:?}")))
}

/// Creates or changes a source (`kind: GitRepo`, YAML or JSON). It is
/// fetched at once; `GET` shows how that went.
#[utoipa::path(put, path = "/sources/{name}", tag = "sources", params(SourcePath),
    request_body(description = "The GitRepo manifest, as YAML or JSON", content(
        (GitRepo = "application/json"),
        (GitRepo = "application/yaml"),
    )),
    responses(
        (status = OK, description = "Changed or unchanged", body = SourceStatus),
        (status = CREATED, description = "Created", body = SourceStatus),
        (status = BAD_REQUEST, description = "Not a valid manifest, or its name is not the URL's", body = ErrorBody),
    ))]
pub async fn put(
    State(st): State<Shared>,
    Path(SourcePath { name }): Path<SourcePath>,
    body: String,
) -> ApiResult<(StatusCode, Json<SourceStatus>)> {
    let r: GitRepo = {
        let de = serde_yaml::Deserializer::from_str(&body);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ApiError::bad_request(format!("{path}: {}", e.into_inner()))
        })?
    };
    r.validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if r.metadata.name != name {
        return Err(ApiError::bad_request(format!(
            "metadata.name {:?} does not match the URL's {name:?}",
            r.metadata.name
        )));
    }
    let (status, created) = st.store.run(move |s| s.put_source(&r)).await?;
    tracing::info!(source = %name, url = %status.spec.url, created, "Git source applied");
    st.sources.fetch_now(&name);
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(status)))
}

/// Deletes a source. Its deployments stay, owned by nobody: the API may
/// change or delete them again.
#[utoipa::path(delete, path = "/sources/{name}", tag = "sources", params(SourcePath),
    responses((status = NO_CONTENT, description = "Deleted"), (status = NOT_FOUND, body = ErrorBody)))]
pub async fn delete(
    State(st): State<Shared>,
    Path(SourcePath { name }): Path<SourcePath>,
) -> ApiResult<StatusCode> {
    let n = name.clone();
    let _fleet = st.fleet_changes.lock().await;
    if !st.store.run(move |s| s.delete_source(&n)).await? {
        return Err(ApiError::not_found(format_args!("source {name:?}")));
    }
    // The repository is a cache of the remote.
    let dir = crate::sources::repo_dir(&st.sources_dir, &name);
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %dir.display(), error = %e, "cannot remove a deleted source's repository");
    }
    tracing::info!(source = %name, "Git source deleted; its deployments stay");
    Ok(StatusCode::NO_CONTENT)
}

/// Fetches the source now (`edgectl reconcile source`).
#[utoipa::path(post, path = "/sources/{name}/reconcile", tag = "sources", params(SourcePath),
    responses((status = ACCEPTED, body = SourceTriggered), (status = NOT_FOUND, body = ErrorBody)))]
pub async fn reconcile(
    State(st): State<Shared>,
    Path(SourcePath { name }): Path<SourcePath>,
) -> ApiResult<(StatusCode, Json<SourceTriggered>)> {
    let n = name.clone();
    if st.store.run(move |s| s.get_source(&n)).await?.is_none() {
        return Err(ApiError::not_found(format_args!("source {name:?}")));
    }
    st.sources.fetch_now(&name);
    Ok(triggered(name))
}

fn triggered(name: String) -> (StatusCode, Json<SourceTriggered>) {
    (
        StatusCode::ACCEPTED,
        Json(SourceTriggered {
            name,
            result: "fetching".into(),
        }),
    )
}

/// A Git host's push notification: `X-Hub-Signature-256: sha256=<hex>`,
/// the HMAC-SHA256 of the body with the source's `webhook.secretFile`,
/// checked in constant time. A good one fetches the source now. No operator
/// token: the signature is the credential.
#[utoipa::path(post, path = "/sources/{name}/webhook", tag = "sources",
    params(SourcePath, ("X-Hub-Signature-256" = String, Header, description = "sha256=<hex HMAC-SHA256 of the body>")),
    request_body(description = "The Git host's event (any body; it is only signed)", content = String, content_type = "application/json"),
    responses(
        (status = ACCEPTED, body = SourceTriggered),
        (status = UNAUTHORIZED, description = "Missing or wrong signature, or the source takes no webhook", body = ErrorBody),
        (status = NOT_FOUND, body = ErrorBody),
    ))]
pub async fn webhook(
    State(st): State<Shared>,
    Path(SourcePath { name }): Path<SourcePath>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<SourceTriggered>)> {
    let count = |result: &str| {
        st.metrics
            .source_webhooks
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
    };
    let n = name.clone();
    let Some(source) = st.store.run(move |s| s.get_source(&n)).await? else {
        count("unknown_source");
        return Err(ApiError::not_found(format_args!("source {name:?}")));
    };
    let refuse = |result: &str, why: &str| {
        count(result);
        tracing::warn!(source = %name, result, "webhook refused: {why}");
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", why.to_owned())
    };
    let Some(hook) = &source.spec.webhook else {
        return Err(refuse(
            "no_secret",
            "this source takes no webhook (spec.webhook.secretFile is not set)",
        ));
    };
    let secret = match tokio::fs::read(&hook.secret_file).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(source = %name, path = %hook.secret_file, error = %e, "cannot read the webhook secret");
            return Err(refuse(
                "no_secret",
                "the hub cannot read this source's webhook secret",
            ));
        }
    };
    let secret = trim_ascii_end(&secret);
    let given = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(|h| hex::decode(h).ok());
    let Some(given) = given else {
        return Err(refuse(
            "bad_signature",
            "X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body> is required",
        ));
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret)
        .map_err(|_| refuse("no_secret", "the webhook secret is empty"))?;
    mac.update(&body);
    // verify_slice compares in constant time.
    if mac.verify_slice(&given).is_err() {
        return Err(refuse(
            "bad_signature",
            "the signature does not match the body",
        ));
    }
    count("accepted");
    tracing::info!(source = %name, event = ?headers.get("x-github-event"), "webhook: fetching now");
    st.sources.fetch_now(&name);
    Ok(triggered(name))
}

/// The secret file's content without a trailing newline.
fn trim_ascii_end(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &b[..end]
}

/// 409 for a change through the API to a deployment a source owns.
pub fn owned(deployment: &str, source: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        format!("deployment {deployment} is owned by source {source}; change it in Git"),
    )
}
