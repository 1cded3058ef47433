//! Lab topologies: a client, an xlb node and N backends, each in its own
//! namespace, joined by veth pairs on a bridge in a "switch" namespace.
//!
//! Addressing (all inside 198.18.0.0/15, RFC 2544):
//! - lab segment 198.18.0.0/16: xlb node 198.18.0.2, backend i at
//!   198.18.1.(i+1), client source addresses 198.18.2.1, 198.18.2.2, ...
//! - VIPs 198.19.0.0/24, routed by the client via the xlb node.

use std::{
    ffi::CString,
    io,
    net::Ipv4Addr,
    os::fd::OwnedFd,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{netns, xdp_pass, Netns};

pub const XLB_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const VIP_NET: &str = "198.19.0.0/24";
const LAB_PREFIX: &str = "xlbt";

/// The n-th VIP address of the lab (198.19.0.n).
pub const fn vip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 0, n)
}

/// Address of backend `i` (0-based).
pub fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, u8::try_from(i + 1).expect("at most 254 backends"))
}

/// Client source address `i` (0-based).
pub fn client_ip(i: usize) -> Ipv4Addr {
    let i = u16::try_from(i).expect("client address index");
    let n = 2 * 256 + 1 + i;
    Ipv4Addr::new(198, 18, (n >> 8) as u8, n as u8)
}

#[derive(Debug, Clone)]
pub struct LabSpec {
    pub backends: usize,
    /// Source addresses on the client (for affinity tests).
    pub client_addrs: usize,
}

impl Default for LabSpec {
    fn default() -> Self {
        Self {
            backends: 3,
            client_addrs: 1,
        }
    }
}

/// One namespace with one interface, `eth0`, on the lab segment.
#[derive(Debug)]
pub struct Host {
    pub ns: Netns,
    pub role: String,
    /// The first address; `addrs` holds all of them.
    pub ip: Ipv4Addr,
    pub addrs: Vec<Ipv4Addr>,
    pub mac: [u8; 6],
}

impl Host {
    pub const IFACE: &'static str = "eth0";
}

/// A running lab; dropping it removes every namespace (and so every veth).
#[derive(Debug)]
pub struct Lab {
    pub id: String,
    pub client: Host,
    pub xlb: Host,
    pub backends: Vec<Host>,
    /// XDP_PASS links on the switch-side peers (kept alive with the lab).
    _pass_links: Vec<OwnedFd>,
    switch: Netns,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Deletes namespaces left by lab runs whose process no longer exists.
fn remove_stale() {
    let Ok(list) = netns::ip(&["netns", "list"]) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(LAB_PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = netns::ip(&["netns", "del", name]);
        }
    }
}

pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x00, o[0], o[1], o[2], o[3]]
}

pub fn mac_str(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// A bridge in a "switch" namespace and the hosts plugged into it.
pub struct Segment {
    pub id: String,
    pub switch: Netns,
    /// Switch-side port of each host, in the order they were added.
    pub ports: Vec<String>,
}

impl Segment {
    /// A new segment with a unique id (`xlbt<pid>n<k>`); stale labs of
    /// processes gone are removed first.
    pub fn new() -> io::Result<Segment> {
        remove_stale();
        let id = format!(
            "{LAB_PREFIX}{}n{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let switch = Netns::create(&format!("{id}-sw"))?;
        switch.ip(&["link", "add", "br0", "type", "bridge"])?;
        switch.ip(&["link", "set", "br0", "up"])?;
        Ok(Segment {
            id,
            switch,
            ports: Vec::new(),
        })
    }

    /// A host namespace `ID-ROLE` with `eth0` on the segment holding `addrs`
    /// (/16 each).
    pub fn host(&mut self, role: &str, addrs: Vec<Ipv4Addr>) -> io::Result<Host> {
        let ns = Netns::create(&format!("{}-{role}", self.id))?;
        let port = format!("p{}", self.ports.len());
        let mac = mac_for(addrs[0]);
        self.switch.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            Host::IFACE,
            "address",
            &mac_str(mac),
            "netns",
            ns.name(),
        ])?;
        self.switch.ip(&["link", "set", &port, "master", "br0", "up"])?;
        for a in &addrs {
            ns.ip(&["addr", "add", &format!("{a}/16"), "dev", Host::IFACE])?;
        }
        ns.ip(&["link", "set", Host::IFACE, "up"])?;
        // Checksums must be complete on the wire: XDP rewrites them
        // incrementally and cannot finish a partial (offloaded) one.
        ns.run("ethtool", &["-K", Host::IFACE, "tx", "off"])
            .map_err(|e| io::Error::other(format!("{e} (is ethtool installed? `cargo xtask setup`)")))?;
        self.ports.push(port);
        Ok(Host {
            ns,
            role: role.to_string(),
            ip: addrs[0],
            addrs,
            mac,
        })
    }

    /// XDP_PASS programs on every switch-side port, so that XDP_TX on a
    /// host's veth reaches the bridge (a veth peer needs a program).
    pub fn pass_links(&self) -> io::Result<Vec<OwnedFd>> {
        self.switch.enter(|| {
            self.ports
                .iter()
                .map(|p| {
                    let c = CString::new(p.as_str()).expect("port name");
                    // SAFETY: valid NUL-terminated name.
                    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
                    xdp_pass::attach(idx)
                })
                .collect::<io::Result<Vec<_>>>()
        })?
    }
}

impl Lab {
    pub fn new(spec: &LabSpec) -> io::Result<Lab> {
        let mut seg = Segment::new()?;
        let client = seg.host("client", (0..spec.client_addrs.max(1)).map(client_ip).collect())?;
        let xlb = seg.host("xlb", vec![XLB_IP])?;
        let backends = (0..spec.backends)
            .map(|i| seg.host(&format!("be{i}"), vec![backend_ip(i)]))
            .collect::<io::Result<Vec<_>>>()?;
        client.ns.ip(&["route", "add", VIP_NET, "via", &XLB_IP.to_string()])?;
        let pass_links = seg.pass_links()?;
        Ok(Lab {
            id: seg.id,
            client,
            xlb,
            backends,
            _pass_links: pass_links,
            switch: seg.switch,
        })
    }

    /// The switch namespace (bridge `br0`, ports `p0`.. in host order:
    /// client, xlb, backends).
    pub fn switch(&self) -> &Netns {
        &self.switch
    }
}
