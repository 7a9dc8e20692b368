//! Our private key and certificate chain ([`Credentials`]).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::scheme::{HashAlgorithm, KeyType, SignatureScheme, encode_auth_data};
use super::{CertError, looks_like_pem, parse_certificates};
use crate::message::AuthMethod;

enum Inner {
    /// ECDSA: one aws-lc-rs key pair per signature encoding, DER for
    /// RFC 7427 and r||s for RFC 4754.
    Ecdsa {
        asn1: EcdsaKeyPair,
        fixed: EcdsaKeyPair,
        p384: bool,
    },
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A private key that signs IKE AUTH data.
///
/// The key material lives in aws-lc-rs's key objects, which wipe it when
/// dropped; the PEM/DER the key came from is zeroized after parsing, and
/// `Debug` shows only the key type.
pub struct PrivateKey {
    inner: Inner,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({}, redacted)", self.key_type())
    }
}

/// `EcdsaKeyPair::from_pkcs8` or `EcdsaKeyPair::from_private_key_der`.
type EcdsaLoader = fn(
    &'static signature::EcdsaSigningAlgorithm,
    &[u8],
) -> Result<EcdsaKeyPair, aws_lc_rs::error::KeyRejected>;

impl PrivateKey {
    /// Loads a key from PEM (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE
    /// KEY`) or DER (PKCS#8). ECDSA P-256/P-384, RSA and Ed25519 keys.
    pub fn from_pem_or_der(bytes: &[u8]) -> Result<Self, CertError> {
        let der = if looks_like_pem(bytes) {
            PrivateKeyDer::from_pem_slice(bytes)
                .map_err(|_| CertError::Malformed("private key PEM"))?
        } else {
            PrivateKeyDer::Pkcs8(bytes.to_vec().into())
        };
        // Wipe our copy of the DER when done.
        let secret = Zeroizing::new(der.secret_der().to_vec());
        match der {
            PrivateKeyDer::Pkcs1(_) => Self::rsa(RsaKeyPair::from_der(&secret)),
            PrivateKeyDer::Sec1(_) => Self::sec1(&secret),
            _ => Self::pkcs8(&secret),
        }
    }

    fn pkcs8(der: &[u8]) -> Result<Self, CertError> {
        if let Some(k) = Self::ecdsa(der, EcdsaKeyPair::from_pkcs8) {
            return Ok(k);
        }
        if let Ok(k) = Ed25519KeyPair::from_pkcs8(der) {
            return Ok(Self {
                inner: Inner::Ed25519(k),
            });
        }
        Self::rsa(RsaKeyPair::from_pkcs8(der))
    }

    fn sec1(der: &[u8]) -> Result<Self, CertError> {
        Self::ecdsa(der, EcdsaKeyPair::from_private_key_der)
            .ok_or_else(|| CertError::InvalidKey("not an ECDSA P-256 or P-384 key".into()))
    }

    /// An ECDSA P-256 or else P-384 key, read from `der` by `load` (PKCS#8
    /// or SEC1), once for ASN.1 and once for fixed-size signatures.
    fn ecdsa(der: &[u8], load: EcdsaLoader) -> Option<Self> {
        let curve = |asn1, fixed, p384| -> Option<Self> {
            Some(Self {
                inner: Inner::Ecdsa {
                    asn1: load(asn1, der).ok()?,
                    fixed: load(fixed, der).ok()?,
                    p384,
                },
            })
        };
        curve(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            false,
        )
        .or_else(|| {
            curve(
                &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                true,
            )
        })
    }

    fn rsa(key: Result<RsaKeyPair, aws_lc_rs::error::KeyRejected>) -> Result<Self, CertError> {
        key.map(|k| Self {
            inner: Inner::Rsa(k),
        })
        .map_err(|e| {
            CertError::InvalidKey(format!(
                "not an ECDSA P-256/P-384, Ed25519 or RSA key ({e})"
            ))
        })
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        match &self.inner {
            Inner::Ecdsa { p384: false, .. } => KeyType::EcdsaP256,
            Inner::Ecdsa { p384: true, .. } => KeyType::EcdsaP384,
            Inner::Rsa(_) => KeyType::Rsa,
            Inner::Ed25519(_) => KeyType::Ed25519,
        }
    }

    /// The public key, in the form of a certificate's subjectPublicKey
    /// (an uncompressed point, an RSAPublicKey, or 32 Ed25519 octets).
    pub fn public_key(&self) -> Vec<u8> {
        match &self.inner {
            Inner::Ecdsa { asn1, .. } => asn1.public_key().as_ref().to_vec(),
            Inner::Rsa(k) => k.public_key().as_ref().to_vec(),
            Inner::Ed25519(k) => k.public_key().as_ref().to_vec(),
        }
    }

    /// The RFC 7427 schemes this key can sign with, best first.
    pub fn schemes(&self) -> &'static [SignatureScheme] {
        match &self.inner {
            Inner::Ecdsa { p384: false, .. } => &[SignatureScheme::EcdsaSha256],
            Inner::Ecdsa { p384: true, .. } => &[SignatureScheme::EcdsaSha384],
            Inner::Rsa(_) => &[
                SignatureScheme::RsaPssSha256,
                SignatureScheme::RsaPkcs1Sha256,
            ],
            Inner::Ed25519(_) => &[SignatureScheme::Ed25519],
        }
    }

    /// The scheme to sign with, given the hash algorithms the peer sent in
    /// SIGNATURE_HASH_ALGORITHMS (RFC 7427 section 4): the first of
    /// [`Self::schemes`] whose hash the peer announced.
    pub fn choose_scheme(&self, peer_hashes: &[HashAlgorithm]) -> Option<SignatureScheme> {
        self.schemes()
            .iter()
            .copied()
            .find(|s| peer_hashes.contains(&s.hash()))
    }

    /// The AUTH method to use with a peer that did not send
    /// SIGNATURE_HASH_ALGORITHMS: 9 or 10 for ECDSA keys (RFC 4754); none
    /// for RSA (method 1 means SHA-1, which we do not sign with) or Ed25519
    /// (which exists only under RFC 7427).
    pub fn legacy_method(&self) -> Option<AuthMethod> {
        match &self.inner {
            Inner::Ecdsa { p384: false, .. } => Some(AuthMethod::EcdsaSha256P256),
            Inner::Ecdsa { p384: true, .. } => Some(AuthMethod::EcdsaSha384P384),
            _ => None,
        }
    }

    /// Signs `message` with an RFC 7427 scheme; returns the bare signature
    /// (DER Ecdsa-Sig-Value for ECDSA, RFC 7427 section 3).
    pub fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, CertError> {
        let refused =
            || CertError::UnsupportedAlgorithm(format!("{scheme} with a {} key", self.key_type()));
        let failed = |_| CertError::InvalidKey(format!("{scheme} signing failed"));
        let rng = SystemRandom::new();
        match (&self.inner, scheme) {
            (
                Inner::Ecdsa {
                    asn1, p384: false, ..
                },
                SignatureScheme::EcdsaSha256,
            )
            | (
                Inner::Ecdsa {
                    asn1, p384: true, ..
                },
                SignatureScheme::EcdsaSha384,
            ) => Ok(asn1.sign(&rng, message).map_err(failed)?.as_ref().to_vec()),
            (Inner::Rsa(k), SignatureScheme::RsaPssSha256 | SignatureScheme::RsaPkcs1Sha256) => {
                let encoding = if scheme == SignatureScheme::RsaPssSha256 {
                    &signature::RSA_PSS_SHA256
                } else {
                    &signature::RSA_PKCS1_SHA256
                };
                let mut out = vec![0; k.public_modulus_len()];
                k.sign(encoding, &rng, message, &mut out).map_err(failed)?;
                Ok(out)
            }
            (Inner::Ed25519(k), SignatureScheme::Ed25519) => Ok(k.sign(message).as_ref().to_vec()),
            _ => Err(refused()),
        }
    }

    /// The AUTH payload's data for `method` over the signed octets (RFC 7296
    /// section 2.15): for [`AuthMethod::DigitalSignature`] the RFC 7427
    /// format with `scheme`, for methods 9 and 10 the fixed-length r||s of
    /// RFC 4754 section 7 (`scheme` is ignored).
    pub fn auth_data(
        &self,
        method: AuthMethod,
        scheme: SignatureScheme,
        signed_octets: &[u8],
    ) -> Result<Vec<u8>, CertError> {
        let rng = SystemRandom::new();
        match (method, &self.inner) {
            (AuthMethod::DigitalSignature, _) => {
                Ok(encode_auth_data(scheme, &self.sign(scheme, signed_octets)?))
            }
            (
                AuthMethod::EcdsaSha256P256,
                Inner::Ecdsa {
                    fixed, p384: false, ..
                },
            )
            | (
                AuthMethod::EcdsaSha384P384,
                Inner::Ecdsa {
                    fixed, p384: true, ..
                },
            ) => Ok(fixed
                .sign(&rng, signed_octets)
                .map_err(|_| CertError::InvalidKey("ECDSA signing failed".into()))?
                .as_ref()
                .to_vec()),
            _ => Err(CertError::UnsupportedAlgorithm(format!(
                "AUTH method {method:?} with a {} key",
                self.key_type()
            ))),
        }
    }
}

/// Our credentials: a private key and the certificate chain that goes with
/// it, end entity first, then any intermediates (sent in CERT payloads,
/// RFC 7296 section 3.6).
#[derive(Debug)]
pub struct Credentials {
    /// The private key.
    pub key: PrivateKey,
    /// The end-entity certificate, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
}

impl Credentials {
    /// Loads credentials from the contents of a key file and a certificate
    /// file (PEM, end entity first; or one DER certificate), and checks that
    /// the key matches the end-entity certificate.
    pub fn from_pem(key: &[u8], certs: &[u8]) -> Result<Self, CertError> {
        let key = PrivateKey::from_pem_or_der(key)?;
        let chain = parse_certificates(certs)?;
        let ee = super::peer::PeerPublicKey::from_certificate(&chain[0])?;
        if ee.public_key() != key.public_key() {
            return Err(CertError::InvalidKey(
                "the private key does not match the certificate".into(),
            ));
        }
        Ok(Self { key, chain })
    }

    /// The end-entity certificate.
    pub fn end_entity(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The intermediates, if any.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.chain[1..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::testutil::{self, LeafSpec};

    #[test]
    fn cert_key_loading() {
        for kind in [
            KeyType::EcdsaP256,
            KeyType::EcdsaP384,
            KeyType::Rsa,
            KeyType::Ed25519,
        ] {
            let k = testutil::key(kind);
            // PKCS#8 PEM and DER.
            let pem = PrivateKey::from_pem_or_der(k.serialize_pem().as_bytes()).unwrap();
            let der = PrivateKey::from_pem_or_der(k.serialized_der()).unwrap();
            assert_eq!(pem.key_type(), kind);
            assert_eq!(der.public_key(), pem.public_key());
            assert_eq!(pem.public_key(), k.public_key_raw());
            // Debug shows no key material.
            assert_eq!(format!("{pem:?}"), format!("PrivateKey({kind}, redacted)"));
        }
        assert!(PrivateKey::from_pem_or_der(b"garbage").is_err());
        assert!(PrivateKey::from_pem_or_der(b"-----BEGIN PRIVATE KEY-----\n").is_err());
    }

    #[test]
    fn cert_choose_scheme() {
        let rsa =
            PrivateKey::from_pem_or_der(testutil::key(KeyType::Rsa).serialize_pem().as_bytes())
                .unwrap();
        assert_eq!(
            rsa.choose_scheme(&[HashAlgorithm::Sha512, HashAlgorithm::Sha256]),
            Some(SignatureScheme::RsaPssSha256)
        );
        assert_eq!(rsa.choose_scheme(&[HashAlgorithm::Identity]), None);
        let ed =
            PrivateKey::from_pem_or_der(testutil::key(KeyType::Ed25519).serialize_pem().as_bytes())
                .unwrap();
        assert_eq!(
            ed.choose_scheme(&[HashAlgorithm::Identity]),
            Some(SignatureScheme::Ed25519)
        );
    }

    #[test]
    fn cert_credentials_from_pem() {
        let ca = testutil::TestCa::root("CA", KeyType::EcdsaP256);
        let (cert, key) = ca.leaf(LeafSpec::new("node-1", KeyType::EcdsaP256));
        let chain = format!(
            "{}{}",
            pem_of(&cert),
            pem_of(&ca.intermediate("sub", KeyType::EcdsaP256).cert)
        );
        let creds = Credentials::from_pem(key.as_bytes(), chain.as_bytes()).unwrap();
        assert_eq!(creds.end_entity(), &cert);
        assert_eq!(creds.intermediates().len(), 1);
        // A key that is not the certificate's.
        let other = testutil::key(KeyType::EcdsaP256).serialize_pem();
        assert!(matches!(
            Credentials::from_pem(other.as_bytes(), chain.as_bytes()),
            Err(CertError::InvalidKey(_))
        ));
        assert!(Credentials::from_pem(key.as_bytes(), b"").is_err());
    }

    pub(crate) fn pem_of(cert: &CertificateDer<'_>) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", cert.to_vec()))
    }
}
