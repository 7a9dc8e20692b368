//! The Security Association payload (RFC 7296 section 3.3): proposals,
//! transforms and transform attributes.
//!
//! ```text
//! Proposal substructure:
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | Last Substruc |   RESERVED    |         Proposal Length       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | Proposal Num  |  Protocol ID  |    SPI Size   |Num  Transforms|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ~                        SPI (variable)                         ~
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ~                        <Transforms>                           ~
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!
//! Transform substructure:
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | Last Substruc |   RESERVED    |        Transform Length       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Transform Type |   RESERVED    |          Transform ID         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ~                      Transform Attributes                     ~
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!
//! Data attribute (TV when A = 1, TLV when A = 0):
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |A|       Attribute Type        |    AF=0  Attribute Length     |
//! |F|                             |    AF=1  Attribute Value      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                   AF=0  Attribute Value                       |
//! |                   AF=1  Not Transmitted                       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use super::codec::{Reader, len_u8, patch_len_u16};
use super::types::{
    AttributeType, DhGroup, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType,
};
use crate::error::{Error, Result};

/// Last Substruc of a proposal that is followed by another (RFC 7296
/// section 3.3.1: 2, the value of the IKEv1 Proposal payload type).
const MORE_PROPOSALS: u8 = 2;
/// Last Substruc of a transform that is followed by another (3).
const MORE_TRANSFORMS: u8 = 3;
/// The last proposal or transform.
const LAST: u8 = 0;

const PROPOSAL_HEADER_LEN: usize = 8;
const TRANSFORM_HEADER_LEN: usize = 8;
const ATTRIBUTE_FORMAT_TV: u16 = 0x8000;

/// An SA payload: the proposals, in order of preference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct SaPayload {
    /// The proposals. An initiator numbers them from 1; a responder sends
    /// back the one it chose, with its number.
    pub proposals: Vec<Proposal>,
}

/// One proposal: a protocol, an SPI and the transforms on offer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Proposal {
    /// The proposal number.
    pub number: u8,
    /// The protocol: IKE for the IKE SA, ESP or AH for a Child SA.
    pub protocol: ProtocolId,
    /// The sender's SPI: empty in the initial IKE_SA_INIT, 8 bytes when
    /// rekeying an IKE SA, 4 bytes for ESP and AH.
    pub spi: Vec<u8>,
    /// The transforms. Several of one type are alternatives; one of each
    /// type is chosen.
    pub transforms: Vec<Transform>,
}

/// A transform: its type and ID, and its attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Transform {
    /// The transform type and ID.
    pub id: TransformId,
    /// The attributes; in practice only a key length.
    pub attributes: Vec<Attribute>,
}

/// A transform's type and its ID within that type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TransformId {
    /// Type 1: an encryption algorithm.
    Encr(EncrId),
    /// Type 2: a pseudorandom function.
    Prf(PrfId),
    /// Type 3: an integrity algorithm.
    Integ(IntegId),
    /// Type 4: a Diffie-Hellman group.
    Dh(DhGroup),
    /// Type 5: extended sequence numbers or not.
    Esn(EsnId),
    /// Types 6 to 12: the `index`th additional key exchange (RFC 9370
    /// section 2.2), 1 to 7, with its method ([`DhGroup::None`]: none).
    AddKe {
        /// 1 to 7: Transform Type 5 + `index`.
        index: u8,
        /// The key exchange method.
        group: DhGroup,
    },
    /// A transform type without a name here.
    Other {
        /// The transform type.
        transform_type: u8,
        /// The transform ID.
        id: u16,
    },
}

/// A transform attribute.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attribute {
    /// Key Length in bits (RFC 7296 section 3.3.5), sent as a TV attribute.
    KeyLength(u16),
    /// Any other attribute.
    Other {
        /// The attribute type (15 bits).
        attribute_type: u16,
        /// The value.
        value: AttributeValue,
    },
}

/// The value of an attribute other than the key length.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AttributeValue {
    /// A two-octet value in the attribute header (TV format, AF = 1).
    Short(u16),
    /// A value of its own length (TLV format, AF = 0).
    Variable(Vec<u8>),
}

impl TransformId {
    /// Builds an ID from its type and number on the wire.
    pub fn new(transform_type: u8, id: u16) -> Self {
        match TransformType::from(transform_type) {
            TransformType::Encr => Self::Encr(id.into()),
            TransformType::Prf => Self::Prf(id.into()),
            TransformType::Integ => Self::Integ(id.into()),
            TransformType::Dh => Self::Dh(id.into()),
            TransformType::Esn => Self::Esn(id.into()),
            TransformType::AddKe1
            | TransformType::AddKe2
            | TransformType::AddKe3
            | TransformType::AddKe4
            | TransformType::AddKe5
            | TransformType::AddKe6
            | TransformType::AddKe7 => Self::AddKe {
                index: transform_type - 5,
                group: id.into(),
            },
            TransformType::Unknown(_) => Self::Other { transform_type, id },
        }
    }

    /// The transform type.
    pub fn transform_type(self) -> TransformType {
        match self {
            Self::Encr(_) => TransformType::Encr,
            Self::Prf(_) => TransformType::Prf,
            Self::Integ(_) => TransformType::Integ,
            Self::Dh(_) => TransformType::Dh,
            Self::Esn(_) => TransformType::Esn,
            Self::AddKe { index, .. } => TransformType::from(index.saturating_add(5)),
            Self::Other { transform_type, .. } => TransformType::from(transform_type),
        }
    }

    /// The transform ID's number on the wire.
    pub fn id(self) -> u16 {
        match self {
            Self::Encr(id) => id.value(),
            Self::Prf(id) => id.value(),
            Self::Integ(id) => id.value(),
            Self::Dh(id) => id.value(),
            Self::Esn(id) => id.value(),
            Self::AddKe { group, .. } => group.value(),
            Self::Other { id, .. } => id,
        }
    }
}

impl Transform {
    /// A transform without attributes.
    pub fn new(id: TransformId) -> Self {
        Self {
            id,
            attributes: Vec::new(),
        }
    }

    /// A transform with a key length attribute, in bits.
    pub fn with_key_length(id: TransformId, bits: u16) -> Self {
        Self {
            id,
            attributes: vec![Attribute::KeyLength(bits)],
        }
    }

    /// The key length attribute, if there is one.
    pub fn key_length(&self) -> Option<u16> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::KeyLength(bits) => Some(*bits),
            Attribute::Other { .. } => None,
        })
    }

    fn decode(mut r: Reader<'_>) -> Result<Self> {
        let transform_type = r.u8()?;
        let _reserved = r.u8()?;
        let id = TransformId::new(transform_type, r.u16()?);
        let mut attributes = Vec::new();
        while !r.is_empty() {
            attributes.push(Attribute::decode(&mut r)?);
        }
        Ok(Self { id, attributes })
    }

    fn encode(&self, last: bool, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        out.extend_from_slice(&[if last { LAST } else { MORE_TRANSFORMS }, 0, 0, 0]);
        out.push(self.id.transform_type().value());
        out.push(0);
        out.extend_from_slice(&self.id.id().to_be_bytes());
        for attribute in &self.attributes {
            attribute.encode(out)?;
        }
        patch_len_u16(out, start + 2, start, "transform")
    }
}

impl Attribute {
    fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let word = r.u16()?;
        let attribute_type = word & !ATTRIBUTE_FORMAT_TV;
        if word & ATTRIBUTE_FORMAT_TV != 0 {
            let value = r.u16()?;
            if AttributeType::from(attribute_type) == AttributeType::KeyLength {
                return Ok(Self::KeyLength(value));
            }
            Ok(Self::Other {
                attribute_type,
                value: AttributeValue::Short(value),
            })
        } else {
            let length = usize::from(r.u16()?);
            Ok(Self::Other {
                attribute_type,
                value: AttributeValue::Variable(r.take(length)?.to_vec()),
            })
        }
    }

    fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        let (attribute_type, value) = match self {
            Self::KeyLength(bits) => (
                AttributeType::KeyLength.value(),
                &AttributeValue::Short(*bits),
            ),
            Self::Other {
                attribute_type,
                value,
            } => (*attribute_type, value),
        };
        if attribute_type & ATTRIBUTE_FORMAT_TV != 0 {
            return Err(Error::Encode {
                what: "attribute type",
                length: usize::from(attribute_type),
            });
        }
        match value {
            AttributeValue::Short(v) => {
                out.extend_from_slice(&(attribute_type | ATTRIBUTE_FORMAT_TV).to_be_bytes());
                out.extend_from_slice(&v.to_be_bytes());
            }
            AttributeValue::Variable(v) => {
                out.extend_from_slice(&attribute_type.to_be_bytes());
                let length = super::codec::len_u16("attribute", v.len())?;
                out.extend_from_slice(&length.to_be_bytes());
                out.extend_from_slice(v);
            }
        }
        Ok(())
    }
}

impl Proposal {
    fn decode(mut r: Reader<'_>) -> Result<Self> {
        let number = r.u8()?;
        let protocol = ProtocolId::from(r.u8()?);
        let spi_size = r.u8()?;
        let count = r.u8()?;
        let spi = r.take(usize::from(spi_size))?.to_vec();
        let mut transforms = Vec::with_capacity(usize::from(count));
        for body in substructures(&mut r, "transform", MORE_TRANSFORMS, TRANSFORM_HEADER_LEN) {
            transforms.push(Transform::decode(Reader::new(body?, "transform"))?);
        }
        // RFC 7296 section 3.3.1: Num Transforms counts the transforms in
        // this proposal.
        if transforms.len() != usize::from(count) {
            return Err(Error::InvalidValue {
                what: "proposal: number of transforms",
                value: u64::from(count),
            });
        }
        Ok(Self {
            number,
            protocol,
            spi,
            transforms,
        })
    }

    fn encode(&self, last: bool, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        out.extend_from_slice(&[if last { LAST } else { MORE_PROPOSALS }, 0, 0, 0]);
        out.push(self.number);
        out.push(self.protocol.value());
        out.push(len_u8("proposal SPI", self.spi.len())?);
        out.push(len_u8("proposal transforms", self.transforms.len())?);
        out.extend_from_slice(&self.spi);
        for (i, transform) in self.transforms.iter().enumerate() {
            transform.encode(i + 1 == self.transforms.len(), out)?;
        }
        patch_len_u16(out, start + 2, start, "proposal")
    }
}

impl SaPayload {
    /// Decodes the payload body (after the generic payload header).
    pub fn decode(body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body, "SA payload");
        let mut proposals = Vec::new();
        for body in substructures(&mut r, "proposal", MORE_PROPOSALS, PROPOSAL_HEADER_LEN) {
            proposals.push(Proposal::decode(Reader::new(body?, "proposal"))?);
        }
        Ok(Self { proposals })
    }

    /// Appends the payload body.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        for (i, proposal) in self.proposals.iter().enumerate() {
            proposal.encode(i + 1 == self.proposals.len(), out)?;
        }
        Ok(())
    }
}

/// Walks a run of proposal or transform substructures: each begins with
/// Last Substruc (`more` if another follows, 0 for the last), a reserved
/// octet and a two-octet length that counts the substructure's own
/// four-octet header. Yields the body after that header, and stops after
/// the first error or the last substructure; bytes left after the last
/// one are an error.
fn substructures<'a, 'r>(
    r: &'r mut Reader<'a>,
    what: &'static str,
    more: u8,
    min_len: usize,
) -> impl Iterator<Item = Result<&'a [u8]>> + 'r {
    let mut done = r.is_empty();
    core::iter::from_fn(move || {
        if done {
            return None;
        }
        let item = next_substructure(r, what, more, min_len);
        done = !matches!(item, Ok((false, _)));
        Some(item.map(|(_, body)| body))
    })
}

/// Reads one substructure; returns whether it was the last, and its body.
fn next_substructure<'a>(
    r: &mut Reader<'a>,
    what: &'static str,
    more: u8,
    min_len: usize,
) -> Result<(bool, &'a [u8])> {
    let last = r.u8()?;
    let _reserved = r.u8()?;
    let length = usize::from(r.u16()?);
    if length < min_len {
        return Err(Error::InvalidLength { what, length });
    }
    let body = r.take(length - 4)?;
    match last {
        LAST => r.finish().map(|()| (true, body)),
        v if v == more && r.is_empty() => Err(Error::Truncated {
            what,
            needed: min_len,
            available: 0,
        }),
        v if v == more => Ok((false, body)),
        v => Err(Error::InvalidValue {
            what: "last substruc",
            value: u64::from(v),
        }),
    }
}

#[cfg(test)]
pub(crate) mod test {
    use super::*;
    use proptest::prelude::*;

    /// The SA payload body of strongSwan's IKE_SA_INIT request for
    /// `aes128gcm16-prfsha256-x25519` (testdata/strongswan/psk-x25519).
    const AES128GCM16_PRFSHA256_X25519: &str =
        "00000024010100030300000c01000014800e00800300000802000005000000080400001f";

    #[test]
    fn deconstruct_strongswan_proposal() {
        let body = hex::decode(AES128GCM16_PRFSHA256_X25519).unwrap();
        let sa = SaPayload::decode(&body).unwrap();
        assert_eq!(
            sa.proposals,
            vec![Proposal {
                number: 1,
                protocol: ProtocolId::Ike,
                spi: vec![],
                transforms: vec![
                    Transform::with_key_length(TransformId::Encr(EncrId::AesGcm16), 128),
                    Transform::new(TransformId::Prf(PrfId::HmacSha2_256)),
                    Transform::new(TransformId::Dh(DhGroup::Curve25519)),
                ],
            }]
        );
        let mut out = Vec::new();
        sa.encode(&mut out).unwrap();
        assert_eq!(out, body);
    }

    #[test]
    fn construct_esp_proposal_with_spi_and_tlv_attribute() {
        let sa = SaPayload {
            proposals: vec![
                Proposal {
                    number: 1,
                    protocol: ProtocolId::Esp,
                    spi: vec![0xc0, 0xff, 0xee, 0x01],
                    transforms: vec![
                        Transform::new(TransformId::Esn(EsnId::NoEsn)),
                        Transform {
                            id: TransformId::Other {
                                transform_type: 241,
                                id: 0x1234,
                            },
                            attributes: vec![Attribute::Other {
                                attribute_type: 0x0101,
                                value: AttributeValue::Variable(vec![0xaa, 0xbb]),
                            }],
                        },
                    ],
                },
                Proposal {
                    number: 2,
                    protocol: ProtocolId::Esp,
                    spi: vec![0xc0, 0xff, 0xee, 0x02],
                    transforms: vec![],
                },
            ],
        };
        let mut out = Vec::new();
        sa.encode(&mut out).unwrap();
        let expected = "02000022 01030402 c0ffee01 \
                        03000008 05000000 \
                        0000000e f1001234 0101 0002 aabb \
                        0000000c 02030400 c0ffee02";
        assert_eq!(hex::encode(&out), expected.replace(' ', ""));
        assert_eq!(SaPayload::decode(&out).unwrap(), sa);
    }

    #[test]
    fn malformed_substructures_are_rejected() {
        let good = hex::decode(AES128GCM16_PRFSHA256_X25519).unwrap();
        // Says more proposals follow, but none does.
        let mut more = good.clone();
        more[0] = 2;
        assert!(matches!(
            SaPayload::decode(&more),
            Err(Error::Truncated { .. })
        ));
        // A last substruc of neither 0 nor 2.
        let mut bad = good.clone();
        bad[0] = 1;
        assert!(matches!(
            SaPayload::decode(&bad),
            Err(Error::InvalidValue { .. })
        ));
        // Bytes after the last proposal.
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            SaPayload::decode(&trailing),
            Err(Error::TrailingBytes { .. })
        ));
        // A transform count that disagrees.
        let mut count = good.clone();
        count[7] = 4;
        assert!(matches!(
            SaPayload::decode(&count),
            Err(Error::InvalidValue { .. })
        ));
        // A transform length shorter than its header.
        let mut short = good;
        short[11] = 4;
        assert!(matches!(
            SaPayload::decode(&short),
            Err(Error::InvalidLength { length: 4, .. })
        ));
    }

    pub(crate) fn arb_transform() -> impl Strategy<Value = Transform> {
        let attribute = prop_oneof![
            any::<u16>().prop_map(Attribute::KeyLength),
            (0u16..0x8000, any::<u16>())
                .prop_filter("not a key length", |(t, _)| *t != 14)
                .prop_map(|(attribute_type, v)| Attribute::Other {
                    attribute_type,
                    value: AttributeValue::Short(v),
                }),
            (0u16..0x8000, proptest::collection::vec(any::<u8>(), 0..8)).prop_map(
                |(attribute_type, v)| Attribute::Other {
                    attribute_type,
                    value: AttributeValue::Variable(v),
                }
            ),
        ];
        (
            any::<u8>(),
            any::<u16>(),
            proptest::collection::vec(attribute, 0..3),
        )
            .prop_map(|(t, id, attributes)| Transform {
                id: TransformId::new(t, id),
                attributes,
            })
    }

    pub(crate) fn arb_sa() -> impl Strategy<Value = SaPayload> {
        let proposal = (
            any::<u8>(),
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..9),
            proptest::collection::vec(arb_transform(), 0..6),
        )
            .prop_map(|(number, protocol, spi, transforms)| Proposal {
                number,
                protocol: protocol.into(),
                spi,
                transforms,
            });
        proptest::collection::vec(proposal, 0..4).prop_map(|proposals| SaPayload { proposals })
    }

    proptest! {
        #[test]
        fn transforms_round_trip(transform in arb_transform()) {
            let mut out = Vec::new();
            transform.encode(true, &mut out).unwrap();
            let decoded = Transform::decode(Reader::new(&out[4..], "transform")).unwrap();
            prop_assert_eq!(decoded, transform);
        }

        #[test]
        fn sa_round_trips(sa in arb_sa()) {
            let mut out = Vec::new();
            sa.encode(&mut out).unwrap();
            prop_assert_eq!(SaPayload::decode(&out).unwrap(), sa);
        }

        #[test]
        fn sa_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = SaPayload::decode(&bytes);
        }
    }
}
