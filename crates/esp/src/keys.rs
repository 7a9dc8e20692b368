//! The key material of an SA: secret bytes that are wiped on drop and
//! never printed, split by suite.

use core::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::Error;
use crate::suite::Suite;

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
