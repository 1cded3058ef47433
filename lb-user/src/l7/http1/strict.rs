//! The rules of RFC 9112 / RFC 9110 that httparse leaves to its caller:
//! line ends, the request line's target and version, Host. Whatever they
//! refuse would let two parsers disagree on where a message ends or whom
//! it is for (request smuggling), so xlb refuses it rather than guess.

use hyper::{Method, StatusCode, Uri};

/// Every line of a head ends in CRLF: httparse also takes a bare LF.
pub fn line_ends(head: &[u8]) -> Result<(), &'static str> {
    match memchr::memchr_iter(b'\n', head).any(|lf| lf == 0 || head[lf - 1] != b'\r') {
        true => Err("a line ending in a bare LF"),
        false => Ok(()),
    }
}

/// The answer to a request line httparse refused for its version: 505 for
/// a well-formed `HTTP/x.y` other than 1.0 and 1.1, else 400.
pub fn version_status(head: &[u8]) -> StatusCode {
    let line = head.split(|b| *b == b'\n').next().unwrap_or(b"");
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let version = line.rsplit(|b| *b == b' ').next().unwrap_or(b"");
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit() => {
            StatusCode::HTTP_VERSION_NOT_SUPPORTED
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

/// The forms a request target takes (RFC 9112 3.2).
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// `/path?query`
    Origin,
    /// `http://authority/path?query`: the authority replaces Host.
    Absolute(String),
    /// `*` (OPTIONS only)
    Asterisk,
}

/// Checks a request target's bytes and form.
pub fn target(method: &Method, raw: &[u8], uri: &Uri) -> Result<Target, (StatusCode, &'static str)> {
    let bad = |why| (StatusCode::BAD_REQUEST, why);
    // Visible ASCII only: no control bytes, no raw UTF-8, no fragment.
    if raw.iter().any(|b| !(0x21..0x7f).contains(b) || *b == b'#') {
        return Err(bad("a request target with a byte it may not have"));
    }
    if method == Method::CONNECT {
        return Err((StatusCode::NOT_IMPLEMENTED, "CONNECT is not supported"));
    }
    match raw {
        [b'/', ..] => Ok(Target::Origin),
        b"*" if method == Method::OPTIONS => Ok(Target::Asterisk),
        _ => {
            let scheme_ok = uri
                .scheme_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"));
            let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
            if !scheme_ok || authority.contains('@') || !host(authority.as_bytes()) || authority.is_empty() {
                return Err(bad("a request target that is not origin- or absolute-form"));
            }
            Ok(Target::Absolute(authority.to_string()))
        }
    }
}

/// A Host value: `uri-host [ ":" port ]`, the host a reg-name or an IP
/// literal in brackets (RFC 9110 7.2, RFC 3986 3.2.2); empty is allowed.
pub fn host(v: &[u8]) -> bool {
    let reg_name = |b: &u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(b);
    let (name, port) = match v {
        [b'[', rest @ ..] => {
            let Some(close) = rest.iter().position(|b| *b == b']') else {
                return false;
            };
            let literal = &rest[..close];
            if literal.is_empty() || !literal.iter().all(|b| b.is_ascii_hexdigit() || b":.vV".contains(b)) {
                return false;
            }
            match &rest[close + 1..] {
                [] => return true,
                [b':', port @ ..] => (&b""[..], port),
                _ => return false,
            }
        }
        _ => match v.iter().position(|b| *b == b':') {
            Some(colon) => (&v[..colon], &v[colon + 1..]),
            None => (v, &b""[..]),
        },
    };
    name.iter().all(reg_name) && port.iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_line_feeds() {
        assert!(line_ends(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_ok());
        assert!(line_ends(b"GET / HTTP/1.1\nHost: x\r\n\r\n").is_err());
        assert!(line_ends(b"GET / HTTP/1.1\r\nHost: x\r\n\n").is_err());
        assert!(line_ends(b"\nGET / HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn versions() {
        assert_eq!(
            version_status(b"GET / HTTP/2.0\r\n"),
            StatusCode::HTTP_VERSION_NOT_SUPPORTED
        );
        assert_eq!(
            version_status(b"GET / HTTP/1.2\r\n"),
            StatusCode::HTTP_VERSION_NOT_SUPPORTED
        );
        assert_eq!(version_status(b"GET / http/1.1\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(version_status(b"GET / HTTP/1.10\r\n"), StatusCode::BAD_REQUEST);
        assert_eq!(version_status(b"GET /\r\n"), StatusCode::BAD_REQUEST);
    }

    fn form(method: Method, raw: &str) -> Result<Target, StatusCode> {
        let uri: Uri = raw.parse().unwrap_or_default();
        target(&method, raw.as_bytes(), &uri).map_err(|(s, _)| s)
    }

    #[test]
    fn targets() {
        assert_eq!(form(Method::GET, "/a?b=c"), Ok(Target::Origin));
        assert_eq!(form(Method::OPTIONS, "*"), Ok(Target::Asterisk));
        assert_eq!(form(Method::GET, "*"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(
            form(Method::GET, "http://Example.com:8080/x"),
            Ok(Target::Absolute("Example.com:8080".into()))
        );
        assert_eq!(form(Method::GET, "http://u@example.com/"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(form(Method::GET, "ftp://example.com/"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(form(Method::GET, "example.com"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(form(Method::GET, "/a#frag"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(form(Method::GET, "/\u{e9}"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(
            form(Method::CONNECT, "example.com:443"),
            Err(StatusCode::NOT_IMPLEMENTED)
        );
    }

    #[test]
    fn hosts() {
        for ok in [
            "example.com",
            "example.com:80",
            "198.18.0.1",
            "[::1]",
            "[::1]:8080",
            "",
            "a-b.c_d~:",
        ] {
            assert!(host(ok.as_bytes()), "{ok:?}");
        }
        for bad in [
            "exa mple.com",
            "a/b",
            "a@b",
            "a:b",
            "[::1",
            "[::1]x",
            "a?b",
            "a#b",
            "\"a\"",
        ] {
            assert!(!host(bad.as_bytes()), "{bad:?}");
        }
    }
}
