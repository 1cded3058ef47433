//! Entry points for the coverage-guided fuzz targets (`fuzz/`, run by
//! `cargo xtask fuzz`): each takes arbitrary bytes through one parser and
//! panics if the parser breaks one of its own promises. Kept in the
//! library, not behind a cfg, so that it is built and linted with it.

use bytes::BytesMut;
use hyper::header;

use super::{
    client,
    framing::{self, Chunk, Decode},
    server,
};

/// The request-head parser: what it accepts is framed one way only (never
/// both Transfer-Encoding and Content-Length), with one valid length, and
/// a head it takes leaves the rest of the buffer untouched.
pub fn request_head(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let Ok(Some(req)) = server::parse_for_fuzz(&mut buf, 64 * 1024) else {
        return;
    };
    let h = req.headers();
    assert!(
        !(h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH)),
        "both framings passed on"
    );
    if let Some(cl) = h.get(header::CONTENT_LENGTH) {
        assert!(
            framing::digits(cl.as_bytes()).is_some(),
            "a length that is not one number"
        );
    }
    assert_eq!(
        h.get_all(header::HOST).iter().count(),
        usize::from(h.contains_key(header::HOST))
    );
    assert!(data.ends_with(&buf), "the bytes after the head are kept");
}

/// The response-head parser, for a GET and for a HEAD: a response it takes
/// has no Content-Length beside its decoded framing (but HEAD/304), and
/// its status is in 100-599.
pub fn response_head(data: &[u8]) {
    for head_method in [false, true] {
        let mut buf = BytesMut::from(data);
        let Ok(Some(resp)) = client::parse_for_fuzz(&mut buf, head_method) else {
            continue;
        };
        assert!((100..600).contains(&resp.status().as_u16()));
        if !head_method && resp.status() != 304 {
            assert!(!resp.headers().contains_key(header::CONTENT_LENGTH));
        }
        assert!(data.ends_with(&buf));
    }
}

/// The chunked decoder: fed all at once or one byte at a time, it decodes
/// the same body or fails the same way, and never yields more bytes than
/// it was given.
pub fn chunked(data: &[u8]) {
    let whole = decode(data, data.len().max(1));
    let bytewise = decode(data, 1);
    assert_eq!(whole, bytewise, "the result depends on how the bytes arrive");
    if let Some(Ok(body)) = &whole {
        assert!(body.len() <= data.len());
    }
}

/// The body decoded from `data` arriving in pieces of `step`: None if it
/// needs more, Some(Err) when refused.
fn decode(data: &[u8], step: usize) -> Option<Result<Vec<u8>, ()>> {
    let mut d = Decode::Chunked(Chunk::Size);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in data.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match d.next(&mut buf) {
                Ok(Some(b)) => out.extend_from_slice(&b),
                Ok(None) if d == Decode::Done => return Some(Ok(out)),
                Ok(None) => break,
                Err(_) => return Some(Err(())),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_points_take_valid_and_broken_input() {
        request_head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\nhiNEXT");
        request_head(b"GET / HTTP/1.1\r\n\r\n");
        response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
        chunked(b"3;a=b\r\nabc\r\n0\r\nT: 1\r\n\r\n");
        chunked(b"3\r\nab");
        chunked(b"zz\r\n");
    }
}
