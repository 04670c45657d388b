//! What `apply` sends for a manifest: the manifest minus server-owned
//! metadata, plus our two labels; and the stable hash of it the reconciler
//! records to skip unchanged objects. Pure functions, no API calls.

use edgefleet_protocol::name::check_label_value;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{
    FIELD_MANAGER, KubeError, MANAGED_BY_LABEL, MANAGED_BY_VALUE, ObjectKey, WORKLOAD_LABEL,
};

/// Metadata the server owns; a manifest exported from a cluster carries it,
/// and sending `resourceVersion` in an apply would turn it into a
/// compare-and-swap that fails forever once the object changes.
const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The body `apply` sends, before the namespace is settled by discovery:
/// the manifest minus server-owned metadata, plus our two labels.
pub(super) fn prepare(workload_id: &str, manifest: &Value) -> Result<Value, KubeError> {
    if let Err(e) = check_label_value(workload_id) {
        return Err(KubeError::InvalidManifest(format!(
            "workload id {workload_id:?} cannot be a label value: {e}"
        )));
    }
    let mut body = manifest.clone();
    let Some(obj) = body.as_object_mut() else {
        return Err(KubeError::InvalidManifest("not a mapping".into()));
    };
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return Err(KubeError::InvalidManifest(
            "metadata is not a mapping".into(),
        ));
    };
    for field in SERVER_METADATA {
        meta.remove(*field);
    }
    let labels = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Map::new()));
    if labels.is_null() {
        *labels = Value::Object(Map::new());
    }
    let Some(labels) = labels.as_object_mut() else {
        return Err(KubeError::InvalidManifest(
            "metadata.labels is not a mapping".into(),
        ));
    };
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    labels.insert(WORKLOAD_LABEL.into(), workload_id.into());
    if ObjectKey::from_manifest(&body).is_none() {
        return Err(KubeError::InvalidManifest(
            "apiVersion, kind and metadata.name must be non-empty strings".into(),
        ));
    }
    Ok(body)
}

pub(super) fn set_namespace(body: &mut Value, namespace: Option<&str>) {
    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        match namespace {
            Some(ns) => meta.insert("namespace".into(), Value::String(ns.to_owned())),
            None => meta.remove("namespace"),
        };
    }
}

/// Stable hash of exactly what `apply` would send for this manifest (labels
/// included), so the reconciler can skip re-applying unchanged objects.
pub fn apply_hash(workload_id: &str, manifest: &Value) -> String {
    let body = prepare(workload_id, manifest).unwrap_or_else(|_| manifest.clone());
    let mut canonical = String::new();
    write_canonical(&body, &mut canonical);
    let mut h = Sha256::new();
    // Versioned, so a change in what `apply` sends re-applies everything once.
    h.update(b"edgefleet-apply-v1\n");
    h.update(FIELD_MANAGER.as_bytes());
    h.update(b"\n");
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// JSON with object keys sorted, whatever map order serde_json was built with.
pub(super) fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prepare_adds_labels_and_strips_server_fields() {
        let m = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "resourceVersion": "7", "uid": "x", "labels": {"a": "b"}},
            "data": {"k": "v"}});
        let body = prepare("demo.web", &m).expect("prepare");
        assert_eq!(
            body["metadata"]["labels"],
            json!({"a": "b",
            "app.kubernetes.io/managed-by": "edgefleet", "edgefleet.io/workload": "demo.web"})
        );
        assert!(body["metadata"].get("resourceVersion").is_none());
        assert!(body["metadata"].get("uid").is_none());
        assert!(matches!(
            prepare("bad id!", &m),
            Err(KubeError::InvalidManifest(_))
        ));
        assert!(matches!(
            prepare("w", &json!([1])),
            Err(KubeError::InvalidManifest(_))
        ));
    }

    #[test]
    fn apply_hash_is_stable_and_sensitive() {
        let a = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                       "data": {"x": "1", "y": "2"}});
        let b = json!({"data": {"y": "2", "x": "1"}, "metadata": {"name": "c"},
                       "kind": "ConfigMap", "apiVersion": "v1"});
        assert_eq!(apply_hash("w", &a), apply_hash("w", &b));
        assert_ne!(apply_hash("w", &a), apply_hash("w2", &a));
        let mut c = a.clone();
        c["data"]["x"] = json!("3");
        assert_ne!(apply_hash("w", &a), apply_hash("w", &c));
        // Server-owned metadata does not change what is sent.
        let mut d = a.clone();
        d["metadata"]["resourceVersion"] = json!("42");
        assert_eq!(apply_hash("w", &a), apply_hash("w", &d));
    }
}
