//! A peer's public key, taken from its certificate, that verifies AUTH data.

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::CertError;
use super::scheme::{KeyType, SignatureScheme, parse_auth_data};
use crate::message::AuthMethod;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_ED25519: &str = "1.3.101.112";

/// The public key of a verified peer certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPublicKey {
    key_type: KeyType,
    /// The subjectPublicKey bits: an uncompressed point, an RSAPublicKey
    /// or the 32 Ed25519 octets.
    key: Vec<u8>,
}

impl PeerPublicKey {
    /// The public key of a certificate, without validating the certificate.
    pub fn from_certificate(der: &CertificateDer<'_>) -> Result<Self, CertError> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|_| CertError::Malformed("certificate DER"))?;
        Self::from_parsed(&cert)
    }

    pub(crate) fn from_parsed(cert: &X509Certificate<'_>) -> Result<Self, CertError> {
        let spki = cert.public_key();
        let alg = spki.algorithm.algorithm.to_id_string();
        let key_type = match alg.as_str() {
            OID_EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string());
                match curve.as_deref() {
                    Some(OID_P256) => KeyType::EcdsaP256,
                    Some(OID_P384) => KeyType::EcdsaP384,
                    other => {
                        return Err(CertError::UnsupportedAlgorithm(format!(
                            "EC public key on curve {}",
                            other.unwrap_or("(none)")
                        )));
                    }
                }
            }
            OID_RSA => KeyType::Rsa,
            OID_ED25519 => KeyType::Ed25519,
            other => {
                return Err(CertError::UnsupportedAlgorithm(format!(
                    "public key algorithm {other}"
                )));
            }
        };
        Ok(Self {
            key_type,
            key: spki.subject_public_key.data.to_vec(),
        })
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The subjectPublicKey octets.
    pub fn public_key(&self) -> &[u8] {
        &self.key
    }

    /// Verifies the AUTH payload's data over the signed octets (RFC 7296
    /// section 2.15) for AUTH `method`:
    ///
    /// - 14, Digital Signature (RFC 7427): any [`SignatureScheme`] that fits
    ///   the key; returns the scheme used.
    /// - 9 and 10, ECDSA with SHA-256 on P-256 and SHA-384 on P-384
    ///   (RFC 4754): the fixed-length r||s signature, not DER.
    /// - 1, RSA Digital Signature: RSASSA-PKCS1-v1_5, with SHA-1 as RFC 7296
    ///   peers use it (RFC 7427 section 1). Verified, for peers that do not
    ///   offer RFC 7427, because a SHA-1 collision would need the signer to
    ///   sign a prefix chosen in advance, and the signed octets carry our
    ///   fresh nonce. We never sign with it.
    ///
    /// RSA keys must have 2048 to 8192 bits. Other methods are
    /// [`CertError::UnsupportedAlgorithm`].
    pub fn verify(
        &self,
        method: AuthMethod,
        auth_data: &[u8],
        signed_octets: &[u8],
    ) -> Result<Option<SignatureScheme>, CertError> {
        let (alg, signature, scheme): (&'static dyn VerificationAlgorithm, &[u8], _) = match method
        {
            AuthMethod::DigitalSignature => {
                let (scheme, signature) = parse_auth_data(auth_data)?;
                (self.rfc7427_algorithm(scheme)?, signature, Some(scheme))
            }
            AuthMethod::EcdsaSha256P256 if self.key_type == KeyType::EcdsaP256 => {
                (&signature::ECDSA_P256_SHA256_FIXED, auth_data, None)
            }
            AuthMethod::EcdsaSha384P384 if self.key_type == KeyType::EcdsaP384 => {
                (&signature::ECDSA_P384_SHA384_FIXED, auth_data, None)
            }
            AuthMethod::RsaSignature if self.key_type == KeyType::Rsa => (
                &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                auth_data,
                None,
            ),
            _ => {
                return Err(CertError::UnsupportedAlgorithm(format!(
                    "AUTH method {method:?} with a {} key",
                    self.key_type
                )));
            }
        };
        UnparsedPublicKey::new(alg, &self.key)
            .verify(signed_octets, signature)
            .map_err(|_| CertError::BadSignature("AUTH signature does not verify"))?;
        Ok(scheme)
    }

    fn rfc7427_algorithm(
        &self,
        scheme: SignatureScheme,
    ) -> Result<&'static dyn VerificationAlgorithm, CertError> {
        use SignatureScheme as S;
        Ok(match (self.key_type, scheme) {
            (KeyType::EcdsaP256, S::EcdsaSha256) => &signature::ECDSA_P256_SHA256_ASN1,
            (KeyType::EcdsaP256, S::EcdsaSha384) => &signature::ECDSA_P256_SHA384_ASN1,
            (KeyType::EcdsaP384, S::EcdsaSha256) => &signature::ECDSA_P384_SHA256_ASN1,
            (KeyType::EcdsaP384, S::EcdsaSha384) => &signature::ECDSA_P384_SHA384_ASN1,
            (KeyType::Rsa, S::RsaPssSha256) => &signature::RSA_PSS_2048_8192_SHA256,
            (KeyType::Rsa, S::RsaPkcs1Sha256) => &signature::RSA_PKCS1_2048_8192_SHA256,
            (KeyType::Ed25519, S::Ed25519) => &signature::ED25519,
            (key, scheme) => {
                return Err(CertError::UnsupportedAlgorithm(format!(
                    "{scheme} with a {key} key"
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::testutil::{LeafSpec, self_signed};
    use crate::cert::{KeyType, PrivateKey};

    const KINDS: [KeyType; 4] = [
        KeyType::EcdsaP256,
        KeyType::EcdsaP384,
        KeyType::Rsa,
        KeyType::Ed25519,
    ];

    fn pair(kind: KeyType) -> (PrivateKey, PeerPublicKey) {
        let (cert, key_pem) = self_signed(LeafSpec::new("node.example", kind));
        let key = PrivateKey::from_pem_or_der(key_pem.as_bytes()).unwrap();
        let public = PeerPublicKey::from_certificate(&cert).unwrap();
        assert_eq!(key.key_type(), kind);
        assert_eq!(public.key_type(), kind);
        assert_eq!(public.public_key(), key.public_key());
        (key, public)
    }

    #[test]
    fn cert_rfc7427_round_trip_and_tamper() {
        let octets = b"IKE_SA_INIT message | Nr | prf(SK_pi, IDi')";
        for kind in KINDS {
            let (key, public) = pair(kind);
            for &scheme in key.schemes() {
                let data = key
                    .auth_data(AuthMethod::DigitalSignature, scheme, octets)
                    .unwrap();
                assert_eq!(
                    public.verify(AuthMethod::DigitalSignature, &data, octets),
                    Ok(Some(scheme)),
                    "{kind} {scheme}"
                );
                let mut bad = data.clone();
                *bad.last_mut().unwrap() ^= 1;
                assert_eq!(
                    public.verify(AuthMethod::DigitalSignature, &bad, octets),
                    Err(CertError::BadSignature("AUTH signature does not verify")),
                    "{kind} {scheme}"
                );
                assert!(
                    public
                        .verify(AuthMethod::DigitalSignature, &data, b"other octets")
                        .is_err()
                );
            }
            // A scheme that does not fit the key is refused on both sides.
            let wrong = if kind == KeyType::Ed25519 {
                SignatureScheme::EcdsaSha256
            } else {
                SignatureScheme::Ed25519
            };
            assert!(matches!(
                key.sign(wrong, octets),
                Err(CertError::UnsupportedAlgorithm(_))
            ));
            let forged = crate::cert::encode_auth_data(wrong, &[1; 64]);
            assert!(matches!(
                public.verify(AuthMethod::DigitalSignature, &forged, octets),
                Err(CertError::UnsupportedAlgorithm(_))
            ));
        }
    }

    #[test]
    fn cert_ecdsa_methods_9_and_10_are_fixed_length() {
        let octets = b"signed octets";
        for (kind, method, len) in [
            (KeyType::EcdsaP256, AuthMethod::EcdsaSha256P256, 64),
            (KeyType::EcdsaP384, AuthMethod::EcdsaSha384P384, 96),
        ] {
            let (key, public) = pair(kind);
            assert_eq!(key.legacy_method(), Some(method));
            let data = key
                .auth_data(method, SignatureScheme::EcdsaSha256, octets)
                .unwrap();
            // RFC 4754 section 7: r || s, each the size of the group order.
            assert_eq!(data.len(), len);
            assert_eq!(public.verify(method, &data, octets), Ok(None));
            let mut bad = data.clone();
            bad[0] ^= 0x80;
            assert!(public.verify(method, &bad, octets).is_err());
            // A DER signature is not accepted as method 9/10.
            let der = key.sign(key.schemes()[0], octets).unwrap();
            assert!(public.verify(method, &der, octets).is_err());
            // The other curve's method is refused.
            let other = if method == AuthMethod::EcdsaSha256P256 {
                AuthMethod::EcdsaSha384P384
            } else {
                AuthMethod::EcdsaSha256P256
            };
            assert!(matches!(
                public.verify(other, &data, octets),
                Err(CertError::UnsupportedAlgorithm(_))
            ));
        }
        for kind in [KeyType::Rsa, KeyType::Ed25519] {
            let (key, public) = pair(kind);
            assert_eq!(key.legacy_method(), None);
            assert!(
                key.auth_data(
                    AuthMethod::EcdsaSha256P256,
                    SignatureScheme::EcdsaSha256,
                    b"x"
                )
                .is_err()
            );
            assert!(public.verify(AuthMethod::SharedKey, b"x", b"x").is_err());
        }
    }

    #[test]
    fn cert_method_1_is_refused_for_non_rsa_keys() {
        let (_, public) = pair(KeyType::EcdsaP256);
        assert!(matches!(
            public.verify(AuthMethod::RsaSignature, &[0; 256], b"x"),
            Err(CertError::UnsupportedAlgorithm(_))
        ));
    }
}
