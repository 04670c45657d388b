//! A typed client of `/api/v1`: one method per endpoint an operator's tool
//! needs, answers decoded into [`crate::types`], errors sorted into what a
//! caller acts on differently (hub unreachable, token refused, request
//! refused with the hub's code and message, an answer it cannot read).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{
    AgentRelease, Applied, BulkCommandRequest, BulkCommandResponse, CommandRecord, CommandRequest,
    DeploymentGeneration, DeploymentRecord, DeploymentStatus, DeploymentSummary, DeviceDetail,
    DevicePatch, DeviceRecord, ErrorBody, EventRecord, HubKey, HubKeyRotation, ModelRecord, Page,
    RollbackRequest, RolloutStatus,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the hub at {server}")]
    Unreachable {
        server: String,
        #[source]
        source: reqwest::Error,
    },
    /// HTTP 401: no token, or not the hub's.
    #[error("unauthorized: {message}")]
    Unauthorized { message: String },
    /// The hub refused the request (4xx/5xx other than 401).
    #[error("{message} (HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the hub's answer to {path} is not what this client reads")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot build the HTTP client")]
    Build(#[source] reqwest::Error),
    #[error("certificate authority {path}: {reason}")]
    Ca { path: String, reason: String },
}

impl ClientError {
    /// The hub's error code (`not_found`, `limit_exceeded`, …), if it sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            ClientError::Unauthorized { .. } => Some("unauthorized"),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::Unauthorized { .. } => Some(401),
            _ => None,
        }
    }
}

/// A client of one hub's REST API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    server: String,
    token: Option<String>,
}

/// A request body and its content type.
enum Body {
    None,
    Json(Vec<u8>),
    Bytes(&'static str, Vec<u8>),
}

impl Client {
    /// `server` is the hub's base URL (`http://127.0.0.1:8080`); `token` the
    /// operator token (`None`: unauthenticated requests).
    pub fn new(server: &str, token: Option<String>) -> Result<Self, ClientError> {
        Self::trusting(server, token, None)
    }

    /// Like [`Client::new`]; with `ca_file`, an `https://` hub's certificate
    /// must chain to one of the CAs in it (PEM), and only those.
    pub fn trusting(
        server: &str,
        token: Option<String>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300));
        if let Some(path) = ca_file {
            let ca = |reason: String| ClientError::Ca {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| ca(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca("no PEM CERTIFICATE in it".into()));
            }
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().map_err(ClientError::Build)?;
        Ok(Self::with_http(http, server, token))
    }

    /// Uses a configured `reqwest::Client` (TLS roots, timeouts).
    pub fn with_http(http: reqwest::Client, server: &str, token: Option<String>) -> Self {
        Self {
            http,
            server: server.trim_end_matches('/').to_owned(),
            token,
        }
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Sends a request to `/api/v1{path}`; the response to a success, its
    /// error sorted otherwise.
    async fn response(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<reqwest::Response, ClientError> {
        let url = format!("{}/api/v1{path}", self.server);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req = match body {
            Body::None => req,
            Body::Json(b) => req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b),
            Body::Bytes(ct, b) => req.header(reqwest::header::CONTENT_TYPE, ct).body(b),
        };
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => (e.error.code, e.error.message),
            Err(_) => (
                String::new(),
                String::from_utf8_lossy(&bytes).trim().to_owned(),
            ),
        };
        if status == StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized { message });
        }
        Err(ClientError::Api {
            status: status.as_u16(),
            code,
            message,
        })
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            server: self.server.clone(),
            source,
        }
    }

    /// Sends a request to `/api/v1{path}`; the raw body of a success.
    async fn send(&self, method: Method, path: &str, body: Body) -> Result<Vec<u8>, ClientError> {
        let resp = self.response(method, path, body).await?;
        Ok(resp
            .bytes()
            .await
            .map_err(|e| self.unreachable(e))?
            .to_vec())
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<T, ClientError> {
        let bytes = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            path: path.to_owned(),
            source,
        })
    }

    fn json(body: &impl Serialize) -> Body {
        // Serialising our own request types cannot fail.
        Body::Json(serde_json::to_vec(body).unwrap_or_default())
    }

    /// Any GET as untyped JSON, exactly as the hub sent it (`-o json`).
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.get(path).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, Body::None).await
    }

    /// Every item of a paged list, following `continue` tokens.
    pub async fn list_all<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, ClientError> {
        let mut items = Vec::new();
        let mut cont: Option<String> = None;
        loop {
            let p = match &cont {
                Some(c) => format!("{path}?continue={c}"),
                None => path.to_owned(),
            };
            let page: Page<T> = self.get(&p).await?;
            items.extend(page.items);
            match page.continue_token {
                Some(c) if !c.is_empty() => cont = Some(c),
                _ => return Ok(items),
            }
        }
    }

    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, ClientError> {
        self.list_all("/devices").await
    }

    pub async fn device(&self, id: &str) -> Result<DeviceDetail, ClientError> {
        self.get(&format!("/devices/{id}")).await
    }

    pub async fn patch_device(
        &self,
        id: &str,
        patch: &DevicePatch,
    ) -> Result<DeviceRecord, ClientError> {
        self.call(Method::PATCH, &format!("/devices/{id}"), Self::json(patch))
            .await
    }

    pub async fn delete_device(&self, id: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &format!("/devices/{id}"), Body::None)
            .await
            .map(drop)
    }

    /// One page of a device's events after sequence number `after` (0: from
    /// the oldest kept).
    pub async fn events(
        &self,
        device: &str,
        after: i64,
        limit: usize,
    ) -> Result<Page<EventRecord>, ClientError> {
        self.call(
            Method::GET,
            &format!("/devices/{device}/events?limit={limit}&continue={after}"),
            Body::None,
        )
        .await
    }

    /// Sends a command to one device.
    pub async fn send_command(
        &self,
        device: &str,
        req: &CommandRequest,
    ) -> Result<CommandRecord, ClientError> {
        self.call(
            Method::POST,
            &format!("/devices/{device}/commands"),
            Self::json(req),
        )
        .await
    }

    /// Sends a command to every device a selector matches.
    pub async fn send_bulk_command(
        &self,
        req: &BulkCommandRequest,
    ) -> Result<BulkCommandResponse, ClientError> {
        self.call(Method::POST, "/commands", Self::json(req)).await
    }

    /// A device's commands, newest first.
    pub async fn commands(&self, device: &str) -> Result<Vec<CommandRecord>, ClientError> {
        self.get::<Page<CommandRecord>>(&format!("/devices/{device}/commands"))
            .await
            .map(|p| p.items)
    }

    /// A workload's logs as the hub streams them: read the body with
    /// [`reqwest::Response::chunk`]. `query` is `tail`, `since`,
    /// `container`, `limitBytes` as the API takes them.
    pub async fn logs(
        &self,
        device: &str,
        workload: &str,
        query: &[(&str, String)],
    ) -> Result<reqwest::Response, ClientError> {
        let q: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect();
        let path = format!("/devices/{device}/logs/{workload}?{}", q.join("&"));
        self.response(Method::GET, &path, Body::None).await
    }

    pub async fn command(&self, device: &str, id: &str) -> Result<CommandRecord, ClientError> {
        self.get(&format!("/devices/{device}/commands/{id}")).await
    }

    pub async fn deployments(&self) -> Result<Vec<DeploymentSummary>, ClientError> {
        self.list_all("/deployments").await
    }

    pub async fn deployment(&self, name: &str) -> Result<DeploymentRecord, ClientError> {
        self.get(&format!("/deployments/{name}")).await
    }

    pub async fn deployment_status(&self, name: &str) -> Result<DeploymentStatus, ClientError> {
        self.get(&format!("/deployments/{name}/status")).await
    }

    /// The generations the hub keeps of `name`, newest first.
    pub async fn deployment_history(
        &self,
        name: &str,
    ) -> Result<Vec<DeploymentGeneration>, ClientError> {
        self.list_all(&format!("/deployments/{name}/history")).await
    }

    /// Where `name`'s staged rollout is.
    pub async fn rollout(&self, name: &str) -> Result<RolloutStatus, ClientError> {
        self.get(&format!("/deployments/{name}/rollout")).await
    }

    /// `pause`, `resume` or `abort` `name`'s rollout.
    pub async fn rollout_action(
        &self,
        name: &str,
        action: &str,
    ) -> Result<RolloutStatus, ClientError> {
        self.call(
            Method::POST,
            &format!("/deployments/{name}/rollout/{action}"),
            Body::None,
        )
        .await
    }

    /// Rolls `name` back to generation `to` (default: the last good one).
    pub async fn rollback(
        &self,
        name: &str,
        to: Option<u64>,
    ) -> Result<RolloutStatus, ClientError> {
        let body = Self::json(&RollbackRequest { to_generation: to });
        self.call(Method::POST, &format!("/deployments/{name}/rollback"), body)
            .await
    }

    /// Creates or updates deployment `name` from a manifest (YAML or JSON).
    pub async fn apply(&self, name: &str, manifest: &str) -> Result<Applied, ClientError> {
        self.call(
            Method::PUT,
            &format!("/deployments/{name}"),
            Body::Bytes("application/yaml", manifest.as_bytes().to_vec()),
        )
        .await
    }

    /// `PUT /sources/{name}` with a `GitRepo` manifest (YAML or JSON).
    /// Returns the source and whether it is new.
    pub async fn apply_source(
        &self,
        name: &str,
        manifest: &str,
    ) -> Result<(crate::SourceStatus, bool), ClientError> {
        let resp = self
            .response(
                Method::PUT,
                &format!("/sources/{name}"),
                Body::Bytes("application/yaml", manifest.as_bytes().to_vec()),
            )
            .await?;
        let created = resp.status() == reqwest::StatusCode::CREATED;
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        let s = serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            path: format!("/sources/{name}"),
            source,
        })?;
        Ok((s, created))
    }

    pub async fn sources(&self) -> Result<Vec<crate::SourceStatus>, ClientError> {
        self.list_all("/sources").await
    }

    pub async fn source(&self, name: &str) -> Result<crate::SourceStatus, ClientError> {
        self.get(&format!("/sources/{name}")).await
    }

    pub async fn reconcile_source(
        &self,
        name: &str,
    ) -> Result<crate::SourceTriggered, ClientError> {
        self.call(
            Method::POST,
            &format!("/sources/{name}/reconcile"),
            Body::None,
        )
        .await
    }

    pub async fn delete_source(&self, name: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &format!("/sources/{name}"), Body::None)
            .await
            .map(drop)
    }

    pub async fn delete_deployment(&self, name: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &format!("/deployments/{name}"), Body::None)
            .await
            .map(drop)
    }

    pub async fn models(&self) -> Result<Vec<ModelRecord>, ClientError> {
        self.list_all("/models").await
    }

    /// Uploads an ONNX model under `name`.
    pub async fn push_model(&self, name: &str, onnx: Vec<u8>) -> Result<ModelRecord, ClientError> {
        self.call(
            Method::POST,
            &format!("/models?name={name}"),
            Body::Bytes("application/octet-stream", onnx),
        )
        .await
    }

    pub async fn agent_releases(&self) -> Result<Vec<AgentRelease>, ClientError> {
        self.list_all("/agent-releases").await
    }

    /// Uploads an agent binary as `version` for `arch`.
    pub async fn push_agent_release(
        &self,
        version: &str,
        arch: &str,
        binary: Vec<u8>,
    ) -> Result<AgentRelease, ClientError> {
        self.call(
            Method::POST,
            &format!("/agent-releases?version={version}&arch={arch}"),
            Body::Bytes("application/octet-stream", binary),
        )
        .await
    }

    pub async fn hub_key(&self) -> Result<HubKey, ClientError> {
        self.get("/hub/key").await
    }

    /// Replaces the hub's signing key (devices follow by themselves).
    pub async fn rotate_hub_key(&self) -> Result<HubKeyRotation, ClientError> {
        self.call(Method::POST, "/hub/key/rotate", Body::None).await
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
fn urlencode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
