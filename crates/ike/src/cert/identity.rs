//! Matching an IKE identity against a certificate (RFC 4945 section 3.1)
//! and against the identity the configuration expects.

use std::net::IpAddr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::CertError;
use crate::message::Identity;

/// Checks that the certificate vouches for `id` (RFC 4945 section 3.1):
///
/// - ID_IPV4_ADDR / ID_IPV6_ADDR: an iPAddress subjectAltName (3.1.1).
/// - ID_FQDN: a dNSName subjectAltName (3.1.2), compared without regard to
///   case; or, because OVN names a chassis by its certificate's CN, a
///   subject commonName equal to the FQDN.
/// - ID_RFC822_ADDR: an rfc822Name subjectAltName (3.1.3).
/// - ID_DER_ASN1_DN: the subject DN, octet for octet (3.1.5).
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
        Identity::DerAsn1Dn(dn) => cert.subject().as_raw() == dn.as_slice(),
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

/// Checks that the peer's identity is the one the configuration expects.
pub(crate) fn check_expected_identity(id: &Identity, expected: &Identity) -> Result<(), CertError> {
    let same = match (id, expected) {
        (Identity::Fqdn(a), Identity::Fqdn(b)) => dns_eq(a, b),
        (Identity::Rfc822(a), Identity::Rfc822(b)) => email_eq(a, b),
        (a, b) => a == b,
    };
    if same {
        Ok(())
    } else {
        Err(CertError::IdentityMismatch(format!(
            "peer is {}, the configuration expects {}",
            describe(id),
            describe(expected)
        )))
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

/// A short description of an identity for log lines.
pub(crate) fn describe(id: &Identity) -> String {
    match id {
        Identity::Ipv4(a) => format!("ID_IPV4_ADDR {a}"),
        Identity::Ipv6(a) => format!("ID_IPV6_ADDR {a}"),
        Identity::Fqdn(n) => format!("ID_FQDN {}", String::from_utf8_lossy(n)),
        Identity::Rfc822(n) => format!("ID_RFC822_ADDR {}", String::from_utf8_lossy(n)),
        Identity::DerAsn1Dn(dn) => match x509_parser::x509::X509Name::from_der(dn) {
            Ok((_, name)) => format!("ID_DER_ASN1_DN {name}"),
            Err(_) => format!("ID_DER_ASN1_DN {}", super::scheme::hex_string(dn)),
        },
        Identity::KeyId(k) => format!("ID_KEY_ID {}", super::scheme::hex_string(k)),
        Identity::Other { id_type, .. } => format!("ID type {id_type:?}"),
    }
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
}
