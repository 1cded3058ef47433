//! What an access line says, and its formats: HAProxy's `httplog` and
//! `tcplog` field for field, and JSON with the fields named as HAProxy's
//! documentation names them.

use std::{
    fmt::Write,
    net::SocketAddr,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use hyper::{Method, Uri, Version};

use super::LineFormat;

/// A request's line as it came (`<BADREQ>` when there was none).
pub struct RequestLine {
    pub method: Method,
    /// The target as text, cut to what a line can show: a clone of the
    /// request's `Uri` would keep its whole read buffer alive while the
    /// line waits in the queue.
    pub target: Box<str>,
    pub version: Version,
}

/// Longest target kept for a line (syslog lines are cut at 1 KiB).
pub const MAX_TARGET: usize = 1024;

impl RequestLine {
    pub fn new(method: &Method, uri: &Uri, version: Version) -> RequestLine {
        let mut target = uri.to_string();
        if target.len() > MAX_TARGET {
            let mut end = MAX_TARGET;
            while !target.is_char_boundary(end) {
                end -= 1;
            }
            target.truncate(end);
        }
        RequestLine {
            method: method.clone(),
            target: target.into_boxed_str(),
            version,
        }
    }
}

/// One HTTP request, as it is logged at its end.
pub struct HttpRecord {
    pub format: LineFormat,
    pub client: SocketAddr,
    /// When its first byte came.
    pub date: SystemTime,
    pub frontend: Arc<str>,
    /// The frontend terminates TLS (HAProxy marks it with `~`).
    pub tls: bool,
    pub backend: Arc<str>,
    /// None: no server was chosen (`<NOSRV>`).
    pub server: Option<Arc<str>>,
    /// TR, Tw, Tc, Tr, Ta in ms; -1: not reached.
    pub timers: [i64; 5],
    /// None: the client got none (it went away first), logged as -1.
    pub status: Option<u16>,
    /// Bytes sent to the client, headers included.
    pub bytes: u64,
    /// The captured request and response cookie (`name=value`).
    pub cookies: [Option<Box<str>>; 2],
    /// The termination state: two event letters, then the persistence
    /// cookie flags.
    pub term: [u8; 4],
    /// actconn, feconn, beconn, srv_conn.
    pub conns: [u64; 4],
    pub retries: u32,
    /// The last retry went to another server.
    pub redispatched: bool,
    /// Its place in the server's or the service's queue (0: did not wait).
    pub queue: [u64; 2],
    pub request: Option<RequestLine>,
}

/// What became of a new L4 flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowOutcome {
    Forwarded,
    /// No backend could take it (all down).
    NoBackend,
    /// No source port was free for full-NAT.
    NoPort,
}

/// A new flow of an L4 service, seen by the data path.
pub struct FlowRecord {
    pub format: LineFormat,
    pub client: SocketAddr,
    pub date: SystemTime,
    pub service: Arc<str>,
    pub backend: Option<Arc<str>>,
    pub outcome: FlowOutcome,
}

/// A client connection that failed before any HTTP: HAProxy's
/// `CLIENT [DATE] FRONTEND/1: WHAT` (e.g. `SSL handshake failure`).
pub struct ConnRecord {
    pub format: LineFormat,
    pub client: SocketAddr,
    pub date: SystemTime,
    pub frontend: Arc<str>,
    pub tls: bool,
    pub what: &'static str,
}

impl ConnRecord {
    pub(super) fn write(&self, out: &mut String, clock: &mut Clock) {
        let tilde = if self.tls { "~" } else { "" };
        if self.format == LineFormat::Json {
            // Named as in the other lines (the date: the accept's, as in
            // flow lines), and the message.
            json_head(
                out,
                clock,
                &self.client,
                "accept_date",
                self.date,
                &format!("{}{tilde}", self.frontend),
            );
            out.push_str(",\"message\":");
            json_str(out, self.what);
            out.push('}');
            return;
        }
        let _ = write!(out, "{}:{} [", ip(&self.client), self.client.port());
        clock.date(out, self.date);
        let _ = write!(out, "] {}{tilde}/1: {}", self.frontend, self.what);
    }
}

/// Broken-down local time, cached for the current second (the writer
/// formats many lines of the same second).
#[derive(Default)]
pub(super) struct Clock {
    secs: i64,
    tm: Option<Tm>,
}

#[derive(Clone, Copy)]
struct Tm {
    year: i32,
    mon: usize,
    mday: i32,
    hour: i32,
    min: i32,
    sec: i32,
    /// Seconds east of UTC.
    off: i64,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

impl Clock {
    fn tm(&mut self, t: SystemTime) -> (Tm, u32) {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs() as i64;
        let ms = d.subsec_millis();
        if let (Some(tm), true) = (self.tm, self.secs == secs) {
            return (tm, ms);
        }
        // SAFETY: an all-zero tm is valid; localtime_r fills it from a
        // valid time_t.
        let mut raw: libc::tm = unsafe { std::mem::zeroed() };
        let t = secs as libc::time_t;
        unsafe { libc::localtime_r(&t, &mut raw) };
        let tm = Tm {
            year: raw.tm_year + 1900,
            mon: raw.tm_mon.clamp(0, 11) as usize,
            mday: raw.tm_mday,
            hour: raw.tm_hour,
            min: raw.tm_min,
            sec: raw.tm_sec,
            off: raw.tm_gmtoff,
        };
        (self.secs, self.tm) = (secs, Some(tm));
        (tm, ms)
    }

    /// `01/Dec/2026:07:55:28.801` (HAProxy's accept and request dates).
    fn date(&mut self, out: &mut String, t: SystemTime) {
        let (tm, ms) = self.tm(t);
        let _ = write!(
            out,
            "{:02}/{}/{}:{:02}:{:02}:{:02}.{ms:03}",
            tm.mday, MONTHS[tm.mon], tm.year, tm.hour, tm.min, tm.sec
        );
    }

    /// `Dec  1 07:55:28`
    pub(super) fn rfc3164(&mut self, t: SystemTime) -> String {
        let (tm, _) = self.tm(t);
        format!(
            "{} {:2} {:02}:{:02}:{:02}",
            MONTHS[tm.mon], tm.mday, tm.hour, tm.min, tm.sec
        )
    }

    /// `2026-12-01T07:55:28.801+00:00`
    pub(super) fn rfc5424(&mut self, t: SystemTime) -> String {
        let (tm, ms) = self.tm(t);
        let sign = if tm.off < 0 { '-' } else { '+' };
        let off = tm.off.abs();
        format!(
            "{}-{:02}-{:02}T{:02}:{:02}:{:02}.{ms:03}{sign}{:02}:{:02}",
            tm.year,
            tm.mon + 1,
            tm.mday,
            tm.hour,
            tm.min,
            tm.sec,
            off / 3600,
            off % 3600 / 60
        )
    }
}

/// HAProxy's encoding of the request line: non-printable bytes, `"` and
/// `#` as `#XX`.
fn encoded(out: &mut String, s: &str) {
    for b in s.bytes() {
        if !(0x20..0x7f).contains(&b) || b == b'"' || b == b'#' {
            let _ = write!(out, "#{b:02X}");
        } else {
            out.push(b as char);
        }
    }
}

/// The opening fields of every JSON line: `{"client_ip":...,
/// "client_port":...,"<date_key>":"...","frontend_name":...` (no closing).
fn json_head(
    out: &mut String,
    clock: &mut Clock,
    client: &SocketAddr,
    date_key: &str,
    date: SystemTime,
    frontend: &str,
) {
    out.push_str("{\"client_ip\":");
    json_str(out, &ip(client));
    let _ = write!(out, ",\"client_port\":{},\"{date_key}\":\"", client.port());
    clock.date(out, date);
    out.push_str("\",\"frontend_name\":");
    json_str(out, frontend);
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl RequestLine {
    fn write(&self, out: &mut String) {
        self.write_cut(out, usize::MAX);
    }

    /// With the target cut to at most `keep` bytes.
    fn write_cut(&self, out: &mut String, keep: usize) {
        let version = match self.version {
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2.0",
            _ => "HTTP/1.1",
        };
        encoded(out, self.method.as_str());
        out.push(' ');
        let mut end = keep.min(self.target.len());
        while !self.target.is_char_boundary(end) {
            end -= 1;
        }
        encoded(out, &self.target[..end]);
        out.push(' ');
        out.push_str(version);
    }
}

impl HttpRecord {
    pub(super) fn write(&self, out: &mut String, clock: &mut Clock) {
        match self.format {
            LineFormat::Httplog => self.httplog(out, clock),
            LineFormat::Tcplog => self.tcplog(out, clock),
            LineFormat::Json => self.json(out, clock),
        }
    }

    fn server(&self) -> &str {
        self.server.as_deref().unwrap_or("<NOSRV>")
    }

    fn status(&self) -> i32 {
        self.status.map_or(-1, i32::from)
    }

    fn retries(&self) -> String {
        if self.redispatched {
            format!("+{}", self.retries)
        } else {
            self.retries.to_string()
        }
    }

    /// Client, date, frontend and backend/server: the head of both of
    /// HAProxy's formats.
    fn head(&self, out: &mut String, clock: &mut Clock) {
        let _ = write!(out, "{}:{} [", ip(&self.client), self.client.port());
        clock.date(out, self.date);
        let tilde = if self.tls { "~" } else { "" };
        let _ = write!(out, "] {}{tilde} {}/{} ", self.frontend, self.backend, self.server());
    }

    fn counters(&self, out: &mut String) {
        let [ac, fc, bc, sc] = self.conns;
        let [sq, bq] = self.queue;
        let _ = write!(out, "{ac}/{fc}/{bc}/{sc}/{} {sq}/{bq}", self.retries());
    }

    /// `%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %CC %CS %tsc
    /// %ac/%fc/%bc/%sc/%rc %sq/%bq %{+Q}r`
    fn httplog(&self, out: &mut String, clock: &mut Clock) {
        self.head(out, clock);
        let [tr, tw, tc, tres, ta] = self.timers;
        let _ = write!(out, "{tr}/{tw}/{tc}/{tres}/{ta} {} {} ", self.status(), self.bytes);
        // Escaped as the request line: a space would shift the fields.
        for c in &self.cookies {
            encoded(out, c.as_deref().unwrap_or("-"));
            out.push(' ');
        }
        let _ = write!(out, "{} ", String::from_utf8_lossy(&self.term));
        self.counters(out);
        out.push_str(" \"");
        match &self.request {
            Some(r) => r.write(out),
            None => out.push_str("<BADREQ>"),
        }
        out.push('"');
    }

    /// `%ci:%cp [%t] %ft %b/%s %Tw/%Tc/%Tt %B %ts %ac/%fc/%bc/%sc/%rc %sq/%bq`
    fn tcplog(&self, out: &mut String, clock: &mut Clock) {
        self.head(out, clock);
        let [_, tw, tc, _, ta] = self.timers;
        let _ = write!(
            out,
            "{tw}/{tc}/{ta} {} {} ",
            self.bytes,
            String::from_utf8_lossy(&self.term[..2])
        );
        self.counters(out);
    }

    /// A JSON line within `max` bytes (a syslog line's room): what is cut
    /// is the request's target, inside its string, so that the line stays
    /// valid JSON.
    pub(super) fn json_within(&self, out: &mut String, clock: &mut Clock, max: usize) {
        let start = out.len();
        let mut keep = self.request.as_ref().map_or(0, |r| r.target.len());
        loop {
            out.truncate(start);
            self.json_cut(out, clock, keep);
            let len = out.len() - start;
            if len <= max || keep == 0 {
                return;
            }
            // Each byte of the target takes at least one in the line.
            keep = keep.saturating_sub(len - max);
        }
    }

    fn json(&self, out: &mut String, clock: &mut Clock) {
        self.json_cut(out, clock, usize::MAX);
    }

    fn json_cut(&self, out: &mut String, clock: &mut Clock, keep: usize) {
        let frontend = format!("{}{}", self.frontend, if self.tls { "~" } else { "" });
        json_head(out, clock, &self.client, "request_date", self.date, &frontend);
        out.push_str(",\"backend_name\":");
        json_str(out, &self.backend);
        out.push_str(",\"server_name\":");
        json_str(out, self.server());
        let [tr, tw, tc, tres, ta] = self.timers;
        let _ = write!(
            out,
            ",\"TR\":{tr},\"Tw\":{tw},\"Tc\":{tc},\"Tr\":{tres},\"Ta\":{ta},\"status_code\":{},\"bytes_read\":{}",
            self.status(),
            self.bytes
        );
        for (name, c) in ["captured_request_cookie", "captured_response_cookie"]
            .iter()
            .zip(&self.cookies)
        {
            let _ = write!(out, ",\"{name}\":");
            json_str(out, c.as_deref().unwrap_or("-"));
        }
        out.push_str(",\"termination_state\":");
        json_str(out, &String::from_utf8_lossy(&self.term));
        let [ac, fc, bc, sc] = self.conns;
        let [sq, bq] = self.queue;
        let _ = write!(
            out,
            ",\"actconn\":{ac},\"feconn\":{fc},\"beconn\":{bc},\"srv_conn\":{sc},\"retries\":{},\"redispatched\":{},\"srv_queue\":{sq},\"backend_queue\":{bq},\"http_request\":",
            self.retries, self.redispatched
        );
        let mut line = String::new();
        match &self.request {
            Some(r) => r.write_cut(&mut line, keep),
            None => line.push_str("<BADREQ>"),
        }
        json_str(out, &line);
        out.push('}');
    }
}

/// The client address as HAProxy writes it (IPv4-mapped IPv6 as IPv4).
fn ip(a: &SocketAddr) -> String {
    match a.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or_else(|| v6.to_string(), |v4| v4.to_string()),
        v4 => v4.to_string(),
    }
}

impl FlowRecord {
    /// tcplog as HAProxy's `logasap` writes it at a connection's start
    /// (`+`: the final figures are larger): no queue, no connect time
    /// known, `--` forwarded, `SC` no backend, `RC` no source port.
    pub(super) fn write(&self, out: &mut String, clock: &mut Clock) {
        let backend = self.backend.as_deref().unwrap_or("<NOSRV>");
        let term = match self.outcome {
            FlowOutcome::Forwarded => "--",
            FlowOutcome::NoBackend => "SC",
            FlowOutcome::NoPort => "RC",
        };
        if self.format == LineFormat::Json {
            json_head(out, clock, &self.client, "accept_date", self.date, &self.service);
            out.push_str(",\"backend_name\":");
            json_str(out, &self.service);
            out.push_str(",\"server_name\":");
            json_str(out, backend);
            out.push_str(",\"termination_state\":");
            json_str(out, term);
            out.push('}');
            return;
        }
        let _ = write!(out, "{}:{} [", ip(&self.client), self.client.port());
        clock.date(out, self.date);
        let _ = write!(
            out,
            "] {svc} {svc}/{backend} 0/-1/+0 +0 {term} 0/0/0/0/0 0/0",
            svc = self.service
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> HttpRecord {
        HttpRecord {
            format: LineFormat::Httplog,
            client: "198.18.0.9:40000".parse().unwrap(),
            date: UNIX_EPOCH + std::time::Duration::from_millis(1_764_576_928_801),
            frontend: "web".into(),
            tls: false,
            backend: "web".into(),
            server: Some("s1".into()),
            timers: [0, 0, 1, 5, 7],
            status: Some(200),
            bytes: 512,
            cookies: [None, Some("SRV=s1".into())],
            term: *b"--NI",
            conns: [3, 2, 1, 1],
            retries: 0,
            redispatched: false,
            queue: [0, 0],
            request: Some(RequestLine::new(
                &Method::GET,
                &"/a?x=1".parse().unwrap(),
                Version::HTTP_11,
            )),
        }
    }

    #[test]
    fn httplog_has_haproxys_fields_in_order() {
        let mut out = String::new();
        let mut clock = Clock::default();
        record().write(&mut out, &mut clock);
        let re = regex::Regex::new(
            r#"^198\.18\.0\.9:40000 \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d\.801\] web web/s1 0/0/1/5/7 200 512 - SRV=s1 --NI 3/2/1/1/0 0/0 "GET /a.* HTTP/1\.1"$"#,
        )
        .unwrap();
        assert!(re.is_match(&out), "{out}");
        assert!(!out.contains("/a\"b"), "a quote in the target is encoded: {out}");
    }

    #[test]
    fn a_bad_request_and_a_redispatch_read_as_haproxy_writes_them() {
        let mut r = record();
        (r.request, r.server, r.redispatched, r.retries) = (None, None, true, 2);
        r.timers = [-1; 5];
        let mut out = String::new();
        r.write(&mut out, &mut Clock::default());
        assert!(
            out.ends_with(" web web/<NOSRV> -1/-1/-1/-1/-1 200 512 - SRV=s1 --NI 3/2/1/1/+2 0/0 \"<BADREQ>\""),
            "{out}"
        );
    }

    #[test]
    fn json_names_the_same_fields() {
        let mut r = record();
        r.format = LineFormat::Json;
        r.tls = true;
        let mut out = String::new();
        r.write(&mut out, &mut Clock::default());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["frontend_name"], "web~");
        assert_eq!(v["server_name"], "s1");
        assert_eq!(v["Ta"], 7);
        assert_eq!(v["termination_state"], "--NI");
        assert_eq!(v["captured_request_cookie"], "-");
        assert_eq!(v["http_request"].as_str().unwrap().split(' ').next(), Some("GET"));
    }

    #[test]
    fn a_long_json_line_is_cut_inside_its_request_and_stays_json() {
        let mut r = record();
        r.format = LineFormat::Json;
        let target = format!("/long?{}", "a%22b".repeat(300));
        r.request = Some(RequestLine::new(
            &Method::GET,
            &target.parse().unwrap(),
            Version::HTTP_11,
        ));
        r.status = None;
        let mut whole = String::new();
        r.write(&mut whole, &mut Clock::default());
        assert!(whole.len() > 1000);
        for max in [1000, 700, 500] {
            let mut out = String::new();
            r.json_within(&mut out, &mut Clock::default(), max);
            assert!(out.len() <= max && out.len() > max - 10, "{} for {max}", out.len());
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert!(v["http_request"].as_str().unwrap().starts_with("GET /long?a"), "{out}");
            assert_eq!(v["status_code"], -1, "no answer: -1, as HAProxy");
        }
    }

    #[test]
    fn refused_connections_in_both_forms() {
        let mut r = ConnRecord {
            format: LineFormat::Httplog,
            client: "198.18.0.9:40000".parse().unwrap(),
            date: UNIX_EPOCH,
            frontend: "web".into(),
            tls: true,
            what: "SSL handshake failure",
        };
        let mut out = String::new();
        r.write(&mut out, &mut Clock::default());
        assert!(out.starts_with("198.18.0.9:40000 ["), "{out}");
        assert!(out.ends_with("] web~/1: SSL handshake failure"), "{out}");
        r.format = LineFormat::Json;
        out.clear();
        r.write(&mut out, &mut Clock::default());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["client_ip"], "198.18.0.9");
        assert_eq!(v["client_port"], 40000);
        assert_eq!(v["frontend_name"], "web~");
        assert_eq!(v["message"], "SSL handshake failure");
        assert!(v["accept_date"].as_str().unwrap().ends_with(":00.000"), "{v}");
    }

    #[test]
    fn flow_lines_in_json() {
        let r = FlowRecord {
            format: LineFormat::Json,
            client: "198.18.0.9:40000".parse().unwrap(),
            date: UNIX_EPOCH,
            service: "web".into(),
            backend: None,
            outcome: FlowOutcome::NoBackend,
        };
        let mut out = String::new();
        r.write(&mut out, &mut Clock::default());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["client_port"], 40000);
        assert!(v["accept_date"].is_string());
        assert_eq!(v["frontend_name"], "web");
        assert_eq!(v["server_name"], "<NOSRV>");
        assert_eq!(v["termination_state"], "SC");
    }

    #[test]
    fn request_lines_encode_what_haproxy_encodes() {
        let mut out = String::new();
        encoded(&mut out, "/a\"b#c\x01d");
        assert_eq!(out, "/a#22b#23c#01d");
    }

    #[test]
    fn syslog_timestamps() {
        let mut c = Clock::default();
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_764_576_928);
        let s = c.rfc3164(t);
        assert!(
            regex::Regex::new(r"^[A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d$")
                .unwrap()
                .is_match(&s),
            "{s}"
        );
        let s = c.rfc5424(t);
        assert!(
            regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000[+-]\d\d:\d\d$")
                .unwrap()
                .is_match(&s),
            "{s}"
        );
    }
}
