//! The SPD, the outbound SAs and the SAD together: the whole of RFC 4301's
//! per-packet processing for IP packets, sans IO.

use std::collections::BTreeMap;
use std::time::Instant;

use tunsec_wire::ip::IpProtocol;
use tunsec_wire::{ipv4, ipv6, natt, udp};

use crate::Error;
use crate::buf::PacketBuf;
use crate::counters::{DropCounters, DropReason};
use crate::direction::Direction;
use crate::sa::Sa;
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

#[cfg(test)]
mod test {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::sa::tests::{pair, udp_packet};
    use crate::sa::{Encapsulation, Mode};
    use crate::selector::{IpPrefix, PortRange, Selector};
    use crate::spd::Policy;
    use crate::suite::Suite;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    fn vxlan_selector() -> Selector {
        Selector {
            local: IpPrefix::host(A),
            remote: IpPrefix::host(B),
            protocol: Some(17),
            local_ports: PortRange::ANY,
            remote_ports: PortRange::single(4789),
        }
    }

    /// An engine on host A that protects VXLAN to B and bypasses the rest.
    fn engine_with(action: Action) -> Engine {
        let mut e = Engine::new();
        e.spd_mut().push(Policy {
            name: "vxlan".into(),
            selector: vxlan_selector(),
            action,
        });
        e.spd_mut().push(Policy {
            name: "rest".into(),
            selector: Selector::host_to_host(A, B),
            action: Action::Bypass,
        });
        e
    }

    #[test]
    fn protect_without_sa_drops_never_sends_clear() {
        let now = Instant::now();
        let mut e = engine_with(Action::Protect(None));
        let (mut bytes, s, en) = udp_packet(A, B, b"tenant frame");
        let before = bytes.clone();
        let mut buf = PacketBuf::new(&mut bytes, s, en);
        assert_eq!(e.outbound(&mut buf, now), Err(DropReason::NoSa));
        assert_eq!(e.drops().get(DropReason::NoSa), 1);
        // A policy pointing at an SA that was removed drops too.
        let (out, _) = pair(
            Suite::AesGcm128,
            Mode::Transport,
            Encapsulation::UDP_4500,
            false,
        );
        let id = e.add_outbound(out).unwrap();
        e.spd_mut().set_action("vxlan", Action::Protect(Some(id)));
        e.remove_outbound(id).unwrap();
        let mut buf = PacketBuf::new(&mut bytes, s, en);
        assert_eq!(e.outbound(&mut buf, now), Err(DropReason::NoSa));
        assert_eq!(e.drops().get(DropReason::NoSa), 2);
        assert_eq!(bytes, before, "the packet was not touched");
    }

    #[test]
    fn expired_sa_drops() {
        let now = Instant::now();
        let mut e = engine_with(Action::Protect(None));
        let (mut out, _) = pair(
            Suite::AesGcm128,
            Mode::Transport,
            Encapsulation::UDP_4500,
            false,
        );
        out.advance_seq(u64::from(u32::MAX) + 1).unwrap();
        let id = e.add_outbound(out).unwrap();
        e.spd_mut().set_action("vxlan", Action::Protect(Some(id)));
        let (mut bytes, s, en) = udp_packet(A, B, b"tenant frame");
        let mut buf = PacketBuf::new(&mut bytes, s, en);
        assert_eq!(e.outbound(&mut buf, now), Err(DropReason::SeqExhausted));
        let mut buf = PacketBuf::new(&mut bytes, s, en);
        assert_eq!(e.outbound(&mut buf, now), Err(DropReason::SaExpired));
        let sa = e.outbound_sa(id).unwrap();
        assert_eq!(sa.counters().drops.total(), 2);
    }

    #[test]
    fn protected_round_trip_and_clear_traffic() {
        let now = Instant::now();
        let (out, inb) = pair(
            Suite::AesGcm256,
            Mode::Transport,
            Encapsulation::UDP_4500,
            false,
        );
        let mut a = engine_with(Action::Protect(None));
        let id = a.add_outbound(out).unwrap();
        a.spd_mut().set_action("vxlan", Action::Protect(Some(id)));

        // Host B: the mirror policy, and the inbound SA.
        let mut b = Engine::new();
        let mut mirror = vxlan_selector();
        (mirror.local, mirror.remote) = (mirror.remote, mirror.local);
        (mirror.local_ports, mirror.remote_ports) = (mirror.remote_ports, mirror.local_ports);
        b.spd_mut().push(Policy {
            name: "vxlan".into(),
            selector: mirror,
            action: Action::Protect(None),
        });
        b.spd_mut().push(Policy {
            name: "rest".into(),
            selector: Selector::host_to_host(B, A),
            action: Action::Bypass,
        });
        b.add_inbound(inb).unwrap();

        let (mut bytes, s, en) = udp_packet(A, B, b"tenant frame");
        let original = bytes[s..en].to_vec();
        let mut buf = PacketBuf::new(&mut bytes, s, en);
        assert_eq!(a.outbound(&mut buf, now), Ok(Outbound::Protected(id)));
        let mut wire = buf.data().to_vec();
        let mut rx = PacketBuf::whole(&mut wire);
        assert_eq!(b.inbound(&mut rx, now), Ok(Inbound::Decrypted(0x1000_0001)));
        assert_eq!(rx.data(), &original[..]);

        // The same VXLAN packet in the clear is refused by B: policy says
        // it must be protected.
        let mut clear = original.clone();
        assert_eq!(
            b.inbound(&mut PacketBuf::whole(&mut clear), now),
            Err(DropReason::Policy)
        );
        assert_eq!(b.drops().get(DropReason::Policy), 1);

        // ESP for an SPI nobody knows.
        wire = buf.data().to_vec();
        wire[28..32].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
        assert_eq!(
            b.inbound(&mut PacketBuf::whole(&mut wire), now),
            Err(DropReason::NoSa)
        );
        assert_eq!(b.drops().get(DropReason::NoSa), 1);
    }

    #[test]
    fn bypass_discard_and_no_match() {
        let now = Instant::now();
        let mut e = engine_with(Action::Discard);
        let (mut bytes, s, en) = udp_packet(A, B, b"x");
        assert_eq!(
            e.outbound(&mut PacketBuf::new(&mut bytes, s, en), now),
            Err(DropReason::Policy)
        );
        // Same hosts, another port: the bypass policy.
        {
            let mut buf = PacketBuf::new(&mut bytes, s, en);
            buf.data_mut()[22..24].copy_from_slice(&53u16.to_be_bytes());
        }
        assert_eq!(
            e.outbound(&mut PacketBuf::new(&mut bytes, s, en), now),
            Ok(Outbound::Bypass)
        );
        // Another destination: no policy, discard.
        let c = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3));
        let (mut other, s, en) = udp_packet(A, c, b"x");
        assert_eq!(
            e.outbound(&mut PacketBuf::new(&mut other, s, en), now),
            Err(DropReason::Policy)
        );
        let mut junk = vec![0x45, 0, 0];
        assert_eq!(
            e.outbound(&mut PacketBuf::whole(&mut junk), now),
            Err(DropReason::Malformed)
        );
    }

    #[test]
    fn ike_and_keepalives_on_4500_are_handed_back() {
        let now = Instant::now();
        let mut e = Engine::new();
        let (mut ike, s, en) = udp_packet(B, A, &[0, 0, 0, 0, 1, 2, 3, 4]);
        ike[s + 22..s + 24].copy_from_slice(&4500u16.to_be_bytes());
        ike[s + 26..s + 28].copy_from_slice(&[0, 0]);
        assert_eq!(
            e.inbound(&mut PacketBuf::new(&mut ike, s, en), now),
            Ok(Inbound::Ike)
        );
        let (mut ka, s, en) = udp_packet(B, A, &[0xff]);
        ka[s + 22..s + 24].copy_from_slice(&4500u16.to_be_bytes());
        assert_eq!(
            e.inbound(&mut PacketBuf::new(&mut ka, s, en), now),
            Ok(Inbound::Keepalive)
        );
    }
}
