//! The L7 proxy under many clients and over HTTP/2, with a real hyper
//! client: 1000 concurrent keep-alive connections with mixed cookies, and
//! h2c (prior knowledge) with multiplexed streams.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use http_body_util::{BodyExt, Empty};
use hyper::{body::Bytes, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lab::{
    l7::{vip, Be, L7},
    Netns,
};

const INSERT: &str = "[service.cookie]\nname = \"SERVERID\"\nmode = \"insert\"\nindirect = true\n";

fn three() -> Vec<Be<'static>> {
    vec![
        Be("s1", "cookie = \"s1\""),
        Be("s2", "cookie = \"s2\""),
        Be("s3", "cookie = \"s3\""),
    ]
}

/// A tokio stream connected from inside `ns` (sockets belong to the
/// namespace they were made in).
fn connect(ns: &Netns, addr: SocketAddr) -> tokio::net::TcpStream {
    let s = ns.enter(|| std::net::TcpStream::connect(addr)).unwrap().unwrap();
    s.set_nonblocking(true).unwrap();
    tokio::net::TcpStream::from_std(s).unwrap()
}

fn request(path: &str, cookies: &[String]) -> Request<Empty<Bytes>> {
    let mut b = Request::get(path).header("host", "xlb.test");
    for c in cookies {
        b = b.header("cookie", c);
    }
    b.body(Empty::new()).unwrap()
}

fn header(r: &hyper::Response<hyper::body::Incoming>, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The value a Set-Cookie gives SERVERID, if any.
fn server_cookie(r: &hyper::Response<hyper::body::Incoming>) -> Option<String> {
    r.headers().get_all("set-cookie").iter().find_map(|v| {
        let v = v.to_str().ok()?.strip_prefix("SERVERID=")?;
        Some(v.split(';').next().unwrap_or("").to_string())
    })
}

#[test]
fn a_thousand_concurrent_keep_alive_clients_with_mixed_cookies() {
    lab::require_root!();
    const CLIENTS: usize = 1000;
    const ROUNDS: usize = 5;
    assert!(
        lb_user::app::raise_nofile().unwrap() >= 4 * CLIENTS as u64,
        "need file descriptors for clients and servers"
    );
    let l = L7::start(INSERT, &three(), &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Every connection is open before the first request goes out.
    let streams: Vec<tokio::net::TcpStream> =
        rt.block_on(async { (0..CLIENTS).map(|_| connect(&l.ns, vip())).collect() });
    let start = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let results = rt.block_on(async {
        let tasks: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, stream)| {
                let start = start.clone();
                tokio::spawn(async move {
                    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .unwrap();
                    tokio::spawn(conn);
                    // Three in four clients come with a cookie, the others get one.
                    let mut cookie = (i % 4 != 0).then(|| format!("s{}", i % 3 + 1));
                    start.wait().await;
                    let mut wrong = Vec::new();
                    for round in 0..ROUNDS {
                        let cookies: Vec<String> = cookie.iter().map(|c| format!("SERVERID={c}")).collect();
                        let r = send.send_request(request("/", &cookies)).await.unwrap();
                        let backend = header(&r, "x-backend");
                        let set = server_cookie(&r);
                        let _ = r.into_body().collect().await.unwrap();
                        match (&cookie, set) {
                            (Some(c), None) if *c == backend => {}
                            (None, Some(s)) if s == backend && round == 0 => cookie = Some(s),
                            (c, s) => {
                                wrong.push(format!("client {i} round {round}: cookie {c:?} -> {backend} set {s:?}"))
                            }
                        }
                    }
                    (cookie, wrong)
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let wrong: Vec<&String> = results.iter().flat_map(|(_, w)| w).collect();
    assert!(
        wrong.is_empty(),
        "{} wrong answers, first: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    let mut per: HashMap<String, usize> = HashMap::new();
    for (c, _) in &results {
        *per.entry(c.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(per.len(), 3, "{per:?}");
    let status: serde_json::Value = serde_json::from_str(&l.xlb(&["status", "--json"])).unwrap();
    assert_eq!(status["services"][0]["http"]["requests"], (CLIENTS * ROUNDS) as u64);
}

#[test]
fn http2_clients_with_prior_knowledge() {
    lab::require_root!();
    let l = L7::start(INSERT, &three(), &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stream = connect(&l.ns, vip());
        let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let r = send.clone().send_request(request("/", &[])).await.unwrap();
        assert_eq!(r.version(), hyper::Version::HTTP_2);
        let srv = header(&r, "x-backend");
        assert_eq!(
            server_cookie(&r).as_deref(),
            Some(srv.as_str()),
            "h2: first request gets a cookie"
        );
        // 30 streams at once on the one connection, the cookie split in
        // two headers as HTTP/2 clients do.
        let tasks: Vec<_> = (0..30)
            .map(|_| {
                let mut send = send.clone();
                let cookies = vec!["a=1".to_string(), format!("SERVERID={srv}")];
                tokio::spawn(async move {
                    let r = send.send_request(request("/x", &cookies)).await.unwrap();
                    let (backend, set) = (header(&r, "x-backend"), server_cookie(&r));
                    let body = r.into_body().collect().await.unwrap().to_bytes();
                    (backend, set, String::from_utf8_lossy(&body).into_owned())
                })
            })
            .collect();
        for t in tasks {
            let (backend, set, body) = t.await.unwrap();
            assert_eq!(backend, srv);
            assert_eq!(set, None);
            assert!(
                body.lines().any(|l| l == "cookie: a=1"),
                "indirect, crumbs joined: {body}"
            );
            assert!(
                body.lines().any(|l| l.eq_ignore_ascii_case("host: xlb.test")),
                "the backend gets a Host header: {body}"
            );
        }
    });
}
