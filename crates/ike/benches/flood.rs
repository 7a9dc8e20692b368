//! What a flood of IKE_SA_INIT requests costs a responder, per 1,000
//! requests, through the sans-IO [`Endpoint`] (issue 20: "tunsecd's CPU
//! time per 1,000 flood requests with and without cookies").
//!
//! The requests are 1,000 valid IKE_SA_INIT requests (x25519, each its
//! own SPI, nonce and key share), made untimed beforehand, all from one
//! source address, the way a spoofer sends them with a peer's address:
//!
//! - `with_cookies`: the endpoint already holds one half-open IKE SA from
//!   that address, so each request is answered with a COOKIE notify (RFC
//!   7296 section 2.6, the per-source threshold of 1) and no state or
//!   Diffie-Hellman: what tunsecd does.
//! - `without_cookies`: both cookie thresholds off; each request is
//!   accepted and answered with a full IKE_SA_INIT response (one
//!   Diffie-Hellman each), and the half-open SA is removed again so the
//!   endpoint does not grow: what tunsecd did before the per-source
//!   threshold.
//! - `refused`: the source is no configured peer; the caller refuses the
//!   request before any state (`Endpoint::refuse`).
//!
//! Every iteration checks that each request got the answer its case
//! expects, and panics otherwise. Run with
//! `cargo bench -p tunsec-ike --bench flood`; the figures are in
//! docs/benchmarks.md.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use divan::Bencher;
use divan::counter::ItemsCount;
use tunsec_esp::Key;
use tunsec_ike::message::Identity;
use tunsec_ike::sa::{Config, DatagramEvent, Endpoint, IkeSa, SystemRandom};

/// Requests per iteration.
const REQUESTS: usize = 1000;
const SPOOFED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const RESPONDER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn main() {
    divan::main();
}

/// One side's configuration: PSK, tunsec-ike's default proposals.
fn config(local: Ipv4Addr, remote: Ipv4Addr) -> Config {
    Config::new(
        Identity::Ipv4(local),
        Some(Identity::Ipv4(remote)),
        Key::from_slice(b"flood benchmark pre-shared key.."),
    )
}

/// `n` IKE_SA_INIT requests from [`SPOOFED`] to [`RESPONDER`].
fn requests(n: usize) -> Vec<Vec<u8>> {
    let to = SocketAddr::from((RESPONDER, 500));
    (0..n)
        .map(|_| {
            let mut sa = IkeSa::initiate(
                config(SPOOFED, RESPONDER),
                to,
                Instant::now(),
                Box::new(SystemRandom),
            )
            .expect("initiator");
            sa.poll_transmit().expect("IKE_SA_INIT").bytes
        })
        .collect()
}

/// Accepts `request` as a new half-open IKE SA; returns whether it
/// answered with an IKE_SA_INIT response.
fn accept(endpoint: &mut Endpoint, now: Instant, request: &[u8], remove: bool) -> bool {
    let from = SocketAddr::from((SPOOFED, 500));
    let DatagramEvent::NewSa(incoming) = endpoint.handle_datagram(now, from, request) else {
        return false;
    };
    let responder = config(RESPONDER, SPOOFED);
    let Some(h) = endpoint.accept(incoming, now, responder, Box::new(SystemRandom)) else {
        return false;
    };
    let answered = endpoint
        .sa_mut(h)
        .and_then(|sa| sa.poll_transmit())
        .is_some();
    if remove {
        endpoint.remove(h);
    }
    answered
}

#[divan::bench]
fn with_cookies(bencher: Bencher<'_, '_>) {
    let requests = requests(REQUESTS + 1);
    let now = Instant::now();
    let mut endpoint = Endpoint::new();
    // The spoofer's first request made a half-open IKE SA: from here on
    // its address needs a cookie.
    assert!(accept(&mut endpoint, now, &requests[REQUESTS], false));
    let from = SocketAddr::from((SPOOFED, 500));
    bencher.counter(ItemsCount::new(REQUESTS)).bench_local(|| {
        for r in &requests[..REQUESTS] {
            let event = endpoint.handle_datagram(now, from, r);
            assert!(matches!(event, DatagramEvent::Refused));
            let cookie = endpoint.poll_transmit().expect("a cookie request");
            divan::black_box(cookie);
        }
    });
}

#[divan::bench]
fn without_cookies(bencher: Bencher<'_, '_>) {
    let requests = requests(REQUESTS);
    let now = Instant::now();
    let mut endpoint = Endpoint::new();
    endpoint.set_cookie_threshold(usize::MAX);
    endpoint.set_per_source_cookie_threshold(usize::MAX);
    bencher.counter(ItemsCount::new(REQUESTS)).bench_local(|| {
        for r in &requests {
            assert!(
                accept(&mut endpoint, now, r, true),
                "no IKE_SA_INIT response"
            );
        }
    });
}

#[divan::bench]
fn refused(bencher: Bencher<'_, '_>) {
    let requests = requests(REQUESTS);
    let now = Instant::now();
    let mut endpoint = Endpoint::new();
    let from = SocketAddr::from((SPOOFED, 500));
    bencher.counter(ItemsCount::new(REQUESTS)).bench_local(|| {
        for r in &requests {
            let DatagramEvent::NewSa(incoming) = endpoint.handle_datagram(now, from, r) else {
                panic!("not a new IKE SA");
            };
            endpoint.refuse(incoming);
        }
    });
}
