//! HTTP/1.1 message bodies on the wire, shared by both sides of the proxy:
//! how a body is delimited (RFC 9112 section 6) and the decoding of what
//! has been read of it.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use hyper::{
    body::SizeHint,
    header::{self, HeaderMap, HeaderName, HeaderValue},
};

use crate::l7::body::BoxError;

/// Where the body of a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode {
    /// Bytes still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the connection closes (responses only).
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailers,
}

impl Decode {
    /// The next piece of body at the front of `buf`, taken out of it; None
    /// when done or when more must be read first.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, BoxError> {
        loop {
            match *self {
                Decode::Done => return Ok(None),
                Decode::UntilClose => return Ok((!buf.is_empty()).then(|| buf.split().freeze())),
                Decode::Length(n) | Decode::Chunked(Chunk::Data(n)) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = n.min(buf.len() as u64);
                    let data = buf.split_to(take as usize).freeze();
                    *self = match (*self, n - take) {
                        (Decode::Length(_), 0) => Decode::Done,
                        (Decode::Length(_), left) => Decode::Length(left),
                        (_, 0) => Decode::Chunked(Chunk::DataEnd),
                        (_, left) => Decode::Chunked(Chunk::Data(left)),
                    };
                    return Ok(Some(data));
                }
                Decode::Chunked(state) => {
                    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if buf.len() > 4096 {
                            return Err("chunked body: line too long".into());
                        }
                        return Ok(None);
                    };
                    let line = buf.split_to(end + 2);
                    let line = &line[..end];
                    *self = match state {
                        Chunk::Size => {
                            let hex = line.split(|b| *b == b';').next().unwrap_or(b"");
                            let hex = std::str::from_utf8(hex).map_err(|_| "chunked body: bad size")?;
                            match u64::from_str_radix(hex.trim(), 16).map_err(|_| "chunked body: bad size")? {
                                0 => Decode::Chunked(Chunk::Trailers),
                                n => Decode::Chunked(Chunk::Data(n)),
                            }
                        }
                        Chunk::DataEnd if line.is_empty() => Decode::Chunked(Chunk::Size),
                        Chunk::DataEnd => return Err("chunked body: data longer than its size".into()),
                        Chunk::Trailers if line.is_empty() => Decode::Done,
                        Chunk::Trailers => Decode::Chunked(Chunk::Trailers),
                        Chunk::Data(_) => unreachable!("handled above"),
                    };
                }
            }
        }
    }

    pub fn size_hint(self) -> SizeHint {
        match self {
            Decode::Done => SizeHint::with_exact(0),
            Decode::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// How the body of a message with `headers` is delimited, by its
/// Transfer-Encoding and Content-Length; `None` for a transfer coding that
/// does not end in chunked (a response then runs until close; a request
/// cannot be framed at all).
pub fn declared(headers: &HeaderMap) -> Result<Option<Decode>, &'static str> {
    if let Some(te) = headers.get_all(header::TRANSFER_ENCODING).iter().next_back() {
        let chunked = te
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        return Ok(chunked.then_some(Decode::Chunked(Chunk::Size)));
    }
    let mut length = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        let n = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or("bad content-length")?;
        if length.is_some_and(|l| l != n) {
            return Err("conflicting content-length");
        }
        length = Some(n);
    }
    Ok(Some(match length {
        Some(0) => Decode::Done,
        Some(n) => Decode::Length(n),
        None => Decode::UntilClose,
    }))
}

/// Where `part` (a slice httparse found) sits in `head`.
pub fn span(head: &[u8], part: &[u8]) -> Range<usize> {
    let at = part.as_ptr() as usize - head.as_ptr() as usize;
    at..at + part.len()
}

/// Where each header's name and value sit in `head`, taken before the
/// head leaves its buffer.
pub fn header_spans(head: &[u8], headers: &[httparse::Header<'_>]) -> Vec<(Range<usize>, Range<usize>)> {
    headers
        .iter()
        .map(|h| (span(head, h.name.as_bytes()), span(head, h.value)))
        .collect()
}

/// The headers at `spans` of `head`, their values sharing its bytes.
pub fn header_map(head: &Bytes, spans: Vec<(Range<usize>, Range<usize>)>) -> Result<HeaderMap, &'static str> {
    let mut headers = HeaderMap::with_capacity(spans.len());
    for (n, v) in spans {
        let name = HeaderName::from_bytes(&head[n]).map_err(|_| "bad header name")?;
        let value = HeaderValue::from_maybe_shared(head.slice(v)).map_err(|_| "bad header value")?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// A comma-separated header (Connection) lists `token`.
pub fn lists(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Appends `data` as one chunk.
pub fn put_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if !data.is_empty() {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// The body decoded from `wire`, if it ends there.
    fn decoded(mut d: Decode, wire: &[u8]) -> Result<(Vec<u8>, usize), BoxError> {
        let mut buf = BytesMut::from(wire);
        let mut out = Vec::new();
        while let Some(data) = d.next(&mut buf)? {
            out.extend_from_slice(&data);
        }
        if d != Decode::Done {
            return Err(format!("not done: {d:?}").into());
        }
        Ok((out, buf.len()))
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\nNEXT";
        assert_eq!(
            decoded(Decode::Chunked(Chunk::Size), wire).unwrap(),
            (b"hello world".to_vec(), 4),
            "what follows the body stays"
        );
        assert!(decoded(Decode::Chunked(Chunk::Size), b"zz\r\n").is_err());
        assert!(decoded(Decode::Chunked(Chunk::Size), b"2\r\nabc\r\n0\r\n\r\n").is_err());
        assert!(
            decoded(Decode::Chunked(Chunk::Size), b"5\r\nhel").is_err(),
            "incomplete"
        );
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        assert_eq!(decoded(Decode::Length(3), b"abcX").unwrap(), (b"abc".to_vec(), 1));
        assert_eq!(decoded(Decode::Done, b"X").unwrap(), (Vec::new(), 1));
    }

    #[test]
    fn declared_framing() {
        use hyper::header::HeaderValue;
        let mut h = HeaderMap::new();
        assert_eq!(declared(&h), Ok(Some(Decode::UntilClose)));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        assert_eq!(declared(&h), Ok(Some(Decode::Length(12))));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("13"));
        assert!(declared(&h).is_err());
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip, chunked"));
        assert_eq!(declared(&h), Ok(Some(Decode::Chunked(Chunk::Size))), "chunked wins");
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked, gzip"));
        assert_eq!(declared(&h), Ok(None));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Close"));
        assert!(lists(&h, &header::CONNECTION, "close"));
    }
}
