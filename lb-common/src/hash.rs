//! The packet hash that picks a Maglev slot. Both the XDP program and user
//! space use it (user space to predict and report placement), and every xlb
//! node computes the same value for the same client: that is what keeps
//! affinity across failover and ECMP without shared state.
//!
//! MurmurHash3 (x86, 32-bit) over 32-bit little-endian words with a fixed seed.

const SEED: u32 = 0x786c_6221; // "xlb!"

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(h: u32, len_bytes: u32) -> u32 {
    fmix32(h ^ len_bytes)
}

/// MurmurHash3's finaliser: every input bit moves every output bit.
#[inline(always)]
pub fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]])
}

/// Hash of the client address only (`balance = "source"`). IPv4 addresses
/// sit in the first 4 bytes with the rest zero, as in the map keys.
#[inline(always)]
pub fn source_hash(src: &[u8; 16]) -> u32 {
    let mut h = SEED;
    h = mix(h, word(src, 0));
    h = mix(h, word(src, 1));
    h = mix(h, word(src, 2));
    h = mix(h, word(src, 3));
    finish(h, 16)
}

/// Hash of the whole 5-tuple (`balance = "5tuple"`); ports in network order
/// as they are on the wire.
#[inline(always)]
pub fn five_tuple_hash(src: &[u8; 16], dst: &[u8; 16], sport_be: u16, dport_be: u16, proto: u8) -> u32 {
    let mut h = SEED;
    h = mix(h, word(src, 0));
    h = mix(h, word(src, 1));
    h = mix(h, word(src, 2));
    h = mix(h, word(src, 3));
    h = mix(h, word(dst, 0));
    h = mix(h, word(dst, 1));
    h = mix(h, word(dst, 2));
    h = mix(h, word(dst, 3));
    h = mix(h, (u32::from(sport_be) << 16) | u32::from(dport_be));
    h = mix(h, u32::from(proto));
    finish(h, 40)
}

const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// Address words `i` and `i + 1` as one 64-bit word.
#[inline(always)]
fn pair(b: &[u8; 16], i: usize) -> u64 {
    u64::from(word(b, i)) | (u64::from(word(b, i + 1)) << 32)
}

#[inline(always)]
fn fold(h: u64, w: u64) -> u64 {
    let h = (h ^ w).wrapping_mul(K);
    h ^ (h >> 32)
}

/// Hash of a 5-tuple that places a full-NAT flow (its home port). Every
/// packet of a nat flow computes it, so it folds 64-bit words with
/// multiplies: Murmur's 32-bit rotations cost BPF a mask each. Node-local
/// (it picks a slot, not a backend), so not pinned like the two above.
#[inline(always)]
pub fn flow_hash(src: &[u8; 16], dst: &[u8; 16], sport_be: u16, dport_be: u16, proto: u8) -> u32 {
    let mut h = (u64::from(SEED) << 32) ^ ((u64::from(sport_be) << 16 | u64::from(dport_be)) << 8) ^ u64::from(proto);
    h = fold(h, pair(src, 0));
    h = fold(h, pair(src, 2));
    h = fold(h, pair(dst, 0));
    h = fold(h, pair(dst, 2));
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (h ^ (h >> 32)) as u32
}

/// The home port (offset in a snat region) of a flow whose hash is `h`: the
/// hash scaled to `NAT_PORTS` by a multiply and a shift, as every packet of
/// a nat flow computes it (a division costs more than the rest of the
/// arithmetic together). It depends on the hash's high bits.
#[inline(always)]
pub fn nat_home(h: u32) -> u32 {
    ((u64::from(h) * u64::from(crate::NAT_PORTS)) >> 32) as u32
}

/// Which of a snat pool's `count` addresses a flow whose hash is `h` uses:
/// the hash's low half on top, scaled the same way, so that it does not
/// follow the home port.
#[inline(always)]
pub fn pool_index(h: u32, count: u32) -> u32 {
    ((u64::from(h.rotate_left(16)) * u64::from(count)) >> 32) as u32
}

/// Home slot of a destination (address, port, protocol) in the `SERVICES`
/// table whose seed is `seed`. User space places entries by it, the XDP
/// program finds them by it; node-local like `flow_hash`.
#[inline(always)]
pub fn service_home(addr: &[u8; 16], port_be: u16, proto: u8, seed: u32) -> u32 {
    // Port and protocol get a fold of their own: XORed into the address
    // word, some (address, port) pairs would collide under every seed.
    let h = fold(u64::from(seed) << 32, u64::from(port_be) << 8 | u64::from(proto));
    let h = fold(fold(h, pair(addr, 0)), pair(addr, 2));
    h as u32 & (crate::SVC_SLOTS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_home_and_pool_index_stay_in_range_and_spread() {
        let mut homes = std::collections::HashSet::new();
        let mut pools = [0u32; 4];
        for k in 0..100_000u32 {
            let sport = 40000 + (k >> 16) as u16;
            let h = flow_hash(
                &v4([198, 18, (k >> 8) as u8, k as u8]),
                &v4([198, 19, 0, 1]),
                sport.to_be(),
                80u16.to_be(),
                6,
            );
            let home = nat_home(h);
            assert!(home < crate::NAT_PORTS);
            homes.insert(home);
            pools[pool_index(h, 4) as usize] += 1;
        }
        assert_eq!(nat_home(u32::MAX), crate::NAT_PORTS - 1);
        assert_eq!(pool_index(u32::MAX, 16), 15);
        // Uniform: 100,000 flows leave e^(-100000/31744) = 4.3% of the
        // ports unused, 30,380 used.
        assert!(homes.len() > 29_800, "{} homes", homes.len());
        for p in pools {
            assert!((23_000..27_000).contains(&p), "pool shares {pools:?}");
        }
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0; 16];
        b[..4].copy_from_slice(&a);
        b
    }

    /// Pinned values, computed with the reference MurmurHash3 (Python mmh3)
    /// over the same bytes: changing the hash moves every client on every node.
    #[test]
    fn golden_values() {
        assert_eq!(source_hash(&v4([198, 18, 2, 1])), 0xc7a6_fd38);
        assert_eq!(source_hash(&v4([198, 18, 2, 2])), 0x4ded_ed4c);
        assert_eq!(
            five_tuple_hash(
                &v4([198, 18, 2, 1]),
                &v4([198, 19, 0, 10]),
                40000u16.to_be(),
                80u16.to_be(),
                6
            ),
            0xd722_e9f4
        );
    }

    #[test]
    fn spreads_over_slots() {
        let mut seen = [0u32; 16];
        for i in 0..1600u32 {
            let a = i.to_be_bytes();
            seen[(source_hash(&v4([198, 18, a[2], a[3]])) % 16) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (60..=140).contains(&n)), "{seen:?}");
    }

    /// Clients that differ in one address bit or in the port land on
    /// evenly spread home ports (the full-NAT port range's size).
    #[test]
    fn flow_hash_spreads_over_ports() {
        let (slots, n) = (31_744u32, 64_000u32);
        let mut seen = vec![0u8; slots as usize];
        for i in 0..n {
            let a = i.to_be_bytes();
            let src = v4([198, 18, a[2], a[3]]);
            let port = (1024 + (i % 7) as u16).to_be();
            let h = flow_hash(&src, &v4([198, 19, 0, 10]), port, 80u16.to_be(), 6);
            let s = &mut seen[(h % slots) as usize];
            *s = s.saturating_add(1);
        }
        // About 2 per slot: a uniform spread leaves e^-2 (13.5%) empty.
        let empty = seen.iter().filter(|&&c| c == 0).count() as f64 / f64::from(slots);
        assert!((0.12..0.15).contains(&empty), "{empty}");
        assert!(seen.iter().all(|&c| c < 16), "a slot took {:?}", seen.iter().max());
    }

    /// VIPs of one subnet on a few ports spread over the service table.
    #[test]
    fn service_home_spreads() {
        let mut seen = vec![0u8; crate::SVC_SLOTS as usize];
        for i in 0..1024u32 {
            let a = i.to_be_bytes();
            let port = [80u16, 443, 8080, 53][(i % 4) as usize].to_be();
            let s = &mut seen[service_home(&v4([198, 19, a[2], a[3]]), port, 6, 7) as usize];
            *s += 1;
        }
        assert!(seen.iter().all(|&c| c <= 3), "a slot took {:?}", seen.iter().max());
    }
}
