//! TLS termination and TLS to backends, black-box: certificates from a test
//! CA made at test time, real rustls clients and TLS backends over real
//! sockets, the real xlb in a namespace of its own.

use std::{path::PathBuf, sync::Arc};

use http_body_util::{BodyExt, Empty};
use hyper::{body::Bytes, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lab::{
    http::Client,
    l7::{vip, Be, Spec, L7},
    servers::Server,
    tls::{self, Pki},
    xlb::xlb_once,
};
use rustls::{pki_types::pem::PemObject, HandshakeKind};

const INSERT: &str = "[service.cookie]\nname = \"SERVERID\"\nmode = \"insert\"\nindirect = true\n";

fn two() -> Vec<Be<'static>> {
    vec![Be("s1", "cookie = \"s1\""), Be("s2", "cookie = \"s2\"")]
}

fn pki(tag: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!("xlb-tests-{}/pki-{tag}", std::process::id()));
    Pki::new(&dir)
}

fn tls_section(certs: &[&PathBuf], extra: &str) -> String {
    let list: Vec<String> = certs.iter().map(|c| format!("{:?}", c.display().to_string())).collect();
    format!("[service.tls]\ncerts = [{}]\n{extra}\n", list.join(", "))
}

/// An HTTP/1.1 client over a TLS connection asking for `sni`.
fn https(l: &L7, pki: &Pki, sni: &str) -> Client {
    let s = tls::connect(&l.ns, vip(), &pki.client(&["http/1.1"]), sni).unwrap();
    Client::over(s)
}

#[test]
fn sni_picks_the_certificate_alpn_and_version_are_negotiated_sessions_resume() {
    lab::require_root!();
    let pki = pki("sni");
    let shop = pki.issue("shop.pem", &["shop.test"]);
    let api = pki.issue("api.pem", &["api.test", "*.api.test"]);
    let service = format!("{INSERT}{}", tls_section(&[&shop, &api], ""));
    let l = L7::start(&service, &two(), &[]);
    let names = |sni: &str| {
        let s = tls::connect(&l.ns, vip(), &pki.client(&[]), sni).unwrap();
        tls::peer_names(&s)
    };
    assert_eq!(names("shop.test"), ["shop.test"]);
    assert_eq!(names("api.test"), ["api.test", "*.api.test"]);
    assert_eq!(names("v2.api.test"), ["api.test", "*.api.test"], "by the wildcard");
    // A name no certificate has, or no name at all: the first (default)
    // one (which a checking client then refuses for that name).
    let err = tls::connect(&l.ns, vip(), &pki.client(&[]), "other.test");
    assert!(
        err.is_err(),
        "the client refuses the default certificate for another name"
    );
    for sni in ["other.test", "127.0.0.1"] {
        let s = tls::connect(&l.ns, vip(), &tls::unverified(), sni).unwrap();
        assert_eq!(tls::peer_names(&s), ["shop.test"], "{sni}");
    }

    let alpn = |offer: &[&str]| {
        let s = tls::connect(&l.ns, vip(), &pki.client(offer), "shop.test").unwrap();
        s.conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned())
    };
    assert_eq!(alpn(&["h2", "http/1.1"]).as_deref(), Some("h2"));
    assert_eq!(
        alpn(&["http/1.1", "h2"]).as_deref(),
        Some("h2"),
        "the server's preference"
    );
    assert_eq!(alpn(&["http/1.1"]).as_deref(), Some("http/1.1"));
    assert_eq!(alpn(&[]), None);

    // A client without ALPN speaks HTTP/1.1.
    let s = tls::connect(&l.ns, vip(), &pki.client(&[]), "shop.test").unwrap();
    let r = Client::over(s).get("/", &["Host: shop.test"]).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.seen("x-forwarded-proto"), ["https"]);

    // The second connection with the same client resumes (a TLS 1.3
    // ticket, taken in with the first answer).
    let client = pki.client(&["http/1.1"]);
    let first = tls::connect(&l.ns, vip(), &client, "shop.test").unwrap();
    assert_eq!(first.conn.handshake_kind(), Some(HandshakeKind::Full));
    let mut c = Client::over(first);
    assert_eq!(c.get("/", &[]).unwrap().status, 200);
    let again = tls::connect(&l.ns, vip(), &client, "shop.test").unwrap();
    assert_eq!(again.conn.handshake_kind(), Some(HandshakeKind::Resumed));
    assert_eq!(Client::over(again).get("/", &[]).unwrap().status, 200);

    let status: serde_json::Value = serde_json::from_str(&l.xlb(&["status", "--json"])).unwrap();
    let http = &status["services"][0]["http"];
    assert!(http["tls_handshakes"].as_u64().unwrap() >= 10, "{http}");
    assert!(http["tls_resumed"].as_u64().unwrap() >= 1, "{http}");
    assert!(
        http["tls_failed"].as_u64().unwrap() >= 1,
        "the refused default certificate: {http}"
    );

    // TLS 1.2 is refused when the lowest version is 1.3.
    drop(l);
    let service = format!("{INSERT}{}", tls_section(&[&shop], "min_version = \"1.3\""));
    let l = L7::start(&service, &two(), &[]);
    let only12 = {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(
            rustls::pki_types::CertificateDer::pem_file_iter(pki.ca_file())
                .unwrap()
                .map(Result::unwrap),
        );
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(cfg)
    };
    assert!(tls::connect(&l.ns, vip(), &only12, "shop.test").is_err());
    let s = tls::connect(&l.ns, vip(), &pki.client(&[]), "shop.test").unwrap();
    assert_eq!(s.conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
}

#[test]
fn cookie_and_appsession_persistence_over_https_and_h2() {
    lab::require_root!();
    let pki = pki("persist");
    let shop = pki.issue("shop.pem", &["shop.test"]);
    let service = format!(
        "{INSERT}[service.appsession]\ncookie = \"JSESSIONID\"\n{}",
        tls_section(&[&shop], "")
    );
    let l = L7::start(&service, &two(), &[]);

    // HTTP/1.1 over TLS.
    let mut c = https(&l, &pki, "shop.test");
    let first = c.get("/", &["Host: shop.test"]).unwrap();
    let srv = first.backend().to_string();
    assert_eq!(first.set_cookie("SERVERID").as_deref(), Some(srv.as_str()));
    for _ in 0..4 {
        let mut fresh = https(&l, &pki, "shop.test");
        let r = fresh.get("/", &[&format!("Cookie: SERVERID={srv}")]).unwrap();
        assert_eq!(r.backend(), srv, "the cookie holds over new TLS connections");
    }
    // appsession: the session id a server handed out brings the client back.
    let r = c.get("/login?session=JSESSIONID", &["Host: shop.test"]).unwrap();
    let id = r.set_cookie("JSESSIONID").expect("the server starts a session");
    let owner = r.backend().to_string();
    for _ in 0..4 {
        let mut fresh = https(&l, &pki, "shop.test");
        let r = fresh.get("/app", &[&format!("Cookie: JSESSIONID={id}")]).unwrap();
        assert_eq!(r.backend(), owner, "appsession over TLS");
    }

    // An idle TLS connection is parked, and serves again when it wakes.
    std::thread::sleep(std::time::Duration::from_millis(600));
    let status: serde_json::Value = serde_json::from_str(&l.xlb(&["status", "--json"])).unwrap();
    assert!(
        status["services"][0]["http"]["parked"].as_u64().unwrap() >= 1,
        "{status}"
    );
    let r = c.get("/", &[&format!("Cookie: SERVERID={srv}")]).unwrap();
    assert_eq!(r.backend(), srv, "a parked TLS connection wakes");

    // h2 over TLS (ALPN).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = l.ns.enter(|| std::net::TcpStream::connect(vip())).unwrap().unwrap();
        tcp.set_nonblocking(true).unwrap();
        let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
        let connector = tokio_rustls::TlsConnector::from(pki.client(&["h2"]));
        let name = rustls::pki_types::ServerName::try_from("shop.test").unwrap();
        let stream = connector.connect(name, tcp).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let get = |cookie: String| {
            Request::get("https://shop.test/app")
                .header("cookie", cookie)
                .body(Empty::<Bytes>::new())
                .unwrap()
        };
        for _ in 0..4 {
            let r = send.send_request(get(format!("SERVERID={srv}"))).await.unwrap();
            assert_eq!(r.version(), hyper::Version::HTTP_2);
            assert_eq!(r.headers()["x-backend"], srv.as_str(), "cookie over h2");
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body);
            assert!(body.lines().any(|l| l == "x-forwarded-proto: https"), "{body}");
        }
        for _ in 0..4 {
            let r = send.send_request(get(format!("JSESSIONID={id}"))).await.unwrap();
            assert_eq!(r.headers()["x-backend"], owner.as_str(), "appsession over h2");
        }
    });
}

#[test]
fn certificates_are_checked_and_a_reload_serves_new_ones_to_new_connections() {
    lab::require_root!();
    let pki = pki("reload");
    let shop = pki.issue("shop.pem", &["shop.test"]);
    // xlb check: each bad file is refused with its path and reason.
    let expired = pki.issue_with("expired.pem", &["old.test"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let other = pki.issue("other.pem", &["other.test"]);
    let mismatched = pki.dir.join("mismatched.pem");
    let (shop_pem, other_pem) = (
        std::fs::read_to_string(&shop).unwrap(),
        std::fs::read_to_string(&other).unwrap(),
    );
    let key_at = |pem: &str| pem.find("-----BEGIN PRIVATE KEY").unwrap();
    std::fs::write(
        &mismatched,
        format!("{}{}", &shop_pem[..key_at(&shop_pem)], &other_pem[key_at(&other_pem)..]),
    )
    .unwrap();
    let missing = pki.dir.join("missing.pem");
    let keyless = pki.dir.join("keyless.pem");
    std::fs::write(&keyless, &shop_pem[..key_at(&shop_pem)]).unwrap();
    // (What is in the block does not matter: its label says it all.)
    let encrypted = pki.dir.join("encrypted.pem");
    std::fs::write(
        &encrypted,
        format!(
            "{}-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
            &shop_pem[..key_at(&shop_pem)]
        ),
    )
    .unwrap();
    for (file, reason) in [
        (&expired, "expired"),
        (&mismatched, "does not match"),
        (&missing, "cannot read"),
        (&keyless, "no private key"),
        (&encrypted, "the private key is encrypted"),
    ] {
        let cfg = format!(
            "[[service]]\nname = \"site\"\nvip = \"127.0.0.1\"\nport = 8443\nmode = \"http\"\n{}[[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:9001\"\n",
            tls_section(&[&shop, file], "")
        );
        let path = lab::xlb::temp_file("tls-check.toml", &cfg).unwrap();
        let out = xlb_once(&lab::Netns::current(), &["check", "--config", path.to_str().unwrap()]).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file:?} accepted");
        assert!(
            err.contains(&file.display().to_string()) && err.contains(reason),
            "{reason}: {err}"
        );
        assert!(err.contains("tls-check.toml:7:"), "the line of the entry: {err}");
    }

    let service = format!("{INSERT}{}", tls_section(&[&shop], ""));
    let mut l = L7::start(&service, &two(), &[]);
    let client = pki.client(&["http/1.1"]);
    let old = tls::connect(&l.ns, vip(), &client, "shop.test").unwrap();
    let old_der = old.conn.peer_certificates().unwrap()[0].clone();
    let mut old = Client::over(old);
    assert_eq!(old.get("/", &[]).unwrap().status, 200);

    // A broken file is refused by the reload: the running one stays.
    let good = std::fs::read(&shop).unwrap();
    std::fs::write(&shop, b"not a certificate").unwrap();
    let cfg = l.cfg.clone();
    std::fs::write(&l.cfg_path, &cfg).unwrap();
    let out = xlb_once(&l.ns, &["reload"]).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shop.pem"));
    let s = tls::connect(&l.ns, vip(), &client, "shop.test").unwrap();
    assert_eq!(s.conn.peer_certificates().unwrap()[0], old_der);
    std::fs::write(&shop, good).unwrap();

    // Renewed on disk and reloaded: new connections get the new one, the
    // open connection goes on.
    pki.issue("shop.pem", &["shop.test"]);
    l.reload(&cfg);
    // (A client that knows the session resumes it, across the reload, and
    // sees the certificate of that session: a new client is needed here.)
    let resumed = tls::connect(&l.ns, vip(), &client, "shop.test").unwrap();
    assert_eq!(
        resumed.conn.handshake_kind(),
        Some(HandshakeKind::Resumed),
        "tickets outlive a reload"
    );
    let new = tls::connect(&l.ns, vip(), &pki.client(&["http/1.1"]), "shop.test").unwrap();
    assert_ne!(
        new.conn.peer_certificates().unwrap()[0],
        old_der,
        "the renewed certificate"
    );
    assert_eq!(Client::over(new).get("/", &[]).unwrap().status, 200);
    for _ in 0..3 {
        assert_eq!(
            old.get("/", &[]).unwrap().status,
            200,
            "the open connection still works"
        );
    }

    // TLS turned off by a reload: the open TLS connection is still TLS
    // and tells the backends so; a new one is plain.
    let plain = l.cfg.replace(&tls_section(&[&shop], ""), "");
    assert_ne!(plain, l.cfg);
    l.reload(&plain);
    assert_eq!(old.get("/", &[]).unwrap().seen("x-forwarded-proto"), ["https"]);
    assert_eq!(l.get("/", &[]).seen("x-forwarded-proto"), ["http"]);
}

#[test]
fn tls_to_backends_checks_the_chain_and_sends_sni() {
    lab::require_root!();
    let pki = pki("backend");
    let stranger = pki_other();
    let be_cert = pki.issue("backend.pem", &["backend.test"]);
    let ca = pki.ca_file();
    let ca = ca.display();
    let untrusted = stranger.issue("untrusted.pem", &["backend.test"]);
    let (a, b, c, d) = (
        "127.0.0.1:9101".parse().unwrap(),
        "127.0.0.1:9102".parse().unwrap(),
        "127.0.0.1:9103".parse().unwrap(),
        "127.0.0.1:9104".parse().unwrap(),
    );
    let spec_for = |backend: &str| {
        format!(
            "[global]\nadmin = \"127.0.0.1:9900\"\n[[service]]\nname = \"site\"\nvip = \"127.0.0.1\"\nport = 8080\nmode = \"http\"\n[service.health]\nkind = \"none\"\n[[service.backend]]\n{backend}\n"
        )
    };
    let l = L7::run(&Spec::default());
    let _servers = [
        Server::start_tls(&l.ns, a, "verified", tls::server_config(&be_cert)).unwrap(),
        Server::start_tls(&l.ns, b, "named", tls::server_config(&be_cert)).unwrap(),
        Server::start_tls(&l.ns, c, "untrusted", tls::server_config(&untrusted)).unwrap(),
        Server::start_tls(&l.ns, d, "unchecked", tls::server_config(&untrusted)).unwrap(),
    ];
    let mut l = l;
    let cases = [
        // The chain is checked against the CA; SNI is the request's host.
        (
            format!("name = \"v\"\naddress = \"{a}\"\ntls = true\ntls_verify = \"{ca}\""),
            200,
            "shop.test",
        ),
        // A configured name is sent and checked.
        (
            format!("name = \"n\"\naddress = \"{b}\"\ntls = true\ntls_verify = \"{ca}\"\ntls_sni = \"backend.test\""),
            200,
            "backend.test",
        ),
        (
            format!("name = \"w\"\naddress = \"{b}\"\ntls = true\ntls_verify = \"{ca}\"\ntls_sni = \"wrong.test\""),
            503,
            "",
        ),
        // Signed by another CA.
        (
            format!("name = \"u\"\naddress = \"{c}\"\ntls = true\ntls_verify = \"{ca}\""),
            503,
            "",
        ),
        (
            format!("name = \"x\"\naddress = \"{d}\"\ntls = true\ntls_verify = \"none\""),
            200,
            "shop.test",
        ),
    ];
    for (backend, status, sni) in cases {
        l.reload(&spec_for(&backend));
        for _ in 0..2 {
            let r = l.get("/", &["Host: shop.test:8080"]);
            assert_eq!(r.status, status, "{backend}\n{}", r.body);
            if status == 200 {
                assert_eq!(r.seen("tls-sni"), [sni], "{backend}");
                assert_eq!(r.seen("x-forwarded-proto"), ["http"]);
            }
        }
    }
    // Plain TCP to a TLS backend fails, as it should.
    l.reload(&spec_for(&format!("name = \"p\"\naddress = \"{a}\"")));
    assert_eq!(l.get("/", &[]).status, 502);
}

fn pki_other() -> Pki {
    pki("stranger")
}
