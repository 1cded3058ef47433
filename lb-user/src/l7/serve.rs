//! Serving one client connection: HTTP/1 by xlb's own server
//! ([`super::downstream`]), h2c (prior knowledge) by hyper's HTTP/2 server.

use std::convert::Infallible;

use http_body_util::BodyExt;
use hyper::{server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpStream, time::timeout};

use super::{
    admission::Accepted,
    body::{Body, BoxError},
    exchange::handle,
    http1::server as downstream,
};

/// Serves one client connection, HTTP/1.1 or h2c.
pub async fn serve(stream: TcpStream, conn: Accepted) {
    let t_first = conn.current.read().expect("service lock").cfg.http.timeout_http_request;
    // h2c with prior knowledge opens with "PRI * HTTP/2.0", a method no
    // HTTP/1 request uses.
    let mut first = [0u8; 4];
    let http1 = match timeout(t_first, stream.peek(&mut first)).await {
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
        Ok(Ok(n)) => !b"PRI ".starts_with(&first[..n]),
    };
    if http1 {
        downstream::serve(stream, conn).await;
    } else {
        // Boxed: its state is larger than HTTP/1's and would otherwise be
        // part of every connection's task.
        Box::pin(serve_h2(stream, conn)).await;
    }
}

async fn serve_h2(stream: TcpStream, conn: Accepted) {
    // The slot is held until the connection ends.
    let Accepted {
        peer,
        current,
        states,
        slot: _slot,
    } = conn;
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let svc = current.read().expect("service lock").clone();
        let req = req.map(boxed);
        let states = states.clone();
        async move { Ok::<_, Infallible>(handle(svc, states, peer, req).await) }
    });
    let _ = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

fn boxed(body: hyper::body::Incoming) -> Body {
    body.map_err(|e| -> BoxError { Box::new(e) }).boxed()
}
