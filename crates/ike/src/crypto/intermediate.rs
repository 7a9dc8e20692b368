//! The key material of the IKE_INTERMEDIATE exchange (RFC 9242) and of
//! additional key exchanges in it (RFC 9370), as pure functions: the
//! octets each IKE_INTERMEDIATE message adds to IntAuth, the IntAuth
//! chain, and the octets AUTH then covers. The key update after each
//! additional key exchange is [`super::skeyseed_rekey`] with the old SK_d
//! (RFC 9370 section 2.2.2: `SKEYSEED(n) = prf(SK_d(n-1), SK(n) | Ni |
//! Nr)`), then [`super::IkeKeys::derive`] with the IKE SA's own SPIs.
//!
//! Checked against strongSwan 6.0.6 (`testdata/strongswan6`). The state
//! machine does not run these exchanges yet.

use super::{Key, Prf};
use crate::error::Result;
use crate::message::{HEADER_LEN, Header, Payload, PayloadType, encode_payloads};

/// RFC 9242 section 3.3.2: what an IKE_INTERMEDIATE message adds to its
/// sender's IntAuth, `IntAuth_[i|r]*A | IntAuth_[i|r]*P`. A is its IKE
/// header and the Encrypted payload's generic header as they would be if
/// the message went whole and in plaintext: Next Payload Encrypted, the
/// lengths counting only these headers and the plaintext (no IV, padding
/// or ICV; one message even if it went in fragments, RFC 7383). P is the
/// inner payloads in plaintext, encoded again from `inner` (strongSwan
/// does the same: the decoder keeps no other bytes).
pub fn int_auth_octets(header: &Header, inner: &[Payload]) -> Result<Vec<u8>> {
    let mut plain = Vec::new();
    let first = encode_payloads(inner, &mut plain)?;
    let sk_len = 4 + plain.len();
    let mut a = *header;
    a.next_payload = PayloadType::Encrypted;
    a.length = u32::try_from(HEADER_LEN + sk_len).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(HEADER_LEN + sk_len);
    a.encode(&mut out);
    out.push(first.value());
    out.push(0);
    out.extend_from_slice(&u16::try_from(sk_len).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&plain);
    Ok(out)
}

/// RFC 9242 section 3.3.1: the next link of one side's IntAuth chain,
/// `IntAuth_x(n) = prf(SK_px, IntAuth_x(n-1) | A | P)`, where `sk_p` is
/// the SK_pi (the initiator's messages) or SK_pr (the responder's) that
/// protected exchange n, and `previous` is empty for the first.
pub fn int_auth(prf: Prf, sk_p: &Key, previous: &[u8], octets: &[u8]) -> Key {
    prf.prf(sk_p.expose(), &[previous, octets])
}

/// RFC 9242 section 3.3.2: what AUTH covers after IKE_INTERMEDIATE
/// exchanges, the octets of [`super::signed_octets`] followed by
/// `IntAuth = IntAuth_iN | IntAuth_rN | IKE_AUTH_MID`, the last the
/// message ID of the IKE_AUTH request, four octets.
pub fn signed_octets_with_int_auth(
    signed_octets: Vec<u8>,
    int_auth_i: &Key,
    int_auth_r: &Key,
    ike_auth_message_id: u32,
) -> Vec<u8> {
    [
        &signed_octets[..],
        int_auth_i.expose(),
        int_auth_r.expose(),
        &ike_auth_message_id.to_be_bytes(),
    ]
    .concat()
}

#[cfg(test)]
mod test {
    use std::collections::HashMap;
    use std::time::Instant;

    use super::*;
    use crate::crypto::{IkeKeys, IkeSuite, SkCipher, signed_octets, skeyseed, skeyseed_rekey};
    use crate::message::{DhGroup, Identity, Message};
    use crate::proposal;
    use crate::sa::fragment::{Added, Reassembly};
    use crate::testdata::unhex;

    const DIR: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/strongswan6/psk-x25519-ke1-mlkem768"
    );

    fn message(name: &str) -> Vec<u8> {
        unhex(&std::fs::read_to_string(format!("{DIR}/{name}.hex")).unwrap())
    }

    fn keys() -> HashMap<String, Vec<u8>> {
        std::fs::read_to_string(format!("{DIR}/keys.txt"))
            .unwrap()
            .lines()
            .map(|l| {
                let (k, v) = l.split_once(' ').unwrap();
                (k.to_owned(), unhex(v))
            })
            .collect()
    }

    /// The IKE suite of the capture (its first key exchange, X25519).
    fn suite() -> IkeSuite {
        let p = proposal::parse_ike("aes256gcm16-prfsha384-x25519").unwrap();
        let suite = IkeSuite::from_proposal(&p).unwrap();
        assert_eq!(suite.group, DhGroup::Curve25519);
        suite
    }

    fn nonce(m: &Message) -> Vec<u8> {
        m.payloads
            .iter()
            .find_map(|p| match p {
                Payload::Nonce(n) => Some(n.clone()),
                _ => None,
            })
            .unwrap()
    }

    /// Derives the keys of the capture as the initiator does: after
    /// IKE_SA_INIT from the X25519 secret, and after IKE_INTERMEDIATE from
    /// the ML-KEM-768 secret (RFC 9370 section 2.2.2); each set equals
    /// what charon 6 logged.
    fn derive(k: &HashMap<String, Vec<u8>>) -> (IkeKeys, IkeKeys) {
        let suite = suite();
        let init_req = Message::decode(&message("init-req")).unwrap();
        let init_resp = Message::decode(&message("init-resp")).unwrap();
        let (ni, nr) = (nonce(&init_req), nonce(&init_resp));
        assert_eq!([&ni[..], &nr[..]].concat(), k["nonces.0"]);
        let (spi_i, spi_r) = (
            init_resp.header.initiator_spi,
            init_resp.header.responder_spi,
        );
        let seed0 = skeyseed(suite.prf, &ni, &nr, &k["ke_secret.0"]);
        assert_eq!(seed0.expose(), &k["skeyseed.0"][..]);
        let keys0 = IkeKeys::derive(&suite, &seed0, &ni, &nr, spi_i, spi_r).unwrap();
        let seed1 = skeyseed_rekey(suite.prf, &keys0.sk_d, &k["ke_secret.1"], &ni, &nr, &[]);
        assert_eq!(seed1.expose(), &k["skeyseed.1"][..], "SKEYSEED(1)");
        let keys1 = IkeKeys::derive(&suite, &seed1, &ni, &nr, spi_i, spi_r).unwrap();
        for (n, keys) in [(0, &keys0), (1, &keys1)] {
            for (name, key) in [
                ("sk_d", &keys.sk_d),
                ("sk_ei", &keys.sk_ei),
                ("sk_er", &keys.sk_er),
                ("sk_pi", &keys.sk_pi),
                ("sk_pr", &keys.sk_pr),
            ] {
                assert_eq!(key.expose(), &k[&format!("{name}.{n}")][..], "{name}({n})");
            }
        }
        (keys0, keys1)
    }

    #[test]
    fn key_update_after_the_additional_key_exchange_matches_strongswan() {
        derive(&keys());
    }

    /// The IntAuth chain of the one IKE_INTERMEDIATE exchange: the request
    /// (in two fragments) and the response opened with the keys of
    /// IKE_SA_INIT give, re-encoded, the A|P octets charon 6 logged, and
    /// their prf under SK_pi / SK_pr its IntAuth_i1 and IntAuth_r1.
    #[test]
    fn int_auth_of_the_intermediate_exchange_matches_strongswan() {
        let k = keys();
        let (keys0, _) = derive(&k);
        let suite = suite();
        let (_, from_initiator) = SkCipher::pair(&suite, &keys0, false).unwrap();
        let (_, from_responder) = SkCipher::pair(&suite, &keys0, true).unwrap();

        let mut reassembly = Reassembly::default();
        let now = Instant::now();
        let Added::Pending = reassembly
            .add(now, &from_initiator, &message("int-req-frag1"))
            .unwrap()
        else {
            panic!("the first fragment completed the request");
        };
        let Added::Complete(request) = reassembly
            .add(now, &from_initiator, &message("int-req-frag2"))
            .unwrap()
        else {
            panic!("the request did not complete");
        };
        let ke = request
            .payloads
            .iter()
            .find_map(|p| match p {
                Payload::KeyExchange(ke) => Some(ke),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            (ke.group, ke.data.len()),
            (DhGroup::MlKem768, 1184),
            "the request carries the ML-KEM-768 encapsulation key"
        );
        let response = from_responder.open(&message("int-resp")).unwrap();

        let a_p_i = int_auth_octets(&request.header, &request.payloads).unwrap();
        assert_eq!(a_p_i, k["int_auth_ap.0"], "IntAuth_i1 A|P");
        let a_p_r = int_auth_octets(&response.header, &response.payloads).unwrap();
        assert_eq!(a_p_r, k["int_auth_ap.1"], "IntAuth_r1 A|P");
        let i1 = int_auth(suite.prf, &keys0.sk_pi, &[], &a_p_i);
        let r1 = int_auth(suite.prf, &keys0.sk_pr, &[], &a_p_r);
        assert_eq!(i1.expose(), &k["int_auth.0"][..], "IntAuth_i1");
        assert_eq!(r1.expose(), &k["int_auth.1"][..], "IntAuth_r1");
    }

    /// The octets the initiator signs in IKE_AUTH (message ID 2, after one
    /// IKE_INTERMEDIATE exchange): IKE_SA_INIT request, Nr, prf(SK_pi(1),
    /// IDi'), then IntAuth_i1 | IntAuth_r1 | 2, as charon 6 computed them;
    /// and the AUTH of its IKE_AUTH request is the PSK's over them.
    #[test]
    fn auth_octets_with_int_auth_match_strongswan() {
        let k = keys();
        let (_, keys1) = derive(&k);
        let suite = suite();
        let init_resp = Message::decode(&message("init-resp")).unwrap();
        let id = Identity::Fqdn(b"a.ssref.test".to_vec());
        let mut id_body = Vec::new();
        id.encode(&mut id_body);
        let octets = signed_octets(
            suite.prf,
            &message("init-req"),
            &nonce(&init_resp),
            &keys1.sk_pi,
            &id_body,
        );
        let i1 = Key::new(k["int_auth.0"].clone());
        let r1 = Key::new(k["int_auth.1"].clone());
        let octets = signed_octets_with_int_auth(octets, &i1, &r1, 2);
        assert_eq!(octets, k["auth_octets_i.0"]);
        // The IKE_AUTH request on the wire opens with the keys after the
        // update, and its AUTH is the PSK's over these octets.
        let (_, from_initiator) = SkCipher::pair(&suite, &keys1, false).unwrap();
        let request = from_initiator.open(&message("auth-req")).unwrap();
        assert_eq!(request.header.message_id, 2);
        let auth = request
            .payloads
            .iter()
            .find_map(|p| match p {
                Payload::Auth(a) => Some(a.data.clone()),
                _ => None,
            })
            .unwrap();
        let psk = b"ssref-demo-psk-not-secret-0123456789";
        let expected = crate::crypto::shared_key_auth(suite.prf, psk, &octets);
        assert_eq!(auth, expected.expose());
    }
}
