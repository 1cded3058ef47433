//! Access logs as HAProxy operators read them, black-box: syslog sinks
//! (UDP and a unix socket) made by the test receive the lines; each field
//! of an httplog line is checked against the request that made it, the
//! lines are read by HAProxy's own `halog`, JSON and RFC 5424 framing,
//! `dontlognull`, the daemon's messages, and a sink that stops reading.

use std::{
    net::{SocketAddr, TcpStream, UdpSocket},
    os::unix::net::UnixDatagram,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use lab::{
    http::{get, Client},
    l7::{vip, Be, Spec, L7},
};

/// Datagrams a sink received, as text.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<String>>>);

impl Received {
    fn collect(&self, recv: impl Fn(&mut [u8]) -> std::io::Result<usize> + Send + 'static) {
        let got = self.0.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = recv(&mut buf) {
                got.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits for a line containing `needle`.
    fn wait(&self, needle: &str) -> String {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(l) = self.all().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            assert!(Instant::now() < until, "no line with {needle:?} in {:#?}", self.all());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn udp_sink(l: &L7, port: u16) -> Received {
    let sock = l.ns.enter(|| UdpSocket::bind(("127.0.0.1", port))).unwrap().unwrap();
    let r = Received::default();
    r.collect(move |b| sock.recv(b));
    r
}

fn unix_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("xlb-log-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// One httplog line, field by field.
#[derive(Debug)]
struct HttpLog {
    pri: u32,
    pid: u32,
    client: SocketAddr,
    date: String,
    frontend: String,
    backend: String,
    server: String,
    timers: [i64; 5],
    /// -1: the client got no answer.
    status: i32,
    bytes: u64,
    cookies: (String, String),
    term: String,
    conns: Vec<String>,
    queue: String,
    request: String,
}

fn parse(line: &str) -> HttpLog {
    let re = regex::Regex::new(
        r#"^<(\d+)>[A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d xlb\[(\d+)\]: (\S+) \[(\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d\.\d{3})\] (\S+) (\S+)/(\S+) (-?\d+)/(-?\d+)/(-?\d+)/(-?\d+)/(\d+) (-1|\d{3}) (\d+) (\S+) (\S+) (\S{4}) (\d+/\d+/\d+/\d+/\+?\d+) (\d+/\d+) "(.*)"\n?$"#,
    )
    .unwrap();
    let c = re
        .captures(line)
        .unwrap_or_else(|| panic!("not an httplog line: {line:?}"));
    let s = |i: usize| c[i].to_string();
    let n = |i: usize| c[i].parse::<i64>().unwrap();
    HttpLog {
        pri: n(1) as u32,
        pid: n(2) as u32,
        client: s(3).parse().unwrap(),
        date: s(4),
        frontend: s(5),
        backend: s(6),
        server: s(7),
        timers: [n(8), n(9), n(10), n(11), n(12)],
        status: n(13) as i32,
        bytes: n(14) as u64,
        cookies: (s(15), s(16)),
        term: s(17),
        conns: s(18).split('/').map(str::to_string).collect(),
        queue: s(19),
        request: s(20),
    }
}

/// `01/Dec/2026:08:03:16.782` of now, to the minute (a line's date falls
/// within the test's minute or the next).
fn minute(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as libc::time_t;
    // SAFETY: localtime_r fills the zeroed tm from a valid time_t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&secs, &mut tm) };
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{:02}/{}/{}:{:02}:{:02}",
        tm.tm_mday,
        months[tm.tm_mon as usize],
        tm.tm_year + 1900,
        tm.tm_hour,
        tm.tm_min
    )
}

/// A keep-alive client and its own address (what the line must name).
fn client(l: &L7) -> (Client, SocketAddr) {
    let s = l.ns.enter(|| TcpStream::connect(vip())).unwrap().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = s.local_addr().unwrap();
    (Client::over(s), me)
}

const HEALTH: &str =
    "[service.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nrise = 1\nfall = 1\n";

#[test]
fn httplog_lines_reach_udp_and_unix_syslog_field_for_field() {
    lab::require_root!();
    let path = unix_path("a");
    let unix = UnixDatagram::bind(&path).unwrap();
    let from_unix = Received::default();
    from_unix.collect(move |b| unix.recv(b));
    let global = format!(
        "log = [\"udp://127.0.0.1:5514\", \"unix://{}\"]\nlog_facility = \"local2\"\n",
        path.display()
    );
    let service = format!(
        "[service.cookie]\nname = \"SRV\"\nmode = \"insert\"\n[service.log]\ncapture_cookie = \"SRV\"\n{HEALTH}"
    );
    let mut l = L7::run(&Spec {
        global: &global,
        service: &service,
        backends: &[
            Be("s1", "cookie = \"s1\""),
            Be("s2", "cookie = \"s2\""),
            Be("s3", "cookie = \"s3\""),
        ],
        dead: &["s3"],
        ..Spec::default()
    });
    let from_udp = udp_sink(&l, 5514);
    // The daemon's own message, at HAProxy's severity: local2.alert.
    let down = from_unix.wait("backend s3 of service site is DOWN");
    assert!(down.starts_with("<145>"), "{down}");
    let began = SystemTime::now();

    // A new client, a slow answer: a cookie inserted, the timers add up.
    let (mut c, me) = client(&l);
    let r = c.get("/first?sleep=150", &[]).unwrap();
    assert_eq!(r.status, 200);
    let server = r.backend().to_string();
    let line = from_udp.wait("/first?sleep=150");
    let f = parse(&line);
    assert_eq!(f.pri, 18 * 8 + 6, "local2.info");
    assert_eq!(f.pid, l.xlb.pid());
    assert_eq!(f.client, me);
    assert!(
        f.date.starts_with(&minute(began)) || f.date.starts_with(&minute(SystemTime::now())),
        "{} at {}",
        f.date,
        minute(began)
    );
    assert_eq!((f.frontend.as_str(), f.backend.as_str()), ("site", "site"));
    assert_eq!(f.server, server);
    let [tr, tw, tc, tres, ta] = f.timers;
    assert!(tr >= 0 && tw == 0 && tc >= 0, "{:?}", f.timers);
    assert!(
        (150..2000).contains(&tres),
        "Tr counts the backend's 150 ms: {:?}",
        f.timers
    );
    assert!(ta >= tr + tw + tc + tres, "Ta covers the others: {:?}", f.timers);
    assert_eq!(f.status, 200);
    assert!(
        f.bytes > r.body.len() as u64,
        "headers and body: {} vs body {}",
        f.bytes,
        r.body.len()
    );
    // The response's cookie is the server's (none), not the one inserted.
    assert_eq!(f.cookies, ("-".into(), "-".into()), "captured cookies");
    assert_eq!(f.term, "--NI", "no cookie, one inserted");
    // Connections open on the process and the service; at the service's
    // servers, none but this one, which its own line leaves out.
    assert!(
        f.conns[..2].iter().all(|n| n.parse::<u64>().unwrap() >= 1),
        "{:?}",
        f.conns
    );
    assert_eq!(f.conns[2..4], ["0", "0"], "{:?}", f.conns);
    assert_eq!(f.conns[4], "0", "no retries");
    assert_eq!(f.queue, "0/0");
    assert_eq!(f.request, "GET /first?sleep=150 HTTP/1.1");
    // Both sinks carry the same line.
    assert_eq!(from_unix.wait("/first?sleep=150"), line);

    // Back with the cookie: valid, nothing set.
    let r = c.get("/again", &[&format!("Cookie: SRV={server}")]).unwrap();
    assert_eq!(r.backend(), server);
    let f = parse(&from_udp.wait("GET /again "));
    assert_eq!(f.term, "--VN");
    assert_eq!(f.cookies.0, format!("SRV={server}"));
    assert_eq!(f.client, me, "the same connection");
    // A cookie the application sets itself is the one captured.
    c.get("/own?cookie=SRV:app", &[&format!("Cookie: SRV={server}")])
        .unwrap();
    assert_eq!(parse(&from_udp.wait("GET /own?")).cookies.1, "SRV=app");
    // A cookie for no server: invalid, a new one inserted.
    c.get("/bogus", &["Cookie: SRV=nobody"]).unwrap();
    assert_eq!(parse(&from_udp.wait("GET /bogus ")).term, "--II");
    // The bytes are those the client received, head included.
    {
        use std::io::{Read, Write};
        let mut s = l.ns.enter(|| TcpStream::connect(vip())).unwrap().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /exact?chunked HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let f = parse(&from_udp.wait("GET /exact?chunked "));
        assert_eq!(f.bytes, got.len() as u64, "{}", String::from_utf8_lossy(&got));
    }
    // A quote in the target is encoded as HAProxy does.
    c.get("/q%22?a=%22", &[]).unwrap();
    from_udp.wait("GET /q%22?a=%22 HTTP/1.1");

    // A malformed request, and a connection that sends nothing: no
    // server, HAProxy's flags.
    let (mut bad, bad_me) = client(&l);
    let _ = bad.raw("GET /x HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n");
    let f = parse(&from_udp.wait(&format!("{bad_me} ")));
    assert_eq!(
        (f.status, f.term.as_str(), f.server.as_str(), f.request.as_str()),
        (400, "PR--", "<NOSRV>", "<BADREQ>")
    );
    assert_eq!(f.timers[..4], [-1, -1, -1, -1]);
    let (null, null_me) = client(&l);
    drop(null);
    let f = parse(&from_udp.wait(&format!("{null_me} ")));
    assert_eq!((f.status, f.term.as_str()), (400, "CR--"), "a null connection");

    // No server at all.
    l.set_state("s1", "maint");
    l.set_state("s2", "maint");
    let r = get(&l.ns, vip(), "/none", &[]).unwrap();
    assert_eq!(r.status, 503);
    let f = parse(&from_udp.wait("GET /none "));
    assert_eq!((f.server.as_str(), f.term.as_str()), ("<NOSRV>", "SCNN"));

    // HAProxy's own log analyser reads the lines (as rsyslog writes them
    // to a file: the host after the date).
    let file = std::env::temp_dir().join(format!("xlb-log-{}-halog.log", std::process::id()));
    let text: String = from_udp
        .all()
        .iter()
        .filter(|l| l.contains(" ["))
        .map(|l| {
            let l = &l[l.find('>').unwrap() + 1..];
            format!("{} localhost{}", &l[..15], &l[15..])
        })
        .collect();
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new("halog")
        .arg("-st")
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("halog (Debian's haproxy)");
    let by_status = String::from_utf8_lossy(&out.stdout);
    for want in ["200 6", "400 2", "503 1"] {
        assert!(by_status.lines().any(|l| l == want), "halog -st: {by_status}\n{text}");
    }
    let _ = std::fs::remove_file(&file);

    // The last servers fail their checks: the service has none left, an
    // emergency as HAProxy logs it (local2.emerg).
    l.stop_server("s1");
    l.stop_server("s2");
    let none = from_unix.wait("service site has no server available!");
    assert!(none.starts_with("<144>"), "{none}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn json_lines_rfc5424_framing_dontlognull_and_a_sink_changed_by_reload() {
    lab::require_root!();
    let global = "log = \"udp://127.0.0.1:5514\"\nlog_format = \"rfc5424\"\nlog_facility = \"local0\"\n";
    let service = "[service.log]\nformat = \"json\"\ndontlognull = true\n";
    let mut l = L7::run(&Spec {
        global,
        service,
        backends: &[Be("s1", "")],
        ..Spec::default()
    });
    let from_udp = udp_sink(&l, 5514);
    let (mut c, me) = client(&l);
    let r = c.get("/j?sleep=50", &["Cookie: a=b"]).unwrap();
    assert_eq!(r.status, 200);
    let line = from_udp.wait("/j?sleep=50");
    let re =
        regex::Regex::new(r"^<134>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d \S+ xlb (\d+) - - (\{.*\})\n?$")
            .unwrap();
    let c5424 = re
        .captures(&line)
        .unwrap_or_else(|| panic!("not RFC 5424 framed: {line:?}"));
    assert_eq!(c5424[1].parse::<u32>().unwrap(), l.xlb.pid());
    let v: serde_json::Value = serde_json::from_str(&c5424[2]).unwrap();
    assert_eq!(v["client_ip"], me.ip().to_string());
    assert_eq!(v["client_port"], me.port());
    assert_eq!(v["frontend_name"], "site");
    assert_eq!(v["server_name"], "s1");
    assert_eq!(v["status_code"], 200);
    assert!(v["Tr"].as_i64().unwrap() >= 50, "{v}");
    assert!(v["Ta"].as_i64().unwrap() >= v["Tr"].as_i64().unwrap());
    assert!(v["bytes_read"].as_u64().unwrap() > r.body.len() as u64);
    assert_eq!(v["termination_state"], "----", "no cookie persistence here");
    assert_eq!(v["http_request"], "GET /j?sleep=50 HTTP/1.1");

    // dontlognull: a connection that sends nothing is not logged, a bad
    // request still is.
    let (null, null_me) = client(&l);
    drop(null);
    let (mut bad, bad_me) = client(&l);
    let _ = bad.raw("GARBAGE\r\n\r\n");
    let bad_line = from_udp.wait(&format!("\"client_port\":{}", bad_me.port()));
    assert!(bad_line.contains("\"termination_state\":\"PR--\""), "{bad_line}");
    c.get("/after", &[]).unwrap();
    from_udp.wait("/after");
    assert!(
        !from_udp
            .all()
            .iter()
            .any(|l| l.contains(&format!("\"client_port\":{}", null_me.port()))),
        "dontlognull"
    );

    // A reload moves the lines to another sink.
    let moved = udp_sink(&l, 5515);
    let cfg = l.cfg.replace("udp://127.0.0.1:5514", "udp://127.0.0.1:5515");
    l.reload(&cfg);
    c.get("/moved", &[]).unwrap();
    moved.wait("/moved");
    std::thread::sleep(Duration::from_millis(100));
    assert!(!from_udp.all().iter().any(|l| l.contains("/moved")));

    // log_level = "warning": access lines (info) stop, the daemon's
    // warnings still come (local0.warning).
    let cfg = l.cfg.replace("log_format", "log_level = \"warning\"\nlog_format");
    l.reload(&cfg);
    c.get("/quiet", &[]).unwrap();
    l.set_state("s1", "drain");
    let warned = moved.wait("backend s1 of service site");
    assert!(warned.starts_with("<132>1 "), "{warned}");
    assert!(
        !moved.all().iter().any(|l| l.contains("/quiet")),
        "an info line below the level"
    );
}

/// The queue's fields as HAProxy fills them (the place a request had,
/// from 1; `<NOSRV>` for one that waited for any server and gave up), and
/// request bodies that end badly: a client that leaves in its body (-1,
/// `CD`), a broken chunked body (400, `PD`); an HTTP/2 request reset
/// before its answer (-1, `CH`).
#[test]
fn queue_places_queue_timeouts_and_bodies_that_end_badly() {
    lab::require_root!();
    let l = L7::run(&Spec {
        global: "log = \"udp://127.0.0.1:5514\"\n",
        service: "[service.http]\ntimeout_queue = \"1500ms\"\n",
        backends: &[Be("s1", "maxconn = 1")],
        ..Spec::default()
    });
    let lines = udp_sink(&l, 5514);
    let status = |path: &str| get(&l.ns, vip(), path, &[]).unwrap().status;
    // One request holds the server; two wait behind it, in this order.
    std::thread::scope(|s| {
        let hold = s.spawn(|| status("/hold?sleep=700"));
        std::thread::sleep(Duration::from_millis(200));
        let first = s.spawn(|| status("/first"));
        std::thread::sleep(Duration::from_millis(200));
        let second = s.spawn(|| status("/second"));
        let all = [hold, first, second].map(|h| h.join().unwrap());
        assert_eq!(all, [200; 3]);
    });
    let f = parse(&lines.wait("GET /hold?"));
    assert_eq!((f.queue.as_str(), f.timers[1]), ("0/0", 0), "{f:?}");
    let f = parse(&lines.wait("GET /first "));
    assert!(f.queue == "0/1" && f.timers[1] >= 200, "{f:?}");
    assert_eq!(parse(&lines.wait("GET /second ")).queue, "0/2");
    // Longer than timeout_queue: 503, and no server named.
    std::thread::scope(|s| {
        let hold = s.spawn(|| status("/hold?sleep=2500"));
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(status("/late"), 503);
        assert_eq!(hold.join().unwrap(), 200);
    });
    let f = parse(&lines.wait("GET /late "));
    assert_eq!(
        (f.status, f.server.as_str(), f.term.as_str(), f.queue.as_str()),
        (503, "<NOSRV>", "sQ--", "0/1"),
        "{f:?}"
    );
    assert!(f.timers[1] >= 1400, "{f:?}");

    // A client that sends 5 bytes of a 100-byte body and leaves.
    let (mut c, _) = client(&l);
    c.send("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nhello")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(c);
    let f = parse(&lines.wait("POST /upload "));
    assert_eq!((f.status, f.bytes, &f.term[..2]), (-1, 0, "CD"), "{f:?}");
    // A chunk that is not one.
    let (mut c, _) = client(&l);
    let r = c
        .raw("POST /broken HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 400);
    let f = parse(&lines.wait("POST /broken "));
    assert_eq!((f.status, &f.term[..2]), (400, "PD"), "{f:?}");

    // An HTTP/2 client (h2c) that resets its request while the server
    // prepares the answer: -1, `CH`.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = l.ns.enter(|| TcpStream::connect(vip())).unwrap().unwrap();
        tcp.set_nonblocking(true).unwrap();
        let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
        let io = hyper_util::rt::TokioIo::new(tcp);
        let (mut send, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get("http://site.test/reset?sleep=1500")
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .unwrap();
        let gave_up = tokio::time::timeout(Duration::from_millis(300), send.send_request(req)).await;
        assert!(gave_up.is_err(), "no answer yet");
        // The reset goes out with the connection's next frames.
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    let f = parse(&lines.wait("/reset?sleep=1500 HTTP/2.0"));
    assert_eq!(
        (f.status, f.bytes, &f.term[..2], f.server.as_str()),
        (-1, 0, "CH", "s1"),
        "{f:?}"
    );
}

#[test]
fn a_sink_that_stops_reading_loses_lines_counted_while_requests_flow() {
    lab::require_root!();
    // A unix socket nobody reads: its queue fills after a few hundred.
    let path = unix_path("stuck");
    let _stuck = UnixDatagram::bind(&path).unwrap();
    let global = format!("log = \"unix://{}\"\n", path.display());
    let l = L7::run(&Spec {
        global: &global,
        backends: &[Be("s1", ""), Be("s2", "")],
        ..Spec::default()
    });
    let clients = 4;
    let per = 600;
    let ok: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    let (mut c, _) = client(&l);
                    (0..per)
                        .filter(|i| c.get(&format!("/r{i}"), &[]).is_ok_and(|r| r.status == 200))
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(ok, clients * per, "every request answered");
    let metric = |name: &str| -> u64 {
        let m = get(&l.ns, "127.0.0.1:9900".parse().unwrap(), "/metrics", &[])
            .unwrap()
            .body;
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} in {m}"))
            .trim()
            .parse()
            .unwrap()
    };
    let until = Instant::now() + Duration::from_secs(3);
    while metric("xlb_log_lines_total") + metric("xlb_log_dropped_total") < (clients * per) as u64 {
        assert!(Instant::now() < until, "every line sent or counted as lost");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (sent, lost) = (metric("xlb_log_lines_total"), metric("xlb_log_dropped_total"));
    assert!(lost > 0, "lines lost: {lost}, sent {sent}");
    assert!(sent > 0 && sent < (clients * per) as u64, "sent {sent}");
    let status = l.xlb(&["status"]);
    assert!(status.contains("log lines:") && status.contains(" dropped"), "{status}");
    let _ = std::fs::remove_file(&path);
}

/// A failed TLS handshake is logged as HAProxy logs it
/// (`CLIENT [DATE] FRONTEND~/1: SSL handshake failure`), and a request
/// over TLS names the frontend with its `~`.
#[test]
fn tls_handshake_failures_and_tls_requests() {
    lab::require_root!();
    let dir = std::env::temp_dir().join(format!("xlb-tests-{}/pki-log", std::process::id()));
    let pki = lab::tls::Pki::new(&dir);
    let cert = pki.issue("site.pem", &["site.test"]);
    let service = format!("[service.tls]\ncerts = [{:?}]\n", cert.display().to_string());
    let l = L7::run(&Spec {
        global: "log = \"udp://127.0.0.1:5514\"\n",
        service: &service,
        backends: &[Be("s1", "")],
        ..Spec::default()
    });
    let from_udp = udp_sink(&l, 5514);
    // Plain HTTP to the TLS port.
    let (mut plain, me) = client(&l);
    let _ = plain.raw("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let line = from_udp.wait(&format!("{me} "));
    assert!(line.ends_with("] site~/1: SSL handshake failure\n"), "{line}");
    // A real TLS request.
    let mut tls = lab::tls::connect(&l.ns, vip(), &pki.client(&["http/1.1"]), "site.test").unwrap();
    std::io::Write::write_all(
        &mut tls,
        b"GET /secure HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut tls, &mut got);
    let f = parse(&from_udp.wait("GET /secure "));
    assert_eq!((f.frontend.as_str(), f.status), ("site~", 200));
    assert_eq!(f.bytes, got.len() as u64, "the bytes before encryption");
}
