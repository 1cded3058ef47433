//! Adding and removing interface addresses with rtnetlink (RTM_NEWADDR /
//! RTM_DELADDR), without shelling out to `ip`.

use std::{io, net::IpAddr, os::fd::AsRawFd, os::fd::FromRawFd, os::fd::OwnedFd};

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new, valid descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// Sends one address request and waits for the kernel's acknowledgement;
/// returns the errno it reported (0 = done).
fn request(kind: u16, flags: u16, ifindex: u32, addr: IpAddr) -> io::Result<i32> {
    let (family, prefix, bytes, ifa_flags) = match addr {
        IpAddr::V4(a) => (libc::AF_INET as u8, 32u8, a.octets().to_vec(), 0),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, 128u8, a.octets().to_vec(), IFA_F_NODAD),
    };
    let mut msg = vec![0u8; 16];
    // struct ifaddrmsg: family, prefixlen, flags, scope (universe), index
    msg.extend_from_slice(&[family, prefix, ifa_flags, 0]);
    msg.extend_from_slice(&ifindex.to_ne_bytes());
    attr(&mut msg, IFA_LOCAL, &bytes);
    attr(&mut msg, IFA_ADDRESS, &bytes);
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
    msg[4..6].copy_from_slice(&kind.to_ne_bytes());
    msg[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes());

    let sock = socket()?;
    // SAFETY: a zeroed sockaddr_nl addressed to the kernel (pid 0).
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: valid buffer and address of the sizes passed.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    // SAFETY: valid buffer of the size passed.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    if n < 20 || u16::from_ne_bytes([buf[4], buf[5]]) != NLMSG_ERROR {
        return Err(io::Error::other("unexpected netlink answer"));
    }
    let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    Ok(-err)
}

/// Adds `addr` (/32 or /128) to interface `ifindex`. `Ok(false)` when the
/// address was already there (then it is not ours to remove later).
pub fn add_address(ifindex: u32, addr: IpAddr) -> io::Result<bool> {
    match request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, ifindex, addr)? {
        0 => Ok(true),
        libc::EEXIST => Ok(false),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Removes `addr` from interface `ifindex`; an address already gone is fine.
pub fn del_address(ifindex: u32, addr: IpAddr) -> io::Result<()> {
    match request(RTM_DELADDR, 0, ifindex, addr)? {
        0 | libc::EADDRNOTAVAIL | libc::ENODEV => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}
