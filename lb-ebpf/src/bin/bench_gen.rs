//! Traffic tools of `cargo xtask bench l4` (not part of xlb): a packet
//! generator run through BPF_PROG_TEST_RUN with live frames, and a counting
//! sink. A user-space sender (one socket, one syscall a datagram) reaches
//! about 0.1 Mpps here, far below what XDP forwards; the generator sends
//! template frames from the kernel's test-run loop at several Mpps.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[path = "../runtime.rs"]
mod runtime;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// `GEN[0]`: distinct flows to cycle over (0: every frame a new flow);
/// `GEN[1]`: frames made so far (the generator runs on one CPU);
/// `GEN[2]`: destination addresses to spread flows over, from the
/// template's on (0 or 1: the template's).
#[map(name = "GEN")]
static GEN: Array<u64> = Array::with_max_entries(3, 0);

/// The template frame's first `HEAD` bytes (Ethernet, IPv4, UDP headers),
/// copied into every frame: a live frame's page comes back to the generator
/// with whatever the forwarder wrote into it (NAT, MACs, TTL).
#[map(name = "TEMPLATE")]
static TEMPLATE: Array<[u64; HEAD / 8]> = Array::with_max_entries(1, 0);

/// `SINK[0]`: frames the sink received, per CPU.
#[map(name = "SINK")]
static SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const HEAD: usize = 48;
/// Flows vary their source address over 198.18.128.0/17 first, then their
/// source port: 32768 addresses.
const SRC_BASE: u32 = 0xc612_8000;
const SRC_SPAN: u64 = 32768;

/// Writes the template's headers (Ethernet, IPv4 without options, UDP) with
/// the next flow's source address and port (and destination, with
/// `GEN[2]`) into the frame, and sends it out of the interface the test run
/// names as its ingress. The IP checksum is
/// computed whole; the UDP checksum is 0 (none).
#[xdp]
pub fn gen_udp(ctx: XdpContext) -> u32 {
    try_gen(&ctx).unwrap_or(xdp_action::XDP_ABORTED)
}

#[inline(always)]
fn try_gen(ctx: &XdpContext) -> Result<u32, ()> {
    let start = ctx.data();
    if start + HEAD > ctx.data_end() {
        return Err(());
    }
    let head = TEMPLATE.get(0).ok_or(())?;
    let flows = *GEN.get(0).ok_or(())?;
    let dsts = (*GEN.get(2).ok_or(())?).max(1);
    let count = GEN.get_ptr_mut(1).ok_or(())?;
    // SAFETY: an in-bounds map value; only this CPU's test run writes it.
    let n = unsafe {
        let n = *count;
        *count = n + 1;
        n
    };
    let i = if flows == 0 { n } else { n % flows };
    let src = SRC_BASE + (i % SRC_SPAN) as u32;
    let dst_add = (i % dsts) as u8;
    let sport = 1024 + ((i / SRC_SPAN) % 64000) as u16;
    let ip = (start + ETH_LEN) as *mut u8;
    // SAFETY: bounds checked above; unaligned and byte-wise writes.
    unsafe {
        let words = start as *mut u64;
        for (k, w) in head.iter().enumerate() {
            words.add(k).write_unaligned(*w);
        }
        let s = src.to_be_bytes();
        for (k, b) in s.iter().enumerate() {
            *ip.add(12 + k) = *b;
        }
        // The template's last address byte leaves room for the spread.
        *ip.add(19) += dst_add;
        *ip.add(10) = 0;
        *ip.add(11) = 0;
        let mut sum = 0u32;
        let mut k = 0;
        while k < IP_LEN {
            sum += u32::from(*ip.add(k)) << 8 | u32::from(*ip.add(k + 1));
            k += 2;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let csum = !(sum as u16);
        *ip.add(10) = (csum >> 8) as u8;
        *ip.add(11) = csum as u8;
        let udp = ip.add(IP_LEN);
        *udp = (sport >> 8) as u8;
        *udp.add(1) = sport as u8;
        *udp.add(6) = 0;
        *udp.add(7) = 0;
    }
    Ok(xdp_action::XDP_TX)
}

/// Counts and drops what reaches it.
#[xdp]
pub fn sink_count(_ctx: XdpContext) -> u32 {
    if let Some(c) = SINK.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
