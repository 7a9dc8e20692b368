//! The input of `ike_fragments` (RFC 7383 reassembly): a cipher choice,
//! then steps until the input ends. Each step is one byte (its kind,
//! modulo 4) and its fields, in [`crate::framing`]'s layout.

use arbitrary::{Arbitrary, Result, Unstructured};
use tunsec_ike::crypto::{Encr, Integ, Key, SkCipher};
use tunsec_ike::message::{ExchangeType, Header, PayloadType};

use crate::framing::{put_bytes, put_u16, take_bytes};

/// The IKE SPIs of every fragment.
pub const FRAGMENT_SPIS: (u64, u64) = (0x1111_2222_3333_4444, 0x5555_6666_7777_8888);

/// `ike_fragments`' input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentInput {
    /// AES-CBC with HMAC-SHA-256 rather than AES-GCM.
    pub cbc: bool,
    /// The steps, in order.
    pub steps: Vec<FragmentStep>,
}

/// One step of `ike_fragments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FragmentStep {
    /// One SKF message sealed with the fixed keys, whatever its fields.
    Sealed {
        /// A fragment of a response, not of a request.
        response: bool,
        /// The header's message ID.
        message_id: u8,
        /// The Fragment Number (the sealer checks nothing).
        number: u16,
        /// The Total Fragments.
        total: u16,
        /// The SKF payload's Next Payload.
        first_payload: u8,
        /// The plaintext piece.
        piece: Vec<u8>,
    },
    /// Bytes handed over as they are: a forged fragment.
    Raw(Vec<u8>),
    /// The clock moves this many seconds.
    Wait(u8),
    /// A real message (Notify payloads with `data_len` bytes of data in
    /// all, 16 KiB each),
    /// cut by `SkCipher::seal_fragments` into messages of at most
    /// `max_len` bytes, fed in the order `order` picks (indices modulo
    /// the number of fragments, duplicates allowed), then the fragments it
    /// did not pick, in order.
    Whole {
        /// A response, not a request.
        response: bool,
        /// `data_len` counts pairs of bytes: up to 128 KiB, past the
        /// 64 KiB bound (flag bit 1).
        large: bool,
        /// The largest fragment message (the target adds 80).
        max_len: u16,
        /// The Notify data's length (the target keeps it below 16 KiB
        /// unless `large`).
        data_len: u16,
        /// The order.
        order: Vec<u8>,
    },
}

impl<'a> Arbitrary<'a> for FragmentInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let cbc = u.arbitrary::<u8>()? & 1 == 1;
        let mut steps = Vec::new();
        while !u.is_empty() {
            steps.push(FragmentStep::arbitrary(u)?);
        }
        Ok(Self { cbc, steps })
    }
}

impl<'a> Arbitrary<'a> for FragmentStep {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.arbitrary::<u8>()? % 4 {
            0 => {
                let flags = u.arbitrary::<u8>()?;
                Self::Sealed {
                    response: flags & 1 == 1,
                    message_id: u.arbitrary()?,
                    number: u.arbitrary()?,
                    total: u.arbitrary()?,
                    first_payload: u.arbitrary()?,
                    piece: take_bytes(u)?,
                }
            }
            1 => Self::Raw(take_bytes(u)?),
            2 => Self::Wait(u.arbitrary()?),
            _ => {
                let flags = u.arbitrary::<u8>()?;
                Self::Whole {
                    response: flags & 1 == 1,
                    large: flags & 2 == 2,
                    max_len: u.arbitrary()?,
                    data_len: u.arbitrary()?,
                    order: take_bytes(u)?,
                }
            }
        })
    }
}

impl FragmentInput {
    /// The bytes that decode to this input.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![u8::from(self.cbc)];
        for step in &self.steps {
            match step {
                FragmentStep::Sealed {
                    response,
                    message_id,
                    number,
                    total,
                    first_payload,
                    piece,
                } => {
                    out.extend_from_slice(&[0, u8::from(*response), *message_id]);
                    put_u16(&mut out, *number);
                    put_u16(&mut out, *total);
                    out.push(*first_payload);
                    put_bytes(&mut out, piece);
                }
                FragmentStep::Raw(bytes) => {
                    out.push(1);
                    put_bytes(&mut out, bytes);
                }
                FragmentStep::Wait(seconds) => out.extend_from_slice(&[2, *seconds]),
                FragmentStep::Whole {
                    response,
                    large,
                    max_len,
                    data_len,
                    order,
                } => {
                    let flags = u8::from(*response) | u8::from(*large) << 1;
                    out.extend_from_slice(&[3, flags]);
                    put_u16(&mut out, *max_len);
                    put_u16(&mut out, *data_len);
                    put_bytes(&mut out, order);
                }
            }
        }
        out
    }
}

/// The fixed cipher of the fragments: AES-128-GCM, or AES-128-CBC with
/// HMAC-SHA-256-128.
pub fn fragment_cipher(cbc: bool) -> SkCipher {
    let result = if cbc {
        SkCipher::new(
            Encr::AesCbc128,
            Some((Integ::HmacSha2_256_128, &Key::from_slice(&[0x5a; 32]))),
            &Key::from_slice(&[0x3c; 16]),
        )
    } else {
        SkCipher::new(Encr::AesGcm128, None, &Key::from_slice(&[0x3c; 20]))
    };
    result.expect("fixed keys of the right lengths")
}

/// The header of a fragment: an INFORMATIONAL request or response with
/// this message ID.
pub fn fragment_header(response: bool, message_id: u32) -> Header {
    Header {
        initiator_spi: FRAGMENT_SPIS.0,
        responder_spi: FRAGMENT_SPIS.1,
        next_payload: PayloadType::EncryptedFragment,
        major_version: 2,
        minor_version: 0,
        exchange_type: ExchangeType::Informational,
        response,
        version: false,
        initiator: !response,
        message_id,
        length: 0,
    }
}
