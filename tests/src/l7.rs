//! The L7 proxy harness: the real xlb (an http-only config: no XDP at
//! all) in a namespace of its own with real backend servers on loopback.
//! Without root (no namespaces) it runs on this machine's loopback.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{
    http::{get, Client, Response},
    servers::{Kind, Server},
    xlb::{temp_file, xlb_once},
    Netns, XlbProcess,
};

static N: AtomicU32 = AtomicU32::new(0);

const VIP: &str = "127.0.0.1:8080";

/// A backend: name, extra config lines (cookie, weight, backup).
pub struct Be<'a>(pub &'a str, pub &'a str);

/// What an [`L7`] lab runs.
#[derive(Default)]
pub struct Spec<'a> {
    /// Lines added to `[global]`.
    pub global: &'a str,
    /// Lines added to the service (balance, `[service.cookie]` ...).
    pub service: &'a str,
    pub backends: &'a [Be<'a>],
    /// Backend groups: name and backends.
    pub groups: &'a [(&'a str, &'a [Be<'a>])],
    /// Backends configured but not started.
    pub dead: &'a [&'a str],
    /// Top-level sections after the service (`[stats]` ...).
    pub tail: &'a str,
    /// What the backend servers speak.
    pub kind: Kind,
}

/// xlb with one http service "site" on 127.0.0.1:8080 and its backends on
/// 127.0.0.1:9001.. (service backends first, then the groups' in order).
pub struct L7 {
    pub ns: Netns,
    pub servers: Vec<Server>,
    pub xlb: XlbProcess,
    pub cfg_path: PathBuf,
    pub cfg: String,
}

pub fn vip() -> SocketAddr {
    VIP.parse().unwrap()
}

impl L7 {
    /// One service with `backends` (all started but those in `dead`).
    pub fn start(service: &str, backends: &[Be<'_>], dead: &[&str]) -> L7 {
        L7::run(&Spec {
            service,
            backends,
            dead,
            ..Spec::default()
        })
    }

    pub fn run(spec: &Spec<'_>) -> L7 {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let ns = if crate::have_root() {
            Netns::create(&format!("xlbt{}l7{n}", std::process::id())).unwrap()
        } else {
            Netns::current()
        };
        let (service, global) = (spec.service, spec.global);
        let mut cfg = format!(
            "[global]\nadmin = \"127.0.0.1:9900\"\n{global}\n[[service]]\nname = \"site\"\nvip = \"127.0.0.1\"\nport = 8080\nmode = \"http\"\n{service}\n"
        );
        if !service.contains("[service.health]") {
            cfg += "[service.health]\nkind = \"none\"\n";
        }
        let mut servers = Vec::new();
        let mut port = 9001;
        let members = std::iter::once(("", spec.backends)).chain(spec.groups.iter().copied());
        for (group, backends) in members {
            let table = if group.is_empty() {
                "service.backend"
            } else {
                cfg += &format!("[[service.group]]\nname = \"{group}\"\n");
                "service.group.backend"
            };
            for Be(name, extra) in backends {
                let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
                port += 1;
                cfg += &format!("[[{table}]]\nname = \"{name}\"\naddress = \"{addr}\"\n{extra}\n");
                if !spec.dead.contains(name) {
                    servers.push(Server::start(&ns, addr, name, spec.kind).unwrap());
                }
            }
        }
        cfg += spec.tail;
        let path = temp_file(&format!("l7-{n}.toml"), &cfg).unwrap();
        let xlb = XlbProcess::start(&ns, &path, &["--cleanup"]).unwrap_or_else(|e| panic!("{e}\n{cfg}"));
        L7 {
            ns,
            servers,
            xlb,
            cfg_path: path,
            cfg,
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.ns, vip()).unwrap()
    }

    pub fn get(&self, path: &str, headers: &[&str]) -> Response {
        get(&self.ns, vip(), path, headers).unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.xlb.log()))
    }

    /// Runs `xlb ARGS` against this lab's daemon; panics unless it succeeds.
    pub fn xlb(&self, args: &[&str]) -> String {
        let out = xlb_once(&self.ns, args).unwrap();
        assert!(
            out.status.success(),
            "xlb {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn set_state(&self, backend: &str, state: &str) {
        self.xlb(&["server", "set-state", "site", backend, state]);
    }

    /// Writes `cfg` as the config file and has the daemon reload it.
    pub fn reload(&mut self, cfg: &str) {
        std::fs::write(&self.cfg_path, cfg).unwrap();
        self.cfg = cfg.to_string();
        self.xlb(&["reload"]);
    }

    /// Stops the server named `name` (its port then refuses connections).
    pub fn stop_server(&mut self, name: &str) {
        self.servers.retain(|s| s.name != name);
    }
}
