//! Traffic selectors: building them, narrowing them (RFC 7296 section
//! 2.9), and turning them into the ESP engine's [`Selector`]s.

use std::net::{IpAddr, Ipv6Addr};

use tunsec_esp::{IpPrefix, PortRange, Selector};

use crate::message::{AddrRange, TrafficSelector};

/// A selector for one host: one address, an IP protocol (0 for any) and a
/// port range (`0..=65535` for any).
///
/// For the overlay, a VXLAN peer is `host(addr, 17, 4789, 4789)` when only
/// its tunnel port is to be protected. Such a selector on both sides
/// covers only datagrams whose source port is 4789 too, so the senders
/// must not use per-flow source ports (tunsecd then sends from the tunnel
/// port; a kernel vxlan device needs `srcport 4789 4790`); host to host,
/// `host(addr, 17, 0, 65535)`, covers any port.
pub fn host(addr: IpAddr, ip_protocol: u8, start_port: u16, end_port: u16) -> TrafficSelector {
    let range = AddrRange {
        ip_protocol,
        start_port,
        end_port,
        start: addr,
        end: addr,
    };
    TrafficSelector::from_addr_range(range).expect("one address is of one version")
}

/// The selectors with their addresses replaced by `addr` (one host), the
/// protocols and ports kept; selectors of the other address family are
/// dropped. RFC 7296 section 2.23.1: in transport mode behind a NAT, the
/// initiator's TSi names its private address, which the responder
/// replaces with the address the IKE SA comes from.
pub fn with_address(selectors: &[TrafficSelector], addr: IpAddr) -> Vec<TrafficSelector> {
    selectors
        .iter()
        .filter_map(TrafficSelector::addr_range)
        .filter(|r| r.start.is_ipv4() == addr.is_ipv4())
        .map(|r| host(addr, r.ip_protocol, r.start_port, r.end_port))
        .collect()
}

/// The intersection of two protocol fields, 0 meaning any.
fn protocol(a: u8, b: u8) -> Option<u8> {
    match (a, b) {
        (0, b) => Some(b),
        (a, 0) => Some(a),
        (a, b) if a == b => Some(a),
        _ => None,
    }
}

/// The intersection of two closed ranges.
fn range<T: Ord + Copy>(a: (T, T), b: (T, T)) -> Option<(T, T)> {
    let (start, end) = (a.0.max(b.0), a.1.min(b.1));
    (start <= end).then_some((start, end))
}

/// The traffic two selectors both cover, if any. Selectors of different
/// types, and of unknown types, have none in common.
pub fn intersect(a: &TrafficSelector, b: &TrafficSelector) -> Option<TrafficSelector> {
    let (a, b) = (a.addr_range()?, b.addr_range()?);
    if a.start.is_ipv4() != b.start.is_ipv4() {
        return None;
    }
    let (start_port, end_port) = range((a.start_port, a.end_port), (b.start_port, b.end_port))?;
    // Within one version, IpAddr orders as the addresses do.
    let (start, end) = range((a.start, a.end), (b.start, b.end))?;
    TrafficSelector::from_addr_range(AddrRange {
        ip_protocol: protocol(a.ip_protocol, b.ip_protocol)?,
        start_port,
        end_port,
        start,
        end,
    })
}

/// Narrows a peer's offer to what our policy allows: every non-empty
/// intersection of an offered selector with one of ours, without
/// duplicates.
///
/// RFC 7296 section 2.9: the responder may narrow the selectors to a
/// subset of what the initiator proposed; if the result is empty it
/// answers `TS_UNACCEPTABLE`, which the caller does on an empty result.
pub fn narrow(offered: &[TrafficSelector], ours: &[TrafficSelector]) -> Vec<TrafficSelector> {
    let mut out = Vec::new();
    for o in offered {
        for m in ours {
            match intersect(o, m) {
                Some(ts) if !out.contains(&ts) => out.push(ts),
                _ => {}
            }
        }
    }
    out
}

/// Narrows a peer's Child SA offer, its `tsi` (the peer's side) and
/// `tsr` (ours), to one of our configured Child SAs `children`, each as
/// (ours, the peer's); `None` (TS_UNACCEPTABLE) if none leaves something
/// of both. The one chosen is the first that holds the whole offer; else
/// the first that covers the offer's first selectors (RFC 7296 section
/// 2.9: an initiator may put the packet that triggered the request
/// first); else the first that leaves anything.
///
/// Each Child SA is narrowed to one configured Child SA, never to the
/// union of several: with `[udp/4789] === [udp]` and `[udp] ===
/// [udp/4789]` configured (ovs-monitor-ipsec's pair), an offer of `[udp]
/// === [udp]` narrowed against the union on each side would cover all of
/// UDP between the hosts, which neither Child SA allows.
pub fn narrow_to_child(
    tsi: &[TrafficSelector],
    tsr: &[TrafficSelector],
    children: &[(Vec<TrafficSelector>, Vec<TrafficSelector>)],
) -> Option<(Vec<TrafficSelector>, Vec<TrafficSelector>)> {
    let first = |offered: &[TrafficSelector], policy: &[TrafficSelector]| {
        offered
            .first()
            .is_some_and(|o| !narrow(core::slice::from_ref(o), policy).is_empty())
    };
    // (narrowed TSi, narrowed TSr, rank: 0 whole offer, 1 its first
    // selectors, 2 something).
    let best = children
        .iter()
        .filter_map(|(ours, theirs)| {
            let (i, r) = (narrow(tsi, theirs), narrow(tsr, ours));
            if i.is_empty() || r.is_empty() {
                return None;
            }
            let rank = if is_subset(tsi, theirs) && is_subset(tsr, ours) {
                0
            } else if first(tsi, theirs) && first(tsr, ours) {
                1
            } else {
                2
            };
            Some((i, r, rank))
        })
        .enumerate()
        .min_by_key(|(n, c)| (c.2, *n))?;
    let (i, r, _) = best.1;
    Some((i, r))
}

/// Whether every selector of `narrowed` lies within one of `offered`: what
/// an initiator checks of the responder's TSi and TSr.
pub fn is_subset(narrowed: &[TrafficSelector], offered: &[TrafficSelector]) -> bool {
    narrowed
        .iter()
        .all(|n| offered.iter().any(|o| intersect(n, o).as_ref() == Some(n)))
}

/// The prefix length of a range that is exactly one prefix.
fn prefix_len(start: u128, end: u128, bits: u32) -> Option<u8> {
    let diff = start ^ end;
    let host_bits = 128 - diff.leading_zeros();
    let mask = if host_bits == 0 {
        0
    } else {
        u128::MAX >> (128 - host_bits)
    };
    (diff == mask && start & mask == 0 && end & mask == mask)
        .then(|| u8::try_from(bits - host_bits).ok())
        .flatten()
}

/// A selector's addresses as one prefix, its protocol, and its ports;
/// `None` for an unknown type or a range that is not a prefix.
fn parts(ts: &TrafficSelector) -> Option<(IpPrefix, Option<u8>, PortRange)> {
    let range = ts.addr_range()?;
    let (start, end, bits) = range.bits();
    let prefix = IpPrefix::new(range.start, prefix_len(start, end, bits)?).ok()?;
    let protocol = (range.ip_protocol != 0).then_some(range.ip_protocol);
    Some((
        prefix,
        protocol,
        PortRange {
            start: range.start_port,
            end: range.end_port,
        },
    ))
}

/// The ESP engine's selectors for the pairs of a local and a remote
/// traffic selector (seen from this host), skipping pairs of different IP
/// versions or protocols, and ranges that are not one prefix (which the
/// ESP engine cannot express yet).
pub fn to_esp_selectors(local: &[TrafficSelector], remote: &[TrafficSelector]) -> Vec<Selector> {
    let mut out = Vec::new();
    for l in local {
        for r in remote {
            let (Some((lp, lproto, lports)), Some((rp, rproto, rports))) = (parts(l), parts(r))
            else {
                continue;
            };
            if lp.addr().is_ipv4() != rp.addr().is_ipv4() {
                continue;
            }
            let protocol = match (lproto, rproto) {
                (None, p) | (p, None) => p,
                (Some(a), Some(b)) if a == b => Some(a),
                _ => continue,
            };
            out.push(Selector {
                local: lp,
                remote: rp,
                protocol,
                local_ports: lports,
                remote_ports: rports,
            });
        }
    }
    out
}

/// Every IPv6 address, all protocols and ports.
pub fn any_ipv6() -> TrafficSelector {
    TrafficSelector::Ipv6 {
        ip_protocol: 0,
        start_port: 0,
        end_port: u16::MAX,
        start: Ipv6Addr::UNSPECIFIED,
        end: Ipv6Addr::from(u128::MAX),
    }
}

#[cfg(test)]
mod test {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn narrowing() {
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let offered = [host(a, 17, 0, u16::MAX)];
        let ours = [TrafficSelector::any_ipv4(), host(a, 0, 4789, 4789)];
        let n = narrow(&offered, &ours);
        assert_eq!(n, vec![host(a, 17, 0, u16::MAX), host(a, 17, 4789, 4789)]);
        assert!(is_subset(&n, &offered));
        assert!(!is_subset(&[TrafficSelector::any_ipv4()], &offered));
        assert!(narrow(&offered, &[host(a, 6, 0, u16::MAX)]).is_empty());
        assert!(narrow(&offered, &[any_ipv6()]).is_empty());
    }

    #[test]
    fn narrowing_to_one_child() {
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        let any = |h| host(h, 17, 0, u16::MAX);
        let port = |h| host(h, 17, 4789, 4789);
        // Ours (a) is the responder: ovs-monitor-ipsec's pair.
        let children = vec![(vec![any(a)], vec![port(b)]), (vec![port(a)], vec![any(b)])];
        // The peer's outbound Child SA, b[udp] === a[udp/4789]: ours "in".
        let (i, r) = narrow_to_child(&[any(b)], &[port(a)], &children).unwrap();
        assert_eq!((i, r), (vec![any(b)], vec![port(a)]));
        // And the other way round.
        let (i, r) = narrow_to_child(&[port(b)], &[any(a)], &children).unwrap();
        assert_eq!((i, r), (vec![port(b)], vec![any(a)]));
        // A wide offer gets one child, never all of UDP both ways.
        let (i, r) = narrow_to_child(&[any(b)], &[any(a)], &children).unwrap();
        assert_eq!((i, r), (vec![port(b)], vec![any(a)]));
        // The triggering packet first (b:40000 -> a:4789) picks its child.
        let packet = (host(b, 17, 40000, 40000), port(a));
        let (i, r) =
            narrow_to_child(&[packet.0.clone(), any(b)], &[packet.1, any(a)], &children).unwrap();
        assert_eq!(i, vec![host(b, 17, 40000, 40000), any(b)]);
        assert_eq!(r, vec![port(a)]);
        // TCP fits neither.
        assert!(narrow_to_child(&[host(b, 6, 0, 65535)], &[any(a)], &children).is_none());
    }

    #[test]
    fn esp_selectors() {
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        let s = to_esp_selectors(&[host(a, 17, 0, u16::MAX)], &[host(b, 0, 4789, 4789)]);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].local, IpPrefix::host(a));
        assert_eq!(s[0].protocol, Some(17));
        assert_eq!(s[0].remote_ports, PortRange::single(4789));
        let any = to_esp_selectors(&[TrafficSelector::any_ipv4()], &[host(b, 0, 0, 65535)]);
        assert_eq!(any[0].local, IpPrefix::ANY_V4);
        // 192.0.2.1-192.0.2.2 is not a prefix.
        let odd = TrafficSelector::Ipv4 {
            ip_protocol: 0,
            start_port: 0,
            end_port: 65535,
            start: Ipv4Addr::new(192, 0, 2, 1),
            end: Ipv4Addr::new(192, 0, 2, 2),
        };
        assert!(to_esp_selectors(&[odd], &[host(b, 0, 0, 65535)]).is_empty());
    }
}
