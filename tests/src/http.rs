//! A small HTTP/1.1 client for black-box tests: keep-alive, raw headers in
//! and out, so tests see exactly what went over the wire.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::Netns;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// Every value of header `name` (case-insensitive).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// The backend's name (first body line of a lab HTTP server).
    pub fn backend(&self) -> &str {
        self.header("x-backend").unwrap_or("")
    }

    /// The request headers the backend saw (echoed in the body).
    pub fn seen(&self, name: &str) -> Vec<&str> {
        self.body
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }

    /// The value `Set-Cookie` gives cookie `name`, if any.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.all("set-cookie").into_iter().find_map(|c| {
            let (k, rest) = c.split_once('=')?;
            (k.trim() == name).then(|| rest.split(';').next().unwrap_or("").to_string())
        })
    }
}

/// What a client talks over: TCP, or TLS over it.
pub trait Stream: Read + Write + Send {}

impl<S: Read + Write + Send> Stream for S {}

/// One keep-alive connection.
pub struct Client {
    reader: BufReader<Box<dyn Stream>>,
}

impl Client {
    pub fn connect(ns: &Netns, addr: SocketAddr) -> io::Result<Client> {
        let stream = ns.enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))??;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Client::over(stream))
    }

    /// A client on an open connection (a TLS one, say).
    pub fn over(stream: impl Stream + 'static) -> Client {
        Client {
            reader: BufReader::new(Box::new(stream)),
        }
    }

    /// Sends a request (headers as `Name: value` lines) and reads the answer.
    pub fn request(&mut self, method: &str, path: &str, headers: &[&str], body: &str) -> io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !headers.iter().any(|h| h.to_ascii_lowercase().starts_with("host:")) {
            req += "Host: xlb.test\r\n";
        }
        for h in headers {
            req += h;
            req += "\r\n";
        }
        if !body.is_empty() || method == "POST" {
            req += &format!("Content-Length: {}\r\n", body.len());
        }
        req += "\r\n";
        req += body;
        self.send(&req)?;
        self.read_response(method == "HEAD")
    }

    /// Sends `bytes` as they are (a hand-made request) and reads the answer.
    pub fn raw(&mut self, bytes: &str) -> io::Result<Response> {
        self.send(bytes)?;
        self.read_response(false)
    }

    /// Sends `bytes` as they are, reading nothing.
    pub fn send(&mut self, bytes: &str) -> io::Result<()> {
        let w = self.reader.get_mut();
        w.write_all(bytes.as_bytes())?;
        w.flush()
    }

    /// Reads the next response (after [`Client::raw`] sent several).
    pub fn read_next(&mut self) -> io::Result<Response> {
        self.read_response(false)
    }

    pub fn get(&mut self, path: &str, headers: &[&str]) -> io::Result<Response> {
        self.request("GET", path, headers, "")
    }

    /// What arrives until the other side closes (within the read timeout).
    pub fn until_closed(&mut self) -> io::Result<String> {
        let mut rest = String::new();
        self.reader.read_to_string(&mut rest)?;
        Ok(rest)
    }

    fn read_response(&mut self, head: bool) -> io::Result<Response> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let header = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if !head {
            if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
                body = vec![0; len];
                self.reader.read_exact(&mut body)?;
            } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                loop {
                    let mut size = String::new();
                    self.reader.read_line(&mut size)?;
                    let n = usize::from_str_radix(size.trim(), 16).map_err(io::Error::other)?;
                    let mut chunk = vec![0; n + 2];
                    self.reader.read_exact(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
            }
        }
        Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// One request on a new connection.
pub fn get(ns: &Netns, addr: SocketAddr, path: &str, headers: &[&str]) -> io::Result<Response> {
    Client::connect(ns, addr)?.get(path, headers)
}
