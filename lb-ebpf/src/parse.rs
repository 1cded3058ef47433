//! Header parsing with the bounds checks the verifier wants: every read is
//! preceded by a check against `data_end`.

use aya_ebpf::programs::XdpContext;
use lb_common::{ServiceKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;
/// IPv4 "more fragments" flag and offset mask, in host order of `frags`.
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1fff;

/// The fields of a TCP/UDP packet the data path decides on.
pub struct Packet {
    pub family: u8,
    pub proto: u8,
    pub dst: [u8; 16],
    pub dport_be: u16,
}

impl Packet {
    #[inline(always)]
    pub fn service_key(&self) -> ServiceKey {
        ServiceKey {
            addr: self.dst,
            port_be: self.dport_be,
            proto: self.proto,
            family: self.family,
        }
    }
}

pub enum Parsed {
    /// A TCP or UDP packet with its ports.
    Flow(Packet),
    /// An IPv4 fragment: no trustworthy L4 header.
    Fragment,
    /// Anything else (ARP, ICMP, other protocols, unknown ethertypes).
    Other,
}

/// Pointer to a `T` at `offset` from the start of the frame, or `Err` when the
/// frame is too short.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, ()> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
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
        ETH_P_IP => parse_v4(ctx, off),
        ETH_P_IPV6 => parse_v6(ctx, off),
        _ => Ok(Parsed::Other),
    }
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, off: usize) -> Result<Parsed, ()> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, off)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(());
    }
    let frags = u16::from_be_bytes(ip.frags);
    if frags & (IP_MF | IP_OFFSET) != 0 {
        return Ok(Parsed::Fragment);
    }
    let proto = ip.proto;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(Parsed::Other);
    }
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&ip.dst_addr);
    let dport_be = dport(ctx, off + ihl)?;
    Ok(Parsed::Flow(Packet {
        family: FAMILY_V4,
        proto,
        dst,
        dport_be,
    }))
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, off: usize) -> Result<Parsed, ()> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, off)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(());
    }
    // Extension headers are not walked: such packets are not for a service.
    let proto = ip.next_hdr;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(Parsed::Other);
    }
    let dport_be = dport(ctx, off + Ipv6Hdr::LEN)?;
    Ok(Parsed::Flow(Packet {
        family: FAMILY_V6,
        proto,
        dst: ip.dst_addr,
        dport_be,
    }))
}

/// Destination port (network order): bytes 2..4 of both TCP and UDP. The
/// whole 4-byte port pair must be present, as in any real L4 header.
#[inline(always)]
fn dport(ctx: &XdpContext, off: usize) -> Result<u16, ()> {
    let p: *const [u8; 4] = ptr_at(ctx, off)?;
    // SAFETY: bounds checked by ptr_at.
    let p = unsafe { *p };
    Ok(u16::from_ne_bytes([p[2], p[3]]))
}
