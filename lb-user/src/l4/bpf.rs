//! The aya edge: the embedded XDP object, loading it, typed access to its
//! maps and counters, and the errors of all of it.

use std::{error::Error as StdError, io};

use aya::{
    maps::{Map, MapError, PerCpuArray},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use lb_common::{maps, outcome, ServiceStats};

use super::pins::PinError;

/// The XDP object built by `cargo xtask build`, embedded at compile time.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("this xlb binary was built without its XDP program: build it with `cargo xtask build`")]
    NoObject,
    #[error("interface {0:?} does not exist (see `ip link`): name another with --iface or global.interface")]
    UnknownInterface(String),
    #[error("no permission to load BPF programs: run xlb as root, or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (examples/xlb.service)")]
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
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error("starting the data path's event log")]
    Events(#[source] aya_log::Error),
    #[error("watching the data path's event log")]
    EventsFd(#[source] std::io::Error),
    #[error("taking over the running data plane on {iface}: {reason}")]
    Adopt { iface: String, reason: String },
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

/// Loads the embedded object into the kernel and verifies the program, with
/// fresh maps. Also used by the packet tests.
pub fn load_object() -> Result<Ebpf, DataPlaneError> {
    load_with(&mut EbpfLoader::new())
}

/// The kernel's HZ (jiffies per second): the coarse clocks tick once a
/// jiffy, so their resolution is 1/HZ. Any user may ask (no root-only
/// file such as `/proc/timer_list`). Rounded to the nearest value Linux
/// offers; 250 if the clock cannot be asked.
pub fn kernel_hz() -> u64 {
    const CHOICES: [u64; 4] = [100, 250, 300, 1000];
    let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_getres fills a local struct.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } != 0 || res.tv_sec != 0 || res.tv_nsec <= 0
    {
        return 250;
    }
    let hz = 1e9 / res.tv_nsec as f64;
    *CHOICES
        .iter()
        .min_by(|a, b| (**a as f64 - hz).abs().total_cmp(&(**b as f64 - hz).abs()))
        .expect("not empty")
}

pub fn load_with(loader: &mut EbpfLoader<'_>) -> Result<Ebpf, DataPlaneError> {
    if EBPF_OBJECT.is_empty() {
        return Err(DataPlaneError::NoObject);
    }
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    loader.override_global(lb_common::HZ_GLOBAL, HZ.get_or_init(kernel_hz), true);
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| load_error(&e))?;
    let prog: &mut Xdp = xdp_program(&mut ebpf)?;
    prog.load().map_err(|e| load_error(&e))?;
    Ok(ebpf)
}

/// A load that failed for want of privilege says so: EPERM from the
/// kernel, or the verifier refusing what only CAP_PERFMON may do (packet
/// pointer arithmetic "prohibited for !root").
fn load_error(e: &(dyn StdError + 'static)) -> DataPlaneError {
    let text = flatten(e);
    if is_permission(e) || text.contains("for !root") {
        DataPlaneError::Permission
    } else {
        DataPlaneError::Load(text)
    }
}

pub fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataPlaneError> {
    ebpf.program_mut(lb_common::XDP_PROGRAM)
        .ok_or_else(|| DataPlaneError::Load(format!("program {} not in object", lb_common::XDP_PROGRAM)))?
        .try_into()
        .map_err(|e| DataPlaneError::Load(flatten(&e)))
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

pub fn map_err(name: &'static str, e: &(dyn std::error::Error + 'static)) -> DataPlaneError {
    DataPlaneError::Map {
        name,
        reason: flatten(e),
    }
}

/// Map `name` of the loaded object, as the aya map type `M`.
pub fn map_of<'a, M>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<M, DataPlaneError>
where
    M: TryFrom<&'a mut Map, Error = MapError>,
{
    let map = ebpf.map_mut(name).ok_or_else(|| DataPlaneError::Map {
        name,
        reason: "not in object".into(),
    })?;
    M::try_from(map).map_err(|e| map_err(name, &e))
}

/// Sums a per-CPU counter entry.
pub fn read_stats(ebpf: &Ebpf, map: &'static str, index: u32) -> ServiceStats {
    let Some(arr) = ebpf
        .map(map)
        .and_then(|m| PerCpuArray::<_, ServiceStats>::try_from(m).ok())
    else {
        return ServiceStats::default();
    };
    arr.get(&index, 0)
        .map(|v| {
            v.iter().fold(ServiceStats::default(), |a, s| ServiceStats {
                packets: a.packets + s.packets,
                bytes: a.bytes + s.bytes,
                new_flows: a.new_flows + s.new_flows,
            })
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    /// The HZ worked out from the coarse clock is the one the kernel was
    /// built with (or, without a readable config, the rate jiffies count
    /// at in /proc/timer_list, which the test may read as root).
    #[test]
    fn kernel_hz_matches_the_kernel() {
        let out = std::process::Command::new("sh")
            .args(["-c", "zcat /proc/config.gz 2>/dev/null || cat /boot/config-$(uname -r)"])
            .output()
            .expect("sh");
        let config = String::from_utf8_lossy(&out.stdout);
        let configured = config
            .lines()
            .find_map(|l| l.strip_prefix("CONFIG_HZ="))
            .and_then(|v| v.parse::<u64>().ok());
        let hz = super::kernel_hz();
        match configured {
            Some(want) => assert_eq!(hz, want),
            None => {
                let jiffies = || {
                    let t = std::fs::read_to_string("/proc/timer_list").unwrap();
                    let j = t.lines().find_map(|l| l.strip_prefix("jiffies: ")).unwrap();
                    (std::time::Instant::now(), j.trim().parse::<f64>().unwrap())
                };
                let (t0, j0) = jiffies();
                std::thread::sleep(std::time::Duration::from_millis(500));
                let (t1, j1) = jiffies();
                let rate = (j1 - j0) / (t1 - t0).as_secs_f64();
                assert!((rate - hz as f64).abs() < hz as f64 * 0.1, "{rate} vs {hz}");
            }
        }
    }
}
