//! The IPv4 header (RFC 791 section 3.1).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version|  IHL  |Type of Service|          Total Length         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |         Identification        |Flags|      Fragment Offset    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Time to Live |    Protocol   |         Header Checksum       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       Source Address                          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Destination Address                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Options                    |    Padding    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The Type of Service byte is read as DSCP (6 bits) and ECN (2 bits), as
//! RFC 2474 and RFC 3168 redefined it. Options are carried opaque: the
//! packet view exposes them as bytes, [`Repr`] drops them and emits a
//! 20-byte header.
//!
//! [`Packet::payload`] ends where Total Length says, not at the end of the
//! buffer, so link-layer padding after the datagram is never taken as data.

use std::net::Ipv4Addr;

use crate::ip::IpProtocol;
use crate::view::{FieldValue, check_announced};
use crate::{Error, Result, checksum};

mod field {
    use crate::Field;
    pub(crate) const VER_IHL: usize = 0;
    pub(crate) const DSCP_ECN: usize = 1;
    pub(crate) const LENGTH: Field = 2..4;
    pub(crate) const IDENT: Field = 4..6;
    pub(crate) const FLG_OFF: Field = 6..8;
    pub(crate) const TTL: usize = 8;
    pub(crate) const PROTOCOL: usize = 9;
    pub(crate) const CHECKSUM: Field = 10..12;
    pub(crate) const SRC_ADDR: Field = 12..16;
    pub(crate) const DST_ADDR: Field = 16..20;
}

/// Length of the IPv4 header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;
/// Length of the longest IPv4 header: IHL 15, i.e. 40 bytes of options.
pub const MAX_HEADER_LEN: usize = 15 * 4;

crate::view::packet_view! {
    /// A read/write view of an IPv4 packet.
    fields {
        /// The whole Type of Service byte: DSCP in the high 6 bits, ECN in the
        /// low 2.
        pub dscp_ecn, set_dscp_ecn: u8 = field::DSCP_ECN;
        /// The Total Length field: header and data, in bytes.
        pub total_len, set_total_len: u16 = field::LENGTH;
        /// The Identification field.
        pub ident, set_ident: u16 = field::IDENT;
        /// The Time to Live field.
        pub hop_limit, set_hop_limit: u8 = field::TTL;
        /// The Protocol field.
        pub next_header, set_next_header: IpProtocol = field::PROTOCOL;
        /// The Header Checksum field.
        pub checksum, set_checksum: u16 = field::CHECKSUM;
        /// The Source Address.
        pub src_addr, set_src_addr: Ipv4Addr = field::SRC_ADDR;
        /// The Destination Address.
        pub dst_addr, set_dst_addr: Ipv4Addr = field::DST_ADDR;
    }
    bits {
        /// The version field (4 for a valid packet).
        pub version, set_version: u8 = field::VER_IHL, mask 0xf0_u8;
        /// IHL: the header length in 4-byte words.
        ihl, set_ihl: u8 = field::VER_IHL, mask 0x0f_u8;
        /// The Differentiated Services Code Point (RFC 2474).
        pub dscp, set_dscp: u8 = field::DSCP_ECN, mask 0xfc_u8;
        /// The Explicit Congestion Notification bits (RFC 3168).
        pub ecn, set_ecn: u8 = field::DSCP_ECN, mask 0x03_u8;
        /// The reserved flag (bit 0 of Flags), which RFC 791 says must be zero.
        pub reserved_flag: bool = field::FLG_OFF, mask 0x8000_u16;
        /// The Don't Fragment flag.
        pub dont_frag, set_dont_frag: bool = field::FLG_OFF, mask 0x4000_u16;
        /// The More Fragments flag.
        pub more_frags, set_more_frags: bool = field::FLG_OFF, mask 0x2000_u16;
        /// The Fragment Offset field, in 8-byte units.
        frag_units, set_frag_units: u16 = field::FLG_OFF, mask 0x1fff_u16;
    }
    slices {
        /// The options and padding: the bytes between the fixed header and
        /// [`Self::header_len`].
        pub options, options_mut = |p| HEADER_LEN..p.header_len();
        /// The data after the header, up to Total Length.
        pub payload, payload_mut = |p| p.header_len()..usize::from(p.total_len());
    }
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks that the buffer holds the fixed header, that IHL is at least
    /// 5, and that `header_len <= total_len <= buffer length`.
    ///
    /// Returns [`Error::Truncated`] when the buffer is shorter than the
    /// fixed header, the header length or the total length, and
    /// [`Error::BadLength`] when IHL is below 5 or the total length is
    /// shorter than the header. The version is not checked here; see
    /// [`Repr::parse`].
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        //= https://www.rfc-editor.org/rfc/rfc791#section-3.1
        //# Internet Header Length is the length of the internet header in 32
        //# bit words, and thus points to the beginning of the data.  Note that
        //# the minimum value for a correct header is 5.
        let header_len = check_announced(len, HEADER_LEN, || self.header_len())?;
        //= https://www.rfc-editor.org/rfc/rfc791#section-3.1
        //# Total Length is the length of the datagram, measured in octets,
        //# including internet header and data.
        check_announced(len, header_len, || usize::from(self.total_len()))?;
        Ok(())
    }

    /// The header length in bytes: IHL times 4.
    pub fn header_len(&self) -> usize {
        usize::from(self.ihl()) * 4
    }

    /// The fragment offset in bytes (the field counts 8-byte units).
    //= https://www.rfc-editor.org/rfc/rfc791#section-3.1
    //# The fragment offset is measured in units of 8 octets (64 bits).
    pub fn frag_offset(&self) -> u16 {
        self.frag_units() << 3
    }

    /// Whether this packet is a fragment: More Fragments is set or the
    /// fragment offset is not zero.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// Whether the header checksum verifies.
    //= https://www.rfc-editor.org/rfc/rfc791#section-3.1
    //# The checksum field is the 16 bit one's complement of the one's
    //# complement sum of all 16 bit words in the header.
    pub fn verify_checksum(&self) -> bool {
        checksum::verifies(0, &self.buffer.as_ref()[..self.header_len()])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets IHL from a header length in bytes (a multiple of 4, at most 60).
    pub fn set_header_len(&mut self, len: usize) {
        debug_assert!(len.is_multiple_of(4) && (HEADER_LEN..=MAX_HEADER_LEN).contains(&len));
        self.set_ihl((len / 4) as u8);
    }

    /// Clears all three flags and the fragment offset.
    pub fn clear_flags(&mut self) {
        0u16.write(&mut self.buffer.as_mut()[field::FLG_OFF]);
    }

    /// Sets the fragment offset from a byte offset (a multiple of 8).
    pub fn set_frag_offset(&mut self, offset: u16) {
        debug_assert!(offset.is_multiple_of(8));
        self.set_frag_units(offset >> 3);
    }

    /// Computes the header checksum over [`Packet::header_len`] bytes and
    /// writes it. Call it after every other header field is set.
    //= https://www.rfc-editor.org/rfc/rfc791#section-3.1
    //# For purposes of computing the checksum, the value of the checksum
    //# field is zero.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let header_len = self.header_len();
        let value = checksum::checksum(&self.buffer.as_ref()[..header_len]);
        self.set_checksum(value);
    }
}

/// The IPv4 header fields tunsec reads and writes.
///
/// Options are not represented: [`Repr::parse`] accepts a header with
/// options and skips them, [`Repr::emit`] writes a 20-byte header. The
/// fragment fields are not represented either; read them on the
/// [`Packet`] ([`Packet::is_fragment`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The Source Address.
    pub src_addr: Ipv4Addr,
    /// The Destination Address.
    pub dst_addr: Ipv4Addr,
    /// The Protocol field.
    pub next_header: IpProtocol,
    /// The payload length: Total Length minus the header length.
    pub payload_len: usize,
    /// The Time to Live.
    pub hop_limit: u8,
    /// The Type of Service byte (DSCP and ECN).
    pub dscp_ecn: u8,
    /// The Don't Fragment flag.
    pub dont_frag: bool,
    /// The Identification field.
    pub ident: u16,
}

impl Repr {
    /// Parses a packet: checks lengths, the version and the header
    /// checksum.
    ///
    /// Fragments are accepted. The reserved flag is not checked: RFC 791
    /// says it "must be zero" but gives no rule for a receiver, and
    /// dropping such packets would make the tunnel less transparent than
    /// the routers it replaces.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        //= https://www.rfc-editor.org/rfc/rfc791#section-3.1
        //# The Version field indicates the format of the internet header.  This
        //# document describes version 4.
        if packet.version() != 4 {
            return Err(Error::BadVersion);
        }
        if !packet.verify_checksum() {
            return Err(Error::BadChecksum);
        }
        Ok(Self {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.total_len()) - packet.header_len(),
            hop_limit: packet.hop_limit(),
            dscp_ecn: packet.dscp_ecn(),
            dont_frag: packet.dont_frag(),
            ident: packet.ident(),
        })
    }

    /// The header length: 20 bytes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header (no options, not a fragment) with its
    /// checksum. `payload_len` must be at most 65,515.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        debug_assert!(self.payload_len <= usize::from(u16::MAX) - HEADER_LEN);
        packet.set_version(4);
        packet.set_header_len(HEADER_LEN);
        packet.set_dscp_ecn(self.dscp_ecn);
        packet.set_total_len((HEADER_LEN + self.payload_len) as u16);
        packet.set_ident(self.ident);
        packet.clear_flags();
        packet.set_dont_frag(self.dont_frag);
        packet.set_hop_limit(self.hop_limit);
        packet.set_next_header(self.next_header);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;

    // A UDP datagram from 192.168.0.1 to 192.168.0.199: total length 0x73,
    // DF, TTL 64, protocol 17, checksum b861 (verified with tshark). The
    // payload is not included; the test appends it.
    static HEADER_BYTES: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    fn packet_bytes() -> Vec<u8> {
        let mut bytes = HEADER_BYTES.to_vec();
        bytes.extend((0..0x73 - 20).map(|i| i as u8));
        bytes
    }

    fn repr() -> Repr {
        Repr {
            src_addr: Ipv4Addr::new(192, 168, 0, 1),
            dst_addr: Ipv4Addr::new(192, 168, 0, 199),
            next_header: IpProtocol::Udp,
            payload_len: 0x73 - 20,
            hop_limit: 64,
            dscp_ecn: 0,
            dont_frag: true,
            ident: 0,
        }
    }

    #[test]
    fn test_deconstruct() {
        let bytes = packet_bytes();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.version(), 4);
        assert_eq!(packet.header_len(), 20);
        assert_eq!(packet.dscp_ecn(), 0);
        assert_eq!(packet.total_len(), 0x73);
        assert_eq!(packet.ident(), 0);
        assert!(packet.dont_frag());
        assert!(!packet.more_frags());
        assert!(!packet.reserved_flag());
        assert_eq!(packet.frag_offset(), 0);
        assert!(!packet.is_fragment());
        assert_eq!(packet.hop_limit(), 64);
        assert_eq!(packet.next_header(), IpProtocol::Udp);
        assert_eq!(packet.checksum(), 0xb861);
        assert_eq!(packet.src_addr(), Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(packet.dst_addr(), Ipv4Addr::new(192, 168, 0, 199));
        assert!(packet.options().is_empty());
        assert!(packet.verify_checksum());
        assert_eq!(packet.payload(), &bytes[20..]);
        assert_eq!(Repr::parse(&packet).unwrap(), repr());
    }

    #[test]
    fn test_construct() {
        let mut bytes = vec![0xa5u8; 0x73];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr().emit(&mut packet);
        let payload: Vec<u8> = (0..0x73 - 20).map(|i| i as u8).collect();
        packet.payload_mut().copy_from_slice(&payload);
        assert_eq!(bytes, packet_bytes());
    }

    #[test]
    fn payload_bounded_by_total_len() {
        // Ethernet pads short frames; the padding is not payload.
        let mut bytes = packet_bytes();
        bytes.extend_from_slice(&[0; 10]);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.payload().len(), 0x73 - 20);
        assert_eq!(Repr::parse(&packet).unwrap().payload_len, 0x73 - 20);
    }

    #[test]
    fn options_are_carried() {
        // IHL 6: one word of options (NOP NOP NOP EOL), total length 28.
        let mut bytes = [
            0x46, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x20, 0x03, 0x05, 0x32, 0x00, 0x00, 0x0a, 0x00,
            0x00, 0x01, 0x0a, 0x00, 0x00, 0x02, 0x01, 0x01, 0x01, 0x00, 0xde, 0xad, 0xbe, 0xef,
        ];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.fill_checksum();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.header_len(), 24);
        assert_eq!(packet.options(), &[1, 1, 1, 0]);
        assert_eq!(packet.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        // MF set, offset 3 units = 24 bytes.
        assert!(packet.more_frags());
        assert_eq!(packet.frag_offset(), 24);
        assert!(packet.is_fragment());
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(repr.payload_len, 4);
        assert_eq!(repr.next_header, IpProtocol::Esp);
        assert_eq!(repr.ident, 0x1234);
        assert!(!repr.dont_frag);
    }

    #[test]
    fn truncated_and_bad_lengths() {
        let bytes = packet_bytes();
        assert_eq!(
            Packet::new_checked(&bytes[..19]).unwrap_err(),
            Error::Truncated
        );
        // Shorter than Total Length.
        assert_eq!(
            Packet::new_checked(&bytes[..0x72]).unwrap_err(),
            Error::Truncated
        );
        // IHL 4.
        let mut bad = bytes.clone();
        bad[0] = 0x44;
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::BadLength);
        // IHL 15 but a 20-byte buffer.
        let mut bad = HEADER_BYTES;
        bad[0] = 0x4f;
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::Truncated);
        // Total Length smaller than the header.
        let mut bad = bytes.clone();
        bad[2] = 0;
        bad[3] = 19;
        assert_eq!(Packet::new_checked(&bad[..]).unwrap_err(), Error::BadLength);
    }

    #[test]
    fn bad_version_and_checksum() {
        let mut bytes = packet_bytes();
        bytes[11] ^= 1;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert!(!packet.verify_checksum());
        assert_eq!(Repr::parse(&packet), Err(Error::BadChecksum));

        let mut bytes = packet_bytes();
        bytes[0] = 0x65;
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.fill_checksum();
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Err(Error::BadVersion));
    }

    #[test]
    fn setters() {
        let mut bytes = packet_bytes();
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_dscp(46);
        packet.set_ecn(0b10);
        assert_eq!(packet.dscp_ecn(), 0xba);
        packet.set_ecn(0b01);
        assert_eq!(packet.dscp(), 46);
        assert_eq!(packet.ecn(), 0b01);
        packet.set_more_frags(true);
        packet.set_frag_offset(1480);
        packet.set_dont_frag(false);
        assert!(packet.more_frags());
        assert!(!packet.dont_frag());
        assert_eq!(packet.frag_offset(), 1480);
        packet.set_more_frags(false);
        assert_eq!(packet.frag_offset(), 1480);
        assert!(packet.is_fragment());
        packet.set_total_len(40);
        assert_eq!(packet.payload().len(), 20);
        packet.fill_checksum();
        assert!(packet.verify_checksum());
    }

    fn arb_repr() -> impl Strategy<Value = Repr> {
        (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u8>(),
            0usize..200,
            any::<u8>(),
            any::<u8>(),
            any::<bool>(),
            any::<u16>(),
        )
            .prop_map(|(s, d, p, len, ttl, tos, df, id)| Repr {
                src_addr: s.into(),
                dst_addr: d.into(),
                next_header: p.into(),
                payload_len: len,
                hop_limit: ttl,
                dscp_ecn: tos,
                dont_frag: df,
                ident: id,
            })
    }

    proptest! {
        #[test]
        fn parse_emit(repr in arb_repr()) {
            let mut bytes = vec![0u8; repr.buffer_len() + repr.payload_len];
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            prop_assert!(packet.verify_checksum());
            prop_assert_eq!(Repr::parse(&packet).unwrap(), repr);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = Repr::parse(&packet);
                let _ = (packet.payload(), packet.options(), packet.frag_offset());
                prop_assert!(packet.payload().len() + packet.header_len() <= bytes.len());
            }
        }

        #[test]
        fn never_panics_valid_header(
            ihl in 0u8..16, total in 0u16..120, tail in proptest::collection::vec(any::<u8>(), 0..100)
        ) {
            // Random bytes rarely get past the length checks; steer them.
            let mut bytes = HEADER_BYTES.to_vec();
            bytes[0] = 0x40 | ihl;
            bytes[2..4].copy_from_slice(&total.to_be_bytes());
            bytes.extend_from_slice(&tail);
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = Repr::parse(&packet);
                prop_assert!(packet.header_len() >= HEADER_LEN);
                prop_assert_eq!(packet.payload().len(), usize::from(total) - packet.header_len());
            }
        }
    }
}
