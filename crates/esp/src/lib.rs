//! tunsec's ESP engine (RFC 4303), sans IO.
//!
//! No sockets, no clock, no threads: every call takes a packet in a
//! caller-owned buffer and the current time, and returns the packet,
//! changed in place, or a [`DropReason`]. That keeps the engine fuzzable,
//! deterministic in tests, and free of allocation on the data path.
//!
//! - [`Sa`]: one security association: SPI, direction, mode, encapsulation,
//!   suite and keys, 64-bit sequence numbers with optional ESN (RFC 4304),
//!   the anti-replay window ([`ReplayWindow`], RFC 4303 section 3.4.3 with
//!   the RFC 6479 bitmap), lifetimes and counters.
//!   - [`Sa::seal_esp`] / [`Sa::open_esp`] turn a payload into an ESP
//!     packet and back (for a data path that sends over a UDP socket);
//!   - [`Sa::seal`] / [`Sa::open`] do the same for whole IP packets,
//!     by the SA's mode (transport or tunnel) and encapsulation (raw ESP or
//!     ESP in UDP, RFC 3948).
//! - [`Sad`]: inbound SAs by SPI. [`Spd`]: ordered policies that protect,
//!   bypass or discard. [`Engine`]: both, applied to IP packets.
//! - [`CryptoProvider`]: the one place that calls a crypto library
//!   (aws-lc-rs).

#![forbid(unsafe_code)]

mod buf;
mod counters;
mod crypto;
mod direction;
mod engine;
mod error;
mod keys;
mod lifetime;
mod replay;
mod sa;
mod sad;
mod selector;
mod spd;
mod suite;

pub use buf::PacketBuf;
pub use counters::{DropCounters, DropReason, SaCounters};
pub use crypto::{AWS_LC_RS, CryptoError, CryptoProvider, EspCipher, NewCipher};
pub use direction::Direction;
pub use engine::{Engine, Inbound, Outbound};
pub use error::Error;
pub use keys::{Key, SaKeys};
pub use lifetime::{Lifetime, LifetimeState, Limits};
pub use replay::ReplayWindow;
pub use sa::{Encapsulation, Mode, OpenJob, Overhead, Sa, SaConfig, SaEvent, SealJob};
pub use sad::Sad;
pub use selector::{FlowKey, IpPrefix, PortRange, Selector};
pub use spd::{Action, Policy, SaId, Spd};
pub use suite::{Suite, UnknownSuite};
