//! The PROXY protocol against the real HAProxy (Debian's) on both sides:
//! HAProxy in front sends v1 and v2 headers to xlb (`accept_proxy`), and
//! HAProxy behind xlb (`accept-proxy`) reads the v1 and v2 headers xlb
//! sends (`send_proxy`) and answers with the client address it saw.

use std::{
    io::Read,
    net::SocketAddr,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use lab::{
    http::Client,
    l7::{vip, Be, Spec, L7},
    servers::connect_from,
    Netns,
};

struct HaProxy(Child);

impl HaProxy {
    fn start(ns: &Netns, cfg: &str) -> HaProxy {
        let path = lab::xlb::temp_file("haproxy-pp.cfg", cfg).unwrap();
        let child = ns
            .cmd("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (Debian's haproxy package)");
        HaProxy(child)
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something listens on `addr` in `ns`.
fn wait_listening(ns: &Netns, addr: SocketAddr) {
    let until = Instant::now() + Duration::from_secs(5);
    while ns.enter(|| std::net::TcpStream::connect(addr)).unwrap().is_err() {
        assert!(Instant::now() < until, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const HAPROXY: &str =
    "global\n  maxconn 100\ndefaults\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\n";

#[test]
fn proxy_headers_in_from_haproxy_and_out_to_haproxy() {
    lab::require_root!();
    let service = "[service.http]\naccept_proxy = true\nforwardfor = true\n[service.cookie]\nname = \"SERVERID\"\nindirect = true\n\
                   [service.health]\nkind = \"http\"\ninterval = \"100ms\"\nrise = 1\nfall = 1\n";
    let l = L7::run(&Spec {
        service,
        backends: &[
            Be("app", "cookie = \"app\""),
            Be("pp2", "cookie = \"pp2\"\nsend_proxy = \"v2\""),
            Be("pp1", "cookie = \"pp1\"\nsend_proxy = \"v1\""),
        ],
        dead: &["pp2", "pp1"],
        ..Spec::default()
    });
    // In front: v1 on 7001, v2 on 7002. Behind: xlb's pp2 and pp1
    // backends (9002, 9003), answering with the client they were told of.
    let cfg = format!(
        "{HAPROXY}frontend v1\n  mode tcp\n  bind 127.0.0.1:7001\n  default_backend to_xlb_v1\n\
         frontend v2\n  mode tcp\n  bind 127.0.0.1:7002\n  default_backend to_xlb_v2\n\
         backend to_xlb_v1\n  mode tcp\n  server xlb {vip} send-proxy\n\
         backend to_xlb_v2\n  mode tcp\n  server xlb {vip} send-proxy-v2\n\
         frontend behind\n  mode http\n  bind 127.0.0.1:9002 accept-proxy\n  bind 127.0.0.1:9003 accept-proxy\n\
         \x20 http-request return status 200 content-type text/plain lf-string \"client=%ci:%cp\\n\"\n",
        vip = vip()
    );
    let _haproxy = HaProxy::start(&l.ns, &cfg);
    for port in [7001, 7002, 9002, 9003] {
        wait_listening(&l.ns, SocketAddr::from(([127, 0, 0, 1], port)));
    }
    // Every backend up: the ones behind HAProxy refuse a connection
    // without a header, so their checks pass only if they send one.
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let status: serde_json::Value = serde_json::from_str(&l.xlb(&["status", "--json"])).unwrap();
        let backends = status["services"][0]["backends"].as_array().unwrap().clone();
        if backends.iter().all(|b| b["state"] == "up") {
            break;
        }
        assert!(
            Instant::now() < until,
            "checks with a PROXY header pass: {backends:?}\n{}",
            l.xlb.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for (front, client_ip) in [(7001u16, "127.0.0.5"), (7002, "127.0.0.6")] {
        let src: SocketAddr = format!("{client_ip}:0").parse().unwrap();
        let stream = connect_from(
            &l.ns,
            src,
            SocketAddr::from(([127, 0, 0, 1], front)),
            Duration::from_secs(2),
        )
        .unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let port = stream.local_addr().unwrap().port();
        let mut c = Client::over(stream);
        // The application backend gets the real client in X-Forwarded-For.
        let r = c.get("/", &["Cookie: SERVERID=app"]).unwrap();
        assert_eq!(r.status, 200, "through haproxy :{front}: {}", l.xlb.log());
        assert_eq!(r.seen("x-forwarded-for"), [client_ip], "front :{front}");
        // HAProxy behind xlb is told the same client, v2 and v1.
        for be in ["pp2", "pp1"] {
            let r = c.get("/", &[&format!("Cookie: SERVERID={be}")]).unwrap();
            assert_eq!(r.status, 200, "{be}: {}", l.xlb.log());
            assert_eq!(r.body.trim(), format!("client={client_ip}:{port}"), "{be} via :{front}");
        }
    }
    // The access log (written by a thread of its own) names the real client.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while !l.xlb.log().contains("127.0.0.5:") {
        assert!(
            std::time::Instant::now() < until,
            "the access log names the real client"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Straight to xlb, without a header: closed, nothing answered.
    let mut raw = l.ns.enter(|| std::net::TcpStream::connect(vip())).unwrap().unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::io::Write::write_all(&mut raw, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = raw.read_to_end(&mut got);
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    let status: serde_json::Value = serde_json::from_str(&l.xlb(&["status", "--json"])).unwrap();
    assert_eq!(status["services"][0]["http"]["proxy_refused"], 1);

    // Each refusal logged in HAProxy's words: no header, a connection
    // closed before one, a header that is one but broken.
    let logged = |what: &str| {
        let until = std::time::Instant::now() + Duration::from_secs(3);
        while !l.xlb.log().contains(what) {
            assert!(std::time::Instant::now() < until, "{what:?} in {}", l.xlb.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    logged("/1: Received something which does not look like a PROXY protocol header");
    drop(l.ns.enter(|| std::net::TcpStream::connect(vip())).unwrap().unwrap());
    logged("/1: Connection closed while waiting for PROXY protocol header");
    let mut bad = l.ns.enter(|| std::net::TcpStream::connect(vip())).unwrap().unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::io::Write::write_all(&mut bad, b"PROXY TCP4 300.0.0.1 127.0.0.1 1000 8080\r\n").unwrap();
    let _ = bad.read_to_end(&mut got);
    logged("/1: Received an invalid PROXY protocol header");
}
