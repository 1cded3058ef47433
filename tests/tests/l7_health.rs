//! HTTP health checks as HAProxy's httpchk, black-box: the request a check
//! sends (method, path, version, Host), the body it expects, and checks of
//! TLS backends over TLS.

use std::time::{Duration, Instant};

use lab::{
    l7::{Spec, L7},
    servers::Server,
    tls::{self, Pki},
};

fn states(l: &L7) -> Vec<(String, String)> {
    let st: serde_json::Value = serde_json::from_str(&l.xlb(&["status", "--json"])).unwrap();
    st["services"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Waits until the backends' states are `want` (name, state).
fn wait_states(l: &L7, want: &[(&str, &str)]) {
    let want: Vec<(String, String)> = want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    let until = Instant::now() + Duration::from_secs(5);
    while states(l) != want {
        assert!(
            Instant::now() < until,
            "states {:?}, want {want:?}\n{}",
            states(l),
            l.xlb.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const FAST: &str = "interval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n";

#[test]
fn httpchk_sends_method_host_and_version_and_expects_a_body() {
    lab::require_root!();
    // The lab servers answer with their name, then the request's headers.
    let service = format!(
        "[service.health]\nkind = \"http\"\nmethod = \"GET\"\npath = \"/health?status=200\"\nversion = \"HTTP/1.1\"\nhost = \"app.test\"\nexpect_body = \"Host: app.test\"\n{FAST}"
    );
    let mut l = L7::run(&Spec {
        service: &service,
        backends: &[lab::l7::Be("s1", ""), lab::l7::Be("s2", "")],
        ..Spec::default()
    });
    wait_states(&l, &[("s1", "up"), ("s2", "up")]);
    // A body only s2's answer has: s1 goes down, and takes no traffic.
    let cfg = l.cfg.replace(
        "expect_body = \"Host: app.test\"",
        "expect_body = \"s2\\nHost: app.test\"",
    );
    l.reload(&cfg);
    wait_states(&l, &[("s1", "down"), ("s2", "up")]);
    for _ in 0..4 {
        assert_eq!(l.get("/", &[]).backend(), "s2");
    }
    assert!(l.xlb.log().contains("does not contain"), "the reason is logged");
    // A status outside `expect` fails too.
    let cfg = l.cfg.replace("status=200", "status=500");
    l.reload(&cfg);
    wait_states(&l, &[("s1", "down"), ("s2", "down")]);
}

#[test]
fn tls_backends_are_checked_over_tls() {
    lab::require_root!();
    let dir = std::env::temp_dir().join(format!("xlb-tests-{}/pki-health", std::process::id()));
    let pki = Pki::new(&dir);
    let stranger = Pki::new(&dir.join("stranger"));
    let good = pki.issue("be.pem", &["be.test"]);
    let bad = stranger.issue("be.pem", &["be.test"]);
    let ca = pki.ca_file();
    let service = format!("[service.health]\nkind = \"http\"\nexpect_body = \"tls-sni\"\n{FAST}");
    let tls_be = format!(
        "tls = true\ntls_verify = {:?}\ntls_sni = \"be.test\"",
        ca.display().to_string()
    );
    let l = L7::run(&Spec {
        service: &service,
        backends: &[lab::l7::Be("trusted", &tls_be), lab::l7::Be("stranger", &tls_be)],
        dead: &["trusted", "stranger"],
        ..Spec::default()
    });
    let _servers = [
        Server::start_tls(
            &l.ns,
            "127.0.0.1:9001".parse().unwrap(),
            "trusted",
            tls::server_config(&good),
        )
        .unwrap(),
        Server::start_tls(
            &l.ns,
            "127.0.0.1:9002".parse().unwrap(),
            "stranger",
            tls::server_config(&bad),
        )
        .unwrap(),
    ];
    wait_states(&l, &[("trusted", "up"), ("stranger", "down")]);
    assert_eq!(l.get("/", &[]).backend(), "trusted");
}
