//! Errors in setting up SAs and policies. Packet drops are not errors; they
//! are [`crate::DropReason`]s.

use std::net::IpAddr;

use crate::direction::Direction;
use crate::suite::{Suite, UnknownSuite};

/// A configuration the engine refuses. Each variant names the field and the
/// value that was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SPI 0 is reserved (RFC 4303 section 2.1).
    #[error("spi: 0 is reserved and cannot be used")]
    ZeroSpi,
    /// The key material does not fit the suite.
    #[error("keys: {suite} needs {expected} bytes of key material, got {actual}")]
    KeyLength {
        /// The suite.
        suite: Suite,
        /// The bytes it needs (encryption and integrity keys together).
        expected: usize,
        /// The bytes given.
        actual: usize,
    },
    /// A suite name that is not known.
    #[error(transparent)]
    UnknownSuite(#[from] UnknownSuite),
    /// The replay window is out of range.
    #[error("replay_window: {0} is outside 64..=65536")]
    ReplayWindow(u32),
    /// An address prefix that does not parse.
    #[error("prefix: {0:?} is not an address or address/length")]
    Prefix(String),
    /// Tunnel endpoints of different address families.
    #[error("tunnel: local {local} and remote {remote} are of different address families")]
    TunnelFamilies {
        /// The local endpoint.
        local: IpAddr,
        /// The remote endpoint.
        remote: IpAddr,
    },
    /// An inbound SPI that is already in use.
    #[error("spi: {0:#010x} is already in use by another inbound SA")]
    DuplicateSpi(u32),
    /// An SA of the wrong direction for where it was put.
    #[error("direction: SA {spi:#010x} must be {expected:?}")]
    Direction {
        /// The SA's SPI.
        spi: u32,
        /// The direction that was needed.
        expected: Direction,
    },
    /// A sequence number that would move an SA backwards, or was asked of
    /// an SA of the wrong direction.
    #[error("seq: {0} would move the SA's sequence number backwards")]
    SequenceNumber(u64),
    /// The crypto library refused a key (should not happen for keys of the
    /// right length).
    #[error("keys: the crypto provider refused the key")]
    Crypto,
}
