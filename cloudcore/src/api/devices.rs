//! `/api/v1/devices…`: list, describe, relabel, delete, events.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use edgefleet_api::{DeviceDetail, DevicePatch, ErrorBody};
use edgefleet_protocol::name::{check_label_key, check_label_value};
use edgefleet_protocol::{Channel, DeviceId, Topic};
use rumqttc::QoS;
use serde::Deserialize;

use super::{ApiError, ApiResult, DevicePath, Page, PageQuery, Shared};
use crate::store::{DeviceRecord, EventRecord};

/// Enrolled devices, a page at a time, in id order.
#[utoipa::path(get, path = "/devices", tag = "devices", params(PageQuery),
    responses((status = OK, body = Page<DeviceRecord>)))]
pub async fn list(
    State(st): State<Shared>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Page<DeviceRecord>>> {
    let limit = q.limit()?;
    let after = q.continue_token.clone();
    let items = st
        .store
        .run(move |s| s.list_devices(after.as_deref(), limit + 1))
        .await?;
    Ok(super::page(items, limit, |d| d.id.to_string()))
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
}

/// A device's events (and inference results), oldest first.
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
            Ok((
                s.get_device(&id2)?.is_some(),
                s.events(&id2, after, limit + 1)?,
            ))
        })
        .await?;
    if !exists {
        return Err(ApiError::not_found(format_args!("device {id:?}")));
    }
    Ok(super::page(items, limit, |e| e.seq.to_string()))
}
