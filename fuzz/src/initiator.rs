//! The input and set-up of `ike_initiator`: an initiator `IkeSa` at
//! [`INITIATOR`] talks to [`RESPONDER`], where the fuzzer answers it, and
//! where a real responder `IkeSa` also runs, whose messages the fuzzer
//! can relay so that the initiator gets past IKE_AUTH.
//!
//! The input is a configuration byte ([`initiator_config`]), then steps
//! until the input ends; each step is one byte (its kind, modulo 5) and
//! its fields, in [`crate::framing`]'s layout.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use arbitrary::{Arbitrary, Result, Unstructured};
use tunsec_ike::crypto::Key;
use tunsec_ike::message::{Identity, TrafficSelector};
use tunsec_ike::sa::Config;

use crate::framing::{put_bytes, take_bytes};

/// The initiator's address.
pub const INITIATOR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 500);
/// The responder's address (port 500; the NAT-T port is
/// `tunsec_ike::sa::NATT_PORT`).
pub const RESPONDER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 500);
/// The seed of the initiator's `SeededRandom`: its SPI and nonce are the
/// same in every run, so a recorded IKE_SA_INIT response names its SPI.
pub const INITIATOR_SEED: u64 = 1;
/// The seed of the real responder's `SeededRandom`.
pub const RESPONDER_SEED: u64 = 2;

/// `ike_initiator`'s input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitiatorInput {
    /// The configuration byte ([`initiator_config`]).
    pub config: u8,
    /// The steps, in order.
    pub steps: Vec<PeerStep>,
}

/// One step of `ike_initiator`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerStep {
    /// The fuzzer's datagram, from the responder's address: an IKE
    /// message without the non-ESP marker, from port 500 or (with `natt`)
    /// 4500.
    Datagram {
        /// From the NAT-T port.
        natt: bool,
        /// The message.
        bytes: Vec<u8>,
    },
    /// The clock moves `seconds + 1` seconds; timers that fall due run in
    /// order.
    Wait(u8),
    /// What the initiator sent so far goes to the real responder, and
    /// what that sent goes back to the initiator.
    Relay,
    /// One of the initiator's commands, by number modulo 6: rekey a Child
    /// SA, rekey the IKE SA, delete, check liveness, create Child SA 0,
    /// send IKE_SA_INIT again.
    Command(u8),
}

impl<'a> Arbitrary<'a> for InitiatorInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let config = u.arbitrary()?;
        let mut steps = Vec::new();
        while !u.is_empty() {
            steps.push(PeerStep::arbitrary(u)?);
        }
        Ok(Self { config, steps })
    }
}

impl<'a> Arbitrary<'a> for PeerStep {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.arbitrary::<u8>()? % 5 {
            kind @ (0 | 1) => Self::Datagram {
                natt: kind == 1,
                bytes: take_bytes(u)?,
            },
            2 => Self::Wait(u.arbitrary()?),
            3 => Self::Relay,
            _ => Self::Command(u.arbitrary()?),
        })
    }
}

impl InitiatorInput {
    /// The bytes that decode to this input.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.config];
        for step in &self.steps {
            match step {
                PeerStep::Datagram { natt, bytes } => {
                    out.push(u8::from(*natt));
                    put_bytes(&mut out, bytes);
                }
                PeerStep::Wait(seconds) => out.extend_from_slice(&[2, *seconds]),
                PeerStep::Relay => out.push(3),
                PeerStep::Command(command) => out.extend_from_slice(&[4, *command]),
            }
        }
        out
    }
}

/// The pre-shared key of both sides.
const PSK: &[u8] = b"fuzzing pre-shared key";

/// The initiator's configuration from the configuration byte:
/// - bit 0: no IKE fragmentation;
/// - bit 1: IKE and Child SA lifetimes (rekeys after a few minutes);
/// - bit 2: one more Child SA, created after IKE_AUTH;
/// - bit 3: NAT-T forced (UDP encapsulation, IKE moves to port 4500);
/// - bits 4-5: the IKE proposals: the defaults, AES-CBC with ECP-256,
///   ChaCha20-Poly1305 with X25519, or two proposals;
/// - bit 6: 300-byte IKE fragments on both sides.
pub fn initiator_config(byte: u8) -> Config {
    peer_config(
        byte,
        Ipv4Addr::new(192, 0, 2, 1),
        Ipv4Addr::new(192, 0, 2, 2),
    )
}

/// The real responder's configuration for the same byte.
pub fn responder_config(byte: u8) -> Config {
    let mut config = peer_config(
        byte,
        Ipv4Addr::new(192, 0, 2, 2),
        Ipv4Addr::new(192, 0, 2, 1),
    );
    config.local_addr = Some(RESPONDER);
    config
}

fn peer_config(byte: u8, local: Ipv4Addr, remote: Ipv4Addr) -> Config {
    let config = Config::new(
        Identity::Ipv4(local),
        Some(Identity::Ipv4(remote)),
        Key::from_slice(PSK),
    );
    let ike = match (byte >> 4) & 3 {
        0 => None,
        1 => Some("aes256-sha256-ecp256"),
        2 => Some("chacha20poly1305-prfsha256-x25519"),
        _ => Some("aes128gcm16-prfsha256-ecp256,aes256gcm16-prfsha384-x25519"),
    };
    let mut config = match ike {
        Some(ike) => config
            .with_proposals(ike, "aes128gcm16,aes256-sha256")
            .expect("valid proposals"),
        None => config,
    };
    config.fragmentation = byte & 1 == 0;
    if byte & 2 != 0 {
        config.ike_lifetime = Some(Duration::from_secs(300));
        config.child_lifetime = Some(Duration::from_secs(200));
    }
    if byte & 4 != 0 {
        // VXLAN between the two hosts.
        let vxlan = |host: Ipv4Addr| TrafficSelector::Ipv4 {
            ip_protocol: 17,
            start_port: 4789,
            end_port: 4789,
            start: host,
            end: host,
        };
        config
            .additional_children
            .push((vec![vxlan(local)], vec![vxlan(remote)]));
    }
    if byte & 8 != 0 {
        config.local_addr = Some(SocketAddr::from((local, 500)));
        config.force_udp_encap = true;
    }
    if byte & 64 != 0 {
        config.fragment_size = 300;
    }
    config
}
