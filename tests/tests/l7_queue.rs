//! maxconn and the queue, black-box: backends that count the requests they
//! handle at once, many real clients at the same time.

use std::{
    thread,
    time::{Duration, Instant},
};

use lab::{
    http::get,
    l7::{vip, Be, L7},
};

fn status(l: &L7) -> serde_json::Value {
    serde_json::from_str(&l.xlb(&["status", "--json"])).unwrap()
}

/// `n` clients at once, each with `headers`; their statuses and backends.
fn burst(l: &L7, n: usize, path: &str, headers: &[&str]) -> Vec<(u16, String)> {
    thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    let r = get(&l.ns, vip(), path, headers).unwrap();
                    (r.status, r.backend().to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn a_backend_never_takes_more_than_maxconn_and_the_others_wait_their_turn() {
    lab::require_root!();
    let l = L7::start("", &[Be("s1", "maxconn = 2")], &[]);
    let results = burst(&l, 10, "/?sleep=300", &[]);
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    assert_eq!(l.servers[0].peak(), 2, "at most maxconn at once, and that many");
    let http = &status(&l)["services"][0]["http"];
    assert!(http["queued_max"].as_u64().unwrap() >= 6, "{http}");
    assert!(http["queued_total"].as_u64().unwrap() >= 8, "{http}");
    assert!(http["queue_wait_ms_avg"].as_u64().unwrap() >= 100, "{http}");
    assert_eq!(http["queued"], 0);
    assert_eq!(http["queue_timeouts"], 0);
    let backend = &status(&l)["services"][0]["backends"][0];
    assert_eq!(backend["http"]["busy"], 0, "every place given back: {backend}");
}

#[test]
fn a_request_that_waits_longer_than_timeout_queue_gets_503() {
    lab::require_root!();
    let l = L7::start(
        "[service.http]\ntimeout_queue = \"200ms\"\n",
        &[Be("s1", "maxconn = 1")],
        &[],
    );
    let started = Instant::now();
    let mut results = burst(&l, 3, "/?sleep=1500", &[]);
    results.sort();
    assert_eq!(
        results.iter().map(|r| r.0).collect::<Vec<_>>(),
        [200, 503, 503],
        "{results:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(l.servers[0].peak(), 1);
    assert_eq!(status(&l)["services"][0]["http"]["queue_timeouts"], 2);
}

#[test]
fn persistence_wins_over_the_queue_when_its_server_has_room() {
    lab::require_root!();
    let cookie = "[service.cookie]\nname = \"SERVERID\"\nindirect = true\n";
    let l = L7::start(
        cookie,
        &[
            Be("s1", "cookie = \"s1\"\nmaxconn = 1"),
            Be("s2", "cookie = \"s2\"\nmaxconn = 1"),
        ],
        &[],
    );
    thread::scope(|s| {
        // s2 busy, and a second client of s2 waiting for it.
        let long = s.spawn(|| get(&l.ns, vip(), "/?sleep=2000", &["Cookie: SERVERID=s2"]).unwrap());
        thread::sleep(Duration::from_millis(200));
        let waiting = s.spawn(|| get(&l.ns, vip(), "/", &["Cookie: SERVERID=s2"]).unwrap());
        let until = Instant::now() + Duration::from_secs(2);
        while status(&l)["services"][0]["http"]["queued"] != 1 {
            assert!(Instant::now() < until, "the second s2 client waits");
            thread::sleep(Duration::from_millis(20));
        }
        // A client of s1 goes straight to it; a new client goes to the
        // server with room, not into the queue.
        let r = get(&l.ns, vip(), "/", &["Cookie: SERVERID=s1"]).unwrap();
        assert_eq!((r.status, r.backend()), (200, "s1"));
        let r = get(&l.ns, vip(), "/", &[]).unwrap();
        assert_eq!((r.status, r.backend()), (200, "s1"));
        assert_eq!(
            status(&l)["services"][0]["http"]["queued"],
            1,
            "the s2 client still waits"
        );
        assert_eq!(long.join().unwrap().backend(), "s2");
        let w = waiting.join().unwrap();
        assert_eq!((w.status, w.backend()), (200, "s2"), "then it gets its own server");
    });
    assert_eq!(l.servers[1].peak(), 1);
}
