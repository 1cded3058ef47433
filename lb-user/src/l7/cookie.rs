//! Cookie persistence, HAProxy's way (docs/operations.md): which server
//! a request's cookie names, what the server sees of it, and what the
//! response carries back. Pure functions over header values.

use std::time::Duration;

use crate::config::{CookieCfg, CookieMode};

/// HAProxy's base64 alphabet for the 30-bit dates in cookies.
const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A date in a cookie: unix seconds / 4 (HAProxy's resolution), 5 chars.
pub fn encode_date(unix_secs: u64) -> String {
    let v = ((unix_secs >> 2) & 0x3fff_ffff) as u32;
    (0..5)
        .rev()
        .map(|i| B64[((v >> (6 * i)) & 63) as usize] as char)
        .collect()
}

pub fn decode_date(s: &str) -> Option<u64> {
    if s.len() != 5 {
        return None;
    }
    let mut v: u64 = 0;
    for c in s.bytes() {
        v = (v << 6) | B64.iter().position(|b| *b == c)? as u64;
    }
    Some(v << 2)
}

/// How the request's cookie was judged (HAProxy's log flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// No persistence cookie.
    None,
    /// Names no server (or is empty).
    Invalid,
    /// Names a server that cannot take it (down, maintenance).
    Down,
    /// Too long unused (maxidle) or too old (maxlife).
    Expired,
    /// Valid: the request goes to that server.
    Valid,
}

impl Judgement {
    /// HAProxy's request cookie flag letter.
    pub fn flag(self) -> char {
        match self {
            Judgement::None => 'N',
            Judgement::Invalid => 'I',
            Judgement::Down => 'D',
            Judgement::Expired => 'E',
            Judgement::Valid => 'V',
        }
    }
}

/// A server as cookie persistence sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub cookie: Option<&'a str>,
    /// May take persistent traffic (up; drained counts, maintenance not).
    pub usable: bool,
}

/// The persistence cookie of a request, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub server: String,
    /// Last and first use (unix seconds), when dates ride in the cookie.
    pub last: Option<u64>,
    pub first: Option<u64>,
}

/// The value of cookie `name` among the request's `Cookie` headers.
pub fn find<'a>(headers: impl IntoIterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    headers
        .into_iter()
        .flat_map(|h| h.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim())
}

/// Splits a cookie value: `SRV`, `SRV|last|first` (dates), or in prefix
/// mode `SRV~APP` (the server part only; see [`unprefix`]).
pub fn parse(cfg: &CookieCfg, value: &str) -> Parsed {
    let value = match cfg.mode {
        CookieMode::Prefix => value.split_once('~').map_or("", |(s, _)| s),
        _ => value,
    };
    let mut parts = value.split('|');
    let server = parts.next().unwrap_or("").to_string();
    let last = parts.next().and_then(decode_date);
    let first = parts.next().and_then(decode_date);
    Parsed { server, last, first }
}

/// Judges a request's cookie: the first server whose value matches and that
/// is usable; expired by maxidle/maxlife; dates more than a day in the future
/// are ignored. Returns the judgement and the chosen server's index.
pub fn judge<'a>(
    cfg: &CookieCfg,
    p: &Parsed,
    servers: impl IntoIterator<Item = Candidate<'a>>,
    now: u64,
) -> (Judgement, Option<usize>) {
    if p.server.is_empty() {
        return (Judgement::Invalid, None);
    }
    let future = |d: Option<u64>| d.filter(|d| *d <= now + 86_400);
    let too_old = |d: Option<u64>, max: Option<Duration>| match (future(d), max) {
        (Some(d), Some(max)) => now.saturating_sub(d) > max.as_secs(),
        _ => false,
    };
    if too_old(p.last, cfg.maxidle) || too_old(p.first, cfg.maxlife) {
        return (Judgement::Expired, None);
    }
    let mut named = false;
    for (i, s) in servers.into_iter().enumerate() {
        if s.cookie == Some(p.server.as_str()) {
            named = true;
            if s.usable {
                return (Judgement::Valid, Some(i));
            }
        }
    }
    if named {
        (Judgement::Down, None)
    } else {
        (Judgement::Invalid, None)
    }
}

/// A `Cookie` header without cookie `name` (indirect mode); `None` when
/// nothing is left, so the header can go.
pub fn strip(header: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|kv| !kv.is_empty() && kv.split_once('=').map_or(kv.trim(), |(k, _)| k.trim()) != name)
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// A `Cookie` header with `name=SRV~APP` turned into `name=APP` (prefix mode).
pub fn unprefix(header: &str, name: &str) -> String {
    header
        .split(';')
        .map(str::trim)
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if k.trim() == name => match v.split_once('~') {
                Some((_, app)) => format!("{name}={app}"),
                None => kv.to_string(),
            },
            _ => kv.to_string(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The `Set-Cookie` value xlb inserts for a server (`NAME=VALUE[|last[|first]]`
/// and attributes); a server without a cookie value clears the cookie.
/// Made in one string: it is made for every response that inserts it.
pub fn insert(cfg: &CookieCfg, server_cookie: Option<&str>, now: u64, first: Option<u64>) -> String {
    use std::fmt::Write as _;
    let Some(v) = server_cookie else {
        return format!("{}=; Expires=Thu, 01-Jan-1970 00:00:01 GMT; path=/", cfg.name);
    };
    let mut out = String::with_capacity(cfg.name.len() + v.len() + 64);
    out.push_str(&cfg.name);
    out.push('=');
    out.push_str(v);
    if cfg.maxidle.is_some() || cfg.maxlife.is_some() {
        let _ = write!(out, "|{}", encode_date(now));
        if cfg.maxlife.is_some() {
            let _ = write!(out, "|{}", encode_date(first.unwrap_or(now)));
        }
    }
    out.push_str("; path=/");
    if let Some(d) = &cfg.domain {
        out.push_str("; domain=");
        out.push_str(d);
    }
    if cfg.httponly {
        out.push_str("; HttpOnly");
    }
    if cfg.secure {
        out.push_str("; Secure");
    }
    out
}

/// Whether a valid cookie's dates need refreshing (they move in 4 s steps).
pub fn needs_refresh(cfg: &CookieCfg, p: &Parsed, now: u64) -> bool {
    cfg.maxidle.is_some() && p.last.is_none_or(|l| (now >> 2) != (l >> 2))
}

/// The server's own `Set-Cookie` of our cookie rewritten: rewrite mode puts
/// the server's value in, prefix mode puts `SRV~` in front. Other cookies:
/// `None` (left alone).
pub fn rewrite_set_cookie(cfg: &CookieCfg, set_cookie: &str, server_cookie: &str) -> Option<String> {
    let (kv, rest) = set_cookie.split_once(';').map_or((set_cookie, ""), |(a, b)| (a, b));
    let (k, v) = kv.split_once('=')?;
    if k.trim() != cfg.name {
        return None;
    }
    let rest = if rest.is_empty() {
        String::new()
    } else {
        format!(";{rest}")
    };
    match cfg.mode {
        CookieMode::Rewrite => Some(format!("{}={server_cookie}{rest}", cfg.name)),
        CookieMode::Prefix => Some(format!("{}={server_cookie}~{}{rest}", cfg.name, v.trim())),
        CookieMode::Insert => None,
    }
}

/// Is this `Set-Cookie` for cookie `name`?
pub fn is_named(set_cookie: &str, name: &str) -> bool {
    set_cookie.split_once('=').is_some_and(|(k, _)| k.trim() == name)
}

/// HAProxy's test of a cacheable response (for `nocache`): a safe method, a
/// final status, no `Pragma: no-cache`, no `Cache-Control` private /
/// no-cache / no-store / s-maxage=0 / max-age=0 alone, and freshness
/// information or a validator.
pub fn cacheable(
    method: &str,
    status: u16,
    cache_control: &[&str],
    pragma: &[&str],
    has_expires: bool,
    has_validator: bool,
) -> bool {
    if !matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE") || status < 200 {
        return false;
    }
    if pragma.iter().any(|p| p.to_ascii_lowercase().contains("no-cache")) {
        return false;
    }
    let directives: Vec<String> = cache_control
        .iter()
        .flat_map(|h| h.split(','))
        .map(|d| d.trim().to_ascii_lowercase().replace(' ', ""))
        .collect();
    let forbids = directives.iter().any(|d| {
        matches!(d.as_str(), "private" | "no-store" | "s-maxage=0")
            || d.starts_with("no-cache")
            || d.starts_with("private=")
    });
    let max_age_zero_alone =
        directives.iter().any(|d| d == "max-age=0") && !directives.iter().any(|d| d.starts_with("s-maxage="));
    if forbids || max_age_zero_alone {
        return false;
    }
    let fresh = directives
        .iter()
        .any(|d| d.starts_with("max-age=") || d.starts_with("s-maxage="))
        || has_expires;
    fresh || has_validator
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(mode: CookieMode) -> CookieCfg {
        CookieCfg {
            name: "SERVERID".into(),
            mode,
            indirect: true,
            nocache: true,
            httponly: false,
            secure: false,
            postonly: false,
            preserve: false,
            maxidle: None,
            maxlife: None,
            domain: None,
        }
    }

    fn servers<'a>(spec: &'a [(Option<&'a str>, bool)]) -> Vec<Candidate<'a>> {
        spec.iter().map(|(c, u)| Candidate { cookie: *c, usable: *u }).collect()
    }

    #[test]
    fn dates_round_trip_in_haproxy_format() {
        let t = 1_763_700_000;
        let e = encode_date(t);
        assert_eq!(e.len(), 5);
        assert_eq!(decode_date(&e), Some(t & !3));
        assert_eq!(encode_date(0), "AAAAA");
        assert_eq!(encode_date(4 * 63), "AAAA/");
        assert_eq!(decode_date("AAAA?"), None);
    }

    #[test]
    fn first_usable_server_with_the_value_wins() {
        let c = cfg(CookieMode::Insert);
        // A server and its backup share "s1"; the first is down.
        let s = servers(&[(Some("s1"), false), (Some("s1"), true), (Some("s2"), true)]);
        let p = parse(&c, "s1");
        assert_eq!(judge(&c, &p, s.iter().copied(), 0), (Judgement::Valid, Some(1)));
        assert_eq!(
            judge(&c, &parse(&c, "s2"), s.iter().copied(), 0),
            (Judgement::Valid, Some(2))
        );
        assert_eq!(
            judge(&c, &parse(&c, "nope"), s.iter().copied(), 0),
            (Judgement::Invalid, None)
        );
        assert_eq!(
            judge(&c, &parse(&c, ""), s.iter().copied(), 0),
            (Judgement::Invalid, None)
        );
        let down = servers(&[(Some("s1"), false)]);
        assert_eq!(judge(&c, &p, down.iter().copied(), 0), (Judgement::Down, None));
    }

    #[test]
    fn maxidle_and_maxlife_expire_and_future_dates_are_ignored() {
        let mut c = cfg(CookieMode::Insert);
        c.maxidle = Some(Duration::from_secs(60));
        c.maxlife = Some(Duration::from_secs(3600));
        let s = servers(&[(Some("s1"), true)]);
        let now = 1_000_000;
        let v = |last: u64, first: u64| format!("s1|{}|{}", encode_date(last), encode_date(first));
        assert_eq!(
            judge(&c, &parse(&c, &v(now - 30, now - 100)), s.iter().copied(), now).0,
            Judgement::Valid
        );
        assert_eq!(
            judge(&c, &parse(&c, &v(now - 120, now - 100)), s.iter().copied(), now).0,
            Judgement::Expired
        );
        assert_eq!(
            judge(&c, &parse(&c, &v(now - 10, now - 7200)), s.iter().copied(), now).0,
            Judgement::Expired
        );
        // A date a week ahead is ignored, not trusted.
        assert_eq!(
            judge(&c, &parse(&c, &v(now + 7 * 86400, now)), s.iter().copied(), now).0,
            Judgement::Valid
        );
        assert!(needs_refresh(&c, &parse(&c, &v(now - 30, now)), now));
        assert!(!needs_refresh(&c, &parse(&c, &v(now, now)), now));
    }

    #[test]
    fn indirect_strips_only_our_cookie() {
        assert_eq!(strip("a=1; SERVERID=s1; b=2", "SERVERID").as_deref(), Some("a=1; b=2"));
        assert_eq!(strip("SERVERID=s1", "SERVERID"), None);
        assert_eq!(strip("SERVERIDX=1", "SERVERID").as_deref(), Some("SERVERIDX=1"));
    }

    #[test]
    fn find_reads_across_headers() {
        assert_eq!(find(["a=1", "b=2; SERVERID=s2 "], "SERVERID"), Some("s2"));
        assert_eq!(find(["SERVERIDX=1"], "SERVERID"), None);
    }

    #[test]
    fn prefix_mode_splits_and_restores_the_application_value() {
        let c = cfg(CookieMode::Prefix);
        assert_eq!(parse(&c, "s1~ABC").server, "s1");
        assert_eq!(parse(&c, "ABC").server, "");
        assert_eq!(unprefix("x=1; JSESSIONID=s1~ABC", "JSESSIONID"), "x=1; JSESSIONID=ABC");
        let mut c = c;
        c.name = "JSESSIONID".into();
        assert_eq!(
            rewrite_set_cookie(&c, "JSESSIONID=ABC; Path=/app", "s1").as_deref(),
            Some("JSESSIONID=s1~ABC; Path=/app")
        );
        assert_eq!(rewrite_set_cookie(&c, "OTHER=1", "s1"), None);
    }

    #[test]
    fn rewrite_mode_replaces_the_value() {
        let c = cfg(CookieMode::Rewrite);
        assert_eq!(
            rewrite_set_cookie(&c, "SERVERID=whatever; Path=/", "s2").as_deref(),
            Some("SERVERID=s2; Path=/")
        );
    }

    #[test]
    fn inserted_cookie_format() {
        let mut c = cfg(CookieMode::Insert);
        assert_eq!(insert(&c, Some("s1"), 0, None), "SERVERID=s1; path=/");
        c.domain = Some("example.com".into());
        c.httponly = true;
        c.secure = true;
        assert_eq!(
            insert(&c, Some("s1"), 0, None),
            "SERVERID=s1; path=/; domain=example.com; HttpOnly; Secure"
        );
        assert_eq!(
            insert(&c, None, 0, None),
            "SERVERID=; Expires=Thu, 01-Jan-1970 00:00:01 GMT; path=/"
        );
        c.maxidle = Some(Duration::from_secs(60));
        assert!(insert(&c, Some("s1"), 4000, None).starts_with(&format!("SERVERID=s1|{};", encode_date(4000))));
        c.maxlife = Some(Duration::from_secs(60));
        assert!(insert(&c, Some("s1"), 4000, Some(400)).starts_with(&format!(
            "SERVERID=s1|{}|{};",
            encode_date(4000),
            encode_date(400)
        )));
    }

    #[test]
    fn cacheability_follows_haproxy() {
        assert!(cacheable("GET", 200, &["max-age=60"], &[], false, false));
        assert!(cacheable("GET", 200, &[], &[], false, true), "a validator is enough");
        assert!(cacheable("GET", 200, &[], &[], true, false), "Expires is freshness");
        assert!(
            !cacheable("GET", 200, &[], &[], false, false),
            "no freshness, no validator"
        );
        assert!(!cacheable("POST", 200, &["max-age=60"], &[], false, false));
        assert!(!cacheable("GET", 200, &["private, max-age=60"], &[], false, false));
        assert!(!cacheable("GET", 200, &["no-cache"], &[], false, true));
        assert!(!cacheable("GET", 200, &["max-age=0"], &[], false, true));
        assert!(cacheable("GET", 200, &["max-age=0, s-maxage=60"], &[], false, false));
        assert!(!cacheable("GET", 200, &["max-age=60"], &["no-cache"], false, false));
    }
}
