//! RFC 7427 signature schemes, the Digital Signature AUTH data format
//! (section 3), the SIGNATURE_HASH_ALGORITHMS notify data (section 4),
//! and the kinds of keys ([`KeyType`]) that sign with them.

use super::CertError;
use super::describe::hex_string;

/// The kind of a key pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA on P-256.
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// RSA.
    Rsa,
    /// Ed25519.
    Ed25519,
}

impl std::fmt::Display for KeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::EcdsaP256 => "ECDSA P-256",
            Self::EcdsaP384 => "ECDSA P-384",
            Self::Rsa => "RSA",
            Self::Ed25519 => "Ed25519",
        })
    }
}

/// A signature scheme for AUTH method 14, Digital Signature (RFC 7427).
///
/// Each scheme is named in the AUTH data by a DER AlgorithmIdentifier; the
/// byte strings are those of RFC 7427 Appendix A and RFC 8420 section 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignatureScheme {
    /// ecdsa-with-SHA256 (RFC 7427 A.3.1), with a P-256 (or P-384) key.
    EcdsaSha256,
    /// ecdsa-with-SHA384 (RFC 7427 A.3.2), with a P-384 (or P-256) key.
    EcdsaSha384,
    /// RSASSA-PSS with SHA-256, MGF1 with SHA-256 and a 32-octet salt
    /// (RFC 7427 A.4.3).
    RsaPssSha256,
    /// sha256WithRSAEncryption, RSASSA-PKCS1-v1_5 with SHA-256 (RFC 7427 A.1.2).
    RsaPkcs1Sha256,
    /// Ed25519 (RFC 8420 section 2; "Identity" hash).
    Ed25519,
}

/// RFC 7427 A.3.1, ecdsa-with-sha256: `30 0a 06 08 2a 86 48 ce 3d 04 03 02`.
const ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];
/// RFC 7427 A.3.2, ecdsa-with-sha384: `30 0a 06 08 2a 86 48 ce 3d 04 03 03`.
const ECDSA_SHA384: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
];
/// RFC 7427 A.1.2, sha256WithRSAEncryption:
/// `30 0d 06 09 2a 86 48 86 f7 0d 01 01 0b 05 00`.
const RSA_PKCS1_SHA256: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00,
];
/// RFC 7427 A.4.3, RSASSA-PSS with SHA-256: id-RSASSA-PSS with
/// `hashAlgorithm` SHA-256, `maskGenAlgorithm` MGF1 with SHA-256 and
/// `saltLength` 32:
/// `30 41 06 09 2a 86 48 86 f7 0d 01 01 0a 30 34 a0 0f 30 0d 06 09 60 86 48
/// 01 65 03 04 02 01 05 00 a1 1c 30 1a 06 09 2a 86 48 86 f7 0d 01 01 08 30
/// 0d 06 09 60 86 48 01 65 03 04 02 01 05 00 a2 03 02 01 20`.
const RSA_PSS_SHA256: &[u8] = &[
    0x30, 0x41, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30, 0x34, 0xa0,
    0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
    0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30,
    0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0xa2, 0x03,
    0x02, 0x01, 0x20,
];
/// RFC 8420 section 2, id-Ed25519: `30 05 06 03 2b 65 70`.
const ED25519: &[u8] = &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];

impl SignatureScheme {
    /// Every scheme, in our order of preference.
    pub const ALL: [Self; 5] = [
        Self::Ed25519,
        Self::EcdsaSha256,
        Self::EcdsaSha384,
        Self::RsaPssSha256,
        Self::RsaPkcs1Sha256,
    ];

    /// The DER AlgorithmIdentifier that names the scheme in AUTH data.
    pub fn algorithm_identifier(self) -> &'static [u8] {
        match self {
            Self::EcdsaSha256 => ECDSA_SHA256,
            Self::EcdsaSha384 => ECDSA_SHA384,
            Self::RsaPssSha256 => RSA_PSS_SHA256,
            Self::RsaPkcs1Sha256 => RSA_PKCS1_SHA256,
            Self::Ed25519 => ED25519,
        }
    }

    /// The scheme an AlgorithmIdentifier names, compared byte for byte.
    pub fn from_algorithm_identifier(der: &[u8]) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.algorithm_identifier() == der)
    }

    /// The hash algorithm the scheme uses, as announced in
    /// SIGNATURE_HASH_ALGORITHMS.
    pub fn hash(self) -> HashAlgorithm {
        match self {
            Self::EcdsaSha256 | Self::RsaPssSha256 | Self::RsaPkcs1Sha256 => HashAlgorithm::Sha256,
            Self::EcdsaSha384 => HashAlgorithm::Sha384,
            Self::Ed25519 => HashAlgorithm::Identity,
        }
    }
}

impl std::fmt::Display for SignatureScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::EcdsaSha256 => "ecdsa-with-SHA256",
            Self::EcdsaSha384 => "ecdsa-with-SHA384",
            Self::RsaPssSha256 => "RSASSA-PSS-SHA256",
            Self::RsaPkcs1Sha256 => "sha256WithRSAEncryption",
            Self::Ed25519 => "Ed25519",
        })
    }
}

/// Encodes Digital Signature AUTH data (RFC 7427 section 3): the one-octet
/// length of the AlgorithmIdentifier, the AlgorithmIdentifier, then the
/// signature value.
pub fn encode_auth_data(scheme: SignatureScheme, signature: &[u8]) -> Vec<u8> {
    let id = scheme.algorithm_identifier();
    let mut out = Vec::with_capacity(1 + id.len() + signature.len());
    // Every identifier above is shorter than 256 octets.
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out.extend_from_slice(signature);
    out
}

/// Splits Digital Signature AUTH data (RFC 7427 section 3) into its scheme
/// and signature value. An AlgorithmIdentifier we do not know is
/// [`CertError::UnsupportedAlgorithm`].
pub fn parse_auth_data(data: &[u8]) -> Result<(SignatureScheme, &[u8]), CertError> {
    let (&len, rest) = data
        .split_first()
        .ok_or(CertError::Malformed("empty AUTH data"))?;
    let len = usize::from(len);
    if rest.len() < len {
        return Err(CertError::Malformed(
            "AUTH data shorter than its AlgorithmIdentifier length",
        ));
    }
    let (id, signature) = rest.split_at(len);
    let scheme = SignatureScheme::from_algorithm_identifier(id).ok_or_else(|| {
        CertError::UnsupportedAlgorithm(format!("AUTH AlgorithmIdentifier {}", hex_string(id)))
    })?;
    if signature.is_empty() {
        return Err(CertError::Malformed("AUTH data without a signature"));
    }
    Ok((scheme, signature))
}

/// Hash algorithms of SIGNATURE_HASH_ALGORITHMS (RFC 7427 section 4; IANA
/// "IKEv2 Hash Algorithms").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlgorithm {
    /// SHA1 (1).
    Sha1,
    /// SHA2-256 (2).
    Sha256,
    /// SHA2-384 (3).
    Sha384,
    /// SHA2-512 (4).
    Sha512,
    /// Identity (5, RFC 8420): the scheme signs the message itself.
    Identity,
    /// A value we do not know.
    Other(u16),
}

impl HashAlgorithm {
    /// The IANA value.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::Sha1 => 1,
            Self::Sha256 => 2,
            Self::Sha384 => 3,
            Self::Sha512 => 4,
            Self::Identity => 5,
            Self::Other(v) => v,
        }
    }

    /// The algorithm for an IANA value.
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => Self::Sha1,
            2 => Self::Sha256,
            3 => Self::Sha384,
            4 => Self::Sha512,
            5 => Self::Identity,
            v => Self::Other(v),
        }
    }
}

/// The hash algorithms we announce: those of [`SignatureScheme::ALL`].
pub const SUPPORTED_HASHES: [HashAlgorithm; 3] = [
    HashAlgorithm::Sha256,
    HashAlgorithm::Sha384,
    HashAlgorithm::Identity,
];

/// Encodes SIGNATURE_HASH_ALGORITHMS notify data (RFC 7427 section 4): a
/// list of 2-octet hash algorithm identifiers.
pub fn encode_hash_algorithms(hashes: &[HashAlgorithm]) -> Vec<u8> {
    hashes
        .iter()
        .flat_map(|h| h.to_u16().to_be_bytes())
        .collect()
}

/// Parses SIGNATURE_HASH_ALGORITHMS notify data (RFC 7427 section 4).
pub fn parse_hash_algorithms(data: &[u8]) -> Result<Vec<HashAlgorithm>, CertError> {
    if !data.len().is_multiple_of(2) {
        return Err(CertError::Malformed(
            "SIGNATURE_HASH_ALGORITHMS data of odd length",
        ));
    }
    Ok(data
        .chunks_exact(2)
        .map(|c| HashAlgorithm::from_u16(u16::from_be_bytes([c[0], c[1]])))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_identifiers_are_der_of_their_own_length() {
        for s in SignatureScheme::ALL {
            let id = s.algorithm_identifier();
            assert_eq!(id[0], 0x30, "{s}");
            assert_eq!(usize::from(id[1]) + 2, id.len(), "{s}");
            assert_eq!(SignatureScheme::from_algorithm_identifier(id), Some(s));
        }
    }

    #[test]
    fn auth_data_round_trip() {
        for s in SignatureScheme::ALL {
            let data = encode_auth_data(s, b"sig");
            assert_eq!(usize::from(data[0]), s.algorithm_identifier().len());
            assert_eq!(parse_auth_data(&data).unwrap(), (s, &b"sig"[..]));
        }
        // RFC 7427 A.1.1 sha1WithRSAEncryption is refused.
        let sha1 = hex::decode("0f300d06092a864886f70d0101050500aa").unwrap();
        assert!(matches!(
            parse_auth_data(&sha1),
            Err(CertError::UnsupportedAlgorithm(_))
        ));
        assert!(parse_auth_data(&[]).is_err());
        assert!(parse_auth_data(&[20, 0x30]).is_err());
        assert!(parse_auth_data(&encode_auth_data(SignatureScheme::Ed25519, &[])).is_err());
    }

    #[test]
    fn hash_algorithms_round_trip() {
        let data = encode_hash_algorithms(&SUPPORTED_HASHES);
        assert_eq!(data, [0, 2, 0, 3, 0, 5]);
        assert_eq!(parse_hash_algorithms(&data).unwrap(), SUPPORTED_HASHES);
        assert_eq!(
            parse_hash_algorithms(&[0, 4, 0x12, 0x34]).unwrap(),
            [HashAlgorithm::Sha512, HashAlgorithm::Other(0x1234)]
        );
        assert!(parse_hash_algorithms(&[0, 2, 0]).is_err());
    }
}
