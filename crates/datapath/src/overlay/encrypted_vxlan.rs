//! The Encrypted VXLAN layout (`[[network]] layout = "encrypted_vxlan"`),
//! after "Encrypted VXLAN" (Linux Plumbers 2014): the VXLAN header with
//! its VNI stays in the clear, so the fabric can see and account per
//! tenant, and ESP follows it, sealing the tenant's frame.
//!
//! ```text
//! IP | UDP 4789 | VXLAN (VNI) | ESP hdr | IV | frame | pad | trailer (next header 143) | ICV
//! ```
//!
//! It is tunsec to tunsec only: no other implementation reads ESP there.
//! The SA is per network by construction: such a network needs keys per
//! network (`[peer.ike] keys = "per_network"`), so every SA that seals
//! its frames is bound to it (`SaConfig::binding`). The VNI is not in the
//! ICV's coverage; it is authenticated by that binding instead: the
//! receiver finds the SA by SPI, opens the packet, and delivers the frame
//! only if the SA's network is the one the VXLAN header names; any other
//! pairing (a rewritten VNI, or one network's packet under another's
//! keys) is `network_mismatch`. ESP's next header is 143, Ethernet (IANA;
//! RFC 8986 section 10.1), and the SA must be in transport mode.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard};

use tunsec_esp::{Mode, PacketBuf, Sa};
use tunsec_wire::{ethernet, vxlan};

use super::{Delivery, NetworkSpec, OverlayCtx, PeerEntry, Tables, emit_tunnel_header};
use crate::esp_rx::{Received, open_inbound};
use crate::packet::{Transmit, Via, seal};
use crate::stats::{PathDrop, add};

/// ESP's next header for an Ethernet frame: IP protocol 143 (IANA
/// "Ethernet", RFC 8986 section 10.1).
pub const NEXT_HEADER_ETHERNET: u8 = 143;

/// Seals the frame `buf[start..end]` of network `net` for peer `index`
/// with `sa` (found and locked by the caller), and puts the network's
/// VXLAN header in front of the ESP packet, for the tunnel socket.
#[allow(clippy::too_many_arguments)]
pub(super) fn seal_frame(
    ctx: &OverlayCtx<'_>,
    net: usize,
    network: &NetworkSpec,
    entry: &PeerEntry,
    index: usize,
    (shared, sa): (&Mutex<Sa>, MutexGuard<'_, Sa>),
    buf: &mut [u8],
    start: usize,
    end: usize,
) -> Result<Transmit, PathDrop> {
    // Only the network's own SA: a shared one would let the VNI go
    // unauthenticated.
    if sa.binding() != u32::try_from(net).ok() {
        return Err(PathDrop::NoSa);
    }
    if !matches!(sa.mode(), Mode::Transport) {
        return Err(PathDrop::Policy);
    }
    let mut pb = PacketBuf::new(buf, start, end);
    seal(shared, sa, &mut pb, NEXT_HEADER_ETHERNET, ctx.now)?;
    let (esp_start, esp_end) = (pb.start(), pb.end());
    let header = esp_start
        .checked_sub(vxlan::HEADER_LEN)
        .ok_or(PathDrop::Malformed)?;
    emit_tunnel_header(network, &mut buf[header..esp_start]);
    Ok(Transmit {
        start: header,
        end: esp_end,
        dst: SocketAddr::new(entry.spec.underlay, network.port),
        via: Via::Tunnel(network.port),
        peer: index,
    })
}

/// Opens the ESP packet that follows the VXLAN header of `outer` (what
/// [`super::decapsulate`] found: the network the header names, and where
/// ESP starts) from `src`, in place: the frame, if the SA that opens it
/// is bound to that network.
pub(super) fn open(
    ctx: &OverlayCtx<'_>,
    src: IpAddr,
    outer: Delivery,
    buf: &mut [u8],
) -> Result<Delivery, PathDrop> {
    match open_inbound(ctx, src, false, buf, outer.start, outer.end)? {
        Received::Payload(d) if d.net == outer.net => Ok(d),
        // Opened, but under another network's keys: the VNI was rewritten,
        // or a peer put one network's frame into another.
        Received::Payload(_) => {
            if let Some(c) = ctx.stats.network(outer.net) {
                add(&c.network_mismatch, 1);
            }
            Err(PathDrop::NetworkMismatch)
        }
        Received::Keepalive | Received::Ike { .. } => Err(PathDrop::Malformed),
    }
}

/// The frame of an opened ESP payload with next header Ethernet
/// (`buf[start..end]`), under an SA bound to `binding`: it must be a
/// network of the Encrypted VXLAN layout that the peer carries.
pub(super) fn frame_of(
    tables: &Tables,
    peer: usize,
    binding: Option<u32>,
    start: usize,
    end: usize,
) -> Result<Delivery, PathDrop> {
    let Some(net) = binding.and_then(|b| usize::try_from(b).ok()) else {
        return Err(PathDrop::NetworkMismatch);
    };
    let layout = tables.networks.get(net).map(|n| n.layout);
    if layout != Some(super::EspLayout::EncryptedVxlan) || tables.policy(peer, net).is_none() {
        return Err(PathDrop::Policy);
    }
    if end - start < ethernet::HEADER_LEN {
        return Err(PathDrop::Malformed);
    }
    Ok(Delivery { net, start, end })
}
