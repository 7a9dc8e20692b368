//! The IKE header (RFC 7296 section 3.1).
//!
//! ```text
//!                      1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       IKE SA Initiator's SPI                  |
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       IKE SA Responder's SPI                  |
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Next Payload | MjVer | MnVer | Exchange Type |     Flags     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                          Message ID                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                            Length                             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use super::codec::Reader;
use super::types::{ExchangeType, PayloadType};
use crate::error::{Error, Result};

/// Length of the IKE header.
pub const HEADER_LEN: usize = 28;

/// The major version this implementation speaks.
pub const MAJOR_VERSION: u8 = 2;

const FLAG_RESPONSE: u8 = 0x20;
const FLAG_VERSION: u8 = 0x10;
const FLAG_INITIATOR: u8 = 0x08;

/// The IKE header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// The IKE SA initiator's SPI; never zero.
    pub initiator_spi: u64,
    /// The IKE SA responder's SPI; zero in the first message of
    /// IKE_SA_INIT.
    pub responder_spi: u64,
    /// The type of the first payload. [`super::Message::encode`] sets it.
    pub next_payload: PayloadType,
    /// Major version; 2 for IKEv2.
    pub major_version: u8,
    /// Minor version; 0 for RFC 7296.
    pub minor_version: u8,
    /// The exchange this message belongs to.
    pub exchange_type: ExchangeType,
    /// The R flag: this message is a response.
    pub response: bool,
    /// The V flag: the sender can speak a higher major version.
    pub version: bool,
    /// The I flag: the sender is the original initiator of the IKE SA.
    pub initiator: bool,
    /// The message ID.
    pub message_id: u32,
    /// The length of the whole message. [`super::Message::encode`] sets it.
    pub length: u32,
}

impl Header {
    /// Reads the header from the first 28 bytes of `bytes`.
    ///
    /// Only the header is read: the version is not checked and neither is
    /// the length field against `bytes` (that is [`super::Message::decode`]'s
    /// job). A responder that must answer a message it rejects (with
    /// `INVALID_MAJOR_VERSION` or `UNSUPPORTED_CRITICAL_PAYLOAD`) reads the
    /// SPIs and the message ID from here.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "IKE header");
        let initiator_spi = r.u64()?;
        let responder_spi = r.u64()?;
        let next_payload = PayloadType::from(r.u8()?);
        let version = r.u8()?;
        let exchange_type = ExchangeType::from(r.u8()?);
        let flags = r.u8()?;
        let message_id = r.u32()?;
        let length = r.u32()?;
        // RFC 7296 section 3.1: the unused flag bits are sent as zero and
        // ignored on receipt.
        Ok(Self {
            initiator_spi,
            responder_spi,
            next_payload,
            major_version: version >> 4,
            minor_version: version & 0x0f,
            exchange_type,
            response: flags & FLAG_RESPONSE != 0,
            version: flags & FLAG_VERSION != 0,
            initiator: flags & FLAG_INITIATOR != 0,
            message_id,
            length,
        })
    }

    /// Appends the 28 header bytes, fields as they are.
    ///
    /// Versions wider than four bits are truncated to their low four bits.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.initiator_spi.to_be_bytes());
        out.extend_from_slice(&self.responder_spi.to_be_bytes());
        out.push(self.next_payload.value());
        out.push((self.major_version << 4) | (self.minor_version & 0x0f));
        out.push(self.exchange_type.value());
        let mut flags = 0;
        if self.response {
            flags |= FLAG_RESPONSE;
        }
        if self.version {
            flags |= FLAG_VERSION;
        }
        if self.initiator {
            flags |= FLAG_INITIATOR;
        }
        out.push(flags);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }

    /// Checks the major version.
    ///
    /// RFC 7296 section 3.1: implementations of this version set the major
    /// version to 2, and must reject or ignore messages with a version
    /// number greater than 2, with an `INVALID_MAJOR_VERSION` notify
    /// (section 2.5). Version 1 is a different protocol (IKEv1), which this
    /// crate rejects the same way.
    pub fn check_version(&self) -> Result<()> {
        if self.major_version == MAJOR_VERSION {
            Ok(())
        } else {
            Err(Error::UnsupportedVersion {
                major: self.major_version,
                minor: self.minor_version,
            })
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use proptest::prelude::*;

    /// The header of strongSwan's IKE_SA_INIT request in
    /// `testdata/strongswan/psk-x25519/init-req.hex`.
    const INIT_REQ_HEADER: &str = "6e4c76ede89c85fd00000000000000002120220800000000000000e8";

    #[test]
    fn deconstruct_and_construct() {
        let bytes = hex::decode(INIT_REQ_HEADER).unwrap();
        let header = Header::decode(&bytes).unwrap();
        assert_eq!(header.initiator_spi, 0x6e4c_76ed_e89c_85fd);
        assert_eq!(header.responder_spi, 0);
        assert_eq!(header.next_payload, PayloadType::SecurityAssociation);
        assert_eq!((header.major_version, header.minor_version), (2, 0));
        assert_eq!(header.exchange_type, ExchangeType::IkeSaInit);
        assert!(header.initiator && !header.response && !header.version);
        assert_eq!(header.message_id, 0);
        assert_eq!(header.length, 232);
        header.check_version().unwrap();
        let mut out = Vec::new();
        header.encode(&mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn reserved_flags_are_ignored_and_versions_checked() {
        let mut bytes = hex::decode(INIT_REQ_HEADER).unwrap();
        bytes[19] = 0xff;
        let header = Header::decode(&bytes).unwrap();
        assert!(header.initiator && header.response && header.version);
        let mut out = Vec::new();
        header.encode(&mut out);
        assert_eq!(out[19], 0x38);
        bytes[17] = 0x30;
        assert_eq!(
            Header::decode(&bytes).unwrap().check_version(),
            Err(Error::UnsupportedVersion { major: 3, minor: 0 })
        );
        assert!(matches!(
            Header::decode(&bytes[..27]),
            Err(Error::Truncated { needed: 4, .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(
            initiator_spi: u64, responder_spi: u64, next: u8, major in 0u8..16,
            minor in 0u8..16, exchange: u8, response: bool, version: bool,
            initiator: bool, message_id: u32, length: u32,
        ) {
            let header = Header {
                initiator_spi,
                responder_spi,
                next_payload: next.into(),
                major_version: major,
                minor_version: minor,
                exchange_type: exchange.into(),
                response,
                version,
                initiator,
                message_id,
                length,
            };
            let mut out = Vec::new();
            header.encode(&mut out);
            prop_assert_eq!(out.len(), HEADER_LEN);
            prop_assert_eq!(Header::decode(&out).unwrap(), header);
        }
    }
}
