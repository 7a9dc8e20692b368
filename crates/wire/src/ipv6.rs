//! The IPv6 fixed header (RFC 8200 section 3).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Traffic Class |           Flow Label                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |         Payload Length        |  Next Header  |   Hop Limit   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! +                                                               +
//! |                                                               |
//! +                         Source Address                        +
//! |                                                               |
//! +                                                               +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! +                                                               +
//! |                                                               |
//! +                      Destination Address                      +
//! |                                                               |
//! +                                                               +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Extension headers are not walked: they are part of the payload, and
//! [`Packet::next_header`] names the first of them. Jumbograms (RFC 2675,
//! Payload Length 0 with a Jumbo Payload option) are not supported; a zero
//! Payload Length is read as an empty payload.

use std::net::Ipv6Addr;

use crate::ip::IpProtocol;
use crate::{Error, Result};

mod field {
    use crate::Field;
    pub(crate) const VER_TC_FLOW: Field = 0..4;
    pub(crate) const LENGTH: Field = 4..6;
    pub(crate) const NXT_HDR: usize = 6;
    pub(crate) const HOP_LIMIT: usize = 7;
    pub(crate) const SRC_ADDR: Field = 8..24;
    pub(crate) const DST_ADDR: Field = 24..40;
}

/// Length of the IPv6 fixed header.
pub const HEADER_LEN: usize = field::DST_ADDR.end;
/// The largest flow label (20 bits).
pub const MAX_FLOW_LABEL: u32 = 0x000f_ffff;

crate::view::packet_view! {
    /// A read/write view of an IPv6 packet.
    fields {
        /// The Payload Length field: everything after the fixed header,
        /// extension headers included.
        pub payload_len, set_payload_len: u16 = field::LENGTH;
        /// The Next Header field: the first extension header or the
        /// upper-layer protocol.
        pub next_header, set_next_header: IpProtocol = field::NXT_HDR;
        /// The Hop Limit.
        pub hop_limit, set_hop_limit: u8 = field::HOP_LIMIT;
        /// The Source Address.
        pub src_addr, set_src_addr: Ipv6Addr = field::SRC_ADDR;
        /// The Destination Address.
        pub dst_addr, set_dst_addr: Ipv6Addr = field::DST_ADDR;
    }
    /// Checks that the buffer holds the fixed header and the payload that
    /// Payload Length announces; returns [`Error::Truncated`] if not.
    ///
    /// The version is not checked here; see [`Repr::parse`].
    //= https://www.rfc-editor.org/rfc/rfc8200#section-3
    //# Length of the IPv6 payload, i.e., the rest of the packet following
    //# this IPv6 header, in octets.
    //
    // The announced length is never below HEADER_LEN.
    check_len: HEADER_LEN, |p| HEADER_LEN + usize::from(p.payload_len());
    bits {
        /// The version field (6 for a valid packet).
        pub version, set_version: u8 = field::VER_TC_FLOW, mask 0xf000_0000_u32;
        /// The Traffic Class (DSCP and ECN).
        pub traffic_class, set_traffic_class: u8 = field::VER_TC_FLOW, mask 0x0ff0_0000_u32;
        /// The Flow Label (20 bits). Its setter ignores bits above the low
        /// 20.
        pub flow_label, set_flow_label: u32 = field::VER_TC_FLOW, mask MAX_FLOW_LABEL;
    }
    slices {
        /// The payload: Payload Length bytes after the fixed header.
        pub payload, payload_mut = |p| HEADER_LEN..HEADER_LEN + usize::from(p.payload_len());
    }
}

/// The IPv6 fixed header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The Source Address.
    pub src_addr: Ipv6Addr,
    /// The Destination Address.
    pub dst_addr: Ipv6Addr,
    /// The Next Header field.
    pub next_header: IpProtocol,
    /// The Payload Length.
    pub payload_len: usize,
    /// The Hop Limit.
    pub hop_limit: u8,
    /// The Traffic Class (DSCP and ECN).
    pub traffic_class: u8,
    /// The Flow Label (20 bits).
    pub flow_label: u32,
}

impl Repr {
    /// Parses a packet: checks lengths and the version.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        //= https://www.rfc-editor.org/rfc/rfc8200#section-3
        //# Version              4-bit Internet Protocol version number = 6.
        if packet.version() != 6 {
            return Err(Error::BadVersion);
        }
        Ok(Self {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: usize::from(packet.payload_len()),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
        })
    }

    /// The header length: 40 bytes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the fixed header. `payload_len` must fit in 16 bits and
    /// `flow_label` in 20.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        debug_assert!(self.payload_len <= usize::from(u16::MAX));
        debug_assert!(self.flow_label <= MAX_FLOW_LABEL);
        packet.set_version(6);
        packet.set_traffic_class(self.traffic_class);
        packet.set_flow_label(self.flow_label);
        packet.set_payload_len(self.payload_len as u16);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;

    // Version 6, traffic class 0xb8 (EF), flow label 0x12345, payload 4
    // bytes of UDP-ish data, next header 17, hop limit 64,
    // 2001:db8::1 -> 2001:db8::2.
    static PACKET_BYTES: [u8; 44] = [
        0x6b, 0x81, 0x23, 0x45, 0x00, 0x04, 0x11, 0x40, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0xde, 0xad, 0xbe, 0xef,
    ];

    fn repr() -> Repr {
        Repr {
            src_addr: "2001:db8::1".parse().unwrap(),
            dst_addr: "2001:db8::2".parse().unwrap(),
            next_header: IpProtocol::Udp,
            payload_len: 4,
            hop_limit: 64,
            traffic_class: 0xb8,
            flow_label: 0x12345,
        }
    }

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.version(), 6);
        assert_eq!(packet.traffic_class(), 0xb8);
        assert_eq!(packet.flow_label(), 0x12345);
        assert_eq!(packet.payload_len(), 4);
        assert_eq!(packet.next_header(), IpProtocol::Udp);
        assert_eq!(packet.hop_limit(), 64);
        assert_eq!(
            packet.src_addr(),
            "2001:db8::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            packet.dst_addr(),
            "2001:db8::2".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(packet.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(Repr::parse(&packet).unwrap(), repr());
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0xa5u8; 44];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr().emit(&mut packet);
        packet
            .payload_mut()
            .copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn setters_keep_neighbours() {
        let mut bytes = PACKET_BYTES;
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_traffic_class(0x01);
        assert_eq!(packet.version(), 6);
        assert_eq!(packet.flow_label(), 0x12345);
        packet.set_flow_label(0xffff_ffff);
        assert_eq!(packet.traffic_class(), 0x01);
        assert_eq!(packet.flow_label(), MAX_FLOW_LABEL);
        packet.set_version(4);
        assert_eq!(packet.version(), 4);
        assert_eq!(packet.traffic_class(), 0x01);
    }

    #[test]
    fn truncated() {
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..39]).unwrap_err(),
            Error::Truncated
        );
        // Payload Length says 4, the buffer holds 3.
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..43]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn trailing_bytes_are_not_payload() {
        let mut bytes = PACKET_BYTES.to_vec();
        bytes.extend_from_slice(&[0; 6]);
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.payload().len(), 4);
    }

    #[test]
    fn bad_version() {
        let mut bytes = PACKET_BYTES;
        bytes[0] = 0x4b;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Err(Error::BadVersion));
    }

    fn arb_repr() -> impl Strategy<Value = Repr> {
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u8>(),
            0usize..200,
            any::<u8>(),
            any::<u8>(),
            0u32..=MAX_FLOW_LABEL,
        )
            .prop_map(|(s, d, nh, len, hl, tc, fl)| Repr {
                src_addr: s.into(),
                dst_addr: d.into(),
                next_header: nh.into(),
                payload_len: len,
                hop_limit: hl,
                traffic_class: tc,
                flow_label: fl,
            })
    }

    proptest! {
        #[test]
        fn parse_emit(repr in arb_repr()) {
            let mut bytes = vec![0u8; repr.buffer_len() + repr.payload_len];
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            let parsed = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
            prop_assert_eq!(parsed, repr);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = Repr::parse(&packet);
                prop_assert!(HEADER_LEN + packet.payload().len() <= bytes.len());
            }
        }

        #[test]
        fn never_panics_steered(len: u16, tail in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut bytes = PACKET_BYTES[..40].to_vec();
            bytes[4..6].copy_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(&tail);
            match Packet::new_checked(&bytes[..]) {
                Ok(packet) => {
                    prop_assert!(usize::from(len) <= tail.len());
                    prop_assert_eq!(Repr::parse(&packet).unwrap().payload_len, usize::from(len));
                }
                Err(e) => prop_assert_eq!(e, Error::Truncated),
            }
        }
    }
}
