//! The XDP program against random and mutated frames, through
//! BPF_PROG_TEST_RUN, each result judged by an oracle written here from
//! the rules in docs/datapath.md, not from the program's code:
//!
//! - a frame not addressed to an L4 service (nat/dsr VIP and port) nor to
//!   a snat address is passed, byte for byte;
//! - every passed frame leaves untouched;
//! - a forwarded frame (TX/REDIRECT) is well formed, keeps valid
//!   checksums valid (IPv4 header, TCP, UDP, ICMP, ICMPv6, and the quoted
//!   header of an ICMP error), and goes where the rules say: a nat flow to
//!   a backend of its service from the service's snat address, with the
//!   payload unchanged; a dsr flow to a backend's MAC with the IP packet
//!   unchanged; a full-NAT reply to the client of the flow that holds that
//!   snat port, from the VIP; an ICMP error to a backend or a known client;
//! - the outcome counters add up to the frames sent, pass/tx/drop each as
//!   often as the program returned them.
//!
//! Frames are seeded from valid ones (TCP, UDP, ICMP errors, replies,
//! IPv4 options, fragments, VLAN tags, IPv6 extension headers, ARP) and
//! mutated (truncation, byte flips, length fields, garbage), half of them
//! with their checksums repaired so that forwarded ones can be checked.
//! `XLB_FUZZ_FRAMES` (default 100,000) and `XLB_FUZZ_SEED` set the run;
//! `cargo xtask fuzz xdp --frames N` runs it on its own.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::Instant,
};

use aya::programs::{TestRun, TestRunOptions};
use lab::{
    fib_ns,
    packet::{arp_request, checksum, icmp_error, pseudo_sum, quoted, Frame, TCP_ACK, TCP_SYN},
    topology::mac_for,
};
use lb_user::{
    config,
    l4::{
        bpf::{load_object, read_outcomes, xdp_program},
        map_manager::MapManager,
    },
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const CONFIG: &str = r#"
[[service]]
name = "web"
vip = "198.19.0.10"
port = 80
mode = "http"
[[service]]
name = "nat4"
vip = "198.19.0.20"
port = 80
mode = "nat"
snat = "198.18.0.2"
  [[service.backend]]
  name = "a"
  address = "198.18.1.1:8080"
  [[service.backend]]
  name = "b"
  address = "198.18.1.2:8080"
[[service]]
name = "nat4udp"
vip = "198.19.0.20"
port = 53
protocol = "udp"
mode = "nat"
snat = ["198.18.0.2", "198.18.0.3"]
  [[service.backend]]
  name = "a"
  address = "198.18.1.1:5353"
[[service]]
name = "dsr4"
vip = "198.19.0.30"
port = 80
mode = "dsr"
  [[service.backend]]
  name = "c"
  address = "198.18.1.3:80"
[[service]]
name = "nat6"
vip = "2001:db8::20"
port = 80
mode = "nat"
snat = "2001:db8::2"
  [[service.backend]]
  name = "a6"
  address = "[2001:db8::1:1]:8080"
[[service]]
name = "dsr6"
vip = "2001:db8::30"
port = 443
mode = "dsr"
  [[service.backend]]
  name = "c6"
  address = "[2001:db8::1:3]:443"
"#;

const V6_MACS: [(&str, [u8; 6]); 2] = [
    ("2001:db8::1:1", [0x02, 0, 0x20, 0x01, 0x0d, 0x01]),
    ("2001:db8::1:3", [0x02, 0, 0x20, 0x01, 0x0d, 0x03]),
];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// xorshift64*: reproducible from its seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// An L4 service as the oracle knows it.
struct Svc {
    vip: IpAddr,
    port: u16,
    proto: u8,
    nat: bool,
    snat: Vec<IpAddr>,
    backends: Vec<(IpAddr, u16)>,
}

/// The parts of a frame the oracle looks at.
#[derive(Debug, Clone)]
struct Parsed {
    /// Offset of the IP header.
    l3: usize,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    /// Offset of the L4 header and the L4 length the IP header claims.
    l4: usize,
    l4_len: usize,
    fragment: bool,
    /// IPv6 with an extension header first (not TCP/UDP/ICMPv6 at once).
    ext: bool,
}

fn parse(f: &[u8]) -> Option<Parsed> {
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]);
    if ethertype == 0x8100 || ethertype == 0x88a8 {
        at += 4;
        ethertype = u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]);
    }
    let l3 = at + 2;
    match ethertype {
        0x0800 => {
            let h = f.get(l3..l3 + 20)?;
            if h[0] >> 4 != 4 {
                return None;
            }
            let hl = usize::from(h[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
            if hl < 20 || total < hl || l3 + total > f.len() {
                return None;
            }
            let frags = u16::from_be_bytes([h[6], h[7]]);
            Some(Parsed {
                l3,
                src: IpAddr::from(<[u8; 4]>::try_from(&h[12..16]).unwrap()),
                dst: IpAddr::from(<[u8; 4]>::try_from(&h[16..20]).unwrap()),
                proto: h[9],
                l4: l3 + hl,
                l4_len: total - hl,
                fragment: frags & 0x3fff != 0,
                ext: false,
            })
        }
        0x86dd => {
            let h = f.get(l3..l3 + 40)?;
            if h[0] >> 4 != 6 {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
            if l3 + 40 + len > f.len() {
                return None;
            }
            let proto = h[6];
            Some(Parsed {
                l3,
                src: IpAddr::from(<[u8; 16]>::try_from(&h[8..24]).unwrap()),
                dst: IpAddr::from(<[u8; 16]>::try_from(&h[24..40]).unwrap()),
                proto,
                l4: l3 + 40,
                l4_len: len,
                fragment: false,
                ext: !matches!(proto, 6 | 17 | 58),
            })
        }
        _ => None,
    }
}

fn ports(f: &[u8], p: &Parsed) -> Option<(u16, u16)> {
    let h = f.get(p.l4..p.l4 + 4)?;
    Some((u16::from_be_bytes([h[0], h[1]]), u16::from_be_bytes([h[2], h[3]])))
}

/// Whether the checksums a frame carries are right (None: nothing to check).
fn checksums_ok(f: &[u8], p: &Parsed) -> bool {
    if p.src.is_ipv4() {
        let hl = p.l4 - p.l3;
        if checksum(0, &f[p.l3..p.l3 + hl]) != 0 {
            return false;
        }
    }
    if p.fragment {
        return true;
    }
    let seg = &f[p.l4..p.l4 + p.l4_len];
    match p.proto {
        6 => seg.len() >= 20 && checksum(pseudo_sum(p.src, p.dst, 6, seg.len()), seg) == 0,
        17 => {
            if seg.len() < 8 || usize::from(u16::from_be_bytes([seg[4], seg[5]])) != seg.len() {
                return false;
            }
            (p.src.is_ipv4() && seg[6..8] == [0, 0]) || checksum(pseudo_sum(p.src, p.dst, 17, seg.len()), seg) == 0
        }
        1 => checksum(0, seg) == 0 && quote_ok(seg, 4),
        58 => checksum(pseudo_sum(p.src, p.dst, 58, seg.len()), seg) == 0 && quote_ok(seg, 6),
        _ => true,
    }
}

/// The IPv4 header an ICMP error quotes has a right checksum (IPv6: none).
fn quote_ok(icmp: &[u8], version: u8) -> bool {
    let Some(q) = icmp.get(8..) else { return true };
    if version != 4 || q.len() < 20 || q[0] >> 4 != 4 {
        return true;
    }
    let hl = usize::from(q[0] & 0x0f) * 4;
    q.len() < hl || checksum(0, &q[..hl]) == 0
}

/// Repairs the IPv4 header and L4 checksums of a mutated frame where it
/// still parses, so that forwarding it can be held to correct checksums.
fn repair(f: &mut [u8]) {
    let Some(p) = parse(f) else { return };
    if p.src.is_ipv4() {
        f[p.l3 + 10..p.l3 + 12].copy_from_slice(&[0, 0]);
        let c = checksum(0, &f[p.l3..p.l4]);
        f[p.l3 + 10..p.l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    if p.fragment {
        return;
    }
    let (at, initial) = match p.proto {
        6 if p.l4_len >= 20 => (16, pseudo_sum(p.src, p.dst, 6, p.l4_len)),
        17 if p.l4_len >= 8 => {
            f[p.l4 + 4..p.l4 + 6].copy_from_slice(&(p.l4_len as u16).to_be_bytes());
            (6, pseudo_sum(p.src, p.dst, 17, p.l4_len))
        }
        1 if p.l4_len >= 8 => (2, 0),
        58 if p.l4_len >= 8 => (2, pseudo_sum(p.src, p.dst, 58, p.l4_len)),
        _ => return,
    };
    if p.proto == 1 || p.proto == 58 {
        // The quoted IPv4 header first.
        let q = p.l4 + 8;
        if p.proto == 1 && f.len() >= q + 20 && f[q] >> 4 == 4 {
            let hl = usize::from(f[q] & 0x0f) * 4;
            if hl >= 20 && q + hl <= p.l4 + p.l4_len {
                f[q + 10..q + 12].copy_from_slice(&[0, 0]);
                let c = checksum(0, &f[q..q + hl]);
                f[q + 10..q + 12].copy_from_slice(&c.to_be_bytes());
            }
        }
    }
    f[p.l4 + at..p.l4 + at + 2].copy_from_slice(&[0, 0]);
    let mut c = checksum(initial, &f[p.l4..p.l4 + p.l4_len]);
    if p.proto == 17 && c == 0 {
        c = 0xffff;
    }
    f[p.l4 + at..p.l4 + at + 2].copy_from_slice(&c.to_be_bytes());
}

/// What the oracle remembers of full-NAT flows: (snat, snat port, proto)
/// -> (client, client port, vip, vip port, backend, backend port).
type NatFlows = HashMap<(IpAddr, u16, u8), (IpAddr, u16, IpAddr, u16, IpAddr, u16)>;

struct World {
    services: Vec<Svc>,
    snats: Vec<IpAddr>,
    backend_macs: Vec<[u8; 6]>,
    flows: NatFlows,
    /// Clients the oracle saw forwarded, for ICMP errors going back.
    clients: Vec<IpAddr>,
}

impl World {
    fn service(&self, dst: IpAddr, dport: u16, proto: u8) -> Option<&Svc> {
        self.services
            .iter()
            .find(|s| s.vip == dst && s.port == dport && s.proto == proto)
    }

    fn backend_ip(&self, a: IpAddr) -> bool {
        self.services.iter().any(|s| s.backends.iter().any(|b| b.0 == a))
    }

    /// Judges one result; Err says why it is wrong.
    fn judge(&mut self, input: &[u8], action: u32, out: &[u8]) -> Result<(), String> {
        let p = parse(input);
        if action == XDP_PASS && out != input {
            return Err("passed but changed".into());
        }
        let for_us = p.as_ref().is_some_and(|p| {
            let addressed = self.snats.contains(&p.dst) || self.services.iter().any(|s| s.vip == p.dst);
            addressed && matches!(p.proto, 6 | 17 | 1 | 58)
        });
        if !for_us {
            return match action {
                XDP_PASS => Ok(()),
                a => Err(format!("not for a service, yet action {a}")),
            };
        }
        if action != XDP_TX && action != XDP_REDIRECT {
            return Ok(());
        }
        let p = p.expect("for_us parsed it");
        let q = parse(out).ok_or("a forwarded frame that does not parse")?;
        if p.fragment || p.ext {
            return Err("forwarded a fragment or an IPv6 extension header".into());
        }
        if checksums_ok(input, &p) && !checksums_ok(out, &q) {
            return Err("valid checksums in, invalid out".into());
        }
        match p.proto {
            6 | 17 => {
                let (sport, dport) = ports(input, &p).ok_or("no ports")?;
                let (osport, odport) = ports(out, &q).ok_or("no ports out")?;
                if let Some(svc) = self.service(p.dst, dport, p.proto) {
                    if svc.nat {
                        if !svc.backends.contains(&(q.dst, odport)) || !svc.snat.contains(&q.src) {
                            return Err(format!("nat flow to {}:{odport} from {}", q.dst, q.src));
                        }
                        // Only the ports and the checksum may change.
                        let csum = if p.proto == 6 { 16 } else { 6 };
                        let (a, b) = (&out[q.l4..], &input[p.l4..]);
                        if a.len() != b.len() || a[4..csum] != b[4..csum] || a[csum + 2..] != b[csum + 2..] {
                            return Err("more than ports and checksum changed".into());
                        }
                        self.flows
                            .insert((q.src, osport, p.proto), (p.src, sport, p.dst, dport, q.dst, odport));
                        self.clients.push(p.src);
                    } else {
                        if !self.backend_macs.contains(&<[u8; 6]>::try_from(&out[0..6]).unwrap())
                            || out[q.l3..] != input[p.l3..]
                        {
                            return Err("dsr: not the packet as it came, to a backend's MAC".into());
                        }
                        self.clients.push(p.src);
                    }
                    return Ok(());
                }
                if self.snats.contains(&p.dst) {
                    let Some(&(client, cport, vip, vport, be, bport)) = self.flows.get(&(p.dst, dport, p.proto)) else {
                        return Err("a reply to a snat port the oracle never saw used".into());
                    };
                    if (p.src, sport) != (be, bport) {
                        return Err(format!("a reply from {}:{sport}, not the flow's backend", p.src));
                    }
                    if (q.src, osport, q.dst, odport) != (vip, vport, client, cport) {
                        return Err(format!("reply went {}:{osport} -> {}:{odport}", q.src, q.dst));
                    }
                    return Ok(());
                }
                Err("forwarded to a VIP port that is no service".into())
            }
            _ => {
                // ICMP errors go to a backend or to a client of a flow.
                if self.backend_ip(q.dst) || self.clients.contains(&q.dst) {
                    Ok(())
                } else {
                    Err(format!("an ICMP message forwarded to {}", q.dst))
                }
            }
        }
    }
}

/// A valid frame of one of the kinds the data path meets.
fn valid_frame(r: &mut Rng, world: &World) -> Vec<u8> {
    let client = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 1 + r.below(200) as u8));
    let client6: IpAddr = format!("2001:db8::2:{:x}", 1 + r.below(200)).parse().unwrap();
    let sport = 20000 + r.below(40000) as u16;
    let flags = [TCP_SYN, TCP_ACK, TCP_ACK | 0x08, TCP_ACK | 0x01, 0x04][r.below(5)];
    let mut f = match r.below(14) {
        0 | 1 => Frame::tcp(client, sport, ip("198.19.0.20"), 80, flags),
        2 => Frame::udp(client, sport, ip("198.19.0.20"), 53),
        3 => Frame::tcp(client, sport, ip("198.19.0.30"), 80, flags),
        4 => Frame::tcp(client6, sport, ip("2001:db8::20"), 80, flags),
        5 => Frame::tcp(client6, sport, ip("2001:db8::30"), 443, flags),
        6 => Frame::tcp(client, sport, ip("198.19.0.10"), 80, flags),
        7 => Frame::tcp(client, sport, ip("198.19.0.20"), [81, 443, 8080][r.below(3)], flags),
        8 => Frame::udp(client, sport, ip("198.51.100.1"), 53),
        // A reply from a backend to a snat port, of a known flow or not.
        9 | 10 => {
            let known: Vec<_> = world.flows.iter().collect();
            match known.get(r.below(known.len().max(1))) {
                Some(((snat, port, proto), (_, _, _, _, be, bport))) if r.chance(80) => {
                    if *proto == 6 {
                        Frame::tcp(*be, *bport, *snat, *port, TCP_ACK)
                    } else {
                        Frame::udp(*be, *bport, *snat, *port)
                    }
                }
                _ => Frame::tcp(
                    ip("198.18.1.1"),
                    8080,
                    ip("198.18.0.2"),
                    1024 + r.below(31744) as u16,
                    TCP_ACK,
                ),
            }
        }
        // ICMP errors: at a VIP about VIP -> client, or from a backend.
        11 => {
            let about = Frame::tcp(ip("198.19.0.20"), 80, client, sport, TCP_ACK).build();
            icmp_error(ip("198.18.9.9"), ip("198.19.0.20"), 3, 4, &quoted(&about))
        }
        12 => {
            let known: Vec<_> = world.flows.keys().filter(|k| k.0.is_ipv4()).collect();
            let (snat, port) = known
                .get(r.below(known.len().max(1)))
                .map_or((ip("198.18.0.2"), 1024), |k| (k.0, k.1));
            let about = Frame::tcp(snat, port, ip("198.18.1.1"), 8080, TCP_ACK).build();
            icmp_error(ip("198.18.1.1"), snat, 3, 3, &quoted(&about))
        }
        _ => {
            let about = Frame::tcp(ip("2001:db8::20"), 80, client6, sport, TCP_ACK).build();
            icmp_error(ip("2001:db8::9"), ip("2001:db8::20"), 2, 0, &quoted(&about))
        }
    };
    // Variations every data path meets.
    if r.chance(10) {
        f.vlan = Some(r.below(4095) as u16);
    }
    if f.src.is_ipv4() && r.chance(10) {
        f.ip_options = vec![1; 4 * (1 + r.below(10))];
    }
    if f.src.is_ipv4() && r.chance(5) {
        f.frag = [0x2000, 0x0010, 0x2010][r.below(3)];
    }
    let n = r.below(64);
    f.payload.extend((0..n).map(|_| r.next() as u8));
    let mut bytes = f.build();
    if r.chance(3) {
        return arp_request([198, 18, 2, 1], [198, 19, 0, 20]);
    }
    if f.src.is_ipv6() && r.chance(8) {
        // A hop-by-hop header in front of the L4 header.
        let l3 = if f.vlan.is_some() { 18 } else { 14 };
        let next = bytes[l3 + 6];
        bytes[l3 + 6] = 0;
        let len = u16::from_be_bytes([bytes[l3 + 4], bytes[l3 + 5]]) + 8;
        bytes[l3 + 4..l3 + 6].copy_from_slice(&len.to_be_bytes());
        let ext = [next, 0, 1, 4, 0, 0, 0, 0];
        bytes.splice(l3 + 40..l3 + 40, ext);
    }
    bytes
}

fn mutate(r: &mut Rng, f: &mut Vec<u8>) {
    for _ in 0..1 + r.below(3) {
        match r.below(6) {
            0 => {
                let at = r.below(f.len().max(1));
                f.truncate(at);
            }
            1 | 2 => {
                if !f.is_empty() {
                    let at = r.below(f.len());
                    f[at] ^= 1 << r.below(8);
                }
            }
            3 => {
                if !f.is_empty() {
                    let at = r.below(f.len());
                    f[at] = r.next() as u8;
                }
            }
            4 => {
                // A length or header-length field made up.
                let l3 = if f.get(12..14) == Some(&[0x81, 0x00]) { 18 } else { 14 };
                if f.len() > l3 + 6 {
                    match f[l3] >> 4 {
                        4 if r.chance(50) => f[l3] = 0x40 | r.below(16) as u8,
                        4 => f[l3 + 2..l3 + 4].copy_from_slice(&(r.next() as u16).to_be_bytes()),
                        _ => f[l3 + 4..l3 + 6].copy_from_slice(&(r.next() as u16).to_be_bytes()),
                    }
                }
            }
            _ => {
                let n = r.below(32);
                f.extend((0..n).map(|_| r.next() as u8));
            }
        }
    }
}

#[test]
fn random_and_mutated_frames_meet_the_oracle() {
    lab::require_root!();
    let frames: u64 = std::env::var("XLB_FUZZ_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("XLB_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_0001);
    let v4 = |s: &str| mac_for(s.parse().unwrap());
    let extra: Vec<(&str, [u8; 6])> = ["198.18.1.1", "198.18.1.2", "198.18.1.3"]
        .iter()
        .map(|a| (*a, v4(a)))
        .chain(V6_MACS)
        .collect();
    let ns = fib_ns::create(&format!("xlbt{}fz", std::process::id()), 0, &extra).unwrap();
    let cfg = config::parse(Path::new("fuzz.toml"), CONFIG).unwrap();
    let services = cfg
        .services
        .iter()
        .filter(|s| s.mode != config::Mode::Http)
        .map(|s| Svc {
            vip: s.vip,
            port: s.port,
            proto: if s.protocol == config::Protocol::Udp { 17 } else { 6 },
            nat: s.mode == config::Mode::Nat,
            snat: s.snat.clone(),
            backends: s.backends.iter().map(|b| (b.address.ip(), b.address.port())).collect(),
        })
        .collect::<Vec<_>>();
    let mut world = World {
        snats: services.iter().flat_map(|s| s.snat.iter().copied()).collect(),
        backend_macs: extra.iter().map(|(_, m)| *m).collect(),
        services,
        flows: HashMap::new(),
        clients: Vec::new(),
    };
    let report = ns
        .enter(move || {
            let mut ebpf = load_object().expect("load the XDP object (built by cargo xtask build)");
            let mut mm = MapManager::default();
            mm.apply(&mut ebpf, &cfg, &Default::default(), &|_| None).unwrap();
            let before = read_outcomes(&ebpf);
            let mut r = Rng(seed);
            let mut actions: HashMap<u32, u64> = HashMap::new();
            let mut failures: Vec<String> = Vec::new();
            let mut out = vec![0u8; 4096];
            let started = Instant::now();
            for i in 0..frames {
                let mut input = valid_frame(&mut r, &world);
                if r.chance(70) {
                    mutate(&mut r, &mut input);
                    if r.chance(50) {
                        repair(&mut input);
                    }
                }
                if input.len() < 14 {
                    // BPF_PROG_TEST_RUN wants an Ethernet header.
                    input.resize(14, 0);
                }
                out.resize(input.len() + 256, 0);
                let res = xdp_program(&mut ebpf)
                    .unwrap()
                    .test_run(TestRunOptions {
                        data_in: Some(&input),
                        data_out: Some(&mut out),
                        ..Default::default()
                    })
                    .unwrap_or_else(|e| panic!("frame {i}: test_run: {e}"));
                let got = &out[..res.data_size_out as usize];
                *actions.entry(res.return_value).or_default() += 1;
                if let Err(why) = world.judge(&input, res.return_value, got) {
                    if failures.len() < 20 {
                        failures.push(format!(
                            "frame {i}: {why} (action {})\n  in  {}\n  out {}",
                            res.return_value,
                            hex(&input),
                            hex(got)
                        ));
                    }
                }
            }
            let elapsed = started.elapsed();
            let after = read_outcomes(&ebpf);
            let delta: HashMap<&str, u64> = before.iter().zip(&after).map(|(b, a)| (b.0, a.1 - b.1)).collect();
            (actions, delta, failures, elapsed)
        })
        .unwrap();
    let (actions, delta, failures, elapsed) = report;
    let sum = |prefix: &str| {
        delta
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, v)| v)
            .sum::<u64>()
    };
    let by = |a: u32| actions.get(&a).copied().unwrap_or(0);
    println!(
        "xdp fuzz: {frames} frames (seed {seed:#x}) in {:.1}s: pass {} tx {} redirect {} drop {}; outcomes {delta:?}",
        elapsed.as_secs_f64(),
        by(XDP_PASS),
        by(XDP_TX),
        by(XDP_REDIRECT),
        by(XDP_DROP)
    );
    assert!(
        failures.is_empty(),
        "{} frames broke the oracle:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(delta.values().sum::<u64>(), frames, "one outcome per frame");
    assert_eq!(sum("pass_"), by(XDP_PASS));
    assert_eq!(delta["tx"], by(XDP_TX));
    assert_eq!(delta["redirect"], by(XDP_REDIRECT));
    assert_eq!(sum("drop_"), by(XDP_DROP));
    assert_eq!(
        actions
            .keys()
            .filter(|a| ![XDP_PASS, XDP_TX, XDP_REDIRECT, XDP_DROP].contains(a))
            .count(),
        0
    );
    // The run reached every part of the data path (drops need a full
    // port range or a dead backend, which random frames rarely make).
    // BPF_PROG_TEST_RUN has no interface MAC to compare with (LOCAL_MAC is
    // 0 here), so nothing is another host's: packets.rs checks that rule.
    let reachable = |n: &&&str| !n.starts_with("drop_") && **n != "pass_other_host";
    for outcome in lb_common::outcome::NAMES.iter().filter(reachable) {
        assert!(delta[outcome] > 0, "no frame ended as {outcome}");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
