//! Header parsing with the bounds checks the verifier wants: every access
//! goes through [`ptr_at`], which checks against `data_end`.

use aya_ebpf::programs::XdpContext;
use lb_common::{FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;
const MAX_HEADER_OFFSET: usize = 255;
/// IPv4 "more fragments" flag and offset mask, in host order of `frags`.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// The fields of a TCP/UDP packet the data path decides on, and where its
/// headers are. Addresses first and aligned: copied a word at a time.
#[repr(C, align(8))]
pub struct Packet {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub family: u8,
    pub proto: u8,
    pub sport_be: u16,
    pub dport_be: u16,
    /// TCP flags (0 for UDP and ICMP errors).
    pub tcp_flags: u8,
    pub l3_off: usize,
    pub l4_off: usize,
    /// ICMP error: the tuple fields above are those of the quoted packet,
    /// reversed (the direction of the flow it answers), `l4_off` is the ICMP
    /// header and `inner_l3_off`/`inner_l4_off` the quoted headers.
    pub icmp_error: bool,
    pub inner_l3_off: usize,
    pub inner_l4_off: usize,
    /// Frame length, read once here: later reads of the context from
    /// other functions can be compiled into pointer arithmetic on it, which
    /// the verifier refuses.
    pub bytes: u64,
}

/// Where a packet's headers are: outer L3 and L4 offsets, and for ICMP
/// errors those of the quoted packet.
#[derive(Clone, Copy)]
struct Offsets {
    l3: usize,
    l4: usize,
    icmp_error: bool,
    inner_l3: usize,
    inner_l4: usize,
}

impl Offsets {
    /// A TCP/UDP packet's own headers (no quoted packet).
    #[inline(always)]
    fn direct(l3: usize, l4: usize) -> Offsets {
        Offsets {
            l3,
            l4,
            icmp_error: false,
            inner_l3: 0,
            inner_l4: 0,
        }
    }
}

impl Packet {
    /// Writes the packet's 5-tuple and `backend` into a flow slot.
    #[inline(always)]
    pub fn write_flow(&self, f: &mut lb_common::NatFlow, backend: u32) {
        copy_addr(&mut f.client, &self.src);
        copy_addr(&mut f.vip, &self.dst);
        f.client_port_be = self.sport_be;
        f.vip_port_be = self.dport_be;
        f.backend = backend as u16;
        f.proto = self.proto;
    }

    /// Fills every field but the addresses.
    #[inline(always)]
    fn set(&mut self, ctx: &XdpContext, family: u8, proto: u8, l4: L4, at: Offsets) {
        self.family = family;
        self.proto = proto;
        (self.sport_be, self.dport_be, self.tcp_flags) = l4;
        self.l3_off = at.l3;
        self.l4_off = at.l4;
        self.icmp_error = at.icmp_error;
        // Only read for ICMP errors; storing zeros otherwise would be merged
        // into a memset call.
        if at.icmp_error {
            self.inner_l3_off = at.inner_l3;
            self.inner_l4_off = at.inner_l4;
        }
        self.bytes = (ctx.data_end() - ctx.data()) as u64;
    }

    /// IPv4 addresses (as loaded by [`load`]), in the first 4 bytes of
    /// the 16-byte fields.
    #[inline(always)]
    fn set_v4_addrs(&mut self, src: u32, dst: u32) {
        put_addr(&mut self.src, [src, 0, 0, 0]);
        put_addr(&mut self.dst, [dst, 0, 0, 0]);
    }
}

/// The attached interface's MAC (`lb_common::LOCAL_MAC_GLOBAL`), set by
/// user space at load time; 0: unknown, every frame is looked at.
#[unsafe(no_mangle)]
static LOCAL_MAC: u64 = 0;

#[inline(always)]
pub fn local_mac() -> u64 {
    // SAFETY: a plain global; volatile so the compiler does not fold in 0.
    unsafe { core::ptr::read_volatile(&LOCAL_MAC) }
}

pub enum Parsed {
    /// A TCP or UDP packet, or an ICMP error quoting one; its fields written
    /// to the caller's [`Packet`].
    Flow,
    /// An IPv4 fragment: no trustworthy L4 header.
    Fragment,
    /// Anything else (ARP, ICMP, other protocols, unknown ethertypes).
    Other,
    /// A frame for another host's MAC address.
    OtherHost,
}

// Packet words are read and written with plain loads and stores, not
// `read_unaligned`: the verifier allows unaligned packet access where the
// CPU does (x86), and LLVM would split unaligned ones into byte accesses.

#[inline(always)]
pub fn load<T: Copy>(p: *const u8) -> T {
    // SAFETY: callers pass pointers inside bounds-checked headers or map values.
    unsafe { (p as *const T).read() }
}

#[inline(always)]
pub fn store<T>(p: *mut u8, v: T) {
    // SAFETY: as for load.
    unsafe { (p as *mut T).write(v) }
}

/// The four words of an address held in a 4-byte aligned struct (or in the
/// packet).
#[inline(always)]
pub fn addr_words(a: &[u8; 16]) -> [u32; 4] {
    let p = a.as_ptr();
    // SAFETY: within the 16 bytes.
    unsafe {
        [
            load::<u32>(p),
            load::<u32>(p.add(4)),
            load::<u32>(p.add(8)),
            load::<u32>(p.add(12)),
        ]
    }
}

/// Stores an address as four words. Volatile, because LLVM would merge
/// plain stores into a memset/memmove call, which BPF runs as a byte loop.
#[inline(always)]
pub fn put_addr(dst: &mut [u8; 16], w: [u32; 4]) {
    let p = dst.as_mut_ptr() as *mut u32;
    // SAFETY: within the 16 bytes of a 4-byte aligned struct.
    unsafe {
        p.write_volatile(w[0]);
        p.add(1).write_volatile(w[1]);
        p.add(2).write_volatile(w[2]);
        p.add(3).write_volatile(w[3]);
    }
}

/// Whether two addresses are equal, compared a word at a time (an array
/// comparison would become a memcmp call).
#[inline(always)]
pub fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (a, b) = (addr_words(a), addr_words(b));
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
}

/// `*dst = *src` for addresses, a word at a time (see [`put_addr`]).
#[inline(always)]
pub fn copy_addr(dst: &mut [u8; 16], src: &[u8; 16]) {
    put_addr(dst, addr_words(src));
}

/// Pointer to a `T` at `offset` from the start of the frame, or `Err` when the
/// frame is too short.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    // Offsets kept in map memory are unbounded to the verifier; this bound
    // (above any header offset we use: 14 + 4 + 60 + 20) gives it one.
    if offset > MAX_HEADER_OFFSET {
        return Err(());
    }
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

/// The frame's length.
#[inline(always)]
fn frame_len(ctx: &XdpContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// Parses the frame; for TCP/UDP fills `pkt` (kept off the BPF stack by
/// the caller).
#[inline(always)]
pub fn parse(ctx: &XdpContext, pkt: &mut Packet) -> Result<Parsed, ()> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    let mine = local_mac();
    if mine != 0 {
        // SAFETY: bounds checked by ptr_at (the header is 14 bytes).
        let dst: [u8; 6] = load(eth.cast());
        let word = u64::from_ne_bytes([dst[0], dst[1], dst[2], dst[3], dst[4], dst[5], 0, 0]);
        // Multicast and broadcast (group bit) are everyone's.
        if dst[0] & 1 == 0 && word != mine {
            return Ok(Parsed::OtherHost);
        }
    }
    // SAFETY: bounds checked by ptr_at.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut off = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        // One tag: TCI (2 bytes) then the inner ethertype.
        let inner: *const [u8; 4] = ptr_at(ctx, off)?;
        // SAFETY: bounds checked by ptr_at.
        let tag = unsafe { *inner };
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        off += VLAN_HLEN;
    }
    match ether_type {
        ETH_P_IP => parse_v4(ctx, off, pkt),
        ETH_P_IPV6 => parse_v6(ctx, off, pkt),
        _ => Ok(Parsed::Other),
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, off: usize, pkt: &mut Packet) -> Result<Parsed, ()> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, off)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(());
    }
    // The packet must be as long as it says (a trailer after it is fine):
    // a router would drop a shorter one, and rewriting it would forward
    // bytes that were never part of it.
    let total = u16::from_be_bytes(ip.tot_len) as usize;
    if total < ihl || off + total > frame_len(ctx) {
        return Err(());
    }
    let frags = u16::from_be_bytes(ip.frags);
    if frags & (IP_MF | IP_OFFSET) != 0 {
        return Ok(Parsed::Fragment);
    }
    let proto = ip.proto;
    let l4_off = off + ihl;
    if proto == PROTO_ICMP {
        return icmp_error_v4(ctx, off, l4_off, off + total, pkt);
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(Parsed::Other);
    }
    let p = ports(ctx, l4_off, proto, total - ihl)?;
    pkt.set(ctx, FAMILY_V4, proto, p, Offsets::direct(off, l4_off));
    pkt.set_v4_addrs(load::<u32>(ip.src_addr.as_ptr()), load::<u32>(ip.dst_addr.as_ptr()));
    Ok(Parsed::Flow)
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, off: usize, pkt: &mut Packet) -> Result<Parsed, ()> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, off)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(());
    }
    let payload = u16::from_be_bytes(ip.payload_len) as usize;
    if off + Ipv6Hdr::LEN + payload > frame_len(ctx) {
        return Err(());
    }
    // Extension headers are not walked: such packets are not for a service.
    let proto = ip.next_hdr;
    let l4_off = off + Ipv6Hdr::LEN;
    if proto == PROTO_ICMPV6 {
        return icmp_error_v6(ctx, off, l4_off, l4_off + payload, pkt);
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(Parsed::Other);
    }
    let p = ports(ctx, l4_off, proto, payload)?;
    pkt.set(ctx, FAMILY_V6, proto, p, Offsets::direct(off, l4_off));
    copy_addr(&mut pkt.src, &ip.src_addr);
    copy_addr(&mut pkt.dst, &ip.dst_addr);
    Ok(Parsed::Flow)
}

/// Source and destination port (network order) and TCP flags.
type L4 = (u16, u16, u8);

/// The L4 fields of a TCP/UDP header of `len` bytes (as the IP header
/// says). The whole header must be present (20 bytes TCP, 8 UDP: the
/// rewrite touches its checksum) and agree with `len`: a TCP data offset
/// within it, a UDP length equal to it.
#[inline(always)]
fn ports(ctx: &XdpContext, off: usize, proto: u8, len: usize) -> Result<L4, ()> {
    let mut flags = 0;
    if proto == PROTO_TCP {
        let tcp = ptr_at::<[u8; 20]>(ctx, off)?;
        // SAFETY: bounds checked by ptr_at; data offset is byte 12, flags 13.
        let (doff, f) = unsafe { (((*tcp)[12] >> 4) as usize * 4, (*tcp)[13]) };
        if doff < 20 || doff > len {
            return Err(());
        }
        flags = f;
    } else {
        let udp = ptr_at::<[u8; 8]>(ctx, off)?;
        // SAFETY: bounds checked by ptr_at; the length is bytes 4-5.
        let ulen = unsafe { u16::from_be_bytes([(*udp)[4], (*udp)[5]]) } as usize;
        if ulen != len {
            return Err(());
        }
    }
    let p: *const u8 = ptr_at::<[u8; 4]>(ctx, off)? as *const u8;
    // SAFETY: bounds checked by ptr_at.
    Ok((load::<u16>(p), load::<u16>(unsafe { p.add(2) }), flags))
}

/// ICMP types that quote a packet of a flow: destination unreachable (incl.
/// fragmentation needed), time exceeded; ICMPv6: destination unreachable,
/// packet too big, time exceeded.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_TIME_EXCEED: u8 = 3;

/// The first 8 bytes of the quoted L4 header (all RFC 792 promises).
#[inline(always)]
fn quoted_ports(ctx: &XdpContext, off: usize) -> Result<(u16, u16), ()> {
    let p: *const u8 = ptr_at::<[u8; 8]>(ctx, off)? as *const u8;
    // SAFETY: bounds checked by ptr_at.
    Ok((load::<u16>(p), load::<u16>(unsafe { p.add(2) })))
}

#[inline(always)]
fn icmp_error_v4(ctx: &XdpContext, off: usize, l4_off: usize, end: usize, pkt: &mut Packet) -> Result<Parsed, ()> {
    let icmp: *const [u8; 8] = ptr_at(ctx, l4_off)?;
    // SAFETY: bounds checked by ptr_at.
    let kind = unsafe { (*icmp)[0] };
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED {
        return Ok(Parsed::Other);
    }
    let inner_off = l4_off + 8;
    let ip: *const Ipv4Hdr = ptr_at(ctx, inner_off)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || (ip.proto != PROTO_TCP && ip.proto != PROTO_UDP) {
        return Ok(Parsed::Other);
    }
    // An error goes to the sender of the packet it quotes; one addressed
    // elsewhere is not about our flows (and must not be rewritten).
    let outer: *const Ipv4Hdr = ptr_at(ctx, off)?;
    // SAFETY: bounds checked by ptr_at.
    if load::<u32>(unsafe { (*outer).dst_addr.as_ptr() }) != load::<u32>(ip.src_addr.as_ptr()) {
        return Ok(Parsed::Other);
    }
    let (isport, idport) = quoted_ports(ctx, inner_off + ihl)?;
    // What is rewritten (the quoted headers) must be inside the packet,
    // not in a trailer after it. (Checked after the read: before it, LLVM
    // would drop the read's bounds check as implied, which the verifier
    // cannot follow.)
    if inner_off + ihl + 8 > end {
        return Err(());
    }
    // The quoted packet went inner.src -> inner.dst; the flow it belongs to
    // is the other direction.
    let at = Offsets {
        l3: off,
        l4: l4_off,
        icmp_error: true,
        inner_l3: inner_off,
        inner_l4: inner_off + ihl,
    };
    pkt.set(ctx, FAMILY_V4, ip.proto, (idport, isport, 0), at);
    // The quoted packet went the other way.
    pkt.set_v4_addrs(load::<u32>(ip.dst_addr.as_ptr()), load::<u32>(ip.src_addr.as_ptr()));
    Ok(Parsed::Flow)
}

#[inline(always)]
fn icmp_error_v6(ctx: &XdpContext, off: usize, l4_off: usize, end: usize, pkt: &mut Packet) -> Result<Parsed, ()> {
    let icmp: *const [u8; 8] = ptr_at(ctx, l4_off)?;
    // SAFETY: bounds checked by ptr_at.
    let kind = unsafe { (*icmp)[0] };
    if kind != ICMPV6_DEST_UNREACH && kind != ICMPV6_PKT_TOOBIG && kind != ICMPV6_TIME_EXCEED {
        return Ok(Parsed::Other);
    }
    let inner_off = l4_off + 8;
    let ip: *const Ipv6Hdr = ptr_at(ctx, inner_off)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 || (ip.next_hdr != PROTO_TCP && ip.next_hdr != PROTO_UDP) {
        return Ok(Parsed::Other);
    }
    // As for IPv4: only errors sent to the quoted packet's sender.
    let outer: *const Ipv6Hdr = ptr_at(ctx, off)?;
    // SAFETY: bounds checked by ptr_at.
    if !same_addr(unsafe { &(*outer).dst_addr }, &ip.src_addr) {
        return Ok(Parsed::Other);
    }
    let (isport, idport) = quoted_ports(ctx, inner_off + Ipv6Hdr::LEN)?;
    // As for IPv4, after the read.
    if inner_off + Ipv6Hdr::LEN + 8 > end {
        return Err(());
    }
    let at = Offsets {
        l3: off,
        l4: l4_off,
        icmp_error: true,
        inner_l3: inner_off,
        inner_l4: inner_off + Ipv6Hdr::LEN,
    };
    pkt.set(ctx, FAMILY_V6, ip.next_hdr, (idport, isport, 0), at);
    copy_addr(&mut pkt.src, &ip.dst_addr);
    copy_addr(&mut pkt.dst, &ip.src_addr);
    Ok(Parsed::Flow)
}
