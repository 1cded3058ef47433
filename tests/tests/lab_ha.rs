//! High availability with real keepalived: two xlb nodes in a VRRP pair
//! with flow sync. The master is cut off and killed hard in the middle of
//! 20 long TCP streams, then comes back (rebooted: no addresses, no pinned
//! state) and preempts; every stream must finish with every byte echoed
//! once, in order, and no reset, in nat and in dsr mode.

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use lab::{
    ha::{stream, wait_until, HaLab, HA_VIP, NODE_IPS, PORT},
    http::get,
    servers::{Kind, Server},
    topology::client_ip,
    xlb::{xlb_binary, xlb_once},
};

const STREAMS: usize = 20;
const CLIENTS: usize = 4;

fn status(lab: &HaLab, node: usize) -> serde_json::Value {
    let out = xlb_once(&lab.nodes[node].ns, &["status", "--json"]).unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("status: {}", String::from_utf8_lossy(&out.stderr)))
}

fn failover_and_back(mode: &str) {
    let lab = HaLab::new(3, CLIENTS).unwrap();
    let _servers = lab.start_backends(mode == "dsr");
    let mut xlb = [Some(lab.start_xlb(0, mode)), Some(lab.start_xlb(1, mode))];
    let mut ka = [Some(lab.start_keepalived(0)), Some(lab.start_keepalived(1))];
    let role = |ka: &[Option<lab::ha::Keepalived>; 2], i: usize| ka[i].as_ref().and_then(|k| k.role());
    let logs = |ka: &[Option<lab::ha::Keepalived>; 2]| {
        ka.iter()
            .flatten()
            .map(|k| format!("--- keepalived ---\n{}", k.log()))
            .collect::<String>()
    };
    assert!(
        wait_until(Duration::from_secs(15), || role(&ka, 0).as_deref() == Some("MASTER")),
        "node0 did not become master:\n{}",
        logs(&ka)
    );
    let dst = SocketAddr::new(HA_VIP.into(), PORT);
    let length = Duration::from_secs(16);
    let start = Instant::now();
    let streams: Vec<_> = (0..STREAMS)
        .map(|k| stream(&lab.client.ns, k, IpAddr::V4(client_ip(k % CLIENTS)), dst, length))
        .collect();

    // Failover: the master's cable pulled, then xlb and keepalived killed.
    thread::sleep(Duration::from_secs(3));
    let cut_at = Instant::now();
    lab.cut(0);
    ka[0].as_mut().unwrap().kill_hard();
    drop(xlb[0].take());
    assert!(
        wait_until(Duration::from_secs(5), || role(&ka, 1).as_deref() == Some("MASTER")),
        "node1 did not take over:\n{}",
        logs(&ka)
    );
    let took_over = cut_at.elapsed();

    // Failback: node0 reboots (no addresses, no pins) and comes back.
    thread::sleep(Duration::from_secs(2));
    lab.wipe(0);
    lab.reconnect(0);
    let back_at = Instant::now();
    xlb[0] = Some(lab.start_xlb(0, mode));
    ka[0] = Some(lab.start_keepalived(0));
    if !wait_until(Duration::from_secs(12), || role(&ka, 0).as_deref() == Some("MASTER")) {
        panic!(
            "node0 did not take the VIP back:\nnode1: {}\nnode0: {}\n{}\n--- node0 xlb ---\n{}",
            status(&lab, 1),
            status(&lab, 0),
            logs(&ka),
            xlb[0].as_ref().unwrap().log()
        );
    }
    let preempted = back_at.elapsed();
    assert!(
        start.elapsed() + Duration::from_secs(2) < length,
        "the failback came too late to be tested mid-stream"
    );
    let st0 = status(&lab, 0);

    let reports: Vec<_> = streams.into_iter().map(|h| h.join().unwrap()).collect();
    let failed: Vec<String> = reports
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("stream {}: {e}", r.id)))
        .collect();
    let window = Duration::from_secs(3);
    let failover = reports.iter().map(|r| r.gap_around(cut_at, window)).max().unwrap();
    let failback = reports
        .iter()
        .map(|r| r.gap_around(back_at, preempted + window))
        .max()
        .unwrap();
    let bytes: u64 = reports.iter().map(|r| r.received).sum();
    println!(
        "{mode}: {STREAMS} streams, {bytes} bytes echoed, {} broken; node1 master {:.0} ms after the cut; \
         longest silence at failover {:.0} ms, at failback {:.0} ms (node0 master {:.0} ms after its restart)",
        failed.len(),
        took_over.as_secs_f64() * 1e3,
        failover.as_secs_f64() * 1e3,
        failback.as_secs_f64() * 1e3,
        preempted.as_secs_f64() * 1e3,
    );
    let dump = || {
        format!(
            "{}\n--- node0 xlb ---\n{}\n--- node1 xlb ---\n{}",
            logs(&ka),
            xlb[0].as_ref().map(|x| x.log()).unwrap_or_default(),
            xlb[1].as_ref().map(|x| x.log()).unwrap_or_default()
        )
    };
    assert!(failed.is_empty(), "{failed:#?}\n{}", dump());
    assert!(reports.iter().all(|r| r.sent > 100 * 1024), "streams too short");
    // The traffic really moved back: node0 forwarded the streams' packets
    // for seconds after its restart (some 50 a second each way per stream).
    let end0 = status(&lab, 0);
    let pkts = end0["services"][0]["packets"].as_u64().unwrap();
    assert!(
        pkts > (STREAMS * 50 * 2) as u64,
        "node0 forwarded {pkts} packets after the failback\n{end0}"
    );
    // node0 came back with node1's table: the initial pull installed the
    // open streams before it took the VIP.
    let pull = st0["sync"]["pull"].as_str().unwrap_or_default().to_string();
    let pulled: u64 = pull.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(
        pulled >= STREAMS as u64,
        "node0's pull brought {pulled} flows ({pull}), not the {STREAMS} streams\nnode0 {}\nnode1 {}",
        st0["sync"],
        status(&lab, 1)["sync"]
    );
    assert_eq!(st0["sync"]["rejected"], 0, "{st0}");
}

#[test]
fn vrrp_pair_nat_keeps_every_stream_over_failover_and_failback() {
    lab::require_root!();
    failover_and_back("nat");
}

#[test]
fn vrrp_pair_dsr_keeps_every_stream_over_failover_and_failback() {
    lab::require_root!();
    failover_and_back("dsr");
}

/// The nodes' admin credentials, which they also present to each other to
/// share appsession tables.
const PEER_AUTH: &str = "peer:s3cret";

/// The appsession table as node `i` holds it: (id, server).
fn sessions(lab: &HaLab, i: usize) -> Vec<(String, String)> {
    let out = lab.nodes[i]
        .ns
        .cmd(xlb_binary())
        .args(["session", "show", "site", "--json", "--admin", &format!("{}:9900", NODE_IPS[i])])
        .env("XLB_ADMIN_AUTH", PEER_AUTH)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|e| (e["id"].as_str().unwrap().to_string(), e["server"].as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// An HTTP service on the VIP of a VRRP pair: a client placed by the
/// inserted cookie, and another by its application session (learnt on the
/// master, shared with the backup through `global.peers`), stay on their
/// servers when the master dies and the backup's proxy takes the VIP.
#[test]
fn vrrp_pair_http_cookie_and_appsession_persistence_hold_over_failover() {
    lab::require_root!();
    let lab = HaLab::new(3, 1).unwrap();
    let _servers: Vec<Server> = lab
        .backends
        .iter()
        .map(|b| Server::start(&b.ns, SocketAddr::new(b.ip.into(), 8080), &b.role, Kind::Http).unwrap())
        .collect();
    let config = |i: usize| {
        let mut c = format!(
            "[global]\nadmin = \"{me}:9900\"\nadmin_auth = \"{PEER_AUTH}\"\npeers = [\"{peer}:9900\"]\n\
             nonlocal_bind = true\n\n[[service]]\nname = \"site\"\nvip = \"{HA_VIP}\"\nport = 8080\nmode = \"http\"\n\
             [service.cookie]\nname = \"SERVERID\"\n\
             [service.appsession]\ncookie = \"JSESSIONID\"\n",
            me = NODE_IPS[i],
            peer = NODE_IPS[1 - i]
        );
        for b in &lab.backends {
            c += &format!(
                "[[service.backend]]\nname = \"{}\"\naddress = \"{}:8080\"\ncookie = \"c-{}\"\n",
                b.role, b.ip, b.role
            );
        }
        c
    };
    let admin = |i: usize| format!("{}:9900", NODE_IPS[i]);
    let mut xlb0 = Some(lab.start_xlb_with(0, &config(0), &admin(0)));
    let _xlb1 = lab.start_xlb_with(1, &config(1), &admin(1));
    let mut ka0 = lab.start_keepalived_with(0, &admin(0));
    let ka1 = lab.start_keepalived_with(1, &admin(1));
    assert!(
        wait_until(Duration::from_secs(15), || ka0.role().as_deref() == Some("MASTER")),
        "node0 did not become master:\n{}",
        ka0.log()
    );
    let site = SocketAddr::new(HA_VIP.into(), 8080);
    let ns = &lab.client.ns;
    // A client placed by the inserted cookie, one by its session.
    let first = get(ns, site, "/", &[]).unwrap();
    let by_cookie = first.backend().to_string();
    let cookie = first.set_cookie("SERVERID").expect("xlb inserts SERVERID");
    let mut by_session = None;
    // A session on another server than the cookie's, so both are tested.
    for _ in 0..20 {
        let r = get(ns, site, "/login?session=JSESSIONID", &[]).unwrap();
        if r.backend() != by_cookie {
            by_session = Some((r.set_cookie("JSESSIONID").unwrap(), r.backend().to_string()));
            break;
        }
    }
    let (session, session_server) = by_session.expect("20 logins all on one server");
    let placed = get(ns, site, "/", &[&format!("Cookie: SERVERID={cookie}")]).unwrap();
    assert_eq!(placed.backend(), by_cookie, "cookie persistence before failover: {cookie}");
    assert!(
        wait_until(Duration::from_secs(5), || sessions(&lab, 1).contains(&(session.clone(), session_server.clone()))),
        "the session never reached node1"
    );

    lab.cut(0);
    ka0.kill_hard();
    drop(xlb0.take());
    assert!(
        wait_until(Duration::from_secs(5), || ka1.role().as_deref() == Some("MASTER")),
        "node1 did not take over:\n{}",
        ka1.log()
    );
    let ask = |headers: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match get(ns, site, "/", headers) {
                Ok(r) => return r.backend().to_string(),
                Err(e) if Instant::now() > deadline => panic!("no answer through node1: {e}"),
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    };
    for _ in 0..5 {
        assert_eq!(ask(&[&format!("Cookie: SERVERID={cookie}")]), by_cookie, "cookie persistence after failover");
        assert_eq!(
            ask(&[&format!("Cookie: JSESSIONID={session}")]),
            session_server,
            "appsession persistence after failover"
        );
    }
}
