//! Health checks (HAProxy semantics): every `interval` each backend is
//! checked with a TCP connect or an HTTP request whose status must match
//! `expect`; `fall` consecutive failures mark it down, `rise` consecutive
//! successes up again. Backends start up. State changes are sent to the
//! daemon, which logs them and rebuilds the tables.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
    task::JoinHandle,
    time::{interval, timeout, MissedTickBehavior},
};

use crate::config::{Config, Health, HealthKind};

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

/// One check; `Err` says why it failed.
pub async fn check_once(addr: SocketAddr, h: &Health) -> Result<(), String> {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let HealthKind::Http { path, expect } = &h.kind else {
            return Ok(());
        };
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: xlb-health\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let got = s.read(&mut buf[n..]).await.map_err(|e| e.to_string())?;
            if got == 0 {
                return Err("connection closed before a status line".into());
            }
            n += got;
        }
        let line = String::from_utf8_lossy(&buf[..n]);
        let status = line
            .strip_prefix("HTTP/1.")
            .and_then(|r| r.get(2..5))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("not an HTTP response: {:?}", line.lines().next().unwrap_or("")))?;
        if status_matches(expect, status) {
            Ok(())
        } else {
            Err(format!("status {status} not in {expect}"))
        }
    };
    match timeout(h.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", h.timeout)),
    }
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
            tasks.push(tokio::spawn(async move {
                let mut tick = interval(h.interval.max(Duration::from_millis(10)));
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let r = check_once(addr, &h).await;
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
        assert_eq!(check_once(addr, &health(1, 1)).await, Ok(()));
        drop(listener);
        assert!(check_once(addr, &health(1, 1)).await.unwrap_err().contains("refused"));
    }

    #[tokio::test]
    async fn http_check_reads_the_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let mut h = health(1, 1);
        h.kind = HealthKind::Http {
            path: "/".into(),
            expect: "200-399".into(),
        };
        assert_eq!(check_once(addr, &h).await, Ok(()));
        assert_eq!(check_once(addr, &h).await, Err("status 503 not in 200-399".into()));
    }
}
