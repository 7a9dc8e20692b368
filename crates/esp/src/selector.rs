//! Traffic selectors (RFC 4301 section 4.4.1.1): which packets a policy or
//! an SA covers.

use core::fmt;
use core::ops::RangeInclusive;
use core::str::FromStr;
use std::net::IpAddr;

use tunsec_wire::ip::IpProtocol;
use tunsec_wire::{ipv4, ipv6, udp};

use crate::Error;

/// An address prefix such as `192.0.2.0/24` or `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    addr: IpAddr,
    len: u8,
}

impl IpPrefix {
    /// A prefix; the bits past `len` are cleared.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, Error> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(Error::Prefix(format!("{addr}/{len}")));
        }
        Ok(Self {
            addr: mask(addr, len),
            len,
        })
    }

    /// The prefix that holds exactly one address.
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            len: if addr.is_ipv4() { 32 } else { 128 },
        }
    }

    /// Every IPv4 address.
    pub const ANY_V4: Self = Self {
        addr: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        len: 0,
    };

    /// Every IPv6 address.
    pub const ANY_V6: Self = Self {
        addr: IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        len: 0,
    };

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is a zero-length prefix (all addresses of its family).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `addr` lies in the prefix. Addresses of the other family
    /// never do.
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.addr.is_ipv4() && mask(addr, self.len) == self.addr
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for IpPrefix {
    type Err = Error;

    /// Parses `addr/len`, or a bare address as a host prefix.
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Prefix(s.to_owned());
        match s.split_once('/') {
            Some((addr, len)) => {
                let addr: IpAddr = addr.parse().map_err(|_| bad())?;
                let len: u8 = len.parse().map_err(|_| bad())?;
                Self::new(addr, len).map_err(|_| bad())
            }
            None => Ok(Self::host(s.parse().map_err(|_| bad())?)),
        }
    }
}

/// An inclusive range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// The first port.
    pub start: u16,
    /// The last port.
    pub end: u16,
}

impl PortRange {
    /// Every port, and packets without ports (RFC 4301's ANY).
    pub const ANY: Self = Self {
        start: 0,
        end: u16::MAX,
    };

    /// One port.
    pub const fn single(port: u16) -> Self {
        Self {
            start: port,
            end: port,
        }
    }

    /// Whether this range is ANY.
    pub fn is_any(&self) -> bool {
        *self == Self::ANY
    }

    fn matches(&self, port: Option<u16>) -> bool {
        match port {
            Some(p) => (self.start..=self.end).contains(&p),
            // A packet without ports (ICMP, a non-initial fragment) matches
            // only ANY (RFC 4301 section 4.4.1.1, OPAQUE).
            None => self.is_any(),
        }
    }
}

impl From<RangeInclusive<u16>> for PortRange {
    fn from(r: RangeInclusive<u16>) -> Self {
        Self {
            start: *r.start(),
            end: *r.end(),
        }
    }
}

/// The fields of a packet that selectors look at, read once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// The upper-layer protocol (after the IPv4 header, or the IPv6 fixed
    /// header).
    pub protocol: u8,
    /// Source port, for UDP, TCP and SCTP in a first or only fragment.
    pub src_port: Option<u16>,
    /// Destination port, likewise.
    pub dst_port: Option<u16>,
}

impl FlowKey {
    /// Reads the selector fields of an IPv4 or IPv6 packet.
    pub fn from_ip_packet(packet: &[u8]) -> Result<Self, tunsec_wire::Error> {
        let (src, dst, protocol, first_fragment, payload) = match tunsec_wire::ip::version(packet)?
        {
            4 => {
                let p = ipv4::Packet::new_checked(packet)?;
                (
                    IpAddr::V4(p.src_addr()),
                    IpAddr::V4(p.dst_addr()),
                    p.next_header(),
                    p.frag_offset() == 0,
                    &packet[p.header_len()..usize::from(p.total_len())],
                )
            }
            6 => {
                let p = ipv6::Packet::new_checked(packet)?;
                (
                    IpAddr::V6(p.src_addr()),
                    IpAddr::V6(p.dst_addr()),
                    p.next_header(),
                    true,
                    &packet[ipv6::HEADER_LEN..ipv6::HEADER_LEN + usize::from(p.payload_len())],
                )
            }
            _ => return Err(tunsec_wire::Error::BadVersion),
        };
        let has_ports = matches!(
            protocol,
            IpProtocol::Udp | IpProtocol::Tcp | IpProtocol::Unknown(132)
        );
        // UDP, TCP and SCTP all start with source and destination ports.
        let (src_port, dst_port) = if has_ports && first_fragment && payload.len() >= 4 {
            let p = udp::Packet::new_unchecked(payload);
            (Some(p.src_port()), Some(p.dst_port()))
        } else {
            (None, None)
        };
        Ok(Self {
            src,
            dst,
            protocol: protocol.into(),
            src_port,
            dst_port,
        })
    }
}

/// A traffic selector, seen from this host: local and remote prefixes, an
/// optional protocol, and port ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Selector {
    /// The local addresses.
    pub local: IpPrefix,
    /// The remote addresses.
    pub remote: IpPrefix,
    /// The upper-layer protocol, or `None` for any.
    pub protocol: Option<u8>,
    /// The local ports.
    pub local_ports: PortRange,
    /// The remote ports.
    pub remote_ports: PortRange,
}

impl Selector {
    /// A selector for all traffic between two hosts.
    pub fn host_to_host(local: IpAddr, remote: IpAddr) -> Self {
        Self {
            local: IpPrefix::host(local),
            remote: IpPrefix::host(remote),
            protocol: None,
            local_ports: PortRange::ANY,
            remote_ports: PortRange::ANY,
        }
    }

    /// Whether a packet this host sends matches: its source is local.
    pub fn matches_outbound(&self, flow: &FlowKey) -> bool {
        self.matches(
            flow.src,
            flow.dst,
            flow.protocol,
            flow.src_port,
            flow.dst_port,
        )
    }

    /// Whether a packet this host receives matches: its destination is
    /// local.
    pub fn matches_inbound(&self, flow: &FlowKey) -> bool {
        self.matches(
            flow.dst,
            flow.src,
            flow.protocol,
            flow.dst_port,
            flow.src_port,
        )
    }

    fn matches(
        &self,
        local: IpAddr,
        remote: IpAddr,
        protocol: u8,
        local_port: Option<u16>,
        remote_port: Option<u16>,
    ) -> bool {
        self.local.contains(local)
            && self.remote.contains(remote)
            && self.protocol.is_none_or(|p| p == protocol)
            && self.local_ports.matches(local_port)
            && self.remote_ports.matches(remote_port)
    }
}

/// strongSwan's notation, seen from this host: `local[proto/ports] ===
/// remote[proto/ports]`, e.g. `192.0.2.1/32[udp/4789] ===
/// 192.0.2.2/32[udp/4789]`; the brackets are left out for any protocol
/// and any port, the ports for any port.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |f: &mut fmt::Formatter<'_>, prefix: &IpPrefix, ports: &PortRange| {
            write!(f, "{prefix}")?;
            let proto = match self.protocol {
                Some(1) => Some("icmp".to_owned()),
                Some(6) => Some("tcp".to_owned()),
                Some(17) => Some("udp".to_owned()),
                Some(58) => Some("ipv6-icmp".to_owned()),
                Some(p) => Some(p.to_string()),
                None => None,
            };
            match (proto, ports.is_any()) {
                (None, true) => Ok(()),
                (Some(p), true) => write!(f, "[{p}]"),
                (p, false) => {
                    write!(f, "[{}/", p.as_deref().unwrap_or("0"))?;
                    if ports.start == ports.end {
                        write!(f, "{}]", ports.start)
                    } else {
                        write!(f, "{}-{}]", ports.start, ports.end)
                    }
                }
            }
        };
        side(f, &self.local, &self.local_ports)?;
        f.write_str(" === ")?;
        side(f, &self.remote, &self.remote_ports)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn flow(src: &str, dst: &str, protocol: u8, sport: Option<u16>, dport: Option<u16>) -> FlowKey {
        FlowKey {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol,
            src_port: sport,
            dst_port: dport,
        }
    }

    #[test]
    fn prefixes() {
        let p: IpPrefix = "10.1.2.3/16".parse().unwrap();
        assert_eq!(p.to_string(), "10.1.0.0/16");
        assert!(p.contains("10.1.255.1".parse().unwrap()));
        assert!(!p.contains("10.2.0.1".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
        assert!(IpPrefix::ANY_V6.contains("2001:db8::1".parse().unwrap()));
        let h: IpPrefix = "2001:db8::1".parse().unwrap();
        assert_eq!(h.len(), 128);
        assert_eq!(
            "10.0.0.0/33".parse::<IpPrefix>().unwrap_err(),
            Error::Prefix("10.0.0.0/33".into())
        );
        assert!("10.0.0.0/x".parse::<IpPrefix>().is_err());
    }

    #[test]
    fn vxlan_selector() {
        let sel = Selector {
            local: "192.0.2.1".parse().unwrap(),
            remote: "192.0.2.0/24".parse().unwrap(),
            protocol: Some(17),
            local_ports: PortRange::ANY,
            remote_ports: PortRange::single(4789),
        };
        let out = flow("192.0.2.1", "192.0.2.7", 17, Some(40000), Some(4789));
        assert!(sel.matches_outbound(&out));
        assert!(!sel.matches_inbound(&out));
        let back = flow("192.0.2.7", "192.0.2.1", 17, Some(4789), Some(40000));
        assert!(sel.matches_inbound(&back));
        // ICMP has no ports: it only matches ANY.
        assert!(!sel.matches_outbound(&flow("192.0.2.1", "192.0.2.7", 17, None, None)));
        assert!(!sel.matches_outbound(&flow("192.0.2.1", "192.0.2.7", 6, Some(1), Some(4789))));
        let any = Selector::host_to_host(out.src, out.dst);
        assert!(any.matches_outbound(&flow("192.0.2.1", "192.0.2.7", 1, None, None)));
    }

    #[test]
    fn display() {
        let mut sel = Selector {
            local: "192.0.2.1".parse().unwrap(),
            remote: "192.0.2.2".parse().unwrap(),
            protocol: Some(17),
            local_ports: PortRange::single(4789),
            remote_ports: PortRange::single(4789),
        };
        assert_eq!(
            sel.to_string(),
            "192.0.2.1/32[udp/4789] === 192.0.2.2/32[udp/4789]"
        );
        sel.local_ports = PortRange::ANY;
        sel.remote_ports = (49152..=65535).into();
        assert_eq!(
            sel.to_string(),
            "192.0.2.1/32[udp] === 192.0.2.2/32[udp/49152-65535]"
        );
        let any = Selector::host_to_host(
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        );
        assert_eq!(any.to_string(), "2001:db8::1/128 === 2001:db8::2/128");
    }
}
