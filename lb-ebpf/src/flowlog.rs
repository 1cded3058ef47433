//! Flow logs (`[service.log]` of an L4 service): a new flow, its backend
//! or why it was dropped, written into the `FLOW_LOG` ring buffer for the
//! daemon's access log, for one new flow in N (`LOG_SAMPLE`, per service:
//! 0 off, else the highest random number that logs). Off, a new flow pays
//! one array read. Like the sync's, records go without a wake-up: user
//! space polls the ring.

use aya_ebpf::{
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use lb_common::{outcome, FlowLogEvent, FLOW_FORWARDED, FLOW_LOG_BYTES, FLOW_NO_BACKEND, FLOW_NO_PORT, MAX_SERVICES};

use crate::parse::Packet;

#[map(name = "LOG_SAMPLE")]
static LOG_SAMPLE: Array<u32> = Array::with_max_entries(MAX_SERVICES, 0);

#[map(name = "FLOW_LOG")]
static FLOW_LOG: RingBuf = RingBuf::with_byte_size(FLOW_LOG_BYTES, 0);

#[map(name = "FLOW_LOG_LOST")]
static FLOW_LOG_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `BPF_RB_NO_WAKEUP`.
const NO_WAKEUP: u64 = 1;

/// A new flow of service `service` went to backend `backend`.
#[inline(always)]
pub fn forwarded(pkt: &Packet, service: u32, backend: u32) {
    event(pkt, service, backend, FLOW_FORWARDED);
}

/// A packet of service `service` that `why` dropped, if that is a flow
/// the service could not take.
#[inline(always)]
pub fn dropped(pkt: &Packet, service: u32, why: u32) {
    let kind = match why {
        outcome::DROP_NO_BACKEND => FLOW_NO_BACKEND,
        outcome::DROP_NO_PORT => FLOW_NO_PORT,
        _ => return,
    };
    event(pkt, service, 0, kind);
}

#[inline(never)]
fn event(pkt: &Packet, service: u32, backend: u32, kind: u8) {
    let Some(rate) = LOG_SAMPLE.get(service).copied() else {
        return;
    };
    // SAFETY: a helper without arguments.
    if rate == 0 || unsafe { bpf_get_prandom_u32() } > rate {
        return;
    }
    let Some(mut e) = FLOW_LOG.reserve::<FlowLogEvent>(0) else {
        if let Some(c) = FLOW_LOG_LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot.
            unsafe { *c += 1 };
        }
        return;
    };
    // SAFETY: the reserved record is ours until submitted.
    unsafe {
        let ev = &mut *e.as_mut_ptr();
        ev.src = pkt.src;
        ev.service = service;
        ev.backend = backend;
        ev.sport_be = pkt.sport_be;
        ev.family = pkt.family;
        ev.outcome = kind;
        ev._pad = 0;
    }
    e.submit(NO_WAKEUP);
}
