//! Picking a server for a request that persistence did not place:
//! weighted round robin (smooth, as nginx), leastconn, and consistent
//! hashing (a Maglev ring over the eligible servers) of the client address,
//! the URI path or a header.

use std::{
    net::IpAddr,
    sync::{atomic::Ordering, Arc, Mutex},
};

use lb_common::{hash, maglev};

use super::counters::BackendCounters;

/// The balancing algorithm of an http service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Algo {
    RoundRobin,
    LeastConn,
    Source,
    Uri,
    /// Hash of this request header; round robin when it is absent.
    Hdr(String),
}

impl Algo {
    pub fn parse(s: &str) -> Algo {
        match s {
            "leastconn" => Algo::LeastConn,
            "source" => Algo::Source,
            "uri" => Algo::Uri,
            s if s.starts_with("hdr(") && s.ends_with(')') => Algo::Hdr(s[4..s.len() - 1].to_ascii_lowercase()),
            _ => Algo::RoundRobin,
        }
    }
}

/// What a request offers the hash-based algorithms.
pub struct Key<'a> {
    pub client: IpAddr,
    pub path: &'a str,
    pub header: Option<&'a str>,
}

/// One server as the balancer sees it.
#[derive(Debug)]
pub struct Slot {
    /// Shared, not copied, by each access line that names it.
    pub name: Arc<str>,
    pub weight: u32,
    /// Its counters; leastconn reads the requests in flight.
    pub counters: Arc<BackendCounters>,
}

#[derive(Default)]
struct Ring {
    /// The eligible set the ring was built for.
    members: Vec<usize>,
    table: Vec<u32>,
}

/// Per-service balancing state.
pub struct Balancer {
    algo: Algo,
    /// Smooth weighted round robin: current weight per server.
    current: Mutex<Vec<i64>>,
    ring: Mutex<Ring>,
}

/// Ring size for L7 hashing: a prime well above the servers of a service.
const RING: u32 = 4099;

fn fnv(s: &str) -> u32 {
    s.bytes()
        .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

impl Balancer {
    pub fn new(algo: Algo, servers: usize) -> Balancer {
        Balancer {
            algo,
            current: Mutex::new(vec![0; servers]),
            ring: Mutex::new(Ring::default()),
        }
    }

    /// The request header `hdr(NAME)` hashes, if that is the algorithm.
    pub fn header(&self) -> Option<&str> {
        match &self.algo {
            Algo::Hdr(h) => Some(h),
            _ => None,
        }
    }

    /// Picks among `eligible` (indexes into `slots`, all with weight > 0).
    pub fn pick(&self, slots: &[Slot], eligible: &[usize], key: &Key<'_>) -> Option<usize> {
        if eligible.is_empty() {
            return None;
        }
        let h = match &self.algo {
            Algo::RoundRobin => return Some(self.round_robin(slots, eligible)),
            Algo::LeastConn => return Some(Self::least_conn(slots, eligible)),
            Algo::Source => {
                let mut a = [0u8; 16];
                match key.client {
                    IpAddr::V4(v) => a[..4].copy_from_slice(&v.octets()),
                    IpAddr::V6(v) => a = v.octets(),
                }
                hash::source_hash(&a)
            }
            Algo::Uri => fnv(key.path.split('?').next().unwrap_or("")),
            Algo::Hdr(_) => match key.header {
                Some(v) => fnv(v),
                None => return Some(self.round_robin(slots, eligible)),
            },
        };
        Some(self.hashed(slots, eligible, h))
    }

    fn round_robin(&self, slots: &[Slot], eligible: &[usize]) -> usize {
        let mut cur = self.current.lock().expect("balancer lock");
        let total: i64 = eligible.iter().map(|i| i64::from(slots[*i].weight)).sum();
        let mut best = eligible[0];
        for &i in eligible {
            cur[i] += i64::from(slots[i].weight);
            if cur[i] > cur[best] {
                best = i;
            }
        }
        cur[best] -= total;
        best
    }

    fn least_conn(slots: &[Slot], eligible: &[usize]) -> usize {
        // Fewest in flight per unit of weight; compare cross-multiplied.
        *eligible
            .iter()
            .min_by(|a, b| {
                let (sa, sb) = (&slots[**a], &slots[**b]);
                let la = sa.counters.active.load(Ordering::Relaxed) as u64 * u64::from(sb.weight);
                let lb = sb.counters.active.load(Ordering::Relaxed) as u64 * u64::from(sa.weight);
                la.cmp(&lb)
            })
            .expect("eligible is not empty")
    }

    fn hashed(&self, slots: &[Slot], eligible: &[usize], h: u32) -> usize {
        let mut ring = self.ring.lock().expect("balancer lock");
        if ring.members != eligible {
            let entries: Vec<maglev::Entry<'_>> = eligible
                .iter()
                .map(|i| maglev::Entry {
                    name: &slots[*i].name,
                    id: *i as u32,
                    weight: slots[*i].weight,
                })
                .collect();
            ring.table = maglev::build(&entries, RING);
            ring.members = eligible.to_vec();
        }
        ring.table[(h % RING) as usize] as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(weights: &[u32]) -> Vec<Slot> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Slot {
                name: format!("s{i}").into(),
                weight: *w,
                counters: Arc::default(),
            })
            .collect()
    }

    fn key(path: &str) -> Key<'_> {
        Key {
            client: "127.0.0.1".parse().unwrap(),
            path,
            header: None,
        }
    }

    #[test]
    fn weighted_round_robin_is_smooth_and_proportional() {
        let s = slots(&[5, 1, 1]);
        let b = Balancer::new(Algo::RoundRobin, 3);
        let picks: Vec<usize> = (0..7).map(|_| b.pick(&s, &[0, 1, 2], &key("/")).unwrap()).collect();
        // nginx's smooth WRR for 5:1:1.
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn least_conn_prefers_idle_per_weight() {
        let s = slots(&[1, 2]);
        s[0].counters.active.store(1, Ordering::Relaxed);
        s[1].counters.active.store(1, Ordering::Relaxed);
        let b = Balancer::new(Algo::LeastConn, 2);
        assert_eq!(b.pick(&s, &[0, 1], &key("/")), Some(1), "1/2 beats 1/1");
        s[1].counters.active.store(3, Ordering::Relaxed);
        assert_eq!(b.pick(&s, &[0, 1], &key("/")), Some(0));
    }

    #[test]
    fn uri_hash_ignores_the_query_and_is_stable() {
        let s = slots(&[1, 1, 1]);
        let b = Balancer::new(Algo::Uri, 3);
        let a = b.pick(&s, &[0, 1, 2], &key("/a/b?x=1"));
        assert_eq!(a, b.pick(&s, &[0, 1, 2], &key("/a/b?y=2")));
        let spread: std::collections::HashSet<usize> = (0..50)
            .filter_map(|i| b.pick(&s, &[0, 1, 2], &key(&format!("/p{i}"))))
            .collect();
        assert_eq!(spread.len(), 3);
    }

    #[test]
    fn hdr_falls_back_to_round_robin() {
        let s = slots(&[1, 1]);
        let b = Balancer::new(Algo::parse("hdr(X-User)"), 2);
        let k = |h| Key {
            client: "127.0.0.1".parse().unwrap(),
            path: "/",
            header: h,
        };
        let a = b.pick(&s, &[0, 1], &k(Some("alice")));
        assert_eq!(a, b.pick(&s, &[0, 1], &k(Some("alice"))));
        let rr: Vec<usize> = (0..4).map(|_| b.pick(&s, &[0, 1], &k(None)).unwrap()).collect();
        assert_eq!(rr, vec![0, 1, 0, 1]);
    }
}
