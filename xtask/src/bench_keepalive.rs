//! A lean HTTPS keep-alive load generator for the TLS part of `bench l7`.
//!
//! wrk spends about as much CPU on a request as the proxies do (OpenSSL's
//! two reads and two epoll_ctl calls a request, beside the loopback send
//! that also pays the proxy's receive), and it shares the load CPU with
//! the backends: on a 2-CPU machine the load CPU runs out before a fast
//! proxy does, and req/s stop telling the proxies apart. This client does
//! one write and, mostly, one read a request (rustls, epoll by mio), so
//! that the proxy bounds the run. It keeps `conns` connections, each with
//! one request in flight, and counts answers that are not 200 as errors.

use std::{
    io::{self, Read, Write},
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use mio::{Events, Interest, Poll, Token};
use rustls::{pki_types::ServerName, ClientConfig, ClientConnection};

use crate::bench_l7::Load;

/// Latency buckets of 1 us, up to this many (longer ones land in the last).
const BUCKETS: usize = 200_000;

struct Conn {
    sock: mio::net::TcpStream,
    tls: ClientConnection,
    /// Plaintext read and not yet used.
    buf: Vec<u8>,
    sent: Instant,
    dead: bool,
}

impl Conn {
    fn open(cfg: &Arc<ClientConfig>, addr: &str) -> Result<Conn> {
        let mut tcp = TcpStream::connect(addr)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut tls = ClientConnection::new(cfg.clone(), ServerName::try_from("bench.test")?)?;
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp)?;
        }
        tcp.set_nonblocking(true)?;
        Ok(Conn {
            sock: mio::net::TcpStream::from_std(tcp),
            tls,
            buf: Vec::with_capacity(4096),
            sent: Instant::now(),
            dead: false,
        })
    }

    fn send(&mut self, request: &[u8]) -> io::Result<()> {
        self.tls.writer().write_all(request)?;
        self.sent = Instant::now();
        self.flush()
    }

    /// Writes what TLS has pending; a full socket waits for a writable event.
    fn flush(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads until a whole answer is in `buf` or the socket is empty (an
    /// answer's arrival is a new readiness edge, so no read is wasted on
    /// an empty socket after a whole one). Err at end of stream.
    fn receive(&mut self) -> io::Result<()> {
        loop {
            if answer(&self.buf).is_some() {
                return Ok(());
            }
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {
                    let state = self.tls.process_new_packets().map_err(io::Error::other)?;
                    let n = state.plaintext_bytes_to_read();
                    let at = self.buf.len();
                    self.buf.resize(at + n, 0);
                    self.tls.reader().read_exact(&mut self.buf[at..])?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// The length of the whole answer at the front of `buf` and whether it is
/// a 200; None while incomplete. Answers here carry a Content-Length.
fn answer(buf: &[u8]) -> Option<(usize, bool)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = &buf[..end];
    let length = head
        .split(|b| *b == b'\n')
        .find_map(|line| {
            let (name, value) = line.split_at(line.iter().position(|b| *b == b':')?);
            name.eq_ignore_ascii_case(b"content-length")
                .then(|| std::str::from_utf8(&value[1..]).ok()?.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= end + length).then(|| (end + length, head.starts_with(b"HTTP/1.1 200")))
}

/// `conns` connections to `addr` sending `request` for `secs` seconds, on
/// the calling thread.
pub fn run(cfg: &Arc<ClientConfig>, addr: &str, conns: usize, secs: u64, request: &[u8]) -> Result<Load> {
    let mut poll = Poll::new()?;
    let mut all = Vec::with_capacity(conns);
    for i in 0..conns {
        let mut c = Conn::open(cfg, addr).with_context(|| format!("connection {i} to {addr}"))?;
        poll.registry()
            .register(&mut c.sock, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        all.push(c);
    }
    let mut latency = vec![0u32; BUCKETS];
    let (mut done, mut errors) = (0u64, 0u64);
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    for c in &mut all {
        c.send(request)?;
    }
    let mut events = Events::with_capacity(1024);
    while Instant::now() < end {
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for ev in &events {
            let c = &mut all[ev.token().0];
            if c.dead {
                continue;
            }
            if ev.is_writable() && c.flush().is_err() {
                c.dead = true;
                errors += 1;
                continue;
            }
            if !ev.is_readable() {
                continue;
            }
            if c.receive().is_err() {
                c.dead = true;
                errors += 1;
                continue;
            }
            while let Some((n, ok)) = answer(&c.buf) {
                c.buf.drain(..n);
                let us = c.sent.elapsed().as_micros() as usize;
                latency[us.min(BUCKETS - 1)] += 1;
                done += 1;
                errors += u64::from(!ok);
                if c.send(request).is_err() {
                    c.dead = true;
                    errors += 1;
                    break;
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if done == 0 {
        bail!("no answers from {addr}");
    }
    let at = |q: f64| {
        let want = (done as f64 * q).ceil() as u64;
        let mut seen = 0u64;
        let us = latency
            .iter()
            .position(|n| {
                seen += u64::from(*n);
                seen >= want
            })
            .unwrap_or(BUCKETS - 1);
        us as f64 / 1000.0
    };
    Ok(Load {
        rps: done as f64 / elapsed,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        errors,
        ..Load::default()
    })
}

#[cfg(test)]
mod tests {
    use super::answer;

    #[test]
    fn answers_end_at_their_length() {
        let a = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ns1\nHTTP/1.1";
        assert_eq!(answer(a), Some((a.len() - 8, true)));
        assert_eq!(answer(&a[..20]), None);
        assert_eq!(answer(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ns1"), None);
        assert_eq!(
            answer(b"HTTP/1.1 503 No\r\nContent-Length: 0\r\n\r\n"),
            Some((38, false))
        );
    }
}
