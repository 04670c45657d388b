//! The Kubernetes runtime against a real cluster (K3s), opt-in: set
//! `EDGEFLEET_TEST_KUBECONFIG` to a kubeconfig whose user may create
//! namespaces. Without it every test skips loudly, and fails when
//! `EDGEFLEET_REQUIRE_K3S=1`. Each test works in a fresh namespace
//! `edgefleet-test-…` and deletes it at the end.

#[path = "kube/scenarios.rs"]
mod scenarios;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use edge_agent::runtime::kube::KubeRuntime;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams};

fn kubeconfig() -> Option<PathBuf> {
    match std::env::var_os("EDGEFLEET_TEST_KUBECONFIG") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            edgefleet_tests::skip("k3s", "EDGEFLEET_TEST_KUBECONFIG is not set");
            None
        }
    }
}

/// A namespace name no earlier run used.
fn fresh_namespace(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("edgefleet-test-{tag}-{}-{nanos}", std::process::id())
}

struct Cluster {
    rt: KubeRuntime,
    foreign: kube::Client,
    ns: String,
}

impl Cluster {
    async fn new(tag: &str) -> Result<Option<Self>> {
        let Some(path) = kubeconfig() else {
            return Ok(None);
        };
        let rt = KubeRuntime::connect(Some(&path), Duration::from_secs(20)).await?;
        let foreign = scenarios::foreign_client(&path).await?;
        Ok(Some(Self {
            rt,
            foreign,
            ns: fresh_namespace(tag),
        }))
    }

    async fn cleanup(self) {
        let api: Api<Namespace> = Api::all(self.foreign);
        if let Err(e) = api.delete(&self.ns, &DeleteParams::background()).await {
            eprintln!("cleanup of namespace {}: {e}", self.ns);
        }
    }
}

macro_rules! real_cluster_test {
    ($name:ident, $tag:literal, |$c:ident| $body:expr) => {
        #[tokio::test]
        async fn $name() -> Result<()> {
            let Some($c) = Cluster::new($tag).await? else {
                return Ok(());
            };
            let result: Result<()> = $body.await;
            $c.cleanup().await;
            result
        }
    };
}

real_cluster_test!(server_answers_with_its_version, "version", |c| async {
    let v = c.rt.server_version().await?;
    anyhow::ensure!(v.starts_with('v'), "version {v}");
    Ok(())
});

real_cluster_test!(apply_creates_namespace_object_and_labels, "create", |c| {
    scenarios::apply_creates(&c.rt, &c.ns)
});

real_cluster_test!(reapply_of_same_manifest_changes_nothing, "noop", |c| {
    scenarios::reapply_is_noop(&c.rt, &c.ns)
});

real_cluster_test!(changed_fields_update_and_removed_fields_go, "change", |c| {
    scenarios::change_and_remove(&c.rt, &c.ns)
});

real_cluster_test!(delete_owned_refuses_a_foreign_object, "delete", |c| {
    scenarios::delete_owned_refuses_foreign(&c.rt, &c.foreign, &c.ns)
});

real_cluster_test!(list_owned_returns_only_ours, "list", |c| {
    scenarios::list_owned_finds_ours(&c.rt, &c.foreign, &c.ns)
});
