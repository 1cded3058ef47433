//! Control-plane scale: how long the daemon's side takes with many backends
//! and services.
//! - one nat service of 1,000 backends, through `MapManager` on the real
//!   object: the first apply, a weight change (Maglev rebuild and the ring
//!   slots that change), a backend removed; and the Maglev build alone;
//! - the real daemon with 1,000 services (64 L4 services, the most the ring
//!   array holds, with 16 backends each, and 936 http services): its start,
//!   a reload of the unchanged file, a reload that changes every L4
//!   service's ring.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use lab::{
    netns::Netns,
    xlb::{temp_file, xlb_once},
    XlbProcess,
};
use lb_common::{maglev, MAX_RINGS, RING_SIZE};
use lb_user::{
    config,
    l4::{bpf::load_object, map_manager::MapManager},
};

const BACKENDS: usize = 1000;
const L4_SERVICES: usize = (MAX_RINGS / 2) as usize;
const HTTP_SERVICES: usize = 1000 - L4_SERVICES;

/// The i-th backend address of the control-plane runs (198.18.10.1 on).
fn backend(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 10 + (i / 250) as u8, 1 + (i % 250) as u8)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn big_service(weight0: u32, without_last: bool) -> String {
    let mut c = String::from(
        "[[service]]\nname = \"big\"\nvip = \"198.19.0.100\"\nport = 80\nmode = \"nat\"\nsnat = \"198.18.0.2\"\n\
         [service.health]\nkind = \"none\"\n",
    );
    let n = if without_last { BACKENDS - 1 } else { BACKENDS };
    for i in 0..n {
        let w = if i == 0 { weight0 } else { 1 };
        let _ = write!(
            c,
            "[[service.backend]]\nname = \"be{i}\"\naddress = \"{}:8080\"\nweight = {w}\n",
            backend(i)
        );
    }
    c
}

/// `MapManager` with one service of 1,000 backends (inside the FIB namespace).
pub fn map_manager() -> String {
    let mut ebpf = load_object().expect("xlb's XDP object");
    let mut mm = MapManager::default();
    let mut apply = |text: &str| {
        let cfg = config::parse(Path::new("big.toml"), text).unwrap();
        let t = Instant::now();
        mm.apply(&mut ebpf, &cfg, &Default::default(), &|_| None).unwrap();
        t.elapsed()
    };
    let first = apply(&big_service(1, false));
    let reweights: Vec<f64> = (0..5).map(|k| ms(apply(&big_service(2 + k % 2, false)))).collect();
    let removed = apply(&big_service(2, true));
    let names: Vec<String> = (0..BACKENDS).map(|i| format!("be{i}")).collect();
    let entries: Vec<maglev::Entry<'_>> = names
        .iter()
        .enumerate()
        .map(|(i, name)| maglev::Entry {
            name,
            id: i as u32,
            weight: 1,
        })
        .collect();
    let builds: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(maglev::build(&entries, RING_SIZE));
            ms(t.elapsed())
        })
        .collect();
    format!(
        "One nat service of {BACKENDS} backends (`MapManager` on the loaded object; times in ms):\n\n\
         | step | ms |\n|---|---:|\n\
         | Maglev build alone ({RING_SIZE} slots, median of 5) | {:.1} |\n\
         | first apply (backends, ring, service table) | {:.1} |\n\
         | a weight changed: rebuild and the ring slots that change (median of 5) | {:.1} |\n\
         | a backend removed (its flows swept from the tables too) | {:.1} |\n\n",
        median(builds),
        ms(first),
        median(reweights),
        ms(removed)
    )
}

fn thousand_services(weight0: u32) -> String {
    let mut c = String::from("[global]\ninterface = \"cp0\"\nadmin = \"127.0.0.1:9900\"\n");
    for s in 0..L4_SERVICES {
        let mode = if s % 2 == 0 { "nat" } else { "dsr" };
        let snat = if mode == "nat" { "snat = \"198.18.0.2\"\n" } else { "" };
        let _ = write!(
            c,
            "[[service]]\nname = \"l4-{s}\"\nvip = \"198.19.1.{}\"\nport = 80\nmode = \"{mode}\"\n{snat}\
             [service.health]\nkind = \"none\"\n",
            s + 1
        );
        for b in 0..16 {
            let w = if b == 0 { weight0 } else { 1 };
            let _ = write!(
                c,
                "[[service.backend]]\nname = \"b{b}\"\naddress = \"{}:80\"\nweight = {w}\n",
                backend(16 * s + b)
            );
        }
    }
    for s in 0..HTTP_SERVICES {
        let _ = write!(
            c,
            "[[service]]\nname = \"web-{s}\"\nvip = \"198.18.0.2\"\nport = {}\nmode = \"http\"\n\
             [service.health]\nkind = \"none\"\n[[service.backend]]\nname = \"a\"\naddress = \"198.18.9.1:80\"\n",
            20000 + s
        );
    }
    c
}

/// The real daemon with 1,000 services.
pub fn daemon() -> String {
    let ns = Netns::create(&format!("xlbt{}cp", std::process::id())).unwrap();
    ns.ip(&["link", "add", "cp0", "type", "veth", "peer", "name", "cp1"])
        .unwrap();
    ns.ip(&["addr", "add", "198.18.0.2/16", "dev", "cp0"]).unwrap();
    ns.ip(&["link", "set", "cp0", "up"]).unwrap();
    ns.ip(&["link", "set", "cp1", "up"]).unwrap();
    let path = temp_file("thousand.toml", &thousand_services(1)).unwrap();
    let t = Instant::now();
    let xlb = XlbProcess::start(&ns, &path, &[]).unwrap();
    let start = t.elapsed();
    let reload = |text: Option<String>| {
        if let Some(text) = text {
            std::fs::write(&path, text).unwrap();
        }
        let t = Instant::now();
        let out = xlb_once(&ns, &["reload"]).unwrap();
        assert!(out.status.success(), "reload: {}", String::from_utf8_lossy(&out.stderr));
        ms(t.elapsed())
    };
    let same: Vec<f64> = (0..3).map(|_| reload(None)).collect();
    let changed: Vec<f64> = (0..3).map(|k| reload(Some(thousand_services(2 + k % 2)))).collect();
    xlb.stop().unwrap();
    format!(
        "The daemon with 1,000 services ({L4_SERVICES} L4 services of 16 backends, the most the ring array \
         holds, and {HTTP_SERVICES} http services each listening on its port); `xlb reload` timed from the \
         command line, medians of 3:\n\n\
         | step | ms |\n|---|---:|\n\
         | start (process start to the admin API answering) | {:.0} |\n\
         | reload, file unchanged | {:.0} |\n\
         | reload, every L4 service's ring changed | {:.0} |\n\n",
        ms(start),
        median(same),
        median(changed)
    )
}
