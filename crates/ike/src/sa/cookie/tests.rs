//! Cookies end to end: an [`IkeSa`] initiator against an [`Endpoint`]
//! responder, with a test clock and seeded randomness.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tunsec_esp::Key;

use super::super::tests::{Delivered, deliver};
use super::super::{Config, Endpoint, SeededRandom};
use super::*;
use crate::message::{DhGroup, Identity};

const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const C: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);

fn addr(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), 500)
}

fn config(local: &str, remote: &str) -> Config {
    Config::new(
        Identity::Fqdn(local.into()),
        Some(Identity::Fqdn(remote.into())),
        Key::from_slice(b"correct horse battery staple"),
    )
}

/// A responder endpoint at B, and a clock.
struct Net {
    now: Instant,
    endpoint: Endpoint,
    responder: Config,
    /// The seed of the next responder's random source.
    seed: u64,
}

impl Net {
    fn new(threshold: usize) -> Self {
        let mut endpoint = Endpoint::new();
        endpoint.set_cookie_threshold(threshold);
        endpoint.set_cookie_random(Box::new(SeededRandom::new(99)));
        Self {
            now: Instant::now(),
            endpoint,
            responder: config("b.tunsec.test", "a.tunsec.test"),
            seed: 1000,
        }
    }

    fn initiator(&self, seed: u64) -> IkeSa {
        self.initiator_with(seed, config("a.tunsec.test", "b.tunsec.test"))
    }

    fn initiator_with(&self, seed: u64, c: Config) -> IkeSa {
        IkeSa::initiate(c, addr(B), self.now, Box::new(SeededRandom::new(seed))).unwrap()
    }

    /// Hands a datagram from `from` to the endpoint; what became of it
    /// and everything it answered.
    fn deliver(&mut self, from: SocketAddr, bytes: &[u8]) -> (Delivered, Vec<Vec<u8>>) {
        let responder = self.responder.clone();
        self.seed += 1;
        let seed = self.seed;
        let incoming = deliver(&mut self.endpoint, self.now, from, bytes, |_| {
            let rng: Box<dyn Random + Send> = Box::new(SeededRandom::new(seed));
            Some((responder, rng))
        });
        let mut out = Vec::new();
        while let Some(t) = self.endpoint.poll_transmit() {
            assert_eq!(t.dst, from);
            out.push(t.bytes);
        }
        if let Delivered::Sa { handle, .. } = incoming {
            let sa = self.endpoint.sa_mut(handle).unwrap();
            while let Some(t) = sa.poll_transmit() {
                out.push(t.bytes);
            }
        }
        (incoming, out)
    }

    /// Sends the initiator's next datagram; the answers go back to it.
    fn round(&mut self, i: &mut IkeSa, from: SocketAddr) -> Delivered {
        let t = i.poll_transmit().expect("a request");
        let (incoming, answers) = self.deliver(from, &t.bytes);
        for a in answers {
            i.handle_datagram(self.now, addr(B), &a);
        }
        incoming
    }

    /// Runs rounds until the initiator has nothing to send; whether both
    /// sides got their Child SA.
    fn complete(&mut self, i: &mut IkeSa, from: SocketAddr) -> bool {
        let mut handle = None;
        for _ in 0..8 {
            let Some(t) = i.poll_transmit() else { break };
            let (incoming, answers) = self.deliver(from, &t.bytes);
            if let Delivered::Sa { handle: h, .. } = incoming {
                handle = Some(h);
            }
            for a in answers {
                i.handle_datagram(self.now, addr(B), &a);
            }
        }
        let up = |events: Vec<Event>| events.iter().any(|e| matches!(e, Event::ChildSaUp { .. }));
        let i_events: Vec<Event> = core::iter::from_fn(|| i.poll_event()).collect();
        let Some(sa) = handle.and_then(|h| self.endpoint.sa_mut(h)) else {
            return false;
        };
        let r_events: Vec<Event> = core::iter::from_fn(|| sa.poll_event()).collect();
        up(i_events) && up(r_events) && i.is_established() && sa.is_established()
    }
}

/// The payloads of a message we sent or got.
fn decode(bytes: &[u8]) -> Message {
    Message::decode(bytes).unwrap()
}

/// The data of the cookie request in `answer`, which must be nothing else.
fn cookie_of(answer: &[u8]) -> Vec<u8> {
    let m = decode(answer);
    assert!(m.header.response && !m.header.initiator);
    assert_eq!(m.header.responder_spi, 0);
    match m.payloads.as_slice() {
        [Payload::Notify(n)] if n.notify_type == NotifyType::Cookie => n.data.clone(),
        other => panic!("not a cookie request: {other:?}"),
    }
}

/// Below the threshold nobody is asked for a cookie.
#[test]
fn below_threshold_no_cookie() {
    let mut net = Net::new(DEFAULT_COOKIE_THRESHOLD);
    let mut i = net.initiator(1);
    assert!(net.complete(&mut i, addr(A)));
    assert_eq!(net.endpoint.stats().cookies_sent, 0);
    assert_eq!(i.stats().cookies, 0);
    assert_eq!(net.endpoint.half_open(), 0);
}

/// Above the threshold a request without a cookie gets one and leaves no
/// state; the request again with the cookie first, and otherwise
/// unchanged, creates the IKE SA and the handshake completes.
#[test]
fn cookie_above_threshold() {
    let mut net = Net::new(1);
    // One half-open IKE SA (its initiator never sends IKE_AUTH).
    let mut other = net.initiator(5);
    let t = other.poll_transmit().unwrap();
    assert!(matches!(
        net.deliver(addr(C), &t.bytes).0,
        Delivered::Sa { new: true, .. }
    ));
    assert_eq!(net.endpoint.half_open(), 1);

    let mut i = net.initiator(1);
    let first = i.poll_transmit().unwrap();
    let (incoming, answers) = net.deliver(addr(A), &first.bytes);
    assert_eq!(incoming, Delivered::Refused);
    assert_eq!(
        net.endpoint.handles().count(),
        1,
        "no state for the request"
    );
    assert_eq!(net.endpoint.stats().cookies_sent, 1);
    let [answer] = answers.as_slice() else {
        panic!("{answers:?}")
    };
    let cookie = cookie_of(answer);
    assert_eq!(cookie.len(), VERSION_LEN + 32);

    i.handle_datagram(net.now, addr(B), answer);
    assert_eq!(i.stats().cookies, 1);
    let retry = i.poll_transmit().unwrap();
    // Section 2.6: the cookie first, all other payloads unchanged.
    let (before, after) = (decode(&first.bytes), decode(&retry.bytes));
    assert_eq!(after.header.initiator_spi, before.header.initiator_spi);
    assert_eq!(
        after.payloads[0],
        Payload::Notify(Notify::new(NotifyType::Cookie, cookie))
    );
    assert_eq!(after.payloads[1..], before.payloads[..]);

    let (incoming, answers) = net.deliver(addr(A), &retry.bytes);
    assert!(matches!(incoming, Delivered::Sa { new: true, .. }));
    assert_eq!(net.endpoint.half_open(), 2);
    for a in answers {
        i.handle_datagram(net.now, addr(B), &a);
    }
    assert!(net.complete(&mut i, addr(A)));
    assert_eq!(net.endpoint.half_open(), 1);
    assert_eq!(net.endpoint.stats().bad_cookies, 0);

    // Once the half-open IKE SA times out, cookies are not needed.
    net.now += HALF_OPEN;
    net.endpoint.handle_timeout(net.now);
    assert_eq!(net.endpoint.half_open(), 0);
    let mut j = net.initiator(8);
    assert!(net.complete(&mut j, addr(C)));
    assert_eq!(net.endpoint.stats().cookies_sent, 1);
}

const HALF_OPEN: Duration = super::super::HALF_OPEN_TIMEOUT;

/// The initiator's retried request with its cookie changed by `f`.
fn tampered(retry: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut m = decode(retry);
    let Payload::Notify(n) = &mut m.payloads[0] else {
        panic!("no cookie first")
    };
    f(&mut n.data);
    m.encode().unwrap()
}

/// Forged cookies, and cookies made for another initiator, are refused
/// with a fresh cookie request and leave no state.
#[test]
fn bad_cookies_are_refused_without_state() {
    let mut net = Net::new(0);
    let mut i = net.initiator(1);
    assert_eq!(net.round(&mut i, addr(A)), Delivered::Refused);
    let retry = i.poll_transmit().unwrap().bytes;
    let forgeries = [
        tampered(&retry, |c| c[VERSION_LEN + 3] ^= 1),
        tampered(&retry, |c| c[0] ^= 0x80),
        tampered(&retry, |c| c.truncate(VERSION_LEN + 31)),
        tampered(&retry, |c| *c = vec![1]),
    ];
    for (k, forged) in forgeries.iter().enumerate() {
        let (incoming, answers) = net.deliver(addr(A), forged);
        assert_eq!(incoming, Delivered::Refused, "forgery {k}");
        assert_eq!(answers.len(), 1);
        cookie_of(&answers[0]);
    }
    // A valid cookie, but from another address.
    let (incoming, _) = net.deliver(addr(C), &retry);
    assert_eq!(incoming, Delivered::Refused);
    let stats = net.endpoint.stats();
    assert_eq!(stats.bad_cookies, 5);
    assert_eq!(stats.cookies_sent, 6);
    assert_eq!(net.endpoint.handles().count(), 0);
    // The genuine one still works.
    let (incoming, answers) = net.deliver(addr(A), &retry);
    assert!(matches!(incoming, Delivered::Sa { new: true, .. }));
    for a in answers {
        i.handle_datagram(net.now, addr(B), &a);
    }
    assert!(net.complete(&mut i, addr(A)));
}

/// Section 2.6's second example: a cookie request, then INVALID_KE_PAYLOAD;
/// the request for the new group carries the same cookie, which is still
/// valid (it does not cover KE). And the other order: INVALID_KE_PAYLOAD
/// first, then a cookie request.
#[test]
fn cookie_then_invalid_ke() {
    let offer = config("a.tunsec.test", "b.tunsec.test")
        .with_proposals(
            "aes128gcm16-prfsha256-x25519,aes128gcm16-prfsha256-ecp256",
            "aes128gcm16",
        )
        .unwrap();
    let only_ecp256 = |net: &mut Net| {
        net.responder = config("b.tunsec.test", "a.tunsec.test")
            .with_proposals("aes128gcm16-prfsha256-ecp256", "aes128gcm16")
            .unwrap();
    };

    let mut net = Net::new(0);
    only_ecp256(&mut net);
    let mut i = net.initiator_with(1, offer.clone());
    assert_eq!(net.round(&mut i, addr(A)), Delivered::Refused); // N(COOKIE)
    assert_eq!(net.round(&mut i, addr(A)), Delivered::Refused); // INVALID_KE
    let third = i.poll_transmit().unwrap();
    let m = decode(&third.bytes);
    assert!(matches!(&m.payloads[0], Payload::Notify(n) if n.notify_type == NotifyType::Cookie));
    assert!(
        m.payloads
            .iter()
            .any(|p| matches!(p, Payload::KeyExchange(ke) if ke.group == DhGroup::Ecp256))
    );
    i.transmits.push_front(third);
    assert!(net.complete(&mut i, addr(A)));
    assert_eq!(i.ike_suite().unwrap().group, DhGroup::Ecp256);
    assert_eq!(i.stats().cookies, 1);
    assert_eq!(net.endpoint.stats().bad_cookies, 0);

    let mut net = Net::new(usize::MAX);
    only_ecp256(&mut net);
    let mut i = net.initiator_with(2, offer);
    assert_eq!(net.round(&mut i, addr(A)), Delivered::Refused); // INVALID_KE
    net.endpoint.set_cookie_threshold(0);
    assert_eq!(net.round(&mut i, addr(A)), Delivered::Refused); // N(COOKIE)
    assert!(net.complete(&mut i, addr(A)));
    assert_eq!(i.ike_suite().unwrap().group, DhGroup::Ecp256);
    assert_eq!(i.stats().cookies, 1);
}

/// A cookie of the previous secret is accepted within the grace period
/// after the secret is replaced, and refused after it.
#[test]
fn old_secret_within_grace() {
    for (late, accepted) in [
        (COOKIE_GRACE - Duration::from_secs(1), true),
        (COOKIE_GRACE, false),
    ] {
        let mut net = Net::new(0);
        let mut i = net.initiator(1);
        assert_eq!(net.round(&mut i, addr(A)), Delivered::Refused);
        // The secret is replaced at the next use after its lifetime.
        net.now += COOKIE_SECRET_LIFETIME + late;
        let mut j = net.initiator(2);
        assert_eq!(net.round(&mut j, addr(C)), Delivered::Refused);
        let (incoming, _) = {
            let t = i.poll_transmit().unwrap();
            let out = net.deliver(addr(A), &t.bytes);
            i.transmits.push_front(t);
            out
        };
        assert_eq!(
            matches!(incoming, Delivered::Sa { new: true, .. }),
            accepted,
            "{late:?}"
        );
        assert_eq!(net.endpoint.stats().bad_cookies, u64::from(!accepted));
        // Turned away, the initiator follows the fresh cookie and gets in.
        if !accepted {
            assert_eq!(net.round(&mut i, addr(A)), Delivered::Refused);
            assert_eq!(i.stats().cookies, 2);
            assert!(net.complete(&mut i, addr(A)));
        }
    }
}

/// An initiator follows a few cookie requests, then gives up.
#[test]
fn endless_cookie_requests_fail() {
    let mut net = Net::new(0);
    let mut i = net.initiator(1);
    // A responder whose secret changes every time (and forgets the old
    // one) never accepts a cookie.
    for seed in 0..=MAX_COOKIE_REQUESTS {
        net.endpoint
            .set_cookie_random(Box::new(SeededRandom::new(seed)));
        assert_eq!(net.round(&mut i, addr(A)), Delivered::Refused);
    }
    assert_eq!(i.stats().cookies, MAX_COOKIE_REQUESTS);
    assert!(i.is_closed());
    assert_eq!(
        i.poll_event(),
        Some(Event::Failed {
            notify: NotifyType::Cookie,
            by_peer: true
        })
    );
    // A cookie request of an absurd length is dropped.
    let mut k = net.initiator(4);
    let t = k.poll_transmit().unwrap();
    let mut m = decode(&t.bytes);
    m.header.response = true;
    m.header.initiator = false;
    m.payloads = vec![Payload::Notify(Notify::new(
        NotifyType::Cookie,
        vec![0; 65],
    ))];
    k.handle_datagram(net.now, addr(B), &m.encode().unwrap());
    assert_eq!(k.stats().malformed, 1);
    assert_eq!(k.stats().cookies, 0);
}

/// Spoofed IKE_SA_INIT requests with a peer's address, as fast as the
/// spoofer likes, while the peer connects (issue 20): the first makes a
/// half-open IKE SA; every later one from that address is asked for a
/// cookie, which an off-path spoofer never sees, so it costs no
/// Diffie-Hellman and keeps no state; the peer's own request returns the
/// cookie and completes. Other addresses are not asked.
#[test]
fn spoofed_flood_from_a_peer_address_costs_no_dh() {
    let mut net = Net::new(DEFAULT_COOKIE_THRESHOLD);
    // The spoofer's first request, from A's address: a half-open SA.
    let mut spoof = net.initiator(500);
    let t = spoof.poll_transmit().unwrap();
    assert!(matches!(
        net.deliver(addr(A), &t.bytes).0,
        Delivered::Sa { new: true, .. }
    ));
    let responders = net.endpoint.stats().responders;
    // 200 more, each a new initiator SPI and nonce.
    for seed in 0..200 {
        let mut s = net.initiator(600 + seed);
        let t = s.poll_transmit().unwrap();
        let (incoming, answers) = net.deliver(addr(A), &t.bytes);
        assert_eq!(incoming, Delivered::Refused);
        let [answer] = answers.as_slice() else {
            panic!("{answers:?}")
        };
        cookie_of(answer);
    }
    let stats = net.endpoint.stats();
    assert_eq!(stats.responders, responders, "a DH for a spoofed request");
    assert_eq!(stats.cookies_sent, 200);
    assert_eq!(net.endpoint.half_open(), 1);
    // The real peer at A: asked for a cookie, returns it, and is up.
    let mut real = net.initiator(1);
    assert!(net.complete(&mut real, addr(A)));
    assert_eq!(real.stats().cookies, 1);
    // Another address with no half-open SA is not asked.
    let mut other = net.initiator(2);
    assert!(net.complete(&mut other, addr(C)));
    assert_eq!(other.stats().cookies, 0);
}
