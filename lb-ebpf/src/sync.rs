//! Flow-sync events (`[sync]`): while user space has the `SYNC` switch on,
//! a new flow and a full-NAT flow's change of state are written into the
//! `SYNC_EVENTS` ring buffer for the daemon to send to the other nodes.
//! Off, an event costs one map read; packets of established flows that
//! change nothing never get here. Records are submitted without a wake-up
//! (`BPF_RB_NO_WAKEUP`): user space polls the ring every few milliseconds,
//! because waking a reader from the packet path costs several microseconds
//! (measured: a new flow 16x dearer with wake-ups).

use aya_ebpf::{
    macros::map,
    maps::{ring_buf::RingBufEntry, Array, PerCpuArray, RingBuf},
};
use lb_common::{NatFlow, SyncEvent, SYNC_DSR, SYNC_NAT, SYNC_RING_BYTES};

use crate::parse::Packet;

/// Element 0: non-zero while events are wanted (written by user space).
#[map(name = "SYNC")]
static SYNC: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "SYNC_EVENTS")]
static SYNC_EVENTS: RingBuf = RingBuf::with_byte_size(SYNC_RING_BYTES, 0);

/// Events the full ring buffer had no room for.
#[map(name = "SYNC_LOST")]
static SYNC_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `BPF_RB_NO_WAKEUP`.
const NO_WAKEUP: u64 = 1;

#[inline(always)]
fn on() -> bool {
    SYNC.get(0).is_some_and(|v| *v != 0)
}

#[inline(always)]
fn lost() {
    if let Some(c) = SYNC_LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}

/// A reserved event with its header written, or `None` when the sync is
/// off or the ring is full (counted).
#[inline(always)]
fn begin(kind: u8, family: u8, slot: u32) -> Option<RingBufEntry<SyncEvent>> {
    if !on() {
        return None;
    }
    let Some(mut e) = SYNC_EVENTS.reserve::<SyncEvent>(0) else {
        lost();
        return None;
    };
    let ev = e.as_mut_ptr();
    // SAFETY: the reserved record is ours until submitted.
    unsafe {
        (*ev).kind = kind;
        (*ev).family = family;
        (*ev)._pad = 0;
        (*ev).slot = slot;
    }
    Some(e)
}

/// The full-NAT flow at `NAT_FLOWS` index `slot` was created or changed.
#[inline(never)]
pub fn nat(slot: u32, family: u8, f: &NatFlow) {
    let Some(mut e) = begin(SYNC_NAT, family, slot) else {
        return;
    };
    // SAFETY: as in `begin`.
    unsafe { (*e.as_mut_ptr()).flow = *f };
    e.submit(NO_WAKEUP);
}

/// A new dsr flow of the service with counter slot `service` to `backend`.
#[inline(never)]
pub fn dsr(pkt: &Packet, backend: u32, service: u32) {
    let Some(mut e) = begin(SYNC_DSR, pkt.family, service) else {
        return;
    };
    // SAFETY: as in `begin`. Field by field: a whole-struct zeroing would be
    // a memset loop. The MACs are left as the ring held them; user space
    // ignores them.
    unsafe {
        let f = &mut (*e.as_mut_ptr()).flow;
        f.seen = 0;
        f.ifindex = 0;
        f.state = 0;
        pkt.write_flow(f, backend);
    }
    e.submit(NO_WAKEUP);
}
