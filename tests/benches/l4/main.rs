//! `cargo xtask bench l4`: the L4 data path's cost per packet, side by side
//! with baselines in one run, and forwarding throughput through the lab.
//!
//! 1. BPF_PROG_TEST_RUN, one packet per call (repeat=1: with more the kernel
//!    does not reset the packet between iterations, so a rewriting program
//!    would measure another path), the four programs alternating call by
//!    call, the thread pinned to one CPU (per-CPU maps): a trivial XDP_PASS
//!    (the floor of any program), parse + MAC swap + XDP_TX (the floor of any
//!    forwarding), xlb on a new flow (a SYN from a new source each call) and
//!    on an established flow (an ACK of a flow in the table); one full-NAT
//!    service with 100 backends. The kernel's own per-run time is reported.
//! 2. Packets per second through a live lab (`live.rs`): a generator that
//!    outruns the forwarder sends into xlb (nat and dsr, established flows
//!    and every frame a new flow), the parse + MAC swap + XDP_TX floor and
//!    the kernel's IP forwarding, in rounds, each window bounded in time.
//!
//! Results are printed and written to `bench-results/l4.md`.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Instant,
};

use aya::{
    maps::{Array, MapData, RingBuf},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use lab::{
    fib_ns,
    packet::{Frame, TCP_ACK, TCP_SYN},
    topology::{backend_ip, vip},
};
use lb_common::maps;
use lb_user::{
    config,
    l4::{
        bpf::{load_object, xdp_program},
        map_manager::MapManager,
    },
};

mod control;
mod live;
mod scale;

/// Calls per program (XLB_BENCH_CALLS overrides, for quick looks).
fn calls() -> usize {
    std::env::var("XLB_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}
const BACKENDS: usize = 100;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub(crate) fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0,
            "sched_setaffinity"
        );
    }
}

fn bench_config() -> String {
    let mut c = format!(
        "[[service]]\nname = \"bench\"\nvip = \"{}\"\nport = 80\nmode = \"nat\"\nsnat = \"{}\"\n[service.health]\nkind = \"none\"\n",
        vip(10),
        fib_ns::SNAT_V4
    );
    for i in 0..BACKENDS {
        c += &format!(
            "[[service.backend]]\nname = \"be{i}\"\naddress = \"{}:8080\"\n",
            backend_ip(i)
        );
    }
    // A service whose one backend is drained: its new flows are the rare
    // event "no backend" (XDP_DROP).
    c += &format!(
        "[[service]]\nname = \"drained\"\nvip = \"{}\"\nport = 80\nmode = \"nat\"\nsnat = \"{}\"\n\
         [service.health]\nkind = \"none\"\n[[service.backend]]\nname = \"d0\"\naddress = \"{}:8080\"\nweight = 0\n",
        vip(11),
        fib_ns::SNAT_V4,
        backend_ip(0)
    );
    c
}

pub(crate) fn floor_obj() -> PathBuf {
    std::env::var_os("XLB_BENCH_FLOOR_OBJ")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/ebpf/bpfel-unknown-none/release/bench-floor"))
}

/// One program under test: its mean kernel time and the action it must return.
struct Timed {
    name: &'static str,
    total_ns: u128,
    wall_ns: u128,
    want_action: u32,
}

/// One BPF_PROG_TEST_RUN of `frame`: the action and the kernel's time.
pub(crate) fn test_run(prog: &Xdp, frame: &[u8], out: &mut [u8]) -> (u32, u128) {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(out),
            ..Default::default()
        })
        .expect("test_run");
    (r.return_value, r.duration.as_nanos())
}

fn run_once(prog: &Xdp, frame: &[u8], out: &mut [u8], t: &mut Timed) {
    let start = Instant::now();
    let (action, ns) = test_run(prog, frame, out);
    t.wall_ns += start.elapsed().as_nanos();
    assert_eq!(action, t.want_action, "{}: unexpected action", t.name);
    t.total_ns += ns;
}

/// Where the sync-on new flows' endpoints start (apart from the others).
const SYNC_FLOWS: usize = 1 << 22;

/// A SYN from the n-th distinct client endpoint (source address and port).
pub(crate) fn new_flow_syn(n: usize) -> Vec<u8> {
    // 198.18.128.0/17: 32768 addresses, then the source port varies.
    let a = 128 * 256 + (n % 32768);
    let src = IpAddr::V4(Ipv4Addr::new(198, 18, (a >> 8) as u8, a as u8));
    Frame::tcp(src, 1024 + (n / 32768) as u16, vip(10).into(), 80, TCP_SYN).build()
}

fn per_packet() -> Vec<Timed> {
    pin_to_cpu(0);
    let mut ebpf = load_object().expect("xlb's XDP object (cargo xtask build)");
    let cfg = config::parse(Path::new("bench.toml"), &bench_config()).unwrap();
    MapManager::default()
        .apply(&mut ebpf, &cfg, &Default::default(), &|_| None)
        .unwrap();
    let mut floors =
        Ebpf::load(&std::fs::read(floor_obj()).expect("bench-floor object (cargo xtask bench builds it)")).unwrap();
    for name in ["floor_pass", "floor_swap"] {
        let p: &mut Xdp = floors.program_mut(name).unwrap().try_into().unwrap();
        p.load().unwrap();
    }
    let client = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 1));
    let syn = Frame::tcp(client, 40000, vip(10).into(), 80, TCP_SYN).build();
    let ack = Frame::tcp(client, 40000, vip(10).into(), 80, TCP_ACK).build();
    let mut out = vec![0u8; 256];
    // XDP_PASS 2, XDP_TX 3, XDP_REDIRECT 4 (BPF_PROG_TEST_RUN arrives on lo, leaves by eth0).
    let mut t = [
        Timed {
            name: "floor: XDP_PASS",
            total_ns: 0,
            wall_ns: 0,
            want_action: 2,
        },
        Timed {
            name: "floor: parse + MAC swap + XDP_TX",
            total_ns: 0,
            wall_ns: 0,
            want_action: 3,
        },
        Timed {
            name: "xlb: new flow (SYN, new source)",
            total_ns: 0,
            wall_ns: 0,
            want_action: 4,
        },
        Timed {
            name: "xlb: established flow (ACK)",
            total_ns: 0,
            wall_ns: 0,
            want_action: 4,
        },
        Timed {
            name: "xlb: established flow (ACK), event log on",
            total_ns: 0,
            wall_ns: 0,
            want_action: 4,
        },
        Timed {
            name: "xlb: no backend (rare event), event log off",
            total_ns: 0,
            wall_ns: 0,
            want_action: 1,
        },
        Timed {
            name: "xlb: new flow (SYN, new source), flow sync on",
            total_ns: 0,
            wall_ns: 0,
            want_action: 4,
        },
    ];
    let xlb_prog = xdp_program(&mut ebpf).unwrap();
    // The established flow enters the table once, before timing.
    let mut prime = Timed {
        name: "prime",
        total_ns: 0,
        wall_ns: 0,
        want_action: 4,
    };
    run_once(xlb_prog, &syn, &mut out, &mut prime);
    let pass: &Xdp = floors.program("floor_pass").unwrap().try_into().unwrap();
    let swap: &Xdp = floors.program("floor_swap").unwrap().try_into().unwrap();
    let drained = Frame::tcp(client, 40000, vip(11).into(), 80, TCP_SYN).build();
    // The event log's switch, flipped around one program run per round:
    // forwarded packets must not pay for it either way.
    let mut switch: Array<MapData, u32> = Array::try_from(ebpf.take_map(maps::DEBUG).unwrap()).unwrap();
    // The flow sync's switch and ring: on around the sync-on new flows,
    // the ring drained by this thread as the daemon's reader would.
    let mut sync: Array<MapData, u32> = Array::try_from(ebpf.take_map(maps::SYNC).unwrap()).unwrap();
    let mut ring = RingBuf::try_from(ebpf.take_map(maps::SYNC_EVENTS).unwrap()).unwrap();
    let xlb_prog: &Xdp = ebpf.program(lb_common::XDP_PROGRAM).unwrap().try_into().unwrap();
    for n in 0..calls() {
        let fresh = new_flow_syn(n);
        let [a, b, c, d, e, f, g] = &mut t;
        run_once(pass, &ack, &mut out, a);
        run_once(swap, &ack, &mut out, b);
        run_once(xlb_prog, &fresh, &mut out, c);
        run_once(xlb_prog, &ack, &mut out, d);
        switch.set(0, 1, 0).unwrap();
        run_once(xlb_prog, &ack, &mut out, e);
        switch.set(0, 0, 0).unwrap();
        run_once(xlb_prog, &drained, &mut out, f);
        sync.set(0, 1, 0).unwrap();
        run_once(xlb_prog, &new_flow_syn(n + SYNC_FLOWS), &mut out, g);
        sync.set(0, 0, 0).unwrap();
        while ring.next().is_some() {}
    }
    t.into_iter().collect()
}

/// Rounds of the live runs (XLB_BENCH_ROUNDS) and seconds per window
/// (XLB_BENCH_SECS).
fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The live lab's runs, in rounds (each round every run once, in a rotated
/// order), reported as medians with the spread of rounds.
fn live_rates() -> String {
    use live::{Run, Target};
    let runs = [
        Run {
            name: "floor: parse + MAC swap + XDP_TX",
            target: Target::Floor,
            flows: 1000,
        },
        Run {
            name: "kernel IP forwarding",
            target: Target::Kernel,
            flows: 1000,
        },
        Run {
            name: "xlb nat, established (1,000 flows)",
            target: Target::XlbNat,
            flows: 1000,
        },
        Run {
            name: "xlb dsr, established (1,000 flows)",
            target: Target::XlbDsr,
            flows: 1000,
        },
        Run {
            name: "xlb nat, established (1,000,000 flows)",
            target: Target::XlbNat,
            flows: 1_000_000,
        },
        Run {
            name: "xlb dsr, established (1,000,000 flows)",
            target: Target::XlbDsr,
            flows: 1_000_000,
        },
        Run {
            name: "xlb nat, every frame a new flow",
            target: Target::XlbNat,
            flows: 0,
        },
        Run {
            name: "xlb dsr, every frame a new flow",
            target: Target::XlbDsr,
            flows: 0,
        },
    ];
    let rounds = env_num("XLB_BENCH_ROUNDS", 3.0).max(1.0) as usize;
    let secs = env_num("XLB_BENCH_SECS", 2.0);
    let floor = floor_obj();
    let mut rig = live::Rig::new(&floor.with_file_name("bench-gen"), &floor);
    let mut got: Vec<Vec<live::Rate>> = vec![Vec::new(); runs.len()];
    for round in 0..rounds {
        for k in 0..runs.len() {
            let i = (k + round) % runs.len();
            let r = rig.measure(runs[i], secs);
            eprintln!(
                "round {round}: {}: sent {:.2} Mpps, received {:.2} Mpps",
                runs[i].name,
                r.sent_pps / 1e6,
                r.received_pps / 1e6
            );
            got[i].push(r);
        }
    }
    let outcomes = rig.stop();
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rx: Vec<Vec<f64>> = got
        .iter()
        .map(|g| g.iter().map(|r| r.received_pps / 1e6).collect())
        .collect();
    let med: Vec<f64> = rx.iter().map(|v| median(v)).collect();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "{rounds} rounds of {secs} s windows; UDP frames of 60 bytes. Medians, with the min-max of rounds.\n"
    );
    let _ = writeln!(
        md,
        "| path | generated Mpps | forwarded Mpps (min-max) | x floor | x kernel |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for (i, run) in runs.iter().enumerate() {
        let sent = median(&got[i].iter().map(|r| r.sent_pps / 1e6).collect::<Vec<_>>());
        let (lo, hi) = rx[i].iter().fold((f64::MAX, 0f64), |(l, h), &x| (l.min(x), h.max(x)));
        let _ = writeln!(
            md,
            "| {} | {sent:.2} | {:.2} ({lo:.2}-{hi:.2}) | {:.2} | {:.2} |",
            run.name,
            med[i],
            med[i] / med[0],
            med[i] / med[1]
        );
    }
    let ok = |m: bool| if m { "met" } else { "MISSED" };
    let (nat, new) = (med[2] / med[0], med[6].max(med[7]) / med[0]);
    let _ = writeln!(
        md,
        "\nTargets: nat established >= 0.8x the floor ({}: {nat:.2}x) and >= 3x kernel forwarding ({}: {:.2}x); \
         new flows >= 0.4x the floor ({}: nat {:.2}x, dsr {:.2}x).\n",
        ok(nat >= 0.8),
        ok(med[2] / med[1] >= 3.0),
        med[2] / med[1],
        ok(new >= 0.4),
        med[6] / med[0],
        med[7] / med[0]
    );
    let (nat_m, dsr_m) = (med[2] / med[4], med[3] / med[5]);
    let _ = writeln!(
        md,
        "1,000,000 flows against 1,000, live: a packet costs {nat_m:.2}x (nat) and {dsr_m:.2}x (dsr) \
         ({} the 1.2x target).\n",
        if nat_m.max(dsr_m) <= 1.2 { "within" } else { "MISSING" }
    );
    let _ = writeln!(md, "xlb's outcome counters after the runs: {outcomes}\n");
    md
}

fn main() {
    if !lab::have_root() {
        eprintln!("bench l4 needs root (namespaces, BPF)");
        std::process::exit(1);
    }
    if std::env::var_os("XLB_BENCH_LIVE_ONLY").is_some() {
        print!("{}", live_rates());
        return;
    }
    let ns = fib_ns::create(&format!("xlbt{}bench", std::process::id()), BACKENDS, &[]).unwrap();
    if std::env::var_os("XLB_BENCH_SCALE_ONLY").is_some() {
        print!("{}", ns.enter(scale::report).unwrap());
        return;
    }
    if std::env::var_os("XLB_BENCH_CONTROL_ONLY").is_some() {
        print!("{}{}", ns.enter(control::map_manager).unwrap(), control::daemon());
        return;
    }
    let timed = ns.enter(per_packet).unwrap();
    let scale = ns.enter(scale::report).unwrap();
    let control = ns.enter(control::map_manager).unwrap() + &control::daemon();
    drop(ns);
    let floor = timed[1].total_ns as f64 / calls() as f64;
    let mut md = String::new();
    let _ = writeln!(md, "# xlb L4 benchmark\n");
    let _ = writeln!(
        md,
        "BPF_PROG_TEST_RUN, {} calls of each program with repeat=1, alternating, pinned to CPU 0; \
         full-NAT service with {BACKENDS} backends. Kernel-measured time per run (includes the test-run \
         timer overhead), and wall time per bpf() call.\n",
        calls()
    );
    let _ = writeln!(md, "| program | ns/packet | wall ns/call | x parse+TX floor |");
    let _ = writeln!(md, "|---|---:|---:|---:|");
    for t in &timed {
        let ns = t.total_ns as f64 / calls() as f64;
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.0} | {:.2} |",
            t.name,
            ns,
            t.wall_ns as f64 / calls() as f64,
            ns / floor
        );
    }
    let est = timed[3].total_ns as f64 / calls() as f64 / floor;
    let new = timed[2].total_ns as f64 / calls() as f64 / floor;
    let _ = writeln!(
        md,
        "\nTargets: established <= 2x floor ({}: {est:.2}x), new flow <= 5x ({}: {new:.2}x).\n",
        if est <= 2.0 { "met" } else { "MISSED" },
        if new <= 5.0 { "met" } else { "MISSED" }
    );
    let on = timed[4].total_ns as f64 / timed[3].total_ns as f64;
    let _ = writeln!(
        md,
        "Data path event log (`xlb debug datapath`): an established flow with the log on costs {on:.2}x \
         the same flow with it off, in the same rounds (the log-on run follows a write of the switch; \
         forwarded packets never read it, only the rare events do).\n"
    );
    let sync = timed[6].total_ns as f64 / timed[2].total_ns as f64;
    let _ = writeln!(
        md,
        "Flow sync (`[sync]`): a new flow with the sync on (its event written to the ring buffer, \
         which this bench drains as the daemon does) costs {sync:.2}x a new flow with it off, in the same \
         rounds; established flows write no event.\n"
    );
    let _ = writeln!(md, "## Flow table scale\n");
    md += &scale;
    let _ = writeln!(md, "## Control plane\n");
    md += &control;
    let _ = writeln!(md, "## Packets per second through a live lab\n");
    let _ = writeln!(md, "{}", live::ABOUT);
    md += &live_rates();
    print!("{md}");
    let dir = root().join("bench-results");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("l4.md"), &md).unwrap();
    eprintln!("written to {}", dir.join("l4.md").display());
}
