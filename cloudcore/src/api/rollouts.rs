//! `/api/v1/deployments/{name}/rollout…` and `…/rollback`: where a staged
//! rollout is, and what an operator does to it (store/rollouts.rs holds the
//! rules).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use edgefleet_api::{RollbackRequest, RolloutStatus};

use super::{ApiError, ApiResult, Shared};
use crate::store::RolloutAction;

fn conflict(why: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "conflict", why)
}

/// `GET /deployments/{name}/rollout`.
pub async fn status(
    State(st): State<Shared>,
    Path(name): Path<String>,
) -> ApiResult<Json<RolloutStatus>> {
    let n = name.clone();
    st.store
        .run(move |s| s.rollout_status(&n))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format_args!("rollout of deployment {name:?}")))
}

/// `POST /deployments/{name}/rollout/{pause|resume|abort}`.
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
    status(State(st), Path(name)).await
}

/// `POST /deployments/{name}/rollback` (`{"toGeneration": N}` optional): a
/// new generation with generation N's spec, to every device at once.
pub async fn rollback(
    State(st): State<Shared>,
    Path(name): Path<String>,
    body: Option<Json<RollbackRequest>>,
) -> ApiResult<Json<RolloutStatus>> {
    let to = body.and_then(|Json(b)| b.to_generation);
    let n = name.clone();
    let rec = {
        let _fleet = st.fleet_changes.lock().await;
        st.store
            .run(move |s| s.undo_deployment(&n, to))
            .await?
            .map_err(conflict)?
    };
    tracing::info!(deployment = %name, generation = rec.generation, "rolled back by an operator");
    st.publish.changed();
    st.rollout_wake.notify_one();
    status(State(st), Path(name)).await
}
