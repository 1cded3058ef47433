//! A two-instruction XDP_PASS program attached natively to the switch-side
//! veth peers. Native XDP_TX/redirect out of a veth is delivered only when
//! the peer veth has an XDP program (see docs/building.md); a real NIC
//! needs nothing of the kind. Loaded with raw bpf(2) calls so the lab does not
//! depend on the eBPF toolchain.

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_PASS: i32 = 2;

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<OwnedFd> {
    // SAFETY: attr is a zero-padded bpf_attr of the size we pass.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn put(attr: &mut [u8; 128], off: usize, bytes: &[u8]) {
    attr[off..off + bytes.len()].copy_from_slice(bytes);
}

/// Attaches XDP_PASS in native mode to `ifindex` of the calling thread's
/// namespace; detached when the returned link fd is dropped.
pub fn attach(ifindex: u32) -> io::Result<OwnedFd> {
    // mov64 r0, XDP_PASS; exit
    let mut insns = [0u8; 16];
    insns[0] = 0xb7;
    insns[4..8].copy_from_slice(&XDP_PASS.to_le_bytes());
    insns[8] = 0x95;
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &BPF_PROG_TYPE_XDP.to_ne_bytes());
    put(&mut attr, 4, &2u32.to_ne_bytes());
    put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 48, b"lab_pass");
    put(&mut attr, 68, &BPF_XDP.to_ne_bytes());
    let prog = bpf(BPF_PROG_LOAD, &mut attr)?;

    let mut attr = [0u8; 128];
    put(
        &mut attr,
        0,
        &(std::os::fd::AsRawFd::as_raw_fd(&prog) as u32).to_ne_bytes(),
    );
    put(&mut attr, 4, &ifindex.to_ne_bytes());
    put(&mut attr, 8, &BPF_XDP.to_ne_bytes());
    put(&mut attr, 12, &XDP_FLAGS_DRV_MODE.to_ne_bytes());
    bpf(BPF_LINK_CREATE, &mut attr)
}
