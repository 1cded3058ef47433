//! The service table: service (VIP, port, protocol) keys, and snat
//! addresses under port and protocol 0, in an open-addressed hash table
//! that user space builds in an array map. A kernel hash map lookup cost
//! about 45 ns a packet here (out-of-line hash, bucket walk and memcmp
//! calls, measured); array lookups are inlined by the verifier.
//!
//! The table has two halves: user space writes the idle one, then flips
//! `SERVICE_HEAD`, so a packet never reads a half-written table.

use aya_ebpf::{macros::map, maps::Array};
use lb_common::{hash, ServiceHead, ServiceSlot, ServiceValue, SVC_PROBES, SVC_SLOTS};

use crate::parse::same_addr;

#[map(name = "SERVICES")]
static SERVICES: Array<ServiceSlot> = Array::with_max_entries(2 * SVC_SLOTS, 0);

#[map(name = "SERVICE_HEAD")]
static SERVICE_HEAD: Array<ServiceHead> = Array::with_max_entries(1, 0);

/// The entry for destination `addr`:`port_be` over `proto`, if any.
#[inline(always)]
pub fn find(addr: &[u8; 16], port_be: u16, proto: u8, family: u8) -> Option<&'static ServiceValue> {
    let head = SERVICE_HEAD.get(0)?;
    let base = (head.half & 1) * SVC_SLOTS;
    let home = hash::service_home(addr, port_be, proto, head.seed);
    let mut i = 0;
    while i < SVC_PROBES {
        let slot = SERVICES.get(base + ((home + i) & (SVC_SLOTS - 1)))?;
        let k = &slot.key;
        // User space fills a key's run of slots without gaps.
        if k.family == 0 {
            return None;
        }
        if k.port_be == port_be && k.proto == proto && k.family == family && same_addr(&k.addr, addr) {
            return Some(&slot.value);
        }
        i += 1;
    }
    None
}
