//! The L7 proxy for `mode = "http"` services: HTTP/1.1 (keep-alive both
//! sides) and HTTP/2 from clients (h2c), HAProxy's cookie persistence and
//! balancing, retries and redispatch, X-Forwarded-For, monitor URI.
//! Runs with or without the XDP tier: an http-only config needs no BPF.

pub mod appsession;
pub mod balance;
pub mod cookie;
pub mod counters;
mod downstream;
mod framing;
mod parking;
pub mod peers;
pub mod pool;
mod serve;
mod upstream;
pub mod workers;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{atomic::Ordering, Arc, RwLock},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{
    body::Bytes,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    Method, Request, Response, StatusCode, Uri, Version,
};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    config::{Backend, Config, ConnectionMode, CookieMode, HttpCfg, Mode, Service as ServiceCfg},
    map_manager::BackendStates,
};
use appsession::Table;
use balance::{Algo, Balancer, Key, Slot};
use cookie::Judgement;
use counters::{bump, BackendCounters, BackendSnapshot, ServiceCounters, ServiceSnapshot};
use framing::Decode;
use pool::{Pool, SendError};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;
/// Backend states shared with the daemon (health checks, operator): a
/// snapshot each request takes cheaply, replaced whole on a change.
pub type States = Arc<RwLock<Arc<BackendStates>>>;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("service {service}: cannot listen on {addr}: {cause} (is the VIP local, or nonlocal_bind on?)")]
    Bind {
        service: String,
        addr: SocketAddr,
        cause: std::io::Error,
    },
}

/// What outlives a reload: counters and appsession tables, by name.
#[derive(Default)]
struct Kept {
    backends: HashMap<(String, String), Arc<BackendCounters>>,
    services: HashMap<String, Arc<ServiceCounters>>,
    /// Per service: the appsession cookie name and its table.
    tables: HashMap<String, (String, Arc<Table>)>,
}

/// One http service as the proxy runs it.
pub struct Service {
    cfg: ServiceCfg,
    slots: Vec<Slot>,
    pools: Vec<Pool>,
    /// Backend indexes per pool: [0] the service's own backends, then one
    /// per group, in `cfg.groups` order.
    members: Vec<Vec<usize>>,
    balancers: Vec<Balancer>,
    /// The pool each of `cfg.routes` sends to.
    route_pools: Vec<usize>,
    /// Cookie persistence applies in the service's own pool, and in a group
    /// only if one of its servers has a cookie value (a group without any
    /// is like a HAProxy backend without a `cookie` line).
    cookie_pools: Vec<bool>,
    counters: Arc<ServiceCounters>,
    sessions: Option<Arc<Table>>,
    /// Where learned sessions go to the peers, if there are any.
    peers: Option<peers::Outbox>,
    /// Per-backend state flags for the last states snapshot seen.
    flags: std::sync::Mutex<Option<(Arc<BackendStates>, Flags)>>,
}

/// Per backend: [`OUT`] and [`DRAINED`] bits.
type Flags = Arc<[u8]>;
/// Down or in maintenance: no traffic.
const OUT: u8 = 1;
/// Drained by the operator: persistent traffic only.
const DRAINED: u8 = 2;

/// How the server of a request was chosen (for the access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Cookie,
    AppSession,
    Balance,
    Redispatch,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Cookie => "cookie",
            Via::AppSession => "appsession",
            Via::Balance => "balance",
            Via::Redispatch => "redispatch",
        }
    }
}

impl Service {
    fn new(cfg: &ServiceCfg, kept: &mut Kept, peers: Option<peers::Outbox>) -> Service {
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
        Service {
            slots: cfg
                .backends
                .iter()
                .map(|b| Slot {
                    name: b.name.clone(),
                    weight: b.weight,
                    counters: kept
                        .backends
                        .entry((cfg.name.clone(), b.name.clone()))
                        .or_default()
                        .clone(),
                })
                .collect(),
            pools: cfg.backends.iter().map(|b| Pool::new(b.address)).collect(),
            balancers: members.iter().map(|_| Balancer::new(algo.clone(), n)).collect(),
            route_pools: cfg
                .routes
                .iter()
                .map(|r| cfg.groups.iter().position(|g| *g == r.group).map_or(0, |p| p + 1))
                .collect(),
            members,
            cookie_pools,
            counters: kept.services.entry(cfg.name.clone()).or_default().clone(),
            sessions,
            peers,
            flags: Default::default(),
            cfg: cfg.clone(),
        }
    }

    /// The state of each backend in `st`, computed once per snapshot.
    fn flags(&self, st: &Arc<BackendStates>) -> Flags {
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
    fn usable(st: &[u8], i: usize) -> bool {
        st[i] & OUT == 0
    }

    /// Servers of `pool` that take new (balanced) traffic: the normal ones
    /// that are usable, not drained, with weight; else such backups.
    fn eligible(&self, st: &[u8], pool: usize, except: &[usize]) -> Vec<usize> {
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
    fn route(&self, st: &[u8], path: &str, host: Option<&str>) -> usize {
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

    /// Counters for reports.
    pub fn snapshot(&self) -> (ServiceSnapshot, Vec<(String, BackendSnapshot)>) {
        let sessions = self.sessions.as_ref().map_or(0, |t| t.live(Instant::now()));
        (
            self.counters.snapshot(sessions),
            self.slots
                .iter()
                .map(|s| (s.name.clone(), s.counters.snapshot()))
                .collect(),
        )
    }
}

struct Listener {
    current: Arc<RwLock<Arc<Service>>>,
    task: JoinHandle<()>,
}

/// All http listeners of the daemon.
pub struct Proxy {
    listeners: HashMap<SocketAddr, Listener>,
    states: States,
    kept: Kept,
    peers: Option<peers::Outbox>,
}

impl Proxy {
    pub fn new(states: States, peers: Option<peers::Outbox>) -> Proxy {
        Proxy {
            listeners: HashMap::new(),
            states,
            kept: Kept::default(),
            peers,
        }
    }

    /// The running service named `name`.
    pub fn service(&self, name: &str) -> Option<Arc<Service>> {
        self.listeners.values().find_map(|l| {
            let s = l.current.read().expect("service lock").clone();
            (s.cfg.name == name).then_some(s)
        })
    }

    /// The appsession table of service `name`, if it has one.
    pub fn sessions(&self, name: &str) -> Option<Arc<Table>> {
        self.service(name)?.sessions.clone()
    }

    /// Listens for every http service of `cfg`: keeps the sockets of
    /// addresses that stay (their service is swapped for new requests),
    /// opens new ones, closes the ones no longer configured.
    pub fn apply(&mut self, cfg: &Config) -> Result<(), ProxyError> {
        let wanted: Vec<&ServiceCfg> = cfg.services.iter().filter(|s| s.mode == Mode::Http).collect();
        let addrs: Vec<SocketAddr> = wanted.iter().map(|s| SocketAddr::new(s.vip, s.port)).collect();
        // Bind everything new first, so a failure changes nothing.
        let mut fresh = Vec::new();
        for (s, addr) in wanted.iter().zip(&addrs) {
            if self.listeners.contains_key(addr) {
                continue;
            }
            let bind = || -> std::io::Result<TcpListener> {
                let l = std::net::TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            };
            let l = bind().map_err(|cause| ProxyError::Bind {
                service: s.name.clone(),
                addr: *addr,
                cause,
            })?;
            fresh.push((*addr, l));
        }
        self.listeners.retain(|addr, l| {
            let keep = addrs.contains(addr);
            if !keep {
                l.task.abort();
            }
            keep
        });
        // Counters and tables of services and backends that went are dropped.
        let names: Vec<&str> = wanted.iter().map(|s| s.name.as_str()).collect();
        let kept = &mut self.kept;
        kept.services.retain(|n, _| names.contains(&n.as_str()));
        kept.tables.retain(|n, _| names.contains(&n.as_str()));
        kept.backends.retain(|(s, b), _| {
            wanted
                .iter()
                .any(|w| w.name == *s && w.backends.iter().any(|x| x.name == *b))
        });
        for (s, addr) in wanted.iter().zip(&addrs) {
            let svc = Arc::new(Service::new(s, kept, self.peers.clone()));
            if let Some(l) = self.listeners.get(addr) {
                *l.current.write().expect("service lock") = svc;
            }
        }
        for (addr, listener) in fresh {
            let s = wanted[addrs.iter().position(|a| *a == addr).expect("bound above")];
            let current = Arc::new(RwLock::new(Arc::new(Service::new(s, kept, self.peers.clone()))));
            let task = tokio::spawn(accept_loop(listener, current.clone(), self.states.clone()));
            tracing::info!(service = %s.name, %addr, "http proxy listening");
            self.listeners.insert(addr, Listener { current, task });
        }
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for l in self.listeners.values() {
            l.task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, current: Arc<RwLock<Arc<Service>>>, states: States) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (current, states) = (current.clone(), states.clone());
        // Handed over as a plain socket: it joins the reactor of the thread
        // that serves it.
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        workers::spawn(move || async move {
            if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                serve::serve(stream, peer, current, states).await;
            }
        });
    }
}

fn local(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|n| match n {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Named, not spelled: removing by `&str` parses the name every time.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
];

/// Removes the hop-by-hop headers a message has (most have one or none:
/// one scan instead of a lookup for each name).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut found = [false; 7];
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            found[i] = true;
        }
    }
    for (h, _) in HOP_BY_HOP.iter().zip(found).filter(|(_, f)| *f) {
        headers.remove(h);
    }
}

/// A request body as the backend gets it. With a body limit, a body of
/// unknown length (chunked, or HTTP/2 without content-length) is read
/// first, so an oversized one is refused with 413 before anything is sent.
async fn limit_body(http: &HttpCfg, req: Request<Body>) -> Result<Request<Body>, Response<Body>> {
    let Some(max) = http.max_body_bytes else {
        return Ok(req);
    };
    match framing::declared(req.headers()) {
        Ok(Some(Decode::Length(n))) if n > max => Err(local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")),
        Ok(Some(Decode::Length(_) | Decode::Done)) => Ok(req),
        Err(_) => Err(local(StatusCode::BAD_REQUEST, "bad content-length\n")),
        // Chunked (HTTP/1) or no length at all (HTTP/2).
        _ => {
            let (parts, mut body) = req.into_parts();
            let mut whole = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return Err(local(StatusCode::BAD_REQUEST, "bad request body\n"));
                };
                if let Ok(data) = frame.into_data() {
                    if (whole.len() + data.len()) as u64 > max {
                        return Err(local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"));
                    }
                    whole.extend_from_slice(&data);
                }
            }
            let whole = Full::new(Bytes::from(whole)).map_err(|n| match n {}).boxed();
            Ok(Request::from_parts(parts, whole))
        }
    }
}

/// The request's host without its port (Host header, else the HTTP/2
/// authority).
fn host_of<B>(req: &Request<B>) -> Option<String> {
    let h = match req.headers().get(header::HOST).and_then(|v| v.to_str().ok()) {
        Some(h) => h.to_string(),
        None => req.uri().authority()?.as_str().to_string(),
    };
    let host = match h.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => h.split(':').next().unwrap_or(""),
    };
    Some(host.to_ascii_lowercase())
}

/// What persistence decided for a request before balancing.
struct Persistence {
    judgement: Judgement,
    target: Option<usize>,
    via: Via,
    /// The persistence cookie, parsed, when it was sent.
    parsed: Option<cookie::Parsed>,
    /// The appsession id the request carried.
    session: Option<String>,
}

/// Cookie persistence and appsession lookup for a request to `pool`; the
/// request's `Cookie` header is rewritten as the server must see it.
fn persistence(
    svc: &Service,
    st: &[u8],
    pool: usize,
    req: &mut Request<Body>,
    now: u64,
    now_i: Instant,
) -> Persistence {
    let mut p = Persistence {
        judgement: Judgement::None,
        target: None,
        via: Via::Balance,
        parsed: None,
        session: None,
    };
    let members = &svc.members[pool];
    // The Cookie header, joined if HTTP/2 split it (a header value clone
    // shares its bytes).
    let mut values = req.headers().get_all(header::COOKIE).iter();
    let cookie_header = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(one), None) => Some(one.clone()),
        (Some(_), Some(_)) => {
            let all: Vec<&str> = req
                .headers()
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            HeaderValue::try_from(all.join("; ")).ok()
        }
    };
    let joined = cookie_header.as_ref().and_then(|v| v.to_str().ok());
    if let Some(a) = &svc.cfg.appsession {
        let method = req.method();
        if method == Method::GET || method == Method::POST || method == Method::HEAD {
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            p.session = joined
                .and_then(|h| cookie::find([h], &a.cookie))
                .filter(|v| !v.is_empty())
                .or_else(|| appsession::from_url(pq, &a.cookie, a.url_mode))
                .map(str::to_string);
        }
    }
    if let (Some(c), Some(h), true) = (&svc.cfg.cookie, joined, svc.cookie_pools[pool]) {
        let ours = cookie::find([h], &c.name);
        if let Some(v) = ours {
            let parsed = cookie::parse(c, v);
            let candidates = members.iter().map(|i| cookie::Candidate {
                cookie: svc.cfg.backends[*i].cookie.as_deref(),
                usable: Service::usable(st, *i),
            });
            let (j, t) = cookie::judge(c, &parsed, candidates, now);
            p.judgement = j;
            p.target = t.map(|t| members[t]);
            p.parsed = Some(parsed);
        }
        // What the server sees of the cookie: unchanged unless ours is in
        // it and must go (indirect) or lose its prefix.
        let rewritten = match c.mode {
            CookieMode::Insert if c.indirect && ours.is_some() => Some(cookie::strip(h, &c.name)),
            CookieMode::Prefix if ours.is_some() => Some(Some(cookie::unprefix(h, &c.name))),
            _ => None,
        };
        let header = match rewritten {
            Some(v) => v.and_then(|v| HeaderValue::try_from(v).ok()),
            None => cookie_header.clone(),
        };
        req.headers_mut().remove(header::COOKIE);
        if let Some(v) = header {
            req.headers_mut().insert(header::COOKIE, v);
        }
    }
    if p.target.is_some() {
        p.via = Via::Cookie;
    }
    // Every hit refreshes the session, even when the cookie already placed
    // the request.
    if let (Some(t), Some(id)) = (&svc.sessions, &p.session) {
        let usable = |named: &dyn Fn(&Backend) -> bool| {
            members
                .iter()
                .copied()
                .find(|i| named(&svc.cfg.backends[*i]) && Service::usable(st, *i))
        };
        let mut found = t.lookup(id, now_i).and_then(|server| usable(&|b| b.name == server));
        if found.is_none() && svc.cfg.appsession.as_ref().is_some_and(|a| a.route_suffix) {
            found = appsession::route_of(id).and_then(|r| usable(&|b| b.cookie.as_deref().unwrap_or(&b.name) == r));
        }
        if p.target.is_none() && found.is_some() {
            p.target = found;
            p.via = Via::AppSession;
        }
    }
    p
}

/// Appsession learning from the response: the server's new session id
/// (replacing the one the request carried, which is how a changed id after
/// a failover is followed), else with `request_learn` the request's id.
fn learn_session(svc: &Service, session: Option<&str>, target: usize, resp: &Response<Body>, now: Instant) {
    let (Some(a), Some(table)) = (&svc.cfg.appsession, &svc.sessions) else {
        return;
    };
    let server = &svc.cfg.backends[target].name;
    let set = resp
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let learned = match (appsession::from_set_cookie(set, &a.cookie), session) {
        (Some(new), old) => {
            if let Some(old) = old.filter(|o| *o != new) {
                table.forget(old);
            }
            new
        }
        (None, Some(id)) if a.request_learn => id,
        _ => return,
    };
    table.learn(learned, server, now);
    if let Some(p) = &svc.peers {
        p.push(&svc.cfg.name, learned, server);
    }
}

/// One request: routing, persistence or balancing, retries, rewriting
/// both ways.
async fn handle(svc: Arc<Service>, states: States, peer: SocketAddr, req: Request<Body>) -> Response<Body> {
    let started = Instant::now();
    bump(&svc.counters.requests);
    let http = &svc.cfg.http;
    let st = svc.flags(&states.read().expect("states lock").clone());
    let method = req.method().clone();
    let uri = req.uri().clone();
    let path = uri.path();
    let line = Line {
        svc: &svc,
        peer,
        method: &method,
        path,
        started,
    };
    if let Some(uri) = &http.monitor_uri {
        if path == uri {
            return if svc.eligible(&st, 0, &[]).is_empty() {
                local_503()
            } else {
                local(StatusCode::OK, "OK\n")
            };
        }
    }
    // (HTTP/1 heads are held to the limit as they are read; this is for
    // HTTP/2's.)
    let head_bytes: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    let target_bytes = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    if head_bytes + target_bytes > http.max_header_bytes {
        bump(&svc.counters.refused);
        let resp = local(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large\n",
        );
        return line.log(None, Judgement::None, Via::Balance, resp);
    }
    let mut req = match limit_body(http, req).await {
        Ok(r) => r,
        Err(resp) => {
            bump(&svc.counters.refused);
            return line.log(None, Judgement::None, Via::Balance, resp);
        }
    };
    let now = now_secs();
    let now_i = Instant::now();
    let pool = if svc.cfg.routes.is_empty() {
        0
    } else {
        svc.route(&st, path, host_of(&req).as_deref())
    };
    if pool != 0 {
        bump(&svc.counters.routed);
    }
    let p = persistence(&svc, &st, pool, &mut req, now, now_i);
    let header_value = svc.balancers[pool].header().and_then(|name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    });
    let key = Key {
        client: peer.ip(),
        path,
        header: header_value.as_deref(),
    };
    let balancer = &svc.balancers[pool];
    let mut via = p.via;
    let mut target = match p
        .target
        .or_else(|| balancer.pick(&svc.slots, &svc.eligible(&st, pool, &[]), &key))
    {
        Some(t) => t,
        None => {
            bump(&svc.counters.no_server);
            return line.log(None, p.judgement, via, local_503());
        }
    };

    prepare_request(&svc, peer, &mut req);
    // Connect, with retries; the last one goes elsewhere with redispatch.
    let attempts = 1 + http.retries;
    let mut failed = Vec::new();
    let conn = loop {
        match svc.pools[target].checkout(http.timeout_connect).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(service = %svc.cfg.name, backend = %svc.cfg.backends[target].name, "{e}");
                bump(&svc.slots[target].counters.connect_errors);
                failed.push(target);
                if failed.len() as u32 >= attempts {
                    bump(&svc.counters.no_server);
                    return line.log(Some(target), p.judgement, via, local_503());
                }
                bump(&svc.slots[target].counters.retries);
                if http.redispatch && failed.len() as u32 == attempts - 1 {
                    if let Some(t) = balancer.pick(&svc.slots, &svc.eligible(&st, pool, &failed), &key) {
                        target = t;
                        via = Via::Redispatch;
                        bump(&svc.slots[target].counters.redispatches);
                    }
                }
            }
        }
    };
    let counters = &svc.slots[target].counters;
    bump(&counters.requests);
    counters.active.fetch_add(1, Ordering::Relaxed);
    let keep = http.connection == ConnectionMode::KeepAlive;
    let sent = tokio::time::timeout(
        http.timeout_server,
        svc.pools[target].send(conn, req, http.timeout_connect, keep),
    )
    .await;
    counters.active.fetch_sub(1, Ordering::Relaxed);
    let resp = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e @ SendError::Exchange { .. })) | Ok(Err(e @ SendError::Connect { .. })) => {
            tracing::warn!(service = %svc.cfg.name, "{e}");
            counters.response(502);
            let r = local(StatusCode::BAD_GATEWAY, "bad gateway\n");
            return line.log(Some(target), p.judgement, via, r);
        }
        Err(_) => {
            counters.response(504);
            let r = local(StatusCode::GATEWAY_TIMEOUT, "backend timeout\n");
            return line.log(Some(target), p.judgement, via, r);
        }
    };
    counters.response(resp.status().as_u16());
    let mut resp = resp.map(|b| b.boxed());
    learn_session(&svc, p.session.as_deref(), target, &resp, now_i);
    let via_cookie = via == Via::Cookie;
    if svc.cookie_pools[pool] {
        finish_cookie(&svc, &method, target, via_cookie, p.parsed.as_ref(), now, &mut resp);
    }
    finish_response(&svc, &mut resp);
    line.log(Some(target), p.judgement, via, resp)
}

fn local_503() -> Response<Body> {
    local(StatusCode::SERVICE_UNAVAILABLE, "no server available\n")
}

/// Origin-form URI and Host (from HTTP/2's authority), HTTP/1.1 towards the
/// backend, hop-by-hop headers dropped, X-Forwarded-For added.
fn prepare_request(svc: &Service, peer: SocketAddr, req: &mut Request<Body>) {
    if req.headers().get(header::HOST).is_none() {
        if let Some(a) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, a);
        }
    }
    // HTTP/1 requests come in origin form already; HTTP/2 ones in absolute form.
    if req.uri().authority().is_some() || req.uri().scheme().is_some() {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
        *req.uri_mut() = pq.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    }
    *req.version_mut() = Version::HTTP_11;
    strip_hop_by_hop(req.headers_mut());
    let http = &svc.cfg.http;
    let except = http.forwardfor_except.is_some_and(|c| c.contains(peer.ip()));
    if http.forwardfor && !except {
        if let Ok(v) = HeaderValue::try_from(peer.ip().to_string()) {
            req.headers_mut().append(X_FORWARDED_FOR, v);
        }
    }
}

/// Connection mode and hop-by-hop headers on the way back.
fn finish_response(svc: &Service, resp: &mut Response<Body>) {
    let headers = resp.headers_mut();
    strip_hop_by_hop(headers);
    if svc.cfg.http.connection == ConnectionMode::Close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// Cookie insertion or rewriting, and nocache, on the way back.
fn finish_cookie(
    svc: &Service,
    method: &Method,
    target: usize,
    via_cookie: bool,
    parsed: Option<&cookie::Parsed>,
    now: u64,
    resp: &mut Response<Body>,
) {
    let Some(c) = &svc.cfg.cookie else { return };
    let headers = resp.headers_mut();
    let server_cookie = svc.cfg.backends[target].cookie.as_deref();
    let set_cookies: Vec<String> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    match c.mode {
        CookieMode::Insert => {
            let refresh = via_cookie && parsed.is_some_and(|p| cookie::needs_refresh(c, p, now));
            let want = (!via_cookie || refresh) && (!c.postonly || method == Method::POST);
            // The server's own cookie of that name goes unless `preserve`.
            let others: Vec<&String> = set_cookies.iter().filter(|v| !cookie::is_named(v, &c.name)).collect();
            if !c.preserve && others.len() != set_cookies.len() {
                headers.remove(header::SET_COOKIE);
                for v in others {
                    if let Ok(v) = HeaderValue::from_str(v) {
                        headers.append(header::SET_COOKIE, v);
                    }
                }
            }
            if want {
                let first = if via_cookie { parsed.and_then(|p| p.first) } else { None };
                if let Ok(v) = HeaderValue::try_from(cookie::insert(c, server_cookie, now, first)) {
                    headers.append(header::SET_COOKIE, v);
                }
                if c.nocache && server_cookie.is_some() {
                    let strs = |name| -> Vec<String> {
                        headers
                            .get_all(name)
                            .iter()
                            .filter_map(|v| v.to_str().ok().map(str::to_string))
                            .collect()
                    };
                    let cc = strs(header::CACHE_CONTROL);
                    let pragma = strs(header::PRAGMA);
                    let cacheable = cookie::cacheable(
                        method.as_str(),
                        resp.status().as_u16(),
                        &cc.iter().map(String::as_str).collect::<Vec<_>>(),
                        &pragma.iter().map(String::as_str).collect::<Vec<_>>(),
                        resp.headers().contains_key(header::EXPIRES),
                        resp.headers().contains_key(header::ETAG) || resp.headers().contains_key(header::LAST_MODIFIED),
                    );
                    if cacheable {
                        resp.headers_mut()
                            .append(header::CACHE_CONTROL, HeaderValue::from_static("private"));
                    }
                }
            }
        }
        CookieMode::Rewrite | CookieMode::Prefix => {
            let Some(sc) = server_cookie else { return };
            if set_cookies.iter().any(|v| cookie::is_named(v, &c.name)) {
                headers.remove(header::SET_COOKIE);
                for v in &set_cookies {
                    let v = cookie::rewrite_set_cookie(c, v, sc).unwrap_or_else(|| v.clone());
                    if let Ok(v) = HeaderValue::from_str(&v) {
                        headers.append(header::SET_COOKIE, v);
                    }
                }
            }
        }
    }
}

/// What the access log line of a request shows besides its outcome.
struct Line<'a> {
    svc: &'a Service,
    peer: SocketAddr,
    method: &'a Method,
    path: &'a str,
    started: Instant,
}

impl Line<'_> {
    /// Logs (HAProxy-like: client, service, backend, status, time, request
    /// cookie flag, how the server was chosen) and passes the response on.
    fn log(&self, target: Option<usize>, judgement: Judgement, via: Via, resp: Response<Body>) -> Response<Body> {
        let svc = self.svc;
        let backend = target.map_or("<NOSRV>", |t| svc.cfg.backends[t].name.as_str());
        tracing::info!(
            target: "xlb::access",
            "{} {} {backend} {} {}ms cookie={} via={} \"{} {}\"",
            self.peer,
            svc.cfg.name,
            resp.status().as_u16(),
            self.started.elapsed().as_millis(),
            judgement.flag(),
            via.as_str(),
            self.method,
            self.path
        );
        resp
    }
}
