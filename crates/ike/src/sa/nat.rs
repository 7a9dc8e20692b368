//! NAT detection and the move to the NAT-T port (RFC 7296 section 2.23).
//!
//! Both IKE_SA_INIT messages carry two notifies:
//!
//! > NAT_DETECTION_SOURCE_IP and NAT_DETECTION_DESTINATION_IP ... The data
//! > associated with these Notify types is a SHA-1 digest of the SPIs (in
//! > the order they appear in the header), IP address, and port from which
//! > this packet was sent.
//!
//! The receiver recomputes the digests from the addresses it sees. If no
//! NAT_DETECTION_SOURCE_IP matches, the sender is behind a NAT; if the
//! NAT_DETECTION_DESTINATION_IP does not match, the receiver is. Either
//! way both ends use UDP encapsulation for ESP (RFC 3948), and the
//! initiator moves IKE to port 4500 from IKE_AUTH on:
//!
//! > the initiator MUST set both UDP source and destination ports to 4500
//! > [...] all subsequent packets sent on this IKE SA.
//!
//! The host behind the NAT also sends NAT keepalives (RFC 3948 section
//! 2.3); that is the owner's job, told by [`NatState::local_behind_nat`].
//!
//! To force UDP encapsulation where there is no NAT (our data path carries
//! ESP in UDP, or the peer's, such as strongSwan's kernel-libipsec, can do
//! nothing else), we send a NAT_DETECTION_SOURCE_IP over a random value,
//! as strongSwan does with `encap = yes`: the peer then sees us "behind a
//! NAT" and encapsulates too.

use std::net::{IpAddr, SocketAddr};

use aws_lc_rs::digest;

use super::Random;
use crate::error::Result;
use crate::message::{Notify, NotifyType, Payload};

/// The port of IKE and ESP in UDP once a NAT is detected (RFC 3948
/// section 2.2, RFC 7296 section 2.23).
pub const NATT_PORT: u16 = 4500;

/// What NAT detection found in IKE_SA_INIT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatState {
    /// Our own address is translated: we send the NAT keepalives.
    pub local_behind_nat: bool,
    /// The peer's address is translated (or the peer forces UDP
    /// encapsulation).
    pub remote_behind_nat: bool,
    /// We force UDP encapsulation ([`super::Config::force_udp_encap`]).
    pub forced: bool,
}

impl NatState {
    /// ESP travels in UDP (RFC 3948) and IKE on the NAT-T port.
    pub fn udp_encap(&self) -> bool {
        self.local_behind_nat || self.remote_behind_nat || self.forced
    }
}

/// SHA-1(SPIi | SPIr | IP | port) (RFC 7296 section 2.23).
fn digest_of(spi_i: u64, spi_r: u64, addr: SocketAddr) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(&spi_i.to_be_bytes());
    ctx.update(&spi_r.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => ctx.update(&ip.octets()),
        IpAddr::V6(ip) => ctx.update(&ip.octets()),
    }
    ctx.update(&addr.port().to_be_bytes());
    ctx.finish().as_ref().to_vec()
}

/// The two NAT detection notifies of an IKE_SA_INIT message sent from
/// `local` to `remote` with SPIs `spi_i`, `spi_r` (zero in the request).
/// With `force`, the source digest is over random bytes, so that it never
/// matches.
pub(super) fn notifies(
    spi_i: u64,
    spi_r: u64,
    local: SocketAddr,
    remote: SocketAddr,
    force: bool,
    rng: &mut dyn Random,
) -> Result<[Payload; 2]> {
    let source = if force {
        let mut random = [0u8; 20];
        rng.fill(&mut random)?;
        random.to_vec()
    } else {
        digest_of(spi_i, spi_r, local)
    };
    Ok([
        Payload::Notify(Notify::new(NotifyType::NatDetectionSourceIp, source)),
        Payload::Notify(Notify::new(
            NotifyType::NatDetectionDestinationIp,
            digest_of(spi_i, spi_r, remote),
        )),
    ])
}

/// Checks the peer's NAT detection notifies in an IKE_SA_INIT message that
/// came from `remote` to `local`, with the SPIs of its header. `None` if
/// the peer sent none: it does not do NAT traversal (RFC 7296 section
/// 2.23: then neither side uses it).
pub(super) fn detect(
    payloads: &[Payload],
    spi_i: u64,
    spi_r: u64,
    local: SocketAddr,
    remote: SocketAddr,
    force: bool,
) -> Option<NatState> {
    let mut sources = Vec::new();
    let mut destination = None;
    for p in payloads {
        if let Payload::Notify(n) = p {
            match n.notify_type {
                NotifyType::NatDetectionSourceIp => sources.push(n.data.as_slice()),
                NotifyType::NatDetectionDestinationIp => destination = Some(n.data.as_slice()),
                _ => {}
            }
        }
    }
    if sources.is_empty() && destination.is_none() {
        return None;
    }
    // "There can be multiple NAT_DETECTION_SOURCE_IP payloads"; one match
    // is enough.
    let from = digest_of(spi_i, spi_r, remote);
    let to = digest_of(spi_i, spi_r, local);
    Some(NatState {
        remote_behind_nat: !sources.contains(&from.as_slice()),
        local_behind_nat: destination.is_some_and(|d| d != to.as_slice()),
        forced: force,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::sa::SeededRandom;

    fn at(a: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, a)), port)
    }

    #[test]
    fn digest_is_sha1_of_spis_address_and_port() {
        // SHA-1 over 8 + 8 + 4 + 2 bytes, computed independently:
        // python3 -c 'import hashlib;print(hashlib.sha1(bytes.fromhex(
        //   "0102030405060708" "0000000000000000" "c0000201" "01f4")).hexdigest())'
        let d = digest_of(0x0102_0304_0506_0708, 0, at(1, 500));
        assert_eq!(
            d,
            hex("644b4575455bd6fcc1efe2be8162a9218e448e5f"),
            "digest {d:02x?}"
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn no_nat_when_addresses_match() {
        let mut rng = SeededRandom::new(1);
        let sent = notifies(7, 9, at(1, 500), at(2, 500), false, &mut rng).unwrap();
        let seen = detect(&sent, 7, 9, at(2, 500), at(1, 500), false).unwrap();
        assert_eq!(seen, NatState::default());
        assert!(!seen.udp_encap());
    }

    #[test]
    fn translated_source_means_the_sender_is_behind_a_nat() {
        let mut rng = SeededRandom::new(1);
        let sent = notifies(7, 9, at(1, 500), at(2, 500), false, &mut rng).unwrap();
        // The NAT rewrote 192.0.2.1:500 to 192.0.2.99:31000.
        let seen = detect(&sent, 7, 9, at(2, 500), at(99, 31000), false).unwrap();
        assert!(seen.remote_behind_nat && !seen.local_behind_nat && seen.udp_encap());
    }

    #[test]
    fn translated_destination_means_the_receiver_is_behind_a_nat() {
        let mut rng = SeededRandom::new(1);
        // The sender addressed our public address; we are 10.x inside.
        let sent = notifies(7, 9, at(1, 500), at(50, 500), false, &mut rng).unwrap();
        let seen = detect(&sent, 7, 9, at(2, 500), at(1, 500), false).unwrap();
        assert!(seen.local_behind_nat && !seen.remote_behind_nat);
    }

    #[test]
    fn forced_source_never_matches() {
        let mut rng = SeededRandom::new(1);
        let sent = notifies(7, 9, at(1, 500), at(2, 500), true, &mut rng).unwrap();
        let seen = detect(&sent, 7, 9, at(2, 500), at(1, 500), false).unwrap();
        assert!(seen.remote_behind_nat && !seen.local_behind_nat);
    }

    #[test]
    fn without_notifies_there_is_no_nat_traversal() {
        assert_eq!(detect(&[], 7, 9, at(2, 500), at(1, 500), true), None);
    }
}
