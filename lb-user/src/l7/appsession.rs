//! Application-session persistence (HAProxy's `appsession`): the table of
//! session ids the application handed out and the server that owns each,
//! and where a request carries its id (Cookie header, `;jsessionid=` path
//! parameter or query string).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::config::{AppSessionCfg, UrlMode};

/// One learned session, as the admin API shows it and peers exchange it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryView {
    pub id: String,
    pub server: String,
    /// Milliseconds since the session was last seen.
    pub idle_ms: u64,
}

struct Entry {
    server: String,
    last: Instant,
}

/// The session table of one service. Kept across reloads (the proxy hands
/// the same table to the new service when its name stays).
pub struct Table {
    inner: Mutex<Inner>,
}

struct Inner {
    len: usize,
    timeout: Duration,
    map: HashMap<String, Entry>,
    /// Expired entries are dropped while learning, at most this often
    /// (a quarter of the timeout), so an idle table costs nothing.
    last_sweep: Instant,
}

impl Inner {
    fn sweep(&mut self, now: Instant) {
        let timeout = self.timeout;
        self.map.retain(|_, e| now.saturating_duration_since(e.last) <= timeout);
        self.last_sweep = now;
    }
}

/// The first `len` characters of an id: what the table remembers.
fn key(id: &str, len: usize) -> &str {
    match id.char_indices().nth(len) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

impl Table {
    pub fn new(cfg: &AppSessionCfg) -> Table {
        Table {
            inner: Mutex::new(Inner {
                len: cfg.len,
                timeout: cfg.timeout,
                map: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("appsession lock")
    }

    /// A reload may change the length and the timeout; entries stay.
    pub fn reconfigure(&self, cfg: &AppSessionCfg) {
        let mut t = self.lock();
        t.len = cfg.len;
        t.timeout = cfg.timeout;
    }

    /// The server that owns `id`, refreshing its idle time; None when
    /// unknown or idle too long.
    pub fn lookup(&self, id: &str, now: Instant) -> Option<String> {
        let mut t = self.lock();
        let (len, timeout) = (t.len, t.timeout);
        let k = key(id, len);
        let e = t.map.get_mut(k)?;
        if now.saturating_duration_since(e.last) > timeout {
            t.map.remove(k);
            return None;
        }
        e.last = now;
        Some(e.server.clone())
    }

    /// Remembers `id` → `server` (the last writer wins).
    pub fn learn(&self, id: &str, server: &str, now: Instant) {
        self.learn_aged(id, server, now, Duration::ZERO);
    }

    /// As [`Table::learn`], for an entry already `idle` old (from a peer);
    /// an entry used more recently stays.
    pub fn learn_aged(&self, id: &str, server: &str, now: Instant, idle: Duration) {
        if id.is_empty() {
            return;
        }
        let mut t = self.lock();
        if now.saturating_duration_since(t.last_sweep) > t.timeout / 4 {
            t.sweep(now);
        }
        let k = key(id, t.len).to_string();
        let last = now.checked_sub(idle).unwrap_or(now);
        // The most recently used entry wins (a peer's older news loses).
        if t.map.get(&k).is_some_and(|e| e.last > last) {
            return;
        }
        t.map.insert(
            k,
            Entry {
                server: server.to_string(),
                last,
            },
        );
    }

    /// Forgets one id; true if it was known.
    pub fn forget(&self, id: &str) -> bool {
        let mut t = self.lock();
        let k = key(id, t.len).to_string();
        t.map.remove(&k).is_some()
    }

    /// Forgets everything; returns how many entries went.
    pub fn clear(&self) -> usize {
        let mut t = self.lock();
        let n = t.map.len();
        t.map.clear();
        n
    }

    /// The live entries at `now` (what [`Table::entries`] would list).
    pub fn live(&self, now: Instant) -> usize {
        let mut t = self.lock();
        t.sweep(now);
        t.map.len()
    }

    /// The live entries, sorted by id.
    pub fn entries(&self, now: Instant) -> Vec<EntryView> {
        let t = self.lock();
        let mut v: Vec<EntryView> = t
            .map
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last) <= t.timeout)
            .map(|(id, e)| EntryView {
                id: id.clone(),
                server: e.server.clone(),
                idle_ms: now.saturating_duration_since(e.last).as_millis() as u64,
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

/// The session id in a request URL (`path_and_query`), per `mode`.
/// Path parameters: `/x;jsessionid=ID?q` (before `?`, name in any case);
/// query string: `/x?a=1&jsessionid=ID`.
pub fn from_url<'a>(pq: &'a str, name: &str, mode: UrlMode) -> Option<&'a str> {
    let (path, query) = pq.split_once('?').unwrap_or((pq, ""));
    let (area, seps): (&str, &[char]) = match mode {
        UrlMode::PathParameters => (path, &[';']),
        UrlMode::QueryString => (query, &['&', ';']),
    };
    let mut parts = area.split(seps);
    if mode == UrlMode::PathParameters {
        parts.next(); // the path itself
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        // A path parameter ends where the next segment starts.
        let v = v.split('/').next().unwrap_or("");
        (k.eq_ignore_ascii_case(name) && !v.is_empty()).then_some(v)
    })
}

/// The route suffix of a session id: what follows its last `.`
/// (`ABC123.tomcat1`, memcached-session-manager's `ABC-n1.tomcat1`).
pub fn route_of(id: &str) -> Option<&str> {
    id.rsplit_once('.').map(|(_, r)| r).filter(|r| !r.is_empty())
}

/// The value the server gives cookie `name` in its `Set-Cookie` headers.
pub fn from_set_cookie<'a>(values: impl IntoIterator<Item = &'a str>, name: &str) -> Option<&'a str> {
    values.into_iter().find_map(|v| {
        let (k, rest) = v.split_once('=')?;
        let val = rest.split(';').next().unwrap_or("").trim();
        (k.trim() == name && !val.is_empty()).then_some(val)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(len: usize, timeout: Duration) -> AppSessionCfg {
        AppSessionCfg {
            cookie: "JSESSIONID".into(),
            len,
            timeout,
            request_learn: false,
            url_mode: UrlMode::PathParameters,
            route_suffix: false,
        }
    }

    #[test]
    fn url_forms() {
        let pp = UrlMode::PathParameters;
        assert_eq!(from_url("/x;jsessionid=ABC?q=1", "JSESSIONID", pp), Some("ABC"));
        assert_eq!(from_url("/x;JSessionId=ABC", "JSESSIONID", pp), Some("ABC"));
        assert_eq!(from_url("/a;v=1;jsessionid=ABC/b", "JSESSIONID", pp), Some("ABC"));
        assert_eq!(
            from_url("/x?jsessionid=ABC", "JSESSIONID", pp),
            None,
            "query in path mode"
        );
        assert_eq!(from_url("/x;jsessionid=", "JSESSIONID", pp), None);
        let qs = UrlMode::QueryString;
        assert_eq!(from_url("/x?a=1&jsessionid=ABC&b=2", "JSESSIONID", qs), Some("ABC"));
        assert_eq!(from_url("/x;jsessionid=ABC", "JSESSIONID", qs), None);
        assert_eq!(from_url("/x?ajsessionid=ABC", "JSESSIONID", qs), None);
    }

    #[test]
    fn route_suffixes() {
        assert_eq!(route_of("ABC123.tomcat1"), Some("tomcat1"));
        assert_eq!(route_of("ABC-n1.t.s2"), Some("s2"));
        assert_eq!(route_of("ABC123"), None);
        assert_eq!(route_of("ABC."), None);
    }

    #[test]
    fn set_cookie_value() {
        let v = ["a=1; Path=/", "JSESSIONID=XYZ.t1; Path=/; HttpOnly"];
        assert_eq!(from_set_cookie(v, "JSESSIONID"), Some("XYZ.t1"));
        assert_eq!(from_set_cookie(["JSESSIONID=; Max-Age=0"], "JSESSIONID"), None);
    }

    #[test]
    fn learn_lookup_truncate_expire() {
        let t = Table::new(&cfg(4, Duration::from_secs(10)));
        let now = Instant::now();
        t.learn("ABCDEFG", "s1", now);
        assert_eq!(t.lookup("ABCDzzz", now).as_deref(), Some("s1"), "first len chars");
        assert_eq!(t.lookup("XBCD", now), None);
        // A hit refreshes the idle time.
        assert!(t.lookup("ABCD", now + Duration::from_secs(8)).is_some());
        assert!(t.lookup("ABCD", now + Duration::from_secs(16)).is_some());
        assert_eq!(t.lookup("ABCD", now + Duration::from_secs(27)), None, "idle too long");
        assert_eq!(t.live(now + Duration::from_secs(27)), 0);
        t.learn("A", "s1", now);
        t.learn("B", "s2", now + Duration::from_secs(5));
        assert_eq!(t.live(now + Duration::from_secs(5)), 2);
        assert_eq!(t.live(now + Duration::from_secs(12)), 1, "expired entries do not count");
        let e = t.entries(now + Duration::from_secs(12));
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].id.as_str(), e[0].server.as_str(), e[0].idle_ms),
            ("B", "s2", 7000)
        );
        // The last writer wins.
        t.learn("B", "s3", now + Duration::from_secs(12));
        assert_eq!(t.lookup("B", now + Duration::from_secs(12)).as_deref(), Some("s3"));
        // Older news (a peer's entry idle for 5 s) loses against a fresh one.
        t.learn_aged("B", "s1", now + Duration::from_secs(12), Duration::from_secs(5));
        assert_eq!(t.lookup("B", now + Duration::from_secs(12)).as_deref(), Some("s3"));
        assert!(t.forget("B"));
        assert_eq!(t.clear(), 0);
    }
}
