//! The module layout's rules, checked on the source: dependencies between
//! the parts of xlb point one way (see `src/lib.rs`), no module imports a
//! module that imports it, and the L7 proxy uses nothing of aya or the L4
//! tier (it runs without BPF).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// Top-level parts from the bottom up: a part may use only parts of a
/// lower rank (or its own).
const RANKS: [(&str, u8); 12] = [
    ("model", 0),
    ("logging", 0),
    ("auth", 0),
    ("tls", 0),
    ("admin_client", 1),
    ("config", 1),
    ("l4", 2),
    ("l7", 2),
    ("control", 3),
    ("ops", 4),
    ("app", 5),
    ("main", 6),
];

fn rank(part: &str) -> u8 {
    RANKS
        .iter()
        .find(|(p, _)| *p == part)
        .unwrap_or_else(|| panic!("top-level module {part:?} has no rank in the layering test"))
        .1
}

/// Every source file as its module path (`l7::http1::server`).
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
        for e in fs::read_dir(dir).expect("read src") {
            let path = e.expect("dir entry").path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            let mut p = prefix.to_vec();
            if path.is_dir() {
                p.push(name);
                walk(&path, &p, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                if name != "mod" && name != "lib" {
                    p.push(name);
                }
                out.insert(p.join("::"), path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &[], &mut out);
    out
}

/// Source without comments and string literals (so doc links and
/// messages do not count as uses).
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// The longest known module a `crate::`-rooted path names.
fn resolve(path: &[String], known: &BTreeMap<String, PathBuf>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| known.contains_key(m))
}

/// The modules `module` uses: `crate::a::b` and `super::x` paths, with
/// `use` groups expanded one level (`crate::{a, b::c}`).
fn uses(module: &str, text: &str, known: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let text = code(text);
    let here: Vec<String> = if module.is_empty() {
        Vec::new()
    } else {
        module.split("::").map(String::from).collect()
    };
    // `super` is the parent module (a mod.rs file is its directory's module).
    let base_super = here[..here.len().saturating_sub(1)].to_vec();
    let mut out = BTreeSet::new();
    let tokens: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < tokens.len() {
        let rest: String = tokens[i..tokens.len().min(i + 7)].iter().collect();
        let boundary = i == 0 || !(tokens[i - 1].is_alphanumeric() || tokens[i - 1] == '_' || tokens[i - 1] == ':');
        let root = if boundary && rest.starts_with("crate::") {
            i += 7;
            Vec::new()
        } else if boundary && rest.starts_with("super::") {
            i += 7;
            base_super.clone()
        } else {
            i += 1;
            continue;
        };
        for path in expand(&tokens, &mut i) {
            let mut full = root.clone();
            full.extend(path);
            if let Some(m) = resolve(&full, known) {
                if m != module && !m.is_empty() {
                    out.insert(m);
                }
            }
        }
    }
    out
}

/// Reads `a::b::{c, d::e}` at `i`: the paths it names (inner braces are
/// cut at their prefix: `{x::{y, z}}` names `x`).
fn expand(t: &[char], i: &mut usize) -> Vec<Vec<String>> {
    let mut prefix = Vec::new();
    loop {
        if t.get(*i) == Some(&'{') {
            *i += 1;
            return group(t, i, &prefix);
        }
        let start = *i;
        while *i < t.len() && (t[*i].is_alphanumeric() || t[*i] == '_') {
            *i += 1;
        }
        if *i == start {
            break;
        }
        prefix.push(t[start..*i].iter().collect());
        if t.get(*i) == Some(&':') && t.get(*i + 1) == Some(&':') {
            *i += 2;
        } else {
            break;
        }
    }
    vec![prefix]
}

/// The paths of a `{...}` group after `prefix`, up to its closing brace
/// (nested groups included).
fn group(t: &[char], i: &mut usize, prefix: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = prefix.to_vec();
    let (mut word, mut alias) = (String::new(), false);
    while *i < t.len() {
        let c = t[*i];
        *i += 1;
        match c {
            c if c.is_alphanumeric() || c == '_' => word.push(c),
            '{' => {
                out.extend(group(t, i, &cur));
                cur = Vec::new();
            }
            '}' | ',' => {
                if !word.is_empty() && !alias {
                    cur.push(std::mem::take(&mut word));
                }
                // `self` names the prefix itself.
                if cur.last().is_some_and(|w| w == "self") {
                    cur.pop();
                }
                if !cur.is_empty() {
                    out.push(std::mem::replace(&mut cur, prefix.to_vec()));
                } else {
                    cur = prefix.to_vec();
                }
                (word, alias) = (String::new(), false);
                if c == '}' {
                    break;
                }
            }
            _ => {
                // `::` ends a segment; `x as y` keeps x.
                if !word.is_empty() && !alias {
                    cur.push(std::mem::take(&mut word));
                    alias = c.is_whitespace();
                }
                word.clear();
            }
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let known = modules(&src);
    known
        .iter()
        .map(|(m, p)| {
            let text = fs::read_to_string(p).expect("read source");
            (m.clone(), uses(m, &text, &known))
        })
        .collect()
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

#[test]
fn parts_depend_only_on_lower_parts() {
    let mut bad = Vec::new();
    for (m, deps) in graph() {
        if m.is_empty() {
            continue;
        }
        for d in deps {
            let (a, b) = (top(&m), top(&d));
            if a != b && rank(b) >= rank(a) {
                bad.push(format!("{m} uses {d}"));
            }
        }
    }
    assert!(bad.is_empty(), "dependencies against the layering:\n{}", bad.join("\n"));
}

#[test]
fn no_module_imports_one_that_imports_it() {
    let g = graph();
    // Depth-first search for a cycle; the path is reported.
    fn visit(
        m: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            // A parent's `mod`/`pub use` of its children is not a use.
            if d.starts_with(&format!("{m}::")) || m.is_empty() {
                continue;
            }
            match state.get(d.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|x| x == d).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(d, g, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        if !state.contains_key(m) {
            if let Some(c) = visit(m, &g, &mut state, &mut Vec::new()) {
                panic!("import cycle: {}", c.join(" -> "));
            }
        }
    }
}

#[test]
fn l7_uses_no_aya_and_no_l4() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    for (m, p) in modules(&src).iter().filter(|(m, _)| top(m) == "l7") {
        let text = code(&fs::read_to_string(p).expect("read source"));
        if text.contains("aya::") || text.contains("crate::l4") {
            bad.push(m.clone());
        }
    }
    assert!(bad.is_empty(), "L7 modules that reach into BPF code: {bad:?}");
    let g = graph();
    for (m, deps) in g.iter().filter(|(m, _)| top(m) == "l7") {
        assert!(
            deps.iter().all(|d| top(d) != "l4"),
            "{m} depends on the L4 tier: {deps:?}"
        );
    }
}

/// The checker itself: it must see a `use` that breaks the rules.
#[test]
fn the_checker_sees_uses() {
    let known: BTreeMap<String, PathBuf> = ["model", "l4", "l4::bpf", "l7", "l7::service", "config"]
        .iter()
        .map(|m| (m.to_string(), PathBuf::from(format!("{m}.rs"))))
        .collect();
    let text = "use crate::{l4::{bpf::{load, Error}, x}, model::X as Y};\nuse super::service::Service;\n// crate::config in a comment\nlet s = \"crate::config\";";
    let got = uses("l7::exchange", text, &known);
    let want: BTreeSet<String> = ["l4", "l4::bpf", "model", "l7::service"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}

/// ... and on the real tree, the uses everyone knows are there.
#[test]
fn the_checker_sees_the_known_uses() {
    let g = graph();
    for (from, to) in [
        ("app", "control::daemon"),
        ("control::daemon", "l4::dataplane"),
        ("control::daemon", "model"),
        ("l7::exchange", "l7::service"),
        ("l7::peers", "admin_client"),
        ("ops::admin", "control::daemon"),
    ] {
        assert!(g[from].contains(to), "{from} should use {to}: {:?}", g[from]);
    }
}

/// The README's layout table names every source file of the crate, and
/// every file it names exists.
#[test]
fn readme_layout_matches_the_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = fs::read_to_string(root.join("README.md")).expect("README.md");
    let layout = readme
        .split("## Layout")
        .nth(1)
        .expect("README has a Layout section")
        .split("\n## ")
        .next()
        .unwrap_or("");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let named: BTreeSet<String> = layout
        .split('`')
        .skip(1)
        .step_by(2)
        .flat_map(|s| s.rsplit('/').next())
        .filter(|s| s.ends_with(".rs") && !s.contains('*'))
        .map(String::from)
        .collect();
    let files: BTreeSet<String> = modules(&src)
        .values()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .filter(|f| f != "mod.rs")
        .collect();
    let missing: Vec<_> = files.difference(&named).collect();
    assert!(missing.is_empty(), "README's layout does not name {missing:?}");
    let mut all = BTreeSet::new();
    for dir in ["lb-user", "lb-ebpf/src", "lb-common/src", "tests", "xtask/src"] {
        collect(&root.join(dir), &mut all);
    }
    let stale: Vec<_> = named.difference(&all).collect();
    assert!(
        stale.is_empty(),
        "README's layout names files that do not exist: {stale:?}"
    );
}

fn collect(dir: &Path, out: &mut BTreeSet<String>) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else {
            out.insert(p.file_name().unwrap().to_string_lossy().to_string());
        }
    }
}
