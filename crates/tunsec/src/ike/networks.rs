//! Keys per network (`[peer.ike] keys = "per_network"`): a Child SA of its
//! own for each virtual network two hosts share, labelled in IKE with the
//! network's identity on the wire (`labels.rs` of tunsec-ike), and bound
//! in the data plane to that network alone (`SaConfig::binding`).
//!
//! A network's label is what both hosts see of it: its encapsulation and
//! VNI (`vxlan/100`, `geneve/7`), or for GUE, which has no VNI, its port
//! (`gue/6080`). Two hosts that name a network differently still agree.

use std::net::IpAddr;

use anyhow::bail;
use tunsec_datapath::gateway::VniPolicy;
use tunsec_ike::sa::ts;

use super::selectors::ChildTs;
use crate::config::{ChildSelectors, Config, Network, TunnelEncapsulation};

/// A network of this host, as keys per network see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NetworkLabel {
    pub(super) name: String,
    /// The label in IKE.
    pub(super) label: Vec<u8>,
    /// The tunnel port.
    pub(super) port: u16,
}

/// The label of network `n`.
fn label_of(n: &Network) -> Vec<u8> {
    match n.encapsulation {
        TunnelEncapsulation::Vxlan => format!("vxlan/{}", n.vni),
        TunnelEncapsulation::Geneve => format!("geneve/{}", n.vni),
        TunnelEncapsulation::Gue => format!("gue/{}", n.port),
    }
    .into_bytes()
}

/// Every network of `config`, in the tables' order (a network's index
/// there is its position here).
pub(super) fn labels(config: &Config) -> Vec<NetworkLabel> {
    config
        .networks
        .iter()
        .map(|n| NetworkLabel {
            name: n.name.clone(),
            label: label_of(n),
            port: n.port,
        })
        .collect()
}

/// The Child SAs of a peer with keys per network between `local` and
/// `remote`: one per network it carries (`peer_networks`, by name), in
/// the order of `all`, with its selectors (host to host, or with
/// `ChildSelectors::Ports` the network's tunnel port) and its label.
pub(super) fn children(
    local: IpAddr,
    remote: IpAddr,
    kind: ChildSelectors,
    peer_networks: &[String],
    all: &[NetworkLabel],
) -> Vec<(ChildTs, Vec<u8>)> {
    all.iter()
        .filter(|n| peer_networks.contains(&n.name))
        .map(|n| {
            let (lo, hi) = match kind {
                ChildSelectors::Host => (0, u16::MAX),
                ChildSelectors::Ports => (n.port, n.port),
            };
            let ts = (
                vec![ts::host(local, 17, lo, hi)],
                vec![ts::host(remote, 17, lo, hi)],
            );
            (ts, n.label.clone())
        })
        .collect()
}

/// Gateway mode's Child SAs with keys per network between `local` and
/// `remote`: one per keyed VNI rule of `vnis`, with its selector's ports
/// on both sides and its label (`vxlan/100`, `vxlan/300-309`), which
/// binds it to the rule's first VNI (`VniRule::binding`).
pub(super) fn gateway_children(
    local: IpAddr,
    remote: IpAddr,
    vnis: &[VniPolicy],
) -> Vec<(ChildTs, Vec<u8>)> {
    vnis.iter()
        .flat_map(|p| {
            let (lo, hi) = (*p.ports.start(), *p.ports.end());
            p.rules
                .iter()
                .filter(|r| r.binding().is_some())
                .map(move |r| {
                    let ts = (
                        vec![ts::host(local, 17, lo, hi)],
                        vec![ts::host(remote, 17, lo, hi)],
                    );
                    (ts, p.label(r).into_bytes())
                })
        })
        .collect()
}

/// What a Child SA with `label` is bound to in the data plane: the
/// network's index, or nothing for an unlabelled (shared) Child SA.
pub(super) fn binding(all: &[NetworkLabel], label: Option<&[u8]>) -> anyhow::Result<Option<u32>> {
    let Some(label) = label else {
        return Ok(None);
    };
    match all.iter().position(|n| n.label == label) {
        Some(i) => Ok(Some(u32::try_from(i)?)),
        None => bail!(
            "the Child SA's network label {:?} names no network of this host",
            String::from_utf8_lossy(label)
        ),
    }
}

/// The name of the network a label names, for status and logs.
pub(super) fn name_of<'a>(all: &'a [NetworkLabel], label: &[u8]) -> Option<&'a str> {
    all.iter()
        .find(|n| n.label == label)
        .map(|n| n.name.as_str())
}

#[cfg(test)]
mod test {
    use super::*;

    fn net(name: &str, label: &str, port: u16) -> NetworkLabel {
        NetworkLabel {
            name: name.into(),
            label: label.as_bytes().to_vec(),
            port,
        }
    }

    #[test]
    fn one_child_sa_per_shared_network_bound_by_its_label() {
        let all = [
            net("blue", "vxlan/100", 4789),
            net("red", "vxlan/200", 4789),
            net("green", "geneve/7", 6081),
        ];
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let peer = ["green".to_owned(), "blue".to_owned()];
        let kids = children(a, b, ChildSelectors::Ports, &peer, &all);
        let labels: Vec<&[u8]> = kids.iter().map(|(_, l)| l.as_slice()).collect();
        assert_eq!(labels, [b"vxlan/100".as_slice(), b"geneve/7"]);
        assert_eq!(kids[1].0.0, vec![ts::host(a, 17, 6081, 6081)]);
        let host = children(a, b, ChildSelectors::Host, &peer, &all);
        assert_eq!(host[0].0.1, vec![ts::host(b, 17, 0, u16::MAX)]);
        assert_eq!(binding(&all, Some(b"geneve/7")).unwrap(), Some(2));
        assert_eq!(binding(&all, None).unwrap(), None);
        let err = binding(&all, Some(b"vxlan/999")).unwrap_err().to_string();
        assert!(err.contains("vxlan/999"), "{err}");
        assert_eq!(name_of(&all, b"vxlan/200"), Some("red"));
    }
}
