//! `GET /api/v1/devices/{id}/logs/{workload}`: a workload's recent logs,
//! read on the device and streamed back to the caller as they arrive. The
//! hub sends a `logs` command (stored like any other, so it shows in the
//! device's command list) and hands the device's chunks to the caller.
//!
//! Stated bounds: a device that is offline is refused at once (409); the
//! device must start answering within [`FIRST_CHUNK`], and each further
//! chunk must follow within [`NEXT_CHUNK`] (a stream cut short ends with a
//! line saying so); at most [`PER_MINUTE`] requests per device a minute
//! (429); at most `limitBytes` (default 1 MiB, at most 4 MiB). Every
//! request is audited in the hub's log (target `audit`: who, device,
//! workload, what was asked).

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edgefleet_api::{ErrorBody, Presence};
use edgefleet_protocol::command::MAX_LOG_BYTES;
use edgefleet_protocol::{CommandAction, DeviceId};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::{ApiError, ApiResult, Shared};
use crate::store::NewCommand;

/// How long the device has to send its first chunk.
pub const FIRST_CHUNK: Duration = Duration::from_secs(15);
/// How long between two chunks before the stream is cut short.
pub const NEXT_CHUNK: Duration = Duration::from_secs(15);
/// Logs requests one device takes a minute.
pub const PER_MINUTE: usize = 6;
/// `limitBytes` unless asked.
const DEFAULT_LIMIT: u32 = 1024 * 1024;
/// How long the logs command is valid (the device is online when asked).
const EXPIRY_MS: u64 = 30_000;

/// `{id}` and `{workload}` in a logs path.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct LogsPath {
    /// The device id
    #[param(value_type = DeviceId)]
    pub id: String,
    /// The workload as the device runs it: `<deployment>.<workload>`
    #[param(example = "demo.web")]
    pub workload: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct LogsQuery {
    /// One container of the workload's pods (default: every container).
    container: Option<String>,
    /// The last N lines of each container.
    #[param(minimum = 1)]
    tail: Option<u32>,
    /// Only lines newer than this (`10m`, `1h`).
    #[param(value_type = Option<String>, example = "10m")]
    since: Option<edgefleet_protocol::Duration>,
    /// At most this many bytes (default 1 MiB, at most 4 MiB).
    #[param(minimum = 1, maximum = 4194304)]
    limit_bytes: Option<u32>,
}

fn refuse(status: StatusCode, code: &'static str, message: String) -> ApiError {
    ApiError::new(status, code, message)
}

/// A workload's recent logs: its pods' logs from the device's K3s API, or,
/// for an inference workload, the agent's own recent lines about it.
/// Streamed as plain text as the device sends it.
#[utoipa::path(get, path = "/devices/{id}/logs/{workload}", tag = "commands",
    params(LogsPath, LogsQuery),
    responses(
        (status = OK, description = "The logs, streamed", body = String, content_type = "text/plain"),
        (status = NOT_FOUND, description = "No such device, or the workload is not assigned to it", body = ErrorBody),
        (status = CONFLICT, description = "The device is offline (code device_offline)", body = ErrorBody),
        (status = TOO_MANY_REQUESTS, description = "Over the device's logs rate", body = ErrorBody),
        (status = BAD_GATEWAY, description = "The device could not read the logs (code device_error)", body = ErrorBody),
        (status = GATEWAY_TIMEOUT, description = "The device did not answer in time (code device_timeout)", body = ErrorBody),
    ))]
pub async fn logs(
    State(st): State<Shared>,
    Path(LogsPath { id, workload }): Path<LogsPath>,
    Query(q): Query<LogsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let limit = q.limit_bytes.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LOG_BYTES {
        return Err(ApiError::bad_request("limitBytes must be 1 to 4194304"));
    }
    if q.tail == Some(0) {
        return Err(ApiError::bad_request("tail must be at least 1"));
    }
    if let Some(c) = &q.container
        && edgefleet_protocol::name::check_dns_label(c, 63).is_err()
    {
        return Err(ApiError::bad_request(
            "container must be a container name (a DNS label)",
        ));
    }
    let id2 = id.clone();
    let (device, desired) = st
        .store
        .run(move |s| Ok((s.get_device(&id2)?, s.desired_workloads(&id2)?)))
        .await?;
    let device = device.ok_or_else(|| ApiError::not_found(format_args!("device {id:?}")))?;
    let assigned = desired
        .as_ref()
        .and_then(|w| w.as_array())
        .is_some_and(|ws| ws.iter().any(|w| w["name"] == workload.as_str()));
    if !assigned {
        return Err(ApiError::not_found(format_args!(
            "workload {workload:?} on device {id:?}"
        )));
    }
    let counted = |result: &str| {
        st.metrics
            .log_requests
            .get_or_create(&vec![("result", result.to_owned())])
            .inc();
    };
    if device.presence != Presence::Online {
        counted("offline");
        let seen = device
            .last_seen_ms
            .map(|ms| edgefleet_api::text::age(Some(ms)))
            .map_or_else(|| "never seen".to_owned(), |a| format!("last seen {a} ago"));
        return Err(refuse(
            StatusCode::CONFLICT,
            "device_offline",
            format!(
                "device {id:?} is offline ({seen}); logs are read from a device that is online"
            ),
        ));
    }
    if let Err(wait) = admit(&st, &id) {
        counted("throttled");
        let mut r = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!("device {id:?} already had {PER_MINUTE} logs requests in the last minute; retry in {}s", wait.as_secs().max(1)),
        )
        .into_response();
        r.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(wait.as_secs().max(1)),
        );
        return Ok(r);
    }
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info!(target: "audit", who = "operator", user_agent = agent, device = %id, %workload,
        container = ?q.container, tail = ?q.tail, since = ?q.since.map(|d| d.to_string()), limit,
        "logs requested");
    let now = edgefleet_protocol::now_ms();
    let cmd = NewCommand {
        device_id: device.id.clone(),
        id: super::commands::new_id(),
        action: CommandAction::Logs {
            workload: workload.clone(),
            container: q.container.clone(),
            tail_lines: q.tail,
            since_seconds: q.since.map(|d| d.as_secs()),
            limit_bytes: limit,
        },
        created_ms: now,
        expires_ms: now + EXPIRY_MS,
    };
    let cid = cmd.id.clone();
    // Registered before the command exists: no chunk can come first.
    let mut waiting = st.logs.register(&cid, device.id.clone());
    if let Err(e) = super::commands::issue(&st, cmd).await {
        if e.status == StatusCode::TOO_MANY_REQUESTS {
            counted("throttled");
        }
        return Err(e);
    }
    let first = match tokio::time::timeout(FIRST_CHUNK, waiting.rx.recv()).await {
        Ok(Some(c)) => c,
        _ => {
            counted("timeout");
            return Err(refuse(
                StatusCode::GATEWAY_TIMEOUT,
                "device_timeout",
                format!(
                    "device {id:?} did not answer within {}s",
                    FIRST_CHUNK.as_secs()
                ),
            ));
        }
    };
    if first.last
        && let Some(e) = first.error
    {
        counted("failed");
        return Err(refuse(
            StatusCode::BAD_GATEWAY,
            "device_error",
            format!("device {id:?} could not read the logs: {e}"),
        ));
    }
    counted("streamed");
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    let stream_id = cid.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let mut chunk = first;
        let mut expect = 0;
        // Why the stream ends early, said as its last line.
        let cut_short = loop {
            if chunk.seq != expect {
                break Some(format!("chunks {expect}..{} lost", chunk.seq));
            }
            if tx.write_all(chunk.data.as_bytes()).await.is_err() {
                break None; // the caller went away
            }
            if chunk.last {
                break chunk.error.take();
            }
            expect += 1;
            match tokio::time::timeout(NEXT_CHUNK, waiting.rx.recv()).await {
                Ok(Some(c)) => chunk = c,
                _ => {
                    break Some(format!(
                        "the device sent nothing for {}s",
                        NEXT_CHUNK.as_secs()
                    ));
                }
            }
        };
        if let Some(why) = cut_short {
            let _ = tx
                .write_all(format!("\n[edgefleet: logs cut short: {why}]\n").as_bytes())
                .await;
        }
        tracing::debug!(command = %stream_id, chunks = expect + 1, elapsed_ms = started.elapsed().as_millis() as u64, "logs stream ended");
        let _ = tx.shutdown().await;
    });
    let mut r = Body::from_stream(tokio_util::io::ReaderStream::new(rx)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&cid) {
        r.headers_mut().insert("x-edgefleet-command", v);
    }
    Ok(r)
}

/// Counts a logs request for `device`; `Err(wait)` when it already had
/// [`PER_MINUTE`] in the last minute.
fn admit(st: &Shared, device: &str) -> Result<(), Duration> {
    let now = Instant::now();
    let minute = Duration::from_secs(60);
    let mut all = st.log_requests.lock().unwrap_or_else(|p| p.into_inner());
    // Forget devices with nothing in the last minute (bounded by devices).
    all.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < minute));
    let q = all.entry(device.to_owned()).or_default();
    while q.front().is_some_and(|t| now.duration_since(*t) >= minute) {
        q.pop_front();
    }
    if q.len() >= PER_MINUTE {
        let oldest = q.front().copied().unwrap_or(now);
        return Err(minute.saturating_sub(now.duration_since(oldest)));
    }
    q.push_back(now);
    Ok(())
}
