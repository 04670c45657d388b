//! Scenarios of the Kubernetes runtime that hold on any conforming API
//! server: run against the control plane built from source by
//! `kube_runtime.rs` and against a real K3s by `kube_real_cluster.rs`. Each
//! works in a namespace of its own that must not exist yet.

// Each including suite uses its own subset.
#![allow(dead_code)]

use std::path::Path;

use anyhow::{Context, Result, ensure};
use edge_agent::runtime::kube::{KubeRuntime, ObjectKey, apply_hash};
use kube::api::{Api, DynamicObject, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

pub const WORKLOAD: &str = "demo.web";

/// A plain kube-rs client for the same cluster, acting as "someone else".
pub async fn foreign_client(kubeconfig: &Path) -> Result<kube::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// The ConfigMaps of `ns`, through a plain kube-rs client.
pub fn configmaps(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk("", "v1", "ConfigMap"));
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Someone else creates a ConfigMap (no labels of ours).
pub async fn create_foreign_configmap(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    let obj: DynamicObject = serde_json::from_value(configmap(ns, name, json!({"k": "v"})))?;
    configmaps(client, ns)
        .create(&PostParams::default(), &obj)
        .await?;
    Ok(())
}

pub fn configmap(ns: &str, name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": ns}, "data": data})
}

/// A Deployment that starts no pod (replicas 0), so a real cluster pulls nothing.
pub fn deployment(ns: &str, name: &str, replicas: i64, annotation: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {"edgefleet.io/test": annotation}},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9"}]},
            },
        },
    })
}

fn key(m: &Value) -> Result<ObjectKey> {
    ObjectKey::from_manifest(m).context("manifest has a key")
}

fn namespace_key(ns: &str) -> ObjectKey {
    ObjectKey {
        api_version: "v1".into(),
        kind: "Namespace".into(),
        namespace: None,
        name: ns.into(),
    }
}

/// Apply creates the namespace (unlabelled) and the object, with our field
/// manager and both labels.
pub async fn apply_creates(rt: &KubeRuntime, ns: &str) -> Result<()> {
    ensure!(
        rt.get(&namespace_key(ns)).await?.is_none(),
        "namespace {ns} already exists"
    );
    let cm = configmap(ns, "settings", json!({"mode": "fast"}));
    let live = rt.apply(WORKLOAD, &cm).await?;
    ensure!(live.key == key(&cm)?, "key {} != {}", live.key, key(&cm)?);
    ensure!(!live.uid.is_empty() && !live.resource_version.is_empty());
    ensure!(live.is_owned(), "labels: {:?}", live.labels);
    ensure!(live.labels.get("edgefleet.io/workload").map(String::as_str) == Some(WORKLOAD));
    let managers: Vec<(String, String)> = live.raw["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["manager"].as_str().unwrap_or("").to_owned(),
                m["operation"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    ensure!(
        managers.contains(&("edgefleet-agent".into(), "Apply".into())),
        "managedFields: {managers:?}"
    );
    let namespace = rt
        .get(&namespace_key(ns))
        .await?
        .context("namespace created")?;
    ensure!(
        !namespace.is_owned(),
        "the namespace must not be labelled as ours"
    );
    let fetched = rt.get(&live.key).await?.context("object readable")?;
    ensure!(fetched.uid == live.uid);
    ensure!(fetched.raw["data"] == json!({"mode": "fast"}));
    Ok(())
}

/// Re-applying the same manifest changes nothing: the server records no
/// apply (our managedFields entry keeps its time) and no new generation. A
/// ConfigMap, which no controller touches, keeps its resourceVersion too; a
/// Deployment's moves with what its controller writes (status, the
/// revision annotation), so only ours is compared.
pub async fn reapply_is_noop(rt: &KubeRuntime, ns: &str) -> Result<()> {
    let cm = configmap(ns, "same", json!({"a": "1"}));
    let dep = deployment(ns, "web", 0, "one");
    for m in [&cm, &dep] {
        let first = rt.apply(WORKLOAD, m).await?;
        let second = rt.apply(WORKLOAD, m).await?;
        let ours = |o: &edge_agent::runtime::kube::LiveObject| {
            o.raw["metadata"]["managedFields"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|f| f["manager"] == "edgefleet-agent" && f["operation"] == "Apply")
                .cloned()
        };
        ensure!(
            ours(&first).is_some() && ours(&first) == ours(&second),
            "{}: our managed fields changed on an unchanged re-apply: {:?} -> {:?}",
            first.key,
            ours(&first),
            ours(&second)
        );
        ensure!(first.generation == second.generation);
        ensure!(first.owned_fields_hash() == second.owned_fields_hash());
        ensure!(apply_hash(WORKLOAD, m) == apply_hash(WORKLOAD, &m.clone()));
    }
    let again = rt.apply(WORKLOAD, &cm).await?;
    let before = rt.get(&key(&cm)?).await?.context("exists")?;
    ensure!(
        again.resource_version == before.resource_version,
        "ConfigMap: resourceVersion moved on an unchanged re-apply"
    );
    Ok(())
}

/// Changing a field updates it; a field (or label) no longer in the
/// manifest is removed; a spec change bumps generation, a label change not.
pub async fn change_and_remove(rt: &KubeRuntime, ns: &str) -> Result<()> {
    let mut cm = configmap(ns, "cfg", json!({"a": "1", "b": "2"}));
    cm["metadata"]["labels"] = json!({"extra": "yes"});
    let v1 = rt.apply(WORKLOAD, &cm).await?;
    ensure!(v1.labels.get("extra").map(String::as_str) == Some("yes"));

    let cm2 = configmap(ns, "cfg", json!({"a": "changed"}));
    let v2 = rt.apply(WORKLOAD, &cm2).await?;
    ensure!(
        v2.resource_version != v1.resource_version,
        "a change must bump resourceVersion"
    );
    ensure!(
        v2.raw["data"] == json!({"a": "changed"}),
        "data: {}",
        v2.raw["data"]
    );
    ensure!(
        !v2.labels.contains_key("extra"),
        "removed label kept: {:?}",
        v2.labels
    );
    ensure!(v2.is_owned());
    ensure!(v2.uid == v1.uid, "an update must not recreate");

    let d1 = rt.apply(WORKLOAD, &deployment(ns, "web", 0, "one")).await?;
    let g1 = d1.generation.context("deployments have a generation")?;
    let d2 = rt.apply(WORKLOAD, &deployment(ns, "web", 0, "two")).await?;
    ensure!(
        d2.generation == Some(g1 + 1),
        "spec change: generation {g1} -> {:?}",
        d2.generation
    );
    ensure!(d2.raw["spec"]["template"]["metadata"]["annotations"]["edgefleet.io/test"] == "two");
    let mut labelled = deployment(ns, "web", 0, "two");
    labelled["metadata"]["labels"] = json!({"team": "vision"});
    let d3 = rt.apply(WORKLOAD, &labelled).await?;
    ensure!(d3.resource_version != d2.resource_version);
    ensure!(
        d3.generation == d2.generation,
        "a label change must not bump generation"
    );
    Ok(())
}

/// delete_owned never touches an object without our label, deletes ours,
/// and reports absence as Ok(false).
pub async fn delete_owned_refuses_foreign(
    rt: &KubeRuntime,
    foreign: &kube::Client,
    ns: &str,
) -> Result<()> {
    // Our apply creates the namespace, then someone else adds an object.
    let ours = rt
        .apply(WORKLOAD, &configmap(ns, "ours", json!({"x": "1"})))
        .await?;
    create_foreign_configmap(foreign, ns, "theirs").await?;
    let theirs_key = key(&configmap(ns, "theirs", json!({})))?;

    ensure!(
        !rt.delete_owned(&theirs_key).await?,
        "deleted a foreign object"
    );
    ensure!(rt.get(&theirs_key).await?.is_some(), "foreign object gone");
    ensure!(
        rt.delete_owned(&ours.key).await?,
        "did not delete our object"
    );
    ensure!(rt.get(&ours.key).await?.is_none(), "our object still there");
    ensure!(
        !rt.delete_owned(&ours.key).await?,
        "deleting an absent object is Ok(false)"
    );
    Ok(())
}

/// list_owned returns our objects of the kinds asked, in every namespace,
/// with complete keys.
pub async fn list_owned_finds_ours(
    rt: &KubeRuntime,
    foreign: &kube::Client,
    ns: &str,
) -> Result<()> {
    let cm = rt
        .apply(WORKLOAD, &configmap(ns, "listed", json!({})))
        .await?;
    let dep = rt
        .apply(WORKLOAD, &deployment(ns, "listed", 0, "x"))
        .await?;
    create_foreign_configmap(foreign, ns, "not-listed").await?;

    let kinds = [
        ("v1".to_owned(), "ConfigMap".to_owned()),
        ("apps/v1".to_owned(), "Deployment".to_owned()),
        ("example.com/v1".to_owned(), "Widget".to_owned()),
    ];
    let owned = rt.list_owned(&kinds).await?;
    let keys: Vec<&ObjectKey> = owned
        .iter()
        .filter(|o| o.key.namespace.as_deref() == Some(ns))
        .map(|o| &o.key)
        .collect();
    ensure!(keys.contains(&&cm.key), "{keys:?}");
    ensure!(keys.contains(&&dep.key), "{keys:?}");
    ensure!(keys.len() == 2, "only ours: {keys:?}");
    ensure!(owned.iter().all(|o| o.is_owned()));
    Ok(())
}
