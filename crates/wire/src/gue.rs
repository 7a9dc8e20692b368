//! Generic UDP Encapsulation, variant 0 (draft-ietf-intarea-gue-09
//! section 3.1).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | 0 |C|   Hlen  |  Proto/ctype  |             Flags             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! ~                  Extensions Fields (optional)                 ~
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The first two bits are the variant. Variant 0 is the header above.
//! Variant 1 has no GUE header at all: the UDP payload is an IPv4 or IPv6
//! packet, whose version nibble (0100 or 0110) begins with the bits 01.
//! This module handles variant 0 and reports any other variant as
//! [`Error::BadVersion`]; use [`variant`] to dispatch.
//!
//! Hlen counts the 4-byte words of extension fields after the first word,
//! so the header is 4 to 128 bytes long. With C clear, Proto/ctype is the IP
//! protocol number of the payload; with C set, the payload is a control
//! message and Proto/ctype its type. Flags announce extension fields, which
//! this module carries as opaque bytes.
//!
//! GUE has no IANA-assigned port: the draft leaves the UDP port to
//! configuration, and so does tunsec.

use crate::view::check_announced;
use crate::{Error, Result};

mod field {
    use crate::Field;
    pub(crate) const VER_C_HLEN: usize = 0;
    pub(crate) const PROTO_CTYPE: usize = 1;
    pub(crate) const FLAGS: Field = 2..4;
    pub(crate) const EXTENSIONS: usize = 4;
}

/// Length of the fixed part of the variant 0 header.
pub const HEADER_LEN: usize = field::EXTENSIONS;
/// The longest extension fields: Hlen 31, in 4-byte words.
pub const MAX_EXT_LEN: usize = 31 * 4;

/// The GUE variant of a UDP payload: the top two bits of its first byte.
/// Returns [`Error::Truncated`] for an empty payload.
///
/// 0 is a GUE header ([`Packet`]); 1 is a bare IPv4 or IPv6 packet.
pub fn variant(udp_payload: &[u8]) -> Result<u8> {
    udp_payload.first().map(|b| b >> 6).ok_or(Error::Truncated)
}

crate::view::packet_view! {
    /// A read/write view of a GUE variant 0 packet.
    fields {
        /// Proto/ctype: the IP protocol of the payload, or the control message
        /// type when [`Self::control`] is set.
        pub proto_ctype, set_proto_ctype: u8 = field::PROTO_CTYPE;
        /// The Flags field.
        pub flags, set_flags: u16 = field::FLAGS;
    }
    bits {
        /// The variant (0 for this header format).
        pub variant, set_variant: u8 = field::VER_C_HLEN, mask 0xc0_u8;
        /// The C bit: the payload is a control message.
        pub control, set_control: bool = field::VER_C_HLEN, mask 0x20_u8;
        /// Hlen: the extension fields' length in 4-byte words.
        hlen, set_hlen: u8 = field::VER_C_HLEN, mask 0x1f_u8;
    }
    slices {
        /// The extension fields, as raw bytes.
        pub extensions, extensions_mut = |p| HEADER_LEN..p.header_len();
        /// The payload after the extension fields.
        pub payload, payload_mut = |p| p.header_len()..;
    }
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks that the buffer holds the first word and the extension fields
    /// that Hlen announces.
    ///
    /// Returns [`Error::Truncated`] if it does not, and
    /// [`Error::BadVersion`] for a variant other than 0: Hlen exists only in
    /// variant 0, so the lengths of anything else cannot be checked.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.variant() != 0 {
            return Err(Error::BadVersion);
        }
        // The announced length is never below HEADER_LEN.
        check_announced(len, HEADER_LEN, || self.header_len())?;
        Ok(())
    }

    /// The length of the extension fields in bytes: Hlen times 4.
    pub fn ext_len(&self) -> usize {
        usize::from(self.hlen()) * 4
    }

    /// The header length: 4 plus the extension fields.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.ext_len()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets Hlen from a length in bytes (a multiple of 4, at most
    /// [`MAX_EXT_LEN`]).
    pub fn set_ext_len(&mut self, len: usize) {
        debug_assert!(len.is_multiple_of(4) && len <= MAX_EXT_LEN);
        self.set_hlen((len / 4) as u8);
    }
}

/// The GUE variant 0 header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The C bit: a control message.
    pub control: bool,
    /// The payload's IP protocol, or the control message type.
    pub proto_ctype: u8,
    /// The Flags field. This module assigns no meaning to any flag.
    pub flags: u16,
    /// The length of the extension fields in bytes (a multiple of 4, at
    /// most [`MAX_EXT_LEN`]); their contents are the caller's.
    pub ext_len: usize,
}

impl Repr {
    /// Parses a packet: variant 0 only ([`Error::BadVersion`] otherwise,
    /// including variant 1, direct IP encapsulation), with the extension
    /// fields inside the buffer ([`Error::Truncated`] otherwise).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        Ok(Self {
            control: packet.control(),
            proto_ctype: packet.proto_ctype(),
            flags: packet.flags(),
            ext_len: packet.ext_len(),
        })
    }

    /// The header length: 4 plus the extension fields.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.ext_len
    }

    /// Writes the first word of the header. The extension fields
    /// (`ext_len` bytes after it) are left for the caller.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.buffer.as_mut()[field::VER_C_HLEN] = 0;
        packet.set_control(self.control);
        packet.set_ext_len(self.ext_len);
        packet.set_proto_ctype(self.proto_ctype);
        packet.set_flags(self.flags);
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;

    // Variant 0, data message, Hlen 1, Proto 4 (IPv4), flags 0x8000, one
    // word of extension fields (11 22 33 44), then the start of an IPv4
    // header.
    static PACKET_BYTES: [u8; 10] = [0x01, 0x04, 0x80, 0x00, 0x11, 0x22, 0x33, 0x44, 0x45, 0x00];

    fn repr() -> Repr {
        Repr {
            control: false,
            proto_ctype: 4,
            flags: 0x8000,
            ext_len: 4,
        }
    }

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.variant(), 0);
        assert!(!packet.control());
        assert_eq!(packet.ext_len(), 4);
        assert_eq!(packet.header_len(), 8);
        assert_eq!(packet.proto_ctype(), 4);
        assert_eq!(packet.flags(), 0x8000);
        assert_eq!(packet.extensions(), &[0x11, 0x22, 0x33, 0x44]);
        assert_eq!(packet.payload(), &[0x45, 0x00]);
        assert_eq!(Repr::parse(&packet).unwrap(), repr());
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0xa5u8; 10];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        repr().emit(&mut packet);
        packet
            .extensions_mut()
            .copy_from_slice(&[0x11, 0x22, 0x33, 0x44]);
        packet.payload_mut().copy_from_slice(&[0x45, 0x00]);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn control_message() {
        // C set, Hlen 0, ctype 7.
        let bytes = [0x20, 0x07, 0x00, 0x00, 0xaa];
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        let repr = Repr::parse(&packet).unwrap();
        assert!(repr.control);
        assert_eq!(repr.proto_ctype, 7);
        assert_eq!(repr.ext_len, 0);
        assert_eq!(packet.payload(), &[0xaa]);
    }

    #[test]
    fn other_variants() {
        // Variant 1: an IPv4 header (0x45) and an IPv6 header (0x60).
        let ipv4 = [0x45, 0x00, 0x00, 0x14];
        let ipv6 = [0x60, 0x00, 0x00, 0x00];
        assert_eq!(variant(&ipv4), Ok(1));
        assert_eq!(variant(&ipv6), Ok(1));
        assert_eq!(variant(&PACKET_BYTES), Ok(0));
        assert_eq!(variant(&[]), Err(Error::Truncated));
        assert_eq!(
            Packet::new_checked(&ipv4[..]).unwrap_err(),
            Error::BadVersion
        );
        assert_eq!(
            Packet::new_checked(&ipv6[..]).unwrap_err(),
            Error::BadVersion
        );
        // Variants 2 and 3 are not defined.
        assert_eq!(
            Packet::new_checked(&[0x80, 0, 0, 0][..]).unwrap_err(),
            Error::BadVersion
        );
        assert_eq!(
            Packet::new_checked(&[0xc0, 0, 0, 0][..]).unwrap_err(),
            Error::BadVersion
        );
    }

    #[test]
    fn truncated() {
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..3]).unwrap_err(),
            Error::Truncated
        );
        // Hlen 1 but no extension word.
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..7]).unwrap_err(),
            Error::Truncated
        );
        // Hlen 31: 128 bytes of header.
        let mut bytes = [0u8; 128];
        bytes[0] = 0x1f;
        assert_eq!(
            Packet::new_checked(&bytes[..127]).unwrap_err(),
            Error::Truncated
        );
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.ext_len(), MAX_EXT_LEN);
        assert!(packet.payload().is_empty());
    }

    proptest! {
        #[test]
        fn parse_emit(control: bool, proto_ctype: u8, flags: u16, words in 0usize..=31) {
            let repr = Repr { control, proto_ctype, flags, ext_len: words * 4 };
            let mut bytes = vec![0xffu8; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            let parsed = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
            prop_assert_eq!(parsed, repr);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..140)) {
            match Packet::new_checked(&bytes[..]) {
                Ok(packet) => {
                    let repr = Repr::parse(&packet).unwrap();
                    prop_assert_eq!(repr.buffer_len() + packet.payload().len(), bytes.len());
                }
                Err(e) => prop_assert!(e == Error::Truncated || e == Error::BadVersion),
            }
        }
    }
}
