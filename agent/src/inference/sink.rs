//! What an inference result turns into: the `inference.result` event payload
//! (upstream through the outbox, and/or a local topic), emitted only when the
//! workload's `when` condition holds.
//!
//! A condition's field names an output (`score`), optionally with a flat
//! element index (`probabilities.3`); without an index it is element 0. A
//! field naming no output never holds.

use edgefleet_protocol::workload::Condition;
use serde_json::json;

use super::ResponseTensor;

/// `Event.kind` of inference results.
pub const RESULT_KIND: &str = "inference.result";

/// The value a condition's field refers to, if any.
pub fn field_value(outputs: &[ResponseTensor], field: &str) -> Option<f64> {
    let (name, index) = match field.rsplit_once('.') {
        Some((n, i)) if i.bytes().all(|b| b.is_ascii_digit()) => (n, i.parse().ok()?),
        _ => (field, 0usize),
    };
    outputs
        .iter()
        .find(|t| t.name == name)?
        .data
        .as_ref()?
        .get(index)?
        .as_f64()
}

/// The event payload of one result, or `None` when `when` does not hold.
pub fn result_payload(
    workload: &str,
    model: &str,
    request_id: Option<&str>,
    outputs: &[ResponseTensor],
    when: Option<&Condition>,
) -> Option<serde_json::Value> {
    if let Some(c) = when {
        let holds = field_value(outputs, &c.field).is_some_and(|x| c.holds(x));
        if !holds {
            return None;
        }
    }
    Some(json!({
        "workload": workload,
        "model": model,
        "id": request_id,
        "condition": when.map(ToString::to_string),
        "outputs": outputs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(name: &str, data: &[f64]) -> ResponseTensor {
        ResponseTensor {
            name: name.into(),
            shape: vec![1, data.len()],
            datatype: "FP32".into(),
            parameters: serde_json::Map::new(),
            data: Some(data.iter().map(|x| json!(x)).collect()),
            raw: None,
        }
    }

    #[test]
    fn condition_selects_results() {
        let when: Condition = "score > 0.8".parse().unwrap();
        let hi = [out("score", &[0.93])];
        let lo = [out("score", &[0.41])];
        let p = result_payload("anomaly", "vibration", Some("r1"), &hi, Some(&when)).unwrap();
        assert_eq!(p["workload"], "anomaly");
        assert_eq!(p["condition"], "score > 0.8");
        assert_eq!(p["outputs"][0]["data"][0], 0.93);
        assert!(result_payload("anomaly", "vibration", None, &lo, Some(&when)).is_none());
        assert!(result_payload("anomaly", "vibration", None, &lo, None).is_some());
    }

    #[test]
    fn fields_with_indices_and_unknown_fields() {
        let outs = [out("probabilities", &[0.1, 0.7, 0.2])];
        assert_eq!(field_value(&outs, "probabilities.1"), Some(0.7));
        assert_eq!(field_value(&outs, "probabilities"), Some(0.1));
        assert_eq!(field_value(&outs, "probabilities.9"), None);
        assert_eq!(field_value(&outs, "score"), None);
        let when: Condition = "score > 0.0".parse().unwrap();
        assert!(result_payload("w", "m", None, &outs, Some(&when)).is_none());
    }
}
