//! The IKE_INTERMEDIATE exchange (RFC 9242) with an additional key
//! exchange (RFC 9370, ML-KEM) fed hostile messages on both sides. An
//! initiator `IkeSa` and a responder behind an `Endpoint`, both with a
//! hybrid proposal (X25519 in IKE_SA_INIT, then ML-KEM-768, and for one
//! configuration ML-KEM-1024 too; `tunsec_fuzz::intermediate`), run a real
//! IKE_SA_INIT; the initiator's first IKE_INTERMEDIATE request is held
//! back. Then the steps (`tunsec_fuzz::intermediate::IntStep`):
//! - `Sealed`: a request to the responder or a response to the
//!   initiator, built from the input (KE payloads of any group with the
//!   real value, a fresh valid one, the real one cut short or with a byte
//!   flipped, or any bytes; notifies of any type, error notifies
//!   included; nonces, vendor IDs; the real message's payloads; any
//!   message ID, flags and exchange type; a wrong SPI), sealed under the
//!   receiver's keys (read with `IkeSa::export_keys`; or the keys of
//!   IKE_SA_INIT), whole or cut into RFC 7383 fragments (in order or
//!   reversed, the last one left out), so that it gets past the ICV to
//!   the handler;
//! - `Fragment`: one SKF message under the same keys with whatever
//!   Fragment Number, Total Fragments, Next Payload and plaintext piece;
//! - `Raw`: unencrypted bytes, with the IKE SA's SPIs or not;
//! - `Relay`: the real messages each side sent go to the other;
//! - `Replay`: a real datagram again, one byte XORed or not;
//! - `Wait`: the clock moves on and both sides' timers run.
//!
//! After all the steps the clock moves on by 4 x 256 s, timers running.
//!
//! SPIs and nonces come from `SeededRandom`; the key shares and the AEAD
//! IVs come from aws-lc, so the keys differ from run to run, but the target
//! reads them again in every run and seals with them: an input takes the
//! same path each time.
//!
//! It must never panic, and:
//! - everything either side sends (the initiator, the responder `IkeSa`
//!   and the `Endpoint`) decodes with `Message::decode`, with IKE version
//!   2 and a non-zero initiator SPI, goes to the other side's address, and
//!   there are at most 64 datagrams per step;
//! - unencrypted bytes never complete an additional key exchange;
//! - when a side takes a whole fuzzed message as its IKE_INTERMEDIATE
//!   message (its keys change), that message had a KE payload of the
//!   pending group with a value of that group's length (the initiator:
//!   its first KE payload; the responder: its first of that group);
//! - a side that took a fuzzed IKE_INTERMEDIATE message other than the
//!   one its peer sent (its IntAuth octets differ: a bad KE, an extra or
//!   missing payload, other flags) never lets either side become
//!   established (no `IkeSaEstablished` or `ChildSaUp` either): the keys
//!   or the IntAuth chains no longer agree, so AUTH must fail;
//! - a timer, once handled, is never due again at the same instant.
#![no_main]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tunsec_fuzz::initiator::{INITIATOR, INITIATOR_SEED, RESPONDER, RESPONDER_SEED};
use tunsec_fuzz::intermediate::{
    DataSpec, IntStep, IntermediateInput, PayloadSpec, Sealed, intermediate_configs, message_id,
};
use tunsec_ike::crypto::{
    IkeKeys, IkeSuite, SkCipher, find_group, int_auth_octets, respond, start,
};
use tunsec_ike::message::{
    DhGroup, ExchangeType, Header, KeyExchange as KePayload, MAJOR_VERSION, Message, Notify,
    NotifyType, Payload, PayloadType,
};
use tunsec_ike::sa::fragment::{Added, Reassembly};
use tunsec_ike::sa::{DatagramEvent, Endpoint, Event, IkeSa, SaHandle, SeededRandom};

/// The most datagrams either side may send in one step.
const MAX_PER_STEP: usize = 64;
/// The most datagrams kept in flight towards either side.
const QUEUE: usize = 64;
/// The most real datagrams of each side kept for `Replay`.
const KEPT: usize = 16;
/// The most real IKE_INTERMEDIATE messages of each side kept.
const REAL: usize = 8;
/// The most key sets kept to open what the sides send.
const MAX_KEYS: usize = 8;
/// The most timers run in one `Wait` step.
const MAX_TIMERS: usize = 64;

fuzz_target!(|input: IntermediateInput| {
    let mut run = Run::start(input.config);
    for step in input.steps {
        run.step(step);
        run.check();
    }
    // Whatever happened, the clock can move on: retransmissions, the
    // half-open timeout and the peer's death run their course.
    for _ in 0..4 {
        run.wait(255);
        run.check();
    }
});

/// The two sides and what the target knows about them.
struct Run {
    now: Instant,
    initiator: IkeSa,
    endpoint: Endpoint,
    /// The responder in `endpoint`.
    handle: SaHandle,
    /// The IKE SA's SPIs.
    spis: (u64, u64),
    /// The negotiated transforms.
    suite: IkeSuite,
    /// The keys of IKE_SA_INIT.
    keys0: IkeKeys,
    /// Every key set either side has had, the oldest first: the messages
    /// they send are opened with them.
    history: Vec<(IkeSuite, IkeKeys)>,
    /// What the initiator sent and the responder has not had yet.
    to_responder: VecDeque<Vec<u8>>,
    /// What the responder sent and the initiator has not had yet.
    to_initiator: VecDeque<Vec<u8>>,
    /// The newest real datagrams of each side, for `Replay`.
    sent_by_initiator: VecDeque<Vec<u8>>,
    sent_by_responder: VecDeque<Vec<u8>>,
    /// The real IKE_INTERMEDIATE requests the initiator sent, opened.
    real_requests: VecDeque<Message>,
    /// The real IKE_INTERMEDIATE responses the responder sent, opened.
    real_responses: VecDeque<Message>,
    /// The target's own reassembly of what each side sends in fragments
    /// (from the initiator, from the responder).
    reassembly: [Reassembly; 2],
    /// Additional key exchanges each side completed (its keys changed).
    i_done: usize,
    r_done: usize,
    /// The side took a fuzzed IKE_INTERMEDIATE message that is not what
    /// its peer sent.
    i_bad: bool,
    r_bad: bool,
}

impl Run {
    /// A real IKE_SA_INIT between the two sides; the initiator's first
    /// IKE_INTERMEDIATE request is queued, not delivered.
    fn start(config: u8) -> Self {
        let (initiator_config, responder_config) = intermediate_configs(config);
        let now = Instant::now();
        let mut initiator = IkeSa::initiate(
            initiator_config,
            RESPONDER,
            now,
            Box::new(SeededRandom::new(INITIATOR_SEED)),
        )
        .expect("the initiator starts");
        let request = initiator.poll_transmit().expect("an IKE_SA_INIT request");
        check_sent(&request.bytes);
        let mut endpoint = Endpoint::new();
        let DatagramEvent::NewSa(incoming) =
            endpoint.handle_datagram(now, INITIATOR, &request.bytes)
        else {
            panic!("the IKE_SA_INIT request is not a new IKE SA");
        };
        let handle = endpoint
            .accept(
                incoming,
                now,
                responder_config,
                Box::new(SeededRandom::new(RESPONDER_SEED)),
            )
            .expect("the responder accepts");
        let responder = endpoint.sa_mut(handle).expect("the responder");
        let response = responder.poll_transmit().expect("an IKE_SA_INIT response");
        check_sent(&response.bytes);
        let responder_keys = responder.export_keys().map(|k| k.keys.clone());
        initiator.handle_datagram(now, RESPONDER, &response.bytes);
        let exported = initiator
            .export_keys()
            .expect("the initiator has keys after IKE_SA_INIT");
        let (suite, keys0) = (exported.suite, exported.keys.clone());
        assert_eq!(responder_keys.as_ref(), Some(&keys0), "both sides agree");
        assert!(suite.additional_key_exchanges().count() > 0);
        let mut run = Self {
            now,
            spis: initiator.spis(),
            initiator,
            endpoint,
            handle,
            suite,
            keys0: keys0.clone(),
            history: vec![(suite, keys0)],
            to_responder: VecDeque::new(),
            to_initiator: VecDeque::new(),
            sent_by_initiator: VecDeque::from([request.bytes]),
            sent_by_responder: VecDeque::from([response.bytes]),
            real_requests: VecDeque::new(),
            real_responses: VecDeque::new(),
            reassembly: Default::default(),
            i_done: 0,
            r_done: 0,
            i_bad: false,
            r_bad: false,
        };
        run.drain();
        assert_eq!(
            run.real_requests.len(),
            1,
            "the initiator sent an IKE_INTERMEDIATE request"
        );
        run
    }

    fn step(&mut self, step: IntStep) {
        match step {
            IntStep::Sealed(sealed) => self.sealed(&sealed),
            IntStep::Fragment {
                flags,
                message_id: id,
                number,
                total,
                first_payload,
                piece,
            } => {
                let to_initiator = flags & 1 != 0;
                let header = self.header(
                    to_initiator,
                    flags & 2 != 0,
                    false,
                    ExchangeType::IkeIntermediate,
                    message_id(id),
                    false,
                );
                let cipher = self.cipher(to_initiator, flags & 4 != 0);
                let next = PayloadType::from(first_payload);
                if let Ok(bytes) = cipher.seal_fragment(&header, next, number, total, &piece) {
                    self.deliver(to_initiator, &bytes);
                }
            }
            IntStep::Raw { flags, mut bytes } => {
                let to_initiator = flags & 1 != 0;
                if flags & 2 != 0 && bytes.len() >= 16 {
                    bytes[..8].copy_from_slice(&self.spis.0.to_be_bytes());
                    bytes[8..16].copy_from_slice(&self.spis.1.to_be_bytes());
                }
                let taken = self.deliver(to_initiator, &bytes);
                assert!(!taken, "unencrypted bytes completed a key exchange");
            }
            IntStep::Relay => self.relay(),
            IntStep::Wait(seconds) => self.wait(seconds),
            IntStep::Replay {
                flags,
                index,
                at,
                xor,
            } => {
                let from_responder = flags & 1 != 0;
                let sent = if from_responder {
                    &self.sent_by_responder
                } else {
                    &self.sent_by_initiator
                };
                if sent.is_empty() {
                    return;
                }
                let mut bytes = sent[sent.len() - 1 - usize::from(index) % sent.len()].clone();
                if !bytes.is_empty() {
                    let at = usize::from(at) % bytes.len();
                    bytes[at] ^= xor;
                }
                self.deliver(from_responder, &bytes);
            }
        }
        self.drain();
    }

    /// A message built from the input, sealed under the receiver's keys.
    fn sealed(&mut self, s: &Sealed) {
        let f = s.flags;
        let exchange = if f & 4 != 0 {
            ExchangeType::from(s.exchange)
        } else {
            ExchangeType::IkeIntermediate
        };
        let header = self.header(
            s.to_initiator,
            f & 1 != 0,
            f & 2 != 0,
            exchange,
            message_id(s.message_id),
            f & 0x80 != 0,
        );
        let payloads = self.payloads(&s.payloads, s.to_initiator);
        let cipher = self.cipher(s.to_initiator, f & 0x40 != 0);
        let sealed = if f & 8 != 0 {
            let max_len = 100 + 8 * usize::from(s.fragment_len);
            cipher.seal_fragments(&header, &payloads, max_len)
        } else {
            cipher.seal(&header, &payloads).map(|bytes| vec![bytes])
        };
        let Ok(mut datagrams) = sealed else {
            return;
        };
        // What the receiver opens, if the message goes whole: a fragmented
        // one may complete with pieces of earlier steps.
        let whole = match datagrams.as_slice() {
            [one] => cipher.open(one).ok(),
            _ => None,
        };
        if f & 0x10 != 0 {
            datagrams.reverse();
        }
        if f & 0x20 != 0 && datagrams.len() > 1 {
            datagrams.pop();
        }
        let done = self.done(s.to_initiator);
        let mut taken = false;
        for bytes in &datagrams {
            taken |= self.deliver(s.to_initiator, bytes);
        }
        if let (true, Some(message)) = (taken, whole) {
            self.check_taken(s.to_initiator, &message, done);
        }
    }

    /// A side took `message` as its IKE_INTERMEDIATE message number
    /// `done`: it must have had a good KE payload, and if it is not what
    /// the peer sent, neither side may be established from now on.
    fn check_taken(&mut self, to_initiator: bool, message: &Message, done: usize) {
        let expected = self
            .suite
            .additional_key_exchanges()
            .nth(done)
            .expect("no more key exchanges than the proposal has");
        let group = find_group(expected).expect("a supported group");
        let kes = || {
            message.payloads.iter().filter_map(|p| match p {
                Payload::KeyExchange(ke) => Some(ke),
                _ => None,
            })
        };
        let (ke, len) = if to_initiator {
            // The initiator reads the first KE payload.
            (kes().next(), group.response_len)
        } else {
            // The responder reads the first of its pending group.
            (kes().find(|ke| ke.group == expected), group.public_len)
        };
        let ke = ke.map(|ke| (ke.group, ke.data.len()));
        assert_eq!(
            ke,
            Some((expected, len)),
            "a side took a bad KE payload (to the initiator: {to_initiator})"
        );
        let real = if to_initiator {
            &self.real_responses
        } else {
            &self.real_requests
        };
        if !real.iter().any(|r| same(r, message)) {
            if to_initiator {
                self.i_bad = true;
            } else {
                self.r_bad = true;
            }
        }
    }

    /// The header of a fuzzed message to one side.
    fn header(
        &self,
        to_initiator: bool,
        flip_response: bool,
        flip_initiator: bool,
        exchange: ExchangeType,
        message_id: u32,
        wrong_spi: bool,
    ) -> Header {
        Header {
            initiator_spi: self.spis.0,
            responder_spi: if wrong_spi { !self.spis.1 } else { self.spis.1 },
            next_payload: PayloadType::None,
            major_version: MAJOR_VERSION,
            minor_version: 0,
            exchange_type: exchange,
            response: to_initiator ^ flip_response,
            version: false,
            initiator: !to_initiator ^ flip_initiator,
            message_id,
            length: 0,
        }
    }

    /// The payloads of a fuzzed message to one side.
    fn payloads(&self, specs: &[PayloadSpec], to_initiator: bool) -> Vec<Payload> {
        // The sender's side's newest real message.
        let real = if to_initiator {
            self.real_responses.back()
        } else {
            self.real_requests.back()
        };
        let real_value = real
            .and_then(|m| first_ke(m))
            .map_or(&[][..], |ke| &ke.data[..]);
        let additional: Vec<DhGroup> = self.suite.additional_key_exchanges().collect();
        let pending = additional
            .get(self.done(to_initiator))
            .or(additional.first())
            .copied()
            .unwrap_or(DhGroup::MlKem768);
        let mut out = Vec::new();
        for spec in specs {
            match spec {
                PayloadSpec::Ke { group, data } => {
                    let group = match group {
                        0 => pending,
                        g => DhGroup::from(u16::from(*g)),
                    };
                    let data = match data {
                        DataSpec::Real => real_value.to_vec(),
                        DataSpec::Fresh => self.fresh(group, to_initiator),
                        DataSpec::Cut(len) => {
                            real_value[..real_value.len().min(usize::from(*len))].to_vec()
                        }
                        DataSpec::Flip { at, xor } => {
                            let mut data = real_value.to_vec();
                            if !data.is_empty() {
                                let at = usize::from(*at) % data.len();
                                data[at] ^= xor;
                            }
                            data
                        }
                        DataSpec::Raw(bytes) => bytes.clone(),
                    };
                    out.push(Payload::KeyExchange(KePayload { group, data }));
                }
                PayloadSpec::Notify { notify_type, data } => out.push(Payload::Notify(
                    Notify::new(NotifyType::from(*notify_type), data.clone()),
                )),
                PayloadSpec::Nonce(bytes) => out.push(Payload::Nonce(bytes.clone())),
                PayloadSpec::VendorId(bytes) => out.push(Payload::VendorId(bytes.clone())),
                PayloadSpec::Real => {
                    out.extend(real.iter().flat_map(|m| m.payloads.iter().cloned()));
                }
            }
        }
        out
    }

    /// A valid value of `group` the real peer never sent: to the
    /// initiator, the ciphertext of a new encapsulation to its real
    /// encapsulation key (or a new public value); to the responder, a new
    /// public value or encapsulation key.
    fn fresh(&self, group: DhGroup, to_initiator: bool) -> Vec<u8> {
        if to_initiator {
            let ek = self
                .real_requests
                .iter()
                .rev()
                .filter_map(first_ke)
                .find(|ke| ke.group == group);
            if let Some(Ok((ciphertext, _))) = ek.map(|ek| respond(group, &ek.data)) {
                return ciphertext;
            }
        }
        start(group).map_or_else(|_| Vec::new(), |kex| kex.public_value().to_vec())
    }

    /// The cipher that protects messages to one side: the receiver's
    /// current keys, or (`initial`, or once it has none) those of
    /// IKE_SA_INIT.
    fn cipher(&mut self, to_initiator: bool, initial: bool) -> SkCipher {
        let current = self.keys_of(to_initiator).filter(|_| !initial);
        let (suite, keys) = current.unwrap_or((self.suite, self.keys0.clone()));
        // The responder's outbound cipher is the initiator's inbound one.
        let (from_i, from_r) = SkCipher::pair(&suite, &keys, true).expect("the IKE SA's keys");
        if to_initiator { from_r } else { from_i }
    }

    /// The suite and keys a side has now, if any.
    fn keys_of(&mut self, initiator: bool) -> Option<(IkeSuite, IkeKeys)> {
        let sa = if initiator {
            Some(&mut self.initiator)
        } else {
            self.endpoint.sa_mut(self.handle)
        };
        sa.and_then(|sa| sa.export_keys().map(|k| (k.suite, k.keys.clone())))
    }

    fn established(&mut self, initiator: bool) -> bool {
        if initiator {
            self.initiator.is_established()
        } else {
            self.endpoint
                .sa_mut(self.handle)
                .is_some_and(|sa| sa.is_established())
        }
    }

    /// The additional key exchanges one side completed.
    fn done(&self, initiator: bool) -> usize {
        if initiator { self.i_done } else { self.r_done }
    }

    /// Hands a datagram to one side. Whether it completed an additional
    /// key exchange with it: its keys changed before IKE_AUTH.
    fn deliver(&mut self, to_initiator: bool, bytes: &[u8]) -> bool {
        let before = self.keys_of(to_initiator);
        let established = self.established(to_initiator);
        if to_initiator {
            self.initiator.handle_datagram(self.now, RESPONDER, bytes);
        } else if let DatagramEvent::NewSa(incoming) =
            self.endpoint.handle_datagram(self.now, INITIATOR, bytes)
        {
            self.endpoint.refuse(incoming);
        }
        let after = self.keys_of(to_initiator);
        let taken =
            !established && matches!((&before, &after), (Some((_, b)), Some((_, a))) if a != b);
        if taken {
            if to_initiator {
                self.i_done += 1;
            } else {
                self.r_done += 1;
            }
        }
        taken
    }

    /// The real messages each side sent go to the other: the initiator's
    /// first, then the responder's (its answers included).
    fn relay(&mut self) {
        while let Some(bytes) = self.to_responder.pop_front() {
            self.deliver(false, &bytes);
        }
        self.drain();
        while let Some(bytes) = self.to_initiator.pop_front() {
            self.deliver(true, &bytes);
        }
    }

    /// The clock moves `seconds + 1` seconds; both sides' timers run in
    /// order as they fall due.
    fn wait(&mut self, seconds: u8) {
        let end = self.now + Duration::from_secs(u64::from(seconds) + 1);
        for _ in 0..MAX_TIMERS {
            let due = [self.initiator.poll_timeout(), self.endpoint.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .filter(|t| *t <= end);
            let Some(due) = due else {
                break;
            };
            self.now = self.now.max(due);
            self.initiator.handle_timeout(self.now);
            self.endpoint.handle_timeout(self.now);
            let now = self.now;
            assert!(
                self.initiator.poll_timeout().is_none_or(|t| t > now),
                "a handled timer of the initiator is still due"
            );
            assert!(
                self.endpoint.poll_timeout().is_none_or(|t| t > now),
                "a handled timer of the responder is still due"
            );
            self.drain();
        }
        self.now = end;
        self.initiator.handle_timeout(end);
        self.endpoint.handle_timeout(end);
        self.drain();
    }

    /// Takes what both sides sent and their events, and checks them.
    fn drain(&mut self) {
        self.remember_keys();
        let mut from_initiator = Vec::new();
        while let Some(t) = self.initiator.poll_transmit() {
            assert_eq!(t.dst.ip(), RESPONDER.ip());
            from_initiator.push(t.bytes);
            assert!(from_initiator.len() <= MAX_PER_STEP, "too many datagrams");
        }
        while let Some(t) = self.endpoint.poll_transmit() {
            check_sent(&t.bytes);
        }
        let mut from_responder = Vec::new();
        let mut events = Vec::new();
        if let Some(sa) = self.endpoint.sa_mut(self.handle) {
            while let Some(t) = sa.poll_transmit() {
                assert_eq!(t.dst.ip(), INITIATOR.ip());
                from_responder.push(t.bytes);
                assert!(from_responder.len() <= MAX_PER_STEP, "too many datagrams");
            }
            while let Some(event) = sa.poll_event() {
                events.push(event);
            }
        }
        while let Some(event) = self.initiator.poll_event() {
            events.push(event);
        }
        for event in &events {
            if matches!(event, Event::IkeSaEstablished | Event::ChildSaUp { .. }) {
                assert!(
                    !self.i_bad && !self.r_bad,
                    "established after a fuzzed IKE_INTERMEDIATE message: {event:?}"
                );
            }
        }
        for bytes in from_initiator {
            check_sent(&bytes);
            self.capture(false, &bytes);
            push(&mut self.to_responder, bytes.clone(), QUEUE);
            push(&mut self.sent_by_initiator, bytes, KEPT);
        }
        for bytes in from_responder {
            check_sent(&bytes);
            self.capture(true, &bytes);
            push(&mut self.to_initiator, bytes.clone(), QUEUE);
            push(&mut self.sent_by_responder, bytes, KEPT);
        }
    }

    /// Keeps both sides' current keys, to open what they send next (the
    /// responder seals its IKE_INTERMEDIATE response with the keys from
    /// before the update, the initiator its next request with the new).
    fn remember_keys(&mut self) {
        for initiator in [true, false] {
            let Some(keys) = self.keys_of(initiator) else {
                continue;
            };
            if !self.history.iter().any(|(_, k)| *k == keys.1) {
                if self.history.len() == MAX_KEYS {
                    self.history.remove(1);
                }
                self.history.push(keys);
            }
        }
    }

    /// Opens a real IKE_INTERMEDIATE message a side sent (reassembling its
    /// fragments) and keeps it.
    fn capture(&mut self, from_responder: bool, bytes: &[u8]) {
        let Ok(header) = Header::decode(bytes) else {
            return;
        };
        if header.exchange_type != ExchangeType::IkeIntermediate
            || header.response != from_responder
        {
            return;
        }
        for (suite, keys) in self.history.iter().rev() {
            let Ok((from_i, from_r)) = SkCipher::pair(suite, keys, true) else {
                continue;
            };
            let cipher = if from_responder { from_r } else { from_i };
            let message = match header.next_payload {
                PayloadType::Encrypted => match cipher.open(bytes) {
                    Ok(message) => Some(message),
                    Err(_) => continue,
                },
                PayloadType::EncryptedFragment => {
                    if cipher.open_fragment(bytes).is_err() {
                        continue;
                    }
                    let reassembly = &mut self.reassembly[usize::from(from_responder)];
                    match reassembly.add(self.now, &cipher, bytes) {
                        Ok(Added::Complete(message)) => Some(message),
                        _ => None,
                    }
                }
                _ => None,
            };
            if let Some(message) = message {
                let real = if from_responder {
                    &mut self.real_responses
                } else {
                    &mut self.real_requests
                };
                push(real, message, REAL);
            }
            return;
        }
    }

    /// Neither side is established after a fuzzed message was taken.
    fn check(&mut self) {
        if self.i_bad || self.r_bad {
            assert!(!self.initiator.is_established(), "initiator established");
            assert!(!self.established(false), "responder established");
        }
    }
}

/// Whether two IKE_INTERMEDIATE messages give the same IntAuth octets
/// (RFC 9242 section 3.3.2): the same header and payloads.
fn same(a: &Message, b: &Message) -> bool {
    matches!(
        (
            int_auth_octets(&a.header, &a.payloads),
            int_auth_octets(&b.header, &b.payloads),
        ),
        (Ok(x), Ok(y)) if x == y
    )
}

/// The first KE payload of a message.
fn first_ke(message: &Message) -> Option<&KePayload> {
    message.payloads.iter().find_map(|p| match p {
        Payload::KeyExchange(ke) => Some(ke),
        _ => None,
    })
}

/// Queues an item, forgetting the oldest beyond `max`.
fn push<T>(queue: &mut VecDeque<T>, item: T, max: usize) {
    if queue.len() == max {
        queue.pop_front();
    }
    queue.push_back(item);
}

/// What a side sends is a well-formed IKE message: IKE version 2, with
/// the initiator's SPI. A `Transmit` is the bare IKE message on either
/// port (the driver adds the non-ESP marker).
fn check_sent(bytes: &[u8]) {
    let message = Message::decode(bytes).expect("a side sent a malformed IKE message");
    assert_eq!(message.header.major_version, MAJOR_VERSION);
    assert_ne!(message.header.initiator_spi, 0);
}
