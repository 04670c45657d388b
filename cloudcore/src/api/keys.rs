//! Key rotation over the API: the hub's key (`GET /hub/key`,
//! `POST /hub/key/rotate`) and a device's (`POST /devices/{id}/key`).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use edgefleet_api::{DeviceKeyRotated, ErrorBody, HubKey, HubKeyInfo, HubKeyRotation};
use edgefleet_protocol::rotation::DeviceKeyRotation;
use edgefleet_protocol::{DeviceId, Expect, Rejection, open};

use super::{ApiError, ApiResult, DevicePath, Shared};
use crate::registry::DeviceEntry;
use crate::store::KeySwap;

/// How far a device's rotation request may be from the hub's clock.
const ROTATION_SKEW_MS: u64 = 15 * 60 * 1000;

/// The key devices pin at enrollment, and every key the hub has had.
#[utoipa::path(get, path = "/hub/key", tag = "keys",
    responses((status = OK, body = HubKey)))]
pub async fn hub_key(State(st): State<Shared>) -> ApiResult<Json<HubKey>> {
    let current = st.hub_keys.public();
    let keys = st.store.run(|s| s.hub_keys()).await?;
    Ok(Json(HubKey {
        public_key: current.to_base64(),
        key_id: current.kid().to_string(),
        keys: keys
            .into_iter()
            .map(|k| HubKeyInfo {
                key_id: k.kid,
                public_key: k.public_key,
                created_ms: k.created_ms,
                rotated_ms: k.rotated_ms,
                retired_ms: k.retired.as_ref().map(|r| r.0),
                retired_reason: k.retired.map(|r| r.1),
                devices: k.devices,
            })
            .collect(),
    }))
}

/// Replaces the hub's signing key; every device's document is issued again,
/// signed with the new key and carrying its announcement.
#[utoipa::path(post, path = "/hub/key/rotate", tag = "keys",
    responses((status = OK, body = HubKeyRotation)))]
pub async fn rotate(State(st): State<Shared>) -> ApiResult<Json<HubKeyRotation>> {
    // Not while a deployment change is between its check and its write.
    let _one = st.fleet_changes.lock().await;
    let (keys, store) = (st.hub_keys.clone(), st.store.clone());
    let (old, new) = tokio::task::spawn_blocking(move || keys.rotate(&store))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "rotation task failed",
            )
        })?
        .map_err(|e| {
            tracing::error!(error = %crate::error_chain(&e), "hub key rotation failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("hub key rotation failed: {e}"),
            )
        })?;
    st.metrics.hub_key_rotations.inc();
    tracing::info!(previous = %old, key_id = %new, "hub key rotated; re-issuing every device's desired state");
    st.publish.changed();
    Ok(Json(HubKeyRotation {
        previous_key_id: old.to_string(),
        key_id: new.to_string(),
        public_key: st.hub_keys.public().to_base64(),
    }))
}

/// A device replaces its key: the body is a `deviceKey` envelope signed by
/// its current key. No token: the signature is the authentication. A
/// repeated request (the answer was lost) succeeds again.
#[utoipa::path(post, path = "/devices/{id}/key", tag = "keys", params(DevicePath),
    request_body(description = "A `deviceKey` envelope (PROTOCOL.md, \"Key rotation\")",
        content = Object, content_type = "application/json"),
    responses(
        (status = OK, body = DeviceKeyRotated),
        (status = BAD_REQUEST, body = ErrorBody),
        (status = FORBIDDEN, description = "Not signed by the device's current key", body = ErrorBody),
        (status = NOT_FOUND, body = ErrorBody),
        (status = CONFLICT, description = "The key is another device's, or a rotation is pending", body = ErrorBody),
    ))]
pub async fn rotate_device(
    State(st): State<Shared>,
    Path(DevicePath { id }): Path<DevicePath>,
    body: Bytes,
) -> ApiResult<Json<DeviceKeyRotated>> {
    let refused = |status: StatusCode, code: &'static str, msg: String| {
        st.metrics.device_key_rotation("refused");
        tracing::warn!(device = %id, "device key rotation refused: {msg}");
        ApiError::new(status, code, msg)
    };
    let Some(entry) = DeviceId::new(id.clone())
        .ok()
        .and_then(|d| st.registry.get(&d).map(|e| (d, e)))
    else {
        return Err(refused(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no device {id:?}"),
        ));
    };
    let (device, entry) = entry;
    let now = edgefleet_protocol::now_ms();
    let expect = Expect::device(&device).at(now);
    let req = match open::<DeviceKeyRotation>(&body, &entry.key, &expect) {
        Ok(r) => r,
        // Signed by the key it already replaced, naming the key it has now.
        Err(Rejection::UnknownKey { .. })
            if entry.previous_at(now).is_some_and(|prev| {
                open::<DeviceKeyRotation>(&body, prev, &expect)
                    .is_ok_and(|r| r.key().as_ref() == Some(&entry.key))
            }) =>
        {
            st.metrics.device_key_rotation("repeated");
            return Ok(Json(rotated(&device, &entry)));
        }
        Err(r) => {
            let status = match r {
                Rejection::UnknownKey { .. } | Rejection::BadSignature => StatusCode::FORBIDDEN,
                _ => StatusCode::BAD_REQUEST,
            };
            return Err(refused(
                status,
                "rejected",
                format!("rotation request refused ({}): {r}", r.reason()),
            ));
        }
    };
    if now.abs_diff(req.issued_at_ms) > ROTATION_SKEW_MS {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "stale",
            format!(
                "rotation request issued at {} ms, {} s from the hub's clock (at most {} s)",
                req.issued_at_ms,
                now.abs_diff(req.issued_at_ms) / 1000,
                ROTATION_SKEW_MS / 1000
            ),
        ));
    }
    let Some(new) = req.key() else {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            "invalid",
            "publicKey is not a key".into(),
        ));
    };
    if new == entry.key {
        st.metrics.device_key_rotation("repeated");
        return Ok(Json(rotated(&device, &entry)));
    }
    let until = now.saturating_add(st.rotation_grace_ms);
    let (d, old, n) = (device.clone(), entry.key.clone(), new.clone());
    let swap = st
        .store
        .run(move |s| s.rotate_device_key(&d, &old, &n, until))
        .await?;
    match swap {
        KeySwap::Swapped => {}
        KeySwap::Changed => {
            return Err(refused(
                StatusCode::CONFLICT,
                "conflict",
                "the device's key changed meanwhile; try again".into(),
            ));
        }
        KeySwap::KeyTaken => {
            return Err(refused(
                StatusCode::CONFLICT,
                "conflict",
                "that key belongs to another device".into(),
            ));
        }
    }
    let entry = DeviceEntry {
        key: new,
        password_hash: entry.password_hash,
        previous: Some((entry.key, until)),
    };
    st.registry.insert(device.clone(), entry.clone());
    st.metrics.device_key_rotation("rotated");
    tracing::info!(%device, key_id = %entry.key.kid(), "device key rotated; desired state sealed to the new key from now on");
    st.publish.changed();
    Ok(Json(rotated(&device, &entry)))
}

fn rotated(device: &DeviceId, e: &DeviceEntry) -> DeviceKeyRotated {
    DeviceKeyRotated {
        device_id: device.to_string(),
        key_id: e.key.kid().to_string(),
        previous_key_valid_until_ms: e.previous.as_ref().map_or(0, |p| p.1),
    }
}
