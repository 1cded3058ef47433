//! Chunked bodies, whole and byte by byte.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lb_user::l7::http1::fuzz::chunked(data));
