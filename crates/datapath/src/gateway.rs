//! Gateway mode's per-packet logic, with no I/O: protecting the kernel's
//! own tunnels (a Linux vxlan device, Open vSwitch, GUE/FOU, RDS over TCP)
//! without touching them.
//!
//! Policy routing steers the IP packets that a peer's selectors match (the
//! peer's underlay address, a protocol, a port range) into a TUN device.
//! [`protect`] turns such a packet into ESP for the peer; [`unprotect`]
//! turns the peer's ESP back into the original IP packet, which the worker
//! writes to the TUN device so that the kernel's tunnel receives it as if
//! it had come off the wire.
//!
//! ```text
//! transport (default): IP(local -> peer) | UDP 4789 | VXLAN | ...
//!                  ->  [UDP 4500 |] ESP | UDP 4789 | VXLAN | ... (next header 17)
//! tunnel:              the whole IP packet is the payload (next header 4/41)
//! ```
//!
//! In transport mode the IP header is not sent: the receiver rebuilds it
//! from the datagram's addresses and the ESP next header (RFC 4303 section
//! 3.1.1), with a fresh TTL and no DSCP. Tunnel mode carries the original
//! header intact, at 20 (or 40) bytes more per packet.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Instant;

use tunsec_esp::{FlowKey, PacketBuf};
use tunsec_wire::ip::IpProtocol;
use tunsec_wire::{ipv4, ipv6, natt};

use crate::fast_map::FastMap;
use crate::overlay::{EspTransport, InboundEntry, SharedSa, Transmit, Via};
use crate::stats::{NetworkCounters, PathDrop, Stats};

/// Traffic of the kernel's own that a peer's SA protects: an IP protocol
/// and a port range, matched against either port (so that both the
/// requests to a service's port and its answers from that port match).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySelector {
    /// The IP protocol number (17 for UDP, 6 for TCP, 47 for GRE).
    pub protocol: u8,
    /// The ports; 0 to 65535 for a protocol without ports.
    pub ports: RangeInclusive<u16>,
}

/// IP protocol 47, GRE (RFC 2784): it has no ports.
pub const GRE: u8 = 47;

impl GatewaySelector {
    /// All of a protocol that has no ports (GRE). Its ports are the whole
    /// range, as a traffic selector gives them for such a protocol (RFC
    /// 7296 section 3.13.1: "0 and 65535" for "any port").
    pub fn whole_protocol(protocol: u8) -> Self {
        Self {
            protocol,
            ports: 0..=u16::MAX,
        }
    }

    /// Whether the protocol has ports that this selector narrows (UDP,
    /// TCP, SCTP); a GRE selector takes the whole protocol.
    pub fn has_ports(&self) -> bool {
        matches!(self.protocol, 6 | 17 | 132)
    }

    fn matches(&self, flow: &FlowKey) -> bool {
        flow.protocol == self.protocol
            && (!self.has_ports()
                || [flow.src_port, flow.dst_port]
                    .into_iter()
                    .flatten()
                    .any(|p| self.ports.contains(&p)))
    }
}

/// ESP mode in gateway mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayMode {
    /// ESP between the IP header and its payload; the header is rebuilt
    /// by the receiver.
    Transport,
    /// The whole IP packet inside ESP.
    Tunnel,
}

/// A peer in gateway mode.
#[derive(Debug, Clone)]
pub struct GatewayPeer {
    /// Its name.
    pub name: String,
    /// Its underlay address.
    pub underlay: IpAddr,
    /// What is protected between this host and the peer.
    pub selectors: Vec<GatewaySelector>,
    /// Its outbound SAs, one per Child SA (or the manual one): a packet
    /// goes out with the first whose selectors cover it.
    pub outbound: Vec<SharedSa>,
    /// Its packet and byte counters. They belong to the peer, not to its
    /// slot, so a peer added at run time into a freed slot starts at 0.
    pub counters: Arc<NetworkCounters>,
}

impl GatewayPeer {
    /// A peer with no SA yet: its traffic is dropped (`NoSa`) until one
    /// is installed.
    pub fn new(name: String, underlay: IpAddr, selectors: Vec<GatewaySelector>) -> Self {
        Self {
            name,
            underlay,
            selectors,
            outbound: Vec::new(),
            counters: Arc::default(),
        }
    }
}

/// What the gateway workers look up: a snapshot published like
/// [`crate::overlay::Tables`].
#[derive(Debug, Clone)]
pub struct GatewayTables {
    /// This host's underlay address.
    pub local: IpAddr,
    /// How ESP travels.
    pub esp: EspTransport,
    /// Transport or tunnel mode.
    pub mode: GatewayMode,
    /// The peers by slot. A slot keeps its index while the peer is
    /// configured (the IKE driver, the guard's counters and the inbound
    /// SAs name the peer by it); a peer removed at run time leaves a
    /// vacant slot, which no address leads to, for the next one added.
    peers: Vec<GatewayPeer>,
    /// The occupied slots by the peer's underlay address.
    by_addr: FastMap<IpAddr, usize>,
    /// Inbound SAs by SPI (`InboundEntry::peer` is a slot of `peers`).
    pub inbound: FastMap<u32, InboundEntry>,
}

impl GatewayTables {
    /// Tables with no peer.
    pub fn new(local: IpAddr, esp: EspTransport, mode: GatewayMode) -> Self {
        Self {
            local,
            esp,
            mode,
            peers: Vec::new(),
            by_addr: FastMap::default(),
            inbound: FastMap::default(),
        }
    }

    /// The slot of the peer at `addr`.
    pub fn peer_by_addr(&self, addr: IpAddr) -> Option<usize> {
        self.by_addr.get(&addr).copied()
    }

    /// The peer in `slot`, if it is occupied.
    pub fn peer(&self, slot: usize) -> Option<&GatewayPeer> {
        self.peers
            .get(slot)
            .filter(|p| self.by_addr.get(&p.underlay) == Some(&slot))
    }

    /// The peer in `slot`, to change its SAs, if it is occupied.
    pub fn peer_mut(&mut self, slot: usize) -> Option<&mut GatewayPeer> {
        self.peer(slot)?;
        self.peers.get_mut(slot)
    }

    /// The occupied slots and their peers, in slot order.
    pub fn peers(&self) -> impl Iterator<Item = (usize, &GatewayPeer)> {
        self.peers
            .iter()
            .enumerate()
            .filter(|(i, p)| self.by_addr.get(&p.underlay) == Some(i))
    }

    /// Puts `peer` into `slot` (growing the table with vacant slots if
    /// needed). Refused if another slot holds a peer at that address.
    pub fn insert_peer(&mut self, slot: usize, peer: GatewayPeer) -> Result<(), PeerSlotError> {
        if let Some(&other) = self.by_addr.get(&peer.underlay) {
            if other != slot {
                return Err(PeerSlotError::AddressTaken {
                    addr: peer.underlay,
                    slot: other,
                });
            }
        }
        self.remove_peer(slot);
        while self.peers.len() <= slot {
            self.peers.push(GatewayPeer::vacant());
        }
        self.by_addr.insert(peer.underlay, slot);
        self.peers[slot] = peer;
        Ok(())
    }

    /// Empties `slot`: its address leads nowhere, and its SAs go.
    pub fn remove_peer(&mut self, slot: usize) {
        if let Some(p) = self.peer(slot) {
            let addr = p.underlay;
            self.by_addr.remove(&addr);
            self.peers[slot] = GatewayPeer::vacant();
            self.inbound.retain(|_, e| e.peer != slot);
        }
    }
}

/// Why [`GatewayTables::insert_peer`] refused a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSlotError {
    /// Another slot holds a peer at the same underlay address.
    AddressTaken {
        /// The address.
        addr: IpAddr,
        /// The slot that holds it.
        slot: usize,
    },
}

impl std::fmt::Display for PeerSlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AddressTaken { addr, slot } => {
                write!(f, "peer slot {slot} already holds a peer at {addr}")
            }
        }
    }
}

impl std::error::Error for PeerSlotError {}

impl GatewayPeer {
    /// A vacant slot's placeholder.
    fn vacant() -> Self {
        Self::new(
            String::new(),
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            Vec::new(),
        )
    }
}

/// The most bytes that protecting one packet adds: the ESP-in-UDP header,
/// the ESP header with the largest IV (16, AES-CBC), the most padding
/// (15) and the trailer, the largest ICV (16); in tunnel mode also the
/// outer IP header (transport mode keeps the packet's own, RFC 4303
/// section 3.1.1).
pub const fn overhead(ipv6: bool, esp: EspTransport, mode: GatewayMode) -> usize {
    let ip = if ipv6 {
        ipv6::HEADER_LEN
    } else {
        ipv4::HEADER_LEN
    };
    let esp_udp = match esp {
        EspTransport::Udp(_) => tunsec_wire::udp::HEADER_LEN,
        EspTransport::Raw => 0,
    };
    let esp = tunsec_wire::esp::HEADER_LEN + 16 + 15 + tunsec_wire::esp::TRAILER_LEN + 16;
    let outer = match mode {
        GatewayMode::Transport => 0,
        GatewayMode::Tunnel => ip,
    };
    esp_udp + esp + outer
}

/// The MTU of the TUN device: the largest packet whose protected form
/// still fits the underlay MTU.
pub const fn tun_mtu(underlay_mtu: u16, ipv6: bool, esp: EspTransport, mode: GatewayMode) -> u16 {
    (underlay_mtu as usize).saturating_sub(overhead(ipv6, esp, mode)) as u16
}

/// The advice for a kernel VXLAN (or option-less Geneve) device's MTU
/// behind a TUN device of `tun_mtu`: its packets gain an IP, a UDP and an
/// 8-byte tunnel header, and the inner Ethernet header. A larger device
/// MTU makes the kernel fragment its tunnel packets, which transport
/// mode refuses (RFC 4303 section 3.3.1).
pub const fn kernel_tunnel_mtu(tun_mtu: u16, ipv6: bool) -> u16 {
    let ip = if ipv6 {
        ipv6::HEADER_LEN
    } else {
        ipv4::HEADER_LEN
    };
    (tun_mtu as usize).saturating_sub(ip + tunsec_wire::udp::HEADER_LEN + 8 + 14) as u16
}

/// The fields of the IP header that gateway processing needs.
struct IpInfo {
    v4: bool,
    header_len: usize,
    total_len: usize,
    protocol: u8,
    src: IpAddr,
    dst: IpAddr,
    fragment: bool,
}

fn ip_info(packet: &[u8]) -> Option<IpInfo> {
    match tunsec_wire::ip::version(packet).ok()? {
        4 => {
            let p = ipv4::Packet::new_checked(packet).ok()?;
            Some(IpInfo {
                v4: true,
                header_len: p.header_len(),
                total_len: usize::from(p.total_len()),
                protocol: p.next_header().into(),
                src: p.src_addr().into(),
                dst: p.dst_addr().into(),
                fragment: p.is_fragment(),
            })
        }
        6 => {
            let p = ipv6::Packet::new_checked(packet).ok()?;
            Some(IpInfo {
                v4: false,
                header_len: ipv6::HEADER_LEN,
                total_len: ipv6::HEADER_LEN + usize::from(p.payload_len()),
                protocol: p.next_header().into(),
                src: p.src_addr().into(),
                dst: p.dst_addr().into(),
                fragment: false,
            })
        }
        _ => None,
    }
}

/// Protects an IP packet read from the TUN device (`buf[start..end]`), in
/// place, for the peer it is addressed to.
///
/// Only packets that this host sends, to a configured peer, matching one
/// of that peer's selectors are protected; anything else the routing rules
/// let in is dropped and counted (`policy`, `unknown_peer`), never sent in
/// the clear. Without an SA the packet is dropped (`no_sa`).
#[allow(clippy::too_many_arguments)]
pub fn protect(
    tables: &GatewayTables,
    stats: &Stats,
    buf: &mut [u8],
    start: usize,
    end: usize,
    now: Instant,
) -> Result<Transmit, PathDrop> {
    let fail = |d: PathDrop| {
        stats.drop(d);
        Err(d)
    };
    let Some(ip) = ip_info(&buf[start..end]) else {
        return fail(PathDrop::Malformed);
    };
    if ip.total_len > end - start {
        return fail(PathDrop::Malformed);
    }
    let end = start + ip.total_len;
    let Some(peer) = tables.peer_by_addr(ip.dst) else {
        return fail(PathDrop::UnknownPeer);
    };
    let Ok(flow) = FlowKey::from_ip_packet(&buf[start..end]) else {
        return fail(PathDrop::Malformed);
    };
    let entry = &tables.peers[peer]; // an occupied slot: found by address
    if ip.src != tables.local || !entry.selectors.iter().any(|s| s.matches(&flow)) {
        return fail(PathDrop::Policy);
    }
    if entry.outbound.is_empty() {
        return fail(PathDrop::NoSa);
    }
    // With several Child SAs, the one whose selectors cover the packet
    // (RFC 4301 section 5.1; a manual SA has none and covers all). The
    // peer's gateway selectors were checked above and match either port,
    // while a Child SA narrowed to `[udp/4789]` on both sides does not
    // cover a kernel vxlan device's per-flow source port: such a packet
    // goes with the first SA, as it did with one (see ARCHITECTURE.md).
    let covers = |sa: &SharedSa| {
        sa.lock().is_ok_and(|sa| {
            sa.selectors().is_empty() || sa.selectors().iter().any(|s| s.matches_outbound(&flow))
        })
    };
    let Some(sa) = entry
        .outbound
        .iter()
        .find(|sa| covers(sa))
        .or(entry.outbound.first())
    else {
        return fail(PathDrop::NoSa);
    };
    let (payload_start, next_header) = match tables.mode {
        GatewayMode::Transport => {
            //= https://www.rfc-editor.org/rfc/rfc4303#section-3.3.1
            //# In transport mode, ESP is applied only to whole IP datagrams
            //# (not to IP fragments)
            // IPv6 extension headers would sit between the header and ESP;
            // they are not walked yet, so such packets are refused.
            let ext = !ip.v4
                && matches!(
                    IpProtocol::from(ip.protocol),
                    IpProtocol::HopByHop
                        | IpProtocol::Ipv6Route
                        | IpProtocol::Ipv6Frag
                        | IpProtocol::Ipv6Opts
                );
            if ip.fragment || ext {
                return fail(PathDrop::Malformed);
            }
            (start + ip.header_len, ip.protocol)
        }
        GatewayMode::Tunnel => (
            start,
            if ip.v4 {
                IpProtocol::Ipip
            } else {
                IpProtocol::Ipv6
            }
            .into(),
        ),
    };
    let mut pb = PacketBuf::new(buf, payload_start, end);
    let sealed = match sa.lock() {
        Ok(mut sa) => sa.seal_esp(&mut pb, next_header, now),
        Err(_) => Err(tunsec_esp::DropReason::NoSa),
    };
    if sealed.is_err() {
        return fail(PathDrop::Esp);
    }
    let dst = match tables.esp {
        EspTransport::Udp(port) => SocketAddr::new(entry.underlay, port),
        EspTransport::Raw => SocketAddr::new(entry.underlay, 0),
    };
    Ok(Transmit {
        start: pb.start(),
        end: pb.end(),
        dst,
        via: Via::Esp,
    })
}

/// What a datagram on the ESP socket turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayReceive {
    /// An IP packet for the TUN device, at `buf[start..end]`.
    Packet {
        /// Where it starts.
        start: usize,
        /// Where it ends.
        end: usize,
    },
    /// A NAT keepalive (RFC 3948 section 2.3).
    Keepalive,
    /// An IKE message behind the non-ESP marker (RFC 3948 section 2.2),
    /// at `buf[start..end]`, for the IKE driver.
    Ike {
        /// Where it starts.
        start: usize,
        /// Where it ends.
        end: usize,
    },
}

/// Opens an ESP datagram from `src` (`buf[start..end]`, from the SPI on;
/// with `udp`, possibly a NAT keepalive or IKE) and rebuilds, in place,
/// the IP packet to write to the TUN device.
///
/// The packet must come from the SA's peer and, once opened, be traffic
/// the peer's selectors allow, addressed to this host (RFC 4301 section
/// 5.2: the decrypted packet must match the SA's selectors).
#[allow(clippy::too_many_arguments)]
pub fn unprotect(
    tables: &GatewayTables,
    stats: &Stats,
    src: IpAddr,
    udp: bool,
    buf: &mut [u8],
    start: usize,
    end: usize,
    now: Instant,
) -> Result<GatewayReceive, PathDrop> {
    stats.count_unknown_spi(try_unprotect(tables, stats, src, udp, buf, start, end, now))
}

/// [`unprotect`], except that an SPI with no inbound SA is returned as
/// `Err(PathDrop::UnknownSpi)` without being counted, and `buf` is then left
/// as it was: the receive worker may hold such a datagram until its SA is
/// installed ([`crate::early`]), and counts it only if it never is. Every
/// other drop is counted here.
#[allow(clippy::too_many_arguments)]
pub fn try_unprotect(
    tables: &GatewayTables,
    stats: &Stats,
    src: IpAddr,
    udp: bool,
    buf: &mut [u8],
    start: usize,
    end: usize,
    now: Instant,
) -> Result<GatewayReceive, PathDrop> {
    let fail = |d: PathDrop| {
        if d != PathDrop::UnknownSpi {
            stats.drop(d);
        }
        Err(d)
    };
    if udp {
        match natt::classify(&buf[start..end]) {
            Ok(natt::UdpEncapPayload::Esp(_)) => {}
            Ok(natt::UdpEncapPayload::Keepalive) => return Ok(GatewayReceive::Keepalive),
            Ok(natt::UdpEncapPayload::Ike(_)) => {
                let marker = natt::NON_ESP_MARKER.len();
                return Ok(GatewayReceive::Ike {
                    start: start + marker,
                    end,
                });
            }
            Err(_) => return fail(PathDrop::Malformed),
        }
    }
    let Ok(spi) = tunsec_wire::esp::Packet::new_checked(&buf[start..end]).map(|p| p.spi()) else {
        return fail(PathDrop::Malformed);
    };
    let Some(entry) = tables.inbound.get(&spi) else {
        return fail(PathDrop::UnknownSpi);
    };
    let Some(peer) = tables.peer(entry.peer) else {
        return fail(PathDrop::UnknownSpi);
    };
    if src != peer.underlay {
        return fail(PathDrop::Policy);
    }
    let mut pb = PacketBuf::new(buf, start, end);
    let opened = match entry.sa.lock() {
        Ok(mut sa) => sa.open_esp(&mut pb, now),
        Err(_) => Err(tunsec_esp::DropReason::NoSa),
    };
    let Ok(next_header) = opened else {
        return fail(PathDrop::Esp);
    };
    let (payload_start, payload_end) = (pb.start(), pb.end());
    let (start, end) = match (tables.mode, IpProtocol::from(next_header)) {
        (GatewayMode::Tunnel, IpProtocol::Ipip | IpProtocol::Ipv6) => (payload_start, payload_end),
        (GatewayMode::Tunnel, _) => return fail(PathDrop::Policy),
        (GatewayMode::Transport, _) => {
            match rebuild_header(
                buf,
                payload_start,
                payload_end,
                peer.underlay,
                tables.local,
                next_header,
            ) {
                Some(s) => (s, payload_end),
                None => return fail(PathDrop::Malformed),
            }
        }
    };
    let Some(ip) = ip_info(&buf[start..end]).filter(|ip| ip.total_len == end - start) else {
        return fail(PathDrop::Malformed);
    };
    let Ok(flow) = FlowKey::from_ip_packet(&buf[start..end]) else {
        return fail(PathDrop::Malformed);
    };
    if ip.src != peer.underlay
        || ip.dst != tables.local
        || !peer.selectors.iter().any(|s| s.matches(&flow))
    {
        return fail(PathDrop::Policy);
    }
    Ok(GatewayReceive::Packet { start, end })
}

/// Writes an IP header for `buf[payload_start..payload_end]` just in front
/// of it; returns where the packet starts.
fn rebuild_header(
    buf: &mut [u8],
    payload_start: usize,
    payload_end: usize,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
) -> Option<usize> {
    let payload_len = payload_end - payload_start;
    match (src, dst) {
        (IpAddr::V4(src_addr), IpAddr::V4(dst_addr)) => {
            let repr = ipv4::Repr {
                src_addr,
                dst_addr,
                next_header: protocol.into(),
                payload_len,
                hop_limit: 64,
                dscp_ecn: 0,
                dont_frag: false,
                ident: 0,
            };
            let start = payload_start.checked_sub(repr.buffer_len())?;
            if repr.buffer_len() + payload_len > usize::from(u16::MAX) {
                return None;
            }
            repr.emit(&mut ipv4::Packet::new_unchecked(
                &mut buf[start..payload_end],
            ));
            Some(start)
        }
        (IpAddr::V6(src_addr), IpAddr::V6(dst_addr)) => {
            let repr = ipv6::Repr {
                src_addr,
                dst_addr,
                next_header: protocol.into(),
                payload_len,
                hop_limit: 64,
                traffic_class: 0,
                flow_label: 0,
            };
            let start = payload_start.checked_sub(repr.buffer_len())?;
            if payload_len > usize::from(u16::MAX) {
                return None;
            }
            repr.emit(&mut ipv6::Packet::new_unchecked(
                &mut buf[start..payload_end],
            ));
            Some(start)
        }
        _ => None,
    }
}

#[cfg(test)]
#[path = "gateway_tests.rs"]
pub(crate) mod tests;
