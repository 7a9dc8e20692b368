//! ESP cipher suites and their key material.

use core::fmt;
use core::str::FromStr;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::Error;

/// An ESP transform: how the payload is encrypted and authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// AES-GCM with a 128-bit key and a 16-byte ICV (RFC 4106).
    AesGcm128,
    /// AES-GCM with a 256-bit key and a 16-byte ICV (RFC 4106).
    AesGcm256,
    /// ChaCha20-Poly1305 (RFC 7634).
    ChaCha20Poly1305,
    /// AES-256-CBC (RFC 3602) with HMAC-SHA-256-128 (RFC 4868).
    AesCbc256HmacSha256,
}

impl Suite {
    /// Every suite.
    pub const ALL: [Self; 4] = [
        Self::AesGcm128,
        Self::AesGcm256,
        Self::ChaCha20Poly1305,
        Self::AesCbc256HmacSha256,
    ];

    /// Whether the suite is an AEAD (one key, salt included).
    pub const fn is_aead(self) -> bool {
        !matches!(self, Self::AesCbc256HmacSha256)
    }

    /// Length of the encryption key material, including the 4-byte salt of
    /// the AEAD suites (RFC 4106 section 8.1, RFC 7634 section 2).
    pub const fn encryption_key_len(self) -> usize {
        match self {
            Self::AesGcm128 => 16 + SALT_LEN,
            Self::AesGcm256 | Self::ChaCha20Poly1305 => 32 + SALT_LEN,
            Self::AesCbc256HmacSha256 => 32,
        }
    }

    /// Length of the integrity key; 0 for the AEAD suites.
    pub const fn integrity_key_len(self) -> usize {
        match self {
            // RFC 4868 section 2.1.1: HMAC-SHA-256 keys are 256 bits.
            Self::AesCbc256HmacSha256 => 32,
            _ => 0,
        }
    }

    /// Length of the per-packet IV on the wire.
    pub const fn iv_len(self) -> usize {
        match self {
            //= https://www.rfc-editor.org/rfc/rfc4106#section-3.1
            //# The IV field MUST be eight octets.
            Self::AesGcm128 | Self::AesGcm256 | Self::ChaCha20Poly1305 => 8,
            //= https://www.rfc-editor.org/rfc/rfc3602#section-3
            //# The IV field MUST be the same size as the block size of the
            //# cipher algorithm being used.
            Self::AesCbc256HmacSha256 => 16,
        }
    }

    /// Length of the ICV.
    pub const fn icv_len(self) -> usize {
        // RFC 4106 ICV16, RFC 7634 section 2, RFC 4868 section 2.3 (the
        // HMAC-SHA-256 output truncated to 128 bits).
        16
    }

    /// The ciphertext must be a multiple of this many bytes (RFC 4303
    /// section 2.4: at least 4, and the cipher's block size).
    pub const fn align(self) -> usize {
        match self {
            Self::AesCbc256HmacSha256 => 16,
            _ => 4,
        }
    }

    /// The suite's name in strongSwan's proposal syntax.
    pub const fn name(self) -> &'static str {
        match self {
            Self::AesGcm128 => "aes128gcm16",
            Self::AesGcm256 => "aes256gcm16",
            Self::ChaCha20Poly1305 => "chacha20poly1305",
            Self::AesCbc256HmacSha256 => "aes256-sha256",
        }
    }
}

/// The 4-byte salt that precedes the 8-byte IV in an AEAD nonce.
pub(crate) const SALT_LEN: usize = 4;

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Suite {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|suite| suite.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::UnknownSuite(s.to_owned()))
    }
}

/// Secret bytes: wiped on drop, never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Key(Vec<u8>);

impl Key {
    /// Takes ownership of key bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Copies key bytes.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }

    /// The key bytes. Handle with care.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The key length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the key is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The keys of one SA, as IKEv2 (RFC 7296 section 2.17) or manual keying
/// hands them over: the encryption key (with the salt at its end for the
/// AEAD suites), then the integrity key for the non-AEAD suites.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaKeys {
    /// Encryption key, salt included for AEAD suites.
    pub encryption: Key,
    /// Integrity key; empty for AEAD suites.
    pub integrity: Key,
}

impl SaKeys {
    /// Splits one block of key material, as IKEv2's KEYMAT is split
    /// (encryption key first, then integrity key).
    pub fn from_keymat(suite: Suite, keymat: &[u8]) -> Result<Self, Error> {
        let enc = suite.encryption_key_len();
        let expected = enc + suite.integrity_key_len();
        if keymat.len() != expected {
            return Err(Error::KeyLength {
                suite,
                expected,
                actual: keymat.len(),
            });
        }
        Ok(Self {
            encryption: Key::from_slice(&keymat[..enc]),
            integrity: Key::from_slice(&keymat[enc..]),
        })
    }

    /// Checks the key lengths against a suite.
    pub fn check(&self, suite: Suite) -> Result<(), Error> {
        let expected = suite.encryption_key_len() + suite.integrity_key_len();
        let actual = self.encryption.len() + self.integrity.len();
        if self.encryption.len() != suite.encryption_key_len()
            || self.integrity.len() != suite.integrity_key_len()
        {
            return Err(Error::KeyLength {
                suite,
                expected,
                actual,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn names_round_trip() {
        for suite in Suite::ALL {
            assert_eq!(suite.name().parse::<Suite>().unwrap(), suite);
        }
        assert_eq!(
            "aes128".parse::<Suite>().unwrap_err(),
            Error::UnknownSuite("aes128".into())
        );
    }

    #[test]
    fn keys_never_print() {
        let keys = SaKeys::from_keymat(Suite::AesGcm128, &[0x42; 20]).unwrap();
        let shown = format!("{keys:?}");
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains("42"), "{shown}");
    }

    #[test]
    fn keymat_split_and_lengths() {
        let keys = SaKeys::from_keymat(Suite::AesCbc256HmacSha256, &[1; 64]).unwrap();
        assert_eq!((keys.encryption.len(), keys.integrity.len()), (32, 32));
        assert_eq!(
            SaKeys::from_keymat(Suite::AesGcm256, &[1; 32]).unwrap_err(),
            Error::KeyLength {
                suite: Suite::AesGcm256,
                expected: 36,
                actual: 32
            }
        );
    }
}
