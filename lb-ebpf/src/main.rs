//! xlb's XDP program. Built for `bpfel-unknown-none` by `cargo xtask build`;
//! on the host it compiles (so the workspace lints) but is never run.
//!
//! Per packet: parse, then one flow-table lookup by the 5-tuple: a known
//! client → VIP flow goes to the backend it is pinned to, a known full-NAT
//! reply is turned back into VIP → client. Otherwise a packet for a service
//! VIP:port starts a flow on the backend the service's Maglev ring names for
//! its hash; everything else goes to the kernel untouched.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Map keys and values are passed by reference on purpose: by value they
// would be copied onto the 512-byte BPF stack, which is why they live in the
// per-CPU scratch slot.
#![allow(clippy::needless_borrows_for_generic_args)]

mod flows;
mod parse;
mod rewrite;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::bpf_jiffies64,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    hash, outcome, Backend, BackendStats, Flow, HopCache, ServiceKey, ServiceStats, ServiceValue, BE_F_DOWN,
    FLOW_FORWARD, FLOW_REPLY, HOP_TTL_JIFFIES, MAX_BACKENDS, MAX_RINGS, MAX_SERVICES, RING_EMPTY, RING_SIZE,
    SNAT_PORT_MAX, SNAT_PORT_MIN, SNAT_PORT_TRIES, SVC_F_DSR, SVC_F_HASH_5TUPLE, SVC_F_NAT,
};

use crate::{
    flows::FlowKeys,
    parse::{copy_addr, parse, Packet, Parsed},
    rewrite::{IcmpRewrite, NextHop},
};

#[map(name = "SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "SERVICE_STATS")]
static SERVICE_STATS: PerCpuArray<ServiceStats> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map(name = "OUTCOMES")]
static OUTCOMES: PerCpuArray<u64> = PerCpuArray::with_max_entries(outcome::COUNT, 0);

#[map(name = "RINGS")]
static RINGS: Array<u32> = Array::with_max_entries(MAX_RINGS * RING_SIZE, 0);

#[map(name = "BACKENDS")]
static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "BACKEND_STATS")]
static BACKEND_STATS: PerCpuArray<BackendStats> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "HOPS")]
static HOPS: PerCpuArray<HopCache> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Per-CPU working memory: the parsed packet, lookup keys and the flow
/// entries being built are too large for the 512-byte BPF stack next to
/// everything else.
struct Scratch {
    pkt: Packet,
    skey: ServiceKey,
    fkey: FlowKeys,
    rkey: FlowKeys,
    forward: Flow,
    reply: Flow,
    icmp: IcmpRewrite,
}

#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn xlb(ctx: XdpContext) -> u32 {
    let why = try_xlb(&ctx);
    count_outcome(why);
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
        Ok(Parsed::Fragment) => return outcome::PASS_FRAGMENT,
        Err(()) => return outcome::PASS_PARSE_ERROR,
    }
    if s.pkt.icmp_error {
        return icmp_error(ctx, s);
    }
    flow_key(&s.pkt, &mut s.fkey);
    if let Some(f) = s.fkey.get() {
        if f.kind == FLOW_REPLY {
            return reply(ctx, &s.pkt, f);
        }
        if let Some(be) = live_backend(f.backend) {
            return established(ctx, s, f, be);
        }
        // Its backend is out: the flow starts again on another one.
    }
    s.pkt.service_key(&mut s.skey);
    // SAFETY: as for flows (see FlowKeys::get).
    match unsafe { SERVICES.get(&s.skey) } {
        Some(svc) => new_flow(ctx, s, svc),
        None => outcome::PASS_NOT_SERVICE,
    }
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

#[inline(always)]
fn live_backend(id: u32) -> Option<&'static Backend> {
    BACKENDS.get(id).filter(|b| b.flags & BE_F_DOWN == 0)
}

/// The next hop towards backend `id`, from the per-CPU cache or, when that
/// is stale, from the kernel's FIB (`src` is the source the packet will
/// carry). `Err` is the drop outcome.
#[inline(always)]
fn hop_to(ctx: &XdpContext, pkt: &Packet, id: u32, src: &[u8; 16], be: &Backend) -> Result<&'static HopCache, u32> {
    // SAFETY: per-CPU slot.
    let Some(hop) = HOPS.get_ptr_mut(id).map(|p| unsafe { &mut *p }) else {
        return Err(outcome::DROP_NO_ROUTE);
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_jiffies64() };
    if hop.expires_jiffies <= now {
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
        hop.expires_jiffies = now + HOP_TTL_JIFFIES;
    }
    Ok(hop)
}

/// Sends a client packet on to backend `id`: full-NAT rewrite (source
/// `snat`:`snat_port_be`, destination the backend) or, for dsr, only the
/// MACs; counts it for the service and the backend.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn to_backend(
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
    rewrite::send(ctx, hop.ifindex, &hop.smac, &hop.dmac)
}

/// Client → VIP on a known flow. Not inlined, like the other large steps, so
/// that each gets its own share of the 512-byte BPF stack.
#[inline(never)]
fn established(ctx: &XdpContext, s: &Scratch, f: &Flow, be: &Backend) -> u32 {
    let nat = f.svc_flags & SVC_F_NAT != 0;
    let src = if nat { &f.addr_a } else { &s.pkt.src };
    let hop = match hop_to(ctx, &s.pkt, f.backend, src, be) {
        Ok(h) => h,
        Err(why) => return why,
    };
    let nat = if nat { Some((&f.addr_a, f.port_a_be)) } else { None };
    to_backend(ctx, &s.pkt, hop, f.backend, be, f.service, nat, false)
}

/// Client → VIP without a (usable) flow: pick a backend from the ring.
#[inline(never)]
fn new_flow(ctx: &XdpContext, s: &mut Scratch, svc: &ServiceValue) -> u32 {
    if svc.flags & (SVC_F_NAT | SVC_F_DSR) == 0 {
        add_stats(SERVICE_STATS.get_ptr_mut(svc.id), s.pkt.bytes, false);
        return outcome::PASS_SERVICE;
    }
    let pkt = &s.pkt;
    let h = if svc.flags & SVC_F_HASH_5TUPLE != 0 {
        hash::five_tuple_hash(&pkt.src, &pkt.dst, pkt.sport_be, pkt.dport_be, pkt.proto)
    } else {
        hash::source_hash(&pkt.src)
    };
    let id = match RINGS.get(svc.ring * RING_SIZE + h % RING_SIZE) {
        Some(id) if *id != RING_EMPTY => *id,
        _ => return outcome::DROP_NO_BACKEND,
    };
    let Some(be) = live_backend(id) else {
        return outcome::DROP_NO_BACKEND;
    };
    let nat = svc.flags & SVC_F_NAT != 0;
    // Route first: a packet that cannot leave allocates nothing.
    let src = if nat { &svc.snat } else { &pkt.src };
    let hop = match hop_to(ctx, pkt, id, src, be) {
        Ok(h) => h,
        Err(why) => return why,
    };
    let mut port_be = 0;
    if nat {
        port_be = claim_port(ctx, s, svc, be, id) as u16;
        if port_be == 0 {
            return outcome::DROP_NO_PORT;
        }
    }
    let f = &mut s.forward;
    f.kind = FLOW_FORWARD;
    f.port_a_be = port_be;
    f.backend = id;
    f.service = svc.id;
    f.svc_flags = svc.flags;
    copy_addr(&mut f.addr_a, &svc.snat);
    let _ = s.fkey.insert(&s.forward, 0);
    let nat = if nat { Some((&svc.snat, port_be)) } else { None };
    to_backend(ctx, &s.pkt, hop, id, be, svc.id, nat, true)
}

/// Finds a source port so that (snat, port) → backend is unused and reserves
/// it by inserting the reply entry (atomic: BPF_NOEXIST). Returns the port
/// in network order, or 0 when none was free (a plain integer: an `Option`
/// would be returned through a sixth, hidden argument BPF cannot pass).
#[inline(never)]
fn claim_port(ctx: &XdpContext, s: &mut Scratch, svc: &ServiceValue, be: &Backend, id: u32) -> u32 {
    let pkt = &s.pkt;
    let r = &mut s.reply;
    r.kind = FLOW_REPLY;
    r.port_a_be = pkt.dport_be;
    r.client_port_be = pkt.sport_be;
    r.backend = id;
    r.service = svc.id;
    r.ifindex = ctx.ingress_ifindex() as u32;
    copy_addr(&mut r.addr_a, &pkt.dst);
    copy_addr(&mut r.client, &pkt.src);
    if rewrite::macs(ctx, &mut r.client_mac, &mut r.local_mac).is_err() {
        return 0;
    }
    let range = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
    let h = hash::five_tuple_hash(&pkt.src, &pkt.dst, pkt.sport_be, pkt.dport_be, pkt.proto);
    let mut i = 0;
    while i < SNAT_PORT_TRIES {
        // Stride by a prime so retries spread over the range.
        let port = SNAT_PORT_MIN + (h.wrapping_add(i.wrapping_mul(7919)) % range) as u16;
        s.rkey
            .set(pkt.family, &be.addr, &svc.snat, be.port_be, port.to_be(), pkt.proto);
        if s.rkey.insert(&s.reply, u64::from(BPF_NOEXIST)).is_ok() {
            return u32::from(port.to_be());
        }
        i += 1;
    }
    0
}

/// An ICMP error about a packet of a known flow goes where that flow's
/// endpoint is: errors from the client side about VIP → client packets to
/// the backend (full-NAT: rewritten to look like an answer to what the
/// backend sent), errors from a backend about full-NAT packets to the
/// client. Anything else is passed to the kernel.
#[inline(never)]
fn icmp_error(ctx: &XdpContext, s: &mut Scratch) -> u32 {
    flow_key(&s.pkt, &mut s.fkey);
    let Some(f) = s.fkey.get() else {
        return outcome::PASS_NOT_SERVICE;
    };
    let rw = &mut s.icmp;
    if f.kind == FLOW_REPLY {
        copy_addr(&mut rw.outer_src, &f.addr_a);
        copy_addr(&mut rw.outer_dst, &f.client);
        rw.inner_sport_be = f.client_port_be;
        rw.inner_dport_be = f.port_a_be;
        if rewrite::icmp_nat(ctx, &s.pkt, &s.icmp).is_err() {
            return outcome::PASS_PARSE_ERROR;
        }
        return rewrite::send(ctx, f.ifindex, &f.local_mac, &f.client_mac);
    }
    let Some(be) = live_backend(f.backend) else {
        return outcome::PASS_NOT_SERVICE;
    };
    let nat = f.svc_flags & SVC_F_NAT != 0;
    if nat {
        copy_addr(&mut rw.outer_src, &f.addr_a);
        copy_addr(&mut rw.outer_dst, &be.addr);
        rw.inner_sport_be = be.port_be;
        rw.inner_dport_be = f.port_a_be;
        if rewrite::icmp_nat(ctx, &s.pkt, &s.icmp).is_err() {
            return outcome::PASS_PARSE_ERROR;
        }
    }
    let src = if nat { &f.addr_a } else { &s.pkt.src };
    match hop_to(ctx, &s.pkt, f.backend, src, be) {
        Ok(hop) => rewrite::send(ctx, hop.ifindex, &hop.smac, &hop.dmac),
        Err(why) => why,
    }
}

/// Backend → snat:port of a full-NAT flow: back to VIP → client.
#[inline(never)]
fn reply(ctx: &XdpContext, pkt: &Packet, f: &Flow) -> u32 {
    if rewrite::nat(
        ctx,
        pkt,
        &f.addr_a,
        &f.client,
        rewrite::ports(f.port_a_be, f.client_port_be),
    )
    .is_err()
    {
        return outcome::PASS_PARSE_ERROR;
    }
    rewrite::send(ctx, f.ifindex, &f.local_mac, &f.client_mac)
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

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
