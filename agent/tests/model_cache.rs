//! Model distribution against a loopback stand-in for the hub blob endpoint:
//! Range resume from a `.part`, sha256 verification (a mismatch is deleted
//! and never indexed), offline reuse once cached, LRU eviction that keeps
//! models in use.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use edge_agent::config::Synchronous;
use edge_agent::db::Db;
use edge_agent::inference::model_cache::{CacheError, HubSource, ModelCache};
use edge_agent::store::Store;
use sha2::{Digest, Sha256};

#[derive(Clone)]
struct Blobs {
    /// (sha256 served under, bytes served)
    blobs: Arc<Vec<(String, Vec<u8>)>>,
    ranged: Arc<AtomicUsize>,
}

async fn blob(State(b): State<Blobs>, Path(sha): Path<String>, headers: HeaderMap) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // "dev:secret" in base64.
    if auth != Some("Basic ZGV2OnNlY3JldA==") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Some((_, bytes)) = b.blobs.iter().find(|(s, _)| *s == sha) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let start = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.trim_end_matches('-').parse::<usize>().ok());
    match start {
        Some(s) if s >= bytes.len() => StatusCode::RANGE_NOT_SATISFIABLE.into_response(),
        Some(s) => {
            b.ranged.fetch_add(1, Ordering::SeqCst);
            (StatusCode::PARTIAL_CONTENT, bytes[s..].to_vec()).into_response()
        }
        None => (StatusCode::OK, bytes.clone()).into_response(),
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn hub(
    blobs: Vec<(String, Vec<u8>)>,
) -> anyhow::Result<(HubSource, Blobs, tokio::task::JoinHandle<()>)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let state = Blobs {
        blobs: Arc::new(blobs),
        ranged: Arc::new(AtomicUsize::new(0)),
    };
    let app = Router::new()
        .route("/api/v1/models/{sha}/blob", get(blob))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let src = HubSource {
        client: reqwest::Client::new(),
        url: format!("http://{addr}"),
        username: "dev".into(),
        password: "secret".into(),
    };
    Ok((src, state, task))
}

fn vibration() -> std::io::Result<Vec<u8>> {
    std::fs::read(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../models/vibration/vibration.onnx"),
    )
}

fn db(dir: &std::path::Path) -> anyhow::Result<Db> {
    let (store, _) = Store::open(&dir.join("agent.db"), Synchronous::Normal)?;
    Ok(Db::new(store))
}

#[tokio::test]
async fn resumes_verifies_and_works_offline() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let model = vibration()?;
    let good = sha(&model);
    let (src, state, task) = hub(vec![(good.clone(), model.clone())]).await?;
    let cache = ModelCache::new(tmp.path().join("models"), 10 << 20, db(tmp.path())?);

    // An interrupted earlier download left the first half.
    std::fs::create_dir_all(cache.dir())?;
    std::fs::write(
        cache.dir().join(format!("{good}.part")),
        &model[..model.len() / 2],
    )?;
    let path = cache
        .fetch("vibration", &good, &src, &HashSet::new())
        .await?;
    assert_eq!(state.ranged.load(Ordering::SeqCst), 1, "resumed with Range");
    assert_eq!(std::fs::read(&path)?, model);
    assert!(!cache.dir().join(format!("{good}.part")).exists());

    // Offline: the hub is gone, the cached copy is used.
    task.abort();
    let _ = task.await;
    let again = cache
        .fetch("vibration", &good, &src, &HashSet::new())
        .await?;
    assert_eq!(again, path);
    Ok(())
}

#[tokio::test]
async fn corrupted_blob_is_refused_and_deleted() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let claimed = sha(b"the real model");
    let (src, _state, _task) = hub(vec![(claimed.clone(), b"tampered bytes".to_vec())]).await?;
    let cache = ModelCache::new(tmp.path().join("models"), 10 << 20, db(tmp.path())?);
    let err = cache
        .fetch("m", &claimed, &src, &HashSet::new())
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::HashMismatch { .. }), "{err}");
    assert!(err.to_string().contains("hash mismatch"), "{err}");
    assert_eq!(
        std::fs::read_dir(cache.dir())?.count(),
        0,
        "nothing left on disk"
    );
    assert!(cache.cached(&claimed).await?.is_none());

    let err = cache
        .fetch("m", "nothex", &src, &HashSet::new())
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::BadHash(_)), "{err}");
    Ok(())
}

#[tokio::test]
async fn lru_eviction_keeps_models_in_use() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let blobs: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1000]).collect();
    let shas: Vec<String> = blobs.iter().map(|b| sha(b)).collect();
    let (src, _state, _task) =
        hub(shas.iter().cloned().zip(blobs.iter().cloned()).collect()).await?;
    // Room for two models.
    let cache = ModelCache::new(tmp.path().join("models"), 2000, db(tmp.path())?);
    let in_use: HashSet<String> = [shas[0].clone()].into();
    for s in &shas {
        cache.fetch("m", s, &src, &in_use).await?;
    }
    // shas[0] is the least recently used but in use; shas[1] goes.
    assert!(cache.cached(&shas[0]).await?.is_some());
    assert!(cache.cached(&shas[1]).await?.is_none());
    assert!(cache.cached(&shas[2]).await?.is_some());
    Ok(())
}

fn workload(model: &str, sha256: &str) -> anyhow::Result<edgefleet_protocol::InferenceWorkload> {
    Ok(serde_json::from_value(serde_json::json!({
        "model": {"name": model, "sha256": sha256},
        "input": {"http": {}},
        "output": {"upstream": true, "when": "score > 0.8"},
    }))?)
}

#[tokio::test]
async fn runtime_loads_serves_fails_and_unloads() -> anyhow::Result<()> {
    use edge_agent::inference::ModelRegistry;
    use edge_agent::inference::runtime::InferenceRuntime;

    let tmp = tempfile::tempdir()?;
    let model = vibration()?;
    let good = sha(&model);
    let bad = sha(b"what the hub should have had");
    let (src, _state, _task) = hub(vec![
        (good.clone(), model),
        (bad.clone(), b"corrupted".to_vec()),
    ])
    .await?;
    let cache = ModelCache::new(tmp.path().join("models"), 10 << 20, db(tmp.path())?);
    let mut rt = InferenceRuntime::new(cache, src, ModelRegistry::new());
    let registry = rt.registry();
    let metrics = edge_agent::metrics::Metrics::new();

    rt.sync("anomaly", &workload("vibration", &good)?, Some(&metrics))
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(registry.get("anomaly").is_some() && registry.get("vibration").is_some());
    // Unchanged: a no-op.
    rt.sync("anomaly", &workload("vibration", &good)?, None)
        .await
        .map_err(anyhow::Error::msg)?;

    let err = rt
        .sync("broken", &workload("broken", &bad)?, None)
        .await
        .unwrap_err();
    let reason = edge_agent::error_chain(&err);
    assert!(
        reason.contains("hash mismatch") && reason.contains(&bad),
        "{reason}"
    );
    // A blob that arrived damaged may arrive whole next time.
    assert!(err.is_transient(), "{err:?}");
    assert!(registry.get("broken").is_none());

    rt.prune(&std::collections::BTreeSet::new());
    assert!(registry.get("anomaly").is_none() && registry.get("vibration").is_none());
    Ok(())
}
