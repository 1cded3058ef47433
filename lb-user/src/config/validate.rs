//! Raw config to typed config, with `FILE:LINE: reason` for each problem.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use toml::Spanned;

use super::{model::*, raw::*};

/// One problem found in a config file, located by line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

/// Why a config could not be used: unreadable, or one or more errors.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigError>),
}

/// Parses `"500ms"`, `"2s"`, `"30m"`, `"5h"`, `"1d"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration {s:?} needs a unit (ms, s, m, h, d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} does not start with a number"))?;
    let scale: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("duration {s:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    // Bounded so that `Instant::now() + d` can never overflow anywhere.
    const MAX_MS: u64 = 366 * 86_400_000;
    match n.checked_mul(scale) {
        Some(ms) if ms <= MAX_MS => Ok(Duration::from_millis(ms)),
        _ => Err(format!("duration {s:?} is longer than a year")),
    }
}

/// The cookie value of a backend at `addr` under `key`: the first 16 hex
/// digits of HMAC-SHA256(key, "ip:port"). The same on every node with the
/// same key; the backend's name and address cannot be read from it.
pub fn dynamic_cookie(key: &str, addr: SocketAddr) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(addr.to_string().as_bytes());
    mac.finalize().into_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What is wrong with a service, group or backend name, if anything: as
/// HAProxy's proxy and server names, letters, digits and `-_.:` only
/// (names go into log lines, metrics labels and URLs unquoted: a space or
/// a newline there would forge fields or lines).
fn bad_name(what: &str, name: &str) -> Option<String> {
    if name.is_empty() {
        return Some(format!("{what} name is empty"));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || "-_.:".contains(c);
    (!name.chars().all(ok)).then(|| format!("{what} name {name:?}: only letters, digits, '-', '_', '.' and ':'"))
}

/// A token as RFC 6265 allows for cookie names.
fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// What validating a backend needs to know of its service.
struct BackendCtx<'a> {
    service: &'a str,
    mode: Mode,
    vip: Option<IpAddr>,
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    load_text(path).map(|(cfg, _)| cfg)
}

/// Reads and validates a config file; the config and the text it came from.
pub fn load_text(path: &Path) -> Result<(Config, String), LoadError> {
    let text = std::fs::read_to_string(path).map_err(|cause| LoadError::Read {
        path: path.to_owned(),
        cause,
    })?;
    let cfg = parse(path, &text).map_err(LoadError::Invalid)?;
    Ok((cfg, text))
}

/// Validates config text; `path` is only used in error messages.
pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
    let mut v = Validator {
        path,
        text,
        errors: Vec::new(),
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let line = e.span().map_or(1, |s| v.line(s.start));
            v.err(line, e.message().trim().to_string());
            return Err(v.errors);
        }
    };
    let cfg = v.config(raw);
    if v.errors.is_empty() {
        Ok(cfg)
    } else {
        v.errors.sort_by_key(|e| e.line);
        Err(v.errors)
    }
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }

    fn err(&mut self, line: usize, reason: String) {
        self.errors.push(ConfigError {
            file: self.path.to_owned(),
            line,
            reason,
        });
    }

    fn at<T>(&mut self, s: &Spanned<T>, reason: String) {
        let line = self.line(s.span().start);
        self.err(line, reason);
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let admin: SocketAddr = match &raw.global.admin {
            None => DEFAULT_ADMIN.parse().unwrap(),
            Some(a) => a.get_ref().parse().unwrap_or_else(|_| {
                self.at(a, format!("admin: {:?} is not an address:port", a.get_ref()));
                DEFAULT_ADMIN.parse().unwrap()
            }),
        };
        let admin_auth = raw
            .global
            .admin_auth
            .as_ref()
            .and_then(|a| match a.get_ref().parse::<Credentials>() {
                Ok(c) => Some(c),
                Err(e) => {
                    self.at(a, format!("admin_auth: {e}"));
                    None
                }
            });
        if !admin.ip().is_loopback() && raw.global.admin_auth.is_none() {
            let why = format!(
                "admin {admin} is reachable from other hosts: set admin_auth (\"user:password\" or \"user:HASH\") or use a loopback address"
            );
            match &raw.global.admin {
                Some(a) => self.at(a, why),
                None => self.err(1, why),
            }
        }
        let log = self.log_setup(&raw.global);
        let global = Global {
            interface: raw.global.interface,
            xdp_mode: raw.global.xdp_mode,
            admin,
            admin_auth,
            nonlocal_bind: raw.global.nonlocal_bind,
            vip_interface: raw.global.vip_interface,
            pin_dir: PathBuf::from(raw.global.pin_dir.as_deref().unwrap_or(DEFAULT_PIN_DIR)),
            on_exit: raw.global.on_exit,
            peers: raw
                .global
                .peers
                .iter()
                .filter_map(|p| {
                    let a = p.get_ref().parse::<SocketAddr>().ok();
                    if a.is_none() {
                        self.at(p, format!("peer {:?} is not an admin address:port", p.get_ref()));
                    }
                    a
                })
                .collect(),
            threads: raw
                .global
                .threads
                .as_ref()
                .and_then(|t| match usize::try_from(*t.get_ref()) {
                    Ok(n @ 1..=MAX_THREADS) => Some(n),
                    _ => {
                        self.at(t, format!("threads must be 1-{MAX_THREADS}, not {}", t.get_ref()));
                        None
                    }
                }),
            maxconn: match &raw.global.maxconn {
                None => DEFAULT_MAXCONN,
                Some(m) => match usize::try_from(*m.get_ref()) {
                    Ok(n @ 1..) => n,
                    _ => {
                        self.at(m, format!("maxconn must be at least 1, not {}", m.get_ref()));
                        DEFAULT_MAXCONN
                    }
                },
            },
            log,
        };
        let mut services: Vec<Service> = Vec::new();
        let mut seen = Vec::<(String, (IpAddr, u16, Protocol))>::new();
        for rs in raw.service {
            let name_span = rs.name.clone();
            let Some(svc) = self.service(rs) else {
                continue;
            };
            if seen.iter().any(|(n, _)| *n == svc.name) {
                self.at(&name_span, format!("duplicate service name {:?}", svc.name));
            }
            let key = (svc.vip, svc.port, svc.protocol);
            if let Some((other, _)) = seen.iter().find(|(_, k)| *k == key) {
                self.at(
                    &name_span,
                    format!(
                        "service {:?} uses {}:{}/{} already taken by service {:?}",
                        svc.name,
                        svc.vip,
                        svc.port,
                        svc.protocol.as_str(),
                        other
                    ),
                );
            }
            seen.push((svc.name.clone(), key));
            services.push(svc);
        }
        if services.len() > lb_common::MAX_SERVICES as usize {
            self.err(1, format!("more than {} services", lb_common::MAX_SERVICES));
        }
        let snats: std::collections::HashSet<_> = services.iter().flat_map(|s| &s.snat).collect();
        if snats.len() > lb_common::MAX_SNATS as usize {
            self.err(
                1,
                format!(
                    "{} distinct snat addresses; the full-NAT table has room for {}",
                    snats.len(),
                    lb_common::MAX_SNATS
                ),
            );
        }
        let stats = raw.stats.map(|s| self.stats(s.into_inner()));
        let sync = raw.sync.and_then(|s| self.sync(s.into_inner()));
        Config {
            path: self.path.to_owned(),
            global,
            services,
            stats,
            sync,
        }
    }

    fn sync(&mut self, raw: RawSync) -> Option<SyncCfg> {
        let listen = raw.listen.get_ref().parse::<SocketAddr>().ok();
        if listen.is_none() {
            self.at(
                &raw.listen,
                format!("sync listen {:?} is not an address:port", raw.listen.get_ref()),
            );
        }
        let mut peers = Vec::new();
        for p in &raw.peers {
            match p.get_ref().parse::<SocketAddr>() {
                Ok(a) if Some(a) == listen => self.at(p, format!("sync peer {a} is this node's own listen address")),
                Ok(a) if peers.contains(&a) => self.at(p, format!("sync peer {a} is listed twice")),
                Ok(a) => peers.push(a),
                Err(_) => self.at(p, format!("sync peer {:?} is not an address:port", p.get_ref())),
            }
        }
        let key_file = self.file(raw.key_file.get_ref());
        let key = match std::fs::read(&key_file) {
            Ok(k) => {
                let k = k.trim_ascii().to_vec();
                if k.len() < MIN_SYNC_KEY {
                    self.at(
                        &raw.key_file,
                        format!(
                            "sync key_file {}: the key has {} bytes, fewer than {MIN_SYNC_KEY} (e.g. `head -c 32 /dev/urandom | base64 > FILE`)",
                            key_file.display(),
                            k.len()
                        ),
                    );
                    return None;
                }
                k
            }
            Err(e) => {
                self.at(
                    &raw.key_file,
                    format!("sync key_file {}: cannot read it: {e}", key_file.display()),
                );
                return None;
            }
        };
        Some(SyncCfg {
            listen: listen?,
            peers,
            key_file,
            key: SyncKey(key),
        })
    }

    fn service(&mut self, rs: RawService) -> Option<Service> {
        let name = rs.name.get_ref().clone();
        if let Some(e) = bad_name("service", &name) {
            self.at(&rs.name, e);
        }
        let vip = rs.vip.get_ref().parse::<IpAddr>().map_err(|_| {
            self.at(&rs.vip, format!("vip {:?} is not an IP address", rs.vip.get_ref()));
        });
        let port = u16::try_from(*rs.port.get_ref())
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| self.at(&rs.port, format!("port {} is not in 1-65535", rs.port.get_ref())));
        let balance = match &rs.balance {
            None if rs.mode == Mode::Http => "roundrobin".to_string(),
            None => "source".to_string(),
            Some(b) => {
                let ok = match rs.mode {
                    Mode::Nat | Mode::Dsr => matches!(b.get_ref().as_str(), "source" | "5tuple"),
                    Mode::Http => {
                        let s = b.get_ref().as_str();
                        matches!(s, "roundrobin" | "leastconn" | "source" | "uri")
                            || (s.starts_with("hdr(") && s.ends_with(')') && s.len() > 5)
                    }
                };
                if !ok {
                    let allowed = if rs.mode == Mode::Http {
                        "roundrobin, leastconn, source, uri, hdr(NAME)"
                    } else {
                        "source, 5tuple"
                    };
                    self.at(
                        b,
                        format!(
                            "balance {:?} is not valid for mode {} ({allowed})",
                            b.get_ref(),
                            rs.mode.as_str()
                        ),
                    );
                }
                b.get_ref().clone()
            }
        };
        let mut snat = Vec::new();
        if let Some(s) = &rs.snat {
            if rs.mode != Mode::Nat {
                self.at(s, "snat applies to mode \"nat\" only".into());
            }
            let list = match s.get_ref() {
                OneOrMany::One(a) => std::slice::from_ref(a),
                OneOrMany::Many(v) => v.as_slice(),
            };
            if list.is_empty() || list.len() > lb_common::MAX_POOL {
                self.at(
                    s,
                    format!(
                        "snat: a pool holds 1 to {} addresses, not {}",
                        lb_common::MAX_POOL,
                        list.len()
                    ),
                );
            }
            for a in list {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    self.at(s, format!("snat {a:?} is not an IP address"));
                    continue;
                };
                if vip.as_ref().is_ok_and(|v| v.is_ipv4() != ip.is_ipv4()) {
                    self.at(s, format!("snat {ip} is not of the VIP's address family"));
                } else if snat.contains(&ip) {
                    self.at(s, format!("snat {ip} is listed twice"));
                } else {
                    snat.push(ip);
                }
            }
        }
        if rs.mode == Mode::Http && rs.protocol == Protocol::Udp {
            self.at(&rs.name, "mode \"http\" needs protocol \"tcp\"".into());
        }
        let mut backends = Vec::new();
        let mut cookies: Vec<(String, bool, String)> = Vec::new();
        let mut groups = Vec::new();
        for g in &rs.group {
            let gname = g.get_ref().name.get_ref();
            if rs.mode != Mode::Http {
                self.at(g, "[[service.group]] applies to mode \"http\" only".into());
            } else if let Some(e) = bad_name("group", gname) {
                self.at(&g.get_ref().name, e);
            } else if groups.contains(gname) {
                self.at(
                    &g.get_ref().name,
                    format!("duplicate group name {gname:?} in service {name:?}"),
                );
            }
            groups.push(gname.clone());
        }
        let members = rs
            .backend
            .into_iter()
            .map(|b| (None, b))
            .chain(rs.group.into_iter().flat_map(|g| {
                let g = g.into_inner();
                let gname = g.name.into_inner();
                g.backend.into_iter().map(move |b| (Some(gname.clone()), b))
            }));
        for (group, rb) in members {
            let ctx = BackendCtx {
                service: &name,
                mode: rs.mode,
                vip: vip.as_ref().ok().copied(),
            };
            if let Some(b) = self.backend(&ctx, rb, group, &backends, &mut cookies) {
                backends.push(b);
            }
        }
        let health = self.health(rs.health);
        for (section, span) in [
            ("cookie", rs.cookie.as_ref().map(|c| c.span())),
            ("http", rs.http.as_ref().map(|c| c.span())),
            ("appsession", rs.appsession.as_ref().map(|c| c.span())),
            ("route", rs.route.first().map(|c| c.span())),
        ] {
            if let (Some(span), true) = (span, rs.mode != Mode::Http) {
                let line = self.line(span.start);
                self.err(line, format!("[service.{section}] applies to mode \"http\" only"));
            }
        }
        let dynamic_key = rs.cookie.as_ref().and_then(|c| c.get_ref().dynamic_key.clone());
        let cookie = rs.cookie.map(|c| self.cookie(c.into_inner()));
        if let Some(key) = dynamic_key {
            if key.get_ref().len() < 16 {
                self.at(&key, "cookie dynamic_key needs at least 16 characters".into());
            }
            // Backends without their own value get one derived from the
            // key and their address (HAProxy's `dynamic-cookie-key`).
            for b in backends.iter_mut().filter(|b| b.cookie.is_none()) {
                b.cookie = Some(dynamic_cookie(key.get_ref(), b.address));
            }
        }
        let http = rs.http.map(|h| self.http(h.into_inner())).unwrap_or_default();
        let appsession = rs.appsession.map(|a| self.appsession(a.into_inner()));
        let routes = rs.route.into_iter().filter_map(|r| self.route(r, &groups)).collect();
        let tls = rs.tls.and_then(|t| {
            if rs.mode != Mode::Http {
                let line = self.line(t.span().start);
                self.err(line, "[service.tls] applies to mode \"http\" only".into());
            }
            self.tls(t.into_inner())
        });
        let log = self.service_log(rs.log, rs.mode);
        Some(Service {
            log,
            name,
            vip: vip.ok()?,
            port: port.ok()?,
            protocol: rs.protocol,
            mode: rs.mode,
            balance,
            snat,
            backends,
            health,
            cookie,
            http,
            appsession,
            routes,
            groups,
            tls,
        })
    }

    /// `[global] log*`: the sinks, facility, level and framing.
    fn log_setup(&mut self, g: &RawGlobal) -> LogSetup {
        let mut setup = LogSetup::default();
        if let Some(l) = &g.log {
            setup.sinks.clear();
            for s in l.get_ref().as_slice() {
                match s.parse::<SinkAddr>() {
                    Ok(a) if setup.sinks.contains(&a) => self.at(l, format!("log sink {a} is listed twice")),
                    Ok(a) => setup.sinks.push(a),
                    Err(e) => self.at(l, e),
                }
            }
        }
        fn named<T: std::str::FromStr<Err = String>>(v: &mut Validator<'_>, s: &Option<Spanned<String>>, into: &mut T) {
            if let Some(s) = s {
                match s.get_ref().parse() {
                    Ok(x) => *into = x,
                    Err(e) => v.at(s, e),
                }
            }
        }
        named(self, &g.log_facility, &mut setup.facility);
        named(self, &g.log_level, &mut setup.level);
        named(self, &g.log_format, &mut setup.framing);
        setup
    }

    /// `[service.log]`, with the defaults of the service's mode.
    fn service_log(&mut self, raw: Option<Spanned<RawLog>>, mode: Mode) -> LogCfg {
        let http = mode == Mode::Http;
        let mut cfg = LogCfg {
            enabled: http,
            format: if http { LineFormat::Httplog } else { LineFormat::Tcplog },
            dontlognull: false,
            capture_cookie: None,
            sample: 1,
        };
        let Some(raw) = raw else { return cfg };
        let raw = raw.into_inner();
        cfg.enabled = raw.enabled.unwrap_or(true);
        cfg.dontlognull = raw.dontlognull;
        if let Some(f) = &raw.format {
            match f.get_ref().parse::<LineFormat>() {
                Ok(LineFormat::Httplog) if !http => {
                    self.at(f, "log format \"httplog\" applies to mode \"http\" only".into())
                }
                Ok(x) => cfg.format = x,
                Err(e) => self.at(f, e),
            }
        }
        if let Some(c) = raw.capture_cookie {
            if !http {
                self.at(&c, "log capture_cookie applies to mode \"http\" only".into());
            } else if c.get_ref().is_empty() || c.get_ref().contains(['=', ';', ' ']) {
                self.at(&c, format!("log capture_cookie {:?} is not a cookie name", c.get_ref()));
            }
            cfg.capture_cookie = Some(c.into_inner());
        }
        if let Some(s) = &raw.sample {
            match u32::try_from(*s.get_ref()) {
                _ if http => self.at(
                    s,
                    "log sample applies to L4 services (mode \"nat\" or \"dsr\") only".into(),
                ),
                Ok(n @ 1..=MAX_LOG_SAMPLE) => cfg.sample = n,
                _ => self.at(s, format!("log sample must be 1-{MAX_LOG_SAMPLE}, not {}", s.get_ref())),
            }
        }
        cfg
    }

    /// A file named in the config: relative paths are relative to the
    /// config file, as it is read.
    fn file(&self, name: &str) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join(name)
    }

    fn tls(&mut self, raw: RawTls) -> Option<TlsCfg> {
        if raw.certs.is_empty() {
            self.err(
                1,
                "[service.tls] certs is empty: it needs at least one certificate file".into(),
            );
        }
        let mut certs = Vec::new();
        for c in &raw.certs {
            match CertFile::load(&self.file(c.get_ref())) {
                Ok(cert) => certs.push(cert),
                Err(e) => self.at(c, format!("tls certs: {e}")),
            }
        }
        let alpn = match raw.alpn {
            None => DEFAULT_ALPN.map(String::from).to_vec(),
            Some(list) => {
                let mut alpn: Vec<String> = Vec::new();
                for p in list {
                    match p.get_ref().as_str() {
                        a @ ("h2" | "http/1.1") if !alpn.iter().any(|x| x == a) => alpn.push(a.to_string()),
                        a @ ("h2" | "http/1.1") => self.at(&p, format!("tls alpn {a:?} is listed twice")),
                        a => self.at(&p, format!("tls alpn {a:?} is not \"h2\" or \"http/1.1\"")),
                    }
                }
                alpn
            }
        };
        let min_version = match raw.min_version {
            None => MinVersion::Tls12,
            Some(v) => match v.get_ref().as_str() {
                "1.2" => MinVersion::Tls12,
                "1.3" => MinVersion::Tls13,
                other => {
                    self.at(&v, format!("tls min_version {other:?} is not \"1.2\" or \"1.3\""));
                    MinVersion::Tls12
                }
            },
        };
        (!certs.is_empty()).then_some(TlsCfg {
            certs,
            alpn,
            min_version,
        })
    }

    /// `tls`, `tls_verify` and `tls_sni` of a backend.
    fn backend_tls(&mut self, ctx: &BackendCtx<'_>, rb: &RawBackend) -> Option<BackendTls> {
        let bname = rb.name.get_ref();
        if !*rb.tls.get_ref() {
            for s in [&rb.tls_verify, &rb.tls_sni].into_iter().flatten() {
                self.at(s, format!("backend {bname:?}: tls_verify and tls_sni need tls = true"));
            }
            return None;
        }
        if ctx.mode != Mode::Http {
            self.at(&rb.tls, format!("backend {bname:?}: tls applies to mode \"http\" only"));
            return None;
        }
        let verify = match rb.tls_verify.as_ref() {
            None => Verify::System,
            Some(v) if v.get_ref() == "none" => Verify::None,
            Some(v) => match Verify::ca_file(&self.file(v.get_ref())) {
                Ok(ca) => ca,
                Err(e) => {
                    self.at(v, format!("backend {bname:?}: tls_verify: {e}"));
                    return None;
                }
            },
        };
        let sni = rb.tls_sni.as_ref().and_then(|n| {
            let name = n.get_ref();
            if rustls::pki_types::DnsName::try_from(name.as_str()).is_err() {
                self.at(n, format!("backend {bname:?}: tls_sni {name:?} is not a DNS name"));
                return None;
            }
            Some(name.to_ascii_lowercase())
        });
        Some(BackendTls { verify, sni })
    }

    /// One backend of a service or of one of its groups; `cookies` collects
    /// the cookie values seen so far (value, backup, backend name).
    fn backend(
        &mut self,
        ctx: &BackendCtx<'_>,
        rb: RawBackend,
        group: Option<String>,
        backends: &[Backend],
        cookies: &mut Vec<(String, bool, String)>,
    ) -> Option<Backend> {
        let name = ctx.service;
        let bname = rb.name.get_ref().clone();
        if let Some(e) = bad_name("backend", &bname) {
            self.at(&rb.name, e);
        }
        if backends.iter().any(|b: &Backend| b.name == bname) {
            self.at(
                &rb.name,
                format!("duplicate backend name {bname:?} in service {name:?}"),
            );
        }
        let address = rb.address.get_ref().parse::<SocketAddr>().map_err(|_| {
            self.at(
                &rb.address,
                format!("backend address {:?} is not ip:port", rb.address.get_ref()),
            );
        });
        let w = *rb.weight.get_ref();
        if !(0..=MAX_WEIGHT).contains(&w) {
            self.at(&rb.weight, format!("weight {w} is not in 0-{MAX_WEIGHT}"));
        }
        if let (Ok(a), Some(v)) = (&address, &ctx.vip) {
            // xlb does not translate between IPv4 and IPv6.
            if ctx.mode != Mode::Http && a.is_ipv4() != v.is_ipv4() {
                self.at(
                    &rb.address,
                    format!(
                        "backend {bname:?}: {a} is not of the VIP's address family (mode {})",
                        ctx.mode.as_str()
                    ),
                );
            }
        }
        if let Some(c) = &rb.cookie {
            if ctx.mode != Mode::Http {
                self.at(
                    &rb.name,
                    format!("backend {bname:?}: cookie applies to mode \"http\" only"),
                );
            } else if c.get_ref().is_empty() {
                self.at(c, format!("backend {bname:?}: empty cookie value"));
            } else if let Some(other) = cookies
                .iter()
                .find(|(v, backup, _)| v == c.get_ref() && !backup && !rb.backup)
            {
                // A server and its backup may share a value; two normal servers may not.
                self.at(
                    c,
                    format!("cookie value {:?} already used by backend {:?}", c.get_ref(), other.2),
                );
            }
            cookies.push((c.get_ref().clone(), rb.backup, bname.clone()));
        }
        let tls = self.backend_tls(ctx, &rb);
        let send_proxy = rb.send_proxy.as_ref().and_then(|v| {
            if ctx.mode != Mode::Http {
                self.at(
                    v,
                    format!("backend {bname:?}: send_proxy applies to mode \"http\" only"),
                );
            }
            match v.get_ref().as_str() {
                "v1" => Some(ProxyVersion::V1),
                "v2" => Some(ProxyVersion::V2),
                other => {
                    self.at(
                        v,
                        format!("backend {bname:?}: send_proxy {other:?} is not \"v1\" or \"v2\""),
                    );
                    None
                }
            }
        });
        let maxconn = match &rb.maxconn {
            None => 0,
            Some(m) => {
                if ctx.mode != Mode::Http {
                    self.at(m, format!("backend {bname:?}: maxconn applies to mode \"http\" only"));
                }
                match *m.get_ref() {
                    n @ 1..=MAX_BACKEND_MAXCONN => n as usize,
                    n => {
                        self.at(
                            m,
                            format!("backend {bname:?}: maxconn {n} is not in 1-{MAX_BACKEND_MAXCONN}"),
                        );
                        0
                    }
                }
            }
        };
        Some(Backend {
            tls,
            send_proxy,
            maxconn,
            name: bname,
            address: address.ok()?,
            weight: w.clamp(0, MAX_WEIGHT) as u32,
            backup: rb.backup,
            cookie: rb.cookie.map(Spanned::into_inner),
            group,
        })
    }

    fn appsession(&mut self, raw: RawAppSession) -> AppSessionCfg {
        let cookie = raw.cookie.get_ref().clone();
        if !valid_cookie_name(&cookie) {
            self.at(
                &raw.cookie,
                format!("appsession cookie {cookie:?} is not a valid cookie name"),
            );
        }
        let len = match raw.len {
            None => 64,
            Some(l) => usize::try_from(*l.get_ref())
                .ok()
                .filter(|n| (1..=1024).contains(n))
                .unwrap_or_else(|| {
                    self.at(&l, format!("appsession len {} is not in 1-1024", l.get_ref()));
                    64
                }),
        };
        AppSessionCfg {
            cookie,
            len,
            // HAProxy requires a timeout; 3h when the file gives none.
            timeout: self
                .duration(raw.timeout, "appsession timeout")
                .unwrap_or(Duration::from_secs(3 * 3600)),
            request_learn: raw.request_learn,
            url_mode: raw.url_mode,
            route_suffix: raw.route_suffix,
        }
    }

    fn route(&mut self, raw: Spanned<RawRoute>, groups: &[String]) -> Option<Route> {
        let span = raw.span();
        let r = raw.into_inner();
        let group = r.backend_group.get_ref().clone();
        if !groups.contains(&group) {
            self.at(
                &r.backend_group,
                format!("backend_group {group:?} is not a [[service.group]] of this service"),
            );
        }
        let host = r.host.and_then(|h| match regex::Regex::new(h.get_ref()) {
            Ok(re) => Some(HostRegex(re)),
            Err(e) => {
                self.at(&h, format!("host regex {:?}: {e}", h.get_ref()));
                None
            }
        });
        let path_beg = r.path_beg.map(OneOrMany::into_vec).unwrap_or_default();
        let path_end = r.path_end.map(OneOrMany::into_vec).unwrap_or_default();
        if path_beg.is_empty() && path_end.is_empty() && host.is_none() {
            let line = self.line(span.start);
            self.err(line, "route needs path_beg, path_end or host".into());
            return None;
        }
        Some(Route {
            path_beg,
            path_end,
            host,
            group,
        })
    }

    fn stats(&mut self, raw: RawStats) -> StatsCfg {
        let uri = raw.uri.map_or_else(
            || "/stats".to_string(),
            |u| {
                if !u.get_ref().starts_with('/') || u.get_ref().starts_with("/api/") || u.get_ref() == "/metrics" {
                    self.at(
                        &u,
                        format!(
                            "stats uri {:?} must start with / and not be /api/ or /metrics",
                            u.get_ref()
                        ),
                    );
                }
                u.into_inner()
            },
        );
        let auth = raw.auth.and_then(|a| match a.get_ref().split_once(':') {
            Some((u, p)) if !u.is_empty() => Some(Credentials::plain(u, p)),
            _ => {
                self.at(&a, "stats auth must be \"user:password\"".into());
                None
            }
        });
        StatsCfg {
            uri,
            auth,
            refresh: self.duration(raw.refresh, "stats refresh"),
        }
    }

    fn duration(&mut self, s: Option<Spanned<String>>, what: &str) -> Option<Duration> {
        let s = s?;
        match parse_duration(s.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.at(&s, format!("{what} must be more than 0"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.at(&s, e);
                None
            }
        }
    }

    fn cookie(&mut self, raw: RawCookie) -> CookieCfg {
        let name = raw.name.get_ref().clone();
        if !valid_cookie_name(&name) {
            self.at(&raw.name, format!("cookie name {name:?} is not a valid cookie name"));
        }
        CookieCfg {
            name,
            mode: raw.mode,
            indirect: raw.indirect,
            nocache: raw.nocache,
            httponly: raw.httponly,
            secure: raw.secure,
            postonly: raw.postonly,
            preserve: raw.preserve,
            maxidle: self.duration(raw.maxidle, "cookie maxidle"),
            maxlife: self.duration(raw.maxlife, "cookie maxlife"),
            domain: raw.domain,
        }
    }

    fn http(&mut self, raw: RawHttp) -> HttpCfg {
        let d = HttpCfg::default();
        let except = raw.forwardfor_except.and_then(|c| {
            Cidr::parse(c.get_ref()).or_else(|| {
                self.at(
                    &c,
                    format!("forwardfor_except {:?} is not an address/prefix", c.get_ref()),
                );
                None
            })
        });
        let timeout_client = self
            .duration(raw.timeout_client, "timeout_client")
            .unwrap_or(d.timeout_client);
        let timeout_http_request = self
            .duration(raw.timeout_http_request, "timeout_http_request")
            .unwrap_or(timeout_client);
        let timeout_http_keep_alive = self
            .duration(raw.timeout_http_keep_alive, "timeout_http_keep_alive")
            .unwrap_or(timeout_http_request);
        HttpCfg {
            redispatch: raw.redispatch,
            retries: raw.retries.unwrap_or(d.retries),
            forwardfor: raw.forwardfor,
            forwardfor_except: except,
            monitor_uri: raw.monitor_uri,
            connection: raw.connection,
            timeout_connect: self
                .duration(raw.timeout_connect, "timeout_connect")
                .unwrap_or(d.timeout_connect),
            timeout_client,
            timeout_server: self
                .duration(raw.timeout_server, "timeout_server")
                .unwrap_or(d.timeout_server),
            timeout_http_request,
            timeout_http_keep_alive,
            max_header_bytes: raw.max_header_bytes.unwrap_or(d.max_header_bytes),
            max_body_bytes: raw.max_body_bytes,
            timeout_tunnel: self
                .duration(raw.timeout_tunnel, "timeout_tunnel")
                .unwrap_or(d.timeout_tunnel),
            timeout_queue: self
                .duration(raw.timeout_queue, "timeout_queue")
                .unwrap_or(d.timeout_queue),
            accept_proxy: raw.accept_proxy,
        }
    }

    /// The request of an http check: every part goes on the wire as it
    /// is, so each is held to what its place in a request head allows.
    fn http_check(&mut self, raw: &RawHealth) -> HttpCheck {
        let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
        let mut c = HttpCheck {
            method: "GET".into(),
            path: raw.path.clone().unwrap_or_else(|| "/".into()),
            version: "HTTP/1.0".into(),
            host: None,
            expect: raw.expect.clone().unwrap_or_else(|| "200-399".into()),
            expect_body: None,
        };
        if !c.path.starts_with('/') || !plain(&c.path) {
            self.at(
                &raw.kind,
                format!(
                    "health path {:?} must start with / and have no spaces or controls",
                    c.path
                ),
            );
        }
        if let Some(m) = &raw.method {
            if plain(m.get_ref()) && m.get_ref().bytes().all(|b| b.is_ascii_uppercase()) {
                c.method = m.get_ref().clone();
            } else {
                self.at(
                    m,
                    format!(
                        "health method {:?} is not an HTTP method (GET, HEAD, OPTIONS ...)",
                        m.get_ref()
                    ),
                );
            }
        }
        if let Some(v) = &raw.version {
            match v.get_ref().as_str() {
                "HTTP/1.0" | "HTTP/1.1" => c.version = v.get_ref().clone(),
                other => self.at(
                    v,
                    format!("health version {other:?} is not \"HTTP/1.0\" or \"HTTP/1.1\""),
                ),
            }
        }
        if let Some(h) = &raw.host {
            if plain(h.get_ref()) {
                c.host = Some(h.get_ref().clone());
            } else {
                self.at(h, format!("health host {:?} is not a host name", h.get_ref()));
            }
        }
        if let Some(b) = &raw.expect_body {
            if b.get_ref().is_empty() {
                self.at(b, "health expect_body is empty".into());
            } else {
                c.expect_body = Some(b.get_ref().clone());
            }
        }
        c
    }

    fn health(&mut self, raw: Option<RawHealth>) -> Health {
        // HAProxy's defaults: inter 2s, rise 2, fall 3.
        let mut h = Health {
            kind: HealthKind::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        };
        let Some(raw) = raw else { return h };
        h.kind = match raw.kind.get_ref().as_str() {
            "none" => HealthKind::None,
            "tcp" => HealthKind::Tcp,
            "http" => HealthKind::Http(self.http_check(&raw)),
            other => {
                self.at(&raw.kind, format!("health kind {other:?} is not tcp, http or none"));
                HealthKind::Tcp
            }
        };
        if !matches!(h.kind, HealthKind::Http(_)) {
            for (name, field) in [
                ("method", &raw.method),
                ("host", &raw.host),
                ("version", &raw.version),
                ("expect_body", &raw.expect_body),
            ] {
                if let Some(f) = field {
                    self.at(f, format!("health {name} needs kind = \"http\""));
                }
            }
        }
        for (name, field, target) in [
            ("interval", raw.interval, &mut h.interval),
            ("timeout", raw.timeout, &mut h.timeout),
        ] {
            if let Some(s) = field {
                match parse_duration(s.get_ref()) {
                    Ok(d) if d.is_zero() => self.at(&s, format!("health {name} must be more than 0")),
                    Ok(d) => *target = d,
                    Err(e) => self.at(&s, e),
                }
            }
        }
        for (name, field, target) in [("rise", raw.rise, &mut h.rise), ("fall", raw.fall, &mut h.fall)] {
            if let Some(n) = field {
                if *n.get_ref() == 0 {
                    self.at(&n, format!("health {name} must be at least 1"));
                } else {
                    *target = *n.get_ref();
                }
            }
        }
        if let HealthKind::Http(HttpCheck { expect, .. }) = &h.kind {
            let ok = expect.split(',').all(|part| {
                let part = part.trim();
                match part.split_once('-') {
                    Some((a, b)) => a.trim().parse::<u16>().is_ok() && b.trim().parse::<u16>().is_ok(),
                    None => part.parse::<u16>().is_ok(),
                }
            });
            if !ok {
                self.at(
                    &raw.kind,
                    format!("health expect {expect:?} is not a status list or range like \"200-399\""),
                );
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse(Path::new("x.toml"), text)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5h"), Ok(Duration::from_secs(5 * 3600)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("367d").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration("9999999999999999999d").is_err());
    }

    #[test]
    fn names_that_would_break_log_lines_are_refused_at_their_line() {
        let cfg = |service: &str, backend: &str| {
            format!(
                "[[service]]\nname = {service:?}\nvip = \"198.18.0.10\"\nport = 80\nmode = \"http\"\n\
                 [[service.backend]]\nname = {backend:?}\naddress = \"198.18.1.10:8080\"\n"
            )
        };
        assert_eq!(errors(&cfg("shop-1.eu:web_2", "a.b-c:d_e")), Vec::<String>::new());
        let e = errors(&cfg("my shop", "a"));
        assert!(
            e.len() == 1 && e[0].starts_with("x.toml:2:") && e[0].contains("service name \"my shop\""),
            "{e:?}"
        );
        let e = errors(&cfg("shop\n127.0.0.1:1 [01/Jan/2026:00:00:00.000] fake", "a"));
        assert!(e.len() == 1 && e[0].contains("only letters, digits"), "{e:?}");
        let e = errors(&cfg("shop", "a b/c"));
        assert!(
            e.len() == 1 && e[0].starts_with("x.toml:7:") && e[0].contains("backend name"),
            "{e:?}"
        );
        assert!(errors(&cfg("shop", ""))[0].contains("backend name is empty"));
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(
            Path::new("x.toml"),
            r#"
[global]
interface = "eth0"
[[service]]
name = "web"
vip = "198.18.0.10"
port = 80
mode = "nat"
  [[service.backend]]
  name = "a"
  address = "198.18.1.10:8080"
"#,
        )
        .unwrap();
        assert_eq!(c.global.admin, DEFAULT_ADMIN.parse().unwrap());
        let s = &c.services[0];
        assert_eq!((s.port, s.protocol, s.balance.as_str()), (80, Protocol::Tcp, "source"));
        assert_eq!(s.backends[0].weight, 1);
        assert_eq!(s.health.rise, 2);
    }

    #[test]
    fn http_timeouts_default_as_haproxys() {
        let http = |extra: &str| {
            let text = format!(
                "[[service]]\nname = \"w\"\nvip = \"127.0.0.1\"\nport = 80\nmode = \"http\"\n\
                 [service.http]\ntimeout_client = \"10s\"\n{extra}\
                 [[service.backend]]\nname = \"a\"\naddress = \"127.0.0.1:81\"\n"
            );
            let c = parse(Path::new("x.toml"), &text).unwrap();
            let h = &c.services[0].http;
            (h.timeout_http_request.as_secs(), h.timeout_http_keep_alive.as_secs())
        };
        assert_eq!(http(""), (10, 10), "both from timeout_client");
        assert_eq!(
            http("timeout_http_request = \"2s\"\n"),
            (2, 2),
            "keep-alive from http-request"
        );
        assert_eq!(http("timeout_http_keep_alive = \"1s\"\n"), (10, 1));
    }

    #[test]
    fn errors_name_the_line() {
        let e = errors("[global]\nbogus = 1\n");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("x.toml:2: unknown field `bogus`"), "{e:?}");

        let e = errors(
            "[[service]]\nname = \"a\"\nvip = \"1.2.3\"\nport = 80\nmode = \"nat\"\n\
             [[service.backend]]\nname = \"b\"\naddress = \"nope\"\nweight = 999\n",
        );
        assert_eq!(
            e,
            vec![
                "x.toml:3: vip \"1.2.3\" is not an IP address",
                "x.toml:8: backend address \"nope\" is not ip:port",
                "x.toml:9: weight 999 is not in 0-256",
            ]
        );
    }

    #[test]
    fn duplicate_vip_port_is_refused() {
        let svc = |n: &str| format!("[[service]]\nname = \"{n}\"\nvip = \"198.18.0.1\"\nport = 80\nmode = \"nat\"\n");
        let e = errors(&(svc("a") + &svc("b")));
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("x.toml:7: service \"b\" uses 198.18.0.1:80/tcp"),
            "{e:?}"
        );
    }
}

#[cfg(test)]
mod examples {
    /// Every bundled example must pass `xlb check`.
    #[test]
    fn bundled_examples_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                super::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 2, "examples found: {n}");
    }
}
