//! `cargo xtask run` with no arguments: the lab demo. Brings up the
//! namespace lab, runs xlb on its xlb node with examples/lab.toml, sends
//! traffic from the client and prints where it went, until Ctrl-C or
//! `--duration`.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use lab::{
    servers::{connect_from, Kind, Server},
    topology::{vip, XLB_IP},
    Lab, LabSpec, XlbProcess,
};

use crate::root;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// One HTTP GET to the VIP from `src`; returns the answering backend's name.
fn request(lab: &Lab, src: SocketAddr, dst: SocketAddr) -> std::io::Result<String> {
    let mut s = connect_from(&lab.client.ns, src, dst, Duration::from_millis(500))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")?;
    let mut backend = String::from("?");
    for line in BufReader::new(s).lines() {
        let line = line?;
        if let Some(v) = line.strip_prefix("X-Backend: ") {
            backend = v.to_string();
        }
    }
    Ok(backend)
}

pub fn demo(xlb_bin: &Path, duration: Option<u64>) -> Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    std::env::set_var("XLB_BIN", xlb_bin);
    let spec = LabSpec {
        backends: 3,
        client_addrs: 8,
    };
    let lab = Lab::new(&spec).context("building the lab (needs root and iproute2)")?;
    let servers = lab
        .backends
        .iter()
        .map(|b| Server::start(&b.ns, SocketAddr::new(b.ip.into(), 8080), &b.role, Kind::Http))
        .collect::<std::io::Result<Vec<_>>>()?;
    let config = root().join("examples/lab.toml");
    let xlb = XlbProcess::start(&lab.xlb.ns, &config, &[])?;
    println!(
        "lab {}: client {} .. {}, xlb node {XLB_IP}, backends {}; VIP {}:80",
        lab.id,
        lab.client.addrs[0],
        lab.client.addrs[lab.client.addrs.len() - 1],
        servers
            .iter()
            .map(|s| format!("{}={}", s.name, s.addr))
            .collect::<Vec<_>>()
            .join(" "),
        vip(10)
    );
    println!("xlb log: {}  (Ctrl-C to stop)", xlb.log_path.display());
    let dst = SocketAddr::new(vip(10).into(), 80);
    let started = Instant::now();
    let mut round = 0usize;
    while !STOP.load(Ordering::Relaxed) && duration.is_none_or(|d| started.elapsed() < Duration::from_secs(d)) {
        let src_ip = lab.client.addrs[round % lab.client.addrs.len()];
        let outcome = match request(&lab, SocketAddr::new(src_ip.into(), 0), dst) {
            Ok(name) => format!("answered by {name}"),
            Err(e) => format!("no answer ({e})"),
        };
        println!("client {src_ip} -> {dst}: {outcome}");
        round += 1;
        if round.is_multiple_of(5) {
            let st = lab
                .xlb
                .ns
                .run(&xlb_bin.to_string_lossy(), &["status"])
                .unwrap_or_default();
            print!("{st}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("stopping: xlb, servers and lab {} are removed", lab.id);
    drop(servers);
    xlb.stop()?;
    Ok(())
}
