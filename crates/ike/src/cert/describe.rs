//! Identities and bytes as log lines and errors show them.

use x509_parser::prelude::FromDer;

use crate::message::Identity;

/// A short description of an identity for log lines, by its ID type:
/// `ID_FQDN host-b.example`, `ID_DER_ASN1_DN CN=host-b`.
pub fn describe(id: &Identity) -> String {
    match id {
        Identity::Ipv4(a) => format!("ID_IPV4_ADDR {a}"),
        Identity::Ipv6(a) => format!("ID_IPV6_ADDR {a}"),
        Identity::Fqdn(n) => format!("ID_FQDN {}", String::from_utf8_lossy(n)),
        Identity::Rfc822(n) => format!("ID_RFC822_ADDR {}", String::from_utf8_lossy(n)),
        Identity::DerAsn1Dn(dn) => match x509_parser::x509::X509Name::from_der(dn) {
            Ok((_, name)) => format!("ID_DER_ASN1_DN {name}"),
            Err(_) => format!("ID_DER_ASN1_DN {}", hex_string(dn)),
        },
        Identity::KeyId(k) => format!("ID_KEY_ID {}", hex_string(k)),
        Identity::Other { id_type, .. } => format!("ID type {id_type:?}"),
    }
}

/// Bytes in lower-case hex, without separators.
pub(crate) fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
