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

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use network_types::eth::EthHdr;

/// Does nothing: the cost of running any XDP program.
#[xdp]
pub fn floor_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Parses Ethernet/IP/TCP-UDP like xlb, swaps the MACs and sends the frame
/// back: the cost of the simplest forwarding.
#[xdp]
pub fn floor_swap(ctx: XdpContext) -> u32 {
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
    match parse::parse(&ctx, &mut pkt) {
        Ok(parse::Parsed::Flow) => {}
        _ => return xdp_action::XDP_PASS,
    }
    let Ok(eth) = parse::ptr_at::<EthHdr>(&ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds checked by ptr_at.
    unsafe { core::mem::swap(&mut (*eth).src_addr, &mut (*eth).dst_addr) };
    xdp_action::XDP_TX
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
