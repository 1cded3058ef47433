//! The data path's rare events (no backend, no route, no neighbour, no snat
//! port, a header that lies about its length) as aya-log records, while
//! user space has them switched on (`xlb debug datapath on`). The entry
//! point calls this for those outcomes only; off, an event costs one map
//! read, and packets that forward never get here.

use aya_ebpf::{macros::map, maps::Array, programs::XdpContext};
use aya_log_ebpf::warn;
use lb_common::{outcome, FAMILY_V4};

use crate::SCRATCH;

/// Element 0: non-zero while events are wanted (written by user space).
#[map(name = "DEBUG")]
static DEBUG: Array<u32> = Array::with_max_entries(1, 0);

/// Whether `why` is one of the rare outcomes worth an event.
#[inline(always)]
pub fn is_rare(why: u32) -> bool {
    why == outcome::PASS_PARSE_ERROR || (outcome::DROP_NO_BACKEND..=outcome::DROP_NO_PORT).contains(&why)
}

#[inline(never)]
pub fn event(ctx: &XdpContext, why: u32) {
    if DEBUG.get(0).is_none_or(|on| *on == 0) {
        return;
    }
    let name = match why {
        outcome::DROP_NO_BACKEND => "no backend",
        outcome::DROP_NO_ROUTE => "no route",
        outcome::DROP_NO_NEIGH => "no neighbour",
        outcome::DROP_NO_PORT => "no snat port",
        _ => {
            let len = ctx.data_end() - ctx.data();
            warn!(ctx, "xlb datapath: parse error, frame of {} bytes passed", len);
            return;
        }
    };
    let Some(s) = SCRATCH.get(0) else { return };
    let p = &s.pkt;
    let (sport, dport) = (u16::from_be(p.sport_be), u16::from_be(p.dport_be));
    if p.family == FAMILY_V4 {
        let src = u32::from_be_bytes([p.src[0], p.src[1], p.src[2], p.src[3]]);
        let dst = u32::from_be_bytes([p.dst[0], p.dst[1], p.dst[2], p.dst[3]]);
        warn!(
            ctx,
            "xlb datapath: {}: proto {} {:i}:{} -> {:i}:{}", name, p.proto, src, sport, dst, dport
        );
    } else {
        warn!(
            ctx,
            "xlb datapath: {}: proto {} [{:i}]:{} -> [{:i}]:{}", name, p.proto, p.src, sport, p.dst, dport
        );
    }
}
