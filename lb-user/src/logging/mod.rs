//! Logs as HAProxy operators expect them: access lines (httplog, tcplog or
//! JSON) and the daemon's own messages, framed as syslog (RFC 3164 or
//! RFC 5424) to UDP and unix-socket sinks, or raw to stdout/stderr.
//!
//! A request never waits for its log line: lines go into a bounded queue
//! that one writer thread empties in batches. When a sink is slower than
//! the traffic the queue fills and further lines are dropped and counted
//! ([`dropped`]), never buffered without bound.

mod daemon;
mod record;
mod sink;
mod writer;

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr};

pub use daemon::DaemonLayer;
pub use record::{ConnRecord, FlowOutcome, FlowRecord, HttpRecord, RequestLine};
pub use writer::{configure, count_dropped, dropped, enabled, flush, push, sent};

/// One thing to log.
pub enum Entry {
    Http(Box<HttpRecord>),
    Flow(Box<FlowRecord>),
    /// A connection that failed before HTTP (a TLS handshake, a PROXY
    /// header), as HAProxy logs it.
    Refused(Box<ConnRecord>),
    /// A daemon message: to the syslog sinks only.
    Daemon(Severity, String),
}

impl Entry {
    fn severity(&self) -> Severity {
        match self {
            Entry::Http(_) | Entry::Flow(_) | Entry::Refused(_) => Severity::Info,
            Entry::Daemon(s, _) => *s,
        }
    }
}

/// Where lines go (`global.log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkAddr {
    /// `udp://HOST:PORT` (port 514 if left out), or a bare `IP[:PORT]`.
    Udp(SocketAddr),
    /// `unix:///dev/log`, or a bare absolute path: a datagram socket.
    Unix(PathBuf),
    Stdout,
    Stderr,
}

impl SinkAddr {
    /// Carries the daemon's messages too (stdout and stderr do not:
    /// standard error has them already).
    pub fn syslog(&self) -> bool {
        matches!(self, SinkAddr::Udp(_) | SinkAddr::Unix(_))
    }
}

impl fmt::Display for SinkAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkAddr::Udp(a) => write!(f, "udp://{a}"),
            SinkAddr::Unix(p) => write!(f, "unix://{}", p.display()),
            SinkAddr::Stdout => f.write_str("stdout"),
            SinkAddr::Stderr => f.write_str("stderr"),
        }
    }
}

impl FromStr for SinkAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let udp = |a: &str| -> Result<SinkAddr, String> {
            if let Ok(sa) = a.parse::<SocketAddr>() {
                if sa.port() == 0 {
                    return Err(format!("log sink {s:?}: port 0 is no port to send to"));
                }
                return Ok(SinkAddr::Udp(sa));
            }
            // No port: syslog's.
            let ip = a.trim_start_matches('[').trim_end_matches(']');
            ip.parse::<std::net::IpAddr>()
                .map(|ip| SinkAddr::Udp(SocketAddr::new(ip, 514)))
                .map_err(|_| format!("log sink {s:?}: not an IP address with an optional port"))
        };
        match s {
            "stdout" => Ok(SinkAddr::Stdout),
            "stderr" => Ok(SinkAddr::Stderr),
            _ if s.starts_with("udp://") => udp(&s[6..]),
            _ if s.starts_with("unix://") || s.starts_with('/') => {
                let p = s.strip_prefix("unix://").unwrap_or(s);
                if !p.starts_with('/') {
                    return Err(format!("log sink {s:?}: a unix socket needs an absolute path"));
                }
                Ok(SinkAddr::Unix(PathBuf::from(p)))
            }
            _ if s.contains("://") => Err(format!(
                "log sink {s:?}: unknown scheme (udp://, unix://, stdout or stderr)"
            )),
            _ => udp(s),
        }
    }
}

/// Syslog severities, most severe first (RFC 5424 6.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Emerg = 0,
    Alert,
    Crit,
    Err,
    Warning,
    Notice,
    Info,
    Debug,
}

const SEVERITIES: [&str; 8] = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"];

impl FromStr for Severity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        use Severity::*;
        let all = [Emerg, Alert, Crit, Err, Warning, Notice, Info, Debug];
        SEVERITIES
            .iter()
            .position(|n| *n == s)
            .map(|i| all[i])
            .ok_or_else(|| format!("log level {s:?}: one of {}", SEVERITIES.join(", ")))
    }
}

const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "auth2", "ftp", "ntp", "audit",
    "alert", "cron2", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
];

/// A syslog facility, by its number (HAProxy's names: `local0`..`local7`,
/// `daemon`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facility(pub u8);

impl FromStr for Facility {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        FACILITIES
            .iter()
            .position(|n| *n == s)
            .map(|i| Facility(i as u8))
            .ok_or_else(|| format!("log facility {s:?}: one of {}", FACILITIES.join(", ")))
    }
}

/// How a line is framed for syslog sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// `<PRI>Mmm dd hh:mm:ss xlb[PID]: ` (as HAProxy sends it: no host).
    #[default]
    Rfc3164,
    /// `<PRI>1 TIMESTAMP HOST xlb PID - - `.
    Rfc5424,
}

impl FromStr for Framing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rfc3164" => Ok(Framing::Rfc3164),
            "rfc5424" => Ok(Framing::Rfc5424),
            _ => Err(format!("log_format {s:?}: \"rfc3164\" or \"rfc5424\"")),
        }
    }
}

/// The shape of an access line (`service.log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    Httplog,
    Tcplog,
    Json,
}

impl FromStr for LineFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "httplog" => Ok(LineFormat::Httplog),
            "tcplog" => Ok(LineFormat::Tcplog),
            "json" => Ok(LineFormat::Json),
            _ => Err(format!("log format {s:?}: \"httplog\", \"tcplog\" or \"json\"")),
        }
    }
}

/// The `[global]` log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setup {
    pub sinks: Vec<SinkAddr>,
    pub facility: Facility,
    /// Lines less severe than this are not sent (HAProxy's max level).
    pub level: Severity,
    pub framing: Framing,
}

impl Default for Setup {
    /// Access lines on standard error, as xlb logged them before sinks
    /// could be chosen.
    fn default() -> Setup {
        Setup {
            sinks: vec![SinkAddr::Stderr],
            facility: Facility(16),
            level: Severity::Info,
            framing: Framing::Rfc3164,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_addresses_parse_as_haproxy_users_write_them() {
        let udp = |s: &str| SinkAddr::Udp(s.parse().unwrap());
        assert_eq!("udp://127.0.0.1:514".parse(), Ok(udp("127.0.0.1:514")));
        assert_eq!("udp://127.0.0.1".parse(), Ok(udp("127.0.0.1:514")));
        assert_eq!("127.0.0.1:1514".parse(), Ok(udp("127.0.0.1:1514")));
        assert_eq!("udp://[::1]:514".parse(), Ok(udp("[::1]:514")));
        assert_eq!("udp://[::1]".parse(), Ok(udp("[::1]:514")));
        assert_eq!("unix:///dev/log".parse(), Ok(SinkAddr::Unix("/dev/log".into())));
        assert_eq!("/dev/log".parse(), Ok(SinkAddr::Unix("/dev/log".into())));
        assert_eq!("stdout".parse(), Ok(SinkAddr::Stdout));
        for bad in [
            "tcp://127.0.0.1:514",
            "unix://dev/log",
            "localhost:514",
            "udp://",
            "",
            "udp://127.0.0.1:0",
        ] {
            assert!(bad.parse::<SinkAddr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn facilities_and_levels_have_syslog_numbers() {
        assert_eq!("local2".parse(), Ok(Facility(18)));
        assert_eq!("daemon".parse(), Ok(Facility(3)));
        assert_eq!("warning".parse(), Ok(Severity::Warning));
        assert!("local8".parse::<Facility>().is_err());
        assert!("warn".parse::<Severity>().is_err());
        assert!(Severity::Info > Severity::Warning);
    }
}
