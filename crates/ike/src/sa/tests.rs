//! An initiator and a responder in memory, quinn-style: a [`Pair`] moves
//! datagrams between them and drives a test clock, so that every test is
//! deterministic (SPIs and nonces come from [`SeededRandom`]).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tunsec_esp::{Key, PacketBuf, Sa, Suite};

use super::followup;
use super::payloads::Payloads;
use super::random::NONCE_LEN;
use super::state::{
    AuthSent, Child, ChildOffer, Established, ExpectAuth, Outstanding, Request, Role, Sk, State,
};
use super::*;
use crate::error::Error;
use crate::message::{
    Delete, DhGroup, ExchangeType, Header, Identity, Message, NotifyType, Payload, PayloadType,
    TrafficSelector,
};
use crate::proposal::{DEFAULT_ESP, DEFAULT_IKE};

/// What became of a datagram handed to an [`Endpoint`] by [`deliver`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Delivered {
    /// Given to an IKE SA, a new one (an accepted [`Incoming`]) if `new`.
    Sa { handle: SaHandle, new: bool },
    /// Refused: by the endpoint (a cookie request), by `accept`, or by
    /// the responder without state.
    Refused,
    /// Dropped by the endpoint.
    Dropped,
}

/// Hands a datagram to `endpoint` and decides at once on a new
/// IKE_SA_INIT request, as a driver does: accepted with the configuration
/// `accept` gives for its address, or refused when it gives none.
pub(super) fn deliver(
    endpoint: &mut Endpoint,
    now: Instant,
    remote: SocketAddr,
    bytes: &[u8],
    accept: impl FnOnce(SocketAddr) -> Option<(Config, Box<dyn Random + Send>)>,
) -> Delivered {
    match endpoint.handle_datagram(now, remote, bytes) {
        DatagramEvent::Sa(handle) => Delivered::Sa { handle, new: false },
        DatagramEvent::NewSa(incoming) => match accept(incoming.remote()) {
            Some((config, rng)) => match endpoint.accept(incoming, now, config, rng) {
                Some(handle) => Delivered::Sa { handle, new: true },
                None => Delivered::Refused,
            },
            None => {
                endpoint.refuse(incoming);
                Delivered::Refused
            }
        },
        DatagramEvent::Refused => Delivered::Refused,
        DatagramEvent::Dropped => Delivered::Dropped,
    }
}

const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn addr(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), 500)
}

fn config(local: &str, remote: &str, psk: &[u8]) -> Config {
    Config::new(
        Identity::Fqdn(local.into()),
        Some(Identity::Fqdn(remote.into())),
        Key::from_slice(psk),
    )
}

fn initiator_config() -> Config {
    config(
        "a.tunsec.test",
        "b.tunsec.test",
        b"correct horse battery staple",
    )
}

fn responder_config() -> Config {
    config(
        "b.tunsec.test",
        "a.tunsec.test",
        b"correct horse battery staple",
    )
}

/// Two IKE SAs joined by an in-memory network with a test clock.
struct Pair {
    now: Instant,
    initiator: IkeSa,
    responder: IkeSa,
    i_events: Vec<Event>,
    r_events: Vec<Event>,
    /// Datagrams the initiator sent, in order.
    from_initiator: Vec<Vec<u8>>,
    /// Datagrams the responder sent, in order.
    from_responder: Vec<Vec<u8>>,
    /// Indices (in `from_responder`) of datagrams the network loses.
    lose_from_responder: Vec<usize>,
    /// Lose everything the responder sends.
    responder_mute: bool,
}

impl Pair {
    fn new(i: Config, r: Config) -> Self {
        Self::seeded(i, r, 1, 2)
    }

    fn seeded(i: Config, r: Config, i_seed: u64, r_seed: u64) -> Self {
        let now = Instant::now();
        let initiator =
            IkeSa::initiate(i, addr(B), now, Box::new(SeededRandom::new(i_seed))).unwrap();
        let responder = IkeSa::respond(r, Box::new(SeededRandom::new(r_seed)));
        Self {
            now,
            initiator,
            responder,
            i_events: Vec::new(),
            r_events: Vec::new(),
            from_initiator: Vec::new(),
            from_responder: Vec::new(),
            lose_from_responder: Vec::new(),
            responder_mute: false,
        }
    }

    fn collect_events(&mut self) {
        while let Some(e) = self.initiator.poll_event() {
            self.i_events.push(e);
        }
        while let Some(e) = self.responder.poll_event() {
            self.r_events.push(e);
        }
    }

    /// Moves every queued datagram once; whether anything moved.
    fn step(&mut self) -> bool {
        let mut moved = false;
        while let Some(t) = self.initiator.poll_transmit() {
            assert_eq!(t.dst, addr(B));
            self.from_initiator.push(t.bytes.clone());
            self.responder.handle_datagram(self.now, addr(A), &t.bytes);
            moved = true;
        }
        while let Some(t) = self.responder.poll_transmit() {
            assert_eq!(t.dst, addr(A));
            let index = self.from_responder.len();
            self.from_responder.push(t.bytes.clone());
            if !self.responder_mute && !self.lose_from_responder.contains(&index) {
                self.initiator.handle_datagram(self.now, addr(B), &t.bytes);
            }
            moved = true;
        }
        self.collect_events();
        moved
    }

    /// Runs until nothing moves and no timer is armed.
    fn drive(&mut self) {
        for _ in 0..100 {
            if self.step() {
                continue;
            }
            let next = [self.initiator.poll_timeout(), self.responder.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next else { return };
            assert!(next >= self.now, "timer in the past");
            self.now = next;
            self.initiator.handle_timeout(self.now);
            self.responder.handle_timeout(self.now);
            self.collect_events();
        }
        panic!("the pair did not settle");
    }

    /// Moves datagrams and runs timers until the next timer would fire
    /// after `end`; some timer is always armed (lifetimes).
    fn run_until(&mut self, end: Instant) {
        loop {
            while self.step() {}
            let next = [self.initiator.poll_timeout(), self.responder.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .expect("a timer is armed");
            if next > end {
                return;
            }
            assert!(next >= self.now, "timer in the past");
            self.now = next;
            self.initiator.handle_timeout(self.now);
            self.responder.handle_timeout(self.now);
            self.collect_events();
        }
    }

    fn child(events: &[Event]) -> Option<(ChildSaParams, ChildSaParams)> {
        events.iter().find_map(|e| match e {
            Event::ChildSaUp { inbound, outbound } => Some((inbound.clone(), outbound.clone())),
            _ => None,
        })
    }
}

/// Seals a UDP payload with `out` and opens it with `inb`.
fn esp_round_trip(out: &ChildSaParams, inb: &ChildSaParams, now: Instant) {
    let mut sender = Sa::new(out.sa_config(), now).unwrap();
    let mut receiver = Sa::new(inb.sa_config(), now).unwrap();
    let payload = b"\x12\xb5\x12\xb5\x00\x14\x00\x00vxlan frame!";
    let mut storage = vec![0u8; 256];
    storage[64..64 + payload.len()].copy_from_slice(payload);
    let (start, end) = {
        let mut buf = PacketBuf::new(&mut storage, 64, 64 + payload.len());
        sender.seal_esp(&mut buf, 17, now).unwrap();
        (buf.start(), buf.end())
    };
    let mut buf = PacketBuf::new(&mut storage, start, end);
    assert_eq!(receiver.open_esp(&mut buf, now).unwrap(), 17);
    assert_eq!(buf.data(), payload);
}

fn assert_established(p: &Pair) -> (ChildSaParams, ChildSaParams, ChildSaParams, ChildSaParams) {
    assert!(p.initiator.is_established(), "{:?}", p.i_events);
    assert!(p.responder.is_established(), "{:?}", p.r_events);
    assert_eq!(p.i_events[0], Event::IkeSaEstablished);
    assert_eq!(p.r_events[0], Event::IkeSaEstablished);
    let (i_in, i_out) = Pair::child(&p.i_events).expect("initiator ChildSaUp");
    let (r_in, r_out) = Pair::child(&p.r_events).expect("responder ChildSaUp");
    // Crosswise: what one side sends with, the other receives with.
    for (out, inb) in [(&i_out, &r_in), (&r_out, &i_in)] {
        assert_eq!(out.spi, inb.spi);
        assert_eq!(out.keys, inb.keys);
        assert_eq!(out.suite, inb.suite);
        assert_eq!(out.esn, inb.esn);
        assert_eq!(out.local_ts, inb.remote_ts);
        assert_eq!(out.remote_ts, inb.local_ts);
        assert!(out.transport && inb.transport);
        esp_round_trip(out, inb, p.now);
    }
    assert_ne!(i_in.spi, i_out.spi);
    assert_ne!(i_in.keys, i_out.keys);
    (i_in, i_out, r_in, r_out)
}

/// Every default IKE proposal with every default ESP proposal: both sides
/// agree on the suite, derive crosswise-equal Child SA keys and SPIs, and
/// the keys work in tunsec-esp.
#[test]
fn happy_path_every_default() {
    let groups = [DhGroup::Curve25519, DhGroup::Ecp384, DhGroup::Modp2048];
    let suites = [
        Suite::AesGcm128,
        Suite::AesGcm256,
        Suite::AesCbc256HmacSha256,
    ];
    for (ike, group) in DEFAULT_IKE.iter().zip(groups) {
        for (esp, suite) in DEFAULT_ESP.iter().zip(suites) {
            let i = initiator_config().with_proposals(ike, esp).unwrap();
            let mut p = Pair::new(i, responder_config());
            p.drive();
            let (i_in, ..) = assert_established(&p);
            assert_eq!(i_in.suite, suite, "{ike} {esp}");
            let i_suite = p.initiator.ike_suite().unwrap();
            assert_eq!(i_suite, p.responder.ike_suite().unwrap());
            assert_eq!(i_suite.group, group);
            // Two exchanges, no retransmission, nothing dropped.
            assert_eq!(p.from_initiator.len(), 2);
            assert_eq!(p.from_responder.len(), 2);
            assert_eq!(p.initiator.stats(), Stats::default());
            assert_eq!(p.responder.stats(), Stats::default());
            assert_eq!(p.initiator.poll_timeout(), None);
        }
    }
}

std::thread_local! {
    /// What this thread logged, under [`capture_log`].
    static THREAD_LOG: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes into this thread's [`THREAD_LOG`].
struct ThreadLog;

impl std::io::Write for ThreadLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        THREAD_LOG.with(|log| log.borrow_mut().extend_from_slice(buf));
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `f` and returns what it logged on this thread, at every level
/// down to debug. The subscriber is the process's global one, installed
/// once: a scoped one (`with_default`) races with the callsite interest
/// that other test threads register meanwhile, and then misses events.
fn capture_log<T>(f: impl FnOnce() -> T) -> (T, String) {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(|| ThreadLog)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        // A callsite another thread was registering during the install
        // may have cached "never"; registrations from now on see the
        // subscriber, and this corrects the ones in between.
        tracing::callsite::rebuild_interest_cache();
    });
    THREAD_LOG.with(|log| log.borrow_mut().clear());
    let out = f();
    let text = THREAD_LOG.with(|log| std::mem::take(&mut *log.borrow_mut()));
    (out, String::from_utf8(text).unwrap())
}

/// At debug level an IKE SA logs every message sent and received (the
/// exchange, request or response, message ID, payloads, peer), the
/// proposals offered and chosen, and the selectors offered and narrowed;
/// never the PSK nor a key; and nothing above debug.
#[test]
fn debug_log_tells_the_exchanges_without_keys() {
    let (a, b) = (IpAddr::V4(A), IpAddr::V4(B));
    let r = responder_config().with_selectors(
        vec![ts::host(b, 17, 4789, 4789)],
        vec![ts::host(a, 17, 0, u16::MAX)],
    );
    // The initiator sends its IKE_SA_INIT request when it is made.
    let (p, text) = capture_log(|| {
        let mut p = Pair::new(initiator_config(), r);
        p.drive();
        p
    });
    for line in text.lines() {
        assert!(line.contains(" DEBUG "), "not at debug level: {line}");
    }
    let (i_in, i_out, ..) = assert_established(&p);
    for want in [
        "IKE sent IKE_SA_INIT request 0 peer=192.0.2.2:500 exchange=IKE_SA_INIT message_id=0 response=false initiator=true",
        "IKE received IKE_SA_INIT request 0 peer=192.0.2.1:500",
        "IKE sent IKE_SA_INIT response 0 peer=192.0.2.1:500",
        "IKE received IKE_SA_INIT response 0 peer=192.0.2.2:500",
        "payloads=SA,KE,No,N(IKEV2_FRAGMENTATION_SUPPORTED)",
        "IKE sent IKE_AUTH request 1",
        "IKE received IKE_AUTH request 1",
        "IKE sent IKE_AUTH response 1",
        "IKE received IKE_AUTH response 1",
        "payloads=IDi,IDr,AUTH,N(USE_TRANSPORT_MODE),SA,TSi,TSr",
        "payloads=IDr,AUTH,N(USE_TRANSPORT_MODE),SA,TSi,TSr",
        "IKE proposals offered",
        "chosen=aes128gcm16-prfsha256-x25519\n",
        "IKE proposal chosen by the peer",
        "ESP proposals offered (IKE_AUTH)",
        "ESP proposal chosen by the peer",
        "traffic selectors offered (IKE_AUTH) peer=192.0.2.2:500 tsi=0.0.0.0/0 tsr=0.0.0.0/0",
        "traffic selectors narrowed",
        "tsi=192.0.2.1/32[udp] tsr=192.0.2.2/32[udp/4789]",
    ] {
        assert!(text.contains(want), "no {want:?} in the log:\n{text}");
    }
    // The SPIs: the IKE SPIs in every message, the ESP SPIs with the
    // proposals.
    let (spi_i, spi_r) = p.initiator.spis();
    assert!(text.contains(&format!("spi_i={spi_i:#018x} spi_r={spi_r:#018x}")));
    assert!(
        text.contains(&format!("spi_in={:#010x}", i_in.spi)),
        "{text}"
    );
    assert!(
        text.contains(&format!("spi_out=0x{:08x}", i_out.spi)),
        "{text}"
    );
    // No secret: neither the PSK nor any Child SA key, in any form.
    assert!(!text.contains("correct horse"), "the PSK is in the log");
    for key in [&i_in.keys.encryption, &i_out.keys.encryption] {
        let hex: String = key.expose().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!text.contains(&hex[..16]), "a key is in the log");
    }
    assert!(!text.contains("SK_"), "{text}");
}

/// The same seeds give the same SPIs: the test is deterministic.
#[test]
fn deterministic_spis() {
    let run = || {
        let mut p = Pair::new(initiator_config(), responder_config());
        p.drive();
        let (i_in, i_out, ..) = assert_established(&p);
        (p.initiator.spis(), i_in.spi, i_out.spi)
    };
    assert_eq!(run(), run());
}

/// Host-to-host UDP selectors for the overlay are offered and kept; the
/// ESP engine gets them as selectors.
#[test]
fn overlay_selectors() {
    let (a, b) = (IpAddr::V4(A), IpAddr::V4(B));
    let i = initiator_config().with_selectors(
        vec![ts::host(a, 17, 0, u16::MAX)],
        vec![ts::host(b, 17, 4789, 4789)],
    );
    let mut p = Pair::new(i, responder_config());
    p.drive();
    let (i_in, _, r_in, _) = assert_established(&p);
    assert_eq!(i_in.local_ts, vec![ts::host(a, 17, 0, u16::MAX)]);
    assert_eq!(r_in.local_ts, vec![ts::host(b, 17, 4789, 4789)]);
    let sel = r_in.sa_config().selectors;
    assert_eq!(sel.len(), 1);
    assert_eq!(sel[0].protocol, Some(17));
    assert_eq!(sel[0].local_ports, tunsec_esp::PortRange::single(4789));
}

/// The responder narrows the initiator's selectors to its policy.
#[test]
fn responder_narrows_selectors() {
    let (a, b) = (IpAddr::V4(A), IpAddr::V4(B));
    let r = responder_config().with_selectors(
        vec![ts::host(b, 17, 4789, 4789)],
        vec![ts::host(a, 17, 0, u16::MAX)],
    );
    let mut p = Pair::new(initiator_config(), r);
    p.drive();
    let (i_in, ..) = assert_established(&p);
    assert_eq!(i_in.local_ts, vec![ts::host(a, 17, 0, u16::MAX)]);
    assert_eq!(i_in.remote_ts, vec![ts::host(b, 17, 4789, 4789)]);
}

/// tunsecd's `[peer.ike] selectors = "ports"`: for each tunnel port P,
/// `addr[udp/P]`.
fn port_ts(addr: IpAddr, ports: &[u16]) -> Vec<TrafficSelector> {
    ports.iter().map(|&p| ts::host(addr, 17, p, p)).collect()
}

/// A responder configured host to host (UDP, any port) accepts an
/// initiator's offer narrowed to the overlay's ports as it is: both sides
/// end with the port selectors, and the ESP engine gets their cross
/// product (RFC 7296 section 2.9: any TSi entry with any TSr entry).
#[test]
fn host_responder_keeps_port_offer() {
    let (a, b) = (IpAddr::V4(A), IpAddr::V4(B));
    let ports = [4789, 6081];
    let i = initiator_config().with_selectors(port_ts(a, &ports), port_ts(b, &ports));
    let r = responder_config().with_selectors(
        vec![ts::host(b, 17, 0, u16::MAX)],
        vec![ts::host(a, 17, 0, u16::MAX)],
    );
    let mut p = Pair::new(i, r);
    p.drive();
    let (i_in, _, r_in, _) = assert_established(&p);
    assert_eq!(i_in.local_ts, port_ts(a, &ports));
    assert_eq!(i_in.remote_ts, port_ts(b, &ports));
    assert_eq!(r_in.local_ts, port_ts(b, &ports));
    let sel = r_in.sa_config().selectors;
    assert_eq!(sel.len(), 4);
    let pairs: Vec<(u16, u16)> = sel
        .iter()
        .map(|s| (s.local_ports.start, s.remote_ports.start))
        .collect();
    assert_eq!(
        pairs,
        [(4789, 4789), (4789, 6081), (6081, 4789), (6081, 6081)]
    );
    assert!(sel.iter().all(|s| s.protocol == Some(17)));
}

/// The reverse: a responder configured with the overlay's ports narrows a
/// host-to-host offer to them (RFC 7296 section 2.9), and the initiator
/// takes the narrowed selectors (a subset of its offer).
#[test]
fn port_responder_narrows_host_offer() {
    let (a, b) = (IpAddr::V4(A), IpAddr::V4(B));
    let ports = [4789, 6081];
    let i = initiator_config().with_selectors(
        vec![ts::host(a, 17, 0, u16::MAX)],
        vec![ts::host(b, 17, 0, u16::MAX)],
    );
    let r = responder_config().with_selectors(port_ts(b, &ports), port_ts(a, &ports));
    let mut p = Pair::new(i, r);
    p.drive();
    let (i_in, i_out, r_in, _) = assert_established(&p);
    assert_eq!(i_in.local_ts, port_ts(a, &ports));
    assert_eq!(i_in.remote_ts, port_ts(b, &ports));
    assert_eq!(r_in.remote_ts, port_ts(a, &ports));
    // The initiator's outbound SA: from A's tunnel ports to B's.
    let flow = |sport, dport| tunsec_esp::FlowKey {
        src: a,
        dst: b,
        protocol: 17,
        src_port: Some(sport),
        dst_port: Some(dport),
    };
    let sel = i_out.sa_config().selectors;
    let covers = |f: &tunsec_esp::FlowKey| sel.iter().any(|s| s.matches_outbound(f));
    assert!(covers(&flow(4789, 4789)) && covers(&flow(6081, 4789)));
    assert!(!covers(&flow(50000, 4789)) && !covers(&flow(4789, 6080)));

    // A rekey keeps them: the initiator offers host to host again and the
    // responder narrows again.
    p.initiator.rekey_child(p.now).unwrap();
    p.drive();
    let rekeyed = p
        .i_events
        .iter()
        .find_map(|e| match e {
            Event::ChildSaRekeyed { inbound, .. } => Some(inbound.clone()),
            _ => None,
        })
        .expect("ChildSaRekeyed");
    assert_eq!(rekeyed.local_ts, port_ts(a, &ports));
    assert_eq!(rekeyed.remote_ts, port_ts(b, &ports));
}

/// Selectors without overlap: TS_UNACCEPTABLE; the IKE SA stands.
#[test]
fn ts_unacceptable() {
    let c = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
    let i = initiator_config().with_selectors(
        vec![TrafficSelector::any_ipv4()],
        vec![ts::host(IpAddr::V4(B), 0, 0, u16::MAX)],
    );
    let r = responder_config().with_selectors(
        vec![ts::host(c, 0, 0, u16::MAX)],
        vec![TrafficSelector::any_ipv4()],
    );
    let mut p = Pair::new(i, r);
    p.drive();
    assert!(p.initiator.is_established() && p.responder.is_established());
    let refused = |by_peer| Event::Failed {
        notify: NotifyType::TsUnacceptable,
        by_peer,
    };
    assert_eq!(p.i_events, vec![Event::IkeSaEstablished, refused(true)]);
    assert_eq!(p.r_events, vec![Event::IkeSaEstablished, refused(false)]);
}

/// A wrong PSK: the responder's AUTH check fails, it answers
/// AUTHENTICATION_FAILED inside SK, and both sides report AuthFailed.
#[test]
fn wrong_psk() {
    let r = config("b.tunsec.test", "a.tunsec.test", b"another key");
    let mut p = Pair::new(initiator_config(), r);
    p.drive();
    assert_eq!(
        p.r_events,
        vec![Event::AuthFailed {
            reason: AuthFailure::BadAuth
        }]
    );
    assert_eq!(
        p.i_events,
        vec![Event::AuthFailed {
            reason: AuthFailure::RejectedByPeer
        }]
    );
    assert!(p.initiator.is_closed() && p.responder.is_closed());
    // The notify travelled encrypted: the response is one SK payload.
    let response = Message::decode(&p.from_responder[1]).unwrap();
    assert!(matches!(response.payloads[..], [Payload::Encrypted(_)]));
    assert_eq!(p.initiator.poll_timeout(), None);
}

/// The responder expects another identity.
#[test]
fn identity_mismatch() {
    let r = config(
        "b.tunsec.test",
        "c.tunsec.test",
        b"correct horse battery staple",
    );
    let mut p = Pair::new(initiator_config(), r);
    p.drive();
    assert_eq!(
        p.r_events,
        vec![Event::AuthFailed {
            reason: AuthFailure::IdentityMismatch {
                presented: Identity::Fqdn(b"a.tunsec.test".to_vec()),
                expected: Identity::Fqdn(b"c.tunsec.test".to_vec()),
            }
        }]
    );
    let Event::AuthFailed { reason } = &p.r_events[0] else {
        unreachable!()
    };
    assert_eq!(
        reason.to_string(),
        "the peer's identity is ID_FQDN a.tunsec.test, the configuration expects ID_FQDN c.tunsec.test"
    );
    assert_eq!(
        reason.unexpected_identity(),
        Some((
            &Identity::Fqdn(b"a.tunsec.test".to_vec()),
            &Identity::Fqdn(b"c.tunsec.test".to_vec())
        ))
    );
    assert_eq!(
        p.i_events,
        vec![Event::AuthFailed {
            reason: AuthFailure::RejectedByPeer
        }]
    );
}

/// No IKE proposal in common: NO_PROPOSAL_CHOSEN, reported by both.
#[test]
fn no_common_ike_proposal() {
    let i = initiator_config()
        .with_proposals("aes256-sha256-modp2048", "aes128gcm16")
        .unwrap();
    let r = responder_config()
        .with_proposals("aes128gcm16-prfsha256-x25519", "aes128gcm16")
        .unwrap();
    let mut p = Pair::new(i, r);
    p.drive();
    let failed = |by_peer| Event::Failed {
        notify: NotifyType::NoProposalChosen,
        by_peer,
    };
    assert_eq!(p.i_events, vec![failed(true)]);
    assert_eq!(p.r_events, vec![failed(false)]);
    assert!(p.initiator.is_closed());
    assert!(!p.responder.is_established());
    assert_eq!(
        p.from_initiator.len(),
        1,
        "no retransmission after an answer"
    );
}

/// No ESP proposal in common: the IKE SA is up, the Child SA refused.
#[test]
fn no_common_esp_proposal() {
    let i = initiator_config()
        .with_proposals(DEFAULT_IKE[0], "aes256-sha256")
        .unwrap();
    let r = responder_config()
        .with_proposals(DEFAULT_IKE[0], "aes128gcm16")
        .unwrap();
    let mut p = Pair::new(i, r);
    p.drive();
    let failed = |by_peer| Event::Failed {
        notify: NotifyType::NoProposalChosen,
        by_peer,
    };
    assert_eq!(p.i_events, vec![Event::IkeSaEstablished, failed(true)]);
    assert_eq!(p.r_events, vec![Event::IkeSaEstablished, failed(false)]);
}

/// The initiator guesses x25519, the responder wants ecp384: it answers
/// INVALID_KE_PAYLOAD and the initiator retries with ecp384.
#[test]
fn invalid_ke_payload_retry() {
    let i = initiator_config()
        .with_proposals("aes128gcm16-prfsha256-x25519-ecp384", "aes128gcm16")
        .unwrap();
    let r = responder_config()
        .with_proposals("aes128gcm16-prfsha256-ecp384", "aes128gcm16")
        .unwrap();
    let mut p = Pair::new(i, r);
    p.drive();
    assert_established(&p);
    assert_eq!(p.initiator.ike_suite().unwrap().group, DhGroup::Ecp384);
    // IKE_SA_INIT twice, then IKE_AUTH.
    assert_eq!(p.from_initiator.len(), 3);
    let first = Message::decode(&p.from_responder[0]).unwrap();
    let n = first.notify(NotifyType::InvalidKePayload).unwrap();
    assert_eq!(n.data, 20u16.to_be_bytes());
    let retry = Message::decode(&p.from_initiator[1]).unwrap();
    assert_eq!(retry.header.initiator_spi, p.initiator.spis().0);
    assert_eq!(retry.header.message_id, 0);
}

/// A lost IKE_SA_INIT response: the initiator retransmits after 0.5 s, the
/// responder answers from its cache, and the SA comes up.
#[test]
fn lost_init_response() {
    let mut p = Pair::new(initiator_config(), responder_config());
    let start = p.now;
    p.lose_from_responder = vec![0];
    p.drive();
    assert_established(&p);
    assert_eq!(p.now - start, RETRANSMIT_TIMEOUT);
    assert_eq!(p.from_initiator[0], p.from_initiator[1]);
    assert_eq!(p.from_responder[0], p.from_responder[1]);
    assert_eq!(p.initiator.stats().retransmits, 1);
    assert_eq!(p.responder.stats().cached_responses, 1);
}

/// A lost IKE_AUTH response: the same, one exchange later; the responder
/// does not set up a second Child SA.
#[test]
fn lost_auth_response() {
    let mut p = Pair::new(initiator_config(), responder_config());
    p.lose_from_responder = vec![1];
    p.drive();
    assert_established(&p);
    assert_eq!(p.from_initiator.len(), 3);
    assert_eq!(p.from_initiator[1], p.from_initiator[2]);
    assert_eq!(p.from_responder[1], p.from_responder[2]);
    assert_eq!(p.responder.stats().cached_responses, 1);
    assert_eq!(p.r_events.len(), 2, "{:?}", p.r_events);
}

/// A duplicated IKE_AUTH request gets the cached response, byte for byte,
/// and changes nothing; the initiator drops the second response.
#[test]
fn duplicated_request() {
    let mut p = Pair::new(initiator_config(), responder_config());
    let init = p.initiator.poll_transmit().unwrap();
    p.responder.handle_datagram(p.now, addr(A), &init.bytes);
    let init_resp = p.responder.poll_transmit().unwrap();
    // A duplicated IKE_SA_INIT request gets the same response.
    p.responder.handle_datagram(p.now, addr(A), &init.bytes);
    assert_eq!(p.responder.poll_transmit().unwrap(), init_resp);
    assert_eq!(p.responder.stats().cached_responses, 1);
    p.initiator
        .handle_datagram(p.now, addr(B), &init_resp.bytes);
    let auth = p.initiator.poll_transmit().unwrap();
    p.responder.handle_datagram(p.now, addr(A), &auth.bytes);
    let first = p.responder.poll_transmit().unwrap();
    p.collect_events();
    let events_before = p.r_events.clone();
    p.responder.handle_datagram(p.now, addr(A), &auth.bytes);
    let second = p.responder.poll_transmit().unwrap();
    assert_eq!(first, second);
    assert!(p.responder.poll_transmit().is_none());
    p.collect_events();
    assert_eq!(p.r_events, events_before);
    assert_eq!(p.responder.stats().cached_responses, 2);
    // RFC 7296 section 2.1, window size 1: once request 1 arrived, the
    // response to request 0 may be forgotten; a late copy is dropped.
    p.responder.handle_datagram(p.now, addr(A), &init.bytes);
    assert!(p.responder.poll_transmit().is_none());
    assert_eq!(p.responder.stats().wrong_message_id, 1);
    p.initiator.handle_datagram(p.now, addr(B), &first.bytes);
    p.initiator.handle_datagram(p.now, addr(B), &second.bytes);
    p.collect_events();
    assert_established(&p);
    assert_eq!(p.i_events.len(), 2);
    assert_eq!(p.initiator.stats().unexpected, 1);
}

/// A peer that never answers: five transmissions at 0, 0.5, 1.5, 3.5 and
/// 7.5 s, then PeerDead at 15.5 s. (The responder, which got every copy
/// of IKE_SA_INIT, gives up on its half-open SA later.)
#[test]
fn peer_dead() {
    let mut p = Pair::new(initiator_config(), responder_config());
    let start = p.now;
    p.responder_mute = true;
    let mut sent_at = Vec::new();
    let mut dead_at = None;
    loop {
        if p.step() {
            sent_at.push(p.now - start);
        }
        let Some(next) = p.initiator.poll_timeout() else {
            break;
        };
        p.now = next;
        p.initiator.handle_timeout(p.now);
        p.collect_events();
        if p.i_events.contains(&Event::PeerDead) {
            dead_at = Some(p.now - start);
        }
    }
    let ms = Duration::from_millis;
    // Exponential back-off up to RETRANSMIT_TIMEOUT_LIMIT (4 s).
    assert_eq!(
        sent_at,
        [ms(0), ms(500), ms(1500), ms(3500), ms(7500), ms(11_500)]
    );
    assert_eq!(dead_at, Some(ms(15_500)));
    assert_eq!(p.i_events, vec![Event::PeerDead]);
    assert!(p.initiator.is_closed());
    assert_eq!(p.from_initiator.len(), MAX_TRANSMISSIONS as usize);
    assert!(p.from_initiator.iter().all(|m| *m == p.from_initiator[0]));
    assert_eq!(p.initiator.stats().retransmits, 5);
    assert_eq!(p.responder.stats().cached_responses, 5);
    p.drive();
    assert_eq!(p.r_events, vec![Event::PeerDead]);
    assert_eq!(p.now - start, HALF_OPEN_TIMEOUT);
}

/// Garbage, other SPIs, other message IDs and tampered ciphertext are
/// dropped and counted, and the handshake still completes.
#[test]
fn garbage_is_dropped() {
    let mut p = Pair::new(initiator_config(), responder_config());
    // Garbage before anything.
    p.responder.handle_datagram(p.now, addr(A), b"");
    p.responder.handle_datagram(p.now, addr(A), &[0xff; 27]);
    p.responder.handle_datagram(p.now, addr(A), &[0x00; 200]);
    assert!(p.responder.poll_transmit().is_none());
    let init = p.initiator.poll_transmit().unwrap();
    // A truncated IKE_SA_INIT request.
    p.responder
        .handle_datagram(p.now, addr(A), &init.bytes[..init.bytes.len() - 1]);
    assert!(p.responder.poll_transmit().is_none());
    p.responder.handle_datagram(p.now, addr(A), &init.bytes);
    let init_resp = p.responder.poll_transmit().unwrap();
    // The initiator: a response with another initiator SPI, then one with a
    // wrong message ID.
    let mut other_spi = init_resp.bytes.clone();
    other_spi[0] ^= 1;
    p.initiator.handle_datagram(p.now, addr(B), &other_spi);
    let mut other_id = init_resp.bytes.clone();
    other_id[23] = 7;
    p.initiator.handle_datagram(p.now, addr(B), &other_id);
    p.initiator.handle_datagram(p.now, addr(B), &[1, 2, 3]);
    assert!(p.initiator.poll_transmit().is_none());
    p.initiator
        .handle_datagram(p.now, addr(B), &init_resp.bytes);
    let auth = p.initiator.poll_transmit().unwrap();
    // The responder: tampered ciphertext, another responder SPI, another
    // message ID.
    let mut tampered = auth.bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x80;
    p.responder.handle_datagram(p.now, addr(A), &tampered);
    let mut other_spi = auth.bytes.clone();
    other_spi[8] ^= 1;
    p.responder.handle_datagram(p.now, addr(A), &other_spi);
    let mut other_id = auth.bytes.clone();
    other_id[23] = 2;
    p.responder.handle_datagram(p.now, addr(A), &other_id);
    assert!(p.responder.poll_transmit().is_none());
    p.collect_events();
    assert!(p.r_events.is_empty());
    let r = p.responder.stats();
    assert_eq!(r.malformed, 4);
    assert_eq!(r.integrity, 1);
    assert_eq!(r.wrong_spi, 1);
    assert_eq!(r.wrong_message_id, 1);
    let i = p.initiator.stats();
    assert_eq!((i.wrong_spi, i.wrong_message_id, i.malformed), (1, 1, 1));
    // The real request still works.
    p.responder.handle_datagram(p.now, addr(A), &auth.bytes);
    p.drive();
    assert_established(&p);
}

/// Random bytes never panic, in any state.
#[test]
fn random_bytes_never_panic() {
    let mut rng = SeededRandom::new(99);
    let mut p = Pair::new(initiator_config(), responder_config());
    for round in 0..3 {
        for len in [0, 1, 27, 28, 29, 40, 100, 300] {
            let mut bytes = vec![0u8; len];
            rng.fill(&mut bytes).unwrap();
            // Some with a plausible header: version 2, lengths that fit.
            if len >= 28 && round > 0 {
                bytes[17] = 0x20;
                bytes[24..28].copy_from_slice(&(len as u32).to_be_bytes());
            }
            p.initiator.handle_datagram(p.now, addr(B), &bytes);
            p.responder.handle_datagram(p.now, addr(A), &bytes);
        }
        p.step();
    }
    p.drive();
    assert_established(&p);
}

/// strongSwan interop: the state after a captured IKE_SA_INIT, rebuilt
/// from the shared secret strongSwan logged (the key exchanges' private
/// keys are not reproducible), then strongSwan's IKE_AUTH message fed in.
mod strongswan {
    use super::*;
    use crate::crypto::{IkeKeys, IkeSuite, SkCipher, skeyseed};
    use crate::message::decode_payloads;
    use crate::testdata::Capture;

    /// The PSK captures and their ESP proposals (testdata README).
    const PSK: [(&str, &str); 3] = [
        ("psk-x25519", "aes128gcm16"),
        ("psk-modp2048", "aes256-sha256"),
        ("psk-chacha-ecp256", "chacha20poly1305"),
    ];

    fn nonce(m: &Message) -> Vec<u8> {
        Payloads(&m.payloads).nonce().unwrap().to_vec()
    }

    struct Setup {
        sa: IkeSa,
        /// The decrypted payloads of strongSwan's IKE_AUTH request.
        auth_req: Vec<Payload>,
    }

    fn setup(c: &Capture, esp: &str, role: Role) -> Setup {
        let init_req = Message::decode(&c.init_req).unwrap();
        let init_resp = Message::decode(&c.init_resp).unwrap();
        let chosen = &Payloads(&init_resp.payloads).sa().unwrap().proposals[0];
        let suite = IkeSuite::from_proposal(chosen).unwrap();
        let (ni, nr) = (nonce(&init_req), nonce(&init_resp));
        let (spi_i, spi_r) = (
            init_resp.header.initiator_spi,
            init_resp.header.responder_spi,
        );
        let seed = skeyseed(suite.prf, &ni, &nr, c.key("g_ir"));
        let keys = IkeKeys::derive(&suite, &seed, &ni, &nr, spi_i, spi_r).unwrap();
        let (outbound, inbound) = SkCipher::pair(&suite, &keys, role == Role::Initiator).unwrap();
        let sk = Sk {
            suite,
            keys,
            outbound,
            inbound,
        };
        let (a, b) = ("a.ssref.test", "b.ssref.test");
        let (local, remote) = if role == Role::Initiator {
            (a, b)
        } else {
            (b, a)
        };
        // The certificate capture has no PSK.
        let psk = c.try_key("psk").unwrap_or_default();
        let config = config(local, remote, psk)
            .with_proposals(DEFAULT_IKE[0], esp)
            .unwrap();
        let auth_req = decode_payloads(PayloadType::IdInitiator, c.key("auth_req_plain")).unwrap();
        let state = match role {
            Role::Responder => State::ExpectAuth(Box::new(ExpectAuth {
                sk,
                ni,
                nr,
                init_request: c.init_req.clone(),
                init_response: c.init_resp.clone(),
                peer_hashes: None,
                pending: Vec::new(),
                chain: Default::default(),
                next_id: 1,
            })),
            Role::Initiator => {
                let p = Payloads(&auth_req);
                let offer = p.sa().unwrap().proposals.clone();
                let esp_spi = u32::from_be_bytes(offer[0].spi[..].try_into().unwrap());
                State::AuthSent(Box::new(AuthSent {
                    sk,
                    ni,
                    nr,
                    init_response: c.init_resp.clone(),
                    offer: ChildOffer::new(
                        esp_spi,
                        &config.esp_proposals,
                        p.tsi().unwrap().to_vec(),
                        p.tsr().unwrap().to_vec(),
                    ),
                    int_auth: Vec::new(),
                }))
            }
        };
        let now = Instant::now();
        let sa = IkeSa {
            config,
            role,
            remote: Some(addr(if role == Role::Initiator { B } else { A })),
            spi_i,
            spi_r,
            state,
            rng: Box::new(SeededRandom::new(3)),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            outstanding: (role == Role::Initiator).then(|| Outstanding {
                message_id: 1,
                exchange: ExchangeType::IkeAuth,
                bytes: vec![c.auth_req.clone()],
                transmissions: 1,
                timeout: RETRANSMIT_TIMEOUT,
                deadline: now + RETRANSMIT_TIMEOUT,
                heard: false,
            }),
            last_response: (role == Role::Responder).then(|| (0, vec![c.init_resp.clone()])),
            fragment_limit: None,
            reassembly: Default::default(),
            peer_next_id: 0,
            next_request_id: 2,
            half_open_deadline: None,
            local: None,
            nat: None,
            peer_initial_contact: false,
            peer_lacks_labels: false,
            retiring: None,
            established_at: None,
            stats: Stats::default(),
        };
        Setup { sa, auth_req }
    }

    fn child(sa: &mut IkeSa) -> (ChildSaParams, ChildSaParams) {
        let events: Vec<Event> = core::iter::from_fn(|| sa.poll_event()).collect();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0], Event::IkeSaEstablished);
        Pair::child(&events).unwrap()
    }

    /// Our responder verifies strongSwan's PSK AUTH, accepts its Child SA
    /// (tunnel mode: no USE_TRANSPORT_MODE) and answers.
    #[test]
    fn responder_accepts_strongswan_auth() {
        for (name, esp) in PSK {
            let c = Capture::load(name);
            let Setup { mut sa, auth_req } = setup(&c, esp, Role::Responder);
            let now = Instant::now();
            sa.handle_datagram(now, addr(A), &c.auth_req);
            assert_eq!(sa.stats(), Stats::default(), "{name}");
            assert!(sa.is_established(), "{name}");
            let (inbound, outbound) = child(&mut sa);
            let offered = &Payloads(&auth_req).sa().unwrap().proposals[0];
            assert_eq!(outbound.spi.to_be_bytes()[..], offered.spi[..], "{name}");
            assert!(!inbound.transport);
            assert_eq!(
                inbound.remote_ts,
                vec![ts::host(IpAddr::V4(A), 0, 0, u16::MAX)]
            );
            // Our answer decrypts with strongSwan's keys and carries an
            // AUTH that the initiator side of this crate accepts.
            let response = sa.poll_transmit().unwrap();
            let Setup {
                sa: mut initiator, ..
            } = setup(&c, esp, Role::Initiator);
            initiator.handle_datagram(now, addr(B), &response.bytes);
            assert!(initiator.is_established(), "{name}");
        }
    }

    /// Our initiator verifies strongSwan's responder AUTH and takes the
    /// Child SA strongSwan chose.
    #[test]
    fn initiator_accepts_strongswan_auth() {
        for (name, esp) in PSK {
            let c = Capture::load(name);
            let Setup {
                sa: mut initiator,
                auth_req,
            } = setup(&c, esp, Role::Initiator);
            initiator.handle_datagram(Instant::now(), addr(B), &c.auth_resp);
            assert_eq!(initiator.stats(), Stats::default(), "{name}");
            assert!(initiator.is_established(), "{name}");
            let (inbound, outbound) = child(&mut initiator);
            let offered = &Payloads(&auth_req).sa().unwrap().proposals[0];
            assert_eq!(inbound.spi.to_be_bytes()[..], offered.spi[..]);
            assert_ne!(outbound.spi, inbound.spi);
            assert!(!outbound.transport);
            assert_eq!(initiator.poll_timeout(), None);
        }
    }

    /// A wrong PSK against strongSwan's messages: AuthFailed both ways.
    #[test]
    fn strongswan_wrong_psk() {
        let c = Capture::load("psk-x25519");
        let mut s = setup(&c, "aes128gcm16", Role::Initiator);
        s.sa.config.psk = Key::from_slice(b"not the key");
        s.sa.handle_datagram(Instant::now(), addr(B), &c.auth_resp);
        let bad = Event::AuthFailed {
            reason: AuthFailure::BadAuth,
        };
        assert_eq!(s.sa.poll_event(), Some(bad.clone()));
        let mut s = setup(&c, "aes128gcm16", Role::Responder);
        s.sa.config.psk = Key::from_slice(b"not the key");
        s.sa.handle_datagram(Instant::now(), addr(A), &c.auth_req);
        assert_eq!(s.sa.poll_event(), Some(bad));
        assert!(s.sa.poll_transmit().is_some());
    }

    /// strongSwan's certificate exchange (`cert-ecp384`: ECDSA
    /// certificates, RFC 7427 signatures, CERT and CERTREQ): our responder
    /// verifies side a's certificate and AUTH, our initiator side b's.
    /// The capture's CA is not kept, so each certificate is pinned; the
    /// wall clock is set inside its validity period. A pin of another
    /// certificate refuses the same messages.
    #[test]
    fn strongswan_certificate_auth() {
        use crate::cert::testutil::{LeafSpec, self_signed};
        use crate::cert::{CertificateDer, Credentials, KeyType, Trust, UnixTime};
        use std::sync::Arc;
        use x509_parser::prelude::{FromDer, X509Certificate};

        let c = Capture::load("cert-ecp384");
        let esp = "aes256gcm16";
        let first_cert = |plain: &[u8]| -> CertificateDer<'static> {
            decode_payloads(PayloadType::IdInitiator, plain)
                .unwrap()
                .into_iter()
                .find_map(|p| match p {
                    Payload::Certificate(cert) => Some(CertificateDer::from(cert.data)),
                    _ => None,
                })
                .expect("a CERT payload")
        };
        let a_cert = first_cert(c.key("auth_req_plain"));
        let b_cert = first_cert(c.key("auth_resp_plain"));
        let (_, parsed) = X509Certificate::from_der(a_cert.as_ref()).unwrap();
        let when = parsed.validity().not_before.timestamp() as u64 + 86_400;
        let now = Instant::now();
        let auth = |pinned: &CertificateDer<'_>| {
            let (cert, key) = self_signed(LeafSpec::new("tunsec.test", KeyType::EcdsaP256));
            let pem = pem::encode(&pem::Pem::new("CERTIFICATE", cert.to_vec()));
            Arc::new(CertAuth {
                credentials: Credentials::from_pem(key.as_bytes(), pem.as_bytes()).unwrap(),
                trust: Trust::pinned(std::slice::from_ref(pinned), &[]),
                clock: WallClock::Anchored {
                    instant: now,
                    unix: UnixTime::since_unix_epoch(Duration::from_secs(when)),
                },
            })
        };

        let mut s = setup(&c, esp, Role::Responder);
        s.sa.config.cert = Some(auth(&a_cert));
        s.sa.handle_datagram(now, addr(A), &c.auth_req);
        assert_eq!(s.sa.stats(), Stats::default());
        assert!(s.sa.is_established());
        let (inbound, _) = child(&mut s.sa);
        assert_eq!(inbound.suite, Suite::AesGcm256);

        let mut s = setup(&c, esp, Role::Initiator);
        s.sa.config.cert = Some(auth(&b_cert));
        s.sa.handle_datagram(now, addr(B), &c.auth_resp);
        assert!(s.sa.is_established());
        child(&mut s.sa);

        // Pinned to b's certificate, a's messages are refused.
        let mut s = setup(&c, esp, Role::Responder);
        s.sa.config.cert = Some(auth(&b_cert));
        s.sa.handle_datagram(now, addr(A), &c.auth_req);
        assert!(matches!(
            s.sa.poll_event(),
            Some(Event::AuthFailed {
                reason: AuthFailure::Certificate(crate::cert::CertError::NotPinned(_))
            })
        ));
    }
}

/// Two endpoints: the initiator's connects, the responder's creates a
/// responder for the IKE_SA_INIT request and dispatches by SPI after.
#[test]
fn endpoints() {
    let now = Instant::now();
    let mut a = Endpoint::new();
    let mut b = Endpoint::new();
    let h = a
        .connect(
            initiator_config(),
            addr(B),
            now,
            Box::new(SeededRandom::new(1)),
        )
        .unwrap();
    let accept = |remote: SocketAddr| {
        (remote == addr(A)).then(|| {
            let rng: Box<dyn Random + Send> = Box::new(SeededRandom::new(2));
            (responder_config(), rng)
        })
    };
    let mut responder = None;
    for _ in 0..4 {
        while let Some(t) = a.sa_mut(h).unwrap().poll_transmit() {
            match deliver(&mut b, now, addr(A), &t.bytes, accept) {
                Delivered::Sa { handle, new } => {
                    assert_eq!(new, responder.is_none());
                    responder = Some(handle);
                }
                other => panic!("{other:?}"),
            }
        }
        let r = responder.unwrap();
        while let Some(t) = b.sa_mut(r).unwrap().poll_transmit() {
            let incoming = deliver(&mut a, now, addr(B), &t.bytes, |_| None);
            assert_eq!(
                incoming,
                Delivered::Sa {
                    handle: h,
                    new: false
                }
            );
        }
    }
    let r = responder.unwrap();
    assert!(a.sa_mut(h).unwrap().is_established());
    assert!(b.sa_mut(r).unwrap().is_established());
    assert_eq!(b.sa_mut(r).unwrap().spis().1, r.0);
    assert_eq!(b.handles().count(), 1);

    // Unknown SPIs, garbage, and a peer without configuration.
    assert_eq!(
        deliver(&mut b, now, addr(A), b"junk", accept),
        Delivered::Dropped
    );
    let mut other = IkeSa::initiate(
        initiator_config(),
        addr(B),
        now,
        Box::new(SeededRandom::new(7)),
    )
    .unwrap();
    let init = other.poll_transmit().unwrap();
    // RFC 7296 section 3.1: an initiator SPI of zero is never valid.
    let mut zero_spi = init.bytes.clone();
    zero_spi[..8].fill(0);
    let malformed = b.stats().malformed;
    assert_eq!(
        deliver(&mut b, now, addr(A), &zero_spi, accept),
        Delivered::Dropped
    );
    assert_eq!(b.stats().malformed, malformed + 1);
    assert!(b.poll_transmit().is_none());
    let stranger = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)), 500);
    assert_eq!(
        deliver(&mut b, now, stranger, &init.bytes, accept),
        Delivered::Refused
    );
    assert!(b.poll_transmit().is_none());
    // A peer with configuration but no common proposal: refused, answered,
    // no state kept.
    let i = initiator_config()
        .with_proposals("aes256-sha256-modp2048", "aes128gcm16")
        .unwrap();
    let mut other = IkeSa::initiate(i, addr(B), now, Box::new(SeededRandom::new(8))).unwrap();
    let init = other.poll_transmit().unwrap();
    let no_modp = |_| {
        let rng: Box<dyn Random + Send> = Box::new(SeededRandom::new(9));
        Some((
            responder_config()
                .with_proposals(DEFAULT_IKE[0], "aes128gcm16")
                .unwrap(),
            rng,
        ))
    };
    assert_eq!(
        deliver(&mut b, now, addr(A), &init.bytes, no_modp),
        Delivered::Refused
    );
    let answer = b.poll_transmit().unwrap();
    other.handle_datagram(now, addr(B), &answer.bytes);
    assert_eq!(
        other.poll_event(),
        Some(Event::Failed {
            notify: NotifyType::NoProposalChosen,
            by_peer: true
        })
    );
    assert_eq!(b.handles().count(), 1);
    assert_eq!(
        b.stats(),
        EndpointStats {
            // The junk and the zero initiator SPI.
            malformed: 2,
            unknown_spi: 0,
            refused: 2,
            responders: 1,
            ..EndpointStats::default()
        }
    );
    assert!(b.remove(r).is_some());
    assert_eq!(b.poll_timeout(), None);
}

/// A request sealed by `from` (an established IKE SA) as the peer of
/// whoever receives it.
fn peer_request(from: &IkeSa, exchange: ExchangeType, id: u32, payloads: &[Payload]) -> Vec<u8> {
    let State::Established(st) = &from.state else {
        panic!("not established")
    };
    st.sk
        .outbound
        .seal(&from.header(exchange, false, id), payloads)
        .unwrap()
}

/// Opens a response that `to` (an established IKE SA) receives.
fn open_response(to: &IkeSa, bytes: &[u8], id: u32) -> Vec<Payload> {
    let State::Established(st) = &to.state else {
        panic!("not established")
    };
    let m = st.sk.inbound.open(bytes).unwrap();
    assert!(m.header.response);
    assert_eq!(m.header.message_id, id);
    m.payloads
}

fn established_pair() -> (Pair, ChildSaParams, ChildSaParams) {
    let mut p = Pair::new(initiator_config(), responder_config());
    p.drive();
    let (i_in, i_out, ..) = assert_established(&p);
    p.i_events.clear();
    p.r_events.clear();
    (p, i_in, i_out)
}

/// Empty INFORMATIONAL requests (liveness checks) are answered, in both
/// directions, each side counting the other's requests from its own
/// message ID; a retransmitted one gets the cached answer.
/// A new IKE_SA_INIT request comes back as an `Incoming` with the
/// initiator's address, SPI and nonce, and nothing is kept until the
/// caller decides: refused, it leaves only a count; accepted, a responder
/// answers it. A second accept for the same initiator makes no second
/// responder: the first one answers it again. Under load the cookie is
/// asked for before any `Incoming` (RFC 7296 section 2.6).
#[test]
fn endpoint_new_requests_wait_for_accept_or_refuse() {
    let now = Instant::now();
    let mut i = IkeSa::initiate(
        initiator_config(),
        addr(B),
        now,
        Box::new(SeededRandom::new(1)),
    )
    .unwrap();
    let init = i.poll_transmit().unwrap();
    let mut ep = Endpoint::new();
    let DatagramEvent::NewSa(incoming) = ep.handle_datagram(now, addr(A), &init.bytes) else {
        panic!("not a new request");
    };
    assert_eq!(incoming.remote(), addr(A));
    assert_eq!(incoming.initiator_spi(), i.spis().0);
    assert!(incoming.nonce().is_some());
    assert_eq!(incoming.nonce(), i.pending_init_nonce());
    assert_eq!(ep.handles().count(), 0);
    ep.refuse(incoming);
    assert_eq!(ep.stats().refused, 1);
    assert_eq!(ep.handles().count(), 0);
    assert!(ep.poll_transmit().is_none());

    // The request again (a retransmission), offered twice before either
    // is accepted.
    let DatagramEvent::NewSa(first) = ep.handle_datagram(now, addr(A), &init.bytes) else {
        panic!("not a new request");
    };
    let DatagramEvent::NewSa(second) = ep.handle_datagram(now, addr(A), &init.bytes) else {
        panic!("not a new request");
    };
    let rng = |seed| -> Box<dyn Random + Send> { Box::new(SeededRandom::new(seed)) };
    let h = ep.accept(first, now, responder_config(), rng(2)).unwrap();
    assert!(ep.sa_mut(h).unwrap().is_half_open());
    assert_eq!(ep.half_open(), 1);
    let answer = ep.sa_mut(h).unwrap().poll_transmit().unwrap();
    assert_eq!(ep.accept(second, now, responder_config(), rng(3)), None);
    assert_eq!(ep.handles().count(), 1);
    let again = ep.sa_mut(h).unwrap().poll_transmit().unwrap();
    assert_eq!(again.bytes, answer.bytes);
    assert_eq!(ep.sa_mut(h).unwrap().stats().cached_responses, 1);
    assert_eq!(
        ep.handle_datagram(now, addr(A), &init.bytes),
        DatagramEvent::Sa(h)
    );
    i.handle_datagram(now, addr(B), &answer.bytes);
    assert!(i.poll_transmit().is_some(), "IKE_AUTH follows");

    // Under load: a cookie request, and no Incoming.
    let mut busy = Endpoint::new();
    busy.set_cookie_threshold(0);
    assert_eq!(
        busy.handle_datagram(now, addr(A), &init.bytes),
        DatagramEvent::Refused
    );
    assert_eq!(busy.stats().cookies_sent, 1);
    assert!(busy.poll_transmit().is_some());
    assert_eq!(busy.handles().count(), 0);
}

#[test]
fn liveness_checks() {
    let (mut p, ..) = established_pair();
    // Initiator to responder: message ID 2 (after IKE_SA_INIT and IKE_AUTH).
    let req = peer_request(&p.initiator, ExchangeType::Informational, 2, &[]);
    p.responder.handle_datagram(p.now, addr(A), &req);
    let resp = p.responder.poll_transmit().unwrap();
    assert!(open_response(&p.initiator, &resp.bytes, 2).is_empty());
    p.responder.handle_datagram(p.now, addr(A), &req);
    assert_eq!(p.responder.poll_transmit().unwrap(), resp);
    // An old message ID is dropped.
    let old = peer_request(&p.initiator, ExchangeType::Informational, 1, &[]);
    p.responder.handle_datagram(p.now, addr(A), &old);
    assert!(p.responder.poll_transmit().is_none());
    assert_eq!(p.responder.stats().wrong_message_id, 1);
    // Responder to initiator: message ID 0.
    let req = peer_request(&p.responder, ExchangeType::Informational, 0, &[]);
    p.initiator.handle_datagram(p.now, addr(B), &req);
    let resp = p.initiator.poll_transmit().unwrap();
    assert!(open_response(&p.responder, &resp.bytes, 0).is_empty());
    p.collect_events();
    assert!(p.i_events.is_empty() && p.r_events.is_empty());
    assert!(p.initiator.is_established() && p.responder.is_established());
}

/// DELETE of the Child SA: answered with the responder's own SPI, and
/// ChildSaDown; DELETE of the IKE SA: an empty answer, IkeSaDeleted.
#[test]
fn peer_deletes() {
    let (mut p, i_in, i_out) = established_pair();
    let delete = Payload::Delete(Delete::esp(&[i_in.spi]));
    let req = peer_request(&p.initiator, ExchangeType::Informational, 2, &[delete]);
    p.responder.handle_datagram(p.now, addr(A), &req);
    let resp = p.responder.poll_transmit().unwrap();
    let payloads = open_response(&p.initiator, &resp.bytes, 2);
    assert_eq!(payloads, vec![Payload::Delete(Delete::esp(&[i_out.spi]))]);
    p.collect_events();
    assert_eq!(
        p.r_events,
        vec![Event::ChildSaDown {
            inbound_spi: i_out.spi,
            outbound_spi: i_in.spi
        }]
    );
    // A CREATE_CHILD_SA without SA, nonce or selectors is refused.
    let req = peer_request(&p.initiator, ExchangeType::CreateChildSa, 3, &[]);
    p.responder.handle_datagram(p.now, addr(A), &req);
    let resp = p.responder.poll_transmit().unwrap();
    let payloads = open_response(&p.initiator, &resp.bytes, 3);
    assert!(
        matches!(&payloads[..], [Payload::Notify(n)] if n.notify_type == NotifyType::InvalidSyntax)
    );
    p.collect_events();
    p.r_events.retain(|e| !matches!(e, Event::Failed { .. }));
    // The responder deletes the IKE SA.
    let req = peer_request(
        &p.responder,
        ExchangeType::Informational,
        0,
        &[Payload::Delete(Delete::ike())],
    );
    p.initiator.handle_datagram(p.now, addr(B), &req);
    let resp = p.initiator.poll_transmit().unwrap();
    assert!(open_response(&p.responder, &resp.bytes, 0).is_empty());
    p.collect_events();
    assert_eq!(p.i_events, vec![Event::IkeSaDeleted]);
    assert!(p.initiator.is_closed());
    // Its retransmission still gets the answer.
    p.initiator.handle_datagram(p.now, addr(B), &req);
    assert_eq!(p.initiator.poll_transmit().unwrap(), resp);
}

/// Our own DELETE: the peer answers, both sides report IkeSaDeleted.
#[test]
fn local_delete() {
    let (mut p, ..) = established_pair();
    assert!(matches!(
        IkeSa::respond(responder_config(), Box::new(SeededRandom::new(5))).delete(p.now),
        Err(Error::InvalidState(_))
    ));
    p.initiator.delete(p.now).unwrap();
    assert!(
        p.initiator.check_liveness(p.now).is_err(),
        "one request at a time"
    );
    p.drive();
    assert_eq!(p.i_events, vec![Event::IkeSaDeleted]);
    assert_eq!(p.r_events, vec![Event::IkeSaDeleted]);
    assert!(p.initiator.is_closed() && p.responder.is_closed());
    let delete = Message::decode(&p.from_initiator[2]).unwrap();
    assert_eq!(delete.header.message_id, 2);
    assert_eq!(delete.header.exchange_type, ExchangeType::Informational);
}

/// Liveness checks from the responder side: answered, no event; with a
/// mute peer, PeerDead.
#[test]
fn local_liveness_check() {
    let (mut p, ..) = established_pair();
    p.responder.check_liveness(p.now).unwrap();
    p.drive();
    assert!(p.i_events.is_empty() && p.r_events.is_empty());
    assert_eq!(p.responder.poll_timeout(), None);
    let check = Message::decode(&p.from_responder[2]).unwrap();
    assert_eq!(check.header.message_id, 0);
    assert!(!check.header.initiator);
    // The next one goes unanswered.
    let start = p.now;
    p.initiator.check_liveness(p.now).unwrap();
    p.responder_mute = true;
    p.drive();
    assert_eq!(p.i_events, vec![Event::PeerDead]);
    assert_eq!(p.now - start, Duration::from_millis(15_500));
    let check = Message::decode(p.from_initiator.last().unwrap()).unwrap();
    assert_eq!(check.header.message_id, 2);
}

/// RFC 7296 section 2.4: a peer whose authenticated request comes after
/// our last transmission is alive. The initiator's liveness check goes
/// unanswered while the link is down (its 6 transmissions by 11.5 s); at
/// 14 s the link is back and the responder sends a request of its own:
/// the initiator sends its request once more at once, instead of
/// declaring the peer dead at 15.5 s, gets the cached answer, and the IKE
/// SA stays.
#[test]
fn a_peer_heard_after_the_last_transmission_is_not_dead() {
    let (mut p, ..) = established_pair();
    let start = p.now;
    p.initiator.check_liveness(p.now).unwrap();
    p.responder_mute = true;
    p.run_until(start + Duration::from_secs(14));
    p.now = start + Duration::from_secs(14);
    assert_eq!(
        p.initiator.stats().retransmits,
        MAX_TRANSMISSIONS as u64 - 1
    );
    assert!(p.i_events.is_empty());
    p.responder_mute = false;
    p.responder.check_liveness(p.now).unwrap();
    p.drive();
    assert!(
        !p.i_events.contains(&Event::PeerDead),
        "the initiator gave up on a live peer: {:?}",
        p.i_events
    );
    assert!(p.initiator.is_established() && p.responder.is_established());
    assert_eq!(p.initiator.stats().retransmits, MAX_TRANSMISSIONS as u64);
    // The request went again as soon as the peer's arrived, not at its
    // timer (15.5 s).
    assert_eq!(p.now - start, Duration::from_secs(14));
}

/// A responder that does not take transport mode leaves out
/// USE_TRANSPORT_MODE, and both sides report a tunnel-mode Child SA.
#[test]
fn transport_mode_declined() {
    let mut r = responder_config();
    r.transport_mode = false;
    let mut p = Pair::new(initiator_config(), r);
    p.drive();
    let (i_in, i_out) = Pair::child(&p.i_events).unwrap();
    let (r_in, r_out) = Pair::child(&p.r_events).unwrap();
    assert!(![i_in, i_out, r_in, r_out].iter().any(|c| c.transport));
    let auth = Message::decode(&p.from_initiator[1]).unwrap();
    assert_eq!(auth.header.exchange_type, ExchangeType::IkeAuth);
}

/// A responder whose IKE_AUTH never comes gives up after
/// HALF_OPEN_TIMEOUT.
#[test]
fn half_open_responder_times_out() {
    let mut p = Pair::new(initiator_config(), responder_config());
    let start = p.now;
    let init = p.initiator.poll_transmit().unwrap();
    p.responder.handle_datagram(p.now, addr(A), &init.bytes);
    assert!(p.responder.poll_transmit().is_some());
    assert_eq!(p.responder.poll_timeout(), Some(start + HALF_OPEN_TIMEOUT));
    p.responder
        .handle_timeout(start + HALF_OPEN_TIMEOUT - Duration::from_millis(1));
    assert!(p.responder.poll_event().is_none());
    p.responder.handle_timeout(start + HALF_OPEN_TIMEOUT);
    assert_eq!(p.responder.poll_event(), Some(Event::PeerDead));
    assert!(p.responder.is_closed());
    assert_eq!(p.responder.poll_timeout(), None);
}

/// An IKE_AUTH request whose message ID is corrupted to 0 (the ID of
/// IKE_SA_INIT, whose response the responder keeps) is no retransmission
/// of IKE_SA_INIT: it is dropped and counted, and the IKE_SA_INIT response
/// is not sent again (the exchange type must match too).
#[test]
fn a_corrupted_message_id_does_not_replay_the_init_response() {
    let mut p = Pair::new(initiator_config(), responder_config());
    let init = p.initiator.poll_transmit().unwrap();
    p.responder.handle_datagram(p.now, addr(A), &init.bytes);
    let resp = p.responder.poll_transmit().unwrap();
    p.initiator.handle_datagram(p.now, addr(B), &resp.bytes);
    let mut auth = p.initiator.poll_transmit().unwrap().bytes;
    assert_eq!(&auth[20..24], &[0, 0, 0, 1]);
    auth[23] = 0;
    p.responder.handle_datagram(p.now, addr(A), &auth);
    assert!(p.responder.poll_transmit().is_none());
    assert_eq!(p.responder.stats().wrong_message_id, 1);
    assert_eq!(p.responder.stats().cached_responses, 0);
}

mod flips {
    use proptest::prelude::*;

    use super::*;

    /// A pair stopped with the IKE_AUTH request in flight.
    fn auth_in_flight() -> (Pair, Vec<u8>) {
        let mut p = Pair::new(initiator_config(), responder_config());
        let init = p.initiator.poll_transmit().unwrap();
        p.responder.handle_datagram(p.now, addr(A), &init.bytes);
        let resp = p.responder.poll_transmit().unwrap();
        p.initiator.handle_datagram(p.now, addr(B), &resp.bytes);
        let auth = p.initiator.poll_transmit().unwrap();
        (p, auth.bytes)
    }

    fn dropped(stats: Stats) -> u64 {
        stats.malformed
            + stats.wrong_spi
            + stats.wrong_message_id
            + stats.integrity
            + stats.unexpected
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Any one flipped bit in the IKE_AUTH request or response is
        /// dropped and counted, without an answer or a change of state;
        /// the real message still works afterwards.
        #[test]
        fn flipped_auth_messages_are_dropped(
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
            at2 in any::<prop::sample::Index>(),
            bit2 in 0u8..8,
        ) {
            let (mut p, auth) = auth_in_flight();
            let mut bad = auth.clone();
            let i = at.index(bad.len());
            bad[i] ^= 1 << bit;
            p.responder.handle_datagram(p.now, addr(A), &bad);
            prop_assert!(p.responder.poll_transmit().is_none());
            prop_assert!(p.responder.poll_event().is_none());
            prop_assert_eq!(dropped(p.responder.stats()), 1);
            p.responder.handle_datagram(p.now, addr(A), &auth);
            let resp = p.responder.poll_transmit().unwrap();
            prop_assert!(p.responder.is_established());

            let mut bad = resp.bytes.clone();
            let i = at2.index(bad.len());
            bad[i] ^= 1 << bit2;
            p.initiator.handle_datagram(p.now, addr(B), &bad);
            prop_assert!(p.initiator.poll_transmit().is_none());
            prop_assert!(p.initiator.poll_event().is_none());
            prop_assert!(!p.initiator.is_established() && !p.initiator.is_closed());
            prop_assert_eq!(dropped(p.initiator.stats()), 1);
            p.initiator.handle_datagram(p.now, addr(B), &resp.bytes);
            prop_assert!(p.initiator.is_established());
        }
    }
}

// ---- rekeying ----

/// The Child SA rekeys in `events`: (old inbound SPI, old outbound SPI,
/// new inbound, new outbound).
fn rekeys(events: &[Event]) -> Vec<(u32, u32, ChildSaParams, ChildSaParams)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaRekeyed {
                old_inbound_spi,
                old_outbound_spi,
                inbound,
                outbound,
            } => Some((
                *old_inbound_spi,
                *old_outbound_spi,
                inbound.clone(),
                outbound.clone(),
            )),
            _ => None,
        })
        .collect()
}

fn downs(events: &[Event]) -> Vec<(u32, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaDown {
                inbound_spi,
                outbound_spi,
            } => Some((*inbound_spi, *outbound_spi)),
            _ => None,
        })
        .collect()
}

fn established_state(sa: &IkeSa) -> &Established {
    match &sa.state {
        State::Established(st) => st,
        _ => panic!("not established"),
    }
}

/// After one rekey: each side reported exactly one ChildSaRekeyed of the
/// old pair, the new pairs match crosswise and carry ESP, the keys and
/// SPIs are new, the old pair went down on both sides (after the rekey
/// event), and nothing is left over.
fn assert_rekeyed(p: &Pair, old: &(ChildSaParams, ChildSaParams, ChildSaParams, ChildSaParams)) {
    let (i_in, i_out, r_in, r_out) = old;
    let i = rekeys(&p.i_events);
    let r = rekeys(&p.r_events);
    assert_eq!(i.len(), 1, "{:?}", p.i_events);
    assert_eq!(r.len(), 1, "{:?}", p.r_events);
    let (oi_in, oi_out, ni_in, ni_out) = &i[0];
    let (or_in, or_out, nr_in, nr_out) = &r[0];
    assert_eq!((*oi_in, *oi_out), (i_in.spi, i_out.spi));
    assert_eq!((*or_in, *or_out), (r_in.spi, r_out.spi));
    for (out, inb) in [(ni_out, nr_in), (nr_out, ni_in)] {
        assert_eq!(out.spi, inb.spi);
        assert_eq!(out.keys, inb.keys);
        assert_eq!(out.suite, inb.suite);
        assert_eq!(out.local_ts, inb.remote_ts);
        assert!(out.transport && inb.transport);
        esp_round_trip(out, inb, p.now);
    }
    for new in [ni_in, ni_out] {
        for old in [i_in, i_out] {
            assert_ne!(new.spi, old.spi);
            assert_ne!(new.keys, old.keys);
        }
    }
    assert_ne!(ni_in.keys, ni_out.keys);
    // The old pair is deleted on both sides, after the new one is up.
    assert_eq!(downs(&p.i_events), vec![(i_in.spi, i_out.spi)]);
    assert_eq!(downs(&p.r_events), vec![(r_in.spi, r_out.spi)]);
    for events in [&p.i_events, &p.r_events] {
        let up = events
            .iter()
            .position(|e| matches!(e, Event::ChildSaRekeyed { .. }));
        let down = events
            .iter()
            .position(|e| matches!(e, Event::ChildSaDown { .. }));
        assert!(up < down);
    }
    for sa in [&p.initiator, &p.responder] {
        let st = established_state(sa);
        assert!(st.retired.is_empty() && st.queue.is_empty());
        assert!(st.request.is_none() && st.collision.is_none());
        assert_eq!(sa.poll_timeout(), None);
    }
    assert_eq!(first_child(&p.initiator), Some((ni_in.spi, ni_out.spi)));
    assert_eq!(first_child(&p.responder), Some((nr_in.spi, nr_out.spi)));
}

/// The SPIs (inbound, outbound) of the first Child SA of `sa`.
fn first_child(sa: &IkeSa) -> Option<(u32, u32)> {
    established_state(sa).children.first().map(Child::spis)
}

fn pfs(c: Config) -> Config {
    c.with_proposals(DEFAULT_IKE[0], "aes256gcm16-x25519")
        .unwrap()
}

/// Rekeys once (started by the IKE initiator or responder); returns the
/// pair and the length of the CREATE_CHILD_SA request.
fn rekey_once(i: Config, r: Config, by_initiator: bool) -> (Pair, usize) {
    let mut p = Pair::new(i, r);
    p.drive();
    let old = assert_established(&p);
    p.i_events.clear();
    p.r_events.clear();
    let (ni, nr) = (p.from_initiator.len(), p.from_responder.len());
    let request_len = if by_initiator {
        p.initiator.rekey_child(p.now).unwrap();
        p.initiator.transmits[0].bytes.len()
    } else {
        p.responder.rekey_child(p.now).unwrap();
        p.responder.transmits[0].bytes.len()
    };
    p.drive();
    assert_rekeyed(&p, &old);
    // Two exchanges: CREATE_CHILD_SA and the INFORMATIONAL DELETE.
    assert_eq!(p.from_initiator.len() - ni, 2);
    assert_eq!(p.from_responder.len() - nr, 2);
    assert_eq!(p.initiator.stats(), Stats::default());
    assert_eq!(p.responder.stats(), Stats::default());
    (p, request_len)
}

#[test]
fn rekey_by_initiator() {
    rekey_once(initiator_config(), responder_config(), true);
}

#[test]
fn rekey_by_responder() {
    rekey_once(initiator_config(), responder_config(), false);
}

/// With a D-H group in the ESP proposal the request carries a KE payload
/// (an X25519 public value: 32 bytes plus a header), from either side.
#[test]
fn rekey_with_pfs() {
    let esp = |c: Config| c.with_proposals(DEFAULT_IKE[0], "aes256gcm16").unwrap();
    for by_initiator in [true, false] {
        let (_, plain) = rekey_once(
            esp(initiator_config()),
            esp(responder_config()),
            by_initiator,
        );
        let (p, with_pfs) = rekey_once(
            pfs(initiator_config()),
            pfs(responder_config()),
            by_initiator,
        );
        assert!(with_pfs >= plain + 32 + 8, "{with_pfs} {plain}");
        let (_, _, inbound, _) = &rekeys(&p.i_events)[0];
        assert_eq!(inbound.suite, Suite::AesGcm256);
    }
}

/// The initiator's KE is for another group than the one the responder
/// picks: INVALID_KE_PAYLOAD names the group, and the initiator rekeys
/// again with it (a fresh message ID); the rekey then completes.
#[test]
fn rekey_wrong_ke_group_retried() {
    let i = initiator_config()
        .with_proposals(DEFAULT_IKE[0], "aes256gcm16-ecp256-x25519")
        .unwrap();
    let r = responder_config()
        .with_proposals(DEFAULT_IKE[0], "aes256gcm16-x25519")
        .unwrap();
    let mut p = Pair::new(i, r);
    p.drive();
    let old = assert_established(&p);
    p.i_events.clear();
    p.r_events.clear();
    let sent = p.from_initiator.len();
    p.initiator.rekey_child(p.now).unwrap();
    p.drive();
    // No failure is reported: the retry is part of the negotiation.
    assert_rekeyed(&p, &old);
    assert_eq!(p.i_events.len(), 2);
    assert_eq!(p.r_events.len(), 2);
    // CREATE_CHILD_SA twice, then the DELETE.
    assert_eq!(p.from_initiator.len() - sent, 3);
    assert_eq!(p.initiator.stats(), Stats::default());
    assert_eq!(p.responder.stats(), Stats::default());
}

/// The CREATE_CHILD_SA response is lost: the initiator retransmits, the
/// responder answers from its cache (processing the request once).
#[test]
fn rekey_lost_response() {
    let mut p = Pair::new(initiator_config(), responder_config());
    p.drive();
    let old = assert_established(&p);
    p.i_events.clear();
    p.r_events.clear();
    p.lose_from_responder.push(p.from_responder.len());
    p.initiator.rekey_child(p.now).unwrap();
    p.drive();
    assert_rekeyed(&p, &old);
    assert_eq!(p.initiator.stats().retransmits, 1);
    assert_eq!(p.responder.stats().cached_responses, 1);
}

/// A rekey that falls due while a request is outstanding waits for its
/// answer (window of 1).
#[test]
fn rekey_queued_behind_outstanding_request() {
    let mut p = Pair::new(initiator_config(), responder_config());
    p.drive();
    let old = assert_established(&p);
    p.i_events.clear();
    p.r_events.clear();
    p.initiator.check_liveness(p.now).unwrap();
    p.initiator.rekey_child(p.now).unwrap();
    // Only the liveness check is on the wire.
    assert_eq!(p.initiator.transmits.len(), 1);
    p.drive();
    assert_rekeyed(&p, &old);
}

/// With a Child SA lifetime, both sides rekey on their own before it
/// ends, again and again: fresh SPIs every time, the events arrive, the
/// pairs match and work, and every old pair is deleted.
#[test]
fn automatic_rekey() {
    let lifetime = Duration::from_secs(100);
    let with_lifetime = |mut c: Config| {
        c.child_lifetime = Some(lifetime);
        c
    };
    let mut p = Pair::new(
        with_lifetime(initiator_config()),
        with_lifetime(responder_config()),
    );
    let start = p.now;
    let end = start + lifetime * 7;
    p.run_until(end);
    let (first_in, first_out) = Pair::child(&p.i_events).unwrap();
    let i = rekeys(&p.i_events);
    let r = rekeys(&p.r_events);
    assert!(i.len() >= 5, "{} rekeys", i.len());
    assert_eq!(i.len(), r.len());
    let mut spis = vec![first_in.spi, first_out.spi];
    let (mut prev_in, mut prev_out) = (first_in.spi, first_out.spi);
    for ((oi, oo, ni, no), (_, _, rn_in, rn_out)) in i.iter().zip(&r) {
        assert_eq!((*oi, *oo), (prev_in, prev_out));
        assert_eq!(no.spi, rn_in.spi);
        assert_eq!(no.keys, rn_in.keys);
        assert_eq!(rn_out.spi, ni.spi);
        esp_round_trip(no, rn_in, p.now);
        esp_round_trip(rn_out, ni, p.now);
        spis.extend([ni.spi, no.spi]);
        (prev_in, prev_out) = (ni.spi, no.spi);
    }
    let n = spis.len();
    spis.sort_unstable();
    spis.dedup();
    assert_eq!(spis.len(), n, "an SPI was reused");
    // Every replaced pair went down on both sides.
    assert_eq!(downs(&p.i_events).len(), i.len());
    assert_eq!(downs(&p.r_events).len(), r.len());
    // Rekeys happen within the lifetime: between 80% and 90% of it.
    assert!(i.len() <= 8);
    assert_eq!(p.initiator.stats().retransmits, 0);
}

/// Both sides rekey the same Child SA at once (RFC 7296 section 2.8.1):
/// each side reports one rekey, to the same pair; the redundant pair is
/// deleted by its creator without events, the old one by the winner.
#[test]
fn rekey_collision_converges() {
    let mut winners = [0; 2];
    for seed in 1..=8 {
        let mut p = Pair::seeded(initiator_config(), responder_config(), seed, seed + 100);
        p.drive();
        let old = assert_established(&p);
        p.i_events.clear();
        p.r_events.clear();
        p.initiator.rekey_child(p.now).unwrap();
        p.responder.rekey_child(p.now).unwrap();
        let Some(Request::Rekey(ours)) = &established_state(&p.initiator).request else {
            panic!("no rekey outstanding");
        };
        let i_spi = ours.offer.esp_spi;
        p.drive();
        assert_rekeyed(&p, &old);
        // Two CREATE_CHILD_SA exchanges, two DELETEs (the redundant pair
        // and the old one): each side sent three requests and three
        // responses in all, counting IKE_SA_INIT and IKE_AUTH.
        assert_eq!(p.from_initiator.len(), 6);
        assert_eq!(p.from_responder.len(), 6);
        let (i_in, _) = first_child(&p.initiator).unwrap();
        winners[usize::from(i_in == i_spi)] += 1;
    }
    // The nonces decide: each side won sometimes.
    assert!(winners[0] > 0 && winners[1] > 0, "{winners:?}");
}

/// Simultaneous rekeys where one side finishes first: the responder's
/// answer to the initiator's rekey arrives before the responder's own
/// request, so the initiator answers that request CHILD_SA_NOT_FOUND and
/// deletes the old pair, and its DELETE reaches the responder before that
/// answer. The initiator's new pair stands on both sides.
#[test]
fn rekey_collision_one_side_first() {
    let mut p = Pair::new(initiator_config(), responder_config());
    p.drive();
    let old = assert_established(&p);
    p.i_events.clear();
    p.r_events.clear();
    p.initiator.rekey_child(p.now).unwrap();
    p.responder.rekey_child(p.now).unwrap();
    let i_req = p.initiator.poll_transmit().unwrap().bytes;
    let r_req = p.responder.poll_transmit().unwrap().bytes;
    // The responder answers while its own request is outstanding.
    p.responder.handle_datagram(p.now, addr(A), &i_req);
    let r_resp = p.responder.poll_transmit().unwrap().bytes;
    // The initiator gets the answer first: rekeyed, DELETE of the old pair.
    p.initiator.handle_datagram(p.now, addr(B), &r_resp);
    let i_delete = p.initiator.poll_transmit().unwrap().bytes;
    // Then the responder's request, for a Child SA it no longer has.
    p.initiator.handle_datagram(p.now, addr(B), &r_req);
    let i_resp = p.initiator.poll_transmit().unwrap().bytes;
    // The DELETE overtakes the answer.
    p.responder.handle_datagram(p.now, addr(A), &i_delete);
    p.responder.handle_datagram(p.now, addr(A), &i_resp);
    p.collect_events();
    p.drive();
    assert_rekeyed(&p, &old);
    assert_eq!(p.initiator.stats(), Stats::default());
    assert_eq!(p.responder.stats(), Stats::default());
}

// ---- NAT traversal (RFC 7296 section 2.23) and INITIAL_CONTACT ----

/// A handshake across an optional NAT: the initiator lives at
/// 10.0.0.1 and, with `nat`, the responder sees it as 192.0.2.1 on
/// translated ports. Returns both IKE SAs, their events, and the
/// destination ports of the initiator's datagrams in order.
fn nat_handshake(
    mut i: Config,
    mut r: Config,
    nat: bool,
) -> (IkeSa, IkeSa, Vec<Event>, Vec<Event>, Vec<u16>) {
    let inside = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 500);
    let i_local = if nat { inside } else { addr(A) };
    i.local_addr = Some(i_local);
    r.local_addr = Some(addr(B));
    // The NAT maps each inside port to its own outside port.
    let outside = |port: u16| {
        let port = if nat { port + 30_000 } else { port };
        SocketAddr::new(IpAddr::V4(A), port)
    };
    let now = Instant::now();
    let mut ini = IkeSa::initiate(i, addr(B), now, Box::new(SeededRandom::new(1))).unwrap();
    let mut res = IkeSa::respond(r, Box::new(SeededRandom::new(2)));
    let (mut i_events, mut r_events, mut ports) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        let mut moved = false;
        while let Some(t) = ini.poll_transmit() {
            assert_eq!(t.dst.ip(), IpAddr::V4(B));
            ports.push(t.dst.port());
            // The initiator sends from the port it sends to (500 or 4500).
            res.handle_datagram(now, outside(t.dst.port()), &t.bytes);
            moved = true;
        }
        while let Some(t) = res.poll_transmit() {
            assert_eq!(t.dst.ip(), IpAddr::V4(A));
            let inside_port = if nat {
                t.dst.port() - 30_000
            } else {
                t.dst.port()
            };
            ini.handle_datagram(now, SocketAddr::new(IpAddr::V4(B), inside_port), &t.bytes);
            moved = true;
        }
        while let Some(e) = ini.poll_event() {
            i_events.push(e);
        }
        while let Some(e) = res.poll_event() {
            r_events.push(e);
        }
        if !moved {
            break;
        }
    }
    (ini, res, i_events, r_events, ports)
}

fn udp_encap_of(events: &[Event]) -> Option<bool> {
    Pair::child(events).map(|(inb, out)| {
        assert_eq!(inb.udp_encap, out.udp_encap);
        inb.udp_encap
    })
}

/// Both sides do NAT detection, there is no NAT: ESP stays raw and IKE
/// stays on port 500.
#[test]
fn nat_detection_without_nat() {
    let (i, r, ie, re, ports) = nat_handshake(initiator_config(), responder_config(), false);
    assert!(i.is_established() && r.is_established(), "{ie:?} {re:?}");
    assert_eq!(i.nat(), Some(NatState::default()));
    assert_eq!(r.nat(), Some(NatState::default()));
    assert_eq!(ports, [500, 500]);
    assert_eq!(udp_encap_of(&ie), Some(false));
    assert_eq!(udp_encap_of(&re), Some(false));
}

/// A NAT in front of the initiator: the initiator finds itself behind it
/// (it sends the keepalives), the responder finds the peer behind it, IKE
/// moves to 4500 from IKE_AUTH on, and ESP is encapsulated in UDP.
#[test]
fn nat_detected_moves_ike_to_4500() {
    let (i, r, ie, re, ports) = nat_handshake(initiator_config(), responder_config(), true);
    assert!(i.is_established() && r.is_established(), "{ie:?} {re:?}");
    let i_nat = i.nat().unwrap();
    assert!(
        i_nat.local_behind_nat && !i_nat.remote_behind_nat,
        "{i_nat:?}"
    );
    let r_nat = r.nat().unwrap();
    assert!(
        r_nat.remote_behind_nat && !r_nat.local_behind_nat,
        "{r_nat:?}"
    );
    assert_eq!(ports, [500, NATT_PORT]);
    assert_eq!(i.remote().unwrap().port(), NATT_PORT);
    // The responder answers where the NAT put the initiator's 4500.
    assert_eq!(r.remote().unwrap().port(), NATT_PORT + 30_000);
    assert_eq!(udp_encap_of(&ie), Some(true));
    assert_eq!(udp_encap_of(&re), Some(true));
}

/// Forced encapsulation without a NAT: the peer sees the forcing side
/// "behind a NAT", and both encapsulate.
#[test]
fn forced_udp_encapsulation_either_side() {
    for force_initiator in [true, false] {
        let (mut ic, mut rc) = (initiator_config(), responder_config());
        ic.force_udp_encap = force_initiator;
        rc.force_udp_encap = !force_initiator;
        let (i, r, ie, re, ports) = nat_handshake(ic, rc, false);
        assert!(i.is_established() && r.is_established(), "{ie:?} {re:?}");
        assert_eq!(ports, [500, NATT_PORT]);
        assert_eq!(udp_encap_of(&ie), Some(true));
        assert_eq!(udp_encap_of(&re), Some(true));
        let peer_of_forcer = if force_initiator { r.nat() } else { i.nat() };
        assert!(peer_of_forcer.unwrap().remote_behind_nat);
    }
}

/// A peer without NAT traversal (no notifies): no detection, no
/// encapsulation, and we send none in our answer either.
#[test]
fn no_nat_traversal_without_the_peers_notifies() {
    let mut r = responder_config();
    r.local_addr = Some(addr(B));
    r.force_udp_encap = true;
    let mut p = Pair::new(initiator_config(), r);
    p.drive();
    assert_established(&p);
    assert_eq!(p.responder.nat(), None);
    assert_eq!(p.initiator.nat(), None);
    let response = Message::decode(&p.from_responder[0]).unwrap();
    assert!(!response.payloads.iter().any(|pl| matches!(pl,
        Payload::Notify(n) if n.notify_type == NotifyType::NatDetectionSourceIp)));
    assert_eq!(udp_encap_of(&p.r_events), Some(false));
}

/// INITIAL_CONTACT reaches the responder only when configured.
#[test]
fn initial_contact_is_carried() {
    for on in [false, true] {
        let mut i = initiator_config();
        i.initial_contact = on;
        let mut p = Pair::new(i, responder_config());
        p.drive();
        assert_established(&p);
        assert_eq!(p.responder.peer_initial_contact(), on);
        assert!(!p.initiator.peer_initial_contact());
    }
}

// ---- rekeying the IKE SA (RFC 7296 section 2.18) ----

fn ike_rekeys(events: &[Event]) -> Vec<((u64, u64), (u64, u64))> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::IkeSaRekeyed { old_spis, spis } => Some((*old_spis, *spis)),
            _ => None,
        })
        .collect()
}

/// After a rekey of the IKE SA the pair still works: a liveness check and
/// a Child SA rekey (keyed from the new SK_d) go through on the new SA.
fn assert_works_after_ike_rekey(p: &mut Pair) {
    p.i_events.clear();
    p.r_events.clear();
    p.initiator.check_liveness(p.now).unwrap();
    p.drive();
    assert!(p.initiator.is_established() && p.responder.is_established());
    p.responder.rekey_child(p.now).unwrap();
    p.drive();
    let (i_old_in, _, i_in, i_out) = rekeys(&p.i_events)[0].clone();
    let (_, _, r_in, r_out) = rekeys(&p.r_events)[0].clone();
    assert_ne!(i_old_in, i_in.spi);
    esp_round_trip(&i_out, &r_in, p.now);
    esp_round_trip(&r_out, &i_in, p.now);
    // Nothing is left of the old IKE SA: no timer, no retransmission.
    assert_eq!(p.initiator.poll_timeout(), None);
    assert_eq!(p.responder.poll_timeout(), None);
}

/// Either side rekeys the IKE SA: both report the same new SPIs, the Child
/// SA carries on untouched (no ChildSaDown), the old IKE SA is deleted,
/// and the one that started the rekey is the new original initiator.
#[test]
fn ike_rekey_by_either_side() {
    for by_initiator in [true, false] {
        let mut p = Pair::new(initiator_config(), responder_config());
        p.drive();
        assert_established(&p);
        let before = p.initiator.spis();
        p.i_events.clear();
        p.r_events.clear();
        if by_initiator {
            p.initiator.rekey_ike(p.now).unwrap();
        } else {
            p.responder.rekey_ike(p.now).unwrap();
        }
        p.drive();
        let (i, r) = (ike_rekeys(&p.i_events), ike_rekeys(&p.r_events));
        assert_eq!(i.len(), 1, "{:?}", p.i_events);
        assert_eq!(i, r);
        let (old, new) = i[0];
        assert_eq!(old, before);
        assert!(new.0 != old.0 && new.1 != old.1 && new.0 != 0 && new.1 != 0);
        assert_eq!(p.initiator.spis(), new);
        assert_eq!(p.responder.spis(), new);
        // RFC 7296 section 2.18: the new IKE SA's initiator is the peer
        // that started the rekey; its SPI is the first.
        let starter_spi = if by_initiator {
            p.initiator.local_spis().next()
        } else {
            p.responder.local_spis().next()
        };
        assert_eq!(starter_spi, Some(new.0));
        assert!(downs(&p.i_events).is_empty() && downs(&p.r_events).is_empty());
        assert!(p.initiator.is_established() && p.responder.is_established());
        assert_eq!(p.initiator.local_spis().count(), 1, "old IKE SA left");
        assert_eq!(p.responder.local_spis().count(), 1, "old IKE SA left");
        assert_works_after_ike_rekey(&mut p);
    }
}

/// Both sides rekey the IKE SA at once: each answers the other
/// TEMPORARY_FAILURE, tries again after a random pause, and they end on
/// one shared IKE SA that works.
#[test]
fn ike_rekey_collision_converges() {
    for seed in 1..=6 {
        let mut p = Pair::seeded(initiator_config(), responder_config(), seed, seed + 50);
        p.drive();
        assert_established(&p);
        p.i_events.clear();
        p.r_events.clear();
        p.initiator.rekey_ike(p.now).unwrap();
        p.responder.rekey_ike(p.now).unwrap();
        p.drive();
        let (i, r) = (ike_rekeys(&p.i_events), ike_rekeys(&p.r_events));
        assert!(!i.is_empty(), "seed {seed}: no rekey");
        assert_eq!(i, r, "seed {seed}");
        assert_eq!(p.initiator.spis(), p.responder.spis());
        assert!(p.initiator.is_established() && p.responder.is_established());
        assert_works_after_ike_rekey(&mut p);
    }
}

/// With an IKE lifetime the IKE SA is rekeyed over and over, with PFS
/// each time (a fresh KE), while a Child SA lifetime rekeys the Child SA
/// too; every rekey lands on both sides and no message is lost.
#[test]
fn automatic_ike_rekey() {
    let with_lifetimes = |mut c: Config| {
        c.ike_lifetime = Some(Duration::from_secs(300));
        c.child_lifetime = Some(Duration::from_secs(110));
        c
    };
    let mut p = Pair::new(
        with_lifetimes(initiator_config()),
        with_lifetimes(responder_config()),
    );
    let end = p.now + Duration::from_secs(300 * 5);
    p.run_until(end);
    let (i, r) = (ike_rekeys(&p.i_events), ike_rekeys(&p.r_events));
    assert!(i.len() >= 4, "{} IKE rekeys", i.len());
    assert_eq!(i, r);
    for pair in i.windows(2) {
        assert_eq!(pair[0].1, pair[1].0, "the SPIs chain from rekey to rekey");
    }
    assert!(rekeys(&p.i_events).len() >= 10);
    assert_eq!(rekeys(&p.i_events).len(), rekeys(&p.r_events).len());
    assert!(
        !p.i_events
            .iter()
            .any(|e| matches!(e, Event::PeerDead | Event::Failed { .. }))
    );
    assert_eq!(p.initiator.stats().retransmits, 0);
    assert_eq!(p.responder.stats().retransmits, 0);
}

/// The rekey's response is lost: the initiator retransmits and the
/// responder, already on the new IKE SA, answers from the old one's cache;
/// both end on the same new IKE SA.
#[test]
fn ike_rekey_lost_response() {
    let mut p = Pair::new(initiator_config(), responder_config());
    p.drive();
    assert_established(&p);
    p.i_events.clear();
    p.r_events.clear();
    let lost = p.from_responder.len();
    p.lose_from_responder.push(lost);
    p.initiator.rekey_ike(p.now).unwrap();
    p.drive();
    let (i, r) = (ike_rekeys(&p.i_events), ike_rekeys(&p.r_events));
    assert_eq!(i.len(), 1);
    assert_eq!(i, r);
    assert_eq!(p.responder.stats().cached_responses, 1);
    assert_works_after_ike_rekey(&mut p);
}

/// Two `Endpoint`s through a rekey of the IKE SA started by the
/// responder: the handles stay, the endpoints find the IKE SA by its new
/// SPIs (and by the old ones while the old IKE SA is deleted), and a
/// liveness check on the new IKE SA goes through.
#[test]
fn endpoints_follow_an_ike_rekey() {
    let now = Instant::now();
    let (mut a, mut b) = (Endpoint::new(), Endpoint::new());
    let h = a
        .connect(
            initiator_config(),
            addr(B),
            now,
            Box::new(SeededRandom::new(1)),
        )
        .unwrap();
    let accept = |_| {
        let rng: Box<dyn Random + Send> = Box::new(SeededRandom::new(2));
        Some((responder_config(), rng))
    };
    let mut r = None;
    // Moves datagrams both ways until none is left.
    let exchange = |a: &mut Endpoint, b: &mut Endpoint, r: &mut Option<SaHandle>| {
        for _ in 0..6 {
            while let Some(t) = a.sa_mut(h).unwrap().poll_transmit() {
                match deliver(b, now, addr(A), &t.bytes, accept) {
                    Delivered::Sa { handle, .. } => *r = Some(handle),
                    other => panic!("{other:?}"),
                }
            }
            let Some(rh) = *r else { continue };
            while let Some(t) = b.sa_mut(rh).unwrap().poll_transmit() {
                let got = deliver(a, now, addr(B), &t.bytes, |_| None);
                assert_eq!(
                    got,
                    Delivered::Sa {
                        handle: h,
                        new: false
                    }
                );
            }
        }
    };
    exchange(&mut a, &mut b, &mut r);
    let rh = r.unwrap();
    assert!(b.sa_mut(rh).unwrap().is_established());
    let before = a.sa_mut(h).unwrap().spis();
    b.sa_mut(rh).unwrap().rekey_ike(now).unwrap();
    exchange(&mut a, &mut b, &mut r);
    assert_eq!(r, Some(rh), "the responder's handle stays");
    let after = a.sa_mut(h).unwrap().spis();
    assert_ne!(after, before);
    assert_eq!(b.sa_mut(rh).unwrap().spis(), after);
    a.sa_mut(h).unwrap().check_liveness(now).unwrap();
    exchange(&mut a, &mut b, &mut r);
    assert_eq!(a.sa_mut(h).unwrap().stats().retransmits, 0);
    assert_eq!(b.stats().unknown_spi, 0);
    assert_eq!(a.stats().unknown_spi, 0);
    // The old IKE SA is gone: its SPIs lead nowhere now.
    let mut stale = before.0.to_be_bytes().to_vec();
    stale.extend(before.1.to_be_bytes());
    stale.extend([0x00, 0x20, 0x25, 0x08, 0, 0, 0, 9, 0, 0, 0, 28, 0, 0, 0, 0]);
    assert_eq!(
        deliver(&mut b, now, addr(A), &stale, accept),
        Delivered::Dropped
    );
}

/// Transport mode through a NAT with host selectors (RFC 7296 section
/// 2.23.1): the initiator offers its private address in TSi, the responder
/// knows it by the NAT's address and substitutes it; each side's Child SA
/// names the addresses it actually sees.
#[test]
fn transport_mode_selectors_through_a_nat() {
    let inside = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let i = initiator_config().with_selectors(
        vec![ts::host(inside, 17, 0, u16::MAX)],
        vec![ts::host(IpAddr::V4(B), 17, 0, u16::MAX)],
    );
    let r = responder_config().with_selectors(
        vec![ts::host(IpAddr::V4(B), 17, 0, u16::MAX)],
        vec![ts::host(IpAddr::V4(A), 17, 0, u16::MAX)],
    );
    let (ini, res, ie, re, _) = nat_handshake(i.clone(), r.clone(), true);
    assert!(
        ini.is_established() && res.is_established(),
        "{ie:?} {re:?}"
    );
    let (i_in, _) = Pair::child(&ie).expect("initiator Child SA");
    let (r_in, _) = Pair::child(&re).expect("responder Child SA");
    assert_eq!(i_in.local_ts, vec![ts::host(inside, 17, 0, u16::MAX)]);
    assert_eq!(
        r_in.remote_ts,
        vec![ts::host(IpAddr::V4(A), 17, 0, u16::MAX)]
    );
    assert!(i_in.transport && r_in.transport && i_in.udp_encap);
    // Without a NAT the same private-address offer is refused.
    let (_, _, ie, _, _) = nat_handshake(i, r, false);
    assert!(
        ie.iter().any(|e| matches!(
            e,
            Event::Failed {
                notify: NotifyType::TsUnacceptable,
                ..
            }
        )),
        "{ie:?}"
    );
}

/// IKE SA rekeys every ~4.5 s and Child SA rekeys every ~1.8 s for a
/// minute, over a network with latency (0.3 to 5.3 ms, so that requests
/// cross in flight), for 100 seeds: every rekey lands, no exchange fails,
/// no peer is declared dead.
#[test]
fn ike_and_child_rekeys_with_latency() {
    for seed in 1..=100u64 {
        let with_lifetimes = |mut c: Config| {
            c.ike_lifetime = Some(Duration::from_secs(5));
            c.child_lifetime = Some(Duration::from_secs(2));
            c
        };
        let now0 = Instant::now();
        let mut ini = IkeSa::initiate(
            with_lifetimes(initiator_config()),
            addr(B),
            now0,
            Box::new(SeededRandom::new(seed)),
        )
        .unwrap();
        let mut res = IkeSa::respond(
            with_lifetimes(responder_config()),
            Box::new(SeededRandom::new(seed + 1000)),
        );
        let latency = Duration::from_micros(300 + seed * 37 % 5000);
        let mut now = now0;
        let end = now0 + Duration::from_secs(60);
        // (deliver at, to the initiator, bytes)
        let mut wire: Vec<(Instant, bool, Vec<u8>)> = Vec::new();
        let mut events = Vec::new();
        loop {
            while let Some(t) = ini.poll_transmit() {
                wire.push((now + latency, false, t.bytes));
            }
            while let Some(t) = res.poll_transmit() {
                wire.push((now + latency, true, t.bytes));
            }
            while let Some(e) = ini.poll_event() {
                events.push(("i", e));
            }
            while let Some(e) = res.poll_event() {
                events.push(("r", e));
            }
            let next_wire = wire.iter().map(|w| w.0).min();
            let next = [ini.poll_timeout(), res.poll_timeout(), next_wire]
                .into_iter()
                .flatten()
                .min()
                .expect("something is due");
            if next > end {
                break;
            }
            now = next.max(now);
            let (due, rest): (Vec<_>, Vec<_>) = wire.into_iter().partition(|w| w.0 <= now);
            wire = rest;
            for (_, to_i, bytes) in due {
                if to_i {
                    ini.handle_datagram(now, addr(B), &bytes);
                } else {
                    res.handle_datagram(now, addr(A), &bytes);
                }
            }
            if ini.poll_timeout().is_some_and(|t| t <= now) {
                ini.handle_timeout(now);
            }
            if res.poll_timeout().is_some_and(|t| t <= now) {
                res.handle_timeout(now);
            }
        }
        let ike_rekeys = events
            .iter()
            .filter(|(_, e)| matches!(e, Event::IkeSaRekeyed { .. }))
            .count();
        let child_rekeys = events
            .iter()
            .filter(|(_, e)| matches!(e, Event::ChildSaRekeyed { .. }))
            .count();
        assert!(
            ike_rekeys >= 20 && child_rekeys >= 50,
            "seed {seed}: {ike_rekeys} {child_rekeys}"
        );
        let bad = events.iter().find(|(_, e)| {
            matches!(
                e,
                Event::PeerDead | Event::LocalError(_) | Event::Failed { .. }
            )
        });
        assert!(
            bad.is_none(),
            "seed {seed} latency {latency:?}: {bad:?}\n{:?}\n{:?}\n{:?}",
            ini.stats(),
            res.stats(),
            events.iter().rev().take(12).collect::<Vec<_>>()
        );
    }
}

// ---- additional Child SAs (RFC 7296 section 1.3.1) ----

/// A host pair with one Child SA per tunnel port, as tunsecd configures
/// `selectors = "ports"`: the first port in IKE_AUTH, the others by
/// CREATE_CHILD_SA. Both sides are configured alike (the responder's
/// additional children only widen what it accepts).
fn per_port(c: Config, local: Ipv4Addr, remote: Ipv4Addr, ports: &[u16]) -> Config {
    let (l, r) = (IpAddr::V4(local), IpAddr::V4(remote));
    let mut c = c.with_selectors(port_ts(l, &ports[..1]), port_ts(r, &ports[..1]));
    c.additional_children = ports[1..]
        .iter()
        .map(|&p| (port_ts(l, &[p]), port_ts(r, &[p])))
        .collect();
    c
}

/// Every ChildSaUp of `events`, in order.
fn ups(events: &[Event]) -> Vec<(ChildSaParams, ChildSaParams)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaUp { inbound, outbound } => Some((inbound.clone(), outbound.clone())),
            _ => None,
        })
        .collect()
}

/// The SPI pairs of `sa`'s Child SAs, in order.
fn child_pairs(sa: &IkeSa) -> Vec<(u32, u32)> {
    established_state(sa)
        .children
        .iter()
        .map(Child::spis)
        .collect()
}

/// Both sides hold the same Child SAs, crosswise.
fn assert_children_match(p: &Pair, count: usize) {
    let i = child_pairs(&p.initiator);
    let mut r: Vec<(u32, u32)> = child_pairs(&p.responder)
        .into_iter()
        .map(|(a, b)| (b, a))
        .collect();
    let mut i_sorted = i.clone();
    i_sorted.sort_unstable();
    r.sort_unstable();
    assert_eq!(i.len(), count, "initiator children {i:x?}");
    assert_eq!(i_sorted, r);
}

/// Three tunnel ports: the initiator creates the second and third Child
/// SA right after IKE_AUTH, each narrowed to exactly its port on both
/// sides, with keys of their own that work crosswise; the responder,
/// configured alike, creates none of its own.
#[test]
fn additional_child_sas_per_port() {
    let ports = [4789, 6081, 6635];
    let i = per_port(initiator_config(), A, B, &ports);
    let r = per_port(responder_config(), B, A, &ports);
    let mut p = Pair::new(i, r);
    p.drive();
    assert_established(&p);
    let (i_ups, r_ups) = (ups(&p.i_events), ups(&p.r_events));
    assert_eq!(i_ups.len(), 3, "{:?}", p.i_events);
    assert_eq!(r_ups.len(), 3, "{:?}", p.r_events);
    for (n, port) in ports.iter().enumerate() {
        let (i_in, i_out) = &i_ups[n];
        let (r_in, r_out) = &r_ups[n];
        assert_eq!(i_in.local_ts, port_ts(IpAddr::V4(A), &[*port]));
        assert_eq!(i_in.remote_ts, port_ts(IpAddr::V4(B), &[*port]));
        assert_eq!(r_in.local_ts, port_ts(IpAddr::V4(B), &[*port]));
        assert_eq!((i_out.spi, r_out.spi), (r_in.spi, i_in.spi));
        esp_round_trip(i_out, r_in, p.now);
        esp_round_trip(r_out, i_in, p.now);
    }
    // Fresh keys for each: no two Child SAs share a key.
    let keys: Vec<_> = i_ups.iter().flat_map(|(a, b)| [&a.keys, &b.keys]).collect();
    for (n, k) in keys.iter().enumerate() {
        assert!(!keys[n + 1..].contains(k));
    }
    assert_children_match(&p, 3);
    // IKE_SA_INIT, IKE_AUTH and two CREATE_CHILD_SA each way.
    assert_eq!(p.from_initiator.len(), 4);
    assert_eq!(p.from_responder.len(), 4);
    assert_eq!(p.initiator.child_sa_count(), 3);
    assert_eq!(p.responder.child_sa_count(), 3);
    assert_eq!(p.initiator.stats(), Stats::default());
    assert_eq!(p.responder.stats(), Stats::default());
}

/// A rekey of each of two Child SAs (by either side): each keeps its own
/// selectors, the old pairs go down, and both sides end with the same two
/// new pairs. With lifetimes, both are rekeyed by their own timers.
#[test]
fn additional_child_sas_rekey_each() {
    let ports = [4789, 6081];
    for by_initiator in [true, false] {
        let i = per_port(initiator_config(), A, B, &ports);
        let r = per_port(responder_config(), B, A, &ports);
        let mut p = Pair::new(i, r);
        p.drive();
        let before = child_pairs(&p.initiator);
        p.i_events.clear();
        p.r_events.clear();
        if by_initiator {
            p.initiator.rekey_child(p.now).unwrap();
        } else {
            p.responder.rekey_child(p.now).unwrap();
        }
        p.drive();
        let i_rekeys = rekeys(&p.i_events);
        assert_eq!(i_rekeys.len(), 2, "{:?}", p.i_events);
        for (n, (old_in, old_out, new_in, _)) in i_rekeys.iter().enumerate() {
            assert_eq!((*old_in, *old_out), before[n]);
            assert_eq!(new_in.local_ts, port_ts(IpAddr::V4(A), &[ports[n]]));
        }
        assert_eq!(downs(&p.i_events), before);
        assert_eq!(rekeys(&p.r_events).len(), 2);
        assert_eq!(downs(&p.r_events).len(), 2);
        assert_children_match(&p, 2);
        assert!(
            child_pairs(&p.initiator)
                .iter()
                .all(|c| !before.contains(c))
        );
    }

    let lifetime = Duration::from_secs(60);
    let mut i = per_port(initiator_config(), A, B, &ports);
    let mut r = per_port(responder_config(), B, A, &ports);
    i.child_lifetime = Some(lifetime);
    r.child_lifetime = Some(lifetime);
    let mut p = Pair::new(i, r);
    let start = p.now;
    p.run_until(start + lifetime * 5);
    // Each Child SA is rekeyed about every 54 s (by whichever side's
    // timer fires first): 2 × at least 5 rekeys in 300 s.
    assert!(
        rekeys(&p.i_events).len() >= 10,
        "{}",
        rekeys(&p.i_events).len()
    );
    assert_children_match(&p, 2);
    assert!(established_state(&p.initiator).retired.is_empty());
}

/// Both sides rekey both Child SAs at once, with many seeds: each
/// collision (RFC 7296 section 2.8.1) is settled per Child SA, and both
/// sides end with the same two pairs and nothing left over.
#[test]
fn additional_child_sas_rekey_collisions_converge() {
    let ports = [4789, 6081];
    for seed in 1..=8 {
        let i = per_port(initiator_config(), A, B, &ports);
        let r = per_port(responder_config(), B, A, &ports);
        let mut p = Pair::seeded(i, r, seed, seed + 100);
        p.drive();
        p.initiator.rekey_child(p.now).unwrap();
        p.responder.rekey_child(p.now).unwrap();
        p.drive();
        assert_children_match(&p, 2);
        for sa in [&p.initiator, &p.responder] {
            let st = established_state(sa);
            assert!(st.retired.is_empty() && st.queue.is_empty(), "seed {seed}");
            assert!(st.request.is_none() && st.collision.is_none());
        }
        // Every pair that came up and was not kept went down again.
        let live = child_pairs(&p.initiator);
        let came_up: Vec<(u32, u32)> = ups(&p.i_events)
            .iter()
            .map(|(a, b)| (a.spi, b.spi))
            .chain(
                rekeys(&p.i_events)
                    .iter()
                    .map(|(_, _, a, b)| (a.spi, b.spi)),
            )
            .collect();
        let went_down = downs(&p.i_events);
        for pair in came_up {
            assert_eq!(
                live.contains(&pair),
                !went_down.contains(&pair),
                "seed {seed}"
            );
        }
    }
}

/// The peer deletes one of two Child SAs: only that one goes down, and the
/// other is still rekeyed; then the initiator creates it again.
#[test]
fn additional_child_sa_deleted_and_created_again() {
    let ports = [4789, 6081];
    let i = per_port(initiator_config(), A, B, &ports);
    let r = per_port(responder_config(), B, A, &ports);
    let mut p = Pair::new(i, r);
    p.drive();
    let pairs = child_pairs(&p.initiator);
    p.i_events.clear();
    p.r_events.clear();
    // The responder deletes the second Child SA, by its inbound SPI.
    let delete = Payload::Delete(Delete::esp(&[pairs[1].1]));
    let req = peer_request(&p.responder, ExchangeType::Informational, 0, &[delete]);
    p.initiator.handle_datagram(p.now, addr(B), &req);
    let resp = p.initiator.poll_transmit().unwrap();
    let payloads = open_response(&p.responder, &resp.bytes, 0);
    assert_eq!(payloads, vec![Payload::Delete(Delete::esp(&[pairs[1].0]))]);
    p.collect_events();
    assert_eq!(downs(&p.i_events), vec![pairs[1]]);
    assert_eq!(child_pairs(&p.initiator), vec![pairs[0]]);
    p.initiator.rekey_child(p.now).unwrap();
    let request = p.initiator.poll_transmit().unwrap();
    p.responder.handle_datagram(p.now, addr(A), &request.bytes);
    assert!(p.responder.poll_transmit().is_some());
    p.initiator.create_child(p.now, 5).unwrap_err();
    p.drive();
    assert_eq!(rekeys(&p.i_events).len(), 1);
    assert_eq!(rekeys(&p.i_events)[0].0, pairs[0].0);
    // Created again on demand.
    p.initiator.create_child(p.now, 0).unwrap();
    p.drive();
    let again = ups(&p.i_events);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0.local_ts, port_ts(IpAddr::V4(A), &[6081]));
    assert_eq!(p.initiator.child_sa_count(), 2);
}

/// Refusals of an additional Child SA leave the IKE SA and the first
/// Child SA standing: beyond the responder's `max_child_sas`
/// (NO_ADDITIONAL_SAS), and selectors outside its policy
/// (TS_UNACCEPTABLE).
#[test]
fn additional_child_sa_refusals() {
    let ports = [4789, 6081];
    let i = per_port(initiator_config(), A, B, &ports);
    let mut r = per_port(responder_config(), B, A, &ports);
    r.max_child_sas = 1;
    let mut p = Pair::new(i.clone(), r);
    p.drive();
    let refused = |notify, by_peer| Event::Failed { notify, by_peer };
    assert!(
        p.i_events
            .contains(&refused(NotifyType::NoAdditionalSas, true))
    );
    assert_eq!(ups(&p.i_events).len(), 1);
    assert_children_match(&p, 1);

    let r = per_port(responder_config(), B, A, &ports[..1]);
    let mut p = Pair::new(i, r);
    p.drive();
    assert!(
        p.i_events
            .contains(&refused(NotifyType::TsUnacceptable, true))
    );
    assert!(
        p.r_events
            .contains(&refused(NotifyType::TsUnacceptable, false))
    );
    assert_children_match(&p, 1);
    assert!(p.initiator.is_established() && p.responder.is_established());
}

/// PFS for a new Child SA (RFC 7296 section 1.3.1): the KE payload is of
/// the group the responder picks, after one INVALID_KE_PAYLOAD if the
/// initiator guessed another.
#[test]
fn additional_child_sa_with_pfs_and_invalid_ke() {
    let ports = [4789, 6081];
    let i = per_port(initiator_config(), A, B, &ports)
        .with_proposals(DEFAULT_IKE[0], "aes256gcm16-x25519-ecp256")
        .unwrap();
    let r = per_port(responder_config(), B, A, &ports)
        .with_proposals(DEFAULT_IKE[0], "aes256gcm16-ecp256")
        .unwrap();
    let mut p = Pair::new(i, r);
    p.drive();
    assert_children_match(&p, 2);
    let (i_ups, r_ups) = (ups(&p.i_events), ups(&p.r_events));
    assert_eq!(i_ups.len(), 2);
    esp_round_trip(&i_ups[1].1, &r_ups[1].0, p.now);
    // IKE_SA_INIT, IKE_AUTH, CREATE_CHILD_SA (x25519, refused) and again
    // (ecp256).
    assert_eq!(p.from_initiator.len(), 4);
    assert!(!p.i_events.iter().any(|e| matches!(e, Event::Failed { .. })));
}

/// IKE fragmentation (RFC 7383, `fragment.rs`): two IKE SAs with a small
/// fragment size, so that the PSK IKE_AUTH messages go in fragments,
/// moved by hand to reorder, duplicate, lose and tamper with them.
mod fragmentation {
    use super::*;
    use crate::message::HEADER_LEN;

    /// An IP datagram size that cuts the PSK IKE_AUTH into several
    /// fragments.
    const SMALL: usize = 200;

    fn small(mut c: Config) -> Config {
        c.fragment_size = SMALL;
        c
    }

    fn drain(sa: &mut IkeSa) -> Vec<Vec<u8>> {
        core::iter::from_fn(|| sa.poll_transmit().map(|t| t.bytes)).collect()
    }

    fn is_fragment(bytes: &[u8]) -> bool {
        Header::decode(bytes).unwrap().next_payload == PayloadType::EncryptedFragment
    }

    fn events(sa: &mut IkeSa) -> Vec<Event> {
        core::iter::from_fn(|| sa.poll_event()).collect()
    }

    fn has_notify(bytes: &[u8], t: NotifyType) -> bool {
        Message::decode(bytes).unwrap().notify(t).is_some()
    }

    /// IKE_SA_INIT done; returns the initiator, the responder and the
    /// initiator's IKE_AUTH request (its fragments).
    fn after_init(i: Config, r: Config, now: Instant) -> (IkeSa, IkeSa, Vec<Vec<u8>>) {
        let mut i = IkeSa::initiate(i, addr(B), now, Box::new(SeededRandom::new(1))).unwrap();
        let mut r = IkeSa::respond(r, Box::new(SeededRandom::new(2)));
        for m in drain(&mut i) {
            r.handle_datagram(now, addr(A), &m);
        }
        for m in drain(&mut r) {
            i.handle_datagram(now, addr(B), &m);
        }
        let auth = drain(&mut i);
        (i, r, auth)
    }

    fn assert_up(i: &mut IkeSa, r: &mut IkeSa) {
        let (ie, re) = (events(i), events(r));
        assert_eq!(ie.first(), Some(&Event::IkeSaEstablished), "{ie:?}");
        assert_eq!(re.first(), Some(&Event::IkeSaEstablished), "{re:?}");
        assert!(i.is_established() && r.is_established());
        let (i_in, i_out) = Pair::child(&ie).unwrap();
        let (r_in, r_out) = Pair::child(&re).unwrap();
        esp_round_trip(&i_out, &r_in, Instant::now());
        esp_round_trip(&r_out, &i_in, Instant::now());
    }

    /// Both sides announce fragmentation; IKE_AUTH request and response
    /// each go as several fragments no longer than the limit, delivered
    /// in order, reversed, or shuffled with duplicates; the IKE SA comes
    /// up every time.
    #[test]
    fn ike_auth_in_fragments_any_order() {
        let limit = fragment::message_limit(SMALL, addr(A));
        type Order = fn(Vec<Vec<u8>>) -> Vec<Vec<u8>>;
        let orders: [(&str, Order); 3] = [
            ("in order", |v| v),
            ("reversed", |mut v| {
                v.reverse();
                v
            }),
            ("shuffled with duplicates", |v| {
                let n = v.len();
                let mut out: Vec<Vec<u8>> = (0..n).map(|k| v[(k * 3 + 1) % n].clone()).collect();
                out.insert(1, v[n - 1].clone());
                out.insert(0, v[0].clone());
                out.push(v[1].clone());
                // Every fragment is there at least once.
                for f in &v {
                    assert!(out.contains(f));
                }
                out
            }),
        ];
        for (name, order) in orders {
            let now = Instant::now();
            let (mut i, mut r, auth) =
                after_init(small(initiator_config()), small(responder_config()), now);
            assert_eq!(i.fragment_limit, Some(limit));
            assert_eq!(r.fragment_limit, Some(limit));
            assert!(auth.len() > 2, "{name}: {}", auth.len());
            for f in &auth {
                assert!(is_fragment(f) && f.len() <= limit, "{name}");
            }
            let sent = auth.len() as u64;
            let auth_len = auth.len();
            assert_eq!(i.stats().fragments_sent, sent);
            let delivered = order(auth);
            let extra = delivered.len() as u64 - sent;
            let mut response = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for f in &delivered {
                // No answer before every fragment is in.
                assert_eq!(response.is_empty(), seen.len() < auth_len, "{name}");
                seen.insert(f.clone());
                r.handle_datagram(now, addr(A), f);
                response.extend(drain(&mut r));
            }
            let rs = r.stats();
            assert_eq!(rs.fragments_received, sent, "{name}");
            assert!(rs.fragments_dropped <= extra, "{name}");
            assert!(response.len() > 1, "{name}");
            for f in order(response) {
                assert!(is_fragment(&f) && f.len() <= limit);
                i.handle_datagram(now, addr(B), &f);
            }
            assert_up(&mut i, &mut r);
            let (is, rs) = (i.stats(), r.stats());
            // Duplicates after completion are unexpected (the response
            // has come), and nothing is malformed or forged.
            assert_eq!(is.malformed + is.integrity, 0, "{name} {is:?}");
            assert_eq!(rs.malformed + rs.integrity, 0, "{name} {rs:?}");
        }
    }

    /// A lost request fragment: the responder waits; the initiator's
    /// retransmission sends every fragment again, and the responder
    /// completes the message (the fragments it had are duplicates). A lost
    /// response fragment: the initiator retransmits its request, the
    /// responder resends all of its response once (on fragment 1 only),
    /// and the initiator completes.
    #[test]
    fn lost_fragments_are_retransmitted() {
        let now = Instant::now();
        let (mut i, mut r, auth) =
            after_init(small(initiator_config()), small(responder_config()), now);
        let n = auth.len();
        for f in &auth[..n - 1] {
            r.handle_datagram(now, addr(A), f);
        }
        assert!(drain(&mut r).is_empty());
        let later = i.poll_timeout().unwrap();
        i.handle_timeout(later);
        let again = drain(&mut i);
        assert_eq!(again.len(), n);
        assert_eq!(i.stats().fragments_sent, 2 * n as u64);
        let mut response = Vec::new();
        for f in &again {
            r.handle_datagram(later, addr(A), f);
            response.extend(drain(&mut r));
        }
        assert_eq!(r.stats().fragments_dropped, n as u64 - 1);
        let m = response.len();
        assert!(m > 1);
        // Lose the response's last fragment.
        for f in &response[..m - 1] {
            i.handle_datagram(later, addr(B), f);
        }
        assert!(!i.is_established());
        let later = i.poll_timeout().unwrap();
        i.handle_timeout(later);
        let third = drain(&mut i);
        assert_eq!(third.len(), n);
        let mut resent = Vec::new();
        for f in &third {
            r.handle_datagram(later, addr(A), f);
            resent.extend(drain(&mut r));
        }
        // Only fragment 1 of the retransmitted request got the response,
        // all of it, once.
        assert_eq!(resent, response);
        assert_eq!(r.stats().cached_responses, 1);
        for f in &resent {
            i.handle_datagram(later, addr(B), f);
        }
        assert_up(&mut i, &mut r);
        assert_eq!(i.stats().retransmits, 2);
    }

    /// A tampered fragment fails its ICV and is not kept (the others are);
    /// the retransmission completes the message.
    #[test]
    fn tampered_fragment_is_discarded() {
        let now = Instant::now();
        let (mut i, mut r, auth) =
            after_init(small(initiator_config()), small(responder_config()), now);
        let mut bad = auth[1].clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        r.handle_datagram(now, addr(A), &bad);
        assert_eq!(r.stats().integrity, 1);
        for f in auth
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != 1)
            .map(|(_, f)| f)
        {
            r.handle_datagram(now, addr(A), f);
        }
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.stats().fragments_received, auth.len() as u64 - 1);
        let later = i.poll_timeout().unwrap();
        i.handle_timeout(later);
        for f in drain(&mut i) {
            r.handle_datagram(later, addr(A), &f);
        }
        for f in drain(&mut r) {
            i.handle_datagram(later, addr(B), &f);
        }
        assert_up(&mut i, &mut r);
    }

    /// Either side without fragmentation: no fragments, IKE_AUTH goes
    /// whole (longer than the small limit), the responder does not
    /// announce support unless the initiator did, and the IKE SA comes up.
    #[test]
    fn not_negotiated_means_no_fragments() {
        for (i_on, r_on) in [(false, true), (true, false), (false, false)] {
            let now = Instant::now();
            let (mut ic, mut rc) = (small(initiator_config()), small(responder_config()));
            ic.fragmentation = i_on;
            rc.fragmentation = r_on;
            let mut i = IkeSa::initiate(ic, addr(B), now, Box::new(SeededRandom::new(1))).unwrap();
            let mut r = IkeSa::respond(rc, Box::new(SeededRandom::new(2)));
            let init = drain(&mut i);
            assert_eq!(
                has_notify(&init[0], NotifyType::Ikev2FragmentationSupported),
                i_on
            );
            r.handle_datagram(now, addr(A), &init[0]);
            let init_resp = drain(&mut r);
            assert_eq!(
                has_notify(&init_resp[0], NotifyType::Ikev2FragmentationSupported),
                i_on && r_on
            );
            i.handle_datagram(now, addr(B), &init_resp[0]);
            let auth = drain(&mut i);
            assert_eq!(auth.len(), 1);
            assert!(!is_fragment(&auth[0]));
            assert!(auth[0].len() > fragment::message_limit(SMALL, addr(A)));
            r.handle_datagram(now, addr(A), &auth[0]);
            let resp = drain(&mut r);
            assert_eq!(resp.len(), 1);
            i.handle_datagram(now, addr(B), &resp[0]);
            assert_up(&mut i, &mut r);
            assert_eq!(i.stats().fragments_sent + r.stats().fragments_sent, 0);
        }
        // The default configuration announces it and cuts at 1280 bytes.
        let c = initiator_config();
        assert!(c.fragmentation);
        assert_eq!(c.fragment_size, 1280);
    }

    /// An SKF message from a peer that did not negotiate fragmentation is
    /// dropped (malformed), even if authentic.
    #[test]
    fn fragment_without_negotiation_is_dropped() {
        let mut ic = initiator_config();
        ic.fragmentation = false;
        let mut p = Pair::new(ic, responder_config());
        p.drive();
        assert!(p.initiator.is_established() && p.responder.is_established());
        let st = established_state(&p.initiator);
        let header = p.initiator.header(ExchangeType::Informational, false, 2);
        let frags = st
            .sk
            .outbound
            .seal_fragments(&header, &[Payload::VendorId(vec![7; 300])], 150)
            .unwrap();
        assert!(frags.len() > 1);
        for f in &frags {
            p.responder.handle_datagram(p.now, addr(A), f);
        }
        assert!(p.responder.poll_transmit().is_none());
        assert_eq!(p.responder.stats().malformed, frags.len() as u64);
        assert_eq!(p.responder.stats().fragments_received, 0);
    }

    /// Forged bounds, authentic fragments (sealed with the initiator's
    /// keys): more than MAX_FRAGMENTS, a Total Fragments that shrinks
    /// (dropped) or grows (starts over), more than MAX_REASSEMBLED bytes:
    /// all dropped without a panic or an answer; a message that does
    /// complete after a restart is answered.
    #[test]
    fn fragment_bounds() {
        let mut p = Pair::new(small(initiator_config()), small(responder_config()));
        p.drive();
        assert!(p.initiator.is_established() && p.responder.is_established());
        // The IKE_AUTH request came in fragments.
        let handshake = p.responder.stats().fragments_received;
        assert!(handshake > 1);
        let header = p.initiator.header(ExchangeType::Informational, false, 2);
        let sk = &established_state(&p.initiator).sk.outbound;
        // An empty plaintext: the first payload is none.
        let frag = |number: u16, total: u16, piece: &[u8]| {
            sk.seal_fragment(&header, PayloadType::None, number, total, piece)
                .unwrap()
        };
        let sent = [
            // Too many fragments.
            frag(1, fragment::MAX_FRAGMENTS + 1, &[]),
            // 1 of 3, then 2 of 2 (smaller: dropped), then 2 of 4
            // (larger: starts over, 1 of 3 forgotten).
            frag(1, 3, &[]),
            frag(2, 2, &[]),
            frag(2, 4, &[]),
        ];
        for f in &sent {
            p.responder.handle_datagram(p.now, addr(A), f);
        }
        assert!(p.responder.poll_transmit().is_none());
        let s = p.responder.stats();
        assert_eq!(
            (s.fragments_received - handshake, s.fragments_dropped),
            (2, 2)
        );
        // Fragments 1, 3 and 4 of 4 complete the (empty) INFORMATIONAL
        // request: a liveness check, answered.
        for n in [4, 1, 3] {
            p.responder
                .handle_datagram(p.now, addr(A), &frag(n, 4, &[]));
        }
        let answer = drain(&mut p.responder);
        assert_eq!(answer.len(), 1);
        assert!(open_response(&p.initiator, &answer[0], 2).is_empty());
        // Too many bytes: 255 fragments of 1000 bytes pass 64 KiB at the
        // 66th; the rest starts a new message, never complete.
        let header = p.initiator.header(ExchangeType::Informational, false, 3);
        let sk = &established_state(&p.initiator).sk.outbound;
        let before = p.responder.stats();
        for n in 1..=70 {
            let f = sk
                .seal_fragment(&header, PayloadType::None, n, 255, &[0; 1000])
                .unwrap();
            p.responder.handle_datagram(p.now, addr(A), &f);
        }
        let after = p.responder.stats();
        assert_eq!(after.fragments_dropped - before.fragments_dropped, 1);
        assert_eq!(after.fragments_received - before.fragments_received, 69);
        assert!(p.responder.poll_transmit().is_none());
        assert!(p.responder.is_established());
    }

    /// A half-assembled message older than REASSEMBLY_TIMEOUT is dropped:
    /// its missing fragment, arriving late, starts a new reassembly, and
    /// the message completes only when the other fragment comes again.
    #[test]
    fn stale_reassembly_is_dropped() {
        let mut p = Pair::new(small(initiator_config()), small(responder_config()));
        p.drive();
        let header = p.initiator.header(ExchangeType::Informational, false, 2);
        let sk = &established_state(&p.initiator).sk.outbound;
        let frag = |n| {
            sk.seal_fragment(&header, PayloadType::None, n, 2, &[])
                .unwrap()
        };
        let (one, two) = (frag(1), frag(2));
        p.responder.handle_datagram(p.now, addr(A), &one);
        let late = p.now + fragment::REASSEMBLY_TIMEOUT + Duration::from_secs(1);
        p.responder.handle_datagram(late, addr(A), &two);
        assert!(p.responder.poll_transmit().is_none());
        p.responder.handle_datagram(late, addr(A), &one);
        let answer = drain(&mut p.responder);
        assert_eq!(answer.len(), 1);
        assert!(open_response(&p.initiator, &answer[0], 2).is_empty());
    }

    /// With the small fragment size, CREATE_CHILD_SA goes in fragments
    /// too: either side rekeys the IKE SA, then a Child SA, and everything
    /// works on the new IKE SA (which keeps fragmenting).
    #[test]
    fn rekeys_in_fragments() {
        for by_initiator in [true, false] {
            let mut p = Pair::new(small(initiator_config()), small(responder_config()));
            p.drive();
            assert_established(&p);
            p.i_events.clear();
            p.r_events.clear();
            let sent =
                |p: &Pair| p.initiator.stats().fragments_sent + p.responder.stats().fragments_sent;
            let before = sent(&p);
            if by_initiator {
                p.initiator.rekey_ike(p.now).unwrap();
            } else {
                p.responder.rekey_ike(p.now).unwrap();
            }
            p.drive();
            assert_eq!(ike_rekeys(&p.i_events).len(), 1, "{:?}", p.i_events);
            assert_eq!(ike_rekeys(&p.i_events), ike_rekeys(&p.r_events));
            let after_ike = sent(&p);
            assert!(after_ike > before, "the IKE SA rekey was not fragmented");
            assert_works_after_ike_rekey(&mut p);
            assert!(
                sent(&p) > after_ike,
                "the Child SA rekey was not fragmented"
            );
            for sa in [&p.initiator, &p.responder] {
                let s = sa.stats();
                assert_eq!(s.malformed + s.integrity + s.fragments_dropped, 0, "{s:?}");
            }
        }
    }

    /// Arbitrary bytes after a valid IKE header naming an SKF payload (and
    /// after a well-formed SKF header), to an IKE SA that negotiated
    /// fragmentation: dropped, never a panic, never an answer.
    #[test]
    fn arbitrary_fragments_never_panic() {
        let mut p = Pair::new(small(initiator_config()), small(responder_config()));
        p.drive();
        let before = p.responder.stats();
        let header = p.initiator.header(ExchangeType::Informational, false, 2);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for k in 0..3000 {
            let len = (next() % 200) as usize;
            let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if k % 2 == 0 && body.len() >= 8 {
                // A plausible SKF header: right length, small numbers.
                let l = body.len() as u16;
                body[0] = 0;
                body[2..4].copy_from_slice(&l.to_be_bytes());
                body[4..6].copy_from_slice(&(1 + (k % 3) as u16).to_be_bytes());
                body[6..8].copy_from_slice(&3u16.to_be_bytes());
            }
            let mut h = header;
            h.next_payload = PayloadType::EncryptedFragment;
            h.length = (HEADER_LEN + body.len()) as u32;
            let mut bytes = Vec::new();
            h.encode(&mut bytes);
            bytes.extend_from_slice(&body);
            p.responder.handle_datagram(p.now, addr(A), &bytes);
            assert!(p.responder.poll_transmit().is_none());
        }
        let s = p.responder.stats();
        assert_eq!(
            s.malformed + s.integrity - before.malformed - before.integrity,
            3000
        );
        assert_eq!(s.fragments_received, before.fragments_received);
        assert!(p.responder.is_established());
    }
}

/// The nonce of a pending attempt, the same nonce read from its
/// IKE_SA_INIT request on the wire, and that request sent again at once
/// on demand: what a driver needs to settle crossing attempts.
#[test]
fn pending_init_nonce_and_send_init_again() {
    let now = Instant::now();
    let mut sa = IkeSa::initiate(
        initiator_config(),
        addr(B),
        now,
        Box::new(SeededRandom::new(7)),
    )
    .unwrap();
    let request = sa.poll_transmit().unwrap().bytes;
    let ours = sa.pending_init_nonce().unwrap().to_vec();
    assert_eq!(ours.len(), NONCE_LEN);
    let decoded = Message::decode(&request).unwrap();
    assert_eq!(decoded.init_request_nonce(), Some(ours.as_slice()));
    assert!(sa.poll_transmit().is_none());
    sa.send_init_again();
    assert_eq!(
        sa.poll_transmit().unwrap().bytes,
        request,
        "the same request"
    );
    assert_eq!(sa.stats().retransmits, 0, "not counted as a retransmission");

    // Once the IKE SA is up there is nothing pending, and no request to
    // send again; the responder never has a pending nonce.
    let mut p = Pair::new(initiator_config(), responder_config());
    assert!(p.initiator.pending_init_nonce().is_some());
    assert!(p.responder.pending_init_nonce().is_none());
    p.drive();
    assert_established(&p);
    assert!(p.initiator.pending_init_nonce().is_none());
    p.initiator.send_init_again();
    assert!(p.initiator.poll_transmit().is_none());
    // A response is no IKE_SA_INIT request.
    let response = Message::decode(&p.from_responder[0]).unwrap();
    assert_eq!(response.init_request_nonce(), None);
}

/// Rekeys come at 80 to 90% of a lifetime, and at least a second before
/// its end for short ones (tunsecd stops the SAs at the end).
#[test]
fn rekey_time_leaves_a_margin() {
    let now = Instant::now();
    let mut rng = SeededRandom::new(3);
    for _ in 0..100 {
        let at = |secs: u64, rng: &mut SeededRandom| {
            state::rekey_time(Some(Duration::from_secs(secs)), rng, now).unwrap() - now
        };
        let long = at(3600, &mut rng);
        assert!(long >= Duration::from_secs(2880) && long <= Duration::from_secs(3240));
        assert_eq!(at(3, &mut rng), Duration::from_secs(2));
        assert_eq!(at(2, &mut rng), Duration::from_secs(1));
        assert!(at(20, &mut rng) <= Duration::from_secs(18));
    }
    assert_eq!(state::rekey_time(None, &mut rng, now), None);
}

// ---- ovs-monitor-ipsec's two Child SAs per tunnel ----

/// `[udp/4789] === [udp]` and `[udp] === [udp/4789]` between `local` and
/// `remote` (ovs-monitor-ipsec's `-in` and `-out` connections), the one
/// this side sends with first, as tunsecd's `layout = "split"` writes it.
fn split(mut c: Config, local: Ipv4Addr, remote: Ipv4Addr) -> Config {
    let (l, r) = (IpAddr::V4(local), IpAddr::V4(remote));
    let any = |h| vec![ts::host(h, 17, 0, u16::MAX)];
    c = c.with_selectors(any(l), port_ts(r, &[4789]));
    c.additional_children = vec![(port_ts(l, &[4789]), any(r))];
    c.create_missing_children = true;
    c.narrow_to_one_child = true;
    c
}

/// Two split sides: the initiator creates both Child SAs (IKE_AUTH, then
/// CREATE_CHILD_SA), each narrowed to one configured Child SA; the
/// responder, whose completion timer fires after them, finds them covered
/// and creates none.
#[test]
fn split_layout_both_sides() {
    let mut p = Pair::new(
        split(initiator_config(), A, B),
        split(responder_config(), B, A),
    );
    p.drive();
    assert_established(&p);
    let (i_ups, r_ups) = (ups(&p.i_events), ups(&p.r_events));
    assert_eq!(i_ups.len(), 2, "{:?}", p.i_events);
    assert_eq!(r_ups.len(), 2, "{:?}", p.r_events);
    let any = |h: Ipv4Addr| vec![ts::host(IpAddr::V4(h), 17, 0, u16::MAX)];
    let port = |h: Ipv4Addr| port_ts(IpAddr::V4(h), &[4789]);
    assert_eq!(
        (&i_ups[0].0.local_ts, &i_ups[0].0.remote_ts),
        (&any(A), &port(B))
    );
    assert_eq!(
        (&i_ups[1].0.local_ts, &i_ups[1].0.remote_ts),
        (&port(A), &any(B))
    );
    assert_eq!(
        (&r_ups[0].0.local_ts, &r_ups[0].0.remote_ts),
        (&port(B), &any(A))
    );
    assert_eq!(
        (&r_ups[1].0.local_ts, &r_ups[1].0.remote_ts),
        (&any(B), &port(A))
    );
    for n in 0..2 {
        esp_round_trip(&i_ups[n].1, &r_ups[n].0, p.now);
        esp_round_trip(&r_ups[n].1, &i_ups[n].0, p.now);
    }
    assert_children_match(&p, 2);
    assert_eq!(p.from_responder.len(), 3, "the responder made no request");
}

/// A peer that creates only the Child SA it sends with (strongSwan with
/// `auto=route`: its trap for `[udp] === [udp/4789]` fires): the split
/// responder creates its own one a second later, and rekeys each with the
/// selectors it was negotiated with.
#[test]
fn split_responder_creates_the_missing_child() {
    let (a, b) = (IpAddr::V4(A), IpAddr::V4(B));
    let mut i = initiator_config();
    i = i.with_selectors(vec![ts::host(a, 17, 0, u16::MAX)], port_ts(b, &[4789]));
    // It accepts our Child SA as its other configured one.
    i.additional_children = vec![(port_ts(a, &[4789]), vec![ts::host(b, 17, 0, u16::MAX)])];
    i.narrow_to_one_child = true;
    let mut p = Pair::new(i.clone(), split(responder_config(), B, A));
    // The initiator creates only its first one.
    p.initiator.config.additional_children.clear();
    while p.step() {}
    assert_eq!(p.responder.child_sa_count(), 1);
    p.initiator.config.additional_children = i.additional_children;
    let start = p.now;
    p.drive();
    assert!(p.now >= start + CHILD_COMPLETION_DELAY);
    let r_ups = ups(&p.r_events);
    assert_eq!(r_ups.len(), 2, "{:?}", p.r_events);
    let port_b = port_ts(b, &[4789]);
    let any_a = vec![ts::host(a, 17, 0, u16::MAX)];
    // The peer's (narrowed to our "in"), then ours ("out").
    assert_eq!(
        (&r_ups[0].0.local_ts, &r_ups[0].0.remote_ts),
        (&port_b, &any_a)
    );
    assert_eq!(
        (&r_ups[1].0.local_ts, &r_ups[1].0.remote_ts),
        (&vec![ts::host(b, 17, 0, u16::MAX)], &port_ts(a, &[4789]))
    );
    assert_children_match(&p, 2);
    // A rekey by the responder proposes each pair's own selectors.
    p.r_events.clear();
    p.i_events.clear();
    p.responder.rekey_child(p.now).unwrap();
    p.drive();
    let r = rekeys(&p.r_events);
    assert_eq!(r.len(), 2, "{:?}", p.r_events);
    assert_eq!((&r[0].2.local_ts, &r[0].2.remote_ts), (&port_b, &any_a));
    assert_eq!(r[1].2.remote_ts, port_ts(a, &[4789]));
    assert_children_match(&p, 2);
}

// ---- ML-KEM as the key exchange (draft-ietf-ipsecme-ikev2-mlkem) ----

/// ML-KEM-512, -768 and -1024 as the only key exchange: IKE_SA_INIT
/// carries the initiator's encapsulation key and the responder's
/// ciphertext; the handshake, a Child SA rekey with ML-KEM for PFS and an
/// IKE SA rekey, each started by either side, agree on keys that work.
#[test]
fn ml_kem_as_the_key_exchange() {
    for (name, group, ek_len, ct_len) in [
        ("mlkem512", DhGroup::MlKem512, 800, 768),
        ("mlkem768", DhGroup::MlKem768, 1184, 1088),
        ("mlkem1024", DhGroup::MlKem1024, 1568, 1568),
    ] {
        for by_initiator in [true, false] {
            let ike = format!("aes256gcm16-prfsha384-{name}");
            let esp = format!("aes256gcm16-{name}");
            let config = |c: Config| c.with_proposals(&ike, &esp).unwrap();
            let mut p = Pair::new(config(initiator_config()), config(responder_config()));
            p.drive();
            let old = assert_established(&p);
            assert_eq!(p.initiator.ike_suite().unwrap().group, group);
            let ke_len = |bytes: &[u8]| {
                Message::decode(bytes)
                    .unwrap()
                    .payloads
                    .iter()
                    .find_map(|p| match p {
                        Payload::KeyExchange(ke) if ke.group == group => Some(ke.data.len()),
                        _ => None,
                    })
            };
            assert_eq!(ke_len(&p.from_initiator[0]), Some(ek_len), "{name}");
            assert_eq!(ke_len(&p.from_responder[0]), Some(ct_len), "{name}");

            p.i_events.clear();
            p.r_events.clear();
            if by_initiator {
                p.initiator.rekey_child(p.now).unwrap();
            } else {
                p.responder.rekey_child(p.now).unwrap();
            }
            p.drive();
            assert_rekeyed(&p, &old);

            p.i_events.clear();
            p.r_events.clear();
            if by_initiator {
                p.initiator.rekey_ike(p.now).unwrap();
            } else {
                p.responder.rekey_ike(p.now).unwrap();
            }
            p.drive();
            assert_eq!(ike_rekeys(&p.i_events).len(), 1, "{name}: {:?}", p.i_events);
            assert_eq!(ike_rekeys(&p.i_events), ike_rekeys(&p.r_events));
            assert_works_after_ike_rekey(&mut p);
        }
    }
}

/// A responder's ML-KEM ciphertext cut short: the initiator fails the
/// IKE SA with INVALID_SYNTAX (RFC 7296 section 1.2: the KE data is not
/// of the method's length), and nothing panics.
#[test]
fn ml_kem_ciphertext_of_the_wrong_length_is_refused() {
    let config = |c: Config| {
        c.with_proposals("aes256gcm16-prfsha384-mlkem768", "aes256gcm16")
            .unwrap()
    };
    let mut p = Pair::new(config(initiator_config()), config(responder_config()));
    // The IKE_SA_INIT response is held back, altered, then delivered.
    p.responder_mute = true;
    p.step();
    let mut message = Message::decode(&p.from_responder[0]).unwrap();
    for payload in &mut message.payloads {
        if let Payload::KeyExchange(ke) = payload {
            assert_eq!(ke.data.len(), 1088);
            ke.data.truncate(1000);
        }
    }
    let now = p.now;
    p.initiator
        .handle_datagram(now, addr(B), &message.encode().unwrap());
    p.collect_events();
    assert!(p.initiator.is_closed());
    assert_eq!(
        p.i_events,
        vec![Event::Failed {
            notify: NotifyType::InvalidSyntax,
            by_peer: false
        }]
    );
}

/// Crossing requests (each side sends one at the same moment) are no
/// sign of loss: the peer's request does not make ours go again.
#[test]
fn crossing_requests_are_not_retransmitted() {
    let (mut p, ..) = established_pair();
    p.initiator.check_liveness(p.now).unwrap();
    p.responder.check_liveness(p.now).unwrap();
    p.drive();
    assert!(p.initiator.is_established() && p.responder.is_established());
    assert_eq!(p.initiator.stats().retransmits, 0);
    assert_eq!(p.responder.stats().retransmits, 0);
}

// ---- additional key exchanges in IKE_INTERMEDIATE (RFC 9370, RFC 9242) ----

/// Hybrid IKE SAs tunsec to tunsec: X25519 in IKE_SA_INIT, ML-KEM-768 (and
/// ML-KEM-1024) in IKE_INTERMEDIATE exchanges, then IKE_AUTH with the next
/// message ID; the key share of ML-KEM goes in fragments. Both sides agree
/// on the suite and on Child SA keys that work.
#[test]
fn hybrid_key_exchange_in_ike_intermediate() {
    for (ike, additional) in [
        (
            "aes256gcm16-prfsha384-x25519-ke1_mlkem768",
            vec![DhGroup::MlKem768],
        ),
        (
            "aes128gcm16-prfsha256-ecp256-ke1_mlkem768-ke2_mlkem1024",
            vec![DhGroup::MlKem768, DhGroup::MlKem1024],
        ),
    ] {
        let config = |c: Config| c.with_proposals(ike, "aes256gcm16").unwrap();
        let mut p = Pair::new(config(initiator_config()), config(responder_config()));
        p.drive();
        assert_established(&p);
        let suite = p.initiator.ike_suite().unwrap();
        assert_eq!(suite, p.responder.ike_suite().unwrap());
        assert_eq!(
            suite.additional_key_exchanges().collect::<Vec<_>>(),
            additional
        );
        let exchanges: Vec<ExchangeType> = p
            .from_initiator
            .iter()
            .map(|m| Header::decode(m).unwrap().exchange_type)
            .collect();
        let intermediate = exchanges
            .iter()
            .filter(|e| **e == ExchangeType::IkeIntermediate)
            .count();
        assert!(intermediate >= additional.len(), "{ike}: {exchanges:?}");
        let auth = p
            .from_initiator
            .iter()
            .map(|m| Header::decode(m).unwrap())
            .find(|h| h.exchange_type == ExchangeType::IkeAuth)
            .unwrap();
        assert_eq!(auth.message_id, 1 + additional.len() as u32, "{ike}");
        // The ML-KEM key share goes in fragments (RFC 7383); nothing is
        // dropped or sent again.
        let (i, r) = (p.initiator.stats(), p.responder.stats());
        assert!(
            i.fragments_sent >= 2 && r.fragments_received >= 2,
            "{ike}: {i:?} {r:?}"
        );
        for s in [i, r] {
            let s = Stats {
                fragments_sent: 0,
                fragments_received: 0,
                ..s
            };
            assert_eq!(s, Stats::default(), "{ike}");
        }
        // The Child SA is rekeyed over the hybrid IKE SA's SK_d.
        let old = assert_established(&p);
        p.i_events.clear();
        p.r_events.clear();
        p.initiator.rekey_child(p.now).unwrap();
        p.drive();
        assert_rekeyed(&p, &old);
    }
}

/// An initiator that offers ML-KEM-768 as optional (`ke1_none`) and a
/// classical responder agree on X25519 alone, without IKE_INTERMEDIATE;
/// one that requires it gets NO_PROPOSAL_CHOSEN.
#[test]
fn hybrid_optional_falls_back_and_required_is_refused() {
    let optional = initiator_config()
        .with_proposals(
            "aes256gcm16-prfsha384-x25519-ke1_mlkem768-ke1_none",
            "aes256gcm16",
        )
        .unwrap();
    let classical = |c: Config| {
        c.with_proposals("aes256gcm16-prfsha384-x25519", "aes256gcm16")
            .unwrap()
    };
    let mut p = Pair::new(optional, classical(responder_config()));
    p.drive();
    assert_established(&p);
    assert_eq!(
        p.initiator
            .ike_suite()
            .unwrap()
            .additional_key_exchanges()
            .count(),
        0
    );
    assert!(
        p.from_initiator
            .iter()
            .all(|m| Header::decode(m).unwrap().exchange_type != ExchangeType::IkeIntermediate)
    );

    let required = initiator_config()
        .with_proposals("aes256gcm16-prfsha384-x25519-ke1_mlkem768", "aes256gcm16")
        .unwrap();
    let mut p = Pair::new(required, classical(responder_config()));
    p.drive();
    assert!(!p.initiator.is_established());
    assert!(p.i_events.contains(&Event::Failed {
        notify: NotifyType::NoProposalChosen,
        by_peer: true
    }));
}

/// A forged IKE_SA_INIT response whose chosen proposal drops the
/// additional key exchange (a downgrade to X25519 alone) is refused: the
/// initiator offered none without it, so `check_chosen` finds a transform
/// type missing, and the IKE SA fails before any IKE_AUTH.
#[test]
fn hybrid_downgrade_in_a_forged_response_is_refused() {
    let config = |c: Config| {
        c.with_proposals("aes256gcm16-prfsha384-x25519-ke1_mlkem768", "aes256gcm16")
            .unwrap()
    };
    let mut p = Pair::new(config(initiator_config()), config(responder_config()));
    p.responder_mute = true;
    p.step();
    let mut message = Message::decode(&p.from_responder[0]).unwrap();
    let mut dropped = 0;
    for payload in &mut message.payloads {
        if let Payload::Sa(sa) = payload {
            for proposal in &mut sa.proposals {
                let before = proposal.transforms.len();
                proposal
                    .transforms
                    .retain(|t| !matches!(t.id, crate::message::TransformId::AddKe { .. }));
                dropped += before - proposal.transforms.len();
            }
        }
    }
    assert_eq!(dropped, 1, "the response chose no additional key exchange");
    let now = p.now;
    p.initiator
        .handle_datagram(now, addr(B), &message.encode().unwrap());
    p.collect_events();
    assert!(p.initiator.is_closed());
    assert_eq!(
        p.i_events,
        vec![Event::Failed {
            notify: NotifyType::NoProposalChosen,
            by_peer: false
        }]
    );
    assert!(p.initiator.poll_transmit().is_none(), "no IKE_AUTH sent");
}

// ---- IKE_FOLLOWUP_KE: additional key exchanges for Child SAs (RFC 9370 section 2.2.2) ----

/// ESP proposals with additional key exchanges beside X25519.
const HYBRID_ESP: [(&str, &[DhGroup]); 2] = [
    ("aes256gcm16-x25519-ke1_mlkem768", &[DhGroup::MlKem768]),
    (
        "aes128gcm16-ecp256-ke1_mlkem768-ke2_mlkem1024",
        &[DhGroup::MlKem768, DhGroup::MlKem1024],
    ),
];

fn hybrid_esp(c: Config, esp: &str) -> Config {
    c.with_proposals(DEFAULT_IKE[0], esp).unwrap()
}

/// The exchange types of `messages`, in order.
fn exchanges(messages: &[Vec<u8>]) -> Vec<ExchangeType> {
    messages
        .iter()
        .map(|m| Header::decode(m).unwrap().exchange_type)
        .collect()
}

/// A Child SA rekey whose ESP proposal has additional key exchanges, by
/// either side: CREATE_CHILD_SA, then one IKE_FOLLOWUP_KE per additional
/// exchange (ML-KEM's key share in fragments), then the DELETE of the old
/// pair. Both sides derive the same keys, and the pair is up only after
/// the last exchange.
#[test]
fn child_rekey_runs_the_additional_key_exchanges_in_ike_followup_ke() {
    for (esp, additional) in HYBRID_ESP {
        for by_initiator in [true, false] {
            let mut p = Pair::new(
                hybrid_esp(initiator_config(), esp),
                hybrid_esp(responder_config(), esp),
            );
            p.drive();
            let old = assert_established(&p);
            p.i_events.clear();
            p.r_events.clear();
            let (ni, nr) = (p.from_initiator.len(), p.from_responder.len());
            let rekeyer = if by_initiator {
                &mut p.initiator
            } else {
                &mut p.responder
            };
            rekeyer.rekey_child(p.now).unwrap();
            // The CREATE_CHILD_SA's answer alone brings nothing up.
            p.step();
            assert!(rekeys(&p.i_events).is_empty() && rekeys(&p.r_events).is_empty());
            p.drive();
            assert_rekeyed(&p, &old);
            let sent = if by_initiator {
                exchanges(&p.from_initiator[ni..])
            } else {
                exchanges(&p.from_responder[nr..])
            };
            let followups = sent
                .iter()
                .filter(|e| **e == ExchangeType::IkeFollowupKe)
                .count();
            assert!(followups >= additional.len(), "{esp}: {sent:?}");
            assert_eq!(sent[0], ExchangeType::CreateChildSa, "{esp}: {sent:?}");
            assert_eq!(*sent.last().unwrap(), ExchangeType::Informational);
            for sa in [&p.initiator, &p.responder] {
                assert!(established_state(sa).followup.is_none());
                let s = Stats {
                    fragments_sent: 0,
                    fragments_received: 0,
                    ..sa.stats()
                };
                assert_eq!(s, Stats::default(), "{esp}");
            }
        }
    }
}

/// A new Child SA (an additional configured one) with additional key
/// exchanges comes up after its IKE_FOLLOWUP_KE exchanges, on both sides
/// with the same keys.
#[test]
fn new_child_sa_runs_the_additional_key_exchanges() {
    let (esp, _) = HYBRID_ESP[0];
    let (a, b) = (IpAddr::V4(A), IpAddr::V4(B));
    let mut i = hybrid_esp(initiator_config(), esp);
    i.additional_children = vec![(port_ts(a, &[4789]), vec![ts::host(b, 17, 0, u16::MAX)])];
    let r = hybrid_esp(responder_config(), esp);
    let mut p = Pair::new(i, r);
    p.drive();
    let ups = |events: &[Event]| {
        events
            .iter()
            .filter_map(|e| match e {
                Event::ChildSaUp { inbound, outbound } => Some((inbound.clone(), outbound.clone())),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let (i_ups, r_ups) = (ups(&p.i_events), ups(&p.r_events));
    assert_eq!((i_ups.len(), r_ups.len()), (2, 2), "{:?}", p.i_events);
    let (i_in, i_out) = &i_ups[1];
    let r_pair = r_ups.iter().find(|(inb, _)| inb.spi == i_out.spi).unwrap();
    esp_round_trip(i_out, &r_pair.0, p.now);
    esp_round_trip(&r_pair.1, i_in, p.now);
    assert!(exchanges(&p.from_initiator).contains(&ExchangeType::IkeFollowupKe));
}

/// Both sides rekey the same Child SA at once with additional key
/// exchanges: each answers the other TEMPORARY_FAILURE (a chain of
/// exchanges cannot be settled by the nonces of its first), both try
/// again after a random pause, and one rekey goes through.
#[test]
fn colliding_rekeys_with_additional_key_exchanges_converge() {
    let (esp, _) = HYBRID_ESP[0];
    for seed in 1..=4 {
        let mut p = Pair::seeded(
            hybrid_esp(initiator_config(), esp),
            hybrid_esp(responder_config(), esp),
            seed,
            seed + 100,
        );
        p.drive();
        let old = assert_established(&p);
        p.i_events.clear();
        p.r_events.clear();
        p.initiator.rekey_child(p.now).unwrap();
        p.responder.rekey_child(p.now).unwrap();
        p.drive();
        assert_rekeyed(&p, &old);
        let busy = Event::Failed {
            notify: NotifyType::TemporaryFailure,
            by_peer: true,
        };
        assert!(
            p.i_events.contains(&busy) && p.r_events.contains(&busy),
            "{:?}",
            p.i_events
        );
    }
}

/// An IKE_FOLLOWUP_KE whose link names no exchange of the responder is
/// answered STATE_NOT_FOUND and changes nothing; one whose KE payload is
/// of the wrong method is answered INVALID_SYNTAX, and the rekey fails on
/// both sides with the old pair still up.
#[test]
fn followups_the_responder_does_not_know_are_refused() {
    let (esp, _) = HYBRID_ESP[0];
    let mut p = Pair::new(
        hybrid_esp(initiator_config(), esp),
        hybrid_esp(responder_config(), esp),
    );
    p.drive();
    let old = assert_established(&p);
    p.i_events.clear();
    p.r_events.clear();
    let forged = peer_request(
        &p.initiator,
        ExchangeType::IkeFollowupKe,
        2,
        &[
            Payload::KeyExchange(crate::message::KeyExchange {
                group: DhGroup::MlKem768,
                data: vec![0; 1184],
            }),
            followup::link_notify(b"no such link"),
        ],
    );
    p.responder.handle_datagram(p.now, addr(A), &forged);
    let answer = p.responder.poll_transmit().unwrap();
    let payloads = open_response(&p.initiator, &answer.bytes, 2);
    assert_eq!(
        Payloads(&payloads).error(),
        Some(NotifyType::StateNotFound),
        "{payloads:?}"
    );
    assert_eq!(first_child(&p.responder), Some((old.2.spi, old.3.spi)));

    // A real rekey whose IKE_FOLLOWUP_KE carries an X25519 share instead
    // of ML-KEM-768's.
    let mut p = Pair::new(
        hybrid_esp(initiator_config(), esp),
        hybrid_esp(responder_config(), esp),
    );
    p.drive();
    let old = assert_established(&p);
    p.i_events.clear();
    p.r_events.clear();
    p.initiator.rekey_child(p.now).unwrap();
    p.step();
    let State::Established(st) = &p.initiator.state else {
        panic!("not established");
    };
    assert!(matches!(st.request, Some(Request::Followup(_))));
    let link = established_state(&p.responder)
        .followup
        .as_ref()
        .unwrap()
        .link
        .clone();
    // The initiator's own IKE_FOLLOWUP_KE (message 3) is lost; a bad
    // one comes in its place.
    while p.initiator.poll_transmit().is_some() {}
    let bad = peer_request(
        &p.initiator,
        ExchangeType::IkeFollowupKe,
        3,
        &[
            Payload::KeyExchange(crate::message::KeyExchange {
                group: DhGroup::Curve25519,
                data: vec![9; 32],
            }),
            followup::link_notify(&link),
        ],
    );
    p.responder.handle_datagram(p.now, addr(A), &bad);
    p.drive();
    assert!(rekeys(&p.i_events).is_empty() && rekeys(&p.r_events).is_empty());
    assert!(p.i_events.contains(&Event::Failed {
        notify: NotifyType::InvalidSyntax,
        by_peer: true
    }));
    assert_eq!(first_child(&p.initiator), Some((old.0.spi, old.1.spi)));
    assert_eq!(first_child(&p.responder), Some((old.2.spi, old.3.spi)));
    assert!(established_state(&p.responder).followup.is_none());
}

/// A responder whose peer stops after CREATE_CHILD_SA forgets the pair
/// after `FOLLOWUP_TIMEOUT`, and rekeys that Child SA itself only then.
#[test]
fn a_followup_that_never_comes_is_forgotten() {
    let (esp, _) = HYBRID_ESP[0];
    let mut p = Pair::new(
        hybrid_esp(initiator_config(), esp),
        hybrid_esp(responder_config(), esp),
    );
    p.drive();
    assert_established(&p);
    p.initiator.rekey_child(p.now).unwrap();
    p.step();
    assert!(established_state(&p.responder).followup.is_some());
    // The responder's own rekey of the pair waits.
    p.responder.rekey_child(p.now).unwrap();
    assert!(established_state(&p.responder).request.is_none());
    let deadline = p.now + followup::FOLLOWUP_TIMEOUT;
    assert_eq!(
        p.responder.poll_timeout().unwrap(),
        p.now + Duration::from_secs(1)
    );
    p.responder.handle_timeout(deadline);
    assert!(established_state(&p.responder).followup.is_none());
}

/// A hybrid IKE SA (X25519, then ML-KEM-768 and ML-KEM-1024) is rekeyed by
/// either side with the same three exchanges: CREATE_CHILD_SA with
/// X25519, then two IKE_FOLLOWUP_KE exchanges on the old IKE SA; both
/// switch to the same new SPIs and keys (SKEYSEED from SK_d (old), SK(0),
/// the nonces and SK(1..2)), which a liveness check and a Child SA rekey
/// on the new IKE SA prove, and the suite stays hybrid.
#[test]
fn hybrid_ike_sa_rekey_runs_ike_followup_ke() {
    let ike = "aes128gcm16-prfsha256-ecp256-ke1_mlkem768-ke2_mlkem1024";
    for by_initiator in [true, false] {
        let config = |c: Config| c.with_proposals(ike, "aes256gcm16").unwrap();
        let mut p = Pair::new(config(initiator_config()), config(responder_config()));
        p.drive();
        assert_established(&p);
        let before = p.initiator.spis();
        let suite = p.initiator.ike_suite().unwrap();
        p.i_events.clear();
        p.r_events.clear();
        let (ni, nr) = (p.from_initiator.len(), p.from_responder.len());
        if by_initiator {
            p.initiator.rekey_ike(p.now).unwrap();
        } else {
            p.responder.rekey_ike(p.now).unwrap();
        }
        // The CREATE_CHILD_SA's answer alone switches nothing.
        p.step();
        assert!(ike_rekeys(&p.i_events).is_empty() && ike_rekeys(&p.r_events).is_empty());
        p.drive();
        let (i, r) = (ike_rekeys(&p.i_events), ike_rekeys(&p.r_events));
        assert_eq!(i.len(), 1, "{:?}", p.i_events);
        assert_eq!(i, r);
        assert_eq!(i[0].0, before);
        assert_eq!(p.initiator.ike_suite().unwrap(), suite);
        assert_eq!(p.responder.ike_suite().unwrap(), suite);
        let sent = if by_initiator {
            exchanges(&p.from_initiator[ni..])
        } else {
            exchanges(&p.from_responder[nr..])
        };
        let followups = sent
            .iter()
            .filter(|e| **e == ExchangeType::IkeFollowupKe)
            .count();
        assert!(followups >= 2, "{sent:?}");
        assert!(downs(&p.i_events).is_empty() && downs(&p.r_events).is_empty());
        assert_works_after_ike_rekey(&mut p);
    }
}

// ---- Child SA labels (labels.rs): keys per network ----

/// A configuration with two labelled Child SAs of the same selectors
/// (`labels`, in order; the first in IKE_AUTH).
fn labelled(mut c: Config, labels: &[&[u8]]) -> Config {
    c.additional_children = labels[1..]
        .iter()
        .map(|_| (c.local_ts.clone(), c.remote_ts.clone()))
        .collect();
    c.child_labels = labels.iter().map(|l| l.to_vec()).collect();
    c
}

/// The labels of the Child SAs that `events` brought up, in order.
fn up_labels(events: &[Event]) -> Vec<Option<Vec<u8>>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaUp { inbound, outbound } => {
                assert_eq!(inbound.label, outbound.label);
                Some(inbound.label.clone())
            }
            _ => None,
        })
        .collect()
}

/// Both sides label two Child SAs alike: each comes up with its label on
/// both sides (one in IKE_AUTH, one in CREATE_CHILD_SA), and a rekey
/// keeps it.
#[test]
fn labelled_child_sas_come_up_with_their_labels_and_keep_them() {
    let labels: [&[u8]; 2] = [b"vxlan/100", b"vxlan/200"];
    let mut p = Pair::new(
        labelled(initiator_config(), &labels),
        labelled(responder_config(), &labels),
    );
    p.drive();
    let want: Vec<Option<Vec<u8>>> = labels.iter().map(|l| Some(l.to_vec())).collect();
    assert_eq!(up_labels(&p.i_events), want);
    assert_eq!(up_labels(&p.r_events), want);
    // Rekey both, from the responder's side: each keeps its label.
    p.i_events.clear();
    p.r_events.clear();
    p.responder.rekey_child(p.now).unwrap();
    p.drive();
    for events in [&p.i_events, &p.r_events] {
        let mut rekeyed: Vec<Option<Vec<u8>>> = rekeys(events)
            .into_iter()
            .map(|(_, _, inbound, outbound)| {
                assert_eq!(inbound.label, outbound.label);
                inbound.label
            })
            .collect();
        rekeyed.sort();
        assert_eq!(rekeyed, want);
    }
    assert_eq!(p.initiator.stats(), Stats::default());
}

/// One network's Child SA is rekeyed alone (`rekey_child_labelled`):
/// only it gets new SPIs; a label no Child SA has is refused.
#[test]
fn one_labelled_child_sa_is_rekeyed_alone() {
    let labels: [&[u8]; 2] = [b"vxlan/100", b"vxlan/200"];
    let mut p = Pair::new(
        labelled(initiator_config(), &labels),
        labelled(responder_config(), &labels),
    );
    p.drive();
    p.i_events.clear();
    p.r_events.clear();
    p.initiator
        .rekey_child_labelled(p.now, b"vxlan/200")
        .unwrap();
    p.drive();
    for events in [&p.i_events, &p.r_events] {
        let rekeyed: Vec<Option<Vec<u8>>> = rekeys(events)
            .into_iter()
            .map(|(_, _, inbound, _)| inbound.label)
            .collect();
        assert_eq!(rekeyed, vec![Some(b"vxlan/200".to_vec())]);
    }
    assert_eq!(established_state(&p.initiator).children.len(), 2);
    assert!(
        p.initiator
            .rekey_child_labelled(p.now, b"vxlan/300")
            .is_err()
    );
}

/// A responder without a label gives no Child SA for it: the initiator's
/// second labelled Child SA is refused NO_PROPOSAL_CHOSEN, the first
/// stands.
#[test]
fn a_label_the_responder_does_not_have_gets_no_child_sa() {
    let mut p = Pair::new(
        labelled(initiator_config(), &[b"vxlan/100", b"vxlan/200"]),
        labelled(responder_config(), &[b"vxlan/100"]),
    );
    p.drive();
    assert_eq!(up_labels(&p.i_events), vec![Some(b"vxlan/100".to_vec())]);
    assert_eq!(up_labels(&p.r_events), vec![Some(b"vxlan/100".to_vec())]);
    assert!(p.i_events.contains(&Event::Failed {
        notify: NotifyType::NoProposalChosen,
        by_peer: true
    }));
    assert_eq!(established_state(&p.responder).children.len(), 1);
}

/// A peer that does not know labels (no labels configured, as strongSwan)
/// ignores the notify: the first Child SA comes up unlabelled on both
/// sides, and the initiator creates no more of the same selectors (they
/// would all be the same Child SA).
#[test]
fn a_peer_without_labels_gets_one_shared_child_sa() {
    let mut p = Pair::new(
        labelled(initiator_config(), &[b"vxlan/100", b"vxlan/200"]),
        responder_config(),
    );
    p.drive();
    assert_eq!(up_labels(&p.i_events), vec![None]);
    assert_eq!(up_labels(&p.r_events), vec![None]);
    assert!(p.initiator.peer_lacks_labels);
    assert_eq!(established_state(&p.initiator).children.len(), 1);
    assert!(
        !exchanges(&p.from_initiator).contains(&ExchangeType::CreateChildSa),
        "no second Child SA is asked for"
    );
}

/// A rekey that drops a labelled Child SA's label (or a label the
/// responder does not have) is refused, and the old pair stays.
#[test]
fn a_rekey_must_keep_the_label() {
    let labels: [&[u8]; 1] = [b"vxlan/100"];
    for forged in [None, Some(b"vxlan/999".to_vec())] {
        let mut p = Pair::new(
            labelled(initiator_config(), &labels),
            labelled(responder_config(), &labels),
        );
        p.drive();
        let old = assert_established(&p);
        p.i_events.clear();
        p.r_events.clear();
        let State::Established(st) = &mut p.initiator.state else {
            panic!("not established");
        };
        st.children[0].label.clone_from(&forged);
        p.initiator.rekey_child(p.now).unwrap();
        p.drive();
        assert!(rekeys(&p.i_events).is_empty() && rekeys(&p.r_events).is_empty());
        assert!(
            p.i_events.contains(&Event::Failed {
                notify: NotifyType::NoProposalChosen,
                by_peer: true
            }),
            "{forged:?}: {:?}",
            p.i_events
        );
        assert_eq!(first_child(&p.responder), Some((old.2.spi, old.3.spi)));
    }
}

/// Against a peer without labels, labelled Child SAs whose selectors
/// differ (one per tunnel port) are still created, unlabelled: the layout
/// falls back to what it would be without labels.
#[test]
fn a_peer_without_labels_still_gets_a_child_sa_per_port() {
    let (a, b) = (IpAddr::V4(A), IpAddr::V4(B));
    let port = |p: u16| (port_ts(a, &[p]), port_ts(b, &[p]));
    let mut i = initiator_config();
    (i.local_ts, i.remote_ts) = port(4789);
    i.additional_children = vec![port(4789), port(6081)];
    i.child_labels = vec![
        b"vxlan/100".to_vec(),
        b"vxlan/200".to_vec(),
        b"geneve/7".to_vec(),
    ];
    let mut r = responder_config();
    (r.local_ts, r.remote_ts) = (port(4789).1, port(4789).0);
    r.additional_children = vec![(port(6081).1, port(6081).0)];
    let mut p = Pair::new(i, r);
    p.drive();
    assert_eq!(up_labels(&p.i_events), vec![None, None]);
    assert_eq!(established_state(&p.initiator).children.len(), 2);
    assert_eq!(established_state(&p.responder).children.len(), 2);
}

/// 1,000 networks between two hosts: 1,000 labelled Child SAs, the first
/// in IKE_AUTH and 999 by CREATE_CHILD_SA, each with its own label on
/// both sides, and each later rekeyed on its own timer.
#[test]
fn a_thousand_labelled_child_sas() {
    let labels: Vec<Vec<u8>> = (1..=1000)
        .map(|vni| format!("vxlan/{vni}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = labels.iter().map(Vec::as_slice).collect();
    let config = |c: Config| {
        let mut c = labelled(c, &refs);
        c.max_child_sas = DEFAULT_MAX_CHILD_SAS + labels.len();
        c.child_lifetime = Some(Duration::from_secs(3600));
        c
    };
    let start = Instant::now();
    let mut p = Pair::new(config(initiator_config()), config(responder_config()));
    p.run_until(p.now + Duration::from_secs(60));
    eprintln!("1,000 labelled Child SAs up in {:?}", start.elapsed());
    let want: Vec<Option<Vec<u8>>> = labels.iter().cloned().map(Some).collect();
    assert_eq!(up_labels(&p.i_events), want);
    let mut r = up_labels(&p.r_events);
    r.sort();
    let mut sorted = want.clone();
    sorted.sort();
    assert_eq!(r, sorted);
    // The rekey timers are spread over 80-90% of the lifetime, not
    // bunched: no two second-wide buckets hold more than a few.
    let st = established_state(&p.initiator);
    let mut buckets = std::collections::BTreeMap::new();
    for c in &st.children {
        let at = c.rekey_at.unwrap().duration_since(p.now).as_secs();
        assert!((2870..=3240).contains(&at), "rekey in {at} s");
        *buckets.entry(at).or_insert(0) += 1;
    }
    assert!(buckets.values().all(|&n| n <= 10), "{buckets:?}");
}
