//! The OpenAPI 3 document of the config API, served at
//! `/api/v1/openapi.json` (and kept in `docs/api.md`, checked by a test).

use serde_json::{json, Map, Value as Json};

use crate::control::resources::SETTINGS;

/// A write's query parameters.
fn write_params(route: bool) -> Json {
    let mut p = vec![
        json!({"name": "version", "in": "query", "required": false, "schema": {"type": "integer"},
               "description": "The config version the write is made against: refused with 409 unless it is the running one."}),
        json!({"name": "transaction_id", "in": "query", "required": false, "schema": {"type": "string"},
               "description": "Stage the write in this transaction (202) instead of applying it."}),
    ];
    if route {
        p.push(
            json!({"name": "index", "in": "query", "required": false, "schema": {"type": "integer"},
                      "description": "Where the new route goes (0: first); default: last."}),
        );
    }
    Json::Array(p)
}

fn path_param(name: &str) -> Json {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
}

fn responses(ok: &str, schema: &str) -> Json {
    let mut r = Map::new();
    let body = json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}});
    match ok {
        "204" => r.insert(ok.into(), json!({"description": "done"})),
        _ => r.insert(ok.into(), json!({"description": "the resource", "content": body})),
    };
    for (code, _) in ERRORS {
        r.insert(code.into(), json!({"$ref": format!("#/components/responses/E{code}")}));
    }
    Json::Object(r)
}

/// The answers other than success every operation may give.
const ERRORS: [(&str, &str); 5] = [
    ("202", "staged in the transaction"),
    ("400", "invalid: the field and the reason; nothing changed"),
    ("401", "credentials needed (global.admin_auth)"),
    ("404", "no such resource"),
    ("409", "the name exists, or the version is stale"),
];

/// Operations of a collection (`GET`, `POST`) and of its elements (`GET`,
/// `PUT`, `DELETE`), with the path parameters they take.
fn resource(paths: &mut Map<String, Json>, base: &str, params: &[&str], elem: &str, schema: &str, what: &str) {
    let ps: Vec<Json> = params.iter().map(|p| path_param(p)).collect();
    let route = schema == "Route";
    paths.insert(
        base.into(),
        json!({
            "parameters": ps,
            "get": {"summary": format!("list the {what}"), "responses": {"200": {"description": "the list",
                "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": format!("#/components/schemas/{schema}")}}}}}}},
            "post": {"summary": format!("add to the {what}"), "parameters": write_params(route),
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}},
                "responses": responses("201", schema)},
        }),
    );
    let mut ps: Vec<Json> = params.iter().map(|p| path_param(p)).collect();
    ps.push(path_param(elem));
    paths.insert(
        format!("{base}/{{{elem}}}"),
        json!({
            "parameters": ps,
            "get": {"summary": "read one", "responses": responses("200", schema)},
            "put": {"summary": "replace it", "parameters": write_params(false),
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}},
                "responses": responses("200", schema)},
            "delete": {"summary": "remove it", "parameters": write_params(false), "responses": responses("204", schema)},
        }),
    );
}

pub fn document() -> Json {
    let mut paths = Map::new();
    resource(&mut paths, "/services", &[], "service", "Service", "services");
    let s = "/services/{service}";
    resource(
        &mut paths,
        &format!("{s}/backends"),
        &["service"],
        "backend",
        "Backend",
        "service's backends",
    );
    resource(
        &mut paths,
        &format!("{s}/groups"),
        &["service"],
        "group",
        "Group",
        "backend groups",
    );
    resource(
        &mut paths,
        &format!("{s}/groups/{{group}}/backends"),
        &["service", "group"],
        "backend",
        "Backend",
        "group's backends",
    );
    resource(
        &mut paths,
        &format!("{s}/routes"),
        &["service"],
        "index",
        "Route",
        "routes, in order",
    );
    for key in SETTINGS {
        paths.insert(
            format!("{s}/{key}"),
            json!({
                "parameters": [path_param("service")],
                "get": {"summary": format!("the service's [service.{key}]"), "responses": responses("200", "Setting")},
                "put": {"summary": format!("set [service.{key}]"), "parameters": write_params(false),
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Setting"}}}},
                    "responses": responses("200", "Setting")},
                "delete": {"summary": format!("remove [service.{key}] (its defaults apply)"), "parameters": write_params(false),
                    "responses": responses("204", "Setting")},
            }),
        );
    }
    paths.insert(
        "/transactions".into(),
        json!({
            "get": {"summary": "open transactions", "responses": {"200": {"description": "the list"}}},
            "post": {"summary": "open a transaction at a version", "parameters": [write_params(false)[0].clone()],
                "responses": responses("201", "Transaction")},
        }),
    );
    paths.insert(
        "/transactions/{id}".into(),
        json!({
            "parameters": [path_param("id")],
            "get": {"summary": "a transaction and what it stages", "responses": responses("200", "Transaction")},
            "put": {"summary": "commit: every staged write at once, as one new version", "responses": responses("200", "Transaction")},
            "delete": {"summary": "drop it", "responses": responses("204", "Transaction")},
        }),
    );
    paths.insert(
        "/version".into(),
        json!({"get": {"summary": "the running config version", "responses": {"200": {"description": "{\"version\": N}"}}}}),
    );
    let open = |required: &[&str], desc: &str| json!({"type": "object", "required": required, "additionalProperties": true, "description": desc});
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "xlb runtime config API",
            "version": "1",
            "description": "Every resource is the config file's table for it, in JSON with the same keys (docs/config.md). \
                Writes are validated like `xlb check`, applied like a reload and written back to the file; \
                every answer carries the config version in the `Configuration-Version` header."
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"basic": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}},
            "responses": ERRORS.iter().map(|(code, why)| (format!("E{code}"), json!({"description": why,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}))).collect::<Map<String, Json>>(),
            "schemas": {
                "Service": open(&["name", "vip", "port", "mode"], "a [[service]] table: its keys, its settings as objects, `backend`, `group` and `route` as lists"),
                "Backend": open(&["name", "address"], "a [[service.backend]] table"),
                "Group": open(&["name"], "a [[service.group]] table, with its `backend` list"),
                "Route": open(&["backend_group"], "a [[service.route]] table: `path_beg`, `path_end`, `host`, `backend_group`"),
                "Setting": open(&[], "a service's health, cookie, appsession, http, tls or log table"),
                "Transaction": {"type": "object", "properties": {
                    "id": {"type": "string"}, "version": {"type": "integer"}, "status": {"type": "string"},
                    "edits": {"type": "array", "items": {"type": "object"}}}},
                "Error": {"type": "object", "properties": {"code": {"type": "integer"}, "message": {"type": "string"}}},
            },
        },
    })
}
