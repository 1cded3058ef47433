//! xlb's XDP program. Built for `bpfel-unknown-none` by `cargo xtask build`;
//! on the host it compiles (so the workspace lints) but is never run.
//!
//! Per packet: parse, then look up the service by (VIP, port, protocol).
//! nat services keep their flows in `nat` (one slot per snat port), dsr
//! services in the LRU flow tables of `flows`; a new flow goes to the
//! backend the service's Maglev ring names for its hash. A packet to a snat
//! address is a full-NAT reply, turned back into VIP → client. Everything
//! else goes to the kernel untouched.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// BPF_CMPXCHG (nat slot claims): the BPF target has no atomic CAS type.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
// Map keys and values are passed by reference on purpose: by value they
// would be copied onto the 512-byte BPF stack, which is why they live in the
// per-CPU scratch slot.
#![allow(clippy::needless_borrows_for_generic_args)]

mod debug;
mod flowlog;
mod flows;
mod nat;
mod parse;
mod rewrite;
mod runtime;
mod services;
mod sync;

use aya_ebpf::{
    helpers::generated::bpf_jiffies64,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    hash, outcome, Backend, BackendStats, Flow, HopCache, RingElem, ServiceStats, ServiceValue, BE_F_DOWN,
    MAX_BACKENDS, MAX_RINGS, MAX_SERVICES, RING_ELEMS, RING_EMPTY16, RING_PACK, RING_SIZE, SVC_F_DSR,
    SVC_F_HASH_5TUPLE, SVC_F_NAT, SVC_F_SNAT,
};

use crate::{
    flows::FlowKeys,
    parse::{parse, Packet, Parsed},
    rewrite::{IcmpRewrite, NextHop},
};

#[map(name = "SERVICE_STATS")]
static SERVICE_STATS: PerCpuArray<ServiceStats> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map(name = "OUTCOMES")]
static OUTCOMES: PerCpuArray<u64> = PerCpuArray::with_max_entries(outcome::COUNT, 0);

#[map(name = "RINGS")]
static RINGS: Array<RingElem> = Array::with_max_entries(MAX_RINGS * RING_ELEMS, 0);

#[map(name = "BACKENDS")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "BACKEND_STATS")]
static BACKEND_STATS: PerCpuArray<BackendStats> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "HOPS")]
static HOPS: PerCpuArray<HopCache> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Per-CPU working memory: the parsed packet, lookup keys and rewrites are
/// too large for the 512-byte BPF stack next to everything else.
pub struct Scratch {
    pkt: Packet,
    fkey: FlowKeys,
    icmp: IcmpRewrite,
}

#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn xlb(ctx: XdpContext) -> u32 {
    let why = try_xlb(&ctx);
    count_outcome(why);
    if debug::is_rare(why) {
        debug::event(&ctx, why);
    }
    rewrite::action_of(why)
}

/// Decides what to do with one frame; returns the outcome it is counted
/// under, which also names the XDP action.
#[inline(always)]
fn try_xlb(ctx: &XdpContext) -> u32 {
    // SAFETY: per-CPU slot; one program run at a time uses it on a CPU.
    let Some(s) = SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p }) else {
        return outcome::PASS_NOT_SERVICE;
    };
    match parse(ctx, &mut s.pkt) {
        Ok(Parsed::Flow) => {}
        Ok(Parsed::Other) => return outcome::PASS_NOT_SERVICE,
        Ok(Parsed::OtherHost) => return outcome::PASS_OTHER_HOST,
        Ok(Parsed::Fragment) => return outcome::PASS_FRAGMENT,
        Err(()) => return outcome::PASS_PARSE_ERROR,
    }
    let p = &s.pkt;
    if let Some(svc) = services::find(&p.dst, p.dport_be, p.proto, p.family) {
        if svc.flags & SVC_F_NAT != 0 {
            let why = nat::forward(ctx, s, svc);
            flowlog::dropped(&s.pkt, svc.id, why);
            return why;
        }
        if svc.flags & SVC_F_DSR != 0 {
            let why = dsr(ctx, s, svc);
            flowlog::dropped(&s.pkt, svc.id, why);
            return why;
        }
        add_stats(SERVICE_STATS.get_ptr_mut(svc.id), s.pkt.bytes, false);
        return outcome::PASS_SERVICE;
    }
    // A snat address: the key of the packet's destination address alone.
    match services::find(&p.dst, 0, 0, p.family) {
        Some(snat) if snat.flags & SVC_F_SNAT != 0 => nat::reply(ctx, s, u32::from(snat.snat_regions[0])),
        _ => outcome::PASS_NOT_SERVICE,
    }
}

/// Client → VIP of a dsr service: to the backend its flow is pinned to, or
/// for a new flow (or one whose backend is out) the one the ring names. A
/// packet of a connection this node never saw (another node's, after a
/// failover or an ECMP change) is a miss like a new flow: the ring names the
/// same backend on every node with the same config, so it carries on.
#[inline(never)]
fn dsr(ctx: &XdpContext, s: &mut Scratch, svc: &ServiceValue) -> u32 {
    flow_key(&s.pkt, &mut s.fkey);
    let mut new = false;
    let id = match s.fkey.get() {
        Some(f) if live_backend(f.backend).is_some() => f.backend,
        // Errors about unknown flows are not ours to route.
        _ if s.pkt.icmp_error => return outcome::PASS_NOT_SERVICE,
        _ => {
            let id = match pick_backend(&s.pkt, svc) {
                Ok(id) => id,
                Err(why) => return why,
            };
            new = true;
            id
        }
    };
    let Some(be) = live_backend(id) else {
        return outcome::DROP_NO_BACKEND;
    };
    let hop = match hop_to(ctx, &s.pkt, id, &s.pkt.src, be, now()) {
        Ok(h) => h,
        Err(why) => return why,
    };
    if new {
        let flow = Flow {
            backend: id,
            service: svc.id,
        };
        if s.fkey.insert(&flow, 0).is_ok() {
            sync::dsr(&s.pkt, id, svc.id);
        }
    }
    if s.pkt.icmp_error {
        return rewrite::send(ctx, hop.ifindex, &hop.smac, &hop.dmac);
    }
    to_backend(ctx, &s.pkt, hop, id, be, svc.id, None, new)
}

/// The backend the service's ring names for this packet, or the drop outcome.
#[inline(always)]
pub fn pick_backend(pkt: &Packet, svc: &ServiceValue) -> Result<u32, u32> {
    let h = if svc.flags & SVC_F_HASH_5TUPLE != 0 {
        hash::five_tuple_hash(&pkt.src, &pkt.dst, pkt.sport_be, pkt.dport_be, pkt.proto)
    } else {
        hash::source_hash(&pkt.src)
    };
    let slot = h % RING_SIZE;
    let id = match RINGS.get(svc.ring * RING_ELEMS + slot / RING_PACK) {
        Some(e) => e[(slot % RING_PACK) as usize],
        None => RING_EMPTY16,
    };
    if id == RING_EMPTY16 {
        return Err(outcome::DROP_NO_BACKEND);
    }
    Ok(u32::from(id))
}

#[inline(always)]
fn add_stats(stats: Option<*mut ServiceStats>, bytes: u64, new_flow: bool) {
    if let Some(s) = stats {
        // SAFETY: per-CPU slot, no other writer while this program runs here.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            (*s).new_flows += u64::from(new_flow);
        }
    }
}

/// The kernel's jiffies per second (`lb_common::HZ_GLOBAL`): user space
/// sets it at load time; read-only data, so the verifier knows its value.
#[unsafe(no_mangle)]
static HZ: u64 = 250;

/// `secs` seconds in jiffies.
#[inline(always)]
pub fn secs(secs: u64) -> u64 {
    // SAFETY: a plain global; volatile so the compiler does not fold in 250.
    secs * unsafe { core::ptr::read_volatile(&HZ) }
}

/// The clock, in jiffies.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: plain helper call (inlined by the verifier).
    unsafe { bpf_jiffies64() }
}

#[inline(always)]
pub fn live_backend(id: u32) -> Option<&'static Backend> {
    BACKENDS.get(id).filter(|b| b.flags & BE_F_DOWN == 0)
}

/// The next hop towards backend `id`, from the per-CPU cache or, when that
/// is stale, from the kernel's FIB (`src` is the source the packet will
/// carry). `Err` is the drop outcome.
#[inline(always)]
pub fn hop_to(
    ctx: &XdpContext,
    pkt: &Packet,
    id: u32,
    src: &[u8; 16],
    be: &Backend,
    now: u64,
) -> Result<&'static HopCache, u32> {
    // SAFETY: per-CPU slot.
    let Some(hop) = HOPS.get_ptr_mut(id).map(|p| unsafe { &mut *p }) else {
        return Err(outcome::DROP_NO_ROUTE);
    };
    if hop.expires <= now {
        let mut fresh = NextHop {
            ifindex: 0,
            smac: [0; 6],
            dmac: [0; 6],
        };
        let why = rewrite::next_hop(ctx, pkt, src, &be.addr, &mut fresh);
        if why != 0 {
            return Err(why);
        }
        hop.ifindex = fresh.ifindex;
        hop.smac = fresh.smac;
        hop.dmac = fresh.dmac;
        hop.expires = now + secs(1);
    }
    Ok(hop)
}

/// Sends a client packet on to backend `id`: full-NAT rewrite (source
/// `snat`:`snat_port_be`, destination the backend) or, for dsr, only the
/// MACs; counts it for the service and the backend.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn to_backend(
    ctx: &XdpContext,
    pkt: &Packet,
    hop: &HopCache,
    id: u32,
    be: &Backend,
    service: u32,
    nat: Option<(&[u8; 16], u16)>,
    new_flow: bool,
) -> u32 {
    let bytes = pkt.bytes;
    if let Some((snat, port_be)) = nat {
        if rewrite::nat(ctx, pkt, snat, &be.addr, rewrite::ports(port_be, be.port_be)).is_err() {
            return outcome::PASS_PARSE_ERROR;
        }
    }
    add_stats(SERVICE_STATS.get_ptr_mut(service), bytes, new_flow);
    add_stats(BACKEND_STATS.get_ptr_mut(id), bytes, new_flow);
    if new_flow {
        flowlog::forwarded(pkt, service, id);
    }
    rewrite::send(ctx, hop.ifindex, &hop.smac, &hop.dmac)
}

/// The flow key of a packet: its 5-tuple as on the wire.
#[inline(always)]
fn flow_key(pkt: &Packet, k: &mut FlowKeys) {
    k.set(pkt.family, &pkt.src, &pkt.dst, pkt.sport_be, pkt.dport_be, pkt.proto);
}

#[inline(always)]
fn count_outcome(why: u32) {
    if let Some(c) = OUTCOMES.get_ptr_mut(why) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
