//! Local HTTP on 127.0.0.1 only: `/livez`, `/readyz`, `/metrics`, and
//! `POST /v1/events`, through which apps on the device send telemetry
//! upstream. An event is answered 202 only after its SQLite commit, so an app
//! that got 202 never loses it. The KServe v2 inference endpoints
//! (`/v2/...`, [`crate::inference::kserve`]) serve the models the
//! reconciler loaded (`Shared::models`).
//!
//! Never binds anything but loopback.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use edgefleet_protocol::Event;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::inference::ModelRegistry;
use crate::shared::{QueueError, Shared};
use edgefleet_localapi::events::parse_events;

const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot bind local HTTP on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("local HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// The local router plus the KServe v2 endpoints serving `models`.
pub fn router_with_models(shared: Arc<Shared>, models: Arc<ModelRegistry>) -> Router {
    router(shared).merge(crate::inference::kserve::router(models))
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/events", post(post_events))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(shared)
}

/// Binds 127.0.0.1:`port` and prints the bound address.
pub async fn bind(port: u16) -> Result<tokio::net::TcpListener, HttpError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr, source })?;
    // Tests and scripts parse this line (port 0 picks a free port).
    println!("local HTTP on http://{bound}");
    tracing::info!(%bound, "local HTTP listening");
    Ok(listener)
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> Result<(), HttpError> {
    axum::serve(
        listener,
        router_with_models(Arc::clone(&shared), Arc::clone(&shared.models)),
    )
    .with_graceful_shutdown(async move { cancel.cancelled().await })
    .await
    .map_err(HttpError::Serve)
}

fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message.to_string()}})),
    )
        .into_response()
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let store_ok = shared.db.call(|s| s.schema_version().is_ok()).await;
    if !store_ok {
        return (StatusCode::SERVICE_UNAVAILABLE, "store not readable\n").into_response();
    }
    if shared.kube_needed.load(Ordering::Relaxed) && !shared.kube_reachable.load(Ordering::Relaxed)
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "K3s API unreachable\n").into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    edgefleet_daemon::metrics::response(shared.metrics.registry())
}

async fn post_events(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let m = &shared.metrics;
    let items = match parse_events(&body) {
        Ok(items) => items,
        Err(msg) => {
            m.events_refused
                .get_or_create(&[("reason", "invalid")])
                .inc();
            return error(StatusCode::BAD_REQUEST, "invalid_event", msg);
        }
    };
    let now = edgefleet_protocol::now_ms();
    let mut ids = Vec::with_capacity(items.len());
    let mut sealed = Vec::with_capacity(items.len());
    for (i, it) in items.into_iter().enumerate() {
        let event = Event {
            id: it
                .id
                .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string()),
            device_id: shared.device.clone(),
            kind: it.kind,
            workload: it.workload,
            created_at_ms: it.created_at_ms.unwrap_or(now),
            payload: it.payload,
        };
        if let Err(e) = event.check() {
            m.events_refused
                .get_or_create(&[("reason", "invalid")])
                .inc();
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_event",
                format_args!("event [{i}]: {e}"),
            );
        }
        sealed.push((event.id.clone(), shared.identity.signer().seal(&event)));
        ids.push(event.id);
    }
    let n = sealed.len() as u64;
    match shared.queue_events(sealed).await {
        Ok(()) => {
            m.events_accepted.inc_by(n);
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({"accepted": n, "ids": ids})),
            )
                .into_response()
        }
        Err(QueueError::DiskFull(full)) => {
            m.events_refused
                .get_or_create(&[("reason", "disk_full")])
                .inc_by(n);
            // Logged once per pressure streak by the session's disk check.
            tracing::debug!(error = %full, "events refused: disk at its reserve");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "disk_full",
                format_args!("{full}; retry later"),
            )
        }
        Err(e) => {
            m.events_refused
                .get_or_create(&[("reason", "store")])
                .inc_by(n);
            m.store_errors.inc();
            tracing::error!(error = %crate::error_chain(&e), "cannot commit posted events");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the event could not be committed; retry",
            )
        }
    }
}
