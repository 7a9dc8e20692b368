//! Certificate handling of `tunsec_ike::cert`, as a CERT payload and an
//! AUTH payload from the network would reach it: arbitrary bytes as the
//! peer's end-entity certificate and intermediates, checked against a CA
//! (the strongSwan-made test CA, with its CRL) and against a pin;
//! arbitrary RFC 7427 AUTH data and SIGNATURE_HASH_ALGORITHMS data; and
//! arbitrary signatures checked with a real peer key under every AUTH
//! method. Nothing may panic, and nothing arbitrary may verify.
//!
//! Input: a selector byte, then the bytes for that case.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tunsec_ike::cert::{
    CertificateDer, PeerPublicKey, Trust, UnixTime, parse_auth_data, parse_certificates,
    parse_hash_algorithms, verify_peer,
};
use tunsec_ike::message::{AuthMethod, Identity};

const CA: &[u8] = include_bytes!("../../crates/ike/testdata/pki/ca-ecdsa.pem");
const CRL: &[u8] = include_bytes!("../../crates/ike/testdata/pki/ca-ecdsa.crl");
const NODE: &[u8] = include_bytes!("../../crates/ike/testdata/pki/node-ecdsa.pem");
/// A time within the test certificates' validity (2027-01-01).
const WHEN: u64 = 1_798_761_600;

struct Fixture {
    ca: Trust,
    pinned: Trust,
    peer: PeerPublicKey,
    id: Identity,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let ca = Trust::ca(&[CA], &[CRL]).expect("the test CA");
        let node = parse_certificates(NODE).expect("the test node")[0].clone();
        let pinned = Trust::pinned(std::slice::from_ref(&node), &[]);
        let id = Identity::Fqdn(b"node-ecdsa.example".to_vec());
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(WHEN));
        let peer = verify_peer(&node, &[], &ca, now, &id, &id).expect("the test node verifies");
        Fixture {
            ca,
            pinned,
            peer,
            id,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(WHEN));
    match selector % 4 {
        0 => {
            // A CERT payload's body, and the rest as one intermediate.
            let split = rest.first().map_or(0, |&b| usize::from(b)).min(rest.len());
            let (ee, inter) = rest.split_at(split);
            let ee = CertificateDer::from(ee.to_vec());
            let inter = [CertificateDer::from(inter.to_vec())];
            for trust in [&f.ca, &f.pinned] {
                let r = verify_peer(&ee, &inter, trust, now, &f.id, &f.id);
                assert!(r.is_err(), "arbitrary bytes verified as a certificate");
            }
        }
        1 => {
            let _ = parse_auth_data(rest);
            let _ = parse_hash_algorithms(rest);
        }
        2 => {
            // PEM or DER certificates, as a config file would hold them.
            let _ = parse_certificates(rest);
        }
        _ => {
            // An AUTH payload from the peer whose key we hold: never
            // verifies over a fixed message.
            for method in [
                AuthMethod::DigitalSignature,
                AuthMethod::EcdsaSha256P256,
                AuthMethod::EcdsaSha384P384,
                AuthMethod::RsaSignature,
            ] {
                let r = f.peer.verify(method, rest, b"signed octets");
                assert!(r.is_err(), "an arbitrary signature verified");
            }
        }
    }
});
