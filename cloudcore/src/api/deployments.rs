//! `/api/v1/deployments…`: apply (PUT, YAML or JSON), list, get, delete,
//! rollout status per device, and the generations kept.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use edgefleet_api::{
    Applied, ApplyResult, Counts, DeploymentGeneration, DeploymentStatus, DeploymentSummary,
    DeviceRollout, ErrorBody, Page, WorkloadRow,
};
use edgefleet_protocol::{Deployment, Health, SyncState};

use super::{ApiError, ApiResult, DeploymentPath, Shared};
use crate::store::DeploymentRecord;

/// Every deployment, with how many devices it targets and how they are doing.
#[utoipa::path(get, path = "/deployments", tag = "deployments",
    responses((status = OK, body = Page<DeploymentSummary>)))]
pub async fn list(State(st): State<Shared>) -> ApiResult<Json<Page<DeploymentSummary>>> {
    let items = st.store.run(summaries).await?;
    Ok(Json(super::Page::whole(items)))
}

/// Every deployment with its counts (one read of the fleet for all).
pub(super) fn summaries(
    s: &crate::store::Store,
) -> Result<Vec<DeploymentSummary>, crate::store::StoreError> {
    let deps = s.list_deployments()?;
    let fleet = Fleet::load(s)?;
    Ok(deps
        .into_iter()
        .map(|d| {
            let counts = fleet.rollout(&d).counts;
            DeploymentSummary {
                name: d.name,
                generation: d.generation,
                workloads: d.spec.spec.workloads.len(),
                updated_ms: d.updated_ms,
                counts,
                source: d.source,
            }
        })
        .collect())
}

/// One deployment: its current generation's manifest.
#[utoipa::path(get, path = "/deployments/{name}", tag = "deployments", params(DeploymentPath),
    responses((status = OK, body = DeploymentRecord), (status = NOT_FOUND, body = ErrorBody)))]
pub async fn get_one(
    State(st): State<Shared>,
    Path(DeploymentPath { name }): Path<DeploymentPath>,
) -> ApiResult<Json<DeploymentRecord>> {
    let n = name.clone();
    st.store
        .run(move |s| s.get_deployment(&n))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format_args!("deployment {name:?}")))
}

/// Applies a manifest (YAML or JSON; JSON is YAML). Created → 201,
/// changed → 200, unchanged → 200 without a new generation; the body says
/// which (`result`).
#[utoipa::path(put, path = "/deployments/{name}", tag = "deployments", params(DeploymentPath),
    request_body(description = "The manifest, as YAML or JSON", content(
        (Deployment = "application/json"),
        (Deployment = "application/yaml"),
    )),
    responses(
        (status = OK, description = "Configured, or unchanged (no new generation)", body = Applied),
        (status = CREATED, description = "Created", body = Applied),
        (status = BAD_REQUEST, description = "Not a valid manifest, or its name is not the URL's", body = ErrorBody),
        (status = CONFLICT, description = "A device would refuse its desired document (limit_exceeded), or a Git source owns the deployment (conflict)", body = ErrorBody),
    ))]
pub async fn put(
    State(st): State<Shared>,
    Path(DeploymentPath { name }): Path<DeploymentPath>,
    body: String,
) -> ApiResult<(StatusCode, Json<Applied>)> {
    let mut d = Deployment::from_yaml(&body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if d.metadata.name != name {
        return Err(ApiError::bad_request(format!(
            "metadata.name {:?} does not match the URL's {name:?}",
            d.metadata.name
        )));
    }
    let _fleet = st.fleet_changes.lock().await;
    let (check, epoch) = (st.check_limits, st.epoch);
    let (rec, changed) = st
        .store
        .run(move |s| {
            if let Some(owner) = s.deployment_owner(&d.metadata.name)? {
                return Ok(Err(super::sources::owned(&d.metadata.name, &owner)));
            }
            if let Err(e) = super::releases::resolve(s, &mut d)? {
                return Ok(Err(ApiError::bad_request(e)));
            }
            if check {
                let v = violations_with(s, &d, epoch)?;
                if !v.is_empty() {
                    return Ok(Err(ApiError::limits(&v)));
                }
            }
            s.put_deployment(&d).map(Ok)
        })
        .await??;
    if changed {
        tracing::info!(deployment = %rec.name, generation = rec.generation, "deployment applied");
        st.publish.changed();
        st.rollout_wake.notify_one();
    }
    let (status, result) = match (changed, rec.generation) {
        (true, 1) => (StatusCode::CREATED, ApplyResult::Created),
        (true, _) => (StatusCode::OK, ApplyResult::Configured),
        (false, _) => (StatusCode::OK, ApplyResult::Unchanged),
    };
    Ok((
        status,
        Json(Applied {
            deployment: rec,
            result,
        }),
    ))
}

/// What the fleet's documents would break if `d` were applied.
fn violations_with(
    s: &crate::store::Store,
    d: &Deployment,
    epoch: u64,
) -> Result<Vec<crate::desired::Violation>, crate::store::StoreError> {
    let mut deployments = s.list_deployments()?;
    let generation = deployments
        .iter()
        .find(|x| x.name == d.metadata.name)
        .map_or(1, |x| x.generation + 1);
    deployments.retain(|x| x.name != d.metadata.name);
    deployments.push(crate::store::proposed(d, generation));
    Ok(crate::desired::violations(
        &s.device_labels()?,
        &deployments,
        epoch,
    ))
}

/// Deletes a deployment; its workloads leave every device.
#[utoipa::path(delete, path = "/deployments/{name}", tag = "deployments", params(DeploymentPath),
    responses(
        (status = NO_CONTENT, description = "Deleted"),
        (status = NOT_FOUND, body = ErrorBody),
        (status = CONFLICT, description = "A Git source owns the deployment", body = ErrorBody),
    ))]
pub async fn delete(
    State(st): State<Shared>,
    Path(DeploymentPath { name }): Path<DeploymentPath>,
) -> ApiResult<StatusCode> {
    let n = name.clone();
    let _fleet = st.fleet_changes.lock().await;
    let deleted = st
        .store
        .run(move |s| match s.deployment_owner(&n)? {
            Some(owner) => Ok(Err(super::sources::owned(&n, &owner))),
            None => s.delete_deployment(&n).map(Ok),
        })
        .await??;
    if !deleted {
        return Err(ApiError::not_found(format_args!("deployment {name:?}")));
    }
    tracing::info!(deployment = %name, "deployment deleted");
    st.publish.changed();
    Ok(StatusCode::NO_CONTENT)
}

/// Every device and every reported workload status, read once per request
/// however many deployments are summarised.
struct Fleet {
    devices: Vec<crate::store::DeviceRecord>,
    status_by_device: HashMap<String, Vec<crate::store::WorkloadStatusRecord>>,
}

impl Fleet {
    fn load(s: &crate::store::Store) -> Result<Self, crate::store::StoreError> {
        let mut devices = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = s.list_devices(after.as_deref(), 1000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.to_string());
            devices.extend(page);
        }
        let mut status_by_device: HashMap<String, Vec<_>> = HashMap::new();
        for w in s.workload_status(None)? {
            status_by_device
                .entry(w.device_id.to_string())
                .or_default()
                .push(w);
        }
        Ok(Self {
            devices,
            status_by_device,
        })
    }

    /// One deployment's rollout across the devices its selector matches.
    fn rollout(&self, d: &DeploymentRecord) -> DeploymentStatus {
        let wanted: Vec<String> = d
            .spec
            .spec
            .workloads
            .iter()
            .map(|w| d.spec.workload_id(w))
            .collect();
        let mut out = DeploymentStatus {
            name: d.name.clone(),
            generation: d.generation,
            counts: Counts::default(),
            source: d.source.clone(),
            devices: Vec::new(),
        };
        for dev in self
            .devices
            .iter()
            .filter(|dev| d.spec.spec.selector.matches(&dev.labels))
        {
            let reported = self
                .status_by_device
                .get(dev.id.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let rows: Vec<WorkloadRow> = wanted
                .iter()
                .map(|name| {
                    let r = reported.iter().find(|r| &r.name == name);
                    WorkloadRow {
                        name: name.clone(),
                        sync: r.map(|r| r.sync),
                        health: r.map(|r| r.health),
                        message: r.and_then(|r| r.message.clone()),
                    }
                })
                .collect();
            let current =
                dev.desired_revision.is_some() && dev.applied_revision == dev.desired_revision;
            let in_sync = current && rows.iter().all(|r| r.sync == Some(SyncState::Synced));
            let healthy = in_sync && rows.iter().all(|r| r.health == Some(Health::Healthy));
            let failed = rows.iter().any(|r| {
                matches!(r.sync, Some(SyncState::Failed | SyncState::RolledBack))
                    || r.health == Some(Health::Degraded)
            });
            out.counts.targeted += 1;
            out.counts.in_sync += usize::from(in_sync);
            out.counts.healthy += usize::from(healthy);
            out.counts.failed += usize::from(failed);
            out.devices.push(DeviceRollout {
                device: dev.id.to_string(),
                presence: dev.presence,
                desired_revision: dev.desired_revision,
                applied_revision: dev.applied_revision,
                in_sync,
                healthy,
                failed,
                workloads: rows,
                conditions: dev.conditions.clone(),
            });
        }
        out
    }
}

/// Where the deployment's current generation is, device by device.
#[utoipa::path(get, path = "/deployments/{name}/status", tag = "deployments", params(DeploymentPath),
    responses((status = OK, body = DeploymentStatus), (status = NOT_FOUND, body = ErrorBody)))]
pub async fn status(
    State(st): State<Shared>,
    Path(DeploymentPath { name }): Path<DeploymentPath>,
) -> ApiResult<Json<DeploymentStatus>> {
    let n = name.clone();
    st.store
        .run(move |s| match s.get_deployment(&n)? {
            Some(d) => Ok(Some(Fleet::load(s)?.rollout(&d))),
            None => Ok(None),
        })
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format_args!("deployment {name:?}")))
}

/// The generations the hub keeps of a deployment, newest first.
#[utoipa::path(get, path = "/deployments/{name}/history", tag = "deployments", params(DeploymentPath),
    responses((status = OK, body = Page<DeploymentGeneration>), (status = NOT_FOUND, body = ErrorBody)))]
pub async fn history(
    State(st): State<Shared>,
    Path(DeploymentPath { name }): Path<DeploymentPath>,
) -> ApiResult<Json<Page<DeploymentGeneration>>> {
    let n = name.clone();
    let items = st
        .store
        .run(move |s| match s.get_deployment(&n)? {
            Some(_) => Ok(Some(s.deployment_history(&n)?)),
            None => Ok(None),
        })
        .await?
        .ok_or_else(|| ApiError::not_found(format_args!("deployment {name:?}")))?;
    Ok(Json(super::Page::whole(items)))
}
