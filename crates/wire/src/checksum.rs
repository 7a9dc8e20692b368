//! The Internet checksum (RFC 1071) and the IPv4 and IPv6 pseudo-headers
//! that UDP checksums cover (RFC 768, RFC 8200 section 8.1).
//!
//! A checksum is built in two steps: add up partial sums with [`sum`],
//! [`combine`] and the `pseudo_header*` functions, then complement the
//! folded total with [`finish`]. Checking a checksum is the same sum taken
//! over the data *including* the checksum field; it verifies when
//! [`fold`] gives `0xffff`.
//!
//! ```
//! use tunsec_wire::checksum;
//! // An IPv4 header whose checksum field holds the correct value, b861.
//! let header = [
//!     0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
//!     0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
//! ];
//! assert_eq!(checksum::fold(checksum::sum(&header)), 0xffff);
//! ```
//!
//! Partial sums are `u32` values of at most `0xffff`, so any number of them
//! up to 65,537 can also be added with `+` before [`fold`]. A partial sum
//! of an odd-length slice is padded with a zero byte at its end, so only the
//! last slice of a sequence may have an odd length.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Bytes summed between two folds of the 64-bit accumulator. Each step adds
/// a value below 2^32, so 2^30 bytes (2^28 steps) cannot overflow it. Even,
/// so that only the last block can have an odd length.
const BLOCK: usize = 1 << 30;

/// The one's complement sum of `data` taken as big-endian 16-bit words,
/// folded to 16 bits (the result is at most `0xffff`).
///
/// An odd trailing byte is padded with a zero byte.
//= https://www.rfc-editor.org/rfc/rfc1071#section-1
//# (1)  Adjacent octets to be checksummed are paired to form 16-bit
//#      integers, and the 1's complement sum of these 16-bit integers is
//#      formed.
pub fn sum(data: &[u8]) -> u32 {
    let mut total = 0u32;
    for block in data.chunks(BLOCK) {
        total = combine(total, u32::from(fold64(sum_native(block))));
    }
    //= https://www.rfc-editor.org/rfc/rfc1071#section-2
    //# (B)  Byte Order Independence
    //#
    //#      The sum of 16-bit integers can be computed in either byte order.
    //
    // `sum_native` added words in the machine's byte order; `from_be` turns
    // that into the network-order sum (a swap on little-endian machines).
    u32::from(u16::from_be(fold(total)))
}

/// Sums `data` as native-endian 32-bit words into a 64-bit accumulator,
/// 8 bytes per step. `data` is at most [`BLOCK`] bytes long.
fn sum_native(data: &[u8]) -> u64 {
    //= https://www.rfc-editor.org/rfc/rfc1071#section-2
    //# (C)  Parallel Summation
    //#
    //#      On machines that have word-sizes that are multiples of 16 bits,
    //#      it is possible to develop even more efficient implementations.
    //#      Because addition is associative, we do not have to sum the
    //#      integers in the order they appear in the message.  Instead we
    //#      can add them in "parallel" by exploiting the larger word size.
    let mut acc = 0u64;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        acc += u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
        acc += u64::from(u32::from_ne_bytes([c[4], c[5], c[6], c[7]]));
    }
    let mut rest = chunks.remainder();
    if let [a, b, c, d, tail @ ..] = rest {
        acc += u64::from(u32::from_ne_bytes([*a, *b, *c, *d]));
        rest = tail;
    }
    if let [a, b, tail @ ..] = rest {
        acc += u64::from(u16::from_ne_bytes([*a, *b]));
        rest = tail;
    }
    if let [a] = rest {
        // The odd byte is the first byte of a word whose second byte is 0.
        acc += u64::from(u16::from_ne_bytes([*a, 0]));
    }
    acc
}

/// Folds a 64-bit one's complement accumulator into 16 bits.
const fn fold64(mut acc: u64) -> u16 {
    // 2^16 = 1 (mod 0xffff): adding the high part to the low part keeps the
    // value the same in one's complement arithmetic.
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Adds two partial sums (end-around carry). The result is at most
/// `0xffff`.
pub const fn combine(a: u32, b: u32) -> u32 {
    fold64(a as u64 + b as u64) as u32
}

/// Folds the carries of a partial sum into 16 bits, without complementing.
///
/// A received packet's checksum verifies when the fold of the sum over the
/// covered bytes, checksum field included, is `0xffff`.
//= https://www.rfc-editor.org/rfc/rfc1071#section-1
//# (3)  To check a checksum, the 1's complement sum is computed over the
//#      same set of octets, including the checksum field.  If the result
//#      is all 1 bits (-0 in 1's complement arithmetic), the check
//#      succeeds.
pub const fn fold(sum: u32) -> u16 {
    fold64(sum as u64)
}

/// The checksum to put in a packet: the complement of the folded sum.
//= https://www.rfc-editor.org/rfc/rfc1071#section-1
//# (2)  To generate a checksum, the checksum field itself is cleared,
//#      the 16-bit 1's complement sum is computed over the octets
//#      concerned, and the 1's complement of this sum is placed in the
//#      checksum field.
pub const fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// The Internet checksum of `data`: `finish(sum(data))`.
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(data))
}

/// The checksum of `data` (its checksum field zero) after the partial sum
/// `partial` of a pseudo-header: `finish(combine(partial, sum(data)))`.
pub fn checksum_after(partial: u32, data: &[u8]) -> u16 {
    finish(combine(partial, sum(data)))
}

/// Whether `data`, its checksum field included, verifies after the partial
/// sum `partial` of a pseudo-header (0 for none): whether
/// `fold(combine(partial, sum(data)))` is `0xffff`.
pub fn verifies(partial: u32, data: &[u8]) -> bool {
    fold(combine(partial, sum(data))) == 0xffff
}

/// The partial sum of an IPv4 pseudo-header.
///
/// `length` is the length of the upper-layer packet (for UDP, the UDP length
/// field). It is summed as a 32-bit value, which equals the 16-bit field of
/// the pseudo-header whenever it fits in 16 bits.
//= https://www.rfc-editor.org/rfc/rfc768
//# The pseudo  header  conceptually prefixed to the UDP header contains the
//# source  address,  the destination  address,  the protocol,  and the  UDP
//# length.
//
//                   0      7 8     15 16    23 24    31
//                  +--------+--------+--------+--------+
//                  |          source address           |
//                  +--------+--------+--------+--------+
//                  |        destination address        |
//                  +--------+--------+--------+--------+
//                  |  zero  |protocol|   UDP length    |
//                  +--------+--------+--------+--------+
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u32) -> u32 {
    let words = |a: Ipv4Addr| {
        let o = a.octets();
        u32::from(u16::from_be_bytes([o[0], o[1]])) + u32::from(u16::from_be_bytes([o[2], o[3]]))
    };
    // Each term is below 2^17, so the sum cannot overflow.
    let total = words(src) + words(dst) + u32::from(protocol) + (length >> 16) + (length & 0xffff);
    combine(total, 0)
}

/// The partial sum of an IPv6 pseudo-header.
///
/// `length` is the upper-layer packet length; for UDP it is the UDP length
/// field.
//= https://www.rfc-editor.org/rfc/rfc8200#section-8.1
//# Any transport or other upper-layer protocol that includes the
//# addresses from the IP header in its checksum computation must be
//# modified for use over IPv6, to include the 128-bit IPv6 addresses
//# instead of 32-bit IPv4 addresses.
//
//    +                         Source Address                        +
//    +                      Destination Address                      +
//    |                   Upper-Layer Packet Length                   |
//    |                      zero                     |  Next Header  |
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, protocol: u8, length: u32) -> u32 {
    // 16 words below 2^16 and three small terms: no overflow.
    let words = |a: Ipv6Addr| a.segments().iter().map(|&w| u32::from(w)).sum::<u32>();
    let total = words(src) + words(dst) + u32::from(protocol) + (length >> 16) + (length & 0xffff);
    combine(total, 0)
}

/// The partial sum of the pseudo-header for `src` and `dst`, or `None` if
/// one is an IPv4 and the other an IPv6 address.
pub fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, length: u32) -> Option<u32> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some(pseudo_header_v4(s, d, protocol, length)),
        (IpAddr::V6(s), IpAddr::V6(d)) => Some(pseudo_header_v6(s, d, protocol, length)),
        _ => None,
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;

    /// The textbook one-word-at-a-time sum, for cross-checking.
    fn reference_sum(data: &[u8]) -> u32 {
        let mut acc = 0u64;
        for pair in data.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |&b| u64::from(b));
            acc += hi | lo;
        }
        u32::from(fold64(acc))
    }

    // 45 00 00 73 00 00 40 00 40 11 b8 61 c0 a8 00 01 c0 a8 00 c7: an IPv4
    // header (UDP, 192.168.0.1 -> 192.168.0.199) whose checksum is b861.
    static IPV4_HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn ipv4_header_verifies() {
        assert_eq!(fold(sum(&IPV4_HEADER)), 0xffff);
        let mut header = IPV4_HEADER;
        header[10] = 0;
        header[11] = 0;
        assert_eq!(checksum(&header), 0xb861);
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&data), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0xab]), 0xab00);
        assert_eq!(sum(&[0x01, 0x02, 0x03]), 0x0102 + 0x0300);
        assert_eq!(sum(&[]), 0);
    }

    #[test]
    fn end_around_carry() {
        // ffff + 0001 = 1 0000 -> 0001.
        assert_eq!(sum(&[0xff, 0xff, 0x00, 0x01]), 0x0001);
        assert_eq!(combine(0xffff, 0xffff), 0xffff);
        assert_eq!(combine(0xffff, 1), 1);
        assert_eq!(fold(0x0001_fffe), 0xffff);
    }

    #[test]
    fn pseudo_header_v4_by_hand() {
        // 192.168.0.1, 192.168.0.199, UDP, length 0x5f:
        // c0a8 + 0001 + c0a8 + 00c7 + 0011 + 005f = 0x1_8288 -> 0x8289.
        let s = pseudo_header_v4(
            Ipv4Addr::new(192, 168, 0, 1),
            Ipv4Addr::new(192, 168, 0, 199),
            17,
            0x5f,
        );
        assert_eq!(s, 0x8289);
        let bytes = [
            0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7, 0x00, 0x11, 0x00, 0x5f,
        ];
        assert_eq!(s, sum(&bytes));
    }

    #[test]
    fn pseudo_header_v6_matches_bytes() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "fe80::1234:5678:9abc:def0".parse().unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src.octets());
        bytes.extend_from_slice(&dst.octets());
        bytes.extend_from_slice(&0x0001_0203u32.to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 17]);
        assert_eq!(pseudo_header_v6(src, dst, 17, 0x0001_0203), sum(&bytes));
        assert_eq!(
            pseudo_header(src.into(), dst.into(), 17, 0x0001_0203),
            Some(sum(&bytes))
        );
    }

    #[test]
    fn pseudo_header_mixed_families() {
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(pseudo_header(v4, v6, 17, 8), None);
        assert_eq!(pseudo_header(v6, v4, 17, 8), None);
    }

    proptest! {
        #[test]
        fn sum_matches_reference(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            prop_assert_eq!(sum(&data), reference_sum(&data));
        }

        #[test]
        fn sum_of_parts(data in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..150) {
            // Any even cut point gives the same total.
            let cut = (cut * 2).min(data.len() & !1);
            let (a, b) = data.split_at(cut);
            prop_assert_eq!(fold(combine(sum(a), sum(b))), fold(sum(&data)));
        }

        #[test]
        fn filled_checksum_verifies(mut data in proptest::collection::vec(any::<u8>(), 2..300)) {
            data[0] = 0;
            data[1] = 0;
            let c = checksum(&data);
            data[..2].copy_from_slice(&c.to_be_bytes());
            prop_assert_eq!(fold(sum(&data)), 0xffff);
        }

        #[test]
        fn pseudo_header_v4_matches_bytes(s: [u8; 4], d: [u8; 4], proto: u8, len: u16) {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&s);
            bytes.extend_from_slice(&d);
            bytes.extend_from_slice(&[0, proto]);
            bytes.extend_from_slice(&len.to_be_bytes());
            prop_assert_eq!(
                pseudo_header_v4(s.into(), d.into(), proto, u32::from(len)),
                sum(&bytes)
            );
        }
    }
}
