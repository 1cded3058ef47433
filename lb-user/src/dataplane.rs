//! Loads the embedded XDP program, attaches it to the interface and keeps its
//! maps in step with the config.

use std::{
    collections::HashMap as StdHashMap, error::Error as StdError, ffi::CString, io, net::IpAddr,
};

use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{maps, outcome, ServiceKey, ServiceStats, ServiceValue};

use crate::config::{Config, Service, XdpModeCfg};

/// The XDP object built by `cargo xtask build`, embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error(
        "this xlb binary was built without its XDP program: build it with `cargo xtask build`"
    )]
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

/// True when an error chain bottoms out in EPERM/EACCES from the kernel.
fn is_permission(err: &(dyn StdError + 'static)) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

fn flatten(err: &(dyn StdError + 'static)) -> String {
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
        .ok_or_else(|| {
            DataPlaneError::Load(format!("program {} not in object", lb_common::XDP_PROGRAM))
        })?
        .try_into()
        .map_err(|e| DataPlaneError::Load(flatten(&e)))
}

pub fn interface_exists(iface: &str) -> bool {
    CString::new(iface).is_ok_and(|c| unsafe { libc::if_nametoindex(c.as_ptr()) } != 0)
}

pub fn service_key(s: &Service) -> ServiceKey {
    let proto = s.protocol.number();
    match s.vip {
        IpAddr::V4(a) => ServiceKey::v4(a.octets(), s.port, proto),
        IpAddr::V6(a) => ServiceKey::v6(a.octets(), s.port, proto),
    }
}

/// The attached program and its maps.
pub struct DataPlane {
    ebpf: Ebpf,
    pub iface: String,
    pub mode: AttachedMode,
    /// Service key → counter slot currently written to the service map.
    installed: StdHashMap<ServiceKey, u32>,
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
            prog.attach(iface, m)
                .map(|_| ())
                .map_err(|e| DataPlaneError::Attach {
                    iface: iface.to_string(),
                    mode: name,
                    reason: flatten(&e),
                })
        };
        let mode = match mode {
            XdpModeCfg::Native => {
                attach(prog, XdpMode::Driver, "native").map(|_| AttachedMode::Native)?
            }
            XdpModeCfg::Generic => {
                attach(prog, XdpMode::Skb, "generic").map(|_| AttachedMode::Generic)?
            }
            XdpModeCfg::Auto => match attach(prog, XdpMode::Driver, "native") {
                Ok(()) => AttachedMode::Native,
                Err(e) => {
                    tracing::warn!(
                        "native XDP not available ({e}); falling back to generic (skb) mode"
                    );
                    attach(prog, XdpMode::Skb, "generic").map(|_| AttachedMode::Generic)?
                }
            },
        };
        tracing::info!(iface, mode = mode.as_str(), "XDP program attached");
        Ok(Self {
            ebpf,
            iface: iface.to_string(),
            mode,
            installed: StdHashMap::new(),
        })
    }

    fn map_mut<'a>(
        ebpf: &'a mut Ebpf,
        name: &'static str,
    ) -> Result<&'a mut aya::maps::Map, DataPlaneError> {
        ebpf.map_mut(name).ok_or(DataPlaneError::Map {
            name,
            reason: "not in object".into(),
        })
    }

    /// Writes the services of `cfg` that the XDP program handles; removes the
    /// ones no longer configured. A service keeps its counter slot across
    /// applies so counters survive reloads.
    pub fn apply(&mut self, cfg: &Config) -> Result<(), DataPlaneError> {
        let wanted: Vec<(ServiceKey, &Service)> =
            cfg.services.iter().map(|s| (service_key(s), s)).collect();
        let mut services: HashMap<&mut MapData, ServiceKey, ServiceValue> =
            HashMap::try_from(Self::map_mut(&mut self.ebpf, maps::SERVICES)?)
                .map_err(|e| map_err(maps::SERVICES, &e))?;
        let stale: Vec<ServiceKey> = self
            .installed
            .keys()
            .filter(|k| !wanted.iter().any(|(w, _)| w == *k))
            .copied()
            .collect();
        for k in stale {
            services
                .remove(&k)
                .map_err(|e| map_err(maps::SERVICES, &e))?;
            self.installed.remove(&k);
        }
        for (key, _svc) in &wanted {
            let id = match self.installed.get(key) {
                Some(id) => *id,
                None => (0..lb_common::MAX_SERVICES)
                    .find(|i| !self.installed.values().any(|v| v == i))
                    .ok_or(DataPlaneError::Map {
                        name: maps::SERVICES,
                        reason: "full".into(),
                    })?,
            };
            services
                .insert(key, ServiceValue { id, flags: 0 }, 0)
                .map_err(|e| map_err(maps::SERVICES, &e))?;
            self.installed.insert(*key, id);
        }
        Ok(())
    }

    /// Counters of one service, summed over CPUs; zero if not installed.
    pub fn service_stats(&self, s: &Service) -> ServiceStats {
        let Some(id) = self.installed.get(&service_key(s)) else {
            return ServiceStats::default();
        };
        let Some(map) = self.ebpf.map(maps::SERVICE_STATS) else {
            return ServiceStats::default();
        };
        let Ok(arr) = PerCpuArray::<_, ServiceStats>::try_from(map) else {
            return ServiceStats::default();
        };
        arr.get(id, 0)
            .map(|v| {
                v.iter().fold(ServiceStats::default(), |a, s| ServiceStats {
                    packets: a.packets + s.packets,
                    bytes: a.bytes + s.bytes,
                })
            })
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

fn map_err(name: &'static str, e: &(dyn StdError + 'static)) -> DataPlaneError {
    DataPlaneError::Map {
        name,
        reason: flatten(e),
    }
}
