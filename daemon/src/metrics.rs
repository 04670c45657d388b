//! The `/metrics` endpoint both daemons serve: their prometheus-client
//! registry in the OpenMetrics text format, with that format's content type
//! (Prometheus negotiates it; the classic `text/plain; version=0.0.4` would
//! misdescribe the `# EOF` line and the `_total` suffixes).

use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// The registry as a `/metrics` response.
pub fn response(registry: &Registry) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(registry)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn renders_openmetrics_with_its_content_type() {
        let mut r = Registry::with_prefix("edgefleet");
        let c: Counter = Counter::default();
        r.register("things", "Things", c.clone());
        c.inc();
        let resp = response(&r);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        let text = render(&r);
        assert!(text.contains("edgefleet_things_total 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
