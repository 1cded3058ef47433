//! The access-log runs of `cargo xtask bench l7` (alone: `cargo xtask
//! bench log`): xlb with its access log off, xlb with httplog lines to a
//! UDP syslog sink, and HAProxy with `option httplog` to the same sink,
//! under the same keep-alive load. The sink (a thread here, on the load
//! generator's CPU) counts the lines it receives.

use std::{
    fmt::Write as _,
    net::UdpSocket,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::bench_l7::{measured, median, pin_this_thread, wait_http, Load, Opts, Proc, PROXY};

/// Where both proxies send their lines.
pub const SINK: &str = "127.0.0.1:15514";

/// A UDP syslog receiver that counts lines until dropped.
struct Sink {
    lines: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    fn start(cpu: Option<u32>) -> Result<Sink> {
        let sock = UdpSocket::bind(SINK).context("binding the syslog sink")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let (lines, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (l, s) = (lines.clone(), stop.clone());
        thread::spawn(move || {
            pin_this_thread(cpu);
            let mut buf = [0u8; 2048];
            while !s.load(Relaxed) {
                if sock.recv(&mut buf).is_ok() {
                    l.fetch_add(1, Relaxed);
                }
            }
        });
        Ok(Sink { lines, stop })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// One proxy set-up of the log runs.
struct Run {
    name: &'static str,
    cmd: Vec<String>,
    /// xlb's writer thread moved to the load CPU: the serving thread
    /// keeps its CPU to itself, as on a machine with a spare core.
    writer_moved: bool,
    loads: Vec<Load>,
    /// Lines received per request answered (1: none lost).
    lines_per_request: Vec<f64>,
}

/// The log runs; returns the report's section.
pub fn run(dir: &Path, xlb: &str, opts: &Opts, proxy_cpu: Option<u32>, load_cpu: Option<u32>) -> Result<String> {
    let conf = |f: &str| dir.join(f).display().to_string();
    let mut runs = [
        Run {
            name: "xlb, log off",
            cmd: vec![xlb.into(), "run".into(), "--config".into(), conf("xlb.toml")],
            writer_moved: false,
            loads: Vec::new(),
            lines_per_request: Vec::new(),
        },
        Run {
            name: "xlb, httplog to syslog",
            cmd: vec![xlb.into(), "run".into(), "--config".into(), conf("xlb-log.toml")],
            writer_moved: false,
            loads: Vec::new(),
            lines_per_request: Vec::new(),
        },
        Run {
            name: "xlb, httplog to syslog, writer on CPU 1",
            cmd: vec![xlb.into(), "run".into(), "--config".into(), conf("xlb-log.toml")],
            writer_moved: true,
            loads: Vec::new(),
            lines_per_request: Vec::new(),
        },
        Run {
            name: "haproxy, httplog to syslog",
            cmd: vec!["haproxy".into(), "-db".into(), "-f".into(), conf("haproxy-log.cfg")],
            writer_moved: false,
            loads: Vec::new(),
            lines_per_request: Vec::new(),
        },
    ];
    let sink = Sink::start(load_cpu)?;
    for round in 0..opts.rounds {
        for r in &mut runs {
            let args: Vec<&str> = r.cmd.iter().map(String::as_str).collect();
            let log = dir.join("log-run.log");
            let p = Proc::spawn("proxy", proxy_cpu, &args, &[("RUST_LOG", "warn")], &log)?;
            wait_http(PROXY, r.name).with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
            if r.writer_moved {
                if let Some(cpu) = load_cpu {
                    anyhow::ensure!(p.pin_threads("xlb-log", cpu) == 1, "xlb's log writer thread not found");
                }
            }
            // Warm-up, then the measured run (new clients: a cookie set on
            // each first request, as in the main runs).
            measured(&p, &Opts { duration: 1, ..*opts }, opts.connections, load_cpu, None)?;
            thread::sleep(Duration::from_millis(200));
            let before = sink.lines.load(Relaxed);
            let load = measured(&p, opts, opts.connections, load_cpu, None)?;
            // The writer sends within milliseconds; give it a moment.
            thread::sleep(Duration::from_millis(300));
            let lines = sink.lines.load(Relaxed) - before;
            let requests = load.rps * opts.duration as f64;
            r.lines_per_request.push(lines as f64 / requests.max(1.0));
            eprintln!(
                "bench log round {}/{}: {}: {:.0} req/s, p99 {:.2} ms, {lines} lines for {requests:.0} requests",
                round + 1,
                opts.rounds,
                r.name,
                load.rps,
                load.p99_ms
            );
            r.loads.push(load);
        }
    }
    let rps: Vec<f64> = runs.iter().map(|r| median(r.loads.clone()).rps).collect();
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\n## Access logs\n\nThe same keep-alive load ({} connections, new clients, {} s, {} rounds; medians), \
         each proxy logging every request in HAProxy's httplog format to a UDP syslog sink on {SINK} \
         (a receiver on the load generator's CPU that counts lines).\n",
        opts.connections, opts.duration, opts.rounds
    );
    let _ = writeln!(
        o,
        "Each proxy runs on CPU 0 (all its threads), the load (wrk, the backends, the sink) on CPU 1. HAProxy \
         formats and sends each line on the thread that serves the request; xlb's workers only queue a line, \
         and its writer thread (`xlb-log`) formats and sends them in batches (`sendmmsg`). In the run \
         *writer on CPU 1* the bench moves that one thread to the load's CPU after start, as a machine with a \
         spare core would run it; in the other xlb run it shares CPU 0 with the serving thread. The CPU column \
         is the proxy process's, all threads, per request. On loopback the sink's receiving side (IP, UDP, \
         the wake-up) is paid by the sending CPU too.\n"
    );
    let _ = writeln!(
        o,
        "| run | req/s | min-max | p99 ms | CPU us a request | lines a request |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
    for r in &runs {
        let m = median(r.loads.clone());
        let (lo, hi) = r
            .loads
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), l| (lo.min(l.rps), hi.max(l.rps)));
        let lpr = r.lines_per_request.iter().sum::<f64>() / r.lines_per_request.len().max(1) as f64;
        let _ = writeln!(
            o,
            "| {} | {:.0} | {lo:.0}-{hi:.0} | {:.2} | {:.1} | {:.2} |",
            r.name,
            m.rps,
            m.p99_ms,
            m.cpu_us,
            if r.name.contains("off") { 0.0 } else { lpr }
        );
    }
    let _ = writeln!(
        o,
        "\n- xlb with logging on / off, the writer off the serving CPU (on the load's): **{:.2}x** (target >= 0.97x); \
         the writer sharing the serving CPU: {:.2}x\n- xlb / HAProxy, both logging, every thread on CPU 0: \
         **{:.2}x** (target >= 1x)",
        rps[2] / rps[0],
        rps[1] / rps[0],
        rps[1] / rps[3]
    );
    Ok(o)
}
