//! `/api/v1/deployments/{name}/rollout…` and `…/rollback`: where a staged
//! rollout is, and what an operator does to it (store/rollouts.rs holds the
//! rules).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use edgefleet_api::{ErrorBody, RollbackRequest, RolloutStatus};

use super::{ApiError, ApiResult, DeploymentPath, Shared};
use crate::store::RolloutAction;

fn conflict(why: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "conflict", why)
}

/// The rollout of the deployment's current generation: state, waves, events.
#[utoipa::path(get, path = "/deployments/{name}/rollout", tag = "rollouts", params(DeploymentPath),
    responses((status = OK, body = RolloutStatus), (status = NOT_FOUND, body = ErrorBody)))]
pub async fn status(
    State(st): State<Shared>,
    Path(DeploymentPath { name }): Path<DeploymentPath>,
) -> ApiResult<Json<RolloutStatus>> {
    let n = name.clone();
    st.store
        .run(move |s| s.rollout_status(&n))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format_args!("rollout of deployment {name:?}")))
}

/// Pauses, resumes or aborts the deployment's rollout.
#[utoipa::path(post, path = "/deployments/{name}/rollout/{action}", tag = "rollouts",
    params(
        ("name" = String, Path, description = "The deployment's metadata.name", example = "demo"),
        ("action" = String, Path, description = "pause, resume or abort", example = "pause"),
    ),
    responses(
        (status = OK, body = RolloutStatus),
        (status = NOT_FOUND, description = "No such deployment, rollout or action", body = ErrorBody),
        (status = CONFLICT, description = "The rollout is not in a state that allows it", body = ErrorBody),
    ))]
pub async fn act(
    State(st): State<Shared>,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult<Json<RolloutStatus>> {
    let a = RolloutAction::parse(&action).ok_or_else(|| {
        ApiError::not_found(format_args!(
            "rollout action {action:?} (pause, resume or abort)"
        ))
    })?;
    let n = name.clone();
    let publish = st
        .store
        .run(move |s| s.rollout_control(&n, a))
        .await?
        .map_err(conflict)?;
    tracing::info!(deployment = %name, action, "rollout {action}");
    if publish {
        st.publish.changed();
    }
    st.rollout_wake.notify_one();
    status(State(st), Path(DeploymentPath { name })).await
}

/// Rolls back (`{"toGeneration": N}` optional, default the previous one): a
/// new generation with generation N's spec, to every device at once.
#[utoipa::path(post, path = "/deployments/{name}/rollback", tag = "rollouts", params(DeploymentPath),
    request_body(content = Option<RollbackRequest>, content_type = "application/json"),
    responses(
        (status = OK, body = RolloutStatus),
        (status = NOT_FOUND, body = ErrorBody),
        (status = CONFLICT, description = "No generation to go back to, or a Git source owns the deployment (revert the commit instead)", body = ErrorBody),
    ))]
pub async fn rollback(
    State(st): State<Shared>,
    Path(DeploymentPath { name }): Path<DeploymentPath>,
    body: axum::body::Bytes,
) -> ApiResult<Json<RolloutStatus>> {
    // No body, or `null`: the previous generation.
    let req: Option<RollbackRequest> = if body.is_empty() {
        None
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("body: {e}")))?
    };
    let to = req.and_then(|b| b.to_generation);
    let n = name.clone();
    let rec = {
        let _fleet = st.fleet_changes.lock().await;
        st.store
            .run(move |s| match s.deployment_owner(&n)? {
                Some(owner) => Ok(Err(super::sources::owned(&n, &owner))),
                None => Ok(s.undo_deployment(&n, to)?.map_err(conflict)),
            })
            .await??
    };
    tracing::info!(deployment = %name, generation = rec.generation, "rolled back by an operator");
    st.publish.changed();
    st.rollout_wake.notify_one();
    status(State(st), Path(DeploymentPath { name })).await
}
