//! The ESP header and trailer (RFC 4303 section 2).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ ----
//! |               Security Parameters Index (SPI)                 | ^Int.
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ |Cov-
//! |                      Sequence Number                          | |ered
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ | ----
//! |                    Payload Data* (variable)                   | |   ^
//! ~                                                               ~ |   |
//! |                                                               | |Conf.
//! +               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ |Cov-
//! |               |     Padding (0-255 bytes)                     | |ered*
//! +-+-+-+-+-+-+-+-+               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ |   |
//! |                               |  Pad Length   | Next Header   | v   v
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ ------
//! |         Integrity Check Value-ICV   (variable)                |
//! ~                                                               ~
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The header view covers the SPI and the sequence number. Where the IV, the
//! ciphertext and the ICV begin and end depends on the cipher suite, which
//! this crate does not know; `tunsec-esp` slices them. The trailer view
//! covers the last two bytes of the decrypted payload and the padding before
//! them.

use crate::{Error, Result};

mod field {
    use crate::{Field, Rest};
    pub(crate) const SPI: Field = 0..4;
    pub(crate) const SEQUENCE_NUMBER: Field = 4..8;
    pub(crate) const PAYLOAD: Rest = 8..;
}

/// Length of the ESP header: SPI and sequence number.
pub const HEADER_LEN: usize = field::SEQUENCE_NUMBER.end;
/// Length of the fixed trailer: pad length and next header.
pub const TRAILER_LEN: usize = 2;
/// The largest padding the pad length field can describe.
pub const MAX_PADDING: usize = 255;

crate::view::packet_view! {
    /// A read/write view of an ESP packet (header, then everything after it).
    fields {
        /// The Security Parameters Index.
        pub spi, set_spi: u32 = field::SPI;
        /// The low-order 32 bits of the sequence number.
        pub sequence_number, set_sequence_number: u32 = field::SEQUENCE_NUMBER;
    }
    /// Checks that the buffer holds at least the ESP header.
    check_len: HEADER_LEN, |p| HEADER_LEN;
    slices {
        /// Everything after the header: IV, ciphertext, trailer and ICV.
        pub payload, payload_mut = |p| field::PAYLOAD;
    }
}

/// The ESP header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The Security Parameters Index. Never 0 on the wire.
    pub spi: u32,
    /// The low-order 32 bits of the sequence number.
    pub sequence_number: u32,
}

impl Repr {
    /// Parses the header of a checked packet.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&T>) -> Result<Self> {
        packet.check_len()?;
        //= https://www.rfc-editor.org/rfc/rfc4303#section-2.1
        //# The SPI value of zero (0) is reserved for local, implementation-
        //# specific use and MUST NOT be sent on the wire.
        let spi = packet.spi();
        if spi == 0 {
            return Err(Error::Malformed);
        }
        Ok(Self {
            spi,
            sequence_number: packet.sequence_number(),
        })
    }

    /// The header length: 8 bytes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into a packet.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]> + ?Sized>(&self, packet: &mut Packet<&mut T>) {
        packet.set_spi(self.spi);
        packet.set_sequence_number(self.sequence_number);
    }
}

/// The ESP trailer, read from the end of a decrypted payload.
///
/// ```text
/// ... payload | padding (0-255) | pad length | next header |
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrailerRepr {
    /// How many padding bytes precede the pad length byte.
    pub pad_len: u8,
    /// The IP protocol number of the payload (RFC 4303 section 2.6); 59 for
    /// a dummy packet.
    pub next_header: u8,
}

impl TrailerRepr {
    /// Reads the trailer at the end of `plaintext` (the decrypted payload,
    /// trailer included) and checks the padding.
    ///
    /// Returns the trailer and the length of the payload data before the
    /// padding.
    pub fn parse(plaintext: &[u8]) -> Result<(Self, usize)> {
        let len = plaintext.len();
        if len < TRAILER_LEN {
            return Err(Error::Truncated);
        }
        let pad_len = plaintext[len - 2];
        let next_header = plaintext[len - 1];
        let padding_start = len
            .checked_sub(TRAILER_LEN + usize::from(pad_len))
            .ok_or(Error::BadLength)?;
        //= https://www.rfc-editor.org/rfc/rfc4303#section-2.4
        //# If Padding bytes are needed but the encryption algorithm does not
        //# specify the padding contents, then the following default processing
        //# MUST be used.  The Padding bytes are initialized with a series of
        //# (unsigned, 1-byte) integer values.  The first padding byte appended
        //# to the plaintext is numbered 1, with subsequent padding bytes making
        //# up a monotonically increasing sequence: 1, 2, 3, ....
        //# [...] the receiver SHOULD inspect the Padding field.
        if !default_padding_ok(&plaintext[padding_start..len - TRAILER_LEN]) {
            return Err(Error::Malformed);
        }
        Ok((
            Self {
                pad_len,
                next_header,
            },
            padding_start,
        ))
    }

    /// The trailer length including padding.
    pub const fn buffer_len(&self) -> usize {
        self.pad_len as usize + TRAILER_LEN
    }

    /// Writes padding (1, 2, 3, ...), pad length and next header into
    /// `buf`, which must be exactly [`Self::buffer_len`] bytes long.
    pub fn emit(&self, buf: &mut [u8]) {
        let pad = usize::from(self.pad_len);
        for (i, b) in buf[..pad].iter_mut().enumerate() {
            // pad <= 255, so i + 1 <= 255.
            *b = (i + 1) as u8;
        }
        buf[pad] = self.pad_len;
        buf[pad + 1] = self.next_header;
    }

    /// The pad length that aligns `payload_len` plus the trailer to
    /// `align` bytes (a power of two, at least 4), as RFC 4303 section 2.4
    /// requires: the ciphertext must end on a 4-byte boundary and on the
    /// cipher's block size.
    pub const fn pad_len_for(payload_len: usize, align: usize) -> u8 {
        let unpadded = payload_len + TRAILER_LEN;
        let padded = (unpadded + align - 1) & !(align - 1);
        // align <= 256 in every suite, so the padding fits in a u8.
        (padded - unpadded) as u8
    }
}

/// Checks the default padding pattern 1, 2, 3, ...
fn default_padding_ok(padding: &[u8]) -> bool {
    padding
        .iter()
        .enumerate()
        .all(|(i, &b)| usize::from(b) == i + 1)
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;

    // SPI 0x00001234, sequence number 7, then two bytes of payload.
    static PACKET_BYTES: [u8; 10] = [0x00, 0x00, 0x12, 0x34, 0x00, 0x00, 0x00, 0x07, 0xaa, 0xbb];

    #[test]
    fn test_deconstruct() {
        let packet = Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(packet.spi(), 0x1234);
        assert_eq!(packet.sequence_number(), 7);
        assert_eq!(packet.payload(), &[0xaa, 0xbb]);
        let repr = Repr::parse(&packet).unwrap();
        assert_eq!(
            repr,
            Repr {
                spi: 0x1234,
                sequence_number: 7
            }
        );
    }

    #[test]
    fn test_construct() {
        let mut bytes = [0u8; 10];
        let mut packet = Packet::new_unchecked(&mut bytes[..]);
        Repr {
            spi: 0x1234,
            sequence_number: 7,
        }
        .emit(&mut packet);
        packet.payload_mut().copy_from_slice(&[0xaa, 0xbb]);
        assert_eq!(bytes, PACKET_BYTES);
    }

    #[test]
    fn zero_spi_is_malformed() {
        let bytes = [0u8; 8];
        let packet = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&packet), Err(Error::Malformed));
    }

    #[test]
    fn truncated_header() {
        assert_eq!(
            Packet::new_checked(&PACKET_BYTES[..7]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn trailer_round_trip() {
        // 5 bytes of data, aligned to 4: 5 + 2 = 7 -> 8, pad 1.
        assert_eq!(TrailerRepr::pad_len_for(5, 4), 1);
        assert_eq!(TrailerRepr::pad_len_for(14, 16), 0);
        assert_eq!(TrailerRepr::pad_len_for(15, 16), 15);
        let trailer = TrailerRepr {
            pad_len: 3,
            next_header: 17,
        };
        let mut buf = [0u8; 9];
        buf[..4].copy_from_slice(b"data");
        trailer.emit(&mut buf[4..]);
        assert_eq!(&buf[4..], &[1, 2, 3, 3, 17]);
        assert_eq!(TrailerRepr::parse(&buf).unwrap(), (trailer, 4));
    }

    #[test]
    fn trailer_bad_padding() {
        assert_eq!(
            TrailerRepr::parse(&[0xff, 1, 3, 3, 2, 17]),
            Err(Error::Malformed)
        );
        // The pad length points before the start of the buffer.
        assert_eq!(TrailerRepr::parse(&[1, 2, 9, 17]), Err(Error::BadLength));
        assert_eq!(TrailerRepr::parse(&[17]), Err(Error::Truncated));
    }

    proptest! {
        #[test]
        fn header_parse_emit(spi in 1u32.., seq: u32) {
            let repr = Repr { spi, sequence_number: seq };
            let mut bytes = [0u8; HEADER_LEN];
            repr.emit(&mut Packet::new_unchecked(&mut bytes[..]));
            let parsed = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
            prop_assert_eq!(parsed, repr);
        }

        #[test]
        fn trailer_parse_emit(data in proptest::collection::vec(any::<u8>(), 0..64), pad_len: u8, nh: u8) {
            let trailer = TrailerRepr { pad_len, next_header: nh };
            let mut buf = data.clone();
            buf.resize(data.len() + trailer.buffer_len(), 0);
            trailer.emit(&mut buf[data.len()..]);
            prop_assert_eq!(TrailerRepr::parse(&buf).unwrap(), (trailer, data.len()));
        }

        #[test]
        fn trailer_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = TrailerRepr::parse(&bytes);
        }
    }
}
