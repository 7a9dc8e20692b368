//! Interop: a PKI made by strongSwan's `pki` tool and AUTH signatures made
//! by OpenSSL (`crates/ike/testdata/pki/`, see `make.sh` there), checked
//! with this module.

use super::testutil::at;
use super::*;
use crate::message::{AuthMethod, Identity};

/// 2027-01-01T00:00:00Z: inside the test PKI's ten years.
const WHEN: u64 = 1_798_761_600;

macro_rules! pki {
    ($($name:literal),+) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/pki/", $($name),+))
    };
}

struct Set {
    kind: &'static str,
    ca: &'static [u8],
    crl: &'static [u8],
    node_cert: &'static [u8],
    node_key: &'static [u8],
    revoked_cert: &'static [u8],
}

/// The set of one key type, from the files `make.sh` names after it.
macro_rules! set {
    ($kind:literal) => {
        Set {
            kind: $kind,
            ca: pki!("ca-", $kind, ".pem"),
            crl: pki!("ca-", $kind, ".crl"),
            node_cert: pki!("node-", $kind, ".pem"),
            node_key: pki!("node-", $kind, ".key"),
            revoked_cert: pki!("revoked-", $kind, ".pem"),
        }
    };
}

const SETS: [Set; 2] = [set!("ecdsa"), set!("rsa")];

#[test]
fn cert_strongswan_pki_chains_crls_and_identities() {
    for set in &SETS {
        let kind = set.kind;
        let trust = Trust::ca(&[set.ca], &[set.crl]).unwrap();
        let node = &parse_certificates(set.node_cert).unwrap()[0];
        let fqdn = Identity::Fqdn(format!("node-{kind}.example").into_bytes());
        for id in [
            fqdn.clone(),
            Identity::Ipv4("192.0.2.1".parse().unwrap()),
            Identity::Rfc822(b"node@tunsec.test".to_vec()),
        ] {
            verify_peer(node, &[], &trust, at(WHEN), &id, &id)
                .unwrap_or_else(|e| panic!("{kind} {id:?}: {e}"));
        }
        // The DN as strongSwan encoded it.
        let (_, parsed) = x509_parser::parse_x509_certificate(node).unwrap();
        let dn = Identity::DerAsn1Dn(parsed.subject().as_raw().to_vec());
        assert!(verify_peer(node, &[], &trust, at(WHEN), &dn, &dn).is_ok());

        let revoked = &parse_certificates(set.revoked_cert).unwrap()[0];
        let id = Identity::Fqdn(format!("revoked-{kind}.example").into_bytes());
        assert_eq!(
            verify_peer(revoked, &[], &trust, at(WHEN), &id, &id),
            Err(CertError::Revoked),
            "{kind}"
        );
        // Without the CRL the same certificate passes.
        let no_crl = Trust::ca(&[set.ca], &[]).unwrap();
        assert!(verify_peer(revoked, &[], &no_crl, at(WHEN), &id, &id).is_ok());
        // strongSwan writes PKCS#1 and SEC1 keys; they load, and match.
        let creds = Credentials::from_pem(set.node_key, set.node_cert).unwrap();
        let public = verify_peer(node, &[], &trust, at(WHEN), &fqdn, &fqdn).unwrap();
        for &scheme in creds.key.schemes() {
            let data = creds
                .key
                .auth_data(AuthMethod::DigitalSignature, scheme, b"octets")
                .unwrap();
            assert_eq!(
                public.verify(AuthMethod::DigitalSignature, &data, b"octets"),
                Ok(Some(scheme))
            );
        }
    }
}

#[test]
fn cert_openssl_signatures_verify() {
    let message = pki!("message.txt");
    let key = |set: &Set| {
        PeerPublicKey::from_certificate(&parse_certificates(set.node_cert).unwrap()[0]).unwrap()
    };
    let (ecdsa, rsa) = (key(&SETS[0]), key(&SETS[1]));
    let cases: [(&PeerPublicKey, AuthMethod, Vec<u8>); 4] = [
        (
            &ecdsa,
            AuthMethod::DigitalSignature,
            encode_auth_data(SignatureScheme::EcdsaSha256, pki!("node-ecdsa.sha256.sig")),
        ),
        (
            &rsa,
            AuthMethod::DigitalSignature,
            encode_auth_data(
                SignatureScheme::RsaPssSha256,
                pki!("node-rsa.pss-sha256.sig"),
            ),
        ),
        (
            &rsa,
            AuthMethod::DigitalSignature,
            encode_auth_data(
                SignatureScheme::RsaPkcs1Sha256,
                pki!("node-rsa.pkcs1-sha256.sig"),
            ),
        ),
        // AUTH method 1: RSASSA-PKCS1-v1_5 with SHA-1.
        (
            &rsa,
            AuthMethod::RsaSignature,
            pki!("node-rsa.pkcs1-sha1.sig").to_vec(),
        ),
    ];
    for (key, method, data) in cases {
        assert!(key.verify(method, &data, message).is_ok(), "{method:?}");
        assert!(key.verify(method, &data, b"other").is_err(), "{method:?}");
    }
}

/// strongSwan builds its RFC 7427 AlgorithmIdentifiers and its certificate
/// signature algorithms with the same code: the ones in its certificates
/// must be our Appendix A byte strings.
#[test]
fn cert_strongswan_algorithm_identifiers_match_rfc7427() {
    let cases: [(&[u8], SignatureScheme); 3] = [
        (pki!("node-ecdsa.pem"), SignatureScheme::EcdsaSha256),
        (pki!("node-rsa.pem"), SignatureScheme::RsaPssSha256),
        (pki!("ca-rsa.pem"), SignatureScheme::RsaPkcs1Sha256),
    ];
    for (pem, scheme) in cases {
        let der = &parse_certificates(pem).unwrap()[0];
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm,
        // signatureValue }: the AlgorithmIdentifier follows the TBS.
        let header = if der[1] & 0x80 != 0 {
            2 + usize::from(der[1] & 0x7f)
        } else {
            2
        };
        let start = header + cert.tbs_certificate.as_ref().len();
        let id = scheme.algorithm_identifier();
        assert_eq!(
            &der[start..start + id.len()],
            id,
            "{scheme}: {}",
            describe::hex_string(&der[start..start + id.len()])
        );
    }
}
