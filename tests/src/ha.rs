//! The HA lab: two xlb nodes run by keepalived (VRRP) on one segment with a
//! client and backends, and long TCP streams that check every byte.
//!
//! Addressing: nodes 198.18.0.2 and 198.18.0.3, the floating snat address
//! 198.18.0.10 and the VIP 198.19.0.1 (both held by the VRRP master),
//! backends 198.18.1.x, clients 198.18.2.x with an on-link route to the
//! VIPs (so they ARP for the VIP, as a router would).

use std::{
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::{fd::OwnedFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    bpffs::Bpffs,
    servers::connect_from,
    topology::{backend_ip, client_ip, vip, Host, Segment, VIP_NET},
    xlb::{temp_file, XlbProcess},
    Netns,
};

pub const NODE_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 3)];
/// The snat address of nat services, moved by keepalived with the VIP.
pub const SNAT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const HA_VIP: Ipv4Addr = vip(1);
pub const PORT: u16 = 80;
pub const SYNC_PORT: u16 = 7946;
/// VRRP priorities: node 0 is the preferred master.
const PRIORITY: [u8; 2] = [150, 100];

pub struct HaLab {
    pub seg: Segment,
    pub client: Host,
    pub nodes: Vec<Host>,
    pub backends: Vec<Host>,
    pub bpffs: Bpffs,
    pub key_file: PathBuf,
    _pass: Vec<OwnedFd>,
}

impl HaLab {
    pub fn new(backends: usize, client_addrs: usize) -> io::Result<HaLab> {
        let mut seg = Segment::new()?;
        let client = seg.host("client", (0..client_addrs.max(1)).map(client_ip).collect())?;
        let nodes = (0..2)
            .map(|i| seg.host(&format!("node{i}"), vec![NODE_IPS[i]]))
            .collect::<io::Result<Vec<_>>>()?;
        let backends = (0..backends)
            .map(|i| seg.host(&format!("be{i}"), vec![backend_ip(i)]))
            .collect::<io::Result<Vec<_>>>()?;
        client.ns.ip(&["route", "add", VIP_NET, "dev", Host::IFACE])?;
        let pass = seg.pass_links()?;
        let bpffs = Bpffs::mount(&format!("{}-ha", seg.id))?;
        let key_file = temp_file(
            &format!("{}-sync.key", seg.id),
            "lab-only-key-0123456789abcdef0123456789",
        )?;
        Ok(HaLab {
            seg,
            client,
            nodes,
            backends,
            bpffs,
            key_file,
            _pass: pass,
        })
    }

    /// The switch port of node `i` (client first, then the nodes).
    fn port(&self, i: usize) -> &str {
        &self.seg.ports[1 + i]
    }

    /// Takes node `i` off the segment (its cable pulled).
    pub fn cut(&self, i: usize) {
        self.seg.switch.ip(&["link", "set", self.port(i), "down"]).unwrap();
    }

    pub fn reconnect(&self, i: usize) {
        self.seg.switch.ip(&["link", "set", self.port(i), "up"]).unwrap();
    }

    /// Node `i`'s pin directory (under the lab's own bpffs).
    pub fn pin_dir(&self, i: usize) -> PathBuf {
        self.bpffs.path.join(format!("node{i}"))
    }

    /// What a reboot clears: the addresses keepalived had added and the
    /// pinned data plane (its XDP program detaches with the pins, since the
    /// killed xlb holds nothing any more).
    pub fn wipe(&self, i: usize) {
        let ns = &self.nodes[i].ns;
        let _ = ns.ip(&["addr", "del", &format!("{HA_VIP}/32"), "dev", Host::IFACE]);
        let _ = ns.ip(&["addr", "del", &format!("{SNAT}/16"), "dev", Host::IFACE]);
        let _ = std::fs::remove_dir_all(self.pin_dir(i));
    }

    /// The xlb config of node `i`: one `mode` service on the VIP over every
    /// backend, TCP health checks, and `[sync]` with the other node.
    pub fn xlb_config(&self, i: usize, mode: &str) -> String {
        let mut c = format!(
            "[global]\ninterface = \"eth0\"\npin_dir = \"{}\"\n\n\
             [sync]\nlisten = \"{}:{SYNC_PORT}\"\npeers = [\"{}:{SYNC_PORT}\"]\nkey_file = \"{}\"\n\n\
             [[service]]\nname = \"ha\"\nvip = \"{HA_VIP}\"\nport = {PORT}\nmode = \"{mode}\"\n",
            self.pin_dir(i).display(),
            NODE_IPS[i],
            NODE_IPS[1 - i],
            self.key_file.display()
        );
        if mode == "nat" {
            c += &format!("snat = \"{SNAT}\"\n");
        }
        c += "[service.health]\nkind = \"tcp\"\ninterval = \"500ms\"\ntimeout = \"300ms\"\nrise = 1\nfall = 2\n";
        for (n, b) in self.backends.iter().enumerate() {
            c += &format!("[[service.backend]]\nname = \"be{n}\"\naddress = \"{}:{PORT}\"\n", b.ip);
        }
        c
    }

    /// Starts xlb on node `i` (its own pin directory below the lab's).
    pub fn start_xlb(&self, i: usize, mode: &str) -> XlbProcess {
        self.start_xlb_with(i, &self.xlb_config(i, mode), "127.0.0.1:9900")
    }

    /// Starts xlb on node `i` with config `cfg` whose admin address is `admin`.
    pub fn start_xlb_with(&self, i: usize, cfg: &str, admin: &str) -> XlbProcess {
        let path = temp_file(&format!("{}-node{i}.toml", self.seg.id), cfg).unwrap();
        XlbProcess::start_with_admin(&self.nodes[i].ns, &path, &[], admin).unwrap()
    }

    /// Starts keepalived on node `i`; its role changes go to `roles_file`.
    pub fn start_keepalived(&self, i: usize) -> Keepalived {
        self.start_keepalived_with(i, "127.0.0.1:9900")
    }

    /// As [`HaLab::start_keepalived`], for xlb's admin address `admin`.
    pub fn start_keepalived_with(&self, i: usize, admin: &str) -> Keepalived {
        let roles = temp_file(&format!("{}-node{i}.roles", self.seg.id), "").unwrap();
        let notify = temp_file(
            &format!("{}-node{i}-notify.sh", self.seg.id),
            &format!(
                "#!/bin/sh\n# keepalived: notify TYPE NAME STATE PRIORITY\necho \"$(date +%s.%N) $3\" >> {}\n",
                roles.display()
            ),
        )
        .unwrap();
        make_executable(&notify);
        let conf = keepalived_config(i, &notify, admin);
        let path = temp_file(&format!("{}-node{i}-keepalived.conf", self.seg.id), &conf).unwrap();
        Keepalived::start(&self.nodes[i].ns, &path, &format!("{}-node{i}", self.seg.id), roles)
    }

    /// Echo servers on every backend (all addresses, so the VIP on loopback
    /// in dsr mode and the health checks both reach them). For dsr the
    /// backends hold the VIP on loopback and never answer ARP for it.
    pub fn start_backends(&self, dsr: bool) -> Vec<EchoServer> {
        self.backends
            .iter()
            .map(|b| {
                if dsr {
                    b.ns.ip(&["addr", "add", &format!("{HA_VIP}/32"), "dev", "lo"]).unwrap();
                    b.ns.sysctl("net.ipv4.conf.all.arp_ignore", "1").unwrap();
                    b.ns.sysctl("net.ipv4.conf.all.arp_announce", "2").unwrap();
                }
                EchoServer::start(&b.ns, SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT)).unwrap()
            })
            .collect()
    }
}

fn make_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// keepalived.conf for node `i`: one VRRPv3 instance at 100 ms adverts
/// (unicast to the other node), holding the VIP and the snat address,
/// tracking xlb's /healthz (failed until it first passes), preempting.
/// `examples/keepalived/` holds the same set-up for real nodes.
pub fn keepalived_config(i: usize, notify: &Path, admin: &str) -> String {
    format!(
        r#"global_defs {{
    router_id xlb-node{i}
    vrrp_version 3
    script_user root
    vrrp_garp_master_repeat 3
    vrrp_garp_master_refresh 0
}}

vrrp_script xlb_health {{
    script "/usr/bin/curl -fsS -m 1 -o /dev/null http://{admin}/healthz"
    interval 1
    timeout 2
    rise 1
    fall 2
    init_fail
}}

vrrp_instance xlb {{
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority {prio}
    advert_int 0.1
    unicast_src_ip {me}
    unicast_peer {{
        {peer}
    }}
    virtual_ipaddress {{
        {HA_VIP}/32 dev eth0
        {SNAT}/16 dev eth0
    }}
    track_script {{
        xlb_health
    }}
    notify "{notify}"
}}
"#,
        prio = PRIORITY[i],
        me = NODE_IPS[i],
        peer = NODE_IPS[1 - i],
        notify = notify.display()
    )
}

/// A keepalived process (group) in a namespace; killed on drop.
pub struct Keepalived {
    child: Option<Child>,
    pub roles: PathBuf,
    pub log: PathBuf,
}

impl Keepalived {
    fn start(ns: &Netns, conf: &Path, tag: &str, roles: PathBuf) -> Keepalived {
        let run = std::env::temp_dir().join(format!("{tag}-keepalived"));
        std::fs::create_dir_all(&run).unwrap();
        let log = run.join("log");
        let out = std::fs::File::create(&log).unwrap();
        let pid = |n: &str| run.join(n).display().to_string();
        let child = ns
            .cmd("keepalived")
            .args(["-n", "-l", "-D", "-P", "-R", "-G", "-f"])
            .arg(conf)
            .args([
                "-p",
                &pid("main.pid"),
                "-r",
                &pid("vrrp.pid"),
                "-c",
                &pid("checkers.pid"),
            ])
            .args(["-b", &pid("bfd.pid"), "-i", tag])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            // Its own process group, so a hard kill takes its children too.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("keepalived: {e} (installed by `cargo xtask setup`)"));
        Keepalived {
            child: Some(child),
            roles,
            log,
        }
    }

    /// kill -9 of the whole process group: no goodbye advert, the VIPs
    /// stay where they were.
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child's process group.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// Role changes so far: (Unix time, MASTER/BACKUP/FAULT).
    pub fn roles(&self) -> Vec<(f64, String)> {
        std::fs::read_to_string(&self.roles)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (t, s) = l.split_once(' ')?;
                Some((t.parse().ok()?, s.trim().to_string()))
            })
            .collect()
    }

    pub fn role(&self) -> Option<String> {
        self.roles().last().map(|r| r.1.clone())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: as in kill_hard; TERM lets it remove its addresses.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && c.try_wait().ok().flatten().is_none() {
                thread::sleep(Duration::from_millis(50));
            }
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

/// A TCP echo server; stops accepting on drop.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
}

impl EchoServer {
    pub fn start(ns: &Netns, addr: SocketAddr) -> io::Result<EchoServer> {
        let listener = ns.enter(|| TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((c, _)) => {
                        thread::spawn(move || echo(c));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(EchoServer { stop })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn echo(mut c: TcpStream) {
    let _ = c.set_nonblocking(false);
    let mut w = match c.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let _ = io::copy(&mut c, &mut w);
    let _ = w.shutdown(Shutdown::Write);
}

/// The byte at offset `i` of stream `id`: a pattern in which a lost,
/// repeated or reordered byte shows.
fn pattern(id: usize, i: u64) -> u8 {
    ((i.wrapping_mul(31) + id as u64 * 7 + i / 251) % 251) as u8
}

/// What one stream saw.
#[derive(Debug, Clone)]
pub struct StreamReport {
    pub id: usize,
    pub sent: u64,
    pub received: u64,
    /// Silences longer than 100 ms in the echo: (start, end).
    pub gaps: Vec<(Instant, Instant)>,
    pub error: Option<String>,
}

impl StreamReport {
    /// The longest silence that ends after `t` and starts before `t + within`.
    pub fn gap_around(&self, t: Instant, within: Duration) -> Duration {
        self.gaps
            .iter()
            .filter(|(s, e)| *e >= t && *s <= t + within)
            .map(|(s, e)| *e - *s)
            .max()
            .unwrap_or_default()
    }
}

/// Streams for `length` from `src` to `dst`: 1 KiB every 20 ms, the echo
/// checked byte for byte, then a clean close (every byte back, then EOF).
pub fn stream(
    ns: &Netns,
    id: usize,
    src: IpAddr,
    dst: SocketAddr,
    length: Duration,
) -> thread::JoinHandle<StreamReport> {
    let conn = connect_from(ns, SocketAddr::new(src, 0), dst, Duration::from_secs(5));
    thread::spawn(move || {
        let mut report = StreamReport {
            id,
            sent: 0,
            received: 0,
            gaps: Vec::new(),
            error: None,
        };
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                report.error = Some(format!("connect: {e}"));
                return report;
            }
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(20)));
        let mut w = conn.try_clone().expect("clone");
        let writer = thread::spawn(move || -> Result<u64, String> {
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed() < length {
                let chunk: Vec<u8> = (sent..sent + 1024).map(|i| pattern(id, i)).collect();
                w.write_all(&chunk).map_err(|e| format!("write at byte {sent}: {e}"))?;
                sent += 1024;
                thread::sleep(Duration::from_millis(20));
            }
            w.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
            Ok(sent)
        });
        let mut r = conn;
        let mut buf = vec![0u8; 16384];
        let mut last = Instant::now();
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let now = Instant::now();
                    if now - last > Duration::from_millis(100) && report.received > 0 {
                        report.gaps.push((last, now));
                    }
                    last = now;
                    for (k, b) in buf[..n].iter().enumerate() {
                        let at = report.received + k as u64;
                        if *b != pattern(id, at) && report.error.is_none() {
                            report.error = Some(format!("byte {at} differs: a byte lost or repeated"));
                        }
                    }
                    report.received += n as u64;
                }
                Err(e) => {
                    report
                        .error
                        .get_or_insert(format!("read after {} bytes: {e}", report.received));
                    break;
                }
            }
        }
        match writer.join().expect("writer") {
            Ok(sent) => report.sent = sent,
            Err(e) => {
                report.error.get_or_insert(e);
            }
        }
        if report.error.is_none() && report.sent != report.received {
            report.error = Some(format!("sent {} bytes, {} came back", report.sent, report.received));
        }
        report
    })
}

/// Waits until `cond` holds (checked every 50 ms) or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// What a failover drill saw.
pub struct Drill {
    pub mode: String,
    pub reports: Vec<StreamReport>,
    /// From the master's cut to the backup's MASTER notification.
    pub took_over: Duration,
    /// From the old master's restart to its MASTER notification.
    pub preempted: Duration,
    /// The streams' longest silence around the failover and the failback.
    pub failover_silence: Duration,
    pub failback_silence: Duration,
    /// `xlb status --json` of node0 when it took the VIP back, and of both
    /// nodes at the end.
    pub node0_back: serde_json::Value,
    pub end: [serde_json::Value; 2],
    /// Every role change: (seconds since the first, node, role).
    pub roles: Vec<(f64, usize, String)>,
    /// keepalived's and xlb's logs, for failures.
    pub logs: String,
}

impl Drill {
    pub fn broken(&self) -> Vec<String> {
        self.reports
            .iter()
            .filter_map(|r| r.error.as_ref().map(|e| format!("stream {}: {e}", r.id)))
            .collect()
    }
}

/// `xlb status --json` of node `i`.
pub fn node_status(lab: &HaLab, i: usize) -> serde_json::Value {
    let out = crate::xlb::xlb_once(&lab.nodes[i].ns, &["status", "--json"]).expect("xlb status");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// The failover drill of the HA tests and demo: a keepalived pair in
/// `mode` (nat or dsr) carries `streams` long TCP streams of `length` from
/// `clients` addresses; 3 s in, the master's cable is pulled and xlb and
/// keepalived are killed with SIGKILL; 2 s after the backup took over, the
/// old master reboots (addresses and pins gone), starts xlb and keepalived
/// and preempts. `say` hears what happens as it happens.
pub fn drill(
    mode: &str,
    streams: usize,
    clients: usize,
    length: Duration,
    say: &dyn Fn(&str),
) -> Result<Drill, String> {
    let lab = HaLab::new(3, clients).map_err(|e| e.to_string())?;
    let _servers = lab.start_backends(mode == "dsr");
    let mut xlb = [Some(lab.start_xlb(0, mode)), Some(lab.start_xlb(1, mode))];
    let mut ka = [Some(lab.start_keepalived(0)), Some(lab.start_keepalived(1))];
    let role = |ka: &[Option<Keepalived>; 2], i: usize| ka[i].as_ref().and_then(Keepalived::role);
    let logs = |ka: &[Option<Keepalived>; 2], xlb: &[Option<XlbProcess>; 2]| {
        let mut s = String::new();
        for (i, k) in ka.iter().enumerate() {
            if let Some(k) = k {
                s += &format!("--- node{i} keepalived ---\n{}", k.log());
            }
        }
        for (i, x) in xlb.iter().enumerate() {
            if let Some(x) = x {
                s += &format!("--- node{i} xlb ---\n{}", x.log());
            }
        }
        s
    };
    // Role changes as keepalived's notify script wrote them: (Unix time,
    // node, role); node0's first life is read before its restart.
    let mut history: Vec<(f64, usize, String)> = Vec::new();
    if !wait_until(Duration::from_secs(15), || role(&ka, 0).as_deref() == Some("MASTER")) {
        return Err(format!("node0 did not become master\n{}", logs(&ka, &xlb)));
    }
    say(&format!(
        "node0 is MASTER; {streams} streams of {} s start",
        length.as_secs()
    ));
    let dst = SocketAddr::new(HA_VIP.into(), PORT);
    let start = Instant::now();
    let handles: Vec<_> = (0..streams)
        .map(|k| stream(&lab.client.ns, k, IpAddr::V4(client_ip(k % clients)), dst, length))
        .collect();
    thread::sleep(Duration::from_secs(3));
    let cut_at = Instant::now();
    lab.cut(0);
    if let Some(k) = ka[0].as_mut() {
        k.kill_hard();
    }
    drop(xlb[0].take());
    say("node0: cable pulled, xlb and keepalived killed (SIGKILL)");
    if !wait_until(Duration::from_secs(5), || role(&ka, 1).as_deref() == Some("MASTER")) {
        return Err(format!("node1 did not take over\n{}", logs(&ka, &xlb)));
    }
    let took_over = cut_at.elapsed();
    say(&format!(
        "node1 is MASTER {:.0} ms after the cut",
        took_over.as_secs_f64() * 1e3
    ));
    thread::sleep(Duration::from_secs(2));
    history.extend(ka[0].iter().flat_map(Keepalived::roles).map(|(t, r)| (t, 0, r)));
    lab.wipe(0);
    lab.reconnect(0);
    let back_at = Instant::now();
    xlb[0] = Some(lab.start_xlb(0, mode));
    ka[0] = Some(lab.start_keepalived(0));
    say("node0: rebooted (no addresses, no pinned state), xlb and keepalived started");
    if !wait_until(Duration::from_secs(15), || role(&ka, 0).as_deref() == Some("MASTER")) {
        return Err(format!(
            "node0 did not take the VIP back\nnode0 {}\n{}",
            node_status(&lab, 0),
            logs(&ka, &xlb)
        ));
    }
    let preempted = back_at.elapsed();
    let node0_back = node_status(&lab, 0);
    say(&format!(
        "node0 is MASTER again {:.0} ms after its restart (pull: {})",
        preempted.as_secs_f64() * 1e3,
        node0_back["sync"]["pull"].as_str().unwrap_or("?")
    ));
    if start.elapsed() + Duration::from_secs(2) >= length {
        return Err("the failback came too late to be tested mid-stream".into());
    }
    let reports: Vec<StreamReport> = handles.into_iter().map(|h| h.join().expect("stream thread")).collect();
    for (i, k) in ka.iter().enumerate() {
        history.extend(k.iter().flat_map(Keepalived::roles).map(|(t, r)| (t, i, r)));
    }
    history.sort_by(|a, b| a.0.total_cmp(&b.0));
    let first = history.first().map_or(0.0, |h| h.0);
    let roles = history.into_iter().map(|(t, i, r)| (t - first, i, r)).collect();
    let window = Duration::from_secs(3);
    let silence = |t: Instant, w: Duration| reports.iter().map(|r| r.gap_around(t, w)).max().unwrap_or_default();
    Ok(Drill {
        mode: mode.to_string(),
        failover_silence: silence(cut_at, window),
        failback_silence: silence(back_at, preempted + window),
        took_over,
        preempted,
        node0_back,
        end: [node_status(&lab, 0), node_status(&lab, 1)],
        roles,
        logs: logs(&ka, &xlb),
        reports,
    })
}
