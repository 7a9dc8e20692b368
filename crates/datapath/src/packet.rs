//! What both modes' per-packet code shares: the buffer layout, how ESP
//! travels, the per-packet context [`Ctx`], the datagram a transmit
//! function hands the worker ([`Transmit`]), and the ESP seal step
//! ([`seal`]).
//!
//! Every function works in place in a caller-owned buffer with
//! [`HEADROOM`] in front of the packet and [`TAILROOM`] behind it, and
//! returns `Err(PathDrop)` without counting it: the worker counts each
//! drop in one place ([`Stats::count`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tunsec_esp::{PacketBuf, Sa};

use crate::stats::{PathDrop, Stats};

/// Room reserved in front of a packet: in overlay mode the tunnel's UDP
/// header (8) + the largest tunnel header we emit (8) + in tunnel mode the
/// inner IP header (at most 40, IPv6) + ESP header and the largest IV
/// (8 + 16): 80 bytes, with margin. In gateway mode, the room to rebuild
/// an IP header in front of a received payload.
pub const HEADROOM: usize = 128;
/// Room reserved after a packet: the largest padding (15), trailer (2) and
/// ICV (16), with margin.
pub const TAILROOM: usize = 64;

/// What one packet's processing reads: the published tables, the
/// forwarding database (overlay mode; `()` in gateway mode, which learns
/// nothing), the counters, and the time its batch was read.
#[derive(Debug)]
pub struct Ctx<'a, T, F = ()> {
    /// The table snapshot of the batch.
    pub tables: &'a T,
    /// The forwarding database.
    pub fdb: &'a F,
    /// The counters.
    pub stats: &'a Stats,
    /// When the batch was read.
    pub now: Instant,
}

impl<T, F> Clone for Ctx<'_, T, F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T, F> Copy for Ctx<'_, T, F> {}

/// How ESP leaves this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EspTransport {
    /// ESP in UDP on this port at both ends (RFC 3948).
    Udp(u16),
    /// Raw ESP, IP protocol 50.
    Raw,
}

impl EspTransport {
    /// Where ESP to a peer at `underlay` goes (port 0 for raw ESP).
    pub fn destination(self, underlay: IpAddr) -> SocketAddr {
        match self {
            Self::Udp(port) => SocketAddr::new(underlay, port),
            Self::Raw => SocketAddr::new(underlay, 0),
        }
    }
}

/// Where a transmit goes, once built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The ESP socket (UDP or raw).
    Esp,
    /// The cleartext tunnel socket of this port (overlay mode).
    Tunnel(u16),
    /// The raw IP socket that sends a whole IP packet as it is, marked so
    /// that the steering lets it pass (gateway mode's `clear` VNIs).
    Clear,
}

/// A datagram ready to send: `buf[start..end]` to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// The first byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// The destination (port 0 for raw ESP).
    pub dst: SocketAddr,
    /// The socket to send it on.
    pub via: Via,
    /// The peer it goes to (an index into the tables' peers).
    pub peer: usize,
}

/// Seals the payload `pb` with `sa`, found and locked by the caller, as
/// ESP with `next_header`. The lock is held only to take a sequence
/// number ([`Sa::reserve_seal`]); encryption runs without it, so workers
/// that share the SA seal in parallel. A failure is counted on the SA.
pub fn seal(
    shared: &Mutex<Sa>,
    mut sa: MutexGuard<'_, Sa>,
    pb: &mut PacketBuf<'_>,
    next_header: u8,
    now: Instant,
) -> Result<(), PathDrop> {
    let Ok(job) = sa.reserve_seal(pb, now) else {
        return Err(PathDrop::Esp);
    };
    drop(sa);
    if let Err(reason) = job.seal(pb, next_header) {
        if let Ok(mut sa) = shared.lock() {
            sa.record_drop(reason);
        }
        return Err(PathDrop::Esp);
    }
    Ok(())
}

/// IPv4-mapped IPv6 addresses (as a dual-stack socket reports IPv4 peers)
/// compare as IPv4.
pub(crate) fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}
