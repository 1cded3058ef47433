//! The L7 proxy for `mode = "http"` services: HTTP/1.1 (keep-alive both
//! sides) and HTTP/2 from clients (h2c), HAProxy's cookie persistence and
//! balancing, retries and redispatch, X-Forwarded-For, monitor URI.
//! Runs with or without the XDP tier: an http-only config needs no BPF.

pub mod balance;
pub mod cookie;
pub mod pool;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{atomic::Ordering, Arc, RwLock},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    service::service_fn,
    Method, Request, Response, StatusCode, Uri, Version,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    config::{Config, ConnectionMode, CookieMode, Mode, Service as ServiceCfg},
    map_manager::BackendStates,
};
use balance::{Algo, Balancer, Key, Slot};
use cookie::Judgement;
use pool::{Pool, SendError};

pub type Body = BoxBody<Bytes, hyper::Error>;
/// Backend states shared with the daemon (health checks, operator).
pub type States = Arc<RwLock<BackendStates>>;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("service {service}: cannot listen on {addr}: {cause} (is the VIP local, or nonlocal_bind on?)")]
    Bind {
        service: String,
        addr: SocketAddr,
        cause: std::io::Error,
    },
}

/// One http service as the proxy runs it.
pub struct Service {
    cfg: ServiceCfg,
    slots: Vec<Slot>,
    pools: Vec<Pool>,
    balancer: Balancer,
}

impl Service {
    fn new(cfg: &ServiceCfg) -> Service {
        Service {
            slots: cfg
                .backends
                .iter()
                .map(|b| Slot {
                    name: b.name.clone(),
                    weight: b.weight,
                    active: Default::default(),
                })
                .collect(),
            pools: cfg.backends.iter().map(|b| Pool::new(b.address)).collect(),
            balancer: Balancer::new(Algo::parse(&cfg.balance), cfg.backends.len()),
            cfg: cfg.clone(),
        }
    }

    fn key(&self, i: usize) -> (String, String) {
        (self.cfg.name.clone(), self.cfg.backends[i].name.clone())
    }

    /// May take traffic at all (not down, not in maintenance).
    fn usable(&self, st: &BackendStates, i: usize) -> bool {
        !st.out.contains(&self.key(i))
    }

    /// Servers that take new (balanced) traffic: the normal ones that are
    /// usable, not drained, with weight; else such backups.
    fn eligible(&self, st: &BackendStates, except: &[usize]) -> Vec<usize> {
        let ok = |i: &usize| {
            let b = &self.cfg.backends[*i];
            b.weight > 0 && self.usable(st, *i) && !st.drained.contains(&self.key(*i)) && !except.contains(i)
        };
        let normal: Vec<usize> = (0..self.cfg.backends.len())
            .filter(|i| !self.cfg.backends[*i].backup)
            .filter(ok)
            .collect();
        if !normal.is_empty() {
            return normal;
        }
        (0..self.cfg.backends.len())
            .filter(|i| self.cfg.backends[*i].backup)
            .filter(ok)
            .collect()
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
}

impl Proxy {
    pub fn new(states: States) -> Proxy {
        Proxy {
            listeners: HashMap::new(),
            states,
        }
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
        for (s, addr) in wanted.iter().zip(&addrs) {
            let svc = Arc::new(Service::new(s));
            if let Some(l) = self.listeners.get(addr) {
                *l.current.write().expect("service lock") = svc;
            }
        }
        for (addr, listener) in fresh {
            let s = wanted[addrs.iter().position(|a| *a == addr).expect("bound above")];
            let current = Arc::new(RwLock::new(Arc::new(Service::new(s))));
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
        tokio::spawn(async move {
            let http = current.read().expect("service lock").cfg.http.clone();
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(http.timeout_client)
                .keep_alive(http.connection != ConnectionMode::Close)
                .max_buf_size(http.max_header_bytes.max(8192));
            builder.http2().timer(TokioTimer::new());
            let svc = service_fn(move |req| {
                let svc = current.read().expect("service lock").clone();
                let states = states.clone();
                async move { Ok::<_, Infallible>(handle(svc, states, peer, req).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
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

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
];

/// One request: persistence or balancing, retries, rewriting both ways.
async fn handle(svc: Arc<Service>, states: States, peer: SocketAddr, mut req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let http = &svc.cfg.http;
    if let Some(uri) = &http.monitor_uri {
        if req.uri().path() == uri {
            let st = states.read().expect("states lock").clone();
            return if svc.eligible(&st, &[]).is_empty() {
                local(StatusCode::SERVICE_UNAVAILABLE, "no server available\n")
            } else {
                local(StatusCode::OK, "OK\n")
            };
        }
    }
    let too_big = http.max_body_bytes.is_some_and(|max| {
        req.headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| n > max)
    });
    if too_big {
        return local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    }
    let method = req.method().clone();
    let now = now_secs();
    let st = states.read().expect("states lock").clone();

    // Persistence: the joined Cookie header (HTTP/2 may split it).
    let cookies: Vec<String> = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let joined = (!cookies.is_empty()).then(|| cookies.join("; "));
    let mut judgement = Judgement::None;
    let mut target = None;
    let mut parsed = None;
    if let (Some(c), Some(h)) = (&svc.cfg.cookie, &joined) {
        if let Some(v) = cookie::find([h.as_str()], &c.name) {
            let p = cookie::parse(c, v);
            let candidates: Vec<cookie::Candidate<'_>> = (0..svc.cfg.backends.len())
                .map(|i| cookie::Candidate {
                    cookie: svc.cfg.backends[i].cookie.as_deref(),
                    usable: svc.usable(&st, i),
                })
                .collect();
            let (j, t) = cookie::judge(c, &p, &candidates, now);
            judgement = j;
            target = t;
            parsed = Some(p);
        }
        // What the server sees of the cookie.
        let rewritten = match c.mode {
            CookieMode::Insert if c.indirect => cookie::strip(h, &c.name),
            CookieMode::Prefix => Some(cookie::unprefix(h, &c.name)),
            _ => Some(h.clone()),
        };
        req.headers_mut().remove(header::COOKIE);
        if let Some(v) = rewritten.and_then(|v| HeaderValue::from_str(&v).ok()) {
            req.headers_mut().insert(header::COOKIE, v);
        }
    }
    let via_cookie = target.is_some();
    let header_value = match svc.balancer.header() {
        Some(name) => req
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        None => None,
    };
    let path = req.uri().path().to_string();
    let key = Key {
        client: peer.ip(),
        path: &path,
        header: header_value.as_deref(),
    };
    let mut target = match target.or_else(|| svc.balancer.pick(&svc.slots, &svc.eligible(&st, &[]), &key)) {
        Some(t) => t,
        None => return log(&svc, peer, &method, &path, None, 503, judgement, started, local_503()),
    };

    prepare_request(&svc, peer, &mut req);
    // Connect, with retries; the last one goes elsewhere with redispatch.
    let attempts = 1 + http.retries;
    let mut failed = Vec::new();
    let mut redispatched = false;
    let sender = loop {
        match svc.pools[target].checkout(http.timeout_connect).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(service = %svc.cfg.name, backend = %svc.cfg.backends[target].name, "{e}");
                failed.push(target);
                if failed.len() as u32 >= attempts {
                    return log(
                        &svc,
                        peer,
                        &method,
                        &path,
                        Some(target),
                        503,
                        judgement,
                        started,
                        local_503(),
                    );
                }
                if http.redispatch && failed.len() as u32 == attempts - 1 {
                    if let Some(t) = svc.balancer.pick(&svc.slots, &svc.eligible(&st, &failed), &key) {
                        target = t;
                        redispatched = true;
                    }
                }
            }
        }
    };
    let slot = &svc.slots[target];
    slot.active.fetch_add(1, Ordering::Relaxed);
    let keep = http.connection == ConnectionMode::KeepAlive;
    let sent = tokio::time::timeout(
        http.timeout_server,
        svc.pools[target].send(sender, req, http.timeout_connect, keep),
    )
    .await;
    slot.active.fetch_sub(1, Ordering::Relaxed);
    let resp = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e @ SendError::Exchange { .. })) | Ok(Err(e @ SendError::Connect { .. })) => {
            tracing::warn!(service = %svc.cfg.name, "{e}");
            let r = local(StatusCode::BAD_GATEWAY, "bad gateway\n");
            return log(&svc, peer, &method, &path, Some(target), 502, judgement, started, r);
        }
        Err(_) => {
            let r = local(StatusCode::GATEWAY_TIMEOUT, "backend timeout\n");
            return log(&svc, peer, &method, &path, Some(target), 504, judgement, started, r);
        }
    };
    let via_cookie = via_cookie && !redispatched;
    let mut resp = resp.map(|b| b.boxed());
    finish_response(&svc, &method, target, via_cookie, parsed.as_ref(), now, &mut resp);
    let status = resp.status().as_u16();
    log(
        &svc,
        peer,
        &method,
        &path,
        Some(target),
        status,
        judgement,
        started,
        resp,
    )
}

fn local_503() -> Response<Body> {
    local(StatusCode::SERVICE_UNAVAILABLE, "no server available\n")
}

/// Origin-form URI and Host (from HTTP/2's authority), HTTP/1.1 towards the
/// backend, hop-by-hop headers dropped, X-Forwarded-For added.
fn prepare_request(svc: &Service, peer: SocketAddr, req: &mut Request<Incoming>) {
    if req.headers().get(header::HOST).is_none() {
        if let Some(a) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, a);
        }
    }
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    *req.uri_mut() = pq.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/"));
    *req.version_mut() = Version::HTTP_11;
    for h in HOP_BY_HOP {
        req.headers_mut().remove(h);
    }
    let http = &svc.cfg.http;
    let except = http.forwardfor_except.is_some_and(|c| c.contains(peer.ip()));
    if http.forwardfor && !except {
        if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
            req.headers_mut().append("x-forwarded-for", v);
        }
    }
}

/// Cookie insertion/rewriting, nocache, connection mode, hop-by-hop
/// headers, on the way back.
fn finish_response(
    svc: &Service,
    method: &Method,
    target: usize,
    via_cookie: bool,
    parsed: Option<&cookie::Parsed>,
    now: u64,
    resp: &mut Response<Body>,
) {
    let headers = resp.headers_mut();
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    if svc.cfg.http.connection == ConnectionMode::Close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let Some(c) = &svc.cfg.cookie else { return };
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
                if let Ok(v) = HeaderValue::from_str(&cookie::insert(c, server_cookie, now, first)) {
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

/// The access log line (HAProxy-like: client, service, backend, status,
/// time, request cookie flag) and the response, passed through.
#[allow(clippy::too_many_arguments)]
fn log(
    svc: &Service,
    peer: SocketAddr,
    method: &Method,
    path: &str,
    target: Option<usize>,
    status: u16,
    judgement: Judgement,
    started: Instant,
    resp: Response<Body>,
) -> Response<Body> {
    let backend = target.map_or("<NOSRV>", |t| svc.cfg.backends[t].name.as_str());
    tracing::info!(
        target: "xlb::access",
        "{peer} {} {backend} {status} {}ms cookie={} \"{method} {path}\"",
        svc.cfg.name,
        started.elapsed().as_millis(),
        judgement.flag()
    );
    resp
}
