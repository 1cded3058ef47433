//! Helpers for lab tests of L4 services: a one-service config, what Maglev
//! predicts for a client, connections and long-lived streams through the
//! VIP, and driving the running daemon (status, reload).

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use lb_common::{hash, maglev, RING_SIZE};

use crate::{
    servers::{connect_from, tcp_hello, Kind, Server},
    topology::{backend_ip, vip},
    xlb::xlb_once,
    Lab, XlbProcess,
};

/// The VIP of the one service these helpers set up (198.19.0.10:80).
pub const VIP_N: u8 = 10;

pub fn dst() -> SocketAddr {
    SocketAddr::new(vip(VIP_N).into(), 80)
}

/// A backend of the test service: name, lab backend index, weight.
pub type Spec<'a> = (&'a str, usize, u32);

/// A config with service "web" on VIP:80 in `mode`, TCP health checks every
/// 300 ms (rise 2, fall 2), and the given backends on `backend_port`.
pub fn config(mode: &str, backend_port: u16, backends: &[Spec<'_>]) -> String {
    let mut c = format!(
        "[global]\ninterface = \"eth0\"\n\n[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\nmode = \"{mode}\"\n\
         [service.health]\nkind = \"tcp\"\ninterval = \"300ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n",
        vip(VIP_N)
    );
    for (name, i, w) in backends {
        c += &format!(
            "[[service.backend]]\nname = \"{name}\"\naddress = \"{}:{backend_port}\"\nweight = {w}\n",
            backend_ip(*i)
        );
    }
    c
}

/// The backend Maglev (as xlb builds it) names for a client address.
pub fn predict(backends: &[Spec<'_>], client: IpAddr) -> String {
    let entries: Vec<maglev::Entry<'_>> = backends
        .iter()
        .enumerate()
        .map(|(i, (n, _, w))| maglev::Entry {
            name: n,
            id: i as u32,
            weight: *w,
        })
        .collect();
    let table = maglev::build(&entries, RING_SIZE);
    let mut a = [0u8; 16];
    match client {
        IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => a = v6.octets(),
    }
    backends[table[(hash::source_hash(&a) % RING_SIZE) as usize] as usize]
        .0
        .to_string()
}

/// TCP name servers on every backend of the lab, on `port` of the backend's
/// own address, or of the VIP (DSR backends hold it on loopback).
pub fn start_servers(lab: &Lab, port: u16, bind_vip: bool) -> Vec<Server> {
    lab.backends
        .iter()
        .map(|b| {
            let ip: IpAddr = if bind_vip { vip(VIP_N).into() } else { b.ip.into() };
            Server::start(&b.ns, SocketAddr::new(ip, port), &b.role, Kind::Tcp).expect("start backend server")
        })
        .collect()
}

/// The greeting of one new connection from `client` through the VIP,
/// retried for a few seconds (neighbours resolving, health changes).
pub fn hello(lab: &Lab, client: IpAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        match tcp_hello(
            &lab.client.ns,
            SocketAddr::new(client, 0),
            dst(),
            Duration::from_millis(1500),
        ) {
            Ok(name) => return name,
            Err(e) if Instant::now() > deadline => panic!("no answer for {client}: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A long-lived connection through the VIP to a [`Kind::Tcp`] server.
pub struct Stream {
    pub backend: String,
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Stream {
    pub fn open(lab: &Lab, client: IpAddr) -> Stream {
        let s = connect_from(
            &lab.client.ns,
            SocketAddr::new(client, 0),
            dst(),
            Duration::from_secs(2),
        )
        .expect("open stream");
        let mut reader = BufReader::new(s.try_clone().expect("clone stream"));
        let mut greeting = String::new();
        reader.read_line(&mut greeting).expect("greeting");
        Stream {
            backend: greeting.trim().to_string(),
            stream: s,
            reader,
        }
    }

    /// Sends one line; the answer must come from the same backend.
    pub fn ping(&mut self, n: usize) -> Result<(), String> {
        self.stream
            .write_all(format!("ping {n}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => return Err(format!("stream to {} closed", self.backend)),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        if line.trim() == format!("{} ping {n}", self.backend) {
            Ok(())
        } else {
            Err(format!("answer {line:?} on a stream of {}", self.backend))
        }
    }
}

/// `xlb status --json` on the lab's xlb node.
pub fn status(lab: &Lab) -> serde_json::Value {
    let out = xlb_once(&lab.xlb.ns, &["status", "--json"]).expect("run xlb status");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status json")
}

/// State of a backend of the first service, as `xlb status` says.
pub fn backend_state(lab: &Lab, backend: &str) -> String {
    status(lab)["services"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["name"] == backend)
        .and_then(|b| b["state"].as_str())
        .unwrap_or("")
        .to_string()
}

/// Waits until `cond` holds, at most `limit`; returns how long it took.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        thread::sleep(Duration::from_millis(25));
    }
    start.elapsed()
}

/// Rewrites the config file, sends SIGHUP and waits until the daemon runs
/// exactly these backends with these weights.
pub fn reload(lab: &Lab, xlb: &XlbProcess, path: &Path, cfg: &str, want: &[Spec<'_>]) {
    std::fs::write(path, cfg).expect("write config");
    xlb.signal(libc::SIGHUP);
    let want: Vec<(String, u64)> = want.iter().map(|(n, _, w)| (n.to_string(), u64::from(*w))).collect();
    wait_for(Duration::from_secs(10), "the reload to apply", || {
        let got: Vec<(String, u64)> = status(lab)["services"][0]["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .map(|b| {
                (
                    b["name"].as_str().unwrap_or("").to_string(),
                    b["weight"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        got == want
    });
}
