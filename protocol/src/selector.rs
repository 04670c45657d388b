//! Kubernetes label-selector semantics: `matchLabels` and `matchExpressions`
//! (In, NotIn, Exists, DoesNotExist), ANDed. An empty selector matches every
//! device, as in Kubernetes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::limits::MAX_LABELS;
use crate::name::{check_label_key, check_label_value};
use crate::validate::ValidationErrors;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, String>))]
    pub match_labels: Labels,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::bounded::vec::<_, _, MAX_LABELS>"
    )]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// True when every requirement holds for `labels`.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Kubernetes validation rules; `path` is where the selector sits.
    pub fn validate_into(&self, path: &str, errs: &mut ValidationErrors) {
        if self.match_labels.len() > MAX_LABELS {
            errs.push(
                format!("{path}.matchLabels"),
                format_args!("at most {MAX_LABELS} labels"),
            );
        }
        for (k, v) in &self.match_labels {
            if let Err(e) = check_label_key(k) {
                errs.push(format!("{path}.matchLabels"), e);
            }
            if let Err(e) = check_label_value(v) {
                errs.push(format!("{path}.matchLabels.{k}"), e);
            }
        }
        for (i, r) in self.match_expressions.iter().enumerate() {
            let p = format!("{path}.matchExpressions[{i}]");
            if let Err(e) = check_label_key(&r.key) {
                errs.push(format!("{p}.key"), e);
            }
            match r.operator {
                Operator::In | Operator::NotIn if r.values.is_empty() => errs.push(
                    format!("{p}.values"),
                    "must be non-empty for operator In and NotIn",
                ),
                Operator::Exists | Operator::DoesNotExist if !r.values.is_empty() => errs.push(
                    format!("{p}.values"),
                    "must be empty for operator Exists and DoesNotExist",
                ),
                _ => {}
            }
            for (j, v) in r.values.iter().enumerate() {
                if let Err(e) = check_label_value(v) {
                    errs.push(format!("{p}.values[{j}]"), e);
                }
            }
        }
    }
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.key);
        match self.operator {
            Operator::In => v.is_some_and(|v| self.values.contains(v)),
            // Kubernetes: NotIn also matches objects without the key.
            Operator::NotIn => v.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator,
            values: values.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The Kubernetes truth table for each operator against: key absent,
    /// key present with a listed value, key present with another value.
    #[test]
    fn operator_truth_table() {
        let absent = labels(&[("other", "x")]);
        let listed = labels(&[("arch", "arm64")]);
        let unlisted = labels(&[("arch", "amd64")]);
        let cases = [
            (Operator::In, [false, true, false]),
            (Operator::NotIn, [true, false, true]),
            (Operator::Exists, [false, true, true]),
            (Operator::DoesNotExist, [true, false, false]),
        ];
        for (op, expect) in cases {
            let values: &[&str] = match op {
                Operator::In | Operator::NotIn => &["arm64", "armv7"],
                _ => &[],
            };
            let r = req("arch", op, values);
            let got = [r.matches(&absent), r.matches(&listed), r.matches(&unlisted)];
            assert_eq!(got, expect, "{op:?}");
        }
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let sel = LabelSelector {
            match_labels: labels(&[("site", "plant-3")]),
            match_expressions: vec![req("arch", Operator::In, &["arm64"])],
        };
        assert!(sel.matches(&labels(&[("site", "plant-3"), ("arch", "arm64")])));
        assert!(!sel.matches(&labels(&[("site", "plant-3"), ("arch", "amd64")])));
        assert!(!sel.matches(&labels(&[("site", "plant-4"), ("arch", "arm64")])));
        assert!(!sel.matches(&labels(&[("arch", "arm64")])));
        assert!(!sel.matches(&labels(&[("site", "PLANT-3"), ("arch", "arm64")])));
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(LabelSelector::default().matches(&Labels::new()));
        assert!(LabelSelector::default().matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn validation_names_paths() {
        let sel = LabelSelector {
            match_labels: labels(&[("bad key!", "v")]),
            match_expressions: vec![
                req("arch", Operator::In, &[]),
                req("gpu", Operator::Exists, &["yes"]),
            ],
        };
        let mut errs = ValidationErrors::default();
        sel.validate_into("spec.selector", &mut errs);
        let text = errs.to_string();
        assert!(
            text.contains("spec.selector.matchLabels: is not a valid label key"),
            "{text}"
        );
        assert!(
            text.contains("spec.selector.matchExpressions[0].values: must be non-empty"),
            "{text}"
        );
        assert!(
            text.contains("spec.selector.matchExpressions[1].values: must be empty"),
            "{text}"
        );
    }
}
