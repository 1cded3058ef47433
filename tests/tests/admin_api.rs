//! The data-plane style admin API: config versions (a write against a stale
//! version is refused with 409 and changes nothing) and transactions
//! (changes staged, then applied together by one commit).

use std::net::SocketAddr;

use lab::{
    http::{Client, Response},
    l7::{Be, Spec, L7},
    xlb::xlb_once,
};
use serde_json::Value;

fn lab() -> L7 {
    L7::run(&Spec {
        backends: &[Be("s1", ""), Be("s2", ""), Be("s3", "")],
        ..Spec::default()
    })
}

fn api(l: &L7, method: &str, path: &str, body: &str) -> Response {
    let admin: SocketAddr = "127.0.0.1:9900".parse().unwrap();
    Client::connect(&l.ns, admin)
        .unwrap()
        .request(method, path, &[], body)
        .unwrap()
}

fn parse(r: &Response) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

fn version(l: &L7) -> u64 {
    let r = api(l, "GET", "/api/version", "");
    let v = parse(&r)["version"].as_u64().unwrap();
    assert_eq!(r.header("configuration-version"), Some(v.to_string().as_str()));
    v
}

/// Opens a transaction; its id.
fn open(l: &L7) -> String {
    parse(&api(l, "POST", "/api/transactions", ""))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Stages `body` for `/api/servers/site/PATH` in transaction `id`; the status.
fn stage(l: &L7, id: &str, path: &str, body: &str) -> u16 {
    api(l, "POST", &format!("/api/servers/site/{path}?transaction={id}"), body).status
}

/// (state, weight) of a backend, as `/api/status` reports it.
fn backend(l: &L7, name: &str) -> (String, u64) {
    let status = parse(&api(l, "GET", "/api/status", ""));
    let b = status["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .cloned()
        .unwrap();
    (b["state"].as_str().unwrap().to_string(), b["weight"].as_u64().unwrap())
}

/// The backends that answer `n` new (cookie-less) requests.
fn served(l: &L7, n: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(|_| l.get("/", &[]).backend().to_string()).collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn a_write_against_a_stale_version_is_refused_and_changes_nothing() {
    let l = lab();
    let v = version(&l);

    let r = api(&l, "POST", &format!("/api/servers/site/s1/state?version={v}"), "drain");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("configuration-version"), Some((v + 1).to_string().as_str()));
    assert_eq!(version(&l), v + 1);

    // Another writer still holding version v.
    let r = api(&l, "POST", &format!("/api/servers/site/s1/state?version={v}"), "maint");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("stale"), "{}", r.body);
    let r = api(&l, "POST", &format!("/api/servers/site/s2/weight?version={v}"), "9");
    assert_eq!(r.status, 409);
    assert_eq!(backend(&l, "s1").0, "drain");
    assert_eq!(backend(&l, "s2").1, 1);
    assert_eq!(version(&l), v + 1, "refused writes do not count");

    // The same from the command line, and a reload.
    let out = xlb_once(
        &l.ns,
        &[
            "server",
            "set-weight",
            "site",
            "s2",
            "5",
            "--config-version",
            &v.to_string(),
        ],
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stale"));
    std::fs::write(&l.cfg_path, l.cfg.replace("name = \"s3\"", "name = \"s3\"\nweight = 4")).unwrap();
    let out = xlb_once(&l.ns, &["reload", "--config-version", &v.to_string()]).unwrap();
    assert!(!out.status.success());
    assert_eq!(backend(&l, "s3").1, 1, "a stale reload leaves the running config");
    assert_eq!(backend(&l, "s1").0, "drain");
    let w = (v + 1).to_string();
    l.xlb(&["reload", "--config-version", &w]);
    assert_eq!(backend(&l, "s3").1, 4);
    assert_eq!(version(&l), v + 2);
    assert!(l.xlb(&["status"]).contains(&format!("(version {})", v + 2)));

    // Without a version a write is unconditional.
    assert_eq!(api(&l, "POST", "/api/servers/site/s2/weight", "2").status, 200);
    assert_eq!(backend(&l, "s2").1, 2);
    assert_eq!(api(&l, "POST", "/api/reload?version=x", "").status, 400);
    assert_eq!(api(&l, "POST", "/api/reload?flavour=1", "").status, 400);
}

#[test]
fn a_transaction_applies_its_changes_together_at_commit() {
    let l = lab();
    let v = version(&l);
    let t = parse(&api(&l, "POST", "/api/transactions", ""));
    assert_eq!(t["version"].as_u64(), Some(v));
    let id = t["id"].as_str().unwrap().to_string();

    assert_eq!(stage(&l, &id, "s1/state", "maint"), 202);
    assert_eq!(stage(&l, &id, "s2/state", "maint"), 202);
    assert_eq!(stage(&l, &id, "s3/weight", "7"), 202);
    // Invalid changes are refused at once and not staged.
    assert_eq!(stage(&l, &id, "nosuch/state", "drain"), 404);
    assert_eq!(stage(&l, &id, "s3/weight", "100000"), 400);
    assert_eq!(stage(&l, &id, "s3/state", "asleep"), 400);

    // Staged, not applied: all three still serve, the version stands.
    assert_eq!(served(&l, 6), ["s1", "s2", "s3"]);
    assert_eq!(version(&l), v);
    let shown = parse(&api(&l, "GET", &format!("/api/transactions/{id}"), ""));
    assert_eq!(shown["changes"].as_array().unwrap().len(), 3, "{shown}");
    assert_eq!(shown["changes"][2]["set"], "weight");
    let listed = parse(&api(&l, "GET", "/api/transactions", ""));
    assert_eq!(listed.as_array().unwrap().len(), 1);

    let r = api(&l, "PUT", &format!("/api/transactions/{id}"), "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(parse(&r)["version"].as_u64(), Some(v + 1), "one commit, one version");
    assert_eq!(served(&l, 6), ["s3"]);
    assert_eq!(backend(&l, "s1").0, "maint");
    assert_eq!(backend(&l, "s3").1, 7);
    assert_eq!(
        api(&l, "PUT", &format!("/api/transactions/{id}"), "").status,
        404,
        "committed once"
    );

    // A transaction opened before someone else's write is outdated.
    let old = open(&l);
    assert_eq!(stage(&l, &old, "s1/state", "ready"), 202);
    assert_eq!(api(&l, "POST", "/api/servers/site/s2/state", "ready").status, 200);
    let r = api(&l, "PUT", &format!("/api/transactions/{old}"), "");
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(backend(&l, "s1").0, "maint", "nothing of it applied");
    assert_eq!(
        api(&l, "GET", &format!("/api/transactions/{old}"), "").status,
        404,
        "and it is gone"
    );
    let stale = v;
    assert_eq!(
        api(&l, "POST", &format!("/api/transactions?version={stale}"), "").status,
        409
    );

    // Deleted: nothing applied.
    let gone = open(&l);
    assert_eq!(stage(&l, &gone, "s1/state", "ready"), 202);
    assert_eq!(api(&l, "DELETE", &format!("/api/transactions/{gone}"), "").status, 200);
    assert_eq!(api(&l, "PUT", &format!("/api/transactions/{gone}"), "").status, 404);
    assert_eq!(backend(&l, "s1").0, "maint");
    assert_eq!(served(&l, 4), ["s2", "s3"]);
}

/// `xlb ARGS` against the lab's daemon with `env` set; (success, stdout + stderr).
fn xlb_with(l: &L7, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = l.ns.cmd(lab::xlb::xlb_binary());
    cmd.args(args).env_remove("XLB_ADMIN_AUTH");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn basic(user_password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_password)
    )
}

#[test]
fn admin_auth_guards_the_api_and_the_commands_send_credentials() {
    // A SHA-512 crypt hash of "s3cret" (openssl passwd -6 -salt xlbtest s3cret).
    let hash = "$6$xlbtest$TeeDUCwX5gXRD/iN2mREsv9Fy7n.TdNP/J5cVemOC3iLuWRCYZ24rCRn8qI15MMgYign2xIVYbcRfvzIkAOyZ0";
    for secret in ["s3cret", hash] {
        let l = L7::run(&Spec {
            global: &format!("admin_auth = \"ops:{secret}\"\n"),
            backends: &[Be("s1", "")],
            ..Spec::default()
        });
        let admin: SocketAddr = "127.0.0.1:9900".parse().unwrap();
        let ask = |headers: &[&str]| {
            Client::connect(&l.ns, admin)
                .unwrap()
                .request("GET", "/api/status", headers, "")
                .unwrap()
        };
        let r = ask(&[]);
        assert_eq!(r.status, 401, "{secret}: no credentials");
        assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"xlb admin\""));
        assert_eq!(ask(&[&basic("ops:wrong")]).status, 401);
        assert_eq!(ask(&[&basic("root:s3cret")]).status, 401);
        assert_eq!(ask(&[&basic("ops:s3cret")]).status, 200);
        // /metrics is guarded too.
        let m = Client::connect(&l.ns, admin).unwrap().get("/metrics", &[]).unwrap();
        assert_eq!(m.status, 401);

        let (ok, out) = xlb_with(&l, &["status"], &[]);
        assert!(!ok && out.contains("authentication required"), "{out}");
        let (ok, out) = xlb_with(&l, &["status"], &[("XLB_ADMIN_AUTH", "ops:wrong")]);
        assert!(!ok, "{out}");
        let (ok, out) = xlb_with(&l, &["status"], &[("XLB_ADMIN_AUTH", "ops:s3cret")]);
        assert!(ok && out.contains("service site"), "{out}");
        let file = lab::xlb::temp_file("admin-auth", "ops:s3cret\n").unwrap();
        let (ok, out) = xlb_with(
            &l,
            &[
                "server",
                "set-state",
                "site",
                "s1",
                "drain",
                "--auth-file",
                file.to_str().unwrap(),
            ],
            &[],
        );
        assert!(ok, "{out}");
        let (_, out) = xlb_with(&l, &["status"], &[("XLB_ADMIN_AUTH", "ops:s3cret")]);
        assert!(out.contains("drain"), "the write went through: {out}");
    }
}

#[test]
fn admin_requests_are_bounded() {
    let l = lab();
    let admin: SocketAddr = "127.0.0.1:9900".parse().unwrap();
    // A body over the limit: 413, and the daemon carries on.
    let big = "x".repeat(5 << 20);
    let r = Client::connect(&l.ns, admin)
        .unwrap()
        .request("POST", "/api/servers/site/s1/state", &[], &big)
        .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(api(&l, "GET", "/api/version", "").status, 200);
    // Connections past the cap wait to be accepted until one closes.
    let idle: Vec<std::net::TcpStream> = (0..64)
        .map(|_| l.ns.enter(|| std::net::TcpStream::connect(admin)).unwrap().unwrap())
        .collect();
    let mut late = Client::connect(&l.ns, admin).unwrap();
    let waiting = std::thread::spawn(move || late.get("/api/version", &[]).map(|r| r.status));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        !waiting.is_finished(),
        "a 65th connection is not served while 64 are open"
    );
    drop(idle);
    assert_eq!(waiting.join().unwrap().unwrap(), 200);
}
