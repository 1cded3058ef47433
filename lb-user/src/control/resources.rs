//! The runtime config API's resources (`/api/v1/services/...`) as edits of
//! the config file's TOML document: a resource is the table the file has
//! for it, in JSON with the same keys. Editing the document (not a model
//! of it) keeps the operator's comments and layout; the edited text is
//! then validated and applied like a reload.
//!
//! Paths below `services`: `{name}`, `{name}/backends[/{backend}]`,
//! `{name}/groups[/{group}[/backends[/{backend}]]]`,
//! `{name}/routes[/{index}]`, and `{name}/{setting}` for the service's
//! `health`, `cookie`, `appsession`, `http`, `tls` and `log` tables.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

/// The service tables whose single table is a resource of its own.
pub const SETTINGS: [&str; 6] = ["health", "cookie", "appsession", "http", "tls", "log"];

/// A write to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verb {
    /// Add to a collection (409 if the name exists).
    Post,
    /// Replace (404 if missing; settings are created).
    Put,
    Delete,
}

/// One write: what the API was asked, kept as asked so a transaction can
/// replay it at commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edit {
    pub verb: Verb,
    /// Segments below `/api/v1/services`.
    pub path: Vec<String>,
    /// Routes: where a POST inserts (default: at the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Json>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} exists already")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0} cannot be {1:?}")]
    Method(String, Verb),
}

/// Where a path leads in the document.
enum Place<'a> {
    /// A collection of named (or, for routes, numbered) tables.
    List {
        parent: &'a mut Table,
        key: &'static str,
        what: String,
    },
    /// One element of a collection.
    Elem {
        parent: &'a mut Table,
        key: &'static str,
        at: usize,
        what: String,
    },
    /// A table of its own (a setting).
    Setting {
        parent: &'a mut Table,
        key: &'static str,
        what: String,
    },
}

fn list<'a>(t: &'a Table, key: &str) -> Option<&'a ArrayOfTables> {
    t.get(key).and_then(Item::as_array_of_tables)
}

fn named(t: &Table) -> Option<&str> {
    t.get("name").and_then(Item::as_str)
}

/// The index of the element named `name` of `parent[key]`.
fn find(parent: &Table, key: &str, name: &str) -> Option<usize> {
    list(parent, key)?.iter().position(|t| named(t) == Some(name))
}

fn child<'a>(parent: &'a mut Table, key: &str, at: usize) -> &'a mut Table {
    parent
        .get_mut(key)
        .and_then(Item::as_array_of_tables_mut)
        .and_then(|a| a.get_mut(at))
        .expect("found above")
}

/// Follows `path` (below `services`) in `doc`.
fn place<'a>(doc: &'a mut DocumentMut, path: &[String]) -> Result<Place<'a>, EditError> {
    let root = doc.as_table_mut();
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    let missing = |what: String| EditError::NotFound(what);
    let Some((svc, rest)) = p.split_first() else {
        return Ok(Place::List {
            parent: root,
            key: "service",
            what: "services".into(),
        });
    };
    let at = find(root, "service", svc).ok_or_else(|| missing(format!("service {svc:?}")))?;
    if rest.is_empty() {
        return Ok(Place::Elem {
            parent: root,
            key: "service",
            at,
            what: format!("service {svc:?}"),
        });
    }
    let s = child(root, "service", at);
    let place = match rest {
        ["backends"] => Place::List {
            parent: s,
            key: "backend",
            what: format!("backends of service {svc:?}"),
        },
        ["backends", b] => {
            let at = find(s, "backend", b).ok_or_else(|| missing(format!("backend {b:?} of service {svc:?}")))?;
            Place::Elem {
                parent: s,
                key: "backend",
                at,
                what: format!("backend {b:?} of service {svc:?}"),
            }
        }
        ["groups"] => Place::List {
            parent: s,
            key: "group",
            what: format!("groups of service {svc:?}"),
        },
        ["groups", g, more @ ..] => {
            let gat = find(s, "group", g).ok_or_else(|| missing(format!("group {g:?} of service {svc:?}")))?;
            match more {
                [] => Place::Elem {
                    parent: s,
                    key: "group",
                    at: gat,
                    what: format!("group {g:?} of service {svc:?}"),
                },
                ["backends"] => Place::List {
                    parent: child(s, "group", gat),
                    key: "backend",
                    what: format!("backends of group {g:?}"),
                },
                ["backends", b] => {
                    let gt = child(s, "group", gat);
                    let at = find(gt, "backend", b).ok_or_else(|| missing(format!("backend {b:?} of group {g:?}")))?;
                    Place::Elem {
                        parent: gt,
                        key: "backend",
                        at,
                        what: format!("backend {b:?} of group {g:?}"),
                    }
                }
                _ => return Err(missing(format!("/{}", path.join("/")))),
            }
        }
        ["routes"] => Place::List {
            parent: s,
            key: "route",
            what: format!("routes of service {svc:?}"),
        },
        ["routes", i] => {
            let n = list(s, "route").map_or(0, ArrayOfTables::len);
            let at = i
                .parse::<usize>()
                .ok()
                .filter(|i| *i < n)
                .ok_or_else(|| missing(format!("route {i} of service {svc:?} ({n} routes)")))?;
            Place::Elem {
                parent: s,
                key: "route",
                at,
                what: format!("route {at} of service {svc:?}"),
            }
        }
        [setting] => {
            let key = SETTINGS
                .iter()
                .find(|k| *k == setting)
                .ok_or_else(|| missing(format!("/{}", path.join("/"))))?;
            Place::Setting {
                parent: s,
                key,
                what: format!("[service.{key}] of service {svc:?}"),
            }
        }
        _ => return Err(missing(format!("/{}", path.join("/")))),
    };
    Ok(place)
}

/// The JSON of the resource at `path`.
pub fn get(doc: &mut DocumentMut, path: &[String]) -> Result<Json, EditError> {
    Ok(match place(doc, path)? {
        Place::List { parent, key, .. } => match parent.get(key) {
            Some(i) => item_json(i),
            None => Json::Array(Vec::new()),
        },
        Place::Elem { parent, key, at, .. } => table_json(child(parent, key, at)),
        Place::Setting { parent, key, what } => match parent.get(key) {
            Some(i) => item_json(i),
            None => return Err(EditError::NotFound(what)),
        },
    })
}

/// Applies one write to the document.
pub fn apply(doc: &mut DocumentMut, e: &Edit) -> Result<(), EditError> {
    let body = || -> Result<Table, EditError> {
        match &e.body {
            Some(Json::Object(m)) => to_table(m),
            _ => Err(EditError::Invalid("the body must be a JSON object".into())),
        }
    };
    match (place(doc, &e.path)?, e.verb) {
        (Place::List { parent, key, what }, Verb::Post) => {
            let t = body()?;
            if key == "route" {
                let list = list_mut(parent, key);
                let at = e.index.unwrap_or(list.len());
                if at > list.len() {
                    return Err(EditError::Invalid(format!("index {at}: {what} has {}", list.len())));
                }
                insert_at(list, at, t);
                return Ok(());
            }
            let name = named(&t)
                .ok_or_else(|| EditError::Invalid(format!("a new element of {what} needs a \"name\"")))?
                .to_string();
            if find(parent, key, &name).is_some() {
                return Err(EditError::Exists(format!("{name:?} in {what}")));
            }
            list_mut(parent, key).push(t);
            Ok(())
        }
        (Place::Elem { parent, key, at, what }, Verb::Put) => {
            let mut t = body()?;
            if key != "route" {
                let name = named(child(parent, key, at)).unwrap_or_default().to_string();
                match named(&t) {
                    None => {
                        t.insert("name", Item::Value(Value::from(name)));
                    }
                    Some(n) if n != name => {
                        return Err(EditError::Invalid(format!("{what}: the name cannot change (to {n:?})")))
                    }
                    Some(_) => {}
                }
                t.sort_values_by(|a, _, b, _| (b.get() != "name").cmp(&(a.get() != "name")));
            }
            // The table keeps its place (and the comments before it).
            let old = child(parent, key, at);
            t.decor_mut().clone_from(old.decor());
            *old = t;
            Ok(())
        }
        (Place::Elem { parent, key, at, .. }, Verb::Delete) => {
            let list = list_mut(parent, key);
            list.remove(at);
            if list.is_empty() {
                parent.remove(key);
            }
            Ok(())
        }
        (Place::Setting { parent, key, .. }, Verb::Put) => {
            let mut t = body()?;
            if let Some(old) = parent.get(key).and_then(Item::as_table) {
                t.decor_mut().clone_from(old.decor());
            }
            parent.insert(key, Item::Table(t));
            Ok(())
        }
        (Place::Setting { parent, key, what }, Verb::Delete) => {
            parent.remove(key).map(drop).ok_or(EditError::NotFound(what))
        }
        (Place::List { what, .. } | Place::Elem { what, .. } | Place::Setting { what, .. }, verb) => {
            Err(EditError::Method(what, verb))
        }
    }
}

fn list_mut<'a>(parent: &'a mut Table, key: &str) -> &'a mut ArrayOfTables {
    if !parent.get(key).is_some_and(Item::is_array_of_tables) {
        parent.insert(key, Item::ArrayOfTables(ArrayOfTables::new()));
    }
    parent
        .get_mut(key)
        .and_then(Item::as_array_of_tables_mut)
        .expect("inserted above")
}

/// Inserts `t` at `at` (ArrayOfTables has no insert: rebuilt in order).
fn insert_at(list: &mut ArrayOfTables, at: usize, t: Table) {
    let mut all: Vec<Table> = list.iter().cloned().collect();
    all.insert(at, t);
    list.clear();
    for t in all {
        list.push(t);
    }
}

/// A JSON object as a TOML table: objects become tables, lists of objects
/// arrays of tables (`[[service.backend]]`), the rest values.
fn to_table(m: &Map<String, Json>) -> Result<Table, EditError> {
    let mut t = Table::new();
    // Values first (the name first of all): a table's keys must come
    // before its sub-tables.
    let mut values: Vec<(&String, &Json)> = m.iter().filter(|(_, v)| !is_tables(v)).collect();
    values.sort_by_key(|(k, _)| *k != "name");
    for (k, v) in values {
        t.insert(k, Item::Value(to_value(k, v)?));
    }
    for (k, v) in m.iter().filter(|(_, v)| is_tables(v)) {
        let item = match v {
            Json::Object(o) => Item::Table(to_table(o)?),
            Json::Array(a) => {
                let mut list = ArrayOfTables::new();
                for o in a.iter().filter_map(Json::as_object) {
                    list.push(to_table(o)?);
                }
                Item::ArrayOfTables(list)
            }
            _ => unreachable!("is_tables"),
        };
        t.insert(k, item);
    }
    Ok(t)
}

fn is_tables(v: &Json) -> bool {
    match v {
        Json::Object(_) => true,
        Json::Array(a) => !a.is_empty() && a.iter().all(Json::is_object),
        _ => false,
    }
}

fn to_value(key: &str, v: &Json) -> Result<Value, EditError> {
    Ok(match v {
        Json::Null => return Err(EditError::Invalid(format!("{key}: null is not a config value"))),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::from(i),
            None => Value::from(n.as_f64().unwrap_or_default()),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(a) => {
            let mut arr = Array::new();
            for x in a {
                arr.push(to_value(key, x)?);
            }
            Value::Array(arr)
        }
        Json::Object(o) => {
            let mut t = InlineTable::new();
            for (k, x) in o {
                t.insert(k, to_value(k, x)?);
            }
            Value::InlineTable(t)
        }
    })
}

fn item_json(i: &Item) -> Json {
    match i {
        Item::None => Json::Null,
        Item::Value(v) => value_json(v),
        Item::Table(t) => table_json(t),
        Item::ArrayOfTables(a) => Json::Array(a.iter().map(table_json).collect()),
    }
}

fn table_json(t: &Table) -> Json {
    Json::Object(t.iter().map(|(k, i)| (k.to_string(), item_json(i))).collect())
}

fn value_json(v: &Value) -> Json {
    match v {
        Value::String(s) => Json::String(s.value().clone()),
        Value::Integer(i) => Json::from(*i.value()),
        Value::Float(f) => Json::from(*f.value()),
        Value::Boolean(b) => Json::Bool(*b.value()),
        Value::Datetime(d) => Json::String(d.value().to_string()),
        Value::Array(a) => Json::Array(a.iter().map(value_json).collect()),
        Value::InlineTable(t) => Json::Object(t.iter().map(|(k, v)| (k.to_string(), value_json(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# the shop\n[global]\nadmin = \"127.0.0.1:9900\"\n\n# front\n[[service]]\nname = \"web\" # main site\nvip = \"198.18.0.10\"\nport = 80\nmode = \"http\"\n  [service.health]\n  kind = \"none\"\n  [[service.backend]]\n  name = \"a\"\n  address = \"198.18.1.1:80\"\n";

    fn edit(verb: Verb, path: &str, body: Option<Json>) -> Edit {
        Edit {
            verb,
            path: path.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect(),
            index: None,
            body,
        }
    }

    #[test]
    fn backends_are_added_replaced_and_removed_keeping_comments() {
        let mut doc: DocumentMut = FILE.parse().unwrap();
        let b = serde_json::json!({"name": "b", "address": "198.18.1.2:80", "weight": 2});
        apply(&mut doc, &edit(Verb::Post, "web/backends", Some(b.clone()))).unwrap();
        assert_eq!(
            apply(&mut doc, &edit(Verb::Post, "web/backends", Some(b))),
            Err(EditError::Exists("\"b\" in backends of service \"web\"".into()))
        );
        let got = get(&mut doc, &["web".into(), "backends".into(), "b".into()]).unwrap();
        assert_eq!(got["weight"], 2);
        let put = serde_json::json!({"address": "198.18.1.3:80"});
        apply(&mut doc, &edit(Verb::Put, "web/backends/a", Some(put))).unwrap();
        apply(&mut doc, &edit(Verb::Delete, "web/backends/b", None)).unwrap();
        let text = doc.to_string();
        assert!(
            text.contains("# the shop") && text.contains("# main site") && text.contains("# front"),
            "{text}"
        );
        let cfg = crate::config::parse(std::path::Path::new("x.toml"), &text).unwrap();
        let be = &cfg.services[0].backends;
        assert_eq!(be.len(), 1);
        assert_eq!(
            (be[0].name.as_str(), be[0].address.to_string()),
            ("a", "198.18.1.3:80".into())
        );
    }

    #[test]
    fn a_service_with_its_tables_and_routes_at_an_index() {
        let mut doc: DocumentMut = FILE.parse().unwrap();
        let svc = serde_json::json!({
            "name": "api", "vip": "198.18.0.11", "port": 80, "mode": "http",
            "cookie": {"name": "SRV", "mode": "insert"},
            "group": [{"name": "g", "backend": [{"name": "g1", "address": "198.18.1.9:80", "cookie": "g1"}]}],
            "backend": [{"name": "x", "address": "198.18.1.5:80"}]
        });
        apply(&mut doc, &edit(Verb::Post, "", Some(svc))).unwrap();
        let r1 = serde_json::json!({"path_beg": ["/a"], "backend_group": "g"});
        let r0 = serde_json::json!({"path_beg": ["/b"], "backend_group": "g"});
        apply(&mut doc, &edit(Verb::Post, "api/routes", Some(r1))).unwrap();
        let mut first = edit(Verb::Post, "api/routes", Some(r0));
        first.index = Some(0);
        apply(&mut doc, &first).unwrap();
        apply(
            &mut doc,
            &edit(Verb::Put, "api/log", Some(serde_json::json!({"format": "json"}))),
        )
        .unwrap();
        let cfg = crate::config::parse(std::path::Path::new("x.toml"), &doc.to_string())
            .unwrap_or_else(|e| panic!("{e:?}\n{doc}"));
        let api = &cfg.services[1];
        assert_eq!(api.routes.len(), 2);
        assert_eq!(api.routes[0].path_beg, ["/b"]);
        assert_eq!(api.log.format, crate::logging::LineFormat::Json);
        assert_eq!(api.backends.len(), 2, "its own and the group's");
        assert!(matches!(
            apply(&mut doc, &edit(Verb::Delete, "api/routes/2", None)),
            Err(EditError::NotFound(_))
        ));
        apply(&mut doc, &edit(Verb::Delete, "api", None)).unwrap();
        assert!(!doc.to_string().contains("api"));
    }
}
