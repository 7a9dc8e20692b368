//! Policy routing for gateway mode, over rtnetlink: the rules that steer
//! the kernel's own tunnel packets into tunsecd's TUN device, the route
//! table behind them, and their removal.
//!
//! ```text
//! P     fwmark M lookup main            tunsecd's own sockets: never steered
//! P+1   iif lo to PEER ipproto udp dport 4789 lookup T
//! P+1   iif lo to PEER ipproto udp sport 4789 lookup T   (one pair per selector)
//! table T: default dev TUN src LOCAL
//! ```
//!
//! `iif lo` limits the rules to packets this host sends (forwarded
//! traffic is not ours to protect). Everything is found again by its
//! fixed priorities `P` and `P+1` and its table `T`, so that
//! [`remove_all`] clears what a killed daemon left as well as what this
//! one installed.

use std::net::IpAddr;

use anyhow::{Context, bail};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::IpProtocol;
use rtnetlink::packet_route::route::{RouteAttribute, RouteHeader, RouteMessage, RouteType};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

/// One steering rule: traffic to `peer` of `protocol` whose source or
/// destination port (`by_source`) is in `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SteerRule {
    /// The peer's underlay address.
    pub peer: IpAddr,
    /// The IP protocol.
    pub protocol: u8,
    /// The port range.
    pub ports: (u16, u16),
    /// Match the source port (answers of a local service) instead of the
    /// destination port.
    pub by_source: bool,
}

/// What gateway mode installs.
#[derive(Debug, Clone)]
pub struct Steering {
    /// The TUN device.
    pub tun: String,
    /// This host's underlay address (the preferred source of the route).
    pub local: IpAddr,
    /// The route table.
    pub table: u32,
    /// The bypass rule's priority; the steering rules have `priority + 1`.
    pub priority: u32,
    /// The mark of tunsecd's own sockets.
    pub fwmark: u32,
    /// The steering rules.
    pub rules: Vec<SteerRule>,
}

/// Runs `f` with an rtnetlink handle on a short-lived single-threaded
/// runtime: the data path stays on plain threads, and routing changes
/// only at start and stop.
fn with_handle<T>(f: impl AsyncFnOnce(Handle) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("cannot start a runtime for rtnetlink")?;
    rt.block_on(async {
        let (connection, handle, _) =
            rtnetlink::new_connection().context("cannot open an rtnetlink socket")?;
        let conn = tokio::spawn(connection);
        let r = f(handle).await;
        conn.abort();
        r
    })
}

fn host_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// The metric of the table's `unreachable default` route, behind the
/// TUN device's route.
pub const UNREACHABLE_METRIC: u32 = 0xffff;

/// Installs the route table and the rules. The routes go first, so a
/// rule never points at an empty table (a lookup that finds no route
/// falls through to the next rule, the main table: cleartext). Besides
/// the default route via the TUN device the table holds an `unreachable
/// default` of a higher metric, which is tied to no device: if tunsecd is
/// killed, the TUN device and its route go, and the rules left behind
/// still fail closed (the kernel's tunnel packets find no route) until
/// the next start clears them. Then the bypass rule, then the steering
/// rules.
pub fn install(s: &Steering) -> anyhow::Result<()> {
    with_handle(async |handle| {
        let index = link_index(&handle, &s.tun).await?;
        let unreachable = match s.local {
            IpAddr::V4(_) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .table_id(s.table)
                .kind(RouteType::Unreachable)
                .priority(UNREACHABLE_METRIC)
                .build(),
            IpAddr::V6(_) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .table_id(s.table)
                .kind(RouteType::Unreachable)
                .priority(UNREACHABLE_METRIC)
                .build(),
        };
        handle
            .route()
            .add(unreachable)
            .execute()
            .await
            .with_context(|| {
                format!(
                    "gateway.table: cannot add the unreachable default route to table {}",
                    s.table
                )
            })?;
        let route = match s.local {
            IpAddr::V4(a) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .table_id(s.table)
                .output_interface(index)
                .pref_source(a)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .table_id(s.table)
                .output_interface(index)
                .pref_source(a)
                .build(),
        };
        handle.route().add(route).execute().await.with_context(|| {
            format!(
                "gateway.table: cannot add the default route via {} to table {}",
                s.tun, s.table
            )
        })?;
        let mut bypass = handle.rule().add();
        bypass = bypass
            .priority(s.priority)
            .fw_mark(s.fwmark)
            .table_id(u32::from(RouteHeader::RT_TABLE_MAIN))
            .action(RuleAction::ToTable);
        bypass
            .message_mut()
            .attributes
            .push(RuleAttribute::FwMask(u32::MAX));
        set_family(bypass.message_mut(), s.local);
        bypass.execute().await.with_context(|| {
            format!(
                "gateway.rule_priority: cannot add the fwmark {:#x} rule at priority {}",
                s.fwmark, s.priority
            )
        })?;
        for r in &s.rules {
            let mut add = handle
                .rule()
                .add()
                .priority(s.priority + 1)
                .input_interface("lo")
                .table_id(s.table)
                .action(RuleAction::ToTable);
            let m = add.message_mut();
            set_family(m, s.local);
            m.header.dst_len = host_len(r.peer);
            m.attributes.push(RuleAttribute::Destination(r.peer));
            m.attributes
                .push(RuleAttribute::IpProtocol(IpProtocol::from(r.protocol)));
            let range = RulePortRange {
                start: r.ports.0,
                end: r.ports.1,
            };
            m.attributes.push(if r.by_source {
                RuleAttribute::SourcePortRange(range)
            } else {
                RuleAttribute::DestinationPortRange(range)
            });
            add.execute().await.with_context(|| {
                format!(
                    "cannot add the steering rule for {} protocol {} ports {}-{}",
                    r.peer, r.protocol, r.ports.0, r.ports.1
                )
            })?;
        }
        Ok(())
    })
}

fn set_family(m: &mut RuleMessage, addr: IpAddr) {
    m.header.family = if addr.is_ipv4() {
        rtnetlink::packet_route::AddressFamily::Inet
    } else {
        rtnetlink::packet_route::AddressFamily::Inet6
    };
}

async fn link_index(handle: &Handle, name: &str) -> anyhow::Result<u32> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(link.header.index),
        Ok(None) => bail!("no device {name:?}"),
        Err(e) => Err(e).with_context(|| format!("cannot look up device {name:?}")),
    }
}

/// A kernel tunnel device as rtnetlink describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelLink {
    /// Its MTU.
    pub mtu: u32,
    /// For a vxlan device bound to a lower device (`dev eth0`): that
    /// device's index. Its route lookups then name the output device,
    /// which the steering table's route (via the TUN device) never
    /// matches, so its packets are not steered.
    pub vxlan_lower: Option<u32>,
}

/// Looks up a kernel tunnel device; `Ok(None)` if there is none of that
/// name.
pub fn tunnel_link(name: &str) -> anyhow::Result<Option<TunnelLink>> {
    use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo};
    with_handle(async |handle| {
        let mut links = handle.link().get().match_name(name.to_owned()).execute();
        // An error is ENODEV: no such device.
        let Ok(Some(link)) = links.try_next().await else {
            return Ok(None);
        };
        let mut out = TunnelLink {
            mtu: 0,
            vxlan_lower: None,
        };
        for a in &link.attributes {
            match a {
                LinkAttribute::Mtu(m) => out.mtu = *m,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Data(InfoData::Vxlan(v)) = info {
                            out.vxlan_lower = v.iter().find_map(|x| match x {
                                InfoVxlan::Link(i) if *i != 0 => Some(*i),
                                _ => None,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Some(out))
    })
}

/// What [`remove_all`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Rules.
    pub rules: usize,
    /// Routes.
    pub routes: usize,
}

/// Whether a rule is one of ours: priority `priority` (the bypass) or
/// `priority + 1` (steering), or any rule that looks up `table`.
fn is_ours(m: &RuleMessage, table: u32, priority: u32) -> bool {
    let mut prio = 0;
    let mut tbl = u32::from(m.header.table);
    for a in &m.attributes {
        match a {
            RuleAttribute::Priority(p) => prio = *p,
            RuleAttribute::Table(t) => tbl = *t,
            _ => {}
        }
    }
    prio == priority || prio == priority + 1 || tbl == table
}

fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

/// Removes every rule at the two priorities or towards `table`, and every
/// route in `table`, of both address families: this daemon's, or a
/// killed one's. Returns what it removed.
pub fn remove_all(table: u32, priority: u32) -> anyhow::Result<Removed> {
    with_handle(async |handle| {
        let mut removed = Removed::default();
        for v in [IpVersion::V4, IpVersion::V6] {
            let rules: Vec<RuleMessage> = handle
                .rule()
                .get(v.clone())
                .execute()
                .try_collect()
                .await
                .context("cannot list the routing rules")?;
            for r in rules.into_iter().filter(|r| is_ours(r, table, priority)) {
                handle
                    .rule()
                    .del(r)
                    .execute()
                    .await
                    .context("cannot delete a routing rule")?;
                removed.rules += 1;
            }
            let probe = match v {
                IpVersion::V4 => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
                IpVersion::V6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
            };
            let mut dump = probe;
            dump.header.table = RouteHeader::RT_TABLE_UNSPEC;
            let routes: Vec<RouteMessage> = handle
                .route()
                .get(dump)
                .execute()
                .try_collect()
                .await
                .context("cannot list the routes")?;
            for r in routes.into_iter().filter(|r| route_table(r) == table) {
                // A route whose device just went away is gone already.
                if handle.route().del(r).execute().await.is_ok() {
                    removed.routes += 1;
                }
            }
        }
        Ok(removed)
    })
}

/// The steering rules for a peer's selectors: one matching the
/// destination port and one the source port, per selector.
pub fn rules_for(
    peer: IpAddr,
    selectors: &[tunsec_datapath::gateway::GatewaySelector],
) -> Vec<SteerRule> {
    selectors
        .iter()
        .flat_map(|s| {
            [false, true].map(|by_source| SteerRule {
                peer,
                protocol: s.protocol,
                ports: (*s.ports.start(), *s.ports.end()),
                by_source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunsec_datapath::gateway::GatewaySelector;

    #[test]
    fn two_rules_per_selector() {
        let peer: IpAddr = "192.0.2.2".parse().unwrap();
        let rules = rules_for(
            peer,
            &[
                GatewaySelector {
                    protocol: 17,
                    ports: 4789..=4789,
                },
                GatewaySelector {
                    protocol: 6,
                    ports: 16385..=16390,
                },
            ],
        );
        assert_eq!(rules.len(), 4);
        assert_eq!(
            rules[3],
            SteerRule {
                peer,
                protocol: 6,
                ports: (16385, 16390),
                by_source: true
            }
        );
    }

    #[test]
    fn ours_by_priority_or_table() {
        let mut m = RuleMessage::default();
        m.attributes.push(RuleAttribute::Priority(29_001));
        assert!(is_ours(&m, 0x7453, 29_000));
        let mut m = RuleMessage::default();
        m.attributes.push(RuleAttribute::Priority(100));
        m.attributes.push(RuleAttribute::Table(0x7453));
        assert!(is_ours(&m, 0x7453, 29_000));
        let mut m = RuleMessage::default();
        m.attributes.push(RuleAttribute::Priority(32_766));
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        assert!(!is_ours(&m, 0x7453, 29_000));
    }
}
