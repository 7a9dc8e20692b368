//! The inner IP header of tunnel-mode ESP in overlay mode (RFC 4303
//! section 3.1.2): written in front of the tunnel datagram on the way
//! out, checked on the way in.

use std::net::IpAddr;

use tunsec_wire::ip::IpProtocol;
use tunsec_wire::{ipv4, ipv6};

use crate::packet::canonical;
use crate::stats::PathDrop;

/// Writes the inner IP header of a tunnel-mode ESP payload (RFC 4303
/// section 3.1.2) in front of the UDP datagram at `buf[udp_start..end]`:
/// from this host's underlay address `local` to the peer's, `remote`,
/// protocol UDP, TTL 64. IPv4 gets DF and its header checksum: the inner
/// packet is never fragmented (the outer one may be). Returns where the
/// ESP payload starts and its next header (4: IPv4, 41: IPv6), or `None`
/// if the headroom is short, the datagram too long, or the addresses of
/// two families.
pub(super) fn push_inner_header(
    buf: &mut [u8],
    udp_start: usize,
    end: usize,
    local: IpAddr,
    remote: IpAddr,
) -> Option<(usize, IpProtocol)> {
    let payload_len = end - udp_start;
    match (local, canonical(remote)) {
        (IpAddr::V4(src_addr), IpAddr::V4(dst_addr)) => {
            let ip_start = udp_start.checked_sub(ipv4::HEADER_LEN)?;
            if payload_len > usize::from(u16::MAX) - ipv4::HEADER_LEN {
                return None;
            }
            ipv4::Repr {
                src_addr,
                dst_addr,
                next_header: IpProtocol::Udp,
                payload_len,
                hop_limit: 64,
                dscp_ecn: 0,
                dont_frag: true,
                ident: 0,
            }
            .emit(&mut ipv4::Packet::new_unchecked(&mut buf[ip_start..end]));
            Some((ip_start, IpProtocol::Ipip))
        }
        (IpAddr::V6(src_addr), IpAddr::V6(dst_addr)) => {
            let ip_start = udp_start.checked_sub(ipv6::HEADER_LEN)?;
            if payload_len > usize::from(u16::MAX) {
                return None;
            }
            ipv6::Repr {
                src_addr,
                dst_addr,
                next_header: IpProtocol::Udp,
                payload_len,
                hop_limit: 64,
                traffic_class: 0,
                flow_label: 0,
            }
            .emit(&mut ipv6::Packet::new_unchecked(&mut buf[ip_start..end]));
            Some((ip_start, IpProtocol::Ipv6))
        }
        _ => None,
    }
}

/// Checks the inner IP packet of a tunnel-mode ESP payload, `packet`,
/// whose ESP next header was `next_header`, and returns the offset of the
/// UDP datagram it carries (which runs to the end of `packet`). The packet
/// must be what this host itself sends: the underlay's family (next header
/// 4 or 41), a valid header (version, lengths, IPv4 checksum) whose length
/// is the whole payload, from the peer's underlay address `remote` to
/// ours, `local` (RFC 4301 section 5.2: a decrypted packet must match its
/// SA's selectors, here host to host), protocol UDP with no IPv6 extension
/// header, and not a fragment. Anything else is [`PathDrop::InnerHeader`].
pub fn check_inner_header(
    packet: &[u8],
    next_header: u8,
    local: IpAddr,
    remote: IpAddr,
) -> Result<usize, PathDrop> {
    let bad = Err(PathDrop::InnerHeader);
    let (src, dst, protocol, header_len) = match (IpProtocol::from(next_header), local) {
        (IpProtocol::Ipip, IpAddr::V4(_)) => {
            let Ok(p) = ipv4::Packet::new_checked(packet) else {
                return bad;
            };
            // Version and header checksum.
            let Ok(repr) = ipv4::Repr::parse(&p) else {
                return bad;
            };
            // A peer's tunnel datagrams fit in one inner packet (the outer
            // packet is what the underlay may fragment), so a fragment is
            // refused rather than reassembled.
            if usize::from(p.total_len()) != packet.len() || p.is_fragment() {
                return bad;
            }
            (
                IpAddr::V4(repr.src_addr),
                IpAddr::V4(repr.dst_addr),
                repr.next_header,
                p.header_len(),
            )
        }
        (IpProtocol::Ipv6, IpAddr::V6(_)) => {
            let Ok(p) = ipv6::Packet::new_checked(packet) else {
                return bad;
            };
            let Ok(repr) = ipv6::Repr::parse(&p) else {
                return bad;
            };
            if ipv6::HEADER_LEN + repr.payload_len != packet.len() {
                return bad;
            }
            // Extension headers, the fragment header among them, are not
            // tunnel traffic: the next header must be UDP itself.
            (
                IpAddr::V6(repr.src_addr),
                IpAddr::V6(repr.dst_addr),
                repr.next_header,
                ipv6::HEADER_LEN,
            )
        }
        _ => return bad,
    };
    if src != canonical(remote) || dst != local || protocol != IpProtocol::Udp {
        return bad;
    }
    Ok(header_len)
}
