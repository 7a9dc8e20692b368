//! The Child SAs' traffic selectors (RFC 7296 section 2.9) of a peer:
//! overlay mode's host or per-port ones, gateway mode's from its selectors.

use std::net::IpAddr;

use tunsec_ike::message::TrafficSelector;
use tunsec_ike::sa::ts;

use crate::config::{ChildLayout, ChildSelectors, Config, PolicyKind};
use tunsec_datapath::gateway::GatewaySelector;

/// The tunnel ports of a peer's `networks` (by name), sorted, each once.
pub(crate) fn tunnel_ports(config: &Config, networks: &[(String, PolicyKind)]) -> Vec<u16> {
    let mut ports: Vec<u16> = networks
        .iter()
        .filter_map(|(name, _)| config.networks.iter().find(|n| &n.name == name))
        .map(|n| n.port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// One Child SA's selectors: ours and the peer's.
pub(super) type ChildTs = (Vec<TrafficSelector>, Vec<TrafficSelector>);

/// The Child SAs' selectors between the underlay addresses `local` and
/// `remote`: the first Child SA's (in IKE_AUTH), and those of the
/// additional ones (by CREATE_CHILD_SA, RFC 7296 section 1.3.1). As
/// responder, the peer's offers are narrowed to all of them together.
///
/// `Host`: one Child SA for UDP, any port, between the two hosts. `Ports`:
/// one Child SA per tunnel port P, `local[udp/P] <-> remote[udp/P]`, so
/// that each carries exactly its network's datagrams (a single Child SA
/// with several ports would admit a datagram from one tunnel port to
/// another: RFC 7296 section 2.9 makes TSi and TSr sets, and the SA covers
/// any entry of one with any entry of the other).
pub(super) fn selectors(
    local: IpAddr,
    remote: IpAddr,
    kind: ChildSelectors,
    ports: &[u16],
) -> (ChildTs, Vec<ChildTs>) {
    let host = (
        vec![ts::host(local, 17, 0, u16::MAX)],
        vec![ts::host(remote, 17, 0, u16::MAX)],
    );
    match (kind, ports) {
        (ChildSelectors::Host, _) | (ChildSelectors::Ports, []) => (host, Vec::new()),
        (ChildSelectors::Ports, [first, rest @ ..]) => {
            let pair = |p: u16| {
                (
                    vec![ts::host(local, 17, p, p)],
                    vec![ts::host(remote, 17, p, p)],
                )
            };
            (pair(*first), rest.iter().map(|&p| pair(p)).collect())
        }
    }
}

/// Gateway mode's Child SAs: the first (in IKE_AUTH) and the others (by
/// CREATE_CHILD_SA), each as (ours, the peer's) selectors (RFC 7296
/// section 2.9, written as strongSwan writes `host/32[udp/4789]`).
///
/// `Single`: one Child SA, `local[proto/range]` and `remote[proto/range]`
/// for each selector. It covers traffic between the selector ports on
/// both sides; a kernel tunnel whose source port is another (a vxlan
/// device's per-flow port) still goes through the gateway's own
/// selectors, which match either port, so tunsec peers interoperate,
/// while a strict peer (strongSwan) needs the tunnel's source port pinned
/// (`srcport 4789 4790` on a vxlan device).
///
/// `Split` (ovs-monitor-ipsec's layout): for each selector with ports,
/// `local[proto] === remote[proto/range]` (what we send to the peer's
/// tunnel port, from any source port) and `local[proto/range] ===
/// remote[proto]` (what the peer sends to ours); the one we send with
/// comes first, so that it is the one IKE_AUTH creates, as strongSwan's
/// trap on our outbound packet would. A selector without ports (GRE) is
/// one Child SA, `local[proto] === remote[proto]`.
pub(super) fn gateway_selectors(
    local: IpAddr,
    remote: IpAddr,
    sel: &[GatewaySelector],
    layout: ChildLayout,
) -> (ChildTs, Vec<ChildTs>) {
    let ts = |addr, s: &GatewaySelector, ports: bool| {
        let (start, end) = if ports {
            (*s.ports.start(), *s.ports.end())
        } else {
            (0, u16::MAX)
        };
        ts::host(addr, s.protocol, start, end)
    };
    match layout {
        ChildLayout::Single => {
            let side = |addr| sel.iter().map(|s| ts(addr, s, true)).collect();
            ((side(local), side(remote)), Vec::new())
        }
        ChildLayout::Split => {
            let mut children: Vec<ChildTs> = Vec::new();
            // Ours outbound first, for each selector; then the inbound ones.
            for s in sel {
                let ports = s.has_ports();
                children.push((vec![ts(local, s, !ports)], vec![ts(remote, s, true)]));
            }
            for s in sel.iter().filter(|s| s.has_ports()) {
                children.push((vec![ts(local, s, true)], vec![ts(remote, s, false)]));
            }
            let mut children = children.into_iter();
            let first = children.next().unwrap_or_default();
            (first, children.collect())
        }
    }
}

#[cfg(test)]
mod test {
    #[test]
    fn selectors_host_and_ports() {
        use super::{ChildSelectors, selectors, ts};
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let ((l, r), more) = selectors(a, b, ChildSelectors::Host, &[4789, 6081]);
        assert_eq!(l, vec![ts::host(a, 17, 0, u16::MAX)]);
        assert_eq!(r, vec![ts::host(b, 17, 0, u16::MAX)]);
        assert!(more.is_empty());
        // One Child SA per port: the first in IKE_AUTH, then the others.
        let ((l, r), more) = selectors(a, b, ChildSelectors::Ports, &[4789, 6081, 6635]);
        assert_eq!(l, vec![ts::host(a, 17, 4789, 4789)]);
        assert_eq!(r, vec![ts::host(b, 17, 4789, 4789)]);
        let port = |p| (vec![ts::host(a, 17, p, p)], vec![ts::host(b, 17, p, p)]);
        assert_eq!(more, vec![port(6081), port(6635)]);
        // No tunnel port (no network carried): host to host.
        let ((l, _), more) = selectors(a, b, ChildSelectors::Ports, &[]);
        assert_eq!(l, vec![ts::host(a, 17, 0, u16::MAX)]);
        assert!(more.is_empty());
    }

    #[test]
    fn gateway_selectors_are_the_ts() {
        use super::{ChildLayout, gateway_selectors, ts};
        use tunsec_datapath::gateway::GatewaySelector;
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let sel = [
            GatewaySelector {
                protocol: 17,
                ports: 4789..=4789,
            },
            GatewaySelector {
                protocol: 6,
                ports: 16385..=16390,
            },
        ];
        let ((l, r), more) = gateway_selectors(a, b, &sel, ChildLayout::Single);
        assert_eq!(
            l,
            vec![ts::host(a, 17, 4789, 4789), ts::host(a, 6, 16385, 16390)]
        );
        assert_eq!(
            r,
            vec![ts::host(b, 17, 4789, 4789), ts::host(b, 6, 16385, 16390)]
        );
        assert!(more.is_empty());
    }

    #[test]
    fn split_layout_is_ovs_monitor_ipsec_s() {
        use super::{ChildLayout, gateway_selectors, ts};
        use tunsec_datapath::gateway::GatewaySelector;
        let (a, b) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let vxlan = GatewaySelector {
            protocol: 17,
            ports: 4789..=4789,
        };
        // conn X-out: leftprotoport=udp rightprotoport=udp/4789 first,
        // then conn X-in: leftprotoport=udp/4789 rightprotoport=udp.
        let (first, more) =
            gateway_selectors(a, b, std::slice::from_ref(&vxlan), ChildLayout::Split);
        let any = |h| vec![ts::host(h, 17, 0, u16::MAX)];
        let port = |h| vec![ts::host(h, 17, 4789, 4789)];
        assert_eq!(first, (any(a), port(b)));
        assert_eq!(more, vec![(port(a), any(b))]);
        // GRE has no ports: one Child SA (conn X: leftprotoport=gre
        // rightprotoport=gre).
        let gre = GatewaySelector::whole_protocol(47);
        let (first, more) = gateway_selectors(a, b, &[gre], ChildLayout::Split);
        assert_eq!(
            first,
            (
                vec![ts::host(a, 47, 0, u16::MAX)],
                vec![ts::host(b, 47, 0, u16::MAX)]
            )
        );
        assert!(more.is_empty());
        // Several selectors: each one's outbound, then the inbound ones.
        let tcp = GatewaySelector {
            protocol: 6,
            ports: 7471..=7471,
        };
        let (first, more) = gateway_selectors(a, b, &[vxlan, tcp], ChildLayout::Split);
        assert_eq!(first, (any(a), port(b)));
        assert_eq!(more.len(), 3);
        assert_eq!(
            more[0],
            (
                vec![ts::host(a, 6, 0, u16::MAX)],
                vec![ts::host(b, 6, 7471, 7471)]
            )
        );
        assert_eq!(more[1], (port(a), any(b)));
    }
}
