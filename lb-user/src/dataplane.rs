//! Loads the embedded XDP program, attaches it to the interface and keeps its
//! maps in step with the config.

use std::{
    error::Error as StdError,
    ffi::{CStr, CString},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    maps::PerCpuArray,
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{maps, outcome, ServiceStats};

use crate::{
    config::{Config, Service, XdpModeCfg},
    map_manager::{read_stats, service_key, BackendStates, MapManager},
};

/// The XDP object built by `cargo xtask build`, embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("this xlb binary was built without its XDP program: build it with `cargo xtask build`")]
    NoObject,
    #[error("interface {0:?} does not exist (see `ip link`): name another with --iface or global.interface")]
    UnknownInterface(String),
    #[error("no permission to load BPF programs: run xlb as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)")]
    Permission,
    #[error("loading the XDP program failed: {0}")]
    Load(String),
    #[error("attaching XDP to {iface} in {mode} mode failed: {reason}")]
    Attach {
        iface: String,
        mode: &'static str,
        reason: String,
    },
    #[error("BPF map {name}: {reason}")]
    Map { name: &'static str, reason: String },
    #[error("{0}")]
    Config(String),
}

/// The mode the program ended up attached in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Generic,
}

impl AttachedMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
        }
    }
}

/// True when an error chain bottoms out in EPERM from the kernel (EACCES
/// from a program load is the verifier saying no, not a permission problem).
fn is_permission(err: &(dyn StdError + 'static)) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.raw_os_error() == Some(libc::EPERM) {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

/// An error and its sources on one line.
pub fn flatten(err: &(dyn StdError + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        s.push_str(": ");
        s.push_str(&e.to_string());
        cur = e.source();
    }
    s
}

/// Loads the embedded object into the kernel (maps created, program not yet
/// verified). Also used by the packet tests.
pub fn load_object() -> Result<Ebpf, DataPlaneError> {
    if EBPF_OBJECT.is_empty() {
        return Err(DataPlaneError::NoObject);
    }
    let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT).map_err(|e| {
        if is_permission(&e) {
            DataPlaneError::Permission
        } else {
            DataPlaneError::Load(flatten(&e))
        }
    })?;
    let prog: &mut Xdp = xdp_program(&mut ebpf)?;
    prog.load().map_err(|e| {
        if is_permission(&e) {
            DataPlaneError::Permission
        } else {
            DataPlaneError::Load(flatten(&e))
        }
    })?;
    Ok(ebpf)
}

pub fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataPlaneError> {
    ebpf.program_mut(lb_common::XDP_PROGRAM)
        .ok_or_else(|| DataPlaneError::Load(format!("program {} not in object", lb_common::XDP_PROGRAM)))?
        .try_into()
        .map_err(|e| DataPlaneError::Load(flatten(&e)))
}

pub fn interface_exists(iface: &str) -> bool {
    CString::new(iface).is_ok_and(|c| unsafe { libc::if_nametoindex(c.as_ptr()) } != 0)
}

/// The addresses configured on `iface` (getifaddrs).
pub fn interface_addrs(iface: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; entries are read only
    // while it lives, and sockaddr casts follow sa_family.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || CStr::from_ptr(ifa.ifa_name).to_str() != Ok(iface) {
                continue;
            }
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr))));
                }
                libc::AF_INET6 => {
                    let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let a = Ipv6Addr::from(sa.sin6_addr.s6_addr);
                    // Link-local addresses cannot be a NAT source towards routed backends.
                    if a.segments()[0] & 0xffc0 != 0xfe80 {
                        out.push(IpAddr::V6(a));
                    }
                }
                _ => {}
            }
        }
        libc::freeifaddrs(head);
    }
    out
}

/// Enables IP forwarding on `iface` (IPv4 and IPv6): the kernel's route
/// lookup from XDP (bpf_fib_lookup) refuses to route packets that arrived on
/// an interface without forwarding.
fn enable_forwarding(iface: &str) {
    for path in [
        format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"),
        format!("/proc/sys/net/ipv6/conf/{iface}/forwarding"),
    ] {
        match std::fs::read_to_string(&path) {
            Ok(v) if v.trim() == "1" => {}
            Ok(_) => match std::fs::write(&path, "1") {
                Ok(()) => tracing::info!(%path, "enabled forwarding (needed to route from XDP)"),
                Err(e) => tracing::warn!(%path, "cannot enable forwarding: {e}"),
            },
            Err(_) => {}
        }
    }
}

/// The attached program and its maps.
pub struct DataPlane {
    ebpf: Ebpf,
    pub iface: String,
    pub mode: AttachedMode,
    maps: MapManager,
}

impl DataPlane {
    /// Loads the program and attaches it to `iface`.
    pub fn start(iface: &str, mode: XdpModeCfg) -> Result<Self, DataPlaneError> {
        if !interface_exists(iface) {
            return Err(DataPlaneError::UnknownInterface(iface.to_string()));
        }
        let mut ebpf = load_object()?;
        let prog = xdp_program(&mut ebpf)?;
        let attach = |prog: &mut Xdp, m: XdpMode, name: &'static str| {
            prog.attach(iface, m).map(|_| ()).map_err(|e| DataPlaneError::Attach {
                iface: iface.to_string(),
                mode: name,
                reason: flatten(&e),
            })
        };
        let mode = match mode {
            XdpModeCfg::Native => attach(prog, XdpMode::Driver, "native").map(|_| AttachedMode::Native)?,
            XdpModeCfg::Generic => attach(prog, XdpMode::Skb, "generic").map(|_| AttachedMode::Generic)?,
            XdpModeCfg::Auto => match attach(prog, XdpMode::Driver, "native") {
                Ok(()) => AttachedMode::Native,
                Err(e) => {
                    tracing::warn!("native XDP not available ({e}); falling back to generic (skb) mode");
                    attach(prog, XdpMode::Skb, "generic").map(|_| AttachedMode::Generic)?
                }
            },
        };
        tracing::info!(iface, mode = mode.as_str(), "XDP program attached");
        Ok(Self {
            ebpf,
            iface: iface.to_string(),
            mode,
            maps: MapManager::default(),
        })
    }

    /// Makes the maps match `cfg` and the backends' states.
    pub fn apply(&mut self, cfg: &Config, states: &BackendStates) -> Result<(), DataPlaneError> {
        if cfg.services.iter().any(|s| s.mode != crate::config::Mode::Http) {
            enable_forwarding(&self.iface);
        }
        let addrs = interface_addrs(&self.iface);
        let default_snat = |vip: IpAddr| addrs.iter().copied().find(|a| a.is_ipv4() == vip.is_ipv4());
        self.maps.apply(&mut self.ebpf, cfg, states, &default_snat)
    }

    /// Counters of one service, summed over CPUs; zero if not installed.
    pub fn service_stats(&self, s: &Service) -> ServiceStats {
        self.maps
            .service_slot(&service_key(s))
            .map(|id| read_stats(&self.ebpf, maps::SERVICE_STATS, id))
            .unwrap_or_default()
    }

    /// Counters of one backend (packets forwarded to it).
    pub fn backend_stats(&self, service: &str, backend: &str) -> ServiceStats {
        self.maps
            .backend_id(service, backend)
            .map(|id| read_stats(&self.ebpf, maps::BACKEND_STATS, id))
            .unwrap_or_default()
    }

    /// Packets per outcome, summed over CPUs, in `outcome::NAMES` order.
    pub fn outcomes(&self) -> Vec<(&'static str, u64)> {
        read_outcomes(&self.ebpf)
    }
}

/// Packets per outcome of a loaded object, summed over CPUs.
pub fn read_outcomes(ebpf: &Ebpf) -> Vec<(&'static str, u64)> {
    let arr = ebpf
        .map(maps::OUTCOMES)
        .and_then(|m| PerCpuArray::<_, u64>::try_from(m).ok());
    outcome::NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let n = arr
                .as_ref()
                .and_then(|a| a.get(&(i as u32), 0).ok())
                .map_or(0, |v| v.iter().sum());
            (*name, n)
        })
        .collect()
}
