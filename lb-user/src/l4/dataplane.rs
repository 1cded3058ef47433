//! Loads the embedded XDP program, attaches it to the interface and keeps its
//! maps in step with the config.

use std::{
    ffi::{CStr, CString},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use std::{
    path::Path,
    sync::{Arc, RwLock},
};

use aya::{
    programs::{links::FdLink, links::PinnedLink, xdp::XdpLink, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{maps, ServiceStats};

use super::{
    bpf::{flatten, load_with, read_outcomes, read_stats, xdp_program, DataPlaneError},
    events, flow_log,
    map_manager::{self, service_key, MapManager},
    pins::PinDir,
    sync::{directory::Directory, FlowSync, SyncError},
};
use crate::{
    config::{Config, Service, SyncCfg, XdpModeCfg},
    model::BackendStates,
};

/// Maps that outlive a run (pinned); the rest are per-run scratch.
const PINNED: [&str; 11] = [
    maps::SERVICES,
    maps::SERVICE_STATS,
    maps::OUTCOMES,
    maps::RINGS,
    maps::BACKENDS,
    maps::BACKEND_STATS,
    maps::FLOWS,
    maps::FLOWS6,
    maps::HOPS,
    maps::SERVICE_HEAD,
    maps::NAT_FLOWS,
];

/// What a run leaves for the next one, in the state map.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Saved {
    /// Map layout: a new run adopts only maps of the same layout.
    layout: String,
    mode: String,
    maps: map_manager::Saved,
    vips: Vec<IpAddr>,
}

/// The sizes and capacities of the pinned maps, as a comparable string.
fn layout() -> String {
    use core::mem::size_of;
    use lb_common::*;
    format!(
        "v5 svc{}x{}:{} ring{}x{}/{} be{}:{} flow{}:{}:{}:{}:{} nat{}x{}:{} hop{} out{}",
        SVC_SLOTS,
        size_of::<ServiceSlot>(),
        size_of::<ServiceHead>(),
        MAX_RINGS,
        RING_SIZE,
        RING_PACK,
        MAX_BACKENDS,
        size_of::<Backend>(),
        MAX_FLOWS,
        size_of::<FlowKey4>(),
        MAX_FLOWS6,
        size_of::<FlowKey6>(),
        size_of::<Flow>(),
        MAX_SNATS,
        NAT_PORTS,
        size_of::<NatFlow>(),
        size_of::<HopCache>(),
        outcome::COUNT
    )
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

/// The interface's MAC address as the XDP program compares it (the six
/// bytes in wire order at the start of a u64); 0 if it cannot be read.
fn interface_mac(iface: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/address")).unwrap_or_default();
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    match bytes[..] {
        [a, b, c, d, e, f] => u64::from_ne_bytes([a, b, c, d, e, f, 0, 0]),
        _ => {
            tracing::warn!(
                iface,
                "cannot read the interface's MAC address: frames for other hosts are forwarded too"
            );
            0
        }
    }
}

/// The attached program and its maps.
pub struct DataPlane {
    ebpf: Ebpf,
    pub iface: String,
    pub mode: AttachedMode,
    maps: MapManager,
    pins: PinDir,
    /// The link pinned by this run (None when a running one was adopted:
    /// then the program owns it).
    _link: Option<PinnedLink>,
    /// On drop, leave everything pinned and attached (else remove the pins,
    /// which detaches the program once the last fd closes).
    keep: bool,
    /// VIP aliases a previous run added (for the daemon to adopt).
    pub adopted_vips: Vec<IpAddr>,
    /// The reader of the rare-event log, once it was switched on.
    events: Option<events::Reader>,
    debug: bool,
    /// The maps' indexes by address, for the flow sync.
    directory: Arc<RwLock<Directory>>,
    /// What flow log records name, and their reader.
    flow_names: Arc<RwLock<flow_log::Names>>,
    _flow_log: Option<flow_log::Reader>,
}

impl DataPlane {
    /// Attaches to `iface`: takes over the data plane a previous run left
    /// pinned under `pin_base/iface` (same map layout: its program is
    /// replaced atomically, maps and flows kept), or starts a fresh one.
    pub fn start(iface: &str, mode: XdpModeCfg, pin_base: &Path) -> Result<Self, DataPlaneError> {
        if !interface_exists(iface) {
            return Err(DataPlaneError::UnknownInterface(iface.to_string()));
        }
        let prepare = || {
            PinDir::prepare(pin_base, iface).map_err(|e| {
                if e.is_permission() {
                    DataPlaneError::Permission
                } else {
                    e.into()
                }
            })
        };
        let pins = prepare()?;
        let saved: Option<Saved> = pins
            .load_state()
            .and_then(|j| serde_json::from_str::<Saved>(&j).ok())
            .filter(|s| s.layout == layout() && pins.link().exists());
        if saved.is_none() {
            // Nothing to adopt (or another layout): start clean.
            pins.clear();
        }
        let pins = prepare()?;
        let mut loader = EbpfLoader::new();
        let mac = interface_mac(iface);
        loader.override_global(lb_common::LOCAL_MAC_GLOBAL, &mac, true);
        for name in PINNED {
            loader.map_pin_path(name, pins.map(name));
        }
        let mut ebpf = match load_with(&mut loader) {
            Ok(e) => e,
            Err(e) => {
                if saved.is_none() {
                    pins.clear();
                }
                return Err(e);
            }
        };
        let flow_names = Arc::default();
        let flow_log = flow_log::Reader::start(&mut ebpf, Arc::clone(&flow_names))?;
        let prog = xdp_program(&mut ebpf)?;
        let dp = |ebpf, mode, link, keep, maps, vips| DataPlane {
            ebpf,
            iface: iface.to_string(),
            mode,
            maps,
            pins: pins.clone(),
            _link: link,
            keep,
            adopted_vips: vips,
            events: None,
            debug: false,
            directory: Arc::default(),
            flow_names,
            _flow_log: flow_log,
        };
        if let Some(saved) = saved {
            let adopt = |e: &dyn std::fmt::Display| DataPlaneError::Adopt {
                iface: iface.to_string(),
                reason: e.to_string(),
            };
            let link = PinnedLink::from_pin(pins.link()).map_err(|e| adopt(&e))?;
            let link = XdpLink::try_from(FdLink::from(link)).map_err(|e| adopt(&e))?;
            prog.attach_to_link(link).map_err(|e| adopt(&flatten(&e)))?;
            let mode = if saved.mode == "generic" {
                AttachedMode::Generic
            } else {
                AttachedMode::Native
            };
            tracing::info!(
                iface,
                mode = mode.as_str(),
                "took over the running data plane: program replaced atomically, maps and flows kept"
            );
            return Ok(dp(ebpf, mode, None, true, MapManager::restore(saved.maps), saved.vips));
        }
        let attach = |prog: &mut Xdp, m: XdpMode, name: &'static str| {
            prog.attach(iface, m).map_err(|e| DataPlaneError::Attach {
                iface: iface.to_string(),
                mode: name,
                reason: flatten(&e),
            })
        };
        let attached = match mode {
            XdpModeCfg::Native => attach(prog, XdpMode::Driver, "native").map(|l| (l, AttachedMode::Native)),
            XdpModeCfg::Generic => attach(prog, XdpMode::Skb, "generic").map(|l| (l, AttachedMode::Generic)),
            XdpModeCfg::Auto => match attach(prog, XdpMode::Driver, "native") {
                Ok(l) => Ok((l, AttachedMode::Native)),
                Err(e) => {
                    tracing::warn!("native XDP not available ({e}); falling back to generic (skb) mode");
                    attach(prog, XdpMode::Skb, "generic").map(|l| (l, AttachedMode::Generic))
                }
            },
        };
        let (link_id, mode) = match attached {
            Ok(a) => a,
            Err(e) => {
                pins.clear();
                return Err(e);
            }
        };
        // Pin the link so that it outlives this process when asked to.
        let pinned = prog
            .take_link(link_id)
            .map_err(|e| flatten(&e))
            .and_then(|l| FdLink::try_from(l).map_err(|e| flatten(&e)))
            .and_then(|l| l.pin(pins.link()).map_err(|e| flatten(&e)));
        let link = match pinned {
            Ok(l) => l,
            Err(reason) => {
                pins.clear();
                return Err(DataPlaneError::Attach {
                    iface: iface.to_string(),
                    mode: mode.as_str(),
                    reason: format!("pinning the XDP link: {reason}"),
                });
            }
        };
        tracing::info!(iface, mode = mode.as_str(), "XDP program attached");
        Ok(dp(ebpf, mode, Some(link), false, MapManager::default(), Vec::new()))
    }

    /// Saves what the next run needs to take over (with the VIPs xlb added).
    pub fn save_state(&self, vips: &[IpAddr]) -> Result<(), DataPlaneError> {
        let saved = Saved {
            layout: layout(),
            mode: self.mode.as_str().to_string(),
            maps: self.maps.save(),
            vips: vips.to_vec(),
        };
        let json = serde_json::to_string(&saved).map_err(|e| DataPlaneError::Config(e.to_string()))?;
        Ok(self.pins.save_state(&json)?)
    }

    /// What dropping this data plane does: keep it running for the next
    /// `xlb run` (true) or detach and unpin (false).
    pub fn set_keep(&mut self, keep: bool) {
        self.keep = keep;
    }

    /// Makes the maps match `cfg` and the backends' states.
    pub fn apply(&mut self, cfg: &Config, states: &BackendStates) -> Result<(), DataPlaneError> {
        if cfg.services.iter().any(|s| s.mode != crate::config::Mode::Http) {
            enable_forwarding(&self.iface);
        }
        let addrs = interface_addrs(&self.iface);
        let default_snat = |vip: IpAddr| addrs.iter().copied().find(|a| a.is_ipv4() == vip.is_ipv4());
        let applied = self.maps.apply(&mut self.ebpf, cfg, states, &default_snat);
        // Also after a failure: the maps may be partly changed.
        *self.directory.write().expect("directory lock") = self.maps.directory(cfg);
        *self.flow_names.write().expect("names lock") = flow_log::Names::of(&self.maps, cfg);
        applied
    }

    /// Starts the flow-state sync with other nodes (`[sync]`).
    pub fn start_sync(&mut self, cfg: &SyncCfg) -> Result<FlowSync, SyncError> {
        FlowSync::start(
            cfg,
            &mut self.ebpf,
            &self.pins,
            Arc::clone(&self.directory),
            super::bpf::kernel_hz(),
        )
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

    /// `xlb debug datapath on|off`: the program's rare events into the log.
    pub fn set_debug(&mut self, on: bool) -> Result<(), DataPlaneError> {
        events::switch(&mut self.ebpf, &mut self.events, on)?;
        self.debug = on;
        Ok(())
    }

    /// Whether the rare-event log is on.
    pub fn debug(&self) -> bool {
        self.debug
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        if self.keep {
            tracing::info!(pins = %self.pins.dir.display(), "XDP program left attached; the next xlb run takes over");
        } else {
            // The link detaches when the program's last fd closes, right after.
            self.pins.clear();
        }
    }
}
