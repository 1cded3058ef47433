//! The keepalived pair in the lab: `cargo xtask run ha` (one failover and
//! failback, told as it happens) and `cargo xtask bench ha` (rounds of it in
//! nat and dsr mode, plus the sync's bandwidth, into bench-results/ha.md).

use std::{fmt::Write as _, path::Path, time::Duration, time::Instant};

use anyhow::{anyhow, Result};
use lab::ha::{drill, Drill};

use crate::root;

const STREAMS: usize = 20;
const CLIENTS: usize = 4;
const LENGTH: Duration = Duration::from_secs(16);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn kept(d: &Drill) -> usize {
    d.reports.len() - d.broken().len()
}

pub fn demo(xlb_bin: &Path) -> Result<()> {
    // SAFETY: set before any thread starts.
    unsafe { std::env::set_var("XLB_BIN", xlb_bin) };
    println!(
        "keepalived pair in the lab: node0 198.18.0.2 (priority 150), node1 198.18.0.3 (100), \
         VIP 198.19.0.1:80 (nat), snat 198.18.0.10, 3 backends, flow sync on port 7946"
    );
    let t0 = Instant::now();
    let say = |what: &str| println!("[{:6.2} s] {what}", t0.elapsed().as_secs_f64());
    let d = drill("nat", STREAMS, CLIENTS, LENGTH, &say).map_err(|e| anyhow!(e))?;
    say("streams done");
    println!("\nroles (keepalived notify):");
    for (t, node, role) in &d.roles {
        println!("  {t:7.3} s  node{node} {role}");
    }
    let bytes: u64 = d.reports.iter().map(|r| r.received).sum();
    println!(
        "\nfailover: node1 MASTER {:.0} ms after the cut; the streams' longest silence {:.0} ms\n\
         failback: node0 MASTER {:.0} ms after its restart (it pulled the flow table first); longest silence {:.0} ms\n\
         connections kept: {} of {} ({bytes} bytes echoed, each checked)",
        ms(d.took_over),
        ms(d.failover_silence),
        ms(d.preempted),
        ms(d.failback_silence),
        kept(&d),
        d.reports.len()
    );
    for b in d.broken() {
        println!("  broken: {b}");
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn bench(xlb_bin: &Path, rounds: usize) -> Result<()> {
    // SAFETY: set before any thread starts.
    unsafe { std::env::set_var("XLB_BIN", xlb_bin) };
    let mut md = String::from("# xlb HA benchmark (keepalived pair)\n\n");
    let _ = writeln!(
        md,
        "`cargo xtask bench ha --rounds {rounds}`: a VRRP pair (keepalived, advert_int 0.1 s) with flow sync carries \
         {STREAMS} TCP echo streams (1 KiB every 20 ms each); the master's cable is pulled and xlb and keepalived \
         are killed (SIGKILL), then the master reboots (no addresses, no pinned state) and preempts. Times are \
         medians (min-max) of {rounds} rounds per mode. \"Silence\" is the longest pause in any stream's echo \
         around the event: TCP's retransmission timer adds to the VRRP takeover.\n"
    );
    let _ = writeln!(
        md,
        "| mode | kept | takeover ms | failover silence ms | failback: master again ms | failback silence ms |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    let mut sync_line = String::new();
    for mode in ["nat", "dsr"] {
        let mut ds = Vec::new();
        for r in 0..rounds {
            eprintln!("{mode} round {}", r + 1);
            ds.push(drill(mode, STREAMS, CLIENTS, LENGTH, &|w| eprintln!("  {w}")).map_err(|e| anyhow!(e))?);
        }
        let stat = |f: &dyn Fn(&Drill) -> Duration| {
            let v: Vec<f64> = ds.iter().map(|d| ms(f(d))).collect();
            let (lo, hi) = v.iter().fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
            format!("{:.0} ({lo:.0}-{hi:.0})", median(v))
        };
        let kept: usize = ds.iter().map(kept).sum();
        let total: usize = ds.iter().map(|d| d.reports.len()).sum();
        let _ = writeln!(
            md,
            "| {mode} | {kept}/{total} | {} | {} | {} | {} |",
            stat(&|d| d.took_over),
            stat(&|d| d.failover_silence),
            stat(&|d| d.preempted),
            stat(&|d| d.failback_silence)
        );
        if mode == "nat" {
            // node0's sends over its second life: the flows it opened or
            // changed, in how many datagrams.
            let s = &ds[0].end[0]["sync"];
            let (flows, msgs) = (
                s["flows_sent"].as_u64().unwrap_or(0),
                s["messages_sent"].as_u64().unwrap_or(0),
            );
            sync_line = format!("measured in the nat drill: node0 sent {flows} flow records in {msgs} datagrams");
        }
    }
    // One datagram: Ethernet 14 + IPv4 20 + UDP 8 + header 32 + HMAC 32,
    // and 80 bytes a record, up to 16 records.
    let per_record_full = (14.0 + 20.0 + 8.0 + 32.0 + 32.0 + 16.0 * 80.0) / 16.0;
    // A full-NAT connection is reported when it opens, when its backend
    // answers and when it closes; a dsr flow once.
    let nat_bps = 10_000.0 * 3.0 * per_record_full * 8.0;
    let _ = writeln!(
        md,
        "\n## Sync bandwidth\n\nPer peer, at 10,000 new connections a second with datagrams full \
         ({per_record_full:.1} bytes on the wire per record): nat (3 records a connection: opened, answered, \
         closing) {:.1} Mbit/s, dsr (1 record) {:.1} Mbit/s; plus the 20 s refresh of flows that carried \
         traffic. At low rates a datagram carries what one wake-up of the reader found (1-2 records), \
         up to 186 bytes a record; {sync_line}.\n",
        nat_bps / 1e6,
        nat_bps / 3.0 / 1e6
    );
    let _ = writeln!(
        md,
        "The cost of the sync in the XDP program (a new flow with the sync on vs off, same run) is in \
         `bench-results/l4.md` (`cargo xtask bench l4`)."
    );
    print!("{md}");
    let dir = root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("ha.md"), &md)?;
    eprintln!("written to {}", dir.join("ha.md").display());
    Ok(())
}
