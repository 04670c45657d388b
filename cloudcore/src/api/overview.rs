//! `/api/v1/overview`: the fleet at a glance, in one request (the
//! dashboard's first page).

use axum::Json;
use axum::extract::State;
use edgefleet_api::Overview;

use super::{ApiResult, Shared};

/// Shown of the newest failures and events.
const RECENT: usize = 20;

/// Devices by presence, every deployment's ready counts, the rollouts in
/// progress, and the newest failures and events.
#[utoipa::path(get, path = "/overview", tag = "fleet",
    responses((status = OK, body = Overview)))]
pub async fn overview(State(st): State<Shared>) -> ApiResult<Json<Overview>> {
    let o = st
        .store
        .run(|s| {
            let mut rollouts = Vec::new();
            for name in s.open_rollouts()? {
                rollouts.extend(s.rollout_status(&name)?);
            }
            Ok(Overview {
                devices: s.fleet_counts()?,
                deployments: super::deployments::summaries(s)?,
                rollouts,
                failures: s.recent_failures(RECENT)?,
                events: s.recent_events(None, RECENT)?,
            })
        })
        .await?;
    Ok(Json(o))
}
