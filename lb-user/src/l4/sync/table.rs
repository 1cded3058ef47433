//! The flow tables as the sync sees them: its own handles on the pinned
//! maps, to install the flows peers send and to read what to send them,
//! and the XDP program's clock (jiffies) read from user space.

use std::time::Duration;

use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::{maps, Flow, FlowKey4, FlowKey6, NatFlow, FAMILY_V4, FAMILY_V6, NAT_EMPTY, NAT_PORTS};

use super::SyncError;
use crate::l4::pins::PinDir;

/// `bpf_jiffies64` seen from user space: the monotonic clock scaled to HZ,
/// plus an offset read once from `/proc/timer_list` (else the kernel's
/// start value, `INITIAL_JIFFIES`, which is within a tick or so of it).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    hz: u64,
    offset: i128,
}

fn monotonic_ns() -> i128 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills a local struct.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut t) };
    i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
}

impl Clock {
    pub fn new(hz: u64) -> Clock {
        let scaled = |ns: i128| ns * i128::from(hz) / 1_000_000_000;
        let read = std::fs::read_to_string("/proc/timer_list").ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("jiffies: "))
                .and_then(|j| j.trim().parse::<i128>().ok())
        });
        let offset = match read {
            Some(j) => j - scaled(monotonic_ns()),
            None => (1i128 << 32) - 300 * i128::from(hz),
        };
        Clock { hz, offset }
    }

    pub fn now(&self) -> u64 {
        (monotonic_ns() * i128::from(self.hz) / 1_000_000_000 + self.offset) as u64
    }

    pub fn to_ms(&self, jiffies: u64) -> u64 {
        jiffies.saturating_mul(1000) / self.hz
    }

    pub fn from_ms(&self, ms: u64) -> u64 {
        ms.saturating_mul(self.hz) / 1000
    }

    /// How long ago (ms) jiffies value `seen` was.
    pub fn age_ms(&self, seen: u64) -> u32 {
        let ago = self.now().saturating_sub(seen);
        u32::try_from(self.to_ms(ago)).unwrap_or(u32::MAX)
    }

    /// The jiffies value `age_ms` ago.
    pub fn seen_at(&self, age_ms: u32) -> u64 {
        self.now().wrapping_sub(self.from_ms(u64::from(age_ms)))
    }

    /// Whether a full-NAT flow still holds its port (as the XDP program
    /// judges it). This clock may lag the kernel's by a tick or two: a flow
    /// seen "in the future" was seen just now.
    pub fn live(&self, f: &NatFlow, now: u64) -> bool {
        let age = now.wrapping_sub(f.seen) as i64;
        f.state != NAT_EMPTY && age < (f.idle_secs() * self.hz) as i64
    }
}

/// A dsr flow as read from either flow table.
#[derive(Debug, Clone, Copy)]
pub struct DsrFlow {
    pub family: u8,
    pub client: [u8; 16],
    pub vip: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub flow: Flow,
}

/// `BPF_NOEXIST`: add, never replace.
const BPF_NOEXIST: u64 = 1;

fn dsr_insert(r: Result<(), aya::maps::MapError>, name: &'static str) -> Result<Install, SyncError> {
    match r {
        Ok(()) => Ok(Install::Written),
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
            Ok(Install::Conflict)
        }
        Err(e) => Err(Tables::map_err(name, &e)),
    }
}

/// What installing a flow did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Install {
    Written,
    /// The slot holds another live flow: this node's own wins.
    Conflict,
}

pub struct Tables {
    nat: Array<MapData, NatFlow>,
    flows4: HashMap<MapData, FlowKey4, Flow>,
    flows6: HashMap<MapData, FlowKey6, Flow>,
    pub clock: Clock,
}

fn open<T>(pins: &PinDir, name: &'static str) -> Result<T, SyncError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let err = |e: &dyn std::fmt::Display| SyncError::Map {
        name,
        reason: e.to_string(),
    };
    let data = MapData::from_pin(pins.map(name)).map_err(|e| err(&e))?;
    let map = Map::from_map_data(data).map_err(|e| err(&e))?;
    T::try_from(map).map_err(|e| err(&e))
}

impl Tables {
    pub fn open(pins: &PinDir, hz: u64) -> Result<Tables, SyncError> {
        Ok(Tables {
            nat: open(pins, maps::NAT_FLOWS)?,
            flows4: open(pins, maps::FLOWS)?,
            flows6: open(pins, maps::FLOWS6)?,
            clock: Clock::new(hz),
        })
    }

    fn map_err(name: &'static str, e: &dyn std::fmt::Display) -> SyncError {
        SyncError::Map {
            name,
            reason: e.to_string(),
        }
    }

    /// Writes a peer's full-NAT flow into `NAT_FLOWS` slot `slot`, unless
    /// the slot holds another flow that is live here. For a flow this node
    /// forwards itself, what it learnt (the way back to the client) stays,
    /// and so does its own state unless the peer saw a later packet: an
    /// older message must not turn a closing flow back into an open one.
    ///
    /// The read and the write are two syscalls: a packet that claims the
    /// slot for a new flow in between loses it to the peer's flow. Slots are
    /// picked by the same hash on every node, so that needs two live flows
    /// of one port on two nodes, which only a split brain makes.
    pub fn install_nat(&mut self, slot: u32, mut flow: NatFlow) -> Result<Install, SyncError> {
        let name = maps::NAT_FLOWS;
        let old = self.nat.get(&slot, 0).map_err(|e| Self::map_err(name, &e))?;
        let now = self.clock.now();
        let same = old.same_flow(&flow);
        if self.clock.live(&old, now) && !same {
            return Ok(Install::Conflict);
        }
        if same && old.ifindex != 0 {
            flow.ifindex = old.ifindex;
            flow.client_mac = old.client_mac;
            flow.local_mac = old.local_mac;
            // The later of the two clocks wins, with its state.
            if (old.seen.wrapping_sub(flow.seen) as i64) >= 0 {
                flow.seen = old.seen;
                flow.state = old.state;
            }
        }
        self.nat.set(slot, flow, 0).map_err(|e| Self::map_err(name, &e))?;
        Ok(Install::Written)
    }

    /// Adds a peer's dsr flow unless this node has the connection already
    /// (its own choice of backend stands).
    pub fn install_dsr4(&mut self, key: FlowKey4, flow: Flow) -> Result<Install, SyncError> {
        dsr_insert(self.flows4.insert(key, flow, BPF_NOEXIST), maps::FLOWS)
    }

    pub fn install_dsr6(&mut self, key: FlowKey6, flow: Flow) -> Result<Install, SyncError> {
        dsr_insert(self.flows6.insert(key, flow, BPF_NOEXIST), maps::FLOWS6)
    }

    /// The live full-NAT flows of the given regions, with their slots; with
    /// `since` (jiffies), only those this node forwarded a packet of since
    /// then (flows it only holds for a peer are the peer's to refresh).
    pub fn nat_flows(&self, regions: &[u32], since: Option<u64>) -> Vec<(u32, NatFlow)> {
        let now = self.clock.now();
        let mut out = Vec::new();
        for r in regions {
            for slot in r * NAT_PORTS..(r + 1) * NAT_PORTS {
                if let Ok(f) = self.nat.get(&slot, 0) {
                    let recent = since.is_none_or(|t| f.ifindex != 0 && (f.seen.wrapping_sub(t) as i64) >= 0);
                    if self.clock.live(&f, now) && recent {
                        out.push((slot, f));
                    }
                }
            }
        }
        out
    }

    /// Every dsr flow (the tables are LRU: what is there is recent enough).
    pub fn dsr_flows(&self) -> Vec<DsrFlow> {
        let v4 = self.flows4.iter().filter_map(Result::ok).map(|(k, flow)| {
            let (mut client, mut vip) = ([0u8; 16], [0u8; 16]);
            client[..4].copy_from_slice(&k.src);
            vip[..4].copy_from_slice(&k.dst);
            DsrFlow {
                family: FAMILY_V4,
                client,
                vip,
                sport_be: k.sport_be,
                dport_be: k.dport_be,
                proto: k.proto,
                flow,
            }
        });
        let v6 = self.flows6.iter().filter_map(Result::ok).map(|(k, flow)| DsrFlow {
            family: FAMILY_V6,
            client: k.src,
            vip: k.dst,
            sport_be: k.sport_be,
            dport_be: k.dport_be,
            proto: k.proto,
            flow,
        });
        v4.chain(v6).collect()
    }
}

/// How often a node re-sends the full-NAT flows that saw packets since the
/// last time, so a peer's copies do not go idle (the shortest idle limit of
/// an established flow is UDP's 300 s).
pub const REFRESH: Duration = Duration::from_secs(20);
