//! An IKEv2 initiator fed hostile responses: an `IkeSa` started with
//! `IkeSa::initiate` (PSK, the configuration byte of
//! `tunsec_fuzz::initiator::initiator_config`) takes the fuzzer's
//! datagrams as its peer's IKE_SA_INIT response and every message after,
//! with the clock moving and its timers running, and its commands (rekey,
//! delete, liveness check, ...) at any time. A real responder `IkeSa` runs
//! beside it: a `Relay` step carries messages both ways, so the initiator
//! gets to IKE_AUTH, Established and the exchanges after with the
//! fuzzer's datagrams mixed in.
//!
//! It must never panic, and:
//! - every message it sends goes to the responder's address and has a
//!   well-formed IKEv2 header with a non-zero initiator SPI (an `IkeSa`
//!   sends bare IKE messages; the driver adds the non-ESP marker on the
//!   NAT-T port);
//! - its state stays bounded: at most 64 datagrams and 64 events per step,
//!   at most twice `max_child_sas` Child SAs, at most two IKE SAs (the
//!   current one and one being retired);
//! - a timer, once handled, is never due again at the same instant (a
//!   driver would spin);
//! - it is established, or reports a Child SA, only if the real
//!   responder's messages were relayed: the fuzzer cannot know the keys
//!   (the key exchange draws fresh randomness), so whatever it sends
//!   alone must never authenticate.
#![no_main]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tunsec_fuzz::initiator::{
    INITIATOR, INITIATOR_SEED, InitiatorInput, PeerStep, RESPONDER, RESPONDER_SEED,
    initiator_config, responder_config,
};
use tunsec_ike::message::Header;
use tunsec_ike::sa::{Event, IkeSa, NATT_PORT, SeededRandom, Transmit};

/// The most datagrams or events one step may produce.
const MAX_PER_STEP: usize = 64;
/// The most datagrams kept in flight towards either side.
const QUEUE: usize = 64;
/// The most timers run in one `Wait` step.
const MAX_TIMERS: usize = 64;

fuzz_target!(|input: InitiatorInput| {
    let config = initiator_config(input.config);
    let max_child_sas = config.max_child_sas;
    let mut now = Instant::now();
    let Ok(mut initiator) = IkeSa::initiate(
        config,
        RESPONDER,
        now,
        Box::new(SeededRandom::new(INITIATOR_SEED)),
    ) else {
        return;
    };
    let mut responder = IkeSa::respond(
        responder_config(input.config),
        Box::new(SeededRandom::new(RESPONDER_SEED)),
    );
    let mut run = Run {
        to_responder: VecDeque::new(),
        to_initiator: VecDeque::new(),
        relayed: false,
    };
    run.drain(&mut initiator, &mut responder, max_child_sas);
    for step in input.steps {
        match step {
            PeerStep::Datagram { natt, bytes } => {
                let port = if natt { NATT_PORT } else { RESPONDER.port() };
                let from = SocketAddr::new(RESPONDER.ip(), port);
                initiator.handle_datagram(now, from, &bytes);
            }
            PeerStep::Wait(seconds) => {
                let end = now + Duration::from_secs(u64::from(seconds) + 1);
                for _ in 0..MAX_TIMERS {
                    let Some(due) = initiator.poll_timeout().filter(|t| *t <= end) else {
                        break;
                    };
                    now = now.max(due);
                    initiator.handle_timeout(now);
                    assert!(
                        initiator.poll_timeout().is_none_or(|t| t > now),
                        "a handled timer is still due"
                    );
                    run.drain(&mut initiator, &mut responder, max_child_sas);
                }
                now = end;
                responder.handle_timeout(now);
            }
            PeerStep::Relay => {
                run.relayed = true;
                run.relay(now, &mut initiator, &mut responder);
            }
            PeerStep::Command(command) => {
                let _ = match command % 6 {
                    0 => initiator.rekey_child(now),
                    1 => initiator.rekey_ike(now),
                    2 => initiator.delete(now),
                    3 => initiator.check_liveness(now),
                    4 => initiator.create_child(now, 0),
                    _ => {
                        initiator.send_init_again();
                        Ok(())
                    }
                };
            }
        }
        run.drain(&mut initiator, &mut responder, max_child_sas);
    }
});

/// The datagrams in flight between the two sides.
struct Run {
    /// What the initiator sent, for the real responder.
    to_responder: VecDeque<Transmit>,
    /// What the real responder sent, for the initiator.
    to_initiator: VecDeque<Transmit>,
    /// Whether any `Relay` step ran.
    relayed: bool,
}

impl Run {
    /// Takes what both sides sent and the initiator's events, and checks
    /// the initiator's bounds.
    fn drain(&mut self, initiator: &mut IkeSa, responder: &mut IkeSa, max_child_sas: usize) {
        let mut sent = 0;
        while let Some(t) = initiator.poll_transmit() {
            sent += 1;
            assert!(sent <= MAX_PER_STEP, "more than {MAX_PER_STEP} datagrams");
            check(&t);
            push(&mut self.to_responder, t);
        }
        while let Some(t) = responder.poll_transmit() {
            push(&mut self.to_initiator, t);
        }
        while responder.poll_event().is_some() {}
        let mut events = 0;
        while let Some(event) = initiator.poll_event() {
            events += 1;
            assert!(events <= MAX_PER_STEP, "more than {MAX_PER_STEP} events");
            if matches!(
                event,
                Event::IkeSaEstablished | Event::ChildSaUp { .. } | Event::ChildSaRekeyed { .. }
            ) {
                assert!(
                    self.relayed,
                    "authenticated without the real responder: {event:?}"
                );
            }
        }
        assert!(!initiator.is_established() || self.relayed);
        assert!(initiator.child_sa_count() <= 2 * max_child_sas);
        assert!(initiator.local_spis().count() <= 2);
    }

    /// Carries the initiator's datagrams to the real responder, then the
    /// responder's back.
    fn relay(&mut self, now: Instant, initiator: &mut IkeSa, responder: &mut IkeSa) {
        while let Some(t) = self.to_responder.pop_front() {
            let from = SocketAddr::new(INITIATOR.ip(), t.dst.port());
            responder.handle_datagram(now, from, &t.bytes);
        }
        while let Some(t) = responder.poll_transmit() {
            push(&mut self.to_initiator, t);
        }
        while let Some(t) = self.to_initiator.pop_front() {
            let from = SocketAddr::new(RESPONDER.ip(), t.dst.port());
            initiator.handle_datagram(now, from, &t.bytes);
        }
    }
}

/// Queues a datagram, forgetting the oldest beyond [`QUEUE`].
fn push(queue: &mut VecDeque<Transmit>, t: Transmit) {
    if queue.len() == QUEUE {
        queue.pop_front();
    }
    queue.push_back(t);
}

/// What the initiator sends goes to the responder and is a well-formed
/// IKE header with its SPI.
fn check(t: &Transmit) {
    assert_eq!(t.dst.ip(), RESPONDER.ip());
    let header = Header::decode(&t.bytes).expect("a well-formed IKE header");
    assert_eq!(header.major_version, 2);
    assert_ne!(header.initiator_spi, 0);
}
