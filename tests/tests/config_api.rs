//! The runtime config API (`/api/v1`), black-box with curl and basic auth
//! as operators script HAProxy's Data Plane API: a transaction that adds a
//! service, its backend group, their servers and a routing rule, ending in
//! traffic through them; versions (two writers, one 409); a bad change
//! refused with nothing changed; a restart on the written file; 1,000
//! backends in one transaction; the CLI over it; a file edited by hand and
//! not reloaded refused (409); runtime weights kept across API writes.

use std::{net::SocketAddr, time::Instant};

use lab::{
    http::get,
    l7::{Be, Spec, L7},
    servers::{Kind, Server},
    XlbProcess,
};
use serde_json::{json, Value};

const AUTH: &str = "ops:s3cret";

/// A config with comments, as an operator keeps it.
const GLOBAL: &str = "admin_auth = \"ops:s3cret\"\n# the operator's note on the global section\n";

/// `curl` to the admin API: (status, JSON body or Null, config version).
fn curl(l: &L7, method: &str, path: &str, body: Option<&Value>) -> (u16, Value, u64) {
    curl_as(l, Some(AUTH), method, path, body)
}

fn curl_as(l: &L7, auth: Option<&str>, method: &str, path: &str, body: Option<&Value>) -> (u16, Value, u64) {
    let mut c = l.ns.cmd("curl");
    c.args(["-s", "-D", "/dev/stderr", "-X", method, "-w", "\n%{http_code}"]);
    if let Some(a) = auth {
        c.args(["-u", a]);
    }
    if let Some(b) = body {
        c.args(["-H", "content-type: application/json", "--data-binary", &b.to_string()]);
    }
    c.arg(format!("http://127.0.0.1:9900/api/v1{path}"));
    let out = c.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let headers = String::from_utf8_lossy(&out.stderr).to_lowercase();
    let version = headers
        .lines()
        .find_map(|h| h.strip_prefix("configuration-version:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    (
        code.trim().parse().unwrap_or_else(|_| panic!("curl: {text}")),
        serde_json::from_str(body).unwrap_or(Value::Null),
        version,
    )
}

fn version(l: &L7) -> u64 {
    curl(l, "GET", "/version", None).1["version"].as_u64().unwrap()
}

fn lab() -> L7 {
    L7::run(&Spec {
        global: GLOBAL,
        service: "# the site's own servers\n",
        backends: &[Be("s1", "")],
        ..Spec::default()
    })
}

#[test]
fn a_data_plane_api_walk_through_ends_in_traffic_through_the_new_service() {
    lab::require_root!();
    let l = lab();
    let (code, _, _) = curl_as(&l, None, "GET", "/services", None);
    assert_eq!(code, 401, "writes and reads need the admin credentials");
    let _new = [
        Server::start(&l.ns, "127.0.0.1:9201".parse().unwrap(), "b1", Kind::Http).unwrap(),
        Server::start(&l.ns, "127.0.0.1:9202".parse().unwrap(), "a1", Kind::Http).unwrap(),
        Server::start(&l.ns, "127.0.0.1:9203".parse().unwrap(), "a2", Kind::Http).unwrap(),
    ];
    let v = version(&l);
    let (code, t, _) = curl(&l, "POST", &format!("/transactions?version={v}"), None);
    assert_eq!(code, 201, "{t}");
    let id = t["id"].as_str().unwrap().to_string();
    let staged = |path: &str, body: Value| {
        let (code, out, _) = curl(&l, "POST", &format!("{path}?transaction_id={id}"), Some(&body));
        assert_eq!(code, 202, "{path}: {out}");
    };
    staged(
        "/services",
        json!({"name": "shop", "vip": "127.0.0.1", "port": 8081, "mode": "http", "health": {"kind": "none"}}),
    );
    staged(
        "/services/shop/groups",
        json!({"name": "api", "backend": [{"name": "a1", "address": "127.0.0.1:9202"}]}),
    );
    staged(
        "/services/shop/groups/api/backends",
        json!({"name": "a2", "address": "127.0.0.1:9203"}),
    );
    staged(
        "/services/shop/backends",
        json!({"name": "b1", "address": "127.0.0.1:9201"}),
    );
    staged(
        "/services/shop/routes",
        json!({"path_beg": ["/api/"], "backend_group": "api"}),
    );
    // Nothing runs before the commit.
    assert_eq!(curl(&l, "GET", "/services/shop", None).0, 404);
    let (code, done, header) = curl(&l, "PUT", &format!("/transactions/{id}"), None);
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["version"].as_u64(), Some(v + 1), "one new version for the whole");
    assert_eq!(header, v + 1, "the Configuration-Version header");

    let vip: SocketAddr = "127.0.0.1:8081".parse().unwrap();
    assert_eq!(get(&l.ns, vip, "/", &[]).unwrap().backend(), "b1");
    let mut group = std::collections::BTreeSet::new();
    for _ in 0..4 {
        group.insert(get(&l.ns, vip, "/api/x", &[]).unwrap().backend().to_string());
    }
    assert_eq!(
        group,
        ["a1", "a2"].map(String::from).into(),
        "the route to the new group"
    );
    assert_eq!(l.get("/", &[]).backend(), "s1", "the other service undisturbed");

    let (code, svc, _) = curl(&l, "GET", "/services/shop", None);
    assert_eq!(code, 200);
    assert_eq!(svc["backend"][0]["name"], "b1");
    assert_eq!(svc["route"][0]["backend_group"], "api");
    let (_, routes, _) = curl(&l, "GET", "/services/shop/routes", None);
    assert_eq!(routes.as_array().map(Vec::len), Some(1));

    // A route first in line (index 0), then removed again.
    let (code, r, _) = curl(
        &l,
        "POST",
        "/services/shop/routes",
        Some(&json!({"index": 0, "path_beg": ["/only/"], "backend_group": "api"})),
    );
    assert_eq!(code, 201, "{r}");
    let (_, routes, _) = curl(&l, "GET", "/services/shop/routes", None);
    assert_eq!(routes[0]["path_beg"][0], "/only/");
    assert_eq!(curl(&l, "DELETE", "/services/shop/routes/0", None).0, 204);
    // A setting of its own: [service.log].
    let (code, _, _) = curl(&l, "PUT", "/services/shop/log", Some(&json!({"format": "json"})));
    assert_eq!(code, 200);
    assert_eq!(curl(&l, "GET", "/services/shop/log", None).1["format"], "json");

    // The file says it all, the operator's comments kept.
    let file = std::fs::read_to_string(&l.cfg_path).unwrap();
    assert!(file.contains("# the operator's note on the global section"), "{file}");
    assert!(file.contains("# the site's own servers"), "{file}");
    assert!(file.contains("name = \"shop\""), "{file}");
    let bak = std::fs::read_to_string(
        l.cfg_path
            .with_file_name(format!("{}.bak", l.cfg_path.file_name().unwrap().to_string_lossy())),
    )
    .unwrap();
    assert!(bak.contains("shop"), "the file before the last write is kept");

    // The service goes as it came: its listener closes.
    assert_eq!(curl(&l, "DELETE", "/services/shop", None).0, 204);
    assert!(
        get(&l.ns, vip, "/", &[]).is_err(),
        "nothing listens on the removed service"
    );
    assert_eq!(curl(&l, "GET", "/openapi.json", None).1["openapi"], "3.0.3");
}

#[test]
fn two_writers_at_one_version_exactly_one_wins() {
    lab::require_root!();
    let l = lab();
    let v = version(&l);
    let codes: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = ["w1", "w2"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let l = &l;
                s.spawn(move || {
                    let body = json!({"name": n, "address": format!("127.0.0.1:{}", 9300 + i)});
                    curl(l, "POST", &format!("/services/site/backends?version={v}"), Some(&body)).0
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut sorted = codes.clone();
    sorted.sort();
    assert_eq!(sorted, [201, 409], "{codes:?}");
    assert_eq!(version(&l), v + 1);
    // A transaction opened at the old version is stale too.
    let (code, _, _) = curl(&l, "POST", &format!("/transactions?version={v}"), None);
    assert_eq!(code, 409);
}

#[test]
fn a_bad_change_is_refused_and_changes_nothing() {
    lab::require_root!();
    let l = lab();
    let before = std::fs::read(&l.cfg_path).unwrap();
    let v = version(&l);
    for (body, field) in [
        (json!({"name": "x", "address": "not-an-address"}), "not-an-address"),
        (json!({"name": "x", "address": "127.0.0.1:9400", "wieght": 3}), "wieght"),
        (
            json!({"name": "x", "address": "127.0.0.1:9400", "weight": 100000}),
            "weight",
        ),
        (
            json!({"name": "x", "address": "127.0.0.1:9400", "weight": "heavy"}),
            "weight",
        ),
    ] {
        let (code, out, _) = curl(&l, "POST", "/services/site/backends", Some(&body));
        assert_eq!(code, 400, "{body}: {out}");
        assert!(out["message"].as_str().unwrap().contains(field), "{field}: {out}");
    }
    let (code, _, _) = curl(
        &l,
        "POST",
        "/services/site/backends",
        Some(&json!({"name": "s1", "address": "127.0.0.1:9400"})),
    );
    assert_eq!(code, 409, "a name that exists");
    assert_eq!(curl(&l, "DELETE", "/services/site/backends/nosuch", None).0, 404);
    assert_eq!(curl(&l, "GET", "/services/nosuch", None).0, 404);
    let (code, _, _) = curl(
        &l,
        "PUT",
        "/services/site/backends/s1",
        Some(&json!({"name": "renamed", "address": "127.0.0.1:9001"})),
    );
    assert_eq!(code, 400, "a name does not change by PUT");
    assert_eq!(std::fs::read(&l.cfg_path).unwrap(), before, "the file untouched");
    assert_eq!(version(&l), v, "no new version");
    assert_eq!(l.get("/", &[]).backend(), "s1");
    // A bad write in a transaction is refused when staged.
    let (_, t, _) = curl(&l, "POST", "/transactions", None);
    let id = t["id"].as_str().unwrap();
    let (code, _, _) = curl(
        &l,
        "POST",
        &format!("/services/site/backends?transaction_id={id}"),
        Some(&json!({"name": "y", "address": "bad"})),
    );
    assert_eq!(code, 400);
    assert_eq!(curl(&l, "DELETE", &format!("/transactions/{id}"), None).0, 204);
}

#[test]
fn a_restart_runs_the_config_the_api_wrote() {
    lab::require_root!();
    let mut l = lab();
    let _s2 = Server::start(&l.ns, "127.0.0.1:9250".parse().unwrap(), "s2", Kind::Http).unwrap();
    let (code, _, _) = curl(
        &l,
        "PUT",
        "/services/site/backends/s1",
        Some(&json!({"address": "127.0.0.1:9250"})),
    );
    assert_eq!(code, 200);
    let auth = [("XLB_ADMIN_AUTH", AUTH)];
    // The CLI over the same API.
    let cli = |args: &[&str]| {
        let out = l.ns.cmd(lab::xlb::xlb_binary()).args(args).envs(auth).output().unwrap();
        assert!(
            out.status.success(),
            "xlb {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli(&["backend", "add", "site", "s3", "127.0.0.1:9251", "--weight", "2"]);
    cli(&["backend", "set", "site", "s3", "--weight", "3"]);
    assert!(cli(&["service", "show", "site"]).contains("\"weight\": 3"));
    let v = version(&l);
    let out =
        l.ns.cmd(lab::xlb::xlb_binary())
            .args([
                "backend",
                "remove",
                "site",
                "s3",
                "--config-version",
                &(v - 1).to_string(),
            ])
            .envs(auth)
            .output()
            .unwrap();
    assert!(!out.status.success(), "a stale --config-version is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("409"));

    cli(&["backend", "remove", "site", "s3", "--config-version", &v.to_string()]);
    // A service with a group and a route, staged in a transaction, then
    // committed and taken apart again.
    let (_, t, _) = curl(&l, "POST", "/transactions", None);
    let id = t["id"].as_str().unwrap().to_string();
    cli(&[
        "service",
        "add",
        "extra",
        "--vip",
        "127.0.0.1",
        "--port",
        "8082",
        "--mode",
        "http",
        "--transaction",
        &id,
    ]);
    cli(&["backend", "add", "extra", "x1", "127.0.0.1:9250", "--transaction", &id]);
    let (code, _, _) = curl(
        &l,
        "POST",
        &format!("/services/extra/groups?transaction_id={id}"),
        Some(&json!({"name": "g", "backend": [{"name": "g1", "address": "127.0.0.1:9250"}]})),
    );
    assert_eq!(code, 202);
    cli(&[
        "route",
        "add",
        "extra",
        "--group",
        "g",
        "--path-beg",
        "/g/",
        "--transaction",
        &id,
    ]);
    assert_eq!(curl(&l, "PUT", &format!("/transactions/{id}"), None).0, 200);
    assert_eq!(
        get(&l.ns, "127.0.0.1:8082".parse().unwrap(), "/g/x", &[])
            .unwrap()
            .backend(),
        "s2",
        "the route's group (its server is the s2 one)"
    );
    cli(&["route", "remove", "extra", "0"]);
    assert_eq!(curl(&l, "GET", "/services/extra/routes", None).1, json!([]));
    cli(&["service", "remove", "extra"]);
    assert_eq!(curl(&l, "GET", "/services/extra", None).0, 404);

    // Restarted on the file: the same config.
    l.xlb.signal(libc::SIGTERM);
    assert!(l.xlb.wait_exit(std::time::Duration::from_secs(10)).is_some());
    l.xlb = XlbProcess::start(&l.ns, &l.cfg_path, &["--cleanup"]).unwrap();
    let (_, list, _) = curl(&l, "GET", "/services/site/backends", None);
    assert_eq!(list, json!([{"name": "s1", "address": "127.0.0.1:9250"}]));
    assert_eq!(l.get("/", &[]).backend(), "s2", "s1 now points at the s2 server");
    let file = std::fs::read_to_string(&l.cfg_path).unwrap();
    assert!(file.contains("# the operator's note on the global section"), "{file}");
    assert!(cli(&["status"]).contains("service site"));
}

#[test]
fn a_thousand_backends_in_one_transaction() {
    lab::require_root!();
    let l = lab();
    let (_, t, _) = curl(&l, "POST", &format!("/transactions?version={}", version(&l)), None);
    let id = t["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    // One curl process for the thousand requests (keep-alive).
    let mut c = l.ns.cmd("curl");
    let each = [
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\n",
        "-u",
        AUTH,
        "-H",
        "content-type: application/json",
    ];
    for i in 0..1000 {
        if i > 0 {
            c.arg("--next");
        }
        c.args(each);
        let body = json!({"name": format!("m{i}"), "address": format!("127.0.{}.{}:80", 1 + i / 250, 1 + i % 250)});
        c.args(["--data-binary", &body.to_string()]);
        c.arg(format!(
            "http://127.0.0.1:9900/api/v1/services/site/backends?transaction_id={id}"
        ));
    }
    let out = c.output().unwrap();
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(codes.lines().filter(|c| *c == "202").count(), 1000, "{codes}");
    let staged = started.elapsed();
    let (code, done, _) = curl(&l, "PUT", &format!("/transactions/{id}"), None);
    assert_eq!(code, 200, "{done}");
    println!(
        "1000 backends: staged in {staged:?}, committed in {:?}",
        started.elapsed() - staged
    );
    let (_, list, _) = curl(&l, "GET", "/services/site/backends", None);
    assert_eq!(list.as_array().map(Vec::len), Some(1001));
}

/// `xlb ARGS` with the admin credentials; panics unless it succeeds.
fn xlb_cli(l: &L7, args: &[&str]) -> String {
    let out =
        l.ns.cmd(lab::xlb::xlb_binary())
            .args(args)
            .env("XLB_ADMIN_AUTH", AUTH)
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "xlb {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn weight_of(l: &L7, backend: &str) -> Value {
    let status: Value = serde_json::from_str(&xlb_cli(l, &["status", "--json"])).unwrap();
    let backends = status["services"][0]["backends"].as_array().unwrap().clone();
    backends.into_iter().find(|b| b["name"] == backend).unwrap()["weight"].clone()
}

#[test]
fn hand_edits_not_reloaded_are_refused_and_runtime_weights_stay() {
    lab::require_root!();
    let l = lab();
    xlb_cli(&l, &["server", "set-weight", "site", "s1", "7"]);
    // Two writes in a row: each starts from what the one before wrote.
    for (name, port) in [("s2", 9260), ("s4", 9262)] {
        let body = json!({"name": name, "address": format!("127.0.0.1:{port}")});
        let (code, out, _) = curl(&l, "POST", "/services/site/backends", Some(&body));
        assert_eq!(code, 201, "{out}");
    }
    assert_eq!(weight_of(&l, "s1"), 7, "an API write keeps the weight set at runtime");
    // A transaction staged while the file is as loaded.
    let (_, t, _) = curl(&l, "POST", "/transactions", None);
    let staged = t["id"].as_str().unwrap().to_string();
    let body = json!({"name": "s5", "address": "127.0.0.1:9263"});
    let path = format!("/services/site/backends?transaction_id={staged}");
    assert_eq!(curl(&l, "POST", &path, Some(&body)).0, 202);
    // An operator edits the file and does not reload: the API refuses to
    // write over it, or to take it up unseen.
    let edited = std::fs::read_to_string(&l.cfg_path)
        .unwrap()
        .replace("127.0.0.1:9262", "127.0.0.1:9264");
    std::fs::write(&l.cfg_path, &edited).unwrap();
    let v = version(&l);
    let body = json!({"name": "s3", "address": "127.0.0.1:9261"});
    let (code, out, _) = curl(&l, "POST", "/services/site/backends", Some(&body));
    assert_eq!(code, 409, "{out}");
    assert!(
        out["message"].as_str().unwrap().contains("changed since xlb loaded it"),
        "{out}"
    );
    let (_, t, _) = curl(&l, "POST", "/transactions", None);
    let id = t["id"].as_str().unwrap();
    let (code, _, _) = curl(
        &l,
        "POST",
        &format!("/services/site/backends?transaction_id={id}"),
        Some(&body),
    );
    assert_eq!(code, 409, "staging on a hand-edited file");
    let (code, _, _) = curl(&l, "PUT", &format!("/transactions/{staged}"), None);
    assert_eq!(code, 409, "a commit over a hand-edited file");
    assert_eq!(curl(&l, "GET", &format!("/transactions/{staged}"), None).0, 200, "kept");
    assert_eq!(
        std::fs::read_to_string(&l.cfg_path).unwrap(),
        edited,
        "the hand edit kept"
    );
    assert_eq!(version(&l), v);
    let (_, s4, _) = curl(&l, "GET", "/services/site/backends/s4", None);
    assert_eq!(s4["address"], "127.0.0.1:9262", "GET shows what runs: {s4}");
    // Reloaded, the edit is what runs, writes go through on top of it,
    // and the file's weights are back.
    xlb_cli(&l, &["reload"]);
    assert_eq!(weight_of(&l, "s1"), 1, "a reload sets the file's weights");
    let (code, out, _) = curl(&l, "POST", "/services/site/backends", Some(&body));
    assert_eq!(code, 201, "{out}");
    let text = std::fs::read_to_string(&l.cfg_path).unwrap();
    assert!(
        text.contains("127.0.0.1:9264") && text.contains("127.0.0.1:9261"),
        "{text}"
    );
    // A write that changes a backend's weight wins over its runtime one.
    xlb_cli(&l, &["server", "set-weight", "site", "s1", "5"]);
    let (_, mut s1, _) = curl(&l, "GET", "/services/site/backends/s1", None);
    s1["weight"] = json!(3);
    let (code, out, _) = curl(&l, "PUT", "/services/site/backends/s1", Some(&s1));
    assert_eq!(code, 200, "{out}");
    assert_eq!(weight_of(&l, "s1"), 3);
}
