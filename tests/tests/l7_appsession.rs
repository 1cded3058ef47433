//! Appsession, black-box: the real xlb in front of servers that hand out
//! session ids like Tomcat with `jvmRoute` (`ID.SERVER`), checked as a
//! client and the admin API see it (docs/operations.md, "The L7 proxy",
//! "Appsession").

use std::{
    collections::HashSet,
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use lab::{
    http::get,
    l7::{Be, L7},
    servers::{Kind, Server},
    xlb::{temp_file, xlb_binary},
    Netns, XlbProcess,
};

const APPSESSION: &str = "[service.appsession]\ncookie = \"JSESSIONID\"\nlen = 64\ntimeout = \"5h\"\n";

fn three() -> Vec<Be<'static>> {
    vec![Be("s1", ""), Be("s2", ""), Be("s3", "")]
}

/// The table as `xlb session show --json` lists it: (id, server).
fn table(l: &L7) -> Vec<(String, String)> {
    table_at(&l.ns, "127.0.0.1:9900")
}

/// The nodes' admin credentials: they present them to each other.
const PEER_AUTH: &str = "peer:s3cret";

fn table_at(ns: &Netns, admin: &str) -> Vec<(String, String)> {
    let out = ns
        .cmd(xlb_binary())
        .args(["session", "show", "site", "--json", "--admin", admin])
        .env("XLB_ADMIN_AUTH", PEER_AUTH)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_string(),
                e["server"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Opens a session: the server that answers sets JSESSIONID=ID.SERVER.
fn login(l: &L7) -> (String, String) {
    let r = l.get("/login?session=JSESSIONID", &[]);
    let id = r
        .set_cookie("JSESSIONID")
        .expect("the application sets its session cookie");
    assert!(id.ends_with(&format!(".{}", r.backend())), "{id}");
    (id, r.backend().to_string())
}

#[test]
fn learns_from_the_response_and_finds_the_id_in_cookie_and_url() {
    let l = L7::start(APPSESSION, &three(), &[]);
    let sessions: Vec<(String, String)> = (0..6).map(|_| login(&l)).collect();
    let servers: HashSet<&str> = sessions.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(servers.len(), 3, "round robin spread the logins");
    let mut learned = table(&l);
    learned.sort();
    let mut expected = sessions.clone();
    expected.sort();
    assert_eq!(learned, expected, "every id the servers set is in the table");
    for (id, srv) in &sessions {
        for _ in 0..3 {
            let r = l.get("/app?session=JSESSIONID", &[&format!("Cookie: a=b; JSESSIONID={id}")]);
            assert_eq!(r.backend(), srv, "the Cookie header finds the session");
            assert!(r.set_cookie("JSESSIONID").is_none(), "the session lives on");
        }
        let r = l.get(&format!("/app;jsessionid={id}?x=1"), &[]);
        assert_eq!(r.backend(), srv, "a path parameter finds the session");
        let r = l.get(&format!("/app;JSESSIONID={id}"), &[]);
        assert_eq!(r.backend(), srv, "the parameter name in any case");
        let r = l.get(&format!("/app?jsessionid={id}"), &[]);
        assert!(r.status == 200, "the query is not looked at in path-parameters mode");
    }
    let spread: HashSet<String> = (0..6)
        .map(|_| l.get("/", &["Cookie: JSESSIONID=unknown"]).backend().to_string())
        .collect();
    assert_eq!(spread.len(), 3, "an unknown id is balanced");
    let (id, _) = &sessions[0];
    let mut c = l.client();
    let spread: HashSet<String> = (0..3)
        .map(|_| {
            let r = c
                .request("PUT", "/", &[&format!("Cookie: JSESSIONID={id}")], "x")
                .unwrap();
            r.backend().to_string()
        })
        .collect();
    assert_eq!(spread.len(), 3, "only GET, POST and HEAD are looked up");
}

#[test]
fn query_string_mode() {
    let l = L7::start(&format!("{APPSESSION}url_mode = \"query-string\"\n"), &three(), &[]);
    let (id, srv) = login(&l);
    for _ in 0..4 {
        assert_eq!(l.get(&format!("/a?x=1&JSESSIONID={id}"), &[]).backend(), srv);
    }
}

#[test]
fn request_learn_remembers_ids_the_server_never_sets() {
    // PHP-style: the client brings PHPSESSID, the server sets nothing.
    let cfg = "[service.appsession]\ncookie = \"PHPSESSID\"\nrequest_learn = true\n";
    let l = L7::start(cfg, &three(), &[]);
    for id in ["alpha", "beta", "gamma"] {
        let first = l.get("/", &[&format!("Cookie: PHPSESSID={id}")]).backend().to_string();
        for _ in 0..4 {
            assert_eq!(l.get("/", &[&format!("Cookie: PHPSESSID={id}")]).backend(), first);
        }
    }
    assert_eq!(table(&l).len(), 3);
    // Without request_learn the same requests are plainly balanced.
    // One proxy at a time: without root they share this loopback.
    drop(l);
    let l = L7::start("[service.appsession]\ncookie = \"PHPSESSID\"\n", &three(), &[]);
    let spread: HashSet<String> = (0..3)
        .map(|_| l.get("/", &["Cookie: PHPSESSID=alpha"]).backend().to_string())
        .collect();
    assert_eq!(spread.len(), 3);
    assert!(table(&l).is_empty());
}

#[test]
fn follows_the_new_id_after_a_failover() {
    let l = L7::start(APPSESSION, &three(), &[]);
    let (old, first) = login(&l);
    l.set_state(&first, "maint");
    // Tomcat on another node does not know ID.FIRST and issues its own id.
    let r = l.get("/app?session=JSESSIONID", &[&format!("Cookie: JSESSIONID={old}")]);
    let second = r.backend().to_string();
    assert_ne!(second, first, "a session on a server in maintenance is rebalanced");
    let new = r.set_cookie("JSESSIONID").expect("the new server issues a new id");
    assert!(new.ends_with(&format!(".{second}")));
    let t = table(&l);
    assert!(t.contains(&(new.clone(), second.clone())), "{t:?}");
    assert!(!t.iter().any(|(id, _)| *id == old), "the stale id is forgotten: {t:?}");
    l.set_state(&first, "ready");
    for _ in 0..4 {
        let r = l.get("/app?session=JSESSIONID", &[&format!("Cookie: JSESSIONID={new}")]);
        assert_eq!(
            r.backend(),
            second,
            "the new id sticks, also once the old server is back"
        );
    }
}

#[test]
fn route_suffix_finds_the_server_the_table_does_not_know() {
    let cfg = format!("{APPSESSION}route_suffix = true\n");
    // s2's route is its cookie value, the others' their name.
    let l = L7::start(&cfg, &[Be("s1", ""), Be("s2", "cookie = \"tc2\""), Be("s3", "")], &[]);
    let ask = |id: &str| l.get("/", &[&format!("Cookie: JSESSIONID={id}")]).backend().to_string();
    for _ in 0..3 {
        assert_eq!(ask("lost.s3"), "s3", "no entry: the suffix names s3");
        assert_eq!(ask("lost.tc2"), "s2", "the suffix matches s2's cookie value");
        assert_eq!(l.get("/app;jsessionid=lost.s1", &[]).backend(), "s1", "and in the URL");
    }
    assert!(table(&l).is_empty(), "routing on the suffix learns nothing");
    let spread: HashSet<String> = (0..3).map(|_| ask("lost.s2")).collect();
    assert_eq!(spread.len(), 3, "s2 goes by its cookie value, not its name");
    // A learned entry wins over the suffix; a suffix naming a server in
    // maintenance is balanced.
    let (id, srv) = login(&l);
    let other = if srv == "s1" { "s3" } else { "s1" };
    let moved = format!("{}.{other}", id.rsplit_once('.').unwrap().0);
    l.set_state(other, "maint");
    let spread: HashSet<String> = (0..4).map(|_| ask(&moved)).collect();
    assert!(!spread.contains(other), "{spread:?}");
    assert_eq!(ask(&id), srv);

    // Without the option, HAProxy's behaviour: unknown ids are balanced.
    // One proxy at a time: without root they share this loopback.
    drop(l);
    let l = L7::start(APPSESSION, &three(), &[]);
    let spread: HashSet<String> = (0..3)
        .map(|_| l.get("/", &["Cookie: JSESSIONID=lost.s3"]).backend().to_string())
        .collect();
    assert_eq!(spread.len(), 3);
}

#[test]
fn idle_entries_expire() {
    let l = L7::start(&APPSESSION.replace("5h", "1s"), &three(), &[]);
    let (id, srv) = login(&l);
    assert_eq!(l.get("/", &[&format!("Cookie: JSESSIONID={id}")]).backend(), srv);
    let used = Instant::now();
    assert!(!table(&l).is_empty());
    // Gone once idle longer than the timeout (swept within a few seconds),
    // not before.
    while !table(&l).is_empty() {
        assert!(used.elapsed() < Duration::from_secs(6), "still there after 6 s");
        thread::sleep(Duration::from_millis(50));
    }
    assert!(
        used.elapsed() >= Duration::from_millis(900),
        "gone after {:?}",
        used.elapsed()
    );
    let spread: HashSet<String> = (0..3)
        .map(|_| l.get("/", &[&format!("Cookie: JSESSIONID={id}")]).backend().to_string())
        .collect();
    assert_eq!(spread.len(), 3, "an expired id is balanced");
}

#[test]
fn the_table_survives_a_reload_and_can_be_cleared() {
    let mut l = L7::start(APPSESSION, &three(), &[]);
    let sessions: Vec<(String, String)> = (0..3).map(|_| login(&l)).collect();
    let cfg = l.cfg.replace("timeout = \"5h\"", "timeout = \"4h\"") + "[service.http]\nretries = 2\n";
    l.reload(&cfg);
    assert_eq!(table(&l).len(), 3, "reload keeps the table");
    for (id, srv) in &sessions {
        assert_eq!(l.get("/", &[&format!("Cookie: JSESSIONID={id}")]).backend(), srv);
    }
    let status: serde_json::Value = serde_json::from_str(&l.xlb(&["status", "--json"])).unwrap();
    assert_eq!(status["services"][0]["http"]["sessions"], 3);
    let out = l.xlb(&["session", "show", "site"]);
    assert!(out.contains(&sessions[0].0) && out.contains("3 sessions"), "{out}");
    l.xlb(&["session", "clear", "site", &sessions[0].0]);
    assert_eq!(table(&l).len(), 2);
    assert_eq!(l.xlb(&["session", "clear", "site"]).trim(), "cleared 2");
    assert!(table(&l).is_empty());
    let out = lab::xlb::xlb_once(&l.ns, &["session", "show", "nosuch"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no appsession table"));
}

#[test]
fn peers_share_the_table_and_a_restarted_node_takes_it_back() {
    lab::require_root!();
    let ns = Netns::create(&format!("xlbt{}peers", std::process::id())).unwrap();
    let mut backends = String::new();
    let mut servers = Vec::new();
    for (i, name) in ["s1", "s2", "s3"].iter().enumerate() {
        let addr: SocketAddr = format!("127.0.0.1:{}", 9101 + i).parse().unwrap();
        servers.push(Server::start(&ns, addr, name, Kind::Http).unwrap());
        backends += &format!("[[service.backend]]\nname = \"{name}\"\naddress = \"{addr}\"\n");
    }
    // Two nodes on one host: A on 127.0.0.1:8080, B on 127.0.0.2:8080.
    let node = |me: &str, peer: &str, vip: &str| {
        let cfg = format!(
            "[global]\nadmin = \"{me}\"\nadmin_auth = \"{PEER_AUTH}\"\npeers = [\"{peer}\"]\n\n[[service]]\nname = \"site\"\nvip = \"{vip}\"\n\
             port = 8080\nmode = \"http\"\n{APPSESSION}[service.health]\nkind = \"none\"\n{backends}"
        );
        let path = temp_file(&format!("peer-{}.toml", me.replace(':', "_")), &cfg).unwrap();
        XlbProcess::start_with_admin(&ns, &path, &["--cleanup"], me).unwrap()
    };
    let (a_admin, b_admin) = ("127.0.0.1:9900", "127.0.0.1:9901");
    let (a_vip, b_vip): (SocketAddr, SocketAddr) =
        ("127.0.0.1:8080".parse().unwrap(), "127.0.0.2:8080".parse().unwrap());
    let _a = node(a_admin, b_admin, "127.0.0.1");
    let b = node(b_admin, a_admin, "127.0.0.2");
    let login = |vip| {
        let r = get(&ns, vip, "/login?session=JSESSIONID", &[]).unwrap();
        (r.set_cookie("JSESSIONID").unwrap(), r.backend().to_string())
    };
    let wait_for = |admin: &str, entry: &(String, String)| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !table_at(&ns, admin).contains(entry) {
            assert!(Instant::now() < deadline, "{entry:?} never reached {admin}");
            thread::sleep(Duration::from_millis(50));
        }
    };
    let first = login(a_vip);
    wait_for(b_admin, &first);
    for _ in 0..3 {
        let r = get(&ns, b_vip, "/", &[&format!("Cookie: JSESSIONID={}", first.0)]).unwrap();
        assert_eq!(r.backend(), first.1, "a session learned by A sticks on B");
    }
    let second = login(b_vip);
    wait_for(a_admin, &second);
    // B restarts with an empty table and takes A's.
    b.stop().unwrap();
    let _b = node(b_admin, a_admin, "127.0.0.2");
    wait_for(b_admin, &first);
    wait_for(b_admin, &second);
}
