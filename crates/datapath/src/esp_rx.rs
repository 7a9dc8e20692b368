//! Receiving on the ESP socket, in either mode: [`open_inbound`] tells a
//! NAT keepalive and an IKE message from ESP (RFC 3948), finds the
//! inbound SA by SPI, checks that the datagram came from the SA's peer,
//! and opens it in place. What the payload then must be is the mode's
//! business ([`Inbound::accept`]: overlay mode finds the tunnel frame in
//! it, gateway mode the IP packet).

use std::net::IpAddr;
use std::sync::MutexGuard;

use tunsec_esp::{PacketBuf, Sa};
use tunsec_wire::natt;

use crate::fast_map::FastMap;
use crate::packet::{Ctx, canonical};
use crate::shared_sa::InboundEntry;
use crate::stats::{PathDrop, add};

/// What a datagram on the ESP socket turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received<T> {
    /// ESP, opened: what the mode made of it.
    Payload(T),
    /// A NAT keepalive (RFC 3948 section 2.3), counted in
    /// [`crate::stats::Stats::keepalives`]: nothing to do.
    Keepalive,
    /// An IKE message behind the non-ESP marker (RFC 3948 section 2.2),
    /// `buf[start..end]` (the marker stripped): for the IKE driver.
    Ike {
        /// The first byte of the IKE header.
        start: usize,
        /// One past the last byte.
        end: usize,
    },
}

/// How a mode's tables receive ESP: the lookups [`open_inbound`] needs,
/// and what an opened payload must be.
pub trait Inbound: Sized {
    /// The mode's forwarding database (`()` for none).
    type Fdb;
    /// What an accepted payload becomes (where it lies in the buffer).
    type Payload;

    /// The inbound SAs by SPI.
    fn inbound(&self) -> &FastMap<u32, InboundEntry>;
    /// The underlay address of peer `peer`.
    fn peer_underlay(&self, peer: usize) -> Option<IpAddr>;
    /// The peer with this underlay address.
    fn peer_by_addr(&self, addr: IpAddr) -> Option<usize>;
    /// Checks an opened payload against its SA and the mode's rules, and
    /// finds what to deliver.
    fn accept(
        ctx: &Ctx<'_, Self, Self::Fdb>,
        opened: Opened<'_>,
        buf: &mut [u8],
    ) -> Result<Self::Payload, PathDrop>;
}

/// An ESP payload decrypted in place, `buf[start..end]`, with its SA
/// still locked: the mode checks the payload against the SA's selectors
/// (RFC 4301 section 5.2) before it lets go.
#[derive(Debug)]
pub struct Opened<'t> {
    /// The SA's peer (an index into the tables' peers).
    pub peer: usize,
    /// The peer's underlay address, which the datagram came from.
    pub underlay: IpAddr,
    /// The ESP next header.
    pub next_header: u8,
    /// The first byte of the payload.
    pub start: usize,
    /// One past its last byte.
    pub end: usize,
    /// The inbound SA, locked.
    pub sa: MutexGuard<'t, Sa>,
}

/// Opens an ESP datagram from `src` (`buf[start..end]`, from the SPI on;
/// with `udp`, possibly a NAT keepalive or IKE behind the non-ESP marker)
/// in place, and hands the payload to the mode ([`Inbound::accept`]).
///
/// An SPI with no inbound SA is `Err(PathDrop::UnknownSpi)`, and `buf` is
/// then left as it was: the receive worker may hold such a datagram until
/// its SA is installed ([`crate::early`]).
pub fn open_inbound<T: Inbound>(
    ctx: &Ctx<'_, T, T::Fdb>,
    src: IpAddr,
    udp: bool,
    buf: &mut [u8],
    start: usize,
    end: usize,
) -> Result<Received<T::Payload>, PathDrop> {
    let tables = ctx.tables;
    if udp {
        match natt::classify(&buf[start..end]) {
            Ok(natt::UdpEncapPayload::Esp(_)) => {}
            Ok(natt::UdpEncapPayload::Keepalive) => {
                add(&ctx.stats.keepalives, 1);
                return Ok(Received::Keepalive);
            }
            Ok(natt::UdpEncapPayload::Ike(_)) => {
                return Ok(Received::Ike {
                    start: start + natt::NON_ESP_MARKER.len(),
                    end,
                });
            }
            Err(_) => return Err(PathDrop::Malformed),
        }
    }
    let Ok(spi) = tunsec_wire::esp::Packet::new_checked(&buf[start..end]).map(|p| p.spi()) else {
        return Err(PathDrop::Malformed);
    };
    let Some(entry) = tables.inbound().get(&spi) else {
        return Err(PathDrop::UnknownSpi);
    };
    let Some(underlay) = tables.peer_underlay(entry.peer) else {
        return Err(PathDrop::UnknownSpi);
    };
    if canonical(src) != underlay {
        // The SA belongs to another host.
        return Err(PathDrop::Policy);
    }
    // The replay check and the window update take the SA's lock briefly;
    // decryption runs without it, so workers that share the SA open in
    // parallel (RFC 4303 section 3.4.3: check, verify, then update).
    let mut pb = PacketBuf::new(buf, start, end);
    let job = match entry.sa.lock() {
        Ok(mut sa) => sa.reserve_open(&pb, ctx.now),
        Err(_) => return Err(PathDrop::Esp),
    };
    let Ok(job) = job else {
        return Err(PathDrop::Esp);
    };
    if let Err(reason) = job.decrypt(&mut pb) {
        if let Ok(mut sa) = entry.sa.lock() {
            sa.record_drop(reason);
        }
        return Err(PathDrop::Esp);
    }
    let Ok(mut sa) = entry.sa.lock() else {
        return Err(PathDrop::Esp);
    };
    let Ok(next_header) = sa.finish_open(&job, &mut pb, ctx.now) else {
        return Err(PathDrop::Esp);
    };
    let (start, end) = (pb.start(), pb.end());
    let opened = Opened {
        peer: entry.peer,
        underlay,
        next_header,
        start,
        end,
        sa,
    };
    T::accept(ctx, opened, buf).map(Received::Payload)
}
