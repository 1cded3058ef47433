//! High availability with real keepalived: two xlb nodes in a VRRP pair
//! with flow sync. The master is cut off and killed hard in the middle of
//! 20 long TCP streams, then comes back (rebooted: no addresses, no pinned
//! state) and preempts; every stream must finish with every byte echoed
//! once, in order, and no reset, in nat and in dsr mode.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use lab::{
    ha::{drill, wait_until, HaLab, HA_VIP, NODE_IPS},
    http::get,
    servers::{Kind, Server},
    xlb::xlb_binary,
};

const STREAMS: usize = 20;
const CLIENTS: usize = 4;

fn failover_and_back(mode: &str) {
    let d = drill(mode, STREAMS, CLIENTS, Duration::from_secs(16), &|_| {}).unwrap_or_else(|e| panic!("{e}"));
    let broken = d.broken();
    let bytes: u64 = d.reports.iter().map(|r| r.received).sum();
    println!(
        "{mode}: {STREAMS} streams, {bytes} bytes echoed, {} broken; node1 master {:.0} ms after the cut; \
         longest silence at failover {:.0} ms, at failback {:.0} ms (node0 master {:.0} ms after its restart)",
        broken.len(),
        d.took_over.as_secs_f64() * 1e3,
        d.failover_silence.as_secs_f64() * 1e3,
        d.failback_silence.as_secs_f64() * 1e3,
        d.preempted.as_secs_f64() * 1e3,
    );
    assert!(broken.is_empty(), "{broken:#?}\n{}", d.logs);
    assert!(d.reports.iter().all(|r| r.sent > 100 * 1024), "streams too short");
    // The VIP went from node0 to node1 and back (before that, node1 may
    // have held it while node0's xlb was starting: node0 stays out until
    // its /healthz passes). Both nodes may also claim it for a moment at
    // start-up, when their first timers run out together, and the lower
    // one yields at the first advertisement: a node master again after
    // that is the same holder as far as the VIP's moves go.
    let mut masters: Vec<usize> = d.roles.iter().filter(|r| r.2 == "MASTER").map(|r| r.1).collect();
    masters.dedup();
    assert!(masters.ends_with(&[0, 1, 0]), "{:?}", d.roles);
    // The traffic really moved back: node0 forwarded the streams' packets
    // for seconds after its restart (some 50 a second each way per stream).
    let pkts = d.end[0]["services"][0]["packets"].as_u64().unwrap_or(0);
    assert!(
        pkts > (STREAMS * 50 * 2) as u64,
        "node0 forwarded {pkts} packets after the failback"
    );
    // node0 came back with node1's table: the initial pull installed the
    // open streams before it took the VIP.
    let sync = &d.node0_back["sync"];
    let pull = sync["pull"].as_str().unwrap_or_default();
    let pulled: u64 = pull.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(
        pulled >= STREAMS as u64,
        "node0's pull brought {pulled} flows ({pull}), not the {STREAMS} streams\nnode0 {sync}\nnode1 {}",
        d.end[1]["sync"]
    );
    for st in &d.end {
        assert_eq!(st["sync"]["rejected"], 0, "{st}");
        assert_eq!(st["sync"]["events_lost"], 0, "{st}");
    }
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
        .args([
            "session",
            "show",
            "site",
            "--json",
            "--admin",
            &format!("{}:9900", NODE_IPS[i]),
        ])
        .env("XLB_ADMIN_AUTH", PEER_AUTH)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["id"].as_str().unwrap().to_string(),
                        e["server"].as_str().unwrap().to_string(),
                    )
                })
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
    assert_eq!(
        placed.backend(),
        by_cookie,
        "cookie persistence before failover: {cookie}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || sessions(&lab, 1)
            .contains(&(session.clone(), session_server.clone()))),
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
        assert_eq!(
            ask(&[&format!("Cookie: SERVERID={cookie}")]),
            by_cookie,
            "cookie persistence after failover"
        );
        assert_eq!(
            ask(&[&format!("Cookie: JSESSIONID={session}")]),
            session_server,
            "appsession persistence after failover"
        );
    }
}
