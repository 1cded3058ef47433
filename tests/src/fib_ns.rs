//! A namespace in which the XDP program's route lookups resolve, for
//! BPF_PROG_TEST_RUN (fixtures and benchmarks): `eth0` with 198.18.0.2/16
//! and 2001:db8::2/64, permanent neighbour entries for backends, forwarding
//! on. Packets of BPF_PROG_TEST_RUN arrive on `lo`, so forwarded ones leave
//! by redirect to eth0.

use std::{io, net::Ipv4Addr};

use crate::{
    topology::{backend_ip, mac_for, mac_str},
    Netns,
};

pub const ETH0_MAC: [u8; 6] = [0x02, 0, 198, 18, 0, 2];
pub const SNAT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// Creates the namespace with neighbour entries for backends `0..backends`
/// (addresses from [`backend_ip`], MACs from [`mac_for`]) and for `extra`
/// (address, MAC) pairs.
pub fn create(name: &str, backends: usize, extra: &[(&str, [u8; 6])]) -> io::Result<Netns> {
    let ns = Netns::create(name)?;
    ns.ip(&[
        "link",
        "add",
        "eth0",
        "address",
        &mac_str(ETH0_MAC),
        "type",
        "veth",
        "peer",
        "name",
        "peer0",
    ])?;
    ns.ip(&["addr", "add", "198.18.0.2/16", "dev", "eth0"])?;
    ns.ip(&["addr", "add", "2001:db8::2/64", "dev", "eth0", "nodad"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["link", "set", "peer0", "up"])?;
    let mut neigh: Vec<(String, [u8; 6])> = (0..backends)
        .map(|i| (backend_ip(i).to_string(), mac_for(backend_ip(i))))
        .collect();
    neigh.extend(extra.iter().map(|(a, m)| (a.to_string(), *m)));
    for (addr, mac) in neigh {
        ns.ip(&[
            "neigh",
            "replace",
            &addr,
            "lladdr",
            &mac_str(mac),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
    }
    // bpf_fib_lookup routes only what arrives on an interface with forwarding.
    ns.sysctl("net.ipv4.conf.all.forwarding", "1")?;
    ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    Ok(ns)
}
