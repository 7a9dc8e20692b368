//! The payloads other than SA and TS: KE, Nonce, ID, CERT, CERTREQ, AUTH,
//! Notify, Delete, Configuration (RFC 7296 sections 3.4 to 3.15). Each
//! decodes from and encodes to the body after the generic payload header.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::codec::{Reader, len_u8, len_u16};
use super::types::{AuthMethod, CertEncoding, CfgType, DhGroup, IdType, NotifyType, ProtocolId};
use crate::error::{Error, Result};

/// Key Exchange payload (section 3.4).
///
/// ```text
/// |   Diffie-Hellman Group Num    |           RESERVED            |
/// ~                       Key Exchange Data                       ~
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyExchange {
    /// The group of the public value.
    pub group: DhGroup,
    /// The public value, in the group's encoding. Its length is checked
    /// by the key exchange, which knows the group.
    pub data: Vec<u8>,
}

impl KeyExchange {
    /// Decodes the payload body.
    pub fn decode(body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body, "KE payload");
        let group = DhGroup::from(r.u16()?);
        let _reserved = r.u16()?;
        Ok(Self {
            group,
            data: r.rest().to_vec(),
        })
    }

    /// Appends the payload body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.group.value().to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.data);
    }
}

/// The shortest nonce (section 3.9).
pub const MIN_NONCE_LEN: usize = 16;
/// The longest nonce (section 3.9).
pub const MAX_NONCE_LEN: usize = 256;

/// Checks a nonce's length.
///
/// RFC 7296 section 3.9: the nonce data is between 16 and 256 octets,
/// inclusive.
pub(crate) fn check_nonce(data: &[u8]) -> Result<()> {
    if (MIN_NONCE_LEN..=MAX_NONCE_LEN).contains(&data.len()) {
        Ok(())
    } else {
        Err(Error::InvalidLength {
            what: "nonce",
            length: data.len(),
        })
    }
}

/// The identity in an IDi or IDr payload (section 3.5).
///
/// ```text
/// |   ID Type     |                 RESERVED                      |
/// ~                   Identification Data                         ~
/// ```
///
/// Names are kept as the bytes sent: RFC 7296 does not promise that an
/// FQDN or an RFC 822 address is UTF-8, and matching them is policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// ID_IPV4_ADDR.
    Ipv4(Ipv4Addr),
    /// ID_IPV6_ADDR.
    Ipv6(Ipv6Addr),
    /// ID_FQDN, for example `b.ssref.test`.
    Fqdn(Vec<u8>),
    /// ID_RFC822_ADDR, for example `jane@example.com`.
    Rfc822(Vec<u8>),
    /// ID_DER_ASN1_DN: a DER-encoded distinguished name.
    DerAsn1Dn(Vec<u8>),
    /// ID_KEY_ID: opaque bytes.
    KeyId(Vec<u8>),
    /// Any other type (ID_DER_ASN1_GN included), as bytes.
    Other {
        /// The ID type.
        id_type: IdType,
        /// The identification data.
        data: Vec<u8>,
    },
}

impl Identity {
    /// The ID type.
    pub fn id_type(&self) -> IdType {
        match self {
            Self::Ipv4(_) => IdType::Ipv4Addr,
            Self::Ipv6(_) => IdType::Ipv6Addr,
            Self::Fqdn(_) => IdType::Fqdn,
            Self::Rfc822(_) => IdType::Rfc822Addr,
            Self::DerAsn1Dn(_) => IdType::DerAsn1Dn,
            Self::KeyId(_) => IdType::KeyId,
            Self::Other { id_type, .. } => *id_type,
        }
    }

    /// Decodes the payload body.
    pub fn decode(body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body, "ID payload");
        let id_type = IdType::from(r.u8()?);
        let _reserved = r.take(3)?;
        let data = r.rest();
        let address_length = |expected: usize| {
            if data.len() == expected {
                Ok(())
            } else {
                Err(Error::InvalidLength {
                    what: "ID payload: address",
                    length: data.len(),
                })
            }
        };
        Ok(match id_type {
            IdType::Ipv4Addr => {
                address_length(4)?;
                Self::Ipv4(Reader::new(data, "ID").array::<4>()?.into())
            }
            IdType::Ipv6Addr => {
                address_length(16)?;
                Self::Ipv6(Reader::new(data, "ID").array::<16>()?.into())
            }
            IdType::Fqdn => Self::Fqdn(data.to_vec()),
            IdType::Rfc822Addr => Self::Rfc822(data.to_vec()),
            IdType::DerAsn1Dn => Self::DerAsn1Dn(data.to_vec()),
            IdType::KeyId => Self::KeyId(data.to_vec()),
            id_type => Self::Other {
                id_type,
                data: data.to_vec(),
            },
        })
    }

    /// Appends the payload body.
    ///
    /// These are the bytes that AUTH signs as `RestOfInitIDPayload` /
    /// `RestOfRespIDPayload` (IDi' and IDr', RFC 7296 section 2.15), with
    /// the reserved octets zero.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.id_type().value());
        out.extend_from_slice(&[0; 3]);
        match self {
            Self::Ipv4(a) => out.extend_from_slice(&a.octets()),
            Self::Ipv6(a) => out.extend_from_slice(&a.octets()),
            Self::Fqdn(d)
            | Self::Rfc822(d)
            | Self::DerAsn1Dn(d)
            | Self::KeyId(d)
            | Self::Other { data: d, .. } => out.extend_from_slice(d),
        }
    }
}

/// A Certificate payload (section 3.6), or a Certificate Request payload
/// (section 3.7, where the data is a list of SHA-1 hashes of trusted CAs'
/// public keys).
///
/// ```text
/// | Cert Encoding |                                               |
/// +-+-+-+-+-+-+-+-+                                               |
/// ~                       Certificate Data                        ~
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Certificate {
    /// The encoding of the data.
    pub encoding: CertEncoding,
    /// The certificate (DER for X.509), or the certification authorities.
    pub data: Vec<u8>,
}

impl Certificate {
    /// Decodes the payload body.
    pub fn decode(body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body, "CERT payload");
        let encoding = CertEncoding::from(r.u8()?);
        Ok(Self {
            encoding,
            data: r.rest().to_vec(),
        })
    }

    /// Appends the payload body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.encoding.value());
        out.extend_from_slice(&self.data);
    }
}

/// An Authentication payload (section 3.8).
///
/// ```text
/// | Auth Method   |                RESERVED                       |
/// ~                      Authentication Data                      ~
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Auth {
    /// The method.
    pub method: AuthMethod,
    /// The signature or MAC.
    pub data: Vec<u8>,
}

impl Auth {
    /// Decodes the payload body.
    pub fn decode(body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body, "AUTH payload");
        let method = AuthMethod::from(r.u8()?);
        let _reserved = r.take(3)?;
        Ok(Self {
            method,
            data: r.rest().to_vec(),
        })
    }

    /// Appends the payload body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.method.value());
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.data);
    }
}

/// A Notify payload (section 3.10).
///
/// ```text
/// |  Protocol ID  |   SPI Size    |      Notify Message Type      |
/// ~                Security Parameter Index (SPI)                 ~
/// ~                       Notification Data                       ~
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Notify {
    /// The protocol of the SA the notify is about; `None` (sent as 0) when
    /// there is no SPI. RFC 7296 section 3.10: with an empty SPI the field
    /// is sent as zero and ignored on receipt, so it is kept here as sent.
    pub protocol: Option<ProtocolId>,
    /// The SPI of that SA, often empty.
    pub spi: Vec<u8>,
    /// The notify type.
    pub notify_type: NotifyType,
    /// The notification data.
    pub data: Vec<u8>,
}

impl Notify {
    /// A notify about no particular SA.
    pub fn new(notify_type: NotifyType, data: Vec<u8>) -> Self {
        Self {
            protocol: None,
            spi: Vec::new(),
            notify_type,
            data,
        }
    }

    /// A notify without data about no particular SA, such as most error
    /// notifies (NO_PROPOSAL_CHOSEN) and USE_TRANSPORT_MODE.
    pub fn empty(notify_type: NotifyType) -> Self {
        Self::new(notify_type, Vec::new())
    }

    /// Decodes the payload body.
    pub fn decode(body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body, "Notify payload");
        let protocol = match r.u8()? {
            0 => None,
            p => Some(ProtocolId::from(p)),
        };
        let spi_size = r.u8()?;
        let notify_type = NotifyType::from(r.u16()?);
        let spi = r.take(usize::from(spi_size))?.to_vec();
        Ok(Self {
            protocol,
            spi,
            notify_type,
            data: r.rest().to_vec(),
        })
    }

    /// Appends the payload body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        out.push(self.protocol.map_or(0, ProtocolId::value));
        out.push(len_u8("Notify SPI", self.spi.len())?);
        out.extend_from_slice(&self.notify_type.value().to_be_bytes());
        out.extend_from_slice(&self.spi);
        out.extend_from_slice(&self.data);
        Ok(())
    }
}

/// A Delete payload (section 3.11).
///
/// ```text
/// | Protocol ID   |   SPI Size    |          Num of SPIs          |
/// ~               Security Parameter Index(es) (SPI)              ~
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Delete {
    /// The protocol: IKE (the IKE SA itself, no SPIs), ESP or AH.
    pub protocol: ProtocolId,
    /// The size of each SPI: 0 for IKE, 4 for ESP and AH.
    pub spi_size: u8,
    /// The SPIs, each `spi_size` bytes.
    pub spis: Vec<Vec<u8>>,
}

impl Delete {
    /// Deletes the IKE SA this message travels in.
    pub fn ike() -> Self {
        Self {
            protocol: ProtocolId::Ike,
            spi_size: 0,
            spis: Vec::new(),
        }
    }

    /// Deletes ESP SAs by the SPIs their sender receives on.
    pub fn esp(spis: &[u32]) -> Self {
        Self {
            protocol: ProtocolId::Esp,
            spi_size: 4,
            spis: spis.iter().map(|spi| spi.to_be_bytes().to_vec()).collect(),
        }
    }

    /// Decodes the payload body.
    pub fn decode(body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body, "Delete payload");
        let protocol = ProtocolId::from(r.u8()?);
        let spi_size = r.u8()?;
        let count = r.u16()?;
        if spi_size == 0 && count != 0 {
            return Err(Error::InvalidValue {
                what: "Delete payload: SPIs of size 0",
                value: u64::from(count),
            });
        }
        let mut spis = Vec::new();
        for _ in 0..count {
            spis.push(r.take(usize::from(spi_size))?.to_vec());
        }
        r.finish()?;
        Ok(Self {
            protocol,
            spi_size,
            spis,
        })
    }

    /// Appends the payload body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        out.push(self.protocol.value());
        out.push(self.spi_size);
        out.extend_from_slice(&len_u16("Delete SPIs", self.spis.len())?.to_be_bytes());
        for spi in &self.spis {
            if spi.len() != usize::from(self.spi_size) || spi.is_empty() {
                return Err(Error::Encode {
                    what: "Delete SPI of another size",
                    length: spi.len(),
                });
            }
            out.extend_from_slice(spi);
        }
        Ok(())
    }
}

/// A Configuration payload (section 3.15).
///
/// ```text
/// |   CFG Type    |                    RESERVED                   |
/// ~                   Configuration Attributes                    ~
///
/// |R|         Attribute Type      |            Length             |
/// ~                             Value                             ~
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Configuration {
    /// Request, reply, set or acknowledge.
    pub cfg_type: CfgType,
    /// The attributes.
    pub attributes: Vec<ConfigAttribute>,
}

/// One configuration attribute.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfigAttribute {
    /// The attribute type (15 bits), for example 1 for
    /// INTERNAL_IP4_ADDRESS.
    pub attribute_type: u16,
    /// The value; empty in a request for any value.
    pub value: Vec<u8>,
}

impl Configuration {
    /// Decodes the payload body.
    pub fn decode(body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body, "CP payload");
        let cfg_type = CfgType::from(r.u8()?);
        let _reserved = r.take(3)?;
        let mut attributes = Vec::new();
        while !r.is_empty() {
            // RFC 7296 section 3.15.1: the R bit is reserved, ignored on
            // receipt.
            let attribute_type = r.u16()? & 0x7fff;
            let length = usize::from(r.u16()?);
            attributes.push(ConfigAttribute {
                attribute_type,
                value: r.take(length)?.to_vec(),
            });
        }
        Ok(Self {
            cfg_type,
            attributes,
        })
    }

    /// Appends the payload body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        out.push(self.cfg_type.value());
        out.extend_from_slice(&[0; 3]);
        for a in &self.attributes {
            if a.attribute_type > 0x7fff {
                return Err(Error::Encode {
                    what: "configuration attribute type",
                    length: usize::from(a.attribute_type),
                });
            }
            out.extend_from_slice(&a.attribute_type.to_be_bytes());
            out.extend_from_slice(
                &len_u16("configuration attribute", a.value.len())?.to_be_bytes(),
            );
            out.extend_from_slice(&a.value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    use crate::testdata::unhex as h;

    #[test]
    fn key_exchange() {
        let body = h("001f 0000 0102030405");
        let ke = KeyExchange::decode(&body).unwrap();
        assert_eq!(ke.group, DhGroup::Curve25519);
        assert_eq!(ke.data, [1, 2, 3, 4, 5]);
        let mut out = Vec::new();
        ke.encode(&mut out);
        assert_eq!(out, body);
        assert!(matches!(
            KeyExchange::decode(&body[..3]),
            Err(Error::Truncated { .. })
        ));
    }

    #[test]
    fn identities() {
        let cases = [
            (
                "01000000 c0000201",
                Identity::Ipv4(Ipv4Addr::new(192, 0, 2, 1)),
            ),
            (
                "05000000 20010db8000000000000000000000001",
                Identity::Ipv6("2001:db8::1".parse().unwrap()),
            ),
            // strongSwan's IDi in psk-x25519: FQDN a.ssref.test.
            (
                "02000000 612e73737265662e74657374",
                Identity::Fqdn(b"a.ssref.test".to_vec()),
            ),
            (
                "03000000 6140622e6364",
                Identity::Rfc822(b"a@b.cd".to_vec()),
            ),
            ("09000000 3000", Identity::DerAsn1Dn(vec![0x30, 0x00])),
            ("0b000000 cafe", Identity::KeyId(vec![0xca, 0xfe])),
            (
                "0a000000 8200",
                Identity::Other {
                    id_type: IdType::DerAsn1Gn,
                    data: vec![0x82, 0],
                },
            ),
        ];
        for (hex, id) in cases {
            let body = h(hex);
            assert_eq!(Identity::decode(&body).unwrap(), id, "{hex}");
            let mut out = Vec::new();
            id.encode(&mut out);
            assert_eq!(out, body);
        }
        // An IPv4 identity of the wrong length.
        assert!(matches!(
            Identity::decode(&h("01000000 c00002")),
            Err(Error::InvalidLength { length: 3, .. })
        ));
        assert!(Identity::decode(&h("010000")).is_err());
    }

    #[test]
    fn auth_and_certificates() {
        let body = h("02000000 0dc41f98");
        let auth = Auth::decode(&body).unwrap();
        assert_eq!(auth.method, AuthMethod::SharedKey);
        assert_eq!(auth.data, h("0dc41f98"));
        let mut out = Vec::new();
        auth.encode(&mut out);
        assert_eq!(out, body);

        let body = h("04 3082");
        let cert = Certificate::decode(&body).unwrap();
        assert_eq!(cert.encoding, CertEncoding::X509Signature);
        let mut out = Vec::new();
        cert.encode(&mut out);
        assert_eq!(out, body);
        assert!(Certificate::decode(&[]).is_err());
    }

    #[test]
    fn notifies() {
        // N(NAT_DETECTION_SOURCE_IP) without SPI, and N(REKEY_SA) for an
        // ESP SA.
        let body = h("0000 4004 00112233445566778899aabbccddeeff00112233");
        let n = Notify::decode(&body).unwrap();
        assert_eq!(n.protocol, None);
        assert_eq!(n.notify_type, NotifyType::NatDetectionSourceIp);
        assert!(n.spi.is_empty());
        assert_eq!(n.data.len(), 20);
        let mut out = Vec::new();
        n.encode(&mut out).unwrap();
        assert_eq!(out, body);

        let body = h("0304 4009 c0ffee01");
        let n = Notify::decode(&body).unwrap();
        assert_eq!(n.protocol, Some(ProtocolId::Esp));
        assert_eq!(n.notify_type, NotifyType::RekeySa);
        assert_eq!(n.spi, h("c0ffee01"));
        let mut out = Vec::new();
        n.encode(&mut out).unwrap();
        assert_eq!(out, body);
        // An SPI longer than the payload.
        assert!(matches!(
            Notify::decode(&h("0308 4009 c0ffee01")),
            Err(Error::Truncated { .. })
        ));
        assert!(NotifyType::NoProposalChosen.is_error());
        assert!(!NotifyType::Cookie.is_error());
    }

    #[test]
    fn deletes() {
        let d = Delete::esp(&[0xc0ff_ee01, 0xc0ff_ee02]);
        let mut out = Vec::new();
        d.encode(&mut out).unwrap();
        assert_eq!(out, h("0304 0002 c0ffee01 c0ffee02"));
        assert_eq!(Delete::decode(&out).unwrap(), d);

        let mut out = Vec::new();
        Delete::ike().encode(&mut out).unwrap();
        assert_eq!(out, h("0100 0000"));
        assert_eq!(Delete::decode(&out).unwrap(), Delete::ike());

        assert!(matches!(
            Delete::decode(&h("0304 0002 c0ffee01")),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            Delete::decode(&h("0304 0001 c0ffee01 00")),
            Err(Error::TrailingBytes { count: 1, .. })
        ));
        assert!(Delete::decode(&h("0100 0001")).is_err());
        let bad = Delete {
            protocol: ProtocolId::Esp,
            spi_size: 4,
            spis: vec![vec![1, 2, 3]],
        };
        assert!(bad.encode(&mut Vec::new()).is_err());
    }

    #[test]
    fn configuration() {
        // CFG_REQUEST for INTERNAL_IP4_ADDRESS (1) and INTERNAL_IP4_DNS (3).
        let body = h("01000000 0001 0000 0003 0000");
        let cp = Configuration::decode(&body).unwrap();
        assert_eq!(cp.cfg_type, CfgType::Request);
        assert_eq!(cp.attributes.len(), 2);
        let mut out = Vec::new();
        cp.encode(&mut out).unwrap();
        assert_eq!(out, body);
        let reply = h("02000000 0001 0004 0a000001");
        let cp = Configuration::decode(&reply).unwrap();
        assert_eq!(cp.attributes[0].value, [10, 0, 0, 1]);
        assert!(Configuration::decode(&h("02000000 0001 0005 0a000001")).is_err());
    }

    #[test]
    fn nonce_lengths() {
        assert!(check_nonce(&[0; 15]).is_err());
        assert!(check_nonce(&[0; 16]).is_ok());
        assert!(check_nonce(&[0; 256]).is_ok());
        assert!(check_nonce(&[0; 257]).is_err());
    }
}
