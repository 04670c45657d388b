//! The agent's Kubernetes runtime against a real control plane
//! (kube-apiserver on kine/SQLite, controllers, scheduler, kwok nodes; see
//! `edgefleet_tests::control_plane`): server-side apply with our field
//! manager and labels, no-op re-applies, field removal, ownership-checked
//! deletes, health from the status the real controllers write, CRDs and
//! their custom resources, cluster-scoped objects, conflicts with another
//! field manager, objects the server rejects, and bounded failure when the
//! API is slow, cut or absent (a fault proxy in front of the real server).
//!
//! One control plane per run of this file; each test works in namespaces of
//! its own. Skips loudly without the control plane built
//! (`tests/kube/build.sh`), fails instead under `EDGEFLEET_REQUIRE_KUBE=1`.

#[path = "kube/scenarios.rs"]
mod scenarios;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use edge_agent::runtime::kube::{KubeError, KubeRuntime, ObjectKey, health_of};
use edgefleet_protocol::Health;
use edgefleet_tests::control_plane::{Admin, Shared};
use edgefleet_tests::eventually;
use edgefleet_tests::proxy::FaultProxy;
use serde_json::{Value, json};

use scenarios::{WORKLOAD, configmap, deployment};

const TIMEOUT: Duration = Duration::from_secs(10);
const T: Duration = Duration::from_secs(60);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A namespace name no other test of this run uses.
fn fresh(tag: &str) -> String {
    format!("t{}-{tag}", NEXT.fetch_add(1, Ordering::Relaxed))
}

struct Env {
    rt: KubeRuntime,
    admin: Admin,
    shared: Shared,
}

async fn setup() -> Result<Option<Env>> {
    let Some(shared) = Shared::get() else {
        return Ok(None);
    };
    let rt = KubeRuntime::connect(Some(&shared.kubeconfig), TIMEOUT).await?;
    let admin = shared.admin().await;
    Ok(Some(Env { rt, admin, shared }))
}

macro_rules! env_or_skip {
    () => {
        match setup().await? {
            Some(e) => e,
            None => return Ok(()),
        }
    };
    // The environment and a fresh namespace named after `$prefix`.
    ($prefix:literal) => {
        (env_or_skip!(), fresh($prefix))
    };
}

/// A test running one of `scenarios` in a fresh namespace `ns`.
macro_rules! scenario {
    ($test:ident, $prefix:literal, |$e:ident, $ns:ident| $body:expr) => {
        #[tokio::test]
        async fn $test() -> Result<()> {
            let ($e, $ns) = env_or_skip!($prefix);
            $body.await
        }
    };
}

fn key(m: &Value) -> ObjectKey {
    ObjectKey::from_manifest(m).expect("key")
}

// The scenarios the real-cluster suite (kube_real_cluster.rs) runs too.
scenario!(
    apply_creates_with_our_field_manager_and_labels,
    "create",
    |e, ns| scenarios::apply_creates(&e.rt, &ns)
);
scenario!(reapply_of_same_manifest_changes_nothing, "noop", |e, ns| {
    scenarios::reapply_is_noop(&e.rt, &ns)
});
scenario!(
    changed_fields_update_and_removed_fields_go,
    "change",
    |e, ns| scenarios::change_and_remove(&e.rt, &ns)
);
scenario!(delete_owned_refuses_a_foreign_object, "foreign", |e, ns| {
    scenarios::delete_owned_refuses_foreign(&e.rt, &e.admin.client, &ns)
});
scenario!(list_owned_returns_only_ours, "list", |e, ns| {
    scenarios::list_owned_finds_ours(&e.rt, &e.admin.client, &ns)
});

#[tokio::test]
async fn server_version_is_the_built_one() -> Result<()> {
    let e = env_or_skip!();
    let v = e.rt.server_version().await?;
    ensure!(v == "v1.37.2", "server version {v}");
    Ok(())
}

#[tokio::test]
async fn removed_container_and_env_entries_are_removed() -> Result<()> {
    let (e, ns) = env_or_skip!("entries");
    let mut dep = deployment(&ns, "web", 0, "a");
    dep["spec"]["template"]["spec"]["containers"] = json!([
        {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
        {"name": "sidecar", "image": "side:1"},
    ]);
    e.rt.apply(WORKLOAD, &dep).await?;
    dep["spec"]["template"]["spec"]["containers"] =
        json!([{"name": "app", "image": "app:2", "env": [{"name": "A", "value": "1"}]}]);
    let live = e.rt.apply(WORKLOAD, &dep).await?;
    let containers = &live.raw["spec"]["template"]["spec"]["containers"];
    ensure!(
        containers.as_array().map(Vec::len) == Some(1),
        "{containers}"
    );
    ensure!(containers[0]["image"] == "app:2");
    ensure!(containers[0]["env"] == json!([{"name": "A", "value": "1"}]));
    ensure!(live.generation == Some(2));
    Ok(())
}

#[tokio::test]
async fn delete_checks_the_uid_it_saw() -> Result<()> {
    let (e, ns) = env_or_skip!("uid");
    e.rt.apply(WORKLOAD, &empty_cm(&ns)).await?;
    let api = scenarios::configmaps(&e.admin.client, &ns);
    let params = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("not-the-uid".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete("c", &params).await {
        Err(kube::Error::Api(s)) => ensure!(s.code == 409, "{s:?}"),
        other => anyhow::bail!("expected a 409 Conflict, got {other:?}"),
    }
    ensure!(
        e.admin
            .get("v1", "ConfigMap", Some(&ns), "c")
            .await
            .is_some()
    );
    Ok(())
}

#[tokio::test]
async fn namespace_is_auto_created_and_default_namespace_used() -> Result<()> {
    let (e, ns) = env_or_skip!("auto");
    e.rt.apply(WORKLOAD, &empty_cm(&ns)).await?;
    let created = e.admin.get("v1", "Namespace", None, &ns).await;
    ensure!(created.is_some(), "namespace {ns} created");
    let name = format!("bare-{ns}");
    let bare = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});
    let live = e.rt.apply(WORKLOAD, &bare).await?;
    ensure!(live.key.namespace.as_deref() == Some("default"));
    ensure!(e.rt.get(&key(&bare)).await?.is_some());
    ensure!(e.rt.delete_owned(&live.key).await?);
    Ok(())
}

/// Health from the status the real controllers write, pods made Running
/// by kwok: no test writes any status.
#[tokio::test]
async fn health_follows_the_real_controllers() -> Result<()> {
    let (e, ns) = env_or_skip!("health");
    let live =
        e.rt.apply(WORKLOAD, &deployment(&ns, "web", 2, "a"))
            .await?;
    let (h, _) = health_of(&live);
    ensure!(h == Health::Progressing, "just applied: {h:?}");
    let healthy = eventually("Deployment Available with 2 replicas", T, || async {
        let l = e.rt.get(&live.key).await.ok()??;
        (health_of(&l) == (Health::Healthy, None)).then_some(l)
    })
    .await;
    ensure!(healthy.raw["status"]["availableReplicas"] == 2);
    let pods = e.admin.running_pods(&ns).await;
    ensure!(pods.len() == 2, "pods: {pods:?}");
    // A new spec is not observed at first: progressing, then healthy again.
    let next =
        e.rt.apply(WORKLOAD, &deployment(&ns, "web", 2, "b"))
            .await?;
    ensure!(next.generation == Some(2));
    eventually("the new generation rolled out", T, || async {
        let l = e.rt.get(&live.key).await.ok()??;
        (health_of(&l).0 == Health::Healthy && l.raw["status"]["observedGeneration"] == 2)
            .then_some(())
    })
    .await;
    // Status in an apply is ignored for kinds with a status subresource.
    let mut with_status = deployment(&ns, "web", 2, "b");
    with_status["status"] = json!({"observedGeneration": 99});
    let after = e.rt.apply(WORKLOAD, &with_status).await?;
    ensure!(after.raw["status"]["observedGeneration"] != 99);
    Ok(())
}

#[tokio::test]
async fn daemonset_statefulset_and_job_become_healthy() -> Result<()> {
    let (e, ns) = env_or_skip!("kinds");
    let pod = |name: &str| {
        json!({"metadata": {"labels": {"app": name}},
               "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}]}})
    };
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "collector", "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": "collector"}}, "template": pod("collector")}});
    let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": ns},
        "spec": {"replicas": 2, "serviceName": "db",
                 "selector": {"matchLabels": {"app": "db"}}, "template": pod("db")}});
    let mut job_pod = pod("once");
    job_pod["spec"]["restartPolicy"] = json!("Never");
    let job = json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "once", "namespace": ns},
        "spec": {"template": job_pod}});
    let mut keys = Vec::new();
    for m in [&ds, &sts, &job] {
        keys.push(e.rt.apply(WORKLOAD, m).await?.key);
    }
    for k in &keys {
        eventually(&format!("{k} healthy"), T, || async {
            let l = e.rt.get(k).await.ok()??;
            (health_of(&l).0 == Health::Healthy).then_some(())
        })
        .await;
    }
    let ds_live = e.rt.get(&keys[0]).await?.context("daemonset")?;
    ensure!(
        ds_live.raw["status"]["numberAvailable"] == 2,
        "one pod per fake node: {}",
        ds_live.raw["status"]
    );
    let nodes: std::collections::BTreeSet<String> = e
        .admin
        .running_pods(&ns)
        .await
        .into_iter()
        .filter(|(name, _)| name.starts_with("collector"))
        .map(|(_, node)| node)
        .collect();
    ensure!(nodes.len() == 2, "daemon pods on {nodes:?}");
    let job_live = e.rt.get(&keys[2]).await?.context("job")?;
    ensure!(
        job_live.raw["status"]["succeeded"] == 1,
        "{}",
        job_live.raw["status"]
    );
    Ok(())
}

/// A CRD and a custom resource of it, applied in one go: the resource's kind
/// is unknown until the CRD is established; the runtime waits for it.
#[tokio::test]
async fn a_crd_and_its_custom_resource() -> Result<()> {
    let (e, ns) = env_or_skip!("crd");
    let group = format!("{ns}.example.edgefleet.io");
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("sensors.{group}")},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "sensors", "singular": "sensor", "kind": "Sensor"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"rateHz": {"type": "integer"}}}}}}}]
        }
    });
    let cr = json!({"apiVersion": format!("{group}/v1"), "kind": "Sensor",
        "metadata": {"name": "vibration", "namespace": ns}, "spec": {"rateHz": 100}});
    let crd_live = e.rt.apply(WORKLOAD, &crd).await?;
    ensure!(crd_live.key.namespace.is_none(), "a CRD is cluster-scoped");
    let cr_live = e.rt.apply(WORKLOAD, &cr).await?;
    ensure!(cr_live.raw["spec"]["rateHz"] == 100);
    ensure!(cr_live.is_owned());
    // Deleting the CRD takes the resource; the runtime then forgets the
    // kind (discovery asked again next time, no stale cache).
    ensure!(e.rt.delete_owned(&crd_live.key).await?);
    eventually("the CRD gone", T, || async {
        e.rt.get(&crd_live.key).await.ok()?.is_none().then_some(())
    })
    .await;
    // Right after the CRD's deletion the server refuses new resources of
    // it for a moment (transient), then the kind is unknown (permanent).
    let last = eventually("the kind unknown", T, || async {
        match e.rt.apply(WORKLOAD, &cr).await {
            Err(err @ KubeError::UnknownKind { .. }) => Some(Ok(err)),
            Err(err) if err.is_transient() => None,
            other => Some(Err(format!("{other:?}"))),
        }
    })
    .await;
    match last {
        Ok(err) => ensure!(!err.is_transient()),
        Err(other) => anyhow::bail!("expected UnknownKind after the CRD went, got {other}"),
    }
    Ok(())
}

#[tokio::test]
async fn cluster_scoped_objects_and_secrets() -> Result<()> {
    let (e, ns) = env_or_skip!("cluster");
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "namespace": "ignored"}});
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": format!("{ns}-reader")},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]});
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "creds", "namespace": ns},
        "type": "Opaque", "stringData": {"password": "s3cret"}});
    let ns_live = e.rt.apply(WORKLOAD, &namespace).await?;
    ensure!(ns_live.key.namespace.is_none() && ns_live.is_owned());
    let role_live = e.rt.apply(WORKLOAD, &role).await?;
    ensure!(role_live.key.namespace.is_none());
    let secret_live = e.rt.apply(WORKLOAD, &secret).await?;
    // stringData is folded into data by the server.
    ensure!(
        secret_live.raw["data"]["password"] == "czNjcmV0",
        "{}",
        secret_live.raw["data"]
    );
    // Re-applying the same Secret is a no-op (no drift from the folding).
    let again = e.rt.apply(WORKLOAD, &secret).await?;
    ensure!(again.resource_version == secret_live.resource_version);
    // Deleting our namespace takes its objects (asynchronously, through
    // the namespace controller).
    ensure!(e.rt.delete_owned(&ns_live.key).await?);
    eventually("the namespace and its secret gone", T, || async {
        e.admin
            .get("v1", "Namespace", None, &ns)
            .await
            .is_none()
            .then_some(())
    })
    .await;
    ensure!(e.rt.delete_owned(&role_live.key).await?);
    Ok(())
}

/// A field another manager owns (what `kubectl apply --server-side` leaves):
/// the agent applies with force and takes the fields it sets; the other
/// manager keeps the rest. The hub is the source of truth for what it ships.
#[tokio::test]
async fn fields_of_another_manager_are_taken_with_force() -> Result<()> {
    let (e, ns) = env_or_skip!("conflict");
    e.rt.apply(WORKLOAD, &configmap(&ns, "seed", json!({})))
        .await?;
    let theirs = configmap(&ns, "shared", json!({"mode": "manual", "owner": "ops"}));
    e.admin.apply_as("kubectl", &theirs, false).await?;
    // Without force, a second manager would get a conflict on `mode`.
    let plain = e
        .admin
        .apply_as(
            "someone-else",
            &configmap(&ns, "shared", json!({"mode": "x"})),
            false,
        )
        .await;
    ensure!(
        matches!(&plain, Err(kube::Error::Api(s)) if s.code == 409),
        "{plain:?}"
    );
    let live =
        e.rt.apply(WORKLOAD, &configmap(&ns, "shared", json!({"mode": "auto"})))
            .await?;
    ensure!(live.raw["data"]["mode"] == "auto");
    ensure!(
        live.raw["data"]["owner"] == "ops",
        "their other field stays"
    );
    let managers = managed_fields(&live.raw);
    ensure!(
        managers["edgefleet-agent"].contains("f:mode"),
        "{managers:?}"
    );
    ensure!(!managers["kubectl"].contains("f:mode"), "{managers:?}");
    Ok(())
}

/// manager → its fieldsV1 as text.
fn managed_fields(raw: &Value) -> std::collections::BTreeMap<String, String> {
    raw["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["manager"].as_str().unwrap_or("").to_owned(),
                m["fieldsV1"].to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn unknown_kinds_are_permanent_errors() -> Result<()> {
    let (e, ns) = env_or_skip!("unknown");
    for (api_version, kind) in [
        ("example.com/v1", "Widget"),
        ("apps/v1", "Gadget"),
        ("v2", "Pod"),
    ] {
        let m = json!({"apiVersion": api_version, "kind": kind,
                       "metadata": {"name": "w", "namespace": ns}});
        match e.rt.apply(WORKLOAD, &m).await {
            Err(err @ KubeError::UnknownKind { .. }) => ensure!(!err.is_transient()),
            other => anyhow::bail!("{api_version} {kind}: expected UnknownKind, got {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn invalid_manifests_are_refused_with_the_servers_message() -> Result<()> {
    let (e, ns) = env_or_skip!("invalid");
    let cm = empty_cm(&ns);
    let err =
        e.rt.apply("not a label value!", &cm)
            .await
            .expect_err("bad workload id");
    ensure!(matches!(err, KubeError::InvalidManifest(_)), "{err:?}");
    // generateName without name: server-side apply needs a name; refused
    // before anything is sent, saying so.
    let generated = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"generateName": "c-", "namespace": ns}});
    let err = e.rt.apply(WORKLOAD, &generated).await.expect_err("no name");
    ensure!(matches!(err, KubeError::InvalidManifest(_)), "{err:?}");
    ensure!(err.to_string().contains("metadata.name"), "{err}");
    ensure!(!err.is_transient());
    // Invalid for the server: its own message comes back.
    let err =
        e.rt.apply(WORKLOAD, &configmap(&ns, "Bad_Name", json!({})))
            .await
            .expect_err("invalid name");
    match &err {
        KubeError::Api {
            code: 422,
            reason,
            message,
        } => {
            ensure!(reason == "Invalid", "{reason}");
            ensure!(message.contains("Bad_Name"), "{message}");
        }
        other => anyhow::bail!("expected 422 Invalid, got {other:?}"),
    }
    ensure!(!err.is_transient());
    let bad_spec = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "broken", "namespace": ns},
        "spec": {"replicas": -1, "selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "c"}},
                              "spec": {"containers": [{"name": "x", "image": "x"}]}}}});
    let err =
        e.rt.apply(WORKLOAD, &bad_spec)
            .await
            .expect_err("invalid spec");
    ensure!(
        matches!(&err, KubeError::Api { code: 422, message, .. } if message.contains("replicas")),
        "{err:?}"
    );
    Ok(())
}

/// A runtime whose kubeconfig goes through `proxy` to the shared server.
/// ConfigMap `c` in `ns`, without data.
fn empty_cm(ns: &str) -> Value {
    configmap(ns, "c", json!({}))
}

/// A runtime whose connection to the API server goes through a fault
/// proxy, and the proxy.
async fn through_proxy(e: &Env, timeout: Duration) -> Result<(KubeRuntime, FaultProxy)> {
    let proxy = FaultProxy::start(e.shared.url.trim_start_matches("https://")).await;
    let text = std::fs::read_to_string(&e.shared.kubeconfig)?;
    let dir = tempfile::tempdir()?.keep();
    let path = dir.join("kubeconfig");
    let direct = e.shared.url.trim_start_matches("https://").to_owned();
    std::fs::write(&path, text.replace(&direct, &proxy.addr()))?;
    Ok((KubeRuntime::connect(Some(&path), timeout).await?, proxy))
}

#[tokio::test]
async fn slow_api_gives_a_timeout_quickly() -> Result<()> {
    let e = env_or_skip!();
    let (rt, proxy) = through_proxy(&e, Duration::from_millis(500)).await?;
    let ns = fresh("slow");
    rt.apply(WORKLOAD, &empty_cm(&ns)).await?;
    proxy.set_delay(Duration::from_secs(30));
    let started = Instant::now();
    let err = rt
        .apply(WORKLOAD, &configmap(&ns, "c", json!({"x": "1"})))
        .await
        .expect_err("must time out");
    let took = started.elapsed();
    ensure!(matches!(err, KubeError::Timeout { .. }), "{err:?}");
    ensure!(err.is_transient());
    ensure!(took < Duration::from_secs(2), "took {took:?}");
    // On a new connection the TLS handshake itself is what hangs: the
    // connect timeout fires (Unreachable) rather than the request's.
    let started = Instant::now();
    let err = rt.server_version().await.expect_err("must time out");
    ensure!(
        matches!(
            err,
            KubeError::Timeout { .. } | KubeError::Unreachable { .. }
        ),
        "{err:?}"
    );
    ensure!(err.is_transient());
    ensure!(started.elapsed() < Duration::from_secs(2));
    // Recovers as soon as the API does.
    proxy.set_delay(Duration::ZERO);
    proxy.set_down(true);
    proxy.set_down(false);
    eventually("the API answers again", T, || async {
        rt.apply(WORKLOAD, &configmap(&ns, "c", json!({"x": "2"})))
            .await
            .ok()
    })
    .await;
    Ok(())
}

#[tokio::test]
async fn a_cut_api_gives_a_transient_error_quickly() -> Result<()> {
    let e = env_or_skip!();
    let (rt, proxy) = through_proxy(&e, TIMEOUT).await?;
    let ns = fresh("cut");
    rt.apply(WORKLOAD, &empty_cm(&ns)).await?;
    proxy.set_down(true);
    let started = Instant::now();
    let err = rt
        .apply(WORKLOAD, &configmap(&ns, "c", json!({"x": "1"})))
        .await
        .expect_err("API cut");
    ensure!(err.is_transient(), "{err:?}");
    let err = rt.get(&key(&empty_cm(&ns))).await.expect_err("API cut");
    ensure!(err.is_transient(), "{err:?}");
    ensure!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    proxy.set_down(false);
    eventually("the API answers again", T, || async {
        rt.get(&key(&empty_cm(&ns))).await.ok()?
    })
    .await;
    Ok(())
}

#[tokio::test]
async fn absent_api_is_unreachable_and_transient() -> Result<()> {
    let e = env_or_skip!();
    let (rt, proxy) = through_proxy(&e, TIMEOUT).await?;
    proxy.set_refusing(true).await;
    let started = Instant::now();
    let err = rt.server_version().await.expect_err("nothing listens");
    ensure!(matches!(err, KubeError::Unreachable { .. }), "{err:?}");
    ensure!(err.is_transient());
    ensure!(started.elapsed() < Duration::from_secs(2));
    proxy.set_refusing(false).await;
    eventually("listening again", T, || async {
        rt.server_version().await.ok()
    })
    .await;
    Ok(())
}

#[tokio::test]
async fn missing_kubeconfig_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = KubeRuntime::connect(Some(&dir.path().join("absent")), TIMEOUT)
        .await
        .expect_err("no file");
    assert!(matches!(err, KubeError::Kubeconfig { .. }), "{err:?}");
    assert!(!err.is_transient());
}
