//! Turns the config plus backend state into the XDP program's maps: the
//! service table, the backend array, the Maglev rings. A ring is never
//! changed while packets may read it: each L4 service owns two ring slots,
//! the new ring is written into the idle one, then the service table (two
//! halves of its own, see `service_table`) is flipped to entries naming it.
//! Each snat address gets a region of the full-NAT flow array.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    net::IpAddr,
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues},
    Ebpf,
};
use lb_common::{
    addr16, maglev, maps, Backend as BpfBackend, Flow, FlowKey4, FlowKey6, HopCache, NatFlow, RingElem, ServiceKey,
    ServiceValue, BE_F_DOWN, MAX_BACKENDS, MAX_POOL, MAX_RINGS, MAX_SERVICES, MAX_SNATS, NAT_EMPTY, NAT_PORTS,
    RING_ELEMS, RING_EMPTY16, RING_PACK, RING_SIZE, SVC_F_DSR, SVC_F_HASH_5TUPLE, SVC_F_NAT, SVC_F_SNAT,
};

use super::{
    bpf::{map_err, map_of, DataPlaneError},
    service_table::ServiceTable,
    sync::directory::{Directory, SyncService},
};
use crate::{
    config::{Backend, Config, Mode, Service},
    model::{BackendRef, BackendStates},
};

/// The service table key of a snat address: its address with port and
/// protocol 0.
fn snat_key(ip: IpAddr) -> ServiceKey {
    let (addr, family) = addr16(ip);
    ServiceKey {
        addr,
        port_be: 0,
        proto: 0,
        family,
    }
}

pub fn service_key(s: &Service) -> ServiceKey {
    let proto = s.protocol.number();
    match s.vip {
        IpAddr::V4(a) => ServiceKey::v4(a.octets(), s.port, proto),
        IpAddr::V6(a) => ServiceKey::v6(a.octets(), s.port, proto),
    }
}

/// The map manager's bookkeeping as saved between runs (ids are what the
/// maps refer to; ring contents are rewritten after a restore).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    pub services: Vec<SavedService>,
    /// (service, backend, id)
    pub backends: Vec<(String, String, u32)>,
    /// (snat address, `NAT_FLOWS` region)
    #[serde(default)]
    pub snats: Vec<(IpAddr, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedService {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
    pub name: String,
    pub id: u32,
    pub pair: Option<u32>,
    pub live: u32,
}

/// What is installed for one service.
struct Installed {
    name: String,
    /// Counter slot (SERVICE_STATS index).
    id: u32,
    /// Ring pair index (rings `2*pair` and `2*pair+1`), L4 services only.
    pair: Option<u32>,
    /// Which ring of the pair is live (0 or 1).
    live: u32,
    /// What each ring of the pair holds, to write only the slots that change.
    rings: [Vec<RingElem>; 2],
    /// nat: the snat pool (set by every apply).
    snat: Vec<IpAddr>,
}

/// The user-space mirror of the maps.
#[derive(Default)]
pub struct MapManager {
    services: StdHashMap<ServiceKey, Installed>,
    backends: StdHashMap<BackendRef, u32>,
    /// snat address → its region of `NAT_FLOWS`.
    snats: StdHashMap<IpAddr, u32>,
    table: ServiceTable,
}

/// Lowest index in `0..limit` not in `used`.
fn free_index(used: impl Iterator<Item = u32>, limit: u32, what: &'static str) -> Result<u32, DataPlaneError> {
    let used: HashSet<u32> = used.collect();
    (0..limit).find(|i| !used.contains(i)).ok_or(DataPlaneError::Map {
        name: what,
        reason: format!("all {limit} entries in use"),
    })
}

/// The flow log rate the program compares a random number with: 0 off,
/// else one new flow in `sample`.
fn log_rate(enabled: bool, sample: u32) -> u32 {
    if enabled {
        u32::MAX / sample.max(1)
    } else {
        0
    }
}

/// Which backends take new flows: the normal ones that are up, not drained,
/// with weight > 0, else (HAProxy's backup rule) such backups.
pub fn eligible<'a>(svc: &'a Service, states: &BackendStates) -> Vec<&'a Backend> {
    let up = |b: &&Backend| b.weight > 0 && states.takes_new_flows(&(svc.name.clone(), b.name.clone()));
    let normal: Vec<&Backend> = svc.backends.iter().filter(|b| !b.backup).filter(up).collect();
    if !normal.is_empty() {
        return normal;
    }
    svc.backends.iter().filter(|b| b.backup).filter(up).collect()
}

impl MapManager {
    pub fn save(&self) -> Saved {
        Saved {
            services: self
                .services
                .iter()
                .map(|(k, i)| SavedService {
                    addr: k.addr,
                    port_be: k.port_be,
                    proto: k.proto,
                    family: k.family,
                    name: i.name.clone(),
                    id: i.id,
                    pair: i.pair,
                    live: i.live,
                })
                .collect(),
            backends: self
                .backends
                .iter()
                .map(|((s, b), id)| (s.clone(), b.clone(), *id))
                .collect(),
            snats: self.snats.iter().map(|(a, r)| (*a, *r)).collect(),
        }
    }

    /// Takes over maps a previous run programmed. Ring contents are not
    /// known, so the next write of a ring writes it whole.
    pub fn restore(saved: Saved) -> MapManager {
        MapManager {
            services: saved
                .services
                .into_iter()
                .map(|s| {
                    let key = ServiceKey {
                        addr: s.addr,
                        port_be: s.port_be,
                        proto: s.proto,
                        family: s.family,
                    };
                    let inst = Installed {
                        name: s.name,
                        id: s.id,
                        pair: s.pair,
                        live: s.live,
                        rings: [Vec::new(), Vec::new()],
                        snat: Vec::new(),
                    };
                    (key, inst)
                })
                .collect(),
            backends: saved.backends.into_iter().map(|(s, b, id)| ((s, b), id)).collect(),
            snats: saved.snats.into_iter().collect(),
            table: ServiceTable::default(),
        }
    }

    /// Makes the maps match `cfg` and `states`: out backends lose their
    /// flows, drained ones and those with weight 0 keep them but get no new
    /// ones.
    /// `default_snat` gives the source address for nat services without one.
    pub fn apply(
        &mut self,
        ebpf: &mut Ebpf,
        cfg: &Config,
        states: &BackendStates,
        default_snat: &dyn Fn(IpAddr) -> Option<IpAddr>,
    ) -> Result<(), DataPlaneError> {
        // 1. Backends: ids for new ones, entries (re)written.
        let mut wanted_backends = HashSet::new();
        for s in &cfg.services {
            for b in &s.backends {
                wanted_backends.insert((s.name.clone(), b.name.clone()));
            }
        }
        let mut ids = Vec::new();
        let mut bmap: Array<&mut MapData, BpfBackend> = map_of(ebpf, maps::BACKENDS)?;
        for s in cfg.services.iter().filter(|s| s.mode != Mode::Http) {
            for b in &s.backends {
                let r = (s.name.clone(), b.name.clone());
                let id = match self.backends.get(&r) {
                    Some(id) => *id,
                    None => {
                        let id = free_index(self.backends.values().copied(), MAX_BACKENDS, maps::BACKENDS)?;
                        self.backends.insert(r.clone(), id);
                        id
                    }
                };
                let (addr, family) = addr16(b.address.ip());
                let entry = BpfBackend {
                    addr,
                    port_be: b.address.port().to_be(),
                    family,
                    flags: if states.out.contains(&r) { BE_F_DOWN } else { 0 },
                    _pad: 0,
                };
                bmap.set(id, entry, 0).map_err(|e| map_err(maps::BACKENDS, &e))?;
                ids.push(id);
            }
        }
        // Backends gone from the config: out at once, their flows removed,
        // then their ids are free again.
        let gone: Vec<(BackendRef, u32)> = self
            .backends
            .iter()
            .filter(|(r, _)| !wanted_backends.contains(*r))
            .map(|(r, id)| (r.clone(), *id))
            .collect();
        for (_, id) in &gone {
            let entry = BpfBackend {
                flags: BE_F_DOWN,
                ..Default::default()
            };
            bmap.set(*id, entry, 0).map_err(|e| map_err(maps::BACKENDS, &e))?;
        }
        clear_hops(ebpf, &ids)?;
        if !gone.is_empty() {
            let ids: HashSet<u32> = gone.iter().map(|(_, id)| *id).collect();
            self.sweep_flows(ebpf, &ids)?;
            for (r, _) in gone {
                self.backends.remove(&r);
            }
        }

        // 2. Services no longer configured are forgotten (and leave the
        // table with the publish below).
        let wanted: StdHashMap<ServiceKey, &Service> = cfg.services.iter().map(|s| (service_key(s), s)).collect();
        self.services.retain(|k, _| wanted.contains_key(k));

        // 3. Services: their rings, then their table entries.
        let mut entries = Vec::new();
        let mut snats_used = HashSet::new();
        let mut rates = Vec::new();
        for (key, svc) in wanted {
            let (value, snat) = self.apply_service(ebpf, key, svc, states, default_snat)?;
            entries.push((key, value));
            snats_used.extend(snat);
            rates.push((value.id, log_rate(svc.log.enabled, svc.log.sample)));
        }
        // Before the table names a new service.
        let mut sample: Array<&mut MapData, u32> = map_of(ebpf, maps::LOG_SAMPLE)?;
        for (slot, r) in rates {
            sample.set(slot, r, 0).map_err(|e| map_err(maps::LOG_SAMPLE, &e))?;
        }
        let unused: Vec<(IpAddr, u32)> = self
            .snats
            .iter()
            .filter(|(a, _)| !snats_used.contains(*a))
            .map(|(a, r)| (*a, *r))
            .collect();
        for (addr, _) in &unused {
            self.snats.remove(addr);
        }
        let mut addrs: Array<&mut MapData, [u8; 16]> = map_of(ebpf, maps::SNAT_ADDRS)?;
        for (addr, region) in &self.snats {
            addrs
                .set(*region, addr16(*addr).0, 0)
                .map_err(|e| map_err(maps::SNAT_ADDRS, &e))?;
            let mut value = ServiceValue {
                flags: SVC_F_SNAT,
                snat_count: 1,
                ..Default::default()
            };
            value.snat_regions[0] = *region as u8;
            entries.push((snat_key(*addr), value));
        }
        self.table.publish(ebpf, entries)?;

        // 4. snat addresses no service uses any more: their flows cleared
        // so the region starts empty when it is reused.
        for (_, region) in unused {
            clear_nat_flows(ebpf, region, |_| true)?;
        }
        Ok(())
    }

    /// The `NAT_FLOWS` region of a snat address, allocated the first time.
    fn snat_region(&mut self, addr: IpAddr) -> Result<u32, DataPlaneError> {
        if let Some(r) = self.snats.get(&addr) {
            return Ok(*r);
        }
        let region = free_index(self.snats.values().copied(), MAX_SNATS, maps::NAT_FLOWS)?;
        self.snats.insert(addr, region);
        Ok(region)
    }

    /// Installs one service's rings; returns its table entry and its snat
    /// address (nat services).
    fn apply_service(
        &mut self,
        ebpf: &mut Ebpf,
        key: ServiceKey,
        svc: &Service,
        states: &BackendStates,
        default_snat: &dyn Fn(IpAddr) -> Option<IpAddr>,
    ) -> Result<(ServiceValue, Vec<IpAddr>), DataPlaneError> {
        let l4 = svc.mode != Mode::Http;
        if !self.services.contains_key(&key) {
            let id = free_index(self.services.values().map(|s| s.id), MAX_SERVICES, maps::SERVICES)?;
            self.services.insert(
                key,
                Installed {
                    name: svc.name.clone(),
                    id,
                    pair: None,
                    live: 1,
                    rings: [Vec::new(), Vec::new()],
                    snat: Vec::new(),
                },
            );
        }
        if l4 && self.services[&key].pair.is_none() {
            let pair = free_index(
                self.services.values().filter_map(|s| s.pair),
                MAX_RINGS / 2,
                maps::RINGS,
            )?;
            self.services.get_mut(&key).expect("inserted above").pair = Some(pair);
        }
        let mut value = ServiceValue {
            id: self.services[&key].id,
            flags: match svc.mode {
                Mode::Nat => SVC_F_NAT,
                Mode::Dsr => SVC_F_DSR,
                Mode::Http => 0,
            },
            ring: 0,
            snat_count: 0,
            snat_regions: [0; MAX_POOL],
        };
        if svc.balance == "5tuple" {
            value.flags |= SVC_F_HASH_5TUPLE;
        }
        let mut snat = svc.snat.clone();
        if svc.mode == Mode::Nat && snat.is_empty() {
            snat.extend(default_snat(svc.vip));
            if snat.is_empty() {
                return Err(DataPlaneError::Config(format!(
                    "service {:?}: no address of the VIP's family on the XDP interface to use as snat: set `snat`",
                    svc.name
                )));
            }
        }
        for (j, addr) in snat.iter().enumerate() {
            value.snat_regions[j] = self.snat_region(*addr)? as u8;
        }
        value.snat_count = snat.len() as u32;
        self.services.get_mut(&key).expect("inserted above").snat = snat.clone();
        if l4 {
            let table = self.table(svc, states);
            let inst = self.services.get_mut(&key).expect("inserted above");
            let idle = 1 - inst.live;
            let ring = 2 * inst.pair.expect("set above") + idle;
            write_ring(ebpf, ring, &mut inst.rings[idle as usize], &table)?;
            inst.live = idle;
            value.ring = ring;
        }
        Ok((value, snat))
    }

    /// The Maglev table of a service for the current backend state.
    fn table(&self, svc: &Service, states: &BackendStates) -> Vec<u32> {
        let entries: Vec<maglev::Entry<'_>> = eligible(svc, states)
            .into_iter()
            .map(|b| maglev::Entry {
                name: &b.name,
                id: self.backends[&(svc.name.clone(), b.name.clone())],
                weight: b.weight,
            })
            .collect();
        maglev::build(&entries, RING_SIZE)
    }

    /// Deletes the flows of the given backends: dsr flows from both flow
    /// tables, full-NAT flows from every snat region (so their ports are
    /// free again).
    fn sweep_flows(&self, ebpf: &mut Ebpf, ids: &HashSet<u32>) -> Result<(), DataPlaneError> {
        let mut n = sweep::<FlowKey4>(ebpf, maps::FLOWS, ids)? + sweep::<FlowKey6>(ebpf, maps::FLOWS6, ids)?;
        for region in self.snats.values() {
            n += clear_nat_flows(ebpf, *region, |f| ids.contains(&u32::from(f.backend)))?;
        }
        tracing::debug!(flows = n, "flows of removed backends deleted");
        Ok(())
    }

    /// Backend id of a configured backend, if installed.
    pub fn backend_id(&self, service: &str, backend: &str) -> Option<u32> {
        self.backends.get(&(service.to_string(), backend.to_string())).copied()
    }

    /// Counter slot of an installed service.
    pub fn service_slot(&self, key: &ServiceKey) -> Option<u32> {
        self.services.get(key).map(|s| s.id)
    }

    /// What the flow sync needs to name flows by address (`cfg` is what
    /// was just applied).
    pub fn directory(&self, cfg: &Config) -> Directory {
        let mut d = Directory {
            regions: self.snats.iter().map(|(a, r)| (*r, *a)).collect(),
            ..Default::default()
        };
        for svc in cfg.services.iter().filter(|s| s.mode != Mode::Http) {
            let key = service_key(svc);
            let Some(inst) = self.services.get(&key) else { continue };
            let mut entry = SyncService {
                slot: inst.id,
                snat: inst
                    .snat
                    .iter()
                    .filter_map(|a| Some((*a, *self.snats.get(a)?)))
                    .collect(),
                backends: StdHashMap::new(),
            };
            for b in &svc.backends {
                if let Some(id) = self.backend_id(&svc.name, &b.name) {
                    let addr = (b.address.ip(), b.address.port());
                    entry.backends.insert(addr, id);
                    d.backends.insert(id, addr);
                }
            }
            d.services.insert(key, entry);
        }
        d
    }

    /// Names of the installed services (for logs and tests).
    pub fn service_names(&self) -> Vec<String> {
        self.services.values().map(|s| s.name.clone()).collect()
    }
}

/// Deletes the entries of flow table `name` that point at one of `ids`;
/// returns how many.
fn sweep<K: aya::Pod>(ebpf: &mut Ebpf, name: &'static str, ids: &HashSet<u32>) -> Result<usize, DataPlaneError> {
    let mut flows: HashMap<&mut MapData, K, Flow> = map_of(ebpf, name)?;
    let doomed: Vec<K> = flows
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| ids.contains(&v.backend))
        .map(|(k, _)| k)
        .collect();
    for k in &doomed {
        let _ = flows.remove(k);
    }
    Ok(doomed.len())
}

/// Empties the slots of snat region `region` whose flow `doomed` picks;
/// returns how many.
fn clear_nat_flows(ebpf: &mut Ebpf, region: u32, doomed: impl Fn(&NatFlow) -> bool) -> Result<usize, DataPlaneError> {
    let name = maps::NAT_FLOWS;
    let mut flows: Array<&mut MapData, NatFlow> = map_of(ebpf, name)?;
    let mut n = 0;
    for i in region * NAT_PORTS..(region + 1) * NAT_PORTS {
        let f = flows.get(&i, 0).map_err(|e| map_err(name, &e))?;
        if f.state != NAT_EMPTY && doomed(&f) {
            flows.set(i, NatFlow::default(), 0).map_err(|e| map_err(name, &e))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Forgets the cached next hops of these backends on every CPU, so a changed
/// address is routed afresh at once.
fn clear_hops(ebpf: &mut Ebpf, ids: &[u32]) -> Result<(), DataPlaneError> {
    let mut hops: PerCpuArray<&mut MapData, HopCache> = map_of(ebpf, maps::HOPS)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataPlaneError::Map {
        name: maps::HOPS,
        reason: e.to_string(),
    })?;
    for id in ids {
        let empty = PerCpuValues::try_from(vec![HopCache::default(); cpus]).map_err(|e| map_err(maps::HOPS, &e))?;
        hops.set(*id, empty, 0).map_err(|e| map_err(maps::HOPS, &e))?;
    }
    Ok(())
}

/// Writes `table` into ring `ring`, only the slots that differ from what the
/// ring is known to hold (`held`, updated).
fn write_ring(ebpf: &mut Ebpf, ring: u32, held: &mut Vec<RingElem>, table: &[u32]) -> Result<(), DataPlaneError> {
    let mut rings: Array<&mut MapData, RingElem> = map_of(ebpf, maps::RINGS)?;
    // Ids are below MAX_BACKENDS and RING_EMPTY narrows to RING_EMPTY16.
    let elems: Vec<RingElem> = table
        .chunks(RING_PACK as usize)
        .map(|c| std::array::from_fn(|i| c.get(i).map_or(RING_EMPTY16, |id| *id as u16)))
        .collect();
    debug_assert_eq!(elems.len(), RING_ELEMS as usize);
    let base = ring * RING_ELEMS;
    for (i, e) in elems.iter().enumerate() {
        if held.get(i) != Some(e) {
            rings
                .set(base + i as u32, *e, 0)
                .map_err(|e| map_err(maps::RINGS, &e))?;
        }
    }
    *held = elems;
    Ok(())
}
