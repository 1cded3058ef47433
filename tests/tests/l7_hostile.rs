//! Hostile HTTP/1 through the real proxy: each vector is sent on a fresh
//! client connection to xlb, whose backend is a raw socket that records
//! every byte it gets. A vector names the status the client must get and
//! what the backend must and must not see, so smuggling classes (a second
//! request hidden in a body, a header the backend would read differently)
//! fail here if they get through.

use std::{thread, time::Duration};

use lab::{
    http::Client,
    l7::{vip, Be, Spec, L7},
    servers::RawBackend,
};

/// A request vector: what the client sends and what must come of it.
struct Req {
    name: &'static str,
    send: &'static str,
    status: u16,
    /// Pieces the backend must receive (lowercase compared).
    sees: &'static [&'static str],
    /// Pieces it must not receive; `NOTHING` for nothing at all.
    not: &'static [&'static str],
}

/// The backend gets no byte of the request.
const NOTHING: &[&str] = &[""];

const H: &str = "Host: xlb.test\r\n";

fn lab() -> (L7, RawBackend) {
    let l = L7::run(&Spec {
        service: "[service.http]\ntimeout_client = \"3s\"\n",
        backends: &[Be("raw", "")],
        dead: &["raw"],
        ..Spec::default()
    });
    let addr = "127.0.0.1:9001".parse().unwrap();
    let b = RawBackend::start(&l.ns, addr).unwrap();
    (l, b)
}

fn check_requests(l: &L7, backend: &RawBackend, vectors: &[Req]) {
    let mut failures = Vec::new();
    for v in vectors {
        backend.take();
        let send = v.send.replace("{H}", H);
        let got = Client::connect(&l.ns, vip()).and_then(|mut c| c.raw(&send));
        // Let anything forwarded late arrive.
        thread::sleep(Duration::from_millis(if v.status == 200 { 10 } else { 150 }));
        let seen = String::from_utf8_lossy(&backend.take()).to_ascii_lowercase();
        let status = got.as_ref().map_or(0, |r| r.status);
        let mut why = Vec::new();
        if status != v.status {
            why.push(format!("status {status}, wanted {}", v.status));
        }
        for s in v.sees {
            if !seen.contains(&s.to_ascii_lowercase()) {
                why.push(format!("backend did not see {s:?}"));
            }
        }
        if v.not == NOTHING {
            if !seen.is_empty() {
                why.push("backend saw the request".into());
            }
        } else {
            for s in v.not {
                if seen.contains(&s.to_ascii_lowercase()) {
                    why.push(format!("backend saw {s:?}"));
                }
            }
        }
        if !why.is_empty() {
            failures.push(format!("{}: {}\n    backend got {seen:?}", v.name, why.join("; ")));
        }
    }
    all_passed(l, &failures, vectors.len());
}

/// Fails with every vector that failed, and xlb's log.
fn all_passed(l: &L7, failures: &[String], total: usize) {
    assert!(
        failures.is_empty(),
        "{} of {total} vectors failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        l.xlb.log()
    );
}

#[test]
fn request_framing_vectors() {
    let (l, b) = lab();
    let v = |name, send, status, sees, not| Req {
        name,
        send,
        status,
        sees,
        not,
    };
    let post_te = |coding: &'static str| -> &'static str {
        Box::leak(
            format!("POST / HTTP/1.1\r\n{H}Transfer-Encoding: {coding}\r\n\r\n3\r\nabc\r\n0\r\n\r\n").into_boxed_str(),
        )
    };
    let post_cl = |value: &'static str| -> &'static str {
        Box::leak(format!("POST / HTTP/1.1\r\n{H}Content-Length: {value}\r\n\r\nabc").into_boxed_str())
    };
    let vectors = [
        // Content-Length.
        v("cl plain", post_cl("3"), 200, &["content-length: 3\r\n", "\r\n\r\nabc"], &[]),
        v("cl equal list", post_cl("3, 3"), 200, &["content-length: 3\r\n"], &["3, 3"]),
        v(
            "cl equal duplicates",
            "POST / HTTP/1.1\r\n{H}Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            200,
            &["content-length: 3\r\n"],
            &["content-length: 3\r\ncontent-length"],
        ),
        v("cl sign", post_cl("+3"), 400, &[], NOTHING),
        v("cl negative", post_cl("-1"), 400, &[], NOTHING),
        v("cl hex", post_cl("0x3"), 400, &[], NOTHING),
        v("cl inner space", post_cl("1 2"), 400, &[], NOTHING),
        v("cl empty", post_cl(""), 400, &[], NOTHING),
        v("cl trailing junk", post_cl("3abc"), 400, &[], NOTHING),
        v("cl differing list", post_cl("3, 4"), 400, &[], NOTHING),
        v("cl overflow", post_cl("184467440737095516160"), 400, &[], NOTHING),
        v(
            "cl differing duplicates",
            "POST / HTTP/1.1\r\n{H}Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
            &[],
            NOTHING,
        ),
        // Transfer-Encoding.
        v("te chunked", post_te("chunked"), 200, &["transfer-encoding: chunked", "abc"], &[]),
        v("te case", post_te("Chunked"), 200, &["abc"], &[]),
        v("te gzip chunked", post_te("gzip, chunked"), 501, &[], NOTHING),
        v("te chunked gzip", post_te("chunked, gzip"), 400, &[], NOTHING),
        v("te twice in one", post_te("chunked, chunked"), 400, &[], NOTHING),
        v("te identity", post_te("identity"), 501, &[], NOTHING),
        v("te unknown", post_te("xchunked"), 501, &[], NOTHING),
        v("te parameter", post_te("chunked;q=1"), 400, &[], NOTHING),
        v("te quoted", post_te("\"chunked\""), 400, &[], NOTHING),
        v("te vertical tab", post_te("\x0bchunked"), 400, &[], NOTHING),
        v(
            "te twice across headers",
            "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            400,
            &[],
            NOTHING,
        ),
        v(
            "te space before colon",
            "POST / HTTP/1.1\r\n{H}Transfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            400,
            &[],
            NOTHING,
        ),
        v(
            "te with cl: te frames, cl removed",
            "POST / HTTP/1.1\r\n{H}Content-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            200,
            &["transfer-encoding: chunked", "abc"],
            &["content-length"],
        ),
        v(
            "te on http/1.0",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            200,
            &["abc"],
            &[],
        ),
        // Chunked bodies: a request hidden behind bad framing never reaches
        // the backend.
        v(
            "chunk size not hex",
            "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\nzz\r\nGET /smuggled HTTP/1.1\r\n\r\n0\r\n\r\n",
            400,
            &[],
            &["/smuggled"],
        ),
        v(
            "chunk size signed",
            "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n+3\r\nabc\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
            400,
            &[],
            &["/smuggled"],
        ),
        v(
            "chunk size 0x",
            "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
            400,
            &[],
            &["abc"],
        ),
        v(
            "chunk size overflow",
            "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n10000000000000003\r\nabc\r\n0\r\n\r\n",
            400,
            &[],
            &["abc"],
        ),
        v(
            "chunk bare lf after size",
            "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
            400,
            &[],
            &["abc"],
        ),
        v(
            "chunk bare lf after data",
            "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
            400,
            &[],
            &["/smuggled"],
        ),
        v(
            "chunk data longer than size",
            "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n3\r\nabcGET /smuggled HTTP/1.1\r\n\r\n0\r\n\r\n",
            400,
            &[],
            &["/smuggled"],
        ),
        v(
            "chunk bad extension",
            "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n3;a=\"x\r\nabc\r\n0\r\n\r\n",
            400,
            &[],
            &["abc"],
        ),
        v(
            "chunk extensions and trailers",
            "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n3;a=b;c=\"d e\"\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n",
            200,
            &["abc"],
            &["x-trailer", "a=b"],
        ),
        v(
            "chunk trailer folded",
            "POST / HTTP/1.1\r\n{H}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: a\r\n b\r\n\r\n",
            400,
            &[],
            &[],
        ),
    ];
    check_requests(&l, &b, &vectors);
}

#[test]
fn request_head_vectors() {
    let (l, b) = lab();
    let v = |name, send, status, sees, not| Req {
        name,
        send,
        status,
        sees,
        not,
    };
    let vectors = [
        v("plain", "GET /p?q=1 HTTP/1.1\r\n{H}\r\n", 200, &["GET /p?q=1 HTTP/1.1\r\n"], &[]),
        // Header lines.
        v("space before colon", "GET / HTTP/1.1\r\n{H}X-A : 1\r\n\r\n", 400, &[], NOTHING),
        v("tab before colon", "GET / HTTP/1.1\r\n{H}X-A\t: 1\r\n\r\n", 400, &[], NOTHING),
        v("obs-fold", "GET / HTTP/1.1\r\n{H}X-A: 1\r\n 2\r\n\r\n", 400, &[], NOTHING),
        v("first header indented", "GET / HTTP/1.1\r\n X-A: 1\r\n{H}\r\n", 400, &[], NOTHING),
        v("empty name", "GET / HTTP/1.1\r\n{H}: 1\r\n\r\n", 400, &[], NOTHING),
        v("no colon", "GET / HTTP/1.1\r\n{H}X-A 1\r\n\r\n", 400, &[], NOTHING),
        v("name not a token", "GET / HTTP/1.1\r\n{H}X(A): 1\r\n\r\n", 400, &[], NOTHING),
        v("nul in value", "GET / HTTP/1.1\r\n{H}X-A: 1\x002\r\n\r\n", 400, &[], NOTHING),
        v("cr in value", "GET / HTTP/1.1\r\n{H}X-A: 1\r2\r\n\r\n", 400, &[], NOTHING),
        v("del in value", "GET / HTTP/1.1\r\n{H}X-A: 1\x7f\r\n\r\n", 400, &[], NOTHING),
        v("bare lf lines", "GET / HTTP/1.1\n{H}\n", 400, &[], NOTHING),
        v("bare lf end", "GET / HTTP/1.1\r\n{H}\n", 400, &[], NOTHING),
        // Request line.
        v("version 1.2", "GET / HTTP/1.2\r\n{H}\r\n", 505, &[], NOTHING),
        v("version 2.0", "GET / HTTP/2.0\r\n{H}\r\n", 505, &[], NOTHING),
        v("version 0.9 line", "GET /\r\n\r\n", 400, &[], NOTHING),
        v("version lowercase", "GET / http/1.1\r\n{H}\r\n", 400, &[], NOTHING),
        v("version junk", "GET / HTTP/1.1x\r\n{H}\r\n", 400, &[], NOTHING),
        v("double space", "GET  / HTTP/1.1\r\n{H}\r\n", 400, &[], NOTHING),
        v("tab separator", "GET\t/ HTTP/1.1\r\n{H}\r\n", 400, &[], NOTHING),
        v("control in target", "GET /a\x01b HTTP/1.1\r\n{H}\r\n", 400, &[], NOTHING),
        v("utf-8 in target", "GET /\u{e9} HTTP/1.1\r\n{H}\r\n", 400, &[], NOTHING),
        v("fragment in target", "GET /a#b HTTP/1.1\r\n{H}\r\n", 400, &[], NOTHING),
        v("method not a token", "G(T / HTTP/1.1\r\n{H}\r\n", 400, &[], NOTHING),
        v("relative target", "GET a/b HTTP/1.1\r\n{H}\r\n", 400, &[], NOTHING),
        v("asterisk for GET", "GET * HTTP/1.1\r\n{H}\r\n", 400, &[], NOTHING),
        v("connect", "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n", 501, &[], NOTHING),
        v("unknown expectation", "GET / HTTP/1.1\r\n{H}Expect: magic\r\n\r\n", 417, &[], NOTHING),
        // Host.
        v("no host on 1.1", "GET / HTTP/1.1\r\n\r\n", 400, &[], NOTHING),
        v("two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, &[], NOTHING),
        v("two equal hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, &[], NOTHING),
        v("host with space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, &[], NOTHING),
        v("host with userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400, &[], NOTHING),
        v("host on 1.0 optional", "GET / HTTP/1.0\r\n\r\n", 200, &["GET / HTTP/1.1\r\n"], &[]),
        v(
            "absolute form",
            "GET http://other.test:81/p?q HTTP/1.1\r\nHost: xlb.test\r\n\r\n",
            200,
            &["GET /p?q HTTP/1.1\r\n", "host: other.test:81\r\n"],
            &["xlb.test", "http://"],
        ),
        v(
            "absolute form with userinfo",
            "GET http://u:p@other.test/ HTTP/1.1\r\n{H}\r\n",
            400,
            &[],
            NOTHING,
        ),
        // Hop-by-hop headers never reach the backend.
        v(
            "connection names headers",
            "GET / HTTP/1.1\r\n{H}Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nX-Kept: 2\r\n\r\n",
            200,
            &["x-kept: 2"],
            &["x-secret", "connection: keep-alive"],
        ),
        v(
            "connection cannot drop host",
            "GET / HTTP/1.1\r\n{H}Connection: Host\r\n\r\n",
            200,
            &["host: xlb.test"],
            &[],
        ),
        v(
            "h2c upgrade",
            "GET / HTTP/1.1\r\n{H}Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
            200,
            &[],
            &["upgrade", "http2-settings", "h2c"],
        ),
        v(
            "fixed hop-by-hop list",
            "GET / HTTP/1.1\r\n{H}Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X\r\n\r\n",
            200,
            &[],
            &["keep-alive", "proxy-connection", "te: trailers", "trailer:"],
        ),
    ];
    check_requests(&l, &b, &vectors);
}

/// A response vector: what the backend answers a plain GET with.
struct Resp {
    name: &'static str,
    answer: &'static str,
    status: u16,
    /// Header lines (lowercase `name: value`) the client must get once.
    once: &'static [&'static str],
    /// Pieces the client's answer must not contain (lowercase compared).
    not: &'static [&'static str],
    body: &'static str,
}

#[test]
fn response_vectors() {
    let (l, b) = lab();
    let r = |name, answer, status, once, not, body| Resp {
        name,
        answer,
        status,
        once,
        not,
        body,
    };
    let bad = |name, answer| r(name, answer, 502, &[], &[], "bad gateway\n");
    let vectors = [
        r("plain", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, &["content-length: 2"], &[], "ok"),
        r(
            "equal length list",
            "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
            200,
            &["content-length: 2"],
            &["2, 2"],
            "ok",
        ),
        r(
            "chunked is re-framed",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\nX-T: 1\r\n\r\n",
            200,
            &[],
            &["x=y", "x-t"],
            "ok",
        ),
        r(
            "until close is re-framed",
            "HTTP/1.0 200 OK\r\n\r\nok",
            200,
            &[],
            &[],
            "ok",
        ),
        r(
            "connection names headers",
            "HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: 1\r\nContent-Length: 2\r\n\r\nok",
            200,
            &[],
            &["x-internal"],
            "ok",
        ),
        r(
            "hop-by-hop list",
            "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=9\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nContent-Length: 2\r\n\r\nok",
            200,
            &[],
            &["timeout=9", "upgrade", "proxy-connection"],
            "ok",
        ),
        bad("length signed", "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok"),
        bad("length hex", "HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok"),
        bad("length empty", "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\nok"),
        bad("lengths differ", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!"),
        bad("length list differs", "HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok!"),
        bad(
            "te with cl",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        bad("te not chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok"),
        bad(
            "te chunked twice",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        bad("space before colon", "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok"),
        bad("obs-fold", "HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 2\r\n\r\nok"),
        bad("bare lf", "HTTP/1.1 200 OK\nContent-Length: 2\n\nok"),
        bad("nul in value", "HTTP/1.1 200 OK\r\nX-A: 1\x002\r\nContent-Length: 2\r\n\r\nok"),
        bad("status out of range", "HTTP/1.1 700 Odd\r\nContent-Length: 2\r\n\r\nok"),
        bad("status short", "HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok"),
        bad("version 2", "HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        bad("not http", "SSH-2.0-OpenSSH\r\n\r\n"),
        bad(
            "chunk size not hex",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
        ),
        bad(
            "chunk bare lf",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n",
        ),
    ];
    let mut failures = Vec::new();
    for v in &vectors {
        // The backend closes after each answer: a bad one leaves nothing
        // behind for the next vector.
        b.answer(v.answer.as_bytes(), true);
        let got = Client::connect(&l.ns, vip()).and_then(|mut c| c.raw("GET / HTTP/1.1\r\nHost: xlb.test\r\n\r\n"));
        let mut why = Vec::new();
        match got {
            Err(e) => why.push(format!("no answer: {e}")),
            Ok(resp) => {
                if resp.status != v.status {
                    why.push(format!("status {}, wanted {}", resp.status, v.status));
                }
                if resp.body != v.body {
                    why.push(format!("body {:?}, wanted {:?}", resp.body, v.body));
                }
                let lines: Vec<String> = resp
                    .headers
                    .iter()
                    .map(|(k, val)| format!("{}: {}", k.to_ascii_lowercase(), val.to_ascii_lowercase()))
                    .collect();
                for once in v.once {
                    let n = lines.iter().filter(|l| l == once).count();
                    if n != 1 {
                        why.push(format!("{once:?} {n} times"));
                    }
                }
                let names: Vec<&str> = resp.headers.iter().map(|(k, _)| k.as_str()).collect();
                let framings = names
                    .iter()
                    .filter(|k| k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding"))
                    .count();
                if framings != 1 {
                    why.push(format!("{framings} framing headers"));
                }
                for n in v.not {
                    if lines.iter().any(|l| l.contains(n)) || resp.body.to_ascii_lowercase().contains(n) {
                        why.push(format!("client saw {n:?}"));
                    }
                }
            }
        }
        b.take();
        if !why.is_empty() {
            failures.push(format!("{}: {}", v.name, why.join("; ")));
        }
    }
    all_passed(&l, &failures, vectors.len());
}

/// Reads what comes until the other side closes or `limit` passes; the
/// byte count, and whether it closed.
fn drain(s: &mut std::net::TcpStream, limit: Duration) -> (usize, bool) {
    use std::io::Read;
    let until = std::time::Instant::now() + limit;
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut n = 0;
    while std::time::Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) => return (n, true),
            Ok(k) => n += k,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (n, true),
        }
    }
    (n, false)
}

fn connect(l: &L7) -> std::net::TcpStream {
    l.ns.enter(|| std::net::TcpStream::connect_timeout(&vip(), Duration::from_secs(2)))
        .unwrap()
        .unwrap()
}

#[test]
fn slow_and_greedy_clients() {
    use std::io::Write;
    let l = L7::run(&Spec {
        global: "maxconn = 3\n",
        service: "[service.http]\ntimeout_client = \"1s\"\ntimeout_http_request = \"1s\"\nmax_header_bytes = 8192\n",
        backends: &[Be("raw", "")],
        dead: &["raw"],
        ..Spec::default()
    });
    let backend = RawBackend::start(&l.ns, "127.0.0.1:9001".parse().unwrap()).unwrap();

    // A head trickled a byte at a time: 408 once timeout_http_request
    // has passed since its first byte, whatever keeps arriving.
    let mut s = connect(&l);
    let head = b"GET / HTTP/1.1\r\nHost: xlb.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut answer = Vec::new();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    for b in head {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        if let Ok(n @ 1..) = std::io::Read::read(&mut s, &mut buf) {
            answer.extend_from_slice(&buf[..n]);
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "trickled head: {answer:?}");
    assert!(backend.take().is_empty(), "nothing reached the backend");

    // HTTP/2 (h2c, prior knowledge) is held to the same limit: a
    // connection that sends no request, only PINGs, is closed (GOAWAY,
    // then the end) once timeout_http_request has passed.
    let mut h2 = connect(&l);
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let started = std::time::Instant::now();
    let mut closed = false;
    while !closed && started.elapsed() < Duration::from_secs(5) {
        closed =
            h2.write_all(b"\0\0\x08\x06\0\0\0\0\0pingping").is_err() || drain(&mut h2, Duration::from_millis(300)).1;
    }
    assert!(closed, "an idle h2 connection that only pings is closed");
    drop(h2);

    // A flood of headers: 431, whether by count or by size.
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big = format!("X-Big: {}\r\n", "b".repeat(9000));
    for flood in [many, big] {
        let r = Client::connect(&l.ns, vip())
            .unwrap()
            .raw(&format!("GET / HTTP/1.1\r\nHost: xlb.test\r\n{flood}\r\n"))
            .unwrap();
        assert_eq!(r.status, 431);
    }
    assert!(backend.take().is_empty());

    // A client that never reads a large answer is closed at
    // timeout_client: it gets less than the body and then the end.
    // Larger than the socket buffers on the way can hold.
    let body = vec![b'z'; 32 << 20];
    let mut big_answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    big_answer.extend_from_slice(&body);
    backend.answer(&big_answer, false);
    let mut s = connect(&l);
    s.set_nodelay(true).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: xlb.test\r\n\r\n").unwrap();
    thread::sleep(Duration::from_secs(3));
    let (got, closed) = drain(&mut s, Duration::from_secs(10));
    assert!(
        closed,
        "xlb closed the connection of a client that does not read (got {got})"
    );
    assert!(got < body.len(), "the client got {got} bytes of {}", body.len());
    backend.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false);

    // maxconn = 3: a fourth connection waits, unanswered, until one of
    // the first three closes.
    let mut open: Vec<Client> = (0..3).map(|_| Client::connect(&l.ns, vip()).unwrap()).collect();
    for c in &mut open {
        assert_eq!(c.get("/", &[]).unwrap().status, 200);
    }
    let mut fourth = connect(&l);
    fourth.write_all(b"GET / HTTP/1.1\r\nHost: xlb.test\r\n\r\n").unwrap();
    let (n, _) = drain(&mut fourth, Duration::from_millis(800));
    assert_eq!(n, 0, "the fourth connection is not served at maxconn");
    let status = l.xlb(&["status"]);
    assert!(status.contains("http connections: 3 of maxconn 3"), "{status}");
    let metrics = lab::http::get(&l.ns, "127.0.0.1:9900".parse().unwrap(), "/metrics", &[]).unwrap();
    assert!(metrics.body.contains("xlb_http_maxconn 3\n"), "{}", metrics.body);
    assert!(!metrics.body.contains("xlb_http_maxconn_reached_total 0\n"));
    drop(open.pop());
    fourth.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut fourth, &mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200 "),
        "served once a slot freed: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}
