//! Baselines for `cargo xtask bench l4` (not part of xlb): the cost floors
//! any XDP program and any forwarding XDP program pay, measured in the same
//! harness as xlb itself.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

// The same parser as xlb, so the floor parses exactly as much.
#[allow(dead_code)]
#[path = "../parse.rs"]
mod parse;
#[path = "../runtime.rs"]
mod runtime;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};
use lb_common::hash::fmix32;
use network_types::eth::EthHdr;

/// Does nothing: the cost of running any XDP program.
#[xdp]
pub fn floor_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// log2 of the lines of [`LINES`].
const LINE_BITS: u32 = 21;

/// One 64-byte line per flow, as a flow table keeps: 2,097,152 lines
/// (128 MiB, about the size of xlb's nat table).
#[map(name = "FLOOR_LINES")]
static LINES: Array<[u64; 8]> = Array::with_max_entries(1 << LINE_BITS, 0);

/// Parses Ethernet/IP/TCP-UDP like xlb, swaps the MACs and sends the frame
/// back: the cost of the simplest forwarding.
#[xdp]
pub fn floor_swap(ctx: XdpContext) -> u32 {
    swap_back(&ctx, |_| ())
}

/// As [`floor_swap`], reading first the line of the packet's flow, found by
/// a hash of its addresses and ports: the least a table of flows adds to a
/// packet, whatever its layout (one line, no probing, no compare).
#[xdp]
pub fn floor_touch(ctx: XdpContext) -> u32 {
    swap_back(&ctx, |pkt| {
        let [a, b, c, d] = parse::addr_words(&pkt.src);
        let ports = (u32::from(pkt.sport_be) << 16) | u32::from(pkt.dport_be);
        // Mixed both ways: a multiply alone only moves bits up, and the
        // address and port bits that vary would cancel out.
        let line = fmix32(fmix32(a ^ b ^ c ^ d) ^ ports) >> (32 - LINE_BITS);
        if let Some(l) = LINES.get_ptr(line) {
            // SAFETY: a map value, alive for the program run; volatile so
            // that the read is not left out.
            unsafe { core::ptr::read_volatile(l.cast::<u64>()) };
        }
    })
}

#[inline(always)]
fn swap_back(ctx: &XdpContext, before: impl FnOnce(&parse::Packet)) -> u32 {
    let mut pkt = parse::Packet {
        family: 0,
        proto: 0,
        src: [0; 16],
        dst: [0; 16],
        sport_be: 0,
        dport_be: 0,
        tcp_flags: 0,
        l3_off: 0,
        l4_off: 0,
        icmp_error: false,
        inner_l3_off: 0,
        inner_l4_off: 0,
        bytes: 0,
    };
    match parse::parse(ctx, &mut pkt) {
        Ok(parse::Parsed::Flow) => {}
        _ => return xdp_action::XDP_PASS,
    }
    before(&pkt);
    let Ok(eth) = parse::ptr_at::<EthHdr>(ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds checked by ptr_at.
    unsafe { core::mem::swap(&mut (*eth).src_addr, &mut (*eth).dst_addr) };
    xdp_action::XDP_TX
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
