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
    ha::{stream, wait_until, HaLab, HA_VIP, PORT},
    topology::client_ip,
    xlb::xlb_once,
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
