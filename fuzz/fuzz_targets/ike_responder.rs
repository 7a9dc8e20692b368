//! An IKEv2 responder fed arbitrary datagrams: an `Endpoint` that accepts
//! every peer with a fixed PSK configuration takes each input as a
//! sequence of datagrams (split at every 0xFE byte), with
//! the clock moved forward between them, and must never panic; whatever it
//! answers must be a well-formed IKE message.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tunsec_esp::Key;
use tunsec_ike::message::{Identity, Message};
use tunsec_ike::sa::{Config, Endpoint, Random, SeededRandom};

fuzz_target!(|data: &[u8]| {
    let mut endpoint = Endpoint::new();
    let remote = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 2), 500));
    let mut now = Instant::now();
    // Datagrams are separated by 0xFE; each one moves the clock by
    // one second, so retransmission and half-open timers run too.
    for datagram in data.split(|&b| b == 0xfe).filter(|d| !d.is_empty()) {
        endpoint.handle_datagram(now, remote, datagram, |_| {
            let config = Config::new(
                Identity::Ipv4(Ipv4Addr::new(192, 0, 2, 1)),
                None,
                Key::from_slice(b"fuzzing pre-shared key"),
            );
            let rng: Box<dyn Random + Send> = Box::new(SeededRandom::new(7));
            Some((config, rng))
        });
        while let Some(t) = endpoint.poll_transmit() {
            // On port 4500 a message follows the non-ESP marker; on 500 it
            // is the whole datagram.
            let bytes = if t.dst.port() == 4500 {
                t.bytes
                    .strip_prefix(&[0, 0, 0, 0])
                    .expect("the non-ESP marker")
            } else {
                &t.bytes[..]
            };
            let message = Message::decode(bytes).expect("the responder sends well-formed messages");
            assert_ne!(message.header.initiator_spi, 0);
        }
        now += Duration::from_secs(1);
        endpoint.handle_timeout(now);
        while endpoint.poll_transmit().is_some() {}
    }
});
