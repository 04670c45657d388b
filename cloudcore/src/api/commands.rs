//! `/api/v1/devices/{id}/commands…` and `/api/v1/commands`: one-off,
//! signed, expiring commands to one device or to every device a label
//! selector matches, and where each is (store/commands.rs; sent by
//! [`crate::commands`]).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use edgefleet_api::{
    BulkCommandRequest, BulkCommandResponse, CommandRecord, CommandRequest, ErrorBody, Page,
};
use edgefleet_protocol::{CommandAction, DeviceId};
use rand::RngCore;
use serde::Deserialize;

use super::{ApiError, ApiResult, DevicePath, Shared};
use crate::store::{CommandRefused, NewCommand};

/// How long a command waits for an offline device unless told.
const DEFAULT_EXPIRY_MS: u64 = 10 * 60 * 1000;
/// The longest a command may wait.
const MAX_EXPIRY_MS: u64 = 24 * 60 * 60 * 1000;

/// `{id}` and `{cid}` in a command's path.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct CommandPath {
    /// The device id
    #[param(value_type = DeviceId)]
    pub id: String,
    /// The command id
    pub cid: String,
}

/// A new command id: 16 random bytes, base64url (22 characters).
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The expiry (Unix ms) of a command created at `now`, checked.
fn expiry(expires_in: Option<edgefleet_protocol::Duration>, now: u64) -> ApiResult<u64> {
    let ms = match expires_in {
        None => DEFAULT_EXPIRY_MS,
        Some(d) => d.as_secs().saturating_mul(1000),
    };
    if ms == 0 || ms > MAX_EXPIRY_MS {
        return Err(ApiError::bad_request(
            "expiresIn must be more than 0 and at most 24h",
        ));
    }
    Ok(now + ms)
}

fn check_action(a: &CommandAction) -> ApiResult<()> {
    if let CommandAction::Logs { .. } = a {
        return Err(ApiError::bad_request(
            "action: logs are asked with GET /api/v1/devices/{id}/logs/{workload}, which streams them",
        ));
    }
    // A workload as the device knows it: `<deployment>.<workload>`.
    if let CommandAction::RestartWorkload { name } = a
        && (name.is_empty()
            || name.len() > 127
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'))
    {
        return Err(ApiError::bad_request(
            "action.name: a workload as <deployment>.<workload>, at most 127 characters of [a-z0-9.-]",
        ));
    }
    Ok(())
}

fn too_many(device: &str) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_commands",
        format!(
            "device {device:?} already has {} open commands; wait for them to finish or expire",
            crate::store::commands::MAX_OPEN_PER_DEVICE
        ),
    )
}

fn created(st: &Shared, c: &CommandRecord) {
    st.metrics
        .commands_created
        .get_or_create(&vec![("action", c.action.name().to_owned())])
        .inc();
    tracing::info!(device = %c.device_id, id = %c.id, action = c.action.name(),
        expires_ms = c.expires_ms, "command created");
}

/// Sends one command to a device: at once if it is online, else when it
/// comes back, unless the command has expired by then. The device runs it
/// once.
#[utoipa::path(post, path = "/devices/{id}/commands", tag = "commands", params(DevicePath),
    request_body = CommandRequest,
    responses(
        (status = CREATED, body = CommandRecord),
        (status = NOT_FOUND, body = ErrorBody),
        (status = TOO_MANY_REQUESTS, description = "The device has too many open commands", body = ErrorBody),
    ))]
pub async fn create(
    State(st): State<Shared>,
    Path(DevicePath { id }): Path<DevicePath>,
    body: Result<Json<CommandRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<CommandRecord>)> {
    let Json(req) = body.map_err(|e| ApiError::json(&e))?;
    let device =
        DeviceId::new(&id).map_err(|_| ApiError::not_found(format_args!("device {id:?}")))?;
    check_action(&req.action)?;
    let now = edgefleet_protocol::now_ms();
    let cmd = NewCommand {
        device_id: device.clone(),
        id: new_id(),
        action: req.action,
        created_ms: now,
        expires_ms: expiry(req.expires_in, now)?,
    };
    Ok((StatusCode::CREATED, Json(issue(&st, cmd).await?)))
}

/// Stores one command and hands it to the dispatcher; 404 for a device the
/// hub does not know, 429 when it has too many open commands.
pub async fn issue(st: &Shared, cmd: NewCommand) -> ApiResult<CommandRecord> {
    let device = cmd.device_id.clone();
    match st
        .store
        .run(move |s| s.create_commands(&[cmd]))
        .await?
        .pop()
    {
        Some(Ok(c)) => {
            created(st, &c);
            st.commands.created(device);
            Ok(c)
        }
        Some(Err(CommandRefused::TooManyOpen)) => Err(too_many(device.as_str())),
        _ => Err(ApiError::not_found(format_args!(
            "device {:?}",
            device.as_str()
        ))),
    }
}

/// One command to every device the selector matches (it must name at least
/// one label: a command to the whole fleet is one selector away, never an
/// empty one).
#[utoipa::path(post, path = "/commands", tag = "commands",
    request_body = BulkCommandRequest,
    responses((status = CREATED, body = BulkCommandResponse)))]
pub async fn create_bulk(
    State(st): State<Shared>,
    body: Result<Json<BulkCommandRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<BulkCommandResponse>)> {
    let Json(req) = body.map_err(|e| ApiError::json(&e))?;
    let mut errs = edgefleet_protocol::ValidationErrors::default();
    req.selector.validate_into("selector", &mut errs);
    if let Err(e) = errs.into_result() {
        return Err(ApiError::bad_request(e.to_string()));
    }
    if req.selector == edgefleet_protocol::LabelSelector::default() {
        return Err(ApiError::bad_request(
            "selector: name at least one label (matchLabels or matchExpressions)",
        ));
    }
    check_action(&req.action)?;
    let now = edgefleet_protocol::now_ms();
    let expires_ms = expiry(req.expires_in, now)?;
    let (selector, action) = (req.selector, req.action);
    let results = st
        .store
        .run(move |s| {
            let cmds: Vec<NewCommand> = s
                .device_labels()?
                .into_iter()
                .filter(|(_, labels)| selector.matches(labels))
                .map(|(device_id, _)| NewCommand {
                    device_id,
                    id: new_id(),
                    action: action.clone(),
                    created_ms: now,
                    expires_ms,
                })
                .collect();
            let r = s.create_commands(&cmds)?;
            Ok(cmds.into_iter().zip(r).collect::<Vec<_>>())
        })
        .await?;
    let mut out = BulkCommandResponse {
        items: Vec::new(),
        skipped: Vec::new(),
    };
    for (cmd, r) in results {
        match r {
            Ok(c) => {
                created(&st, &c);
                st.commands.created(cmd.device_id);
                out.items.push(c);
            }
            Err(_) => out.skipped.push(cmd.device_id.to_string()),
        }
    }
    Ok((StatusCode::CREATED, Json(out)))
}

/// A device's commands, newest first (the newest 256 are kept).
#[utoipa::path(get, path = "/devices/{id}/commands", tag = "commands", params(DevicePath),
    responses((status = OK, body = Page<CommandRecord>), (status = NOT_FOUND, body = ErrorBody)))]
pub async fn list(
    State(st): State<Shared>,
    Path(DevicePath { id }): Path<DevicePath>,
) -> ApiResult<Json<Page<CommandRecord>>> {
    let id2 = id.clone();
    let (known, items) = st
        .store
        .run(move |s| {
            Ok((
                s.get_device(&id2)?.is_some(),
                s.list_commands(&id2, crate::store::commands::KEEP_PER_DEVICE as usize)?,
            ))
        })
        .await?;
    if !known {
        return Err(ApiError::not_found(format_args!("device {id:?}")));
    }
    Ok(Json(Page::whole(items)))
}

/// One command: queued, delivered, done, failed or expired, with the
/// device's message.
#[utoipa::path(get, path = "/devices/{id}/commands/{cid}", tag = "commands", params(CommandPath),
    responses((status = OK, body = CommandRecord), (status = NOT_FOUND, body = ErrorBody)))]
pub async fn get_one(
    State(st): State<Shared>,
    Path(CommandPath { id, cid }): Path<CommandPath>,
) -> ApiResult<Json<CommandRecord>> {
    let (id2, cid2) = (id.clone(), cid.clone());
    st.store
        .run(move |s| s.get_command(&id2, &cid2))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format_args!("command {cid:?} of device {id:?}")))
}
