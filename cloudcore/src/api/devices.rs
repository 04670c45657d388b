//! `/api/v1/devices…`: list, describe, relabel, delete, events.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use edgefleet_api::{
    DeviceDetail, DeviceHealth, DevicePatch, ErrorBody, HeartbeatHistory, Presence,
};
use edgefleet_protocol::name::{check_label_key, check_label_value};
use edgefleet_protocol::{Channel, DeviceId, Topic};
use rumqttc::QoS;
use serde::Deserialize;

use super::{ApiError, ApiResult, DevicePath, Page, PageQuery, Shared};
use crate::store::{DeviceRecord, EventRecord};

/// `GET /devices`: a page, and which devices.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceQuery {
    /// At most this many items (default 500, at most 5000).
    #[param(minimum = 1)]
    pub limit: Option<usize>,
    /// The `continue` of the previous page.
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
    /// Devices whose labels match, in Kubernetes syntax
    /// (`site=plant-3,ring!=canary,tier in (a,b),!legacy`).
    #[param(example = "site=plant-3")]
    pub selector: Option<String>,
    /// online, offline or unknown (never connected).
    #[param(example = "online")]
    pub presence: Option<String>,
    /// healthy, progressing, failed or none (see `DeviceHealth`).
    #[param(example = "failed")]
    pub health: Option<String>,
    /// Devices that applied a document with this deployment…
    #[param(example = "demo")]
    pub deployment: Option<String>,
    /// …at this generation (needs `deployment`).
    #[param(minimum = 1)]
    pub generation: Option<u64>,
    /// Devices that applied the generation a Git commit made (a prefix of
    /// at least 7 hex digits) of the deployments it made, or of
    /// `deployment`'s.
    #[param(example = "4f1c2ab")]
    pub commit: Option<String>,
}

impl DeviceQuery {
    fn filter(&self, s: &crate::store::Store) -> ApiResult<crate::store::DeviceFilter> {
        use crate::store::{DeviceFilter, RunsGeneration};
        let mut f = DeviceFilter {
            selector: self
                .selector
                .as_deref()
                .filter(|s| !s.trim().is_empty())
                .map(str::parse)
                .transpose()
                .map_err(|e| ApiError::bad_request(format!("selector: {e}")))?,
            ..DeviceFilter::default()
        };
        if let Some(p) = self.presence.as_deref().filter(|p| !p.is_empty()) {
            f.presence = Some(Presence::parse(p).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "presence {p:?}: expected online, offline or unknown"
                ))
            })?);
        }
        if let Some(h) = self.health.as_deref().filter(|h| !h.is_empty()) {
            f.health = Some(DeviceHealth::parse(h).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "health {h:?}: expected healthy, progressing, failed or none"
                ))
            })?);
        }
        let deployment = self.deployment.as_deref().filter(|d| !d.is_empty());
        if self.generation.is_some() && deployment.is_none() {
            return Err(ApiError::bad_request("generation needs deployment"));
        }
        if let Some(commit) = self.commit.as_deref().filter(|c| !c.is_empty()) {
            if commit.len() < 7 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ApiError::bad_request(format!(
                    "commit {commit:?}: expected at least 7 hex digits"
                )));
            }
            let commit = commit.to_ascii_lowercase();
            for d in s.list_deployments()? {
                let made = d
                    .source
                    .as_ref()
                    .is_some_and(|r| r.commit.starts_with(&commit));
                if made && deployment.is_none_or(|n| n == d.name) {
                    f.runs.push(RunsGeneration(d.name, Some(d.generation)));
                }
            }
            if f.runs.is_empty() {
                // No deployment came from that commit: nothing runs it.
                f.runs.push(RunsGeneration(String::new(), Some(0)));
            }
        } else if let Some(d) = deployment {
            f.runs.push(RunsGeneration(d.to_owned(), self.generation));
        }
        Ok(f)
    }
}

/// Enrolled devices, a page at a time, in id order; optionally only those
/// a label selector, presence, health or what they run picks.
#[utoipa::path(get, path = "/devices", tag = "devices", params(DeviceQuery),
    responses((status = OK, body = Page<DeviceRecord>), (status = BAD_REQUEST, body = ErrorBody)))]
pub async fn list(
    State(st): State<Shared>,
    Query(q): Query<DeviceQuery>,
) -> ApiResult<Json<Page<DeviceRecord>>> {
    let limit = PageQuery {
        limit: q.limit,
        continue_token: None,
    }
    .limit()?;
    let after = q.continue_token.clone();
    let items = st
        .store
        .run(move |s| {
            let filter = match q.filter(s) {
                Ok(f) => f,
                Err(e) => return Ok(Err(e)),
            };
            s.find_devices(&filter, after.as_deref(), limit + 1).map(Ok)
        })
        .await??;
    Ok(super::page(items, limit, |d| d.id.to_string()))
}

/// Device `id`'s heartbeats of the last 24 hours, one point per 5 minutes.
#[utoipa::path(get, path = "/devices/{id}/history", tag = "devices", params(DevicePath),
    responses((status = OK, body = HeartbeatHistory), (status = NOT_FOUND, body = ErrorBody)))]
pub async fn history(
    State(st): State<Shared>,
    Path(DevicePath { id }): Path<DevicePath>,
) -> ApiResult<Json<HeartbeatHistory>> {
    let id2 = id.clone();
    st.store
        .run(move |s| match s.get_device(&id2)? {
            Some(_) => s
                .heartbeat_history(&id2, edgefleet_protocol::now_ms())
                .map(Some),
            None => Ok(None),
        })
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format_args!("device {id:?}")))
}

/// One device, with the workloads it should run and what it reported of them.
#[utoipa::path(get, path = "/devices/{id}", tag = "devices", params(DevicePath),
    responses((status = OK, body = DeviceDetail), (status = NOT_FOUND, body = ErrorBody)))]
pub async fn get_one(
    State(st): State<Shared>,
    Path(DevicePath { id }): Path<DevicePath>,
) -> ApiResult<Json<DeviceDetail>> {
    let id2 = id.clone();
    let (device, desired, workloads) = st
        .store
        .run(move |s| {
            Ok((
                s.get_device(&id2)?,
                s.desired_workloads(&id2)?,
                s.workload_status(Some(&id2))?,
            ))
        })
        .await?;
    let device = device.ok_or_else(|| ApiError::not_found(format_args!("device {id:?}")))?;
    let desired_workloads = desired
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|w| w.get("name").and_then(|n| n.as_str()).map(str::to_owned))
        .collect();
    Ok(Json(DeviceDetail {
        device,
        desired_workloads,
        workloads,
    }))
}

/// Sets (a string) or removes (null) a device's labels.
#[utoipa::path(patch, path = "/devices/{id}", tag = "devices", params(DevicePath),
    request_body = DevicePatch,
    responses(
        (status = OK, body = DeviceRecord),
        (status = NOT_FOUND, body = ErrorBody),
        (status = CONFLICT, description = "The device would refuse its new desired document (limit_exceeded)", body = ErrorBody),
    ))]
pub async fn patch(
    State(st): State<Shared>,
    Path(DevicePath { id }): Path<DevicePath>,
    body: Result<Json<DevicePatch>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<DeviceRecord>> {
    let Json(p) = body.map_err(|e| ApiError::json(&e))?;
    for (k, v) in &p.labels {
        check_label_key(k).map_err(|e| ApiError::bad_request(format!("labels: {e}")))?;
        if let Some(v) = v {
            check_label_value(v).map_err(|e| ApiError::bad_request(format!("labels.{k}: {e}")))?;
        }
    }
    let id2 = id.clone();
    let _fleet = st.fleet_changes.lock().await;
    let (check, epoch) = (st.check_limits, st.epoch);
    let updated = st
        .store
        .run(move |s| {
            let Some(dev) = s.get_device(&id2)? else {
                return Ok(None);
            };
            let mut labels = dev.labels;
            for (k, v) in p.labels {
                match v {
                    Some(v) => labels.insert(k, v),
                    None => labels.remove(&k),
                };
            }
            if labels.len() > edgefleet_protocol::limits::MAX_LABELS {
                return Ok(Some(Err(ApiError::bad_request(format!(
                    "labels: at most {} labels per device",
                    edgefleet_protocol::limits::MAX_LABELS
                )))));
            }
            if check {
                let v = crate::desired::violations(
                    &[(dev.id.clone(), labels.clone())],
                    &s.list_deployments()?,
                    epoch,
                );
                if !v.is_empty() {
                    return Ok(Some(Err(ApiError::limits(&v))));
                }
            }
            s.set_labels(&id2, &labels)?;
            Ok(s.get_device(&id2)?.map(Ok))
        })
        .await?;
    match updated {
        None => Err(ApiError::not_found(format_args!("device {id:?}"))),
        Some(Err(e)) => Err(e),
        Some(Ok(d)) => {
            st.publish.changed();
            Ok(Json(d))
        }
    }
}

/// Forgets a device: its credentials stop working and its topics are cleared.
#[utoipa::path(delete, path = "/devices/{id}", tag = "devices", params(DevicePath),
    responses(
        (status = NO_CONTENT, description = "Deleted"),
        (status = NOT_FOUND, body = ErrorBody),
        (status = SERVICE_UNAVAILABLE, description = "The external broker could not be changed; retry", body = ErrorBody),
    ))]
pub async fn delete(
    State(st): State<Shared>,
    Path(DevicePath { id }): Path<DevicePath>,
) -> ApiResult<StatusCode> {
    // The broker forgets the device first: a device deleted here must not
    // keep a login there.
    if let (Some(d), Ok(dev)) = (&st.dynsec, DeviceId::new(&id))
        && st.registry.get(&dev).is_some()
        && let Err(e) = d.remove_device(&dev).await
    {
        st.metrics.broker_provision_failures.inc();
        tracing::warn!(device = %dev, error = %e, "device not deleted: cannot remove it from the broker");
        return Err(ApiError::broker_unavailable(
            "delete this device's credentials",
            &e,
        ));
    }
    let id2 = id.clone();
    if !st.store.run(move |s| s.delete_device(&id2)).await? {
        return Err(ApiError::not_found(format_args!("device {id:?}")));
    }
    if let Ok(dev) = DeviceId::new(id) {
        st.registry.remove(&dev);
        // Clear the retained document so a re-enrolled key starts clean.
        let topic = Topic::new(dev, Channel::Desired).to_string();
        if let Err(e) = st
            .session
            .client
            .publish(topic, QoS::AtLeastOnce, true, Vec::<u8>::new())
            .await
        {
            tracing::warn!(error = %e, "cannot clear retained desired state of a deleted device");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Return events with a sequence number above this (the `continue` of
    /// the previous page).
    #[serde(rename = "continue")]
    #[param(pattern = "^[0-9]*$")]
    continue_token: Option<String>,
    /// At most this many events (default 500, at most 5000).
    #[param(minimum = 1)]
    limit: Option<usize>,
    /// `true`: the newest `limit` events instead, newest first (one page).
    newest: Option<bool>,
}

/// A device's events (and inference results), oldest first; or its newest.
#[utoipa::path(get, path = "/devices/{id}/events", tag = "devices", params(DevicePath, EventQuery),
    responses((status = OK, body = Page<EventRecord>), (status = NOT_FOUND, body = ErrorBody)))]
pub async fn events(
    State(st): State<Shared>,
    Path(DevicePath { id }): Path<DevicePath>,
    Query(q): Query<EventQuery>,
) -> ApiResult<Json<Page<EventRecord>>> {
    let after: i64 = match q.continue_token.as_deref() {
        None | Some("") => 0,
        Some(t) => t
            .parse()
            .map_err(|_| ApiError::bad_request("continue must be a token from a previous page"))?,
    };
    let limit = PageQuery {
        limit: q.limit,
        continue_token: None,
    }
    .limit()?;
    let id2 = id.clone();
    let (exists, items) = st
        .store
        .run(move |s| {
            let exists = s.get_device(&id2)?.is_some();
            Ok(if q.newest == Some(true) {
                (exists, s.recent_events(Some(&id2), limit)?)
            } else {
                (exists, s.events(&id2, after, limit + 1)?)
            })
        })
        .await?;
    if !exists {
        return Err(ApiError::not_found(format_args!("device {id:?}")));
    }
    Ok(super::page(items, limit, |e| e.seq.to_string()))
}
