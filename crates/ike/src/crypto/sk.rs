//! Protection of the Encrypted payload (SK, RFC 7296 section 3.14).
//!
//! Two kinds of transform:
//! - AEAD (RFC 5282 for AES-GCM with a 16-octet ICV, RFC 7634 for
//!   ChaCha20-Poly1305): the nonce is the 4-byte salt at the end of SK_e
//!   followed by the 8-byte IV sent in the payload; the associated data is
//!   the message from the first octet of the IKE header to the last octet
//!   of the SK payload's generic header; the ICV is the 16-byte tag.
//! - AES-CBC with an HMAC-SHA2 integrity check (RFC 7296 section 3.14,
//!   RFC 3602, RFC 4868): a random 16-byte IV, and an ICV over the whole
//!   message from the IKE header to the end of the ciphertext.
//!
//! ```text
//! | IKE header | SK header | IV | payloads | padding | pad length | ICV |
//!                               \_______ encrypted ______________/
//! ```

use core::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::{aead, cipher, constant_time, hmac, rand};

use super::Key;
use crate::error::{Error, Result};
use crate::message::{
    EncrId, EncryptedFragment, FRAGMENT_FIELDS_LEN, HEADER_LEN, Header, IntegId, Message,
    PAYLOAD_HEADER_LEN, Payload, PayloadType, Transform, TransformId, decode_payloads,
    encode_payloads,
};

/// The salt of the AEAD ciphers: the last 4 bytes of SK_e.
const SALT_LEN: usize = 4;
/// The IV on the wire of the AEAD ciphers (RFC 5282, RFC 7634).
const AEAD_IV_LEN: usize = 8;
/// The tag of AES-GCM-16 and ChaCha20-Poly1305.
const AEAD_ICV_LEN: usize = 16;
/// The AES block, and CBC's IV.
const AES_BLOCK: usize = 16;

/// A cipher for the SK payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encr {
    /// AES-CBC with a 128-bit key (ENCR_AES_CBC, key length 128).
    AesCbc128,
    /// AES-CBC with a 256-bit key (ENCR_AES_CBC, key length 256).
    AesCbc256,
    /// AES-GCM with a 16-octet ICV and a 128-bit key (ENCR_AES_GCM_16).
    AesGcm128,
    /// AES-GCM with a 16-octet ICV and a 256-bit key (ENCR_AES_GCM_16).
    AesGcm256,
    /// ChaCha20-Poly1305 (ENCR_CHACHA20_POLY1305, RFC 7634).
    ChaCha20Poly1305,
}

impl Encr {
    /// Every supported cipher.
    pub const ALL: [Self; 5] = [
        Self::AesCbc128,
        Self::AesCbc256,
        Self::AesGcm128,
        Self::AesGcm256,
        Self::ChaCha20Poly1305,
    ];

    /// The cipher a transform names, if supported. AES needs its key
    /// length attribute; ChaCha20-Poly1305 must not have one (RFC 7634:
    /// its key is always 256 bits).
    pub fn from_transform(transform: &Transform) -> Option<Self> {
        let TransformId::Encr(id) = transform.id else {
            return None;
        };
        let key_length = match &transform.attributes[..] {
            [] => None,
            [crate::message::Attribute::KeyLength(bits)] => Some(*bits),
            _ => return None,
        };
        match (id, key_length) {
            (EncrId::AesCbc, Some(128)) => Some(Self::AesCbc128),
            (EncrId::AesCbc, Some(256)) => Some(Self::AesCbc256),
            (EncrId::AesGcm16, Some(128)) => Some(Self::AesGcm128),
            (EncrId::AesGcm16, Some(256)) => Some(Self::AesGcm256),
            (EncrId::ChaCha20Poly1305, None) => Some(Self::ChaCha20Poly1305),
            _ => None,
        }
    }

    /// The transform that names this cipher.
    pub fn transform(self) -> Transform {
        let id = |e| TransformId::Encr(e);
        match self {
            Self::AesCbc128 => Transform::with_key_length(id(EncrId::AesCbc), 128),
            Self::AesCbc256 => Transform::with_key_length(id(EncrId::AesCbc), 256),
            Self::AesGcm128 => Transform::with_key_length(id(EncrId::AesGcm16), 128),
            Self::AesGcm256 => Transform::with_key_length(id(EncrId::AesGcm16), 256),
            Self::ChaCha20Poly1305 => Transform::new(id(EncrId::ChaCha20Poly1305)),
        }
    }

    /// Whether the cipher authenticates too (and needs no integrity
    /// transform).
    pub fn is_aead(self) -> bool {
        !matches!(self, Self::AesCbc128 | Self::AesCbc256)
    }

    /// The length of SK_ei and SK_er: the key, and for the AEAD ciphers the
    /// 4-byte salt after it (RFC 5282, RFC 7634).
    pub fn key_len(self) -> usize {
        match self {
            Self::AesCbc128 => 16,
            Self::AesCbc256 => 32,
            Self::AesGcm128 => 16 + SALT_LEN,
            Self::AesGcm256 | Self::ChaCha20Poly1305 => 32 + SALT_LEN,
        }
    }

    fn iv_len(self) -> usize {
        if self.is_aead() {
            AEAD_IV_LEN
        } else {
            AES_BLOCK
        }
    }

    /// The payloads, padding and pad length together must be a multiple of
    /// this. The AEAD ciphers are stream ciphers inside: no alignment
    /// (strongSwan sends the pad length alone, too).
    fn block_len(self) -> usize {
        if self.is_aead() { 1 } else { AES_BLOCK }
    }
}

/// An integrity algorithm for the SK payload with AES-CBC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Integ {
    /// AUTH_HMAC_SHA2_256_128: 32-byte key, 16-byte ICV.
    HmacSha2_256_128,
    /// AUTH_HMAC_SHA2_384_192: 48-byte key, 24-byte ICV.
    HmacSha2_384_192,
    /// AUTH_HMAC_SHA2_512_256: 64-byte key, 32-byte ICV.
    HmacSha2_512_256,
}

impl Integ {
    /// Every supported integrity algorithm.
    pub const ALL: [Self; 3] = [
        Self::HmacSha2_256_128,
        Self::HmacSha2_384_192,
        Self::HmacSha2_512_256,
    ];

    /// The algorithm a transform names, if supported.
    pub fn from_transform(transform: &Transform) -> Option<Self> {
        match transform.id {
            TransformId::Integ(id) if transform.attributes.is_empty() => Self::from_id(id),
            _ => None,
        }
    }

    /// The algorithm of a transform ID, if supported.
    pub fn from_id(id: IntegId) -> Option<Self> {
        match id {
            IntegId::HmacSha2_256_128 => Some(Self::HmacSha2_256_128),
            IntegId::HmacSha2_384_192 => Some(Self::HmacSha2_384_192),
            IntegId::HmacSha2_512_256 => Some(Self::HmacSha2_512_256),
            _ => None,
        }
    }

    /// The transform ID.
    pub fn id(self) -> IntegId {
        match self {
            Self::HmacSha2_256_128 => IntegId::HmacSha2_256_128,
            Self::HmacSha2_384_192 => IntegId::HmacSha2_384_192,
            Self::HmacSha2_512_256 => IntegId::HmacSha2_512_256,
        }
    }

    /// The key length (RFC 4868: the hash's output length).
    pub fn key_len(self) -> usize {
        match self {
            Self::HmacSha2_256_128 => 32,
            Self::HmacSha2_384_192 => 48,
            Self::HmacSha2_512_256 => 64,
        }
    }

    /// The ICV length (RFC 4868: the output truncated to half).
    pub fn icv_len(self) -> usize {
        self.key_len() / 2
    }

    fn algorithm(self) -> hmac::Algorithm {
        match self {
            Self::HmacSha2_256_128 => hmac::HMAC_SHA256,
            Self::HmacSha2_384_192 => hmac::HMAC_SHA384,
            Self::HmacSha2_512_256 => hmac::HMAC_SHA512,
        }
    }
}

/// One direction's protection of SK payloads: seals the messages this
/// side sends, or opens those it receives.
pub struct SkCipher {
    encr: Encr,
    inner: Inner,
}

enum Inner {
    Aead {
        key: aead::LessSafeKey,
        salt: [u8; SALT_LEN],
        /// The next IV. IVs must never repeat under one key (RFC 5282);
        /// a counter from a random start guarantees it.
        counter: AtomicU64,
    },
    Cbc(Box<CbcKeys>),
}

struct CbcKeys {
    encrypt: cipher::EncryptingKey,
    decrypt: cipher::DecryptingKey,
    mac: hmac::Key,
    icv_len: usize,
}

impl fmt::Debug for SkCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SkCipher")
            .field("encr", &self.encr)
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl SkCipher {
    /// A cipher from one direction's keys: SK_ei and SK_ai for messages
    /// from the original initiator, SK_er and SK_ar for the others. The
    /// integrity algorithm and key must be given exactly when the cipher is
    /// not an AEAD.
    pub fn new(encr: Encr, integ: Option<(Integ, &Key)>, sk_e: &Key) -> Result<Self> {
        if sk_e.len() != encr.key_len() {
            return Err(Error::KeyLength {
                what: "SK_e",
                expected: encr.key_len(),
                actual: sk_e.len(),
            });
        }
        let crypto = |_| Error::Crypto("the cipher refused a key of the right length");
        let inner = match (encr, integ) {
            (Encr::AesGcm128 | Encr::AesGcm256 | Encr::ChaCha20Poly1305, None) => {
                let algorithm = match encr {
                    Encr::AesGcm128 => &aead::AES_128_GCM,
                    Encr::AesGcm256 => &aead::AES_256_GCM,
                    _ => &aead::CHACHA20_POLY1305,
                };
                let (key, salt) = sk_e.expose().split_at(sk_e.len() - SALT_LEN);
                let mut start = [0u8; 8];
                rand::fill(&mut start).map_err(|_| Error::Crypto("no randomness"))?;
                Inner::Aead {
                    key: aead::LessSafeKey::new(
                        aead::UnboundKey::new(algorithm, key).map_err(crypto)?,
                    ),
                    salt: salt.try_into().map_err(|_| Error::Crypto("salt"))?,
                    counter: AtomicU64::new(u64::from_be_bytes(start)),
                }
            }
            (Encr::AesCbc128 | Encr::AesCbc256, Some((integ, sk_a))) => {
                if sk_a.len() != integ.key_len() {
                    return Err(Error::KeyLength {
                        what: "SK_a",
                        expected: integ.key_len(),
                        actual: sk_a.len(),
                    });
                }
                let algorithm = if encr == Encr::AesCbc128 {
                    &cipher::AES_128
                } else {
                    &cipher::AES_256
                };
                let key = || cipher::UnboundCipherKey::new(algorithm, sk_e.expose());
                Inner::Cbc(Box::new(CbcKeys {
                    encrypt: cipher::EncryptingKey::cbc(key().map_err(crypto)?).map_err(crypto)?,
                    decrypt: cipher::DecryptingKey::cbc(key().map_err(crypto)?).map_err(crypto)?,
                    mac: hmac::Key::new(integ.algorithm(), sk_a.expose()),
                    icv_len: integ.icv_len(),
                }))
            }
            (_, integ) => {
                return Err(Error::InvalidValue {
                    what: "integrity algorithm with an AEAD, or none without",
                    value: integ.map_or(0, |(i, _)| u64::from(i.id().value())),
                });
            }
        };
        Ok(Self { encr, inner })
    }

    /// The cipher.
    pub fn encr(&self) -> Encr {
        self.encr
    }

    fn icv_len(&self) -> usize {
        match &self.inner {
            Inner::Aead { .. } => AEAD_ICV_LEN,
            Inner::Cbc(cbc) => cbc.icv_len,
        }
    }

    /// Builds a message whose only payload is an SK payload holding
    /// `payloads`: the header (next payload and length set), the SK
    /// payload with a fresh IV, the payloads encrypted with their padding,
    /// and the ICV.
    pub fn seal(&self, header: &Header, payloads: &[Payload]) -> Result<Vec<u8>> {
        let mut plaintext = Vec::new();
        let first = encode_payloads(payloads, &mut plaintext)?;
        let iv = self.fresh_iv()?;
        self.seal_with_iv(header, first, &plaintext, &iv)
    }

    /// Like [`Self::seal`], but when the message would be longer than
    /// `max_len` bytes (the IKE message, without IP and UDP headers or the
    /// non-ESP marker), cuts the plaintext into as few Encrypted Fragment
    /// payloads as keep each message within `max_len`, and seals each on
    /// its own (RFC 7383 section 2.5). Returns the messages to send, in
    /// order: one if the message fits.
    pub fn seal_fragments(
        &self,
        header: &Header,
        payloads: &[Payload],
        max_len: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let mut plaintext = Vec::new();
        let first = encode_payloads(payloads, &mut plaintext)?;
        let iv_len = self.encr.iv_len();
        let icv_len = self.icv_len();
        let block = self.encr.block_len();
        let whole = HEADER_LEN
            + PAYLOAD_HEADER_LEN
            + iv_len
            + (plaintext.len() + 1).next_multiple_of(block)
            + icv_len;
        if whole <= max_len {
            let iv = self.fresh_iv()?;
            return Ok(vec![self.seal_with_iv(header, first, &plaintext, &iv)?]);
        }
        // The room for ciphertext in one fragment, then for plaintext: the
        // pad length octet always, and whole blocks for CBC.
        let overhead = HEADER_LEN + PAYLOAD_HEADER_LEN + FRAGMENT_FIELDS_LEN + iv_len + icv_len;
        let room = max_len.saturating_sub(overhead) / block * block;
        let chunk = room.saturating_sub(1);
        let too_small = Error::Encode {
            what: "IKE fragment size",
            length: max_len,
        };
        if chunk == 0 {
            return Err(too_small);
        }
        let total = u16::try_from(plaintext.len().div_ceil(chunk)).map_err(|_| too_small)?;
        let mut out = Vec::with_capacity(usize::from(total));
        for (i, piece) in plaintext.chunks(chunk).enumerate() {
            let number = u16::try_from(i + 1).unwrap_or(u16::MAX);
            // RFC 7383 section 2.5: the SKF payload's Next Payload is the
            // type of the first inner payload in fragment 1, and zero in
            // the others.
            let next = if number == 1 {
                first
            } else {
                PayloadType::None
            };
            out.push(self.seal_fragment(header, next, number, total, piece)?);
        }
        Ok(out)
    }

    /// One SKF message: fragment `number` of `total`, holding `piece` of
    /// the plaintext, whose SKF Next Payload field is `next`. Nothing
    /// checks that `number` and `total` make sense: [`Self::seal_fragments`]
    /// is the way to cut a message; this is for tests and fuzzing.
    pub fn seal_fragment(
        &self,
        header: &Header,
        next: PayloadType,
        number: u16,
        total: u16,
        piece: &[u8],
    ) -> Result<Vec<u8>> {
        let mut fields = [0u8; FRAGMENT_FIELDS_LEN];
        fields[..2].copy_from_slice(&number.to_be_bytes());
        fields[2..].copy_from_slice(&total.to_be_bytes());
        let iv = self.fresh_iv()?;
        self.seal_parts(
            header,
            PayloadType::EncryptedFragment,
            next,
            &fields,
            piece,
            &iv,
        )
    }

    /// A new IV: the next counter value for the AEADs, random for CBC.
    fn fresh_iv(&self) -> Result<Vec<u8>> {
        let mut iv = vec![0u8; self.encr.iv_len()];
        match &self.inner {
            Inner::Aead { counter, .. } => {
                iv.copy_from_slice(&counter.fetch_add(1, Ordering::Relaxed).to_be_bytes());
            }
            //= https://www.rfc-editor.org/rfc/rfc3602#section-3
            //# The IV MUST be chosen at random, and MUST be unpredictable.
            Inner::Cbc(_) => rand::fill(&mut iv).map_err(|_| Error::Crypto("no randomness"))?,
        }
        Ok(iv)
    }

    /// [`Self::seal`] with the caller's IV and plaintext (the payload chain
    /// whose first payload is of type `first`).
    pub(crate) fn seal_with_iv(
        &self,
        header: &Header,
        first: PayloadType,
        plaintext: &[u8],
        iv: &[u8],
    ) -> Result<Vec<u8>> {
        self.seal_parts(header, PayloadType::Encrypted, first, &[], plaintext, iv)
    }

    /// Seals an SK payload, or an SKF payload whose fragment fields are
    /// `fields`: they follow the generic payload header, so they are in
    /// the AEAD's associated data and under the ICV.
    fn seal_parts(
        &self,
        header: &Header,
        payload_type: PayloadType,
        first: PayloadType,
        fields: &[u8],
        plaintext: &[u8],
        iv: &[u8],
    ) -> Result<Vec<u8>> {
        let block = self.encr.block_len();
        // RFC 7296 section 3.14: the payloads, the padding and the pad
        // length together are a multiple of the block size; the sender
        // should use the least padding that does that.
        let pad_len = (block - (plaintext.len() + 1) % block) % block;
        let icv_len = self.icv_len();
        let sk_len =
            PAYLOAD_HEADER_LEN + fields.len() + iv.len() + plaintext.len() + pad_len + 1 + icv_len;
        let total = HEADER_LEN + sk_len;
        let mut header = *header;
        header.next_payload = payload_type;
        header.length = u32::try_from(total).map_err(|_| Error::Encode {
            what: "IKE message",
            length: total,
        })?;
        let sk_len = u16::try_from(sk_len).map_err(|_| Error::Encode {
            what: "Encrypted payload",
            length: sk_len,
        })?;
        let mut out = Vec::with_capacity(total);
        header.encode(&mut out);
        out.push(first.value());
        out.push(0);
        out.extend_from_slice(&sk_len.to_be_bytes());
        out.extend_from_slice(fields);
        out.extend_from_slice(iv);
        let ct_start = out.len();
        out.extend_from_slice(plaintext);
        out.resize(out.len() + pad_len, 0);
        out.push(pad_len as u8);
        let crypto = |_| Error::Crypto("encryption failed");
        match &self.inner {
            Inner::Aead { key, salt, .. } => {
                // RFC 7383 section 2.5: for an SKF payload, the associated
                // data runs through its Fragment Number and Total Fragments
                // fields, which come before the IV.
                let (aad, rest) = out.split_at_mut(ct_start - iv.len());
                let (iv, ct) = rest.split_at_mut(iv.len());
                let tag = key
                    .seal_in_place_separate_tag(nonce(salt, iv)?, aead::Aad::from(&*aad), ct)
                    .map_err(crypto)?;
                out.extend_from_slice(tag.as_ref());
            }
            Inner::Cbc(cbc) => {
                let iv: [u8; AES_BLOCK] = iv.try_into().map_err(|_| Error::KeyLength {
                    what: "CBC IV",
                    expected: AES_BLOCK,
                    actual: iv.len(),
                })?;
                cbc.encrypt
                    .less_safe_encrypt(
                        &mut out[ct_start..],
                        cipher::EncryptionContext::Iv128(iv.into()),
                    )
                    .map_err(crypto)?;
                // RFC 7296 section 3.14: the checksum covers the message
                // from the first octet of the IKE header through the
                // encrypted part.
                let tag = hmac::sign(&cbc.mac, &out);
                out.extend_from_slice(&tag.as_ref()[..cbc.icv_len]);
            }
        }
        Ok(out)
    }

    /// Checks and decrypts a received message whose last payload is an
    /// SK payload. Returns the header and the payloads: those before the
    /// SK payload (normally none), then those inside it.
    ///
    /// [`Error::IntegrityCheckFailed`] means the message is to be dropped
    /// without an answer.
    pub fn open(&self, datagram: &[u8]) -> Result<Message> {
        let mut message = Message::decode(datagram)?;
        let Some(Payload::Encrypted(sk)) = message.payloads.pop() else {
            return Err(Error::InvalidValue {
                what: "no Encrypted payload",
                value: 0,
            });
        };
        let plaintext = self.decrypt(datagram, &sk.data)?;
        let inner = decode_payloads(sk.first_payload, &plaintext)?;
        message.payloads.extend(inner);
        Ok(message)
    }

    /// Checks and decrypts one received fragment (a message whose last
    /// payload is an SKF payload, RFC 7383 section 2.6): the message
    /// without its SKF payload (the header, and the payloads before it,
    /// normally none) and the SKF payload, its data now the plaintext
    /// piece without padding.
    ///
    /// [`Error::IntegrityCheckFailed`] means the fragment is to be dropped.
    pub fn open_fragment(&self, datagram: &[u8]) -> Result<(Message, EncryptedFragment)> {
        let mut message = Message::decode(datagram)?;
        let Some(Payload::EncryptedFragment(mut skf)) = message.payloads.pop() else {
            return Err(Error::InvalidValue {
                what: "no Encrypted Fragment payload",
                value: 0,
            });
        };
        skf.data = self.decrypt(datagram, &skf.data)?;
        Ok((message, skf))
    }

    /// Checks the ICV of the SK or SKF payload whose data (IV, ciphertext,
    /// ICV) ends `datagram`, and returns the plaintext without padding.
    fn decrypt(&self, datagram: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        // The SK payload is the last one, so its data ends the datagram.
        let data_start = datagram.len() - data.len();
        let iv_len = self.encr.iv_len();
        let icv_len = self.icv_len();
        let ct_len = data
            .len()
            .checked_sub(iv_len + icv_len)
            .filter(|len| *len > 0 && len % self.encr.block_len() == 0)
            .ok_or(Error::InvalidLength {
                what: "Encrypted payload",
                length: data.len(),
            })?;
        let icv_start = datagram.len() - icv_len;
        let (iv, rest) = data.split_at(iv_len);
        let mut plaintext = rest[..ct_len].to_vec();
        let icv = &rest[ct_len..];
        match &self.inner {
            Inner::Aead { key, salt, .. } => {
                key.open_in_place_separate_tag(
                    nonce(salt, iv)?,
                    aead::Aad::from(&datagram[..data_start]),
                    icv,
                    &mut plaintext,
                )
                .map_err(|_| Error::IntegrityCheckFailed)?;
            }
            Inner::Cbc(cbc) => {
                let tag = hmac::sign(&cbc.mac, &datagram[..icv_start]);
                constant_time::verify_slices_are_equal(&tag.as_ref()[..cbc.icv_len], icv)
                    .map_err(|_| Error::IntegrityCheckFailed)?;
                let iv: [u8; AES_BLOCK] = iv.try_into().map_err(|_| Error::IntegrityCheckFailed)?;
                cbc.decrypt
                    .decrypt(&mut plaintext, cipher::DecryptionContext::Iv128(iv.into()))
                    .map_err(|_| Error::IntegrityCheckFailed)?;
            }
        }
        // RFC 7296 section 3.14: the recipient accepts any pad length that
        // gives proper alignment (the alignment was checked above).
        let pad_len = usize::from(plaintext.last().copied().unwrap_or(0));
        let payloads_len = plaintext
            .len()
            .checked_sub(pad_len + 1)
            .ok_or(Error::InvalidValue {
                what: "Encrypted payload: pad length",
                value: pad_len as u64,
            })?;
        plaintext.truncate(payloads_len);
        Ok(plaintext)
    }
}

/// The AEAD nonce: the salt, then the IV on the wire (RFC 5282,
/// RFC 7634).
fn nonce(salt: &[u8; SALT_LEN], iv: &[u8]) -> Result<aead::Nonce> {
    let mut nonce = [0u8; aead::NONCE_LEN];
    if iv.len() != AEAD_IV_LEN {
        return Err(Error::KeyLength {
            what: "AEAD IV",
            expected: AEAD_IV_LEN,
            actual: iv.len(),
        });
    }
    nonce[..SALT_LEN].copy_from_slice(salt);
    nonce[SALT_LEN..].copy_from_slice(iv);
    Ok(aead::Nonce::assume_unique_for_key(nonce))
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::crypto::keys::{IkeKeys, IkeSuite, skeyseed};
    use crate::message::{ExchangeType, Notify, NotifyType};
    use crate::testdata::Capture;

    fn header() -> Header {
        Header {
            initiator_spi: 0x1111_2222_3333_4444,
            responder_spi: 0x5555_6666_7777_8888,
            next_payload: PayloadType::None,
            major_version: 2,
            minor_version: 0,
            exchange_type: ExchangeType::Informational,
            response: false,
            version: false,
            initiator: true,
            message_id: 7,
            length: 0,
        }
    }

    fn cipher(encr: Encr, integ: Option<Integ>) -> SkCipher {
        let sk_e = Key::new((0..encr.key_len() as u8).collect());
        let sk_a = integ.map(|i| Key::new(vec![0x5a; i.key_len()]));
        SkCipher::new(encr, integ.zip(sk_a.as_ref()), &sk_e).unwrap()
    }

    fn suites() -> Vec<(Encr, Option<Integ>)> {
        let mut out = vec![
            (Encr::AesGcm128, None),
            (Encr::AesGcm256, None),
            (Encr::ChaCha20Poly1305, None),
        ];
        for encr in [Encr::AesCbc128, Encr::AesCbc256] {
            for integ in Integ::ALL {
                out.push((encr, Some(integ)));
            }
        }
        out
    }

    fn payloads(n: usize) -> Vec<Payload> {
        (0..n)
            .map(|i| Payload::Notify(Notify::new(NotifyType::Unknown(40000), vec![i as u8; i])))
            .collect()
    }

    /// Every cipher: seal then open gives back the payloads, for several
    /// plaintext lengths (all paddings), the empty one included; a flipped
    /// bit anywhere fails.
    #[test]
    fn round_trip_and_tamper_every_cipher() {
        for (encr, integ) in suites() {
            let c = cipher(encr, integ);
            for n in [0, 1, 2, 3, 5] {
                let sent = payloads(n);
                let bytes = c.seal(&header(), &sent).unwrap();
                let m = c.open(&bytes).unwrap();
                assert_eq!(m.payloads, sent, "{encr:?} {integ:?}");
                assert_eq!(m.header.message_id, 7);
                assert_eq!(m.header.next_payload, PayloadType::Encrypted);
                assert_eq!(m.header.length as usize, bytes.len());
                if !encr.is_aead() {
                    let ct = bytes.len() - HEADER_LEN - 4 - 16 - c.icv_len();
                    assert_eq!(ct % 16, 0);
                }
                for i in [0, 17, 27, 28, 30, 32, 40, bytes.len() - 1] {
                    let mut t = bytes.clone();
                    t[i] ^= 0x01;
                    assert!(c.open(&t).is_err(), "{encr:?} byte {i}");
                }
                for i in 32..bytes.len() {
                    let mut t = bytes.clone();
                    t[i] ^= 0x80;
                    assert_eq!(c.open(&t), Err(Error::IntegrityCheckFailed), "{encr:?} {i}");
                }
            }
            // Another key does not open it.
            let bytes = c.seal(&header(), &payloads(2)).unwrap();
            let other_e = Key::new(vec![0xee; encr.key_len()]);
            let other_a = integ.map(|i| Key::new(vec![0xa5; i.key_len()]));
            let other = SkCipher::new(encr, integ.zip(other_a.as_ref()), &other_e).unwrap();
            assert_eq!(other.open(&bytes), Err(Error::IntegrityCheckFailed));
            // Truncated messages fail without panicking.
            for len in 0..bytes.len() {
                assert!(c.open(&bytes[..len]).is_err());
            }
        }
    }

    /// Every cipher: a message longer than the limit is cut into SKF
    /// messages no longer than the limit, each opening on its own; their
    /// plaintexts, joined, are the payloads; fragment 1 names the first
    /// payload and the others none; a flipped bit anywhere in a fragment
    /// fails it. A message that fits is one ordinary SK message.
    #[test]
    fn fragments_every_cipher() {
        let sent: Vec<Payload> = (0..12)
            .map(|i| Payload::Notify(Notify::new(NotifyType::Unknown(40000), vec![i; 100])))
            .collect();
        for (encr, integ) in suites() {
            let c = cipher(encr, integ);
            let whole = c.seal(&header(), &sent).unwrap();
            let one = c.seal_fragments(&header(), &sent, whole.len()).unwrap();
            assert_eq!(one.len(), 1);
            assert_eq!(c.open(&one[0]).unwrap().payloads, sent);
            for max in [200, 333, 576, whole.len() - 1] {
                let fragments = c.seal_fragments(&header(), &sent, max).unwrap();
                assert!(fragments.len() > 1, "{encr:?} {max}");
                let total = fragments.len() as u16;
                let mut plaintext = Vec::new();
                let mut first = PayloadType::None;
                for (i, f) in fragments.iter().enumerate() {
                    assert!(f.len() <= max, "{encr:?} {max}: {}", f.len());
                    let (m, skf) = c.open_fragment(f).unwrap();
                    assert!(m.payloads.is_empty());
                    let h = m.header;
                    assert_eq!(h.message_id, 7);
                    assert_eq!(h.next_payload, PayloadType::EncryptedFragment);
                    assert_eq!((skf.number, skf.total), (i as u16 + 1, total));
                    if i == 0 {
                        first = skf.first_payload;
                    } else {
                        assert_eq!(skf.first_payload, PayloadType::None);
                    }
                    plaintext.extend_from_slice(&skf.data);
                    // An SKF message is not an SK message.
                    assert!(c.open(f).is_err());
                }
                assert_eq!(first, PayloadType::Notify);
                assert_eq!(decode_payloads(first, &plaintext).unwrap(), sent);
                let f = &fragments[0];
                // Every byte from the fragment fields on is protected
                // (the header's and generic header's are too, but some of
                // their bits also fail the decoding).
                for i in 32..f.len() {
                    let mut t = f.clone();
                    t[i] ^= 0x80;
                    assert!(c.open_fragment(&t).is_err(), "{encr:?} byte {i}");
                }
                for len in 0..f.len() {
                    assert!(c.open_fragment(&f[..len]).is_err());
                }
            }
            // A limit too small for one byte of plaintext is an error.
            assert!(c.seal_fragments(&header(), &sent, 40).is_err());
        }
    }

    #[test]
    fn ivs_do_not_repeat() {
        for (encr, integ) in suites() {
            let c = cipher(encr, integ);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..100 {
                let bytes = c.seal(&header(), &payloads(1)).unwrap();
                let iv = bytes[32..32 + encr.iv_len()].to_vec();
                assert!(seen.insert(iv), "{encr:?}");
            }
        }
    }

    #[test]
    fn key_lengths_and_integrity_pairing_are_checked() {
        let k = |n| Key::new(vec![1; n]);
        assert!(matches!(
            SkCipher::new(Encr::AesGcm128, None, &k(16)),
            Err(Error::KeyLength { expected: 20, .. })
        ));
        assert!(
            SkCipher::new(
                Encr::AesGcm128,
                Some((Integ::HmacSha2_256_128, &k(32))),
                &k(20)
            )
            .is_err()
        );
        assert!(SkCipher::new(Encr::AesCbc256, None, &k(32)).is_err());
        assert!(matches!(
            SkCipher::new(
                Encr::AesCbc256,
                Some((Integ::HmacSha2_256_128, &k(16))),
                &k(32)
            ),
            Err(Error::KeyLength { expected: 32, .. })
        ));
        let c = cipher(Encr::AesGcm256, None);
        assert!(!format!("{c:?}").contains("01"));
    }

    /// A message without an SK payload is not opened.
    #[test]
    fn nothing_to_open() {
        let m = Message {
            header: header(),
            payloads: payloads(1),
        };
        let c = cipher(Encr::AesGcm128, None);
        assert!(matches!(
            c.open(&m.encode().unwrap()),
            Err(Error::InvalidValue { .. })
        ));
    }

    /// strongSwan's IKE_AUTH messages decrypt with the keys derived here,
    /// and for the AEAD ciphers sealing strongSwan's plaintext with
    /// strongSwan's IV gives strongSwan's message, byte for byte.
    #[test]
    fn strongswan_ike_auth() {
        for c in Capture::all() {
            let init_req = Message::decode(&c.init_req).unwrap();
            let init_resp = Message::decode(&c.init_resp).unwrap();
            let Some(Payload::Sa(sa)) = init_resp.payload(PayloadType::SecurityAssociation) else {
                panic!()
            };
            let suite = IkeSuite::from_proposal(&sa.proposals[0]).unwrap();
            let nonce = |m: &Message| match m.payload(PayloadType::Nonce) {
                Some(Payload::Nonce(n)) => n.clone(),
                _ => panic!(),
            };
            let (ni, nr) = (nonce(&init_req), nonce(&init_resp));
            let seed = skeyseed(suite.prf, &ni, &nr, c.key("g_ir"));
            let keys = IkeKeys::derive(
                &suite,
                &seed,
                &ni,
                &nr,
                init_resp.header.initiator_spi,
                init_resp.header.responder_spi,
            )
            .unwrap();
            let (initiator_out, initiator_in) = SkCipher::pair(&suite, &keys, true).unwrap();
            let (responder_out, responder_in) = SkCipher::pair(&suite, &keys, false).unwrap();
            for (bytes, plain, first, opener, wrong, sealer) in [
                (
                    &c.auth_req,
                    c.key("auth_req_plain"),
                    PayloadType::IdInitiator,
                    &responder_in,
                    &initiator_in,
                    &initiator_out,
                ),
                (
                    &c.auth_resp,
                    c.key("auth_resp_plain"),
                    PayloadType::IdResponder,
                    &initiator_in,
                    &responder_in,
                    &responder_out,
                ),
            ] {
                let m = opener
                    .open(bytes)
                    .unwrap_or_else(|e| panic!("{}: {e}", c.name));
                assert_eq!(
                    m.payloads,
                    decode_payloads(first, plain).unwrap(),
                    "{}",
                    c.name
                );
                // The other direction's keys do not open it.
                assert_eq!(wrong.open(bytes), Err(Error::IntegrityCheckFailed));
                let mut tampered = bytes.clone();
                let last = tampered.len() - 1;
                tampered[last] ^= 1;
                assert_eq!(opener.open(&tampered), Err(Error::IntegrityCheckFailed));
                if suite.encr.is_aead() {
                    let iv = &bytes[32..40];
                    let header = Header::decode(bytes).unwrap();
                    let again = sealer.seal_with_iv(&header, first, plain, iv).unwrap();
                    assert_eq!(&again, bytes, "{}", c.name);
                }
            }
        }
    }
}
