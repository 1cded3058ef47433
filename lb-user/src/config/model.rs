//! The typed config the daemon runs from: what validation produces.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;

pub use crate::auth::Credentials;
pub use crate::logging::{Facility, Framing, LineFormat, Setup as LogSetup, Severity, SinkAddr};
pub use crate::tls::{CertFile, MinVersion, Verify};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeCfg {
    #[default]
    Auto,
    Native,
    Generic,
}

/// HAProxy's cookie modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CookieMode {
    /// xlb sets its own cookie.
    #[default]
    Insert,
    /// The server sets the cookie; xlb replaces its value with the server's.
    Rewrite,
    /// The server's own cookie value gets `SERVER~` in front.
    Prefix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionMode {
    #[default]
    KeepAlive,
    ServerClose,
    Close,
}

/// Cookie persistence of an http service (see docs/config.md, `[service.cookie]`).
#[derive(Debug, Clone, PartialEq)]
pub struct CookieCfg {
    pub name: String,
    pub mode: CookieMode,
    pub indirect: bool,
    pub nocache: bool,
    pub httponly: bool,
    pub secure: bool,
    pub postonly: bool,
    pub preserve: bool,
    pub maxidle: Option<Duration>,
    pub maxlife: Option<Duration>,
    pub domain: Option<String>,
}

/// Where appsession looks for the session id in the URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UrlMode {
    /// `/path;jsessionid=ID?query` (name matched case-insensitively).
    #[default]
    PathParameters,
    /// `/path?jsessionid=ID&...`.
    QueryString,
}

/// Application-session persistence (HAProxy's `appsession`).
#[derive(Debug, Clone, PartialEq)]
pub struct AppSessionCfg {
    pub cookie: String,
    /// Characters of the session id that are remembered.
    pub len: usize,
    /// Idle time after which an entry is forgotten.
    pub timeout: Duration,
    pub request_learn: bool,
    pub url_mode: UrlMode,
    /// An id the table does not know goes to the server named by its
    /// route suffix (Tomcat `jvmRoute`: `ID.ROUTE`, ROUTE = the server's
    /// cookie value, or its name when it has none), as mod_jk does.
    pub route_suffix: bool,
}

/// A host regex; compared by its source so configs stay comparable.
#[derive(Debug, Clone)]
pub struct HostRegex(pub regex::Regex);

impl PartialEq for HostRegex {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// A routing rule of an http service: every condition given must hold
/// (any of the listed prefixes or suffixes; the host regex).
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub path_beg: Vec<String>,
    pub path_end: Vec<String>,
    pub host: Option<HostRegex>,
    pub group: String,
}

impl Route {
    /// `host` is the request's host without its port.
    pub fn matches(&self, path: &str, host: Option<&str>) -> bool {
        (self.path_beg.is_empty() || self.path_beg.iter().any(|p| path.starts_with(p.as_str())))
            && (self.path_end.is_empty() || self.path_end.iter().any(|p| path.ends_with(p.as_str())))
            && self.host.as_ref().is_none_or(|r| host.is_some_and(|h| r.0.is_match(h)))
    }
}

/// The stats page on the admin address (HAProxy's `stats uri/auth/refresh`).
#[derive(Debug, Clone, PartialEq)]
pub struct StatsCfg {
    pub uri: String,
    /// `user:password` for basic auth; admin actions need it.
    pub auth: Option<Credentials>,
    pub refresh: Option<Duration>,
}

/// An address range such as 127.0.0.0/8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() { max } else { p.trim().parse().ok()? };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |a: IpAddr| -> u128 {
            match a {
                IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
                IpAddr::V6(v) => u128::from(v),
            }
        };
        if self.addr.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        // IPv4 sits in the top 32 bits, so its prefix counts from the top too.
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        bits(self.addr) & mask == bits(ip) & mask
    }
}

/// HTTP proxy settings of an http service.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCfg {
    pub redispatch: bool,
    pub retries: u32,
    pub forwardfor: bool,
    pub forwardfor_except: Option<Cidr>,
    pub monitor_uri: Option<String>,
    pub connection: ConnectionMode,
    pub timeout_connect: Duration,
    pub timeout_client: Duration,
    pub timeout_server: Duration,
    /// A request head must arrive whole within this of its first byte
    /// (HAProxy's `timeout http-request`; default `timeout_client`).
    pub timeout_http_request: Duration,
    /// How long a keep-alive connection waits for its next request
    /// (HAProxy's `timeout http-keep-alive`; default `timeout_http_request`).
    pub timeout_http_keep_alive: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: Option<u64>,
    /// An upgraded (WebSocket) connection silent both ways this long is
    /// closed (HAProxy's `timeout tunnel`); it replaces the client and
    /// server timeouts there.
    pub timeout_tunnel: Duration,
    /// How long a request waits for a backend under `maxconn`, then 503.
    pub timeout_queue: Duration,
    /// Clients must open with a PROXY protocol (v1 or v2) header.
    pub accept_proxy: bool,
}

impl Default for HttpCfg {
    fn default() -> Self {
        // HAProxy's defaults where it has them: no redispatch, 3 retries.
        HttpCfg {
            redispatch: false,
            retries: 3,
            forwardfor: false,
            forwardfor_except: None,
            monitor_uri: None,
            connection: ConnectionMode::KeepAlive,
            timeout_connect: Duration::from_secs(5),
            timeout_client: Duration::from_secs(30),
            timeout_server: Duration::from_secs(30),
            timeout_http_request: Duration::from_secs(30),
            timeout_http_keep_alive: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            max_body_bytes: None,
            timeout_tunnel: Duration::from_secs(3600),
            timeout_queue: Duration::from_secs(30),
            accept_proxy: false,
        }
    }
}

/// What a normal stop leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnExit {
    /// The XDP program stays attached with its maps and VIPs: forwarding
    /// continues and the next `xlb run` takes over without dropping flows.
    #[default]
    Keep,
    /// Detach, unpin, remove the VIPs xlb added.
    Cleanup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Nat,
    Dsr,
    Http,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::Dsr => "dsr",
            Mode::Http => "http",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub global: Global,
    pub services: Vec<Service>,
    pub stats: Option<StatsCfg>,
    /// L4 flow-state sync with other xlb nodes (`[sync]`).
    pub sync: Option<SyncCfg>,
}

/// `[sync]`: where this node receives flow updates, where it sends its own,
/// and the shared key that signs them.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncCfg {
    /// UDP for updates, TCP (same port) for a full-table pull.
    pub listen: SocketAddr,
    pub peers: Vec<SocketAddr>,
    pub key_file: PathBuf,
    pub key: SyncKey,
}

/// The shared secret of `[sync]`, read from `key_file`; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SyncKey(pub Vec<u8>);

impl fmt::Debug for SyncKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SyncKey({} bytes)", self.0.len())
    }
}

/// Fewest bytes a `[sync]` key may have (HMAC-SHA256 wants 32 random ones;
/// 16 is the floor below which a guess is cheap).
pub const MIN_SYNC_KEY: usize = 16;

#[derive(Debug, Clone, PartialEq)]
pub struct Global {
    pub interface: Option<String>,
    pub xdp_mode: XdpModeCfg,
    pub admin: SocketAddr,
    /// Basic auth on the admin API; required unless `admin` is loopback.
    pub admin_auth: Option<Credentials>,
    pub nonlocal_bind: bool,
    pub vip_interface: Option<String>,
    /// bpffs directory for the pinned data plane (per interface below it).
    pub pin_dir: PathBuf,
    pub on_exit: OnExit,
    /// Admin addresses of peer xlb nodes that share appsession tables.
    pub peers: Vec<SocketAddr>,
    /// Threads serving the L7 proxy (HAProxy's `nbthread`); `None`: one per
    /// CPU xlb may run on. Read at start only.
    pub threads: Option<usize>,
    /// Open client connections across the L7 proxy (HAProxy's `maxconn`).
    pub maxconn: usize,
    /// Where access lines and daemon messages go.
    pub log: LogSetup,
}

pub const DEFAULT_ADMIN: &str = "127.0.0.1:9900";
/// The default `global.pin_dir` (per interface below it).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xlb";
/// The default `global.maxconn`.
pub const DEFAULT_MAXCONN: usize = 100_000;
/// Upper bound of `global.threads`.
pub const MAX_THREADS: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    pub balance: String,
    /// nat: the snat pool (empty: the XDP interface's address).
    pub snat: Vec<IpAddr>,
    pub backends: Vec<Backend>,
    pub health: Health,
    /// http: cookie persistence, if configured.
    pub cookie: Option<CookieCfg>,
    /// http: proxy settings (defaults when not configured).
    pub http: HttpCfg,
    /// http: application-session persistence, if configured.
    pub appsession: Option<AppSessionCfg>,
    /// http: routing rules, first match wins.
    pub routes: Vec<Route>,
    /// http: names of the backend groups (their backends are in `backends`).
    pub groups: Vec<String>,
    /// http: TLS termination, if configured.
    pub tls: Option<TlsCfg>,
    pub log: LogCfg,
}

/// `[service.log]`: this service's access lines.
#[derive(Debug, Clone, PartialEq)]
pub struct LogCfg {
    /// Default: on for http services, off for L4 ones.
    pub enabled: bool,
    pub format: LineFormat,
    /// Connections that sent nothing are not logged.
    pub dontlognull: bool,
    /// http: the cookie shown in the captured-cookie fields (HAProxy's
    /// `capture cookie`).
    pub capture_cookie: Option<String>,
    /// L4: one new flow in this many is logged.
    pub sample: u32,
}

/// The most L4 flow logs may be thinned (`sample`).
pub const MAX_LOG_SAMPLE: u32 = 1 << 20;

/// `[service.tls]`: the certificates (SNI picks; the first is the
/// default), ALPN protocols in order of preference, lowest version.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsCfg {
    pub certs: Vec<CertFile>,
    pub alpn: Vec<String>,
    pub min_version: MinVersion,
}

/// ALPN protocols offered when `alpn` is not given.
pub const DEFAULT_ALPN: [&str; 2] = ["h2", "http/1.1"];

/// TLS towards a backend.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendTls {
    pub verify: Verify,
    /// Sent as SNI and checked against the certificate; without it, the
    /// request's host is sent and only the chain is checked.
    pub sni: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    pub backup: bool,
    pub cookie: Option<String>,
    /// The backend group it belongs to; None: the service's own backends.
    pub group: Option<String>,
    /// http: TLS towards it.
    pub tls: Option<BackendTls>,
    /// http: a PROXY protocol header opens each connection to it.
    pub send_proxy: Option<ProxyVersion>,
    /// http: requests it takes at once (0: no limit); more wait in the
    /// service's queue.
    pub maxconn: usize,
}

/// Upper bound of a backend's `maxconn`.
pub const MAX_BACKEND_MAXCONN: i64 = 1_000_000;

/// The PROXY protocol version a backend is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub kind: HealthKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HealthKind {
    None,
    Tcp,
    Http(HttpCheck),
}

/// An HTTP check (HAProxy's `option httpchk` and `http-check expect`).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCheck {
    pub method: String,
    pub path: String,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: String,
    /// The Host header; None: the backend's address.
    pub host: Option<String>,
    /// Accepted statuses (`200-399`, `200,204`).
    pub expect: String,
    /// A string the response body must contain.
    pub expect_body: Option<String>,
}

/// Largest weight accepted; Maglev shares are proportional to it.
pub const MAX_WEIGHT: i64 = 256;
