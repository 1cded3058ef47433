//! The config file as serde reads it: every value keeps its span so that
//! validation can name the line.

use serde::Deserialize;
use toml::Spanned;

use super::model::{ConnectionMode, CookieMode, Mode, OnExit, Protocol, UrlMode, XdpModeCfg};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) global: RawGlobal,
    #[serde(default)]
    pub(super) service: Vec<RawService>,
    pub(super) stats: Option<Spanned<RawStats>>,
    pub(super) sync: Option<Spanned<RawSync>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSync {
    pub(super) listen: Spanned<String>,
    #[serde(default)]
    pub(super) peers: Vec<Spanned<String>>,
    pub(super) key_file: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStats {
    pub(super) uri: Option<Spanned<String>>,
    pub(super) auth: Option<Spanned<String>>,
    pub(super) refresh: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGlobal {
    pub(super) interface: Option<String>,
    #[serde(default)]
    pub(super) xdp_mode: XdpModeCfg,
    pub(super) admin: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) nonlocal_bind: bool,
    pub(super) vip_interface: Option<String>,
    pub(super) pin_dir: Option<String>,
    #[serde(default)]
    pub(super) on_exit: OnExit,
    #[serde(default)]
    pub(super) peers: Vec<Spanned<String>>,
    pub(super) threads: Option<Spanned<i64>>,
    pub(super) maxconn: Option<Spanned<i64>>,
    pub(super) admin_auth: Option<Spanned<String>>,
    pub(super) log: Option<Spanned<OneOrMany>>,
    pub(super) log_facility: Option<Spanned<String>>,
    pub(super) log_level: Option<Spanned<String>>,
    pub(super) log_format: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Spanned<String>,
    pub(super) vip: Spanned<String>,
    pub(super) port: Spanned<i64>,
    #[serde(default)]
    pub(super) protocol: Protocol,
    pub(super) mode: Mode,
    pub(super) balance: Option<Spanned<String>>,
    pub(super) snat: Option<Spanned<OneOrMany>>,
    #[serde(default)]
    pub(super) backend: Vec<RawBackend>,
    pub(super) health: Option<RawHealth>,
    pub(super) cookie: Option<Spanned<RawCookie>>,
    pub(super) http: Option<Spanned<RawHttp>>,
    pub(super) appsession: Option<Spanned<RawAppSession>>,
    #[serde(default)]
    pub(super) route: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub(super) group: Vec<Spanned<RawGroup>>,
    pub(super) tls: Option<Spanned<RawTls>>,
    pub(super) log: Option<Spanned<RawLog>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) enabled: Option<bool>,
    pub(super) format: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) dontlognull: bool,
    pub(super) capture_cookie: Option<Spanned<String>>,
    pub(super) sample: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) certs: Vec<Spanned<String>>,
    pub(super) alpn: Option<Vec<Spanned<String>>>,
    pub(super) min_version: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAppSession {
    pub(super) cookie: Spanned<String>,
    pub(super) len: Option<Spanned<i64>>,
    pub(super) timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) request_learn: bool,
    #[serde(default)]
    pub(super) url_mode: UrlMode,
    #[serde(default)]
    pub(super) route_suffix: bool,
}

/// A string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "expected a string or a list of strings")]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn as_slice(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }

    pub(super) fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) path_beg: Option<OneOrMany>,
    pub(super) path_end: Option<OneOrMany>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) backend_group: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) backend: Vec<RawBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCookie {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) mode: CookieMode,
    #[serde(default)]
    pub(super) indirect: bool,
    #[serde(default)]
    pub(super) nocache: bool,
    #[serde(default)]
    pub(super) httponly: bool,
    #[serde(default)]
    pub(super) secure: bool,
    #[serde(default)]
    pub(super) postonly: bool,
    #[serde(default)]
    pub(super) preserve: bool,
    pub(super) maxidle: Option<Spanned<String>>,
    pub(super) maxlife: Option<Spanned<String>>,
    pub(super) domain: Option<String>,
    pub(super) dynamic_key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    #[serde(default)]
    pub(super) redispatch: bool,
    pub(super) retries: Option<u32>,
    #[serde(default)]
    pub(super) forwardfor: bool,
    pub(super) forwardfor_except: Option<Spanned<String>>,
    pub(super) monitor_uri: Option<String>,
    #[serde(default)]
    pub(super) connection: ConnectionMode,
    pub(super) timeout_connect: Option<Spanned<String>>,
    pub(super) timeout_client: Option<Spanned<String>>,
    pub(super) timeout_server: Option<Spanned<String>>,
    pub(super) timeout_http_request: Option<Spanned<String>>,
    pub(super) timeout_http_keep_alive: Option<Spanned<String>>,
    pub(super) max_header_bytes: Option<usize>,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) timeout_tunnel: Option<Spanned<String>>,
    pub(super) timeout_queue: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) accept_proxy: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) name: Spanned<String>,
    pub(super) address: Spanned<String>,
    #[serde(default = "one")]
    pub(super) weight: Spanned<i64>,
    #[serde(default)]
    pub(super) backup: bool,
    pub(super) cookie: Option<Spanned<String>>,
    #[serde(default = "no")]
    pub(super) tls: Spanned<bool>,
    pub(super) tls_verify: Option<Spanned<String>>,
    pub(super) tls_sni: Option<Spanned<String>>,
    pub(super) send_proxy: Option<Spanned<String>>,
    pub(super) maxconn: Option<Spanned<i64>>,
}

pub(super) fn one() -> Spanned<i64> {
    Spanned::new(0..0, 1)
}

pub(super) fn no() -> Spanned<bool> {
    Spanned::new(0..0, false)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) kind: Spanned<String>,
    pub(super) path: Option<String>,
    pub(super) expect: Option<String>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) rise: Option<Spanned<u32>>,
    pub(super) fall: Option<Spanned<u32>>,
    pub(super) method: Option<Spanned<String>>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) version: Option<Spanned<String>>,
    pub(super) expect_body: Option<Spanned<String>>,
}
