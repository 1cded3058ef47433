//! The flow tables: IPv4 and IPv6 flows in LRU maps of their own, so that
//! the common IPv4 lookup hashes and compares a 16-byte key, not 40.

use aya_ebpf::{macros::map, maps::LruHashMap};
use lb_common::{Flow, FlowKey4, FlowKey6, FAMILY_V4, MAX_FLOWS, MAX_FLOWS6};

use crate::parse::{addr_words, copy_addr};

#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey4, Flow> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map(name = "FLOWS6")]
static FLOWS6: LruHashMap<FlowKey6, Flow> = LruHashMap::with_max_entries(MAX_FLOWS6, 0);

/// A flow key of either family (only the one of the last `set` is valid).
pub struct FlowKeys {
    v4: FlowKey4,
    v6: FlowKey6,
    family: u8,
}

impl FlowKeys {
    /// The 5-tuple as on the wire.
    #[inline(always)]
    pub fn set(&mut self, family: u8, src: &[u8; 16], dst: &[u8; 16], sport_be: u16, dport_be: u16, proto: u8) {
        self.family = family;
        if family == FAMILY_V4 {
            let k = &mut self.v4;
            k.src = addr_words(src)[0].to_ne_bytes();
            k.dst = addr_words(dst)[0].to_ne_bytes();
            k.sport_be = sport_be;
            k.dport_be = dport_be;
            k.proto = proto;
            k._pad = 0;
            k._pad2 = 0;
        } else {
            let k = &mut self.v6;
            copy_addr(&mut k.src, src);
            copy_addr(&mut k.dst, dst);
            k.sport_be = sport_be;
            k.dport_be = dport_be;
            k.proto = proto;
            k._pad = 0;
            k._pad2 = 0;
        }
    }

    /// The flow under this key. The value is used in place: the kernel keeps
    /// it alive for the rest of this program run (RCU), and updates replace
    /// it whole.
    #[inline(always)]
    pub fn get(&self) -> Option<&'static Flow> {
        // SAFETY: see above.
        unsafe {
            if self.family == FAMILY_V4 {
                FLOWS.get(&self.v4)
            } else {
                FLOWS6.get(&self.v6)
            }
        }
    }

    /// Inserts or replaces (`flags` 0) or only inserts (`BPF_NOEXIST`).
    #[inline(always)]
    pub fn insert(&self, flow: &Flow, flags: u64) -> Result<(), i32> {
        if self.family == FAMILY_V4 {
            FLOWS.insert(&self.v4, flow, flags)
        } else {
            FLOWS6.insert(&self.v6, flow, flags)
        }
    }
}
