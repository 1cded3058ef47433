//! The TLS part of `cargo xtask bench l7`: xlb against HAProxy (Debian's,
//! OpenSSL) terminating TLS with the same ECDSA P-256 certificate in front
//! of the same backends: full handshakes per second (a new connection per
//! request), resumed handshakes per second (TLS 1.3 tickets), keep-alive
//! HTTPS requests per second with p99 (wrk), and memory per idle TLS
//! connection. The handshake clients are rustls threads of this process,
//! pinned to the load CPU; they offer X25519 only (what both servers
//! support) and skip certificate verification so that their CPU goes to
//! handshakes. Loopback only.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rustls::{pki_types::ServerName, ClientConfig, ClientConnection, HandshakeKind, StreamOwned};

use crate::{
    bench_keepalive,
    bench_l7::{idle_growth, measure, median_of, pin_this_thread, spread, wrk_url, Load, Opts, Proc},
};

pub const TLS_PROXY: &str = "127.0.0.1:18443";
/// Threads of the handshake clients.
const CLIENTS: usize = 16;

/// The certificate both servers present (chain and key in one PEM file,
/// as both read it).
pub fn certificate(dir: &Path) -> Result<std::path::PathBuf> {
    let pki = lab::tls::Pki::new(&dir.join("pki"));
    Ok(pki.issue("bench.pem", &["bench.test"]))
}

/// What the servers need in their configs.
pub fn haproxy_frontend(pem: &Path) -> String {
    format!(
        "\nfrontend fe_tls\n  bind {TLS_PROXY} ssl crt {} alpn h2,http/1.1\n  default_backend be\n",
        pem.display()
    )
}

pub fn xlb_service(pem: &Path, servers: &str) -> String {
    let (vip, port) = TLS_PROXY.split_once(':').expect("addr");
    format!(
        "\n[[service]]\nname = \"bench-tls\"\nvip = \"{vip}\"\nport = {port}\nmode = \"http\"\nbalance = \"roundrobin\"\n\
         [service.tls]\ncerts = [{:?}]\n[service.cookie]\nname = \"SERVERID\"\nmode = \"insert\"\nindirect = true\n\
         nocache = true\n[service.health]\nkind = \"none\"\n{servers}",
        pem.display().to_string()
    )
}

/// The clients' view: X25519 only, no verification, sessions kept (for
/// resumption) or not.
fn client(resume: bool) -> Arc<ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let provider = Arc::new(provider);
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(lab::tls::AnyCertificate(provider)))
        .with_no_client_auth();
    if !resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// One request on a new TLS connection; whether the handshake resumed.
fn one(cfg: &Arc<ClientConfig>, close: bool) -> Result<(StreamOwned<ClientConnection, TcpStream>, bool)> {
    let tcp = TcpStream::connect(TLS_PROXY)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let conn = ClientConnection::new(cfg.clone(), ServerName::try_from("bench.test")?)?;
    let mut s = StreamOwned::new(conn, tcp);
    let connection = if close { "close" } else { "keep-alive" };
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: bench.test\r\nCookie: SERVERID=s1\r\nConnection: {connection}\r\n\r\n"
    )?;
    s.flush()?;
    // The short answer arrives in one record.
    let mut buf = [0u8; 2048];
    let n = s.read(&mut buf)?;
    if !buf[..n].starts_with(b"HTTP/1.1 200") {
        bail!("not a 200: {:?}", String::from_utf8_lossy(&buf[..n]));
    }
    if close {
        s.conn.send_close_notify();
        let _ = s.flush();
    }
    let resumed = s.conn.handshake_kind() == Some(HandshakeKind::Resumed);
    Ok((s, resumed))
}

/// Handshakes per second for `secs` (each a new connection, one request);
/// and the share that resumed.
fn handshakes(resume: bool, secs: u64, cpu: Option<u32>) -> Result<(f64, f64, u64)> {
    let cfg = client(resume);
    // Warm the session cache (and the server) first.
    for _ in 0..CLIENTS {
        one(&cfg, true)?;
    }
    let (done, resumed, failed) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    thread::scope(|s| {
        for _ in 0..CLIENTS {
            s.spawn(|| {
                pin_this_thread(cpu);
                while !stop.load(Ordering::Relaxed) {
                    match one(&cfg, true) {
                        Ok((_, r)) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            resumed.fetch_add(u64::from(r), Ordering::Relaxed);
                        }
                        Err(_) => drop(failed.fetch_add(1, Ordering::Relaxed)),
                    }
                }
            });
        }
        thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
    });
    let (n, r) = (done.load(Ordering::Relaxed), resumed.load(Ordering::Relaxed));
    Ok((
        n as f64 / started.elapsed().as_secs_f64(),
        r as f64 / n.max(1) as f64,
        failed.load(Ordering::Relaxed),
    ))
}

/// Keep-alive HTTPS from [`bench_keepalive`]'s client on the load CPU:
/// returning clients of s1, as wrk's run.
fn lean(p: &Proc, opts: &Opts, cpu: Option<u32>, addr: &str) -> Result<Load> {
    let cfg = client(false);
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nCookie: SERVERID=s1\r\n\r\n");
    measure(p, opts, cpu, || {
        thread::scope(|s| {
            s.spawn(|| {
                pin_this_thread(cpu);
                bench_keepalive::run(&cfg, addr, opts.connections as usize, opts.duration, request.as_bytes())
            })
            .join()
            .expect("the client thread")
        })
    })
}

/// Where HAProxy's TLS frontend listens while xlb runs beside it.
pub const AB_TLS: &str = "127.0.0.1:18444";
pub const AB_PLAIN: &str = "127.0.0.1:18081";

/// The interleaved keep-alive runs: per pair, one run against each proxy.
pub struct Interleaved {
    pairs: usize,
    xlb: Load,
    haproxy: Load,
    /// The median of the pairs' xlb / HAProxy req/s, and its range.
    ratio: f64,
    ratios: (f64, f64),
}

/// Keep-alive HTTPS from the lean client with xlb and HAProxy both up (HAProxy
/// on other ports), runs of half the usual length alternating between them,
/// the order flipped every pair: drift of the machine's speed, which moves
/// req/s by a third between rounds here, then hits both alike. `xlb` is
/// xlb's command line.
pub fn interleaved(
    dir: &Path,
    xlb: &[String],
    opts: &Opts,
    proxy_cpu: Option<u32>,
    cpu: Option<u32>,
) -> Result<Interleaved> {
    let cfg = std::fs::read_to_string(dir.join("haproxy.cfg"))?
        .replace(crate::bench_l7::PROXY, AB_PLAIN)
        .replace(TLS_PROXY, AB_TLS);
    std::fs::write(dir.join("haproxy-ab.cfg"), cfg)?;
    let ab_cfg = dir.join("haproxy-ab.cfg").display().to_string();
    let args: Vec<&str> = xlb.iter().map(String::as_str).collect();
    let x = Proc::spawn(
        "xlb",
        proxy_cpu,
        &args,
        &[("RUST_LOG", "warn")],
        &dir.join("xlb-ab.log"),
    )?;
    let h = Proc::spawn(
        "haproxy",
        proxy_cpu,
        &["haproxy", "-db", "-f", &ab_cfg],
        &[],
        &dir.join("haproxy-ab.log"),
    )?;
    // (Asked on their plain ports.)
    crate::bench_l7::wait_http(crate::bench_l7::PROXY, "xlb")?;
    crate::bench_l7::wait_http(AB_PLAIN, "haproxy")?;
    let secs = (opts.duration / 2).max(2);
    let run_opts = Opts {
        duration: secs,
        ..opts.clone()
    };
    let pairs = (2 * opts.rounds).max(2);
    let (mut xs, mut hs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..pairs {
        let one = |p: &Proc, addr: &str| lean(p, &run_opts, cpu, addr);
        let (a, b) = if i % 2 == 0 {
            let a = one(&x, TLS_PROXY)?;
            (a, one(&h, AB_TLS)?)
        } else {
            let b = one(&h, AB_TLS)?;
            (one(&x, TLS_PROXY)?, b)
        };
        eprintln!(
            "bench l7 tls interleaved {}/{pairs}: xlb {:.0} req/s, haproxy {:.0} req/s",
            i + 1,
            a.rps,
            b.rps
        );
        ratios.push(a.rps / b.rps.max(1.0));
        xs.push(a);
        hs.push(b);
    }
    Ok(Interleaved {
        pairs,
        xlb: crate::bench_l7::median(xs),
        haproxy: crate::bench_l7::median(hs),
        ratio: median_of(ratios.clone()),
        ratios: spread(ratios.into_iter()),
    })
}

/// Memory per idle TLS connection (as for plain ones).
fn idle_cost(p: &Proc, n: usize) -> Result<f64> {
    let cfg = client(false);
    idle_growth(p, n, || one(&cfg, false).map(|(s, _)| s))
}

pub struct TlsResult {
    pub name: &'static str,
    full: f64,
    resumed: f64,
    resumed_share: f64,
    keep_alive: Load,
    /// The slowest and fastest round's keep-alive req/s.
    keep_alive_range: (f64, f64),
    /// The same load from [`bench_keepalive`]'s client, and its range.
    lean: Load,
    lean_range: (f64, f64),
    failed: u64,
    idle_bytes: f64,
}

/// The TLS runs of one proxy in one round (`memory`: the last round also
/// measures idle connections).
pub fn round(name: &'static str, p: &Proc, opts: &Opts, cpu: Option<u32>, memory: bool) -> Result<TlsResult> {
    let (full, _, f1) = handshakes(false, opts.duration, cpu).with_context(|| format!("{name}: full handshakes"))?;
    let (resumed, share, f2) = handshakes(true, opts.duration, cpu).with_context(|| format!("{name}: resumed"))?;
    let keep_alive = wrk_url(p, opts, cpu, &format!("https://{TLS_PROXY}/"))?;
    let lean = lean(p, opts, cpu, TLS_PROXY).with_context(|| format!("{name}: keep-alive (lean client)"))?;
    let idle_bytes = if memory { idle_cost(p, opts.idle)? } else { 0.0 };
    eprintln!(
        "bench l7 tls: {name}: {full:.0} full handshakes/s, {resumed:.0} resumed/s ({:.0}% resumed), keep-alive \
         {:.0} req/s with wrk (load CPU {:.0}% busy), {:.0} req/s with the lean client (load CPU {:.0}% busy)",
        share * 100.0,
        keep_alive.rps,
        keep_alive.load_busy * 100.0,
        lean.rps,
        lean.load_busy * 100.0
    );
    Ok(TlsResult {
        name,
        full,
        resumed,
        resumed_share: share,
        keep_alive_range: (keep_alive.rps, keep_alive.rps),
        keep_alive,
        lean_range: (lean.rps, lean.rps),
        lean,
        failed: f1 + f2,
        idle_bytes,
    })
}

/// Medians over rounds (memory: from the round that measured it).
pub fn combine(name: &'static str, rounds: Vec<TlsResult>) -> TlsResult {
    let mid = |f: &dyn Fn(&TlsResult) -> f64| median_of(rounds.iter().map(f).collect());
    TlsResult {
        name,
        full: mid(&|r| r.full),
        resumed: mid(&|r| r.resumed),
        resumed_share: mid(&|r| r.resumed_share),
        keep_alive: crate::bench_l7::median(rounds.iter().map(|r| r.keep_alive.clone()).collect()),
        keep_alive_range: spread(rounds.iter().map(|r| r.keep_alive.rps)),
        lean: crate::bench_l7::median(rounds.iter().map(|r| r.lean.clone()).collect()),
        lean_range: spread(rounds.iter().map(|r| r.lean.rps)),
        failed: rounds.iter().map(|r| r.failed).sum(),
        idle_bytes: rounds.iter().map(|r| r.idle_bytes).fold(0.0, f64::max),
    }
}

pub fn render(opts: &Opts, r: &[TlsResult], ab: Option<&Interleaved>) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\n## HTTPS (TLS termination)\n\n\
         xlb and HAProxy terminate TLS on the same ECDSA P-256 certificate (made at run time) in front of the same \
         backends, cookie persistence as above; one thread each on CPU 0. Handshakes: {CLIENTS} rustls client \
         threads on CPU 1, TLS 1.3, X25519 offered (both servers have it; xlb would also take X25519MLKEM768), \
         the certificate not verified (the client's CPU goes to handshakes), a new connection per request \
         (`Connection: close`), {} s per run; *resumed*: the clients keep their tickets. *Idle TLS conn*: RSS \
         growth per idle TLS connection ({} connections, one request each). Medians of {} rounds.\n",
        opts.duration, opts.idle, opts.rounds
    );
    let _ = writeln!(
        o,
        "| proxy | full handshakes/s | resumed handshakes/s | resumed share | failed | idle TLS conn |\n\
         |---|---:|---:|---:|---:|---:|"
    );
    for x in r {
        let _ = writeln!(
            o,
            "| {} | {:.0} | {:.0} | {:.0}% | {} | {:.1} KiB |",
            x.name,
            x.full,
            x.resumed,
            x.resumed_share * 100.0,
            x.failed,
            x.idle_bytes / 1024.0
        );
    }
    let _ = writeln!(
        o,
        "\nKeep-alive HTTPS, {} connections, returning clients, {} s per run, by two clients on CPU 1 (with the \
         backends): wrk, and the benchmark's own lean client (rustls, one write and one read a request; \
         `xtask/src/bench_keepalive.rs`). wrk spends about as much CPU on a request as the proxies do, so on \
         this machine its CPU, not the proxy's, can be what bounds the run: *load CPU busy* tells (near 100%: \
         the load bounds it, and req/s say little of the proxy). *CPU us a request*: the proxy's own CPU time \
         (user + system, from /proc) per request, which does not depend on what else bounds the run; *kernel*: \
         the part of it in the kernel.\n\n\
         | proxy | client | req/s (min-max) | p50 ms | p99 ms | CPU us a request | kernel | load CPU busy | errors |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|",
        opts.connections, opts.duration
    );
    for x in r {
        for (client, l, range) in [
            ("wrk", &x.keep_alive, x.keep_alive_range),
            ("lean", &x.lean, x.lean_range),
        ] {
            let _ = writeln!(
                o,
                "| {} | {client} | {:.0} ({:.0}-{:.0}) | {:.3} | {:.3} | {:.1} | {:.1} | {:.0}% | {} |",
                x.name,
                l.rps,
                range.0,
                range.1,
                l.p50_ms,
                l.p99_ms,
                l.cpu_us,
                l.sys_us,
                l.load_busy * 100.0,
                l.errors
            );
        }
    }
    if let (Some(x), Some(h)) = (
        r.iter().find(|x| x.name == "xlb"),
        r.iter().find(|x| x.name == "haproxy"),
    ) {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        let lean = ratio(x.lean.rps, h.lean.rps);
        let _ = writeln!(
            o,
            "\nxlb / HAProxy: full handshakes {:.2}x, resumed {:.2}x, idle TLS memory {:.2}x; keep-alive req/s \
             {lean:.2}x with the lean client (p99 {:.2}x, CPU a request {:.2}x), {:.2}x with wrk (p99 {:.2}x, CPU a \
             request {:.2}x).",
            ratio(x.full, h.full),
            ratio(x.resumed, h.resumed),
            ratio(x.idle_bytes, h.idle_bytes),
            ratio(x.lean.p99_ms, h.lean.p99_ms),
            ratio(x.lean.cpu_us, h.lean.cpu_us),
            ratio(x.keep_alive.rps, h.keep_alive.rps),
            ratio(x.keep_alive.p99_ms, h.keep_alive.p99_ms),
            ratio(x.keep_alive.cpu_us, h.keep_alive.cpu_us),
        );
        let verdict = |met: bool| if met { "met" } else { "MISSED" };
        // Judged on the interleaved runs when there are some.
        let keep_alive = ab.map_or(lean, |a| a.ratio);
        if let Some(a) = ab {
            let _ = writeln!(
                o,
                "\nInterleaved: both proxies up (HAProxy on other ports), the lean client's keep-alive runs of {} s \
                 alternating between them, {} pairs, the order flipped every pair, so that the machine's drift \
                 (req/s move by a third between rounds above) hits both alike.\n\n\
                 | proxy | req/s | p50 ms | p99 ms | CPU us a request | kernel | load CPU busy |\n\
                 |---|---:|---:|---:|---:|---:|---:|",
                (opts.duration / 2).max(2),
                a.pairs
            );
            for (name, l) in [("xlb", &a.xlb), ("haproxy", &a.haproxy)] {
                let _ = writeln!(
                    o,
                    "| {name} | {:.0} | {:.3} | {:.3} | {:.1} | {:.1} | {:.0}% |",
                    l.rps,
                    l.p50_ms,
                    l.p99_ms,
                    l.cpu_us,
                    l.sys_us,
                    l.load_busy * 100.0
                );
            }
            let _ = writeln!(
                o,
                "\nxlb / HAProxy keep-alive req/s, median of the pairs: {:.2}x (pairs {:.2}x-{:.2}x); CPU a request \
                 {:.2}x.",
                a.ratio,
                a.ratios.0,
                a.ratios.1,
                ratio(a.xlb.cpu_us, a.haproxy.cpu_us)
            );
        }
        let _ = writeln!(
            o,
            "\nTargets against HAProxy: full handshakes/s >= 1.5x ({}), keep-alive HTTPS req/s >= 1.1x where the \
             proxies bound the run ({}: {keep_alive:.2}x), idle TLS memory <= HAProxy's ({}).",
            verdict(ratio(x.full, h.full) >= 1.5),
            verdict(keep_alive >= 1.1),
            verdict(x.idle_bytes <= h.idle_bytes),
        );
        let _ = writeln!(
            o,
            "\nA keep-alive request with the lean client (medians): xlb's user space (its code, tokio, rustls, libc) \
             {:.1} us, HAProxy's {:.1} us; the kernel {:.1} and {:.1} us.",
            x.lean.user_us, h.lean.user_us, x.lean.sys_us, h.lean.sys_us,
        );
    }
    o
}
