//! Response heads as backends send them.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lb_user::l7::http1::fuzz::response_head(data));
