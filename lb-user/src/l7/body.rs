//! The body type both HTTP sides and hyper's HTTP/2 server pass around.

use http_body_util::combinators::BoxBody;
use hyper::body::Bytes;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;
