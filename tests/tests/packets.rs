//! Katran-style packet fixtures: each case is an input frame, the expected
//! XDP action, the expected output frame (built here, checksums computed
//! independently of the XDP program) and the counters it must move, run
//! through the real XDP program with BPF_PROG_TEST_RUN. The maps are
//! programmed by the real map manager from a config.
//!
//! Route lookups need a network: the cases run inside a namespace made here
//! (see `lab::fib_ns`). BPF_PROG_TEST_RUN's packets arrive on `lo`, so
//! forwarded packets leave by redirect to eth0 and replies (whose client
//! came in on lo) by XDP_TX.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use aya::{
    maps::PerCpuArray,
    programs::{TestRun, TestRunOptions},
    Ebpf,
};
use lab::{
    fib_ns::{self, ETH0_MAC},
    packet::{
        arp_request, echo_request, gratuitous_arp, icmp_error, neighbour, quoted, vrrp, Frame, L4, TCP_ACK, TCP_SYN,
    },
    topology::mac_for,
    Netns,
};
use lb_common::{hash, maps, ServiceStats, NAT_PORTS, PROTO_TCP, SNAT_PORT_MIN};
use lb_user::{
    config,
    l4::{
        bpf::{load_object, read_outcomes, xdp_program},
        map_manager::{service_key, MapManager},
    },
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const LOCAL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
const V6_BACKEND_MAC: [u8; 6] = [0x02, 0, 0x20, 0x01, 0x0d, 0xb8];

const CONFIG: &str = r#"
[[service]]
name = "http4"
vip = "198.19.0.10"
port = 80
mode = "http"
[[service]]
name = "http6"
vip = "2001:db8::10"
port = 443
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
[[service]]
name = "nat4udp"
vip = "198.19.0.20"
port = 53
protocol = "udp"
mode = "nat"
snat = "198.18.0.2"
  [[service.backend]]
  name = "a"
  address = "198.18.1.1:5353"
[[service]]
name = "dsr4"
vip = "198.19.0.30"
port = 80
mode = "dsr"
  [[service.backend]]
  name = "b"
  address = "198.18.1.2:80"
[[service]]
name = "dsr3"
vip = "198.19.0.32"
port = 80
mode = "dsr"
  [[service.backend]]
  name = "c"
  address = "198.18.1.3:80"
  [[service.backend]]
  name = "d"
  address = "198.18.1.4:80"
  [[service.backend]]
  name = "e"
  address = "198.18.1.5:80"
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
name = "empty"
vip = "198.19.0.40"
port = 80
mode = "nat"
snat = "198.18.0.2"
[[service]]
name = "natpool"
vip = "198.19.0.60"
port = 80
mode = "nat"
snat = ["198.18.0.2", "198.18.0.3"]
  [[service.backend]]
  name = "a"
  address = "198.18.1.1:8080"
[[service]]
name = "noneigh"
vip = "198.19.0.50"
port = 80
mode = "nat"
snat = "198.18.0.2"
  [[service.backend]]
  name = "ghost"
  address = "198.18.1.99:8080"
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn v4mac(s: &str) -> [u8; 6] {
    mac_for(s.parse::<Ipv4Addr>().unwrap())
}

/// The namespace the fixtures run in.
fn fixture_ns() -> Netns {
    let extra = [
        ("198.18.1.1", v4mac("198.18.1.1")),
        ("198.18.1.2", v4mac("198.18.1.2")),
        ("198.18.1.3", v4mac("198.18.1.3")),
        ("198.18.1.4", v4mac("198.18.1.4")),
        ("198.18.1.5", v4mac("198.18.1.5")),
        ("2001:db8::1:1", V6_BACKEND_MAC),
        // The client, for replies of flows synced from another node.
        ("198.18.2.1", CLIENT_MAC),
    ];
    fib_ns::create(&format!("xlbt{}fx", std::process::id()), 0, &extra).unwrap()
}

struct Fixture {
    ebpf: Ebpf,
    mm: MapManager,
    cfg: config::Config,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with(CONFIG)
    }

    fn with(config: &str) -> Fixture {
        let mut ebpf = load_object().expect("load the XDP object (built by cargo xtask build)");
        let cfg = config::parse(Path::new("fixtures.toml"), config).unwrap();
        let mut mm = MapManager::default();
        mm.apply(&mut ebpf, &cfg, &Default::default(), &|_| None).unwrap();
        Fixture { ebpf, mm, cfg }
    }

    fn service_packets(&self) -> Vec<(String, u64)> {
        let arr: PerCpuArray<_, ServiceStats> =
            PerCpuArray::try_from(self.ebpf.map(maps::SERVICE_STATS).unwrap()).unwrap();
        self.cfg
            .services
            .iter()
            .map(|s| {
                let slot = self.mm.service_slot(&service_key(s)).unwrap();
                (
                    s.name.clone(),
                    arr.get(&slot, 0).unwrap().iter().map(|x| x.packets).sum(),
                )
            })
            .collect()
    }

    fn run(&mut self, c: &Case) {
        let before = read_outcomes(&self.ebpf);
        let svc_before = self.service_packets();
        let mut out = vec![0u8; c.input.len() + 256];
        let res = xdp_program(&mut self.ebpf)
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(&c.input),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("{}: test_run: {e}", c.name));
        out.truncate(res.data_size_out as usize);
        let after = read_outcomes(&self.ebpf);
        let moved: Vec<_> = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| a.1 != b.1)
            .map(|(b, a)| (b.0, a.1 - b.1))
            .collect();
        assert_eq!(moved, vec![(c.outcome, 1)], "{}: outcome counters", c.name);
        assert_eq!(res.return_value, c.action, "{}: XDP action", c.name);
        let want = c.output.as_ref().unwrap_or(&c.input);
        assert!(
            &out == want,
            "{}: output frame\n got  {}\n want {}",
            c.name,
            hex(&out),
            hex(want)
        );
        for ((name, b), (_, a)) in svc_before.iter().zip(self.service_packets()) {
            let want = u64::from(c.service == Some(name.as_str()));
            assert_eq!(a - b, want, "{}: packets of service {name}", c.name);
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    action: u32,
    /// None: the output must equal the input byte for byte.
    output: Option<Vec<u8>>,
    outcome: &'static str,
    /// Service whose packet counter must move by one.
    service: Option<&'static str>,
}

fn case(
    name: &'static str,
    input: Vec<u8>,
    action: u32,
    output: Option<Vec<u8>>,
    outcome: &'static str,
    service: Option<&'static str>,
) -> Case {
    Case {
        name,
        input,
        action,
        output,
        outcome,
        service,
    }
}

fn pass(name: &'static str, input: Vec<u8>, outcome: &'static str, service: Option<&'static str>) -> Case {
    case(name, input, XDP_PASS, None, outcome, service)
}

/// The source port full-NAT picks for a new flow on an empty table: the
/// flow's home port by the shared hash.
fn snat_port(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> u16 {
    let a16 = |a: IpAddr| match a {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            b
        }
        IpAddr::V6(a) => a.octets(),
    };
    let h = hash::flow_hash(&a16(src), &a16(dst), sport.to_be(), dport.to_be(), proto);
    SNAT_PORT_MIN + hash::nat_home(h) as u16
}

/// `f` as it leaves towards `to_mac` from eth0.
fn via_eth0(mut f: Frame, to_mac: [u8; 6]) -> Frame {
    f.src_mac = ETH0_MAC;
    f.dst_mac = to_mac;
    f
}

fn cases() -> Vec<Case> {
    let client = ip("198.18.2.1");
    let (vip_http, vip_nat, vip_dsr) = (ip("198.19.0.10"), ip("198.19.0.20"), ip("198.19.0.30"));
    let (snat, be_a) = (ip("198.18.0.2"), ip("198.18.1.1"));
    let syn = Frame::tcp(client, 40000, vip_nat, 80, TCP_SYN);
    let port = snat_port(client, 40000, vip_nat, 80, PROTO_TCP);
    let nat_syn = via_eth0(Frame::tcp(snat, port, be_a, 8080, TCP_SYN), v4mac("198.18.1.1"));
    let ack = Frame::tcp(client, 40000, vip_nat, 80, TCP_ACK);
    let nat_ack = via_eth0(Frame::tcp(snat, port, be_a, 8080, TCP_ACK), v4mac("198.18.1.1"));
    // The backend's answer, and what the client must get.
    let mut answer = Frame::tcp(be_a, 8080, snat, port, TCP_SYN | TCP_ACK);
    answer.src_mac = v4mac("198.18.1.1");
    answer.dst_mac = ETH0_MAC;
    let mut to_client = Frame::tcp(vip_nat, 80, client, 40000, TCP_SYN | TCP_ACK);
    to_client.src_mac = LOCAL_MAC;
    to_client.dst_mac = CLIENT_MAC;

    // Someone else than the flow's backend sending to its port.
    let mut spoof = Frame::tcp(ip("198.18.1.9"), 8080, snat, port, TCP_SYN | TCP_ACK);
    spoof.src_mac = v4mac("198.18.1.1");
    spoof.dst_mac = ETH0_MAC;
    // A client whose flow hashes to the first flow's port takes the next.
    let (cc, cc_port) = (0..=255u8)
        .flat_map(|b| (1024..=65535u16).map(move |p| (ip(&format!("198.18.3.{b}")), p)))
        .find(|&(c, p)| snat_port(c, p, vip_nat, 80, PROTO_TCP) == port)
        .expect("a colliding client");
    let next = if port == SNAT_PORT_MIN + (NAT_PORTS - 1) as u16 {
        SNAT_PORT_MIN
    } else {
        port + 1
    };
    let collide = Frame::tcp(cc, cc_port, vip_nat, 80, TCP_SYN);
    let collide_out = via_eth0(Frame::tcp(snat, next, be_a, 8080, TCP_SYN), v4mac("198.18.1.1"));

    let client2 = ip("198.18.2.2");
    let mut dns = Frame::udp(client2, 5353, vip_nat, 53);
    dns.payload = b"query".to_vec();
    let uport = snat_port(client2, 5353, vip_nat, 53, 17);
    let mut nat_dns = via_eth0(Frame::udp(snat, uport, be_a, 5353), v4mac("198.18.1.1"));
    nat_dns.payload = b"query".to_vec();
    // UDP without checksum (0 over IPv4) must stay without.
    let client3 = ip("198.18.2.3");
    let mut nock_in = Frame::udp(client3, 5353, vip_nat, 53).build();
    nock_in[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let uport3 = snat_port(client3, 5353, vip_nat, 53, 17);
    let mut nock_out = via_eth0(Frame::udp(snat, uport3, be_a, 5353), v4mac("198.18.1.1")).build();
    nock_out[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);

    let dsr_syn = Frame::tcp(client, 40001, vip_dsr, 80, TCP_SYN);
    let dsr_out = via_eth0(dsr_syn.clone(), v4mac("198.18.1.2"));

    let (c6, vip6, snat6, be6) = (
        ip("2001:db8::1:99"),
        ip("2001:db8::20"),
        ip("2001:db8::2"),
        ip("2001:db8::1:1"),
    );
    let syn6 = Frame::tcp(c6, 40000, vip6, 80, TCP_SYN);
    let port6 = snat_port(c6, 40000, vip6, 80, PROTO_TCP);
    let nat6 = via_eth0(Frame::tcp(snat6, port6, be6, 8080, TCP_SYN), V6_BACKEND_MAC);

    let client4 = ip("198.18.2.4");
    let mut vlan = Frame::tcp(client4, 40000, vip_nat, 80, TCP_SYN);
    vlan.vlan = Some(100);
    let vport = snat_port(client4, 40000, vip_nat, 80, PROTO_TCP);
    let mut vlan_out = via_eth0(Frame::tcp(snat, vport, be_a, 8080, TCP_SYN), v4mac("198.18.1.1"));
    vlan_out.vlan = Some(100);

    let client5 = ip("198.18.2.5");
    let mut opts = Frame::tcp(client5, 40000, vip_nat, 80, TCP_SYN);
    opts.ip_options = vec![1, 1, 1, 0];
    let oport = snat_port(client5, 40000, vip_nat, 80, PROTO_TCP);
    let mut opts_out = via_eth0(Frame::tcp(snat, oport, be_a, 8080, TCP_SYN), v4mac("198.18.1.1"));
    opts_out.ip_options = vec![1, 1, 1, 0];

    // ICMP errors about known flows. From the client's side, about what the
    // client was sent (VIP -> client): to the backend, as if about what the
    // backend sent.
    let router = ip("198.18.0.1");
    let synack = Frame::tcp(vip_nat, 80, client, 40000, TCP_SYN | TCP_ACK).build();
    let frag_needed = icmp_error(router, vip_nat, 3, 4, &quoted(&synack));
    let backend_sent = Frame::tcp(be_a, 8080, snat, port, TCP_SYN | TCP_ACK).build();
    let frag_to_backend = via_eth0(
        icmp_error(snat, be_a, 3, 4, &quoted(&backend_sent)),
        v4mac("198.18.1.1"),
    );
    // From a backend, about what xlb sent it: to the client, as if about
    // what the client sent. The quoted UDP checksum is left as it was.
    let sent_to_backend = {
        let mut f = Frame::udp(snat, uport, be_a, 5353);
        f.payload = b"query".to_vec();
        f.build()
    };
    let unreach = {
        let mut f = icmp_error(be_a, snat, 3, 3, &quoted(&sent_to_backend));
        f.src_mac = v4mac("198.18.1.1");
        f.dst_mac = ETH0_MAC;
        f
    };
    let unreach_to_client = {
        let mut q = quoted(&dns.build());
        q[20 + 6..20 + 8].copy_from_slice(&quoted(&sent_to_backend)[20 + 6..20 + 8]);
        let mut f = icmp_error(vip_nat, client2, 3, 3, &q);
        f.src_mac = LOCAL_MAC;
        f.dst_mac = CLIENT_MAC;
        f
    };
    let dsr_frag = icmp_error(
        router,
        vip_dsr,
        3,
        4,
        &quoted(&Frame::tcp(vip_dsr, 80, client, 40001, TCP_ACK).build()),
    );
    let dsr_frag_out = via_eth0(dsr_frag.clone(), v4mac("198.18.1.2"));
    let router6 = ip("2001:db8::ff");
    let too_big = icmp_error(
        router6,
        vip6,
        2,
        0,
        &quoted(&Frame::tcp(vip6, 80, c6, 40000, TCP_ACK).build()),
    );
    let too_big_out = via_eth0(
        icmp_error(
            snat6,
            be6,
            2,
            0,
            &quoted(&Frame::tcp(be6, 8080, snat6, port6, TCP_ACK).build()),
        ),
        V6_BACKEND_MAC,
    );
    let unknown = icmp_error(
        router,
        vip_nat,
        3,
        4,
        &quoted(&Frame::tcp(vip_nat, 80, client, 49999, TCP_ACK).build()),
    );

    let http = Frame::tcp(client, 40000, vip_http, 80, TCP_SYN);
    let mut first_frag = http.clone();
    first_frag.frag = 0x2000;
    let mut later_frag = Frame::new(client, vip_http, L4::Other(PROTO_TCP));
    later_frag.payload = vec![0xab; 16];
    later_frag.frag = 3;
    let full = http.build();

    vec![
        case(
            "nat: syn, new flow",
            syn.build(),
            XDP_REDIRECT,
            Some(nat_syn.build()),
            "redirect",
            Some("nat4"),
        ),
        case(
            "nat: ack, same flow",
            ack.build(),
            XDP_REDIRECT,
            Some(nat_ack.build()),
            "redirect",
            Some("nat4"),
        ),
        case(
            "nat: backend reply un-NATed",
            answer.build(),
            XDP_TX,
            Some(to_client.build()),
            "tx",
            None,
        ),
        pass(
            "nat: a host other than the flow's backend is not un-NATed",
            spoof.build(),
            "pass_not_service",
            None,
        ),
        case(
            "nat: a flow whose port is taken gets the next one",
            collide.build(),
            XDP_REDIRECT,
            Some(collide_out.build()),
            "redirect",
            Some("nat4"),
        ),
        case(
            "nat: udp",
            dns.build(),
            XDP_REDIRECT,
            Some(nat_dns.build()),
            "redirect",
            Some("nat4udp"),
        ),
        case(
            "nat: udp without checksum keeps none",
            nock_in,
            XDP_REDIRECT,
            Some(nock_out),
            "redirect",
            Some("nat4udp"),
        ),
        case(
            "nat: 802.1Q tagged",
            vlan.build(),
            XDP_REDIRECT,
            Some(vlan_out.build()),
            "redirect",
            Some("nat4"),
        ),
        case(
            "nat: ipv4 options",
            opts.build(),
            XDP_REDIRECT,
            Some(opts_out.build()),
            "redirect",
            Some("nat4"),
        ),
        case(
            "nat: ipv6",
            syn6.build(),
            XDP_REDIRECT,
            Some(nat6.build()),
            "redirect",
            Some("nat6"),
        ),
        case(
            "dsr: mac rewrite only",
            dsr_syn.build(),
            XDP_REDIRECT,
            Some(dsr_out.build()),
            "redirect",
            Some("dsr4"),
        ),
        case(
            "icmp: frag needed at the vip, to the nat backend",
            frag_needed.build(),
            XDP_REDIRECT,
            Some(frag_to_backend.build()),
            "redirect",
            None,
        ),
        case(
            "icmp: port unreachable from a backend, to the client",
            unreach.build(),
            XDP_TX,
            Some(unreach_to_client.build()),
            "tx",
            None,
        ),
        case(
            "icmp: frag needed at a dsr vip, to the backend",
            dsr_frag.build(),
            XDP_REDIRECT,
            Some(dsr_frag_out.build()),
            "redirect",
            None,
        ),
        case(
            "icmpv6: packet too big at the vip, to the nat backend",
            too_big.build(),
            XDP_REDIRECT,
            Some(too_big_out.build()),
            "redirect",
            None,
        ),
        pass(
            "icmp: error about no known flow",
            unknown.build(),
            "pass_not_service",
            None,
        ),
        case(
            "nat: service without backends",
            Frame::tcp(client, 40000, ip("198.19.0.40"), 80, TCP_SYN).build(),
            XDP_DROP,
            None,
            "drop_no_backend",
            None,
        ),
        case(
            "nat: backend neighbour unresolved",
            Frame::tcp(client, 40000, ip("198.19.0.50"), 80, TCP_SYN).build(),
            XDP_DROP,
            None,
            "drop_no_neigh",
            None,
        ),
        pass("http: to the kernel", full.clone(), "pass_service", Some("http4")),
        pass(
            "http: ipv6 to the kernel",
            Frame::tcp(c6, 40000, ip("2001:db8::10"), 443, TCP_SYN).build(),
            "pass_service",
            Some("http6"),
        ),
        pass(
            "vip, other port",
            Frame::tcp(client, 40000, vip_nat, 81, TCP_SYN).build(),
            "pass_not_service",
            None,
        ),
        pass(
            "udp to a tcp service port",
            Frame::udp(client, 40000, vip_http, 80).build(),
            "pass_not_service",
            None,
        ),
        pass(
            "not a vip",
            Frame::tcp(client, 40000, ip("198.18.0.2"), 80, TCP_SYN).build(),
            "pass_not_service",
            None,
        ),
        pass(
            "arp",
            arp_request([198, 18, 2, 1], [198, 19, 0, 20]),
            "pass_not_service",
            None,
        ),
        // What keepalived and neighbours need goes by untouched.
        pass(
            "vrrp advertisement to its group",
            vrrp(ip("198.18.0.3"), ip("224.0.0.18"), 51, &[[198, 19, 0, 20]]).build(),
            "pass_not_service",
            None,
        ),
        pass(
            "vrrp (protocol 112) unicast to a vip",
            vrrp(ip("198.18.0.3"), vip_nat, 51, &[[198, 19, 0, 20]]).build(),
            "pass_not_service",
            None,
        ),
        pass(
            "gratuitous arp for a vip",
            gratuitous_arp([198, 19, 0, 20], CLIENT_MAC),
            "pass_not_service",
            None,
        ),
        pass(
            "ipv6 neighbour solicitation for a vip",
            neighbour(
                c6,
                ip("ff02::1:ff00:20"),
                135,
                "2001:db8::20".parse().unwrap(),
                CLIENT_MAC,
            )
            .build(),
            "pass_not_service",
            None,
        ),
        pass(
            "ipv6 neighbour solicitation unicast to a vip",
            neighbour(c6, vip6, 135, "2001:db8::20".parse().unwrap(), CLIENT_MAC).build(),
            "pass_not_service",
            None,
        ),
        pass(
            "ipv6 unsolicited neighbour advertisement of a vip",
            neighbour(vip6, ip("ff02::1"), 136, "2001:db8::20".parse().unwrap(), CLIENT_MAC).build(),
            "pass_not_service",
            None,
        ),
        pass(
            "icmp echo to vip: the kernel answers",
            echo_request(client, vip_nat).build(),
            "pass_not_service",
            None,
        ),
        pass(
            "icmp without its header",
            Frame::new(client, vip_nat, L4::Other(1)).build(),
            "pass_parse_error",
            None,
        ),
        pass("first fragment", first_frag.build(), "pass_fragment", None),
        pass("later fragment", later_frag.build(), "pass_fragment", None),
        pass(
            "truncated ipv4 header",
            full[..14 + 10].to_vec(),
            "pass_parse_error",
            None,
        ),
        pass(
            "truncated tcp header",
            full[..14 + 20 + 12].to_vec(),
            "pass_parse_error",
            None,
        ),
        pass(
            "truncated vlan tag",
            vlan.build()[..16].to_vec(),
            "pass_parse_error",
            None,
        ),
        pass(
            "ipv4 header length below 20",
            {
                let mut f = full.clone();
                f[14] = 0x44;
                f
            },
            "pass_parse_error",
            None,
        ),
        // Lengths that disagree with the frame: never rewritten.
        pass(
            "ipv4 longer than its frame (to a nat service)",
            with_bytes(syn.build(), 14 + 2, &(20u16 + 20 + 4).to_be_bytes()),
            "pass_parse_error",
            None,
        ),
        pass(
            "ipv6 longer than its frame",
            with_bytes(
                Frame::tcp(c6, 40000, vip6, 80, TCP_SYN).build(),
                14 + 4,
                &24u16.to_be_bytes(),
            ),
            "pass_parse_error",
            None,
        ),
        pass(
            "udp length not the ip payload's",
            with_bytes(dns.build(), 14 + 20 + 4, &9u16.to_be_bytes()),
            "pass_parse_error",
            None,
        ),
        pass(
            "tcp data offset past the packet",
            with_bytes(syn.build(), 14 + 20 + 12, &[0xf0]),
            "pass_parse_error",
            None,
        ),
        pass(
            "tcp data offset below 5",
            with_bytes(syn.build(), 14 + 20 + 12, &[0x40]),
            "pass_parse_error",
            None,
        ),
        // An error must go to the sender of what it quotes: one for someone
        // else, quoting a live flow, is not ours to rewrite.
        pass(
            "icmp error addressed to another host",
            icmp_error(be_a, ip("198.18.0.9"), 3, 3, &quoted(&sent_to_backend)).build(),
            "pass_not_service",
            None,
        ),
        pass(
            "icmp error whose quote lies past its ip length",
            {
                // The IP header says the message ends inside the quoted
                // header; the rest is a trailer, not ours to rewrite.
                let f = icmp_error(be_a, snat, 3, 3, &quoted(&sent_to_backend)).build();
                let mut f = with_bytes(f, 14 + 2, &(20u16 + 8 + 20).to_be_bytes());
                let c = lab::packet::checksum(0, &{
                    let mut h = f[14..34].to_vec();
                    h[10..12].copy_from_slice(&[0, 0]);
                    h
                });
                f[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
                f
            },
            "pass_parse_error",
            None,
        ),
    ]
}

/// `frame` with `bytes` written at `at` (checksums left as they were:
/// these frames must not get far enough for them to matter).
fn with_bytes(mut frame: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    frame[at..at + bytes.len()].copy_from_slice(bytes);
    frame
}

#[test]
fn fixtures() {
    lab::require_root!();
    let ns = fixture_ns();
    ns.enter(|| {
        let mut fx = Fixture::new();
        for c in &cases() {
            fx.run(c);
        }
    })
    .unwrap();
}

/// A reload gives the XDP program the new service table in one flip: a
/// service moved to another VIP is forwarded there and its old VIP passed,
/// through both halves of the table and back.
#[test]
fn reload_swaps_the_service_table() {
    lab::require_root!();
    let ns = fixture_ns();
    ns.enter(|| {
        let mut fx = Fixture::new();
        let moved = CONFIG.replace("vip = \"198.19.0.30\"", "vip = \"198.19.0.31\"");
        let client = ip("198.18.2.1");
        for (cfg, live, gone) in [
            (moved.as_str(), "198.19.0.31", "198.19.0.30"),
            (CONFIG, "198.19.0.30", "198.19.0.31"),
            (moved.as_str(), "198.19.0.31", "198.19.0.30"),
        ] {
            fx.cfg = config::parse(Path::new("fixtures.toml"), cfg).unwrap();
            fx.mm
                .apply(&mut fx.ebpf, &fx.cfg, &Default::default(), &|_| None)
                .unwrap();
            let syn = |vip| Frame::tcp(client, 40001, ip(vip), 80, TCP_SYN);
            let out = via_eth0(syn(live), v4mac("198.18.1.2")).build();
            fx.run(&case(
                "dsr at its new vip",
                syn(live).build(),
                XDP_REDIRECT,
                Some(out),
                "redirect",
                Some("dsr4"),
            ));
            fx.run(&pass("dsr's old vip", syn(gone).build(), "pass_not_service", None));
        }
    })
    .unwrap();
}

/// The destination MAC of a forwarded frame.
fn dst_mac(frame: &[u8]) -> [u8; 6] {
    frame[..6].try_into().unwrap()
}

/// Runs one frame; returns the action and the frame as it left.
fn run_frame(fx: &mut Fixture, input: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; input.len() + 256];
    let res = xdp_program(&mut fx.ebpf)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .unwrap();
    out.truncate(res.data_size_out as usize);
    (res.return_value, out)
}

/// DSR without state: a packet in the middle of a connection this node
/// never saw (another node's before a failover, or an ECMP change) goes to
/// the backend the ring names, the one the connection's SYN went to; on a
/// second node with the same config too. Checked for 40 clients over a
/// three-backend service, so that more than one backend is involved.
#[test]
fn dsr_flow_table_misses_follow_the_ring() {
    lab::require_root!();
    let ns = fixture_ns();
    ns.enter(|| {
        let mut node_a = Fixture::new();
        let mut node_b = Fixture::new();
        let vip = ip("198.19.0.32");
        let mut used = std::collections::HashSet::new();
        for i in 0..40u8 {
            let client = ip(&format!("198.18.4.{}", i + 1));
            let syn = Frame::tcp(client, 40000, vip, 80, TCP_SYN).build();
            let (action, out) = run_frame(&mut node_a, &syn);
            assert_eq!(action, XDP_REDIRECT, "client {client}: SYN forwarded");
            let backend = dst_mac(&out);
            used.insert(backend);
            // The same connection's next packet on a node that never saw it.
            let ack = Frame::tcp(client, 40000, vip, 80, TCP_ACK).build();
            let (action, out) = run_frame(&mut node_b, &ack);
            assert_eq!(action, XDP_REDIRECT, "client {client}: ACK on the other node forwarded");
            assert_eq!(
                dst_mac(&out),
                backend,
                "client {client}: the other node picks the SYN's backend"
            );
            assert_eq!(&out[12..], &ack[12..], "client {client}: only the MACs change (dsr)");
            // Another connection of the same client, first seen mid-way.
            let other = Frame::tcp(client, 40001, vip, 80, TCP_ACK).build();
            let (_, out) = run_frame(&mut node_a, &other);
            assert_eq!(dst_mac(&out), backend, "client {client}: source affinity on a miss");
        }
        assert!(used.len() > 1, "40 clients all hashed to one backend: {used:?}");
    })
    .unwrap();
}

/// A snat pool: each flow leaves from the pool address its hash picks
/// (`hash::pool_index`) and its home port; the backend's answer to either address goes back to the client.
/// 40 clients, so both addresses are used.
#[test]
fn a_snat_pool_spreads_flows_and_takes_replies_on_each_address() {
    lab::require_root!();
    let ns = fixture_ns();
    ns.enter(|| {
        let mut fx = Fixture::new();
        let (vip, be) = (ip("198.19.0.60"), ip("198.18.1.1"));
        let pool = [ip("198.18.0.2"), ip("198.18.0.3")];
        let mut used = std::collections::HashSet::new();
        for i in 0..40u8 {
            let client = ip(&format!("198.18.5.{}", i + 1));
            let h = {
                let (c, v) = (lb_common::addr16(client).0, lb_common::addr16(vip).0);
                hash::flow_hash(&c, &v, 40000u16.to_be(), 80u16.to_be(), PROTO_TCP)
            };
            let snat = pool[hash::pool_index(h, 2) as usize];
            let port = snat_port(client, 40000, vip, 80, PROTO_TCP);
            let syn = Frame::tcp(client, 40000, vip, 80, TCP_SYN).build();
            let (action, out) = run_frame(&mut fx, &syn);
            assert_eq!(action, XDP_REDIRECT, "client {client}: SYN forwarded");
            let want = via_eth0(Frame::tcp(snat, port, be, 8080, TCP_SYN), v4mac("198.18.1.1")).build();
            assert_eq!(hex(&out), hex(&want), "client {client}: leaves from {snat}:{port}");
            used.insert(snat);
            let mut answer = Frame::tcp(be, 8080, snat, port, TCP_SYN | TCP_ACK);
            answer.src_mac = v4mac("198.18.1.1");
            answer.dst_mac = ETH0_MAC;
            let (action, out) = run_frame(&mut fx, &answer.build());
            let mut back = Frame::tcp(vip, 80, client, 40000, TCP_SYN | TCP_ACK);
            back.src_mac = LOCAL_MAC;
            back.dst_mac = CLIENT_MAC;
            assert_eq!(action, XDP_TX, "client {client}: the answer to {snat} goes back");
            assert_eq!(
                hex(&out),
                hex(&back.build()),
                "client {client}: answer rewritten to the VIP"
            );
        }
        assert_eq!(used.len(), 2, "40 flows all used one pool address");
    })
    .unwrap();
}

/// Flow logs: with `[service.log]` on, a new flow (not a packet of a
/// known one) leaves a record of its client, service and backend; a
/// service without backends records the drop; a service with logs off
/// records nothing; `sample = 4` keeps about one new flow in four.
#[test]
fn new_flows_leave_flow_log_records_for_logged_services_only() {
    use aya::maps::RingBuf;
    use lb_common::{FlowLogEvent, FAMILY_V4, FLOW_FORWARDED, FLOW_NO_BACKEND};
    lab::require_root!();
    let log = "mode = \"nat\"\nsnat = \"198.18.0.2\"\n[service.log]\nenabled = true\n";
    let cfg = CONFIG
        .replace(
            "vip = \"198.19.0.30\"\nport = 80\nmode = \"dsr\"\n",
            "vip = \"198.19.0.30\"\nport = 80\nmode = \"dsr\"\n[service.log]\nenabled = true\n",
        )
        .replace(
            "port = 80\nmode = \"nat\"\nsnat = \"198.18.0.2\"\n",
            &format!("port = 80\n{log}"),
        )
        .replace(
            "snat = [\"198.18.0.2\", \"198.18.0.3\"]\n",
            "snat = [\"198.18.0.2\", \"198.18.0.3\"]\n[service.log]\nenabled = true\nsample = 4\n",
        );
    let ns = fixture_ns();
    ns.enter(|| {
        let mut fx = Fixture::with(&cfg);
        let mut ring = RingBuf::try_from(fx.ebpf.take_map(maps::FLOW_LOG).unwrap()).unwrap();
        let drain = |ring: &mut RingBuf<_>| {
            let mut v = Vec::new();
            while let Some(item) = ring.next() {
                // SAFETY: the program writes whole events.
                v.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowLogEvent>()) });
            }
            v
        };
        let slot = |fx: &Fixture, name: &str| {
            let s = fx.cfg.services.iter().find(|s| s.name == name).unwrap();
            fx.mm.service_slot(&service_key(s)).unwrap()
        };
        let client = ip("198.18.6.1");
        for (svc, vip, backend) in [("dsr4", "198.19.0.30", "b"), ("nat4", "198.19.0.20", "a")] {
            let syn = Frame::tcp(client, 41000, ip(vip), 80, TCP_SYN).build();
            assert_eq!(run_frame(&mut fx, &syn).0, XDP_REDIRECT);
            let got = drain(&mut ring);
            assert_eq!(got.len(), 1, "{svc}: one record for the new flow");
            let e = got[0];
            assert_eq!(
                (e.service, e.backend, e.outcome, e.family, u16::from_be(e.sport_be)),
                (
                    slot(&fx, svc),
                    fx.mm.backend_id(svc, backend).unwrap(),
                    FLOW_FORWARDED,
                    FAMILY_V4,
                    41000
                ),
                "{svc}"
            );
            assert_eq!(e.src[..4], [198, 18, 6, 1]);
            let ack = Frame::tcp(client, 41000, ip(vip), 80, TCP_ACK).build();
            assert_eq!(run_frame(&mut fx, &ack).0, XDP_REDIRECT);
            assert!(
                drain(&mut ring).is_empty(),
                "{svc}: an established flow's packet is not logged"
            );
        }
        // "empty" (logged, no backends): the drop.
        let syn = Frame::tcp(client, 41001, ip("198.19.0.40"), 80, TCP_SYN).build();
        assert_eq!(run_frame(&mut fx, &syn).0, XDP_DROP);
        let got = drain(&mut ring);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].service, got[0].outcome), (slot(&fx, "empty"), FLOW_NO_BACKEND));
        // dsr3: logs off.
        let syn = Frame::tcp(client, 41002, ip("198.19.0.32"), 80, TCP_SYN).build();
        assert_eq!(run_frame(&mut fx, &syn).0, XDP_REDIRECT);
        assert!(drain(&mut ring).is_empty(), "a service without logs");
        // natpool, one new flow in four, picked at random.
        for i in 0..800u16 {
            let syn = Frame::tcp(client, 20000 + i, ip("198.19.0.60"), 80, TCP_SYN).build();
            assert_eq!(run_frame(&mut fx, &syn).0, XDP_REDIRECT);
        }
        let n = drain(&mut ring).len();
        assert!((130..=270).contains(&n), "{n} of 800 new flows logged with sample = 4");
    })
    .unwrap();
}

/// A full-NAT flow synced from another node: written into the slot of the
/// same snat port (the nodes' snat regions differ), the backend's answer is
/// turned back to the client by a route lookup (the flow carries no way
/// back yet), and the client's next packet leaves by the same snat port.
#[test]
fn a_synced_nat_flow_carries_on_on_the_other_node() {
    use lb_common::{NatFlow, SyncEvent, FAMILY_V4, SYNC_NAT};
    use lb_user::l4::sync::{directory::Target, table::Clock};
    lab::require_root!();
    let ns = fixture_ns();
    ns.enter(|| {
        let mut node_a = Fixture::new();
        let mut node_b = Fixture::new();
        let (client, vip, snat, be) = (ip("198.18.2.1"), ip("198.19.0.20"), ip("198.18.0.2"), ip("198.18.1.1"));
        let syn = Frame::tcp(client, 41000, vip, 80, TCP_SYN).build();
        let (action, out) = run_frame(&mut node_a, &syn);
        assert_eq!(action, XDP_REDIRECT);
        let port = u16::from_be_bytes([out[34], out[35]]);
        // Node A's flow, as its sync would read and send it.
        let dir_a = node_a.mm.directory(&node_a.cfg);
        let region_a = *dir_a.regions.iter().find(|(_, a)| **a == snat).unwrap().0;
        let slot_a = region_a * NAT_PORTS + u32::from(port - SNAT_PORT_MIN);
        let flows_a: aya::maps::Array<_, NatFlow> =
            aya::maps::Array::try_from(node_a.ebpf.map(maps::NAT_FLOWS).unwrap()).unwrap();
        let flow = flows_a.get(&slot_a, 0).unwrap();
        assert_eq!(
            flow.client_port_be,
            41000u16.to_be(),
            "the flow is in the slot of its snat port"
        );
        let ev = SyncEvent {
            kind: SYNC_NAT,
            family: FAMILY_V4,
            _pad: 0,
            slot: slot_a,
            flow,
        };
        let record = dir_a.record(&ev, 0).unwrap();
        assert_eq!((record.snat, record.snat_port, record.backend), (snat, port, be));
        // Node B installs it.
        let clock = Clock::new(lb_user::l4::bpf::kernel_hz());
        let dir_b = node_b.mm.directory(&node_b.cfg);
        let Ok(Target::Nat { slot, flow }) = dir_b.place(&record, clock.now()) else {
            panic!("node B has the service, backend and snat address");
        };
        let mut flows_b: aya::maps::Array<_, NatFlow> =
            aya::maps::Array::try_from(node_b.ebpf.map_mut(maps::NAT_FLOWS).unwrap()).unwrap();
        flows_b.set(slot, flow, 0).unwrap();
        // The backend answers node B.
        let mut answer = Frame::tcp(be, 8080, snat, port, TCP_SYN | TCP_ACK);
        answer.src_mac = v4mac("198.18.1.1");
        answer.dst_mac = ETH0_MAC;
        let want = via_eth0(Frame::tcp(vip, 80, client, 41000, TCP_SYN | TCP_ACK), CLIENT_MAC);
        let (action, out) = run_frame(&mut node_b, &answer.build());
        assert_eq!(action, XDP_REDIRECT, "the answer is routed to the client");
        assert_eq!(hex(&out), hex(&want.build()), "the answer as the client must get it");
        // The client's next packet on node B: same snat port, same backend.
        let ack = Frame::tcp(client, 41000, vip, 80, TCP_ACK).build();
        let (action, out) = run_frame(&mut node_b, &ack);
        assert_eq!(action, XDP_REDIRECT);
        let want = via_eth0(Frame::tcp(snat, port, be, 8080, TCP_ACK), v4mac("198.18.1.1"));
        assert_eq!(
            hex(&out),
            hex(&want.build()),
            "the client's packet leaves by the synced snat port"
        );
    })
    .unwrap();
}

/// Frames for another host's MAC are not ours: passed untouched and
/// counted (a switch floods them while it learns where a MAC moved). Ours,
/// and broadcast ones, are forwarded.
#[test]
fn frames_for_another_mac_are_passed() {
    lab::require_root!();
    let ns = fixture_ns();
    ns.enter(|| {
        let mine: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
        let word = u64::from_ne_bytes([mine[0], mine[1], mine[2], mine[3], mine[4], mine[5], 0, 0]);
        let mut loader = aya::EbpfLoader::new();
        loader.override_global(lb_common::LOCAL_MAC_GLOBAL, &word, true);
        let mut ebpf = lb_user::l4::bpf::load_with(&mut loader).unwrap();
        let cfg = config::parse(Path::new("fixtures.toml"), CONFIG).unwrap();
        let mut mm = MapManager::default();
        mm.apply(&mut ebpf, &cfg, &Default::default(), &|_| None).unwrap();
        let mut fx = Fixture { ebpf, mm, cfg };
        let syn = |port: u16, dst_mac: [u8; 6]| {
            let mut f = Frame::tcp(ip("198.18.2.1"), port, ip("198.19.0.30"), 80, TCP_SYN);
            f.dst_mac = dst_mac;
            f
        };
        fx.run(&pass(
            "syn to a vip, for another host's mac",
            syn(41000, [0x02, 0, 0, 0, 0, 9]).build(),
            "pass_other_host",
            None,
        ));
        for (name, port, mac) in [("ours", 41001, mine), ("broadcast", 41002, [0xff; 6])] {
            let out = via_eth0(syn(port, mac), v4mac("198.18.1.2")).build();
            fx.run(&case(
                name,
                syn(port, mac).build(),
                XDP_REDIRECT,
                Some(out),
                "redirect",
                Some("dsr4"),
            ));
        }
    })
    .unwrap();
}
