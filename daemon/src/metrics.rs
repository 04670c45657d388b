//! The `/metrics` endpoint both daemons serve: their prometheus-client
//! registry in the OpenMetrics text format, with that format's content type
//! (Prometheus negotiates it; the classic `text/plain; version=0.0.4` would
//! misdescribe the `# EOF` line and the `_total` suffixes).

use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;

pub use prometheus_client;

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

/// Declares a daemon's metrics once: a struct of metric handles (cheap
/// clones sharing their values) and a private `build()` that makes each and
/// registers it under the prefix, with its doc comment as the help text and
/// its field name as the metric name. Optional attributes, in this order:
/// `#[name = "…"]` (another metric name), `#[unit = Seconds]` (a
/// `prometheus_client` unit), `#[init = expr]` (instead of `Default`).
///
/// ```
/// use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
/// edgefleet_daemon::declare_metrics! {
///     /// What the example exports.
///     pub struct Metrics("example") {
///         /// Things done
///         pub things: Counter,
///         /// Time per thing
///         #[name = "thing_duration"]
///         #[unit = Seconds]
///         #[init = Histogram::new([0.1, 1.0])]
///         pub thing_seconds: Histogram,
///     }
/// }
/// ```
#[macro_export]
macro_rules! declare_metrics {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident($prefix:literal) {
            $(
                $(#[doc = $doc:literal])+
                $(#[name = $metric:literal])?
                $(#[unit = $unit:ident])?
                $(#[init = $init:expr])?
                $fvis:vis $field:ident: $ty:ty
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug)]
        $vis struct $name {
            registry: $crate::metrics::prometheus_client::registry::Registry,
            $($(#[doc = $doc])+ $fvis $field: $ty,)*
        }

        impl $name {
            /// Every metric made and registered.
            fn build() -> Self {
                let mut registry =
                    $crate::metrics::prometheus_client::registry::Registry::with_prefix($prefix);
                $(
                    let $field: $ty = $crate::declare_metrics!(@init $($init)?);
                    $crate::declare_metrics!(
                        @register registry,
                        $crate::declare_metrics!(@name $field $($metric)?),
                        concat!($($doc),+).trim(),
                        [$($unit)?],
                        $field.clone()
                    );
                )*
                Self { registry, $($field),* }
            }
        }
    };
    (@init) => { ::core::default::Default::default() };
    (@init $init:expr) => { $init };
    (@name $field:ident) => { stringify!($field) };
    (@name $field:ident $metric:literal) => { $metric };
    (@register $r:ident, $name:expr, $help:expr, [], $m:expr) => {
        $r.register($name, $help, $m)
    };
    (@register $r:ident, $name:expr, $help:expr, [$unit:ident], $m:expr) => {
        $r.register_with_unit(
            $name,
            $help,
            $crate::metrics::prometheus_client::registry::Unit::$unit,
            $m,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::histogram::Histogram;

    crate::declare_metrics! {
        struct Declared("edgefleet_test") {
            /// Things done, over
            /// two lines
            things: Counter,
            /// Time per thing
            #[name = "thing_duration"]
            #[unit = Seconds]
            #[init = Histogram::new([0.5])]
            thing_seconds: Histogram,
        }
    }

    #[test]
    fn declared_metrics_register_with_their_docs_names_and_units() {
        let m = Declared::build();
        m.things.inc();
        m.thing_seconds.observe(0.25);
        let text = render(&m.registry);
        for want in [
            "# HELP edgefleet_test_things Things done, over two lines.\n",
            "edgefleet_test_things_total 1\n",
            "# UNIT edgefleet_test_thing_duration_seconds seconds\n",
            "edgefleet_test_thing_duration_seconds_bucket{le=\"0.5\"} 1\n",
        ] {
            assert!(text.contains(want), "{want:?} in:\n{text}");
        }
    }

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
