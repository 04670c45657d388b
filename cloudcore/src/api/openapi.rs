//! The REST API's OpenAPI document, generated from the code: the router is
//! built from the handlers' `#[utoipa::path]` attributes (utoipa-axum), so a
//! route cannot be served without being described, and the bodies' schemas
//! come from the types' `ToSchema`. Served at `/api/v1/openapi.json`,
//! printed by `cloudcore openapi`, kept in `docs/openapi.json`.
//!
//! What the attributes do not say, added here once for every operation:
//! who may call it (the operator routes' bearer token) and the error
//! answers any of them can give (a malformed path or query, an oversized
//! body, a full disk, an internal error), all in the one error shape.

use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr, ResponseBuilder, Schema,
};
use utoipa::{PartialSchema, ToSchema};

/// The body of a blob upload or download (an ONNX model, an agent
/// binary): the file's bytes.
pub struct BlobFile;

impl PartialSchema for BlobFile {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/octet-stream")
            .into()
    }
}

impl ToSchema for BlobFile {}

/// The security scheme of the operator routes.
pub const OPERATOR: &str = "operator";
/// A device's broker credentials as Basic auth (model downloads).
pub const DEVICE: &str = "device";

/// The document's frame: title, version, security schemes.
pub fn base() -> OpenApi {
    let mut api = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("edgefleet hub (cloudcore)")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The hub's REST API. Errors have one shape: \
                     {\"error\": {\"code\": \"not_found\", \"message\": \"...\"}}.",
                ))
                .build(),
        )
        .build();
    let components = api.components.get_or_insert_with(Default::default);
    for (name, scheme, text) in [
        (
            OPERATOR,
            HttpAuthScheme::Bearer,
            "The operator token (<data-dir>/operator-token)",
        ),
        (
            DEVICE,
            HttpAuthScheme::Basic,
            "A device's broker username and password",
        ),
    ] {
        let http = HttpBuilder::new()
            .scheme(scheme)
            .description(Some(text))
            .build();
        components.add_security_scheme(name, SecurityScheme::Http(http));
    }
    api
}

/// Every operation of `api` that names no security needs `scheme`.
pub fn require(api: &mut OpenApi, scheme: &str) {
    for op in operations(api) {
        op.security
            .get_or_insert_with(|| vec![SecurityRequirement::new(scheme, Vec::<String>::new())]);
    }
}

/// Adds what every operation can answer besides its own responses.
pub fn finish(mut api: OpenApi) -> OpenApi {
    let error = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build();
    let answer = |text: &str| {
        ResponseBuilder::new()
            .description(text)
            .content("application/json", error.clone())
            .build()
    };
    for (path, method, op) in operations_with_method(&mut api) {
        if !path.starts_with("/api/") {
            continue;
        }
        let mut common = vec![
            (
                "400",
                "Malformed: a path or query parameter, or the body (code invalid)",
            ),
            ("500", "Internal error; the hub's log says more"),
        ];
        if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
            common.push(("401", "No or a wrong token (code unauthorized)"));
            if method != "get" {
                common.push((
                    "403",
                    "Signed in by a dashboard session without its CSRF token (code csrf)",
                ));
            }
        }
        if op.request_body.is_some() {
            common.push(("413", "The body is over the hub's limit (code too_large)"));
        }
        if method != "get" {
            common.push((
                "507",
                "The hub's disk is full: nothing can be changed (code disk_full)",
            ));
        }
        for (status, text) in common {
            op.responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| answer(text).into());
        }
    }
    let schemas = &mut api.components.get_or_insert_with(Default::default).schemas;
    schemas
        .entry("ErrorBody".to_owned())
        .or_insert_with(edgefleet_api::ErrorBody::schema);
    schemas
        .entry("ErrorDetail".to_owned())
        .or_insert_with(edgefleet_api::ErrorDetail::schema);
    api
}

fn operations(api: &mut OpenApi) -> impl Iterator<Item = &mut Operation> {
    operations_with_method(api).map(|(_, _, op)| op)
}

/// Every operation with its path and its method (lower case).
fn operations_with_method(
    api: &mut OpenApi,
) -> impl Iterator<Item = (String, &'static str, &mut Operation)> {
    api.paths.paths.iter_mut().flat_map(|(path, item)| {
        [
            ("get", &mut item.get),
            ("put", &mut item.put),
            ("post", &mut item.post),
            ("delete", &mut item.delete),
            ("patch", &mut item.patch),
        ]
        .into_iter()
        .filter_map(move |(m, op)| op.as_mut().map(|op| (path.clone(), m, op)))
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    fn committed() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
    }

    /// docs/openapi.json is what the code generates; after an intended API
    /// change: `EDGEFLEET_BLESS=1 cargo test -p cloudcore openapi`.
    #[test]
    fn docs_openapi_json_is_the_generated_document() {
        let text = crate::api::document().to_pretty_json().unwrap() + "\n";
        if std::env::var_os("EDGEFLEET_BLESS").is_some() {
            std::fs::write(committed(), &text).unwrap();
            return;
        }
        let want = std::fs::read_to_string(committed()).unwrap_or_default();
        assert!(
            text == want,
            "docs/openapi.json is not the generated document; bless with EDGEFLEET_BLESS=1 \
             cargo test -p cloudcore openapi"
        );
    }

    #[test]
    fn operator_routes_need_the_token_and_every_operation_answers_errors_in_one_shape() {
        let doc = serde_json::to_value(crate::api::document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/api/v1/devices",
            "/api/v1/deployments/{name}",
            "/api/v1/models",
            "/api/v1/hub/key/rotate",
        ] {
            for (method, op) in paths[path].as_object().unwrap() {
                assert_eq!(
                    op["security"][0]["operator"],
                    serde_json::json!([]),
                    "{method} {path}"
                );
                assert!(op["responses"]["401"].is_object(), "{method} {path}");
            }
        }
        for path in [
            "/api/v1/enroll",
            "/api/v1/hub/key",
            "/api/v1/devices/{id}/key",
        ] {
            for (method, op) in paths[path].as_object().unwrap() {
                assert!(op["security"].is_null(), "{method} {path} is open");
            }
        }
        for (path, item) in paths.iter().filter(|(p, _)| p.starts_with("/api/")) {
            for (method, op) in item.as_object().unwrap() {
                for (status, resp) in op["responses"].as_object().unwrap() {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            resp["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/ErrorBody",
                            "{method} {path} {status}"
                        );
                    }
                }
                assert!(op["responses"]["400"].is_object(), "{method} {path}");
            }
        }
    }
}
