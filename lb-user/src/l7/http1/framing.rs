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
    /// After the last chunk: trailer lines up to an empty one (bytes of
    /// them seen so far).
    Trailers(usize),
}

/// Longest chunk-size line (with extensions) and trailer section.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

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
                    let limit = match state {
                        Chunk::Trailers(seen) => MAX_TRAILERS - seen,
                        _ => MAX_CHUNK_LINE,
                    };
                    let Some(line) = take_line(buf, limit)? else {
                        return Ok(None);
                    };
                    *self = Decode::Chunked(match state {
                        Chunk::Size => match chunk_size(&line)? {
                            0 => Chunk::Trailers(0),
                            n => Chunk::Data(n),
                        },
                        Chunk::DataEnd if line.is_empty() => Chunk::Size,
                        Chunk::DataEnd => return Err("chunked body: data longer than its size".into()),
                        Chunk::Trailers(_) if line.is_empty() => {
                            *self = Decode::Done;
                            continue;
                        }
                        // Trailer fields are checked as header lines and
                        // not forwarded (RFC 9110 6.5.1 lets a proxy drop them).
                        Chunk::Trailers(seen) => {
                            field_line(&line).map_err(|e| format!("chunked body: trailer: {e}"))?;
                            Chunk::Trailers(seen + line.len() + 2)
                        }
                        Chunk::Data(_) => unreachable!("handled above"),
                    });
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

/// The CRLF-ended line at the front of `buf` (without its CRLF), taken out
/// of it; None until it is whole. A bare CR or LF, or a line longer than
/// `limit`, is an error: framing ends lines with CRLF only.
fn take_line(buf: &mut BytesMut, limit: usize) -> Result<Option<Bytes>, BoxError> {
    let Some(lf) = memchr::memchr(b'\n', buf) else {
        if buf.len() > limit {
            return Err("chunked body: line too long".into());
        }
        if memchr::memchr(b'\r', buf).is_some_and(|cr| cr + 1 < buf.len()) {
            return Err("chunked body: bare CR".into());
        }
        return Ok(None);
    };
    if lf + 1 > limit {
        return Err("chunked body: line too long".into());
    }
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err("chunked body: bare LF".into());
    }
    if memchr::memchr(b'\r', &buf[..lf - 1]).is_some() {
        return Err("chunked body: bare CR".into());
    }
    let line = buf.split_to(lf + 1).freeze();
    Ok(Some(line.slice(..lf - 1)))
}

/// A chunk-size line: `1*HEXDIG *( BWS ";" BWS name [ BWS "=" BWS value ] )`
/// (RFC 9112 7.1.1), the value a token or a quoted string.
fn chunk_size(line: &[u8]) -> Result<u64, BoxError> {
    let bad = |why: &str| -> BoxError { format!("chunked body: {why}").into() };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(bad("bad chunk size"));
    }
    let mut size: u64 = 0;
    for b in &line[..digits] {
        let d = (*b as char).to_digit(16).expect("a hex digit") as u64;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(d))
            .ok_or_else(|| bad("chunk size overflows"))?;
    }
    let mut rest = &line[digits..];
    let bws = |r: &mut &[u8]| {
        while let [b' ' | b'\t', tail @ ..] = *r {
            *r = tail;
        }
    };
    loop {
        bws(&mut rest);
        let [b';', tail @ ..] = rest else {
            return if rest.is_empty() {
                Ok(size)
            } else {
                Err(bad("bad chunk size"))
            };
        };
        rest = tail;
        bws(&mut rest);
        let name = rest.iter().take_while(|b| is_tchar(**b)).count();
        if name == 0 {
            return Err(bad("bad chunk extension"));
        }
        rest = &rest[name..];
        bws(&mut rest);
        if let [b'=', tail @ ..] = rest {
            rest = tail;
            bws(&mut rest);
            rest = match rest {
                [b'"', tail @ ..] => quoted_string_rest(tail).ok_or_else(|| bad("bad chunk extension"))?,
                _ => {
                    let v = rest.iter().take_while(|b| is_tchar(**b)).count();
                    if v == 0 {
                        return Err(bad("bad chunk extension"));
                    }
                    &rest[v..]
                }
            };
        }
    }
}

/// What follows a quoted string whose opening quote was just read.
fn quoted_string_rest(mut s: &[u8]) -> Option<&[u8]> {
    loop {
        match s {
            [b'"', tail @ ..] => return Some(tail),
            [b'\\', b, tail @ ..] if *b == b'\t' || (0x20..0x7f).contains(b) || *b >= 0x80 => s = tail,
            [b, tail @ ..] if *b == b'\t' || (0x20..0x7f).contains(b) && *b != b'\\' || *b >= 0x80 => s = tail,
            _ => return None,
        }
    }
}

/// A token character (RFC 9110 5.6.2).
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A field line `name ":" OWS value OWS`: the name a token right before
/// the colon, the value without control characters but HTAB.
pub fn field_line(line: &[u8]) -> Result<(), &'static str> {
    let colon = memchr::memchr(b':', line).ok_or("a line without a colon")?;
    if colon == 0 {
        return Err("an empty field name");
    }
    if !line[..colon].iter().all(|b| is_tchar(*b)) {
        return Err("a field name that is not a token");
    }
    if line[colon + 1..]
        .iter()
        .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
    {
        return Err("a control character in a field value");
    }
    Ok(())
}

/// A body that broke its own framing (a bad chunk), as opposed to a peer
/// that went away in it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MalformedBody(pub BoxError);

/// Why a message's framing headers cannot be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    BadLength,
    ConflictingLength,
    BadCoding,
    ChunkedNotLast,
    ChunkedTwice,
    /// A coding other than chunked: xlb re-frames bodies, so it could not
    /// pass it on (501 for a request, RFC 9112 6.1).
    Unsupported,
}

impl FramingError {
    pub fn as_str(self) -> &'static str {
        match self {
            FramingError::BadLength => "bad content-length",
            FramingError::ConflictingLength => "conflicting content-length",
            FramingError::BadCoding => "bad transfer-encoding",
            FramingError::ChunkedNotLast => "transfer-encoding: chunked is not the final coding",
            FramingError::ChunkedTwice => "transfer-encoding: chunked more than once",
            FramingError::Unsupported => "transfer-encoding: only chunked is implemented",
        }
    }
}

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for FramingError {}

/// How the body of a message with `headers` is delimited, by its
/// Transfer-Encoding and Content-Length (RFC 9112 6.3): `UntilClose` for
/// neither (a request then has no body). Any transfer coding but a single,
/// final `chunked` is refused. With both headers, chunked wins; the caller
/// removes Content-Length and closes after the exchange.
pub fn declared(headers: &HeaderMap) -> Result<Decode, FramingError> {
    if chunked(headers)? {
        return Ok(Decode::Chunked(Chunk::Size));
    }
    Ok(by_length(content_length(headers)?))
}

/// How a body of this Content-Length (or none) is delimited.
pub fn by_length(length: Option<u64>) -> Decode {
    match length {
        Some(0) => Decode::Done,
        Some(n) => Decode::Length(n),
        None => Decode::UntilClose,
    }
}

/// Whether Transfer-Encoding frames the body: false without one, true for
/// a single, final `chunked`, an error for anything else.
pub fn chunked(headers: &HeaderMap) -> Result<bool, FramingError> {
    let mut chunked = false;
    for v in headers.get_all(header::TRANSFER_ENCODING) {
        for coding in v.as_bytes().split(|b| *b == b',') {
            let coding = trim_ows(coding);
            // A coding may carry parameters (`gzip;q=1`): its name is
            // what comes before them.
            let name = coding.split(|b| *b == b';').next().unwrap_or(b"");
            let name = trim_ows(name);
            if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
                return Err(FramingError::BadCoding);
            }
            if chunked {
                // Something after chunked (a second chunked included).
                return Err(if name.eq_ignore_ascii_case(b"chunked") {
                    FramingError::ChunkedTwice
                } else {
                    FramingError::ChunkedNotLast
                });
            }
            if !name.eq_ignore_ascii_case(b"chunked") {
                return Err(FramingError::Unsupported);
            }
            if name.len() != coding.len() {
                return Err(FramingError::BadCoding); // chunked takes no parameters
            }
            chunked = true;
        }
    }
    Ok(chunked)
}

/// The Content-Length, all its headers and list members agreeing (RFC 9110
/// 8.6: a list of equal values may stand for one); digits only.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, FramingError> {
    let mut length = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for member in v.as_bytes().split(|b| *b == b',') {
            let n = digits(trim_ows(member)).ok_or(FramingError::BadLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(FramingError::ConflictingLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// `1*DIGIT` as a number, None for anything else or an overflow.
pub fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', tail @ ..] = s {
        s = tail;
    }
    while let [head @ .., b' ' | b'\t'] = s {
        s = head;
    }
    s
}

/// Where `part` (a slice httparse found) sits in `head`.
pub fn span(head: &[u8], part: &[u8]) -> Range<usize> {
    let at = part.as_ptr() as usize - head.as_ptr() as usize;
    at..at + part.len()
}

/// Header lines a message may have (hyper's limit is 100).
pub const MAX_HEADERS: usize = 128;

/// Where each header's name and value sit in a head, taken before the
/// head leaves its buffer. The list is the thread's one spare, given back
/// on drop: no allocation per message.
pub struct Spans(Vec<[u32; 4]>);

thread_local! {
    static SPARE_SPANS: std::cell::Cell<Vec<[u32; 4]>> = const { std::cell::Cell::new(Vec::new()) };
}

impl Drop for Spans {
    fn drop(&mut self) {
        SPARE_SPANS.set(std::mem::take(&mut self.0));
    }
}

/// The spans of `headers` in `head`.
pub fn header_spans(head: &[u8], headers: &[httparse::Header<'_>]) -> Spans {
    let mut at = SPARE_SPANS.take();
    at.clear();
    at.extend(headers.iter().map(|h| {
        let (n, v) = (span(head, h.name.as_bytes()), span(head, h.value));
        // Heads are bounded far below 4 GiB.
        [n.start as u32, n.end as u32, v.start as u32, v.end as u32]
    }));
    Spans(at)
}

/// The framing and connection headers a message was read with, noted as
/// its map is built: a lookup is saved for each it does not have (most
/// messages have none or one of them).
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen(u8);

const NOTED: [HeaderName; 4] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
    header::EXPECT,
];

impl Seen {
    fn note(&mut self, name: &HeaderName) {
        if let Some(i) = NOTED.iter().position(|n| n == name) {
            self.0 |= 1 << i;
        }
    }

    /// What `headers` have now (for tests that build maps by hand).
    #[cfg(test)]
    pub fn of(headers: &HeaderMap) -> Seen {
        let mut seen = Seen::default();
        headers.keys().for_each(|k| seen.note(k));
        seen
    }

    /// False only when the message, as read, had no `name` header.
    pub fn may_have(self, name: &HeaderName) -> bool {
        NOTED
            .iter()
            .position(|n| n == name)
            .is_none_or(|i| self.0 & (1 << i) != 0)
    }
}

/// The headers at `spans` of `head`, their values sharing its bytes, with
/// room for `more`; and which framing headers they have.
pub fn header_map(head: &Bytes, spans: &Spans, more: usize) -> Result<(HeaderMap, Seen), &'static str> {
    let mut headers = HeaderMap::with_capacity(spans.0.len() + more);
    let mut seen = Seen::default();
    for [ns, ne, vs, ve] in &spans.0 {
        let name = HeaderName::from_bytes(&head[*ns as usize..*ne as usize]).map_err(|_| "bad header name")?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(*vs as usize..*ve as usize)).map_err(|_| "bad header value")?;
        seen.note(&name);
        headers.append(name, value);
    }
    Ok((headers, seen))
}

/// [`declared`] for a message whose framing headers were noted.
pub fn declared_seen(headers: &HeaderMap, seen: Seen) -> Result<Decode, FramingError> {
    if !seen.may_have(&header::TRANSFER_ENCODING) && !seen.may_have(&header::CONTENT_LENGTH) {
        return Ok(Decode::UntilClose);
    }
    declared(headers)
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
        let wire = b"5;ext=1\r\nhello\r\n6 ; a = \"q\\\"s\" ;b\r\n world\r\n0\r\nx-trailer: t\r\n\r\nNEXT";
        assert_eq!(
            decoded(Decode::Chunked(Chunk::Size), wire).unwrap(),
            (b"hello world".to_vec(), 4),
            "what follows the body stays"
        );
        assert!(
            decoded(Decode::Chunked(Chunk::Size), b"5\r\nhel").is_err(),
            "incomplete"
        );
    }

    #[test]
    fn chunked_framing_is_strict() {
        for bad in [
            &b"zz\r\n"[..],
            b"2\r\nabc\r\n0\r\n\r\n",      // data longer than its size
            b"+2\r\nab\r\n0\r\n\r\n",      // sign
            b"0x2\r\nab\r\n0\r\n\r\n",     // hex prefix
            b" 2\r\nab\r\n0\r\n\r\n",      // leading space
            b"2\nab\r\n0\r\n\r\n",         // bare LF
            b"2\r\nab\n0\r\n\r\n",         // bare LF after data
            b"2\rX\nab\r\n0\r\n\r\n",      // bare CR
            b"2\r\nab\r\n0\r\n\n",         // bare LF ends trailers
            b"10000000000000000\r\n",      // overflow
            b"2;\r\nab\r\n0\r\n\r\n",      // extension without a name
            b"2;a=\r\nab\r\n0\r\n\r\n",    // extension without a value
            b"2;a=\"x\r\nab\r\n0\r\n\r\n", // unterminated quote
            b"2;a b\r\nab\r\n0\r\n\r\n",   // two tokens
            b"0\r\nx trailer: t\r\n\r\n",  // trailer name not a token
            b"0\r\n folded\r\n\r\n",       // trailer folding
            b"0\r\nno-colon\r\n\r\n",      // trailer without a colon
        ] {
            assert!(
                decoded(Decode::Chunked(Chunk::Size), bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("0\r\n{}\r\n\r\n", "x: y\r\n".repeat(4000));
        assert!(
            decoded(Decode::Chunked(Chunk::Size), long.as_bytes()).is_err(),
            "trailers bounded"
        );
        let padded = format!("{}2\r\nab\r\n0\r\n\r\n", "0".repeat(5000));
        assert!(
            decoded(Decode::Chunked(Chunk::Size), padded.as_bytes()).is_err(),
            "size line bounded"
        );
        assert_eq!(
            decoded(Decode::Chunked(Chunk::Size), b"0002\r\nab\r\n0\r\n\r\n")
                .unwrap()
                .0,
            b"ab",
            "leading zeros are digits"
        );
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        assert_eq!(decoded(Decode::Length(3), b"abcX").unwrap(), (b"abc".to_vec(), 1));
        assert_eq!(decoded(Decode::Done, b"X").unwrap(), (Vec::new(), 1));
    }

    fn framing_of(fields: &[(&'static str, &'static str)]) -> Result<Decode, FramingError> {
        let mut h = HeaderMap::new();
        for (k, v) in fields {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        declared(&h)
    }

    #[test]
    fn declared_framing() {
        use FramingError::*;
        let (cl, te) = ("content-length", "transfer-encoding");
        assert_eq!(framing_of(&[]), Ok(Decode::UntilClose));
        assert_eq!(framing_of(&[(cl, "12")]), Ok(Decode::Length(12)));
        assert_eq!(framing_of(&[(cl, "0")]), Ok(Decode::Done));
        assert_eq!(framing_of(&[(cl, "12, 12"), (cl, "12")]), Ok(Decode::Length(12)));
        assert_eq!(framing_of(&[(cl, "12"), (cl, "13")]), Err(ConflictingLength));
        assert_eq!(framing_of(&[(cl, "12,13")]), Err(ConflictingLength));
        for bad in [
            "",
            "+12",
            "-1",
            "0x12",
            "1 2",
            "12a",
            "1.0",
            ",12",
            "99999999999999999999",
        ] {
            assert_eq!(framing_of(&[(cl, bad)]), Err(BadLength), "{bad:?}");
        }
        let chunked = Ok(Decode::Chunked(Chunk::Size));
        assert_eq!(framing_of(&[(te, "chunked")]), chunked);
        assert_eq!(framing_of(&[(te, "Chunked")]), chunked);
        assert_eq!(framing_of(&[(te, "chunked"), (cl, "3")]), chunked, "chunked wins");
        assert_eq!(framing_of(&[(te, "gzip, chunked")]), Err(Unsupported));
        assert_eq!(framing_of(&[(te, "chunked, gzip")]), Err(ChunkedNotLast));
        assert_eq!(framing_of(&[(te, "chunked"), (te, "chunked")]), Err(ChunkedTwice));
        assert_eq!(framing_of(&[(te, "chunked, chunked")]), Err(ChunkedTwice));
        assert_eq!(framing_of(&[(te, "xchunked")]), Err(Unsupported));
        assert_eq!(framing_of(&[(te, "chunked;q=1")]), Err(BadCoding));
        assert_eq!(framing_of(&[(te, "chunked,")]), Err(BadCoding));
        assert_eq!(framing_of(&[(te, "")]), Err(BadCoding));
        assert_eq!(framing_of(&[(te, "\"chunked\"")]), Err(BadCoding));
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Close"));
        assert!(lists(&h, &header::CONNECTION, "close"));
    }
}
