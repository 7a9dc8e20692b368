//! Message tests: strongSwan's real messages, hand-built bytes, the payload
//! chain rules, and robustness against truncated and mutated input.

use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::*;
use crate::testdata::{Capture, unhex as h};

/// What each capture negotiated: the IKE transforms, the KE length and
/// the ESP transforms.
fn expected(name: &str) -> (Vec<Transform>, usize, Vec<Transform>) {
    use TransformId::*;
    let esn = Transform::new(Esn(EsnId::NoEsn));
    match name {
        "psk-x25519" => (
            vec![
                Transform::with_key_length(Encr(EncrId::AesGcm16), 128),
                Transform::new(Prf(PrfId::HmacSha2_256)),
                Transform::new(Dh(DhGroup::Curve25519)),
            ],
            32,
            vec![Transform::with_key_length(Encr(EncrId::AesGcm16), 128), esn],
        ),
        "psk-modp2048" => (
            vec![
                Transform::with_key_length(Encr(EncrId::AesCbc), 256),
                Transform::new(Integ(IntegId::HmacSha2_256_128)),
                Transform::new(Prf(PrfId::HmacSha2_256)),
                Transform::new(Dh(DhGroup::Modp2048)),
            ],
            256,
            vec![
                Transform::with_key_length(Encr(EncrId::AesCbc), 256),
                Transform::new(Integ(IntegId::HmacSha2_256_128)),
                esn,
            ],
        ),
        "cert-ecp384" => (
            vec![
                Transform::with_key_length(Encr(EncrId::AesGcm16), 256),
                Transform::new(Prf(PrfId::HmacSha2_384)),
                Transform::new(Dh(DhGroup::Ecp384)),
            ],
            96,
            vec![Transform::with_key_length(Encr(EncrId::AesGcm16), 256), esn],
        ),
        "psk-chacha-ecp256" => (
            vec![
                Transform::new(Encr(EncrId::ChaCha20Poly1305)),
                Transform::new(Prf(PrfId::HmacSha2_512)),
                Transform::new(Dh(DhGroup::Ecp256)),
            ],
            64,
            vec![Transform::new(Encr(EncrId::ChaCha20Poly1305)), esn],
        ),
        other => panic!("unknown capture {other}"),
    }
}

fn notify_types(m: &Message) -> Vec<NotifyType> {
    m.notifies().map(|n| n.notify_type).collect()
}

#[test]
fn strongswan_ike_sa_init() {
    for c in Capture::all() {
        let (transforms, ke_len, _) = expected(c.name);
        for (bytes, response) in [(&c.init_req, false), (&c.init_resp, true)] {
            let m = Message::decode(bytes).unwrap_or_else(|e| panic!("{}: {e}", c.name));
            assert_eq!(m.header.exchange_type, ExchangeType::IkeSaInit);
            assert_eq!(m.header.message_id, 0);
            assert_eq!(m.header.response, response);
            assert_eq!(m.header.initiator, !response);
            assert_ne!(m.header.initiator_spi, 0);
            assert_eq!(m.header.responder_spi == 0, !response);
            let Some(Payload::Sa(sa)) = m.payload(PayloadType::SecurityAssociation) else {
                panic!("{}: no SA", c.name)
            };
            assert_eq!(sa.proposals.len(), 1);
            let p = &sa.proposals[0];
            assert_eq!((p.number, p.protocol), (1, ProtocolId::Ike));
            assert!(p.spi.is_empty());
            assert_eq!(p.transforms, transforms, "{}", c.name);
            let Some(Payload::KeyExchange(ke)) = m.payload(PayloadType::KeyExchange) else {
                panic!("{}: no KE", c.name)
            };
            assert_eq!(Some(TransformId::Dh(ke.group)), {
                transforms
                    .iter()
                    .map(|t| t.id)
                    .find(|id| matches!(id, TransformId::Dh(_)))
            });
            assert_eq!(ke.data.len(), ke_len, "{}", c.name);
            let Some(Payload::Nonce(nonce)) = m.payload(PayloadType::Nonce) else {
                panic!("{}: no nonce", c.name)
            };
            assert_eq!(nonce.len(), 32);
            // RFC 7296 section 2.23: the NAT detection hashes are SHA-1.
            for t in [
                NotifyType::NatDetectionSourceIp,
                NotifyType::NatDetectionDestinationIp,
            ] {
                let n = m.notify(t).unwrap();
                assert_eq!((n.protocol, n.spi.len(), n.data.len()), (None, 0, 20));
            }
            let mut expected_notifies = vec![
                NotifyType::NatDetectionSourceIp,
                NotifyType::NatDetectionDestinationIp,
                NotifyType::Ikev2FragmentationSupported,
                NotifyType::SignatureHashAlgorithms,
            ];
            if response {
                expected_notifies.extend([
                    NotifyType::ChildlessIkev2Supported,
                    NotifyType::MultipleAuthSupported,
                ]);
            } else {
                expected_notifies.push(NotifyType::RedirectSupported);
            }
            assert_eq!(notify_types(&m), expected_notifies, "{}", c.name);
            // Only the certificate responder asks for certificates.
            assert_eq!(
                m.payload(PayloadType::CertificateRequest).is_some(),
                response && c.name.starts_with("cert"),
            );
            // Byte for byte what strongSwan sent.
            assert_eq!(&m.encode().unwrap(), bytes, "{}", c.name);
        }
    }
}

#[test]
fn strongswan_ike_auth_outer() {
    for c in Capture::all() {
        let init = Message::decode(&c.init_resp).unwrap();
        for (bytes, first) in [
            (&c.auth_req, PayloadType::IdInitiator),
            (&c.auth_resp, PayloadType::IdResponder),
        ] {
            let m = Message::decode(bytes).unwrap();
            assert_eq!(m.header.exchange_type, ExchangeType::IkeAuth);
            assert_eq!(m.header.message_id, 1);
            assert_eq!(m.header.initiator_spi, init.header.initiator_spi);
            assert_eq!(m.header.responder_spi, init.header.responder_spi);
            let [Payload::Encrypted(sk)] = &m.payloads[..] else {
                panic!("{}: {:?}", c.name, m.payloads)
            };
            assert_eq!(sk.first_payload, first);
            assert_eq!(sk.data.len() + HEADER_LEN + PAYLOAD_HEADER_LEN, bytes.len());
            assert_eq!(&m.encode().unwrap(), bytes);
        }
    }
}

#[test]
fn strongswan_ike_auth_plaintext() {
    for c in Capture::all() {
        let (_, _, esp) = expected(c.name);
        let cert = c.name.starts_with("cert");
        for (plain, first, response) in [
            (c.key("auth_req_plain"), PayloadType::IdInitiator, false),
            (c.key("auth_resp_plain"), PayloadType::IdResponder, true),
        ] {
            let payloads = decode_payloads(first, plain).unwrap();
            let types: Vec<PayloadType> = payloads.iter().map(Payload::payload_type).collect();
            let expected_types = {
                use PayloadType::*;
                match (cert, response) {
                    (false, false) => vec![
                        IdInitiator,
                        Notify,
                        IdResponder,
                        Authentication,
                        SecurityAssociation,
                        TsInitiator,
                        TsResponder,
                        Notify,
                        Notify,
                        Notify,
                    ],
                    (false, true) => vec![
                        IdResponder,
                        Authentication,
                        SecurityAssociation,
                        TsInitiator,
                        TsResponder,
                    ],
                    (true, false) => vec![
                        IdInitiator,
                        Certificate,
                        Notify,
                        CertificateRequest,
                        IdResponder,
                        Authentication,
                        SecurityAssociation,
                        TsInitiator,
                        TsResponder,
                        Notify,
                        Notify,
                        Notify,
                    ],
                    (true, true) => vec![
                        IdResponder,
                        Certificate,
                        Authentication,
                        SecurityAssociation,
                        TsInitiator,
                        TsResponder,
                    ],
                }
            };
            assert_eq!(types, expected_types, "{} {response}", c.name);
            for p in &payloads {
                match p {
                    Payload::IdInitiator(id) => {
                        assert_eq!(id, &Identity::Fqdn(b"a.ssref.test".to_vec()));
                    }
                    Payload::IdResponder(id) => {
                        assert_eq!(id, &Identity::Fqdn(b"b.ssref.test".to_vec()));
                    }
                    Payload::Auth(auth) => {
                        let method = if cert {
                            AuthMethod::DigitalSignature
                        } else {
                            AuthMethod::SharedKey
                        };
                        assert_eq!(auth.method, method, "{}", c.name);
                    }
                    Payload::Certificate(cert) => {
                        assert_eq!(cert.encoding, CertEncoding::X509Signature);
                        // A DER SEQUENCE with a two-byte length.
                        assert_eq!(&cert.data[..2], &[0x30, 0x82]);
                    }
                    Payload::CertificateRequest(req) => {
                        assert_eq!(req.encoding, CertEncoding::X509Signature);
                        // One SHA-1 hash of the CA's public key.
                        assert_eq!(req.data.len(), 20);
                    }
                    Payload::Sa(sa) => {
                        let [p] = &sa.proposals[..] else { panic!() };
                        assert_eq!(p.protocol, ProtocolId::Esp);
                        assert_eq!(p.spi.len(), 4);
                        assert_eq!(p.transforms, esp, "{}", c.name);
                    }
                    Payload::TsInitiator(ts) | Payload::TsResponder(ts) => {
                        let host = if matches!(p, Payload::TsInitiator(_)) {
                            1
                        } else {
                            2
                        };
                        let a = Ipv4Addr::new(192, 0, 2, host);
                        assert_eq!(
                            ts,
                            &vec![TrafficSelector::Ipv4 {
                                ip_protocol: 0,
                                start_port: 0,
                                end_port: 65535,
                                start: a,
                                end: a,
                            }]
                        );
                    }
                    Payload::Notify(_) => {}
                    other => panic!("{}: unexpected {other:?}", c.name),
                }
            }
            let notifies: Vec<NotifyType> = payloads
                .iter()
                .filter_map(|p| match p {
                    Payload::Notify(n) => Some(n.notify_type),
                    _ => None,
                })
                .collect();
            let expected_notifies: &[NotifyType] = if response {
                &[]
            } else {
                &[
                    NotifyType::InitialContact,
                    NotifyType::MultipleAuthSupported,
                    NotifyType::EapOnlyAuthentication,
                    NotifyType::Ikev2MessageIdSyncSupported,
                ]
            };
            assert_eq!(notifies, expected_notifies, "{}", c.name);
            let mut out = Vec::new();
            assert_eq!(encode_payloads(&payloads, &mut out).unwrap(), first);
            assert_eq!(out, plain, "{}", c.name);
        }
    }
}

/// A message built by hand: IKE_SA_INIT-like header, Nonce, V, N and EAP.
#[test]
fn construct_and_deconstruct_by_hand() {
    let m = Message {
        header: Header {
            initiator_spi: 0x0102_0304_0506_0708,
            responder_spi: 0,
            next_payload: PayloadType::None,
            major_version: 2,
            minor_version: 0,
            exchange_type: ExchangeType::IkeSaInit,
            response: false,
            version: false,
            initiator: true,
            message_id: 0,
            length: 0,
        },
        payloads: vec![
            Payload::Nonce(vec![0xaa; 16]),
            Payload::VendorId(b"tunsec".to_vec()),
            Payload::Notify(Notify::new(NotifyType::Cookie, vec![1, 2, 3, 4])),
            // An EAP Request/Identity header.
            Payload::Eap(vec![1, 0, 0, 4]),
        ],
    };
    let bytes = m.encode().unwrap();
    let expected = h(
        "0102030405060708 0000000000000000 28 20 22 08 00000000 0000004e
         2b 00 0014 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
         29 00 000a 74756e736563
         30 00 000c 0000 4006 01020304
         00 00 0008 01000004",
    );
    assert_eq!(hex::encode(&bytes), hex::encode(&expected));
    let back = Message::decode(&bytes).unwrap();
    assert_eq!(back.payloads, m.payloads);
    assert_eq!(back.header.next_payload, PayloadType::Nonce);
    assert_eq!(back.header.length, 0x4e);
}

/// An INFORMATIONAL request with an empty SK payload (a liveness check):
/// the SK header's next payload is 0.
#[test]
fn empty_encrypted_payload() {
    let bytes = h(
        "0102030405060708 1112131415161718 2e 20 25 08 00000002 00000024
                   00 00 0008 deadbeef",
    );
    let m = Message::decode(&bytes).unwrap();
    assert_eq!(
        m.payloads,
        [Payload::Encrypted(Encrypted {
            first_payload: PayloadType::None,
            data: h("deadbeef"),
        })]
    );
    assert_eq!(m.encode().unwrap(), bytes);
}

fn with_unknown(critical: bool) -> Vec<u8> {
    // N(COOKIE) -> payload type 200 (unknown) -> V.
    let flags = if critical { "80" } else { "00" };
    h(&format!(
        "0102030405060708 0000000000000000 29 20 22 08 00000000 00000038
         c8 00 000c 0000 4006 01020304
         2b {flags} 0008 cafebabe
         00 00 0008 74756e73"
    ))
}

#[test]
fn unknown_payloads_are_skipped_unless_critical() {
    let m = Message::decode(&with_unknown(false)).unwrap();
    assert_eq!(
        m.payloads,
        [
            Payload::Notify(Notify::new(NotifyType::Cookie, vec![1, 2, 3, 4])),
            Payload::VendorId(b"tuns".to_vec()),
        ]
    );
    let err = Message::decode(&with_unknown(true)).unwrap_err();
    assert_eq!(err, Error::UnsupportedCriticalPayload(200));
    assert_eq!(err.notify(), Some(NotifyType::UnsupportedCriticalPayload));
    assert_eq!(err.fault(), crate::Fault::Unsupported);
    // The header, for the answer, still decodes.
    assert_eq!(
        Header::decode(&with_unknown(true)).unwrap().initiator_spi,
        0x0102_0304_0506_0708
    );
    // The critical bit on a known payload is ignored (section 3.2).
    let mut known_critical = with_unknown(false);
    known_critical[29] = 0x80;
    assert!(Message::decode(&known_critical).is_ok());
}

#[test]
fn encrypted_payload_must_be_last_and_alone() {
    // SK followed by another payload.
    let trailing = h(
        "0102030405060708 1112131415161718 2e 20 25 08 00000002 0000002c
                      00 00 0008 deadbeef
                      00 00 0008 74756e73",
    );
    assert!(matches!(
        Message::decode(&trailing),
        Err(Error::TrailingBytes { count: 8, .. })
    ));
    // SK inside SK.
    assert!(matches!(
        decode_payloads(PayloadType::Encrypted, &h("00 00 0008 deadbeef")),
        Err(Error::InvalidValue { .. })
    ));
    let not_last = Message {
        header: Header::decode(&trailing).unwrap(),
        payloads: vec![
            Payload::Encrypted(Encrypted {
                first_payload: PayloadType::None,
                data: vec![],
            }),
            Payload::VendorId(vec![]),
        ],
    };
    assert!(matches!(not_last.encode(), Err(Error::Encode { .. })));
}

#[test]
fn lengths_must_fit_exactly() {
    let good = with_unknown(false);
    // The header's length says more than the datagram holds, less, or
    // less than a header.
    for (length, expected) in [(0x39u32, "truncated"), (0x37, "trailing"), (27, "invalid")] {
        let mut bytes = good.clone();
        bytes[24..28].copy_from_slice(&length.to_be_bytes());
        let err = Message::decode(&bytes).unwrap_err();
        assert!(err.to_string().contains(expected), "{length}: {err}");
        assert_eq!(err.fault(), crate::Fault::Malformed);
        assert_eq!(err.notify(), Some(NotifyType::InvalidSyntax));
    }
    // A payload length below four, or past the end.
    let mut short = good.clone();
    short[31] = 3;
    assert!(matches!(
        Message::decode(&short),
        Err(Error::InvalidLength { length: 3, .. })
    ));
    let mut long = good.clone();
    long[31] = 0x40;
    assert!(matches!(
        Message::decode(&long),
        Err(Error::Truncated { .. })
    ));
    // The last payload says another follows.
    let mut more = good.clone();
    more[48] = PayloadType::Nonce.value();
    assert!(matches!(
        Message::decode(&more),
        Err(Error::Truncated { .. })
    ));
    // Bytes after the last payload (length field grown to cover them).
    let mut trailing = good;
    trailing.extend_from_slice(&[0; 4]);
    trailing[27] += 4;
    assert!(matches!(
        Message::decode(&trailing),
        Err(Error::TrailingBytes { count: 4, .. })
    ));
    // IKEv1.
    let mut v1 = with_unknown(false);
    v1[17] = 0x10;
    assert_eq!(
        Message::decode(&v1),
        Err(Error::UnsupportedVersion { major: 1, minor: 0 })
    );
}

/// Every prefix of every real message fails cleanly, and so do messages
/// with any byte changed to a few values.
#[test]
fn truncation_and_mutation_never_panic() {
    for c in Capture::all() {
        let plains = [
            c.key("auth_req_plain").to_vec(),
            c.key("auth_resp_plain").to_vec(),
        ];
        for bytes in c.messages() {
            for len in 0..bytes.len() {
                assert!(Message::decode(&bytes[..len]).is_err());
            }
            for i in 0..bytes.len() {
                for v in [0x00, 0x01, 0x7f, 0x80, 0xff, bytes[i] ^ 0x04] {
                    let mut m = bytes.to_vec();
                    m[i] = v;
                    if let Ok(msg) = Message::decode(&m) {
                        // Whatever decodes encodes again.
                        msg.encode().unwrap();
                    }
                }
            }
        }
        for (plain, first) in plains
            .iter()
            .zip([PayloadType::IdInitiator, PayloadType::IdResponder])
        {
            for len in 0..plain.len() {
                let _ = decode_payloads(first, &plain[..len]);
            }
            for i in 0..plain.len() {
                for v in [0x00, 0x80, 0xff, plain[i] ^ 0x01] {
                    let mut m = plain.clone();
                    m[i] = v;
                    let _ = decode_payloads(first, &m);
                }
            }
        }
    }
}

fn arb_payload() -> impl Strategy<Value = Payload> {
    let bytes = |max| proptest::collection::vec(any::<u8>(), 0..max);
    prop_oneof![
        sa::test::arb_sa().prop_map(Payload::Sa),
        (any::<u16>(), bytes(40)).prop_map(|(g, data)| Payload::KeyExchange(KeyExchange {
            group: g.into(),
            data
        })),
        (any::<u32>(), bytes(12)).prop_map(|(a, d)| {
            if a % 2 == 0 {
                Payload::IdInitiator(Identity::Ipv4(a.into()))
            } else {
                Payload::IdResponder(Identity::Fqdn(d))
            }
        }),
        (any::<u8>(), bytes(20)).prop_map(|(e, data)| Payload::Certificate(Certificate {
            encoding: e.into(),
            data
        })),
        (any::<u8>(), bytes(20)).prop_map(|(m, data)| Payload::Auth(Auth {
            method: m.into(),
            data
        })),
        proptest::collection::vec(any::<u8>(), 16..40).prop_map(Payload::Nonce),
        (1u8..=255, bytes(8), any::<u16>(), bytes(20)).prop_map(|(p, spi, t, data)| {
            Payload::Notify(Notify {
                protocol: Some(p.into()),
                spi,
                notify_type: t.into(),
                data,
            })
        }),
        proptest::collection::vec(any::<u32>(), 0..4)
            .prop_map(|s| Payload::Delete(Delete::esp(&s))),
        bytes(20).prop_map(Payload::VendorId),
        proptest::collection::vec(ts::test::arb_ts(), 0..3).prop_map(Payload::TsInitiator),
        proptest::collection::vec(ts::test::arb_ts(), 0..3).prop_map(Payload::TsResponder),
        (
            any::<u8>(),
            proptest::collection::vec((0u16..0x8000, bytes(6)), 0..3)
        )
            .prop_map(|(t, a)| Payload::Configuration(Configuration {
                cfg_type: t.into(),
                attributes: a
                    .into_iter()
                    .map(|(attribute_type, value)| ConfigAttribute {
                        attribute_type,
                        value
                    })
                    .collect(),
            })),
        bytes(20).prop_map(Payload::Eap),
    ]
}

proptest! {
    #[test]
    fn messages_round_trip(
        payloads in proptest::collection::vec(arb_payload(), 0..6),
        sk in proptest::option::of((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40))),
        spi: u64,
        message_id: u32,
    ) {
        let mut payloads = payloads;
        if let Some((first, data)) = sk {
            payloads.push(Payload::Encrypted(Encrypted { first_payload: first.into(), data }));
        }
        let m = Message {
            header: Header {
                initiator_spi: spi,
                responder_spi: !spi,
                next_payload: PayloadType::None,
                major_version: 2,
                minor_version: 0,
                exchange_type: ExchangeType::Informational,
                response: true,
                version: false,
                initiator: false,
                message_id,
                length: 0,
            },
            payloads,
        };
        let bytes = m.encode().unwrap();
        let back = Message::decode(&bytes).unwrap();
        prop_assert_eq!(&back.payloads, &m.payloads);
        prop_assert_eq!(back.encode().unwrap(), bytes);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Message::decode(&bytes);
        let _ = decode_payloads(PayloadType::Notify, &bytes);
    }

    #[test]
    fn random_chains_after_a_valid_header_never_panic(
        first: u8,
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut bytes = with_unknown(false)[..HEADER_LEN].to_vec();
        bytes[16] = first;
        bytes.extend_from_slice(&body);
        let length = bytes.len() as u32;
        bytes[24..28].copy_from_slice(&length.to_be_bytes());
        let _ = Message::decode(&bytes);
    }
}

/// The Encrypted Fragment payload (RFC 7383 section 2.5): hand-built bytes
/// decode to the fields and encode back; a fragment number of 0 or above
/// the total, a truncated body, an SKF before another payload and an SKF
/// inside an SK are refused.
#[test]
fn encrypted_fragment_payload() {
    // IKE_AUTH request, message ID 1; SKF with first payload IDi (35),
    // fragment 1 of 3, then 4 bytes standing for IV, ciphertext and ICV.
    let bytes = h(
        "0102030405060708 1112131415161718 35 20 23 08 00000001 00000028
                   23 00 000c 0001 0003 deadbeef",
    );
    let m = Message::decode(&bytes).unwrap();
    assert_eq!(m.header.next_payload, PayloadType::EncryptedFragment);
    assert_eq!(
        m.payloads,
        vec![Payload::EncryptedFragment(EncryptedFragment {
            first_payload: PayloadType::IdInitiator,
            number: 1,
            total: 3,
            data: h("deadbeef"),
        })]
    );
    assert_eq!(m.encode().unwrap(), bytes);
    // A later fragment has no first payload.
    let later = h(
        "0102030405060708 1112131415161718 35 20 23 08 00000001 00000024
                   00 00 0008 0003 0003",
    );
    let Payload::EncryptedFragment(f) = &Message::decode(&later).unwrap().payloads[0] else {
        panic!()
    };
    assert_eq!(
        (f.first_payload, f.number, f.total),
        (PayloadType::None, 3, 3)
    );
    assert!(f.data.is_empty());
    for fields in ["0000 0003", "0004 0003", "0001 0000"] {
        let bad = h(&format!(
            "0102030405060708 1112131415161718 35 20 23 08 00000001 00000024 00 00 0008 {fields}"
        ));
        assert!(
            matches!(Message::decode(&bad), Err(Error::InvalidValue { .. })),
            "{fields}"
        );
    }
    let short =
        h("0102030405060708 1112131415161718 35 20 23 08 00000001 00000022 00 00 0006 0001");
    assert!(Message::decode(&short).is_err());
    // SKF followed by another payload.
    let trailing = h(
        "0102030405060708 1112131415161718 35 20 23 08 00000001 0000002c
                      00 00 0008 0001 0001
                      00 00 0008 74756e73",
    );
    assert!(matches!(
        Message::decode(&trailing),
        Err(Error::TrailingBytes { count: 8, .. })
    ));
    // SKF inside SK.
    assert!(matches!(
        decode_payloads(PayloadType::EncryptedFragment, &h("00 00 0008 0001 0001")),
        Err(Error::InvalidValue { .. })
    ));
    let not_last = Message {
        header: m.header,
        payloads: vec![
            Payload::EncryptedFragment(EncryptedFragment {
                first_payload: PayloadType::None,
                number: 1,
                total: 1,
                data: vec![],
            }),
            Payload::VendorId(vec![]),
        ],
    };
    assert!(matches!(not_last.encode(), Err(Error::Encode { .. })));
}

proptest! {
    /// Arbitrary bytes after an SKF header never panic the decoder, and
    /// what decodes encodes back to the same bytes.
    #[test]
    fn encrypted_fragment_arbitrary(body in proptest::collection::vec(any::<u8>(), 0..64), next in any::<u8>()) {
        let mut bytes = h("0102030405060708 1112131415161718 35 20 23 08 00000001 00000000");
        let len = (28 + 4 + body.len()) as u32;
        bytes[24..28].copy_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&[next, 0]);
        bytes.extend_from_slice(&((4 + body.len()) as u16).to_be_bytes());
        bytes.extend_from_slice(&body);
        if let Ok(m) = Message::decode(&bytes) {
            prop_assert_eq!(m.encode().unwrap(), bytes);
        }
    }
}
