//! Unknown payloads in requests, critical and not, in the clear and
//! inside SK.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use tunsec_esp::Key;

use super::super::{Config, SeededRandom};
use super::*;
use crate::message::{ExchangeType, HEADER_LEN, Identity, PayloadType};

/// An unassigned payload type (RFC 7296 section 3.2 names 0 to 48 and
/// leaves 128 to 255 for private use).
const UNKNOWN: u8 = 200;

const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

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

/// An initiator (at A) and a responder (at B).
fn pair(now: Instant) -> (IkeSa, IkeSa) {
    let i = IkeSa::initiate(
        config("a.tunsec.test", "b.tunsec.test"),
        addr(B),
        now,
        Box::new(SeededRandom::new(1)),
    )
    .unwrap();
    let r = IkeSa::respond(
        config("b.tunsec.test", "a.tunsec.test"),
        Box::new(SeededRandom::new(2)),
    );
    (i, r)
}

/// Moves datagrams both ways until neither side has any.
fn pump(i: &mut IkeSa, r: &mut IkeSa, now: Instant) {
    loop {
        let mut moved = false;
        while let Some(t) = i.poll_transmit() {
            r.handle_datagram(now, addr(A), &t.bytes);
            moved = true;
        }
        while let Some(t) = r.poll_transmit() {
            i.handle_datagram(now, addr(B), &t.bytes);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

/// The generic header and a 4-octet body of an unknown payload.
fn unknown_payload(next: PayloadType, critical: bool) -> [u8; 8] {
    let flags = if critical { 0x80 } else { 0 };
    [next.value(), flags, 0, 8, 1, 2, 3, 4]
}

/// A cleartext message with an unknown payload in front of its payloads.
fn with_unknown(bytes: &[u8], critical: bool) -> Vec<u8> {
    let mut header = Header::decode(bytes).unwrap();
    let first = header.next_payload;
    header.next_payload = PayloadType::from(UNKNOWN);
    header.length += 8;
    let mut out = Vec::new();
    header.encode(&mut out);
    out.extend_from_slice(&unknown_payload(first, critical));
    out.extend_from_slice(&bytes[HEADER_LEN..]);
    out
}

/// A request of `from`'s, sealed with its keys, whose SK payload holds
/// only an unknown payload.
fn sealed_unknown(from: &IkeSa, exchange: ExchangeType, id: u32, critical: bool) -> Vec<u8> {
    let sk = match &from.state {
        State::AuthSent(st) => &st.sk,
        State::Established(st) => &st.sk,
        _ => panic!("no keys"),
    };
    let header = from.header(exchange, false, id);
    let plaintext = unknown_payload(PayloadType::None, critical);
    // An IV (AES-GCM: 8 octets) that the initiator's counter never reaches.
    sk.outbound
        .seal_with_iv(&header, PayloadType::from(UNKNOWN), &plaintext, &[0xa5; 8])
        .unwrap()
}

/// The payloads of `to`'s answer, opened with its keys.
fn open_answer(to: &IkeSa, bytes: &[u8]) -> Vec<Payload> {
    let sk = match &to.state {
        State::AuthSent(st) => &st.sk,
        State::Established(st) => &st.sk,
        _ => panic!("no keys"),
    };
    sk.inbound.open(bytes).unwrap().payloads
}

fn notify_unsupported() -> Payload {
    Payload::Notify(Notify::new(
        NotifyType::UnsupportedCriticalPayload,
        vec![UNKNOWN],
    ))
}

/// An IKE_SA_INIT request with an unknown critical payload is answered
/// UNSUPPORTED_CRITICAL_PAYLOAD with the type, without state; one without
/// the critical bit is answered as if the payload were not there.
#[test]
fn init_request() {
    let now = Instant::now();
    let (mut i, mut r) = pair(now);
    let request = i.poll_transmit().unwrap().bytes;

    r.handle_datagram(now, addr(A), &with_unknown(&request, true));
    let answer = Message::decode(&r.poll_transmit().unwrap().bytes).unwrap();
    assert!(answer.header.response);
    assert_eq!(answer.header.responder_spi, 0);
    assert_eq!(answer.payloads, vec![notify_unsupported()]);
    assert_eq!(r.spis().1, 0, "no state");
    assert!(!r.is_half_open());
    assert_eq!(r.stats().unsupported_critical, 1);
    assert_eq!(r.stats().malformed, 0);

    r.handle_datagram(now, addr(A), &with_unknown(&request, false));
    let answer = Message::decode(&r.poll_transmit().unwrap().bytes).unwrap();
    assert_ne!(answer.header.responder_spi, 0);
    assert!(answer.payloads.iter().any(|p| matches!(p, Payload::Sa(_))));
    assert!(r.is_half_open());
    assert_eq!(r.stats().unsupported_critical, 1);
}

/// An IKE_AUTH request with an unknown critical payload is answered, in
/// SK, UNSUPPORTED_CRITICAL_PAYLOAD; nobody is authenticated and both
/// sides close. A retransmission gets the same answer.
#[test]
fn auth_request() {
    let now = Instant::now();
    let (mut i, mut r) = pair(now);
    let init = i.poll_transmit().unwrap();
    r.handle_datagram(now, addr(A), &init.bytes);
    let answer = r.poll_transmit().unwrap();
    i.handle_datagram(now, addr(B), &answer.bytes);
    let _auth = i.poll_transmit().unwrap();

    let forged = sealed_unknown(&i, ExchangeType::IkeAuth, 1, true);
    r.handle_datagram(now, addr(A), &forged);
    let answer = r.poll_transmit().unwrap().bytes;
    assert_eq!(open_answer(&i, &answer), vec![notify_unsupported()]);
    assert!(r.is_closed());
    assert_eq!(
        r.poll_event(),
        Some(Event::Failed {
            notify: NotifyType::UnsupportedCriticalPayload,
            by_peer: false
        })
    );
    r.handle_datagram(now, addr(A), &forged);
    assert_eq!(r.poll_transmit().unwrap().bytes, answer);
    assert_eq!(r.stats().cached_responses, 1);

    i.handle_datagram(now, addr(B), &answer);
    assert!(i.is_closed());
    assert_eq!(
        i.poll_event(),
        Some(Event::Failed {
            notify: NotifyType::UnsupportedCriticalPayload,
            by_peer: true
        })
    );
}

/// Once established: an INFORMATIONAL request with an unknown critical
/// payload is answered UNSUPPORTED_CRITICAL_PAYLOAD, one with a
/// non-critical unknown payload as an empty (liveness) request; either
/// uses up its message ID and the IKE SA carries on.
#[test]
fn established_request() {
    let now = Instant::now();
    let (mut i, mut r) = pair(now);
    pump(&mut i, &mut r, now);
    assert!(i.is_established() && r.is_established());
    while r.poll_event().is_some() {}

    for (critical, expected) in [(true, vec![notify_unsupported()]), (false, vec![])] {
        let id = i.next_request_id;
        r.handle_datagram(
            now,
            addr(A),
            &sealed_unknown(&i, ExchangeType::Informational, id, critical),
        );
        let answer = r.poll_transmit().unwrap().bytes;
        assert_eq!(open_answer(&i, &answer), expected);
        assert_eq!(Header::decode(&answer).unwrap().message_id, id);
        assert!(r.is_established());
        assert_eq!(r.poll_event(), None);
        i.next_request_id = id + 1;
    }
    assert_eq!(r.stats().unsupported_critical, 1);

    // The message IDs still line up.
    i.check_liveness(now).unwrap();
    pump(&mut i, &mut r, now);
    assert!(i.is_established() && r.is_established());
    assert_eq!(i.poll_timeout(), None, "the liveness check was answered");
    assert_eq!(r.stats().wrong_message_id, 0);
}
