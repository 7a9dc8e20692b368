//! Identities as the config writes them (`local_id`, `remote_id`): an IP
//! address, a name, `keyid:TEXT`, and the typed ones (`dn:`, `fqdn:`,
//! `email:`, `ip:`), with strongSwan's DN notation both ways.

use std::net::IpAddr;

use tunsec_ike::message::Identity;

use super::{ConfigError, invalid, quoted};

/// An identity as written in the config: an IP address is ID_IPV4_ADDR or
/// ID_IPV6_ADDR, `keyid:TEXT` is ID_KEY_ID, anything else is ID_FQDN.
pub(crate) fn parse_identity(field: &str, value: &str) -> Result<Identity, ConfigError> {
    if let Ok(addr) = value.parse::<IpAddr>() {
        return Ok(ip_identity(addr));
    }
    if let Some(typed) = parse_typed_identity(field, value) {
        return typed;
    }
    let (make, text): (fn(Vec<u8>) -> Identity, &str) = match value.strip_prefix("keyid:") {
        Some(rest) => (Identity::KeyId, rest),
        None => (Identity::Fqdn, value),
    };
    if text.is_empty() || text.len() > 255 || text.chars().any(|c| c.is_whitespace()) {
        return Err(invalid(
            field,
            quoted(value),
            "is not an identity (an IP address, a name like host-b.example, dn:CN=..., fqdn:NAME, email:ADDR, ip:ADDR, or keyid:TEXT)",
        ));
    }
    Ok(make(text.as_bytes().to_vec()))
}

/// The IP-address identity of an underlay address.
pub fn ip_identity(addr: IpAddr) -> Identity {
    match addr {
        IpAddr::V4(a) => Identity::Ipv4(a),
        IpAddr::V6(a) => Identity::Ipv6(a),
    }
}

/// Parses a typed identity: `dn:C=CH, O=Example, CN=node-1` (ID_DER_ASN1_DN),
/// `fqdn:node-1.example` (ID_FQDN), `email:a@example.com`
/// (ID_RFC822_ADDR), `ip:192.0.2.1` or `ip:2001:db8::1` (ID_IPV4_ADDR /
/// ID_IPV6_ADDR), `keyid:TEXT` (ID_KEY_ID); without a prefix, an IP
/// address or a name (ID_FQDN). `None` if `value` has no known prefix.
fn parse_typed_identity(field: &str, value: &str) -> Option<Result<Identity, ConfigError>> {
    let (prefix, rest) = value.split_once(':')?;
    let bad = |what: &str| Err(invalid(field, quoted(value), format!("is not {what}")));
    Some(match prefix {
        "dn" => dn_to_der(rest)
            .map(Identity::DerAsn1Dn)
            .map_err(|reason| invalid(field, quoted(value), reason)),
        "fqdn" if !rest.is_empty() && !rest.contains(char::is_whitespace) && rest.len() < 256 => {
            Ok(Identity::Fqdn(rest.as_bytes().to_vec()))
        }
        "fqdn" => bad("a name (fqdn:node-1.example)"),
        "email" if rest.contains('@') && !rest.contains(char::is_whitespace) => {
            Ok(Identity::Rfc822(rest.as_bytes().to_vec()))
        }
        "email" => bad("an e-mail address (email:node@example.com)"),
        "ip" => match rest.parse::<IpAddr>() {
            Ok(a) => Ok(ip_identity(a)),
            Err(_) => bad("an IP address (ip:192.0.2.1)"),
        },
        _ => return None,
    })
}

/// The attribute types a `dn:` identity may use, with their OIDs and
/// whether the value is an IA5String.
const DN_TYPES: [(&str, &[u64], bool); 10] = [
    ("C", &[2, 5, 4, 6], false),
    ("ST", &[2, 5, 4, 8], false),
    ("L", &[2, 5, 4, 7], false),
    ("O", &[2, 5, 4, 10], false),
    ("OU", &[2, 5, 4, 11], false),
    ("CN", &[2, 5, 4, 3], false),
    ("SN", &[2, 5, 4, 5], false),
    ("serialNumber", &[2, 5, 4, 5], false),
    ("E", &[1, 2, 840, 113_549, 1, 9, 1], true),
    ("DC", &[0, 9, 2342, 19_200_300, 100, 1, 25], true),
];

/// Encodes a DN in strongSwan's notation (`C=CH, O=strongSwan, CN=moon`,
/// one attribute per RDN, in the order written; `\,` for a comma in a
/// value) as the DER of an X.501 Name. Values are PrintableString when
/// they can be, else UTF8String (IA5String for E and DC); comparisons are
/// by attribute, so the string type does not matter to matching.
pub fn dn_to_der(text: &str) -> Result<Vec<u8>, String> {
    let mut attrs = Vec::new();
    let mut current = String::new();
    let mut parts = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ',' => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    for part in parts {
        let part = part.trim();
        let Some((name, value)) = part.split_once('=') else {
            return Err(format!(
                "is not a DN: {part:?} is not TYPE=VALUE (as in dn:C=CH, O=Example, CN=node-1)"
            ));
        };
        let (name, value) = (name.trim(), value.trim());
        let Some((_, oid, ia5)) = DN_TYPES
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        else {
            return Err(format!(
                "is not a DN: unknown attribute type {name:?} (C, ST, L, O, OU, CN, SN, E, DC)"
            ));
        };
        if value.is_empty() {
            return Err(format!("is not a DN: {name} has no value"));
        }
        attrs.push((*oid, *ia5, value.to_owned()));
    }
    Ok(yasna::construct_der(|w| {
        w.write_sequence_of(|w| {
            for (oid, ia5, value) in &attrs {
                w.next().write_set_of(|w| {
                    w.next().write_sequence(|w| {
                        w.next()
                            .write_oid(&yasna::models::ObjectIdentifier::from_slice(oid));
                        let printable = value
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c));
                        if *ia5 {
                            w.next().write_ia5_string(value);
                        } else if printable {
                            w.next().write_printable_string(value);
                        } else {
                            w.next().write_utf8_string(value);
                        }
                    });
                });
            }
        });
    }))
}

/// The inverse of [`dn_to_der`]: a DN (DER of an X.501 Name) in
/// strongSwan's notation (`C=CH, O=Example\, Inc., CN=node-1`), as a
/// `dn:` identity takes it; `None` if it holds an attribute type that
/// notation lacks, a multi-valued RDN, or a value that is not a string.
pub fn der_to_dn(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Name};
    let (_, name) = X509Name::from_der(der).ok()?;
    let mut parts = Vec::new();
    for rdn in name.iter_rdn() {
        let [attr] = rdn.iter().collect::<Vec<_>>()[..] else {
            return None;
        };
        let oid: Vec<u64> = attr.attr_type().iter()?.collect();
        let (type_name, _, _) = DN_TYPES.iter().find(|(_, o, _)| *o == oid.as_slice())?;
        let value = attr.as_str().ok()?;
        if value.is_empty() || value.trim() != value {
            return None;
        }
        let escaped = value.replace('\\', "\\\\").replace(',', "\\,");
        parts.push(format!("{type_name}={escaped}"));
    }
    Some(parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_dn_notation() {
        use x509_parser::prelude::FromDer;
        let der = dn_to_der(r"C=CH, O=strong\, Swan, CN=moon, E=moon@example.org").unwrap();
        let (_, name) = x509_parser::x509::X509Name::from_der(&der).unwrap();
        let attrs: Vec<(String, String)> = name
            .iter_attributes()
            .map(|a| (a.attr_type().to_id_string(), a.as_str().unwrap().to_owned()))
            .collect();
        let expected = [
            ("2.5.4.6", "CH"),
            ("2.5.4.10", "strong, Swan"),
            ("2.5.4.3", "moon"),
            ("1.2.840.113549.1.9.1", "moon@example.org"),
        ];
        assert_eq!(
            attrs,
            expected.map(|(a, b)| (a.to_owned(), b.to_owned())).to_vec()
        );
        // One attribute per RDN, in the order written.
        assert_eq!(name.iter_rdn().count(), 4);
    }
}
