//! Rewriting a parsed packet: addresses and ports with incremental checksum
//! updates, Ethernet addresses, and the route lookup that picks the next hop.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{csum, outcome, FAMILY_V4, PROTO_TCP};
use network_types::eth::EthHdr;

use crate::parse::{addr_words, copy_addr, load, ptr_at, store, Packet};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Where a packet leaves: interface and MACs from the kernel's FIB.
pub struct NextHop {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// Route lookup for `pkt` as if sent from `src` to `dst`; fills `hop` and
/// returns 0, or returns the drop outcome. Not inlined: the 64-byte lookup
/// block gets its own stack frame.
#[inline(never)]
pub fn next_hop(ctx: &XdpContext, pkt: &Packet, src: &[u8; 16], dst: &[u8; 16], hop: &mut NextHop) -> u32 {
    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid value.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    let family = pkt.family;
    p.l4_protocol = pkt.proto;
    p.ifindex = ctx.ingress_ifindex() as u32;
    if family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = word(src, 0);
        p.__bindgen_anon_4.ipv4_dst = word(dst, 0);
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = [word(src, 0), word(src, 1), word(src, 2), word(src, 3)];
        p.__bindgen_anon_4.ipv6_dst = [word(dst, 0), word(dst, 1), word(dst, 2), word(dst, 3)];
    }
    // SAFETY: valid context and parameter block of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            &mut p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            hop.ifindex = p.ifindex;
            hop.smac = p.smac;
            hop.dmac = p.dmac;
            0
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => outcome::DROP_NO_NEIGH,
        _ => outcome::DROP_NO_ROUTE,
    }
}

/// Sets the Ethernet addresses and sends the frame out of `ifindex`:
/// `XDP_TX` when that is the interface it came in on, else a redirect.
/// Returns the outcome.
#[inline(always)]
pub fn send(ctx: &XdpContext, ifindex: u32, smac: &[u8; 6], dmac: &[u8; 6]) -> u32 {
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return outcome::PASS_PARSE_ERROR;
    };
    let eth = eth as *mut u8;
    // SAFETY: bounds checked by ptr_at (dst 0..6, src 6..12).
    unsafe {
        copy_mac(eth.add(6), smac.as_ptr());
        copy_mac(eth, dmac.as_ptr());
    }
    if ifindex == ctx.ingress_ifindex() as u32 {
        outcome::TX
    } else {
        // SAFETY: plain helper call; with flags 0 it returns XDP_REDIRECT.
        unsafe { bpf_redirect(ifindex, 0) };
        outcome::REDIRECT
    }
}

/// The XDP action an outcome stands for.
#[inline(always)]
pub fn action_of(why: u32) -> u32 {
    match why {
        outcome::TX => xdp_action::XDP_TX,
        outcome::REDIRECT => xdp_action::XDP_REDIRECT,
        outcome::DROP_NO_BACKEND | outcome::DROP_NO_ROUTE | outcome::DROP_NO_NEIGH | outcome::DROP_NO_PORT => {
            xdp_action::XDP_DROP
        }
        _ => xdp_action::XDP_PASS,
    }
}

/// Copies a MAC address as three 16-bit words: a plain array copy becomes
/// byte moves or a memmove call (a byte loop in BPF).
///
/// # Safety
/// Both pointers must have 6 valid bytes.
#[inline(always)]
unsafe fn copy_mac(dst: *mut u8, src: *const u8) {
    let mut i = 0;
    while i < 3 {
        // SAFETY: within the 6 bytes the caller vouches for.
        unsafe { (dst.add(2 * i) as *mut u16).write_volatile(load::<u16>(src.add(2 * i))) };
        i += 1;
    }
}

/// Copies the frame's Ethernet source and destination into `src`/`dst`.
#[inline(always)]
pub fn macs(ctx: &XdpContext, src: &mut [u8; 6], dst: &mut [u8; 6]) -> Result<(), ()> {
    let eth = ptr_at::<EthHdr>(ctx, 0)? as *const u8;
    // SAFETY: within the bounds-checked Ethernet header (dst 0..6, src 6..12).
    unsafe {
        copy_mac(dst.as_mut_ptr(), eth);
        copy_mac(src.as_mut_ptr(), eth.add(6));
    }
    Ok(())
}

/// Word `i` of an address, in the native order a packet load would give.
/// Addresses live in 4-byte aligned structs (lb-common, `Packet`).
#[inline(always)]
fn word(a: &[u8; 16], i: usize) -> u32 {
    addr_words(a)[i]
}

/// Replaces the source and destination address of the IP header at `l3_off`
/// (IPv4: updating its checksum). Returns the one's-complement sum of the
/// address changes (what a pseudo-header checksum must add) and that of
/// the IPv4 checksum field's change (0 for IPv6).
#[inline(always)]
fn set_addrs(ctx: &XdpContext, family: u8, l3_off: usize, src: &[u8; 16], dst: &[u8; 16]) -> Result<(u32, u32), ()> {
    let mut addr_sum = 0u32;
    if family == FAMILY_V4 {
        let ip = ptr_at::<[u8; 20]>(ctx, l3_off)? as *mut u8;
        let (ns, nd) = (word(src, 0), word(dst, 0));
        // SAFETY: offsets inside the 20 bounds-checked bytes.
        unsafe {
            addr_sum = csum::diff32(addr_sum, load::<u32>(ip.add(12)), ns);
            addr_sum = csum::diff32(addr_sum, load::<u32>(ip.add(16)), nd);
            let old = load::<u16>(ip.add(10));
            let new = csum::finish(csum::start(old) + addr_sum);
            store::<u16>(ip.add(10), new);
            store::<u32>(ip.add(12), ns);
            store::<u32>(ip.add(16), nd);
            return Ok((addr_sum, csum::diff16(0, old, new)));
        }
    }
    let a = ptr_at::<[u8; 32]>(ctx, l3_off + 8)? as *mut u8;
    let mut i = 0;
    while i < 4 {
        // SAFETY: offsets inside the 32 bounds-checked address bytes.
        unsafe {
            addr_sum = csum::diff32(addr_sum, load::<u32>(a.add(4 * i)), word(src, i));
            store::<u32>(a.add(4 * i), word(src, i));
            addr_sum = csum::diff32(addr_sum, load::<u32>(a.add(16 + 4 * i)), word(dst, i));
            store::<u32>(a.add(16 + 4 * i), word(dst, i));
        }
        i += 1;
    }
    Ok((addr_sum, 0))
}

/// Packs two network-order ports for [`nat`] (BPF functions take at most
/// five arguments).
#[inline(always)]
pub fn ports(sport_be: u16, dport_be: u16) -> u32 {
    (u32::from(sport_be) << 16) | u32::from(dport_be)
}

/// Rewrites source and destination address and port (`ports` from
/// [`ports`]), updating the IPv4 header checksum and the TCP/UDP checksum
/// incrementally, in place. A UDP checksum of zero over IPv4 ("none") stays
/// zero. Not inlined: its own stack frame.
#[inline(always)]
pub fn nat(ctx: &XdpContext, pkt: &Packet, src: &[u8; 16], dst: &[u8; 16], ports: u32) -> Result<(), ()> {
    let (sport_be, dport_be) = ((ports >> 16) as u16, ports as u16);
    // The address changes also enter the L4 checksum (pseudo-header).
    let (addr_sum, _) = set_addrs(ctx, pkt.family, pkt.l3_off, src, dst)?;
    let tcp = pkt.proto == PROTO_TCP;
    let l4 = if tcp {
        ptr_at::<[u8; 20]>(ctx, pkt.l4_off)? as *mut u8
    } else {
        ptr_at::<[u8; 8]>(ctx, pkt.l4_off)? as *mut u8
    };
    // SAFETY: ports at 0..4, checksum at 16 (TCP, 20 bytes checked) or 6 (UDP, 8 checked).
    unsafe {
        let check = if tcp { l4.add(16) } else { l4.add(6) };
        let old = load::<u16>(check);
        if tcp || pkt.family != FAMILY_V4 || old != 0 {
            let mut sum = csum::start(old) + addr_sum;
            sum = csum::diff16(sum, load::<u16>(l4), sport_be);
            sum = csum::diff16(sum, load::<u16>(l4.add(2)), dport_be);
            let mut new = csum::finish(sum);
            if !tcp && new == 0 {
                // RFC 768: a computed zero is sent as all ones.
                new = 0xffff;
            }
            store::<u16>(check, new);
        }
        store::<u16>(l4, sport_be);
        store::<u16>(l4.add(2), dport_be);
    }
    Ok(())
}

/// New addresses for an ICMP error: its own source and destination, and the
/// quoted packet's source and destination address and port.
#[repr(C, align(4))]
pub struct IcmpRewrite {
    pub outer_src: [u8; 16],
    pub outer_dst: [u8; 16],
    pub inner_sport_be: u16,
    pub inner_dport_be: u16,
}

impl IcmpRewrite {
    #[inline(always)]
    pub fn set(&mut self, src: &[u8; 16], dst: &[u8; 16], inner_sport_be: u16, inner_dport_be: u16) {
        copy_addr(&mut self.outer_src, src);
        copy_addr(&mut self.outer_dst, dst);
        self.inner_sport_be = inner_sport_be;
        self.inner_dport_be = inner_dport_be;
    }
}

/// Rewrites an ICMP error and the packet it quotes, updating the outer IPv4
/// checksum, the quoted IPv4 header's checksum and the ICMP checksum (which
/// covers the quoted bytes, and for ICMPv6 the outer addresses). The quoted
/// L4 checksum is left alone: receivers do not check it.
#[inline(never)]
pub fn icmp_nat(ctx: &XdpContext, pkt: &Packet, rw: &IcmpRewrite) -> Result<(), ()> {
    let (outer_sum, _) = set_addrs(ctx, pkt.family, pkt.l3_off, &rw.outer_src, &rw.outer_dst)?;
    let icmp = ptr_at::<[u8; 8]>(ctx, pkt.l4_off)? as *mut u8;
    // SAFETY: the checksum is at 2..4 of the 8 bounds-checked bytes.
    let mut sum = csum::start(unsafe { load::<u16>(icmp.add(2)) });
    if pkt.family != FAMILY_V4 {
        // ICMPv6 covers a pseudo-header with the outer addresses.
        sum += outer_sum;
    }
    // Every changed word of the quoted header counts for the ICMP sum,
    // its IPv4 checksum field included.
    // The quoted packet went the other way: its addresses are the outer ones swapped.
    let (inner_sum, check_sum) = set_addrs(ctx, pkt.family, pkt.inner_l3_off, &rw.outer_dst, &rw.outer_src)?;
    sum += inner_sum + check_sum;
    let ports = ptr_at::<[u8; 8]>(ctx, pkt.inner_l4_off)? as *mut u8;
    // SAFETY: ports at 0..4 of the 8 bounds-checked bytes; checksum as above.
    unsafe {
        sum = csum::diff16(sum, load::<u16>(ports), rw.inner_sport_be);
        sum = csum::diff16(sum, load::<u16>(ports.add(2)), rw.inner_dport_be);
        store::<u16>(ports, rw.inner_sport_be);
        store::<u16>(ports.add(2), rw.inner_dport_be);
        store::<u16>(icmp.add(2), csum::finish(sum));
    }
    Ok(())
}
