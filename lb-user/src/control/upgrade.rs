//! Seamless upgrades, as HAProxy's `-sf`/`-st` with `-x`: a new xlb takes
//! the listening sockets (the http services' and the admin address) from
//! the running one over a unix socket, so that no connection is refused
//! while the two change places. The running one stops accepting (what
//! arrives meanwhile waits in the kernel's accept queue, which the new one
//! then serves), and once the new one says it runs, finishes its
//! requests and tunnels, up to a deadline (`--sf`), or stops at once
//! (`--st`). If the new one goes away before that, the old one carries on.
//!
//! The socket is abstract (no file) and named after the admin address, so
//! it is per network namespace and per instance; only a process of the
//! same user may take the sockets.

use std::{
    collections::HashMap,
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener},
    os::{
        fd::{FromRawFd, RawFd},
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr as UnixAddr, UnixStream},
    },
    time::Duration,
};

use sendfd::{RecvWithFd, SendWithFd};

/// How the running process leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// Finishes what is in flight, for at most this long.
    Soft(Duration),
    /// At once.
    Hard,
}

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("no running xlb answers on {name:?} (same admin address, same network namespace): {source}")]
    Connect {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("taking over from the running xlb: {0}")]
    Io(#[from] io::Error),
    #[error("taking over from the running xlb: {0}")]
    Protocol(String),
}

/// Most sockets handed over.
const MAX_SOCKETS: usize = 1024;
/// The running process answers within this.
const ANSWER: Duration = Duration::from_secs(10);

fn name(admin: SocketAddr) -> String {
    format!("xlb-upgrade:{admin}")
}

fn address(admin: SocketAddr) -> io::Result<UnixAddr> {
    UnixAddr::from_abstract_name(name(admin))
}

/// The sockets a new process took, by address, and its line to the old
/// one.
pub struct Inherited {
    pub listeners: HashMap<SocketAddr, TcpListener>,
    line: UnixStream,
}

impl Inherited {
    /// Tells the old process this one runs: it stops accepting for good.
    pub fn done(mut self) -> io::Result<()> {
        self.line.write_all(b"DONE\n")
    }
}

/// New process: takes the sockets of the xlb serving `admin`, which then
/// leaves as `leave` says once [`Inherited::done`] is called.
pub fn take_over(admin: SocketAddr, leave: Leave) -> Result<Inherited, UpgradeError> {
    let connect = |source| UpgradeError::Connect {
        name: name(admin),
        source,
    };
    let mut line = UnixStream::connect_addr(&address(admin).map_err(connect)?).map_err(connect)?;
    line.set_read_timeout(Some(ANSWER))?;
    let ask = match leave {
        Leave::Soft(d) => format!("TAKE soft {}\n", d.as_millis()),
        Leave::Hard => "TAKE hard\n".to_string(),
    };
    line.write_all(ask.as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut fds = vec![-1; MAX_SOCKETS];
    let (n, nfds) = line.recv_with_fd(&mut buf, &mut fds)?;
    // Owned at once, so that they close on any error below.
    let owned: Vec<TcpListener> = fds[..nfds]
        .iter()
        // SAFETY: descriptors just received, owned by no one else here.
        .map(|fd| unsafe { TcpListener::from_raw_fd(*fd) })
        .collect();
    let addrs: Vec<SocketAddr> = serde_json::from_slice(&buf[..n])
        .map_err(|e| UpgradeError::Protocol(format!("a bad answer ({e}): {:?}", String::from_utf8_lossy(&buf[..n]))))?;
    if addrs.len() != owned.len() {
        return Err(UpgradeError::Protocol(format!(
            "{} addresses for {} sockets",
            addrs.len(),
            owned.len()
        )));
    }
    line.set_read_timeout(None)?;
    Ok(Inherited {
        listeners: addrs.into_iter().zip(owned).collect(),
        line,
    })
}

/// Old process: where takeovers are asked for.
pub fn listen(admin: SocketAddr) -> io::Result<tokio::net::UnixListener> {
    let l = std::os::unix::net::UnixListener::bind_addr(&address(admin)?)?;
    l.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(l)
}

/// A takeover asked for by a process of this user.
pub struct Request {
    pub leave: Leave,
    line: UnixStream,
}

/// The next valid request on `listener` (others are dropped).
pub async fn next(listener: &tokio::net::UnixListener) -> Request {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        match stream.peer_cred() {
            Ok(c) if c.uid() == me => {}
            _ => {
                tracing::warn!("upgrade: a takeover asked by another user, refused");
                continue;
            }
        }
        let Ok(std) = stream.into_std() else { continue };
        let asked = tokio::task::spawn_blocking(move || read_request(std)).await;
        match asked {
            Ok(Ok(r)) => return r,
            Ok(Err(e)) => tracing::warn!("upgrade: {e}"),
            Err(_) => {}
        }
    }
}

fn read_request(line: UnixStream) -> io::Result<Request> {
    line.set_nonblocking(false)?;
    line.set_read_timeout(Some(ANSWER))?;
    let ask = read_line(&line)?;
    let mut f = ask.split_whitespace();
    let leave = match (f.next(), f.next(), f.next()) {
        (Some("TAKE"), Some("hard"), None) => Leave::Hard,
        (Some("TAKE"), Some("soft"), Some(ms)) => Leave::Soft(Duration::from_millis(
            ms.parse().map_err(|_| io::Error::other("a bad drain time"))?,
        )),
        _ => return Err(io::Error::other(format!("a bad request {ask:?}"))),
    };
    Ok(Request { leave, line })
}

/// One line of at most 100 bytes.
fn read_line(line: &UnixStream) -> io::Result<String> {
    let mut out = String::new();
    BufReader::new(line.take(100)).read_line(&mut out)?;
    Ok(out)
}

impl Request {
    /// Sends `sockets` (the old process keeps its own copies), then waits
    /// for the new process: true once it runs, false if it went away.
    pub async fn hand_over(self, sockets: Vec<(SocketAddr, RawFd)>) -> bool {
        let line = self.line;
        let sent = tokio::task::spawn_blocking(move || -> io::Result<bool> {
            let (addrs, fds): (Vec<SocketAddr>, Vec<RawFd>) = sockets.into_iter().unzip();
            let json = serde_json::to_vec(&addrs).map_err(io::Error::other)?;
            line.send_with_fd(&json, &fds)?;
            // No deadline: the new process may take a while to start (it
            // attaches XDP, binds, checks); it says DONE, or it exits.
            line.set_read_timeout(None)?;
            Ok(read_line(&line)?.trim() == "DONE")
        })
        .await;
        matches!(sent, Ok(Ok(true)))
    }
}
