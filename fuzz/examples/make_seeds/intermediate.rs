//! Seeds of `ike_intermediate`: step scripts (the target seals every
//! message with the keys of the run, so the seeds hold no key and do not
//! change from run to run). Each reaches the IKE_INTERMEDIATE handler of
//! one side or the other: the real exchange relayed, the real request
//! sealed again, KE payloads cut, of the wrong group, failing ML-KEM's
//! modulus check, missing or with extra payloads, fuzzed responses to the
//! initiator, fragments, unencrypted bytes and replays.

use tunsec_fuzz::intermediate::{DataSpec, IntStep, IntermediateInput, PayloadSpec, Sealed};

use super::{corpus_dir, write};

/// The configuration bytes (`intermediate_configs`).
const GCM: u8 = 0;
const NO_FRAGMENTS: u8 = 1;
const CBC: u8 = 2;
const TWO_EXCHANGES: u8 = 4;
const CHACHA: u8 = 6;
const SMALL_FRAGMENTS: u8 = 8;

/// X25519, ML-KEM-512 (groups 31 and 35).
const X25519: u8 = 31;
const ML_KEM_512: u8 = 35;

/// A message sealed for one side with these flags, message ID and
/// payloads.
fn sealed(to_initiator: bool, flags: u8, message_id: u8, payloads: Vec<PayloadSpec>) -> IntStep {
    IntStep::Sealed(Sealed {
        to_initiator,
        flags,
        message_id,
        // IKE_AUTH, with flag bit 2.
        exchange: 35,
        fragment_len: 40,
        payloads,
    })
}

/// A request to the responder.
fn request(flags: u8, message_id: u8, payloads: Vec<PayloadSpec>) -> IntStep {
    sealed(false, flags, message_id, payloads)
}

/// A response to the initiator.
fn response(flags: u8, message_id: u8, payloads: Vec<PayloadSpec>) -> IntStep {
    sealed(true, flags, message_id, payloads)
}

/// A KE payload of the receiver's pending group (0) or another.
fn ke(group: u8, data: DataSpec) -> PayloadSpec {
    PayloadSpec::Ke { group, data }
}

/// The initiator's newest datagram, unchanged, to the responder.
fn replay_request() -> IntStep {
    IntStep::Replay {
        flags: 0,
        index: 0,
        at: 0,
        xor: 0,
    }
}

/// `ike_intermediate`.
pub(crate) fn intermediate_seeds() {
    let dir = corpus_dir("ike_intermediate");
    let seed = |name: &str, config: u8, steps: Vec<IntStep>| {
        write(&dir, name, &IntermediateInput { config, steps }.encode());
    };
    let relays = |n: usize| vec![IntStep::Relay; n];

    // The real exchange, to IKE_AUTH and beyond, in each configuration.
    for (name, config, n) in [
        ("relay_gcm", GCM, 3),
        ("relay_no_fragments", NO_FRAGMENTS, 3),
        ("relay_cbc", CBC, 3),
        ("relay_two_exchanges", TWO_EXCHANGES, 4),
        ("relay_chacha", CHACHA, 3),
        ("relay_small_fragments", SMALL_FRAGMENTS, 3),
    ] {
        seed(name, config, relays(n));
    }

    // Requests to the responder.
    let then_relay = |first: Vec<IntStep>| [first, relays(3)].concat();
    seed(
        "request_real_payloads",
        GCM,
        then_relay(vec![request(0, 1, vec![PayloadSpec::Real])]),
    );
    seed(
        "request_real_fragmented_reversed",
        GCM,
        then_relay(vec![request(0x18, 1, vec![PayloadSpec::Real])]),
    );
    seed(
        "request_ke_cut",
        GCM,
        vec![request(0, 1, vec![ke(0, DataSpec::Cut(1000))])],
    );
    seed(
        "request_ke_wrong_group",
        GCM,
        vec![request(0, 1, vec![ke(ML_KEM_512, DataSpec::Fresh)])],
    );
    seed(
        "request_ke_x25519_then_real",
        CBC,
        then_relay(vec![request(
            0,
            1,
            vec![ke(X25519, DataSpec::Fresh), ke(0, DataSpec::Real)],
        )]),
    );
    seed(
        "request_ke_modulus_check",
        GCM,
        vec![request(0, 1, vec![ke(0, DataSpec::Raw(vec![0xff; 1184]))])],
    );
    seed(
        "request_ke_flipped",
        NO_FRAGMENTS,
        then_relay(vec![request(
            0,
            1,
            vec![ke(0, DataSpec::Flip { at: 7, xor: 0x80 })],
        )]),
    );
    seed(
        "request_ke_fresh",
        GCM,
        then_relay(vec![request(0, 1, vec![ke(0, DataSpec::Fresh)])]),
    );
    seed("request_empty", GCM, vec![request(0, 1, vec![])]);
    seed(
        "request_extra_payload",
        GCM,
        then_relay(vec![request(
            0,
            1,
            vec![PayloadSpec::Real, PayloadSpec::VendorId(b"tunsec".to_vec())],
        )]),
    );
    seed(
        "request_extra_notify_fragmented",
        SMALL_FRAGMENTS,
        then_relay(vec![request(
            0x08,
            1,
            vec![
                PayloadSpec::Notify {
                    notify_type: 40_000,
                    data: b"extra".to_vec(),
                },
                PayloadSpec::Real,
            ],
        )]),
    );
    seed(
        "request_last_fragment_missing",
        GCM,
        then_relay(vec![request(0x28, 1, vec![PayloadSpec::Real])]),
    );
    seed(
        "request_wrong_message_ids",
        GCM,
        vec![
            request(0, 0, vec![PayloadSpec::Real]),
            request(0, 2, vec![PayloadSpec::Real]),
            request(0, 0xff, vec![PayloadSpec::Real]),
            request(0x04, 1, vec![PayloadSpec::Real]),
            request(0x01, 1, vec![PayloadSpec::Real]),
            request(0x80, 1, vec![PayloadSpec::Real]),
        ],
    );
    seed(
        "request_second_exchange_cut",
        TWO_EXCHANGES,
        vec![
            IntStep::Relay,
            request(0, 2, vec![ke(0, DataSpec::Cut(1500))]),
        ],
    );
    seed(
        "request_second_exchange_stale_keys",
        TWO_EXCHANGES,
        [
            vec![IntStep::Relay, request(0x40, 2, vec![PayloadSpec::Real])],
            relays(3),
        ]
        .concat(),
    );

    // Responses to the initiator.
    seed(
        "response_fresh_ciphertext",
        GCM,
        [
            vec![response(0, 1, vec![ke(0, DataSpec::Fresh)])],
            relays(2),
            vec![IntStep::Wait(20)],
        ]
        .concat(),
    );
    seed(
        "response_ciphertext_cut",
        GCM,
        vec![response(0, 1, vec![ke(0, DataSpec::Raw(vec![7; 1000]))])],
    );
    seed(
        "response_wrong_group",
        CBC,
        vec![response(0, 1, vec![ke(X25519, DataSpec::Fresh)])],
    );
    seed(
        "response_error_notify",
        GCM,
        vec![response(
            0,
            1,
            vec![PayloadSpec::Notify {
                notify_type: 14,
                data: Vec::new(),
            }],
        )],
    );
    seed(
        "response_real_after_replay",
        NO_FRAGMENTS,
        then_relay(vec![
            replay_request(),
            response(0, 1, vec![PayloadSpec::Real]),
        ]),
    );
    seed(
        "response_real_extra_payload",
        NO_FRAGMENTS,
        then_relay(vec![
            replay_request(),
            response(
                0,
                1,
                vec![
                    PayloadSpec::Real,
                    PayloadSpec::Nonce(b"an extra nonce, 32 bytes long...".to_vec()),
                ],
            ),
        ]),
    );
    // The request's two fragments reach the responder; the initiator gets
    // the real ciphertext with a bit flipped, in fragments.
    seed(
        "response_ciphertext_flipped_fragmented",
        GCM,
        then_relay(vec![
            IntStep::Replay {
                flags: 0,
                index: 1,
                at: 0,
                xor: 0,
            },
            replay_request(),
            response(0x08, 1, vec![ke(0, DataSpec::Flip { at: 0, xor: 1 })]),
        ]),
    );

    // Fragments, unencrypted bytes, replays and time.
    let fragment = |flags: u8, number: u16, total: u16, piece: &[u8]| IntStep::Fragment {
        flags,
        message_id: 1,
        number,
        total,
        first_payload: 34,
        piece: piece.to_vec(),
    };
    // A KE payload header (group 36) and the start of its data.
    let ke_piece = [0, 0, 0, 40, 0, 36, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    seed(
        "fragments",
        GCM,
        then_relay(vec![
            fragment(0, 2, 2, &[9; 32]),
            fragment(0, 1, 2, &ke_piece),
            fragment(1, 1, 3, &ke_piece),
            fragment(1, 3, 3, &[1; 8]),
            fragment(0, 1, 255, &ke_piece),
        ]),
    );
    let mut header = vec![0u8; 28];
    header[17] = 0x20;
    header[18] = 43;
    header[19] = 0x08;
    header[23] = 1;
    header[27] = 28;
    seed(
        "raw",
        GCM,
        vec![
            IntStep::Raw {
                flags: 2,
                bytes: header.clone(),
            },
            IntStep::Raw {
                flags: 3,
                bytes: header,
            },
            IntStep::Raw {
                flags: 0,
                bytes: b"not IKE".to_vec(),
            },
            IntStep::Relay,
        ],
    );
    seed(
        "replays",
        GCM,
        vec![
            IntStep::Replay {
                flags: 0,
                index: 0,
                at: 100,
                xor: 1,
            },
            IntStep::Replay {
                flags: 1,
                index: 0,
                at: 0,
                xor: 0,
            },
            IntStep::Relay,
            IntStep::Replay {
                flags: 0,
                index: 2,
                at: 0,
                xor: 0,
            },
            IntStep::Relay,
        ],
    );
    seed(
        "wait_then_relay",
        GCM,
        vec![IntStep::Wait(3), IntStep::Relay, IntStep::Wait(40)],
    );
}
