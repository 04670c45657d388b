//! Workloads: what a Deployment asks a device to run. Shared by the
//! operator's manifest ([`crate::deployment`]) and the desired state sent to
//! devices ([`crate::desired`]), so both validate the same way.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_MANIFEST_BYTES, MAX_MANIFESTS};
use crate::name::check_dns_label;
use crate::validate::{ValidationErrors, is_sha256_hex};

/// A named workload of exactly one kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63)
    )]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesWorkload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference: Option<InferenceWorkload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentWorkload>,
}

/// The kind of a validated workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WorkloadSpec<'a> {
    Kubernetes(&'a KubernetesWorkload),
    Inference(&'a InferenceWorkload),
    Agent(&'a AgentWorkload),
}

impl Workload {
    /// The workload's kind; `None` only for a workload that failed validation.
    pub fn spec(&self) -> Option<WorkloadSpec<'_>> {
        match (&self.kubernetes, &self.inference, &self.agent) {
            (Some(k), None, None) => Some(WorkloadSpec::Kubernetes(k)),
            (None, Some(i), None) => Some(WorkloadSpec::Inference(i)),
            (None, None, Some(a)) => Some(WorkloadSpec::Agent(a)),
            _ => None,
        }
    }

    /// A workload of one kind, named `name`.
    pub fn new(name: impl Into<String>, spec: WorkloadSpec<'_>) -> Self {
        let mut w = Workload {
            name: name.into(),
            kubernetes: None,
            inference: None,
            agent: None,
        };
        match spec {
            WorkloadSpec::Kubernetes(k) => w.kubernetes = Some(k.clone()),
            WorkloadSpec::Inference(i) => w.inference = Some(i.clone()),
            WorkloadSpec::Agent(a) => w.agent = Some(a.clone()),
        }
        w
    }

    /// Checks everything but the name, which the caller constrains.
    pub(crate) fn validate_spec_into(&self, path: &str, errs: &mut ValidationErrors) {
        match self.spec() {
            Some(WorkloadSpec::Kubernetes(k)) => {
                k.validate_into(&format!("{path}.kubernetes"), errs)
            }
            Some(WorkloadSpec::Inference(i)) => i.validate_into(&format!("{path}.inference"), errs),
            Some(WorkloadSpec::Agent(a)) => a.validate_into(&format!("{path}.agent"), errs),
            None => {
                let set = [
                    self.kubernetes.is_some(),
                    self.inference.is_some(),
                    self.agent.is_some(),
                ]
                .into_iter()
                .filter(|s| *s)
                .count();
                errs.push(
                    path,
                    format_args!(
                        "exactly one of `kubernetes`, `inference` or `agent` must be set, found {}",
                        if set == 0 {
                            "none".to_owned()
                        } else {
                            set.to_string()
                        }
                    ),
                )
            }
        }
    }
}

/// Kubernetes objects applied to the device's K3s with server-side apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesWorkload {
    #[serde(deserialize_with = "crate::bounded::vec::<_, _, MAX_MANIFESTS>")]
    pub manifests: Vec<serde_json::Value>,
}

impl KubernetesWorkload {
    fn validate_into(&self, path: &str, errs: &mut ValidationErrors) {
        if self.manifests.is_empty() {
            errs.push(format!("{path}.manifests"), "must list at least one object");
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, m) in self.manifests.iter().enumerate() {
            let p = format!("{path}.manifests[{i}]");
            let Some(obj) = m.as_object() else {
                errs.push(p, "must be a Kubernetes object (a mapping)");
                continue;
            };
            let size = serde_json::to_vec(m).map(|v| v.len()).unwrap_or(usize::MAX);
            if size > MAX_MANIFEST_BYTES {
                errs.push(
                    &p,
                    format_args!("is {size} bytes as JSON, the limit is {MAX_MANIFEST_BYTES}"),
                );
            }
            let api_version = obj.get("apiVersion").and_then(|v| v.as_str());
            let kind = obj.get("kind").and_then(|v| v.as_str());
            if api_version.is_none_or(str::is_empty) {
                errs.push(format!("{p}.apiVersion"), "is required");
            }
            if kind.is_none_or(str::is_empty) {
                errs.push(format!("{p}.kind"), "is required");
            }
            let meta = obj.get("metadata").and_then(|v| v.as_object());
            let name = meta.and_then(|m| m.get("name")).and_then(|v| v.as_str());
            let ns = meta
                .and_then(|m| m.get("namespace"))
                .and_then(|v| v.as_str());
            match name {
                None | Some("") => errs.push(format!("{p}.metadata.name"), "is required"),
                Some(n) if n.len() > 253 => errs.push(
                    format!("{p}.metadata.name"),
                    "is longer than 253 characters",
                ),
                Some(_) => {}
            }
            if let Some(ns) = ns
                && let Err(e) = check_dns_label(ns, 63)
            {
                errs.push(format!("{p}.metadata.namespace"), e);
            }
            if let (Some(a), Some(k), Some(n)) = (api_version, kind, name)
                && !seen.insert((a.split('/').next().unwrap_or(a).to_owned(), k, ns, n))
            {
                errs.push(&p, format_args!("duplicate object {k} {n}"));
            }
        }
    }
}

/// An ONNX model run next to the data source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InferenceWorkload {
    pub model: ModelRef,
    pub input: InferenceInput,
    #[serde(default)]
    pub output: InferenceOutput,
    /// Inference requests run at once for this model (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

/// A model by name and content hash; the hash is what the device fetches
/// and verifies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelRef {
    pub name: String,
    pub sha256: String,
}

/// The edge agent itself, at a release uploaded to the hub
/// (`edgectl agents push`). The operator names the version; the hub fills
/// in `artifacts` from its releases when it stores the deployment, so the
/// device verifies what it downloads against hashes in the signed document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentWorkload {
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[A-Za-z0-9][A-Za-z0-9.+_-]*$", max_length = 64)
    )]
    pub version: String,
    /// One binary per architecture; set by the hub.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::bounded::vec::<_, _, MAX_AGENT_ARCHES>"
    )]
    pub artifacts: Vec<AgentArtifact>,
}

/// Architectures a release may name (Debian's names).
pub const AGENT_ARCHES: &[&str] = &["amd64", "arm64", "armhf"];
const MAX_AGENT_ARCHES: usize = 8;

/// One release binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentArtifact {
    /// `amd64`, `arm64` or `armhf`.
    pub arch: String,
    pub sha256: String,
    pub size: u64,
}

/// The Debian name of an architecture, from Rust's (`std::env::consts::ARCH`)
/// or Debian's own; `None` for one releases cannot target.
pub fn agent_arch(name: &str) -> Option<&'static str> {
    match name {
        "amd64" | "x86_64" => Some("amd64"),
        "arm64" | "aarch64" => Some("arm64"),
        "armhf" | "arm" | "armv7" => Some("armhf"),
        _ => None,
    }
}

/// Whether `v` can name an agent release.
pub fn is_agent_version(v: &str) -> bool {
    (1..=64).contains(&v.len())
        && v.starts_with(|c: char| c.is_ascii_alphanumeric())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '_' | '-'))
}

impl AgentWorkload {
    /// The binary for `arch` (Debian's name).
    pub fn artifact(&self, arch: &str) -> Option<&AgentArtifact> {
        self.artifacts.iter().find(|a| a.arch == arch)
    }

    fn validate_into(&self, path: &str, errs: &mut ValidationErrors) {
        if !is_agent_version(&self.version) {
            errs.push(
                format!("{path}.version"),
                "must be 1-64 characters of letters, digits and `.+_-`, starting with a letter or digit",
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, a) in self.artifacts.iter().enumerate() {
            let p = format!("{path}.artifacts[{i}]");
            if !AGENT_ARCHES.contains(&a.arch.as_str()) {
                errs.push(
                    format!("{p}.arch"),
                    format_args!("must be one of {}", AGENT_ARCHES.join(", ")),
                );
            } else if !seen.insert(a.arch.as_str()) {
                errs.push(
                    format!("{p}.arch"),
                    format_args!("duplicate arch {}", a.arch),
                );
            }
            if !is_sha256_hex(&a.sha256) {
                errs.push(
                    format!("{p}.sha256"),
                    "not a sha256 (64 lower-case hex characters)",
                );
            }
        }
    }
}

/// Where inputs come from: the device-local MQTT broker and/or the agent's
/// local KServe v2 HTTP endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InferenceInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpInput>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MqttInput {
    pub topic: String,
}

/// Serve the model on the agent's local KServe v2 endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpInput {}

/// Where results go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InferenceOutput {
    /// Send results to the hub through the outbox as events.
    #[serde(default)]
    pub upstream: bool,
    /// Publish results on this topic of the device-local broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Only emit results for which this holds, e.g. `score > 0.8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub when: Option<Condition>,
}

impl InferenceWorkload {
    fn validate_into(&self, path: &str, errs: &mut ValidationErrors) {
        if let Err(e) = check_dns_label(&self.model.name, 63) {
            errs.push(format!("{path}.model.name"), e);
        }
        if !is_sha256_hex(&self.model.sha256) {
            errs.push(
                format!("{path}.model.sha256"),
                "not a sha256 (64 lower-case hex characters)",
            );
        }
        match &self.input {
            InferenceInput {
                mqtt: None,
                http: None,
            } => errs.push(format!("{path}.input"), "set `mqtt`, `http` or both"),
            InferenceInput { mqtt: Some(m), .. } if !is_mqtt_topic_name(&m.topic) => errs.push(
                format!("{path}.input.mqtt.topic"),
                "must be a non-empty MQTT topic name without wildcards",
            ),
            _ => {}
        }
        if let Some(t) = &self.output.topic
            && !is_mqtt_topic_name(t)
        {
            errs.push(
                format!("{path}.output.topic"),
                "must be a non-empty MQTT topic name without wildcards",
            );
        }
        // Results of an `http` request go back to its caller; those of
        // `mqtt` readings need somewhere to go.
        if self.input.http.is_none() && !self.output.upstream && self.output.topic.is_none() {
            errs.push(
                format!("{path}.output"),
                "results would go nowhere: set `upstream: true`, `topic`, or both (or add `input.http`, whose results go back to the caller)",
            );
        }
        if let Some(c) = self.concurrency
            && !(1..=64).contains(&c)
        {
            errs.push(format!("{path}.concurrency"), "must be between 1 and 64");
        }
    }
}

fn is_mqtt_topic_name(t: &str) -> bool {
    !t.is_empty() && t.len() <= 256 && !t.contains(['+', '#', '\0'])
}

/// A filter on a result: `<output> <op> <number>`, e.g. `score > 0.8`.
/// On the wire it is the string form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Condition {
    pub field: String,
    pub op: CmpOp,
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl CmpOp {
    fn as_str(self) -> &'static str {
        match self {
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }
}

impl Condition {
    /// Evaluates the condition against a value of `field`.
    pub fn holds(&self, x: f64) -> bool {
        match self.op {
            CmpOp::Gt => x > self.value,
            CmpOp::Ge => x >= self.value,
            CmpOp::Lt => x < self.value,
            CmpOp::Le => x <= self.value,
            CmpOp::Eq => x == self.value,
            CmpOp::Ne => x != self.value,
        }
    }
}

impl TryFrom<String> for Condition {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for Condition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("condition {s:?} must look like `score > 0.8` (operators > >= < <= == !=)");
        let mut parts = s.split_whitespace();
        let (Some(field), Some(op), Some(value), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let ident_ok = field
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && field
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        let op = match op {
            ">" => CmpOp::Gt,
            ">=" => CmpOp::Ge,
            "<" => CmpOp::Lt,
            "<=" => CmpOp::Le,
            "==" => CmpOp::Eq,
            "!=" => CmpOp::Ne,
            _ => return Err(bad()),
        };
        let value: f64 = value.parse().map_err(|_| bad())?;
        if !ident_ok || !value.is_finite() {
            return Err(bad());
        }
        Ok(Condition {
            field: field.to_owned(),
            op,
            value,
        })
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.field, self.op.as_str(), self.value)
    }
}

impl From<Condition> for String {
    fn from(c: Condition) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_need_somewhere_to_go_unless_http_returns_them() {
        let errors = |input: serde_json::Value, output: serde_json::Value| {
            let w: InferenceWorkload = serde_json::from_value(serde_json::json!({
                "model": {"name": "m", "sha256": "a".repeat(64)},
                "input": input,
                "output": output,
            }))
            .unwrap();
            let mut errs = ValidationErrors::default();
            w.validate_into("w", &mut errs);
            errs.to_string()
        };
        let http = serde_json::json!({"http": {}});
        let mqtt = serde_json::json!({"mqtt": {"topic": "t"}});
        let nowhere = serde_json::json!({});
        assert_eq!(errors(http.clone(), nowhere.clone()), "");
        let both = serde_json::json!({"http": {}, "mqtt": {"topic": "t"}});
        assert_eq!(errors(both, nowhere.clone()), "");
        assert!(errors(mqtt.clone(), nowhere).contains("go nowhere"));
        assert_eq!(errors(mqtt, serde_json::json!({"upstream": true})), "");
    }

    #[test]
    fn conditions_parse_and_evaluate() {
        let c: Condition = "score > 0.8".parse().unwrap();
        assert!(c.holds(0.81) && !c.holds(0.8));
        assert_eq!(c.to_string(), "score > 0.8");
        let c: Condition = "error.max <= -1e-3".parse().unwrap();
        assert!(c.holds(-0.002) && !c.holds(0.0));
        for bad in [
            "",
            "score",
            "score >",
            "score >> 1",
            "1x > 2",
            "a > b",
            "a > 1 2",
            "a > NaN",
        ] {
            assert!(bad.parse::<Condition>().is_err(), "{bad}");
        }
    }
}
