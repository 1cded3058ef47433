//! The PROXY protocol (HAProxy's, v1 text and v2 binary): read from
//! clients behind another balancer (`accept_proxy`), written to backends
//! that want the client's address (`send_proxy`).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use tokio::{io::AsyncReadExt, net::TcpStream, time::timeout};

use crate::config::ProxyVersion as Version;

/// The v2 signature.
const SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// v2 address blocks and TLVs xlb reads at most (HAProxy's own limit is
/// about this size too).
const V2_MAX: usize = 16 + 2048;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// What a header says: the client's address, or nothing (v1 `UNKNOWN`,
/// v2 `LOCAL` as health checks send, or a family other than TCP over IP):
/// then the connection's own peer stands.
pub type Source = Option<SocketAddr>;

/// The length of the header at the front of `buf` and what it says, or
/// None if more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<(usize, Source)>, ProxyHeaderError> {
    use ProxyHeaderError::{Malformed, Missing};
    let n = buf.len().min(SIG.len());
    if buf[..n] == SIG[..n] {
        return parse_v2(buf);
    }
    let n = buf.len().min(6);
    if buf[..n] != b"PROXY "[..n] {
        return Err(Missing);
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(Malformed("a v1 line longer than 107 bytes"))
        } else {
            Ok(None)
        };
    };
    if end + 2 > V1_MAX {
        return Err(Malformed("a v1 line longer than 107 bytes"));
    }
    let line = std::str::from_utf8(&buf[6..end]).map_err(|_| Malformed("v1: not ASCII"))?;
    let mut f = line.split(' ');
    let source = match f.next() {
        Some("UNKNOWN") => None,
        Some(fam @ ("TCP4" | "TCP6")) => {
            let mut next = || f.next().ok_or(Malformed("v1: missing fields"));
            let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
            let ip = |s: &str| -> Result<IpAddr, ProxyHeaderError> {
                let ip: IpAddr = s.parse().map_err(|_| Malformed("v1: a bad address"))?;
                match (fam, ip) {
                    ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
                    _ => Err(Malformed("v1: an address of the other family")),
                }
            };
            let port = |s: &str| -> Result<u16, ProxyHeaderError> {
                if s.is_empty()
                    || s.len() > 5
                    || !s.bytes().all(|b| b.is_ascii_digit())
                    || (s.len() > 1 && s.starts_with('0'))
                {
                    return Err(Malformed("v1: a bad port"));
                }
                s.parse().map_err(|_| Malformed("v1: a bad port"))
            };
            let (src, _dst, sport, _dport) = (ip(src)?, ip(dst)?, port(sport)?, port(dport)?);
            if f.next().is_some() {
                return Err(Malformed("v1: extra fields"));
            }
            Some(SocketAddr::new(src, sport))
        }
        _ => return Err(Malformed("v1: unknown protocol")),
    };
    Ok(Some((end + 2, source)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(usize, Source)>, ProxyHeaderError> {
    use ProxyHeaderError::Malformed;
    if buf.len() < 16 {
        return Ok(None);
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX {
        return Err(Malformed("v2: longer than 2 KiB"));
    }
    if buf[12] >> 4 != 2 {
        return Err(Malformed("v2: unknown version"));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let body = &buf[16..len];
    let source = match buf[12] & 0x0f {
        0 => None, // LOCAL
        1 => match buf[13] {
            // TCP over IPv4, TCP over IPv6.
            0x11 if body.len() >= 12 => {
                let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
                Some(SocketAddr::new(ip.into(), u16::from_be_bytes([body[8], body[9]])))
            }
            0x21 if body.len() >= 36 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&body[..16]);
                Some(SocketAddr::new(
                    Ipv6Addr::from(a).into(),
                    u16::from_be_bytes([body[32], body[33]]),
                ))
            }
            0x11 | 0x21 => return Err(Malformed("v2: short address block")),
            // UDP, unix sockets, UNSPEC: the connection's own peer stands.
            _ => None,
        },
        _ => return Err(Malformed("v2: unknown command")),
    };
    Ok(Some((len, source)))
}

/// Reads the header a client must open with (within `within`), taking
/// exactly its bytes off the socket: what follows is the client's.
pub async fn read(stream: &mut TcpStream, within: Duration) -> io::Result<Source> {
    let late = || io::Error::new(io::ErrorKind::TimedOut, "no PROXY protocol header in time");
    timeout(within, read_exact_header(stream)).await.map_err(|_| late())?
}

async fn read_exact_header(stream: &mut TcpStream) -> io::Result<Source> {
    // The shortest header ("PROXY UNKNOWN\r\n") has 15 bytes.
    let mut head = vec![0u8; 15];
    stream.read_exact(&mut head).await?;
    loop {
        let parsed = parse(&head).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if let Some((_, source)) = parsed {
            return Ok(source);
        }
        // How many more bytes surely belong to the header.
        let more = if head.starts_with(&SIG) {
            match head.get(14..16) {
                Some(l) => 16 + usize::from(u16::from_be_bytes([l[0], l[1]])) - head.len(),
                None => 16 - head.len(),
            }
        } else {
            // v1: up to the end of the line if it has arrived, else a byte
            // (also when the line's CR is in already: its LF is next).
            let mut peek = [0u8; V1_MAX];
            let n = stream.peek(&mut peek).await?;
            match head.last() {
                Some(b'\r') => 1,
                _ => peek[..n].windows(2).position(|w| w == b"\r\n").map_or(1, |p| p + 2),
            }
        };
        let at = head.len();
        head.resize(at + more, 0);
        stream.read_exact(&mut head[at..]).await?;
    }
}

/// The header that tells a backend the connection is from `src` to `dst`.
pub fn encode(version: Version, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    // Both addresses in one family: an IPv4 one is mapped when the other
    // is IPv6.
    let (src, dst) = match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => (src, dst),
        _ => (mapped(src), mapped(dst)),
    };
    match version {
        Version::V1 => {
            let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {fam} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        Version::V2 => {
            let mut out = SIG.to_vec();
            out.push(0x21); // version 2, PROXY
            let addrs: Vec<u8> = match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.push(0x11);
                    [s.octets().as_slice(), &d.octets()].concat()
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    out.push(0x21);
                    [s.octets().as_slice(), &d.octets()].concat()
                }
                _ => unreachable!("one family above"),
            };
            let len = addrs.len() + 4;
            out.extend_from_slice(&(len as u16).to_be_bytes());
            out.extend_from_slice(&addrs);
            out.extend_from_slice(&src.port().to_be_bytes());
            out.extend_from_slice(&dst.port().to_be_bytes());
            out
        }
    }
}

/// A header that names no connection (v1 `UNKNOWN`, v2 `LOCAL`): what
/// health checks send.
pub fn encode_local(version: Version) -> Vec<u8> {
    match version {
        Version::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        Version::V2 => [SIG.as_slice(), &[0x20, 0x00, 0, 0]].concat(),
    }
}

/// The fuzz target's entry: whatever the bytes, [`parse`] gives a length
/// within them, and a header written for the address it found reads back
/// the same.
pub fn fuzz(data: &[u8]) {
    let Ok(Some((len, source))) = parse(data) else { return };
    assert!(len <= data.len() && len <= V2_MAX);
    if let Some(src) = source {
        let dst = SocketAddr::new(src.ip(), 443);
        for v in [Version::V1, Version::V2] {
            let h = encode(v, src, dst);
            assert_eq!(parse(&h), Ok(Some((h.len(), Some(src)))));
        }
    }
}

fn mapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(v4.to_ipv6_mapped().into(), a.port()),
        IpAddr::V6(_) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_lines() {
        let line = b"PROXY TCP4 198.18.0.1 198.18.0.2 5678 80\r\nGET /";
        assert_eq!(parse(line), Ok(Some((42, Some(addr("198.18.0.1:5678"))))));
        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 443\r\n";
        assert_eq!(parse(line).unwrap().unwrap().1, Some(addr("[2001:db8::1]:1")));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Ok(Some((15, None))));
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(None), "more to come");
        assert_eq!(parse(b"PRO"), Ok(None));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::Missing));
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"[..],
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyHeaderError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(parse(&long).is_err());
    }

    #[test]
    fn v2_both_ways() {
        for (src, dst) in [
            (addr("198.18.0.1:5678"), addr("198.18.0.2:80")),
            (addr("[2001:db8::1]:5678"), addr("[2001:db8::2]:443")),
        ] {
            let h = encode(Version::V2, src, dst);
            let mut wire = h.clone();
            wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(parse(&wire), Ok(Some((h.len(), Some(src)))));
            for cut in 0..h.len() {
                assert_eq!(parse(&h[..cut]), Ok(None), "{cut} bytes");
            }
            let v1 = encode(Version::V1, src, dst);
            assert_eq!(parse(&v1), Ok(Some((v1.len(), Some(src)))));
        }
        let mixed = encode(Version::V1, addr("198.18.0.1:1"), addr("[2001:db8::2]:443"));
        assert_eq!(parse(&mixed).unwrap().unwrap().1, Some(addr("[::ffff:198.18.0.1]:1")));
        // LOCAL and UNKNOWN (health checks): no address.
        assert_eq!(parse(&encode_local(Version::V2)), Ok(Some((16, None))));
        assert_eq!(parse(&encode_local(Version::V1)), Ok(Some((15, None))));
        let mut bad = SIG.to_vec();
        bad.extend_from_slice(&[0x11, 0x11, 0, 0]);
        assert!(parse(&bad).is_err(), "version 1 in a v2 header");
        let mut short = SIG.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(parse(&short).is_err());
    }
}
