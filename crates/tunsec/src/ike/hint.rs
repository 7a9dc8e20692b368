//! What to change when two hosts disagree on an identity: the text of an
//! IKE authentication failure, for the log line and `tunsec status`.
//!
//! One host's `local_id` must be the other host's `remote_id`. When they
//! differ, the refusing host knows both the identity the peer presented
//! and the one its own config expects, so it can say which line to change
//! on which host, with the value to write.

use tunsec_ike::message::Identity;
use tunsec_ike::sa::AuthFailure;
use x509_parser::prelude::{FromDer, X509Name};

use crate::config::der_to_dn;

/// An identity as the config writes it (`fqdn:NAME`, `dn:CN=...`,
/// `email:ADDR`, `ip:ADDR`, `keyid:TEXT`), ready for `local_id` or
/// `remote_id`.
pub(crate) fn show_identity(id: &Identity) -> String {
    match id {
        Identity::Ipv4(a) => format!("ip:{a}"),
        Identity::Ipv6(a) => format!("ip:{a}"),
        Identity::Fqdn(n) => format!("fqdn:{}", String::from_utf8_lossy(n)),
        Identity::Rfc822(n) => format!("email:{}", String::from_utf8_lossy(n)),
        Identity::DerAsn1Dn(dn) => match (der_to_dn(dn), X509Name::from_der(dn)) {
            (Some(text), _) => format!("dn:{text}"),
            // Attributes the `dn:` notation lacks: as x509-parser prints.
            (None, Ok((_, name))) => format!("dn:{name}"),
            (None, Err(_)) => "dn:(unreadable)".to_owned(),
        },
        Identity::KeyId(k) => format!("keyid:{}", String::from_utf8_lossy(k)),
        other => format!("{other:?}"),
    }
}

/// What to change when the peer refuses every IKE proposal and each of
/// them names an additional key exchange (RFC 9370, `keN_`, even
/// `keN_none`): a peer without RFC 9370, such as strongSwan 5.9, refuses
/// any proposal with a transform type it does not know. `None` when some
/// proposal is classical.
pub(crate) fn proposals_refused(
    proposals: &[tunsec_ike::message::Proposal],
) -> Option<&'static str> {
    use tunsec_ike::message::TransformId;
    let names_additional = |p: &tunsec_ike::message::Proposal| {
        p.transforms
            .iter()
            .any(|t| matches!(t.id, TransformId::AddKe { .. }))
    };
    (!proposals.is_empty() && proposals.iter().all(names_additional)).then_some(
        "every IKE proposal names an additional key exchange (keN_, RFC 9370), which a peer \
         without RFC 9370 (strongSwan 5.9) refuses; to let such a peer fall back, add a \
         classical proposal after the hybrid one",
    )
}

/// `id` as a TOML string, quoted and escaped.
fn toml_string(id: &Identity) -> String {
    toml::Value::String(show_identity(id)).to_string()
}

/// Why IKE authentication with `peer` failed, for the log and status:
/// `reason` as it prints, or, when the two hosts' identities do not
/// match, what to set on which host. `cert`: this host (and so the peer)
/// authenticates with certificates, which must hold the name.
pub(crate) fn auth_failure(peer: &str, reason: &AuthFailure, cert: bool) -> String {
    if let Some((presented, expected)) = reason.unexpected_identity() {
        let must_hold = if cert {
            " (its certificate must hold that name)"
        } else {
            ""
        };
        return format!(
            "identity mismatch: peer {peer} presented the identity {}, but remote_id is {}: \
             set remote_id = {} here, or local_id = {} on {peer}{must_hold}",
            show_identity(presented),
            show_identity(expected),
            toml_string(presented),
            toml_string(expected),
        );
    }
    if let AuthFailure::NotOurIdentity { asked, ours } = reason {
        let holding = if cert {
            " with a certificate that holds that name"
        } else {
            ""
        };
        return format!(
            "identity mismatch: peer {peer} asked for this host as {} (its remote_id), but local_id is {}: \
             set remote_id = {} on {peer}, or local_id = {} here{holding}",
            show_identity(asked),
            show_identity(ours),
            toml_string(ours),
            toml_string(asked),
        );
    }
    reason.to_string()
}

#[cfg(test)]
mod tests {
    use tunsec_ike::cert::CertError;

    use super::*;

    fn fqdn(s: &str) -> Identity {
        Identity::Fqdn(s.as_bytes().to_vec())
    }

    /// `dn:` text as the config parses it.
    fn dn(text: &str) -> Identity {
        crate::config::parse_identity("test", text).unwrap()
    }

    /// The certificate case of the issue: h2 kept its certificate's DN as
    /// `local_id`, and this host expects an FQDN.
    #[test]
    fn a_certificate_dn_where_an_fqdn_is_expected() {
        let reason = AuthFailure::Certificate(CertError::UnexpectedIdentity {
            presented: dn("dn:CN=h2"),
            expected: fqdn("h2.example"),
        });
        assert_eq!(
            auth_failure("h2", &reason, true),
            "identity mismatch: peer h2 presented the identity dn:CN=h2, but remote_id is \
             fqdn:h2.example: set remote_id = \"dn:CN=h2\" here, or local_id = \
             \"fqdn:h2.example\" on h2 (its certificate must hold that name)"
        );
    }

    #[test]
    fn a_psk_peer_with_another_identity() {
        let reason = AuthFailure::IdentityMismatch {
            presented: Identity::Ipv4("192.0.2.2".parse().unwrap()),
            expected: fqdn("host-b"),
        };
        assert_eq!(
            auth_failure("host-b", &reason, false),
            "identity mismatch: peer host-b presented the identity ip:192.0.2.2, but remote_id is \
             fqdn:host-b: set remote_id = \"ip:192.0.2.2\" here, or local_id = \"fqdn:host-b\" \
             on host-b"
        );
    }

    #[test]
    fn the_initiator_asked_for_a_name_we_do_not_hold() {
        let reason = AuthFailure::NotOurIdentity {
            asked: fqdn("h2.example"),
            ours: dn("dn:C=CH, O=Example, CN=h2"),
        };
        assert_eq!(
            auth_failure("h1", &reason, true),
            "identity mismatch: peer h1 asked for this host as fqdn:h2.example (its remote_id), \
             but local_id is dn:C=CH, O=Example, CN=h2: set remote_id = \"dn:C=CH, O=Example, \
             CN=h2\" on h1, or local_id = \"fqdn:h2.example\" here with a certificate that holds \
             that name"
        );
    }

    /// Other failures print as they are.
    #[test]
    fn other_failures_unchanged() {
        let reason = AuthFailure::Certificate(CertError::Revoked);
        assert_eq!(auth_failure("h2", &reason, true), reason.to_string());
        assert_eq!(
            auth_failure("h2", &AuthFailure::BadAuth, false),
            AuthFailure::BadAuth.to_string()
        );
    }

    /// What the hint tells the operator to write parses back, in the
    /// config's syntax, to the identity the peer presented.
    #[test]
    fn the_values_to_set_parse_back() {
        let ids = [
            fqdn("h2.example"),
            Identity::Rfc822(b"ops@example.com".to_vec()),
            Identity::Ipv4("192.0.2.7".parse().unwrap()),
            Identity::Ipv6("2001:db8::7".parse().unwrap()),
            Identity::KeyId(b"chassis-7".to_vec()),
            dn("dn:CN=h2"),
            dn("dn:DC=org, DC=example, E=ops@example.org, SN=42, CN=h\\\\o"),
            dn("dn:C=CH, ST=Zurich, L=Zurich, O=Example\\, Inc., OU=Ops, CN=node-1"),
        ];
        for id in &ids {
            let text = show_identity(id);
            let back = crate::config::parse_identity("test", &text)
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(&back, id, "{text}");
            // And as a TOML string in a config line.
            let line = format!("v = {}", toml_string(id));
            let parsed: toml::Table = line.parse().unwrap();
            assert_eq!(parsed["v"].as_str(), Some(text.as_str()));
        }
    }

    /// A refusal of proposals that all name ML-KEM names the fix; one
    /// with a classical fallback needs none.
    #[test]
    fn proposals_refused_names_the_fallback() {
        let list = |l: &str| {
            tunsec_ike::proposal::parse_list(l, tunsec_ike::message::ProtocolId::Ike).unwrap()
        };
        let hybrid = "aes256gcm16-prfsha384-x25519-ke1_mlkem768";
        let hint = proposals_refused(&list(hybrid)).unwrap();
        assert!(hint.contains("classical proposal"), "{hint}");
        // keN_none is a transform type strongSwan 5.9 does not know either.
        assert!(proposals_refused(&list(&format!("{hybrid}-ke1_none"))).is_some());
        for fine in [
            format!("{hybrid},aes256gcm16-prfsha384-x25519"),
            "aes256gcm16-prfsha384-x25519".to_owned(),
        ] {
            assert_eq!(proposals_refused(&list(&fine)), None, "{fine}");
        }
    }
}
