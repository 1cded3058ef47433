//! The flow sync's guard, against a real node: it installs only flows
//! signed with the shared key, with a fresh clock and a rising sequence
//! number, counts everything else as rejected, and its `/healthz` stays 503
//! until its initial pull has given up on a peer that does not answer.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lab::{
    http::get,
    l4::{config, status, wait_for},
    topology::{backend_ip, client_ip, vip, XLB_IP},
    xlb::{temp_file, XlbProcess},
    Lab, LabSpec,
};
use lb_common::{NAT_OPEN, PROTO_TCP, SYNC_NAT};
use lb_user::l4::sync::wire::{encode, Header, Kind, Record};

const KEY: &str = "the lab's shared sync key, 32+ bytes";
/// The node's one peer.
const PEER: &str = "198.18.9.9";

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn sync_installs_only_signed_fresh_messages_and_healthz_waits_for_the_pull() {
    lab::require_root!();
    let lab = Lab::new(&LabSpec {
        backends: 2,
        client_addrs: 1,
    })
    .unwrap();
    let key = temp_file("lab-sync.key", KEY).unwrap();
    let cfg = format!(
        "{}\n[sync]\nlisten = \"{XLB_IP}:7946\"\npeers = [\"{PEER}:7946\"]\nkey_file = \"{}\"\n",
        config("nat", 8080, &[("be0", 0, 1), ("be1", 1, 1)]),
        key.display()
    );
    let path = temp_file("lab-sync.toml", &cfg).unwrap();
    let xlb = XlbProcess::start(&lab.xlb.ns, &path, &[]).unwrap();
    let admin: SocketAddr = "127.0.0.1:9900".parse().unwrap();
    let health = || get(&lab.xlb.ns, admin, "/healthz", &[]).unwrap();
    let first = health();
    assert_eq!(first.status, 503, "ready before the pull: {}", first.body);
    assert!(first.body.contains("pulling"), "{}", first.body);

    let record = Record {
        kind: SYNC_NAT,
        proto: PROTO_TCP,
        state: NAT_OPEN,
        client: IpAddr::V4(client_ip(0)),
        vip: IpAddr::V4(vip(10)),
        client_port: 40000,
        vip_port: 80,
        backend: IpAddr::V4(backend_ip(0)),
        backend_port: 8080,
        snat: IpAddr::V4(XLB_IP),
        snat_port: 2000,
        age_ms: 0,
    };
    let header = |seq: u64, time_ms: u64| Header {
        kind: Kind::Flows,
        count: 1,
        sender: 42,
        seq,
        time_ms,
    };
    let good = encode(KEY.as_bytes(), &header(1, now_ms()), &[record]);
    let datagrams: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"hello".to_vec()),
        (
            "not from a peer",
            encode(KEY.as_bytes(), &header(9, now_ms()), &[record]),
        ),
        ("good", good.clone()),
        ("replayed", good),
        (
            "another key",
            encode(b"someone else's key, 32 bytes...", &header(2, now_ms()), &[record]),
        ),
        (
            "stale clock",
            encode(KEY.as_bytes(), &header(3, now_ms() - 600_000), &[record]),
        ),
    ];
    // The client also holds the peer's address, to speak as the peer
    // (nothing listens there: the node's pull is refused).
    lab.client
        .ns
        .ip(&["addr", "add", &format!("{PEER}/16"), "dev", "eth0"])
        .unwrap();
    let bind = |ip: &str| {
        lab.client
            .ns
            .enter(|| UdpSocket::bind(SocketAddr::new(ip.parse().unwrap(), 0)))
            .unwrap()
            .unwrap()
    };
    let (as_peer, as_client) = (bind(PEER), bind(&client_ip(0).to_string()));
    for (what, d) in &datagrams {
        let sock = if *what == "not from a peer" {
            &as_client
        } else {
            &as_peer
        };
        sock.send_to(d, SocketAddr::new(IpAddr::V4(XLB_IP), 7946)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let sync = || status(&lab)["sync"].clone();
    wait_for(Duration::from_secs(5), "the datagrams to be judged", || {
        sync()["rejected"].as_u64() == Some(5)
    });
    let s = sync();
    assert_eq!(s["messages_received"], 1, "{s}");
    assert_eq!(s["flows_installed"], 1, "{s}");
    assert_eq!(s["unplaced"], 0, "{s}");

    // The pull gives up on the silent peer within its deadline; then the
    // node is ready, alone.
    wait_for(Duration::from_secs(20), "healthz to turn 200", || {
        health().status == 200
    });
    let s = sync();
    assert!(s["pull"].as_str().unwrap().contains("no peer answered"), "{s}");
    assert_eq!(s["ready"], true);
    xlb.stop().unwrap();
}
