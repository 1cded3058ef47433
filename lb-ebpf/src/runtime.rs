//! What every BPF object of this crate needs besides its programs: a panic
//! handler (never reached: the verifier refuses code that could panic) and
//! the license section the kernel checks GPL-only helpers against.

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
