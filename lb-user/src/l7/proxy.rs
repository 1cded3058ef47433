//! The listeners of the http services: bound on apply (all new ones
//! first, so a failure changes nothing), each accepted connection handed to
//! a serving thread.

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::{AsRawFd, RawFd},
    sync::{Arc, Mutex, RwLock},
};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use super::{
    admission::{Accepted, FrontConn, Gate, GateSnapshot},
    appsession::Table,
    peers, serve,
    service::{Kept, Service, ServiceTls, States},
    workers,
};
use crate::{
    config::{Config, Mode, Service as ServiceCfg},
    tls::TlsError,
};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("service {service}: cannot listen on {addr}: {cause} (is the VIP local, or nonlocal_bind on?)")]
    Bind {
        service: String,
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error("service {service}: {cause}")]
    Tls {
        service: String,
        #[source]
        cause: TlsError,
    },
}

struct Listener {
    current: Arc<RwLock<Arc<Service>>>,
    task: JoinHandle<()>,
    /// The socket (its accept loop owns it), for a seamless upgrade.
    fd: RawFd,
}

/// All http listeners of the daemon.
pub struct Proxy {
    listeners: HashMap<SocketAddr, Listener>,
    states: States,
    kept: Kept,
    peers: Option<peers::Outbox>,
    gate: Arc<Gate>,
    /// Listening sockets taken from the process this one upgraded, used
    /// instead of binding their addresses.
    inherited: Mutex<HashMap<SocketAddr, std::net::TcpListener>>,
    /// Accept loops stop when true (a new process took over).
    paused: watch::Sender<bool>,
}

impl Proxy {
    pub fn new(
        states: States,
        peers: Option<peers::Outbox>,
        inherited: HashMap<SocketAddr, std::net::TcpListener>,
    ) -> Proxy {
        Proxy {
            listeners: HashMap::new(),
            states,
            kept: Kept::default(),
            peers,
            gate: Gate::new(crate::config::DEFAULT_MAXCONN),
            inherited: Mutex::new(inherited),
            paused: watch::Sender::new(false),
        }
    }

    /// The listening sockets, for a new process to take over (both accept
    /// from them until this one pauses).
    pub fn sockets(&self) -> Vec<(SocketAddr, RawFd)> {
        self.listeners.iter().map(|(a, l)| (*a, l.fd)).collect()
    }

    /// Stops accepting for good: the new process has the sockets.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Open client connections against `global.maxconn`.
    pub fn connections(&self) -> GateSnapshot {
        self.gate.snapshot()
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
        let bound = self.prepare(cfg)?;
        self.commit(bound, cfg);
        // Sockets taken over for addresses this config no longer has
        // close here (else they would queue connections no one takes).
        self.inherited.lock().expect("inherited lock").clear();
        Ok(())
    }

    /// Binds the listeners `cfg` adds, changing nothing else: what can
    /// fail in a reload fails here, before anything is switched.
    pub fn prepare(&self, cfg: &Config) -> Result<Bound, ProxyError> {
        let mut fresh = Vec::new();
        let mut tls = HashMap::new();
        for s in cfg.services.iter().filter(|s| s.mode == Mode::Http) {
            let secured = ServiceTls::new(s).map_err(|cause| ProxyError::Tls {
                service: s.name.clone(),
                cause,
            })?;
            tls.insert(s.name.clone(), secured);
            let addr = SocketAddr::new(s.vip, s.port);
            if self.listeners.contains_key(&addr) {
                continue;
            }
            let inherited = self.inherited.lock().expect("inherited lock").remove(&addr);
            let bind = || -> std::io::Result<TcpListener> {
                let l = match inherited {
                    Some(l) => l,
                    None => std::net::TcpListener::bind(addr)?,
                };
                l.set_nonblocking(true)?;
                TcpListener::from_std(l)
            };
            let l = bind().map_err(|cause| ProxyError::Bind {
                service: s.name.clone(),
                addr,
                cause,
            })?;
            fresh.push((addr, l));
        }
        Ok(Bound { fresh, tls })
    }

    /// Switches to `cfg` with the listeners [`Proxy::prepare`] bound for it.
    pub fn commit(&mut self, Bound { fresh, mut tls }: Bound, cfg: &Config) {
        let wanted: Vec<&ServiceCfg> = cfg.services.iter().filter(|s| s.mode == Mode::Http).collect();
        let addrs: Vec<SocketAddr> = wanted.iter().map(|s| SocketAddr::new(s.vip, s.port)).collect();
        self.listeners.retain(|addr, l| {
            let keep = addrs.contains(addr);
            if !keep {
                l.task.abort();
            }
            keep
        });
        self.gate.set_max(cfg.global.maxconn);
        // Counters and tables of services and backends that went are dropped.
        let names: Vec<&str> = wanted.iter().map(|s| s.name.as_str()).collect();
        let kept = &mut self.kept;
        kept.services.retain(|n, _| names.contains(&n.as_str()));
        kept.tables.retain(|n, _| names.contains(&n.as_str()));
        kept.queues.retain(|n, _| names.contains(&n.as_str()));
        kept.backends.retain(|(s, b), _| {
            wanted
                .iter()
                .any(|w| w.name == *s && w.backends.iter().any(|x| x.name == *b))
        });
        let mut secured = |name: &str| tls.remove(name).unwrap_or_default();
        for (s, addr) in wanted.iter().zip(&addrs) {
            if let Some(l) = self.listeners.get(addr) {
                let svc = Arc::new(Service::new(s, kept, self.peers.clone(), secured(&s.name)));
                *l.current.write().expect("service lock") = svc;
            }
        }
        for (addr, listener) in fresh {
            let s = wanted[addrs.iter().position(|a| *a == addr).expect("bound for this config")];
            let svc = Service::new(s, kept, self.peers.clone(), secured(&s.name));
            let current = Arc::new(RwLock::new(Arc::new(svc)));
            let fd = listener.as_raw_fd();
            let task = tokio::spawn(accept_loop(
                listener,
                current.clone(),
                self.states.clone(),
                self.gate.clone(),
                self.paused.subscribe(),
            ));
            tracing::info!(service = %s.name, %addr, "http proxy listening");
            self.listeners.insert(addr, Listener { current, task, fd });
        }
    }
}

/// Listeners bound for a config not yet switched to (dropping them closes
/// them), and the TLS set-up of its services.
pub struct Bound {
    fresh: Vec<(SocketAddr, TcpListener)>,
    tls: HashMap<String, ServiceTls>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for l in self.listeners.values() {
            l.task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    current: Arc<RwLock<Arc<Service>>>,
    states: States,
    gate: Arc<Gate>,
    mut paused: watch::Receiver<bool>,
) {
    loop {
        // At maxconn, new connections wait in the kernel's queue; so they
        // do while a new process takes over.
        gate.room().await;
        if *paused.borrow_and_update() {
            if paused.changed().await.is_err() {
                return;
            }
            continue;
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = paused.changed() => continue,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let slot = gate.take();
        let _ = stream.set_nodelay(true);
        let conn = Accepted {
            peer,
            current: current.clone(),
            states: states.clone(),
            slot,
            front: FrontConn::new(current.read().expect("service lock").counters.clone()),
            served: false,
            opened: None,
        };
        // Handed over as a plain socket: it joins the reactor of the thread
        // that serves it.
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        workers::spawn(move || async move {
            if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                serve::serve(stream, conn).await;
            }
        });
    }
}
