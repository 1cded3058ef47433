//! PROXY protocol v1/v2 headers.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lb_user::l7::proxy_protocol::fuzz(data));
