//! The UDP header (RFC 768), with its checksum over the IPv4 or IPv6
//! pseudo-header (RFC 8200 section 8.1).
//!
//! ```text
//!  0      7 8     15 16    23 24    31
//! +--------+--------+--------+--------+
//! |     Source      |   Destination   |
//! |      Port       |      Port       |
//! +--------+--------+--------+--------+
//! |                 |                 |
//! |     Length      |    Checksum     |
//! +--------+--------+--------+--------+
//! |
//! |          data octets ...
//! +---------------- ...
//! ```
//!
//! [`Packet::payload`] ends where the Length field says, not at the end of
//! the buffer. [`Repr::parse`] does not look at the checksum, because it
//! needs the addresses from the IP header: call [`Packet::verify_checksum`].
//! Likewise [`Repr::emit`] writes a zero checksum; fill it in with
//! [`Packet::fill_checksum`] once the payload is in place.

use std::net::IpAddr;

use crate::{Error, Result, checksum};

mod field {
    use crate::Field;
    pub(crate) const SRC_PORT: Field = 0..2;
    pub(crate) const DST_PORT: Field = 2..4;
    pub(crate) const LENGTH: Field = 4..6;
    pub(crate) const CHECKSUM: Field = 6..8;
}

/// Length of the UDP header.
pub const HEADER_LEN: usize = field::CHECKSUM.end;

/// The IP protocol number of UDP, as the pseudo-header carries it.
const PROTOCOL: u8 = 17;

crate::view::packet_view! {
    /// A read/write view of a UDP datagram.
    fields {
        /// The Source Port (0 when unused).
        pub src_port, set_src_port: u16 = field::SRC_PORT;
        /// The Destination Port.
        pub dst_port, set_dst_port: u16 = field::DST_PORT;
        /// The Length field: header and data, in bytes.
        pub len, set_len: u16 = field::LENGTH;
        /// The Checksum field.
        pub checksum, set_checksum: u16 = field::CHECKSUM;
    }
    /// Checks that the buffer holds the header and that
    /// `8 <= Length <= buffer length`.
    ///
    /// Returns [`Error::Truncated`] when the buffer is shorter than the
    /// header or than Length, and [`Error::BadLength`] when Length is below
    /// 8 (this includes the zero Length of an RFC 2675 jumbogram, which is
    /// not supported).
    //= https://www.rfc-editor.org/rfc/rfc768
    //# Length  is the length  in octets  of this user datagram  including  this
    //# header  and the data.   (This  means  the minimum value of the length is
    //# eight.)
    check_len: HEADER_LEN, |p| usize::from(p.len());
    slices {
        /// The data after the header, up to Length.
        pub payload, payload_mut = |p| HEADER_LEN..usize::from(p.len());
    }
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Whether the datagram carries no data (Length is 8).
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) == HEADER_LEN
    }

    /// Whether the checksum verifies for a datagram sent from `src` to
    /// `dst` (the addresses of the enclosing IP header).
    ///
    /// A zero checksum means "no checksum" over IPv4 and is accepted; over
    /// IPv6 it is rejected. Addresses of different families never verify.
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        if self.checksum() == 0 {
            //= https://www.rfc-editor.org/rfc/rfc768
            //# An all zero  transmitted
            //# checksum  value means that the transmitter  generated  no checksum  (for
            //# debugging or for higher level protocols that don't care).
            //
            //= https://www.rfc-editor.org/rfc/rfc8200#section-8.1
            //# IPv6 receivers must discard UDP packets
            //# containing a zero checksum and should log the error.
            //
            // RFC 6935 and RFC 6936 relax this for tunnel protocols on
            // explicitly configured ports; tunsec does not use that
            // relaxation.
            return src.is_ipv4() && dst.is_ipv4();
        }
        let len = self.len();
        checksum::pseudo_header(src, dst, PROTOCOL, u32::from(len)).is_some_and(|pseudo| {
            checksum::verifies(pseudo, &self.buffer.as_ref()[..usize::from(len)])
        })
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Computes the checksum over the pseudo-header for `src` and `dst`,
    /// the header and Length bytes of data, and writes it.
    ///
    /// Returns [`Error::Malformed`], and writes nothing, if `src` and `dst`
    /// are not of the same family.
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) -> Result<()> {
        let len = self.len();
        let pseudo =
            checksum::pseudo_header(src, dst, PROTOCOL, u32::from(len)).ok_or(Error::Malformed)?;
        self.set_checksum(0);
        let value = checksum::checksum_after(pseudo, &self.buffer.as_ref()[..usize::from(len)]);
        //= https://www.rfc-editor.org/rfc/rfc768
        //# If the computed  checksum  is zero,  it is transmitted  as all ones  (the
        //# equivalent  in one's complement  arithmetic).
        //
        //= https://www.rfc-editor.org/rfc/rfc8200#section-8.1
        //# whenever originating a UDP packet, an IPv6 node
        //# must compute a UDP checksum over the packet and the pseudo-header,
        //# and, if that computation yields a result of zero, it must be changed
        //# to hex FFFF for placement in the UDP header.
        self.set_checksum(if value == 0 { 0xffff } else { value });
        Ok(())
    }
}

/// The UDP header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The Source Port.
    pub src_port: u16,
    /// The Destination Port.
    pub dst_port: u16,
    /// The length of the data after the header.
    pub payload_len: usize,
}

impl Repr {
    /// Parses a checked datagram. The checksum is not verified here; see
    /// [`Packet::verify_checksum`].
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        Ok(Self {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: usize::from(packet.len()) - HEADER_LEN,
        })
    }

    /// The header length: 8 bytes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header with Length set and a zero checksum.
    /// `payload_len` must be at most 65,527.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        debug_assert!(self.payload_len <= usize::from(u16::MAX) - HEADER_LEN);
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len((HEADER_LEN + self.payload_len) as u16);
        packet.set_checksum(0);
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SRC4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1));
    const DST4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 0, 199));

    // 4660 -> 4789, length 12, data de ad be ef, sent 192.168.0.1 ->
    // 192.168.0.199. The checksum by hand:
    //   pseudo-header c0a8 + 0001 + c0a8 + 00c7 + 0011 + 000c
    //   header        1234 + 12b5 + 000c + 0000
    //   data          dead + beef
    //   = 0x344c6 -> 0x44c6 + 3 = 0x44c9, complemented 0xbb36.
    static PACKET_BYTES: [u8; 12] = [
        0x12, 0x34, 0x12, 0xb5, 0x00, 0x0c, 0xbb, 0x36, 0xde, 0xad, 0xbe, 0xef,
    ];

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
    }

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.src_port(), 4660);
        assert_eq!(packet.dst_port(), 4789);
        assert_eq!(packet.len(), 12);
        assert!(!packet.is_empty());
        assert_eq!(packet.checksum(), 0xbb36);
        assert_eq!(packet.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert!(packet.verify_checksum(SRC4, DST4));
        assert!(!packet.verify_checksum(DST4, DST4));
        assert_eq!(
            Repr::parse(&packet).unwrap(),
            Repr {
                src_port: 4660,
                dst_port: 4789,
                payload_len: 4
            }
        );
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0xa5u8; 12];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        Repr {
            src_port: 4660,
            dst_port: 4789,
            payload_len: 4,
        }
        .emit(&mut packet);
        assert_eq!(packet.checksum(), 0);
        packet
            .payload_mut()
            .copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        packet.fill_checksum(SRC4, DST4).unwrap();
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn ipv6_checksum() {
        // The same datagram between 2001:db8::1 and 2001:db8::2. By hand:
        //   pseudo-header 2001 + 0db8 + 0001 + 2001 + 0db8 + 0002
        //                 + 0000 + 000c + 0000 + 0011 = 0x5b92
        //   header + data (from above, without the IPv4 pseudo-header)
        //                 0x344c6 - 0x18235 = 0x1c291
        //   = 0x21e23 -> 0x1e25, complemented 0xe1da.
        let src = v6("2001:db8::1");
        let dst = v6("2001:db8::2");
        let mut bytes = PACKET_BYTES;
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.fill_checksum(src, dst).unwrap();
        assert_eq!(packet.checksum(), 0xe1da);
        assert!(packet.verify_checksum(src, dst));
        assert!(!packet.verify_checksum(src, v6("2001:db8::3")));
    }

    #[test]
    fn zero_checksum() {
        let mut bytes = PACKET_BYTES;
        bytes[6] = 0;
        bytes[7] = 0;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        // "No checksum" is fine over IPv4, not over IPv6.
        assert!(packet.verify_checksum(SRC4, DST4));
        assert!(!packet.verify_checksum(v6("2001:db8::1"), v6("2001:db8::2")));
        assert!(!packet.verify_checksum(SRC4, v6("2001:db8::2")));
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        // Choose the data so that the one's complement sum is 0xffff.
        // Without data (length still 12, checksum 0) the sum is
        // 0x344c6 - 0xdead - 0xbeef = 0x1a72a -> 0xa72b; the data words
        // 58d4 0000 bring it to 0xffff, whose complement is 0.
        let mut bytes = PACKET_BYTES;
        let data = 0x58d4u16;
        bytes[8..10].copy_from_slice(&data.to_be_bytes());
        bytes[10] = 0;
        bytes[11] = 0;
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.fill_checksum(SRC4, DST4).unwrap();
        assert_eq!(packet.checksum(), 0xffff);
        assert!(packet.verify_checksum(SRC4, DST4));
    }

    #[test]
    fn fill_checksum_mixed_families() {
        let mut bytes = PACKET_BYTES;
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        assert_eq!(packet.fill_checksum(SRC4, v6("::1")), Err(Error::Malformed));
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn lengths() {
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..7]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..11]).unwrap_err(),
            Error::Truncated
        );
        let mut bytes = PACKET_BYTES;
        bytes[5] = 7;
        assert_eq!(
            Packet::new_checked(&bytes[..]).unwrap_err(),
            Error::BadLength
        );
        // Length 8: empty payload, trailing bytes ignored.
        bytes[5] = 8;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(packet.is_empty());
        assert!(packet.payload().is_empty());
    }

    fn arb_addrs() -> impl Strategy<Value = (IpAddr, IpAddr)> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<[u8; 4]>())
                .prop_map(|(s, d)| (IpAddr::from(s), IpAddr::from(d))),
            (any::<[u8; 16]>(), any::<[u8; 16]>())
                .prop_map(|(s, d)| (IpAddr::from(s), IpAddr::from(d))),
        ]
    }

    proptest! {
        #[test]
        fn parse_emit(
            src_port: u16,
            dst_port: u16,
            data in proptest::collection::vec(any::<u8>(), 0..100),
            (src, dst) in arb_addrs(),
        ) {
            let repr = Repr { src_port, dst_port, payload_len: data.len() };
            let mut bytes = vec![0u8; repr.buffer_len() + data.len()];
            let mut packet = Packet::new_unchecked(&mut bytes[..]);
            repr.emit(&mut packet);
            packet.payload_mut().copy_from_slice(&data);
            packet.fill_checksum(src, dst).unwrap();
            prop_assert_ne!(packet.checksum(), 0);
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            prop_assert!(packet.verify_checksum(src, dst));
            prop_assert_eq!(Repr::parse(&packet).unwrap(), repr);
            prop_assert_eq!(packet.payload(), &data[..]);
        }

        #[test]
        fn corruption_is_detected(
            data in proptest::collection::vec(any::<u8>(), 1..100),
            (src, dst) in arb_addrs(),
            index: prop::sample::Index,
            flip in 1u8..,
        ) {
            let repr = Repr { src_port: 1, dst_port: 2, payload_len: data.len() };
            let mut bytes = vec![0u8; HEADER_LEN + data.len()];
            let mut packet = Packet::new_unchecked(&mut bytes[..]);
            repr.emit(&mut packet);
            packet.payload_mut().copy_from_slice(&data);
            packet.fill_checksum(src, dst).unwrap();
            let i = HEADER_LEN + index.index(data.len());
            bytes[i] ^= flip;
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            // A single corrupted byte always changes the one's complement sum.
            prop_assert!(!packet.verify_checksum(src, dst));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), (src, dst) in arb_addrs()) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = Repr::parse(&packet);
                let _ = packet.verify_checksum(src, dst);
                prop_assert!(HEADER_LEN + packet.payload().len() <= bytes.len());
            }
        }
    }
}
