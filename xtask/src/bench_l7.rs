//! `cargo xtask bench l7`: xlb's HTTP proxy against HAProxy (cookie insert
//! indirect nocache, the same persistence) and nginx (plain round robin),
//! one after the other on the same backends with the same load generator
//! (wrk), each proxy pinned to the same CPU. Reports requests/s, p50/p99
//! latency, RSS after load and memory per idle keep-alive connection, and
//! the ratios, to bench-results/l7.md. Loopback only.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{bench_log, bench_tls, root, setup};

pub const PROXY: &str = "127.0.0.1:18080";
const BACKENDS: [(&str, u16); 3] = [("s1", 19001), ("s2", 19002), ("s3", 19003)];
/// Keep-alive clients of the crowd run.
const CROWD: u32 = 10_000;
/// Concurrent requests per backend for xlb and HAProxy (more wait in the
/// proxy's queue): 10,000 clients and a connection to a backend for each
/// would not fit the 20,000 open files a process may have here.
const BACKEND_MAXCONN: u32 = 1000;
/// HAProxy reserves two files a connection (2 x maxconn + 15 must fit the
/// open-files limit, which cannot be raised here past 20,000 without
/// CAP_SYS_RESOURCE): 9,992 is the most it takes, so 8 of the crowd's
/// clients wait for it in the kernel's accept queue.
const HAPROXY_MAXCONN: u32 = 9992;

#[derive(Clone)]
pub struct Opts {
    pub duration: u64,
    pub connections: u32,
    pub idle: usize,
    /// Rounds through the three proxies; medians are reported.
    pub rounds: usize,
    /// Only the HTTPS runs (xlb and HAProxy), into bench-results/tls.md.
    pub tls_only: bool,
    /// Only the access-log runs, into bench-results/log.md.
    pub log_only: bool,
}

/// `program`, run on `cpu` when one is given.
fn pinned(cpu: Option<u32>, program: &str) -> Command {
    match cpu {
        Some(n) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &n.to_string(), program]);
            c
        }
        None => Command::new(program),
    }
}

/// A child process, killed when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn spawn(name: &'static str, cpu: Option<u32>, cmd: &[&str], env: &[(&str, &str)], log: &Path) -> Result<Proc> {
        let mut c = pinned(cpu, cmd[0]);
        c.args(&cmd[1..]);
        let out = std::fs::File::create(log)?;
        c.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = c.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc { child })
    }

    /// CPU seconds used so far by the process and its children (nginx's
    /// workers), from /proc: user and system (kernel) time.
    pub fn cpu_split(&self) -> (f64, f64) {
        let pid = self.child.id();
        let (mut user, mut sys) = (0u64, 0u64);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // Fields after the command's closing parenthesis: state, ppid, ...
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let own = head.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()) == Some(pid);
            let child = f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid);
            if own || child {
                let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                user += field(11);
                sys += field(12);
            }
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        (user as f64 / hz, sys as f64 / hz)
    }

    /// Moves the process's threads named `comm` to `cpu`; how many moved.
    pub fn pin_threads(&self, comm: &str, cpu: u32) -> usize {
        let dir = format!("/proc/{}/task", self.child.id());
        let mut moved = 0;
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let named = std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim_end() == comm);
            let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else {
                continue;
            };
            if named {
                // SAFETY: a cpu_set_t on the stack, filled by the libc macros' equivalents.
                let ok = unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu as usize, &mut set);
                    libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
                };
                moved += usize::from(ok);
            }
        }
        moved
    }

    /// Resident memory in KiB (taskset execs the program: same pid).
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GET on a connection; returns the response head and body.
fn exchange(s: &mut TcpStream, cookie: Option<&str>) -> Result<String> {
    let c = cookie.map(|c| format!("Cookie: SERVERID={c}\r\n")).unwrap_or_default();
    write!(s, "GET / HTTP/1.1\r\nHost: bench\r\n{c}\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return Ok(text);
            }
        }
    }
}

pub fn wait_http(addr: &str, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = TcpStream::connect(addr)
            .ok()
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                exchange(&mut s, None).ok()
            })
            .is_some_and(|r| r.starts_with("HTTP/1.1 200"));
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} did not answer on {addr}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// What wrk measured.
#[derive(Default, Clone)]
pub struct Load {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    /// The proxy's CPU during the run: share of one CPU, and microseconds
    /// per request (what the proxy would serve on a CPU of its own is
    /// 1e6 / cpu_us, whatever bounds the run).
    pub cpu_share: f64,
    pub cpu_us: f64,
    /// `cpu_us` in user space (the proxy, its libraries) and in the
    /// kernel (system time: the socket calls).
    pub user_us: f64,
    pub sys_us: f64,
    /// The load CPU's busy share during the run (near 1: the load, not the
    /// proxy, may be what bounds it).
    pub load_busy: f64,
}

impl Load {
    /// Adds the proxy's CPU use over the run (user and system seconds in
    /// `secs`).
    pub fn with_cpu(mut self, (user, sys): (f64, f64), secs: u64) -> Load {
        let per_request = |t: f64| t * 1e6 / (self.rps * secs as f64).max(1.0);
        self.cpu_share = (user + sys) / secs as f64;
        (self.cpu_us, self.user_us, self.sys_us) = (per_request(user + sys), per_request(user), per_request(sys));
        self
    }
}

/// wrk with `conns` connections against the proxy `p` for the run's
/// duration, with the proxy's CPU use.
pub fn measured(p: &Proc, opts: &Opts, conns: u32, cpu: Option<u32>, cookie: Option<&str>) -> Result<Load> {
    measured_at(p, opts, conns, cpu, &format!("http://{PROXY}/"), cookie)
}

/// As [`measured`], against `url`.
fn measured_at(p: &Proc, opts: &Opts, conns: u32, cpu: Option<u32>, url: &str, cookie: Option<&str>) -> Result<Load> {
    let header = cookie.map(|v| format!("Cookie: SERVERID={v}"));
    measure(p, opts, cpu, || {
        run_wrk(conns, cpu, opts.duration, url, header.as_deref())
    })
}

/// `run` (a load of `opts.duration` seconds), with the proxy's CPU time
/// and the load CPU's busy share over it.
pub fn measure(p: &Proc, opts: &Opts, cpu: Option<u32>, run: impl FnOnce() -> Result<Load>) -> Result<Load> {
    let (before, busy_before) = (p.cpu_split(), cpu_times(cpu));
    let l = run()?;
    let (after, busy_after) = (p.cpu_split(), cpu_times(cpu));
    let mut l = l.with_cpu((after.0 - before.0, after.1 - before.1), opts.duration);
    let total = (busy_after.1 - busy_before.1).max(1);
    l.load_busy = (busy_after.0 - busy_before.0) as f64 / total as f64;
    Ok(l)
}

/// Busy and total time of `cpu` (all CPUs for None) so far, in clock
/// ticks, from /proc/stat.
fn cpu_times(cpu: Option<u32>) -> (u64, u64) {
    let name = cpu.map_or("cpu".to_string(), |n| format!("cpu{n}"));
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
    else {
        return (0, 0);
    };
    let t: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = t.iter().take(8).sum();
    // idle and iowait are not busy.
    let idle = t.get(3).copied().unwrap_or(0) + t.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Pins the calling thread to `cpu` (the load generator's).
pub fn pin_this_thread(cpu: Option<u32>) {
    let Some(cpu) = cpu else { return };
    // SAFETY: a cpu_set_t on the stack, filled by the libc macros' equivalents.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The median of `v`.
pub fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn parse_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, scale) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (s, 1.0)
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

/// wrk against `url` (returning clients of s1), as [`measured`].
pub fn wrk_url(p: &Proc, opts: &Opts, cpu: Option<u32>, url: &str) -> Result<Load> {
    measured_at(p, opts, opts.connections, cpu, url, Some("s1"))
}

fn run_wrk(conns: u32, cpu: Option<u32>, duration: u64, url: &str, header: Option<&str>) -> Result<Load> {
    let mut c = pinned(cpu, "wrk");
    c.args(["-t1", &format!("-c{conns}"), &format!("-d{duration}s"), "--latency"]);
    if let Some(h) = header {
        c.args(["-H", h]);
    }
    let out = c.arg(url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut l = Load::default();
    for line in text.lines() {
        let t = line.trim();
        let mut w = t.split_whitespace();
        match (w.next(), w.next()) {
            (Some("Requests/sec:"), Some(v)) => l.rps = v.parse().unwrap_or(0.0),
            (Some("50%"), Some(v)) => l.p50_ms = parse_ms(v).unwrap_or(0.0),
            (Some("99%"), Some(v)) => l.p99_ms = parse_ms(v).unwrap_or(0.0),
            (Some("Non-2xx"), _) => l.errors += t.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0),
            (Some("Socket"), _) => {
                l.errors += t
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum::<u64>()
            }
            _ => {}
        }
    }
    if l.rps == 0.0 {
        bail!("no Requests/sec in wrk's output:\n{text}");
    }
    Ok(l)
}

/// The lowest and highest of `v`.
pub fn spread(v: impl Iterator<Item = f64>) -> (f64, f64) {
    v.fold((f64::MAX, 0.0), |(lo, hi), x| (lo.min(x), hi.max(x)))
}

/// Each figure's median over the runs.
pub fn median(mut v: Vec<Load>) -> Load {
    let mid = |v: &mut Vec<Load>, f: fn(&Load) -> f64| {
        v.sort_by(|a, b| f(a).total_cmp(&f(b)));
        f(&v[v.len() / 2])
    };
    Load {
        rps: mid(&mut v, |l| l.rps),
        p50_ms: mid(&mut v, |l| l.p50_ms),
        p99_ms: mid(&mut v, |l| l.p99_ms),
        errors: v.iter().map(|l| l.errors).sum(),
        cpu_share: mid(&mut v, |l| l.cpu_share),
        cpu_us: mid(&mut v, |l| l.cpu_us),
        user_us: mid(&mut v, |l| l.user_us),
        sys_us: mid(&mut v, |l| l.sys_us),
        load_busy: mid(&mut v, |l| l.load_busy),
    }
}

struct Result1 {
    name: &'static str,
    crowd: Load,
    /// RSS right after the crowd run (the largest of the rounds).
    crowd_rss_kib: u64,
    /// Min and max req/s of the rounds: new clients, returning.
    spread: [(f64, f64); 2],
    new_clients: Load,
    returning: Load,
    rss_kib: u64,
    idle_bytes: f64,
}

fn configs(dir: &Path, pem: &Path) -> Result<()> {
    let servers: String = BACKENDS
        .iter()
        .map(|(n, p)| {
            format!(
                "  server {{ listen 127.0.0.1:{p}; location / {{ add_header X-Backend {n}; return 200 \"{n}\\n\"; }} }}\n"
            )
        })
        .collect();
    let nginx_common = |name: &str| {
        let d = dir.display();
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 20000;\npid {d}/{name}.pid;\n\
             error_log {d}/{name}.err warn;\nevents {{ worker_connections 19000; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/{name}-body;\n\
             proxy_temp_path {d}/{name}-proxy;\n  fastcgi_temp_path {d}/{name}-fcgi;\n  uwsgi_temp_path {d}/{name}-uwsgi;\n\
             scgi_temp_path {d}/{name}-scgi;\n"
        )
    };
    std::fs::write(
        dir.join("backends.conf"),
        format!("{}{servers}}}\n", nginx_common("backends")),
    )?;
    let upstream: String = BACKENDS
        .iter()
        .map(|(_, p)| format!("    server 127.0.0.1:{p};\n"))
        .collect();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "{}  upstream be {{\n{upstream}    keepalive 64;\n  }}\n  server {{\n    listen {PROXY};\n    location / {{\n      \
             proxy_pass http://be;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
            nginx_common("nginx")
        ),
    )?;
    let hservers: String = BACKENDS
        .iter()
        .map(|(n, p)| format!("  server {n} 127.0.0.1:{p} cookie {n} maxconn {BACKEND_MAXCONN}\n"))
        .collect();
    std::fs::write(
        dir.join("haproxy.cfg"),
        format!(
            "global\n  nbthread 1\n  maxconn {HAPROXY_MAXCONN}\n\ndefaults\n  mode http\n  option http-keep-alive\n  timeout connect 5s\n  \
             timeout client 30s\n  timeout server 30s\n\nfrontend fe\n  bind {PROXY}\n  default_backend be\n\n\
             backend be\n  balance roundrobin\n  cookie SERVERID insert indirect nocache\n{hservers}{}",
            bench_tls::haproxy_frontend(pem)
        ),
    )?;
    // The same with access logs on, to the log runs' syslog sink.
    let haproxy = std::fs::read_to_string(dir.join("haproxy.cfg"))?;
    std::fs::write(
        dir.join("haproxy-log.cfg"),
        haproxy
            .replacen("global\n", &format!("global\n  log {} local2\n", bench_log::SINK), 1)
            .replacen("defaults\n", "defaults\n  log global\n  option httplog\n", 1),
    )?;
    let xservers: String = BACKENDS
        .iter()
        .map(|(n, p)| {
            format!(
                "[[service.backend]]\nname = \"{n}\"\naddress = \"127.0.0.1:{p}\"\ncookie = \"{n}\"\nmaxconn = {BACKEND_MAXCONN}\n"
            )
        })
        .collect();
    let (vip, port) = PROXY.split_once(':').expect("addr");
    std::fs::write(
        dir.join("xlb.toml"),
        format!(
            "[global]\nadmin = \"127.0.0.1:19900\"\n\n[[service]]\nname = \"bench\"\nvip = \"{vip}\"\nport = {port}\n\
             mode = \"http\"\nbalance = \"roundrobin\"\n[service.cookie]\nname = \"SERVERID\"\nmode = \"insert\"\n\
             indirect = true\nnocache = true\n[service.health]\nkind = \"none\"\n{xservers}{}",
            bench_tls::xlb_service(pem, &xservers)
        ),
    )?;
    // xlb's access log is off in the main runs, as HAProxy's and nginx's
    // are; the log runs turn it on.
    let xlb = std::fs::read_to_string(dir.join("xlb.toml"))?;
    let off = xlb.replace("[service.health]", "[service.log]\nenabled = false\n[service.health]");
    std::fs::write(dir.join("xlb.toml"), &off)?;
    std::fs::write(
        dir.join("xlb-log.toml"),
        xlb.replacen(
            "[global]\n",
            &format!(
                "[global]\nlog = \"udp://{}\"\nlog_facility = \"local2\"\n",
                bench_log::SINK
            ),
            1,
        ),
    )?;
    Ok(())
}

/// Checks the proxy does the same job as the others: balancing to the
/// backends and, where configured, cookie insertion and persistence.
fn sanity(name: &str, cookies: bool) -> Result<()> {
    let mut s = TcpStream::connect(PROXY)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let r = exchange(&mut s, None)?;
    let lower = r.to_ascii_lowercase();
    if !lower.contains("x-backend: s") {
        bail!("{name}: no backend answered:\n{r}");
    }
    if cookies {
        if !lower.contains("set-cookie: serverid=s") {
            bail!("{name}: no persistence cookie inserted:\n{r}");
        }
        let r = exchange(&mut s, Some("s2"))?.to_ascii_lowercase();
        if !r.contains("x-backend: s2") || r.contains("set-cookie") {
            bail!("{name}: the cookie did not persist:\n{r}");
        }
    }
    Ok(())
}

/// Memory per idle keep-alive connection: RSS before and after `n`
/// connections that made one request each and stay open. The baseline is
/// taken with a few idle connections already open for a second, so that
/// what a proxy does with idle connections (xlb parks them and hands freed
/// memory back) has happened once before it: the growth is the new
/// connections' own.
fn idle_cost(p: &Proc, n: usize) -> Result<f64> {
    idle_growth(p, n, || {
        let mut s = TcpStream::connect(PROXY)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        exchange(&mut s, Some("s1"))?;
        Ok(s)
    })
}

/// RSS growth per connection over `n` connections that `one` opens (each
/// made its request and stays open), read 1 s after the last one; the
/// baseline is taken with 64 of them already open for a second.
pub fn idle_growth<C>(p: &Proc, n: usize, one: impl Fn() -> Result<C>) -> Result<f64> {
    let open = |n: usize| -> Result<Vec<C>> {
        let conns = (0..n).map(|_| one()).collect::<Result<Vec<_>>>()?;
        thread::sleep(Duration::from_secs(1));
        Ok(conns)
    };
    let warm = open(64)?;
    let before = p.rss_kib();
    let conns = open(n)?;
    let after = p.rss_kib();
    drop((warm, conns));
    Ok((after.saturating_sub(before) * 1024) as f64 / n as f64)
}

pub fn run(xlb: &Path, opts: &Opts) -> Result<()> {
    setup::install_debs(&["haproxy", "nginx-light", "wrk", "util-linux"])?;
    // The crowd run: 10,000 clients and as many backend connections, for
    // wrk and each proxy (children inherit the limit). Raising the hard
    // limit needs CAP_SYS_RESOURCE; without it the soft limit goes as high
    // as the hard one allows.
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut files = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut files);
        files.rlim_cur = files.rlim_max.max(100_000);
        files.rlim_max = files.rlim_cur;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &files) != 0 {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut files);
            files.rlim_cur = files.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &files);
        }
    }
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    // Proxies on CPU 0; wrk and the backends on CPU 1 (when there is one).
    let (proxy_cpu, load_cpu) = if cpus >= 2 { (Some(0), Some(1)) } else { (None, None) };
    let own = [PROXY, bench_tls::TLS_PROXY, bench_tls::AB_PLAIN, bench_tls::AB_TLS].map(String::from);
    for addr in own
        .into_iter()
        .chain(BACKENDS.iter().map(|(_, p)| format!("127.0.0.1:{p}")))
    {
        if TcpStream::connect(&addr).is_ok() {
            bail!("{addr} is in use: stop what listens there first");
        }
    }
    let dir = std::env::temp_dir().join(format!("xlb-bench-l7-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pem = bench_tls::certificate(&dir)?;
    configs(&dir, &pem)?;
    let conf = |f: &str| dir.join(f).display().to_string();
    let backends = Proc::spawn(
        "backends",
        load_cpu,
        &["nginx", "-c", &conf("backends.conf")],
        &[],
        &dir.join("backends.log"),
    )?;
    for (_, p) in BACKENDS {
        wait_http(&format!("127.0.0.1:{p}"), "backend nginx")?;
    }
    let xlb = xlb.display().to_string();
    let proxies: [(&'static str, Vec<String>, bool); 3] = [
        (
            "xlb",
            vec![xlb, "run".into(), "--config".into(), conf("xlb.toml")],
            true,
        ),
        (
            "haproxy",
            vec!["haproxy".into(), "-db".into(), "-f".into(), conf("haproxy.cfg")],
            true,
        ),
        ("nginx", vec!["nginx".into(), "-c".into(), conf("nginx.conf")], false),
    ];
    // Rounds alternate the proxies so that drift of the machine (other
    // tenants, clocks) hits them alike; medians are reported.
    let mut runs: Vec<Vec<(Load, Load)>> = vec![Vec::new(); proxies.len()];
    let mut crowds: Vec<Vec<(Load, u64)>> = vec![Vec::new(); proxies.len()];
    let mut tls_runs: Vec<Vec<bench_tls::TlsResult>> = (0..2).map(|_| Vec::new()).collect();
    let mut memory = vec![(0, 0.0); proxies.len()];
    for round in 0..opts.rounds {
        for (i, (name, cmd, cookies)) in proxies.iter().enumerate() {
            // HTTPS: xlb and HAProxy (the nginx here has no TLS set up).
            let tls = i < tls_runs.len();
            if (opts.tls_only && !tls) || opts.log_only {
                continue;
            }
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let log = dir.join(format!("{name}.log"));
            let p = Proc::spawn(name, proxy_cpu, &args, &[("RUST_LOG", "warn")], &log)?;
            wait_http(PROXY, name).with_context(|| std::fs::read_to_string(&log).unwrap_or_default())?;
            let last = round + 1 == opts.rounds;
            if !opts.tls_only {
                sanity(name, *cookies)?;
                run_wrk(opts.connections, load_cpu, 1, &format!("http://{PROXY}/"), None)?; // warm-up
                let new_clients = measured(&p, opts, opts.connections, load_cpu, None)?;
                let returning = measured(&p, opts, opts.connections, load_cpu, Some("s2"))?;
                eprintln!(
                    "bench l7 round {}/{}: {name}: {:.0} req/s new, {:.0} req/s returning, p99 {:.2}/{:.2} ms, \
                     CPU {:.0}%/{:.0}%, {:.1}/{:.1} us a request",
                    round + 1,
                    opts.rounds,
                    new_clients.rps,
                    returning.rps,
                    new_clients.p99_ms,
                    returning.p99_ms,
                    new_clients.cpu_share * 100.0,
                    returning.cpu_share * 100.0,
                    new_clients.cpu_us,
                    returning.cpu_us
                );
                if last {
                    let rss = p.rss_kib();
                    memory[i] = (rss, idle_cost(&p, opts.idle)?);
                }
                runs[i].push((new_clients, returning));
            }
            if tls {
                tls_runs[i].push(bench_tls::round(name, &p, opts, load_cpu, last)?);
            }
            // Last: memory the crowd leaves behind would hide the idle
            // connections' growth measured above.
            if !opts.tls_only {
                let crowd = measured(&p, opts, CROWD, load_cpu, Some("s2"))?;
                eprintln!(
                    "bench l7 round {}/{}: {name}: {CROWD} clients: {:.0} req/s, p99 {:.1} ms, RSS {} KiB",
                    round + 1,
                    opts.rounds,
                    crowd.rps,
                    crowd.p99_ms,
                    p.rss_kib()
                );
                crowds[i].push((crowd, p.rss_kib()));
            }
        }
    }
    // Keep-alive HTTPS once more, both proxies up and runs interleaved
    // (the machine's speed drifts between rounds).
    let ab = if opts.log_only {
        None
    } else {
        Some(bench_tls::interleaved(&dir, &proxies[0].1, opts, proxy_cpu, load_cpu)?)
    };
    let logs = if opts.tls_only {
        String::new()
    } else {
        bench_log::run(&dir, &proxies[0].1[0], opts, proxy_cpu, load_cpu)?
    };
    drop(backends);
    // (None in the log runs alone.)
    let tls: Vec<bench_tls::TlsResult> = proxies
        .iter()
        .zip(tls_runs)
        .filter(|(_, r)| !r.is_empty())
        .map(|((name, _, _), r)| bench_tls::combine(name, r))
        .collect();
    let (report, file) = if opts.log_only {
        (
            format!("# Access log benchmark (`cargo xtask bench log`)\n{logs}"),
            "log.md",
        )
    } else if opts.tls_only {
        (
            format!(
                "# HTTPS benchmark (`cargo xtask bench tls`)\n{}",
                bench_tls::render(opts, &tls, ab.as_ref())
            ),
            "tls.md",
        )
    } else {
        let results: Vec<Result1> = proxies
            .iter()
            .zip(runs)
            .zip(crowds)
            .zip(memory)
            .map(|((((name, _, _), r), c), (rss_kib, idle_bytes))| Result1 {
                name,
                new_clients: median(r.iter().map(|x| x.0.clone()).collect()),
                returning: median(r.iter().map(|x| x.1.clone()).collect()),
                crowd: median(c.iter().map(|x| x.0.clone()).collect()),
                crowd_rss_kib: c.iter().map(|x| x.1).max().unwrap_or(0),
                spread: [spread(r.iter().map(|x| x.0.rps)), spread(r.iter().map(|x| x.1.rps))],
                rss_kib,
                idle_bytes,
            })
            .collect();
        (
            render(opts, cpus, &results) + &bench_tls::render(opts, &tls, ab.as_ref()) + &logs,
            "l7.md",
        )
    };
    let out = root().join("bench-results").join(file);
    std::fs::create_dir_all(out.parent().expect("dir"))?;
    std::fs::write(&out, &report)?;
    print!("{report}");
    eprintln!("written to {}", out.display());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let t = String::from_utf8_lossy(if o.stdout.is_empty() { &o.stderr } else { &o.stdout }).to_string();
            t.lines().next().unwrap_or("").to_string()
        })
        .unwrap_or_default()
}

fn render(opts: &Opts, cpus: usize, r: &[Result1]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# L7 proxy benchmark (`cargo xtask bench l7`)\n\n\
         Same 3 backends (nginx returning a short body), same load generator (wrk, 1 thread, {} keep-alive \
         connections, {} s per run, median of {} rounds that alternate the proxies). Each proxy runs alone with one worker thread pinned to CPU 0; wrk and the \
         backends share CPU 1 ({cpus} CPUs here). xlb and HAProxy do cookie persistence \
         (`cookie SERVERID insert indirect nocache`, round robin, at most {BACKEND_MAXCONN} concurrent requests \
         per server, more wait in the proxy's queue); nginx is a plain round-robin proxy with \
         upstream keep-alive. Access logs off everywhere. Each proxy's CPU time is read from /proc around \
         every run.\n\n\
         - *new clients*: no cookie, every response carries `Set-Cookie` (xlb and HAProxy)\n\
         - *returning*: `Cookie: SERVERID=s2`, persistence to one backend, cookie stripped (indirect)\n\
         - *idle conn*: RSS growth per idle keep-alive client connection, {} connections that made one \
         request each, read 1 s after the last one (baseline: 64 such connections open)\n\n\
         Versions: {}; {}; {}.\n",
        opts.connections,
        opts.duration,
        opts.rounds,
        opts.idle,
        version("haproxy", "-v"),
        version("nginx", "-v"),
        version("wrk", "-v").split(" Copyright").next().unwrap_or("")
    );
    let _ = writeln!(
        o,
        "| proxy | new clients req/s (min-max) | p50 ms | p99 ms | returning req/s (min-max) | p50 ms | p99 ms | errors | RSS after load | idle conn |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for x in r {
        let _ = writeln!(
            o,
            "| {} | {:.0} ({:.0}-{:.0}) | {:.3} | {:.3} | {:.0} ({:.0}-{:.0}) | {:.3} | {:.3} | {} | {:.1} MiB | {:.1} KiB |",
            x.name,
            x.new_clients.rps,
            x.spread[0].0,
            x.spread[0].1,
            x.new_clients.p50_ms,
            x.new_clients.p99_ms,
            x.returning.rps,
            x.spread[1].0,
            x.spread[1].1,
            x.returning.p50_ms,
            x.returning.p99_ms,
            x.new_clients.errors + x.returning.errors,
            x.rss_kib as f64 / 1024.0,
            x.idle_bytes / 1024.0
        );
    }
    let _ = writeln!(
        o,
        "\n{CROWD} keep-alive clients at once (wrk, returning clients; the same backends). HAProxy's maxconn is \
         {HAPROXY_MAXCONN} here, the most the open-files limit of this machine (20,000, not raisable without \
         CAP_SYS_RESOURCE) lets it take, as it reserves two files a connection: the last clients wait for it.\n\n\
         | proxy | req/s | p50 ms | p99 ms | errors | CPU | RSS after |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for x in r {
        let _ = writeln!(
            o,
            "| {} | {:.0} | {:.3} | {:.3} | {} | {:.0}% | {:.1} MiB |",
            x.name,
            x.crowd.rps,
            x.crowd.p50_ms,
            x.crowd.p99_ms,
            x.crowd.errors,
            x.crowd.cpu_share * 100.0,
            x.crowd_rss_kib as f64 / 1024.0
        );
    }
    let _ = writeln!(
        o,
        "\nThe proxy's own CPU during the runs (user + system time from /proc, nginx's workers included): its \
         share of its one CPU, and CPU time per request, which does not depend on what else bounds the run; \
         *kernel*: the part of it spent in the kernel (system time: the socket reads and writes, and on loopback \
         the TCP work of the receiving side too).\n\n\
         | proxy | new clients CPU | us/request | kernel | returning CPU | us/request | kernel |\n\
         |---|---:|---:|---:|---:|---:|---:|"
    );
    for x in r {
        let _ = writeln!(
            o,
            "| {} | {:.0}% | {:.1} | {:.1} | {:.0}% | {:.1} | {:.1} |",
            x.name,
            x.new_clients.cpu_share * 100.0,
            x.new_clients.cpu_us,
            x.new_clients.sys_us,
            x.returning.cpu_share * 100.0,
            x.returning.cpu_us,
            x.returning.sys_us
        );
    }
    if let (Some(xlb), Some(h)) = (
        r.iter().find(|x| x.name == "xlb"),
        r.iter().find(|x| x.name == "haproxy"),
    ) {
        // With the kernel's part as measured, what 1.2x HAProxy's rate
        // (on the same CPU) leaves for xlb's user space.
        let budget = h.returning.cpu_us / 1.2 - xlb.returning.sys_us;
        let _ = writeln!(
            o,
            "\nReturning clients (medians): xlb's user space (its code, tokio, libc) takes {:.1} us a request, \
             HAProxy's {:.1} us; the \
             kernel {:.1} and {:.1} us. To serve 1.2x HAProxy's requests on the same CPU, with the kernel's part as it is, \
             xlb's user space would have {budget:.1} us a request.",
            xlb.returning.user_us,
            h.returning.user_us,
            xlb.returning.sys_us,
            h.returning.sys_us
        );
    }
    if let Some(xlb) = r.iter().find(|x| x.name == "xlb") {
        let _ = writeln!(
            o,
            "\nRatios (xlb / other; req/s above 1 is better for xlb, p99 and CPU per request below 1 are):\n"
        );
        let _ = writeln!(
            o,
            "| vs | new clients req/s | returning req/s | p99 new | p99 returning | CPU/request new | CPU/request returning | idle conn memory |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for x in r.iter().filter(|x| x.name != "xlb") {
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            let _ = writeln!(
                o,
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                x.name,
                ratio(xlb.new_clients.rps, x.new_clients.rps),
                ratio(xlb.returning.rps, x.returning.rps),
                ratio(xlb.new_clients.p99_ms, x.new_clients.p99_ms),
                ratio(xlb.returning.p99_ms, x.returning.p99_ms),
                ratio(xlb.new_clients.cpu_us, x.new_clients.cpu_us),
                ratio(xlb.returning.cpu_us, x.returning.cpu_us),
                ratio(xlb.idle_bytes, x.idle_bytes)
            );
        }
        if let Some(h) = r.iter().find(|x| x.name == "haproxy") {
            let ok = |m: bool| if m { "met" } else { "MISSED" };
            let rps = (xlb.returning.rps / h.returning.rps).min(xlb.new_clients.rps / h.new_clients.rps);
            let apart = xlb.spread[0].0 > h.spread[0].1 && xlb.spread[1].0 > h.spread[1].1;
            let p99 = (xlb.returning.p99_ms / h.returning.p99_ms).max(xlb.new_clients.p99_ms / h.new_clients.p99_ms);
            let _ = writeln!(
                o,
                "\nTargets against HAProxy: req/s >= 1.2x ({}: {rps:.2}x at worst), the worst xlb round above the \
                 best HAProxy round ({}), p99 <= 0.8x ({}: {p99:.2}x at worst), RSS with {CROWD} clients <= \
                 HAProxy's ({}: {:.1} vs {:.1} MiB).",
                ok(rps >= 1.2),
                ok(apart),
                ok(p99 <= 0.8),
                ok(xlb.crowd_rss_kib <= h.crowd_rss_kib),
                xlb.crowd_rss_kib as f64 / 1024.0,
                h.crowd_rss_kib as f64 / 1024.0
            );
        }
    }
    o
}
