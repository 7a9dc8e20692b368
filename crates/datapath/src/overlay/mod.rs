//! The overlay's per-packet logic, with no I/O: tunsec as the VTEP.
//!
//! Outbound, a frame read from a network's TAP device is wrapped in the
//! network's tunnel header and, by the peer's policy, either protected with
//! ESP or sent in the clear. ESP follows the mode of the peer's outbound
//! SA: in transport mode the payload is the tunnel's UDP datagram (next
//! header 17); in tunnel mode (RFC 4303 section 3.1.2) it is a whole inner
//! IP packet between the two underlay addresses that carries that datagram
//! (next header 4 or 41):
//!
//! ```text
//! transport: [UDP 4500 | ] ESP hdr | IV |           UDP 4789 | VXLAN | frame | pad | trailer | ICV
//! tunnel:    [UDP 4500 | ] ESP hdr | IV | inner IP | UDP 4789 | VXLAN | frame | pad | trailer | ICV
//! clear:                                            UDP 4789 | VXLAN | frame
//! ```
//!
//! The kernel adds the outer IP (and, for ESP in UDP, the outer UDP)
//! header when the worker sends through a socket. Inbound runs the steps in
//! reverse: in tunnel mode the inner IP header must be the peer's tunnel
//! traffic to us ([`check_inner_header`]), and in either mode the
//! decrypted datagram must match the SA's traffic selectors (RFC 4301
//! section 5.2) and be tunnel traffic of a network the SA's peer carries.
//!
//! Selectors narrowed to the overlay's ports (`[udp/4789] <->
//! [udp/4789]`, `[peer.ike] selectors = "ports"`) cover only datagrams
//! whose source port is the tunnel port too, so under such an SA a
//! datagram leaves from the tunnel port instead of a per-flow entropy
//! port ([`source_port`]). Inside ESP in UDP the entropy is invisible to
//! the underlay anyway: the outer ports are the ESP-in-UDP ports.
//!
//! Everything works in place in a caller-owned buffer with headroom.

use std::net::{IpAddr, SocketAddr};

use tunsec_esp::{FlowKey, Mode, PacketBuf, Selector};
use tunsec_wire::ethernet::{self, EthernetAddress};
use tunsec_wire::ip::IpProtocol;
use tunsec_wire::vxlan::Vni;
use tunsec_wire::{geneve, gue, ipv4, ipv6, udp, vxlan};

use crate::esp_rx::{Inbound, Opened};
use crate::fast_map::FastMap;
use crate::fdb::Fdb;
use crate::packet::{Ctx, EspTransport, Transmit, Via, canonical, seal};
use crate::shared_sa::{InboundEntry, SharedSa};
use crate::stats::{PathDrop, Stats, add};

pub mod encrypted_vxlan;
mod inner;

pub use inner::check_inner_header;
use inner::push_inner_header;

/// The IP protocol number for Ethernet, which GUE carries in its
/// proto/ctype field for a frame (IANA "Ethernet", RFC 8986).
pub const GUE_PROTO_ETHERNET: u8 = 143;

/// The tunnel format of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelEncap {
    /// VXLAN, RFC 7348.
    Vxlan,
    /// Geneve, RFC 8926.
    Geneve,
    /// GUE variant 0.
    Gue,
}

impl TunnelEncap {
    /// The header length this host emits (no options or extensions).
    pub const fn header_len(self) -> usize {
        match self {
            Self::Vxlan => vxlan::HEADER_LEN,
            Self::Geneve => geneve::HEADER_LEN,
            Self::Gue => gue::HEADER_LEN,
        }
    }
}

/// The worst-case growth of a frame on its way to the underlay: outer IP,
/// the UDP of ESP in UDP, the ESP header, the largest IV (16, CBC), the
/// largest padding (15), the trailer (2) and ICV (16), with `tunnel_mode`
/// the inner IP header (RFC 4303 section 3.1.2), the tunnel's UDP header
/// and the tunnel header. Whatever the suite, a frame of at most
/// `underlay_mtu - frame_overhead(..)` bytes fits in one underlay packet.
pub const fn frame_overhead(
    ipv6: bool,
    esp: EspTransport,
    encap: TunnelEncap,
    tunnel_mode: bool,
) -> usize {
    let ip = if ipv6 {
        ipv6::HEADER_LEN
    } else {
        ipv4::HEADER_LEN
    };
    let esp_udp = match esp {
        EspTransport::Udp(_) => udp::HEADER_LEN,
        EspTransport::Raw => 0,
    };
    let esp = tunsec_wire::esp::HEADER_LEN + 16 + 15 + tunsec_wire::esp::TRAILER_LEN + 16;
    let inner_ip = if tunnel_mode { ip } else { 0 };
    ip + esp_udp + esp + inner_ip + udp::HEADER_LEN + encap.header_len()
}

/// What a peer's traffic on one network must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// ESP or nothing.
    Require,
    /// ESP if an SA is usable, else the clear.
    Prefer,
    /// Cleartext only.
    Clear,
}

/// A virtual network.
#[derive(Debug, Clone)]
pub struct NetworkSpec {
    /// Its name.
    pub name: String,
    /// Its VNI.
    pub vni: u32,
    /// Its tunnel format.
    pub encap: TunnelEncap,
    /// Its tunnel UDP port.
    pub port: u16,
    /// The largest frame (Ethernet header included) it carries.
    pub max_frame: usize,
    /// Where ESP goes in its packets.
    pub layout: EspLayout,
}

/// Where ESP goes in a network's packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum EspLayout {
    /// ESP in UDP on the ESP port, the whole tunnel datagram inside (the
    /// default; what strongSwan and the kernel speak).
    #[default]
    EspInUdp,
    /// The Encrypted VXLAN layout, tunsec to tunsec only: the tunnel
    /// datagram on the tunnel port with its VXLAN header (and VNI) in the
    /// clear, then ESP sealing the frame ([`encrypted_vxlan`]).
    EncryptedVxlan,
}

/// A peer host.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    /// Its name.
    pub name: String,
    /// Its underlay address.
    pub underlay: IpAddr,
    /// The networks it carries (indices into the network list), each with
    /// its policy.
    pub networks: Vec<(usize, Policy)>,
}

/// A peer with its SAs.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    /// The peer.
    pub spec: PeerSpec,
    /// Its outbound SAs, one per Child SA (or the manual one). A datagram
    /// goes out with the first whose selectors cover it (RFC 4301 section
    /// 5.1); empty: no SA yet.
    pub outbound: Vec<SharedSa>,
}

/// An immutable snapshot of everything the workers look up. The control
/// plane builds a new one and publishes it (read-copy-update, with
/// `arc-swap`), so a change never stalls a packet.
#[derive(Debug, Clone)]
pub struct Tables {
    /// This host's underlay address.
    pub local: IpAddr,
    /// How ESP travels.
    pub esp: EspTransport,
    /// The networks.
    pub networks: Vec<NetworkSpec>,
    /// The peers.
    pub peers: Vec<PeerEntry>,
    /// Inbound SAs by SPI.
    pub inbound: FastMap<u32, InboundEntry>,
    /// For each network, the peers that carry it.
    pub peers_of_network: Vec<Vec<usize>>,
    peer_by_addr: FastMap<IpAddr, usize>,
    network_by_port_vni: FastMap<(u16, u32), usize>,
    /// Each peer's outbound SAs' bindings, in their order
    /// ([`Self::order_outbound`]): searched without taking the SAs' locks.
    outbound_bindings: Vec<Vec<Option<u32>>>,
    /// The most peers any network has (a flooded frame's fan-out).
    max_fanout: usize,
}

impl Tables {
    /// Builds the lookup tables.
    pub fn new(
        local: IpAddr,
        esp: EspTransport,
        networks: Vec<NetworkSpec>,
        peers: Vec<PeerEntry>,
        inbound: FastMap<u32, InboundEntry>,
    ) -> Self {
        let mut peers_of_network = vec![Vec::new(); networks.len()];
        for (p, peer) in peers.iter().enumerate() {
            for &(n, _) in &peer.spec.networks {
                if let Some(list) = peers_of_network.get_mut(n) {
                    list.push(p);
                }
            }
        }
        let peer_by_addr = peers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.spec.underlay, i))
            .collect();
        let network_by_port_vni = networks
            .iter()
            .enumerate()
            .map(|(i, n)| ((n.port, n.vni), i))
            .collect();
        let mut tables = Self {
            local,
            esp,
            networks,
            peers,
            inbound,
            peers_of_network,
            peer_by_addr,
            network_by_port_vni,
            outbound_bindings: Vec::new(),
            max_fanout: 0,
        };
        tables.order_outbound();
        tables.count_fanout();
        tables
    }

    /// The most peers any network has: the buffers a flooded frame needs.
    pub fn max_fanout(&self) -> usize {
        self.max_fanout
    }

    fn count_fanout(&mut self) {
        self.max_fanout = self
            .peers_of_network
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(0);
    }

    /// Orders each peer's outbound SAs by the network they are bound to,
    /// the unbound ones first, each group in the order it had: so that
    /// [`encapsulate`] finds a network's SAs by binary search among
    /// thousands (keys per network). Done after every change of the SAs
    /// ([`crate::sa_store::SaTables::sas_changed`]).
    pub fn order_outbound(&mut self) {
        for p in &mut self.peers {
            p.outbound.sort_by_key(binding_of);
        }
        self.outbound_bindings = self
            .peers
            .iter()
            .map(|p| p.outbound.iter().map(binding_of).collect())
            .collect();
    }

    /// The peer with this underlay address.
    pub fn peer_by_addr(&self, addr: IpAddr) -> Option<usize> {
        self.peer_by_addr.get(&canonical(addr)).copied()
    }

    /// Whether `slot` holds a peer. A peer removed at run time leaves its
    /// slot vacant (no networks, no address leads to it) until the next
    /// one added: the IKE driver, the FDB and the inbound SAs name peers
    /// by slot.
    pub fn is_occupied(&self, slot: usize) -> bool {
        self.peers
            .get(slot)
            .is_some_and(|p| self.peer_by_addr.get(&p.spec.underlay) == Some(&slot))
    }

    /// Puts `peer` into `slot` (growing the table with vacant slots if
    /// needed), replacing what was there; `Err` with the slot that holds
    /// a peer at the same address already.
    pub fn insert_peer(&mut self, slot: usize, peer: PeerEntry) -> Result<(), usize> {
        let addr = canonical(peer.spec.underlay);
        if let Some(&other) = self.peer_by_addr.get(&addr) {
            if other != slot {
                return Err(other);
            }
        }
        self.remove_peer(slot);
        while self.peers.len() <= slot {
            self.peers.push(PeerEntry {
                spec: PeerSpec {
                    name: String::new(),
                    underlay: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                    networks: Vec::new(),
                },
                outbound: Vec::new(),
            });
        }
        for &(n, _) in &peer.spec.networks {
            if let Some(list) = self.peers_of_network.get_mut(n) {
                list.push(slot);
            }
        }
        self.peer_by_addr.insert(addr, slot);
        self.peers[slot] = peer;
        self.count_fanout();
        self.order_outbound();
        Ok(())
    }

    /// Empties `slot`: its address leads nowhere, it carries no network,
    /// and its SAs go.
    pub fn remove_peer(&mut self, slot: usize) {
        if !self.is_occupied(slot) {
            return;
        }
        let addr = canonical(self.peers[slot].spec.underlay);
        self.peer_by_addr.remove(&addr);
        for list in &mut self.peers_of_network {
            list.retain(|&p| p != slot);
        }
        self.count_fanout();
        let vacant = &mut self.peers[slot];
        vacant.spec.name.clear();
        vacant.spec.networks.clear();
        vacant.outbound.clear();
        self.inbound.retain(|_, e| e.peer != slot);
    }

    /// The policy of a peer for a network, if it carries it.
    pub fn policy(&self, peer: usize, network: usize) -> Option<Policy> {
        let networks = &self.peers.get(peer)?.spec.networks;
        // Usually in network order (the config's): a binary search; a
        // list in another order is walked.
        match networks.binary_search_by_key(&network, |&(n, _)| n) {
            Ok(i) => Some(networks[i].1),
            Err(_) => networks
                .iter()
                .find(|&&(n, _)| n == network)
                .map(|&(_, p)| p),
        }
    }

    /// The tunnel format of the networks on tunnel port `port`.
    fn encap_of_port(&self, port: u16) -> Option<TunnelEncap> {
        self.networks
            .iter()
            .find(|n| n.port == port)
            .map(|n| n.encap)
    }

    /// The distinct tunnel ports, with their encapsulation.
    pub fn tunnel_ports(&self) -> Vec<(u16, TunnelEncap)> {
        let mut ports: Vec<(u16, TunnelEncap)> =
            self.networks.iter().map(|n| (n.port, n.encap)).collect();
        ports.sort_by_key(|p| p.0);
        ports.dedup();
        ports
    }
}

/// The peers a frame goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// One known peer.
    Unicast(usize),
    /// Every peer of the network (broadcast, multicast, unknown unicast):
    /// head-end replication.
    Flood,
    /// Nobody (no peer carries the network).
    None,
}

/// The overlay's per-packet context: its tables and forwarding database.
pub type OverlayCtx<'a> = Ctx<'a, Tables, Fdb>;

impl Inbound for Tables {
    type Fdb = Fdb;
    type Payload = Delivery;

    fn inbound(&self) -> &FastMap<u32, InboundEntry> {
        &self.inbound
    }

    fn peer_underlay(&self, peer: usize) -> Option<IpAddr> {
        self.peers.get(peer).map(|p| p.spec.underlay)
    }

    fn peer_by_addr(&self, addr: IpAddr) -> Option<usize> {
        Self::peer_by_addr(self, addr)
    }

    /// The frame inside an opened ESP payload. It must be the peer's
    /// tunnel traffic: UDP (in tunnel mode behind the inner IP header,
    /// [`check_inner_header`]) inside the SA's negotiated selectors (RFC
    /// 4301 section 5.2), to the tunnel port of a network the peer
    /// carries.
    fn accept(
        ctx: &OverlayCtx<'_>,
        opened: Opened<'_>,
        buf: &mut [u8],
    ) -> Result<Delivery, PathDrop> {
        deliver_opened(ctx, opened, buf)
    }
}

/// Decides where a frame read from network `net`'s TAP goes.
pub fn targets(ctx: &OverlayCtx<'_>, net: usize, frame: &[u8]) -> Targets {
    let (tables, fdb, now) = (ctx.tables, ctx.fdb, ctx.now);
    let Some(dst) = EthernetAddress::from_bytes(frame.get(..6).unwrap_or(&[])) else {
        return Targets::None;
    };
    if dst.is_unicast() {
        if let Some(peer) = fdb.lookup(net, dst, now) {
            return Targets::Unicast(peer);
        }
    }
    match tables.peers_of_network.get(net) {
        Some(list) if !list.is_empty() => Targets::Flood,
        _ => Targets::None,
    }
}

/// The tunnel's UDP source port for a frame: RFC 7348 section 5 asks
/// for "a hash of fields from the inner packet", in the dynamic range
/// 49152-65535, so that the underlay spreads flows over its paths while
/// each flow keeps to one.
///
/// The hash (FNV-1a) covers what names the flow and nothing that changes
/// from packet to packet: the Ethernet addresses and type and, for IPv4
/// and IPv6, the protocol, the addresses and the TCP, UDP or SCTP ports
/// (not of a non-first IPv4 fragment, which has none). The segments of one
/// TSO super-frame differ in IP ID, length, checksum and TCP sequence
/// number, and must not land on different paths.
fn entropy_port(frame: &[u8]) -> u16 {
    const IPV4: [u8; 2] = [0x08, 0x00];
    const IPV6: [u8; 2] = [0x86, 0xdd];
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    let eth = ethernet::HEADER_LEN;
    feed(frame.get(..eth).unwrap_or(frame));
    let ip = frame.get(eth..).unwrap_or(&[]);
    let has_ports = |proto: u8| matches!(proto, 6 | 17 | 132);
    match frame.get(12..14) {
        Some(t) if t == IPV4 && ip.len() >= 20 => {
            let (proto, ihl) = (ip[9], usize::from(ip[0] & 0x0f) * 4);
            feed(&[proto]);
            feed(&ip[12..20]);
            let first_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff == 0;
            if has_ports(proto) && first_fragment {
                feed(ip.get(ihl..ihl + 4).unwrap_or(&[]));
            }
        }
        Some(t) if t == IPV6 && ip.len() >= 40 => {
            let next = ip[6];
            feed(&[next]);
            feed(&ip[8..40]);
            if has_ports(next) {
                feed(ip.get(40..44).unwrap_or(&[]));
            }
        }
        _ => {}
    }
    49152 | (h as u16 & 0x3fff)
}

/// The UDP source port of a tunnel datagram from `local` to `remote`'s
/// tunnel `port`, sealed with an SA whose traffic selectors are
/// `selectors`: the flow's `entropy` port when they allow it (host to
/// host with any port, or no selectors at all, as manual SAs have), else
/// the tunnel port itself, which selectors narrowed to the overlay's ports
/// (`local[udp/P] <-> remote[udp/P]`) require. `None` when they allow
/// neither: the SA does not cover this network's tunnel port.
pub fn source_port(
    selectors: &[Selector],
    local: IpAddr,
    remote: IpAddr,
    entropy: u16,
    port: u16,
) -> Option<u16> {
    if selectors.is_empty() {
        return Some(entropy);
    }
    let allows = |src_port| {
        let flow = FlowKey {
            src: local,
            dst: canonical(remote),
            protocol: IpProtocol::Udp.into(),
            src_port: Some(src_port),
            dst_port: Some(port),
        };
        selectors.iter().any(|s| s.matches_outbound(&flow))
    };
    [entropy, port].into_iter().find(|&p| allows(p))
}

/// Wraps the frame at `buf[start..end]` for `peer` on network `net`, in
/// place, and says where to send it. An ESP failure is also counted on
/// the SA.
pub fn encapsulate(
    ctx: &OverlayCtx<'_>,
    net: usize,
    peer: usize,
    buf: &mut [u8],
    start: usize,
    end: usize,
) -> Result<Transmit, PathDrop> {
    let tables = ctx.tables;
    let Some(network) = tables.networks.get(net) else {
        return Err(PathDrop::Policy);
    };
    let Some(entry) = tables.peers.get(peer) else {
        return Err(PathDrop::UnknownPeer);
    };
    let Some(policy) = tables.policy(peer, net) else {
        return Err(PathDrop::Policy);
    };
    let frame_len = end - start;
    if frame_len > network.max_frame {
        return Err(PathDrop::TooBig);
    }
    if frame_len < ethernet::HEADER_LEN {
        return Err(PathDrop::Malformed);
    }
    let port = entropy_port(&buf[start..end]);
    let hlen = network.encap.header_len();
    if start < hlen + udp::HEADER_LEN {
        return Err(PathDrop::Malformed);
    }
    let tunnel_start = start - hlen;
    emit_tunnel_header(network, &mut buf[tunnel_start..start]);

    match (policy, entry.outbound.is_empty()) {
        (Policy::Clear, _) | (Policy::Prefer, true) => {
            return Ok(clear_transmit(network, entry, peer, tunnel_start, end));
        }
        (Policy::Require, true) => return Err(PathDrop::NoSa),
        _ => {}
    }
    // RFC 4301 section 5.1: what an SA carries must lie within its
    // selectors; port-narrowed ones need the tunnel port as source. With
    // one Child SA per tunnel port, this picks the network's. With keys
    // per network, the SA bound to this network, else an unbound (shared)
    // one; never another network's.
    let pick = |bound: Option<u32>| {
        // Ordered by binding (`Tables::order_outbound`), which the tables
        // keep beside them, so the search takes no lock; the SA's own
        // binding is checked again under its lock.
        let from = match tables.outbound_bindings.get(peer) {
            Some(b) if b.len() == entry.outbound.len() => b.partition_point(|&x| x < bound),
            _ => entry.outbound.partition_point(|s| binding_of(s) < bound),
        };
        entry.outbound[from..].iter().find_map(|shared| {
            let sa = shared.lock().ok()?;
            if sa.binding() != bound {
                return None;
            }
            let port = source_port(
                sa.selectors(),
                tables.local,
                entry.spec.underlay,
                port,
                network.port,
            )?;
            Some((shared, sa, port))
        })
    };
    let chosen = u32::try_from(net)
        .ok()
        .and_then(|n| pick(Some(n)))
        .or_else(|| pick(None));
    let Some((shared, sa, port)) = chosen else {
        // Keys per network, and none for this one yet: `prefer` sends it
        // in the clear, `require` drops it.
        let bound = entry
            .outbound
            .iter()
            .any(|s| s.lock().is_ok_and(|sa| sa.binding().is_some()));
        return match (bound, policy) {
            (true, Policy::Prefer) => Ok(clear_transmit(network, entry, peer, tunnel_start, end)),
            (true, _) => Err(PathDrop::NoSa),
            (false, _) => Err(PathDrop::Selector),
        };
    };
    // Under `prefer` an SA that can no longer be used means the clear;
    // under `require` it means the packet is dropped (the SA counts why).
    if policy == Policy::Prefer && !sa.is_usable() {
        drop(sa);
        return Ok(clear_transmit(network, entry, peer, tunnel_start, end));
    }

    if network.layout == EspLayout::EncryptedVxlan {
        return encrypted_vxlan::seal_frame(
            ctx,
            net,
            network,
            entry,
            peer,
            (shared, sa),
            buf,
            start,
            end,
        );
    }
    // The tunnel's UDP header, which ESP protects.
    let udp_start = tunnel_start - udp::HEADER_LEN;
    let udp_len = end - udp_start;
    {
        let mut u = udp::Packet::new_unchecked(&mut buf[udp_start..end]);
        udp::Repr {
            src_port: port,
            dst_port: network.port,
            payload_len: udp_len - udp::HEADER_LEN,
        }
        .emit(&mut u);
        // RFC 7348 section 5: over IPv4 the checksum SHOULD be zero. IPv6
        // needs a real one (RFC 8200 section 8.1).
        if tables.local.is_ipv6() && u.fill_checksum(tables.local, entry.spec.underlay).is_err() {
            return Err(PathDrop::Malformed);
        }
    }
    // Tunnel mode: the inner IP header goes in front of the datagram.
    let (payload_start, next_header) = match sa.mode() {
        Mode::Transport => (udp_start, IpProtocol::Udp),
        Mode::Tunnel { .. } => {
            push_inner_header(buf, udp_start, end, tables.local, entry.spec.underlay)
                .ok_or(PathDrop::Malformed)?
        }
    };
    let mut pb = PacketBuf::new(buf, payload_start, end);
    seal(shared, sa, &mut pb, next_header.into(), ctx.now)?;
    Ok(Transmit {
        start: pb.start(),
        end: pb.end(),
        dst: tables.esp.destination(entry.spec.underlay),
        via: Via::Esp,
        peer,
    })
}

/// The network an SA is bound to (`None` for a shared one, or a poisoned
/// lock).
fn binding_of(sa: &SharedSa) -> Option<u32> {
    sa.lock().ok().and_then(|sa| sa.binding())
}

/// The cleartext tunnel datagram `buf[start..end]` to peer `index`'s
/// tunnel port.
fn clear_transmit(
    network: &NetworkSpec,
    peer: &PeerEntry,
    index: usize,
    start: usize,
    end: usize,
) -> Transmit {
    Transmit {
        start,
        end,
        dst: SocketAddr::new(peer.spec.underlay, network.port),
        via: Via::Tunnel(network.port),
        peer: index,
    }
}

pub(crate) fn emit_tunnel_header(network: &NetworkSpec, out: &mut [u8]) {
    // The VNI was validated against 24 bits when the tables were built.
    let vni = Vni::new(network.vni).unwrap_or_default();
    match network.encap {
        TunnelEncap::Vxlan => {
            vxlan::Repr { vni }.emit(&mut vxlan::Packet::new_unchecked(out));
        }
        TunnelEncap::Geneve => geneve::Repr {
            vni,
            oam: false,
            critical: false,
            protocol_type: geneve::PROTOCOL_ETHERNET,
            options_len: 0,
        }
        .emit(&mut geneve::Packet::new_unchecked(out)),
        TunnelEncap::Gue => gue::Repr {
            control: false,
            proto_ctype: GUE_PROTO_ETHERNET,
            flags: 0,
            ext_len: 0,
        }
        .emit(&mut gue::Packet::new_unchecked(out)),
    }
}

/// A frame to write to a network's TAP device: `buf[start..end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The network index.
    pub net: usize,
    /// The first byte of the frame.
    pub start: usize,
    /// One past its last byte.
    pub end: usize,
}

/// The frame inside an opened ESP payload.
fn deliver_opened(
    ctx: &OverlayCtx<'_>,
    opened: Opened<'_>,
    buf: &[u8],
) -> Result<Delivery, PathDrop> {
    let tables = ctx.tables;
    let Opened {
        peer,
        underlay,
        next_header,
        mut start,
        end,
        mut sa,
    } = opened;
    // The Encrypted VXLAN layout: the payload is the frame itself.
    if next_header == encrypted_vxlan::NEXT_HEADER_ETHERNET {
        let binding = sa.binding();
        drop(sa);
        let d = encrypted_vxlan::frame_of(tables, peer, binding, start, end)?;
        learn(ctx, buf, d, peer);
        return Ok(d);
    }
    match sa.mode() {
        // The SA's implicit selectors: UDP to one of the networks this
        // peer carries, tunnel format matching that network.
        Mode::Transport => {
            if next_header != u8::from(IpProtocol::Udp) {
                return Err(PathDrop::Policy);
            }
        }
        //= https://www.rfc-editor.org/rfc/rfc4303#section-3.1.2
        //# In tunnel mode, the "inner" IP header carries the ultimate
        //# (IP) source and destination addresses
        Mode::Tunnel { .. } => {
            start += check_inner_header(&buf[start..end], next_header, tables.local, underlay)?;
        }
    }
    let Ok(u) = udp::Packet::new_checked(&buf[start..end]) else {
        return Err(PathDrop::Malformed);
    };
    let dst_port = u.dst_port();
    let udp_end = start + usize::from(u.len());
    let payload_start = start + udp::HEADER_LEN;
    // RFC 4301 section 5.2, step 4: the decrypted datagram must match the
    // SA's negotiated selectors. Its addresses are the peer's underlay to
    // ours (the ESP's source was checked when it was opened; in tunnel
    // mode, the inner header too); its ports are the datagram's. An SA
    // without selectors (manual keys) has only the implicit checks around
    // this one.
    let flow = FlowKey {
        src: underlay,
        dst: tables.local,
        protocol: IpProtocol::Udp.into(),
        src_port: Some(u.src_port()),
        dst_port: Some(dst_port),
    };
    if sa.check_inbound(&flow).is_err() {
        return Err(PathDrop::Selector);
    }
    let binding = sa.binding();
    drop(sa);
    let Some(encap) = tables.encap_of_port(dst_port) else {
        return Err(PathDrop::Policy);
    };
    let delivery = decapsulate(tables, encap, dst_port, buf, payload_start, udp_end);
    // Keys per network: an SA bound to a network opens only its frames,
    // whatever the (authenticated) tunnel header inside says.
    let delivery = match (binding, delivery) {
        (Some(b), Ok(d)) if usize::try_from(b).ok() != Some(d.net) => {
            if let Some(c) = ctx.stats.network(d.net) {
                add(&c.network_mismatch, 1);
            }
            return Err(PathDrop::NetworkMismatch);
        }
        (Some(_), Err(PathDrop::UnknownVni)) => return Err(PathDrop::NetworkMismatch),
        (_, d) => d?,
    };
    if tables.policy(peer, delivery.net).is_none() {
        return Err(PathDrop::Policy);
    }
    learn(ctx, buf, delivery, peer);
    Ok(delivery)
}

/// Handles a cleartext tunnel datagram from `src` that arrived on `port`:
/// accepted only if the peer's policy for that network allows the clear.
///
/// On a network of the Encrypted VXLAN layout, what follows the VXLAN
/// header is ESP, opened here (the [`encrypted_vxlan`] module).
pub fn receive_clear(
    ctx: &OverlayCtx<'_>,
    src: IpAddr,
    port: u16,
    buf: &mut [u8],
    start: usize,
    end: usize,
) -> Result<Delivery, PathDrop> {
    let tables = ctx.tables;
    let Some(peer) = tables.peer_by_addr(src) else {
        return Err(PathDrop::UnknownPeer);
    };
    let Some(encap) = tables.encap_of_port(port) else {
        return Err(PathDrop::UnknownVni);
    };
    let delivery = decapsulate(tables, encap, port, buf, start, end)?;
    if tables.networks[delivery.net].layout == EspLayout::EncryptedVxlan {
        return encrypted_vxlan::open(ctx, src, delivery, buf);
    }
    match tables.policy(peer, delivery.net) {
        Some(Policy::Clear | Policy::Prefer) => {}
        Some(Policy::Require) => return Err(PathDrop::ClearRefused),
        None => return Err(PathDrop::Policy),
    }
    learn(ctx, buf, delivery, peer);
    Ok(delivery)
}

/// Learns the frame's source MAC address behind `peer`.
pub(crate) fn learn(ctx: &OverlayCtx<'_>, buf: &[u8], d: Delivery, peer: usize) {
    if let Some(src) =
        EthernetAddress::from_bytes(buf.get(d.start + 6..d.start + 12).unwrap_or(&[]))
    {
        ctx.fdb.learn(d.net, src, peer, ctx.now);
    }
}

/// Parses the tunnel header at `buf[start..end]` and finds the network.
fn decapsulate(
    tables: &Tables,
    encap: TunnelEncap,
    port: u16,
    buf: &[u8],
    start: usize,
    end: usize,
) -> Result<Delivery, PathDrop> {
    let payload = &buf[start..end];
    let (vni, header_len) = match encap {
        TunnelEncap::Vxlan => {
            let Ok(p) = vxlan::Packet::new_checked(payload) else {
                return Err(PathDrop::Malformed);
            };
            let Ok(repr) = vxlan::Repr::parse(&p) else {
                return Err(PathDrop::Malformed);
            };
            (repr.vni.get(), vxlan::HEADER_LEN)
        }
        TunnelEncap::Geneve => {
            let Ok(p) = geneve::Packet::new_checked(payload) else {
                return Err(PathDrop::Malformed);
            };
            let Ok(repr) = geneve::Repr::parse(&p) else {
                return Err(PathDrop::Malformed);
            };
            if repr.protocol_type != geneve::PROTOCOL_ETHERNET || repr.oam {
                return Err(PathDrop::Unsupported);
            }
            //= https://www.rfc-editor.org/rfc/rfc8926#section-3.5
            //# If a tunnel endpoint receives a Geneve packet with an option
            //# that it does not recognize and the C bit is set, it MUST drop
            //# the packet.
            // This host knows no options, so any critical one is unknown.
            if repr.critical {
                return Err(PathDrop::Unsupported);
            }
            (repr.vni.get(), p.header_len())
        }
        TunnelEncap::Gue => {
            let Ok(p) = gue::Packet::new_checked(payload) else {
                return Err(PathDrop::Malformed);
            };
            let Ok(repr) = gue::Repr::parse(&p) else {
                return Err(PathDrop::Malformed);
            };
            if repr.control || repr.proto_ctype != GUE_PROTO_ETHERNET {
                return Err(PathDrop::Unsupported);
            }
            (0, p.header_len())
        }
    };
    let net = match encap {
        TunnelEncap::Gue => tables
            .networks
            .iter()
            .position(|n| n.port == port && n.encap == TunnelEncap::Gue),
        _ => tables.network_by_port_vni.get(&(port, vni)).copied(),
    };
    let Some(net) = net else {
        return Err(PathDrop::UnknownVni);
    };
    let frame_start = start + header_len;
    if end - frame_start < ethernet::HEADER_LEN {
        return Err(PathDrop::Malformed);
    }
    Ok(Delivery {
        net,
        start: frame_start,
        end,
    })
}

/// Counts a frame sent on a network.
pub fn count_tx(stats: &Stats, net: usize, bytes: usize, flooded: bool) {
    if let Some(c) = stats.network(net) {
        add(&c.tx_frames, 1);
        add(&c.tx_bytes, bytes as u64);
        if flooded {
            add(&c.flooded, 1);
        }
    }
}

/// Counts a frame delivered on a network.
pub fn count_rx(stats: &Stats, net: usize, bytes: usize) {
    if let Some(c) = stats.network(net) {
        add(&c.rx_frames, 1);
        add(&c.rx_bytes, bytes as u64);
    }
}

#[cfg(test)]
mod tests;
