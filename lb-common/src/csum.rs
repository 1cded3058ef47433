//! Incremental Internet checksum updates (RFC 1624, eqn. 3:
//! HC' = ~(~HC + ~m + m')), used by the XDP program when it rewrites
//! addresses and ports, and tested here on the host.
//!
//! Words are taken as loaded from the packet in native byte order and the
//! result is stored the same way: the one's-complement sum does not depend
//! on byte order (RFC 1071, 2(B)), and this keeps the XDP code free of byte
//! swaps and array copies.

/// Adds the difference of replacing 16-bit word `old` by `new`.
#[inline(always)]
pub fn diff16(sum: u32, old: u16, new: u16) -> u32 {
    sum + u32::from(!old) + u32::from(new)
}

/// Adds the difference of replacing 32-bit word `old` by `new` (two words).
#[inline(always)]
pub fn diff32(sum: u32, old: u32, new: u32) -> u32 {
    diff16(
        diff16(sum, old as u16, new as u16),
        (old >> 16) as u16,
        (new >> 16) as u16,
    )
}

/// Starts an update of the checksum `check` as stored in the packet.
#[inline(always)]
pub fn start(check: u16) -> u32 {
    u32::from(!check)
}

/// Folds the running sum into the checksum to store.
#[inline(always)]
pub fn finish(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full checksum over native-order words, as the packet would carry it.
    fn full(data: &[u8]) -> u16 {
        let mut sum: u32 = data
            .chunks(2)
            .map(|c| u32::from(u16::from_ne_bytes([c[0], c[1]])))
            .sum();
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        !(sum as u16)
    }

    fn word(b: &[u8]) -> u32 {
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn incremental_equals_full_recompute() {
        // An IPv4 header with its checksum field zeroed.
        let mut h = [
            0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 198, 18, 2, 1, 198, 19, 0, 10,
        ];
        let c = full(&h);
        h[10..12].copy_from_slice(&c.to_ne_bytes());
        let (new_s, new_d) = ([198, 18, 0, 2], [198, 18, 1, 3]);
        let mut sum = start(u16::from_ne_bytes([h[10], h[11]]));
        sum = diff32(sum, word(&h[12..16]), word(&new_s));
        sum = diff32(sum, word(&h[16..20]), word(&new_d));
        let inc = finish(sum);
        h[12..16].copy_from_slice(&new_s);
        h[16..20].copy_from_slice(&new_d);
        h[10..12].copy_from_slice(&inc.to_ne_bytes());
        // Independent check, RFC 1071 in network order: a valid header sums to 0xffff.
        let s: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
        assert_eq!((s & 0xffff) + (s >> 16), 0xffff);
        h[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(inc, full(&h));
    }
}
