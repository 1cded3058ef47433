//! Packets per second through a live lab, from a generator that outruns the
//! forwarder.
//!
//! Two veth pairs join a generator namespace to a forwarding node:
//! `lbg0`-`lbx0` (xlb attached natively to `lbx0` by the real daemon) and
//! `lbg1`-`lbx1` (a baseline on `lbx1`: the parse + MAC swap + XDP_TX floor,
//! or XDP_PASS into the kernel's IP forwarding). The generator
//! (`bench-gen`'s `gen_udp`) runs through BPF_PROG_TEST_RUN with
//! `BPF_F_TEST_XDP_LIVE_FRAMES`: the kernel's test-run loop rewrites a
//! template UDP frame's source address and port per frame and transmits it
//! out of `lbg0`/`lbg1`, so frames reach the node as a NIC's would. What the
//! node sends back to the generator side lands on `sink_count`, attached to
//! `lbg0` and `lbg1`, which counts and drops.
//!
//! The two CPUs are used deliberately: the generator's thread is pinned to
//! CPU 0, and every veth runs threaded NAPI with its kernel thread pinned to
//! CPU 1, so the forwarder (and the cheap sink) has CPU 1 to itself. The
//! generator's rate is reported beside the received rate: a received rate
//! below it is the forwarder's limit (the surplus is dropped at the full
//! veth ring).

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, PerCpuArray, PerCpuValues},
    programs::{
        xdp::{XdpLinkId, XdpMode},
        TestRun, TestRunAttrs, TestRunOptions, Xdp,
    },
    Ebpf,
};
use lab::{
    netns::Netns,
    packet::Frame,
    xlb::{temp_file, xlb_once},
    XlbProcess,
};

use crate::pin_to_cpu;

/// How the live runs are made, for the report.
pub const ABOUT: &str = "A generator namespace joined by two veth pairs to a forwarding node: xlb (the real daemon, \
native XDP) on one, a baseline on the other (parse + MAC swap + XDP_TX, or XDP_PASS into the kernel's IP \
forwarding). Frames come from an XDP program run through BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES \
(`bench-gen`'s `gen_udp`: a template UDP frame, source address and port varied per frame), pinned to CPU 0; \
nat runs spread their flows over 4 nat services, each with a pool of 16 snat addresses; \
every veth runs threaded NAPI pinned to CPU 1, so the forwarder has CPU 1 (shared with the sink, an XDP \
program counting what comes back). The generator outruns every forwarder here: what it sends beyond the \
forwarder's rate is dropped at the full veth ring. veth's own XDP path costs far more per frame than a \
NIC driver's, so the absolute rates are the lab's; the ratios are the point.\n";

const GEN_CPU: usize = 0;
const FORWARD_CPU: usize = 1;
/// Frames per test-run call; the kernel sends them in batches of `BATCH`.
const REPEAT: u32 = 1 << 20;
const BATCH: u32 = 256;

const NODE0: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const BACKEND: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 50);
/// The first of `NAT_SERVICES` consecutive VIPs.
const NAT_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 20);
const NAT_SERVICES: u8 = 4;
const DSR_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
const NODE1: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const NEXT_HOP1: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 50);
/// Routed by the node's kernel towards `NEXT_HOP1`.
const ROUTED: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 1);
const PORT: u16 = 9000;

/// What a run sends: out of which generator interface, to what, over how
/// many flows (0: every frame a new flow). nat runs spread their flows over
/// the `NAT_SERVICES` services, each with a pool of 16 snat addresses.
#[derive(Clone, Copy)]
pub struct Run {
    pub name: &'static str,
    pub target: Target,
    pub flows: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `lbx1` with the parse + MAC swap + XDP_TX floor.
    Floor,
    /// `lbx1` with XDP_PASS, forwarded by the kernel.
    Kernel,
    /// xlb's nat service on `lbx0`.
    XlbNat,
    /// xlb's dsr service on `lbx0`.
    XlbDsr,
}

/// One measured window.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rate {
    pub sent_pps: f64,
    pub received_pps: f64,
}

pub struct Rig {
    gen_ns: Netns,
    node: Netns,
    tools: Ebpf,
    floors: Ebpf,
    macs: Macs,
    ifindex: [u32; 2],
    xlb: Option<XlbProcess>,
}

struct Macs {
    g0: [u8; 6],
    x0: [u8; 6],
    g1: [u8; 6],
    x1: [u8; 6],
}

fn mac_of(ns: &Netns, dev: &str) -> [u8; 6] {
    let out = ns.ip(&["-br", "link", "show", dev]).unwrap();
    let text = out.split_whitespace().nth(2).unwrap();
    let mut mac = [0u8; 6];
    for (m, part) in mac.iter_mut().zip(text.split(':')) {
        *m = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn ifindex_in(ns: &Netns, dev: &str) -> u32 {
    let name = std::ffi::CString::new(dev).unwrap();
    // SAFETY: a NUL-terminated name.
    let i = ns.enter(|| unsafe { libc::if_nametoindex(name.as_ptr()) }).unwrap();
    assert_ne!(i, 0, "no interface {dev}");
    i
}

/// Threaded NAPI on `dev`. A veth has NAPI only with XDP or GRO on: GRO
/// keeps it while baselines are attached and detached. (sysfs is per
/// namespace: `ip netns exec` remounts it.)
fn threaded_napi(ns: &Netns, dev: &str) {
    ns.run("ethtool", &["-K", dev, "gro", "on"]).unwrap();
    ns.run("sh", &["-c", &format!("echo 1 > /sys/class/net/{dev}/threaded")])
        .unwrap();
}

/// Pins every NAPI thread of the rig's veths (`napi/lb..`) to `cpu`; they
/// come and go with XDP attachments, so this runs before each window.
fn pin_napi(cpu: usize) -> usize {
    let mut pinned = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("napi/lb") {
            continue;
        }
        // SAFETY: a zeroed cpu_set_t with one bit set.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(pid, std::mem::size_of_val(&set), &set) == 0 {
                pinned += 1;
            }
        }
    }
    pinned
}

fn attach(ns: &Netns, ebpf: &mut Ebpf, prog: &str, dev: &str) -> XdpLinkId {
    let p: &mut Xdp = ebpf.program_mut(prog).unwrap().try_into().unwrap();
    ns.enter(|| p.attach(dev, XdpMode::Driver)).unwrap().unwrap()
}

impl Rig {
    pub fn new(tools_obj: &Path, floor_obj: &Path) -> Rig {
        let id = std::process::id();
        let gen_ns = Netns::create(&format!("xlbt{id}lg")).unwrap();
        let node = Netns::create(&format!("xlbt{id}ln")).unwrap();
        for i in 0..2 {
            netns_veth(&gen_ns, &format!("lbg{i}"), &node, &format!("lbx{i}"));
        }
        node.ip(&["addr", "add", &format!("{NODE0}/24"), "dev", "lbx0"])
            .unwrap();
        node.ip(&["addr", "add", &format!("{NODE1}/24"), "dev", "lbx1"])
            .unwrap();
        let macs = Macs {
            g0: mac_of(&gen_ns, "lbg0"),
            x0: mac_of(&node, "lbx0"),
            g1: mac_of(&gen_ns, "lbg1"),
            x1: mac_of(&node, "lbx1"),
        };
        // The next hops are the generator side, where the sink counts.
        for (ip, mac, dev) in [(BACKEND, macs.g0, "lbx0"), (NEXT_HOP1, macs.g1, "lbx1")] {
            node.ip(&[
                "neigh",
                "add",
                &ip.to_string(),
                "lladdr",
                &mac_text(mac),
                "dev",
                dev,
                "nud",
                "permanent",
            ])
            .unwrap();
        }
        node.ip(&["route", "add", "198.18.3.0/24", "via", &NEXT_HOP1.to_string()])
            .unwrap();
        node.sysctl("net.ipv4.ip_forward", "1").unwrap();
        for dev in ["all", "default", "lbx1"] {
            node.sysctl(&format!("net.ipv4.conf.{dev}.rp_filter"), "0").unwrap();
            node.sysctl(&format!("net.ipv4.conf.{dev}.send_redirects"), "0")
                .unwrap();
        }
        for (ns, dev) in [(&gen_ns, "lbg0"), (&gen_ns, "lbg1"), (&node, "lbx0"), (&node, "lbx1")] {
            threaded_napi(ns, dev);
        }
        let mut tools = Ebpf::load(&std::fs::read(tools_obj).expect("bench-gen object")).unwrap();
        for prog in ["gen_udp", "sink_count"] {
            let p: &mut Xdp = tools.program_mut(prog).unwrap().try_into().unwrap();
            p.load().unwrap();
        }
        attach(&gen_ns, &mut tools, "sink_count", "lbg0");
        attach(&gen_ns, &mut tools, "sink_count", "lbg1");
        let mut floors = Ebpf::load(&std::fs::read(floor_obj).expect("bench-floor object")).unwrap();
        for prog in ["floor_pass", "floor_swap"] {
            let p: &mut Xdp = floors.program_mut(prog).unwrap().try_into().unwrap();
            p.load().unwrap();
        }
        let ifindex = [ifindex_in(&gen_ns, "lbg0"), ifindex_in(&gen_ns, "lbg1")];
        let mut rig = Rig {
            gen_ns,
            node,
            tools,
            floors,
            macs,
            ifindex,
            xlb: None,
        };
        rig.start_xlb();
        rig
    }

    fn start_xlb(&mut self) {
        let mut cfg = format!(
            "[global]\ninterface = \"lbx0\"\nxdp_mode = \"native\"\n\
             [[service]]\nname = \"dsr\"\nvip = \"{DSR_VIP}\"\nport = {PORT}\nprotocol = \"udp\"\nmode = \"dsr\"\n\
             [service.health]\nkind = \"none\"\n[[service.backend]]\nname = \"be\"\naddress = \"{BACKEND}:{PORT}\"\n"
        );
        let [a, b, c, d] = NAT_VIP.octets();
        for s in 0..NAT_SERVICES {
            // Pools outside the node's own addresses: nothing answers here.
            let pool: Vec<String> = (0..16).map(|k| format!("\"198.18.0.{}\"", 64 + 16 * s + k)).collect();
            cfg += &format!(
                "[[service]]\nname = \"nat{s}\"\nvip = \"{a}.{b}.{c}.{}\"\nport = {PORT}\nprotocol = \"udp\"\nmode = \"nat\"\n\
                 snat = [{}]\n[service.health]\nkind = \"none\"\n[[service.backend]]\nname = \"be\"\naddress = \"{BACKEND}:{PORT}\"\n",
                d + s,
                pool.join(", ")
            );
        }
        let path = temp_file("bench-live.toml", &cfg).unwrap();
        self.xlb = Some(XlbProcess::start(&self.node, &path, &[]).unwrap());
    }

    fn template(&self, target: Target) -> Vec<u8> {
        let src = IpAddr::V4(Ipv4Addr::new(198, 18, 128, 0));
        let (dst, src_mac, dst_mac) = match target {
            Target::Floor | Target::Kernel => (ROUTED, self.macs.g1, self.macs.x1),
            Target::XlbNat => (NAT_VIP, self.macs.g0, self.macs.x0),
            Target::XlbDsr => (DSR_VIP, self.macs.g0, self.macs.x0),
        };
        let mut f = Frame::udp(src, 1024, dst.into(), PORT);
        f.src_mac = src_mac;
        f.dst_mac = dst_mac;
        f.payload = vec![0; 18];
        f.build()
    }

    fn received(&self) -> u64 {
        let sink: PerCpuArray<_, u64> = PerCpuArray::try_from(self.tools.map("SINK").unwrap()).unwrap();
        let v: PerCpuValues<u64> = sink.get(&0, 0).unwrap();
        v.iter().sum()
    }

    /// Sends `run` for `secs` and counts what came back.
    pub fn measure(&mut self, run: Run, secs: f64) -> Rate {
        let baseline = match run.target {
            Target::Floor => Some("floor_swap"),
            Target::Kernel => Some("floor_pass"),
            _ => None,
        };
        let link = baseline.map(|prog| (prog, attach(&self.node, &mut self.floors, prog, "lbx1")));
        {
            let mut gen: Array<_, u64> = Array::try_from(self.tools.map_mut("GEN").unwrap()).unwrap();
            gen.set(0, run.flows, 0).unwrap();
            gen.set(1, 0, 0).unwrap();
            let dsts = if run.target == Target::XlbNat { NAT_SERVICES } else { 1 };
            gen.set(2, u64::from(dsts), 0).unwrap();
        }
        let frame = self.template(run.target);
        {
            let mut head: Array<_, [u64; 6]> = Array::try_from(self.tools.map_mut("TEMPLATE").unwrap()).unwrap();
            let mut words = [0u64; 6];
            for (w, b) in words.iter_mut().zip(frame.chunks(8)) {
                *w = u64::from_ne_bytes(b.try_into().unwrap());
            }
            head.set(0, words, 0).unwrap();
        }
        let dev = usize::from(run.target != Target::XlbNat && run.target != Target::XlbDsr);
        let ifindex = self.ifindex[dev];
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        assert!(pin_napi(FORWARD_CPU) >= 4, "threaded NAPI threads of the rig's veths");
        let prog: &Xdp = self.tools.program("gen_udp").unwrap().try_into().unwrap();
        let send = |window: Duration| -> (u64, Duration) {
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed() < window {
                let r = prog
                    .test_run(TestRunOptions {
                        data_in: Some(&frame),
                        ctx_in: Some(&ctx),
                        repeat: REPEAT,
                        attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                        ..Default::default()
                    })
                    .expect("live-frames test run");
                sent += u64::from(REPEAT);
                let _ = r;
            }
            (sent, start.elapsed())
        };
        // Warm-up (flow tables, caches; every flow of the run made at least
        // once at the forwarder's rate), then the window.
        let warm = Duration::from_secs_f64((run.flows as f64 / 0.5e6).max(0.3));
        self.gen_ns
            .enter(|| {
                pin_to_cpu(GEN_CPU);
                send(warm)
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let before = self.received();
        let (sent, took) = self
            .gen_ns
            .enter(|| {
                pin_to_cpu(GEN_CPU);
                send(Duration::from_secs_f64(secs))
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let got = self.received() - before;
        if let Some((prog, id)) = link {
            let p: &mut Xdp = self.floors.program_mut(prog).unwrap().try_into().unwrap();
            self.node.enter(|| p.detach(id)).unwrap().unwrap();
        }
        let t = took.as_secs_f64();
        Rate {
            sent_pps: sent as f64 / t,
            received_pps: got as f64 / t,
        }
    }

    /// Stops xlb; returns its XDP outcome counters (`xlb status`).
    pub fn stop(mut self) -> String {
        let status = xlb_once(&self.node, &["status"]).unwrap();
        let text = String::from_utf8_lossy(&status.stdout).into_owned();
        if let Some(x) = self.xlb.take() {
            x.stop().unwrap();
        }
        text.lines()
            .find_map(|l| l.strip_prefix("xdp outcomes: "))
            .unwrap_or("(none)")
            .to_string()
    }
}

fn netns_veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) {
    a.ip(&[
        "link",
        "add",
        a_dev,
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name(),
    ])
    .unwrap();
    a.ip(&["link", "set", a_dev, "up"]).unwrap();
    b.ip(&["link", "set", b_dev, "up"]).unwrap();
}
