//! The TCP header (RFC 9293 section 3.1), with its checksum over the IPv4
//! or IPv6 pseudo-header.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Source Port          |       Destination Port        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                        Sequence Number                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Acknowledgment Number                      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Data |       |C|E|U|A|P|R|S|F|                               |
//! | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
//! |       |       |R|E|G|K|H|T|N|N|                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           Checksum            |         Urgent Pointer        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                           [Options]                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                             Data ...                          |
//! ```
//!
//! TCP has no length field of its own: the segment is the IP payload, so
//! wrap exactly that slice (for IPv4 [`crate::ipv4::Packet::payload`],
//! which stops at Total Length). [`Packet::payload`] is everything after
//! Data Offset. Options are carried opaque. There is no `Repr`: tunsec
//! only rewrites a few fields of segments it forwards (sequence number,
//! flags, checksum) and never builds one from scratch.

use std::net::IpAddr;

use crate::{Error, Result, checksum};

mod field {
    use crate::Field;
    pub(crate) const SRC_PORT: Field = 0..2;
    pub(crate) const DST_PORT: Field = 2..4;
    pub(crate) const SEQ_NUM: Field = 4..8;
    pub(crate) const ACK_NUM: Field = 8..12;
    pub(crate) const DATA_OFF: usize = 12;
    pub(crate) const FLAGS: usize = 13;
    pub(crate) const WINDOW: Field = 14..16;
    pub(crate) const CHECKSUM: Field = 16..18;
    pub(crate) const URGENT: Field = 18..20;
}

/// Length of the TCP header without options.
pub const HEADER_LEN: usize = field::URGENT.end;
/// Length of the longest TCP header: Data Offset 15, 40 bytes of options.
pub const MAX_HEADER_LEN: usize = 15 * 4;
/// Offset of the Checksum field in the header (the `csum_offset` of a
/// virtio-net header that asks for a TCP checksum).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// The IP protocol number of TCP, as the pseudo-header carries it.
const PROTOCOL: u8 = 6;

/// The control bits of the flags byte (RFC 9293 section 3.1, RFC 3168
/// section 23.2 for CWR and ECE).
pub mod flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// The Acknowledgment Number field is significant.
    pub const ACK: u8 = 0x10;
    /// The Urgent Pointer field is significant.
    pub const URG: u8 = 0x20;
    /// ECN-Echo.
    pub const ECE: u8 = 0x40;
    /// Congestion Window Reduced.
    pub const CWR: u8 = 0x80;
}

crate::view::packet_view! {
    /// A read/write view of a TCP segment (header, options and data).
    fields {
        /// The Source Port.
        pub src_port, set_src_port: u16 = field::SRC_PORT;
        /// The Destination Port.
        pub dst_port, set_dst_port: u16 = field::DST_PORT;
        /// The Sequence Number.
        pub seq_number, set_seq_number: u32 = field::SEQ_NUM;
        /// The Acknowledgment Number.
        pub ack_number, set_ack_number: u32 = field::ACK_NUM;
        /// The eight control bits (see [`flags`]).
        pub flags, set_flags: u8 = field::FLAGS;
        /// The Window.
        pub window, set_window: u16 = field::WINDOW;
        /// The Checksum field.
        pub checksum, set_checksum: u16 = field::CHECKSUM;
        /// The Urgent Pointer.
        pub urgent, set_urgent: u16 = field::URGENT;
    }
    /// Checks that the buffer holds the fixed header and the options that
    /// Data Offset announces.
    ///
    /// Returns [`Error::Truncated`] when the buffer is shorter than 20
    /// bytes or than the header length, and [`Error::BadLength`] when Data
    /// Offset is below 5.
    //= https://www.rfc-editor.org/rfc/rfc9293#section-3.1
    //# Data Offset (DOffset): 4 bits
    //#
    //#    The number of 32-bit words in the TCP header.  This indicates
    //#    where the data begins.
    check_len: HEADER_LEN, |p| p.header_len();
    bits {
        /// Data Offset: the header length in 4-byte words.
        data_offset: u8 = field::DATA_OFF, mask 0xf0_u8;
    }
    slices {
        /// The options (and their padding) between the fixed header and the
        /// data.
        pub options, options_mut = |p| HEADER_LEN..p.header_len();
        /// The data after the header, to the end of the buffer.
        pub payload, payload_mut = |p| p.header_len()..;
    }
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// The header length in bytes, options included: Data Offset times 4.
    pub fn header_len(&self) -> usize {
        usize::from(self.data_offset()) * 4
    }

    /// The partial sum of the pseudo-header for this segment sent from
    /// `src` to `dst`, or `None` for addresses of different families.
    pub fn pseudo_header_sum(&self, src: IpAddr, dst: IpAddr) -> Option<u32> {
        let len = self.buffer.as_ref().len() as u32;
        checksum::pseudo_header(src, dst, PROTOCOL, len)
    }

    /// Whether the checksum verifies for a segment sent from `src` to
    /// `dst` (the addresses of the enclosing IP header). Addresses of
    /// different families never verify.
    //= https://www.rfc-editor.org/rfc/rfc9293#section-3.1
    //# The checksum field is the 16-bit ones' complement of the ones'
    //# complement sum of all 16-bit words in the header and text.
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        self.pseudo_header_sum(src, dst)
            .is_some_and(|pseudo| checksum::verifies(pseudo, self.buffer.as_ref()))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets Data Offset from a header length in bytes (a multiple of 4,
    /// from 20 to 60). The reserved bits are cleared.
    pub fn set_header_len(&mut self, len: usize) {
        debug_assert!(len.is_multiple_of(4) && (HEADER_LEN..=MAX_HEADER_LEN).contains(&len));
        self.buffer.as_mut()[field::DATA_OFF] = ((len / 4) as u8) << 4;
    }

    /// Computes the checksum over the pseudo-header for `src` and `dst`
    /// and the whole buffer (header, options, data), and writes it.
    ///
    /// Returns [`Error::Malformed`], and writes nothing, if `src` and `dst`
    /// are not of the same family.
    //= https://www.rfc-editor.org/rfc/rfc9293#section-3.1
    //# While computing the checksum, the checksum field itself is replaced
    //# with zeros.
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) -> Result<()> {
        let pseudo = self.pseudo_header_sum(src, dst).ok_or(Error::Malformed)?;
        self.set_checksum(0);
        self.set_checksum(checksum::checksum_after(pseudo, self.buffer.as_ref()));
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SRC4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1));
    const DST4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 0, 199));

    // 4660 -> 80, seq 0x01020304, ack 0x0a0b0c0d, data offset 8 (12 bytes
    // of options: NOP NOP timestamps 1/2), ACK|PSH, window 502, urgent 0,
    // data "hi!". The checksum by hand, 192.168.0.1 -> 192.168.0.199:
    //   pseudo-header c0a8 + 0001 + c0a8 + 00c7 + 0006 + 0023 (35 bytes)
    //                 = 0x18241
    //   header        1234 + 0050 + 0102 + 0304 + 0a0b + 0c0d + 8018
    //                 + 01f6 + 0000 + 0000 = 0xaeb0
    //   options       0101 + 080a + 0000 + 0001 + 0000 + 0002 = 0x090e
    //   data          6869 + 2100 = 0x8969
    //   total 0x18241 + 0xaeb0 + 0x090e + 0x8969 = 0x2c368
    //   -> 0xc368 + 2 = 0xc36a, complemented 0x3c95.
    static SEGMENT: [u8; 35] = [
        0x12, 0x34, 0x00, 0x50, 0x01, 0x02, 0x03, 0x04, 0x0a, 0x0b, 0x0c, 0x0d, 0x80, 0x18, 0x01,
        0xf6, 0x3c, 0x95, 0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
        0x00, 0x02, b'h', b'i', b'!',
    ];

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&SEGMENT[..]).unwrap();
        assert_eq!(packet.src_port(), 4660);
        assert_eq!(packet.dst_port(), 80);
        assert_eq!(packet.seq_number(), 0x0102_0304);
        assert_eq!(packet.ack_number(), 0x0a0b_0c0d);
        assert_eq!(packet.header_len(), 32);
        assert_eq!(packet.flags(), flags::ACK | flags::PSH);
        assert_eq!(packet.window(), 502);
        assert_eq!(packet.checksum(), 0x3c95);
        assert_eq!(packet.urgent(), 0);
        assert_eq!(packet.options(), &SEGMENT[20..32]);
        assert_eq!(packet.payload(), b"hi!");
        assert!(packet.verify_checksum(SRC4, DST4));
        assert!(!packet.verify_checksum(SRC4, IpAddr::V4(Ipv4Addr::new(192, 168, 0, 2))));
        assert!(!packet.verify_checksum(SRC4, IpAddr::V6(Ipv6Addr::LOCALHOST)));
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0xa5u8; 35];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.set_src_port(4660);
        packet.set_dst_port(80);
        packet.set_seq_number(0x0102_0304);
        packet.set_ack_number(0x0a0b_0c0d);
        packet.set_header_len(32);
        packet.set_flags(flags::ACK | flags::PSH);
        packet.set_window(502);
        packet.set_urgent(0);
        packet.options_mut().copy_from_slice(&SEGMENT[20..32]);
        packet.payload_mut().copy_from_slice(b"hi!");
        packet.fill_checksum(SRC4, DST4).unwrap();
        assert_eq!(bytes, SEGMENT);
    }

    #[test]
    fn ipv6_checksum() {
        let src: IpAddr = "2001:db8::1".parse().unwrap();
        let dst: IpAddr = "2001:db8::2".parse().unwrap();
        let mut bytes = SEGMENT;
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        packet.fill_checksum(src, dst).unwrap();
        assert!(packet.verify_checksum(src, dst));
        assert!(!packet.verify_checksum(src, "2001:db8::3".parse().unwrap()));
        assert_eq!(packet.fill_checksum(SRC4, dst), Err(Error::Malformed));
    }

    #[test]
    fn lengths() {
        assert_eq!(
            Packet::new_checked(&SEGMENT[..19]).unwrap_err(),
            Error::Truncated
        );
        // Data Offset 8 needs 32 bytes.
        assert_eq!(
            Packet::new_checked(&SEGMENT[..31]).unwrap_err(),
            Error::Truncated
        );
        assert!(
            Packet::new_checked(&SEGMENT[..32])
                .unwrap()
                .payload()
                .is_empty()
        );
        let mut bytes = SEGMENT;
        bytes[12] = 0x40;
        assert_eq!(
            Packet::new_checked(&bytes[..]).unwrap_err(),
            Error::BadLength
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(packet) = Packet::new_checked(&bytes[..]) {
                let _ = (packet.options(), packet.payload(), packet.flags(), packet.urgent());
                let _ = packet.verify_checksum(SRC4, DST4);
                prop_assert_eq!(packet.header_len() + packet.payload().len(), bytes.len());
            }
        }

        #[test]
        fn filled_checksum_verifies(
            mut bytes in proptest::collection::vec(any::<u8>(), 20..200),
            doff in 5u8..16,
        ) {
            bytes[12] = doff << 4;
            let ok = usize::from(doff) * 4 <= bytes.len();
            match Packet::new_checked(&mut bytes[..]) {
                Ok(mut packet) => {
                    prop_assert!(ok);
                    packet.fill_checksum(SRC4, DST4).unwrap();
                    prop_assert!(packet.verify_checksum(SRC4, DST4));
                }
                Err(e) => {
                    prop_assert!(!ok);
                    prop_assert_eq!(e, Error::Truncated);
                }
            }
        }
    }
}
