//! Certificate authentication through the whole IKE_SA_INIT + IKE_AUTH
//! exchange, in memory with a driven clock: every key type, CA and pinned
//! trust, and the refusals.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::SanType;
use rustls_pki_types::CertificateDer;
use tunsec_esp::Key;

use super::*;
use crate::cert::testutil::{LeafSpec, NOW, TestCa, now as cert_now, self_signed};
use crate::cert::{
    CertError, Credentials, KeyType, PrivateKey, SignatureScheme, Trust, fingerprint,
    parse_auth_data,
};
use crate::crypto::signed_octets;
use crate::message::{AuthMethod, CertEncoding, Identity, Message, NotifyType, Payload};
use crate::sa::{CertAuth, SeededRandom, WallClock};

const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

const KINDS: [KeyType; 4] = [
    KeyType::EcdsaP256,
    KeyType::EcdsaP384,
    KeyType::Rsa,
    KeyType::Ed25519,
];

fn addr(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), 500)
}

fn fqdn(s: &str) -> Identity {
    Identity::Fqdn(s.as_bytes().to_vec())
}

fn pem(cert: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", cert.to_vec()))
}

fn credentials(cert: &CertificateDer<'_>, key: &str) -> Credentials {
    Credentials::from_pem(key.as_bytes(), pem(cert).as_bytes()).unwrap()
}

/// A config for `local` expecting `remote`, with certificates.
fn config(local: Identity, remote: Option<Identity>, creds: Credentials, trust: Trust) -> Config {
    let auth = CertAuth {
        credentials: creds,
        trust,
        clock: WallClock::Anchored {
            instant: start(),
            unix: cert_now(),
        },
    };
    Config::new(local, remote, Key::from_slice(b"")).with_cert(Arc::new(auth))
}

/// The instant the driven clock starts at, shared so that the anchored
/// wall clock reads [`NOW`] at the start of every test.
fn start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Two IKE SAs joined in memory.
struct Run {
    initiator: IkeSa,
    responder: IkeSa,
    i_events: Vec<Event>,
    r_events: Vec<Event>,
    from_initiator: Vec<Vec<u8>>,
    from_responder: Vec<Vec<u8>>,
}

/// Runs IKE_SA_INIT and IKE_AUTH (and what follows) at `now`.
fn run_at(i: Config, r: Config, now: Instant) -> Run {
    let mut run = Run {
        initiator: IkeSa::initiate(i, addr(B), now, Box::new(SeededRandom::new(1))).unwrap(),
        responder: IkeSa::respond(r, Box::new(SeededRandom::new(2))),
        i_events: Vec::new(),
        r_events: Vec::new(),
        from_initiator: Vec::new(),
        from_responder: Vec::new(),
    };
    for _ in 0..20 {
        let mut moved = false;
        while let Some(t) = run.initiator.poll_transmit() {
            run.from_initiator.push(t.bytes.clone());
            run.responder.handle_datagram(now, addr(A), &t.bytes);
            moved = true;
        }
        while let Some(t) = run.responder.poll_transmit() {
            run.from_responder.push(t.bytes.clone());
            run.initiator.handle_datagram(now, addr(B), &t.bytes);
            moved = true;
        }
        if !moved {
            break;
        }
    }
    while let Some(e) = run.initiator.poll_event() {
        run.i_events.push(e);
    }
    while let Some(e) = run.responder.poll_event() {
        run.r_events.push(e);
    }
    run
}

fn handshake(i: Config, r: Config) -> Run {
    run_at(i, r, start())
}

fn assert_up(run: &Run) {
    assert!(run.initiator.is_established(), "{:?}", run.i_events);
    assert!(run.responder.is_established(), "{:?}", run.r_events);
    for events in [&run.i_events, &run.r_events] {
        assert_eq!(events[0], Event::IkeSaEstablished);
        assert!(matches!(events[1], Event::ChildSaUp { .. }), "{events:?}");
    }
}

/// The responder refused the initiator with `error`; the initiator heard
/// AUTHENTICATION_FAILED; no SA on either side.
fn assert_refused_by_responder(run: &Run, error: &CertError) {
    assert_eq!(
        run.r_events,
        vec![Event::AuthFailed {
            reason: AuthFailure::Certificate(error.clone())
        }]
    );
    assert_eq!(
        run.i_events,
        vec![Event::AuthFailed {
            reason: AuthFailure::RejectedByPeer
        }]
    );
    assert!(run.initiator.is_closed() && run.responder.is_closed());
}

/// The initiator refused the responder with `error`, and told it in an
/// INFORMATIONAL (RFC 7296 section 2.21.2): both sides closed, the
/// responder's Child SA removed with its AuthFailed.
fn assert_refused_by_initiator(run: &Run, error: &CertError) {
    assert_eq!(
        run.i_events,
        vec![Event::AuthFailed {
            reason: AuthFailure::Certificate(error.clone())
        }]
    );
    assert_eq!(run.r_events[0], Event::IkeSaEstablished);
    assert_eq!(
        run.r_events.last(),
        Some(&Event::AuthFailed {
            reason: AuthFailure::RejectedByPeer
        })
    );
    assert!(run.initiator.is_closed() && run.responder.is_closed());
}

/// A CA, and a node certificate from it for each side.
struct CaPair {
    ca: TestCa,
    a: Credentials,
    b: Credentials,
}

impl CaPair {
    fn new(kind: KeyType) -> Self {
        let ca = TestCa::root("tunsec test CA", KeyType::EcdsaP256);
        let (a_cert, a_key) = ca.leaf(LeafSpec::new("a.tunsec.test", kind));
        let (b_cert, b_key) = ca.leaf(LeafSpec::new("b.tunsec.test", kind));
        Self {
            a: credentials(&a_cert, &a_key),
            b: credentials(&b_cert, &b_key),
            ca,
        }
    }

    fn trust(&self) -> Trust {
        Trust::ca_from_der(vec![self.ca.cert.clone()], Vec::new()).unwrap()
    }

    fn configs(self) -> (Config, Config) {
        let (ta, tb) = (self.trust(), self.trust());
        (
            config(
                fqdn("a.tunsec.test"),
                Some(fqdn("b.tunsec.test")),
                self.a,
                ta,
            ),
            config(
                fqdn("b.tunsec.test"),
                Some(fqdn("a.tunsec.test")),
                self.b,
                tb,
            ),
        )
    }
}

/// The payloads of the IKE_SA_INIT messages and the decrypted IKE_AUTH
/// request and response.
fn exchange_payloads(i: &Config, r: &Config) -> [Vec<Payload>; 2] {
    let run = handshake(i.clone(), r.clone());
    assert_up(&run);
    let init_req = Message::decode(&run.from_initiator[0]).unwrap().payloads;
    let init_resp = Message::decode(&run.from_responder[0]).unwrap().payloads;
    [init_req, init_resp]
}

#[test]
fn cert_ca_signed_every_key_type() {
    for kind in KINDS {
        let (i, r) = CaPair::new(kind).configs();
        let run = handshake(i, r);
        assert_up(&run);
        assert!(
            run.i_events.len() == 2 && run.r_events.len() == 2,
            "{kind}: {:?} {:?}",
            run.i_events,
            run.r_events
        );
    }
}

#[test]
fn cert_ike_sa_init_announces_hashes_and_asks_for_certificates() {
    let pair = CaPair::new(KeyType::EcdsaP256);
    let ca_hashes = pair.trust().certreq_data();
    let (i, r) = pair.configs();
    let [init_req, init_resp] = exchange_payloads(&i, &r);
    let hashes = |payloads: &[Payload]| {
        payloads.iter().find_map(|p| match p {
            Payload::Notify(n) if n.notify_type == NotifyType::SignatureHashAlgorithms => {
                Some(n.data.clone())
            }
            _ => None,
        })
    };
    // RFC 7427 section 4: SHA2-256 (2), SHA2-384 (3), Identity (5).
    assert_eq!(hashes(&init_req), Some(vec![0, 2, 0, 3, 0, 5]));
    assert_eq!(hashes(&init_resp), Some(vec![0, 2, 0, 3, 0, 5]));
    // RFC 7296 section 3.7: the responder's CERTREQ names the CA by the
    // SHA-1 of its public key; the initiator sends none in IKE_SA_INIT.
    let req = |payloads: &[Payload]| {
        payloads.iter().find_map(|p| match p {
            Payload::CertificateRequest(c) => Some((c.encoding, c.data.clone())),
            _ => None,
        })
    };
    assert_eq!(
        req(&init_resp),
        Some((CertEncoding::X509Signature, ca_hashes))
    );
    assert_eq!(req(&init_req), None);
    // A PSK configuration announces neither.
    let psk = Config::new(fqdn("a"), None, Key::from_slice(b"k"));
    assert!(hash_algorithms_notify(&psk).is_none() && certreq(&psk).is_none());
}

/// The IKE_AUTH messages carry CERT (end entity first, then the
/// intermediate), and the initiator's a CERTREQ: decrypted with the
/// initiator's keys, read from its own SK state.
#[test]
fn cert_ike_auth_sends_chain_and_certreq() {
    let root = TestCa::root("Root CA", KeyType::EcdsaP256);
    let sub = root.intermediate("Sub CA", KeyType::EcdsaP384);
    let (a_cert, a_key) = sub.leaf(LeafSpec::new("a.tunsec.test", KeyType::Ed25519));
    let (b_cert, b_key) = root.leaf(LeafSpec::new("b.tunsec.test", KeyType::EcdsaP256));
    let chain = format!("{}{}", pem(&a_cert), pem(&sub.cert));
    let a = Credentials::from_pem(a_key.as_bytes(), chain.as_bytes()).unwrap();
    let trust = || Trust::ca_from_der(vec![root.cert.clone()], Vec::new()).unwrap();
    let i = config(fqdn("a.tunsec.test"), None, a, trust());
    let r = config(
        fqdn("b.tunsec.test"),
        Some(fqdn("a.tunsec.test")),
        credentials(&b_cert, &b_key),
        trust(),
    );
    let payloads = auth_request_payloads(i.clone(), r.clone());
    let certs: Vec<_> = payloads
        .iter()
        .filter_map(|p| match p {
            Payload::Certificate(c) => Some((c.encoding, c.data.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        certs,
        vec![
            (CertEncoding::X509Signature, a_cert.to_vec()),
            (CertEncoding::X509Signature, sub.cert.to_vec())
        ]
    );
    assert!(
        payloads
            .iter()
            .any(|p| matches!(p, Payload::CertificateRequest(c) if c.data.len() == 20))
    );
    // Ed25519 under RFC 7427 (method 14).
    let auth = payloads
        .iter()
        .find_map(|p| match p {
            Payload::Auth(a) => Some(a.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(auth.method, AuthMethod::DigitalSignature);
    assert_eq!(
        parse_auth_data(&auth.data).unwrap().0,
        SignatureScheme::Ed25519
    );
    let run = handshake(i, r);
    assert_up(&run);
}

/// The initiator's IKE_AUTH request, decrypted by the responder's SK.
fn auth_request_payloads(i: Config, r: Config) -> Vec<Payload> {
    let now = start();
    let mut initiator = IkeSa::initiate(i, addr(B), now, Box::new(SeededRandom::new(1))).unwrap();
    let mut responder = IkeSa::respond(r, Box::new(SeededRandom::new(2)));
    let req = initiator.poll_transmit().unwrap();
    responder.handle_datagram(now, addr(A), &req.bytes);
    let resp = responder.poll_transmit().unwrap();
    initiator.handle_datagram(now, addr(B), &resp.bytes);
    let auth = initiator.poll_transmit().unwrap();
    let State::ExpectAuth(st) = &responder.state else {
        panic!("responder not waiting for IKE_AUTH")
    };
    st.sk.inbound.open(&auth.bytes).unwrap().payloads
}

#[test]
fn cert_pinned_self_signed_by_certificate_and_by_fingerprint() {
    for kind in KINDS {
        let (a_cert, a_key) = self_signed(LeafSpec::new("a.tunsec.test", kind));
        let (b_cert, b_key) = self_signed(LeafSpec::new("b.tunsec.test", kind));
        // A pins B's certificate, B pins A's SHA-256 fingerprint.
        let i = config(
            fqdn("a.tunsec.test"),
            Some(fqdn("b.tunsec.test")),
            credentials(&a_cert, &a_key),
            Trust::pinned(std::slice::from_ref(&b_cert), &[]),
        );
        let r = config(
            fqdn("b.tunsec.test"),
            Some(fqdn("a.tunsec.test")),
            credentials(&b_cert, &b_key),
            Trust::pinned(&[], &[fingerprint(&a_cert)]),
        );
        // Pinned trust names no CA: no CERTREQ.
        assert!(certreq(&r).is_none());
        let run = handshake(i, r);
        assert_up(&run);

        // A self-signed certificate that is not pinned.
        let (c_cert, c_key) = self_signed(LeafSpec::new("a.tunsec.test", kind));
        let i = config(
            fqdn("a.tunsec.test"),
            None,
            credentials(&c_cert, &c_key),
            Trust::pinned(std::slice::from_ref(&b_cert), &[]),
        );
        let r = config(
            fqdn("b.tunsec.test"),
            None,
            credentials(&b_cert, &b_key),
            Trust::pinned(std::slice::from_ref(&a_cert), &[]),
        );
        let run = handshake(i, r);
        let fp: String = fingerprint(&c_cert)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_refused_by_responder(&run, &CertError::NotPinned(fp));
    }
}

#[test]
fn cert_refusals_by_the_responder() {
    let year = 365 * 86_400;
    let ca = TestCa::root("tunsec test CA", KeyType::EcdsaP256);
    let other = TestCa::root("another CA", KeyType::EcdsaP256);
    let impostor = TestCa::root("tunsec test CA", KeyType::EcdsaP256);
    let (b_cert, b_key) = ca.leaf(LeafSpec::new("b.tunsec.test", KeyType::EcdsaP256));
    let responder = |crls: Vec<Vec<u8>>, expect: &str| {
        config(
            fqdn("b.tunsec.test"),
            Some(fqdn(expect)),
            credentials(&b_cert, &b_key),
            Trust::ca_from_der(vec![ca.cert.clone()], crls).unwrap(),
        )
    };
    let initiator = |cert: &CertificateDer<'_>, key: &str| {
        config(
            fqdn("a.tunsec.test"),
            None,
            credentials(cert, key),
            Trust::ca_from_der(vec![ca.cert.clone()], Vec::new()).unwrap(),
        )
    };

    // Expired a day ago.
    let mut spec = LeafSpec::new("a.tunsec.test", KeyType::EcdsaP256);
    spec.not_before = NOW as i64 - 2 * year;
    spec.not_after = NOW as i64 - 86_400;
    let (cert, key) = ca.leaf(spec);
    let run1 = handshake(initiator(&cert, &key), responder(vec![], "a.tunsec.test"));
    assert_refused_by_responder(
        &run1,
        &CertError::Expired {
            not_after: NOW - 86_400,
            now: NOW,
        },
    );

    // From another CA.
    let (cert, key) = other.leaf(LeafSpec::new("a.tunsec.test", KeyType::EcdsaP256));
    let run2 = handshake(initiator(&cert, &key), responder(vec![], "a.tunsec.test"));
    assert_refused_by_responder(&run2, &CertError::UnknownIssuer);
    // From an impostor CA with our CA's name.
    let (cert, key) = impostor.leaf(LeafSpec::new("a.tunsec.test", KeyType::EcdsaP256));
    let run2b = handshake(initiator(&cert, &key), responder(vec![], "a.tunsec.test"));
    assert_refused_by_responder(
        &run2b,
        &CertError::BadSignature("certificate signature does not verify"),
    );

    // Revoked by the CA's CRL.
    let mut spec = LeafSpec::new("a.tunsec.test", KeyType::EcdsaP256);
    spec.serial = 4242;
    let (cert, key) = ca.leaf(spec);
    let run3 = handshake(
        initiator(&cert, &key),
        responder(vec![ca.crl(&[4242])], "a.tunsec.test"),
    );
    assert_refused_by_responder(&run3, &CertError::Revoked);
    // The same certificate with a CRL that revokes another serial.
    let run3b = handshake(
        initiator(&cert, &key),
        responder(vec![ca.crl(&[1])], "a.tunsec.test"),
    );
    assert_up(&run3b);

    // A valid certificate, but the responder expects another peer.
    let (cert, key) = ca.leaf(LeafSpec::new("a.tunsec.test", KeyType::EcdsaP256));
    let run4 = handshake(initiator(&cert, &key), responder(vec![], "c.tunsec.test"));
    assert_eq!(
        run4.r_events,
        [Event::AuthFailed {
            reason: AuthFailure::Certificate(CertError::UnexpectedIdentity {
                presented: fqdn("a.tunsec.test"),
                expected: fqdn("c.tunsec.test"),
            })
        }]
    );
    let Event::AuthFailed { reason } = &run4.r_events[0] else {
        unreachable!()
    };
    assert_eq!(
        reason.unexpected_identity(),
        Some((&fqdn("a.tunsec.test"), &fqdn("c.tunsec.test")))
    );
    // An ID that is not in the certificate, though it is the expected one.
    let mut i = initiator(&cert, &key);
    i.local_id = fqdn("c.tunsec.test");
    let run5 = handshake(i, responder(vec![], "c.tunsec.test"));
    assert!(matches!(
        &run5.r_events[..],
        [Event::AuthFailed { reason: AuthFailure::Certificate(CertError::IdentityMismatch(m)) }]
            if m.contains("not in the certificate")
    ));
    assert!(run5.initiator.is_closed());

    // Bytes in the CERT payload that are no certificate: the key still
    // signs, the chain is garbage.
    let mut i = initiator(&cert, &key);
    i.cert = Some(Arc::new(CertAuth {
        credentials: Credentials {
            key: PrivateKey::from_pem_or_der(key.as_bytes()).unwrap(),
            chain: vec![CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])],
        },
        trust: Trust::ca_from_der(vec![ca.cert.clone()], Vec::new()).unwrap(),
        clock: WallClock::System,
    }));
    let run6 = handshake(i, responder(vec![], "a.tunsec.test"));
    assert_refused_by_responder(&run6, &CertError::Malformed("certificate DER"));

    // No CERT payload at all (a pin needs the certificate; so does a CA).
    let mut i = initiator(&cert, &key);
    i.cert = Some(Arc::new(CertAuth {
        credentials: Credentials {
            key: PrivateKey::from_pem_or_der(key.as_bytes()).unwrap(),
            chain: Vec::new(),
        },
        trust: Trust::ca_from_der(vec![ca.cert.clone()], Vec::new()).unwrap(),
        clock: WallClock::System,
    }));
    let run6b = handshake(i, responder(vec![], "a.tunsec.test"));
    assert_refused_by_responder(
        &run6b,
        &CertError::Malformed("no X.509 CERT payload from the peer"),
    );

    // A PSK peer facing a certificate responder.
    let psk = Config::new(fqdn("a.tunsec.test"), None, Key::from_slice(b"k"));
    let run7 = handshake(psk, responder(vec![], "a.tunsec.test"));
    assert_eq!(
        run7.r_events,
        vec![Event::AuthFailed {
            reason: AuthFailure::UnsupportedMethod
        }]
    );
}

#[test]
fn cert_refusals_by_the_initiator() {
    let ca = TestCa::root("tunsec test CA", KeyType::EcdsaP256);
    let (a_cert, a_key) = ca.leaf(LeafSpec::new("a.tunsec.test", KeyType::Rsa));
    let trust = |crls| Trust::ca_from_der(vec![ca.cert.clone()], crls).unwrap();
    let mut spec = LeafSpec::new("b.tunsec.test", KeyType::Rsa);
    spec.serial = 77;
    let (b_cert, b_key) = ca.leaf(spec);
    let i = config(
        fqdn("a.tunsec.test"),
        Some(fqdn("b.tunsec.test")),
        credentials(&a_cert, &a_key),
        trust(vec![ca.crl(&[77])]),
    );
    let r = config(
        fqdn("b.tunsec.test"),
        None,
        credentials(&b_cert, &b_key),
        trust(vec![]),
    );
    let run = handshake(i, r);
    assert_refused_by_initiator(&run, &CertError::Revoked);
    // The INFORMATIONAL was answered.
    assert_eq!(run.from_initiator.len(), 3);
    assert_eq!(run.from_responder.len(), 3);
}

/// The validity period follows the driven clock: the same certificates
/// work now and are refused once the driven clock passes notAfter.
#[test]
fn cert_validity_follows_the_driven_clock() {
    let ca = TestCa::root("tunsec test CA", KeyType::EcdsaP256);
    let mut spec = LeafSpec::new("a.tunsec.test", KeyType::EcdsaP256);
    spec.not_after = NOW as i64 + 3600;
    let (a_cert, a_key) = ca.leaf(spec);
    let (b_cert, b_key) = ca.leaf(LeafSpec::new("b.tunsec.test", KeyType::EcdsaP256));
    let trust = || Trust::ca_from_der(vec![ca.cert.clone()], Vec::new()).unwrap();
    let i = config(
        fqdn("a.tunsec.test"),
        None,
        credentials(&a_cert, &a_key),
        trust(),
    );
    let r = config(
        fqdn("b.tunsec.test"),
        None,
        credentials(&b_cert, &b_key),
        trust(),
    );
    assert_up(&handshake(i.clone(), r.clone()));
    let later = start() + Duration::from_secs(3601);
    let run = run_at(i, r, later);
    assert_refused_by_responder(
        &run,
        &CertError::Expired {
            not_after: NOW + 3600,
            now: NOW + 3601,
        },
    );
}

/// The method follows the peer's SIGNATURE_HASH_ALGORITHMS: 14 when it
/// names a hash of ours, else 9/10 for ECDSA (RFC 4754), and 14 anyway for
/// RSA and Ed25519. Each verifies; RSA PKCS#1 v1.5 is accepted from a peer
/// as well as PSS.
#[test]
fn cert_auth_method_choice_and_verification() {
    use crate::crypto::IkeSuite;
    use crate::proposal;
    let suite =
        IkeSuite::from_proposal(&proposal::defaults(crate::message::ProtocolId::Ike)[0]).unwrap();
    let sk_p = Key::from_slice(&[7; 32]);
    let ca = TestCa::root("tunsec test CA", KeyType::EcdsaP256);
    let trust = || Trust::ca_from_der(vec![ca.cert.clone()], Vec::new()).unwrap();
    for kind in KINDS {
        let (cert, key) = ca.leaf(LeafSpec::new("a.tunsec.test", kind));
        let c = config(
            fqdn("a.tunsec.test"),
            None,
            credentials(&cert, &key),
            trust(),
        );
        let certs = cert_payloads(&c);
        let verify = |auth: &Auth, message: &[u8]| {
            verify_peer_auth(
                &c,
                start(),
                &certs,
                &fqdn("a.tunsec.test"),
                auth,
                &suite,
                message,
                b"nonce",
                &sk_p,
                &[],
            )
        };
        let all = SUPPORTED_HASHES;
        for (hashes, method) in [
            (Some(&all[..]), AuthMethod::DigitalSignature),
            (
                None,
                match kind {
                    KeyType::EcdsaP256 => AuthMethod::EcdsaSha256P256,
                    KeyType::EcdsaP384 => AuthMethod::EcdsaSha384P384,
                    _ => AuthMethod::DigitalSignature,
                },
            ),
        ] {
            let auth = local_auth(
                &c,
                &c.local_id,
                &suite,
                b"message 1",
                b"nonce",
                &sk_p,
                hashes,
                &[],
            )
            .unwrap();
            assert_eq!(auth.method, method, "{kind} {hashes:?}");
            assert_eq!(verify(&auth, b"message 1"), Ok(()), "{kind}");
            // Over other octets it does not verify.
            assert!(matches!(
                verify(&auth, b"message 2"),
                Err(AuthFailure::Certificate(CertError::BadSignature(_)))
            ));
        }
        if kind == KeyType::Rsa {
            let creds = credentials(&cert, &key);
            let octets = signed_octets(
                suite.prf,
                b"message 1",
                b"nonce",
                &sk_p,
                &encode_id(&fqdn("a.tunsec.test")),
            );
            for scheme in [
                SignatureScheme::RsaPkcs1Sha256,
                SignatureScheme::RsaPssSha256,
            ] {
                let data = creds
                    .key
                    .auth_data(AuthMethod::DigitalSignature, scheme, &octets)
                    .unwrap();
                let auth = Auth {
                    method: AuthMethod::DigitalSignature,
                    data,
                };
                assert_eq!(verify(&auth, b"message 1"), Ok(()), "{scheme}");
            }
        }
    }
}

/// A peer ID of each type, matched against the certificate's subject or
/// subjectAltName, end to end.
#[test]
fn cert_identity_types() {
    let ca = TestCa::root("tunsec test CA", KeyType::EcdsaP256);
    let mut spec = LeafSpec::new("a.tunsec.test", KeyType::EcdsaP256);
    spec.sans = vec![
        SanType::DnsName("a.tunsec.test".try_into().unwrap()),
        SanType::Rfc822Name("a@tunsec.test".try_into().unwrap()),
        SanType::IpAddress(IpAddr::V4(A)),
        SanType::IpAddress("2001:db8::1".parse().unwrap()),
    ];
    let (a_cert, a_key) = ca.leaf(spec);
    let (b_cert, b_key) = ca.leaf(LeafSpec::new("b.tunsec.test", KeyType::EcdsaP256));
    let trust = || Trust::ca_from_der(vec![ca.cert.clone()], Vec::new()).unwrap();
    let subject = {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, c) = X509Certificate::from_der(a_cert.as_ref()).unwrap();
        c.subject().as_raw().to_vec()
    };
    for id in [
        fqdn("a.tunsec.test"),
        Identity::Rfc822(b"a@tunsec.test".to_vec()),
        Identity::Ipv4(A),
        Identity::Ipv6("2001:db8::1".parse().unwrap()),
        Identity::DerAsn1Dn(subject.clone()),
    ] {
        let i = config(id.clone(), None, credentials(&a_cert, &a_key), trust());
        let r = config(
            fqdn("b.tunsec.test"),
            Some(id.clone()),
            credentials(&b_cert, &b_key),
            trust(),
        );
        assert_up(&handshake(i, r));
    }
    // An address the certificate does not name.
    let i = config(
        Identity::Ipv4(B),
        None,
        credentials(&a_cert, &a_key),
        trust(),
    );
    let r = config(
        fqdn("b.tunsec.test"),
        Some(Identity::Ipv4(B)),
        credentials(&b_cert, &b_key),
        trust(),
    );
    let run = handshake(i, r);
    assert!(matches!(
        &run.r_events[..],
        [Event::AuthFailed {
            reason: AuthFailure::Certificate(CertError::IdentityMismatch(_))
        }]
    ));
}

/// The initiator names the responder (IDr) by a subjectAltName while the
/// responder's `local_id` is its subject DN: the responder answers as the
/// name asked for, which its certificate holds. A name the certificate
/// does not hold is refused.
#[test]
fn cert_responder_answers_as_the_idr_in_its_certificate() {
    let pair = CaPair::new(KeyType::EcdsaP256);
    let b_cert = pair.b.end_entity().clone();
    let subject = {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, c) = X509Certificate::from_der(b_cert.as_ref()).unwrap();
        c.subject().as_raw().to_vec()
    };
    let (i, mut r) = pair.configs();
    r.local_id = Identity::DerAsn1Dn(subject.clone());
    let run1 = handshake(i.clone(), r.clone());
    assert_up(&run1);
    // The initiator's check of IDr passed: the response named us by the
    // FQDN it asked for (its remote_id), not by the DN.
    let mut wrong = i;
    wrong.remote_id = Some(fqdn("c.tunsec.test"));
    let run2 = handshake(wrong, r);
    assert_eq!(
        run2.r_events,
        vec![Event::AuthFailed {
            reason: AuthFailure::NotOurIdentity {
                asked: fqdn("c.tunsec.test"),
                ours: Identity::DerAsn1Dn(subject.clone()),
            }
        }]
    );
    // Not the peer's identity that is wrong, but the one it asked for.
    let Event::AuthFailed { reason } = &run2.r_events[0] else {
        unreachable!()
    };
    assert_eq!(reason.unexpected_identity(), None);
    assert!(
        reason.to_string().starts_with(
            "the peer asked for ID_FQDN c.tunsec.test (IDr), but we are ID_DER_ASN1_DN "
        ),
        "{reason}"
    );
    // Without a certificate, only our own identity will do.
    let mut psk = Config::new(fqdn("b"), None, Key::from_slice(b"k"));
    assert_eq!(responder_identity(&psk, Some(&fqdn("B"))), Ok(fqdn("b")));
    assert_eq!(
        responder_identity(&psk, Some(&fqdn("b.tunsec.test"))),
        Err(AuthFailure::NotOurIdentity {
            asked: fqdn("b.tunsec.test"),
            ours: fqdn("b"),
        })
    );
    psk.local_id = Identity::DerAsn1Dn(subject);
    assert_eq!(responder_identity(&psk, None), Ok(psk.local_id.clone()));
}

mod props {
    use proptest::prelude::*;

    use super::*;

    /// One certificate configuration, made once (key generation is slow).
    fn fixture() -> &'static (Config, Vec<Payload>) {
        static F: std::sync::OnceLock<(Config, Vec<Payload>)> = std::sync::OnceLock::new();
        F.get_or_init(|| {
            let ca = TestCa::root("tunsec test CA", KeyType::EcdsaP256);
            let (cert, key) = ca.leaf(LeafSpec::new("a.tunsec.test", KeyType::EcdsaP256));
            let trust = Trust::ca_from_der(vec![ca.cert.clone()], Vec::new()).unwrap();
            let c = config(fqdn("b.tunsec.test"), None, credentials(&cert, &key), trust);
            let certs = cert_payloads(&config(
                fqdn("a.tunsec.test"),
                None,
                credentials(&cert, &key),
                Trust::pinned(&[], &[]),
            ));
            (c, certs)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Arbitrary AUTH payloads (any method, any data), with the peer's
        /// real certificate or arbitrary CERT bytes: refused, never a
        /// panic, never accepted.
        #[test]
        fn cert_arbitrary_auth_never_verifies(
            method in any::<u8>(),
            data in proptest::collection::vec(any::<u8>(), 0..300),
            cert_bytes in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..400)),
        ) {
            let (c, real) = fixture();
            let certs = match cert_bytes {
                Some(bytes) => vec![Payload::Certificate(Certificate {
                    encoding: CertEncoding::X509Signature,
                    data: bytes,
                })],
                None => real.clone(),
            };
            let suite = IkeSuite::from_proposal(
                &crate::proposal::defaults(crate::message::ProtocolId::Ike)[0],
            )
            .unwrap();
            let auth = Auth { method: AuthMethod::from(method), data };
            let result = verify_peer_auth(
                c,
                start(),
                &certs,
                &fqdn("a.tunsec.test"),
                &auth,
                &suite,
                b"message 1",
                b"nonce",
                &Key::from_slice(&[7; 32]),
                &[],
            );
            prop_assert!(result.is_err());
        }

        /// A certificate responder given an IKE_SA_INIT whose
        /// SIGNATURE_HASH_ALGORITHMS holds arbitrary bytes answers with a
        /// well-formed response (or not at all), never a panic.
        #[test]
        fn cert_arbitrary_hash_algorithms_in_ike_sa_init(
            data in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let (c, _) = fixture();
            let now = start();
            let mut i = c.clone();
            i.local_id = fqdn("a.tunsec.test");
            let mut initiator =
                IkeSa::initiate(i, addr(B), now, Box::new(SeededRandom::new(1))).unwrap();
            let request = initiator.poll_transmit().unwrap().bytes;
            let mut message = Message::decode(&request).unwrap();
            for p in &mut message.payloads {
                if let Payload::Notify(n) = p {
                    if n.notify_type == NotifyType::SignatureHashAlgorithms {
                        n.data = data.clone();
                    }
                }
            }
            let bytes = message.encode().unwrap();
            let mut responder = IkeSa::respond(c.clone(), Box::new(SeededRandom::new(2)));
            responder.handle_datagram(now, addr(A), &bytes);
            let mut sent = 0;
            while let Some(t) = responder.poll_transmit() {
                let response = Message::decode(&t.bytes);
                prop_assert!(response.is_ok());
                // Our SIGNATURE_HASH_ALGORITHMS answers the peer's if it
                // parses (a list of 2-octet values, RFC 7427 section 4);
                // one that does not counts as none.
                let ours = response
                    .unwrap()
                    .notify(NotifyType::SignatureHashAlgorithms)
                    .is_some();
                prop_assert_eq!(ours, data.len() % 2 == 0);
                sent += 1;
            }
            prop_assert_eq!(sent, 1);
        }
    }
}

/// OVN names a chassis by its certificate's CN, and ovs-pki certificates
/// carry no subjectAltName: an ID_FQDN equal to the CN is accepted, end to
/// end; another name is not.
#[test]
fn cert_ovn_chassis_name_as_cn() {
    let ca = TestCa::root("OVS switchca", KeyType::Rsa);
    let mut spec = LeafSpec::new("chassis-1", KeyType::EcdsaP256);
    spec.sans = Vec::new();
    let (a_cert, a_key) = ca.leaf(spec);
    let (b_cert, b_key) = ca.leaf(LeafSpec::new("chassis-2", KeyType::EcdsaP256));
    let trust = || Trust::ca_from_der(vec![ca.cert.clone()], Vec::new()).unwrap();
    let r = |expect: &str| {
        config(
            fqdn("chassis-2"),
            Some(fqdn(expect)),
            credentials(&b_cert, &b_key),
            trust(),
        )
    };
    let i = config(
        fqdn("chassis-1"),
        Some(fqdn("chassis-2")),
        credentials(&a_cert, &a_key),
        trust(),
    );
    assert_up(&handshake(i.clone(), r("chassis-1")));
    let refused = handshake(i, r("chassis-3"));
    assert!(matches!(
        &refused.r_events[..],
        [Event::AuthFailed {
            reason: AuthFailure::Certificate(CertError::UnexpectedIdentity { .. })
        }]
    ));
}
