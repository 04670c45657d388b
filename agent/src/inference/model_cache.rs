//! The on-disk model cache: models referenced by the desired state are
//! downloaded from the hub (`GET {hub}/api/v1/models/{sha256}/blob`, HTTP
//! Basic with the device's broker credentials), resumed with `Range` into
//! `<sha256>.part`, verified against their sha256 before they are renamed to
//! `<sha256>.onnx` and indexed in the store. A file whose hash does not match
//! is deleted and never loaded. Once cached, a model needs no uplink.
//!
//! The cache is bounded (`max_bytes`); least recently used models go first,
//! never one that is in use.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::db::Db;
use crate::store::{CachedModel, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("`{0}` is not a sha256 (64 lowercase hex digits)")]
    BadHash(String),
    #[error("cannot download blob {sha256} from the hub")]
    Download {
        sha256: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("hub answered {status} for blob {sha256}")]
    Status { sha256: String, status: StatusCode },
    #[error("blob hash mismatch: expected sha256 {expected}, got {actual}; file deleted")]
    HashMismatch { expected: String, actual: String },
    #[error("model cache I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model cache index")]
    Store(#[from] StoreError),
    #[error("cannot download blob {sha256} ({size} bytes)")]
    DiskFull {
        sha256: String,
        size: u64,
        #[source]
        source: crate::disk::DiskFull,
    },
}

impl CacheError {
    /// True when fetching again later may succeed (the hub unreachable or
    /// failing, an interrupted transfer, a full disk); false when it will
    /// not until something changes (no such model at the hub, a bad hash).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Download { .. }
            | Self::HashMismatch { .. }
            | Self::Io { .. }
            | Self::Store(_)
            | Self::DiskFull { .. } => true,
            Self::Status { status, .. } => {
                status.is_server_error()
                    || matches!(
                        *status,
                        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS
                    )
            }
            Self::BadHash(_) => false,
        }
    }
}

/// Where blobs come from.
#[derive(Debug, Clone)]
pub struct HubSource {
    pub client: reqwest::Client,
    /// Hub base URL, e.g. `https://hub:8443`.
    pub url: String,
    pub username: String,
    pub password: String,
}

impl HubSource {
    /// The hub of `shared`'s config, with the device's broker credentials
    /// as Basic auth.
    pub fn for_agent(shared: &crate::shared::Shared) -> Self {
        let cfg = &shared.cfg;
        let builder = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .read_timeout(std::time::Duration::from_millis(
                cfg.hub.request_timeout_ms.max(1),
            ));
        // hub.ca_file was read when the config was validated at start.
        let client = crate::cli::enroll::hub_tls(builder, &cfg.hub)
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "hub.ca_file unusable: downloads use the system's roots");
                reqwest::Client::builder()
            })
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let username = if cfg.broker.username.is_empty() {
            shared.device.to_string()
        } else {
            cfg.broker.username.clone()
        };
        HubSource {
            client,
            url: cfg.hub.url.clone(),
            username,
            password: shared.identity.broker_password.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ModelCache {
    dir: PathBuf,
    max_bytes: u64,
    db: Db,
    /// When set, a download must leave the disk its reserve.
    disk: Option<std::sync::Arc<crate::disk::DiskGuard>>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_owned(),
        source,
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The sha256 of a file, hex.
pub async fn file_sha256(path: &Path) -> Result<String, CacheError> {
    let p = path.to_owned();
    let res = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut f = std::fs::File::open(&p)?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h)?;
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(|e| CacheError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    res.map_err(io(path))
}

impl ModelCache {
    /// Downloads must fit beside `disk`'s reserve.
    pub fn with_disk(mut self, disk: std::sync::Arc<crate::disk::DiskGuard>) -> Self {
        self.disk = Some(disk);
        self
    }

    pub fn new(dir: PathBuf, max_bytes: u64, db: Db) -> Self {
        Self {
            dir,
            max_bytes,
            db,
            disk: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn final_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.onnx"))
    }

    fn part_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.part"))
    }

    /// The verified local file of model `sha256`, downloading it from `hub`
    /// when it is not cached. `in_use` (hashes of loaded models) is kept by
    /// the eviction that follows a download.
    pub async fn fetch(
        &self,
        name: &str,
        sha256: &str,
        hub: &HubSource,
        in_use: &HashSet<String>,
    ) -> Result<PathBuf, CacheError> {
        if !is_sha256(sha256) {
            return Err(CacheError::BadHash(sha256.to_owned()));
        }
        if let Some(path) = self.cached(sha256).await? {
            return Ok(path);
        }
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(io(&self.dir))?;
        let part = self.part_path(sha256);
        let url = format!("/api/v1/models/{sha256}/blob");
        fetch_verified(hub, &url, sha256, &part, self.disk.as_deref()).await?;
        let path = self.final_path(sha256);
        tokio::fs::rename(&part, &path).await.map_err(io(&path))?;
        let size_bytes = tokio::fs::metadata(&path).await.map_err(io(&path))?.len();
        let entry = CachedModel {
            sha256: sha256.to_owned(),
            name: name.to_owned(),
            size_bytes,
            path: path.clone(),
            complete: true,
            last_used_ms: edgefleet_protocol::now_ms(),
        };
        self.db.call(move |s| s.model_put(&entry)).await?;
        let mut keep = in_use.clone();
        keep.insert(sha256.to_owned());
        self.evict(&keep).await?;
        Ok(path)
    }

    /// A complete cached file that still hashes right (touched as used);
    /// a stale or corrupt entry is dropped.
    pub async fn cached(&self, sha256: &str) -> Result<Option<PathBuf>, CacheError> {
        let key = sha256.to_owned();
        let Some(entry) = self.db.call(move |s| s.model_get(&key)).await? else {
            return Ok(None);
        };
        if entry.complete && file_sha256(&entry.path).await.ok().as_deref() == Some(sha256) {
            let key = sha256.to_owned();
            let now = edgefleet_protocol::now_ms();
            self.db.call(move |s| s.model_touch(&key, now)).await?;
            return Ok(Some(entry.path));
        }
        let _ = tokio::fs::remove_file(&entry.path).await;
        let key = sha256.to_owned();
        self.db.call(move |s| s.model_delete(&key)).await?;
        Ok(None)
    }

    /// Deletes least recently used models until the cache fits `max_bytes`,
    /// never one whose hash is in `keep`.
    pub async fn evict(&self, keep: &HashSet<String>) -> Result<Vec<String>, CacheError> {
        let all = self.db.call(|s| s.models_lru()).await?;
        let mut total: u64 = all.iter().map(|m| m.size_bytes).sum();
        let mut evicted = Vec::new();
        for m in all {
            if total <= self.max_bytes {
                break;
            }
            if keep.contains(&m.sha256) {
                continue;
            }
            let _ = tokio::fs::remove_file(&m.path).await;
            let key = m.sha256.clone();
            self.db.call(move |s| s.model_delete(&key)).await?;
            total = total.saturating_sub(m.size_bytes);
            tracing::info!(sha256 = %m.sha256, name = %m.name, "evicted model from cache");
            evicted.push(m.sha256);
        }
        Ok(evicted)
    }
}

/// Downloads blob `sha256` from `hub` at `path` (e.g.
/// `/api/v1/models/{sha256}/blob`) into `part`, resuming from what `part`
/// already holds (`Range`), and verifies its hash: on success `part` holds
/// exactly the blob; a file that hashes wrong is deleted. With `disk`, the
/// download must leave the disk its reserve.
pub async fn fetch_verified(
    hub: &HubSource,
    path: &str,
    sha256: &str,
    part: &Path,
    disk: Option<&crate::disk::DiskGuard>,
) -> Result<(), CacheError> {
    if !is_sha256(sha256) {
        return Err(CacheError::BadHash(sha256.to_owned()));
    }
    download(hub, path, sha256, part, disk).await?;
    let actual = file_sha256(part).await?;
    if actual != sha256 {
        let _ = tokio::fs::remove_file(part).await;
        return Err(CacheError::HashMismatch {
            expected: sha256.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// Appends the rest of the blob to `part` (Range from its current size).
async fn download(
    hub: &HubSource,
    path: &str,
    sha256: &str,
    part: &Path,
    disk: Option<&crate::disk::DiskGuard>,
) -> Result<(), CacheError> {
    let have = match tokio::fs::metadata(part).await {
        Ok(m) => m.len(),
        Err(_) => 0,
    };
    let url = format!("{}{path}", hub.url.trim_end_matches('/'));
    let mut req = hub
        .client
        .get(&url)
        .basic_auth(&hub.username, Some(&hub.password));
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let dl = |source| CacheError::Download {
        sha256: sha256.to_owned(),
        source,
    };
    let mut resp = req.send().await.map_err(dl)?;
    if let (Some(disk), Some(left)) = (disk, resp.content_length()) {
        disk.admit(left).map_err(|source| CacheError::DiskFull {
            sha256: sha256.to_owned(),
            size: left,
            source,
        })?;
    }
    let append = match resp.status() {
        StatusCode::PARTIAL_CONTENT => true,
        StatusCode::OK => false,
        // The part already holds the whole blob (or more): verify it.
        StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => return Ok(()),
        status => {
            return Err(CacheError::Status {
                sha256: sha256.to_owned(),
                status,
            });
        }
    };
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .await
        .map_err(io(part))?;
    while let Some(chunk) = resp.chunk().await.map_err(dl)? {
        file.write_all(&chunk).await.map_err(io(part))?;
    }
    file.flush().await.map_err(io(part))?;
    file.sync_all().await.map_err(io(part))?;
    Ok(())
}
