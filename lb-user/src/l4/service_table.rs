//! The XDP program's service table (`SERVICES`): an open-addressed hash
//! table in an array map, because a kernel hash map lookup costs a packet
//! about 45 ns where inlined array reads cost a few (docs/datapath.md).
//!
//! Each key sits within `SVC_PROBES` slots of its home slot, with no empty
//! slot between: the program stops at the first empty one. When a seed
//! cannot place every key that way, another seed is tried. The table has
//! two halves; a publish writes the idle half (only the slots that differ
//! from what it held) and then flips `SERVICE_HEAD` to it in one element
//! update, so a packet sees either the old table or the new one.

use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use lb_common::{hash, maps, ServiceHead, ServiceKey, ServiceSlot, ServiceValue, SVC_PROBES, SVC_SLOTS};

use super::bpf::{map_err, map_of, DataPlaneError};

/// Seeds tried after the live one, in order.
const SEEDS: u32 = 64;

/// Home slot of `k` in a table placed with `seed`.
fn home(k: &ServiceKey, seed: u32) -> u32 {
    hash::service_home(&k.addr, k.port_be, k.proto, seed)
}

/// Places `entries` (distinct keys) with `seed`: each key in the first free
/// slot of the `SVC_PROBES` from its home; `None` when one finds none.
pub fn place(entries: &[(ServiceKey, ServiceValue)], seed: u32) -> Option<Vec<ServiceSlot>> {
    let mut table = vec![ServiceSlot::default(); SVC_SLOTS as usize];
    for (key, value) in entries {
        let h = home(key, seed);
        let free = (0..SVC_PROBES)
            .map(|i| ((h + i) & (SVC_SLOTS - 1)) as usize)
            .find(|&i| table[i].key.family == 0)?;
        table[free] = ServiceSlot {
            key: *key,
            _pad: 0,
            value: *value,
        };
    }
    Some(table)
}

/// The table for `entries` and its seed: `seed` if it places them all,
/// else the first of the next `SEEDS` seeds that does.
pub fn build(entries: &[(ServiceKey, ServiceValue)], seed: u32) -> Result<(Vec<ServiceSlot>, u32), DataPlaneError> {
    (0..=SEEDS)
        .map(|i| seed.wrapping_add(i.wrapping_mul(0x9e37_79b9)))
        .find_map(|s| place(entries, s).map(|t| (t, s)))
        .ok_or_else(|| DataPlaneError::Map {
            name: maps::SERVICES,
            reason: format!(
                "{} entries do not fit the table with any of {SEEDS} seeds",
                entries.len()
            ),
        })
}

/// What user space knows the two halves hold.
#[derive(Default)]
pub struct ServiceTable {
    /// Per half: its slots as last written, `None` when not known (a new
    /// run adopting pinned maps), which makes the next write a whole one.
    halves: [Option<Vec<ServiceSlot>>; 2],
}

impl ServiceTable {
    /// Makes `entries` the live table.
    pub fn publish(
        &mut self,
        ebpf: &mut Ebpf,
        mut entries: Vec<(ServiceKey, ServiceValue)>,
    ) -> Result<(), DataPlaneError> {
        // Same entries, same table, on every node and every run.
        entries.sort_by_key(|(k, _)| (k.family, k.addr, k.port_be, k.proto));
        let head: Array<&mut MapData, ServiceHead> = map_of(ebpf, maps::SERVICE_HEAD)?;
        let head = head.get(&0, 0).map_err(|e| map_err(maps::SERVICE_HEAD, &e))?;
        let (table, seed) = build(&entries, head.seed)?;
        let idle = 1 - (head.half & 1);
        let mut slots: Array<&mut MapData, ServiceSlot> = map_of(ebpf, maps::SERVICES)?;
        let held = self.halves[idle as usize].take();
        for (i, slot) in table.iter().enumerate() {
            if held.as_ref().is_none_or(|h| h[i] != *slot) {
                slots
                    .set(idle * SVC_SLOTS + i as u32, slot, 0)
                    .map_err(|e| map_err(maps::SERVICES, &e))?;
            }
        }
        let mut head: Array<&mut MapData, ServiceHead> = map_of(ebpf, maps::SERVICE_HEAD)?;
        head.set(0, ServiceHead { half: idle, seed }, 0)
            .map_err(|e| map_err(maps::SERVICE_HEAD, &e))?;
        self.halves[idle as usize] = Some(table);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the XDP program finds for `key` in `table` placed with `seed`
    /// (its lookup, mirrored).
    fn find<'a>(table: &'a [ServiceSlot], key: &ServiceKey, seed: u32) -> Option<&'a ServiceValue> {
        let h = home(key, seed);
        for i in 0..SVC_PROBES {
            let slot = &table[((h + i) & (SVC_SLOTS - 1)) as usize];
            if slot.key.family == 0 {
                return None;
            }
            if slot.key == *key {
                return Some(&slot.value);
            }
        }
        None
    }

    fn key(i: u32, port: u16) -> ServiceKey {
        let a = i.to_be_bytes();
        ServiceKey::v4([198, 19, a[2], a[3]], port, 6)
    }

    fn value(i: u32) -> ServiceValue {
        ServiceValue {
            id: i,
            ..Default::default()
        }
    }

    /// A full table (every service and snat address xlb allows) finds each
    /// key's own value, and nothing for keys it does not hold.
    #[test]
    fn full_table_finds_every_key() {
        let n = lb_common::MAX_SERVICES + lb_common::MAX_SNATS;
        let entries: Vec<_> = (0..n).map(|i| (key(i, 80), value(i))).collect();
        let (table, seed) = build(&entries, 0).unwrap();
        for (k, v) in &entries {
            assert_eq!(find(&table, k, seed), Some(v));
        }
        for i in 0..n {
            assert_eq!(find(&table, &key(i, 81), seed), None);
        }
    }

    /// Keys that all share one home slot under seed 0 (more than a lookup
    /// reads) are placed under another seed.
    #[test]
    fn crowded_home_moves_to_another_seed() {
        let target = home(&key(0, 80), 0);
        let crowd: Vec<_> = (0..1 << 20)
            .map(|i| key(i >> 4, 80 + (i & 15) as u16))
            .filter(|k| home(k, 0) == target)
            .take(SVC_PROBES as usize + 1)
            .enumerate()
            .map(|(i, k)| (k, value(i as u32)))
            .collect();
        assert_eq!(crowd.len(), SVC_PROBES as usize + 1);
        assert!(place(&crowd, 0).is_none());
        let (table, seed) = build(&crowd, 0).unwrap();
        assert_ne!(seed, 0);
        for (k, v) in &crowd {
            assert_eq!(find(&table, k, seed), Some(v));
        }
    }
}
