//! An IKEv2 responder fed arbitrary datagrams: an `Endpoint` that accepts
//! every peer with a fixed PSK configuration takes each input as a
//! sequence of datagrams (split at every 0xFE byte), with
//! the clock moved forward between them, and must never panic; whatever it
//! answers must be a well-formed IKE message. A second endpoint, which
//! asks every initiator for a cookie (RFC 7296 section 2.6, threshold 0),
//! gets the same datagrams, so the cookie check and its stateless answer
//! are fuzzed too; it must never create an IKE SA for a request without
//! the cookie it gave out.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tunsec_esp::Key;
use tunsec_ike::message::{Identity, Message, NotifyType};
use tunsec_ike::sa::{Config, DatagramEvent, Endpoint, Random, SeededRandom};

fuzz_target!(|data: &[u8]| {
    let mut endpoint = Endpoint::new();
    let mut guarded = Endpoint::new();
    guarded.set_cookie_threshold(0);
    guarded.set_cookie_random(Box::new(SeededRandom::new(11)));
    let remote = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 2), 500));
    let mut now = Instant::now();
    // Datagrams are separated by 0xFE; each one moves the clock by
    // one second, so retransmission and half-open timers run too.
    for datagram in data.split(|&b| b == 0xfe).filter(|d| !d.is_empty()) {
        for (cookies, endpoint) in [(false, &mut endpoint), (true, &mut guarded)] {
            let accepted = match endpoint.handle_datagram(now, remote, datagram) {
                DatagramEvent::NewSa(incoming) => {
                    let (config, rng) = accept();
                    endpoint.accept(incoming, now, config, rng).is_some()
                }
                _ => false,
            };
            if cookies && accepted {
                // Only a request with a valid cookie gets this far, and
                // the fuzzer cannot know one it was never sent.
                let message = Message::decode(datagram).expect("an accepted request decodes");
                assert!(message.notify(NotifyType::Cookie).is_some());
            }
            while let Some(t) = endpoint.poll_transmit() {
                check(&t.bytes);
            }
        }
        now += Duration::from_secs(1);
        for endpoint in [&mut endpoint, &mut guarded] {
            endpoint.handle_timeout(now);
            while endpoint.poll_transmit().is_some() {}
        }
    }
});

/// Every peer is accepted with a fixed PSK configuration.
fn accept() -> (Config, Box<dyn Random + Send>) {
    let config = Config::new(
        Identity::Ipv4(Ipv4Addr::new(192, 0, 2, 1)),
        None,
        Key::from_slice(b"fuzzing pre-shared key"),
    );
    let rng: Box<dyn Random + Send> = Box::new(SeededRandom::new(7));
    (config, rng)
}

/// What the responder sends must be a well-formed IKE message. A
/// `Transmit` is the IKE message alone on either port: the driver puts
/// the non-ESP marker before it on port 4500 (RFC 3948 section 2.2).
fn check(datagram: &[u8]) {
    let message = Message::decode(datagram).expect("the responder sends well-formed messages");
    assert_ne!(message.header.initiator_spi, 0);
}
