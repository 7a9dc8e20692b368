//! Key exchange (the KE payload, RFC 7296 section 1.2 and 3.4), behind a
//! small trait: X25519 (group 31, RFC 8031), NIST P-256 and P-384 (groups
//! 19 and 20, RFC 5903) with aws-lc-rs, the 2048-bit MODP group (14,
//! RFC 3526) with crypto-bigint's constant-time Montgomery arithmetic, and
//! ML-KEM-512/768/1024 (35-37, `mlkem.rs`).
//!
//! The initiator of an exchange [`start`]s it and sends the public value;
//! the responder answers with [`respond`], which returns its own value and
//! the shared secret; the initiator [`KeyExchange::complete`]s with the
//! responder's value. For Diffie-Hellman both values are public keys; for
//! a KEM the initiator's is an encapsulation key and the responder's a
//! ciphertext.

use core::fmt;
use std::sync::LazyLock;

use aws_lc_rs::{agreement, rand};
use crypto_bigint::modular::{FixedMontyForm, FixedMontyParams};
use crypto_bigint::{Odd, U256, U2048};
use zeroize::Zeroizing;

use super::Key;
use super::method::{Answer, KeyExchange};
use super::mlkem::{ML_KEM_512_PARAMS, ML_KEM_768_PARAMS, ML_KEM_1024_PARAMS};
use crate::error::{Error, Result};
use crate::message::DhGroup;

/// A group this crate can do key exchange in, as a table entry.
#[derive(Clone, Copy)]
pub struct KxGroup {
    /// The group.
    pub group: DhGroup,
    /// The length of the initiator's value in the KE payload.
    pub public_len: usize,
    /// The length of the responder's value (a KEM's ciphertext is not as
    /// long as its encapsulation key).
    pub response_len: usize,
    /// The initiator's side: draws a fresh private key.
    pub start: fn() -> Result<Box<dyn KeyExchange>>,
    /// The responder's side: its value and the shared secret, from the
    /// initiator's value.
    pub respond: fn(&[u8]) -> Result<Answer>,
}

impl fmt::Debug for KxGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KxGroup")
            .field("group", &self.group)
            .field("public_len", &self.public_len)
            .field("response_len", &self.response_len)
            .finish_non_exhaustive()
    }
}

/// The supported groups, in order of preference (RFC 8247:
/// X25519 and ECP first, MODP-2048 for interoperability), then ML-KEM,
/// which RFC 9370 pairs with one of them as an additional key exchange.
pub static GROUPS: [KxGroup; 7] = [
    KxGroup {
        group: DhGroup::Curve25519,
        public_len: 32,
        response_len: 32,
        start: || Ok(Box::new(Ecdh::generate(DhGroup::Curve25519)?)),
        respond: |peer| dh_respond(Box::new(Ecdh::generate(DhGroup::Curve25519)?), peer),
    },
    KxGroup {
        group: DhGroup::Ecp256,
        public_len: 64,
        response_len: 64,
        start: || Ok(Box::new(Ecdh::generate(DhGroup::Ecp256)?)),
        respond: |peer| dh_respond(Box::new(Ecdh::generate(DhGroup::Ecp256)?), peer),
    },
    KxGroup {
        group: DhGroup::Ecp384,
        public_len: 96,
        response_len: 96,
        start: || Ok(Box::new(Ecdh::generate(DhGroup::Ecp384)?)),
        respond: |peer| dh_respond(Box::new(Ecdh::generate(DhGroup::Ecp384)?), peer),
    },
    KxGroup {
        group: DhGroup::Modp2048,
        public_len: MODP_LEN,
        response_len: MODP_LEN,
        start: || Ok(Box::new(Modp2048::generate()?)),
        respond: |peer| dh_respond(Box::new(Modp2048::generate()?), peer),
    },
    KxGroup {
        group: DhGroup::MlKem512,
        public_len: ML_KEM_512_PARAMS.encapsulation_key_len,
        response_len: ML_KEM_512_PARAMS.ciphertext_len,
        start: || ML_KEM_512_PARAMS.generate(),
        respond: |peer| ML_KEM_512_PARAMS.encapsulate(peer),
    },
    KxGroup {
        group: DhGroup::MlKem768,
        public_len: ML_KEM_768_PARAMS.encapsulation_key_len,
        response_len: ML_KEM_768_PARAMS.ciphertext_len,
        start: || ML_KEM_768_PARAMS.generate(),
        respond: |peer| ML_KEM_768_PARAMS.encapsulate(peer),
    },
    KxGroup {
        group: DhGroup::MlKem1024,
        public_len: ML_KEM_1024_PARAMS.encapsulation_key_len,
        response_len: ML_KEM_1024_PARAMS.ciphertext_len,
        start: || ML_KEM_1024_PARAMS.generate(),
        respond: |peer| ML_KEM_1024_PARAMS.encapsulate(peer),
    },
];

/// The table entry of a group, if supported.
pub fn find_group(group: DhGroup) -> Option<&'static KxGroup> {
    GROUPS.iter().find(|g| g.group == group)
}

fn supported(group: DhGroup) -> Result<&'static KxGroup> {
    find_group(group).ok_or(Error::Unsupported {
        what: "key exchange method",
        value: u64::from(group.value()),
    })
}

/// Starts a key exchange in a group, as its initiator.
pub fn start(group: DhGroup) -> Result<Box<dyn KeyExchange>> {
    (supported(group)?.start)()
}

/// Answers the initiator's value `peer` in a group: the value to send
/// back and the shared secret (for Diffie-Hellman a fresh public value,
/// for a KEM the ciphertext).
///
/// Fails with [`Error::InvalidPublicValue`] if `peer` has the wrong length
/// or form.
pub fn respond(group: DhGroup, peer: &[u8]) -> Result<Answer> {
    (supported(group)?.respond)(peer)
}

/// Diffie-Hellman's responder: the same as its initiator.
fn dh_respond(own: Box<dyn KeyExchange>, peer: &[u8]) -> Result<Answer> {
    let public = own.public_value().to_vec();
    Ok((public, own.complete(peer)?))
}

/// X25519 or ECDH on a NIST curve, with aws-lc-rs.
struct Ecdh {
    group: DhGroup,
    private: agreement::PrivateKey,
    public: Vec<u8>,
}

impl Ecdh {
    fn algorithm(group: DhGroup) -> Result<&'static agreement::Algorithm> {
        match group {
            DhGroup::Curve25519 => Ok(&agreement::X25519),
            DhGroup::Ecp256 => Ok(&agreement::ECDH_P256),
            DhGroup::Ecp384 => Ok(&agreement::ECDH_P384),
            other => Err(Error::Unsupported {
                what: "Diffie-Hellman group",
                value: u64::from(other.value()),
            }),
        }
    }

    fn generate(group: DhGroup) -> Result<Self> {
        let private = agreement::PrivateKey::generate(Self::algorithm(group)?)
            .map_err(|_| Error::Crypto("key generation failed"))?;
        Self::with_private(group, private)
    }

    /// A known private key, for known-answer tests: a little-endian
    /// scalar for X25519, a big-endian one for the NIST curves.
    #[cfg(test)]
    fn from_private(group: DhGroup, bytes: &[u8]) -> Result<Self> {
        let private = agreement::PrivateKey::from_private_key(Self::algorithm(group)?, bytes)
            .map_err(|_| Error::Crypto("bad private key"))?;
        Self::with_private(group, private)
    }

    fn with_private(group: DhGroup, private: agreement::PrivateKey) -> Result<Self> {
        let public = private
            .compute_public_key()
            .map_err(|_| Error::Crypto("public key"))?;
        let public = match group {
            DhGroup::Curve25519 => public.as_ref().to_vec(),
            // RFC 5903 section 7: the KE payload holds x | y, each as long
            // as the field; the SEC 1 uncompressed form is 0x04 | x | y.
            _ => public.as_ref().get(1..).unwrap_or_default().to_vec(),
        };
        Ok(Self {
            group,
            private,
            public,
        })
    }
}

impl KeyExchange for Ecdh {
    fn group(&self) -> DhGroup {
        self.group
    }

    fn public_value(&self) -> &[u8] {
        &self.public
    }

    fn complete(self: Box<Self>, peer: &[u8]) -> Result<Key> {
        let invalid = |reason| Error::InvalidPublicValue {
            group: self.group.value(),
            reason,
        };
        if peer.len() != self.public.len() {
            return Err(invalid("wrong length"));
        }
        let alg = Self::algorithm(self.group)?;
        let peer = match self.group {
            DhGroup::Curve25519 => peer.to_vec(),
            _ => [&[0x04], peer].concat(),
        };
        // aws-lc checks that an ECP point is on the curve, and refuses the
        // all-zero X25519 output of a low-order point (RFC 7748 section
        // 6.1, RFC 8031).
        agreement::agree(
            &self.private,
            agreement::UnparsedPublicKey::new(alg, &peer),
            invalid("not a valid point"),
            |secret| Ok(Key::from_slice(secret)),
        )
    }
}

/// The length of a MODP-2048 value: the modulus, 256 bytes.
const MODP_LEN: usize = 256;

/// The private exponent's length in bits: twice the group's strength,
/// which RFC 3526 estimates at 110 to 160 bits for this group.
const MODP_EXPONENT_BITS: u32 = 256;

/// The prime of the 2048-bit MODP group (RFC 3526 section 3):
/// 2^2048 - 2^1984 - 1 + 2^64 * ( [2^1918 pi] + 124476 ).
const MODP2048_PRIME: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74",
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437",
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05",
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB",
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718",
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
);

static MODP2048: LazyLock<FixedMontyParams<{ U2048::LIMBS }>> =
    LazyLock::new(|| FixedMontyParams::new_vartime(Odd::<U2048>::from_be_hex(MODP2048_PRIME)));

/// Diffie-Hellman in the 2048-bit MODP group, generator 2.
struct Modp2048 {
    private: Zeroizing<U256>,
    public: Vec<u8>,
}

impl Modp2048 {
    fn generate() -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::fill(&mut *bytes).map_err(|_| Error::Crypto("no randomness"))?;
        Ok(Self::from_private(&bytes))
    }

    /// A private exponent from 32 big-endian bytes.
    fn from_private(bytes: &[u8; 32]) -> Self {
        let private = Zeroizing::new(U256::from_be_slice(bytes));
        let g = FixedMontyForm::new(&U2048::from_u8(2), &MODP2048);
        let public = Zeroizing::new(g.pow_bounded_exp(&*private, MODP_EXPONENT_BITS).retrieve());
        // The public value is as long as the modulus, zeros in front
        // (RFC 7296 section 3.4).
        let public = public.to_be_bytes().as_ref().to_vec();
        Self { private, public }
    }
}

impl KeyExchange for Modp2048 {
    fn group(&self) -> DhGroup {
        DhGroup::Modp2048
    }

    fn public_value(&self) -> &[u8] {
        &self.public
    }

    fn complete(self: Box<Self>, peer: &[u8]) -> Result<Key> {
        let invalid = |reason| Error::InvalidPublicValue {
            group: DhGroup::Modp2048.value(),
            reason,
        };
        // RFC 7296 section 3.4: a MODP public value is exactly as long as
        // the prime.
        if peer.len() != MODP_LEN {
            return Err(invalid("wrong length"));
        }
        let y = U2048::from_be_slice(peer);
        // The peer's value must be in [2, p-2]: 0, 1 and p-1 (and anything
        // not below p) would force the shared secret into a set of at most
        // two values. RFC 6989 asks IKEv2 peers to check this.
        let p_minus_2 = MODP2048.modulus().get().wrapping_sub(&U2048::from_u8(2));
        if y < U2048::from_u8(2) || y > p_minus_2 {
            return Err(invalid("outside [2, p-2]"));
        }
        let y = FixedMontyForm::new(&y, &MODP2048);
        let shared = Zeroizing::new(y.pow_bounded_exp(&*self.private, MODP_EXPONENT_BITS));
        let shared = Zeroizing::new(shared.retrieve());
        let bytes = Zeroizing::new(shared.to_be_bytes());
        Ok(Key::from_slice(bytes.as_ref()))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    use crate::testdata::unhex as h;

    /// Checks an ECDH known answer: each side's public value from its
    /// private value, and the shared secret both compute.
    fn ecdh_kat(group: DhGroup, i: (&str, &str), r: (&str, &str), shared: &str) {
        let (gi, gr, gir) = (h(i.1), h(r.1), h(shared));
        let i = Ecdh::from_private(group, &h(i.0)).unwrap();
        let r = Ecdh::from_private(group, &h(r.0)).unwrap();
        assert_eq!(i.public_value(), &gi[..]);
        assert_eq!(r.public_value(), &gr[..]);
        assert_eq!(Box::new(i).complete(&gr).unwrap().expose(), &gir[..]);
        assert_eq!(Box::new(r).complete(&gi).unwrap().expose(), &gir[..]);
    }

    /// RFC 7748 section 6.1.
    #[test]
    fn x25519_rfc7748() {
        ecdh_kat(
            DhGroup::Curve25519,
            (
                "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
                "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
            ),
            (
                "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
                "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
            ),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
        );
    }

    /// RFC 5903 section 8.1, with the KE payload encoding x | y.
    #[test]
    fn ecp256_rfc5903() {
        ecdh_kat(
            DhGroup::Ecp256,
            (
                "C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433",
                "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180
                 5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3",
            ),
            (
                "C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53",
                "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63
                 56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB",
            ),
            "D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE",
        );
    }

    fn modp_kat() -> std::collections::HashMap<String, Vec<u8>> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/modp2048.txt");
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.split_once(' ').unwrap();
                (k.to_owned(), h(v))
            })
            .collect()
    }

    /// Against Python's bignum arithmetic (testdata/modp2048.txt).
    #[test]
    fn modp2048_known_answer() {
        let kat = modp_kat();
        let a = Modp2048::from_private(kat["a"][..].try_into().unwrap());
        let b = Modp2048::from_private(kat["b"][..].try_into().unwrap());
        assert_eq!(a.public_value(), &kat["A"][..]);
        assert_eq!(b.public_value(), &kat["B"][..]);
        assert_eq!(
            Box::new(a).complete(&kat["B"]).unwrap().expose(),
            &kat["S"][..]
        );
        assert_eq!(
            Box::new(b).complete(&kat["A"]).unwrap().expose(),
            &kat["S"][..]
        );
    }

    #[test]
    fn modp2048_rejects_degenerate_values() {
        let p = U2048::from_be_hex(MODP2048_PRIME);
        let value = |v: U2048| v.to_be_bytes().as_ref().to_vec();
        let a = || Box::new(Modp2048::from_private(&[7; 32]));
        for bad in [
            U2048::ZERO,
            U2048::ONE,
            p.wrapping_sub(&U2048::ONE),
            p,
            U2048::MAX,
        ] {
            assert!(
                matches!(
                    a().complete(&value(bad)),
                    Err(Error::InvalidPublicValue { group: 14, .. })
                ),
                "{bad:?}"
            );
        }
        // 2 and p-2 are the ends of the valid range.
        assert!(a().complete(&value(U2048::from_u8(2))).is_ok());
        assert!(
            a().complete(&value(p.wrapping_sub(&U2048::from_u8(2))))
                .is_ok()
        );
        assert!(a().complete(&[1; 255]).is_err());
    }

    /// Every group: an initiator and a responder agree, and wrong-length
    /// values are refused on both sides.
    #[test]
    fn every_group_agrees_and_checks_lengths() {
        for entry in &GROUPS {
            let a = start(entry.group).unwrap();
            assert_eq!(a.group(), entry.group);
            assert_eq!(a.public_value().len(), entry.public_len);
            let pa = a.public_value().to_vec();
            let (pb, kb) = (entry.respond)(&pa).unwrap();
            assert_eq!(pb.len(), entry.response_len);
            assert_ne!(pa, pb);
            let ka = a.complete(&pb).unwrap();
            assert_eq!(ka, kb, "{:?}", entry.group);
            assert_eq!(format!("{ka:?}"), "<redacted>");
            let c = start(entry.group).unwrap();
            assert!(matches!(
                c.complete(&pb[1..]),
                Err(Error::InvalidPublicValue { .. })
            ));
            assert!(matches!(
                respond(entry.group, &pa[1..]),
                Err(Error::InvalidPublicValue { .. })
            ));
        }
        // A point that is not on the curve, and the X25519 point of order
        // one (all zero).
        let c = start(DhGroup::Ecp256).unwrap();
        assert!(c.complete(&[1; 64]).is_err());
        let c = start(DhGroup::Curve25519).unwrap();
        assert!(c.complete(&[0; 32]).is_err());
        assert!(matches!(
            start(DhGroup::Unknown(21)).err(),
            Some(Error::Unsupported { value: 21, .. })
        ));
    }
}
