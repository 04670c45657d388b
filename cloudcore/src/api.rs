//! The REST API under `/api/v1`, plus `/livez`, `/readyz` and `/metrics`.
//! JSON everywhere; errors have one shape:
//! `{"error": {"code": "not_found", "message": "…"}}`. Operators
//! authenticate with a bearer token (compared in constant time); devices
//! enroll with the bootstrap token and fetch model blobs with their broker
//! credentials.

mod blobs;
mod commands;
mod deployments;
mod devices;
mod enroll;
mod keys;
mod logs;
mod models;
mod openapi;
mod overview;
pub(crate) mod releases;
mod rollouts;
pub(crate) mod sources;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
pub use edgefleet_api::Page;
use edgefleet_api::{ErrorBody, ErrorDetail};
use edgefleet_protocol::DeviceId;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    /// Agent release binaries, by sha256.
    pub releases_dir: PathBuf,
    /// Git sources' bare repositories (caches of their remotes).
    pub sources_dir: PathBuf,
    /// Git sources to fetch now.
    pub sources: crate::sources::Triggers,
    /// The store's hub epoch (part of every desired document).
    pub epoch: u64,
    /// Refuse changes that would give a device a document it refuses.
    pub check_limits: bool,
    /// Held across "check the fleet, then write" so two changes cannot each
    /// pass the check alone and break it together.
    pub fleet_changes: tokio::sync::Mutex<()>,
    /// Wakes the rollout engine (a new generation, a resume).
    pub rollout_wake: Arc<tokio::sync::Notify>,
    /// Sends new commands to their devices.
    pub commands: crate::commands::Dispatch,
    /// Callers waiting for logs.
    pub logs: crate::logs::LogStreams,
    /// Recent logs requests per device (the rate limit).
    pub log_requests:
        std::sync::Mutex<std::collections::HashMap<String, std::collections::VecDeque<Instant>>>,
    /// Provisions device credentials and ACLs into an external mosquitto.
    pub dynsec: Option<crate::dynsec::Dynsec>,
    /// The hub's user on an external broker (no device may be named so).
    pub broker_username: String,
    /// The dashboard's sessions and change feed.
    pub ui: crate::ui::Ui,
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

/// `{id}` in a device's paths.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DevicePath {
    /// The device id
    // Read as text, so an id no device can have is a 404 like any unknown
    // one; described as a `DeviceId`, its one pattern and length.
    #[param(value_type = DeviceId)]
    pub id: String,
}

/// `{name}` in a deployment's paths.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DeploymentPath {
    /// The deployment's metadata.name
    #[param(example = "demo")]
    pub name: String,
}

/// `?limit=&continue=` on list endpoints.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// At most this many items (default 500, at most 5000).
    #[param(minimum = 1)]
    pub limit: Option<usize>,
    /// The `continue` of the previous page.
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

pub(crate) fn token_ok(given: &str, expected: &str) -> bool {
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// Operator routes: a bearer token equal to the operator token, or a
/// dashboard session (whose changes carry its CSRF token). A change made
/// is announced to the dashboard.
async fn require_operator(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    let ok = match bearer(req.headers()) {
        Some(t) if token_ok(t, &st.operator_token) => true,
        Some(_) => {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the operator token is not valid",
            )
            .into_response();
        }
        None => match crate::ui::cookie_auth(&st, req.headers(), safe) {
            crate::ui::CookieAuth::Ok => true,
            crate::ui::CookieAuth::CsrfMissing => {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "a change from a dashboard session needs its CSRF token (X-CSRF-Token)",
                )
                .into_response();
            }
            crate::ui::CookieAuth::None => false,
        },
    };
    if !ok {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer <operator token>` header",
        )
        .into_response();
    }
    let path = (!safe).then(|| req.uri().path().to_owned());
    let resp = next.run(req).await;
    if let Some(path) = path
        && resp.status().is_success()
    {
        announce(&st.ui.changes, &path);
    }
    resp
}

/// Tells the dashboard what an operator's change touched.
fn announce(changes: &crate::ui::Changes, path: &str) {
    use crate::ui::Change;
    let mut parts = path.trim_start_matches("/api/v1/").split('/');
    match (parts.next(), parts.next()) {
        (Some("devices"), Some(id)) => match DeviceId::new(id) {
            Ok(id) => changes.devices(vec![id]),
            Err(_) => changes.send(Change::AllDevices),
        },
        (Some("deployments"), _) => {
            changes.send(Change::Deployments);
            changes.send(Change::Rollouts);
        }
        (Some("sources"), _) => {
            changes.send(Change::Sources);
            changes.send(Change::Deployments);
        }
        (Some("models" | "agent-releases"), _) => changes.send(Change::Models),
        _ => {}
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

#[utoipa::path(get, path = "/livez", tag = "health",
    responses((status = OK, description = "The process answers", body = String, content_type = "text/plain")))]
async fn livez() -> &'static str {
    "ok\n"
}

/// Ready when the store answers and the hub is connected to its broker.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = OK, description = "Ready", body = String, content_type = "text/plain"),
        (status = SERVICE_UNAVAILABLE, description = "The store or the broker is not available", body = String, content_type = "text/plain"),
    ))]
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

#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = OK, description = "OpenMetrics text", body = String, content_type = "application/openmetrics-text")))]
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

/// The operator's routes (bearer token). A model or agent release upload
/// may be up to `max_model` bytes.
fn operator_routes(max_model: usize) -> OpenApiRouter<Shared> {
    let models = OpenApiRouter::new()
        .routes(routes!(models::upload, models::list))
        .routes(routes!(releases::upload, releases::list))
        .layer(DefaultBodyLimit::max(max_model));
    OpenApiRouter::new()
        .routes(routes!(devices::list))
        .routes(routes!(devices::get_one, devices::patch, devices::delete))
        .routes(routes!(devices::events))
        .routes(routes!(devices::history))
        .routes(routes!(overview::overview))
        .routes(routes!(commands::create, commands::list))
        .routes(routes!(commands::get_one))
        .routes(routes!(commands::create_bulk))
        .routes(routes!(logs::logs))
        .routes(routes!(deployments::list))
        .routes(routes!(
            deployments::get_one,
            deployments::put,
            deployments::delete
        ))
        .routes(routes!(deployments::status))
        .routes(routes!(deployments::history))
        .routes(routes!(rollouts::status))
        .routes(routes!(rollouts::act))
        .routes(routes!(rollouts::rollback))
        .routes(routes!(keys::rotate))
        .routes(routes!(sources::list))
        .routes(routes!(sources::get_one, sources::put, sources::delete))
        .routes(routes!(sources::reconcile))
        .merge(models)
}

/// Routes with their own authentication: the bootstrap token, a device's
/// signature or credentials, none for the hub's public key.
fn open_routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::new()
        .routes(routes!(enroll::enroll))
        .routes(routes!(keys::hub_key))
        .routes(routes!(keys::rotate_device))
        .routes(routes!(models::blob))
        .routes(routes!(releases::blob))
        .routes(routes!(sources::webhook))
}

/// The whole surface and its document, from the same routes.
fn assemble(
    mut operator: OpenApiRouter<Shared>,
    open: OpenApiRouter<Shared>,
) -> (Router<Shared>, utoipa::openapi::OpenApi) {
    openapi::require(operator.get_openapi_mut(), openapi::OPERATOR);
    let (router, api) = OpenApiRouter::with_openapi(openapi::base())
        .nest("/api/v1", operator.merge(open))
        .routes(routes!(livez))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .split_for_parts();
    (router, openapi::finish(api))
}

/// The REST API's OpenAPI document (what `/api/v1/openapi.json` serves).
pub fn document() -> utoipa::openapi::OpenApi {
    assemble(operator_routes(0), open_routes()).1
}

/// The whole HTTP surface.
/// The REST API. Request bodies are limited to `max_body` bytes, a model
/// upload to `max_model` (413 beyond).
pub fn router(st: Shared, max_body: usize, max_model: usize) -> Router {
    let operator = operator_routes(max_model)
        .route_layer(middleware::from_fn_with_state(st.clone(), require_operator));
    let (router, api) = assemble(operator, open_routes());
    // Made once; each request shares the bytes.
    let doc = bytes::Bytes::from(
        api.to_pretty_json()
            .expect("the OpenAPI document serialises"),
    );
    router
        .route(
            "/api/v1/openapi.json",
            get(move || {
                std::future::ready(([(header::CONTENT_TYPE, "application/json")], doc.clone()))
            }),
        )
        .merge(crate::ui::router())
        .fallback(not_found)
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(st.clone(), track_latency))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(st)
}

/// Answers axum's own refusals (a path, query or body its extractors could
/// not read, an oversized body, a method a route does not have) in the API's
/// one error shape, as the handlers' own errors are.
async fn json_errors(req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    let resp = next.run(req).await;
    if !api {
        return resp;
    }
    let status = resp.status();
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // A refusal's text is a line or two; the limit only bounds the read.
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let code = match status {
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "invalid",
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("refused").to_owned()
    } else {
        text
    };
    tracing::info!(status = status.as_u16(), code, "request refused: {message}");
    let mut out = ApiError::new(status, code, message).into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}
