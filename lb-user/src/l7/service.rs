//! One http service as the proxy runs it: its backends, pools, balancers,
//! persistence settings and counters, rebuilt on each reload.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Instant,
};

use super::{
    appsession::Table,
    balance::{Algo, Balancer, Key, Slot},
    cookie,
    counters::{BackendCounters, BackendSnapshot, ServiceCounters, ServiceSnapshot},
    peers,
    pool::{Pool, Secure},
    queue::{Limits, Permit, Queue, Wants},
};
use hyper::header::HeaderValue;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::{
    config::{CookieMode, Service as ServiceCfg},
    model::BackendStates,
    tls::{self, TlsError},
};

/// Backend states shared with the daemon (health checks, operator): a
/// snapshot each request takes cheaply, replaced whole on a change.
pub type States = Arc<RwLock<Arc<BackendStates>>>;

/// What outlives a reload: counters and appsession tables, by name.
#[derive(Default)]
pub(super) struct Kept {
    pub(super) backends: HashMap<(String, String), Arc<BackendCounters>>,
    pub(super) services: HashMap<String, Arc<ServiceCounters>>,
    /// Per service: the appsession cookie name and its table.
    pub(super) tables: HashMap<String, (String, Arc<Table>)>,
    /// Per service: requests waiting for a backend under maxconn.
    pub(super) queues: HashMap<String, Arc<Queue>>,
}

/// One http service as the proxy runs it.
pub struct Service {
    pub(super) cfg: ServiceCfg,
    pub(super) slots: Vec<Slot>,
    pub(super) pools: Vec<Pool>,
    /// Backend indexes per pool: [0] the service's own backends, then one
    /// per group, in `cfg.groups` order.
    pub(super) members: Vec<Vec<usize>>,
    pub(super) balancers: Vec<Balancer>,
    /// The pool each of `cfg.routes` sends to.
    pub(super) route_pools: Vec<usize>,
    /// Cookie persistence applies in the service's own pool, and in a group
    /// only if one of its servers has a cookie value (a group without any
    /// is like a HAProxy backend without a `cookie` line).
    pub(super) cookie_pools: Vec<bool>,
    /// Per backend, the inserted cookie's Set-Cookie value when it does
    /// not change with time (no maxidle, no maxlife): made once, not per
    /// response.
    pub(super) inserted: Vec<Option<HeaderValue>>,
    pub(super) counters: Arc<ServiceCounters>,
    pub(super) sessions: Option<Arc<Table>>,
    /// Where learned sessions go to the peers, if there are any.
    pub(super) peers: Option<peers::Outbox>,
    /// Per-backend state flags for the last states snapshot seen.
    pub(super) flags: std::sync::Mutex<Option<(Arc<BackendStates>, Flags)>>,
    /// TLS termination: new connections take the acceptor of the service
    /// as it is when they come.
    pub(super) tls: Option<TlsAcceptor>,
    /// Backends' maxconn and the requests waiting for them.
    pub(super) limits: Limits,
    pub(super) queue: Arc<Queue>,
    /// Names as access lines show them: the service (the frontend), and
    /// per pool the backend (the service, then its groups).
    pub(super) log_name: Arc<str>,
    pub(super) pool_names: Vec<Arc<str>>,
}

/// The TLS set-up of a service, made before it is switched to (this is
/// what can fail).
#[derive(Default)]
pub(super) struct ServiceTls {
    acceptor: Option<TlsAcceptor>,
    /// Per backend, in `cfg.backends` order.
    backends: Vec<Option<Secure>>,
}

impl ServiceTls {
    pub(super) fn new(cfg: &ServiceCfg) -> Result<ServiceTls, TlsError> {
        let acceptor = match &cfg.tls {
            Some(t) => Some(TlsAcceptor::from(tls::server_config(
                &cfg.name,
                &t.certs,
                &t.alpn,
                t.min_version,
            )?)),
            None => None,
        };
        let backends = cfg
            .backends
            .iter()
            .map(|b| {
                let Some(t) = &b.tls else { return Ok(None) };
                Ok(Some(Secure {
                    connector: TlsConnector::from(tls::client_config(&t.verify, t.sni.is_some())?),
                    sni: t.sni.as_deref().map(Arc::from),
                }))
            })
            .collect::<Result<_, TlsError>>()?;
        Ok(ServiceTls { acceptor, backends })
    }
}

/// Per backend: [`OUT`] and [`DRAINED`] bits.
pub(super) type Flags = Arc<[u8]>;
/// Down or in maintenance: no traffic.
pub(super) const OUT: u8 = 1;
/// Drained by the operator: persistent traffic only.
pub(super) const DRAINED: u8 = 2;

/// How the server of a request was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    Cookie,
    AppSession,
    Balance,
    Redispatch,
}

impl Service {
    pub(super) fn new(cfg: &ServiceCfg, kept: &mut Kept, peers: Option<peers::Outbox>, mut tls: ServiceTls) -> Service {
        let algo = Algo::parse(&cfg.balance);
        let n = cfg.backends.len();
        let mut members = vec![Vec::new(); 1 + cfg.groups.len()];
        for (i, b) in cfg.backends.iter().enumerate() {
            let pool = b
                .group
                .as_ref()
                .and_then(|g| cfg.groups.iter().position(|x| x == g))
                .map_or(0, |p| p + 1);
            members[pool].push(i);
        }
        let cookie_pools = members
            .iter()
            .enumerate()
            .map(|(p, m)| p == 0 || m.iter().any(|i| cfg.backends[*i].cookie.is_some()))
            .collect();
        let timeless = cfg
            .cookie
            .as_ref()
            .filter(|c| c.mode == CookieMode::Insert && c.maxidle.is_none() && c.maxlife.is_none());
        let inserted = cfg
            .backends
            .iter()
            .map(|b| HeaderValue::try_from(cookie::insert(timeless?, b.cookie.as_deref(), 0, None)).ok())
            .collect();
        let sessions = cfg.appsession.as_ref().map(|a| {
            let (name, table) = kept
                .tables
                .entry(cfg.name.clone())
                .or_insert_with(|| (a.cookie.clone(), Arc::new(Table::new(a))));
            if *name != a.cookie {
                *name = a.cookie.clone();
                *table = Arc::new(Table::new(a));
            }
            table.reconfigure(a);
            table.clone()
        });
        let counters = kept.services.entry(cfg.name.clone()).or_default().clone();
        let slots: Vec<Slot> = cfg
            .backends
            .iter()
            .map(|b| Slot {
                name: b.name.as_str().into(),
                weight: b.weight,
                counters: kept
                    .backends
                    .entry((cfg.name.clone(), b.name.clone()))
                    .or_default()
                    .clone(),
            })
            .collect();
        let limits = Limits {
            maxconn: cfg.backends.iter().map(|b| b.maxconn).collect(),
            counters: slots.iter().map(|s| s.counters.clone()).collect(),
        };
        Service {
            queue: kept
                .queues
                .entry(cfg.name.clone())
                .or_insert_with(|| Queue::new(counters.clone()))
                .clone(),
            limits,
            slots,
            pools: cfg
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let secure = tls.backends.get_mut(i).and_then(Option::take);
                    Pool::new(b.address, secure, b.send_proxy)
                })
                .collect(),
            balancers: members.iter().map(|_| Balancer::new(algo.clone(), n)).collect(),
            route_pools: cfg
                .routes
                .iter()
                .map(|r| cfg.groups.iter().position(|g| *g == r.group).map_or(0, |p| p + 1))
                .collect(),
            members,
            cookie_pools,
            inserted,
            log_name: cfg.name.as_str().into(),
            pool_names: std::iter::once(&cfg.name)
                .chain(&cfg.groups)
                .map(|n| n.as_str().into())
                .collect(),
            counters,
            sessions,
            peers,
            flags: Default::default(),
            tls: tls.acceptor,
            cfg: cfg.clone(),
        }
    }

    /// The state of each backend in `st`, computed once per snapshot.
    pub(super) fn flags(&self, st: &Arc<BackendStates>) -> Flags {
        let mut cache = self.flags.lock().expect("flags lock");
        if let Some((seen, f)) = &*cache {
            if Arc::ptr_eq(seen, st) {
                return f.clone();
            }
        }
        let f: Flags = self
            .cfg
            .backends
            .iter()
            .map(|b| {
                let k = (self.cfg.name.clone(), b.name.clone());
                (u8::from(st.out.contains(&k)) * OUT) | (u8::from(st.drained.contains(&k)) * DRAINED)
            })
            .collect();
        *cache = Some((st.clone(), f.clone()));
        f
    }

    /// May take traffic at all (not down, not in maintenance).
    pub(super) fn usable(st: &[u8], i: usize) -> bool {
        st[i] & OUT == 0
    }

    /// Servers of `pool` that take new (balanced) traffic: the normal ones
    /// that are usable, not drained, with weight; else such backups.
    pub(super) fn eligible(&self, st: &[u8], pool: usize, except: &[usize]) -> Vec<usize> {
        let ok = |i: &usize| self.cfg.backends[*i].weight > 0 && st[*i] == 0 && !except.contains(i);
        let members = &self.members[pool];
        let normal: Vec<usize> = members
            .iter()
            .copied()
            .filter(|i| !self.cfg.backends[*i].backup)
            .filter(ok)
            .collect();
        if !normal.is_empty() {
            return normal;
        }
        members
            .iter()
            .copied()
            .filter(|i| self.cfg.backends[*i].backup)
            .filter(ok)
            .collect()
    }

    /// The pool a request goes to: the first matching route's group, or
    /// the service's own backends when no route matches or the group has
    /// no usable server (HAProxy's `nbsrv(group) lt 1` fallback).
    pub(super) fn route(&self, st: &[u8], path: &str, host: Option<&str>) -> usize {
        let Some(r) = self.cfg.routes.iter().position(|r| r.matches(path, host)) else {
            return 0;
        };
        let pool = self.route_pools[r];
        if self.members[pool].iter().any(|i| Self::usable(st, *i)) {
            pool
        } else {
            0
        }
    }

    /// A place at a server under `maxconn` for a request of `pool`: at
    /// `target` if it has room; else a persistent request (`tied`) waits
    /// for its server, and a balanced one goes to another eligible server
    /// with room, or waits for the first that frees. Err: it waited
    /// `timeout_queue`, with the place in the queue it had.
    pub(super) async fn place(
        &self,
        st: &[u8],
        pool: usize,
        target: usize,
        tied: bool,
        key: &Key<'_>,
    ) -> Result<Permit, u64> {
        if let Some(p) = self.queue.take_now(&self.limits, &[target]) {
            return Ok(p);
        }
        let within = self.cfg.http.timeout_queue;
        if tied {
            return self.queue.wait(&self.limits, Wants::One(target), within).await;
        }
        let eligible = self.eligible(st, pool, &[]);
        let room: Vec<usize> = eligible.iter().copied().filter(|i| self.limits.has_room(*i)).collect();
        if let Some(p) = self.balancers[pool]
            .pick(&self.slots, &room, key)
            .and_then(|t| self.queue.take_now(&self.limits, &[t]))
        {
            return Ok(p);
        }
        self.queue.wait(&self.limits, Wants::Any(eligible), within).await
    }

    /// Counters for reports.
    pub fn snapshot(&self) -> (ServiceSnapshot, Vec<(String, BackendSnapshot)>) {
        let sessions = self.sessions.as_ref().map_or(0, |t| t.live(Instant::now()));
        (
            self.counters.snapshot(sessions),
            self.slots
                .iter()
                .map(|s| (s.name.to_string(), s.counters.snapshot()))
                .collect(),
        )
    }
}
