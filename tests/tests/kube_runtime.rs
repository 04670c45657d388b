//! The agent's Kubernetes runtime against the API stand-in: server-side apply
//! with our field manager and labels, no-op re-applies, field removal,
//! ownership-checked deletes, health from status, and bounded failure when the
//! API is slow, down or absent. Also checks the stand-in itself behaves like
//! the real server where the runtime relies on it (discovery as kube-rs does
//! it, conflicts between managers, label selectors, Status bodies).

#[path = "kube/scenarios.rs"]
mod scenarios;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use edge_agent::runtime::kube::{KubeError, KubeRuntime, ObjectKey, health_of};
use edgefleet_protocol::Health;
use edgefleet_tests::kube_standin::KubeStandIn;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::{ApiResource, Discovery};
use serde_json::json;

use scenarios::{WORKLOAD, configmap, configmaps, deployment, foreign_client};

const TIMEOUT: Duration = Duration::from_secs(5);

async fn setup() -> Result<(KubeStandIn, KubeRuntime)> {
    let standin = KubeStandIn::start().await;
    let rt = KubeRuntime::connect(Some(standin.kubeconfig_path()), TIMEOUT).await?;
    Ok((standin, rt))
}

#[tokio::test]
async fn server_version_through_generated_kubeconfig() -> Result<()> {
    let (_standin, rt) = setup().await?;
    assert_eq!(rt.server_version().await?, "v1.31.4+k3s1");
    Ok(())
}

#[tokio::test]
async fn apply_creates_with_our_field_manager_and_labels() -> Result<()> {
    let (standin, rt) = setup().await?;
    scenarios::apply_creates(&rt, "demo").await?;
    let patches: Vec<_> = standin
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    ensure!(!patches.is_empty());
    for p in &patches {
        assert_eq!(p.field_manager.as_deref(), Some("edgefleet-agent"), "{p:?}");
        assert_eq!(
            p.content_type.as_deref(),
            Some("application/apply-patch+yaml"),
            "{p:?}"
        );
        assert!(p.query.contains("force=true"), "{p:?}");
    }
    // The namespace was created by POST, as a prerequisite, not applied.
    let posts: Vec<_> = standin
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0].path, "/api/v1/namespaces");
    assert_eq!(posts[0].field_manager.as_deref(), Some("edgefleet-agent"));
    let ns = standin
        .get("v1", "Namespace", None, "demo")
        .context("namespace")?;
    assert!(ns["metadata"].get("labels").is_none(), "{ns}");
    Ok(())
}

#[tokio::test]
async fn reapply_of_same_manifest_changes_nothing() -> Result<()> {
    let (standin, rt) = setup().await?;
    scenarios::reapply_is_noop(&rt, "demo").await?;
    // The stand-in saw the re-applies but stored nothing new.
    let before = standin.objects();
    let dep = deployment("demo", "web", 0, "one");
    rt.apply(WORKLOAD, &dep).await?;
    assert_eq!(before, standin.objects());
    Ok(())
}

#[tokio::test]
async fn changed_fields_update_and_removed_fields_go() -> Result<()> {
    let (_standin, rt) = setup().await?;
    scenarios::change_and_remove(&rt, "demo").await
}

#[tokio::test]
async fn removed_container_and_env_entries_are_removed() -> Result<()> {
    let (standin, rt) = setup().await?;
    let mut dep = deployment("demo", "web", 1, "a");
    dep["spec"]["template"]["spec"]["containers"] = json!([
        {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
        {"name": "sidecar", "image": "side:1"},
    ]);
    rt.apply(WORKLOAD, &dep).await?;
    dep["spec"]["template"]["spec"]["containers"] =
        json!([{"name": "app", "image": "app:2", "env": [{"name": "A", "value": "1"}]}]);
    let live = rt.apply(WORKLOAD, &dep).await?;
    let stored = standin
        .get("apps/v1", "Deployment", Some("demo"), "web")
        .context("stored")?;
    assert_eq!(
        stored["spec"]["template"]["spec"]["containers"],
        json!([{"name": "app", "image": "app:2", "env": [{"name": "A", "value": "1"}]}])
    );
    assert_eq!(live.generation, Some(2));
    Ok(())
}

#[tokio::test]
async fn delete_owned_refuses_a_foreign_object() -> Result<()> {
    let (standin, rt) = setup().await?;
    let foreign = foreign_client(standin.kubeconfig_path()).await?;
    scenarios::delete_owned_refuses_foreign(&rt, &foreign, "demo").await?;
    // Also an object someone inserted with a name we might use.
    standin.insert(configmap("default", "theirs", json!({"k": "v"})));
    let key =
        ObjectKey::from_manifest(&configmap("default", "theirs", json!({}))).context("key")?;
    let mutating = standin.mutating_requests();
    assert!(!rt.delete_owned(&key).await?);
    assert_eq!(
        standin.mutating_requests(),
        mutating,
        "no DELETE may be sent"
    );
    assert!(
        standin
            .get("v1", "ConfigMap", Some("default"), "theirs")
            .is_some()
    );
    Ok(())
}

#[tokio::test]
async fn delete_checks_the_uid_it_saw() -> Result<()> {
    let (standin, _rt) = setup().await?;
    let client = foreign_client(standin.kubeconfig_path()).await?;
    standin.insert(configmap("default", "c", json!({})));
    let api = configmaps(&client, "default");
    let params = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("not-the-uid".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete("c", &params).await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("expected a 409 Conflict, got {other:?}"),
    }
    assert!(
        standin
            .get("v1", "ConfigMap", Some("default"), "c")
            .is_some()
    );
    Ok(())
}

#[tokio::test]
async fn list_owned_returns_only_ours() -> Result<()> {
    let (standin, rt) = setup().await?;
    let foreign = foreign_client(standin.kubeconfig_path()).await?;
    scenarios::list_owned_finds_ours(&rt, &foreign, "demo").await
}

#[tokio::test]
async fn namespace_is_auto_created_and_default_namespace_used() -> Result<()> {
    let (standin, rt) = setup().await?;
    rt.apply(WORKLOAD, &configmap("fresh", "c", json!({})))
        .await?;
    assert!(standin.get("v1", "Namespace", None, "fresh").is_some());
    // A namespaced manifest without namespace lands in "default".
    let bare = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bare"}});
    let live = rt.apply(WORKLOAD, &bare).await?;
    assert_eq!(live.key.namespace.as_deref(), Some("default"));
    assert!(
        standin
            .get("v1", "ConfigMap", Some("default"), "bare")
            .is_some()
    );
    // And get with the manifest's namespace-less key finds it.
    let key = ObjectKey::from_manifest(&bare).context("key")?;
    assert!(rt.get(&key).await?.is_some());
    // A reset K3s has lost the namespace: apply recreates it.
    standin.reset();
    let again = rt
        .apply(WORKLOAD, &configmap("fresh", "c", json!({})))
        .await?;
    assert!(standin.get("v1", "Namespace", None, "fresh").is_some());
    assert_eq!(again.key.namespace.as_deref(), Some("fresh"));
    Ok(())
}

#[tokio::test]
async fn health_follows_status_set_by_the_controller() -> Result<()> {
    let (standin, rt) = setup().await?;
    let live = rt
        .apply(WORKLOAD, &deployment("demo", "web", 1, "a"))
        .await?;
    let (health, msg) = health_of(&live);
    assert_eq!(health, Health::Progressing, "{msg:?}");

    standin.set_status(
        "apps/v1",
        "Deployment",
        Some("demo"),
        "web",
        json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
               "readyReplicas": 0, "availableReplicas": 0}),
    );
    let live2 = rt.get(&live.key).await?.context("exists")?;
    assert_ne!(
        live2.resource_version, live.resource_version,
        "status bumps resourceVersion"
    );
    assert_eq!(
        live2.generation, live.generation,
        "status does not bump generation"
    );
    assert_eq!(
        health_of(&live2),
        (Health::Progressing, Some("0/1 replicas available".into()))
    );

    standin.set_status(
        "apps/v1",
        "Deployment",
        Some("demo"),
        "web",
        json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
               "readyReplicas": 1, "availableReplicas": 1}),
    );
    let live3 = rt.get(&live.key).await?.context("exists")?;
    assert_eq!(health_of(&live3), (Health::Healthy, None));

    // A new spec is not observed yet: progressing again.
    let live4 = rt
        .apply(WORKLOAD, &deployment("demo", "web", 1, "b"))
        .await?;
    assert_eq!(live4.generation, Some(2));
    assert_eq!(health_of(&live4).0, Health::Progressing);
    // Status in an apply is ignored for kinds with a status subresource.
    let mut with_status = deployment("demo", "web", 1, "b");
    with_status["status"] = json!({"observedGeneration": 99});
    let live5 = rt.apply(WORKLOAD, &with_status).await?;
    assert_eq!(live5.resource_version, live4.resource_version);
    Ok(())
}

#[tokio::test]
async fn unknown_kinds_are_permanent_errors() -> Result<()> {
    let (standin, rt) = setup().await?;
    for (api_version, kind) in [
        ("example.com/v1", "Widget"),
        ("apps/v1", "Gadget"),
        ("v2", "Pod"),
    ] {
        let m = json!({"apiVersion": api_version, "kind": kind,
                       "metadata": {"name": "w", "namespace": "demo"}});
        match rt.apply(WORKLOAD, &m).await {
            Err(e @ KubeError::UnknownKind { .. }) => assert!(!e.is_transient()),
            other => panic!("{api_version} {kind}: expected UnknownKind, got {other:?}"),
        }
    }
    assert_eq!(standin.mutating_requests(), 0);
    Ok(())
}

#[tokio::test]
async fn invalid_manifests_are_refused_before_sending() -> Result<()> {
    let (standin, rt) = setup().await?;
    let cm = configmap("demo", "c", json!({}));
    let err = rt
        .apply("not a label value!", &cm)
        .await
        .expect_err("bad workload id");
    assert!(matches!(err, KubeError::InvalidManifest(_)), "{err:?}");
    let err = rt
        .apply(WORKLOAD, &json!({"kind": "ConfigMap"}))
        .await
        .expect_err("no apiVersion");
    assert!(matches!(err, KubeError::InvalidManifest(_)), "{err:?}");
    assert!(!err.is_transient());
    // Invalid for the server: a bad object name comes back as 422 Invalid.
    let err = rt
        .apply(WORKLOAD, &configmap("demo", "Bad_Name", json!({})))
        .await
        .expect_err("invalid name");
    match &err {
        KubeError::Api {
            code: 422, reason, ..
        } => assert_eq!(reason, "Invalid"),
        other => panic!("expected 422 Invalid, got {other:?}"),
    }
    assert!(!err.is_transient());
    assert_eq!(
        standin.objects().len(),
        5,
        "only the 4 initial namespaces and demo"
    );
    Ok(())
}

#[tokio::test]
async fn slow_api_gives_a_timeout_quickly() -> Result<()> {
    let standin = KubeStandIn::start().await;
    let timeout = Duration::from_millis(300);
    let rt = KubeRuntime::connect(Some(standin.kubeconfig_path()), timeout).await?;
    standin.set_latency(Duration::from_secs(30));
    let started = Instant::now();
    let err = rt
        .apply(WORKLOAD, &configmap("demo", "c", json!({})))
        .await
        .expect_err("must time out");
    let took = started.elapsed();
    assert!(matches!(err, KubeError::Timeout { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let started = Instant::now();
    let err = rt.server_version().await.expect_err("must time out");
    assert!(matches!(err, KubeError::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Recovers as soon as the API does.
    standin.set_latency(Duration::ZERO);
    rt.apply(WORKLOAD, &configmap("demo", "c", json!({})))
        .await?;
    Ok(())
}

#[tokio::test]
async fn unavailable_api_gives_a_transient_error_quickly() -> Result<()> {
    let (standin, rt) = setup().await?;
    rt.apply(WORKLOAD, &configmap("demo", "c", json!({})))
        .await?;
    standin.set_unavailable(true);
    let started = Instant::now();
    let err = rt
        .apply(WORKLOAD, &configmap("demo", "c", json!({"x": "1"})))
        .await
        .expect_err("API down");
    assert!(matches!(err, KubeError::Api { code: 503, .. }), "{err:?}");
    assert!(err.is_transient());
    let key = ObjectKey::from_manifest(&configmap("demo", "c", json!({}))).context("key")?;
    let err = rt.get(&key).await.expect_err("API down");
    assert!(err.is_transient(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    standin.set_unavailable(false);
    assert!(rt.get(&key).await?.is_some());
    Ok(())
}

#[tokio::test]
async fn absent_api_is_unreachable_and_transient() -> Result<()> {
    let standin = KubeStandIn::start().await;
    let kubeconfig = std::fs::read_to_string(standin.kubeconfig_path())?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("kubeconfig");
    let port = edgefleet_tests::free_port();
    std::fs::write(
        &path,
        kubeconfig.replace(&standin.url(), &format!("http://127.0.0.1:{port}")),
    )?;
    let rt = KubeRuntime::connect(Some(&path), TIMEOUT).await?;
    let started = Instant::now();
    let err = rt.server_version().await.expect_err("nothing listens");
    assert!(matches!(err, KubeError::Unreachable { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(started.elapsed() < Duration::from_secs(2));
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

// ------------------------------------------------- the stand-in's fidelity

#[tokio::test]
async fn standin_serves_discovery_as_kube_rs_performs_it() -> Result<()> {
    let standin = KubeStandIn::start().await;
    let client = foreign_client(standin.kubeconfig_path()).await?;
    for discovery in [
        Discovery::new(client.clone()).run().await?,
        Discovery::new(client.clone()).run_aggregated().await?,
    ] {
        let gvk = kube::core::GroupVersionKind::gvk("apps", "v1", "Deployment");
        let (ar, caps) = discovery
            .resolve_gvk(&gvk)
            .context("deployments discovered")?;
        assert_eq!(ar.plural, "deployments");
        assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
        let ns = kube::core::GroupVersionKind::gvk("", "v1", "Namespace");
        let (_, caps) = discovery
            .resolve_gvk(&ns)
            .context("namespaces discovered")?;
        assert_eq!(caps.scope, kube::discovery::Scope::Cluster);
        let job = kube::core::GroupVersionKind::gvk("batch", "v1", "Job");
        assert!(discovery.resolve_gvk(&job).is_some());
    }
    Ok(())
}

#[tokio::test]
async fn standin_apply_conflicts_between_managers_like_the_real_server() -> Result<()> {
    let standin = KubeStandIn::start().await;
    let client = foreign_client(standin.kubeconfig_path()).await?;
    let api = configmaps(&client, "default");
    let apply = |manager: &str, force: bool| {
        let mut p = PatchParams::apply(manager);
        p.force = force;
        p
    };
    let a = configmap("default", "shared", json!({"k": "a", "only-a": "1"}));
    api.patch("shared", &apply("alice", false), &Patch::Apply(&a))
        .await?;
    // Same value: shared ownership, no conflict.
    let same = configmap("default", "shared", json!({"k": "a"}));
    api.patch("shared", &apply("bob", false), &Patch::Apply(&same))
        .await?;
    // Different value without force: 409 naming the other manager.
    let b = configmap("default", "shared", json!({"k": "b"}));
    match api
        .patch("shared", &apply("carol", false), &Patch::Apply(&b))
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            assert!(
                s.message.contains("alice") && s.message.contains(".data.k"),
                "{}",
                s.message
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Forced: carol takes .data.k; alice's other field stays.
    let obj = api
        .patch("shared", &apply("carol", true), &Patch::Apply(&b))
        .await?;
    assert_eq!(obj.data["data"], json!({"k": "b", "only-a": "1"}));
    // Bob stops applying k: k stays (carol owns it).
    let bob_empty = configmap("default", "shared", json!({}));
    let obj = api
        .patch("shared", &apply("bob", false), &Patch::Apply(&bob_empty))
        .await?;
    assert_eq!(obj.data["data"]["k"], "b");
    // Alice stops applying only-a: it goes (nobody else owns it).
    let alice_less = configmap("default", "shared", json!({"k": "b"}));
    let obj = api
        .patch("shared", &apply("alice", true), &Patch::Apply(&alice_less))
        .await?;
    assert_eq!(obj.data["data"], json!({"k": "b"}));
    Ok(())
}

#[tokio::test]
async fn standin_lists_with_label_selectors_and_types_items_like_the_real_server() -> Result<()> {
    let standin = KubeStandIn::start().await;
    let client = foreign_client(standin.kubeconfig_path()).await?;
    for (name, tier) in [("a", "front"), ("b", "back"), ("c", "")] {
        let mut cm = configmap("default", name, json!({}));
        if !tier.is_empty() {
            cm["metadata"]["labels"] = json!({"tier": tier});
        }
        standin.insert(cm);
    }
    let ar = ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk("", "v1", "ConfigMap"));
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let names = |list: kube::core::ObjectList<DynamicObject>| -> Vec<String> {
        list.items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .collect()
    };
    for (selector, want) in [
        ("tier=front", vec!["a"]),
        ("tier!=front", vec!["b", "c"]),
        ("tier in (front,back)", vec!["a", "b"]),
        ("tier notin (front)", vec!["b", "c"]),
        ("tier", vec!["a", "b"]),
        ("!tier", vec!["c"]),
    ] {
        let list = api.list(&ListParams::default().labels(selector)).await?;
        assert!(
            list.items.iter().all(|o| o.types.is_none()),
            "list items carry no apiVersion/kind"
        );
        assert_eq!(names(list), want, "{selector}");
    }
    match api
        .list(&ListParams::default().labels("tier in (front"))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 400),
        other => panic!("expected 400, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn standin_answers_like_the_real_server_for_missing_things() -> Result<()> {
    let standin = KubeStandIn::start().await;
    let client = foreign_client(standin.kubeconfig_path()).await?;
    let ar = ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
        "apps",
        "v1",
        "Deployment",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "nowhere", &ar);
    match api.get("web").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (404, "NotFound"));
            assert_eq!(s.message, "deployments.apps \"web\" not found");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    // Apply into a namespace that does not exist: 404 about the namespace.
    let dep = deployment("nowhere", "web", 0, "a");
    match api
        .patch("web", &PatchParams::apply("x"), &Patch::Apply(&dep))
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 404);
            let details = s.details.context("details")?;
            assert_eq!(
                (details.kind.as_str(), details.name.as_str()),
                ("namespaces", "nowhere")
            );
        }
        other => panic!("expected namespace NotFound, got {other:?}"),
    }
    // An unknown resource: the real server's plain-text 404.
    let widgets = ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
        "example.com",
        "v1",
        "Widget",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &widgets);
    match api.get("w").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404),
        other => panic!("expected 404, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn standin_counts_mutations_and_resets_to_a_fresh_cluster() -> Result<()> {
    let (standin, rt) = setup().await?;
    let live = rt
        .apply(WORKLOAD, &configmap("demo", "c", json!({})))
        .await?;
    // PATCH (404 namespace) + POST namespace + PATCH.
    assert_eq!(standin.mutating_requests(), 3, "{:#?}", standin.requests());
    standin.clear_requests();
    rt.get(&live.key).await?;
    assert_eq!(standin.mutating_requests(), 0);
    standin.reset();
    assert!(rt.get(&live.key).await?.is_none());
    let names: Vec<String> = standin
        .objects()
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        names,
        ["default", "kube-node-lease", "kube-public", "kube-system"]
    );
    let again = rt
        .apply(WORKLOAD, &configmap("demo", "c", json!({})))
        .await?;
    assert_ne!(again.uid, live.uid, "a reset cluster gives new uids");
    Ok(())
}

#[tokio::test]
async fn a_namespace_manifest_is_ours_and_its_deletion_takes_its_objects() -> Result<()> {
    let (standin, rt) = setup().await?;
    // A namespace given with a (meaningless) namespace of its own.
    let ns = json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": "vision", "namespace": "ignored"}});
    let live = rt.apply(WORKLOAD, &ns).await?;
    assert_eq!(live.key.namespace, None);
    assert!(live.is_owned());
    rt.apply(WORKLOAD, &configmap("vision", "c", json!({})))
        .await?;
    let key = ObjectKey::from_manifest(&ns).context("key")?;
    assert!(rt.delete_owned(&key).await?);
    assert!(standin.get("v1", "Namespace", None, "vision").is_none());
    assert!(
        standin
            .get("v1", "ConfigMap", Some("vision"), "c")
            .is_none()
    );
    Ok(())
}
