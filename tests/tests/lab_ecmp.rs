//! ECMP scale-out, dsr: two xlb nodes behind a router namespace with a
//! multipath route to the VIP (`fib_multipath_hash_policy=1`, so each
//! connection hashes to a node by its 5-tuple). The nodes share no state:
//! identical Maglev tables send every client to the same backend through
//! either node, and connections whose node leaves the route carry on
//! through the other one.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    thread,
    time::Duration,
};

use lab::{
    bpffs::Bpffs,
    ha::{stream, EchoServer},
    servers::{tcp_hello, Kind, Server},
    topology::{backend_ip, Host, Segment},
    xlb::{temp_file, XlbProcess},
    Netns,
};

const CLIENTS: u8 = 40;
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const NODES: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 3)];
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);

/// Client address `i`, on the client side of the router (198.19.100.0/24).
fn client_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 100, 2 + i)
}

struct EcmpLab {
    seg: Segment,
    client: Netns,
    router: Host,
    nodes: Vec<Host>,
    backends: Vec<Host>,
    _pass: Vec<std::os::fd::OwnedFd>,
}

impl EcmpLab {
    fn new(backends: usize) -> EcmpLab {
        let mut seg = Segment::new().unwrap();
        let router = seg.host("router", vec![ROUTER]).unwrap();
        let nodes: Vec<Host> = (0..2)
            .map(|i| seg.host(&format!("node{i}"), vec![NODES[i]]).unwrap())
            .collect();
        let backends: Vec<Host> = (0..backends)
            .map(|i| seg.host(&format!("be{i}"), vec![backend_ip(i)]).unwrap())
            .collect();
        let pass = seg.pass_links().unwrap();
        // The clients' own link to the router.
        let client = Netns::create(&format!("{}-client", seg.id)).unwrap();
        router
            .ns
            .ip(&[
                "link",
                "add",
                "down0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                client.name(),
            ])
            .unwrap();
        router
            .ns
            .ip(&["addr", "add", "198.19.100.1/24", "dev", "down0"])
            .unwrap();
        router.ns.ip(&["link", "set", "down0", "up"]).unwrap();
        for i in 0..CLIENTS {
            client
                .ip(&["addr", "add", &format!("{}/24", client_addr(i)), "dev", "eth0"])
                .unwrap();
        }
        client.ip(&["link", "set", "eth0", "up"]).unwrap();
        client.run("ethtool", &["-K", "eth0", "tx", "off"]).unwrap();
        router.ns.run("ethtool", &["-K", "down0", "tx", "off"]).unwrap();
        client.ip(&["route", "add", "default", "via", "198.19.100.1"]).unwrap();
        router.ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
        router.ns.sysctl("net.ipv4.fib_multipath_hash_policy", "1").unwrap();
        for b in &backends {
            // LVS-DR backends: the VIP on loopback, never in ARP; answers
            // straight back through the router.
            b.ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]).unwrap();
            b.ns.sysctl("net.ipv4.conf.all.arp_ignore", "1").unwrap();
            b.ns.sysctl("net.ipv4.conf.all.arp_announce", "2").unwrap();
            b.ns.ip(&["route", "add", "198.19.100.0/24", "via", &ROUTER.to_string()])
                .unwrap();
        }
        EcmpLab {
            seg,
            client,
            router,
            nodes,
            backends,
            _pass: pass,
        }
    }

    /// The router's route to the VIP: through the given nodes.
    fn route(&self, via: &[usize]) {
        let mut args = vec!["route".to_string(), "replace".into(), format!("{VIP}/32")];
        if via.len() == 1 {
            args.extend(["via".into(), NODES[via[0]].to_string()]);
        } else {
            for n in via {
                args.extend(["nexthop".into(), "via".into(), NODES[*n].to_string()]);
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.router.ns.ip(&args).unwrap();
        // Forget cached routes of open connections too.
        let _ = self.router.ns.ip(&["route", "flush", "cache"]);
    }

    /// The backend each client's new connection reaches (name greeting).
    fn backends_seen(&self) -> BTreeMap<Ipv4Addr, String> {
        (0..CLIENTS)
            .map(|i| {
                let c = client_addr(i);
                let name = tcp_hello(
                    &self.client,
                    SocketAddr::new(c.into(), 0),
                    SocketAddr::new(VIP.into(), 80),
                    Duration::from_secs(3),
                )
                .unwrap_or_else(|e| panic!("client {c}: {e}"));
                (c, name)
            })
            .collect()
    }
}

fn node_config(lab: &EcmpLab, bpffs: &Bpffs, i: usize) -> String {
    let mut c = format!(
        "[global]\ninterface = \"eth0\"\npin_dir = \"{}/node{i}\"\n",
        bpffs.path.display()
    );
    for (name, port) in [("names", 80), ("echo", 81)] {
        c += &format!(
            "\n[[service]]\nname = \"{name}\"\nvip = \"{VIP}\"\nport = {port}\nmode = \"dsr\"\n\
             [service.health]\nkind = \"tcp\"\ninterval = \"500ms\"\ntimeout = \"300ms\"\nrise = 1\nfall = 2\n"
        );
        for (n, b) in lab.backends.iter().enumerate() {
            c += &format!("[[service.backend]]\nname = \"be{n}\"\naddress = \"{}:{port}\"\n", b.ip);
        }
    }
    c
}

#[test]
fn ecmp_dsr_nodes_agree_and_keep_connections_when_a_node_leaves() {
    lab::require_root!();
    let lab = EcmpLab::new(3);
    let bpffs = Bpffs::mount(&format!("{}-ecmp", lab.seg.id)).unwrap();
    let unspecified = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    let _names: Vec<Server> = lab
        .backends
        .iter()
        .map(|b| Server::start(&b.ns, unspecified(80), &b.role, Kind::Tcp).unwrap())
        .collect();
    let _echo: Vec<EchoServer> = lab
        .backends
        .iter()
        .map(|b| EchoServer::start(&b.ns, unspecified(81)).unwrap())
        .collect();
    let xlb: Vec<XlbProcess> = (0..2)
        .map(|i| {
            let path = temp_file(&format!("{}-ecmp{i}.toml", lab.seg.id), &node_config(&lab, &bpffs, i)).unwrap();
            XlbProcess::start(&lab.nodes[i].ns, &path, &[]).unwrap()
        })
        .collect();
    thread::sleep(Duration::from_secs(1));

    // Each node alone: every client gets the same backend from both.
    lab.route(&[0]);
    let via0 = lab.backends_seen();
    lab.route(&[1]);
    let via1 = lab.backends_seen();
    assert_eq!(via0, via1, "the nodes disagree on some client's backend");
    let spread: std::collections::BTreeSet<&String> = via0.values().collect();
    assert!(spread.len() > 1, "all 40 clients on one backend: {spread:?}");

    // Both nodes, then node0 leaves the route in the middle of 40 streams.
    lab.route(&[0, 1]);
    let streams: Vec<_> = (0..CLIENTS)
        .map(|i| {
            stream(
                &lab.client,
                usize::from(i),
                IpAddr::V4(client_addr(i)),
                SocketAddr::new(VIP.into(), 81),
                Duration::from_secs(6),
            )
        })
        .collect();
    thread::sleep(Duration::from_secs(2));
    let packets = |i: usize| {
        let out = lab::xlb::xlb_once(&lab.nodes[i].ns, &["status", "--json"]).unwrap();
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        st["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "echo")
            .unwrap()["packets"]
            .as_u64()
            .unwrap()
    };
    let (before0, before1) = (packets(0), packets(1));
    assert!(
        before0 > 0 && before1 > 0,
        "ECMP used one node only: {before0} / {before1}"
    );
    lab.route(&[1]);
    let reports: Vec<_> = streams.into_iter().map(|h| h.join().unwrap()).collect();
    let broken: Vec<String> = reports
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("stream {}: {e}", r.id)))
        .collect();
    assert!(broken.is_empty(), "{broken:#?}\n{}\n{}", xlb[0].log(), xlb[1].log());
    let moved = packets(1) - before1;
    println!(
        "ecmp: {CLIENTS} clients agree across nodes ({} backends used); {} streams kept when node0 left the route; node1 then forwarded {moved} more packets",
        spread.len(),
        reports.len()
    );
    // The route change really moved node0's streams: node0 got nothing
    // more (a few packets in flight aside).
    assert!(
        packets(0) - before0 < 50,
        "node0 still forwarding after leaving the route"
    );
    // Again each node alone agrees (flow tables now hold the streams).
    lab.route(&[0]);
    assert_eq!(lab.backends_seen(), via1, "node0 disagrees after the change");
}
