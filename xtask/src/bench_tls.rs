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

use crate::bench_l7::{idle_growth, median_of, pin_this_thread, spread, wrk_url, Load, Opts, Proc};

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
    failed: u64,
    idle_bytes: f64,
}

/// The TLS runs of one proxy in one round (`memory`: the last round also
/// measures idle connections).
pub fn round(name: &'static str, p: &Proc, opts: &Opts, cpu: Option<u32>, memory: bool) -> Result<TlsResult> {
    let (full, _, f1) = handshakes(false, opts.duration, cpu).with_context(|| format!("{name}: full handshakes"))?;
    let (resumed, share, f2) = handshakes(true, opts.duration, cpu).with_context(|| format!("{name}: resumed"))?;
    let keep_alive = wrk_url(p, opts, cpu, &format!("https://{TLS_PROXY}/"))?;
    let idle_bytes = if memory { idle_cost(p, opts.idle)? } else { 0.0 };
    eprintln!(
        "bench l7 tls: {name}: {full:.0} full handshakes/s, {resumed:.0} resumed/s ({:.0}% resumed), {:.0} req/s keep-alive",
        share * 100.0,
        keep_alive.rps
    );
    Ok(TlsResult {
        name,
        full,
        resumed,
        resumed_share: share,
        keep_alive_range: (keep_alive.rps, keep_alive.rps),
        keep_alive,
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
        failed: rounds.iter().map(|r| r.failed).sum(),
        idle_bytes: rounds.iter().map(|r| r.idle_bytes).fold(0.0, f64::max),
    }
}

pub fn render(opts: &Opts, r: &[TlsResult]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\n## HTTPS (TLS termination)\n\n\
         xlb and HAProxy terminate TLS on the same ECDSA P-256 certificate (made at run time) in front of the same \
         backends, cookie persistence as above; one thread each on CPU 0. Handshakes: {CLIENTS} rustls client \
         threads on CPU 1, TLS 1.3, X25519 offered (both servers have it; xlb would also take X25519MLKEM768), \
         the certificate not verified (the client's CPU goes to handshakes), a new connection per request \
         (`Connection: close`), {} s per run; *resumed*: the clients keep their tickets. Keep-alive: wrk over \
         HTTPS, {} connections. *Idle TLS conn*: RSS growth per idle TLS connection ({} connections, one \
         request each). *CPU us a request*: the proxy's own CPU time (user + system, from /proc) per keep-alive \
         request, which does not depend on what else bounds the run, and *kernel* the part of it spent in the kernel \
         (system time). Medians of {} rounds.\n",
        opts.duration, opts.connections, opts.idle, opts.rounds
    );
    let _ = writeln!(
        o,
        "| proxy | full handshakes/s | resumed handshakes/s | resumed share | keep-alive req/s (min-max) | p50 ms | p99 ms | CPU us a request | kernel | failed | idle TLS conn |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for x in r {
        let _ = writeln!(
            o,
            "| {} | {:.0} | {:.0} | {:.0}% | {:.0} ({:.0}-{:.0}) | {:.3} | {:.3} | {:.1} | {:.1} | {} | {:.1} KiB |",
            x.name,
            x.full,
            x.resumed,
            x.resumed_share * 100.0,
            x.keep_alive.rps,
            x.keep_alive_range.0,
            x.keep_alive_range.1,
            x.keep_alive.p50_ms,
            x.keep_alive.p99_ms,
            x.keep_alive.cpu_us,
            x.keep_alive.sys_us,
            x.failed + x.keep_alive.errors,
            x.idle_bytes / 1024.0
        );
    }
    if let (Some(x), Some(h)) = (
        r.iter().find(|x| x.name == "xlb"),
        r.iter().find(|x| x.name == "haproxy"),
    ) {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        let _ = writeln!(
            o,
            "\nxlb / HAProxy: full handshakes {:.2}x, resumed {:.2}x, keep-alive req/s {:.2}x, p99 {:.2}x, CPU a keep-alive request {:.2}x, idle TLS memory {:.2}x.",
            ratio(x.full, h.full),
            ratio(x.resumed, h.resumed),
            ratio(x.keep_alive.rps, h.keep_alive.rps),
            ratio(x.keep_alive.p99_ms, h.keep_alive.p99_ms),
            ratio(x.keep_alive.cpu_us, h.keep_alive.cpu_us),
            ratio(x.idle_bytes, h.idle_bytes)
        );
        let _ = writeln!(
            o,
            "\nA keep-alive request (medians): xlb's user space (its code, tokio, rustls, libc) {:.1} us, HAProxy's \
             {:.1} us; the kernel {:.1} and \
             {:.1} us. To serve 1.1x HAProxy's keep-alive requests on the same CPU, with the kernel's part as it \
             is, xlb's user space would have {:.1} us a request.",
            x.keep_alive.user_us,
            h.keep_alive.user_us,
            x.keep_alive.sys_us,
            h.keep_alive.sys_us,
            h.keep_alive.cpu_us / 1.1 - x.keep_alive.sys_us
        );
    }
    o
}
