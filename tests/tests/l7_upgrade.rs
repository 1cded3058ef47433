//! Upgraded connections, black-box: real WebSocket clients and servers
//! (tungstenite) through the real xlb, on plain and TLS fronts. The backend
//! is chosen by persistence as for any request; after the `101` the two
//! connections are one tunnel, counted, kept across reloads, closed when
//! silent for `timeout_tunnel`.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use lab::{
    l7::{vip, Be, Spec, L7},
    servers::Kind,
    tls::{self, Pki},
};
use tungstenite::{client::IntoClientRequest, Message, WebSocket};

const INSERT: &str = "[service.cookie]\nname = \"SERVERID\"\nmode = \"insert\"\nindirect = true\n";

trait Stream: Read + Write + Send {}
impl<S: Read + Write + Send> Stream for S {}

/// A WebSocket client through xlb; its backend (from the 101's
/// `X-Backend`) and the persistence cookie set on the 101.
struct Ws {
    ws: WebSocket<Box<dyn Stream>>,
    backend: String,
    cookie: Option<String>,
}

fn open(l: &L7, pki: Option<&Pki>, cookie: Option<&str>) -> Ws {
    let stream: Box<dyn Stream> = match pki {
        Some(p) => Box::new(tls::connect(&l.ns, vip(), &p.client(&["http/1.1"]), "shop.test").unwrap()),
        None => {
            let s = l.ns.enter(|| TcpStream::connect(vip())).unwrap().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            Box::new(s)
        }
    };
    let mut req = "ws://shop.test/chat".into_client_request().unwrap();
    if let Some(c) = cookie {
        req.headers_mut()
            .insert("cookie", format!("SERVERID={c}").parse().unwrap());
    }
    let (ws, resp) = tungstenite::client(req, stream).unwrap_or_else(|e| panic!("upgrade: {e}\n{}", l.xlb.log()));
    assert_eq!(resp.status(), 101);
    let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let cookie = header("set-cookie").and_then(|c| {
        let v = c.strip_prefix("SERVERID=")?;
        Some(v.split(';').next().unwrap_or("").to_string())
    });
    Ws {
        ws,
        backend: header("x-backend").unwrap_or_default(),
        cookie,
    }
}

impl Ws {
    fn echo(&mut self, text: &str) -> String {
        self.ws.send(Message::text(text)).unwrap();
        loop {
            match self.ws.read().unwrap() {
                Message::Text(t) => return t.to_string(),
                _ => continue,
            }
        }
    }
}

fn tunnels(l: &L7) -> (u64, u64) {
    let status: serde_json::Value = serde_json::from_str(&l.xlb(&["status", "--json"])).unwrap();
    let h = &status["services"][0]["http"];
    (h["tunnels"].as_u64().unwrap(), h["tunnels_total"].as_u64().unwrap())
}

fn lab(service: &str) -> L7 {
    L7::run(&Spec {
        service,
        backends: &[Be("s1", "cookie = \"s1\""), Be("s2", "cookie = \"s2\"")],
        kind: Kind::WebSocket,
        ..Spec::default()
    })
}

#[test]
fn websockets_keep_their_backend_by_cookie_on_plain_and_tls_fronts_and_outlive_reloads() {
    lab::require_root!();
    let dir = std::env::temp_dir().join(format!("xlb-tests-{}/pki-ws", std::process::id()));
    let pki = Pki::new(&dir);
    let cert = pki.issue("shop.pem", &["shop.test"]);
    for tls in [false, true] {
        let service = if tls {
            format!("{INSERT}[service.tls]\ncerts = [{:?}]\n", cert.display().to_string())
        } else {
            INSERT.to_string()
        };
        let mut l = lab(&service);
        let pki = tls.then_some(&pki);
        let mut first = open(&l, pki, None);
        let srv = first.backend.clone();
        assert!(srv == "s1" || srv == "s2", "{srv:?}");
        assert_eq!(first.cookie.as_deref(), Some(srv.as_str()), "the 101 sets the cookie");
        assert_eq!(first.echo("hello"), format!("{srv}: hello"));
        let mut more: Vec<Ws> = (0..4).map(|_| open(&l, pki, Some(&srv))).collect();
        for (i, w) in more.iter_mut().enumerate() {
            assert_eq!(w.backend, srv, "by cookie (tls: {tls})");
            assert_eq!(w.echo(&format!("m{i}")), format!("{srv}: m{i}"));
        }
        assert_eq!(tunnels(&l), (5, 5));

        // A reload leaves open tunnels alone.
        let cfg = l.cfg.clone();
        l.reload(&cfg);
        assert_eq!(first.echo("after reload"), format!("{srv}: after reload"));
        for w in &mut more {
            assert_eq!(w.echo("again"), format!("{srv}: again"));
        }

        first.ws.close(None).unwrap();
        drop(first);
        drop(more);
        let until = Instant::now() + Duration::from_secs(5);
        while tunnels(&l).0 != 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(tunnels(&l), (0, 5), "closed tunnels are no longer counted");
    }
}

#[test]
fn a_tunnel_silent_for_timeout_tunnel_is_closed_an_active_one_is_not() {
    lab::require_root!();
    // timeout_tunnel replaces the client and server timeouts: both are
    // shorter than the gaps between messages below.
    let service = format!(
        "{INSERT}[service.http]\ntimeout_tunnel = \"1s\"\ntimeout_client = \"300ms\"\ntimeout_server = \"300ms\"\n"
    );
    let l = lab(&service);
    let mut busy = open(&l, None, None);
    let mut idle = open(&l, None, None);
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(busy.echo(&format!("{i}")), format!("{}: {i}", busy.backend));
    }
    // The idle one was closed by xlb (a close, not the client's own 5 s
    // read timeout).
    let started = Instant::now();
    let ended = idle.ws.read();
    assert!(ended.is_err() || matches!(ended, Ok(Message::Close(_))), "{ended:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed by xlb, not by the client's timeout"
    );
    assert_eq!(tunnels(&l).0, 1);
}

#[test]
fn only_a_request_with_connection_upgrade_is_upgraded() {
    lab::require_root!();
    let l = lab(INSERT);
    let ws_head = "GET /chat HTTP/1.1\r\nHost: shop.test\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    // Without `Connection: upgrade`, Upgrade is a stray header: dropped,
    // and the WebSocket server refuses the plain request.
    let r = l.client().raw(&format!("{ws_head}\r\n")).unwrap();
    assert_ne!(r.status, 101);
    assert_eq!(tunnels(&l), (0, 0));
    // With it, the backend switches and xlb passes the 101 on.
    let r = l
        .client()
        .raw(&format!("{ws_head}Connection: keep-alive, Upgrade\r\n\r\n"))
        .unwrap();
    assert_eq!(r.status, 101, "{:?}", r.headers);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    assert_eq!(r.header("sec-websocket-accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    assert_eq!(tunnels(&l).1, 1);
}

/// Clients that keep sending until told to stop: keep-alive ones (a new
/// connection when the server closes theirs) and one connection per
/// request; what failed, and how many answers came.
fn load(l: &L7, stop: &std::sync::atomic::AtomicBool) -> (Vec<String>, usize) {
    use std::sync::atomic::Ordering;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..6)
            .map(|i| {
                s.spawn(move || {
                    let (mut failed, mut ok) = (Vec::new(), 0);
                    let mut client = None;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match client.as_mut() {
                            Some(c) => c,
                            None => match lab::http::Client::connect(&l.ns, vip()) {
                                Ok(c) => client.insert(c),
                                Err(e) => {
                                    failed.push(format!("connect: {e}"));
                                    continue;
                                }
                            },
                        };
                        match c.get("/", &[]) {
                            Ok(r) if r.status == 200 => {
                                ok += 1;
                                // Half the clients open a connection per request.
                                if i % 2 == 1 || r.header("connection") == Some("close") {
                                    client = None;
                                }
                            }
                            Ok(r) => failed.push(format!("status {}", r.status)),
                            Err(e) => {
                                failed.push(format!("request: {e}"));
                                client = None;
                            }
                        }
                    }
                    (failed, ok)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .fold((Vec::new(), 0), |(mut f, n), (f2, n2)| {
                f.extend(f2);
                (f, n + n2)
            })
    })
}

#[test]
fn a_seamless_upgrade_under_load_refuses_nothing_and_keeps_open_websockets() {
    use std::sync::atomic::{AtomicBool, Ordering};
    lab::require_root!();
    let mut l = lab(INSERT);
    let mut before = open(&l, None, None);
    assert_eq!(before.echo("one"), format!("{}: one", before.backend));
    let stop = AtomicBool::new(false);
    let (failed, answered, mut new) = std::thread::scope(|s| {
        let clients = s.spawn(|| load(&l, &stop));
        // A request in flight when the new process takes over: answered,
        // with `Connection: close` (the old process is leaving).
        let in_flight = s.spawn(|| l.client().get("/in-flight?sleep=4000", &[]).unwrap());
        std::thread::sleep(Duration::from_millis(500));
        // The new process takes over while the clients keep going.
        let new = lab::XlbProcess::start(&l.ns, &l.cfg_path, &["--cleanup", "--sf", "--drain-timeout", "20s"])
            .unwrap_or_else(|e| panic!("{e}\nold: {}", l.xlb.log()));
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::Relaxed);
        let (failed, answered) = clients.join().unwrap();
        let r = in_flight.join().unwrap();
        assert_eq!((r.status, r.header("connection")), (200, Some("close")), "{r:?}");
        (failed, answered, new)
    });
    assert!(
        failed.is_empty(),
        "{} failures of {answered}: {:?}\nold: {}\nnew: {}",
        failed.len(),
        &failed[..failed.len().min(5)],
        l.xlb.log(),
        new.log()
    );
    assert!(answered > 50, "{answered} answers");
    assert!(new.log().contains("took the listening sockets"), "{}", new.log());
    // The old process still serves the WebSocket opened before, then
    // leaves when it closes.
    assert_eq!(before.echo("two"), format!("{}: two", before.backend));
    assert!(
        l.xlb.wait_exit(Duration::from_millis(300)).is_none(),
        "the old one waits for its tunnel"
    );
    drop(before);
    assert!(
        l.xlb.wait_exit(Duration::from_secs(5)).is_some(),
        "the old one leaves once drained\n{}",
        l.xlb.log()
    );
    assert!(l.xlb.log().contains("handed over to the new xlb"), "{}", l.xlb.log());
    // The new one serves everything: HTTP, WebSockets, the admin API.
    let mut after = open(&l, None, None);
    assert_eq!(after.echo("three"), format!("{}: three", after.backend));
    assert_eq!(l.get("/", &[]).status, 200);
    assert_eq!(tunnels(&l).0, 1, "the new process counts its own tunnel");
    // --st: the old one leaves at once, open tunnels with it.
    let newest = lab::XlbProcess::start(&l.ns, &l.cfg_path, &["--cleanup", "--st"]).unwrap();
    assert!(
        new.wait_exit(Duration::from_secs(5)).is_some(),
        "--st: it leaves at once"
    );
    let cut = after.ws.read();
    assert!(cut.is_err() || matches!(cut, Ok(Message::Close(_))), "{cut:?}");
    assert_eq!(l.get("/", &[]).status, 200);
    drop(newest);
}

#[test]
fn a_new_process_that_fails_leaves_the_old_one_serving() {
    lab::require_root!();
    let l = lab(INSERT);
    let mut before = open(&l, None, None);
    // The new config adds a service on the first backend's own address:
    // it cannot bind there, after it took the sockets.
    let broken = format!(
        "{}\n[[service]]\nname = \"clash\"\nvip = \"127.0.0.1\"\nport = 9001\nmode = \"http\"\n[[service.backend]]\nname = \"x\"\naddress = \"127.0.0.1:9002\"\n",
        l.cfg
    );
    let path = lab::xlb::temp_file("upgrade-broken.toml", &broken).unwrap();
    // (Its start may look ready: the old one still answers on the admin
    // address.)
    if let Ok(mut failed) = lab::XlbProcess::start(&l.ns, &path, &["--cleanup", "--sf"]) {
        let end = failed.wait_exit(Duration::from_secs(5));
        assert!(
            end.is_some_and(|s| !s.success()),
            "the new one cannot start\n{}",
            failed.log()
        );
    }
    let until = Instant::now() + Duration::from_secs(5);
    while !l.xlb.log().contains("carrying on") {
        assert!(Instant::now() < until, "{}", l.xlb.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The old one serves everything as before, and can still be upgraded.
    assert_eq!(before.echo("still"), format!("{}: still", before.backend));
    for _ in 0..5 {
        assert_eq!(l.get("/", &[]).status, 200);
    }
    let mut l = l;
    let new = lab::XlbProcess::start(&l.ns, &l.cfg_path, &["--cleanup", "--st"]).unwrap();
    assert!(l.xlb.wait_exit(Duration::from_secs(5)).is_some());
    assert_eq!(l.get("/", &[]).status, 200);
    drop(new);
}
