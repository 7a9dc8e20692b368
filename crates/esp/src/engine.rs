//! The SPD, the outbound SAs and the SAD together: the whole of RFC 4301's
//! per-packet processing for IP packets, sans IO.

use std::collections::BTreeMap;
use std::time::Instant;

use tunsec_wire::ip::IpProtocol;
use tunsec_wire::{ipv4, ipv6, natt, udp};

use crate::Error;
use crate::buf::PacketBuf;
use crate::counters::{DropCounters, DropReason};
use crate::sa::{Direction, Sa};
use crate::sad::Sad;
use crate::selector::FlowKey;
use crate::spd::{Action, SaId, Spd};

/// What happened to an outbound packet that was not dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// It was sealed with this SA and is ready to send.
    Protected(SaId),
    /// A bypass policy let it through in the clear, unchanged.
    Bypass,
}

/// What happened to an inbound packet that was not dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// It was ESP for this inbound SPI and is now the decrypted packet.
    Decrypted(u32),
    /// It came in the clear and a bypass policy accepts it, unchanged.
    Bypass,
    /// It is an IKE message on the ESP-in-UDP port (RFC 3948 non-ESP
    /// marker): hand it to the control plane.
    Ike,
    /// It is a NAT keepalive: nothing to do.
    Keepalive,
}

/// An SPD with the SAs it points to.
#[derive(Debug)]
pub struct Engine {
    spd: Spd,
    outbound: BTreeMap<SaId, Sa>,
    sad: Sad,
    next_id: u32,
    udp_encap_port: u16,
    drops: DropCounters,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    /// An engine with an empty SPD (everything is discarded) that expects
    /// ESP in UDP on port 4500.
    pub fn new() -> Self {
        Self {
            spd: Spd::new(),
            outbound: BTreeMap::new(),
            sad: Sad::new(),
            next_id: 1,
            udp_encap_port: natt::PORT,
            drops: DropCounters::default(),
        }
    }

    /// Sets the UDP port on which inbound ESP in UDP arrives.
    pub fn set_udp_encap_port(&mut self, port: u16) {
        self.udp_encap_port = port;
    }

    /// The SPD.
    pub fn spd(&self) -> &Spd {
        &self.spd
    }

    /// The SPD, to change.
    pub fn spd_mut(&mut self) -> &mut Spd {
        &mut self.spd
    }

    /// The inbound SAs.
    pub fn sad(&self) -> &Sad {
        &self.sad
    }

    /// Adds an inbound SA.
    pub fn add_inbound(&mut self, sa: Sa) -> Result<(), Error> {
        self.sad.insert(sa)
    }

    /// Removes an inbound SA.
    pub fn remove_inbound(&mut self, spi: u32) -> Option<Sa> {
        self.sad.remove(spi)
    }

    /// Adds an outbound SA and returns the handle policies use for it.
    pub fn add_outbound(&mut self, sa: Sa) -> Result<SaId, Error> {
        if sa.direction() != Direction::Outbound {
            return Err(Error::Direction {
                spi: sa.spi(),
                expected: Direction::Outbound,
            });
        }
        let id = SaId(self.next_id);
        self.next_id += 1;
        self.outbound.insert(id, sa);
        Ok(id)
    }

    /// Removes an outbound SA. Policies that point to it now drop.
    pub fn remove_outbound(&mut self, id: SaId) -> Option<Sa> {
        self.outbound.remove(&id)
    }

    /// An outbound SA.
    pub fn outbound_sa(&self, id: SaId) -> Option<&Sa> {
        self.outbound.get(&id)
    }

    /// Every outbound SA with its handle.
    pub fn outbound_sas(&self) -> impl Iterator<Item = (SaId, &Sa)> {
        self.outbound.iter().map(|(&id, sa)| (id, sa))
    }

    /// Drops counted by the engine itself, before any SA was involved (no
    /// SA, policy, malformed). Each SA counts its own drops.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    fn drop(&mut self, reason: DropReason) -> DropReason {
        self.drops.incr(reason);
        reason
    }

    /// Processes an IP packet this host is about to send: by the first
    /// matching policy it is sealed, let through, or dropped.
    ///
    /// A packet that a protect policy selects is never returned in the
    /// clear: without a usable SA it is dropped.
    pub fn outbound(
        &mut self,
        buf: &mut PacketBuf<'_>,
        now: Instant,
    ) -> Result<Outbound, DropReason> {
        let Ok(flow) = FlowKey::from_ip_packet(buf.data()) else {
            return Err(self.drop(DropReason::Malformed));
        };
        match self.spd.action_outbound(&flow) {
            Action::Bypass => Ok(Outbound::Bypass),
            Action::Discard => Err(self.drop(DropReason::Policy)),
            Action::Protect(None) => Err(self.drop(DropReason::NoSa)),
            Action::Protect(Some(id)) => match self.outbound.get_mut(&id) {
                // The SA counts its own drops (expired, no room...).
                Some(sa) => sa.seal(buf, now).map(|()| Outbound::Protected(id)),
                None => Err(self.drop(DropReason::NoSa)),
            },
        }
    }

    /// Processes an IP packet this host received: ESP is opened by the SA
    /// its SPI names, cleartext is checked against the SPD.
    pub fn inbound(
        &mut self,
        buf: &mut PacketBuf<'_>,
        now: Instant,
    ) -> Result<Inbound, DropReason> {
        let spi = match self.classify_inbound(buf.data()) {
            Ok(Classified::Esp(spi)) => spi,
            Ok(Classified::Ike) => return Ok(Inbound::Ike),
            Ok(Classified::Keepalive) => return Ok(Inbound::Keepalive),
            Ok(Classified::Clear) => {
                let Ok(flow) = FlowKey::from_ip_packet(buf.data()) else {
                    return Err(self.drop(DropReason::Malformed));
                };
                return match self.spd.action_inbound(&flow) {
                    Action::Bypass => Ok(Inbound::Bypass),
                    // Traffic that policy says must be protected, arriving in
                    // the clear, is dropped (RFC 4301 section 5.2).
                    Action::Protect(_) | Action::Discard => Err(self.drop(DropReason::Policy)),
                };
            }
            Err(reason) => return Err(self.drop(reason)),
        };
        match self.sad.get_mut(spi) {
            Some(sa) => sa.open(buf, now).map(|()| Inbound::Decrypted(spi)),
            None => Err(self.drop(DropReason::NoSa)),
        }
    }

    fn classify_inbound(&self, packet: &[u8]) -> Result<Classified, DropReason> {
        let (protocol, payload) = match tunsec_wire::ip::version(packet) {
            Ok(4) => {
                let p = ipv4::Packet::new_checked(packet).map_err(|_| DropReason::Malformed)?;
                let payload = p.header_len()..usize::from(p.total_len());
                (p.next_header(), &packet[payload])
            }
            Ok(6) => {
                let p = ipv6::Packet::new_checked(packet).map_err(|_| DropReason::Malformed)?;
                let payload = ipv6::HEADER_LEN..ipv6::HEADER_LEN + usize::from(p.payload_len());
                (p.next_header(), &packet[payload])
            }
            _ => return Err(DropReason::Malformed),
        };
        let esp = match protocol {
            IpProtocol::Esp => payload,
            IpProtocol::Udp => {
                let Ok(u) = udp::Packet::new_checked(payload) else {
                    return Err(DropReason::Malformed);
                };
                if u.dst_port() != self.udp_encap_port {
                    return Ok(Classified::Clear);
                }
                let udp_payload = &payload[udp::HEADER_LEN..usize::from(u.len())];
                match natt::classify(udp_payload) {
                    Ok(natt::UdpEncapPayload::Esp(esp)) => esp,
                    Ok(natt::UdpEncapPayload::Ike(_)) => return Ok(Classified::Ike),
                    Ok(natt::UdpEncapPayload::Keepalive) => return Ok(Classified::Keepalive),
                    Err(_) => return Err(DropReason::Malformed),
                }
            }
            _ => return Ok(Classified::Clear),
        };
        match tunsec_wire::esp::Packet::new_checked(esp) {
            Ok(p) => Ok(Classified::Esp(p.spi())),
            Err(_) => Err(DropReason::Malformed),
        }
    }
}

enum Classified {
    Esp(u32),
    Ike,
    Keepalive,
    Clear,
}
