//! Health checks (HAProxy semantics): every `interval` each backend is
//! checked with a TCP connect or an HTTP request whose status must match
//! `expect`; `fall` consecutive failures mark it down, `rise` consecutive
//! successes up again. Backends start up. State changes are sent to the
//! daemon, which logs them and rebuilds the tables.

use std::{net::SocketAddr, time::Duration};

use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
    task::JoinHandle,
    time::{interval, timeout, MissedTickBehavior},
};
use tokio_rustls::TlsConnector;

use crate::{
    config::{Backend, Config, Health, HealthKind, HttpCheck, ProxyVersion},
    l7::proxy_protocol,
    tls,
};

/// A backend changed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub service: String,
    pub backend: String,
    pub up: bool,
    /// Why, from the last check (e.g. "connection refused", "status 503").
    pub reason: String,
}

/// Does `status` match an expect list such as "200-399" or "200,204,301-302"?
pub fn status_matches(expect: &str, status: u16) -> bool {
    expect.split(',').map(str::trim).any(|part| match part.split_once('-') {
        Some((lo, hi)) => {
            matches!((lo.trim().parse::<u16>(), hi.trim().parse::<u16>()), (Ok(l), Ok(h)) if (l..=h).contains(&status))
        }
        None => part.parse::<u16>() == Ok(status),
    })
}

/// A response read for an http check is cut here.
const MAX_ANSWER: usize = 64 * 1024;

/// How checks reach a backend with `tls`: over TLS, as its requests do.
#[derive(Clone)]
pub struct Secure {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl Secure {
    fn new(b: &Backend) -> Option<Result<Secure, String>> {
        let t = b.tls.as_ref()?;
        Some(
            tls::client_config(&t.verify, t.sni.is_some())
                .map(|cfg| Secure {
                    connector: TlsConnector::from(cfg),
                    name: tls::server_name(t.sni.as_deref(), b.address.ip()),
                })
                .map_err(|e| e.to_string()),
        )
    }
}

/// One check; `Err` says why it failed. A backend that wants the PROXY
/// protocol gets a header that names no client (v1 `UNKNOWN`, v2
/// `LOCAL`), as HAProxy's checks send.
pub async fn check_once(
    addr: SocketAddr,
    h: &Health,
    secure: Option<&Secure>,
    proxy: Option<ProxyVersion>,
) -> Result<(), String> {
    let attempt = async {
        let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        if let Some(v) = proxy {
            tcp.write_all(&proxy_protocol::encode_local(v))
                .await
                .map_err(|e| e.to_string())?;
        }
        match (secure, &h.kind) {
            (None, HealthKind::Http(c)) => http_check(tcp, c, addr).await,
            (None, _) => Ok(()),
            (Some(s), kind) => {
                let t = s
                    .connector
                    .connect(s.name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                match kind {
                    HealthKind::Http(c) => http_check(t, c, addr).await,
                    _ => Ok(()),
                }
            }
        }
    };
    match timeout(h.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", h.timeout)),
    }
}

/// The request of `c`; the status (and with `expect_body`, the body) of
/// the answer checked.
async fn http_check<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    c: &HttpCheck,
    addr: SocketAddr,
) -> Result<(), String> {
    let host = c.host.clone().unwrap_or_else(|| addr.to_string());
    let req = format!(
        "{} {} {}\r\nHost: {host}\r\nUser-Agent: xlb-health\r\nConnection: close\r\n\r\n",
        c.method, c.path, c.version
    );
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    s.flush().await.map_err(|e| e.to_string())?;
    // The status line; for expect_body, the answer up to the end of its
    // body (its length, its last chunk, or the close).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let got = match s.read(&mut chunk).await {
            Ok(n) => n,
            // A TLS peer that closes without close_notify.
            Err(_) if !buf.is_empty() => 0,
            Err(e) => return Err(e.to_string()),
        };
        buf.extend_from_slice(&chunk[..got]);
        let line_done = buf.windows(2).any(|w| w == b"\r\n");
        let enough = match &c.expect_body {
            None => line_done,
            Some(_) => body_complete(&buf),
        };
        if got == 0 || buf.len() >= MAX_ANSWER || enough {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| match buf.is_empty() {
            true => "connection closed before a status line".to_string(),
            false => format!("not an HTTP response: {:?}", text.lines().next().unwrap_or("")),
        })?;
    if !status_matches(&c.expect, status) {
        return Err(format!("status {status} not in {}", c.expect));
    }
    if let Some(want) = &c.expect_body {
        let at = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(buf.len(), |p| p + 4);
        let (head, body) = buf.split_at(at);
        let chunked = String::from_utf8_lossy(head).lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        let body = if chunked { dechunk(body).0 } else { body.to_vec() };
        if !body.windows(want.len()).any(|w| w == want.as_bytes()) {
            return Err(format!("status {status}, but the body does not contain {want:?}"));
        }
    }
    Ok(())
}

/// The answer in `buf` holds its whole body: as long as its
/// Content-Length, or up to its last chunk (without either, only the close
/// ends it).
fn body_complete(buf: &[u8]) -> bool {
    let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let (head, body) = (String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase(), &buf[at + 4..]);
    let field = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    if field("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        return dechunk(body).1;
    }
    field("content-length:")
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| body.len() >= n)
}

/// A chunked body's data (as far as it goes), and whether it is whole: its
/// zero-size chunk and the empty line after its trailers have come.
fn dechunk(mut rest: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&rest[..eol]);
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        let data = &rest[eol + 2..];
        if n == 0 {
            return (
                out,
                data.starts_with(b"\r\n") || data.windows(4).any(|w| w == b"\r\n\r\n"),
            );
        }
        out.extend_from_slice(&data[..n.min(data.len())]);
        let Some(end) = n.checked_add(2).filter(|end| *end <= data.len()) else {
            break;
        };
        rest = &data[end..];
    }
    (out, false)
}

/// The rise/fall state machine of one backend.
#[derive(Debug, Clone)]
pub struct Tracker {
    pub up: bool,
    streak: u32,
}

impl Tracker {
    pub fn new(up: bool) -> Self {
        Self { up, streak: 0 }
    }

    /// Feeds one result; returns true when the state flipped.
    pub fn feed(&mut self, ok: bool, h: &Health) -> bool {
        if ok == self.up {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if self.up { h.fall } else { h.rise };
        if self.streak >= needed {
            self.up = !self.up;
            self.streak = 0;
            return true;
        }
        false
    }
}

/// Starts one checking task per backend of every service with checks; a
/// backend starts in the state `is_up` gives (up for new ones). The tasks
/// stop when the handles are aborted (on reload) or `tx` closes.
pub fn spawn(cfg: &Config, is_up: &dyn Fn(&str, &str) -> bool, tx: mpsc::Sender<Change>) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for s in &cfg.services {
        if s.health.kind == HealthKind::None {
            continue;
        }
        for b in &s.backends {
            let (h, tx, addr) = (s.health.clone(), tx.clone(), b.address);
            let (service, backend) = (s.name.clone(), b.name.clone());
            let mut t = Tracker::new(is_up(&s.name, &b.name));
            let (secure, proxy) = (Secure::new(b), b.send_proxy);
            tasks.push(tokio::spawn(async move {
                let mut tick = interval(h.interval.max(Duration::from_millis(10)));
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let r = match &secure {
                        Some(Err(e)) => Err(format!("TLS set-up: {e}")),
                        Some(Ok(s)) => check_once(addr, &h, Some(s), proxy).await,
                        None => check_once(addr, &h, None, proxy).await,
                    };
                    let reason = match &r {
                        Ok(()) => "check passed".to_string(),
                        Err(e) => e.clone(),
                    };
                    if t.feed(r.is_ok(), &h) {
                        let c = Change {
                            service: service.clone(),
                            backend: backend.clone(),
                            up: t.up,
                            reason,
                        };
                        if tx.send(c).await.is_err() {
                            return;
                        }
                    }
                }
            }));
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(rise: u32, fall: u32) -> Health {
        Health {
            kind: HealthKind::Tcp,
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(200),
            rise,
            fall,
        }
    }

    #[test]
    fn expect_lists_and_ranges() {
        assert!(status_matches("200-399", 302));
        assert!(!status_matches("200-399", 404));
        assert!(status_matches("200,204, 301-302", 204));
        assert!(status_matches("200,204,301-302", 301));
        assert!(!status_matches("200,204", 201));
    }

    #[test]
    fn fall_and_rise_need_consecutive_results() {
        let h = health(2, 3);
        let mut t = Tracker::new(true);
        assert!(!t.feed(false, &h) && !t.feed(false, &h));
        assert!(!t.feed(true, &h), "a success resets the failure streak");
        assert!(!t.feed(false, &h) && !t.feed(false, &h));
        assert!(t.feed(false, &h) && !t.up, "third consecutive failure: down");
        assert!(!t.feed(true, &h));
        assert!(t.feed(true, &h) && t.up, "second consecutive success: up");
    }

    #[tokio::test]
    async fn checks_real_sockets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(check_once(addr, &health(1, 1), None, None).await, Ok(()));
        drop(listener);
        assert!(check_once(addr, &health(1, 1), None, None)
            .await
            .unwrap_err()
            .contains("refused"));
    }

    #[tokio::test]
    async fn http_check_sends_its_request_and_reads_status_and_body() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen_tx, mut seen) = mpsc::channel(8);
        tokio::spawn(async move {
            // Connections kept open, as by a server that ignores
            // `Connection: close`: the check ends with the body.
            let mut held = Vec::new();
            for answer in [
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nstatus OK",
                "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nstatus KO",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nstat\r\n5\r\nus OK\r\n0\r\n\r\n",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap();
                seen_tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .await
                    .unwrap();
                let _ = s.write_all(answer.as_bytes()).await;
                held.push(s);
            }
            std::future::pending::<()>().await;
        });
        let mut h = health(1, 1);
        let mut c = HttpCheck {
            method: "GET".into(),
            path: "/".into(),
            version: "HTTP/1.0".into(),
            host: None,
            expect: "200-399".into(),
            expect_body: None,
        };
        h.kind = HealthKind::Http(c.clone());
        assert_eq!(check_once(addr, &h, None, None).await, Ok(()));
        assert!(seen
            .recv()
            .await
            .unwrap()
            .starts_with(&format!("GET / HTTP/1.0\r\nHost: {addr}\r\n")));
        assert_eq!(
            check_once(addr, &h, None, None).await,
            Err("status 503 not in 200-399".into())
        );
        seen.recv().await.unwrap();
        (c.method, c.path, c.version, c.host) = (
            "HEAD".into(),
            "/ping".into(),
            "HTTP/1.1".into(),
            Some("app.test".into()),
        );
        c.expect_body = Some("OK".into());
        h.kind = HealthKind::Http(c);
        assert_eq!(check_once(addr, &h, None, None).await, Ok(()));
        assert!(seen
            .recv()
            .await
            .unwrap()
            .starts_with("HEAD /ping HTTP/1.1\r\nHost: app.test\r\n"));
        assert!(check_once(addr, &h, None, None)
            .await
            .unwrap_err()
            .contains("does not contain \"OK\""));
        assert_eq!(
            check_once(addr, &h, None, None).await,
            Ok(()),
            "a chunked body, decoded"
        );
    }
}
