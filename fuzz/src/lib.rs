//! Shared set-up for the ESP fuzz targets: fixed SAs, keys and an engine,
//! picked by one configuration byte, and a null cipher that lets the
//! fuzzer reach the code behind the ICV check.
//!
//! The targets `esp_open` and `esp_roundtrip` and the seed generator
//! (`examples/make_seeds/`) all build their SAs here, so a seed made for
//! a configuration byte opens under the same byte in the target.
//!
//! The structured inputs of the IKE targets live in modules of their own:
//! [`fragments`] (`ike_fragments`), [`initiator`] (`ike_initiator`) and
//! [`intermediate`] (`ike_intermediate`), all in [`framing`]'s byte
//! layout, which the seed generator writes too.

pub mod fragments;
pub mod framing;
pub mod initiator;
pub mod intermediate;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use arbitrary::Arbitrary;
use tunsec_esp::{
    Action, CryptoError, CryptoProvider, Direction, Encapsulation, Engine, EspCipher, Mode, Policy,
    PortRange, Sa, SaConfig, SaKeys, Selector, Suite,
};

/// The SPI of every fuzzed SA.
pub const SPI: u32 = 0x1000_0001;

/// The receiving host (the inbound SA's local end), IPv4.
pub const LOCAL4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The sending host (the inbound SA's remote end), IPv4.
pub const REMOTE4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The receiving host, IPv6.
pub const LOCAL6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The sending host, IPv6.
pub const REMOTE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// The replay window top that [`Config::near_wrap`] starts from: a little
/// below 2^32, so that sequence numbers cross into the next ESN epoch.
pub const NEAR_WRAP_TOP: u64 = 0xffff_ff00;

/// Which API `esp_roundtrip` seals and opens with.
#[derive(Debug, Clone, Arbitrary)]
pub enum Layer {
    /// `Sa::seal_esp` / `Sa::open_esp` on a bare payload.
    Esp {
        /// The next header to seal with.
        next_header: u8,
    },
    /// `Sa::seal` on an IP packet (from the remote host to the local one,
    /// UDP for the selectors), then `Sa::open` or `Engine::inbound`.
    Ip {
        /// IPv6 rather than IPv4.
        v6: bool,
        /// The IP protocol of the payload.
        protocol: u8,
        /// The TOS byte or Traffic Class.
        tos: u8,
        /// The TTL or Hop Limit.
        hop_limit: u8,
        /// The IPv4 Identification.
        ident: u16,
        /// The IPv4 Don't Fragment flag.
        dont_frag: bool,
        /// The IPv6 Flow Label (masked to 20 bits).
        flow_label: u32,
        /// Open through an [`Engine`] rather than the bare SA.
        via_engine: bool,
    },
}

/// The input of `esp_roundtrip`, decoded by `arbitrary`.
#[derive(Debug, Clone, Arbitrary)]
pub struct RoundTripInput {
    /// The suite, an index into [`Suite::ALL`] (modulo 4).
    pub suite: u8,
    /// The mode.
    pub mode: ModeKind,
    /// ESP in UDP rather than raw ESP.
    pub udp: bool,
    /// Extended sequence numbers.
    pub esn: bool,
    /// The null cipher rather than aws-lc-rs.
    pub null_cipher: bool,
    /// The API under test.
    pub layer: Layer,
    /// The first outbound sequence number (clamped to the valid range).
    pub start_seq: u64,
    /// How far the inbound window top sits below the first sequence number.
    pub lag: u8,
    /// The replay window size (clamped to the valid range).
    pub replay_window: u16,
    /// Headroom beyond what the SA asks for.
    pub extra_head: u8,
    /// Tailroom beyond what the SA asks for.
    pub extra_tail: u8,
    /// Open the packets rotated by this much.
    pub rotate: u8,
    /// Which bit of the first sealed packet to flip for the tamper check.
    pub flip: u16,
    /// The payloads, one per packet (the first few are used).
    pub payloads: Vec<Vec<u8>>,
}

/// The SA mode, without addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum ModeKind {
    /// Transport mode, no selectors.
    Transport,
    /// Tunnel mode between the IPv4 hosts.
    Tunnel4,
    /// Tunnel mode between the IPv6 hosts.
    Tunnel6,
    /// Transport mode with selectors (UDP only, between the IPv4 hosts or
    /// the IPv6 hosts), checked after decryption.
    TransportSelectors,
}

/// Which fixed SA a fuzz input is run against.
///
/// One byte: bits 0-1 the suite, bits 2-3 the mode, bit 4 ESP in UDP (port
/// 4500) instead of raw ESP, bit 5 ESN, bit 6 the null cipher instead of
/// aws-lc-rs, bit 7 a replay window that starts at [`NEAR_WRAP_TOP`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The cipher suite.
    pub suite: Suite,
    /// The mode.
    pub mode: ModeKind,
    /// ESP in UDP rather than raw ESP.
    pub udp: bool,
    /// Extended sequence numbers.
    pub esn: bool,
    /// The null cipher ([`NULL_PROVIDER`]) rather than aws-lc-rs.
    pub null_cipher: bool,
    /// The inbound replay window starts at [`NEAR_WRAP_TOP`].
    pub near_wrap: bool,
}

impl Config {
    /// Decodes a configuration byte.
    pub fn from_byte(b: u8) -> Self {
        Self {
            suite: Suite::ALL[usize::from(b & 3)],
            mode: match (b >> 2) & 3 {
                0 => ModeKind::Transport,
                1 => ModeKind::Tunnel4,
                2 => ModeKind::Tunnel6,
                _ => ModeKind::TransportSelectors,
            },
            udp: b & 0x10 != 0,
            esn: b & 0x20 != 0,
            null_cipher: b & 0x40 != 0,
            near_wrap: b & 0x80 != 0,
        }
    }

    /// Encodes a configuration byte; the inverse of [`Self::from_byte`].
    pub fn to_byte(self) -> u8 {
        let suite = Suite::ALL
            .iter()
            .position(|&s| s == self.suite)
            .unwrap_or(0) as u8;
        let mode = match self.mode {
            ModeKind::Transport => 0,
            ModeKind::Tunnel4 => 1,
            ModeKind::Tunnel6 => 2,
            ModeKind::TransportSelectors => 3,
        };
        suite
            | (mode << 2)
            | (u8::from(self.udp) << 4)
            | (u8::from(self.esn) << 5)
            | (u8::from(self.null_cipher) << 6)
            | (u8::from(self.near_wrap) << 7)
    }

    /// The encapsulation.
    pub fn encapsulation(&self) -> Encapsulation {
        if self.udp {
            Encapsulation::UDP_4500
        } else {
            Encapsulation::Esp
        }
    }

    /// The crypto provider.
    pub fn provider(&self) -> CryptoProvider {
        if self.null_cipher {
            NULL_PROVIDER
        } else {
            CryptoProvider::default()
        }
    }

    /// The SA configuration for one direction. Both directions share SPI and
    /// keys; tunnel endpoints are mirrored.
    pub fn sa_config(&self, direction: Direction) -> SaConfig {
        let mut cfg = SaConfig::new(SPI, direction, self.suite, keys(self.suite));
        let (local, remote): (IpAddr, IpAddr) = match self.mode {
            ModeKind::Tunnel6 => (LOCAL6.into(), REMOTE6.into()),
            _ => (LOCAL4.into(), REMOTE4.into()),
        };
        let (local, remote) = match direction {
            Direction::Inbound => (local, remote),
            Direction::Outbound => (remote, local),
        };
        cfg.mode = match self.mode {
            ModeKind::Transport | ModeKind::TransportSelectors => Mode::Transport,
            ModeKind::Tunnel4 | ModeKind::Tunnel6 => Mode::Tunnel { local, remote },
        };
        cfg.encapsulation = self.encapsulation();
        cfg.esn = self.esn;
        if self.mode == ModeKind::TransportSelectors {
            cfg.selectors = vec![
                udp_selector(LOCAL4.into(), REMOTE4.into()),
                udp_selector(LOCAL6.into(), REMOTE6.into()),
            ];
            if direction == Direction::Outbound {
                for s in &mut cfg.selectors {
                    (s.local, s.remote) = (s.remote, s.local);
                }
            }
        }
        cfg
    }

    /// The inbound SA, created at `now`, with its replay window placed.
    pub fn inbound_sa(&self, now: Instant) -> Sa {
        let mut sa = Sa::with_provider(self.sa_config(Direction::Inbound), now, &self.provider())
            .expect("fixed inbound SA config is valid");
        if self.near_wrap {
            sa.advance_replay_window(NEAR_WRAP_TOP)
                .expect("fresh window moves forward");
        }
        sa
    }

    /// The matching outbound SA. With [`Self::near_wrap`] its next sequence
    /// number is just above the inbound window top.
    pub fn outbound_sa(&self, now: Instant) -> Sa {
        let mut sa = Sa::with_provider(self.sa_config(Direction::Outbound), now, &self.provider())
            .expect("fixed outbound SA config is valid");
        if self.near_wrap {
            sa.advance_seq(NEAR_WRAP_TOP + 1)
                .expect("fresh outbound SA moves forward");
        }
        sa
    }

    /// An engine on the receiving host with the inbound SA and three
    /// policies: UDP between the hosts must be protected, other traffic
    /// between the IPv4 hosts is let through, the rest is discarded.
    pub fn engine(&self, now: Instant) -> Engine {
        let mut e = Engine::new();
        e.add_inbound(self.inbound_sa(now))
            .expect("one inbound SA fits");
        for (local, remote) in [
            (IpAddr::from(LOCAL4), IpAddr::from(REMOTE4)),
            (IpAddr::from(LOCAL6), IpAddr::from(REMOTE6)),
        ] {
            e.spd_mut().push(Policy {
                name: "protect-udp".into(),
                selector: udp_selector(local, remote),
                action: Action::Protect(None),
            });
        }
        e.spd_mut().push(Policy {
            name: "bypass".into(),
            selector: Selector::host_to_host(LOCAL4.into(), REMOTE4.into()),
            action: Action::Bypass,
        });
        e.spd_mut().push(Policy {
            name: "discard".into(),
            selector: Selector::host_to_host(LOCAL6.into(), REMOTE6.into()),
            action: Action::Discard,
        });
        e
    }
}

/// UDP between two hosts, any ports.
fn udp_selector(local: IpAddr, remote: IpAddr) -> Selector {
    Selector {
        protocol: Some(17),
        local_ports: PortRange::ANY,
        remote_ports: PortRange::ANY,
        ..Selector::host_to_host(local, remote)
    }
}

/// Fixed keys for a suite.
pub fn keys(suite: Suite) -> SaKeys {
    let n = suite.encryption_key_len() + suite.integrity_key_len();
    let keymat: Vec<u8> = (0..n)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(3))
        .collect();
    SaKeys::from_keymat(suite, &keymat).expect("key length matches the suite")
}

/// A provider whose cipher neither encrypts nor authenticates: `seal`
/// writes the sequence number as the IV and a zero ICV, `open` accepts any
/// ICV and leaves the payload as it is. With it the fuzzer controls the
/// "decrypted" bytes and reaches the trailer, tunnel and selector checks.
/// For fuzzing only.
pub const NULL_PROVIDER: CryptoProvider = CryptoProvider {
    name: "fuzz-null",
    new_cipher: new_null_cipher,
};

fn new_null_cipher(suite: Suite, keys: &SaKeys) -> Result<Box<dyn EspCipher>, tunsec_esp::Error> {
    keys.check(suite)?;
    Ok(Box::new(NullCipher(suite)))
}

struct NullCipher(Suite);

impl EspCipher for NullCipher {
    fn suite(&self) -> Suite {
        self.0
    }

    fn seal(&self, packet: &mut [u8], seq: u64, _esn: bool) -> Result<(), CryptoError> {
        let (iv, icv) = (self.0.iv_len(), self.0.icv_len());
        let header = tunsec_wire::esp::HEADER_LEN;
        if packet.len() < header + iv + icv {
            return Err(CryptoError);
        }
        let seq_bytes = seq.to_be_bytes();
        for (i, b) in packet[header..header + iv].iter_mut().enumerate() {
            *b = seq_bytes[i % 8];
        }
        let len = packet.len();
        packet[len - icv..].fill(0);
        Ok(())
    }

    fn open(&self, packet: &mut [u8], _seq: u64, _esn: bool) -> Result<(), CryptoError> {
        let header = tunsec_wire::esp::HEADER_LEN;
        if packet.len() < header + self.0.iv_len() + self.0.icv_len() {
            return Err(CryptoError);
        }
        Ok(())
    }
}
