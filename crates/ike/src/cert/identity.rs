//! Matching an IKE identity against a certificate (RFC 4945 section 3.1)
//! and against the identity the configuration expects.

use std::net::IpAddr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::CertError;
use super::describe::describe;
use crate::message::Identity;

/// Checks that the certificate vouches for `id` (RFC 4945 section 3.1):
///
/// - ID_IPV4_ADDR / ID_IPV6_ADDR: an iPAddress subjectAltName (3.1.1).
/// - ID_FQDN: a dNSName subjectAltName (3.1.2), compared without regard to
///   case; or, because OVN names a chassis by its certificate's CN, a
///   subject commonName equal to the FQDN.
/// - ID_RFC822_ADDR: an rfc822Name subjectAltName (3.1.3).
/// - ID_DER_ASN1_DN: the subject DN (3.1.5): octet for octet, or the same
///   attributes in the same order with equal values (see `dn_eq`), since
///   peers encode the same DN with different string types.
///
/// Other ID types (ID_KEY_ID, ID_DER_ASN1_GN) are refused.
pub(crate) fn check_certificate_identity(
    cert: &X509Certificate<'_>,
    id: &Identity,
) -> Result<(), CertError> {
    let sans: Vec<GeneralName<'_>> = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext.value.general_names.clone(),
        Ok(None) => Vec::new(),
        Err(_) => return Err(CertError::Malformed("subjectAltName extension")),
    };
    let found = match id {
        Identity::Ipv4(a) => sans.iter().any(|n| ip_san(n) == Some(IpAddr::V4(*a))),
        Identity::Ipv6(a) => sans.iter().any(|n| ip_san(n) == Some(IpAddr::V6(*a))),
        Identity::Fqdn(name) => {
            sans.iter()
                .any(|n| matches!(n, GeneralName::DNSName(d) if dns_eq(d.as_bytes(), name)))
                || cert
                    .subject()
                    .iter_common_name()
                    .filter_map(|cn| cn.as_str().ok())
                    .any(|cn| dns_eq(cn.as_bytes(), name))
        }
        Identity::Rfc822(addr) => sans
            .iter()
            .any(|n| matches!(n, GeneralName::RFC822Name(e) if email_eq(e.as_bytes(), addr))),
        Identity::DerAsn1Dn(dn) => dn_eq(cert.subject().as_raw(), dn),
        Identity::KeyId(_) | Identity::Other { .. } => {
            return Err(CertError::IdentityMismatch(format!(
                "{} cannot be checked against a certificate",
                describe(id)
            )));
        }
    };
    if found {
        Ok(())
    } else {
        Err(CertError::IdentityMismatch(format!(
            "{} is not in the certificate (subject {})",
            describe(id),
            cert.subject()
        )))
    }
}

/// Checks that a certificate (DER) vouches for `id`, by the rules of
/// `check_certificate_identity` (RFC 4945 section 3.1): for a
/// configuration's own identity, before it is sent.
pub fn check_identity(
    cert: &rustls_pki_types::CertificateDer<'_>,
    id: &Identity,
) -> Result<(), CertError> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|_| CertError::Malformed("certificate DER"))?;
    check_certificate_identity(&parsed, id)
}

/// Checks that the peer's identity is the one the configuration expects.
pub(crate) fn check_expected_identity(id: &Identity, expected: &Identity) -> Result<(), CertError> {
    let same = match (id, expected) {
        (Identity::Fqdn(a), Identity::Fqdn(b)) => dns_eq(a, b),
        (Identity::Rfc822(a), Identity::Rfc822(b)) => email_eq(a, b),
        (Identity::DerAsn1Dn(a), Identity::DerAsn1Dn(b)) => dn_eq(a, b),
        (a, b) => a == b,
    };
    if same {
        Ok(())
    } else {
        Err(CertError::UnexpectedIdentity {
            presented: id.clone(),
            expected: expected.clone(),
        })
    }
}

fn ip_san(name: &GeneralName<'_>) -> Option<IpAddr> {
    match name {
        GeneralName::IPAddress(b) => match b.len() {
            4 => Some(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?)),
            16 => Some(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
            _ => None,
        },
        _ => None,
    }
}

/// Distinguished names (DER) are equal if their octets are, or if they
/// hold the same attribute types in the same RDN order with values equal
/// without regard to ASCII case and outer spaces (RFC 5280 section 7.1
/// asks for caseIgnoreMatch; the string types, PrintableString or
/// UTF8String, may differ).
pub fn dn_eq(a: &[u8], b: &[u8]) -> bool {
    use x509_parser::x509::X509Name;
    if a == b {
        return true;
    }
    let (Ok((_, a)), Ok((_, b))) = (X509Name::from_der(a), X509Name::from_der(b)) else {
        return false;
    };
    let attributes = |n: &X509Name<'_>| -> Option<Vec<(String, String)>> {
        n.iter_attributes()
            .map(|at| {
                let value = at.as_str().ok()?.trim().to_ascii_lowercase();
                Some((at.attr_type().to_id_string(), value))
            })
            .collect()
    };
    let rdns = |n: &X509Name<'_>| n.iter_rdn().count();
    match (attributes(&a), attributes(&b)) {
        (Some(x), Some(y)) => x == y && rdns(&a) == rdns(&b),
        _ => false,
    }
}

/// DNS names compare without regard to ASCII case; a trailing dot is
/// ignored.
fn dns_eq(a: &[u8], b: &[u8]) -> bool {
    let trim = |s: &[u8]| s.strip_suffix(b".").unwrap_or(s).to_vec();
    trim(a).eq_ignore_ascii_case(&trim(b))
}

/// E-mail addresses: the local part exactly, the domain without regard to
/// case.
fn email_eq(a: &[u8], b: &[u8]) -> bool {
    let split = |s: &[u8]| {
        let at = s.iter().rposition(|&c| c == b'@').unwrap_or(s.len());
        (s[..at].to_vec(), s[at..].to_vec())
    };
    let (la, da) = split(a);
    let (lb, db) = split(b);
    la == lb && da.eq_ignore_ascii_case(&db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_comparisons() {
        assert!(dns_eq(b"Node-1.Example.", b"node-1.example"));
        assert!(!dns_eq(b"node-1.example", b"node-2.example"));
        assert!(email_eq(b"jane@Example.COM", b"jane@example.com"));
        assert!(!email_eq(b"Jane@example.com", b"jane@example.com"));
        assert!(
            check_expected_identity(
                &Identity::Fqdn(b"A.b".to_vec()),
                &Identity::Fqdn(b"a.B".to_vec())
            )
            .is_ok()
        );
        assert!(
            check_expected_identity(
                &Identity::Fqdn(b"a".to_vec()),
                &Identity::Rfc822(b"a".to_vec())
            )
            .is_err()
        );
    }

    /// The subject DER of a throwaway certificate with this DN.
    fn dn(attrs: &[(rcgen::DnType, rcgen::DnValue)]) -> Vec<u8> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in attrs {
            p.distinguished_name.push(t.clone(), v.clone());
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let (_, c) = X509Certificate::from_der(cert.der()).unwrap();
        c.subject().as_raw().to_vec()
    }

    #[test]
    fn cert_dn_comparison_ignores_string_type_and_case() {
        use rcgen::{DnType, DnValue};
        let printable = |s: &str| DnValue::PrintableString(s.try_into().unwrap());
        let utf8 = |s: &str| DnValue::Utf8String(s.into());
        let a = dn(&[
            (DnType::CountryName, printable("CH")),
            (DnType::OrganizationName, printable("strongSwan")),
            (DnType::CommonName, printable("moon")),
        ]);
        let b = dn(&[
            (DnType::CountryName, printable("CH")),
            (DnType::OrganizationName, utf8("strongswan")),
            (DnType::CommonName, utf8("moon")),
        ]);
        assert_ne!(a, b);
        assert!(dn_eq(&a, &b));
        let other_cn = dn(&[
            (DnType::CountryName, printable("CH")),
            (DnType::OrganizationName, utf8("strongSwan")),
            (DnType::CommonName, utf8("sun")),
        ]);
        assert!(!dn_eq(&a, &other_cn));
        // Another order is another name.
        let reordered = dn(&[
            (DnType::OrganizationName, printable("strongSwan")),
            (DnType::CountryName, printable("CH")),
            (DnType::CommonName, printable("moon")),
        ]);
        assert!(!dn_eq(&a, &reordered));
        assert!(!dn_eq(&a, b"garbage") && !dn_eq(b"garbage", b"other"));
        assert!(check_expected_identity(&Identity::DerAsn1Dn(a), &Identity::DerAsn1Dn(b)).is_ok());
    }
}
