//! Ethernet II frames (IEEE 802.3), with an optional 802.1Q VLAN tag.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  Destination Address (6 bytes)                |
//! +                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                               |                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
//! |                    Source Address (6 bytes)                   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     EtherType / TPID 0x8100   |  PCP  |D|         VID         |  (tag
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+   only
//! |     EtherType (tagged)        |                                  if
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                                  TPID)
//! ```
//!
//! When the field after the source address is the TPID 0x8100, a 4-byte
//! 802.1Q tag (TPID, then PCP, DEI and VID) sits there and the EtherType of
//! the payload follows it: the header is 18 bytes instead of 14. Only one
//! tag is read; in a double-tagged frame the inner tag is the start of the
//! payload and [`Packet::ethertype`] is [`EtherType::Vlan`]. The frame check
//! sequence is not part of the buffer (TAP devices and sockets strip it).

use core::fmt;

use crate::view::FieldValue;
use crate::{Field, Result};

mod field {
    use crate::Field;
    pub(crate) const DESTINATION: Field = 0..6;
    pub(crate) const SOURCE: Field = 6..12;
    pub(crate) const ETHERTYPE: Field = 12..14;
    pub(crate) const TCI: Field = 14..16;
    pub(crate) const TAGGED_ETHERTYPE: Field = 16..18;
}

/// Length of an untagged Ethernet II header.
pub const HEADER_LEN: usize = field::ETHERTYPE.end;
/// Length of a header with one 802.1Q tag.
pub const TAGGED_HEADER_LEN: usize = field::TAGGED_ETHERTYPE.end;

/// An EtherType.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EtherType {
    /// IPv4 (0x0800).
    Ipv4,
    /// ARP (0x0806).
    Arp,
    /// IPv6 (0x86DD).
    Ipv6,
    /// An 802.1Q VLAN tag (TPID 0x8100).
    Vlan,
    /// Any other value (values below 0x0600 are 802.3 lengths, not types).
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(value: u16) -> Self {
        match value {
            0x0800 => Self::Ipv4,
            0x0806 => Self::Arp,
            0x86dd => Self::Ipv6,
            0x8100 => Self::Vlan,
            other => Self::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(value: EtherType) -> Self {
        match value {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Vlan => 0x8100,
            EtherType::Unknown(other) => other,
        }
    }
}

/// A 48-bit Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    /// The broadcast address ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: Self = Self([0xff; 6]);

    /// Reads an address from the first 6 bytes of `data`, or `None` if it
    /// is shorter.
    pub fn from_bytes(data: &[u8]) -> Option<Self> {
        let b = data.get(..6)?;
        Some(Self([b[0], b[1], b[2], b[3], b[4], b[5]]))
    }

    /// The address as bytes.
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    /// Whether this is the broadcast address.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Whether the group bit (the low bit of the first byte) is set. The
    /// broadcast address is a multicast address too.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Whether this is an individual (not group) address.
    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// Whether the locally administered bit is set.
    pub const fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

/// An address is its 6 bytes on the wire.
impl FieldValue for EthernetAddress {
    #[inline]
    fn read(bytes: &[u8]) -> Self {
        let mut octets = [0u8; 6];
        octets.copy_from_slice(bytes);
        Self(octets)
    }

    #[inline]
    fn write(self, bytes: &mut [u8]) {
        bytes.copy_from_slice(&self.0);
    }
}

impl fmt::Display for EthernetAddress {
    /// Lower-case hex bytes separated by colons: `aa:bb:cc:dd:ee:ff`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// The fields of an 802.1Q tag control information (TCI) word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VlanTag {
    /// Priority Code Point (3 bits).
    pub pcp: u8,
    /// Drop Eligible Indicator.
    pub dei: bool,
    /// VLAN identifier (12 bits).
    pub vid: u16,
}

impl VlanTag {
    /// Splits a TCI word.
    pub const fn from_tci(tci: u16) -> Self {
        Self {
            pcp: (tci >> 13) as u8,
            dei: tci & 0x1000 != 0,
            vid: tci & 0x0fff,
        }
    }

    /// Builds the TCI word. Bits of `pcp` above 3 and of `vid` above 12 are
    /// dropped.
    pub const fn tci(&self) -> u16 {
        ((self.pcp as u16 & 0x7) << 13) | ((self.dei as u16) << 12) | (self.vid & 0x0fff)
    }
}

crate::view::packet_view! {
    /// A read/write view of an Ethernet II frame.
    fields {
        /// The Destination Address.
        pub dst_addr, set_dst_addr: EthernetAddress = field::DESTINATION;
        /// The Source Address.
        pub src_addr, set_src_addr: EthernetAddress = field::SOURCE;
    }
    /// Checks that the buffer holds the header: 14 bytes, or 18 when the
    /// frame carries an 802.1Q tag.
    //
    // The announced length is never below HEADER_LEN.
    check_len: HEADER_LEN, |p| p.header_len();
    slices {
        /// Everything after the header.
        pub payload, payload_mut = |p| p.header_len()..;
    }
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Whether the frame carries an 802.1Q tag (TPID 0x8100 after the
    /// source address).
    pub fn is_tagged(&self) -> bool {
        u16::read(&self.buffer.as_ref()[field::ETHERTYPE]) == u16::from(EtherType::Vlan)
    }

    /// The 802.1Q tag, if any.
    pub fn vlan(&self) -> Option<VlanTag> {
        self.is_tagged()
            .then(|| VlanTag::from_tci(u16::read(&self.buffer.as_ref()[field::TCI])))
    }

    /// Where the EtherType of the payload is: after the tag, if there is
    /// one.
    fn ethertype_field(&self) -> Field {
        if self.is_tagged() {
            field::TAGGED_ETHERTYPE
        } else {
            field::ETHERTYPE
        }
    }

    /// The EtherType of the payload (after the tag, if there is one).
    pub fn ethertype(&self) -> EtherType {
        EtherType::from(u16::read(&self.buffer.as_ref()[self.ethertype_field()]))
    }

    /// The header length: 14, or 18 with an 802.1Q tag.
    pub fn header_len(&self) -> usize {
        if self.is_tagged() {
            TAGGED_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes an 802.1Q tag (TPID and TCI) after the source address. The
    /// frame is tagged from then on: set the EtherType afterwards, it goes
    /// after the tag.
    pub fn set_vlan(&mut self, tag: VlanTag) {
        let buf = self.buffer.as_mut();
        u16::from(EtherType::Vlan).write(&mut buf[field::ETHERTYPE]);
        tag.tci().write(&mut buf[field::TCI]);
    }

    /// Sets the EtherType of the payload: after the tag if the frame is
    /// tagged, right after the source address otherwise.
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        let f = self.ethertype_field();
        u16::from(ethertype).write(&mut self.buffer.as_mut()[f]);
    }
}

/// The Ethernet header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The Source Address.
    pub src_addr: EthernetAddress,
    /// The Destination Address.
    pub dst_addr: EthernetAddress,
    /// The 802.1Q tag, if any.
    pub vlan: Option<VlanTag>,
    /// The EtherType of the payload.
    pub ethertype: EtherType,
}

impl Repr {
    /// Parses a checked frame.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        Ok(Self {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            vlan: packet.vlan(),
            ethertype: packet.ethertype(),
        })
    }

    /// The header length: 14, or 18 with a tag.
    pub const fn buffer_len(&self) -> usize {
        if self.vlan.is_some() {
            TAGGED_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// Writes the header. An untagged `Repr` must not have the EtherType
    /// [`EtherType::Vlan`] (the result would read back as tagged).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.set_dst_addr(self.dst_addr);
        packet.set_src_addr(self.src_addr);
        // Where the EtherType goes is this Repr's, not what the buffer
        // held before.
        let ethertype_field = match self.vlan {
            Some(tag) => {
                packet.set_vlan(tag);
                field::TAGGED_ETHERTYPE
            }
            None => {
                debug_assert!(self.ethertype != EtherType::Vlan);
                field::ETHERTYPE
            }
        };
        u16::from(self.ethertype).write(&mut packet.buffer.as_mut()[ethertype_field]);
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::Error;
    use proptest::prelude::*;

    const DST: EthernetAddress = EthernetAddress([0x01, 0x02, 0x03, 0x04, 0x05, 0x06]);
    const SRC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);

    // Untagged IPv4 frame with a 4-byte payload.
    static FRAME_BYTES: [u8; 18] = [
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x52, 0x54, 0x00, 0xab, 0xcd, 0xef, 0x08, 0x00, 0xaa,
        0xbb, 0xcc, 0xdd,
    ];

    // Tagged IPv6 frame: PCP 5, DEI 1, VID 0x123 -> TCI 0xb123.
    static TAGGED_BYTES: [u8; 20] = [
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x52, 0x54, 0x00, 0xab, 0xcd, 0xef, 0x81, 0x00, 0xb1,
        0x23, 0x86, 0xdd, 0xaa, 0xbb,
    ];

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&FRAME_BYTES[..]).unwrap();
        assert_eq!(packet.dst_addr(), DST);
        assert_eq!(packet.src_addr(), SRC);
        assert!(!packet.is_tagged());
        assert_eq!(packet.vlan(), None);
        assert_eq!(packet.ethertype(), EtherType::Ipv4);
        assert_eq!(packet.header_len(), 14);
        assert_eq!(packet.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(
            Repr::parse(&packet).unwrap(),
            Repr {
                src_addr: SRC,
                dst_addr: DST,
                vlan: None,
                ethertype: EtherType::Ipv4
            }
        );
    }

    #[test]
    fn test_deconstruct_tagged() {
        let packet = Packet::new_checked(&TAGGED_BYTES[..]).unwrap();
        let tag = VlanTag {
            pcp: 5,
            dei: true,
            vid: 0x123,
        };
        assert_eq!(packet.vlan(), Some(tag));
        assert_eq!(packet.ethertype(), EtherType::Ipv6);
        assert_eq!(packet.header_len(), 18);
        assert_eq!(packet.payload(), &[0xaa, 0xbb]);
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(repr.vlan, Some(tag));
        assert_eq!(repr.buffer_len(), 18);
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0xa5u8; 18];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        Repr {
            src_addr: SRC,
            dst_addr: DST,
            vlan: None,
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut packet);
        packet
            .payload_mut()
            .copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(bytes, FRAME_BYTES);

        // The untagged emit must not be fooled by a stale TPID.
        let mut bytes = TAGGED_BYTES;
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        Repr {
            src_addr: SRC,
            dst_addr: DST,
            vlan: None,
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut packet);
        assert_eq!(&bytes[12..14], &[0x08, 0x00]);
    }

    #[test]
    fn test_construct_tagged() {
        let mut bytes = [0u8; 20];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        Repr {
            src_addr: SRC,
            dst_addr: DST,
            vlan: Some(VlanTag {
                pcp: 5,
                dei: true,
                vid: 0x123,
            }),
            ethertype: EtherType::Ipv6,
        }
        .emit(&mut packet);
        packet.payload_mut().copy_from_slice(&[0xaa, 0xbb]);
        assert_eq!(bytes, TAGGED_BYTES);
    }

    #[test]
    fn truncated() {
        assert_eq!(
            Packet::new_checked(&FRAME_BYTES[..13]).unwrap_err(),
            Error::Truncated
        );
        // A TPID without the rest of the tag.
        assert_eq!(
            Packet::new_checked(&TAGGED_BYTES[..17]).unwrap_err(),
            Error::Truncated
        );
        assert!(Packet::new_checked(&TAGGED_BYTES[..18]).is_ok());
        assert!(Packet::new_checked(&FRAME_BYTES[..14]).is_ok());
    }

    #[test]
    fn addresses() {
        assert!(EthernetAddress::BROADCAST.is_broadcast());
        assert!(EthernetAddress::BROADCAST.is_multicast());
        assert!(DST.is_multicast());
        assert!(!DST.is_unicast());
        assert!(SRC.is_unicast());
        assert!(SRC.is_local());
        assert!(!SRC.is_broadcast());
        assert_eq!(SRC.to_string(), "52:54:00:ab:cd:ef");
        assert_eq!(EthernetAddress::from_bytes(&FRAME_BYTES[6..]), Some(SRC));
        assert_eq!(EthernetAddress::from_bytes(&[1, 2, 3]), None);
    }

    #[test]
    fn ethertypes() {
        for (n, t) in [
            (0x0800, EtherType::Ipv4),
            (0x0806, EtherType::Arp),
            (0x86dd, EtherType::Ipv6),
            (0x8100, EtherType::Vlan),
            (0x88a8, EtherType::Unknown(0x88a8)),
        ] {
            assert_eq!(EtherType::from(n), t);
            assert_eq!(u16::from(t), n);
        }
    }

    fn arb_repr() -> impl Strategy<Value = Repr> {
        let tag = (0u8..8, any::<bool>(), 0u16..4096).prop_map(|(pcp, dei, vid)| VlanTag {
            pcp,
            dei,
            vid,
        });
        (
            any::<[u8; 6]>(),
            any::<[u8; 6]>(),
            proptest::option::of(tag),
            any::<u16>(),
        )
            .prop_filter_map("untagged VLAN EtherType", |(s, d, vlan, et)| {
                let ethertype = EtherType::from(et);
                (vlan.is_some() || ethertype != EtherType::Vlan).then_some(Repr {
                    src_addr: EthernetAddress(s),
                    dst_addr: EthernetAddress(d),
                    vlan,
                    ethertype,
                })
            })
    }

    proptest! {
        #[test]
        fn parse_emit(repr in arb_repr(), payload in proptest::collection::vec(any::<u8>(), 0..20)) {
            let mut bytes = vec![0u8; repr.buffer_len() + payload.len()];
            let mut packet = Packet::new_unchecked(&mut bytes[..]);
            repr.emit(&mut packet);
            packet.payload_mut().copy_from_slice(&payload);
            let packet = Packet::new_checked(&bytes[..]).unwrap();
            prop_assert_eq!(Repr::parse(&packet).unwrap(), repr);
            prop_assert_eq!(packet.payload(), &payload[..]);
        }

        #[test]
        fn tci_round_trip(tci: u16) {
            prop_assert_eq!(VlanTag::from_tci(tci).tci(), tci);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = Repr::parse(&packet);
                prop_assert_eq!(packet.header_len() + packet.payload().len(), bytes.len());
            }
        }
    }
}
