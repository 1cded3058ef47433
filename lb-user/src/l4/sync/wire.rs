//! The sync protocol's messages: a header, up to `MAX_RECORDS` flow
//! records and an HMAC-SHA256 of both under the shared key. The same
//! message travels in a UDP datagram (updates, at most `MAX_DATAGRAM`
//! records so it fits one 1500-byte frame) and on the TCP stream of a full
//! pull.
//!
//! Header (32 bytes, big-endian): magic `XLBS`, version, kind, record
//! count, sender id (random per run), sequence number (per sender), sender
//! clock (Unix milliseconds). A record (80 bytes): kind, family, protocol,
//! state, client, VIP, client port, VIP port, backend, backend port, snat
//! port, snat address, age in milliseconds. Addresses are 16 bytes (IPv4 in
//! the first four).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hmac::{KeyInit, Mac};
use lb_common::{addr16, FAMILY_V4, FAMILY_V6, NAT_CLOSING, NAT_NEW, SYNC_DSR, SYNC_NAT};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

const MAGIC: &[u8; 4] = b"XLBS";
const VERSION: u8 = 1;
pub const HEADER: usize = 32;
pub const RECORD: usize = 80;
pub const TAG: usize = 32;
/// Records in one UDP datagram: 32 + 16 * 80 + 32 = 1344 bytes.
pub const MAX_DATAGRAM: usize = 16;
/// Records in one message of a pull stream.
pub const MAX_RECORDS: usize = 512;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Flow records (an update, or part of a pull).
    Flows = 1,
    /// "Send me your whole table" (TCP).
    Pull = 2,
    /// The end of a pull stream.
    End = 3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub count: usize,
    pub sender: u64,
    pub seq: u64,
    pub time_ms: u64,
}

/// One flow as the nodes exchange it: by addresses, which every node with
/// the same config maps to its own backend ids and snat regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// `SYNC_NAT` or `SYNC_DSR`.
    pub kind: u8,
    pub proto: u8,
    /// `NAT_*` state (0 for dsr).
    pub state: u8,
    pub client: IpAddr,
    pub vip: IpAddr,
    pub client_port: u16,
    pub vip_port: u16,
    pub backend: IpAddr,
    pub backend_port: u16,
    /// nat: the source the backend sees (unspecified for dsr).
    pub snat: IpAddr,
    pub snat_port: u16,
    /// Since the flow's last packet on the sender.
    pub age_ms: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("shorter than its header and tag ({0} bytes)")]
    Short(usize),
    #[error("not an xlb sync message")]
    Magic,
    #[error("protocol version {0}, this node speaks {VERSION}")]
    Version(u8),
    #[error("unknown message kind {0}")]
    Kind(u8),
    #[error("{count} records do not fit {len} bytes")]
    Length { count: usize, len: usize },
    #[error("more than {MAX_RECORDS} records")]
    TooMany,
    #[error("signature does not match: another key, or altered on the way")]
    Signature,
    #[error("record {0}: {1}")]
    Record(usize, &'static str),
}

/// Total length of a message with `count` records.
pub fn message_len(count: usize) -> usize {
    HEADER + count * RECORD + TAG
}

fn mac(key: &[u8]) -> HmacSha256 {
    <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// `b` as an address of `family`.
pub fn ip_of(family: u8, b: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*b))
    }
}

/// Encodes and signs one message.
pub fn encode(key: &[u8], h: &Header, records: &[Record]) -> Vec<u8> {
    debug_assert!(records.len() <= MAX_RECORDS);
    let mut out = Vec::with_capacity(message_len(records.len()));
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(h.kind as u8);
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&h.sender.to_be_bytes());
    out.extend_from_slice(&h.seq.to_be_bytes());
    out.extend_from_slice(&h.time_ms.to_be_bytes());
    for r in records {
        let family = addr16(r.vip).1;
        out.extend_from_slice(&[r.kind, family, r.proto, r.state]);
        out.extend_from_slice(&addr16(r.client).0);
        out.extend_from_slice(&addr16(r.vip).0);
        out.extend_from_slice(&r.client_port.to_be_bytes());
        out.extend_from_slice(&r.vip_port.to_be_bytes());
        out.extend_from_slice(&addr16(r.backend).0);
        out.extend_from_slice(&r.backend_port.to_be_bytes());
        out.extend_from_slice(&r.snat_port.to_be_bytes());
        out.extend_from_slice(&addr16(r.snat).0);
        out.extend_from_slice(&r.age_ms.to_be_bytes());
    }
    let tag = mac(key).chain_update(&out).finalize().into_bytes();
    out.extend_from_slice(&tag);
    out
}

/// Reads the header of `buf` (its first `HEADER` bytes) without checking
/// the signature: how long the whole message is, for a stream reader.
pub fn peek(buf: &[u8]) -> Result<Header, WireError> {
    if buf.len() < HEADER {
        return Err(WireError::Short(buf.len()));
    }
    if &buf[..4] != MAGIC {
        return Err(WireError::Magic);
    }
    if buf[4] != VERSION {
        return Err(WireError::Version(buf[4]));
    }
    let kind = match buf[5] {
        1 => Kind::Flows,
        2 => Kind::Pull,
        3 => Kind::End,
        k => return Err(WireError::Kind(k)),
    };
    let count = usize::from(u16::from_be_bytes([buf[6], buf[7]]));
    if count > MAX_RECORDS {
        return Err(WireError::TooMany);
    }
    let word = |i: usize| u64::from_be_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
    Ok(Header {
        kind,
        count,
        sender: word(8),
        seq: word(16),
        time_ms: word(24),
    })
}

/// Checks and decodes one whole message.
pub fn decode(key: &[u8], buf: &[u8]) -> Result<(Header, Vec<Record>), WireError> {
    if buf.len() < HEADER + TAG {
        return Err(WireError::Short(buf.len()));
    }
    let h = peek(buf)?;
    if buf.len() != message_len(h.count) {
        return Err(WireError::Length {
            count: h.count,
            len: buf.len(),
        });
    }
    let (body, tag) = buf.split_at(buf.len() - TAG);
    mac(key)
        .chain_update(body)
        .verify_slice(tag)
        .map_err(|_| WireError::Signature)?;
    let mut records = Vec::with_capacity(h.count);
    for (i, r) in body[HEADER..].chunks_exact(RECORD).enumerate() {
        records.push(record(r).map_err(|why| WireError::Record(i, why))?);
    }
    Ok((h, records))
}

fn record(r: &[u8]) -> Result<Record, &'static str> {
    let a = |i: usize| -> [u8; 16] { r[i..i + 16].try_into().expect("16 bytes") };
    let port = |i: usize| u16::from_be_bytes([r[i], r[i + 1]]);
    let (kind, family) = (r[0], r[1]);
    if kind != SYNC_NAT && kind != SYNC_DSR {
        return Err("unknown flow kind");
    }
    if family != FAMILY_V4 && family != FAMILY_V6 {
        return Err("unknown address family");
    }
    let state = r[3];
    if kind == SYNC_NAT && !(NAT_NEW..=NAT_CLOSING).contains(&state) {
        return Err("not a full-NAT flow state");
    }
    Ok(Record {
        kind,
        proto: r[2],
        state,
        client: ip_of(family, &a(4)),
        vip: ip_of(family, &a(20)),
        client_port: port(36),
        vip_port: port(38),
        backend: ip_of(family, &a(40)),
        backend_port: port(56),
        snat_port: port(58),
        snat: ip_of(family, &a(60)),
        age_ms: u32::from_be_bytes(r[76..80].try_into().expect("4 bytes")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u8, v6: bool) -> Record {
        let ip = |n: u8| -> IpAddr {
            if v6 {
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(n)))
            } else {
                IpAddr::V4(Ipv4Addr::new(198, 18, 0, n))
            }
        };
        Record {
            kind: if i.is_multiple_of(2) { SYNC_NAT } else { SYNC_DSR },
            proto: 6,
            state: 2,
            client: ip(i),
            vip: ip(200),
            client_port: 40000 + u16::from(i),
            vip_port: 80,
            backend: ip(100),
            backend_port: 8080,
            snat: ip(2),
            snat_port: 1024 + u16::from(i),
            age_ms: 1234 * u32::from(i),
        }
    }

    #[test]
    fn a_message_round_trips_and_any_changed_byte_is_refused() {
        let key = b"0123456789abcdef0123";
        let h = Header {
            kind: Kind::Flows,
            count: 3,
            sender: 7,
            seq: 9,
            time_ms: 1_700_000_000_000,
        };
        let recs = vec![rec(1, false), rec(2, true), rec(3, false)];
        let m = encode(key, &h, &recs);
        assert_eq!(m.len(), message_len(3));
        assert_eq!(decode(key, &m), Ok((h, recs)));
        for i in 0..m.len() {
            let mut bad = m.clone();
            bad[i] ^= 0x40;
            assert!(decode(key, &bad).is_err(), "byte {i} changed and still accepted");
        }
        assert_eq!(decode(b"another key of 16+ bytes", &m), Err(WireError::Signature));
        assert!(matches!(decode(key, &m[..m.len() - 1]), Err(WireError::Length { .. })));
        assert!(decode(key, &m[..10]).is_err());
    }

    #[test]
    fn a_full_datagram_fits_one_frame() {
        assert!(message_len(MAX_DATAGRAM) + 48 <= 1500);
    }
}
