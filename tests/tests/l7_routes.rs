//! Routing rules, black-box: path_beg, path_end and host regex send
//! requests to backend groups; a group without a usable server falls back
//! to the service's own backends (HAProxy's `nbsrv(static) lt 1`).

use std::collections::HashSet;

use lab::l7::{Be, Spec, L7};

const SERVICE: &str = r#"[service.cookie]
name = "SERVERID"
indirect = true
[[service.route]]
path_beg = ["/static", "/images"]
backend_group = "static"
[[service.route]]
path_end = ".css"
backend_group = "static"
[[service.route]]
host = "^api\\."
backend_group = "api"
[[service.route]]
path_beg = "/v2"
host = "^www\\."
backend_group = "api"
"#;

fn lab() -> L7 {
    L7::run(&Spec {
        service: SERVICE,
        backends: &[Be("a1", "cookie = \"a1\""), Be("a2", "cookie = \"a2\"")],
        groups: &[("static", &[Be("st1", ""), Be("st2", "")]), ("api", &[Be("api1", "")])],
        ..Spec::default()
    })
}

fn backends(l: &L7, path: &str, headers: &[&str]) -> HashSet<String> {
    (0..4).map(|_| l.get(path, headers).backend().to_string()).collect()
}

fn set(names: &[&str]) -> HashSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn rules_pick_groups_first_match_wins() {
    let l = lab();
    assert_eq!(backends(&l, "/static/logo.png", &[]), set(&["st1", "st2"]));
    assert_eq!(backends(&l, "/images/a.jpg", &[]), set(&["st1", "st2"]));
    assert_eq!(
        backends(&l, "/theme/site.css?v=3", &[]),
        set(&["st1", "st2"]),
        "path_end ignores the query"
    );
    assert_eq!(
        backends(&l, "/app", &[]),
        set(&["a1", "a2"]),
        "no rule: the service's own"
    );
    assert_eq!(backends(&l, "/app", &["Host: api.example.com:8080"]), set(&["api1"]));
    assert_eq!(
        backends(&l, "/static/x", &["Host: api.example.com"]),
        set(&["st1", "st2"]),
        "first match"
    );
    assert_eq!(
        backends(&l, "/v2/users", &["Host: www.example.com"]),
        set(&["api1"]),
        "both conditions"
    );
    assert_eq!(
        backends(&l, "/v2/users", &[]),
        set(&["a1", "a2"]),
        "one condition of two is not enough"
    );
    let status: serde_json::Value = serde_json::from_str(&l.xlb(&["status", "--json"])).unwrap();
    assert_eq!(status["services"][0]["http"]["routed"], 4 * 6);
    assert_eq!(status["services"][0]["backends"][2]["group"], "static");
}

#[test]
fn a_group_without_cookie_values_leaves_persistence_alone() {
    let l = lab();
    let r = l.get("/static/x", &["Cookie: SERVERID=a1; t=1"]);
    assert!(r.backend().starts_with("st"));
    assert!(r.all("set-cookie").is_empty(), "no cookie for a static server");
    assert_eq!(
        r.seen("cookie"),
        vec!["SERVERID=a1; t=1"],
        "and the client's cookie is untouched"
    );
    let r = l.get("/app", &["Cookie: SERVERID=a1; t=1"]);
    assert_eq!(r.backend(), "a1", "the service's own backends keep cookie persistence");
    assert_eq!(r.seen("cookie"), vec!["t=1"]);
}

#[test]
fn a_group_with_no_server_up_falls_back_to_the_services_backends() {
    let l = lab();
    l.set_state("st1", "maint");
    assert_eq!(backends(&l, "/static/x", &[]), set(&["st2"]));
    l.set_state("st2", "maint");
    let r = l.get("/static/x", &[]);
    assert!(["a1", "a2"].contains(&r.backend()), "fallback: {}", r.backend());
    assert_eq!(
        r.set_cookie("SERVERID").as_deref(),
        Some(r.backend()),
        "served by the default backends, with their persistence"
    );
    l.set_state("st2", "ready");
    assert_eq!(backends(&l, "/static/x", &[]), set(&["st2"]), "back once a server is");
}
