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
//! fixed priorities `P` and `P+1` and its table `T`: [`adopt`] takes over
//! what a stopped or killed daemon left in place (it stays, so that the
//! kernel's tunnels fail closed while no daemon runs), and [`remove_all`]
//! clears it when the operator releases the steering.

use std::net::IpAddr;

use anyhow::Context;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::IpProtocol;
use rtnetlink::packet_route::route::{RouteAttribute, RouteHeader, RouteMessage, RouteType};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use crate::netlink::{link_index, with_handle};

/// One steering rule: traffic to `peer` of `protocol` whose source or
/// destination port (`by_source`) is in `ports`, or all of it for a
/// protocol without ports (GRE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SteerRule {
    /// The peer's underlay address.
    pub peer: IpAddr,
    /// The IP protocol.
    pub protocol: u8,
    /// The port range; `None` for a protocol without ports.
    pub ports: Option<(u16, u16)>,
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

fn host_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

/// The metric of the table's `unreachable default` route, behind the
/// TUN device's route.
pub const UNREACHABLE_METRIC: u32 = 0xffff;

/// What [`adopt`] found and changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    /// Rules that were in place already (a stopped or killed daemon's)
    /// and stay untouched.
    pub kept: usize,
    /// Rules added.
    pub added: usize,
    /// Rules of ours that the config no longer wants, removed.
    pub removed: usize,
}

/// Brings the route table and the rules to what `s` describes, adopting
/// whatever a stopped or killed daemon left in place.
///
/// Nothing that already matches is removed first, so a restart never
/// opens a moment in which a steering rule is missing. The routes go
/// first, so a rule never points at an empty table (a lookup that finds
/// no route falls through to the next rule, the main table: cleartext).
/// Besides the default route via the TUN device the table holds an
/// `unreachable default` of a higher metric, which is tied to no device:
/// when tunsecd stops or is killed, the TUN device and its route go, and
/// the rules left behind still fail closed (the kernel's tunnel packets
/// find no route). Both routes are added with `NLM_F_REPLACE`, so a
/// present one is kept. Then the missing rules, the bypass rule first;
/// last, the rules of ours that are not wanted any more (a peer or a
/// selector that left the config, or the other address family).
pub fn adopt(s: &Steering) -> anyhow::Result<Adopted> {
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
        replace_route(&handle, unreachable).await.with_context(|| {
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
        replace_route(&handle, route).await.with_context(|| {
            format!(
                "gateway.table: cannot add the default route via {} to table {}",
                s.tun, s.table
            )
        })?;

        let mut missing = wanted_rules(s);
        let mut stale = Vec::new();
        let mut adopted = Adopted::default();
        for v in [IpVersion::V4, IpVersion::V6] {
            for m in our_rules(&handle, v, s.table, s.priority).await? {
                let key = RuleKey::of(&m);
                match missing.iter().position(|k| Some(k) == key.as_ref()) {
                    Some(i) => {
                        missing.remove(i);
                        adopted.kept += 1;
                    }
                    None => stale.push(m),
                }
            }
        }
        for key in missing {
            let mut add = handle.rule().add();
            *add.message_mut() = key.message();
            add.execute()
                .await
                .with_context(|| format!("gateway: cannot add the routing rule {key}"))?;
            adopted.added += 1;
        }
        for m in stale {
            delete_rule(&handle, m)
                .await
                .context("cannot delete a stale routing rule")?;
            adopted.removed += 1;
        }
        // Routes of the other family in our table belong to a config
        // that is gone (its rules went just above).
        let other = if s.local.is_ipv4() {
            IpVersion::V6
        } else {
            IpVersion::V4
        };
        for r in routes_in_table(&handle, other, s.table).await? {
            let _ = handle.route().del(r).execute().await;
        }
        Ok(adopted)
    })
}

/// One policy-routing rule of ours, in a form that compares: what
/// [`adopt`] wants is built as this, and what the kernel lists is read
/// into it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RuleKey {
    v4: bool,
    priority: u32,
    table: u32,
    /// The mark and its mask.
    fwmark: Option<(u32, u32)>,
    iif: Option<String>,
    /// The destination and its prefix length.
    dst: Option<(IpAddr, u8)>,
    protocol: Option<u8>,
    sport: Option<(u16, u16)>,
    dport: Option<(u16, u16)>,
}

impl RuleKey {
    /// A rule at `priority` that looks up `table` for every packet (of
    /// IPv4 if `v4`, else of IPv6).
    fn lookup(v4: bool, priority: u32, table: u32) -> Self {
        Self {
            v4,
            priority,
            table,
            fwmark: None,
            iif: None,
            dst: None,
            protocol: None,
            sport: None,
            dport: None,
        }
    }

    /// The key of a rule the kernel listed; `None` for a rule whose
    /// action is not a table lookup (never one of ours).
    fn of(m: &RuleMessage) -> Option<Self> {
        if m.header.action != RuleAction::ToTable {
            return None;
        }
        let mut key = Self::lookup(
            m.header.family == rtnetlink::packet_route::AddressFamily::Inet,
            0,
            u32::from(m.header.table),
        );
        let mut mark = None;
        let mut mask = u32::MAX;
        for a in &m.attributes {
            match a {
                RuleAttribute::Priority(p) => key.priority = *p,
                RuleAttribute::Table(t) => key.table = *t,
                RuleAttribute::FwMark(v) => mark = Some(*v),
                RuleAttribute::FwMask(v) => mask = *v,
                RuleAttribute::Iifname(i) => key.iif = Some(i.clone()),
                RuleAttribute::Destination(d) => key.dst = Some((*d, m.header.dst_len)),
                RuleAttribute::IpProtocol(p) => key.protocol = Some(u8::from(*p)),
                RuleAttribute::SourcePortRange(r) => key.sport = Some((r.start, r.end)),
                RuleAttribute::DestinationPortRange(r) => key.dport = Some((r.start, r.end)),
                _ => {}
            }
        }
        key.fwmark = mark.map(|v| (v, mask));
        Some(key)
    }

    /// The message that adds this rule.
    fn message(&self) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = if self.v4 {
            rtnetlink::packet_route::AddressFamily::Inet
        } else {
            rtnetlink::packet_route::AddressFamily::Inet6
        };
        m.header.action = RuleAction::ToTable;
        m.attributes.push(RuleAttribute::Priority(self.priority));
        match u8::try_from(self.table) {
            Ok(t) => m.header.table = t,
            Err(_) => m.attributes.push(RuleAttribute::Table(self.table)),
        }
        if let Some((mark, mask)) = self.fwmark {
            m.attributes.push(RuleAttribute::FwMark(mark));
            m.attributes.push(RuleAttribute::FwMask(mask));
        }
        if let Some(iif) = &self.iif {
            m.attributes.push(RuleAttribute::Iifname(iif.clone()));
        }
        if let Some((dst, len)) = self.dst {
            m.header.dst_len = len;
            m.attributes.push(RuleAttribute::Destination(dst));
        }
        if let Some(p) = self.protocol {
            m.attributes
                .push(RuleAttribute::IpProtocol(IpProtocol::from(p)));
        }
        if let Some((start, end)) = self.sport {
            m.attributes
                .push(RuleAttribute::SourcePortRange(RulePortRange { start, end }));
        }
        if let Some((start, end)) = self.dport {
            m.attributes
                .push(RuleAttribute::DestinationPortRange(RulePortRange {
                    start,
                    end,
                }));
        }
        m
    }
}

impl std::fmt::Display for RuleKey {
    /// As `ip rule` prints it, roughly.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.priority)?;
        if let Some(iif) = &self.iif {
            write!(f, " iif {iif}")?;
        }
        if let Some((dst, _)) = self.dst {
            write!(f, " to {dst}")?;
        }
        if let Some(p) = self.protocol {
            write!(f, " ipproto {p}")?;
        }
        if let Some((a, b)) = self.sport {
            write!(f, " sport {a}-{b}")?;
        }
        if let Some((a, b)) = self.dport {
            write!(f, " dport {a}-{b}")?;
        }
        if let Some((mark, _)) = self.fwmark {
            write!(f, " fwmark {mark:#x}")?;
        }
        write!(f, " lookup {}", self.table)
    }
}

/// Adds `route`, or replaces the route it would collide with.
async fn replace_route(handle: &Handle, route: RouteMessage) -> Result<(), rtnetlink::Error> {
    handle.route().add(route).replace().execute().await
}

/// Deletes the routing rule `rule`.
async fn delete_rule(handle: &Handle, rule: RuleMessage) -> Result<(), rtnetlink::Error> {
    handle.rule().del(rule).execute().await
}

/// The rules `s` wants, the bypass rule first: tunsecd's own marked
/// packets look up the main table; each steering rule sends a peer's
/// selector traffic that this host sends (`iif lo`) to the table.
fn wanted_rules(s: &Steering) -> Vec<RuleKey> {
    let v4 = s.local.is_ipv4();
    let bypass = RuleKey {
        fwmark: Some((s.fwmark, u32::MAX)),
        ..RuleKey::lookup(v4, s.priority, u32::from(RouteHeader::RT_TABLE_MAIN))
    };
    let steer = s.rules.iter().map(|r| RuleKey {
        iif: Some("lo".to_owned()),
        dst: Some((r.peer, host_len(r.peer))),
        protocol: Some(r.protocol),
        sport: r.ports.filter(|_| r.by_source),
        dport: r.ports.filter(|_| !r.by_source),
        ..RuleKey::lookup(v4, s.priority + 1, s.table)
    });
    std::iter::once(bypass).chain(steer).collect()
}

/// Every message of a netlink dump; an error says what was being listed
/// (`context`).
async fn dump<T>(
    messages: impl futures_util::TryStream<Ok = T, Error = rtnetlink::Error>,
    context: &'static str,
) -> anyhow::Result<Vec<T>> {
    messages.try_collect().await.context(context)
}

/// The rules of one family that are ours (see [`is_ours`]).
async fn our_rules(
    handle: &Handle,
    v: IpVersion,
    table: u32,
    priority: u32,
) -> anyhow::Result<Vec<RuleMessage>> {
    let rules = handle.rule().get(v).execute();
    Ok(dump(rules, "cannot list the routing rules")
        .await?
        .into_iter()
        .filter(|r| is_ours(r, table, priority))
        .collect())
}

/// The routes of one family in `table`.
async fn routes_in_table(
    handle: &Handle,
    v: IpVersion,
    table: u32,
) -> anyhow::Result<Vec<RouteMessage>> {
    let mut request = match v {
        IpVersion::V4 => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        IpVersion::V6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    };
    request.header.table = RouteHeader::RT_TABLE_UNSPEC;
    let routes = handle.route().get(request).execute();
    Ok(dump(routes, "cannot list the routes")
        .await?
        .into_iter()
        .filter(|r| route_table(r) == table)
        .collect())
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
            for r in our_rules(&handle, v.clone(), table, priority).await? {
                delete_rule(&handle, r)
                    .await
                    .context("cannot delete a routing rule")?;
                removed.rules += 1;
            }
            for r in routes_in_table(&handle, v, table).await? {
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
/// destination port and one the source port, per selector; one rule for
/// the whole protocol of a selector without ports (GRE).
pub fn rules_for(
    peer: IpAddr,
    selectors: &[tunsec_datapath::gateway::GatewaySelector],
) -> Vec<SteerRule> {
    selectors
        .iter()
        .flat_map(|s| {
            let dirs: &[bool] = if s.has_ports() {
                &[false, true]
            } else {
                &[false]
            };
            dirs.iter().map(move |&by_source| SteerRule {
                peer,
                protocol: s.protocol,
                ports: s.has_ports().then(|| (*s.ports.start(), *s.ports.end())),
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
                ports: Some((16385, 16390)),
                by_source: true
            }
        );
    }

    /// What `adopt` adds reads back as the same key, so a restart
    /// recognises every rule it finds as its own and keeps it.
    #[test]
    fn wanted_rules_read_back_as_themselves() {
        for local in ["192.0.2.1", "2001:db8::1"] {
            let local: IpAddr = local.parse().unwrap();
            let peer: IpAddr = if local.is_ipv4() {
                "192.0.2.2".parse().unwrap()
            } else {
                "2001:db8::2".parse().unwrap()
            };
            let s = Steering {
                tun: "tunsec-gw".into(),
                local,
                table: 0x7453,
                priority: 29_000,
                fwmark: 0x7453,
                rules: rules_for(
                    peer,
                    &[GatewaySelector {
                        protocol: 17,
                        ports: 4789..=4789,
                    }],
                ),
            };
            let wanted = wanted_rules(&s);
            assert_eq!(wanted.len(), 3);
            assert_eq!(wanted[0].fwmark, Some((0x7453, u32::MAX)), "bypass first");
            for key in &wanted {
                let m = key.message();
                assert!(is_ours(&m, 0x7453, 29_000), "{key}");
                assert_eq!(RuleKey::of(&m).as_ref(), Some(key));
            }
            // A rule of another selector is not one of these.
            let mut other = wanted[1].clone();
            other.dport = Some((6081, 6081));
            assert!(!wanted.contains(&other));
            assert_eq!(
                wanted[1].to_string(),
                format!("29001: iif lo to {peer} ipproto 17 dport 4789-4789 lookup 29779")
            );
        }
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
