//! xlb's XDP program. Built for `bpfel-unknown-none` by `cargo xtask build`;
//! on the host it compiles (so the workspace lints) but is never run.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod parse;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{outcome, ServiceKey, ServiceStats, ServiceValue, MAX_SERVICES};

use crate::parse::{parse, Parsed};

#[map(name = "SERVICES")]
static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "SERVICE_STATS")]
static SERVICE_STATS: PerCpuArray<ServiceStats> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map(name = "OUTCOMES")]
static OUTCOMES: PerCpuArray<u64> = PerCpuArray::with_max_entries(outcome::COUNT, 0);

#[xdp]
pub fn xlb(ctx: XdpContext) -> u32 {
    let (action, why) = try_xlb(&ctx);
    count_outcome(why);
    action
}

/// Decides what to do with one frame; returns the XDP action and the
/// outcome it is counted under.
#[inline(always)]
fn try_xlb(ctx: &XdpContext) -> (u32, u32) {
    let pkt = match parse(ctx) {
        Ok(Parsed::Flow(p)) => p,
        Ok(Parsed::Other) => return (xdp_action::XDP_PASS, outcome::PASS_NOT_SERVICE),
        Ok(Parsed::Fragment) => return (xdp_action::XDP_PASS, outcome::PASS_FRAGMENT),
        Err(()) => return (xdp_action::XDP_PASS, outcome::PASS_PARSE_ERROR),
    };
    // SAFETY: the value is only read; concurrent updates replace it whole.
    let Some(svc) = (unsafe { SERVICES.get(pkt.service_key()) }) else {
        return (xdp_action::XDP_PASS, outcome::PASS_NOT_SERVICE);
    };
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(svc.id) {
        // SAFETY: per-CPU slot, no other writer while this program runs here.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
    (xdp_action::XDP_PASS, outcome::PASS_SERVICE)
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
