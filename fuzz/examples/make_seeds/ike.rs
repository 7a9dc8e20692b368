//! Seeds of `ike_initiator` and `ike_fragments`: messages from real
//! exchanges between the target's initiator and a real responder, and
//! real fragments.

use std::net::SocketAddr;
use std::time::Instant;

use tunsec_fuzz::fragments::{FragmentInput, FragmentStep, fragment_cipher, fragment_header};
use tunsec_fuzz::initiator::{
    INITIATOR, INITIATOR_SEED, InitiatorInput, PeerStep, RESPONDER, RESPONDER_SEED,
    initiator_config, responder_config,
};
use tunsec_ike::message::{Notify, NotifyType, Payload, PayloadType, encode_payloads};
use tunsec_ike::sa::{Config, DatagramEvent, Endpoint, IkeSa, NATT_PORT, SeededRandom, Transmit};

use super::{corpus_dir, write};

/// A message as `ike_initiator` gets it: from the NAT-T port or not (an
/// `IkeSa` sends bare IKE messages; the driver adds the non-ESP marker).
fn received(t: &Transmit) -> PeerStep {
    PeerStep::Datagram {
        natt: t.dst.port() == NATT_PORT,
        bytes: t.bytes.clone(),
    }
}

/// What a responder with `responder` answers to the initiator's first
/// IKE_SA_INIT request, and (if it accepted) to the rest, for `rounds`
/// round trips: every message it sent, in order, and the responder.
fn record(config: u8, responder: Config, rounds: usize) -> (Vec<PeerStep>, IkeSa) {
    let now = Instant::now();
    let mut initiator = IkeSa::initiate(
        initiator_config(config),
        RESPONDER,
        now,
        Box::new(SeededRandom::new(INITIATOR_SEED)),
    )
    .expect("the initiator starts");
    let mut responder = IkeSa::respond(responder, Box::new(SeededRandom::new(RESPONDER_SEED)));
    let mut sent = Vec::new();
    for _ in 0..rounds {
        while let Some(t) = initiator.poll_transmit() {
            let PeerStep::Datagram { bytes, .. } = received(&t) else {
                unreachable!()
            };
            let from = SocketAddr::new(INITIATOR.ip(), t.dst.port());
            responder.handle_datagram(now, from, &bytes);
        }
        while let Some(t) = responder.poll_transmit() {
            let step = received(&t);
            if let PeerStep::Datagram { bytes, .. } = &step {
                let from = SocketAddr::new(RESPONDER.ip(), t.dst.port());
                initiator.handle_datagram(now, from, bytes);
            }
            sent.push(step);
        }
    }
    (sent, responder)
}

fn initiator_seed(dir: &std::path::Path, name: &str, config: u8, steps: Vec<PeerStep>) {
    write(dir, name, &InitiatorInput { config, steps }.encode());
}

/// `ike_initiator`: recorded responses (the initiator's SPI and nonce are
/// the same in the target, so its IKE_SA_INIT response is taken; what
/// follows fails the ICV there, as the key exchange differs), refusals,
/// a cookie, and scripts that relay a real responder.
pub(crate) fn initiator_seeds() {
    let dir = corpus_dir("ike_initiator");
    for (config, name) in [
        (0x00, "default"),
        (0x10, "cbc_ecp256"),
        (0x20, "chacha_x25519"),
        (0x08, "natt"),
        (0x44, "fragments_two_children"),
    ] {
        let (sent, responder) = record(config, responder_config(config), 3);
        assert!(responder.is_established(), "{name}: the exchange completes");
        initiator_seed(
            &dir,
            &format!("init_response_{name}"),
            config,
            sent[..1].to_vec(),
        );
        initiator_seed(&dir, &format!("recorded_{name}"), config, sent);
    }
    let refusals = [
        ("invalid_ke", "aes256gcm16-prfsha384-ecp384"),
        ("no_proposal_chosen", "aes256-sha256-ecp256"),
    ];
    for (name, ike) in refusals {
        let responder = responder_config(0)
            .with_proposals(ike, "aes128gcm16")
            .expect("valid proposals");
        let (mut sent, _) = record(0, responder, 1);
        sent.push(PeerStep::Relay);
        sent.push(PeerStep::Relay);
        initiator_seed(&dir, name, 0, sent);
    }
    initiator_seed(
        &dir,
        "cookie",
        0,
        vec![cookie(), PeerStep::Relay, PeerStep::Relay],
    );

    // Scripts: the real responder, the clock and the commands.
    use PeerStep::{Command, Relay, Wait};
    initiator_seed(&dir, "relay_up", 0, vec![Relay, Relay, Relay]);
    initiator_seed(
        &dir,
        "relay_rekeys",
        0x06,
        vec![
            Relay,
            Relay,
            Relay,
            Command(0),
            Relay,
            Command(1),
            Relay,
            Wait(200),
            Relay,
            Wait(255),
            Relay,
            Command(3),
            Relay,
            Command(2),
            Relay,
        ],
    );
    initiator_seed(
        &dir,
        "relay_natt",
        0x08,
        vec![Relay, Relay, Wait(30), Relay],
    );
    initiator_seed(
        &dir,
        "relay_fragments",
        0x44,
        vec![Relay, Relay, Relay, Relay],
    );
    initiator_seed(&dir, "timeouts", 0, vec![Wait(255); 8]);
    // A liveness check from the responder, recorded, after a relayed
    // IKE_AUTH: its ICV fails in the target (other keys).
    let (_, mut responder) = record(0, responder_config(0), 3);
    responder
        .check_liveness(Instant::now())
        .expect("an established responder checks liveness");
    let dpd = responder.poll_transmit().expect("an INFORMATIONAL request");
    initiator_seed(
        &dir,
        "relay_then_dpd",
        0,
        vec![Relay, Relay, received(&dpd)],
    );
}

/// The stateless COOKIE answer of a responder under load.
fn cookie() -> PeerStep {
    let now = Instant::now();
    let mut initiator = IkeSa::initiate(
        initiator_config(0),
        RESPONDER,
        now,
        Box::new(SeededRandom::new(INITIATOR_SEED)),
    )
    .expect("the initiator starts");
    let request = initiator.poll_transmit().expect("IKE_SA_INIT");
    let mut endpoint = Endpoint::new();
    endpoint.set_cookie_threshold(0);
    endpoint.set_cookie_random(Box::new(SeededRandom::new(RESPONDER_SEED)));
    let event = endpoint.handle_datagram(now, INITIATOR, &request.bytes);
    assert!(!matches!(event, DatagramEvent::NewSa(_)), "a cookie first");
    received(&endpoint.poll_transmit().expect("the COOKIE answer"))
}

/// `ike_fragments`: real messages cut by `seal_fragments` and fed in
/// several orders, fragments sealed one by one (in order, out of order,
/// with Total Fragments growing, over the bounds, after a timeout), and a
/// real fragment replayed as raw bytes.
pub(crate) fn fragment_seeds() {
    let dir = corpus_dir("ike_fragments");
    let seed = |name: &str, cbc: bool, steps: Vec<FragmentStep>| {
        write(&dir, name, &FragmentInput { cbc, steps }.encode());
    };
    let whole = |response: bool, max_len: u16, data_len: u16, order: &[u8]| FragmentStep::Whole {
        response,
        large: false,
        max_len,
        data_len,
        order: order.to_vec(),
    };
    seed(
        "whole_in_order_gcm",
        false,
        vec![whole(false, 200, 1000, &[])],
    );
    seed(
        "whole_reversed_cbc",
        true,
        vec![whole(true, 300, 2000, &[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])],
    );
    seed(
        "whole_duplicates",
        false,
        vec![whole(false, 120, 600, &[2, 2, 0, 0, 1])],
    );
    seed("whole_over_255", false, vec![whole(false, 0, 12000, &[])]);
    // 80,000 bytes in 77 fragments: over 64 KiB, within 255.
    let over_64k = FragmentStep::Whole {
        response: false,
        large: true,
        max_len: 1000,
        data_len: 40_000,
        order: vec![],
    };
    seed("whole_over_64k", false, vec![over_64k]);

    // One message's plaintext, cut in three by hand.
    let payloads = [Payload::Notify(Notify::new(
        NotifyType::Unknown(40_000),
        vec![0x5a; 90],
    ))];
    let mut plaintext = Vec::new();
    let first = encode_payloads(&payloads, &mut plaintext).expect("encodes");
    let pieces: Vec<Vec<u8>> = plaintext
        .chunks(plaintext.len().div_ceil(3))
        .map(<[u8]>::to_vec)
        .collect();
    let sealed = |message_id: u8, number: u16, total: u16| FragmentStep::Sealed {
        response: false,
        message_id,
        number,
        total,
        first_payload: if number == 1 { first.value() } else { 0 },
        piece: pieces[usize::from(number - 1) % pieces.len()].clone(),
    };
    seed(
        "sealed_in_order",
        false,
        vec![sealed(5, 1, 3), sealed(5, 2, 3), sealed(5, 3, 3)],
    );
    seed(
        "sealed_out_of_order_cbc",
        true,
        vec![sealed(5, 3, 3), sealed(5, 1, 3), sealed(5, 2, 3)],
    );
    seed(
        "sealed_total_grows",
        false,
        vec![
            sealed(6, 1, 2),
            sealed(6, 1, 3),
            sealed(6, 2, 3),
            sealed(6, 2, 2),
            sealed(6, 3, 3),
        ],
    );
    seed(
        "sealed_new_message_id",
        false,
        vec![
            sealed(7, 1, 3),
            sealed(8, 2, 3),
            sealed(7, 2, 3),
            sealed(7, 3, 3),
        ],
    );
    seed(
        "sealed_over_255",
        false,
        vec![sealed(9, 1, 256), sealed(9, 2, 255)],
    );
    seed(
        "sealed_timeout",
        false,
        vec![
            sealed(10, 1, 2),
            FragmentStep::Wait(31),
            sealed(10, 2, 2),
            sealed(10, 1, 2),
        ],
    );
    // A real fragment as raw bytes: the keys are fixed, so it is taken.
    let cipher = fragment_cipher(false);
    let real = cipher
        .seal_fragments(&fragment_header(true, 11), &payloads, 100)
        .expect("cut");
    let mut steps: Vec<FragmentStep> = real.into_iter().map(FragmentStep::Raw).collect();
    steps.push(FragmentStep::Raw(b"not a fragment".to_vec()));
    seed("raw_real_fragments", false, steps);
    assert_eq!(first, PayloadType::Notify);
}
