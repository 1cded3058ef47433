//! Flow logs of L4 services (`[service.log]`): the XDP program writes a
//! record of each sampled new flow (its backend, or why it was dropped)
//! into `FLOW_LOG`; this reads them every few milliseconds and queues
//! them as access lines, named by the config that was applied last.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    Ebpf,
};
use lb_common::{maps, FlowLogEvent, FAMILY_V4, FLOW_NO_BACKEND, FLOW_NO_PORT};
use tokio::task::JoinHandle;

use super::{
    bpf::{map_err, DataPlaneError},
    map_manager::{service_key, MapManager},
};
use crate::{
    config::{Config, LineFormat, Mode},
    logging::{self, Entry, FlowOutcome, FlowRecord},
};

/// How often the ring is read (the program does not wake the reader).
const POLL: Duration = Duration::from_millis(10);

/// What the records' numbers name.
#[derive(Default)]
pub struct Names {
    /// Counter slot → the service's name and line format.
    services: HashMap<u32, (Arc<str>, LineFormat)>,
    /// Backend id → its name.
    backends: HashMap<u32, Arc<str>>,
}

impl Names {
    /// The names of `cfg`'s logged L4 services as `mm` installed them.
    pub fn of(mm: &MapManager, cfg: &Config) -> Names {
        let mut n = Names::default();
        for s in cfg.services.iter().filter(|s| s.mode != Mode::Http && s.log.enabled) {
            let Some(slot) = mm.service_slot(&service_key(s)) else {
                continue;
            };
            n.services.insert(slot, (s.name.as_str().into(), s.log.format));
            for b in &s.backends {
                if let Some(id) = mm.backend_id(&s.name, &b.name) {
                    n.backends.insert(id, b.name.as_str().into());
                }
            }
        }
        n
    }

    fn record(&self, e: &FlowLogEvent, date: SystemTime) -> Option<FlowRecord> {
        let (service, format) = self.services.get(&e.service)?;
        let ip = if e.family == FAMILY_V4 {
            IpAddr::V4(Ipv4Addr::new(e.src[0], e.src[1], e.src[2], e.src[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(e.src))
        };
        let outcome = match e.outcome {
            FLOW_NO_BACKEND => FlowOutcome::NoBackend,
            FLOW_NO_PORT => FlowOutcome::NoPort,
            _ => FlowOutcome::Forwarded,
        };
        Some(FlowRecord {
            format: *format,
            client: SocketAddr::new(ip, u16::from_be(e.sport_be)),
            date,
            service: service.clone(),
            backend: (outcome == FlowOutcome::Forwarded)
                .then(|| self.backends.get(&e.backend).cloned())
                .flatten(),
            outcome,
        })
    }
}

/// Reads the records into the access log until dropped.
pub struct Reader(JoinHandle<()>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Reader {
    /// Takes the program's ring (outside a tokio runtime: nothing to do).
    pub fn start(ebpf: &mut Ebpf, names: Arc<RwLock<Names>>) -> Result<Option<Reader>, DataPlaneError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Ok(None);
        }
        let take = |ebpf: &mut Ebpf, name| {
            ebpf.take_map(name).ok_or(DataPlaneError::Map {
                name,
                reason: "not in the object".into(),
            })
        };
        let ring = RingBuf::try_from(take(ebpf, maps::FLOW_LOG)?).map_err(|e| map_err(maps::FLOW_LOG, &e))?;
        let lost: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(take(ebpf, maps::FLOW_LOG_LOST)?).map_err(|e| map_err(maps::FLOW_LOG_LOST, &e))?;
        Ok(Some(Reader(tokio::spawn(read(ring, lost, names)))))
    }
}

async fn read(mut ring: RingBuf<MapData>, lost: PerCpuArray<MapData, u64>, names: Arc<RwLock<Names>>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost_before = 0;
    loop {
        tick.tick().await;
        let now = SystemTime::now();
        let names = names.read().expect("names lock");
        while let Some(item) = ring.next() {
            if item.len() < size_of::<FlowLogEvent>() {
                continue;
            }
            // SAFETY: the program writes whole events; read unaligned as
            // the ring promises only 8 bytes.
            let e = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowLogEvent>()) };
            if let Some(r) = names.record(&e, now) {
                logging::push(Entry::Flow(Box::new(r)));
            }
        }
        drop(names);
        let lost_now: u64 = lost.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(lost_before);
        logging::count_dropped(lost_now.saturating_sub(lost_before));
        lost_before = lost_now;
    }
}
