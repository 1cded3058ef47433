//! `docs/api.md` carries the OpenAPI document the daemon serves at
//! `/api/v1/openapi.json`, as it serves it. `XLB_WRITE_API_DOC=1` rewrites
//! the block after a change of the API.

use std::path::Path;

const FENCE: &str = "```json\n";

#[test]
fn the_api_doc_holds_the_served_openapi_document() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let served = serde_json::to_string_pretty(&lb_user::ops::openapi::document()).unwrap();
    let at = doc
        .rfind(FENCE)
        .expect("docs/api.md ends with the document in a json block")
        + FENCE.len();
    let end = at + doc[at..].find("\n```").expect("the block is closed");
    if std::env::var_os("XLB_WRITE_API_DOC").is_some() {
        std::fs::write(&path, format!("{}{served}{}", &doc[..at], &doc[end..])).unwrap();
        return;
    }
    assert!(
        doc[at..end] == served,
        "docs/api.md's OpenAPI document differs from the served one: XLB_WRITE_API_DOC=1 cargo test -p lb-user --test api_docs"
    );
}
