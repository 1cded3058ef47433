//! Katran-style packet fixtures: each case is an input frame, the expected
//! XDP action, the expected output frame and the counter it must move, run
//! through the real XDP program with BPF_PROG_TEST_RUN.

use std::net::IpAddr;

use aya::{
    maps::{HashMap, PerCpuArray},
    programs::{TestRun, TestRunOptions},
    Ebpf,
};
use lab::packet::{arp_request, Frame, L4, TCP_ACK, TCP_SYN};
use lb_common::{maps, ServiceKey, ServiceStats, ServiceValue, PROTO_TCP, PROTO_UDP};
use lb_user::dataplane::{load_object, read_outcomes, xdp_program};

const XDP_PASS: u32 = 2;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const VIP4: &str = "198.19.0.10";
const VIP6: &str = "2001:db8::10";
const CLIENT4: &str = "198.18.2.1";
const CLIENT6: &str = "2001:db8::1:1";

/// Loads the program with three services: VIP4:80/tcp (id 0),
/// VIP4:53/udp (id 1), [VIP6]:443/tcp (id 2).
fn setup() -> Ebpf {
    let mut ebpf = load_object().expect("load the XDP object (built by cargo xtask build)");
    let mut svc: HashMap<_, ServiceKey, ServiceValue> =
        HashMap::try_from(ebpf.map_mut(maps::SERVICES).unwrap()).unwrap();
    let v4 = [198, 19, 0, 10];
    let v6: std::net::Ipv6Addr = VIP6.parse().unwrap();
    for (id, key) in [
        ServiceKey::v4(v4, 80, PROTO_TCP),
        ServiceKey::v4(v4, 53, PROTO_UDP),
        ServiceKey::v6(v6.octets(), 443, PROTO_TCP),
    ]
    .into_iter()
    .enumerate()
    {
        svc.insert(
            key,
            ServiceValue {
                id: id as u32,
                flags: 0,
            },
            0,
        )
        .unwrap();
    }
    ebpf
}

fn service_packets(ebpf: &Ebpf, id: u32) -> u64 {
    let arr: PerCpuArray<_, ServiceStats> =
        PerCpuArray::try_from(ebpf.map(maps::SERVICE_STATS).unwrap()).unwrap();
    arr.get(&id, 0).unwrap().iter().map(|s| s.packets).sum()
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    action: u32,
    /// None: the output must equal the input byte for byte.
    output: Option<Vec<u8>>,
    outcome: &'static str,
    /// Service whose packet counter must move by one.
    service: Option<u32>,
}

fn pass(name: &'static str, input: Vec<u8>, outcome: &'static str, service: Option<u32>) -> Case {
    Case {
        name,
        input,
        action: XDP_PASS,
        output: None,
        outcome,
        service,
    }
}

fn run_case(ebpf: &mut Ebpf, c: &Case) {
    let before = read_outcomes(ebpf);
    let svc_before: Vec<u64> = (0..3).map(|i| service_packets(ebpf, i)).collect();
    let mut out = vec![0u8; c.input.len() + 256];
    let res = xdp_program(ebpf)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(&c.input),
            data_out: Some(&mut out),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{}: test_run: {e}", c.name));
    out.truncate(res.data_size_out as usize);
    assert_eq!(res.return_value, c.action, "{}: XDP action", c.name);
    assert_eq!(
        &out,
        c.output.as_ref().unwrap_or(&c.input),
        "{}: output frame",
        c.name
    );
    let after = read_outcomes(ebpf);
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        let want = u64::from(*name == c.outcome);
        assert_eq!(a - b, want, "{}: outcome counter {name}", c.name);
    }
    for (i, b) in svc_before.iter().enumerate() {
        let want = u64::from(c.service == Some(i as u32));
        assert_eq!(
            service_packets(ebpf, i as u32) - b,
            want,
            "{}: service {i} packets",
            c.name
        );
    }
}

#[test]
fn fixtures() {
    lab::require_root!();
    let mut ebpf = setup();
    let syn = Frame::tcp(ip(CLIENT4), 40000, ip(VIP4), 80, TCP_SYN);
    let mut vlan = syn.clone();
    vlan.vlan = Some(100);
    let mut options = syn.clone();
    options.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL: IHL 6
    let mut first_frag = syn.clone();
    first_frag.frag = 0x2000; // more fragments
    let mut later_frag = Frame::new(ip(CLIENT4), ip(VIP4), L4::Other(PROTO_TCP));
    later_frag.payload = vec![0xab; 16];
    later_frag.frag = 3; // offset 24 bytes
    let mut dns = Frame::udp(ip(CLIENT4), 5353, ip(VIP4), 53);
    dns.payload = b"query".to_vec();
    let full = syn.build();

    let cases = vec![
        pass("tcp syn to v4 vip", full.clone(), "pass_service", Some(0)),
        pass(
            "tcp ack to v4 vip",
            Frame::tcp(ip(CLIENT4), 40000, ip(VIP4), 80, TCP_ACK).build(),
            "pass_service",
            Some(0),
        ),
        pass("udp to v4 vip", dns.build(), "pass_service", Some(1)),
        pass(
            "tcp to v6 vip",
            Frame::tcp(ip(CLIENT6), 40000, ip(VIP6), 443, TCP_SYN).build(),
            "pass_service",
            Some(2),
        ),
        pass(
            "802.1Q tagged tcp to vip",
            vlan.build(),
            "pass_service",
            Some(0),
        ),
        pass(
            "ipv4 with options to vip",
            options.build(),
            "pass_service",
            Some(0),
        ),
        pass(
            "tcp to vip, other port",
            Frame::tcp(ip(CLIENT4), 40000, ip(VIP4), 81, TCP_SYN).build(),
            "pass_not_service",
            None,
        ),
        pass(
            "udp to vip's tcp port",
            Frame::udp(ip(CLIENT4), 40000, ip(VIP4), 80).build(),
            "pass_not_service",
            None,
        ),
        pass(
            "tcp to another address",
            Frame::tcp(ip(CLIENT4), 40000, ip("198.18.0.2"), 80, TCP_SYN).build(),
            "pass_not_service",
            None,
        ),
        pass(
            "arp request",
            arp_request([198, 18, 2, 1], [198, 19, 0, 10]),
            "pass_not_service",
            None,
        ),
        pass(
            "icmp to vip",
            Frame::new(ip(CLIENT4), ip(VIP4), L4::Other(1)).build(),
            "pass_not_service",
            None,
        ),
        pass(
            "first fragment to vip",
            first_frag.build(),
            "pass_fragment",
            None,
        ),
        pass(
            "later fragment to vip",
            later_frag.build(),
            "pass_fragment",
            None,
        ),
        pass(
            "truncated ipv4 header",
            full[..14 + 10].to_vec(),
            "pass_parse_error",
            None,
        ),
        pass(
            "truncated tcp ports",
            full[..14 + 20 + 3].to_vec(),
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
    ];
    for c in &cases {
        run_case(&mut ebpf, c);
    }
}
