//! The L7 proxy, black-box: the real xlb (an http-only config: no XDP at
//! all) in a namespace of its own with real backend servers on loopback,
//! and a client that sees exactly what goes over the wire. Each test checks
//! rules in docs/operations.md.

use lab::l7::{Be, L7};

const INSERT: &str = "[service.cookie]\nname = \"SERVERID\"\nmode = \"insert\"\nindirect = true\nnocache = true\n";

fn two() -> Vec<Be<'static>> {
    vec![Be("s1", "cookie = \"s1\""), Be("s2", "cookie = \"s2\"")]
}

/// Waits for the access log (standard error, written by a thread of its
/// own) to show `needle`.
fn log_has(l: &L7, needle: &str) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !l.xlb.log().contains(needle) {
        assert!(
            std::time::Instant::now() < until,
            "no {needle:?} in the log:\n{}",
            l.xlb.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn insert_indirect_first_request_gets_a_cookie_later_ones_stick() {
    let l = L7::start(INSERT, &two(), &[]);
    let mut c = l.client();
    let first = c.get("/", &[]).unwrap();
    assert_eq!(first.status, 200);
    let srv = first.backend().to_string();
    assert_eq!(first.set_cookie("SERVERID").as_deref(), Some(srv.as_str()));
    assert!(
        first
            .all("set-cookie")
            .contains(&format!("SERVERID={srv}; path=/").as_str()),
        "{:?}",
        first.headers
    );
    for _ in 0..5 {
        let r = c.get("/", &[&format!("Cookie: a=1; SERVERID={srv}; b=2")]).unwrap();
        assert_eq!(r.backend(), srv, "a valid cookie sticks");
        assert!(
            r.all("set-cookie").is_empty(),
            "no Set-Cookie for a client holding a valid cookie"
        );
        assert_eq!(
            r.seen("cookie"),
            vec!["a=1; b=2"],
            "indirect: only our cookie is removed"
        );
    }
    let r = c.get("/", &[&format!("Cookie: SERVERID={srv}")]).unwrap();
    assert!(r.seen("cookie").is_empty(), "nothing left: no Cookie header at all");
    // An invalid value is balanced again and re-cookied.
    let r = l.get("/", &["Cookie: SERVERID=nosuch"]);
    assert_eq!(r.set_cookie("SERVERID").as_deref(), Some(r.backend()));
    // Keep-alive both sides: one client connection carried all of the above.
}

/// An idle keep-alive connection is parked (no task, no buffer) and keeps
/// serving on the same socket: requests after idle spells, a request split
/// across one, pipelined requests; none is told to close. A parked
/// connection the client closes goes.
#[test]
fn idle_connections_release_their_state_and_keep_serving() {
    let l = L7::start(INSERT, &two(), &[]);
    let mut c = l.client();
    let idle = || std::thread::sleep(std::time::Duration::from_millis(600));
    let open = |r: &lab::http::Response| {
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), None, "{:?}", r.headers);
    };
    let parked = || {
        let status: serde_json::Value = serde_json::from_str(&l.xlb(&["status", "--json"])).unwrap();
        status["services"][0]["http"]["parked"].as_u64().unwrap()
    };
    let wait_parked = |n: u64| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while parked() != n {
            assert!(std::time::Instant::now() < deadline, "{n} parked connections expected");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    for _ in 0..3 {
        open(&c.get("/", &[]).unwrap());
        wait_parked(1);
    }
    c.send("GET /split HTTP/1.1\r\nHo").unwrap();
    idle();
    open(&c.raw("st: xlb.test\r\n\r\n").unwrap());
    idle();
    let r = c
        .raw("GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    open(&r);
    open(&c.read_next().unwrap());
    idle();
    open(&c.get("/", &[]).unwrap());
    idle();
    // Closed by the client while parked: gone.
    drop(c);
    wait_parked(0);
}

#[test]
fn without_indirect_the_server_sees_the_cookie() {
    let l = L7::start(&INSERT.replace("indirect = true", "indirect = false"), &two(), &[]);
    let r = l.get("/", &["Cookie: SERVERID=s2; x=y"]);
    assert_eq!(r.backend(), "s2");
    assert_eq!(r.seen("cookie"), vec!["SERVERID=s2; x=y"]);
}

#[test]
fn nocache_marks_only_cacheable_responses_private() {
    let l = L7::start(INSERT, &two(), &[]);
    let r = l.get("/?cc=max-age=60", &[]);
    assert!(r.set_cookie("SERVERID").is_some());
    assert!(r.all("cache-control").contains(&"private"), "{:?}", r.headers);
    let r = l.get("/?etag", &[]);
    assert!(
        r.all("cache-control").contains(&"private"),
        "a validator makes it cacheable"
    );
    let r = l.get("/", &[]);
    assert!(r.set_cookie("SERVERID").is_some());
    assert!(
        !r.all("cache-control").contains(&"private"),
        "not cacheable: no extra header"
    );
    let r = l.get("/?cc=max-age=60", &["Cookie: SERVERID=s1"]);
    assert!(
        r.all("cache-control").iter().all(|v| *v != "private"),
        "no cookie inserted, nothing added"
    );
}

#[test]
fn server_without_cookie_value_clears_the_cookie() {
    let l = L7::start(INSERT, &[Be("s1", "")], &[]);
    let r = l.get("/", &[]);
    assert!(
        r.all("set-cookie")
            .contains(&"SERVERID=; Expires=Thu, 01-Jan-1970 00:00:01 GMT; path=/"),
        "{:?}",
        r.headers
    );
}

#[test]
fn down_server_clients_are_moved_and_recookied_drain_keeps_them() {
    let l = L7::start(INSERT, &two(), &[]);
    l.set_state("s1", "drain");
    let r = l.get("/", &["Cookie: SERVERID=s1"]);
    assert_eq!(r.backend(), "s1", "drain: persistent traffic still served");
    assert!(r.all("set-cookie").is_empty());
    for _ in 0..4 {
        assert_eq!(l.get("/", &[]).backend(), "s2", "drain: no new balanced traffic");
    }
    l.set_state("s1", "maint");
    let r = l.get("/", &["Cookie: SERVERID=s1"]);
    assert_eq!(r.backend(), "s2", "maint: the cookie is ignored, the request balanced");
    assert_eq!(
        r.set_cookie("SERVERID").as_deref(),
        Some("s2"),
        "and a new cookie issued"
    );
    // The access line's termination state: a cookie naming a down
    // server, a new one inserted.
    log_has(&l, " --DI ");
}

#[test]
fn backups_only_when_no_normal_server_is_up_and_a_cookie_reaches_them() {
    let l = L7::start(
        INSERT,
        &[Be("s1", "cookie = \"s1\""), Be("b1", "cookie = \"b1\"\nbackup = true")],
        &[],
    );
    for _ in 0..3 {
        assert_eq!(l.get("/", &[]).backend(), "s1");
    }
    assert_eq!(
        l.get("/", &["Cookie: SERVERID=b1"]).backend(),
        "b1",
        "a cookie naming a backup goes to it"
    );
    l.set_state("s1", "maint");
    let r = l.get("/", &[]);
    assert_eq!(r.backend(), "b1");
    assert_eq!(r.set_cookie("SERVERID").as_deref(), Some("b1"));
}

#[test]
fn connect_failure_without_redispatch_is_503_with_it_moves() {
    let svc = format!("{INSERT}[service.http]\nretries = 2\n");
    let l = L7::start(&svc, &two(), &["s1"]);
    let r = l.get("/", &["Cookie: SERVERID=s1"]);
    assert_eq!(r.status, 503, "persistence kept, retries exhausted");
    assert!(r.body.contains("no server available"));
    let svc = format!("{INSERT}[service.http]\nretries = 2\nredispatch = true\n");
    // One proxy at a time: without root they share this loopback.
    drop(l);
    let l = L7::start(&svc, &two(), &["s1"]);
    let r = l.get("/", &["Cookie: SERVERID=s1"]);
    assert_eq!(r.status, 200, "{}", l.xlb.log());
    assert_eq!(r.backend(), "s2", "the last retry went elsewhere");
    assert_eq!(
        r.set_cookie("SERVERID").as_deref(),
        Some("s2"),
        "persistence broken: new cookie"
    );
}

#[test]
fn forwardfor_and_its_exception() {
    let l = L7::start("[service.http]\nforwardfor = true\n", &two(), &[]);
    assert_eq!(l.get("/", &[]).seen("x-forwarded-for"), vec!["127.0.0.1"]);
    // One proxy at a time: without root they share this loopback.
    drop(l);
    let l = L7::start(
        "[service.http]\nforwardfor = true\nforwardfor_except = \"127.0.0.0/8\"\n",
        &two(),
        &[],
    );
    assert!(l.get("/", &[]).seen("x-forwarded-for").is_empty());
}

#[test]
fn monitor_uri_is_answered_by_xlb() {
    let l = L7::start("[service.http]\nmonitor_uri = \"/site_status\"\n", &two(), &[]);
    let r = l.get("/site_status", &[]);
    assert_eq!(
        (r.status, r.body.as_str(), r.backend()),
        (200, "OK\n", ""),
        "never forwarded"
    );
    assert_eq!(
        l.get("/Site_Status", &[]).backend().len(),
        2,
        "exact, case-sensitive match"
    );
    l.set_state("s1", "maint");
    l.set_state("s2", "maint");
    assert_eq!(l.get("/site_status", &[]).status, 503);
    assert_eq!(l.get("/", &[]).status, 503, "nothing can serve: 503 with a short body");
}

#[test]
fn prefix_mode_wraps_the_application_cookie() {
    let svc = "[service.cookie]\nname = \"JSESSIONID\"\nmode = \"prefix\"\n";
    let l = L7::start(svc, &two(), &[]);
    let r = l.get("/?cookie=JSESSIONID:ABC", &[]);
    let srv = r.backend().to_string();
    assert_eq!(r.set_cookie("JSESSIONID"), Some(format!("{srv}~ABC")));
    for _ in 0..3 {
        let r = l.get("/", &[&format!("Cookie: JSESSIONID={srv}~ABC")]);
        assert_eq!(r.backend(), srv);
        assert_eq!(
            r.seen("cookie"),
            vec!["JSESSIONID=ABC"],
            "the application sees its own value"
        );
    }
}

#[test]
fn rewrite_mode_puts_the_server_value_in() {
    let l = L7::start(
        "[service.cookie]\nname = \"SERVERID\"\nmode = \"rewrite\"\n",
        &two(),
        &[],
    );
    let r = l.get("/?cookie=SERVERID:whatever", &[]);
    assert_eq!(r.set_cookie("SERVERID").as_deref(), Some(r.backend()));
}

#[test]
fn maxidle_expires_old_cookies_and_refreshes_live_ones() {
    let l = L7::start(&format!("{INSERT}maxidle = \"30m\"\n"), &two(), &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let date = |t: u64| lb_user::l7::cookie::encode_date(t);
    let r = l.get("/", &[]);
    let value = r.set_cookie("SERVERID").unwrap();
    assert!(
        value.starts_with(&format!("{}|", r.backend())),
        "dates ride in the cookie: {value}"
    );
    // Used 10 s ago: sticks; refreshed if the 4 s date moved.
    let recent = format!("Cookie: SERVERID=s1|{}", date(now - 10));
    let r = l.get("/", &[&recent]);
    assert_eq!(r.backend(), "s1");
    assert!(
        r.set_cookie("SERVERID").is_some_and(|v| v.starts_with("s1|")),
        "last-use date refreshed"
    );
    // Idle for 2 h: ignored, balanced again, new cookie.
    let old = format!("Cookie: SERVERID=s1|{}", date(now - 7200));
    let mut moved = false;
    for _ in 0..4 {
        let r = l.get("/", &[&old]);
        assert!(r.set_cookie("SERVERID").is_some(), "an expired cookie is replaced");
        moved |= r.backend() == "s2";
    }
    assert!(moved, "an expired cookie no longer pins the client");
    log_has(&l, " --EI ");
}

#[test]
fn postonly_inserts_only_on_post() {
    let l = L7::start(&format!("{INSERT}postonly = true\n"), &two(), &[]);
    assert!(l.get("/", &[]).set_cookie("SERVERID").is_none());
    let r = l.client().request("POST", "/", &[], "x=1").unwrap();
    assert!(r.set_cookie("SERVERID").is_some());
}

#[test]
fn insert_removes_the_servers_own_cookie_unless_preserve() {
    let l = L7::start(INSERT, &two(), &[]);
    let r = l.get("/?cookie=SERVERID:app", &["Cookie: SERVERID=s1"]);
    assert!(r.set_cookie("SERVERID").is_none(), "{:?}", r.headers);
    // One proxy at a time: without root they share this loopback.
    drop(l);
    let l = L7::start(&format!("{INSERT}preserve = true\n"), &two(), &[]);
    let r = l.get("/?cookie=SERVERID:app", &["Cookie: SERVERID=s1"]);
    assert_eq!(r.set_cookie("SERVERID").as_deref(), Some("app"));
}

#[test]
fn weighted_round_robin_and_hashing() {
    let l = L7::start("", &[Be("s1", "weight = 3"), Be("s2", "weight = 1")], &[]);
    let mut c = l.client();
    let picks: Vec<String> = (0..8).map(|_| c.get("/", &[]).unwrap().backend().to_string()).collect();
    assert_eq!(picks.iter().filter(|p| *p == "s1").count(), 6, "{picks:?}");
    // One proxy at a time: without root they share this loopback.
    drop(l);
    let l = L7::start("balance = \"uri\"", &[Be("s1", ""), Be("s2", ""), Be("s3", "")], &[]);
    let first = l.get("/a/page?x=1", &[]).backend().to_string();
    for q in ["?y=2", "", "?z"] {
        assert_eq!(
            l.get(&format!("/a/page{q}"), &[]).backend(),
            first,
            "the path alone picks"
        );
    }
    let spread: std::collections::HashSet<String> = (0..30)
        .map(|i| l.get(&format!("/p{i}"), &[]).backend().to_string())
        .collect();
    assert_eq!(spread.len(), 3);
    // One proxy at a time: without root they share this loopback.
    drop(l);
    let l = L7::start("balance = \"hdr(X-User)\"", &[Be("s1", ""), Be("s2", "")], &[]);
    let alice = l.get("/", &["X-User: alice"]).backend().to_string();
    for _ in 0..4 {
        assert_eq!(l.get("/", &["X-User: alice"]).backend(), alice);
    }
}

#[test]
fn body_and_header_limits_and_malformed_requests_get_4xx() {
    let l = L7::start(
        "[service.http]\nmax_body_bytes = 16\nmax_header_bytes = 4096\n",
        &two(),
        &[],
    );
    let mut c = l.client();
    let r = c.request("POST", "/", &[], "0123456789abcdefX").unwrap();
    assert_eq!(r.status, 413, "Content-Length over the limit");
    let mut c = l.client();
    let r = c.request("POST", "/", &[], "0123456789abcdef").unwrap();
    assert_eq!(r.status, 200, "at the limit");
    let chunked = |chunks: &[&str]| {
        let mut req = String::from("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
        for ch in chunks {
            req += &format!("{:x}\r\n{ch}\r\n", ch.len());
        }
        req + "0\r\n\r\n"
    };
    let r = l.client().raw(&chunked(&["0123456789", "abcdefX"])).unwrap();
    assert_eq!(r.status, 413, "a chunked body over the limit");
    let r = l.client().raw(&chunked(&["0123456789", "abc"])).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.seen("content-length"), vec!["13"], "read whole, sent with its length");
    let big = format!("X-Big: {}", "a".repeat(8000));
    let r = l.client().get("/", &[&big]).unwrap();
    assert_eq!(r.status, 431, "headers over the limit");
    // Pipelined: three requests in one write, three answers in order.
    let mut c = l.client();
    let req = |p: &str, n: u8| format!("GET {p} HTTP/1.1\r\nHost: x\r\nX-Seq: {n}\r\n\r\n");
    let first = c
        .raw(&(req("/a", 1) + &req("/b?status=404", 2) + &req("/c", 3)))
        .unwrap();
    let (second, third) = (c.read_next().unwrap(), c.read_next().unwrap());
    assert_eq!((first.status, second.status, third.status), (200, 404, 200));
    let seq: Vec<&str> = [&first, &second, &third].iter().flat_map(|r| r.seen("x-seq")).collect();
    assert_eq!(seq, vec!["1", "2", "3"], "answers in request order");
    let r = l.client().raw("GARBAGE\r\n\r\n").unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(l.get("/", &[]).status, 200, "and the proxy is still there");
}

/// The client side of HTTP/1: HTTP/1.0 keeps the connection only when
/// asked, `Expect: 100-continue` gets its interim answer, a request with
/// both Transfer-Encoding and Content-Length is read by the first (the
/// backend never sees both) and its connection closed, a stalled head gets
/// 408 after `timeout_http_request` and a silent connection is closed after
/// `timeout_http_keep_alive` (both shorter than `timeout_client` here), a
/// client that leaves in the middle of a body harms nobody.
#[test]
fn http1_client_connections() {
    let l = L7::start(
        "[service.http]\ntimeout_client = \"60s\"\ntimeout_http_request = \"1s\"\ntimeout_http_keep_alive = \"1s\"\n",
        &two(),
        &[],
    );
    let mut c = l.client();
    let r = c.raw("GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert_eq!(c.until_closed().unwrap(), "", "closed after the answer");
    let mut c = l.client();
    let keep = "GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n";
    let r = c.raw(keep).unwrap();
    assert_eq!((r.status, r.header("connection")), (200, Some("keep-alive")));
    assert_eq!(c.raw(keep).unwrap().status, 200, "the same connection again");

    let mut c = l.client();
    c.send("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_next().unwrap().status, 100, "before the body is sent");
    let r = c.raw("hello").unwrap();
    assert_eq!((r.status, r.header("x-request-body")), (200, Some("hello")));
    // Pipelined after a body: the next request starts where the body ends.
    let r = c
        .raw("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(r.header("x-request-body"), Some("hi"));
    assert_eq!(c.read_next().unwrap().status, 200);

    let mut c = l.client();
    let r = c
        .raw("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .unwrap();
    assert_eq!((r.status, r.header("x-request-body")), (200, Some("hello")));
    assert_eq!(r.seen("content-length"), Vec::<&str>::new());
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(c.until_closed().unwrap(), "");

    let mut c = l.client();
    c.send("GET / HTTP/1.1\r\nHo").unwrap();
    assert_eq!(c.read_next().unwrap().status, 408, "a head that stalls");
    let mut c = l.client();
    assert_eq!(c.get("/", &[]).unwrap().status, 200);
    assert_eq!(
        c.until_closed().unwrap(),
        "",
        "idle past the keep-alive timeout: closed, no answer"
    );

    let mut c = l.client();
    c.send("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    drop(c);
    assert_eq!(l.get("/", &[]).status, 200);
}

#[test]
fn runtime_weights_until_the_next_reload() {
    let mut l = L7::start("", &[Be("s1", ""), Be("s2", "")], &[]);
    l.xlb(&["server", "set-weight", "site", "s1", "3"]);
    let mut c = l.client();
    let picks: Vec<String> = (0..8).map(|_| c.get("/", &[]).unwrap().backend().to_string()).collect();
    assert_eq!(picks.iter().filter(|p| *p == "s1").count(), 6, "3:1 {picks:?}");
    l.xlb(&["server", "set-weight", "site", "s2", "0"]);
    let status: serde_json::Value = serde_json::from_str(&l.xlb(&["status", "--json"])).unwrap();
    assert_eq!(status["services"][0]["backends"][0]["weight"], 3);
    assert_eq!(status["services"][0]["backends"][1]["state"], "drain");
    assert!(
        (0..4).all(|_| l.get("/", &[]).backend() == "s1"),
        "weight 0: no new traffic"
    );
    let out = lab::xlb::xlb_once(&l.ns, &["server", "set-weight", "site", "s1", "999"]).unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("weight 999 is not in 0-256"));
    let cfg = l.cfg.clone();
    l.reload(&cfg);
    let spread: std::collections::HashSet<String> = (0..4).map(|_| l.get("/", &[]).backend().to_string()).collect();
    assert_eq!(spread.len(), 2, "the file's weights are back after a reload");
}

#[test]
fn backend_framing_and_connections_the_backend_closes() {
    let l = L7::start("", &[Be("s1", "")], &[]);
    let mut c = l.client();
    let plain = c.get("/", &[]).unwrap();
    assert!(plain.body.starts_with("s1\n"));
    // Chunked (with a chunk extension) and until-close bodies arrive whole.
    for framing in ["chunked", "eof", "chunked"] {
        let r = c.get(&format!("/?{framing}"), &[]).unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, plain.body.as_str()), "{framing}");
    }
    // HEAD: the head only, and the connection carries on.
    let r = c.request("HEAD", "/", &[], "").unwrap();
    assert_eq!(r.header("content-length"), Some(plain.body.len().to_string().as_str()));
    assert_eq!(c.get("/", &[]).unwrap().body, plain.body);
    // Request bodies reach the backend whole: with a length, and chunked
    // (streamed on as chunked).
    let r = c.request("POST", "/", &[], "a=1&b=2").unwrap();
    assert_eq!(r.header("x-request-body"), Some("a=1&b=2"));
    let r = c
        .raw("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7;e=1\r\n, world\r\n0\r\n\r\n")
        .unwrap();
    assert_eq!(r.header("x-request-body"), Some("hello, world"));
    assert_eq!(r.seen("transfer-encoding"), vec!["chunked"]);
    // The backend closes connections it said it would keep: closed ones
    // are not reused, a request that meets one just as it closes goes
    // again on a new one.
    for i in 0..40 {
        let r = c.get("/?drop", &[]).unwrap();
        assert_eq!(r.status, 200);
        if i % 2 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let r = c.get("/", &[]).unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, plain.body.as_str()), "round {i}");
    }
}

#[test]
fn dynamic_cookie_values_hide_the_backends_and_are_the_same_on_every_node() {
    lab::require_root!();
    let with_key = |key: &str| format!("[service.cookie]\nname = \"SRV\"\nindirect = true\ndynamic_key = \"{key}\"\n");
    let backends = [Be("s1", ""), Be("s2", ""), Be("named", "cookie = \"n\"")];
    let values = |key: &str| -> Vec<(String, String)> {
        let l = L7::start(&with_key(key), &backends, &[]);
        let mut seen: Vec<(String, String)> = (0..6)
            .map(|_| {
                let r = l.get("/", &[]);
                (
                    r.backend().to_string(),
                    r.set_cookie("SRV").expect("a cookie for every backend"),
                )
            })
            .collect();
        seen.sort();
        seen.dedup();
        // Each value brings its client back.
        for (backend, value) in &seen {
            for _ in 0..3 {
                assert_eq!(l.get("/", &[&format!("Cookie: SRV={value}")]).backend(), backend);
            }
        }
        seen
    };
    let node_a = values("first-secret-of-16+");
    assert_eq!(node_a.len(), 3, "{node_a:?}");
    for (backend, value) in &node_a {
        if backend == "named" {
            assert_eq!(value, "n", "an explicit value stays");
        } else {
            assert!(
                value.len() == 16 && value.bytes().all(|b| b.is_ascii_hexdigit()),
                "{value}"
            );
            assert!(!value.contains(backend.as_str()));
        }
    }
    assert_eq!(
        values("first-secret-of-16+"),
        node_a,
        "same key, same values (another node)"
    );
    let other = values("other-secret-of-16+");
    let s1 = |v: &[(String, String)]| v.iter().find(|(b, _)| b == "s1").unwrap().1.clone();
    assert_ne!(s1(&other), s1(&node_a), "another key, other values");
}
