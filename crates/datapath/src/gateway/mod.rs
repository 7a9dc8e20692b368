//! Gateway mode's per-packet logic, with no I/O: protecting the kernel's
//! own tunnels (a Linux vxlan device, Open vSwitch, GUE/FOU, RDS over TCP)
//! without touching them.
//!
//! Policy routing steers the IP packets that a peer's selectors match (the
//! peer's underlay address, a protocol, a port range) into a TUN device.
//! [`protect`] turns such a packet into ESP for the peer;
//! [`crate::esp_rx::open_inbound`] (with this mode's [`Inbound::accept`])
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

pub mod vni;

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;

use tunsec_esp::{FlowKey, PacketBuf};
use tunsec_wire::ip::IpProtocol;
use tunsec_wire::{ipv4, ipv6};

use crate::esp_rx::{Inbound, Opened};
use crate::fast_map::FastMap;
use crate::packet::{Ctx, EspTransport, Transmit, Via, canonical, seal};
use crate::shared_sa::{InboundEntry, SharedSa};
use crate::stats::{NetworkCounters, PathDrop, add};

pub use vni::{TunnelKind, VniAction, VniPolicy, VniRule};

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
    /// Its policies by VNI, one per tunnel port range (see [`vni`]);
    /// traffic to other ports is `require`.
    pub vnis: Vec<VniPolicy>,
    /// Its outbound SAs, one per Child SA (or the manual one): a packet
    /// goes out with the first whose selectors cover it.
    pub outbound: Vec<SharedSa>,
    /// Its packet and byte counters (tx: sealed and sent, rx: opened and
    /// written to the TUN device). They belong to the peer, not to its
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
            vnis: Vec::new(),
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
    /// vacant slot (`None`), which no address leads to, for the next one
    /// added.
    peers: Vec<Option<GatewayPeer>>,
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
        self.by_addr.get(&canonical(addr)).copied()
    }

    /// The peer in `slot`, if it is occupied.
    pub fn peer(&self, slot: usize) -> Option<&GatewayPeer> {
        self.peers.get(slot)?.as_ref()
    }

    /// The peer in `slot`, to change its SAs, if it is occupied.
    pub fn peer_mut(&mut self, slot: usize) -> Option<&mut GatewayPeer> {
        self.peers.get_mut(slot)?.as_mut()
    }

    /// The occupied slots and their peers, in slot order.
    pub fn peers(&self) -> impl Iterator<Item = (usize, &GatewayPeer)> {
        self.peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| Some((i, p.as_ref()?)))
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
        if self.peers.len() <= slot {
            self.peers.resize_with(slot + 1, || None);
        }
        self.by_addr.insert(peer.underlay, slot);
        self.peers[slot] = Some(peer);
        Ok(())
    }

    /// Orders each peer's outbound SAs by binding, the shared (unbound)
    /// ones first, as [`protect`] looks them up; called after every
    /// change of SAs.
    pub fn order_outbound(&mut self) {
        for p in self.peers.iter_mut().flatten() {
            p.outbound.sort_by_key(binding_of);
        }
    }

    /// Empties `slot`: its address leads nowhere, and its SAs go.
    pub fn remove_peer(&mut self, slot: usize) {
        if let Some(p) = self.peers.get_mut(slot).and_then(Option::take) {
            self.by_addr.remove(&p.underlay);
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

impl Inbound for GatewayTables {
    type Fdb = ();
    type Payload = Unprotected;

    fn inbound(&self) -> &FastMap<u32, InboundEntry> {
        &self.inbound
    }

    fn peer_underlay(&self, peer: usize) -> Option<IpAddr> {
        self.peer(peer).map(|p| p.underlay)
    }

    fn peer_by_addr(&self, addr: IpAddr) -> Option<usize> {
        Self::peer_by_addr(self, addr)
    }

    /// Rebuilds, in place, the IP packet to write to the TUN device. It
    /// must come from the SA's peer, addressed to this host, and be
    /// traffic the peer's selectors allow (RFC 4301 section 5.2: the
    /// decrypted packet must match the SA's selectors).
    fn accept(
        ctx: &GatewayCtx<'_>,
        opened: Opened<'_>,
        buf: &mut [u8],
    ) -> Result<Unprotected, PathDrop> {
        packet_of(ctx.tables, opened, buf)
    }
}

/// Gateway mode's per-packet context: its tables (no forwarding
/// database).
pub type GatewayCtx<'a> = Ctx<'a, GatewayTables>;

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
/// let in is dropped (`policy`, `unknown_peer`), never sent in the clear.
/// Without an SA the packet is dropped (`no_sa`).
pub fn protect(
    ctx: &GatewayCtx<'_>,
    buf: &mut [u8],
    start: usize,
    end: usize,
) -> Result<Transmit, PathDrop> {
    let tables = ctx.tables;
    let Some(ip) = ip_info(&buf[start..end]) else {
        return Err(PathDrop::Malformed);
    };
    if ip.total_len > end - start {
        return Err(PathDrop::Malformed);
    }
    let end = start + ip.total_len;
    let Some(peer) = tables.peer_by_addr(ip.dst) else {
        return Err(PathDrop::UnknownPeer);
    };
    let Ok(flow) = FlowKey::from_ip_packet(&buf[start..end]) else {
        return Err(PathDrop::Malformed);
    };
    let Some(entry) = tables.peer(peer) else {
        return Err(PathDrop::UnknownPeer);
    };
    if ip.src != tables.local || !entry.selectors.iter().any(|s| s.matches(&flow)) {
        return Err(PathDrop::Policy);
    }
    let rule = vni_rule(entry, &ip, &flow, &buf[start..end])?;
    match rule {
        Some(r) if r.action == VniAction::Clear => {
            add(&r.counters.clear, 1);
            // Sent as it is: the whole IP packet, from the socket whose
            // mark the steering rules and the guard let pass.
            return Ok(Transmit {
                start,
                end,
                dst: SocketAddr::new(entry.underlay, 0),
                via: Via::Clear,
                peer,
            });
        }
        Some(r) if r.action == VniAction::Discard => {
            add(&r.counters.discarded, 1);
            return Err(PathDrop::Discarded);
        }
        _ => {}
    }
    // With several Child SAs, the one whose selectors cover the packet
    // (RFC 4301 section 5.1; a manual SA has none and covers all). The
    // peer's gateway selectors were checked above and match either port,
    // while a Child SA narrowed to `[udp/4789]` on both sides does not
    // cover a kernel vxlan device's per-flow source port: such a packet
    // goes with the first SA, as it did with one (see ARCHITECTURE.md).
    // With `layout = "split"` (`[udp] === [udp/4789]` and the reverse)
    // one of the two covers every such packet once both are up.
    //
    // Keys per network: a keyed VNI rule's packet goes only under the SA
    // bound to that rule, never under another's or a shared one, unless
    // the peer has no bound SA at all (it does not do keys per network:
    // the shared SA, as status says). Every other packet goes under the
    // shared (unbound) SAs, never a bound one.
    let keyed = rule.and_then(VniRule::binding);
    // Without keys per network every SA is shared: no search (and no
    // lock) needed to find where the bound ones start.
    let per_network = entry.vnis.iter().any(|p| p.rules.iter().any(|r| r.keyed));
    let shared_end = if per_network {
        entry.outbound.partition_point(|s| binding_of(s).is_none())
    } else {
        entry.outbound.len()
    };
    let chosen = match keyed {
        Some(b) if shared_end < entry.outbound.len() => {
            let bound = &entry.outbound[shared_end..];
            let at = bound.partition_point(|s| binding_of(s) < Some(b));
            bound[at..].first().and_then(|shared| {
                let sa = shared.lock().ok()?;
                (sa.binding() == Some(b)).then_some((shared, sa))
            })
        }
        _ => {
            let unbound = &entry.outbound[..shared_end];
            unbound
                .iter()
                .find_map(|shared| {
                    let sa = shared.lock().ok()?;
                    let covers = sa.selectors().is_empty()
                        || sa.selectors().iter().any(|s| s.matches_outbound(&flow));
                    covers.then_some((shared, sa))
                })
                .or_else(|| {
                    let first = unbound.first()?;
                    Some((first, first.lock().ok()?))
                })
        }
    };
    let Some((shared, sa)) = chosen else {
        return Err(PathDrop::NoSa);
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
                return Err(PathDrop::Malformed);
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
    seal(shared, sa, &mut pb, next_header, ctx.now)?;
    if let Some(r) = rule {
        add(&r.counters.sealed, 1);
    }
    Ok(Transmit {
        start: pb.start(),
        end: pb.end(),
        dst: tables.esp.destination(entry.underlay),
        via: Via::Esp,
        peer,
    })
}

/// An IP packet opened from a peer's ESP, for the TUN device:
/// `buf[start..end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unprotected {
    /// Where it starts.
    pub start: usize,
    /// Where it ends.
    pub end: usize,
    /// The peer it came from (an index into the tables' peers).
    pub peer: usize,
}

/// The IP packet an opened ESP payload carries.
fn packet_of(
    tables: &GatewayTables,
    opened: Opened<'_>,
    buf: &mut [u8],
) -> Result<Unprotected, PathDrop> {
    let Opened {
        peer,
        underlay,
        next_header,
        start: payload_start,
        end: payload_end,
        sa,
    } = opened;
    // Gateway selectors are the peer's, not the SA's.
    let binding = sa.binding();
    drop(sa);
    let (start, end) = match (tables.mode, IpProtocol::from(next_header)) {
        (GatewayMode::Tunnel, IpProtocol::Ipip | IpProtocol::Ipv6) => (payload_start, payload_end),
        (GatewayMode::Tunnel, _) => return Err(PathDrop::Policy),
        (GatewayMode::Transport, _) => {
            let start = rebuild_header(
                buf,
                payload_start,
                payload_end,
                underlay,
                tables.local,
                next_header,
            )
            .ok_or(PathDrop::Malformed)?;
            (start, payload_end)
        }
    };
    let Some(ip) = ip_info(&buf[start..end]).filter(|ip| ip.total_len == end - start) else {
        return Err(PathDrop::Malformed);
    };
    let Ok(flow) = FlowKey::from_ip_packet(&buf[start..end]) else {
        return Err(PathDrop::Malformed);
    };
    let Some(entry) = tables.peer(peer) else {
        return Err(PathDrop::UnknownSpi);
    };
    let selectors = &entry.selectors;
    if ip.src != underlay || ip.dst != tables.local || !selectors.iter().any(|s| s.matches(&flow)) {
        return Err(PathDrop::Policy);
    }
    // A `discard` VNI is dropped however it comes; a `clear` one may
    // come sealed (the peer may protect more than it must).
    let rule = vni_rule(entry, &ip, &flow, &buf[start..end])?;
    // Keys per network: an SA bound to a VNI rule opens only that rule's
    // packets; a keyed rule's packets open only under its SA (or a
    // shared one, from a peer without keys per network).
    let keyed = rule.and_then(VniRule::binding);
    let mismatch = match (binding, keyed) {
        (Some(b), k) => k != Some(b),
        (None, Some(_)) => entry
            .outbound
            .last()
            .is_some_and(|s| binding_of(s).is_some()),
        (None, None) => false,
    };
    if mismatch {
        if let Some(r) = rule {
            add(&r.counters.network_mismatch, 1);
        }
        return Err(PathDrop::NetworkMismatch);
    }
    if let Some(r) = rule {
        if r.action == VniAction::Discard {
            add(&r.counters.discarded, 1);
            return Err(PathDrop::Discarded);
        }
        add(&r.counters.opened, 1);
    }
    Ok(Unprotected { start, end, peer })
}

/// The binding of an SA (`None` for a shared one, or a poisoned lock).
fn binding_of(sa: &SharedSa) -> Option<u32> {
    sa.lock().ok().and_then(|sa| sa.binding())
}

/// The VNI rule of a UDP packet to one of the peer's tunnel ports
/// (`None` for other traffic); a tunnel header that does not parse is
/// `malformed`.
fn vni_rule<'a>(
    peer: &'a GatewayPeer,
    ip: &IpInfo,
    flow: &FlowKey,
    packet: &[u8],
) -> Result<Option<&'a VniRule>, PathDrop> {
    if peer.vnis.is_empty() || flow.protocol != u8::from(IpProtocol::Udp) {
        return Ok(None);
    }
    let Some(port) = flow.dst_port else {
        return Ok(None);
    };
    let payload = packet
        .get(ip.header_len + tunsec_wire::udp::HEADER_LEN..)
        .ok_or(PathDrop::Malformed)?;
    vni::classify(&peer.vnis, port, payload).map_err(|()| PathDrop::Malformed)
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
pub(crate) mod tests;
