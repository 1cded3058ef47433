//! Full-NAT flows. Each snat address owns `NAT_PORTS` slots of one array,
//! one per source port, so the port a flow uses towards its backend is the
//! slot it sits in. A service with a pool of snat addresses spreads its
//! flows over them by hash (`hash::pool_index`), so a pool of N holds N
//! times the flows:
//! - a client → VIP packet hashes its 5-tuple to a home port and finds its
//!   flow there or in the next `NAT_PROBES - 1` slots;
//! - a backend → snat:port reply finds its flow at slot `port` directly.
//!
//! A new flow claims a slot with a compare-and-swap on its clock and writes
//! it in place: no allocation, no second entry for the reply direction.
//! Slots free themselves by going idle (`NAT_IDLE_*`). A new flow takes the
//! first free slot of its window; a flow whose backend has not answered
//! yet, in the first `NAT_EVICT_WITHIN` slots, gives way to it when no slot
//! before is free (SYN flood, dead backend); with no such slot and none
//! free, the packet is dropped (`drop_no_port`).

use aya_ebpf::{macros::map, maps::Array, programs::XdpContext};
use lb_common::{
    hash, outcome, NatFlow, ServiceValue, MAX_POOL, MAX_SNATS, NAT_CLOSING, NAT_EMPTY, NAT_EVICT_WITHIN, NAT_NEW,
    NAT_OPEN, NAT_PORTS, NAT_PROBES, SNAT_PORT_MAX, SNAT_PORT_MIN,
};

use crate::{
    hop_to, live_backend, now,
    parse::{same_addr, Packet},
    pick_backend,
    rewrite::{self, NextHop},
    secs, sync, to_backend, Scratch, BACKENDS,
};

#[map(name = "NAT_FLOWS")]
static NAT_FLOWS: Array<NatFlow> = Array::with_max_entries(MAX_SNATS * NAT_PORTS, 0);

#[map(name = "SNAT_ADDRS")]
static SNAT_ADDRS: Array<[u8; 16]> = Array::with_max_entries(MAX_SNATS, 0);

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const NONE: u32 = u32::MAX;

/// Whether the flow in `f`, last seen at tick `seen`, still holds its port
/// at tick `now`.
#[inline(always)]
fn live(f: &NatFlow, seen: u64, now: u64) -> bool {
    f.state != NAT_EMPTY && now.wrapping_sub(seen) < secs(f.idle_secs())
}

/// Takes slot `f`, last seen at `seen`, for tick `now`; false when another
/// CPU took it first.
#[inline(always)]
fn claim(f: *mut NatFlow, seen: u64, now: u64) -> bool {
    // SAFETY: `seen` is an aligned u32 inside a map value.
    let clock = unsafe { core::ptr::addr_of_mut!((*f).seen) };
    // The BPF target has no atomic compare-and-swap type; this intrinsic is
    // BPF_CMPXCHG.
    #[cfg(target_arch = "bpf")]
    // SAFETY: as above.
    return unsafe {
        core::intrinsics::atomic_cxchg::<
            u64,
            { core::intrinsics::AtomicOrdering::Relaxed },
            { core::intrinsics::AtomicOrdering::Relaxed },
        >(clock, seen, now)
        .1
    };
    #[cfg(not(target_arch = "bpf"))]
    {
        use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
        // SAFETY: as above.
        unsafe { AtomicU64::from_ptr(clock) }
            .compare_exchange(seen, now, Relaxed, Relaxed)
            .is_ok()
    }
}

/// What a packet does to its flow's state (`reply`: it came from the backend).
#[inline(always)]
fn next_state(state: u8, tcp_flags: u8, reply: bool) -> u8 {
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        NAT_CLOSING
    } else if reply && state == NAT_NEW {
        NAT_OPEN
    } else {
        state
    }
}

/// Records a packet of the flow in `f` (`reply`: from the backend). Stores
/// only what changes: most packets leave the line clean. True when the
/// state changed (the other nodes are told).
#[inline(always)]
fn touch(f: &mut NatFlow, now: u64, tcp_flags: u8, reply: bool) -> bool {
    if f.seen != now {
        f.seen = now;
    }
    let state = next_state(f.state, tcp_flags, reply);
    if f.state != state {
        f.state = state;
        return true;
    }
    false
}

#[inline(always)]
fn same_flow(f: &NatFlow, pkt: &Packet) -> bool {
    f.state != NAT_EMPTY
        && f.client_port_be == pkt.sport_be
        && f.vip_port_be == pkt.dport_be
        && f.proto == pkt.proto
        && same_addr(&f.client, &pkt.src)
        && same_addr(&f.vip, &pkt.dst)
}

/// Where the probe for a packet's flow ended.
struct Probe {
    /// The flow's port (offset in the region), or `NONE`.
    found: u32,
    /// Where a new flow would go (the first free slot, else one near home
    /// whose backend has not answered yet), or `NONE`; and that slot's
    /// clock as read, to claim it with.
    take: u32,
    take_seen: u64,
}

/// Looks for the packet's flow from its home port `home` on.
#[inline(always)]
fn probe(pkt: &Packet, base: u32, home: u32, now: u64) -> Probe {
    // A SYN starts a connection: the first free slot will do.
    let syn = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let mut p = Probe {
        found: NONE,
        take: NONE,
        take_seen: 0,
    };
    let (mut stale, mut stale_seen) = (NONE, 0);
    let mut i = 0;
    while i < NAT_PROBES {
        let mut port = home + i;
        if port >= NAT_PORTS {
            port -= NAT_PORTS;
        }
        let Some(f) = NAT_FLOWS.get(base + port) else {
            break;
        };
        if same_flow(f, pkt) {
            p.found = port;
            break;
        }
        let seen = f.seen;
        if !live(f, seen, now) {
            if p.take == NONE {
                (p.take, p.take_seen) = (port, seen);
            }
            // Nothing was ever further on from an unused slot.
            if syn || f.state == NAT_EMPTY {
                break;
            }
        } else if stale == NONE && f.state == NAT_NEW && i < NAT_EVICT_WITHIN {
            (stale, stale_seen) = (port, seen);
        }
        // A SYN flood fills slots with flows no backend answered: a SYN
        // that finds one near home takes it rather than read on.
        if syn && stale != NONE && i + 1 == NAT_EVICT_WITHIN {
            break;
        }
        i += 1;
    }
    if p.take == NONE {
        (p.take, p.take_seen) = (stale, stale_seen);
    }
    p
}

/// The pool address a flow of hash `h` uses: its region and address.
#[inline(always)]
fn pool_pick(svc: &ServiceValue, h: u32) -> Option<(u32, &'static [u8; 16])> {
    if svc.snat_count == 0 {
        return None;
    }
    let j = hash::pool_index(h, svc.snat_count) as usize;
    let region = u32::from(*svc.snat_regions.get(j & (MAX_POOL - 1))?);
    Some((region, SNAT_ADDRS.get(region)?))
}

/// Client → VIP:port of a nat service.
#[inline(never)]
pub fn forward(ctx: &XdpContext, s: &mut Scratch, svc: &ServiceValue) -> u32 {
    let pkt = &s.pkt;
    let h = hash::flow_hash(&pkt.src, &pkt.dst, pkt.sport_be, pkt.dport_be, pkt.proto);
    let Some((region, snat)) = pool_pick(svc, h) else {
        return outcome::DROP_NO_PORT;
    };
    let base = region * NAT_PORTS;
    let now = now();
    let p = probe(pkt, base, hash::nat_home(h), now);
    if p.found != NONE {
        return known(ctx, s, svc, snat, base, p.found, now);
    }
    if pkt.icmp_error {
        return outcome::PASS_NOT_SERVICE;
    }
    let port = p.take;
    if port == NONE {
        return outcome::DROP_NO_PORT;
    }
    let Some(f) = NAT_FLOWS.get_ptr_mut(base + port) else {
        return outcome::DROP_NO_PORT;
    };
    let id = match pick_backend(pkt, svc) {
        Ok(id) => id,
        Err(why) => return why,
    };
    let Some(be) = live_backend(id) else {
        return outcome::DROP_NO_BACKEND;
    };
    // Route first: a packet that cannot leave takes no port.
    let hop = match hop_to(ctx, pkt, id, snat, be, now) {
        Ok(h) => h,
        Err(why) => return why,
    };
    if !claim(f, p.take_seen, now) {
        return outcome::DROP_NO_PORT;
    }
    // SAFETY: the slot is ours now.
    let f = unsafe { &mut *f };
    pkt.write_flow(f, id);
    f.ifindex = ctx.ingress_ifindex() as u32;
    if rewrite::macs(ctx, &mut f.client_mac, &mut f.local_mac).is_err() {
        return outcome::PASS_PARSE_ERROR;
    }
    f.state = next_state(NAT_NEW, pkt.tcp_flags, false);
    sync::nat(base + port, pkt.family, f);
    let port_be = (SNAT_PORT_MIN + port as u16).to_be();
    to_backend(ctx, pkt, hop, id, be, svc.id, Some((snat, port_be)), true)
}

/// Client → VIP on the flow at slot `port` of the region of `snat`.
#[inline(always)]
fn known(
    ctx: &XdpContext,
    s: &mut Scratch,
    svc: &ServiceValue,
    snat: &[u8; 16],
    base: u32,
    port: u32,
    now: u64,
) -> u32 {
    let Some(f) = NAT_FLOWS.get_ptr_mut(base + port) else {
        return outcome::PASS_NOT_SERVICE;
    };
    // SAFETY: in-bounds map value, written by packets of this flow only
    // (see `claim`).
    let f = unsafe { &mut *f };
    let pkt = &s.pkt;
    let port_be = (SNAT_PORT_MIN + port as u16).to_be();
    let mut id = u32::from(f.backend);
    let mut new = false;
    let seen = f.seen;
    if !live(f, seen, now) && !claim(f, seen, now) {
        return outcome::DROP_NO_PORT;
    }
    let restart = pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && f.state != NAT_NEW;
    let mut be = live_backend(id);
    if restart || be.is_none() {
        // A new connection on a reused client port, or the backend is out:
        // the ring decides again; the port stays.
        if pkt.icmp_error {
            return outcome::PASS_NOT_SERVICE;
        }
        id = match pick_backend(pkt, svc) {
            Ok(id) => id,
            Err(why) => return why,
        };
        be = live_backend(id);
        f.backend = id as u16;
        f.state = NAT_NEW;
        new = true;
    }
    let Some(be) = be else {
        return outcome::DROP_NO_BACKEND;
    };
    // A flow synced from another node: this node's interface and MACs.
    if f.ifindex == 0 {
        f.ifindex = ctx.ingress_ifindex() as u32;
        if rewrite::macs(ctx, &mut f.client_mac, &mut f.local_mac).is_err() {
            return outcome::PASS_PARSE_ERROR;
        }
    }
    if touch(f, now, pkt.tcp_flags, false) || new {
        sync::nat(base + port, pkt.family, f);
    }
    if pkt.icmp_error {
        s.icmp.set(snat, &be.addr, be.port_be, port_be);
        if rewrite::icmp_nat(ctx, &s.pkt, &s.icmp).is_err() {
            return outcome::PASS_PARSE_ERROR;
        }
    }
    let hop = match hop_to(ctx, &s.pkt, id, snat, be, now) {
        Ok(h) => h,
        Err(why) => return why,
    };
    if s.pkt.icmp_error {
        return rewrite::send(ctx, hop.ifindex, &hop.smac, &hop.dmac);
    }
    to_backend(ctx, &s.pkt, hop, id, be, svc.id, Some((snat, port_be)), new)
}

/// Backend → snat:port (snat region `region`): back to VIP → client.
#[inline(never)]
pub fn reply(ctx: &XdpContext, s: &mut Scratch, region: u32) -> u32 {
    let pkt = &s.pkt;
    let port = u16::from_be(pkt.dport_be);
    if !(SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&port) {
        return outcome::PASS_NOT_SERVICE;
    }
    let Some(f) = NAT_FLOWS.get_ptr_mut(region * NAT_PORTS + u32::from(port - SNAT_PORT_MIN)) else {
        return outcome::PASS_NOT_SERVICE;
    };
    // SAFETY: in-bounds map value (see `known`).
    let f = unsafe { &mut *f };
    let now = now();
    if f.proto != pkt.proto || !live(f, f.seen, now) {
        return outcome::PASS_NOT_SERVICE;
    }
    // Only the flow's backend may answer on its port.
    match BACKENDS.get(u32::from(f.backend)) {
        Some(be) if be.port_be == pkt.sport_be && same_addr(&be.addr, &pkt.src) => {}
        _ => return outcome::PASS_NOT_SERVICE,
    }
    // A flow synced from another node that the client has not spoken on
    // here yet: the way back to the client from the FIB.
    if f.ifindex == 0 {
        let mut hop = NextHop {
            ifindex: 0,
            smac: [0; 6],
            dmac: [0; 6],
        };
        let why = rewrite::next_hop(ctx, pkt, &f.vip, &f.client, &mut hop);
        if why != 0 {
            return why;
        }
        f.ifindex = hop.ifindex;
        f.local_mac = hop.smac;
        f.client_mac = hop.dmac;
    }
    if touch(f, now, pkt.tcp_flags, true) {
        sync::nat(region * NAT_PORTS + u32::from(port - SNAT_PORT_MIN), pkt.family, f);
    }
    if pkt.icmp_error {
        s.icmp.set(&f.vip, &f.client, f.client_port_be, f.vip_port_be);
        if rewrite::icmp_nat(ctx, &s.pkt, &s.icmp).is_err() {
            return outcome::PASS_PARSE_ERROR;
        }
    } else if rewrite::nat(
        ctx,
        pkt,
        &f.vip,
        &f.client,
        rewrite::ports(f.vip_port_be, f.client_port_be),
    )
    .is_err()
    {
        return outcome::PASS_PARSE_ERROR;
    }
    rewrite::send(ctx, f.ifindex, &f.local_mac, &f.client_mac)
}
