//! The access-log runs of `cargo xtask bench l7` (alone: `cargo xtask
//! bench log`): xlb with its access log off, xlb with httplog lines to a
//! UDP syslog sink, and HAProxy without and with `option httplog` to the
//! same sink, under the same keep-alive load. The sink (a thread here, on
//! the load generator's CPU) counts the lines it receives. A last run
//! measures what the datagrams alone cost the sending CPU.

use std::{
    fmt::Write as _,
    net::UdpSocket,
    os::fd::AsRawFd,
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

/// A UDP syslog receiver that counts lines (and their bytes) until dropped.
struct Sink {
    lines: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    fn start(cpu: Option<u32>) -> Result<Sink> {
        let sock = UdpSocket::bind(SINK).context("binding the syslog sink")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let (lines, bytes, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (l, b, s) = (lines.clone(), bytes.clone(), stop.clone());
        thread::spawn(move || {
            pin_this_thread(cpu);
            let mut buf = [0u8; 2048];
            while !s.load(Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    l.fetch_add(1, Relaxed);
                    b.fetch_add(n as u64, Relaxed);
                }
            }
        });
        Ok(Sink { lines, bytes, stop })
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
            name: "haproxy, log off",
            cmd: vec!["haproxy".into(), "-db".into(), "-f".into(), conf("haproxy.cfg")],
            writer_moved: false,
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
    // xlb's lines seen at the sink, and their bytes: the floor's datagrams
    // are as long.
    let mut line_bytes = (0u64, 0u64);
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
            let (before, bytes_before) = (sink.lines.load(Relaxed), sink.bytes.load(Relaxed));
            let load = measured(&p, opts, opts.connections, load_cpu, None)?;
            // The writer sends within milliseconds; give it a moment.
            thread::sleep(Duration::from_millis(300));
            let lines = sink.lines.load(Relaxed) - before;
            if r.name.starts_with("xlb") {
                line_bytes.0 += lines;
                line_bytes.1 += sink.bytes.load(Relaxed) - bytes_before;
            }
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
    let len = (line_bytes.1 / line_bytes.0.max(1)).max(1) as usize;
    let floor = datagram_floor(len, proxy_cpu)?;
    let off_cpu = median(runs[0].loads.clone()).cpu_us;
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
        rps[1] / rps[4]
    );
    let _ = writeln!(
        o,
        "- HAProxy with logging on / off: {:.2}x\n\nThe least a datagram a line costs here: a bare loop on CPU 0 \
         sending datagrams of {len} bytes (the mean of xlb's lines above) to the same sink, {FLOOR_BATCH} a \
         `sendmmsg` call, spends **{floor:.2} us** of its CPU a datagram (the kernel's UDP send and, on \
         loopback, the receive). With xlb's {off_cpu:.1} us a request without logs, a sender that did nothing \
         but that one datagram a request would run at {:.2}x of log-off at best on a saturated CPU; the \
         0.97x target needs a line to cost under {:.2} us in all.",
        rps[4] / rps[3],
        off_cpu / (off_cpu + floor),
        off_cpu * (1.0 / 0.97 - 1.0)
    );
    Ok(o)
}

/// Datagrams a `sendmmsg` call in [`datagram_floor`], as xlb's writer.
const FLOOR_BATCH: usize = 64;

/// CPU time of datagrams alone: a thread on `cpu` sends datagrams of `len`
/// bytes to the sink, [`FLOOR_BATCH`] a `sendmmsg` call at about the
/// logging runs' rate, and its CPU time is divided by what it sent
/// (microseconds a datagram).
fn datagram_floor(len: usize, cpu: Option<u32>) -> Result<f64> {
    const CALLS: usize = 2000;
    thread::spawn(move || -> Result<f64> {
        pin_this_thread(cpu);
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.connect(SINK)?;
        sock.set_nonblocking(true)?;
        let line = vec![b'x'; len];
        let mut iov: Vec<libc::iovec> = (0..FLOOR_BATCH)
            .map(|_| libc::iovec {
                iov_base: line.as_ptr() as *mut _,
                iov_len: line.len(),
            })
            .collect();
        // SAFETY: mmsghdr is plain data; zero is an empty header.
        let mut msgs: Vec<libc::mmsghdr> = (0..FLOOR_BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        let start = thread_cpu_us();
        let mut sent = 0u64;
        for _ in 0..CALLS {
            // SAFETY: the headers point at `iov`, which points at `line`;
            // all outlive the call.
            let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), FLOOR_BATCH as u32, 0) };
            sent += n.max(0) as u64;
            // ~40,000 datagrams a second, as the logging runs send them.
            thread::sleep(Duration::from_micros(1600));
        }
        anyhow::ensure!(sent > 0, "the floor run sent nothing");
        Ok((thread_cpu_us() - start) / sent as f64)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the floor thread panicked"))?
}

/// This thread's CPU time (user + system), in microseconds.
fn thread_cpu_us() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e6 + t.tv_nsec as f64 / 1e3
}
