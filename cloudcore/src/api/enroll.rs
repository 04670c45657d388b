//! `POST /api/v1/enroll`: bootstrap token + device public key → device id,
//! broker credentials, hub key.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use edgefleet_api::ErrorBody;
use edgefleet_protocol::{BrokerCredentials, DeviceId, EnrollRequest, EnrollResponse};
use sha2::{Digest, Sha256};

use super::{ApiError, ApiResult, Shared, token_ok};
use crate::broker::password_hash;
use crate::keys::random_token;
use crate::registry::DeviceEntry;
use crate::store::EnrollOutcome;

/// `dev-` + 16 hex characters of the key's SHA-256: stable per key.
fn derived_id(public_key_b64: &str) -> DeviceId {
    let h = hex::encode(&Sha256::digest(public_key_b64.as_bytes())[..8]);
    DeviceId::new(format!("dev-{h}"))
        .unwrap_or_else(|_| unreachable!("dev-<hex> is a valid DNS label"))
}

/// Enrolls a device with the bootstrap token; answers its broker
/// credentials and the hub's key.
#[utoipa::path(post, path = "/enroll", tag = "enrollment", request_body = EnrollRequest,
    responses(
        (status = OK, body = EnrollResponse),
        (status = UNAUTHORIZED, description = "Wrong bootstrap token", body = ErrorBody),
        (status = CONFLICT, description = "The id is enrolled with another key", body = ErrorBody),
        (status = SERVICE_UNAVAILABLE, description = "The external broker could not be changed; retry", body = ErrorBody),
    ))]
pub async fn enroll(
    State(st): State<Shared>,
    body: Result<Json<EnrollRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<EnrollResponse>> {
    let result = |r: &str| {
        st.metrics
            .enrollments
            .get_or_create(&vec![("result", r.to_owned())])
            .inc()
    };
    let Json(req) = body.map_err(|e| {
        result("invalid");
        ApiError::json(&e)
    })?;
    if !token_ok(&req.token, &st.bootstrap_token) {
        result("bad_token");
        tracing::warn!("enrollment refused: bad bootstrap token");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bootstrap token is not valid",
        ));
    }
    let key = req.validate().map_err(|e| {
        result("invalid");
        ApiError::bad_request(e.to_string())
    })?;
    // The hub's own broker identities: a device under one of those names
    // could take over the hub's sessions (same client id) or, provisioned
    // into mosquitto, replace the hub's broker user.
    if let Some(id) = &req.device_id
        && (id.as_str().starts_with(crate::broker::HUB_USERNAME)
            || (!st.broker_username.is_empty() && id.as_str() == st.broker_username))
    {
        result("invalid");
        return Err(ApiError::bad_request(format!(
            "device id {:?} is reserved for the hub's own broker sessions",
            id.as_str()
        )));
    }
    let public_key = key.to_base64();
    let derived = derived_id(&public_key);
    let password = random_token();
    let hash = password_hash(&password);
    let (pk, labels, requested) = (
        public_key.clone(),
        req.labels.clone(),
        req.device_id.clone(),
    );
    let meta = (
        req.hostname.clone(),
        req.arch.clone(),
        req.agent_version.clone(),
    );
    let outcome = st
        .store
        .run(move |s| {
            s.enroll_device(
                requested.as_ref(),
                &derived,
                &pk,
                &labels,
                &hash,
                (&meta.0, &meta.1, &meta.2),
            )
        })
        .await?;
    let (id, new) = match outcome {
        EnrollOutcome::New(id) => (id, true),
        EnrollOutcome::Existing(id) => (id, false),
        EnrollOutcome::IdTaken => {
            result("conflict");
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "device id {:?} is enrolled with another key; delete that device first or choose another id",
                    req.device_id.map(|d| d.to_string()).unwrap_or_default()
                ),
            ));
        }
    };
    // An external mosquitto learns the password before the device does.
    if let Some(d) = &st.dynsec
        && let Err(e) = d.provision_device(&id, &password).await
    {
        result("broker_unavailable");
        st.metrics.broker_provision_failures.inc();
        tracing::warn!(device = %id, error = %e, "enrollment failed: cannot provision the broker");
        return Err(ApiError::broker_unavailable(
            "be given this device's credentials",
            &e,
        ));
    }
    // A re-enrollment keeps a rotation's grace period for the old key.
    let previous = st.registry.get(&id).and_then(|e| e.previous);
    st.registry.insert(
        id.clone(),
        DeviceEntry {
            key,
            password_hash: hash,
            previous,
        },
    );
    result(if new { "enrolled" } else { "re_enrolled" });
    tracing::info!(device = %id, new, "device enrolled");
    if new {
        st.publish.changed();
    }
    let hub_key = st.hub_keys.public();
    Ok(Json(EnrollResponse {
        device_id: id.clone(),
        broker: BrokerCredentials {
            url: st.device_broker_url.clone(),
            username: id.to_string(),
            password,
        },
        hub_public_key: hub_key.to_base64(),
        hub_key_id: hub_key.kid().to_string(),
    }))
}
