//! The stats page (HTML, CSV, basic auth, refresh, admin actions) and
//! `/metrics`, checked against traffic the test itself sent.

use std::net::SocketAddr;

use lab::{
    http::{Client, Response},
    l7::{Be, Spec, L7},
};

const STATS: &str = "[stats]\nuri = \"/stats\"\nauth = \"admin:secret\"\nrefresh = \"5s\"\n";
const COOKIE: &str = "[service.cookie]\nname = \"SERVERID\"\n";
/// base64("admin:secret")
const AUTH: &str = "Authorization: Basic YWRtaW46c2VjcmV0";

fn admin() -> SocketAddr {
    "127.0.0.1:9900".parse().unwrap()
}

fn lab(tail: &str) -> L7 {
    L7::run(&Spec {
        service: COOKIE,
        backends: &[Be("s1", "cookie = \"s1\""), Be("s2", "cookie = \"s2\"")],
        tail,
        ..Spec::default()
    })
}

fn admin_req(l: &L7, method: &str, path: &str, headers: &[&str], body: &str) -> Response {
    Client::connect(&l.ns, admin())
        .unwrap()
        .request(method, path, headers, body)
        .unwrap()
}

/// Traffic with known counts: 4 requests to s1, 2 answered 404 by s2.
fn traffic(l: &L7) {
    for _ in 0..4 {
        assert_eq!(l.get("/", &["Cookie: SERVERID=s1"]).backend(), "s1");
    }
    for _ in 0..2 {
        assert_eq!(l.get("/?status=404", &["Cookie: SERVERID=s2"]).status, 404);
    }
}

#[test]
fn stats_page_needs_auth_and_counts_what_was_sent() {
    let l = lab(STATS);
    traffic(&l);
    let r = admin_req(&l, "GET", "/stats", &[], "");
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Basic")));
    let r = admin_req(&l, "GET", "/stats", &["Authorization: Basic YWRtaW46d3Jvbmc="], "");
    assert_eq!(r.status, 401, "wrong password");
    let r = admin_req(&l, "GET", "/stats", &[AUTH], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("refresh"), Some("5"));
    assert!(
        r.body.contains("<td>s1</td>") && r.body.contains("name=\"action\""),
        "{}",
        r.body
    );

    let csv = admin_req(&l, "GET", "/stats;csv", &[AUTH], "");
    assert!(csv.header("content-type").is_some_and(|v| v.starts_with("text/csv")));
    let rows: Vec<Vec<&str>> = csv.body.lines().map(|l| l.split(',').collect()).collect();
    let head = &rows[0];
    let col = |name: &str| head.iter().position(|h| h.trim_start_matches("# ") == name).unwrap();
    let row = |sv: &str| {
        rows.iter()
            .find(|r| r[1] == sv)
            .unwrap_or_else(|| panic!("{}", csv.body))
    };
    assert_eq!(row("s1")[col("stot")], "4");
    assert_eq!(row("s1")[col("hrsp_2xx")], "4");
    assert_eq!(row("s2")[col("hrsp_4xx")], "2");
    assert_eq!(row("s2")[col("status")], "UP");
    assert_eq!(row("BACKEND")[col("stot")], "6");
    assert_eq!(admin_req(&l, "GET", "/stats?csv", &[AUTH], "").body, csv.body);
}

#[test]
fn admin_actions_redirect_and_take_effect() {
    let l = lab(STATS);
    let form = "Content-Type: application/x-www-form-urlencoded";
    let r = admin_req(&l, "POST", "/stats", &[AUTH, form], "b=site&s=s1&action=drain");
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/stats;st=DONE"));
    for _ in 0..4 {
        assert_eq!(l.get("/", &[]).backend(), "s2", "s1 drained: no new balanced traffic");
    }
    let page = admin_req(&l, "GET", "/stats;st=DONE", &[AUTH], "");
    assert!(page.body.contains("Action processed successfully"));
    assert!(page.body.contains("<tr class=\"drain\">"));
    let r = admin_req(&l, "POST", "/stats", &[form], "b=site&s=s1&action=ready");
    assert_eq!(r.status, 401, "actions need the password too");
    let r = admin_req(&l, "POST", "/stats", &[AUTH, form], "b=site&s=nosuch&action=maint");
    assert_eq!(r.header("location"), Some("/stats;st=PART"));
    let r = admin_req(&l, "POST", "/stats", &[AUTH, form], "b=site&s=s1&action=explode");
    assert_eq!(r.header("location"), Some("/stats;st=ERRP"));

    // Without auth configured the page is open but read-only.
    // One proxy at a time: without root they share this loopback.
    drop(l);
    let l = lab("[stats]\nuri = \"/haproxy\"\n");
    let r = admin_req(&l, "GET", "/haproxy", &[], "");
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("name=\"action\""));
    let r = admin_req(&l, "POST", "/haproxy", &[form], "b=site&s=s1&action=maint");
    assert_eq!(r.status, 403);
    assert_eq!(
        admin_req(&l, "GET", "/stats", &[], "").status,
        404,
        "only the configured uri"
    );
}

#[test]
fn metrics_in_prometheus_format() {
    let l = lab("");
    traffic(&l);
    l.set_state("s2", "maint");
    let r = admin_req(&l, "GET", "/metrics", &[], "");
    assert_eq!(r.status, 200);
    let m = r.body;
    for line in [
        "# TYPE xlb_http_backend_requests_total counter",
        "xlb_http_requests_total{service=\"site\"} 6",
        "xlb_http_backend_requests_total{service=\"site\",backend=\"s1\"} 4",
        "xlb_http_backend_responses_total{service=\"site\",backend=\"s2\",code=\"4xx\"} 2",
        "xlb_backend_state{service=\"site\",backend=\"s2\",state=\"maint\"} 1",
        "xlb_backend_state{service=\"site\",backend=\"s2\",state=\"up\"} 0",
        "xlb_backend_state{service=\"site\",backend=\"s1\",state=\"up\"} 1",
    ] {
        assert!(m.lines().any(|l| l == line), "missing {line:?} in\n{m}");
    }
    // Every sample line is NAME{LABELS} NUMBER, or NAME NUMBER for the
    // proxy-wide ones.
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        let (series, v) = line.rsplit_once(' ').unwrap();
        assert!(v.parse::<u64>().is_ok(), "{line}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.starts_with("xlb_") && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{line}"
        );
        assert!(
            series == name || (series.ends_with('}') && series.len() > name.len() + 2),
            "{line}"
        );
    }
    assert!(m.lines().any(|l| l.starts_with("xlb_http_connections ")), "{m}");
}
