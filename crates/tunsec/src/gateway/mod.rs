//! `tunsecd` in gateway mode: protects the kernel's own tunnels (a vxlan
//! device, OVS, a plain UDP or TCP service) by policy, without touching
//! them.
//!
//! It fails closed at start, at stop, and in between. Start-up goes in
//! this order: the control socket and the ESP socket (so a second daemon
//! fails before it touches the first one's entries); the guard
//! ([`nft`]), in one atomic replace of whatever was left; the TUN device;
//! the route table and the rules ([`steering::adopt`]), which takes over
//! what a stopped or killed daemon left without removing it first; the
//! workers. From the first steered packet on, a packet without an SA is
//! dropped and counted (`no_sa`) in the TUN device, never routed around
//! it.
//!
//! A clean stop, and a failed start, leave the guard, the rules and the
//! table's `unreachable` route in place (`[gateway] on_stop = "block"`,
//! the default): the TUN device and its route go, the steered packets
//! find no route, and the guard drops whatever would leave otherwise.
//! Only an explicit act removes them: `tunsec gateway release` ([`release`])
//! while no daemon runs, or `on_stop = "release"`.
//!
//! Here: the MTUs, the tables and the release; [`daemon`]: start, stop,
//! control socket, status; [`steering`]: rules and routes (rtnetlink);
//! [`nft`]: the guard.
//!
//! Keys are manual (`[peer.sa]`) or negotiated with IKEv2 (`[peer.ike]`):
//! the same IKE driver as in overlay mode installs its Child SAs into the
//! gateway tables, with the peer's selectors as traffic selectors and
//! `gateway.mode` as the only acceptable ESP mode.

pub mod daemon;
pub mod nft;

mod reconfigure;
pub mod steering;

pub use daemon::GatewayDaemon;

use std::net::IpAddr;
use std::time::Instant;

use anyhow::Context;
use tunsec_datapath::gateway::vni::range_text;
use tunsec_datapath::gateway::{self, GatewayMode, GatewayPeer, GatewayTables, VniPolicy};
use tunsec_datapath::packet::EspTransport;
use tunsec_datapath::shared_sa::InboundEntry;

use crate::config::{ChildMode, Config, EspEncapsulation, Gateway, GuardScopeKind, Peer};
use crate::status::GatewayVniStatus;

/// The MTUs of gateway mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayMtu {
    /// The TUN device's.
    pub tun: u16,
    /// The advice for a kernel VXLAN/Geneve device behind it.
    pub kernel_tunnel: u16,
}

fn mode(m: ChildMode) -> GatewayMode {
    match m {
        ChildMode::Transport => GatewayMode::Transport,
        ChildMode::Tunnel => GatewayMode::Tunnel,
    }
}

fn esp_transport(config: &Config) -> EspTransport {
    match config.esp.encapsulation {
        EspEncapsulation::Udp => EspTransport::Udp(config.esp.port),
        EspEncapsulation::Esp => EspTransport::Raw,
    }
}

/// The TUN MTU and the kernel tunnel advice from `node.underlay_mtu` and
/// the ESP overhead.
pub fn mtu(config: &Config, gw: &Gateway) -> anyhow::Result<GatewayMtu> {
    let v6 = config.node.underlay.is_ipv6();
    let tun = gateway::tun_mtu(
        config.node.underlay_mtu,
        v6,
        esp_transport(config),
        mode(gw.mode),
    );
    let min = if v6 { 1280 } else { 576 };
    anyhow::ensure!(
        tun >= min,
        "node.underlay_mtu: {} leaves a TUN MTU of {tun}, below {min}",
        config.node.underlay_mtu
    );
    Ok(GatewayMtu {
        tun,
        kernel_tunnel: gateway::kernel_tunnel_mtu(tun, v6),
    })
}

/// Builds the gateway tables (with manually keyed SAs) from a validated
/// config: peer `i` in slot `i`.
pub fn build_tables(config: &Config, gw: &Gateway, now: Instant) -> anyhow::Result<GatewayTables> {
    let mut tables = GatewayTables::new(config.node.underlay, esp_transport(config), mode(gw.mode));
    for (slot, p) in config.peers.iter().enumerate() {
        insert_peer(&mut tables, config, slot, p, now)?;
    }
    Ok(tables)
}

/// Puts `p` into `slot` of the tables: with its manually keyed SA pair,
/// or with no SA until IKE installs one (its traffic is dropped until
/// then).
pub fn insert_peer(
    tables: &mut GatewayTables,
    config: &Config,
    slot: usize,
    p: &Peer,
    now: Instant,
) -> anyhow::Result<()> {
    let mut peer = GatewayPeer::new(p.name.clone(), p.underlay, p.selectors.clone());
    peer.vnis = p.vnis.clone();
    let mut inbound = None;
    if let Some((out, spi_in, sa_in)) = crate::peers::manual_sas(config, p, now)? {
        peer.outbound.push(out);
        inbound = Some((spi_in, sa_in));
    }
    tables
        .insert_peer(slot, peer)
        .with_context(|| format!("peer {:?}", p.name))?;
    if let Some((spi, sa)) = inbound {
        tables.inbound.insert(spi, InboundEntry { peer: slot, sa });
    }
    Ok(())
}

/// The guard's part of each peer.
pub(crate) fn guard_peers<'a>(
    peers: impl IntoIterator<Item = (usize, &'a Peer)>,
) -> Vec<nft::GuardPeer> {
    peers
        .into_iter()
        .map(|(slot, p)| nft::GuardPeer {
            slot,
            underlay: p.underlay,
            selectors: p.selectors.clone(),
            vnis: p.vnis.clone(),
        })
        .collect()
}

/// Installs (or replaces) the guard over `peers`, its counters starting
/// from `carry`.
pub(crate) fn install_guard(
    gw: &Gateway,
    peers: &[nft::GuardPeer],
    carry: &nft::Counters,
) -> anyhow::Result<()> {
    let scope = match gw.guard {
        GuardScopeKind::All => nft::GuardScope::All,
        GuardScopeKind::Peers => nft::GuardScope::Peers,
    };
    let ruleset = nft::ruleset(&gw.nft_table, &gw.tun, gw.fwmark, peers, scope, carry);
    nft::install(&gw.nft_table, &ruleset)
}

/// The steering that `peers` need.
pub(crate) fn steering_of<'a>(
    gw: &Gateway,
    local: IpAddr,
    peers: impl IntoIterator<Item = (usize, &'a Peer)>,
) -> steering::Steering {
    steering::Steering {
        tun: gw.tun.clone(),
        local,
        table: gw.table,
        priority: gw.rule_priority,
        fwmark: gw.fwmark,
        rules: peers
            .into_iter()
            .flat_map(|(_, p)| steering::rules_for(p.underlay, &p.selectors))
            .collect(),
    }
}

/// What [`remove_entries`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Policy-routing rules.
    pub rules: usize,
    /// Routes of the steering table.
    pub routes: usize,
    /// Whether the guard's nftables table was there.
    pub guard: bool,
}

/// Removes every entry of `gw`'s: the rules at its two priorities and
/// towards its table, the table's routes, the guard. From then on the
/// kernel's tunnels send in the clear.
pub fn remove_entries(gw: &Gateway) -> anyhow::Result<Released> {
    let removed = steering::remove_all(gw.table, gw.rule_priority)?;
    let guard = nft::remove(&gw.nft_table)?;
    let released = Released {
        rules: removed.rules,
        routes: removed.routes,
        guard,
    };
    if released != Released::default() {
        tracing::warn!(
            rules = released.rules,
            routes = released.routes,
            nft_table = guard,
            "removed the gateway entries: the selectors' traffic is no longer blocked"
        );
    }
    Ok(released)
}

/// `tunsec gateway release`: removes what a stopped daemon left in place
/// (see the [module documentation](self)). Refused while a daemon answers
/// on `node.control_socket`: a running daemon's entries are its own.
pub fn release(config: &Config) -> anyhow::Result<Released> {
    let gw = config
        .gateway
        .as_ref()
        .context("gateway: the config has no [gateway]")?;
    let socket = &config.node.control_socket;
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        anyhow::bail!(
            "node.control_socket: tunsecd is running ({} answers); stop it first, or set \
             [gateway] on_stop = \"release\" and stop it",
            socket.display()
        );
    }
    remove_entries(gw)
}

/// Each VNI rule of `policies`, then its default, with its counters.
pub(crate) fn vni_status(policies: &[VniPolicy]) -> Vec<GatewayVniStatus> {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    policies
        .iter()
        .flat_map(|p| {
            let tunnel = format!("{}/{}", p.tunnel.name(), range_text(&p.ports));
            let rules = p.rules.iter().map(|r| (Some(&r.vnis), r));
            rules
                .chain(std::iter::once((None, &p.default)))
                .map(move |(vnis, r)| GatewayVniStatus {
                    tunnel: tunnel.clone(),
                    vnis: match vnis {
                        None => "default".to_owned(),
                        Some(v) => range_text(v),
                    },
                    policy: r.action.name().to_owned(),
                    sealed: load(&r.counters.sealed),
                    clear: load(&r.counters.clear),
                    discarded: load(&r.counters.discarded),
                    opened: load(&r.counters.opened),
                    network_mismatch: load(&r.counters.network_mismatch),
                })
        })
        .collect()
}

/// `udp/4789`, `tcp/16385-16390`, `gre`.
pub fn selector_text(s: &gateway::GatewaySelector) -> String {
    let proto = match s.protocol {
        17 => "udp".to_owned(),
        6 => "tcp".to_owned(),
        132 => "sctp".to_owned(),
        gateway::GRE => "gre".to_owned(),
        n => n.to_string(),
    };
    if !s.has_ports() {
        return proto;
    }
    format!("{proto}/{}", range_text(&s.ports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_print_like_strongswan_ports() {
        let s = gateway::GatewaySelector {
            protocol: 17,
            ports: 4789..=4789,
        };
        assert_eq!(selector_text(&s), "udp/4789");
        let s = gateway::GatewaySelector {
            protocol: 6,
            ports: 16385..=16390,
        };
        assert_eq!(selector_text(&s), "tcp/16385-16390");
    }
}
