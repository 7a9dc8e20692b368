//! IKEv2 messages: the header and every payload of RFC 7296 sections 3.2 to
//! 3.16, as typed values that decode from and encode to bytes.
//!
//! A message is the header followed by a chain of payloads, each naming
//! the type of the next in its generic header (section 3.2):
//!
//! ```text
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | Next Payload  |C|  RESERVED   |         Payload Length        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! The decoder walks that chain and
//! - checks the header's length against the datagram, and every payload's
//!   length against what is left: nothing is read out of bounds and no
//!   byte is left over;
//! - skips payloads of unknown type whose critical bit is clear, and
//!   rejects the message with [`Error::UnsupportedCriticalPayload`] when the
//!   bit is set (section 2.5);
//! - keeps the Encrypted payload (SK, section 3.14) as raw bytes: decrypting
//!   it is [`crate::crypto::SkCipher`]'s job, and the plaintext is a payload
//!   chain again, for [`decode_payloads`]; likewise the Encrypted Fragment
//!   payload (SKF, RFC 7383 section 2.5), after its fragment number and
//!   count.
//!
//! Nothing here panics on any input.

mod codec;
mod header;
mod payload;
mod sa;
mod ts;
mod types;

pub use header::{HEADER_LEN, Header, MAJOR_VERSION};
pub use payload::{
    Auth, Certificate, ConfigAttribute, Configuration, Delete, Identity, KeyExchange,
    MAX_NONCE_LEN, MIN_NONCE_LEN, Notify,
};
pub use sa::{Attribute, AttributeValue, Proposal, SaPayload, Transform, TransformId};
pub use ts::{AddrRange, TrafficSelector};
pub use types::{
    AttributeType, AuthMethod, CertEncoding, CfgType, DhGroup, EncrId, EsnId, ExchangeType, IdType,
    IntegId, NotifyType, PayloadType, PrfId, ProtocolId, TransformType, TsType,
};

use codec::{Reader, patch_len_u16};

use crate::error::{Error, Result};

/// Length of the generic payload header.
pub const PAYLOAD_HEADER_LEN: usize = 4;

/// The critical bit of the generic payload header.
const CRITICAL: u8 = 0x80;

/// One payload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Payload {
    /// SA (section 3.3).
    Sa(SaPayload),
    /// KE (section 3.4).
    KeyExchange(KeyExchange),
    /// IDi (section 3.5).
    IdInitiator(Identity),
    /// IDr (section 3.5).
    IdResponder(Identity),
    /// CERT (section 3.6).
    Certificate(Certificate),
    /// CERTREQ (section 3.7): the encoding and the concatenated SHA-1
    /// hashes of trusted CAs' public keys.
    CertificateRequest(Certificate),
    /// AUTH (section 3.8).
    Auth(Auth),
    /// Ni or Nr (section 3.9): 16 to 256 bytes.
    Nonce(Vec<u8>),
    /// N (section 3.10).
    Notify(Notify),
    /// D (section 3.11).
    Delete(Delete),
    /// V (section 3.12).
    VendorId(Vec<u8>),
    /// TSi (section 3.13).
    TsInitiator(Vec<TrafficSelector>),
    /// TSr (section 3.13).
    TsResponder(Vec<TrafficSelector>),
    /// SK (section 3.14), still protected.
    Encrypted(Encrypted),
    /// CP (section 3.15).
    Configuration(Configuration),
    /// EAP (section 3.16): the EAP message.
    Eap(Vec<u8>),
    /// SKF (RFC 7383 section 2.5), still protected.
    EncryptedFragment(EncryptedFragment),
}

/// The Encrypted payload as it travels: IV, ciphertext (with padding and
/// pad length) and ICV, undivided, because where one ends and the next
/// begins depends on the negotiated transforms.
///
/// ```text
/// | Next Payload  |C|  RESERVED   |         Payload Length        |
/// |                     Initialization Vector                     |
/// ~                    Encrypted IKE Payloads                     ~
/// +               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |               |             Padding (0-255 octets)            |
/// +-+-+-+-+-+-+-+-+                               +-+-+-+-+-+-+-+-+
/// |                                               |  Pad Length   |
/// ~                    Integrity Checksum Data                    ~
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Encrypted {
    /// The type of the first payload inside (the generic header's Next
    /// Payload field); [`PayloadType::None`] if the plaintext is empty.
    pub first_payload: PayloadType,
    /// IV, ciphertext and ICV.
    pub data: Vec<u8>,
}

/// The Encrypted Fragment payload (SKF, RFC 7383 section 2.5): one piece
/// of an Encrypted payload's plaintext, protected on its own like an SK
/// payload, after the fragment's number and the number of fragments.
///
/// ```text
/// | Next Payload  |C|  RESERVED   |         Payload Length        |
/// |        Fragment Number        |        Total Fragments        |
/// |                     Initialization Vector                     |
/// ~                      Encrypted content                        ~
/// ~                    Integrity Checksum Data                    ~
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EncryptedFragment {
    /// In fragment 1, the type of the first payload of the whole
    /// plaintext; [`PayloadType::None`] in the others.
    pub first_payload: PayloadType,
    /// This fragment's number, from 1.
    pub number: u16,
    /// How many fragments the message was cut into.
    pub total: u16,
    /// IV, ciphertext and ICV.
    pub data: Vec<u8>,
}

/// The Fragment Number and Total Fragments fields of an SKF payload.
pub const FRAGMENT_FIELDS_LEN: usize = 4;

impl EncryptedFragment {
    fn decode(first_payload: PayloadType, body: &[u8]) -> Result<Self> {
        let mut r = Reader::new(body, "Encrypted Fragment payload");
        let number = r.u16()?;
        let total = r.u16()?;
        // RFC 7383 section 2.5: fragments are numbered from 1 up to Total
        // Fragments, and neither field may be zero.
        if number == 0 || number > total {
            return Err(Error::InvalidValue {
                what: "Encrypted Fragment payload: fragment number",
                value: u64::from(number),
            });
        }
        Ok(Self {
            first_payload,
            number,
            total,
            data: r.rest().to_vec(),
        })
    }
}

impl Payload {
    /// The payload's type.
    pub fn payload_type(&self) -> PayloadType {
        match self {
            Self::Sa(_) => PayloadType::SecurityAssociation,
            Self::KeyExchange(_) => PayloadType::KeyExchange,
            Self::IdInitiator(_) => PayloadType::IdInitiator,
            Self::IdResponder(_) => PayloadType::IdResponder,
            Self::Certificate(_) => PayloadType::Certificate,
            Self::CertificateRequest(_) => PayloadType::CertificateRequest,
            Self::Auth(_) => PayloadType::Authentication,
            Self::Nonce(_) => PayloadType::Nonce,
            Self::Notify(_) => PayloadType::Notify,
            Self::Delete(_) => PayloadType::Delete,
            Self::VendorId(_) => PayloadType::VendorId,
            Self::TsInitiator(_) => PayloadType::TsInitiator,
            Self::TsResponder(_) => PayloadType::TsResponder,
            Self::Encrypted(_) => PayloadType::Encrypted,
            Self::Configuration(_) => PayloadType::Configuration,
            Self::Eap(_) => PayloadType::Eap,
            Self::EncryptedFragment(_) => PayloadType::EncryptedFragment,
        }
    }

    /// Decodes the body of a payload of a known type. `None` if this crate
    /// does not know the type.
    fn decode_body(
        payload_type: PayloadType,
        next: PayloadType,
        body: &[u8],
    ) -> Option<Result<Self>> {
        Some(match payload_type {
            PayloadType::SecurityAssociation => SaPayload::decode(body).map(Self::Sa),
            PayloadType::KeyExchange => KeyExchange::decode(body).map(Self::KeyExchange),
            PayloadType::IdInitiator => Identity::decode(body).map(Self::IdInitiator),
            PayloadType::IdResponder => Identity::decode(body).map(Self::IdResponder),
            PayloadType::Certificate => Certificate::decode(body).map(Self::Certificate),
            PayloadType::CertificateRequest => {
                Certificate::decode(body).map(Self::CertificateRequest)
            }
            PayloadType::Authentication => Auth::decode(body).map(Self::Auth),
            PayloadType::Nonce => payload::check_nonce(body).map(|()| Self::Nonce(body.to_vec())),
            PayloadType::Notify => Notify::decode(body).map(Self::Notify),
            PayloadType::Delete => Delete::decode(body).map(Self::Delete),
            PayloadType::VendorId => Ok(Self::VendorId(body.to_vec())),
            PayloadType::TsInitiator => ts::decode(body).map(Self::TsInitiator),
            PayloadType::TsResponder => ts::decode(body).map(Self::TsResponder),
            PayloadType::Encrypted => Ok(Self::Encrypted(Encrypted {
                first_payload: next,
                data: body.to_vec(),
            })),
            PayloadType::Configuration => Configuration::decode(body).map(Self::Configuration),
            PayloadType::Eap => Ok(Self::Eap(body.to_vec())),
            PayloadType::EncryptedFragment => {
                EncryptedFragment::decode(next, body).map(Self::EncryptedFragment)
            }
            PayloadType::None | PayloadType::Unknown(_) => return None,
        })
    }

    /// Appends the payload's body (without the generic header).
    pub fn encode_body(&self, out: &mut Vec<u8>) -> Result<()> {
        match self {
            Self::Sa(sa) => sa.encode(out)?,
            Self::KeyExchange(ke) => ke.encode(out),
            Self::IdInitiator(id) | Self::IdResponder(id) => id.encode(out),
            Self::Certificate(c) | Self::CertificateRequest(c) => c.encode(out),
            Self::Auth(a) => a.encode(out),
            Self::Nonce(n) => {
                payload::check_nonce(n).map_err(|_| Error::Encode {
                    what: "nonce",
                    length: n.len(),
                })?;
                out.extend_from_slice(n);
            }
            Self::Notify(n) => n.encode(out)?,
            Self::Delete(d) => d.encode(out)?,
            Self::VendorId(v) | Self::Eap(v) => out.extend_from_slice(v),
            Self::TsInitiator(t) | Self::TsResponder(t) => ts::encode(t, out)?,
            Self::Encrypted(e) => out.extend_from_slice(&e.data),
            Self::Configuration(c) => c.encode(out)?,
            Self::EncryptedFragment(f) => {
                out.extend_from_slice(&f.number.to_be_bytes());
                out.extend_from_slice(&f.total.to_be_bytes());
                out.extend_from_slice(&f.data);
            }
        }
        Ok(())
    }
}

/// An IKE message: the header and the payloads, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Message {
    /// The header. [`Message::encode`] fills in its next payload and length.
    pub header: Header,
    /// The payloads. An [`Payload::Encrypted`] or
    /// [`Payload::EncryptedFragment`] can only be the last.
    pub payloads: Vec<Payload>,
}

impl Message {
    /// Decodes a whole IKE message: one UDP datagram on port 500, or one on
    /// port 4500 after its four-octet non-ESP marker.
    ///
    /// Errors: the version ([`Error::UnsupportedVersion`]), the length
    /// field not equal to `bytes.len()`, anything malformed in the payload
    /// chain, or an unknown critical payload
    /// ([`Error::UnsupportedCriticalPayload`]). Use [`Header::decode`] to
    /// read the SPIs and message ID needed to answer such a message.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let header = Header::decode(bytes)?;
        header.check_version()?;
        let length = usize::try_from(header.length).unwrap_or(usize::MAX);
        if length < HEADER_LEN {
            return Err(Error::InvalidLength {
                what: "IKE message",
                length,
            });
        }
        // RFC 7296 section 3.1: Length is the length of the total message,
        // header and payloads.
        if length > bytes.len() {
            return Err(Error::Truncated {
                what: "IKE message",
                needed: length,
                available: bytes.len(),
            });
        }
        if length < bytes.len() {
            return Err(Error::TrailingBytes {
                what: "IKE message",
                count: bytes.len() - length,
            });
        }
        let payloads = decode_chain(header.next_payload, &bytes[HEADER_LEN..], true)?;
        Ok(Self { header, payloads })
    }

    /// Encodes the message, with the header's next payload and length set
    /// from the payloads.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(512);
        let mut header = self.header;
        header.encode(&mut out);
        header.next_payload = encode_payloads(&self.payloads, &mut out)?;
        header.length = u32::try_from(out.len()).map_err(|_| Error::Encode {
            what: "IKE message",
            length: out.len(),
        })?;
        let mut fixed = Vec::with_capacity(HEADER_LEN);
        header.encode(&mut fixed);
        out[..HEADER_LEN].copy_from_slice(&fixed);
        Ok(out)
    }

    /// The notify payloads.
    pub fn notifies(&self) -> impl Iterator<Item = &Notify> {
        self.payloads.iter().filter_map(|p| match p {
            Payload::Notify(n) => Some(n),
            _ => None,
        })
    }

    /// The first notify of a type.
    pub fn notify(&self, notify_type: NotifyType) -> Option<&Notify> {
        self.notifies().find(|n| n.notify_type == notify_type)
    }

    /// The initiator's nonce (Ni) if this is the request of an
    /// IKE_SA_INIT (RFC 7296 section 1.2: HDR, SAi1, KEi, Ni); `None` for
    /// any other message.
    pub fn init_request_nonce(&self) -> Option<&[u8]> {
        let h = &self.header;
        if h.exchange_type != ExchangeType::IkeSaInit
            || h.response
            || !h.initiator
            || h.message_id != 0
        {
            return None;
        }
        self.payloads.iter().find_map(|p| match p {
            Payload::Nonce(n) => Some(n.as_slice()),
            _ => None,
        })
    }

    /// The first payload of a type.
    pub fn payload(&self, payload_type: PayloadType) -> Option<&Payload> {
        self.payloads
            .iter()
            .find(|p| p.payload_type() == payload_type)
    }
}

/// Decodes a chain of payloads that are not in a message of their own:
/// the plaintext of an Encrypted payload, whose first payload type is in
/// the SK payload's generic header ([`Encrypted::first_payload`]).
///
/// RFC 7296 section 3.14: an Encrypted payload cannot contain another, so
/// one here is an error.
pub fn decode_payloads(first: PayloadType, bytes: &[u8]) -> Result<Vec<Payload>> {
    decode_chain(first, bytes, false)
}

/// Appends a chain of payloads, each generic header's next payload set to
/// the type of the payload that follows (0 after the last; the first inner
/// type after an Encrypted payload, which must be the last). Returns the
/// type of the first payload, for the field that points to it.
pub fn encode_payloads(payloads: &[Payload], out: &mut Vec<u8>) -> Result<PayloadType> {
    for (i, payload) in payloads.iter().enumerate() {
        let next = match payload {
            Payload::Encrypted(e) if i + 1 == payloads.len() => e.first_payload,
            Payload::EncryptedFragment(f) if i + 1 == payloads.len() => f.first_payload,
            Payload::Encrypted(Encrypted { data, .. })
            | Payload::EncryptedFragment(EncryptedFragment { data, .. }) => {
                return Err(Error::Encode {
                    what: "Encrypted payload before another payload",
                    length: data.len(),
                });
            }
            _ => payloads
                .get(i + 1)
                .map_or(PayloadType::None, Payload::payload_type),
        };
        let start = out.len();
        // RFC 7296 section 3.2: the critical bit is zero for the payload
        // types that RFC 7296 defines.
        out.extend_from_slice(&[next.value(), 0, 0, 0]);
        payload.encode_body(out)?;
        patch_len_u16(out, start + 2, start, "payload")?;
    }
    Ok(payloads
        .first()
        .map_or(PayloadType::None, Payload::payload_type))
}

/// Walks a payload chain that starts with a payload of type `first` and
/// fills `bytes` exactly.
fn decode_chain(first: PayloadType, bytes: &[u8], outer: bool) -> Result<Vec<Payload>> {
    let mut r = Reader::new(bytes, "payload chain");
    let mut payloads = Vec::new();
    let mut this = first;
    while this != PayloadType::None {
        let mut generic = Reader::new(r.take(PAYLOAD_HEADER_LEN)?, "payload header");
        let next = PayloadType::from(generic.u8()?);
        let flags = generic.u8()?;
        let length = usize::from(generic.u16()?);
        if length < PAYLOAD_HEADER_LEN {
            return Err(Error::InvalidLength {
                what: "payload",
                length,
            });
        }
        let body = r.take(length - PAYLOAD_HEADER_LEN)?;
        let encrypted = matches!(
            this,
            PayloadType::Encrypted | PayloadType::EncryptedFragment
        );
        if encrypted {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-3.1
            //# An Encrypted payload MUST be the last payload in a packet and an
            //# Encrypted payload MUST NOT contain another Encrypted payload.
            // RFC 7383 section 2.5: the Encrypted Fragment payload too must
            // be the last one.
            if !outer {
                return Err(Error::InvalidValue {
                    what: "Encrypted payload inside an Encrypted payload",
                    value: u64::from(this.value()),
                });
            }
            r.finish().map_err(|e| match e {
                Error::TrailingBytes { count, .. } => Error::TrailingBytes {
                    what: "payloads after the Encrypted payload",
                    count,
                },
                e => e,
            })?;
        }
        match Payload::decode_body(this, next, body) {
            Some(payload) => payloads.push(payload?),
            // RFC 7296 section 2.5: a payload of unknown type with the
            // critical bit set makes the whole message unacceptable; the
            // sender learns so from an UNSUPPORTED_CRITICAL_PAYLOAD notify.
            // Without it the payload is skipped.
            None if flags & CRITICAL != 0 => {
                return Err(Error::UnsupportedCriticalPayload(this.value()));
            }
            None => {}
        }
        if encrypted {
            return Ok(payloads);
        }
        this = next;
    }
    r.finish()?;
    Ok(payloads)
}

#[cfg(test)]
mod tests;
