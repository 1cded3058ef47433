//! The sinks of the writer thread: syslog framing, datagram sockets
//! (UDP, unix) written in batches with `sendmmsg`, and stdout/stderr.

use std::{
    io::{self, Write},
    net::UdpSocket,
    os::{fd::AsRawFd, unix::net::UnixDatagram},
    time::{Duration, Instant, SystemTime},
};

use super::{record::Clock, Entry, Framing, LineFormat, Setup, Severity, SinkAddr};

/// HAProxy's default line length: longer lines are cut (the request line
/// is last, so what is cut is the end of the URI).
const MAX_LINE: usize = 1024;
/// How often a sink that could not be opened (no syslog daemon yet) is
/// tried again.
const RETRY: Duration = Duration::from_secs(1);
/// Messages per `sendmmsg` call.
const MMSG: usize = 64;

enum Conn {
    Udp(UdpSocket),
    Unix(UnixDatagram),
    Stdout,
    Stderr,
    /// Not open (yet): since when.
    Closed(Instant),
}

struct Sink {
    addr: SinkAddr,
    conn: Conn,
}

/// The open sinks of the current setup.
#[derive(Default)]
pub(super) struct Sinks {
    setup: Option<Setup>,
    sinks: Vec<Sink>,
    host: String,
    clock: Clock,
}

fn open(addr: &SinkAddr) -> io::Result<Conn> {
    // Non-blocking: a sink that does not read loses lines, the writer
    // does not wait for it.
    Ok(match addr {
        SinkAddr::Udp(a) => {
            let bind: std::net::SocketAddr = if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("any");
            let s = UdpSocket::bind(bind)?;
            s.connect(a)?;
            s.set_nonblocking(true)?;
            Conn::Udp(s)
        }
        SinkAddr::Unix(p) => {
            let s = UnixDatagram::unbound()?;
            s.connect(p)?;
            s.set_nonblocking(true)?;
            Conn::Unix(s)
        }
        SinkAddr::Stdout => Conn::Stdout,
        SinkAddr::Stderr => Conn::Stderr,
    })
}

impl Sinks {
    pub(super) fn open(setup: Setup) -> Sinks {
        let sinks = setup
            .sinks
            .iter()
            .map(|a| Sink {
                addr: a.clone(),
                conn: open(a).unwrap_or_else(|e| {
                    eprintln!("xlb: log sink {a}: {e}; trying again every second");
                    Conn::Closed(Instant::now())
                }),
            })
            .collect();
        Sinks {
            setup: Some(setup),
            sinks,
            host: hostname(),
            clock: Clock::default(),
        }
    }

    /// Writes a batch to every sink: (lines sent, lines lost), counted per
    /// sink.
    pub(super) fn write(&mut self, batch: &[Entry]) -> (u64, u64) {
        let Some(setup) = &self.setup else {
            return (0, 0);
        };
        // One time stamp a batch (they are milliseconds apart).
        let now = SystemTime::now();
        let stamp = match setup.framing {
            Framing::Rfc3164 => format!("{} xlb[{}]: ", self.clock.rfc3164(now), std::process::id()),
            Framing::Rfc5424 => format!(
                "1 {} {} xlb {} - - ",
                self.clock.rfc5424(now),
                self.host,
                std::process::id()
            ),
        };
        let raw_sinks = self.sinks.iter().any(|s| !s.addr.syslog());
        let syslog_sinks = self.sinks.iter().any(|s| s.addr.syslog());
        // What each line says, and its syslog form (each only if a sink
        // takes it).
        let mut raw = Vec::with_capacity(if raw_sinks { batch.len() } else { 0 });
        let mut framed = Vec::with_capacity(if syslog_sinks { batch.len() } else { 0 });
        let mut body = String::new();
        // What a syslog line has for its message after `<PRI>` (at most 5
        // bytes), the stamp and its newline.
        let room = MAX_LINE - (stamp.len() + 6);
        // A JSON line cut for syslog (the raw sinks get it whole).
        let mut json_cut = String::new();
        for e in batch {
            body.clear();
            json_cut.clear();
            let severity = match e {
                Entry::Http(r) => {
                    r.write(&mut body, &mut self.clock);
                    if syslog_sinks && body.len() > room && r.format == LineFormat::Json {
                        // Cut inside the JSON, not through it.
                        r.json_within(&mut json_cut, &mut self.clock, room);
                    }
                    Severity::Info
                }
                Entry::Flow(r) => {
                    r.write(&mut body, &mut self.clock);
                    Severity::Info
                }
                Entry::Refused(r) => {
                    r.write(&mut body, &mut self.clock);
                    Severity::Info
                }
                Entry::Daemon(s, m) => {
                    body.push_str(m);
                    *s
                }
            };
            if syslog_sinks {
                let pri = u32::from(setup.facility.0) * 8 + severity as u32;
                let mut line = Vec::with_capacity(body.len() + stamp.len() + 8);
                let _ = write!(line, "<{pri}>");
                line.extend_from_slice(stamp.as_bytes());
                let room = MAX_LINE.saturating_sub(line.len() + 1);
                let message = if json_cut.is_empty() { &body } else { &json_cut };
                line.extend_from_slice(cut(message, room).as_bytes());
                line.push(b'\n');
                framed.push(line);
            }
            if raw_sinks {
                raw.push((!matches!(e, Entry::Daemon(..))).then(|| {
                    let mut l = Vec::with_capacity(body.len() + 1);
                    l.extend_from_slice(body.as_bytes());
                    l.push(b'\n');
                    l
                }));
            }
        }
        let (mut sent, mut lost) = (0, 0);
        for sink in &mut self.sinks {
            if let Conn::Closed(since) = sink.conn {
                if since.elapsed() < RETRY {
                    lost += batch.len() as u64;
                    continue;
                }
                sink.conn = open(&sink.addr).unwrap_or(Conn::Closed(Instant::now()));
            }
            let (s, l, err) = match &sink.conn {
                Conn::Udp(u) => send_all(u.as_raw_fd(), &framed),
                Conn::Unix(u) => send_all(u.as_raw_fd(), &framed),
                Conn::Stdout => write_lines(&mut io::stdout().lock(), &raw),
                Conn::Stderr => write_lines(&mut io::stderr().lock(), &raw),
                Conn::Closed(_) => (0, batch.len() as u64, None),
            };
            sent += s;
            lost += l;
            // A syslog daemon that went away (restarted) says so on a send
            // to its socket: open again.
            let gone = matches!(err, Some(libc::ECONNREFUSED | libc::ENOTCONN));
            if gone && matches!(sink.conn, Conn::Unix(_)) {
                sink.conn = Conn::Closed(Instant::now());
            }
        }
        (sent, lost)
    }
}

/// The longest prefix of `s` within `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes a
    // NUL-terminated name into it (truncated if need be).
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(0);
    match std::str::from_utf8(&buf[..end]) {
        Ok(h) if r == 0 && !h.is_empty() => h.to_string(),
        _ => "-".into(),
    }
}

/// Sends each message as one datagram, in batches; a message the socket
/// refuses (a full receiver, nobody listening) is lost and counted.
/// (sent, lost, the last error).
fn send_all(fd: i32, msgs: &[Vec<u8>]) -> (u64, u64, Option<i32>) {
    let (mut sent, mut lost, mut last) = (0u64, 0u64, None);
    let mut i = 0;
    let mut retried = false;
    while i < msgs.len() {
        let chunk = &msgs[i..msgs.len().min(i + MMSG)];
        let mut iov: Vec<libc::iovec> = chunk
            .iter()
            .map(|m| libc::iovec {
                iov_base: m.as_ptr() as *mut _,
                iov_len: m.len(),
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: an all-zero msghdr is a valid "no name, no
                // control data" header.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // SAFETY: `hdrs` points at `iov`, which points at `chunk`; all
        // outlive the call.
        let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), hdrs.len() as u32, libc::MSG_DONTWAIT) };
        if n > 0 {
            sent += n as u64;
            i += n as usize;
            retried = false;
            continue;
        }
        let err = io::Error::last_os_error().raw_os_error();
        last = err;
        // A refused UDP send reports the ICMP error of an earlier
        // datagram (nobody listened then): this one was not sent, and
        // may well be now.
        if err == Some(libc::EINTR) || (err == Some(libc::ECONNREFUSED) && !std::mem::replace(&mut retried, true)) {
            continue;
        }
        retried = false;
        if matches!(err, Some(libc::EAGAIN)) {
            // The receiver is full: the rest of this batch is lost too.
            lost += (msgs.len() - i) as u64;
            break;
        }
        // This message is lost; carry on with the next.
        lost += 1;
        i += 1;
    }
    (sent, lost, last)
}

fn write_lines(out: &mut impl Write, lines: &[Option<Vec<u8>>]) -> (u64, u64, Option<i32>) {
    let mut all = Vec::new();
    let mut n = 0;
    for l in lines.iter().flatten() {
        all.extend_from_slice(l);
        n += 1;
    }
    match out.write_all(&all).and_then(|()| out.flush()) {
        Ok(()) => (n, 0, None),
        Err(e) => (0, n, e.raw_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_at_a_character_boundary() {
        assert_eq!(cut("abc", 5), "abc");
        assert_eq!(cut("abcdef", 3), "abc");
        assert_eq!(cut("aé", 2), "a");
    }

    #[test]
    fn a_full_unix_receiver_loses_lines_and_says_how_many() {
        let dir = std::env::temp_dir().join(format!("xlb-sink-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let rx = UnixDatagram::bind(&dir).unwrap();
        let conn = open(&SinkAddr::Unix(dir.clone())).unwrap();
        let Conn::Unix(tx) = &conn else { panic!() };
        let msgs: Vec<Vec<u8>> = (0..5000).map(|i| format!("line {i}").into_bytes()).collect();
        let (sent, lost, _) = send_all(tx.as_raw_fd(), &msgs);
        assert_eq!(sent + lost, 5000);
        assert!(sent > 0 && lost > 0, "sent {sent} lost {lost}");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"line 0");
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn a_syslog_daemon_gone_is_told_by_the_send_itself() {
        let dir = std::env::temp_dir().join(format!("xlb-sink-gone-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let rx = UnixDatagram::bind(&dir).unwrap();
        let conn = open(&SinkAddr::Unix(dir.clone())).unwrap();
        let Conn::Unix(tx) = &conn else { panic!() };
        drop(rx);
        let _ = std::fs::remove_file(&dir);
        let (sent, lost, err) = send_all(tx.as_raw_fd(), &[b"a".to_vec(), b"b".to_vec()]);
        assert_eq!((sent, lost), (0, 2));
        assert!(matches!(err, Some(libc::ECONNREFUSED | libc::ENOTCONN)), "{err:?}");
    }
}
