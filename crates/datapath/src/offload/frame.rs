//! Where the headers of an Ethernet + IPv4/IPv6 + TCP frame are, found
//! once with the `tunsec-wire` views and shared by segmentation and
//! coalescing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tunsec_wire::ethernet::{self, EtherType};
use tunsec_wire::ip::IpProtocol;
use tunsec_wire::{ipv4, ipv6, tcp};

use super::{Error, Result};

/// Offsets of the headers of a TCP frame, from the start of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TcpLayout {
    /// Start of the IP header (14, or 18 with an 802.1Q tag).
    pub(crate) l3: usize,
    /// Start of the TCP header.
    pub(crate) l4: usize,
    /// Start of the TCP payload (the TCP header and options end here).
    pub(crate) payload: usize,
    /// End of the IP packet (Total Length, or 40 + Payload Length).
    pub(crate) end: usize,
    /// IPv6 rather than IPv4.
    pub(crate) v6: bool,
}

impl TcpLayout {
    /// Finds the headers of `frame`: Ethernet (one 802.1Q tag at most),
    /// IPv4 (options allowed, no fragment) or IPv6 (no extension header),
    /// TCP. Lengths are checked with the wire views; the IPv4 header
    /// checksum is not (see [`Self::ipv4_header_ok`]). Bytes after the IP
    /// packet are allowed; `end` says where it stops.
    pub(crate) fn parse(frame: &[u8]) -> Result<Self> {
        let eth = ethernet::Packet::new_checked(frame)?;
        let l3 = eth.header_len();
        let (v6, l4, end) = match eth.ethertype() {
            EtherType::Ipv4 => {
                let ip = ipv4::Packet::new_checked(&frame[l3..])?;
                if ip.version() != 4 {
                    return Err(Error::Frame(tunsec_wire::Error::BadVersion));
                }
                if ip.is_fragment() {
                    return Err(Error::Unsupported("IPv4 fragment"));
                }
                if ip.next_header() != IpProtocol::Tcp {
                    return Err(Error::Unsupported("not TCP"));
                }
                (
                    false,
                    l3 + ip.header_len(),
                    l3 + usize::from(ip.total_len()),
                )
            }
            EtherType::Ipv6 => {
                let ip = ipv6::Packet::new_checked(&frame[l3..])?;
                if ip.version() != 6 {
                    return Err(Error::Frame(tunsec_wire::Error::BadVersion));
                }
                match ip.next_header() {
                    IpProtocol::Tcp => {}
                    IpProtocol::HopByHop if ip.payload_len() == 0 => {
                        return Err(Error::Unsupported("IPv6 jumbogram"));
                    }
                    _ => return Err(Error::Unsupported("not TCP, or IPv6 extension headers")),
                }
                let l4 = l3 + ipv6::HEADER_LEN;
                (true, l4, l4 + usize::from(ip.payload_len()))
            }
            _ => return Err(Error::Unsupported("not IPv4 or IPv6")),
        };
        let tcp = tcp::Packet::new_checked(&frame[l4..end])?;
        Ok(Self {
            l3,
            l4,
            payload: l4 + tcp.header_len(),
            end,
            v6,
        })
    }

    /// The IP source and destination addresses of `frame`.
    pub(crate) fn addrs(&self, frame: &[u8]) -> (IpAddr, IpAddr) {
        let ip = &frame[self.l3..];
        if self.v6 {
            let a = |r: core::ops::Range<usize>| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&ip[r]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            (a(8..24), a(24..40))
        } else {
            let a = |i: usize| IpAddr::V4(Ipv4Addr::new(ip[i], ip[i + 1], ip[i + 2], ip[i + 3]));
            (a(12), a(16))
        }
    }

    /// Where the two IP addresses are in the frame.
    pub(crate) fn addr_range(&self) -> core::ops::Range<usize> {
        if self.v6 {
            self.l3 + 8..self.l3 + 40
        } else {
            self.l3 + 12..self.l3 + 20
        }
    }

    /// Whether the IPv4 header checksum verifies (always true for IPv6).
    pub(crate) fn ipv4_header_ok(&self, frame: &[u8]) -> bool {
        self.v6 || ipv4::Packet::new_unchecked(&frame[self.l3..self.l4]).verify_checksum()
    }

    /// The TCP payload's length.
    pub(crate) fn payload_len(&self) -> usize {
        self.end - self.payload
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::offload::testutil::{Spec, build};
    use proptest::prelude::*;

    #[test]
    fn layouts() {
        let f = build(&Spec::v4(10));
        let l = TcpLayout::parse(&f).unwrap();
        assert_eq!(
            (l.l3, l.l4, l.payload, l.end, l.v6),
            (14, 34, 66, 76, false)
        );
        assert!(l.ipv4_header_ok(&f));
        let f = build(&Spec::v6(10));
        let l = TcpLayout::parse(&f).unwrap();
        assert_eq!((l.l3, l.l4, l.payload, l.end, l.v6), (14, 54, 86, 96, true));
        let f = build(&Spec {
            vlan: true,
            ..Spec::v4(0)
        });
        let l = TcpLayout::parse(&f).unwrap();
        assert_eq!((l.l3, l.l4, l.payload_len()), (18, 38, 0));
    }

    #[test]
    fn refusals() {
        let mut f = build(&Spec::v4(10));
        f[23] = 17;
        assert_eq!(TcpLayout::parse(&f), Err(Error::Unsupported("not TCP")));
        let mut f = build(&Spec::v4(10));
        f[20] = 0x20; // MF
        assert_eq!(
            TcpLayout::parse(&f),
            Err(Error::Unsupported("IPv4 fragment"))
        );
        let mut f = build(&Spec::v6(10));
        f[20] = 0; // hop-by-hop
        assert!(matches!(TcpLayout::parse(&f), Err(Error::Unsupported(_))));
        let f = build(&Spec::v4(10));
        assert!(matches!(TcpLayout::parse(&f[..70]), Err(Error::Frame(_))));
        let mut f = build(&Spec::v4(10));
        f[12] = 0x08;
        f[13] = 0x06;
        assert!(matches!(TcpLayout::parse(&f), Err(Error::Unsupported(_))));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(l) = TcpLayout::parse(&bytes) {
                prop_assert!(l.l3 < l.l4 && l.l4 < l.payload && l.payload <= l.end);
                prop_assert!(l.end <= bytes.len());
                let _ = (l.addrs(&bytes), l.ipv4_header_ok(&bytes));
            }
        }
    }
}
