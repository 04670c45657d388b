//! What apps post to the agent's local `POST /v1/events`: one event object
//! or an array of them; the agent fills in what is missing, signs them and
//! commits them to its outbox.

use serde::Deserialize;

/// Most events in one `POST /v1/events` body.
pub const MAX_EVENTS_PER_REQUEST: usize = 1000;

/// An event as an app posts it; the agent fills in what is missing.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventIn {
    /// Unique id for dedup at the hub; default: a fresh UUIDv7.
    #[serde(default)]
    pub id: Option<String>,
    pub kind: String,
    #[serde(default)]
    pub workload: Option<String>,
    #[serde(default)]
    pub created_at_ms: Option<u64>,
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// Parses a body holding one event object or an array of them.
pub fn parse_events(body: &[u8]) -> Result<Vec<EventIn>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let items = match value {
        serde_json::Value::Array(items) => {
            if items.is_empty() {
                return Err("empty array: post at least one event".into());
            }
            if items.len() > MAX_EVENTS_PER_REQUEST {
                return Err(format!(
                    "{} events in one request, the limit is {MAX_EVENTS_PER_REQUEST}",
                    items.len()
                ));
            }
            items
        }
        obj @ serde_json::Value::Object(_) => vec![obj],
        _ => return Err("body must be an event object or an array of them".into()),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| serde_json::from_value::<EventIn>(v).map_err(|e| format!("event [{i}]: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_batches_with_clear_errors() {
        assert_eq!(
            parse_events(br#"{"kind":"a","payload":1}"#).unwrap().len(),
            1
        );
        assert_eq!(
            parse_events(br#"[{"kind":"a"},{"kind":"b","id":"x"}]"#)
                .unwrap()
                .len(),
            2
        );
        assert!(parse_events(b"nope").unwrap_err().contains("not JSON"));
        assert!(parse_events(b"[]").unwrap_err().contains("empty"));
        assert!(parse_events(b"3").unwrap_err().contains("event object"));
        let e = parse_events(br#"[{"kind":"a"},{"kind":"b","bogus":1}]"#).unwrap_err();
        assert!(e.starts_with("event [1]") && e.contains("bogus"), "{e}");
        assert!(
            parse_events(br#"{"payload":{}}"#)
                .unwrap_err()
                .contains("kind")
        );
    }
}
