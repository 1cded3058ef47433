//! Config files: refused with FILE:LINE reasons or accepted, never a panic;
//! every line an error names is in the file.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = lb_user::config::parse(std::path::Path::new("fuzz.toml"), text) {
        let lines = text.lines().count().max(1);
        for e in errors {
            assert!(
                e.line >= 1 && e.line <= lines + 1,
                "error on line {} of {lines}: {}",
                e.line,
                e.reason
            );
        }
    }
});
