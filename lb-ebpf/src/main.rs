//! xlb's XDP program. Built for `bpfel-unknown-none` by `cargo xtask build`;
//! on the host it compiles (so the workspace lints) but is never run.
//!
//! Per packet: parse; a packet for a service VIP:port is forwarded (nat or
//! dsr) to the backend its flow is pinned to, or, for a new flow, to the one
//! the service's Maglev ring names for the packet's hash; a reply from a
//! backend to a full-NAT source port is turned back into VIP → client;
//! everything else goes to the kernel untouched.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Map keys and values are passed by reference on purpose: by value they
// would be copied onto the 512-byte BPF stack, which is why they live in the
// per-CPU scratch slot.
#![allow(clippy::needless_borrows_for_generic_args)]

mod parse;
mod rewrite;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    hash, outcome, Backend, BackendStats, FlowKey, FlowValue, HopCache, ReverseValue, ServiceKey, ServiceStats,
    ServiceValue, BE_F_DOWN, HOP_TTL_NS, MAX_BACKENDS, MAX_FLOWS, MAX_RINGS, MAX_SERVICES, RING_EMPTY, RING_SIZE,
    SNAT_PORT_MAX, SNAT_PORT_MIN, SNAT_PORT_TRIES, SVC_F_DSR, SVC_F_HASH_5TUPLE, SVC_F_NAT,
};

use crate::{
    parse::{parse, Packet, Parsed},
    rewrite::NextHop,
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

#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map(name = "HOPS")]
static HOPS: PerCpuArray<HopCache> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "REVERSE")]
static REVERSE: LruHashMap<FlowKey, ReverseValue> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Per-CPU working memory: the parsed packet, lookup keys and the
/// reverse-NAT entry being built are too large for the 512-byte BPF stack
/// next to everything else.
struct Scratch {
    pkt: Packet,
    skey: ServiceKey,
    fkey: FlowKey,
    rkey: FlowKey,
    rv: ReverseValue,
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
    s.pkt.service_key(&mut s.skey);
    // Map values are used in place: the kernel keeps them alive for the
    // rest of this program run (RCU), and updates replace them whole.
    // SAFETY: see above.
    if let Some(svc) = unsafe { SERVICES.get(&s.skey) } {
        return forward(ctx, s, svc);
    }
    s.pkt.flow_key(&mut s.fkey);
    // SAFETY: see above.
    if let Some(rv) = unsafe { REVERSE.get(&s.fkey) } {
        return reply(ctx, &s.pkt, rv);
    }
    outcome::PASS_NOT_SERVICE
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

/// Client → VIP. Not inlined, like the other large steps, so that each gets
/// its own share of the 512-byte BPF stack.
#[inline(never)]
fn forward(ctx: &XdpContext, s: &mut Scratch, svc: &ServiceValue) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    if svc.flags & (SVC_F_NAT | SVC_F_DSR) == 0 {
        add_stats(SERVICE_STATS.get_ptr_mut(svc.id), bytes, false);
        return outcome::PASS_SERVICE;
    }
    s.pkt.flow_key(&mut s.fkey);
    let pkt = &s.pkt;
    // An existing flow keeps its backend unless that backend is out.
    // SAFETY: as in try_xlb.
    let known = unsafe { FLOWS.get(&s.fkey) };
    let mut snat_port_be = 0;
    let (id, be, new_flow) = match known.and_then(|f| live_backend(f.backend).map(|b| (f, b))) {
        Some((f, b)) => {
            snat_port_be = f.snat_port_be;
            (f.backend, b, false)
        }
        None => {
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
            (id, be, true)
        }
    };
    let nat = svc.flags & SVC_F_NAT != 0;
    // Route first: a packet that cannot leave allocates nothing. The next
    // hop of a backend is cached per CPU for HOP_TTL_NS.
    let Some(hop) = HOPS.get_ptr_mut(id).map(|p| unsafe { &mut *p }) else {
        return outcome::DROP_NO_ROUTE;
    };
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    if hop.expires_ns <= now {
        let mut fresh = NextHop {
            ifindex: 0,
            smac: [0; 6],
            dmac: [0; 6],
        };
        let src = if nat { &svc.snat } else { &pkt.src };
        let why = rewrite::next_hop(ctx, pkt, src, &be.addr, &mut fresh);
        if why != 0 {
            return why;
        }
        hop.ifindex = fresh.ifindex;
        hop.smac = fresh.smac;
        hop.dmac = fresh.dmac;
        hop.expires_ns = now + HOP_TTL_NS;
    }
    if new_flow {
        if nat {
            match claim_port(ctx, s, svc, be) {
                Some(p) => snat_port_be = p,
                None => return outcome::DROP_NO_PORT,
            }
        }
        let _ = FLOWS.insert(
            &s.fkey,
            &FlowValue {
                backend: id,
                snat_port_be,
                _pad: 0,
            },
            0,
        );
    }
    if nat
        && rewrite::nat(
            ctx,
            &s.pkt,
            &svc.snat,
            &be.addr,
            rewrite::ports(snat_port_be, be.port_be),
        )
        .is_err()
    {
        return outcome::PASS_PARSE_ERROR;
    }
    add_stats(SERVICE_STATS.get_ptr_mut(svc.id), bytes, new_flow);
    add_stats(BACKEND_STATS.get_ptr_mut(id), bytes, new_flow);
    rewrite::send(ctx, hop.ifindex, &hop.smac, &hop.dmac)
}

/// Finds a source port so that (snat, port) → backend is unused and reserves
/// it by inserting the reverse entry (atomic: BPF_NOEXIST). Returns the port
/// in network order.
#[inline(never)]
fn claim_port(ctx: &XdpContext, s: &mut Scratch, svc: &ServiceValue, be: &Backend) -> Option<u16> {
    let pkt = &s.pkt;
    s.rv.client = pkt.src;
    s.rv.vip = pkt.dst;
    s.rv.client_port_be = pkt.sport_be;
    s.rv.vip_port_be = pkt.dport_be;
    s.rv.ifindex = ctx.ingress_ifindex() as u32;
    s.rv.service = svc.id;
    rewrite::macs(ctx, &mut s.rv.client_mac, &mut s.rv.local_mac).ok()?;
    s.rkey.src = be.addr;
    s.rkey.dst = svc.snat;
    s.rkey.sport_be = be.port_be;
    s.rkey.proto = pkt.proto;
    s.rkey.family = pkt.family;
    s.rkey._pad = [0; 2];
    let range = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
    let h = hash::five_tuple_hash(&pkt.src, &pkt.dst, pkt.sport_be, pkt.dport_be, pkt.proto);
    let mut i = 0;
    while i < SNAT_PORT_TRIES {
        // Stride by a prime so retries spread over the range.
        let port = SNAT_PORT_MIN + (h.wrapping_add(i.wrapping_mul(7919)) % range) as u16;
        s.rkey.dport_be = port.to_be();
        if REVERSE.insert(&s.rkey, &s.rv, u64::from(BPF_NOEXIST)).is_ok() {
            return Some(port.to_be());
        }
        i += 1;
    }
    None
}

/// Backend → snat:port of a full-NAT flow: back to VIP → client.
#[inline(never)]
fn reply(ctx: &XdpContext, pkt: &Packet, rv: &ReverseValue) -> u32 {
    if rewrite::nat(
        ctx,
        pkt,
        &rv.vip,
        &rv.client,
        rewrite::ports(rv.vip_port_be, rv.client_port_be),
    )
    .is_err()
    {
        return outcome::PASS_PARSE_ERROR;
    }
    rewrite::send(ctx, rv.ifindex, &rv.local_mac, &rv.client_mac)
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
