//! Certificates and signature authentication, sans IO.
//!
//! The foundation for IKEv2 signature authentication, which the IKE state
//! machine uses through `sa::auth`. Bytes and the current time come in
//! from the caller: no file I/O and no clock here.
//!
//! - [`PrivateKey`]: a PKCS#8 (or PKCS#1 / SEC1) key that signs AUTH data
//!   for RFC 7427 Digital Signature (method 14) and the ECDSA methods 9 and
//!   10 of RFC 4754.
//! - [`SignatureScheme`], [`encode_auth_data`] and [`parse_auth_data`]: the
//!   RFC 7427 section 3 AUTH data; [`encode_hash_algorithms`] and
//!   [`parse_hash_algorithms`]: the SIGNATURE_HASH_ALGORITHMS notify
//!   (section 4).
//! - [`Credentials`]: our key and certificate chain, from PEM.
//! - [`Trust`]: per peer, either a set of CAs (with CRLs) or pinned
//!   self-signed certificates; [`verify_peer`] validates a peer's
//!   certificate against it, checks its IKE identity (RFC 4945 section
//!   3.1) and yields a [`PeerPublicKey`] that verifies AUTH data.
//! - [`Trust::certreq_data`]: the CERTREQ payload data (RFC 7296 section
//!   3.7).
//!
//! X.509 path building, signatures, validity and CRLs are rustls-webpki's;
//! the fields it does not expose (subject DN, e-mail SANs, key usage, the
//! public key) are read with x509-parser; the signatures are aws-lc-rs's.

mod describe;
pub(crate) mod identity;
mod key;
mod peer;
mod scheme;
#[cfg(test)]
mod strongswan;
mod trust;

#[cfg(test)]
pub(crate) mod testutil;

pub use describe::describe as describe_identity;
pub use identity::{check_identity, dn_eq};
pub use key::{Credentials, PrivateKey};
pub use peer::PeerPublicKey;
pub use scheme::{
    HashAlgorithm, KeyType, SUPPORTED_HASHES, SignatureScheme, encode_auth_data,
    encode_hash_algorithms, parse_auth_data, parse_hash_algorithms,
};
pub use trust::{Trust, fingerprint, verify_peer};

pub use rustls_pki_types::{CertificateDer, UnixTime};

use crate::message::Identity;

/// Why a certificate, key or signature was refused. The text is meant for
/// a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Bytes that do not parse (DER, PEM, AUTH data, notify data).
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// A certificate, key or signature algorithm we do not support.
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// A private key that aws-lc-rs rejected.
    #[error("invalid private key: {0}")]
    InvalidKey(String),
    /// A certificate in the chain has expired.
    #[error("certificate expired (notAfter {not_after}, now {now}, Unix seconds)")]
    Expired {
        /// The certificate's notAfter, in Unix seconds.
        not_after: u64,
        /// The time of the check, in Unix seconds.
        now: u64,
    },
    /// A certificate in the chain is not valid yet.
    #[error("certificate not yet valid (notBefore {not_before}, now {now}, Unix seconds)")]
    NotYetValid {
        /// The certificate's notBefore, in Unix seconds.
        not_before: u64,
        /// The time of the check, in Unix seconds.
        now: u64,
    },
    /// No chain leads to a configured CA.
    #[error("unknown issuer: no chain to a trusted CA")]
    UnknownIssuer,
    /// A certificate in the chain is on a CRL.
    #[error("certificate revoked")]
    Revoked,
    /// A self-signed certificate that is not pinned.
    #[error("certificate not pinned (SHA-256 fingerprint {0})")]
    NotPinned(String),
    /// A certificate or AUTH signature that does not verify.
    #[error("bad signature: {0}")]
    BadSignature(&'static str),
    /// The end-entity certificate's keyUsage lacks digitalSignature
    /// (RFC 4945 section 5.1.3.2), or a certificate is used in a role its
    /// basic constraints or extended key usage forbid.
    #[error("key usage: {0}")]
    KeyUsage(String),
    /// The peer's IKE identity is not in its certificate (or is of a type
    /// a certificate cannot vouch for).
    #[error("identity mismatch: {0}")]
    IdentityMismatch(String),
    /// The peer's IKE identity is in its certificate, but it is not the
    /// one the configuration expects (`remote_id`).
    #[error(
        "identity mismatch: peer is {}, the configuration expects {}",
        describe::describe(presented),
        describe::describe(expected)
    )]
    UnexpectedIdentity {
        /// The identity the peer sent (its ID payload).
        presented: Identity,
        /// The identity the configuration expects of the peer.
        expected: Identity,
    },
    /// A CRL that does not parse or is not usable.
    #[error("CRL: {0}")]
    Crl(String),
    /// Any other path validation failure, with webpki's reason.
    #[error("certificate rejected: {0}")]
    Invalid(String),
}

/// Splits PEM (or a single DER object) into the DER of its sections of one
/// kind; `what` names them in errors.
fn pem_or_der<T>(bytes: &[u8], what: &'static str) -> Result<Vec<T>, CertError>
where
    T: rustls_pki_types::pem::PemObject + From<Vec<u8>>,
{
    if looks_like_pem(bytes) {
        let items = T::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CertError::Malformed(what))?;
        if items.is_empty() {
            return Err(CertError::Malformed(what));
        }
        Ok(items)
    } else if bytes.is_empty() {
        Err(CertError::Malformed(what))
    } else {
        Ok(vec![T::from(bytes.to_vec())])
    }
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Parses PEM (one or more `CERTIFICATE` sections) or one DER certificate.
pub fn parse_certificates(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    pem_or_der(bytes, "certificate PEM/DER")
}
