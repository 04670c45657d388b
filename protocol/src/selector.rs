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

impl std::str::FromStr for LabelSelector {
    type Err = String;

    /// kubectl's `-l` syntax: comma-separated `k=v` (or `k==v`), `k!=v`,
    /// `k in (a,b)`, `k notin (a,b)`, `k` (exists), `!k` (does not exist).
    /// Checked with [`LabelSelector::validate_into`] as well.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut sel = LabelSelector::default();
        let mut rest = text.trim();
        while !rest.is_empty() {
            // One requirement: up to a comma outside parentheses.
            let end = {
                let mut depth = 0i32;
                rest.char_indices()
                    .find(|&(_, c)| {
                        match c {
                            '(' => depth += 1,
                            ')' => depth -= 1,
                            _ => {}
                        }
                        c == ',' && depth == 0
                    })
                    .map_or(rest.len(), |(i, _)| i)
            };
            let part = rest[..end].trim();
            rest = rest[end..].strip_prefix(',').unwrap_or("").trim_start();
            let set = |key: &str, op: Operator, list: &str| -> Result<Requirement, String> {
                let inner = list
                    .trim()
                    .strip_prefix('(')
                    .and_then(|l| l.strip_suffix(')'))
                    .ok_or_else(|| format!("{part:?}: the values go in parentheses, e.g. (a,b)"))?;
                Ok(Requirement {
                    key: key.trim().to_owned(),
                    operator: op,
                    values: inner.split(',').map(|v| v.trim().to_owned()).collect(),
                })
            };
            if let Some((k, v)) = part.split_once("!=") {
                sel.match_expressions.push(Requirement {
                    key: k.trim().to_owned(),
                    operator: Operator::NotIn,
                    values: vec![v.trim().to_owned()],
                });
            } else if let Some((k, v)) = part.split_once('=') {
                let v = v.strip_prefix('=').unwrap_or(v);
                sel.match_labels
                    .insert(k.trim().to_owned(), v.trim().to_owned());
            } else if let Some((k, l)) = part.split_once(" notin ") {
                sel.match_expressions.push(set(k, Operator::NotIn, l)?);
            } else if let Some((k, l)) = part.split_once(" in ") {
                sel.match_expressions.push(set(k, Operator::In, l)?);
            } else if let Some(k) = part.strip_prefix('!') {
                sel.match_expressions.push(Requirement {
                    key: k.trim().to_owned(),
                    operator: Operator::DoesNotExist,
                    values: Vec::new(),
                });
            } else if !part.is_empty() {
                sel.match_expressions.push(Requirement {
                    key: part.to_owned(),
                    operator: Operator::Exists,
                    values: Vec::new(),
                });
            } else {
                return Err(format!("{text:?}: an empty requirement"));
            }
        }
        let mut errs = ValidationErrors::default();
        sel.validate_into("selector", &mut errs);
        errs.into_result().map_err(|e| e.to_string())?;
        Ok(sel)
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
    fn kubectl_selector_syntax_parses() {
        let sel: LabelSelector =
            "site=plant-3, ring==canary,arch in (arm64, armv7),tier notin (db),gpu,!legacy,zone!=b"
                .parse()
                .unwrap();
        assert_eq!(
            sel.match_labels,
            labels(&[("site", "plant-3"), ("ring", "canary")])
        );
        assert_eq!(
            sel.match_expressions,
            vec![
                req("arch", Operator::In, &["arm64", "armv7"]),
                req("tier", Operator::NotIn, &["db"]),
                req("gpu", Operator::Exists, &[]),
                req("legacy", Operator::DoesNotExist, &[]),
                req("zone", Operator::NotIn, &["b"]),
            ]
        );
        assert!("site=a,,b".parse::<LabelSelector>().is_err());
        assert!("arch in arm64".parse::<LabelSelector>().is_err());
        assert!("bad key!=x".parse::<LabelSelector>().is_err());
        assert_eq!(
            "".parse::<LabelSelector>().unwrap(),
            LabelSelector::default()
        );
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
