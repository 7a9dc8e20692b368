//! An SA's direction. It sits below [`crate::Error`], which names it, and
//! imports nothing of the crate.

/// Which way an SA carries packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Packets this host receives and opens.
    Inbound,
    /// Packets this host seals and sends.
    Outbound,
}
