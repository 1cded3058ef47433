//! Frame builders for BPF_PROG_TEST_RUN fixtures, with checksums computed
//! here (independently of the XDP program) so tests can verify rewrites.

use std::net::IpAddr;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// Internet checksum (RFC 1071) of `data` plus an initial sum.
pub fn checksum(initial: u32, data: &[u8]) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The pseudo-header sum of TCP, UDP and ICMPv6 checksums.
pub fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut b = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            b.extend_from_slice(&s.octets());
            b.extend_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            b.extend_from_slice(&s.octets());
            b.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed address families"),
    }
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    sum += u32::from(proto) + len as u32;
    sum
}

#[derive(Debug, Clone)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// Any other IP protocol, payload only.
    Other(u8),
}

/// A frame to build: Ethernet (optionally one 802.1Q tag), IPv4 or IPv6,
/// then TCP/UDP/raw with payload.
#[derive(Debug, Clone)]
pub struct Frame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 only: options appended to the header (multiple of 4 bytes).
    pub ip_options: Vec<u8>,
    /// IPv4 only: the flags+offset field (e.g. 0x2000 = more fragments).
    pub frag: u16,
    pub ttl: u8,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Frame {
        Frame {
            src_mac: [0x02, 0, 0, 0, 0, 1],
            dst_mac: [0x02, 0, 0, 0, 0, 2],
            vlan: None,
            src,
            dst,
            ip_options: Vec::new(),
            frag: 0,
            ttl: 64,
            l4,
            payload: Vec::new(),
        }
    }

    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Frame {
        Frame::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags,
                seq: 1000,
                ack: if flags & TCP_ACK != 0 { 2000 } else { 0 },
            },
        )
    }

    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Frame {
        Frame::new(src, dst, L4::Udp { sport, dport })
    }

    fn l4_bytes(&self) -> (u8, Vec<u8>) {
        let (proto, mut seg) = match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
            } => {
                let mut h = Vec::with_capacity(20);
                h.extend_from_slice(&sport.to_be_bytes());
                h.extend_from_slice(&dport.to_be_bytes());
                h.extend_from_slice(&seq.to_be_bytes());
                h.extend_from_slice(&ack.to_be_bytes());
                h.extend_from_slice(&[5 << 4, flags]);
                h.extend_from_slice(&64240u16.to_be_bytes());
                h.extend_from_slice(&[0, 0, 0, 0]);
                (6, h)
            }
            L4::Udp { sport, dport } => {
                let mut h = Vec::with_capacity(8);
                h.extend_from_slice(&sport.to_be_bytes());
                h.extend_from_slice(&dport.to_be_bytes());
                h.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h.extend_from_slice(&[0, 0]);
                (17, h)
            }
            L4::Other(p) => (p, Vec::new()),
        };
        seg.extend_from_slice(&self.payload);
        let ck = match self.l4 {
            L4::Tcp { .. } => Some(16),
            L4::Udp { .. } => Some(6),
            L4::Other(_) => None,
        };
        if let Some(off) = ck {
            let mut c = checksum(pseudo_sum(self.src, self.dst, proto, seg.len()), &seg);
            if proto == 17 && c == 0 {
                c = 0xffff;
            }
            seg[off..off + 2].copy_from_slice(&c.to_be_bytes());
        }
        (proto, seg)
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        let ethertype = if self.src.is_ipv4() { ETH_P_IP } else { ETH_P_IPV6 };
        if let Some(vid) = self.vlan {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        let (proto, seg) = self.l4_bytes();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                assert!(self.ip_options.len().is_multiple_of(4) && self.ip_options.len() <= 40);
                let hl = 20 + self.ip_options.len();
                let mut h = Vec::with_capacity(hl);
                h.push(0x40 | (hl / 4) as u8);
                h.push(0);
                h.extend_from_slice(&((hl + seg.len()) as u16).to_be_bytes());
                h.extend_from_slice(&0x1234u16.to_be_bytes());
                h.extend_from_slice(&self.frag.to_be_bytes());
                h.push(self.ttl);
                h.push(proto);
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&self.ip_options);
                let c = checksum(0, &h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(seg.len() as u16).to_be_bytes());
                f.push(proto);
                f.push(self.ttl);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => panic!("mixed address families"),
        }
        f.extend_from_slice(&seg);
        f
    }
}

/// An ARP request frame (who-has `target` tell `sender`).
pub fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// The IP packet (no Ethernet header) of `frame`, cut to its IP header and
/// the first 8 bytes of its L4 header: what an ICMP error quotes.
pub fn quoted(frame: &[u8]) -> Vec<u8> {
    let ip = &frame[14..];
    let hl = if ip[0] >> 4 == 4 {
        usize::from(ip[0] & 0x0f) * 4
    } else {
        40
    };
    ip[..hl + 8].to_vec()
}

/// An ICMP error (IPv4 ICMP or ICMPv6, by the addresses) from `src` to
/// `dst`, of `kind`/`code`, quoting `quote`; checksum computed here.
pub fn icmp_error(src: IpAddr, dst: IpAddr, kind: u8, code: u8, quote: &[u8]) -> Frame {
    let mut msg = vec![kind, code, 0, 0, 0, 0, 0x05, 0xdc];
    msg.extend_from_slice(quote);
    let (proto, initial) = if src.is_ipv4() {
        (1, 0)
    } else {
        (58, pseudo_sum(src, dst, 58, msg.len()))
    };
    let c = checksum(initial, &msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = Frame::new(src, dst, L4::Other(proto));
    f.payload = msg;
    f
}

/// An ICMP echo request (ping) from `src` to `dst` (IPv4).
pub fn echo_request(src: IpAddr, dst: IpAddr) -> Frame {
    let mut msg = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    let c = checksum(0, &msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = Frame::new(src, dst, L4::Other(1));
    f.payload = msg;
    f
}

/// A VRRPv3 advertisement (IP protocol 112) from `src` to `dst` (normally
/// 224.0.0.18) for virtual router `vrid` holding `vips`.
pub fn vrrp(src: IpAddr, dst: IpAddr, vrid: u8, vips: &[[u8; 4]]) -> Frame {
    let mut msg = vec![0x31, vrid, 100, vips.len() as u8, 0, 100, 0, 0];
    for v in vips {
        msg.extend_from_slice(v);
    }
    let c = checksum(pseudo_sum(src, dst, 112, msg.len()), &msg);
    msg[6..8].copy_from_slice(&c.to_be_bytes());
    let mut f = Frame::new(src, dst, L4::Other(112));
    f.payload = msg;
    f
}

/// An IPv6 neighbour solicitation (`kind` 135) or advertisement (136) for
/// `target`, from `src` to `dst`, with the link-layer address option.
pub fn neighbour(src: IpAddr, dst: IpAddr, kind: u8, target: std::net::Ipv6Addr, mac: [u8; 6]) -> Frame {
    let mut msg = vec![kind, 0, 0, 0, 0, 0, 0, 0];
    if kind == 136 {
        msg[4] = 0x20; // override
    }
    msg.extend_from_slice(&target.octets());
    msg.extend_from_slice(&[if kind == 135 { 1 } else { 2 }, 1]);
    msg.extend_from_slice(&mac);
    let c = checksum(pseudo_sum(src, dst, 58, msg.len()), &msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = Frame::new(src, dst, L4::Other(58));
    f.payload = msg;
    f
}

/// A gratuitous ARP (who-has `addr` tell `addr`), as keepalived sends for
/// a VIP it takes.
pub fn gratuitous_arp(addr: [u8; 4], mac: [u8; 6]) -> Vec<u8> {
    let mut f = arp_request(addr, addr);
    f[6..12].copy_from_slice(&mac);
    f[22..28].copy_from_slice(&mac);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3 example words sum to 0xddf2; checksum is its complement.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(0, &data), !0xddf2);
    }

    #[test]
    fn built_ipv4_tcp_frame_verifies() {
        let f = Frame::tcp(
            "198.18.2.1".parse().unwrap(),
            40000,
            "198.19.0.10".parse().unwrap(),
            80,
            TCP_SYN,
        )
        .build();
        assert_eq!(f.len(), 14 + 20 + 20);
        // A correct header checksums to zero.
        assert_eq!(checksum(0, &f[14..34]), 0);
        let seg = &f[34..];
        let ps = pseudo_sum(
            "198.18.2.1".parse().unwrap(),
            "198.19.0.10".parse().unwrap(),
            6,
            seg.len(),
        );
        assert_eq!(checksum(ps, seg), 0);
    }
}
