//! The pseudorandom functions and prf+ (RFC 7296 section 2.13).

use aws_lc_rs::hmac;

use super::Key;
use crate::error::{Error, Result};
use crate::message::{PrfId, Transform, TransformId};

/// A negotiated pseudorandom function: HMAC with a SHA-2 hash (RFC 4868).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prf {
    /// PRF_HMAC_SHA2_256.
    HmacSha2_256,
    /// PRF_HMAC_SHA2_384.
    HmacSha2_384,
    /// PRF_HMAC_SHA2_512.
    HmacSha2_512,
}

/// prf+ produces at most 255 blocks: its counter is one octet.
const MAX_PRF_PLUS_BLOCKS: usize = 255;

impl Prf {
    /// Every supported prf.
    pub const ALL: [Self; 3] = [Self::HmacSha2_256, Self::HmacSha2_384, Self::HmacSha2_512];

    /// The prf a transform names, if supported.
    pub fn from_transform(transform: &Transform) -> Option<Self> {
        match transform.id {
            TransformId::Prf(id) if transform.attributes.is_empty() => Self::from_id(id),
            _ => None,
        }
    }

    /// The prf of a transform ID, if supported.
    pub fn from_id(id: PrfId) -> Option<Self> {
        match id {
            PrfId::HmacSha2_256 => Some(Self::HmacSha2_256),
            PrfId::HmacSha2_384 => Some(Self::HmacSha2_384),
            PrfId::HmacSha2_512 => Some(Self::HmacSha2_512),
            _ => None,
        }
    }

    /// The transform ID.
    pub fn id(self) -> PrfId {
        match self {
            Self::HmacSha2_256 => PrfId::HmacSha2_256,
            Self::HmacSha2_384 => PrfId::HmacSha2_384,
            Self::HmacSha2_512 => PrfId::HmacSha2_512,
        }
    }

    /// The output length in bytes, which is also the length of SK_d,
    /// SK_pi and SK_pr: RFC 7296 section 2.14 takes those at the prf's
    /// preferred key size, and RFC 4868 makes the key of
    /// each HMAC-SHA2 prf as long as its output.
    pub fn output_len(self) -> usize {
        match self {
            Self::HmacSha2_256 => 32,
            Self::HmacSha2_384 => 48,
            Self::HmacSha2_512 => 64,
        }
    }

    fn algorithm(self) -> hmac::Algorithm {
        match self {
            Self::HmacSha2_256 => hmac::HMAC_SHA256,
            Self::HmacSha2_384 => hmac::HMAC_SHA384,
            Self::HmacSha2_512 => hmac::HMAC_SHA512,
        }
    }

    /// prf(key, data), where `data` is the concatenation of `parts`.
    /// HMAC takes keys of any length.
    pub fn prf(self, key: &[u8], parts: &[&[u8]]) -> Key {
        let key = hmac::Key::new(self.algorithm(), key);
        let mut ctx = hmac::Context::with_key(&key);
        for part in parts {
            ctx.update(part);
        }
        Key::from_slice(ctx.sign().as_ref())
    }

    /// prf+(key, seed): `len` bytes of keying material.
    ///
    /// RFC 7296 section 2.13:
    ///
    /// ```text
    /// prf+ (K,S) = T1 | T2 | T3 | T4 | ...
    ///
    /// where:
    /// T1 = prf (K, S | 0x01)
    /// T2 = prf (K, T1 | S | 0x02)
    /// T3 = prf (K, T2 | S | 0x03)
    /// T4 = prf (K, T3 | S | 0x04)
    /// ...
    /// ```
    ///
    /// The counter is one octet, so prf+ yields at most 255 blocks; asking
    /// for more is an error.
    pub fn prf_plus(self, key: &[u8], seed: &[&[u8]], len: usize) -> Result<Key> {
        let block = self.output_len();
        if len > MAX_PRF_PLUS_BLOCKS * block {
            return Err(Error::KeyLength {
                what: "prf+ output",
                expected: MAX_PRF_PLUS_BLOCKS * block,
                actual: len,
            });
        }
        let hmac_key = hmac::Key::new(self.algorithm(), key);
        // Reserved up front, so the buffer never moves and leaves no copy
        // behind; `Key` wipes its whole capacity on drop.
        let mut out = Vec::with_capacity(len + block);
        let mut previous: Option<hmac::Tag> = None;
        let mut counter = 1u8;
        while out.len() < len {
            let mut ctx = hmac::Context::with_key(&hmac_key);
            if let Some(t) = &previous {
                ctx.update(t.as_ref());
            }
            for part in seed {
                ctx.update(part);
            }
            ctx.update(&[counter]);
            let t = ctx.sign();
            out.extend_from_slice(t.as_ref());
            previous = Some(t);
            counter = counter.wrapping_add(1);
        }
        out.truncate(len);
        Ok(Key::new(out))
    }
}

#[cfg(test)]
mod test {
    use super::*;

    use crate::testdata::unhex as h;

    /// RFC 4231 test cases 1, 2, 4 and 6 (the 131-byte key, longer than a
    /// block), for all three prfs.
    #[test]
    fn hmac_rfc4231() {
        let case1 = (vec![0x0b; 20], b"Hi There".to_vec());
        let case2 = (b"Jefe".to_vec(), b"what do ya want for nothing?".to_vec());
        let case4 = ((1..=25).collect::<Vec<u8>>(), vec![0xcd; 50]);
        let case6 = (
            vec![0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
        );
        let expected: [(Prf, [&str; 4]); 3] = [
            (
                Prf::HmacSha2_256,
                [
                    "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
                    "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
                    "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
                    "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
                ],
            ),
            (
                Prf::HmacSha2_384,
                [
                    "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c
                     faea9ea9076ede7f4af152e8b2fa9cb6",
                    "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e
                     8e2240ca5e69e2c78b3239ecfab21649",
                    "3e8a69b7783c25851933ab6290af6ca77a9981480850009cc5577c6e1f573b4e
                     6801dd23c4a7d679ccf8a386c674cffb",
                    "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c6
                     0c2ef6ab4030fe8296248df163f44952",
                ],
            ),
            (
                Prf::HmacSha2_512,
                [
                    "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde
                     daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
                    "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554
                     9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
                    "b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3db
                     a91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2de2adebeb10a298dd",
                    "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352
                     6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
                ],
            ),
        ];
        for (prf, outputs) in expected {
            for ((key, data), output) in [&case1, &case2, &case4, &case6].into_iter().zip(outputs) {
                assert_eq!(
                    hex::encode(prf.prf(key, &[data]).expose()),
                    hex::encode(h(output)),
                    "{prf:?}"
                );
            }
            // Split data gives the same answer.
            let (key, data) = &case2;
            assert_eq!(
                prf.prf(key, &[&data[..5], &data[5..]]),
                prf.prf(key, &[data])
            );
        }
    }

    /// prf+ against its definition, spelled out with prf.
    #[test]
    fn prf_plus_is_the_chain_of_section_2_13() {
        for prf in Prf::ALL {
            let key = b"key";
            let seed: [&[u8]; 2] = [b"Ni|Nr", b"|SPIi|SPIr"];
            let s = [seed[0], seed[1]].concat();
            let t1 = prf.prf(key, &[&s, &[1]]);
            let t2 = prf.prf(key, &[t1.expose(), &s, &[2]]);
            let t3 = prf.prf(key, &[t2.expose(), &s, &[3]]);
            let expected = [t1.expose(), t2.expose(), t3.expose()].concat();
            let len = prf.output_len() * 2 + 7;
            let out = prf.prf_plus(key, &seed, len).unwrap();
            assert_eq!(out.expose(), &expected[..len]);
            assert_eq!(prf.prf_plus(key, &seed, 0).unwrap().len(), 0);
            // 255 blocks is the limit.
            let max = 255 * prf.output_len();
            assert_eq!(prf.prf_plus(key, &seed, max).unwrap().len(), max);
            assert!(prf.prf_plus(key, &seed, max + 1).is_err());
        }
    }
}
