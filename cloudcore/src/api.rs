//! The REST API under `/api/v1`, plus `/livez`, `/readyz` and `/metrics`.
//! JSON everywhere; errors have one shape:
//! `{"error": {"code": "not_found", "message": "…"}}`. Operators
//! authenticate with a bearer token (compared in constant time); devices
//! enroll with the bootstrap token and fetch model blobs with their broker
//! credentials.

mod deployments;
mod devices;
mod enroll;
mod keys;
mod models;
mod rollouts;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::handler::Handler as _;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
pub use edgefleet_api::Page;
use edgefleet_api::{ErrorBody, ErrorDetail};
use edgefleet_protocol::DeviceId;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::metrics::Metrics;
use crate::mqtt::Session;
use crate::publisher::Trigger;
use crate::registry::Registry;
use crate::store::{Store, StoreError};

/// Everything handlers share.
#[derive(Debug)]
pub struct AppState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    pub publish: Trigger,
    pub session: Session,
    /// The hub's signing key (rotated in place).
    pub hub_keys: Arc<crate::keys::HubKeys>,
    /// How long a device's replaced key is still accepted (keys.rotation_grace).
    pub rotation_grace_ms: u64,
    pub operator_token: String,
    pub bootstrap_token: String,
    pub device_broker_url: String,
    pub models_dir: PathBuf,
    /// The store's hub epoch (part of every desired document).
    pub epoch: u64,
    /// Refuse changes that would give a device a document it refuses.
    pub check_limits: bool,
    /// Held across "check the fleet, then write" so two changes cannot each
    /// pass the check alone and break it together.
    pub fleet_changes: tokio::sync::Mutex<()>,
    /// Wakes the rollout engine (a new generation, a resume).
    pub rollout_wake: Arc<tokio::sync::Notify>,
    /// Provisions device credentials and ACLs into an external mosquitto.
    pub dynsec: Option<crate::dynsec::Dynsec>,
    /// The hub's user on an external broker (no device may be named so).
    pub broker_username: String,
}

pub type Shared = Arc<AppState>;

/// An API error with its HTTP status and stable code.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// A refused JSON body: 413 when it is over the size limit, else 400.
    pub fn json(e: &axum::extract::rejection::JsonRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.body_text())
        } else {
            Self::bad_request(e.body_text())
        }
    }

    /// An external broker could not be changed for a device (provisioning).
    pub fn broker_unavailable(what: &str, e: &dyn std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            format!("the broker could not {what} ({e}); retry"),
        )
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    /// A change refused because a device would refuse its desired document.
    pub fn limits(violations: &[crate::desired::Violation]) -> Self {
        let msg: Vec<String> = violations.iter().map(ToString::to_string).collect();
        Self::new(StatusCode::CONFLICT, "limit_exceeded", msg.join("; "))
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, source = ?std::error::Error::source(&e), "store error");
        if e.is_disk_full() {
            return Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "disk_full",
                "the hub's disk is full: nothing can be changed until it has room; \
                 reads and desired state are still served",
            );
        }
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal store error; see the hub log",
        )
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A page of at most `limit` of `items` (fetched as `limit + 1` to know
/// whether there is more); the continue token is `key` of the last item.
pub fn page<T>(mut items: Vec<T>, limit: usize, key: impl Fn(&T) -> String) -> Json<Page<T>> {
    let continue_token = if items.len() > limit {
        items.truncate(limit);
        items.last().map(key)
    } else {
        None
    };
    Json(Page {
        items,
        continue_token,
    })
}

/// `?limit=&continue=` on list endpoints.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    pub limit: Option<usize>,
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
}

impl PageQuery {
    pub const DEFAULT_LIMIT: usize = 500;
    pub const MAX_LIMIT: usize = 5000;

    pub fn limit(&self) -> ApiResult<usize> {
        match self.limit {
            None => Ok(Self::DEFAULT_LIMIT),
            Some(0) => Err(ApiError::bad_request("limit must be at least 1")),
            Some(n) => Ok(n.min(Self::MAX_LIMIT)),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn token_ok(given: &str, expected: &str) -> bool {
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// Operator routes: a bearer token equal to the operator token.
async fn require_operator(State(st): State<Shared>, req: Request, next: Next) -> Response {
    match bearer(req.headers()) {
        Some(t) if token_ok(t, &st.operator_token) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the operator token is not valid",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer <operator token>` header",
        )
        .into_response(),
    }
}

/// The operator token, or a device's broker credentials as HTTP Basic auth
/// (devices fetch model blobs with those).
pub fn operator_or_device(st: &AppState, headers: &HeaderMap) -> bool {
    if bearer(headers).is_some_and(|t| token_ok(t, &st.operator_token)) {
        return true;
    }
    let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else {
        return false;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return false;
    };
    let Some((user, pass)) = text.split_once(':') else {
        return false;
    };
    let Ok(id) = DeviceId::new(user) else {
        return false;
    };
    st.registry
        .get(&id)
        .is_some_and(|d| bool::from(crate::broker::password_hash(pass).ct_eq(&d.password_hash)))
}

async fn track_latency(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let resp = next.run(req).await;
    st.metrics
        .api_requests
        .get_or_create(&vec![
            ("method", method),
            ("route", route),
            ("status", resp.status().as_u16().to_string()),
        ])
        .observe(started.elapsed().as_secs_f64());
    resp
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<Shared>) -> Response {
    let store = st.store.run(|s| s.ping()).await.is_ok();
    let broker = st.session.is_connected();
    let body = format!(
        "store: {}\nbroker: {}\n",
        if store { "ok" } else { "unavailable" },
        if broker { "connected" } else { "not connected" }
    );
    let status = if store && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

async fn metrics(State(st): State<Shared>) -> Response {
    if let Ok((total, online)) = st.store.run(|s| s.count_devices()).await {
        st.metrics.devices.set(total as i64);
        st.metrics.devices_online.set(online as i64);
    }
    let current = st.hub_keys.public().kid().0.clone();
    if let Ok(n) = st
        .store
        .run(move |s| s.devices_behind_hub_key(&current))
        .await
    {
        st.metrics.hub_key_devices_behind.set(n as i64);
    }
    if let Ok(counts) = st.store.run(|s| s.condition_counts()).await {
        for (kind, n) in counts {
            st.metrics
                .device_conditions
                .get_or_create(&vec![("type", kind.as_str().to_owned())])
                .set(n as i64);
        }
    }
    edgefleet_daemon::metrics::response(st.metrics.registry())
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API route")
}

/// The whole HTTP surface.
/// The REST API. Request bodies are limited to `max_body` bytes, a model
/// upload to `max_model` (413 beyond).
pub fn router(st: Shared, max_body: usize, max_model: usize) -> Router {
    let operator = Router::new()
        .route("/devices", get(devices::list))
        .route(
            "/devices/{id}",
            get(devices::get_one)
                .patch(devices::patch)
                .delete(devices::delete),
        )
        .route("/devices/{id}/events", get(devices::events))
        .route("/deployments", get(deployments::list))
        .route(
            "/deployments/{name}",
            get(deployments::get_one)
                .put(deployments::put)
                .delete(deployments::delete),
        )
        .route("/deployments/{name}/status", get(deployments::status))
        .route("/deployments/{name}/history", get(deployments::history))
        .route("/deployments/{name}/rollout", get(rollouts::status))
        .route("/deployments/{name}/rollout/{action}", post(rollouts::act))
        .route("/deployments/{name}/rollback", post(rollouts::rollback))
        .route(
            "/models",
            post(models::upload.layer(DefaultBodyLimit::max(max_model))).get(models::list),
        )
        .route("/hub/key/rotate", post(keys::rotate))
        .route_layer(middleware::from_fn_with_state(st.clone(), require_operator));
    let open = Router::new()
        .route("/enroll", post(enroll::enroll))
        .route("/hub/key", get(keys::hub_key))
        .route("/devices/{id}/key", post(keys::rotate_device))
        .route("/models/{sha256}/blob", get(models::blob));
    Router::new()
        .nest("/api/v1", operator.merge(open))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(st.clone(), track_latency))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(st)
}
