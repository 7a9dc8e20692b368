//! The fault-injection soak (issue 20) in gateway mode: the same lab,
//! traffic, faults and invariants as `soak_e2e.rs`, with the kernel's own
//! vxlan device as each host's VTEP and tunsecd protecting its datagrams
//! by policy (`[gateway]`, a `[[peer.selector]]` for UDP 4789). A
//! `kill -9` leaves the steering rules and the guard in place (fail
//! closed) until the restarted tunsecd adopts them. Its own test binary,
//! so that it never runs beside the overlay soak.
//!
//! ```sh
//! # the CI run: 3 minutes, seed 1
//! cargo test -p tunsec --test soak_gateway_e2e -- --nocapture
//! # longer, another seed
//! TUNSEC_SOAK_SECS=3600 TUNSEC_SOAK_SEED=7 TUNSEC_SOAK_REPORT=/tmp/soak-gw.md \
//!     cargo test -p tunsec --test soak_gateway_e2e -- --nocapture
//! ```
//!
//! It needs root, iproute2 (with `bridge`), ping, nftables, iptables-nft
//! and python3; it fails, never skips, when something is missing.

mod common;
mod soak;

#[test]
fn soak_gateway_three_hosts() {
    let settings = soak::Settings::from_env();
    common::with_lab("soakgw", soak::preflight, |lab| {
        soak::run(lab, &settings, soak::Mode::Gateway)
    });
}
