//! Telling apart what arrives on the NAT-traversal port (RFC 3948): ESP in
//! UDP, IKE behind a non-ESP marker, and NAT-keepalives.
//!
//! ```text
//! ESP in UDP (section 2.1):
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        Source Port            |      Destination Port         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           Length              |           Checksum            |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                      ESP header [RFC4303]                     |
//! ~                                                               ~
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!
//! IKE on port 4500 (section 2.2):
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        Source Port            |      Destination Port         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           Length              |           Checksum            |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                        Non-ESP Marker                         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                      IKE header [RFC4306]                     |
//! ~                                                               ~
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!
//! NAT-keepalive (section 2.3):
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        Source Port            |      Destination Port         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           Length              |           Checksum            |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |    0xFF       |
//! +-+-+-+-+-+-+-+-+
//! ```
//!
//! The functions here look at the UDP payload only; the UDP header is
//! [`crate::udp`]'s.

use crate::{Error, Result, esp};

/// The UDP port for IKE and ESP after NAT traversal.
pub const PORT: u16 = 4500;

/// The non-ESP marker: four zero bytes where an ESP packet has its SPI.
//= https://www.rfc-editor.org/rfc/rfc3948#section-2.2
//# Non-ESP Marker is 4 zero-valued bytes aligning with the SPI field of
//# an ESP packet.
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];

/// The single byte of a NAT-keepalive.
//= https://www.rfc-editor.org/rfc/rfc3948#section-2.3
//# The sender MUST use a one-octet-long payload with the value 0xFF.
pub const KEEPALIVE: u8 = 0xff;

/// What a UDP payload on the NAT-traversal port holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UdpEncapPayload<'a> {
    /// An ESP packet, starting with its (non-zero) SPI.
    Esp(&'a [u8]),
    /// An IKE message: the bytes after the non-ESP marker.
    Ike(&'a [u8]),
    /// A NAT-keepalive, to be ignored.
    Keepalive,
}

/// Classifies a UDP payload received on the NAT-traversal port.
///
/// - exactly one byte `0xFF`: [`UdpEncapPayload::Keepalive`];
/// - four zero bytes first: [`UdpEncapPayload::Ike`], with the bytes after
///   the marker (not checked further; IKE parses them);
/// - anything else is ESP, and must hold at least the 8-byte ESP header
///   ([`Error::Truncated`] if not).
pub fn classify(udp_payload: &[u8]) -> Result<UdpEncapPayload<'_>> {
    //= https://www.rfc-editor.org/rfc/rfc3948#section-2.3
    //# The receiver SHOULD ignore a received NAT-keepalive packet.
    if udp_payload == [KEEPALIVE] {
        return Ok(UdpEncapPayload::Keepalive);
    }
    if let Some(ike) = udp_payload.strip_prefix(&NON_ESP_MARKER) {
        return Ok(UdpEncapPayload::Ike(ike));
    }
    //= https://www.rfc-editor.org/rfc/rfc3948#section-2.1
    //# The SPI field in the ESP header MUST NOT be a zero value.
    //
    // The SPI is not zero here (the marker test above took every payload
    // that starts with four zero bytes), so what remains is ESP.
    if udp_payload.len() < esp::HEADER_LEN {
        return Err(Error::Truncated);
    }
    Ok(UdpEncapPayload::Esp(udp_payload))
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keepalive() {
        assert_eq!(classify(&[0xff]), Ok(UdpEncapPayload::Keepalive));
    }

    #[test]
    fn ike() {
        // Marker, then the start of an IKE header (initiator SPI).
        let bytes = [0, 0, 0, 0, 0x11, 0x22, 0x33, 0x44];
        assert_eq!(
            classify(&bytes),
            Ok(UdpEncapPayload::Ike(&[0x11, 0x22, 0x33, 0x44]))
        );
        assert_eq!(classify(&[0, 0, 0, 0]), Ok(UdpEncapPayload::Ike(&[])));
    }

    #[test]
    fn esp_packet() {
        // SPI 0x00001234, sequence number 1, then ciphertext.
        let bytes = [0x00, 0x00, 0x12, 0x34, 0, 0, 0, 1, 0xaa, 0xbb];
        assert_eq!(classify(&bytes), Ok(UdpEncapPayload::Esp(&bytes)));
        let packet = esp::Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(esp::Repr::parse(&packet).unwrap().spi, 0x1234);
    }

    #[test]
    fn too_short() {
        assert_eq!(classify(&[]), Err(Error::Truncated));
        // One byte that is not 0xFF, and two 0xFF bytes, are neither
        // keepalives nor ESP.
        assert_eq!(classify(&[0x00]), Err(Error::Truncated));
        assert_eq!(classify(&[0xff, 0xff]), Err(Error::Truncated));
        assert_eq!(classify(&[0, 0, 0]), Err(Error::Truncated));
        assert_eq!(classify(&[0, 0, 0, 1, 0, 0, 0]), Err(Error::Truncated));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            match classify(&bytes) {
                Ok(UdpEncapPayload::Keepalive) => prop_assert_eq!(&bytes[..], &[0xff]),
                Ok(UdpEncapPayload::Ike(rest)) => {
                    prop_assert_eq!(&bytes[..4], &NON_ESP_MARKER);
                    prop_assert_eq!(rest, &bytes[4..]);
                }
                Ok(UdpEncapPayload::Esp(esp)) => {
                    // Every ESP classification parses with a non-zero SPI.
                    let packet = esp::Packet::new_checked(esp).unwrap();
                    prop_assert!(esp::Repr::parse(&packet).is_ok());
                }
                Err(e) => {
                    prop_assert_eq!(e, Error::Truncated);
                    prop_assert!(bytes.len() < esp::HEADER_LEN);
                }
            }
        }
    }
}
