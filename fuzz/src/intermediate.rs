//! The input and set-up of `ike_intermediate`: an initiator `IkeSa` at
//! [`INITIATOR`](crate::initiator::INITIATOR) and a responder behind an
//! `Endpoint` at [`RESPONDER`](crate::initiator::RESPONDER), both with a
//! hybrid proposal (X25519, then ML-KEM in IKE_INTERMEDIATE, RFC 9370),
//! run IKE_SA_INIT for real; the steps then talk to either side in the
//! middle of the IKE_INTERMEDIATE exchange (RFC 9242).
//!
//! The input is a configuration byte ([`intermediate_configs`]), then
//! steps until the input ends; each step is one byte (its kind, modulo 7)
//! and its fields, in [`crate::framing`]'s layout. A message is built by
//! the target from the step and sealed with the IKE SA's real keys (which
//! the target reads with `IkeSa::export_keys`), so the fuzzer reaches the
//! handlers behind the ICV check without knowing a key.

use std::net::Ipv4Addr;

use arbitrary::{Arbitrary, Result, Unstructured};
use tunsec_ike::crypto::Key;
use tunsec_ike::message::Identity;
use tunsec_ike::sa::Config;

use crate::framing::{put_bytes, put_u16, take_bytes};

/// The pre-shared key of both sides.
const PSK: &[u8] = b"fuzzing intermediate pre-shared key";

/// The configuration byte's IKE proposals (bits 1-2), each with X25519
/// in IKE_SA_INIT and ML-KEM in one or two IKE_INTERMEDIATE exchanges.
pub const PROPOSALS: [&str; 4] = [
    "aes256gcm16-prfsha384-x25519-ke1_mlkem768",
    // AES-CBC with HMAC: SK payloads with an integrity key of their own.
    "aes256-sha256-x25519-ke1_mlkem768",
    // Two additional key exchanges: two IKE_INTERMEDIATE exchanges.
    "aes128gcm16-prfsha256-x25519-ke1_mlkem768-ke2_mlkem1024",
    "chacha20poly1305-prfsha256-x25519-ke1_mlkem768",
];

/// The initiator's and the responder's configurations from the
/// configuration byte:
/// - bit 0: no IKE fragmentation on either side (the ML-KEM key share
///   then goes in one message);
/// - bits 1-2: the IKE proposal, [`PROPOSALS`];
/// - bit 3: 576-byte IKE fragments (more of them) on both sides.
pub fn intermediate_configs(byte: u8) -> (Config, Config) {
    let (a, b) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
    let ike = PROPOSALS[usize::from((byte >> 1) & 3)];
    let config = |local: Ipv4Addr, remote: Ipv4Addr| {
        let mut config = Config::new(
            Identity::Ipv4(local),
            Some(Identity::Ipv4(remote)),
            Key::from_slice(PSK),
        )
        .with_proposals(ike, "aes256gcm16")
        .expect("valid proposals");
        config.fragmentation = byte & 1 == 0;
        if byte & 8 != 0 {
            config.fragment_size = 576;
        }
        config
    };
    (config(a, b), config(b, a))
}

/// `ike_intermediate`'s input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntermediateInput {
    /// The configuration byte ([`intermediate_configs`]).
    pub config: u8,
    /// The steps, in order.
    pub steps: Vec<IntStep>,
}

/// One step of `ike_intermediate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntStep {
    /// A message the target builds and seals (kind 0: a request to the
    /// responder, under SK_ei/SK_ai; kind 1: a response to the initiator,
    /// under SK_er/SK_ar).
    Sealed(Sealed),
    /// One SKF message sealed with whatever Fragment Number, Total
    /// Fragments, message ID, Next Payload and plaintext piece (kind 2).
    Fragment {
        /// Bit 0: to the initiator (a response), not to the responder;
        /// bit 1: the Response flag flipped; bit 2: sealed with the keys
        /// of IKE_SA_INIT rather than the receiver's current ones.
        flags: u8,
        /// The message ID (0xFF: `u32::MAX`).
        message_id: u8,
        /// The Fragment Number.
        number: u16,
        /// The Total Fragments.
        total: u16,
        /// The SKF payload's Next Payload.
        first_payload: u8,
        /// The plaintext piece: any payload chain, or garbage.
        piece: Vec<u8>,
    },
    /// Bytes sent as they are, unencrypted (kind 3).
    Raw {
        /// Bit 0: to the initiator, not to the responder; bit 1: the IKE
        /// SA's SPIs written over the first 16 bytes, so that the bytes
        /// reach the IKE SA.
        flags: u8,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// What each side sent so far goes to the other, the initiator's
    /// first, then the responder's answers (kind 4).
    Relay,
    /// The clock moves `seconds + 1` seconds; the timers that fall due
    /// run in order (kind 5).
    Wait(u8),
    /// One of the real datagrams a side sent, counted from the newest, is
    /// sent again, `xor` applied to its byte `at` (kind 6).
    Replay {
        /// Bit 0: one the responder sent, to the initiator.
        flags: u8,
        /// Which one, from the newest (modulo their number).
        index: u8,
        /// The byte to change (modulo the length).
        at: u16,
        /// What to XOR it with (0: unchanged).
        xor: u8,
    },
}

/// A message that [`IntStep::Sealed`] builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// A response to the initiator, not a request to the responder.
    pub to_initiator: bool,
    /// - bit 0: the Response flag flipped;
    /// - bit 1: the Initiator flag flipped;
    /// - bit 2: the exchange type is `exchange`, not IKE_INTERMEDIATE;
    /// - bit 3: cut by `SkCipher::seal_fragments` into messages of at most
    ///   `100 + 8 * fragment_len` bytes (RFC 7383);
    /// - bit 4: the fragments sent in reverse order;
    /// - bit 5: the last fragment left out;
    /// - bit 6: sealed with the keys of IKE_SA_INIT, not the receiver's
    ///   current ones (after an additional key exchange they differ);
    /// - bit 7: a wrong responder SPI.
    pub flags: u8,
    /// The message ID (0xFF: `u32::MAX`); the first IKE_INTERMEDIATE
    /// exchange has 1.
    pub message_id: u8,
    /// The exchange type, with flag bit 2.
    pub exchange: u8,
    /// The fragment size, with flag bit 3.
    pub fragment_len: u8,
    /// The payloads, in order (the target keeps at most 8).
    pub payloads: Vec<PayloadSpec>,
}

/// One payload of a [`Sealed`] message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadSpec {
    /// A KE payload (kind 0).
    Ke {
        /// The Diffie-Hellman group number; 0 stands for the group of
        /// the receiver's pending additional key exchange.
        group: u8,
        /// Its key exchange data.
        data: DataSpec,
    },
    /// A Notify payload of any type (kind 1): error notifies included.
    Notify {
        /// The notify message type.
        notify_type: u16,
        /// The notification data.
        data: Vec<u8>,
    },
    /// A Nonce payload (kind 2).
    Nonce(Vec<u8>),
    /// A Vendor ID payload (kind 3).
    VendorId(Vec<u8>),
    /// Every payload of the newest real IKE_INTERMEDIATE message the
    /// sender's side sent (kind 4): the initiator's request with its
    /// ML-KEM encapsulation key, or the responder's response with its
    /// ciphertext once one was relayed; nothing if there is none.
    Real,
}

/// The data of a fuzzed KE payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSpec {
    /// The real value (kind 0): that of the newest real IKE_INTERMEDIATE
    /// message of the sender's side, empty if there is none.
    Real,
    /// A fresh valid value of the KE payload's group (kind 1), which the
    /// real peer never saw: a new public value or encapsulation key; to
    /// the initiator, the ciphertext of an encapsulation to its real key.
    Fresh,
    /// The real value cut to this many bytes (kind 2).
    Cut(u16),
    /// The real value with byte `at` (modulo its length) XORed (kind 3).
    Flip {
        /// The byte.
        at: u16,
        /// What to XOR it with.
        xor: u8,
    },
    /// Any bytes (kind 4).
    Raw(Vec<u8>),
}

impl<'a> Arbitrary<'a> for IntermediateInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let config = u.arbitrary()?;
        let mut steps = Vec::new();
        while !u.is_empty() {
            steps.push(IntStep::arbitrary(u)?);
        }
        Ok(Self { config, steps })
    }
}

impl<'a> Arbitrary<'a> for IntStep {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.arbitrary::<u8>()? % 7 {
            kind @ (0 | 1) => {
                let to_initiator = kind == 1;
                let flags = u.arbitrary()?;
                let message_id = u.arbitrary()?;
                let exchange = u.arbitrary()?;
                let fragment_len = u.arbitrary()?;
                let count = u.arbitrary::<u8>()? % 9;
                let mut payloads = Vec::new();
                for _ in 0..count {
                    payloads.push(PayloadSpec::arbitrary(u)?);
                }
                Self::Sealed(Sealed {
                    to_initiator,
                    flags,
                    message_id,
                    exchange,
                    fragment_len,
                    payloads,
                })
            }
            2 => Self::Fragment {
                flags: u.arbitrary()?,
                message_id: u.arbitrary()?,
                number: u.arbitrary()?,
                total: u.arbitrary()?,
                first_payload: u.arbitrary()?,
                piece: take_bytes(u)?,
            },
            3 => Self::Raw {
                flags: u.arbitrary()?,
                bytes: take_bytes(u)?,
            },
            4 => Self::Relay,
            5 => Self::Wait(u.arbitrary()?),
            _ => Self::Replay {
                flags: u.arbitrary()?,
                index: u.arbitrary()?,
                at: u.arbitrary()?,
                xor: u.arbitrary()?,
            },
        })
    }
}

impl<'a> Arbitrary<'a> for PayloadSpec {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.arbitrary::<u8>()? % 5 {
            0 => Self::Ke {
                group: u.arbitrary()?,
                data: DataSpec::arbitrary(u)?,
            },
            1 => Self::Notify {
                notify_type: u.arbitrary()?,
                data: take_bytes(u)?,
            },
            2 => Self::Nonce(take_bytes(u)?),
            3 => Self::VendorId(take_bytes(u)?),
            _ => Self::Real,
        })
    }
}

impl<'a> Arbitrary<'a> for DataSpec {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.arbitrary::<u8>()? % 5 {
            0 => Self::Real,
            1 => Self::Fresh,
            2 => Self::Cut(u.arbitrary()?),
            3 => Self::Flip {
                at: u.arbitrary()?,
                xor: u.arbitrary()?,
            },
            _ => Self::Raw(take_bytes(u)?),
        })
    }
}

impl IntermediateInput {
    /// The bytes that decode to this input.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.config];
        for step in &self.steps {
            step.encode(&mut out);
        }
        out
    }
}

impl IntStep {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Sealed(s) => {
                let count = u8::try_from(s.payloads.len())
                    .ok()
                    .filter(|n| *n < 9)
                    .expect("at most 8 payloads");
                out.extend_from_slice(&[
                    u8::from(s.to_initiator),
                    s.flags,
                    s.message_id,
                    s.exchange,
                    s.fragment_len,
                    count,
                ]);
                for p in &s.payloads {
                    p.encode(out);
                }
            }
            Self::Fragment {
                flags,
                message_id,
                number,
                total,
                first_payload,
                piece,
            } => {
                out.extend_from_slice(&[2, *flags, *message_id]);
                put_u16(out, *number);
                put_u16(out, *total);
                out.push(*first_payload);
                put_bytes(out, piece);
            }
            Self::Raw { flags, bytes } => {
                out.extend_from_slice(&[3, *flags]);
                put_bytes(out, bytes);
            }
            Self::Relay => out.push(4),
            Self::Wait(seconds) => out.extend_from_slice(&[5, *seconds]),
            Self::Replay {
                flags,
                index,
                at,
                xor,
            } => {
                out.extend_from_slice(&[6, *flags, *index]);
                put_u16(out, *at);
                out.push(*xor);
            }
        }
    }
}

impl PayloadSpec {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Ke { group, data } => {
                out.extend_from_slice(&[0, *group]);
                data.encode(out);
            }
            Self::Notify { notify_type, data } => {
                out.push(1);
                put_u16(out, *notify_type);
                put_bytes(out, data);
            }
            Self::Nonce(bytes) => {
                out.push(2);
                put_bytes(out, bytes);
            }
            Self::VendorId(bytes) => {
                out.push(3);
                put_bytes(out, bytes);
            }
            Self::Real => out.push(4),
        }
    }
}

impl DataSpec {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Real => out.push(0),
            Self::Fresh => out.push(1),
            Self::Cut(len) => {
                out.push(2);
                put_u16(out, *len);
            }
            Self::Flip { at, xor } => {
                out.push(3);
                put_u16(out, *at);
                out.push(*xor);
            }
            Self::Raw(bytes) => {
                out.push(4);
                put_bytes(out, bytes);
            }
        }
    }
}

/// The message ID a step's byte stands for: itself, and 0xFF for
/// `u32::MAX`.
pub fn message_id(byte: u8) -> u32 {
    if byte == 0xff {
        u32::MAX
    } else {
        u32::from(byte)
    }
}
