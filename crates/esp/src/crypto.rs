//! The crypto provider: the only place that touches a crypto library.
//!
//! As in rustls, the ESP code sees a small trait, [`EspCipher`], and a
//! provider that builds one for a suite and its keys. The default (and, so
//! far, only) provider is aws-lc-rs: it was the fastest AES-GCM on the
//! machines we measured (see ARCHITECTURE.md), and it is the one
//! assembly-backed library that has every suite, AES-CBC included.
//!
//! A cipher works on a whole ESP packet in place:
//!
//! ```text
//! | SPI | seq | IV | plaintext or ciphertext (trailer included) | ICV |
//! ```

use aws_lc_rs::{aead, cipher, constant_time, hmac, rand};

use crate::Error;
use crate::keys::SaKeys;
use crate::suite::{SALT_LEN, Suite};

/// The ESP header length (SPI and sequence number).
const HEADER_LEN: usize = tunsec_wire::esp::HEADER_LEN;

/// The cryptographic failure of one packet: the ICV did not verify, or the
/// library refused the operation. Deliberately carries nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoError;

/// One SA's cipher and integrity transform, keyed.
pub trait EspCipher: Send + Sync {
    /// The suite this cipher implements.
    fn suite(&self) -> Suite;

    /// Writes the IV, encrypts the payload in place and writes the ICV.
    ///
    /// `packet` is laid out as in the module doc, with the SPI, the
    /// sequence number and the plaintext (padding and trailer included) in
    /// place and room for the IV and the ICV. `seq` is the full 64-bit
    /// sequence number; `esn` says whether its high half is authenticated.
    fn seal(&self, packet: &mut [u8], seq: u64, esn: bool) -> Result<(), CryptoError>;

    /// Verifies the ICV and decrypts the payload in place. On failure the
    /// payload bytes are unspecified.
    fn open(&self, packet: &mut [u8], seq: u64, esn: bool) -> Result<(), CryptoError>;
}

/// A function that makes a keyed cipher for a suite.
pub type NewCipher = fn(Suite, &SaKeys) -> Result<Box<dyn EspCipher>, Error>;

/// Builds ciphers for SAs.
#[derive(Debug, Clone, Copy)]
pub struct CryptoProvider {
    /// The provider's name, for logs.
    pub name: &'static str,
    /// Makes a keyed cipher. The key lengths were checked against the suite.
    pub new_cipher: NewCipher,
}

/// The aws-lc-rs provider.
pub static AWS_LC_RS: CryptoProvider = CryptoProvider {
    name: "aws-lc-rs",
    new_cipher: new_aws_lc_cipher,
};

impl Default for CryptoProvider {
    fn default() -> Self {
        AWS_LC_RS
    }
}

fn new_aws_lc_cipher(suite: Suite, keys: &SaKeys) -> Result<Box<dyn EspCipher>, Error> {
    keys.check(suite)?;
    Ok(if suite.is_aead() {
        let mut iv_mask = [0u8; 8];
        rand::fill(&mut iv_mask).map_err(|_| Error::Crypto)?;
        Box::new(AeadCipher::new(
            suite,
            keys.encryption.expose(),
            u64::from_be_bytes(iv_mask),
        )?)
    } else {
        Box::new(CbcHmacCipher::new(
            keys.encryption.expose(),
            keys.integrity.expose(),
        )?)
    })
}

/// The AAD of an AEAD suite: SPI and sequence number, with the high half
/// of an extended sequence number between them.
/// (RFC 4106 section 5, RFC 7634 section 2.1):
///
/// ```text
/// 32-bit sequence numbers:    | SPI | seq             |
/// extended sequence numbers:  | SPI | seq high | seq low |
/// ```
fn aead_aad(packet: &[u8], seq: u64, esn: bool) -> ([u8; 12], usize) {
    let mut aad = [0u8; 12];
    aad[..4].copy_from_slice(&packet[..4]);
    if esn {
        aad[4..8].copy_from_slice(&((seq >> 32) as u32).to_be_bytes());
        aad[8..12].copy_from_slice(&packet[4..8]);
        (aad, 12)
    } else {
        aad[4..8].copy_from_slice(&packet[4..8]);
        (aad, 8)
    }
}

/// AES-GCM (RFC 4106) and ChaCha20-Poly1305 (RFC 7634).
struct AeadCipher {
    suite: Suite,
    key: aead::LessSafeKey,
    salt: [u8; SALT_LEN],
    /// XORed into the sequence number to make the IV. The IV stays unique
    /// per key (XOR with a constant is a bijection), and two SAs that a
    /// restart created with the same manual key and a sequence number that
    /// starts again at 1 still use different IVs.
    iv_mask: u64,
}

impl AeadCipher {
    /// `key_and_salt` is the key followed by the 4-byte salt.
    fn new(suite: Suite, key_and_salt: &[u8], iv_mask: u64) -> Result<Self, Error> {
        let algorithm = match suite {
            Suite::AesGcm128 => &aead::AES_128_GCM,
            Suite::AesGcm256 => &aead::AES_256_GCM,
            Suite::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
            Suite::AesCbc256HmacSha256 => return Err(Error::Crypto),
        };
        let split = key_and_salt
            .len()
            .checked_sub(SALT_LEN)
            .ok_or(Error::Crypto)?;
        let (key, salt) = key_and_salt.split_at(split);
        let unbound = aead::UnboundKey::new(algorithm, key).map_err(|_| Error::Crypto)?;
        Ok(Self {
            suite,
            key: aead::LessSafeKey::new(unbound),
            salt: salt.try_into().map_err(|_| Error::Crypto)?,
            iv_mask,
        })
    }

    fn nonce(&self, iv: &[u8]) -> Result<aead::Nonce, CryptoError> {
        if iv.len() != Self::IV_LEN {
            return Err(CryptoError);
        }
        // RFC 4106 section 4: the nonce is the 4-byte salt followed by the
        // 8-byte IV.
        let mut nonce = [0u8; aead::NONCE_LEN];
        nonce[..SALT_LEN].copy_from_slice(&self.salt);
        nonce[SALT_LEN..].copy_from_slice(iv);
        Ok(aead::Nonce::assume_unique_for_key(nonce))
    }
}

impl EspCipher for AeadCipher {
    fn suite(&self) -> Suite {
        self.suite
    }

    fn seal(&self, packet: &mut [u8], seq: u64, esn: bool) -> Result<(), CryptoError> {
        let (iv_end, icv_start) = Self::layout(packet)?;
        //= https://www.rfc-editor.org/rfc/rfc4106#section-3.1
        //# The IV MUST be chosen by the encryptor in a manner that ensures that
        //# the same IV value is used only once for a given key.
        let iv = (seq ^ self.iv_mask).to_be_bytes();
        packet[HEADER_LEN..iv_end].copy_from_slice(&iv);
        let (aad, aad_len) = aead_aad(packet, seq, esn);
        let (body, icv) = packet.split_at_mut(icv_start);
        self.seal_parts(&iv, &aad[..aad_len], &mut body[iv_end..], icv)
    }

    fn open(&self, packet: &mut [u8], seq: u64, esn: bool) -> Result<(), CryptoError> {
        let (iv_end, icv_start) = Self::layout(packet)?;
        let (aad, aad_len) = aead_aad(packet, seq, esn);
        let (body, icv) = packet.split_at_mut(icv_start);
        let (head, ciphertext) = body.split_at_mut(iv_end);
        self.open_parts(&head[HEADER_LEN..], &aad[..aad_len], ciphertext, icv)
    }
}

impl AeadCipher {
    const IV_LEN: usize = 8;
    const ICV_LEN: usize = 16;

    /// Where the IV ends and the ICV starts.
    fn layout(packet: &[u8]) -> Result<(usize, usize), CryptoError> {
        let iv_end = HEADER_LEN + Self::IV_LEN;
        let icv_start = packet.len().checked_sub(Self::ICV_LEN).ok_or(CryptoError)?;
        if icv_start < iv_end {
            return Err(CryptoError);
        }
        Ok((iv_end, icv_start))
    }

    /// The AEAD itself, with the IV and the AAD given: the suite layer that
    /// the known-answer tests drive.
    fn seal_parts(
        &self,
        iv: &[u8],
        aad: &[u8],
        in_out: &mut [u8],
        icv: &mut [u8],
    ) -> Result<(), CryptoError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(self.nonce(iv)?, aead::Aad::from(aad), in_out)
            .map_err(|_| CryptoError)?;
        icv.copy_from_slice(tag.as_ref());
        Ok(())
    }

    fn open_parts(
        &self,
        iv: &[u8],
        aad: &[u8],
        in_out: &mut [u8],
        icv: &[u8],
    ) -> Result<(), CryptoError> {
        self.key
            .open_in_place_separate_tag(self.nonce(iv)?, aead::Aad::from(aad), icv, in_out)
            .map_err(|_| CryptoError)?;
        Ok(())
    }
}

/// AES-256-CBC (RFC 3602) with HMAC-SHA-256-128 (RFC 4868), encrypt then
/// MAC.
struct CbcHmacCipher {
    encrypt: cipher::EncryptingKey,
    decrypt: cipher::DecryptingKey,
    mac: hmac::Key,
    /// Random per SA; XORed with the sequence number it is a nonce unique
    /// per packet, whose encryption is the IV (NIST SP 800-38A appendix C).
    iv_nonce: [u8; 16],
}

impl CbcHmacCipher {
    fn new(encryption_key: &[u8], integrity_key: &[u8]) -> Result<Self, Error> {
        let key = || {
            cipher::UnboundCipherKey::new(&cipher::AES_256, encryption_key)
                .map_err(|_| Error::Crypto)
        };
        Ok(Self {
            encrypt: cipher::EncryptingKey::cbc(key()?).map_err(|_| Error::Crypto)?,
            decrypt: cipher::DecryptingKey::cbc(key()?).map_err(|_| Error::Crypto)?,
            mac: hmac::Key::new(hmac::HMAC_SHA256, integrity_key),
            iv_nonce: {
                let mut n = [0u8; 16];
                rand::fill(&mut n).map_err(|_| Error::Crypto)?;
                n
            },
        })
    }

    const IV_LEN: usize = 16;
    const ICV_LEN: usize = 16;

    /// The ICV over the header, IV and ciphertext, with the high half of an
    /// extended sequence number appended but not sent.
    ///
    /// RFC 4303 section 2.2.1 and 3.3.2.2: with ESN the high-order 32 bits
    /// of the sequence number are included in the ICV computation, as if
    /// appended after the payload, but are not sent.
    fn icv(&self, covered: &[u8], seq: u64, esn: bool) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.mac);
        ctx.update(covered);
        if esn {
            ctx.update(&((seq >> 32) as u32).to_be_bytes());
        }
        ctx.sign()
    }
}

impl EspCipher for CbcHmacCipher {
    fn suite(&self) -> Suite {
        Suite::AesCbc256HmacSha256
    }

    fn seal(&self, packet: &mut [u8], seq: u64, esn: bool) -> Result<(), CryptoError> {
        let iv_end = HEADER_LEN + Self::IV_LEN;
        let icv_start = packet.len().checked_sub(Self::ICV_LEN).ok_or(CryptoError)?;
        if icv_start < iv_end || !(icv_start - iv_end).is_multiple_of(16) {
            return Err(CryptoError);
        }
        //= https://www.rfc-editor.org/rfc/rfc3602#section-3
        //# The IV MUST be chosen at random, and MUST be unpredictable.
        // A random draw per packet (RDRAND in aws-lc) costs ~420 ns, a fifth
        // of the whole seal at 1400 bytes. Instead, as NIST SP 800-38A
        // appendix C recommends and Linux's echainiv does, the IV is the
        // block cipher applied under the SA's key to a nonce unique per
        // packet (a random per-SA value XOR the sequence number):
        // unpredictable to anyone without the key, and never repeated.
        // CBC over `nonce | plaintext` with a zero IV yields exactly
        // `E(nonce) | CBC_E(nonce)(plaintext)`: the IV and the ciphertext,
        // in one call and one extra block.
        let mut nonce = self.iv_nonce;
        for (n, s) in nonce[8..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        packet[HEADER_LEN..iv_end].copy_from_slice(&nonce);
        self.encrypt
            .less_safe_encrypt(
                &mut packet[HEADER_LEN..icv_start],
                cipher::EncryptionContext::Iv128([0u8; 16].into()),
            )
            .map_err(|_| CryptoError)?;
        let tag = self.icv(&packet[..icv_start], seq, esn);
        packet[icv_start..].copy_from_slice(&tag.as_ref()[..Self::ICV_LEN]);
        Ok(())
    }

    fn open(&self, packet: &mut [u8], seq: u64, esn: bool) -> Result<(), CryptoError> {
        let iv_end = HEADER_LEN + Self::IV_LEN;
        let icv_start = packet.len().checked_sub(Self::ICV_LEN).ok_or(CryptoError)?;
        if icv_start < iv_end || !(icv_start - iv_end).is_multiple_of(16) {
            return Err(CryptoError);
        }
        // Verify before decrypting, in constant time.
        let tag = self.icv(&packet[..icv_start], seq, esn);
        constant_time::verify_slices_are_equal(
            &tag.as_ref()[..Self::ICV_LEN],
            &packet[icv_start..],
        )
        .map_err(|_| CryptoError)?;
        let mut iv = [0u8; Self::IV_LEN];
        iv.copy_from_slice(&packet[HEADER_LEN..iv_end]);
        self.decrypt
            .decrypt(
                &mut packet[iv_end..icv_start],
                cipher::DecryptionContext::Iv128(iv.into()),
            )
            .map_err(|_| CryptoError)?;
        Ok(())
    }
}

#[cfg(test)]
mod test {
    //! Known-answer tests through the suite layer: the same `AeadCipher`
    //! and `CbcHmacCipher` code that seals and opens ESP packets.

    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace([' ', '\n'], "")).unwrap()
    }

    /// The GCM specification's test cases 4 (AES-128) and 16 (AES-256),
    /// which NIST's GCM validation reuses: 96-bit IV, 20 bytes of AAD.
    #[test]
    fn aes_gcm_known_answers() {
        let k128 = "feffe9928665731c6d6a8f9467308308";
        let iv = h("cafebabefacedbaddecaf888");
        let p = h(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
                   1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let a = h("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let cases = [
            (
                Suite::AesGcm128,
                k128.to_owned(),
                "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e
                 21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
                "5bc94fbc3221a5db94fae95ae7121a47",
            ),
            (
                Suite::AesGcm256,
                format!("{k128}{k128}"),
                "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
                 8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
                "76fc6ece0f4e1768cddf8853bb2d551b",
            ),
        ];
        for (suite, key, c, t) in cases {
            // ESP key material is the key, then the first 4 nonce bytes as
            // the salt; the other 8 are the IV on the wire.
            let mut keymat = h(&key);
            keymat.extend_from_slice(&iv[..4]);
            let cipher = AeadCipher::new(suite, &keymat, 0).unwrap();
            let mut buf = p.clone();
            let mut tag = [0u8; 16];
            cipher.seal_parts(&iv[4..], &a, &mut buf, &mut tag).unwrap();
            assert_eq!(buf, h(c), "{suite} ciphertext");
            assert_eq!(tag.to_vec(), h(t), "{suite} tag");
            cipher.open_parts(&iv[4..], &a, &mut buf, &tag).unwrap();
            assert_eq!(buf, p);
            tag[0] ^= 1;
            assert_eq!(
                cipher.open_parts(&iv[4..], &a, &mut buf, &tag),
                Err(CryptoError)
            );
        }
    }

    /// RFC 8439 section 2.8.2. Its 12-byte AAD happens to have the shape
    /// of ESP's with ESN (SPI, high half, low half: RFC 7634 section 2.1),
    /// so the whole ESP path runs, AAD and nonce construction included.
    #[test]
    fn chacha20_poly1305_rfc8439_as_esp() {
        let key = h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
        let salt = h("07000000");
        let iv = h("4041424344454647");
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let ciphertext = h(
            "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
                            3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
                            92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
                            3ff4def08e4b7a9de576d26586cec64b6116",
        );
        let tag = h("1ae10b594f09e26a7e902ecbd0600691");
        // AAD 50515253 c0c1c2c3 c4c5c6c7 = SPI, seq high, seq low.
        let spi = h("50515253");
        let seq: u64 = 0xc0c1_c2c3_c4c5_c6c7;

        let mut keymat = key.clone();
        keymat.extend_from_slice(&salt);
        let iv_u64 = u64::from_be_bytes(iv.clone().try_into().unwrap());
        let cipher = AeadCipher::new(Suite::ChaCha20Poly1305, &keymat, seq ^ iv_u64).unwrap();

        let mut packet = spi.clone();
        packet.extend_from_slice(&h("c4c5c6c7"));
        packet.extend_from_slice(&[0; 8]);
        packet.extend_from_slice(plaintext);
        packet.extend_from_slice(&[0; 16]);
        cipher.seal(&mut packet, seq, true).unwrap();
        let mut expected = spi;
        expected.extend_from_slice(&h("c4c5c6c7"));
        expected.extend_from_slice(&iv);
        expected.extend_from_slice(&ciphertext);
        expected.extend_from_slice(&tag);
        assert_eq!(hex::encode(&packet), hex::encode(&expected));

        cipher.open(&mut packet, seq, true).unwrap();
        assert_eq!(&packet[16..16 + plaintext.len()], plaintext);
        // Without ESN the AAD differs, so the same bytes do not open.
        let mut again = expected.clone();
        assert_eq!(cipher.open(&mut again, seq, false), Err(CryptoError));
    }

    /// RFC 4231 test cases 1, 2 and 5 (the truncation case), through the
    /// ICV computation of the CBC suite: HMAC-SHA-256 truncated to 128
    /// bits is HMAC-SHA-256-128 (RFC 4868 section 2.3).
    #[test]
    fn hmac_sha256_rfc4231() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 3] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0x0c; 20],
                b"Test With Truncation".to_vec(),
                "a3b6167473100ee06e0c796c2955552b",
            ),
        ];
        for (key, data, mac) in cases {
            let cipher = CbcHmacCipher::new(&[0; 32], &key).unwrap();
            let tag = cipher.icv(&data, 0, false);
            let expected = h(mac);
            assert_eq!(&tag.as_ref()[..expected.len()], &expected[..]);
        }
    }

    /// NIST SP 800-38A F.2.5 (CBC-AES256.Encrypt), through the CBC suite:
    /// the IV goes on the wire, the ICV covers header, IV and ciphertext.
    #[test]
    fn aes256_cbc_sp800_38a() {
        let key = h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
        let iv = h("000102030405060708090a0b0c0d0e0f");
        let plaintext = h(
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51
                           30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
        );
        let ciphertext = h(
            "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d
                            39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b",
        );
        let integrity = [0x5a; 32];
        let cipher = CbcHmacCipher::new(&key, &integrity).unwrap();
        // Build the packet the peer would send and open it.
        let mut packet = h("0000100100000001");
        packet.extend_from_slice(&iv);
        packet.extend_from_slice(&ciphertext);
        let mac = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &integrity), &packet);
        packet.extend_from_slice(&mac.as_ref()[..16]);
        let mut opened = packet.clone();
        cipher.open(&mut opened, 1, false).unwrap();
        assert_eq!(&opened[24..88], &plaintext[..]);
        // A flipped ciphertext bit fails the ICV before decryption.
        packet[30] ^= 0x80;
        assert_eq!(cipher.open(&mut packet, 1, false), Err(CryptoError));
    }

    #[test]
    fn cbc_ivs_are_unique_and_unrelated_to_the_sequence_number() {
        let cipher = CbcHmacCipher::new(&[7; 32], &[9; 32]).unwrap();
        let mut ivs = std::collections::HashSet::new();
        for seq in 1..=1000u64 {
            let mut packet = vec![0, 0, 1, 0, 0, 0, 0, seq as u8];
            packet.extend_from_slice(&[0; 16]);
            packet.extend_from_slice(&[0x42; 32]);
            packet.extend_from_slice(&[0; 16]);
            cipher.seal(&mut packet, seq, false).unwrap();
            let iv: [u8; 16] = packet[8..24].try_into().unwrap();
            // The IV is an AES output, not the counter itself.
            assert_ne!(&iv[8..], &seq.to_be_bytes());
            assert!(ivs.insert(iv), "IV repeated at {seq}");
            cipher.open(&mut packet, seq, false).unwrap();
            assert_eq!(&packet[24..56], &[0x42; 32]);
        }
        // Another SA with the same key draws another nonce.
        let other = CbcHmacCipher::new(&[7; 32], &[9; 32]).unwrap();
        let mut packet = vec![0, 0, 1, 0, 0, 0, 0, 1];
        packet.extend_from_slice(&[0; 64]);
        other.seal(&mut packet, 1, false).unwrap();
        assert!(!ivs.contains(&<[u8; 16]>::try_from(&packet[8..24]).unwrap()));
    }

    #[test]
    fn every_suite_round_trips_and_rejects_tampering() {
        for suite in Suite::ALL {
            let keymat: Vec<u8> = (0..suite.encryption_key_len() + suite.integrity_key_len())
                .map(|i| i as u8)
                .collect();
            let keys = SaKeys::from_keymat(suite, &keymat).unwrap();
            let cipher = (AWS_LC_RS.new_cipher)(suite, &keys).unwrap();
            for esn in [false, true] {
                let iv = suite.iv_len();
                let mut packet = vec![0, 0, 0, 9, 0, 0, 0, 5];
                packet.extend(std::iter::repeat_n(0, iv));
                packet.extend_from_slice(&[7u8; 32]);
                packet.extend_from_slice(&[0; 16]);
                cipher.seal(&mut packet, (1 << 32) | 5, esn).unwrap();
                assert_ne!(&packet[8 + iv..8 + iv + 32], &[7u8; 32]);
                let mut copy = packet.clone();
                cipher.open(&mut copy, (1 << 32) | 5, esn).unwrap();
                assert_eq!(&copy[8 + iv..8 + iv + 32], &[7u8; 32]);
                // The high half of an ESN is authenticated.
                let mut copy = packet.clone();
                assert_eq!(
                    cipher.open(&mut copy, (2 << 32) | 5, esn),
                    if esn { Err(CryptoError) } else { Ok(()) },
                    "{suite} esn {esn}"
                );
                for byte in [0, 5, 8, 8 + iv, packet.len() - 1] {
                    let mut copy = packet.clone();
                    copy[byte] ^= 1;
                    assert_eq!(cipher.open(&mut copy, (1 << 32) | 5, esn), Err(CryptoError));
                }
            }
        }
    }
}
