//! Zero-copy views over the packet formats that tunsec reads and writes.
//!
//! The shape follows smoltcp's `wire` module. Each format has two levels:
//!
//! 1. `Packet<T: AsRef<[u8]>>`: a typed view over a byte buffer. Field offsets
//!    live in a private `field` module. Getters need `T: AsRef<[u8]>`, setters
//!    need `T: AsMut<[u8]>`, so the same type reads a `&[u8]` and rewrites a
//!    `&mut [u8]` in place without copying.
//! 2. `Repr`: a small owned struct of the meaningful fields, with
//!    `Repr::parse(&Packet<&T>) -> Result<Repr>`, `Repr::buffer_len()` (the
//!    header length) and `Repr::emit(&self, &mut Packet<&mut T>)`.
//!
//! The contract:
//! - `Packet::new_unchecked` wraps a buffer without looking at it;
//!   `Packet::check_len` checks that every fixed field and every length field
//!   fits in the buffer; `Packet::new_checked` does both. **Untrusted input
//!   must go through `new_checked`.** After it succeeds no accessor panics.
//! - `Repr::parse` also checks the semantic rules (versions, reserved bits
//!   that must be zero, checksums) and returns [`Error`] on anything
//!   malformed. Nothing in this crate panics on input from the network.
//! - `emit` writes into a buffer the caller sized with `buffer_len()`; it
//!   does not check lengths again (emitting into a too-short buffer is a
//!   programming error and may panic, as in smoltcp).
//!
//! The module `view` (crate-private) holds what the views share: the
//! `packet_view!` macro declares a module's `Packet<T>`, its constructors,
//! its length check, the accessors of its plain fields and of the flags and
//! small numbers packed in them, and the slices of the buffer they bound,
//! so each module writes only what is its own.
//!
//! The crate does no I/O and no cryptography.

#![forbid(unsafe_code)]

pub mod checksum;
pub mod esp;
pub mod ethernet;
pub mod geneve;
pub mod gue;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod natt;
pub mod tcp;
pub mod udp;
mod view;
pub mod vxlan;

/// A byte range of a fixed-size field.
pub(crate) type Field = core::ops::Range<usize>;
/// The rest of a buffer from an offset on.
pub(crate) type Rest = core::ops::RangeFrom<usize>;

/// Why a buffer is not a well-formed packet of the expected format.
///
/// The variants are deliberately small and `Copy`: on the data path a parse
/// error is a drop and a counter, nothing richer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The buffer is shorter than the header, or than a length field says.
    #[error("truncated packet")]
    Truncated,
    /// A length field is inconsistent (smaller than the header, or larger
    /// than the buffer allows).
    #[error("bad length field")]
    BadLength,
    /// The version field holds a value this crate does not handle.
    #[error("unsupported version")]
    BadVersion,
    /// A checksum does not verify.
    #[error("bad checksum")]
    BadChecksum,
    /// A field holds a value the format forbids (a reserved bit set where
    /// the RFC says it MUST be zero, a zero SPI, ...).
    #[error("malformed field")]
    Malformed,
    /// Bytes are left over where the format allows none.
    #[error("trailing bytes")]
    TrailingBytes,
}

/// The result of parsing a packet.
pub type Result<T> = core::result::Result<T, Error>;
