//! Test certificates made with rcgen.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
    SignatureAlgorithm,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

use super::KeyType;

/// 2030-01-01T00:00:00Z, the "now" of the tests; certificates are valid
/// from 2029 to 2031 unless a test says otherwise.
pub(crate) const NOW: u64 = 1_893_456_000;
const YEAR: i64 = 365 * 86_400;

pub(crate) fn now() -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(NOW))
}

pub(crate) fn at(secs: u64) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs))
}

pub(crate) fn alg(kind: KeyType) -> &'static SignatureAlgorithm {
    match kind {
        KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyType::Rsa => &rcgen::PKCS_RSA_SHA256,
        KeyType::Ed25519 => &rcgen::PKCS_ED25519,
    }
}

pub(crate) fn key(kind: KeyType) -> KeyPair {
    KeyPair::generate_for(alg(kind)).unwrap()
}

fn time(secs: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(secs).unwrap()
}

fn params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "tunsec test");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = time(NOW as i64 - YEAR);
    p.not_after = time(NOW as i64 + YEAR);
    p.key_identifier_method = KeyIdMethod::Sha256;
    p
}

/// A CA: its certificate and an issuer to sign with.
pub(crate) struct TestCa {
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub(crate) fn root(name: &str, kind: KeyType) -> Self {
        let mut p = params(name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = key(kind);
        let cert = p.self_signed(&key).unwrap().der().clone();
        Self {
            cert,
            issuer: Issuer::new(p, key),
        }
    }

    pub(crate) fn intermediate(&self, name: &str, kind: KeyType) -> Self {
        let mut p = params(name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.use_authority_key_identifier_extension = true;
        let key = key(kind);
        let cert = p.signed_by(&key, &self.issuer).unwrap().der().clone();
        Self {
            cert,
            issuer: Issuer::new(p, key),
        }
    }

    /// A leaf for `cn`, with the SANs given; returns the certificate and
    /// the key's PKCS#8 PEM.
    pub(crate) fn leaf(&self, leaf: LeafSpec<'_>) -> (CertificateDer<'static>, String) {
        let key = key(leaf.kind);
        let cert = leaf_params(&leaf)
            .signed_by(&key, &self.issuer)
            .unwrap()
            .der()
            .clone();
        (cert, key.serialize_pem())
    }

    /// A CRL from this CA that revokes `serials`.
    pub(crate) fn crl(&self, serials: &[u64]) -> Vec<u8> {
        let p = CertificateRevocationListParams {
            this_update: time(NOW as i64 - 86_400),
            next_update: time(NOW as i64 + 86_400),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: time(NOW as i64 - 3600),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        p.signed_by(&self.issuer).unwrap().der().to_vec()
    }
}

/// What a leaf certificate holds.
pub(crate) struct LeafSpec<'a> {
    pub(crate) cn: &'a str,
    pub(crate) kind: KeyType,
    pub(crate) sans: Vec<SanType>,
    pub(crate) serial: u64,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    pub(crate) key_usages: Vec<KeyUsagePurpose>,
}

impl<'a> LeafSpec<'a> {
    pub(crate) fn new(cn: &'a str, kind: KeyType) -> Self {
        Self {
            cn,
            kind,
            sans: vec![SanType::DnsName(cn.try_into().unwrap())],
            serial: 1000,
            not_before: NOW as i64 - YEAR,
            not_after: NOW as i64 + YEAR,
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
        }
    }
}

fn leaf_params(leaf: &LeafSpec<'_>) -> CertificateParams {
    let mut p = params(leaf.cn);
    p.subject_alt_names = leaf.sans.clone();
    p.serial_number = Some(SerialNumber::from(leaf.serial));
    p.not_before = time(leaf.not_before);
    p.not_after = time(leaf.not_after);
    p.key_usages = leaf.key_usages.clone();
    p.use_authority_key_identifier_extension = true;
    p
}

/// A self-signed leaf; returns the certificate and the key's PEM.
pub(crate) fn self_signed(leaf: LeafSpec<'_>) -> (CertificateDer<'static>, String) {
    let key = key(leaf.kind);
    let mut p = leaf_params(&leaf);
    p.use_authority_key_identifier_extension = false;
    let cert = p.self_signed(&key).unwrap().der().clone();
    (cert, key.serialize_pem())
}
