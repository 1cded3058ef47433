//! xlb's own HTTP/1 code on httparse: the server side facing clients
//! (`server`), the client side facing backends (`client`), and the framing
//! both share (`framing`: lengths, chunked bodies, header maps), and the rules
//! httparse leaves to its caller (`strict`).

pub mod client;
pub mod framing;
pub mod fuzz;
pub mod server;
pub mod strict;
