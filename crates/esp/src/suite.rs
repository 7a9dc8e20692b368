//! ESP cipher suites: their names and the lengths of their keys, IV and
//! ICV.

use core::fmt;
use core::str::FromStr;

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

/// A suite name that is not known: what parsing a [`Suite`] fails with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "suite: unknown cipher suite {0:?} (known: aes128gcm16, aes256gcm16, chacha20poly1305, aes256-sha256)"
)]
pub struct UnknownSuite(pub String);

impl FromStr for Suite {
    type Err = UnknownSuite;

    fn from_str(s: &str) -> Result<Self, UnknownSuite> {
        Self::ALL
            .into_iter()
            .find(|suite| suite.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownSuite(s.to_owned()))
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
            UnknownSuite("aes128".into())
        );
    }
}
