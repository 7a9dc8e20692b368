//! The VXLAN header (RFC 7348 section 5).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The header is followed by the inner Ethernet frame. It travels in UDP,
//! by default to port [`PORT`].

use crate::view::FieldValue;
use crate::{Error, Result};

mod field {
    use crate::{Field, Rest};
    pub(crate) const FLAGS: usize = 0;
    pub(crate) const VNI: Field = 4..7;
    pub(crate) const PAYLOAD: Rest = 8..;
}

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;

//= https://www.rfc-editor.org/rfc/rfc7348#section-5
//# Destination Port: IANA has assigned the value 4789 for the
//# VXLAN UDP port, and this value SHOULD be used by default as the
//# destination UDP port.
/// The IANA-assigned VXLAN UDP port.
pub const PORT: u16 = 4789;

/// The I flag: the VNI is valid.
const FLAG_I: u8 = 0x08;

/// A 24-bit virtual network identifier, as VXLAN and Geneve carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Vni(u32);

impl Vni {
    /// The largest VNI, 2^24 - 1.
    pub const MAX: Self = Self(0x00ff_ffff);

    /// A VNI, or `None` if `value` does not fit in 24 bits.
    pub const fn new(value: u32) -> Option<Self> {
        if value <= Self::MAX.0 {
            Some(Self(value))
        } else {
            None
        }
    }

    /// The VNI as a number below 2^24.
    pub const fn get(self) -> u32 {
        self.0
    }
}

/// A VNI is 3 big-endian bytes on the wire.
impl FieldValue for Vni {
    #[inline]
    fn read(b: &[u8]) -> Self {
        Self(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    #[inline]
    fn write(self, bytes: &mut [u8]) {
        bytes.copy_from_slice(&self.0.to_be_bytes()[1..]);
    }
}

impl TryFrom<u32> for Vni {
    type Error = Error;

    /// Fails with [`Error::Malformed`] if `value` does not fit in 24 bits.
    fn try_from(value: u32) -> Result<Self> {
        Self::new(value).ok_or(Error::Malformed)
    }
}

impl From<Vni> for u32 {
    fn from(vni: Vni) -> Self {
        vni.0
    }
}

impl core::fmt::Display for Vni {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.fmt(f)
    }
}

crate::view::packet_view! {
    /// A read/write view of a VXLAN packet (header, then the inner frame).
    fields {
        /// The whole flags byte, reserved bits included.
        pub flags, set_flags: u8 = field::FLAGS;
        /// The VNI field (meaningful only when [`Self::vni_valid`]).
        pub vni, set_vni: Vni = field::VNI;
    }
    /// Checks that the buffer holds the 8-byte header.
    check_len: HEADER_LEN, |p| HEADER_LEN;
    bits {
        /// Whether the I flag is set (the VNI is valid).
        pub vni_valid: bool = field::FLAGS, mask FLAG_I;
    }
    slices {
        /// The inner Ethernet frame.
        pub payload, payload_mut = |p| field::PAYLOAD;
    }
}

/// The VXLAN header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The VXLAN Network Identifier.
    pub vni: Vni,
}

impl Repr {
    /// Parses a checked packet. Rejects a clear I flag with
    /// [`Error::Malformed`]; ignores the reserved bits.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        //= https://www.rfc-editor.org/rfc/rfc7348#section-5
        //# Flags (8 bits): where the I flag MUST be set to 1 for a valid
        //# VXLAN Network ID (VNI).  The other 7 bits (designated "R") are
        //# reserved fields and MUST be set to zero on transmission and
        //# ignored on receipt.
        if !packet.vni_valid() {
            return Err(Error::Malformed);
        }
        //= https://www.rfc-editor.org/rfc/rfc7348#section-5
        //# Reserved fields (24 bits and 8 bits): MUST be set to zero on
        //# transmission and ignored on receipt.
        Ok(Self { vni: packet.vni() })
    }

    /// The header length: 8 bytes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header: the I flag, the VNI, and zero reserved fields.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.buffer.as_mut()[..HEADER_LEN].fill(0);
        packet.set_flags(FLAG_I);
        packet.set_vni(self.vni);
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;

    // I flag, VNI 0x123456 (1193046), then the first bytes of an inner
    // Ethernet frame (broadcast destination).
    static PACKET_BYTES: [u8; 14] = [
        0x08, 0x00, 0x00, 0x00, 0x12, 0x34, 0x56, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.flags(), 0x08);
        assert!(packet.vni_valid());
        assert_eq!(packet.vni().get(), 0x12_3456);
        assert_eq!(packet.payload(), &[0xff; 6]);
        assert_eq!(
            Repr::parse(&packet).unwrap(),
            Repr {
                vni: Vni::new(0x12_3456).unwrap()
            }
        );
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0xa5u8; 14];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        Repr {
            vni: Vni::new(0x12_3456).unwrap(),
        }
        .emit(&mut packet);
        packet.payload_mut().fill(0xff);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn i_flag_required() {
        let mut bytes = PACKET_BYTES;
        bytes[0] = 0x00;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Err(Error::Malformed));
    }

    #[test]
    fn reserved_bits_ignored() {
        let mut bytes = PACKET_BYTES;
        bytes[0] = 0xff;
        bytes[1..4].fill(0xff);
        bytes[7] = 0xff;
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet).unwrap().vni.get(), 0x12_3456);
    }

    #[test]
    fn truncated() {
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..7]).unwrap_err(),
            Error::Truncated
        );
        let packet = Packet::new_checked(&PACKET_BYTES[..8]).unwrap();
        assert!(packet.payload().is_empty());
    }

    #[test]
    fn vni_bounds() {
        assert_eq!(Vni::new(0xff_ffff), Some(Vni::MAX));
        assert_eq!(Vni::new(0x100_0000), None);
        assert_eq!(Vni::try_from(0x100_0000), Err(Error::Malformed));
        assert_eq!(u32::from(Vni::try_from(42).unwrap()), 42);
        assert_eq!(Vni::MAX.to_string(), "16777215");
    }

    // A whole VXLAN packet, checked with tshark (every checksum "correct",
    // VNI 42): outer IPv4 10.0.0.1 -> 10.0.0.2, UDP 54321 -> 4789, VXLAN,
    // inner Ethernet 02:00:00:00:00:01 -> 02:00:00:00:00:02, inner IPv4
    // 192.168.1.1 -> 192.168.1.2, UDP 1000 -> 2000, data "hi!\n".
    const FULL_PACKET: &str = "4500005212344000401114650a0000010a000002d43112b5003e49f7\
                               0800000000002a00\
                               0200000000020200000000010800\
                               45000020000140004011b778c0a80101c0a80102\
                               03e807d0000ce756\
                               6869210a";

    #[test]
    fn full_packet_through_every_layer() {
        use crate::ethernet::{self, EtherType, EthernetAddress};
        use crate::ip::IpProtocol;
        use crate::{ipv4, udp};
        use std::net::{IpAddr, Ipv4Addr};

        let bytes = hex::decode(FULL_PACKET).unwrap();
        let outer = ipv4::Packet::new_checked(&bytes[..]).unwrap();
        let outer_repr = ipv4::Repr::parse(&outer).unwrap();
        assert_eq!(outer_repr.next_header, IpProtocol::Udp);
        let (osrc, odst) = (
            IpAddr::V4(outer_repr.src_addr),
            IpAddr::V4(outer_repr.dst_addr),
        );
        let outer_udp = udp::Packet::new_checked(outer.payload()).unwrap();
        assert!(outer_udp.verify_checksum(osrc, odst));
        assert_eq!(outer_udp.dst_port(), PORT);
        let vxlan = Packet::new_checked(outer_udp.payload()).unwrap();
        assert_eq!(Repr::parse(&vxlan).unwrap().vni.get(), 42);
        let eth = ethernet::Packet::new_checked(vxlan.payload()).unwrap();
        let eth_repr = ethernet::Repr::parse(&eth).unwrap();
        assert_eq!(eth_repr.ethertype, EtherType::Ipv4);
        assert_eq!(eth_repr.src_addr, EthernetAddress([2, 0, 0, 0, 0, 1]));
        let inner = ipv4::Packet::new_checked(eth.payload()).unwrap();
        let inner_repr = ipv4::Repr::parse(&inner).unwrap();
        assert_eq!(inner_repr.src_addr, Ipv4Addr::new(192, 168, 1, 1));
        let inner_udp = udp::Packet::new_checked(inner.payload()).unwrap();
        let (isrc, idst) = (
            IpAddr::V4(inner_repr.src_addr),
            IpAddr::V4(inner_repr.dst_addr),
        );
        assert!(inner_udp.verify_checksum(isrc, idst));
        assert_eq!(inner_udp.payload(), b"hi!\n");

        // Build the same packet from the inside out with emit.
        let mut out = vec![0u8; bytes.len()];
        let data_at = out.len() - 4;
        out[data_at..].copy_from_slice(b"hi!\n");
        let mut at = data_at;
        at -= udp::HEADER_LEN;
        let mut p = udp::Packet::new_unchecked(&mut out[at..]);
        udp::Repr {
            src_port: 1000,
            dst_port: 2000,
            payload_len: 4,
        }
        .emit(&mut p);
        p.fill_checksum(isrc, idst).unwrap();
        at -= ipv4::HEADER_LEN;
        let len = out.len() - at - ipv4::HEADER_LEN;
        ipv4::Repr {
            payload_len: len,
            ..inner_repr
        }
        .emit(&mut ipv4::Packet::new_unchecked(&mut out[at..]));
        at -= ethernet::HEADER_LEN;
        eth_repr.emit(&mut ethernet::Packet::new_unchecked(&mut out[at..]));
        at -= HEADER_LEN;
        Repr {
            vni: Vni::new(42).unwrap(),
        }
        .emit(&mut Packet::new_unchecked(&mut out[at..]));
        at -= udp::HEADER_LEN;
        let len = out.len() - at - udp::HEADER_LEN;
        let mut p = udp::Packet::new_unchecked(&mut out[at..]);
        udp::Repr {
            src_port: 54321,
            dst_port: PORT,
            payload_len: len,
        }
        .emit(&mut p);
        p.fill_checksum(osrc, odst).unwrap();
        at -= ipv4::HEADER_LEN;
        assert_eq!(at, 0);
        outer_repr.emit(&mut ipv4::Packet::new_unchecked(&mut out[..]));
        assert_eq!(hex::encode(&out), hex::encode(&bytes));
    }

    proptest! {
        #[test]
        fn parse_emit(vni in 0u32..=0xff_ffff) {
            let repr = Repr { vni: Vni::new(vni).unwrap() };
            let mut bytes = [0xffu8; HEADER_LEN];
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            let parsed = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
            prop_assert_eq!(parsed, repr);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                if let Ok(repr) = Repr::parse(&packet) {
                    prop_assert!(repr.vni <= Vni::MAX);
                    prop_assert!(bytes[0] & 0x08 != 0);
                }
            }
        }
    }
}
