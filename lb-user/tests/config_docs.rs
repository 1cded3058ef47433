//! `docs/config.md` is the user's config reference: every key the parser
//! accepts is documented there, nothing documented is unknown to the
//! parser, and every example in it is a valid config.

use std::{collections::BTreeSet, path::Path};

use lb_user::config;

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Keys the reference documents: headings name tables (`### [service.http]`)
/// and the rows of a table's key table name its keys (`| \`retries\` |`).
fn documented(doc: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut table: Option<String> = None;
    for line in doc.lines() {
        if line.starts_with('#') {
            table = line
                .split('`')
                .nth(1)
                .map(|t| t.trim_matches(|c| c == '[' || c == ']').to_string());
            if let Some(t) = &table {
                out.insert(t.clone());
            }
        } else if let (Some(t), Some(row)) = (&table, line.strip_prefix("| `")) {
            let key = row.split('`').next().unwrap_or("");
            out.insert(format!("{t}.{key}"));
        }
    }
    out
}

#[test]
fn every_accepted_key_is_documented_and_nothing_else() {
    let accepted: BTreeSet<String> = config::accepted_keys().into_iter().collect();
    let documented = documented(&doc());
    let missing: Vec<_> = accepted.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&accepted).collect();
    assert!(
        missing.is_empty(),
        "keys the parser accepts but docs/config.md does not document: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "keys docs/config.md documents but the parser refuses: {unknown:?}"
    );
}

#[test]
fn every_example_is_a_valid_config() {
    let doc = doc();
    let blocks: Vec<&str> = doc
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap_or(""))
        .collect();
    assert!(blocks.len() >= 3, "docs/config.md should carry examples");
    for (i, text) in blocks.iter().enumerate() {
        if let Err(errors) = config::parse(Path::new("docs/config.md"), text) {
            let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!("example {} in docs/config.md is refused:\n{}", i + 1, errors.join("\n"));
        }
    }
}

/// The reader itself: a key missing from the doc is seen.
#[test]
fn the_reader_finds_keys_and_tables() {
    let doc = "## `[global]`\n| key | d |\n|---|---|\n| `admin` | x |\n### `[[service.backend]]`\n| `weight` | 1 |\n";
    let got = documented(doc);
    let want: BTreeSet<String> = ["global", "global.admin", "service.backend", "service.backend.weight"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}
