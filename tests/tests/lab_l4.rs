//! L4 forwarding through the real XDP program on veths, with real TCP
//! connections: source affinity, minimal disruption, connection consistency
//! while backends change, full-NAT port mapping and L2 direct routing.

use std::{collections::BTreeMap, net::SocketAddr, thread, time::Duration};

use lab::{
    l4::{config, hello, predict, reload, start_servers, status, Spec, Stream},
    servers::{Kind, Server},
    topology::vip,
    xlb::temp_file,
    Lab, LabSpec, XlbProcess,
};
const VIP_N: u8 = lab::l4::VIP_N;

#[test]
fn source_affinity_follows_maglev_and_weights() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 3,
        client_addrs: 40,
    })
    .unwrap();
    let _servers = start_servers(&lab, 8080, false);
    let backends = [("be0", 0, 1), ("be1", 1, 1), ("be2", 2, 2)];
    let cfg = temp_file("affinity.toml", &config("nat", 8080, &backends)).unwrap();
    let xlb = XlbProcess::start(&lab.xlb.ns, &cfg, &[]).unwrap();

    let mut shares: BTreeMap<String, usize> = BTreeMap::new();
    for c in &lab.client.addrs {
        let first = hello(&lab, (*c).into());
        for _ in 0..2 {
            assert_eq!(hello(&lab, (*c).into()), first, "client {c} changed backend");
        }
        assert_eq!(
            first,
            predict(&backends, (*c).into()),
            "client {c}: not the Maglev choice"
        );
        *shares.entry(first).or_default() += 1;
    }
    println!("clients per backend (weights 1:1:2): {shares:?}");
    // 40 clients, expected 10/10/20: each share within +-8 (about 3 sigma).
    for (name, want) in [("be0", 10), ("be1", 10), ("be2", 20)] {
        let got = shares.get(name).copied().unwrap_or(0) as i64;
        assert!((got - want).abs() <= 8, "{name}: {got} clients, expected about {want}");
    }
    let st = status(&lab);
    assert_eq!(
        st["services"][0]["new_flows"].as_u64(),
        Some(120),
        "one flow per connection"
    );
    assert_eq!(
        st["outcomes"]["drop_no_neigh"].as_u64().unwrap() + st["outcomes"]["drop_no_port"].as_u64().unwrap(),
        0
    );
    xlb.stop().unwrap();
}

#[test]
fn removing_a_backend_moves_only_its_clients() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 4,
        client_addrs: 40,
    })
    .unwrap();
    let _servers = start_servers(&lab, 8080, false);
    let all = [("be0", 0, 1), ("be1", 1, 1), ("be2", 2, 1), ("be3", 3, 1)];
    let cfg = temp_file("disruption.toml", &config("nat", 8080, &all)).unwrap();
    let xlb = XlbProcess::start(&lab.xlb.ns, &cfg, &[]).unwrap();
    let before: Vec<String> = lab.client.addrs.iter().map(|c| hello(&lab, (*c).into())).collect();

    let rest = &all[..3];
    reload(&lab, &xlb, &cfg, &config("nat", 8080, rest), rest);
    let after: Vec<String> = lab.client.addrs.iter().map(|c| hello(&lab, (*c).into())).collect();

    let on_removed = before.iter().filter(|b| *b == "be3").count();
    let others = before.len() - on_removed;
    let moved_others = before.iter().zip(&after).filter(|(b, a)| *b != "be3" && b != a).count();
    println!(
        "removed be3: {on_removed} clients had it and moved; {moved_others} of {others} others moved ({:.1}%)",
        100.0 * moved_others as f64 / others as f64
    );
    assert!(on_removed > 0, "the test needs clients on the removed backend");
    assert!(after.iter().all(|a| a != "be3"));
    // Maglev bounds the extra disruption to a few percent of slots; with 40
    // clients that is at most a couple.
    assert!(moved_others <= 2, "{moved_others} clients of surviving backends moved");
    xlb.stop().unwrap();
}

#[test]
fn streams_keep_flowing_while_backends_change() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 4,
        client_addrs: 16,
    })
    .unwrap();
    let _servers = start_servers(&lab, 8080, false);
    let three = [("be0", 0, 1), ("be1", 1, 1), ("be2", 2, 1)];
    let four = [("be0", 0, 1), ("be1", 1, 1), ("be2", 2, 1), ("be3", 3, 1)];
    let reweighted = [("be0", 0, 3), ("be1", 1, 1), ("be2", 2, 1), ("be3", 3, 1)];
    let cfg = temp_file("consistency.toml", &config("nat", 8080, &three)).unwrap();
    let xlb = XlbProcess::start(&lab.xlb.ns, &cfg, &[]).unwrap();
    for c in &lab.client.addrs {
        hello(&lab, (*c).into());
    }
    let mut streams: Vec<Stream> = lab
        .client
        .addrs
        .iter()
        .map(|c| Stream::open(&lab, (*c).into()))
        .collect();
    // The change must matter: some of these clients would now get be3.
    let would_move = lab
        .client
        .addrs
        .iter()
        .zip(&streams)
        .filter(|(c, s)| predict(&four, (**c).into()) != s.backend)
        .count();
    assert!(would_move > 0, "no stream's slot changes: the test would prove nothing");

    let steps: [&[Spec<'_>]; 3] = [&four, &reweighted, &three];
    let mut n = 0;
    for step in steps {
        reload(&lab, &xlb, &cfg, &config("nat", 8080, step), step);
        for _ in 0..10 {
            for s in &mut streams {
                s.ping(n).unwrap_or_else(|e| panic!("stream broke: {e}\n{}", xlb.log()));
            }
            n += 1;
            thread::sleep(Duration::from_millis(20));
        }
    }
    println!(
        "{} streams ({would_move} whose slot moved) survived 3 reloads, {n} round trips each",
        streams.len()
    );
    xlb.stop().unwrap();
}

#[test]
fn dsr_backends_answer_the_client_directly() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 2,
        client_addrs: 8,
    })
    .unwrap();
    for b in &lab.backends {
        // LVS-DR: the VIP on loopback, never announced or answered for by ARP.
        b.ns.ip(&["addr", "add", &format!("{}/32", vip(VIP_N)), "dev", "lo"])
            .unwrap();
        b.ns.sysctl("net.ipv4.conf.all.arp_ignore", "1").unwrap();
        b.ns.sysctl("net.ipv4.conf.all.arp_announce", "2").unwrap();
    }
    let _servers = start_servers(&lab, 80, true);
    let backends = [("be0", 0, 1), ("be1", 1, 1)];
    // DSR health checks go to the backends' own addresses: give them a
    // listener there too.
    let _check_targets: Vec<Server> = lab
        .backends
        .iter()
        .map(|b| Server::start(&b.ns, SocketAddr::new(b.ip.into(), 80), &b.role, Kind::Tcp).unwrap())
        .collect();
    let cfg = temp_file("dsr.toml", &config("dsr", 80, &backends)).unwrap();
    let xlb = XlbProcess::start(&lab.xlb.ns, &cfg, &[]).unwrap();
    for c in &lab.client.addrs {
        let first = hello(&lab, (*c).into());
        assert_eq!(first, predict(&backends, (*c).into()));
        let mut s = Stream::open(&lab, (*c).into());
        assert_eq!(s.backend, first);
        s.ping(1).unwrap();
    }
    // Replies bypass xlb: it saw only the client → VIP direction.
    let st = status(&lab);
    let fwd = st["outcomes"]["redirect"].as_u64().unwrap() + st["outcomes"]["tx"].as_u64().unwrap();
    assert_eq!(
        fwd,
        st["services"][0]["packets"].as_u64().unwrap(),
        "xlb forwarded only client packets"
    );
    xlb.stop().unwrap();
}

/// A snat pool: the flows of 40 clients leave from both pool addresses
/// (the backends see connections from each), every stream works both ways,
/// and the status names the pool.
#[test]
fn a_snat_pool_spreads_connections_over_its_addresses() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 2,
        client_addrs: 40,
    })
    .unwrap();
    // The second pool address lives on the xlb node too, so the backends'
    // answers to it come back there.
    let second = "198.18.0.3";
    lab.xlb
        .ns
        .ip(&["addr", "add", &format!("{second}/16"), "dev", "eth0"])
        .unwrap();
    let _servers = start_servers(&lab, 8080, false);
    let backends = [("be0", 0, 1), ("be1", 1, 1)];
    let cfg = config("nat", 8080, &backends).replace(
        "mode = \"nat\"\n",
        &format!("mode = \"nat\"\nsnat = [\"{}\", \"{second}\"]\n", lab::topology::XLB_IP),
    );
    let path = temp_file("pool.toml", &cfg).unwrap();
    let xlb = XlbProcess::start(&lab.xlb.ns, &path, &[]).unwrap();
    let mut streams: Vec<Stream> = lab
        .client
        .addrs
        .iter()
        .map(|c| Stream::open(&lab, (*c).into()))
        .collect();
    for s in &mut streams {
        s.ping(2).unwrap();
    }
    let mut sources = std::collections::BTreeMap::<String, usize>::new();
    for b in &lab.backends {
        let out =
            b.ns.run("ss", &["-Htn", "state", "established", "sport", "= :8080"])
                .unwrap();
        for line in out.lines() {
            // Recv-Q Send-Q Local Peer: the peer's address is the snat one.
            let peer = line.split_whitespace().last().unwrap();
            let ip = peer.rsplit_once(':').unwrap().0.to_string();
            *sources.entry(ip).or_default() += 1;
        }
    }
    println!("connections per snat address: {sources:?}");
    assert_eq!(sources.values().sum::<usize>(), 40, "every stream seen by a backend");
    assert_eq!(sources.len(), 2, "both pool addresses used: {sources:?}");
    assert!(sources.contains_key(second));
    let st = status(&lab);
    assert_eq!(st["outcomes"]["drop_no_port"].as_u64(), Some(0));
    assert_eq!(
        st["services"][0]["snat"],
        serde_json::json!([lab::topology::XLB_IP.to_string(), second]),
        "the status names the pool"
    );
    drop(streams);
    xlb.stop().unwrap();
}

/// Flow logs: with `[service.log]` on, each new connection through the
/// XDP program becomes a tcplog line at a UDP syslog sink, naming the
/// client and the backend its greeting came from; with no backend up, the
/// dropped flow's line says so (`<NOSRV>`, `SC`).
#[test]
fn new_flows_of_a_logged_l4_service_reach_syslog() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 2,
        client_addrs: 6,
    })
    .unwrap();
    let sink = lab
        .xlb
        .ns
        .enter(|| std::net::UdpSocket::bind("127.0.0.1:5514"))
        .unwrap()
        .unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let _servers = start_servers(&lab, 8080, false);
    let backends = [("be0", 0, 1), ("be1", 1, 1)];
    let cfg = config("nat", 8080, &backends)
        .replace(
            "[global]\n",
            "[global]\nlog = \"udp://127.0.0.1:5514\"\nlog_facility = \"local1\"\n",
        )
        .replace("mode = \"nat\"\n", "mode = \"nat\"\n[service.log]\nenabled = true\n");
    let path = temp_file("flowlog.toml", &cfg).unwrap();
    let xlb = XlbProcess::start(&lab.xlb.ns, &path, &[]).unwrap();
    let mut lines = Vec::new();
    let read = |lines: &mut Vec<String>, want: &dyn Fn(&[String]) -> bool| {
        let until = std::time::Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 2048];
        while !want(lines) {
            assert!(std::time::Instant::now() < until, "lines so far: {lines:#?}");
            if let Ok(n) = sink.recv(&mut buf) {
                lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    };
    let mut seen = Vec::new();
    for c in &lab.client.addrs {
        seen.push((c.to_string(), hello(&lab, (*c).into())));
    }
    let flows = |l: &[String]| l.iter().filter(|l| l.contains(" web web/")).count();
    read(&mut lines, &|l| flows(l) >= seen.len());
    for (client, backend) in &seen {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!(": {client}:")))
            .unwrap_or_else(|| panic!("no line for {client}: {lines:#?}"));
        // local1.info, then HAProxy's tcplog as logasap writes it.
        let re = regex::Regex::new(&format!(
            r"^<142>[A-Z][a-z]{{2}} [ 123]\d \d\d:\d\d:\d\d xlb\[\d+\]: {}:\d+ \[\d\d/[A-Z][a-z]{{2}}/\d{{4}}:\d\d:\d\d:\d\d\.\d{{3}}\] web web/{backend} 0/-1/\+0 \+0 -- 0/0/0/0/0 0/0\n?$",
            regex::escape(client)
        ))
        .unwrap();
        assert!(re.is_match(line), "{line:?}");
    }
    // Both backends out: the next new flow is dropped, and logged so.
    for be in ["be0", "be1"] {
        let out = lab::xlb::xlb_once(&lab.xlb.ns, &["server", "set-state", "web", be, "maint"]).unwrap();
        assert!(out.status.success());
    }
    let client = lab.client.addrs[0];
    let _ = lab::servers::tcp_hello(
        &lab.client.ns,
        SocketAddr::new(client.into(), 0),
        lab::l4::dst(),
        Duration::from_millis(500),
    );
    read(&mut lines, &|l| l.iter().any(|l| l.contains(" web web/<NOSRV> ")));
    let dropped = lines.iter().find(|l| l.contains(" web web/<NOSRV> ")).unwrap();
    assert!(dropped.contains(" +0 SC "), "{dropped}");
    assert!(dropped.contains(&format!(": {client}:")), "{dropped}");
    xlb.stop().unwrap();
}

/// The runtime config API adds an L4 service: the XDP program gets its
/// service entry and ring, connections to its VIP reach its backends, and
/// the service already running keeps its own. Removed, it stops
/// forwarding.
#[test]
fn an_l4_service_added_and_removed_through_the_config_api() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 2,
        client_addrs: 4,
    })
    .unwrap();
    let _servers = start_servers(&lab, 8080, false);
    let backends = [("be0", 0, 1), ("be1", 1, 1)];
    let path = temp_file("api-l4.toml", &config("nat", 8080, &backends)).unwrap();
    let xlb = XlbProcess::start(&lab.xlb.ns, &path, &[]).unwrap();
    let client: std::net::IpAddr = lab.client.addrs[0].into();
    assert_eq!(hello(&lab, client), predict(&backends, client));
    let vip2 = vip(VIP_N + 1);
    let body = serde_json::json!({
        "name": "web2", "vip": vip2.to_string(), "port": 80, "mode": "nat",
        "health": {"kind": "none"},
        "backend": [{"name": "only", "address": format!("{}:8080", lab.backends[1].ip)}]
    });
    let curl = |method: &str, path: &str, body: Option<&serde_json::Value>| {
        let mut c = lab.xlb.ns.cmd("curl");
        c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method]);
        if let Some(b) = body {
            c.args(["--data-binary", &b.to_string()]);
        }
        let out = c.arg(format!("http://127.0.0.1:9900/api/v1{path}")).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(curl("POST", "/services", Some(&body)), "201");
    let to_web2 = |c: std::net::IpAddr| {
        lab::servers::tcp_hello(
            &lab.client.ns,
            SocketAddr::new(c, 0),
            SocketAddr::new(vip2.into(), 80),
            Duration::from_millis(1500),
        )
    };
    for c in &lab.client.addrs {
        assert_eq!(to_web2((*c).into()).unwrap(), lab.backends[1].role, "web2 from {c}");
    }
    assert_eq!(hello(&lab, client), predict(&backends, client), "web undisturbed");
    let st = status(&lab);
    assert_eq!(st["services"].as_array().map(Vec::len), Some(2));
    assert_eq!(curl("DELETE", "/services/web2", None), "204");
    assert!(to_web2(client).is_err(), "a removed service forwards nothing");
    assert_eq!(hello(&lab, client), predict(&backends, client));
    xlb.stop().unwrap();
}
