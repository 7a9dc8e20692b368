//! Trust per peer ([`Trust`]) and peer certificate validation
//! ([`verify_peer`]).

use aws_lc_rs::digest;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, ExtendedKeyUsageValidator, KeyPurposeId,
    KeyPurposeIdIter, OwnedCertRevocationList, RevocationCheckDepth, RevocationOptionsBuilder,
    UnknownStatusPolicy,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::identity::{check_certificate_identity, check_expected_identity};
use super::peer::PeerPublicKey;
use super::{CertError, looks_like_pem, parse_certificates};
use crate::message::Identity;

/// Whom we trust to vouch for one peer.
#[derive(Debug)]
pub struct Trust(Model);

#[derive(Debug)]
enum Model {
    Ca {
        roots: Vec<CertificateDer<'static>>,
        anchors: Vec<TrustAnchor<'static>>,
        crls: Vec<CertRevocationList<'static>>,
    },
    Pinned {
        fingerprints: Vec<[u8; 32]>,
    },
}

impl Trust {
    /// CA-signed: a chain from the peer's certificate to one of `roots`
    /// (each PEM with one or more certificates, or one DER certificate),
    /// none of it revoked by `crls` (each PEM or DER).
    pub fn ca(roots: &[&[u8]], crls: &[&[u8]]) -> Result<Self, CertError> {
        let mut certs = Vec::new();
        for r in roots {
            certs.extend(parse_certificates(r)?);
        }
        let mut parsed = Vec::new();
        for c in crls {
            parsed.extend(parse_crls(c)?);
        }
        Self::ca_from_der(certs, parsed)
    }

    /// CA-signed, from DER: trusted roots and CRLs.
    pub fn ca_from_der(
        roots: Vec<CertificateDer<'static>>,
        crls: Vec<Vec<u8>>,
    ) -> Result<Self, CertError> {
        if roots.is_empty() {
            return Err(CertError::Malformed("no CA certificate"));
        }
        let anchors = roots
            .iter()
            .map(|r| {
                webpki::anchor_from_trusted_cert(r)
                    .map(|a| a.to_owned())
                    .map_err(|e| CertError::Invalid(format!("CA certificate: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let crls = crls
            .iter()
            .map(|der| {
                OwnedCertRevocationList::from_der(der)
                    .map(CertRevocationList::from)
                    .map_err(|e| CertError::Crl(format!("{e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self(Model::Ca {
            roots,
            anchors,
            crls,
        }))
    }

    /// Self-signed, pinned: the peer's certificate must be one of `certs`
    /// or have one of the SHA-256 `fingerprints` (of its DER).
    pub fn pinned(certs: &[CertificateDer<'_>], fingerprints: &[[u8; 32]]) -> Self {
        let mut all: Vec<[u8; 32]> = certs.iter().map(|c| fingerprint(c)).collect();
        all.extend_from_slice(fingerprints);
        Self(Model::Pinned { fingerprints: all })
    }

    /// A short description for status lines: `CA <subject>[, ...] (N
    /// CRLs)` or `pinned (N certificates)`.
    pub fn describe(&self) -> String {
        match &self.0 {
            Model::Ca { roots, crls, .. } => {
                let names: Vec<String> = roots
                    .iter()
                    .map(|r| {
                        X509Certificate::from_der(r).map_or_else(
                            |_| "(unreadable)".to_owned(),
                            |(_, c)| c.subject().to_string(),
                        )
                    })
                    .collect();
                format!("CA {} ({} CRLs)", names.join(", "), crls.len())
            }
            Model::Pinned { fingerprints } => {
                format!("pinned ({} certificates)", fingerprints.len())
            }
        }
    }

    /// The CERTREQ payload's data for X.509 signatures (RFC 7296 section
    /// 3.7): the SHA-1 hashes of the trusted CAs' SubjectPublicKeyInfo,
    /// concatenated. Empty for pinned trust.
    pub fn certreq_data(&self) -> Vec<u8> {
        let Model::Ca { roots, .. } = &self.0 else {
            return Vec::new();
        };
        roots
            .iter()
            .filter_map(|r| X509Certificate::from_der(r).ok())
            .flat_map(|(_, c)| {
                digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, c.public_key().raw)
                    .as_ref()
                    .to_vec()
            })
            .collect()
    }
}

fn parse_crls(bytes: &[u8]) -> Result<Vec<Vec<u8>>, CertError> {
    use rustls_pki_types::CertificateRevocationListDer;
    use rustls_pki_types::pem::PemObject;
    if looks_like_pem(bytes) {
        let crls = CertificateRevocationListDer::pem_slice_iter(bytes)
            .map(|c| c.map(|c| c.as_ref().to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CertError::Crl("PEM does not parse".into()))?;
        if crls.is_empty() {
            return Err(CertError::Crl("no X509 CRL in the PEM".into()));
        }
        Ok(crls)
    } else {
        Ok(vec![bytes.to_vec()])
    }
}

/// The SHA-256 fingerprint of a certificate's DER.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, cert.as_ref());
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Validates a peer's certificate and identity; returns its public key, to
/// verify the AUTH payload with.
///
/// - With [`Trust::ca`]: a path from `end_entity` through `intermediates`
///   (the peer's other CERT payloads) to a trusted CA, with every signature,
///   validity period at `now`, basic constraints, name constraints and the
///   CRLs checked by rustls-webpki. An extended key usage, when present,
///   must allow IKE (RFC 4945 section 5.1.3.12): id-kp-ipsecIKE or
///   anyExtendedKeyUsage, and, as strongSwan does, the TLS serverAuth and
///   clientAuth purposes. A CRL whose nextUpdate has passed still revokes;
///   a certificate no CRL speaks for is accepted.
/// - With [`Trust::pinned`]: the certificate's fingerprint must be pinned,
///   and `now` must be within its validity period.
///
/// In both cases a keyUsage extension must include digitalSignature (RFC
/// 4945 section 5.1.3.2), `id` (the peer's ID payload) must be in the
/// certificate (RFC 4945 section 3.1; see `check_certificate_identity`) and
/// must be the identity the configuration `expected`.
pub fn verify_peer(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    trust: &Trust,
    now: UnixTime,
    id: &Identity,
    expected: &Identity,
) -> Result<PeerPublicKey, CertError> {
    let (_, cert) = X509Certificate::from_der(end_entity.as_ref())
        .map_err(|_| CertError::Malformed("certificate DER"))?;
    match &trust.0 {
        Model::Ca { anchors, crls, .. } => {
            let ee = EndEntityCert::try_from(end_entity).map_err(map_webpki)?;
            let crl_refs: Vec<&CertRevocationList<'_>> = crls.iter().collect();
            let revocation = RevocationOptionsBuilder::new(&crl_refs).ok().map(|b| {
                b.with_depth(RevocationCheckDepth::Chain)
                    .with_status_policy(UnknownStatusPolicy::Allow)
                    .with_expiration_policy(ExpirationPolicy::Ignore)
                    .build()
            });
            ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                anchors,
                intermediates,
                now,
                IkeKeyPurpose,
                revocation,
                None,
            )
            .map_err(map_webpki)?;
        }
        Model::Pinned { fingerprints } => {
            let fp = fingerprint(end_entity);
            if !fingerprints.contains(&fp) {
                return Err(CertError::NotPinned(super::describe::hex_string(&fp)));
            }
            check_validity(&cert, now)?;
        }
    }
    check_key_usage(&cert)?;
    check_certificate_identity(&cert, id)?;
    check_expected_identity(id, expected)?;
    PeerPublicKey::from_parsed(&cert)
}

fn check_validity(cert: &X509Certificate<'_>, now: UnixTime) -> Result<(), CertError> {
    let now = now.as_secs();
    let not_before = u64::try_from(cert.validity().not_before.timestamp()).unwrap_or(0);
    let not_after = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    if now < not_before {
        return Err(CertError::NotYetValid { not_before, now });
    }
    if now > not_after {
        return Err(CertError::Expired { not_after, now });
    }
    Ok(())
}

fn check_key_usage(cert: &X509Certificate<'_>) -> Result<(), CertError> {
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.digital_signature() => Err(CertError::KeyUsage(
            "keyUsage without digitalSignature".into(),
        )),
        Ok(_) => Ok(()),
        Err(_) => Err(CertError::Malformed("keyUsage extension")),
    }
}

/// The extended key usage policy of RFC 4945 section 5.1.3.12, widened to
/// the TLS purposes (see [`verify_peer`]).
struct IkeKeyPurpose;

/// id-kp-ipsecIKE (1.3.6.1.5.5.7.3.17), anyExtendedKeyUsage (2.5.29.37.0),
/// id-kp-serverAuth and id-kp-clientAuth, as DER OID contents.
const IKE_PURPOSES: [&[u8]; 4] = [
    &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x11],
    &[0x55, 0x1d, 0x25, 0x00],
    &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01],
    &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02],
];

impl ExtendedKeyUsageValidator for IkeKeyPurpose {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let mut present = Vec::new();
        for id in iter {
            let id = id?;
            if IKE_PURPOSES.iter().any(|p| KeyPurposeId::new(p) == id) {
                return Ok(());
            }
            present.push(id.to_decoded_oid());
        }
        if present.is_empty() {
            Ok(())
        } else {
            Err(webpki::Error::RequiredEkuNotFoundContext(
                webpki::RequiredEkuNotFoundContext {
                    required: webpki::KeyUsage::required(IKE_PURPOSES[0]),
                    present,
                },
            ))
        }
    }
}

fn map_webpki(e: webpki::Error) -> CertError {
    use webpki::Error as E;
    match e {
        E::CertExpired { time, not_after } => CertError::Expired {
            not_after: not_after.as_secs(),
            now: time.as_secs(),
        },
        E::CertNotValidYet { time, not_before } => CertError::NotYetValid {
            not_before: not_before.as_secs(),
            now: time.as_secs(),
        },
        E::UnknownIssuer => CertError::UnknownIssuer,
        E::CertRevoked => CertError::Revoked,
        E::InvalidSignatureForPublicKey => {
            CertError::BadSignature("certificate signature does not verify")
        }
        E::BadDer | E::BadDerTime | E::TrailingData(_) | E::MalformedExtensions => {
            CertError::Malformed("certificate DER")
        }
        E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            CertError::UnsupportedAlgorithm(format!("certificate signature: {e}"))
        }
        E::RequiredEkuNotFoundContext(_) => {
            CertError::KeyUsage("extended key usage does not allow IKE".into())
        }
        E::CaUsedAsEndEntity => CertError::KeyUsage("a CA certificate used as a peer's".into()),
        E::EndEntityUsedAsCa => {
            CertError::KeyUsage("an end-entity certificate used as a CA".into())
        }
        E::InvalidCrlSignatureForPublicKey
        | E::IssuerNotCrlSigner
        | E::UnsupportedCrlSignatureAlgorithmContext(_)
        | E::UnsupportedCrlSignatureAlgorithmForPublicKeyContext(_)
        | E::UnsupportedDeltaCrl
        | E::UnsupportedIndirectCrl
        | E::UnsupportedCrlIssuingDistributionPoint
        | E::UnsupportedRevocationReasonsPartitioning => CertError::Crl(format!("{e}")),
        e => CertError::Invalid(format!("{e}")),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose, SanType};

    use super::*;
    use crate::cert::KeyType;
    use crate::cert::testutil::{LeafSpec, NOW, TestCa, at, now, self_signed};

    fn fqdn(s: &str) -> Identity {
        Identity::Fqdn(s.as_bytes().to_vec())
    }

    fn ca_trust(ca: &TestCa, crls: Vec<Vec<u8>>) -> Trust {
        Trust::ca_from_der(vec![ca.cert.clone()], crls).unwrap()
    }

    /// root -> intermediate -> leaf.
    fn chain(leaf: LeafSpec<'_>) -> (TestCa, TestCa, CertificateDer<'static>) {
        let root = TestCa::root("Root CA", KeyType::EcdsaP256);
        let sub = root.intermediate("Sub CA", KeyType::EcdsaP384);
        let (cert, _) = sub.leaf(leaf);
        (root, sub, cert)
    }

    #[test]
    fn cert_trust_describe() {
        let ca = TestCa::root("Root CA", KeyType::EcdsaP256);
        let trust = ca_trust(&ca, vec![ca.crl(&[1])]);
        assert_eq!(trust.describe(), "CA O=tunsec test, CN=Root CA (1 CRLs)");
        let (cert, _) = self_signed(LeafSpec::new("n", KeyType::Ed25519));
        let pinned = Trust::pinned(&[cert], &[[0; 32]]);
        assert_eq!(pinned.describe(), "pinned (2 certificates)");
    }

    #[test]
    fn cert_chain_accepted_for_every_key_type() {
        let root = TestCa::root("Root CA", KeyType::EcdsaP256);
        for kind in [
            KeyType::EcdsaP256,
            KeyType::EcdsaP384,
            KeyType::Rsa,
            KeyType::Ed25519,
        ] {
            let sub = root.intermediate("Sub CA", kind);
            let (cert, _) = sub.leaf(LeafSpec::new("node-1.example", kind));
            let id = fqdn("node-1.example");
            let key = verify_peer(
                &cert,
                std::slice::from_ref(&sub.cert),
                &ca_trust(&root, vec![]),
                now(),
                &id,
                &id,
            )
            .unwrap();
            assert_eq!(key.key_type(), kind);
            // Without the intermediate there is no path.
            assert_eq!(
                verify_peer(&cert, &[], &ca_trust(&root, vec![]), now(), &id, &id),
                Err(CertError::UnknownIssuer)
            );
        }
    }

    #[test]
    fn cert_other_ca_refused() {
        let (_, sub, cert) = chain(LeafSpec::new("node-1", KeyType::EcdsaP256));
        let other = TestCa::root("Other CA", KeyType::EcdsaP256);
        let id = fqdn("node-1");
        let ims = [sub.cert.clone()];
        // A CA of the same name but another key: an impostor.
        let impostor = TestCa::root("Root CA", KeyType::EcdsaP256);
        assert_eq!(
            verify_peer(&cert, &ims, &ca_trust(&impostor, vec![]), now(), &id, &id),
            Err(CertError::BadSignature(
                "certificate signature does not verify"
            ))
        );
        let err = verify_peer(&cert, &ims, &ca_trust(&other, vec![]), now(), &id, &id).unwrap_err();
        assert_eq!(err, CertError::UnknownIssuer);
        assert_eq!(err.to_string(), "unknown issuer: no chain to a trusted CA");
    }

    #[test]
    fn cert_validity_period() {
        let (root, sub, cert) = chain(LeafSpec::new("node-1", KeyType::EcdsaP256));
        let trust = ca_trust(&root, vec![]);
        let id = fqdn("node-1");
        let ims = [sub.cert.clone()];
        let year = 365 * 86_400;
        assert!(matches!(
            verify_peer(&cert, &ims, &trust, at(NOW + 2 * year), &id, &id),
            Err(CertError::Expired { .. })
        ));
        assert!(matches!(
            verify_peer(&cert, &ims, &trust, at(NOW - 2 * year), &id, &id),
            Err(CertError::NotYetValid { .. })
        ));
        // The leaf alone out of date, the CAs still valid.
        let mut spec = LeafSpec::new("node-1", KeyType::EcdsaP256);
        spec.not_after = NOW as i64 - 1;
        let (old, _) = sub.leaf(spec);
        let err = verify_peer(&old, &ims, &trust, now(), &id, &id).unwrap_err();
        assert_eq!(
            err,
            CertError::Expired {
                not_after: NOW - 1,
                now: NOW
            }
        );
        assert!(err.to_string().starts_with("certificate expired"));
    }

    #[test]
    fn cert_revoked_by_crl() {
        let mut spec = LeafSpec::new("node-1", KeyType::EcdsaP256);
        spec.serial = 4242;
        let (root, sub, cert) = chain(spec);
        let id = fqdn("node-1");
        let ims = [sub.cert.clone()];
        // The intermediate's CRL revokes the leaf.
        let trust = ca_trust(&root, vec![sub.crl(&[4242])]);
        assert_eq!(
            verify_peer(&cert, &ims, &trust, now(), &id, &id),
            Err(CertError::Revoked)
        );
        // A CRL that revokes others only.
        let trust = ca_trust(&root, vec![sub.crl(&[1, 2, 3])]);
        assert!(verify_peer(&cert, &ims, &trust, now(), &id, &id).is_ok());
        // The root's CRL revokes the intermediate (serial chosen by rcgen):
        // read it from the certificate.
        let (_, sub_parsed) = X509Certificate::from_der(&sub.cert).unwrap();
        let serial = sub_parsed.tbs_certificate.serial.to_u64_digits();
        if serial.len() == 1 {
            let trust = ca_trust(&root, vec![root.crl(&serial)]);
            assert_eq!(
                verify_peer(&cert, &ims, &trust, now(), &id, &id),
                Err(CertError::Revoked)
            );
        }
        // A CRL in PEM through Trust::ca.
        let crl_pem = pem::encode(&pem::Pem::new("X509 CRL", sub.crl(&[4242])));
        let root_pem = pem::encode(&pem::Pem::new("CERTIFICATE", root.cert.to_vec()));
        let trust = Trust::ca(&[root_pem.as_bytes()], &[crl_pem.as_bytes()]).unwrap();
        assert_eq!(
            verify_peer(&cert, &ims, &trust, now(), &id, &id),
            Err(CertError::Revoked)
        );
        assert!(matches!(
            Trust::ca(&[root_pem.as_bytes()], &[b"not a CRL"]),
            Err(CertError::Crl(_))
        ));
        // A certificate given as a CRL.
        assert!(matches!(
            Trust::ca(&[root_pem.as_bytes()], &[root_pem.as_bytes()]),
            Err(CertError::Crl(_))
        ));
    }

    #[test]
    fn cert_identities() {
        let mut spec = LeafSpec::new("chassis-1", KeyType::EcdsaP256);
        spec.sans = vec![
            SanType::DnsName("node-1.example".try_into().unwrap()),
            SanType::Rfc822Name("ops@Example.org".try_into().unwrap()),
            SanType::IpAddress("192.0.2.7".parse().unwrap()),
            SanType::IpAddress("2001:db8::7".parse().unwrap()),
        ];
        let (root, sub, cert) = chain(spec);
        let trust = ca_trust(&root, vec![]);
        let ims = [sub.cert.clone()];
        let (_, parsed) = X509Certificate::from_der(&cert).unwrap();
        let dn = parsed.subject().as_raw().to_vec();
        let good = [
            fqdn("node-1.example"),
            fqdn("NODE-1.example."),
            // OVN: the CN is the chassis name.
            fqdn("chassis-1"),
            Identity::Rfc822(b"ops@example.org".to_vec()),
            Identity::Ipv4("192.0.2.7".parse().unwrap()),
            Identity::Ipv6("2001:db8::7".parse().unwrap()),
            Identity::DerAsn1Dn(dn.clone()),
        ];
        for id in &good {
            assert!(
                verify_peer(&cert, &ims, &trust, now(), id, id).is_ok(),
                "{id:?}"
            );
        }
        let mut other_dn = dn.clone();
        *other_dn.last_mut().unwrap() ^= 1;
        let bad = [
            fqdn("node-2.example"),
            Identity::Rfc822(b"dev@example.org".to_vec()),
            Identity::Ipv4("192.0.2.8".parse().unwrap()),
            Identity::Ipv6("2001:db8::8".parse().unwrap()),
            Identity::DerAsn1Dn(other_dn),
            Identity::KeyId(b"chassis-1".to_vec()),
        ];
        for id in &bad {
            let err = verify_peer(&cert, &ims, &trust, now(), id, id).unwrap_err();
            assert!(
                matches!(err, CertError::IdentityMismatch(_)),
                "{id:?}: {err}"
            );
        }
        // In the certificate, but not the identity the configuration expects.
        let err = verify_peer(
            &cert,
            &ims,
            &trust,
            now(),
            &fqdn("node-1.example"),
            &fqdn("chassis-1"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "identity mismatch: peer is ID_FQDN node-1.example, the configuration expects ID_FQDN chassis-1"
        );
    }

    #[test]
    fn cert_pinned() {
        let (cert, _) = self_signed(LeafSpec::new("node-1", KeyType::Ed25519));
        let (other, _) = self_signed(LeafSpec::new("node-1", KeyType::Ed25519));
        let id = fqdn("node-1");
        let by_cert = Trust::pinned(std::slice::from_ref(&cert), &[]);
        let by_fp = Trust::pinned(&[], &[fingerprint(&cert)]);
        for trust in [&by_cert, &by_fp] {
            assert!(verify_peer(&cert, &[], trust, now(), &id, &id).is_ok());
            assert!(matches!(
                verify_peer(&other, &[], trust, now(), &id, &id),
                Err(CertError::NotPinned(_))
            ));
            assert!(matches!(
                verify_peer(&cert, &[], trust, at(NOW * 2), &id, &id),
                Err(CertError::Expired { .. })
            ));
            assert!(matches!(
                verify_peer(&cert, &[], trust, at(0), &id, &id),
                Err(CertError::NotYetValid { .. })
            ));
            assert!(matches!(
                verify_peer(&cert, &[], trust, now(), &fqdn("node-2"), &fqdn("node-2")),
                Err(CertError::IdentityMismatch(_))
            ));
        }
        assert!(by_fp.certreq_data().is_empty());
        // A self-signed certificate is no CA of its own.
        let trust = Trust::ca_from_der(vec![other.clone()], vec![]).unwrap();
        assert!(verify_peer(&cert, &[], &trust, now(), &id, &id).is_err());
    }

    #[test]
    fn cert_key_usage_and_eku() {
        let root = TestCa::root("Root CA", KeyType::EcdsaP256);
        let trust = ca_trust(&root, vec![]);
        let id = fqdn("node-1");
        let mut spec = LeafSpec::new("node-1", KeyType::EcdsaP256);
        spec.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
        let (cert, _) = root.leaf(spec);
        assert!(matches!(
            verify_peer(&cert, &[], &trust, now(), &id, &id),
            Err(CertError::KeyUsage(_))
        ));
        // No keyUsage at all is fine.
        let mut spec = LeafSpec::new("node-1", KeyType::EcdsaP256);
        spec.key_usages = vec![];
        let (cert, _) = root.leaf(spec);
        assert!(verify_peer(&cert, &[], &trust, now(), &id, &id).is_ok());
    }

    #[test]
    fn cert_extended_key_usage() {
        let root = TestCa::root("Root CA", KeyType::EcdsaP256);
        let id = fqdn("node-1");
        for (eku, ok) in [
            (vec![ExtendedKeyUsagePurpose::ServerAuth], true),
            (vec![ExtendedKeyUsagePurpose::ClientAuth], true),
            (vec![ExtendedKeyUsagePurpose::Any], true),
            (
                vec![ExtendedKeyUsagePurpose::Other(vec![
                    1, 3, 6, 1, 5, 5, 7, 3, 17,
                ])],
                true,
            ),
            (vec![ExtendedKeyUsagePurpose::CodeSigning], false),
        ] {
            let key = crate::cert::testutil::key(KeyType::EcdsaP256);
            let mut p = rcgen::CertificateParams::new(vec!["node-1".to_string()]).unwrap();
            p.not_before = time::OffsetDateTime::from_unix_timestamp(NOW as i64 - 10).unwrap();
            p.not_after = time::OffsetDateTime::from_unix_timestamp(NOW as i64 + 10).unwrap();
            p.extended_key_usages = eku.clone();
            let cert = p.signed_by(&key, &root.issuer).unwrap().der().clone();
            let r = verify_peer(&cert, &[], &ca_trust(&root, vec![]), now(), &id, &id);
            assert_eq!(r.is_ok(), ok, "{eku:?}: {r:?}");
        }
    }

    #[test]
    fn cert_certreq_data() {
        let a = TestCa::root("A", KeyType::EcdsaP256);
        let b = TestCa::root("B", KeyType::Rsa);
        let trust = Trust::ca_from_der(vec![a.cert.clone(), b.cert.clone()], vec![]).unwrap();
        let data = trust.certreq_data();
        assert_eq!(data.len(), 40);
        let (_, parsed) = X509Certificate::from_der(&a.cert).unwrap();
        let spki = parsed.tbs_certificate.subject_pki.raw;
        assert_eq!(
            &data[..20],
            digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, spki).as_ref()
        );
        assert!(Trust::ca_from_der(vec![], vec![]).is_err());
    }

    proptest! {
        #[test]
        fn cert_malformed_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let der = CertificateDer::from(bytes.clone());
            let id = fqdn("x");
            let _ = verify_peer(&der, std::slice::from_ref(&der), &Trust::pinned(std::slice::from_ref(&der), &[]), now(), &id, &id);
            let _ = PeerPublicKey::from_certificate(&der);
            let _ = Trust::ca_from_der(vec![der.clone()], vec![bytes.clone()]);
            let _ = crate::cert::parse_auth_data(&bytes);
            let _ = crate::cert::parse_hash_algorithms(&bytes);
            let _ = crate::cert::PrivateKey::from_pem_or_der(&bytes);
            let _ = parse_certificates(&bytes);
        }

        #[test]
        fn cert_mangled_certificate_never_panics(pos in 0usize..2000, val in any::<u8>()) {
            let (cert, _) = self_signed(LeafSpec::new("node-1", KeyType::EcdsaP256));
            let mut bytes = cert.to_vec();
            let pos = pos % bytes.len();
            bytes[pos] = val;
            let der = CertificateDer::from(bytes);
            let id = fqdn("node-1");
            let _ = verify_peer(&der, &[], &Trust::pinned(std::slice::from_ref(&der), &[]), now(), &id, &id);
            let _ = verify_peer(&der, &[], &Trust::pinned(std::slice::from_ref(&cert), &[]), now(), &id, &id);
        }
    }
}
