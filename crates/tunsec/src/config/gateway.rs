//! `[gateway]` and `[[peer.selector]]`: gateway mode, where tunsecd
//! protects the kernel's own tunnels that policy routing steers into its
//! TUN device, and the selectors that say which traffic of a peer that is.

use serde::Deserialize;

use tunsec_datapath::gateway::{TunnelKind, VniAction, VniPolicy, VniRule};

use super::{ChildMode, ConfigError, EspSettings, check_ifname, invalid, quoted};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub(super) tun: Option<String>,
    pub(super) mode: Option<ChildMode>,
    pub(super) table: Option<u32>,
    pub(super) rule_priority: Option<u32>,
    pub(super) fwmark: Option<u32>,
    pub(super) nft_table: Option<String>,
    pub(super) guard: Option<GuardScopeKind>,
    pub(super) on_stop: Option<OnStop>,
    #[serde(default)]
    pub(super) tunnel_devices: Vec<String>,
}

/// What gateway mode leaves in place when tunsecd stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStop {
    /// The guard, the steering rules and the table's `unreachable`
    /// route stay (the default): the protected traffic stays blocked
    /// until the next start adopts them, or `tunsec gateway release`
    /// removes them.
    #[default]
    Block,
    /// Everything goes on a clean stop: the kernel's tunnels then send
    /// in the clear.
    Release,
}

/// Which cleartext sources gateway mode's inbound guard drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardScopeKind {
    /// Every source (the default): traffic on a peer's selector ports
    /// must come through the TUN device, whoever sent it.
    #[default]
    All,
    /// Only the peers' addresses.
    Peers,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSelector {
    pub(super) protocol: toml::Value,
    pub(super) ports: Option<toml::Value>,
    /// `vxlan` or `geneve`: the header whose VNI chooses the policy.
    pub(super) tunnel: Option<String>,
    /// The policy of the VNIs that no `[[peer.selector.vni]]` names.
    pub(super) policy: Option<String>,
    #[serde(default)]
    pub(super) vni: Vec<RawVni>,
}

/// `[[peer.selector.vni]]`: a VNI or a range, and its policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVni {
    pub(super) vnis: toml::Value,
    pub(super) policy: String,
}

/// Gateway mode's settings (`[gateway]`). The routing table, rule
/// priority, firewall mark and nftables table are fixed, recognisable
/// values, so that entries a killed daemon left behind are found and
/// removed on the next start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    /// The TUN device tunsecd creates and owns.
    pub tun: String,
    /// ESP transport mode (default) or tunnel mode.
    pub mode: ChildMode,
    /// The routing table whose default route is the TUN device.
    pub table: u32,
    /// The priority of the first policy-routing rule; the others follow
    /// it (`rule_priority + 1`).
    pub rule_priority: u32,
    /// The firewall mark on tunsecd's own sockets, whose packets the
    /// steering never catches.
    pub fwmark: u32,
    /// The nftables table (family `inet`) of the inbound guard.
    pub nft_table: String,
    /// Which cleartext sources the guard drops.
    pub guard: GuardScopeKind,
    /// What a clean stop (or a failed start) leaves in place.
    pub on_stop: OnStop,
    /// Kernel tunnel devices (a vxlan device, say) whose MTU status checks
    /// against the advice.
    pub tunnel_devices: Vec<String>,
}

/// The defaults of [`Gateway`].
pub mod gateway_defaults {
    /// The TUN device.
    pub const TUN: &str = "tunsec-gw";
    /// The routing table (0x7453, "tS").
    pub const TABLE: u32 = 0x7453;
    /// The first rule's priority (before the `main` table's 32766).
    pub const RULE_PRIORITY: u32 = 29_000;
    /// The firewall mark of tunsecd's own sockets.
    pub const FWMARK: u32 = 0x7453;
    /// The nftables table.
    pub const NFT_TABLE: &str = "tunsec_gw";
}

/// `[gateway]`, with the defaults of [`gateway_defaults`].
pub(super) fn validate_gateway(raw: RawGateway) -> Result<Gateway, ConfigError> {
    use gateway_defaults as d;
    let tun = raw.tun.unwrap_or_else(|| d::TUN.to_owned());
    check_ifname("gateway.tun", &tun)?;
    for (j, dev) in raw.tunnel_devices.iter().enumerate() {
        check_ifname(&format!("gateway.tunnel_devices[{j}]"), dev)?;
    }
    let table = raw.table.unwrap_or(d::TABLE);
    // 253 default, 254 main, 255 local; 0 unspecified.
    if table == 0 || (253..=255).contains(&table) {
        return Err(invalid(
            "gateway.table",
            table,
            "is a reserved routing table (0, 253 default, 254 main, 255 local)",
        ));
    }
    let rule_priority = raw.rule_priority.unwrap_or(d::RULE_PRIORITY);
    if rule_priority == 0 || rule_priority >= 32_765 {
        return Err(invalid(
            "gateway.rule_priority",
            rule_priority,
            "must be within 1..=32764, before the main table's rule (32766)",
        ));
    }
    let fwmark = raw.fwmark.unwrap_or(d::FWMARK);
    if fwmark == 0 {
        return Err(invalid("gateway.fwmark", 0, "must not be 0 (unmarked)"));
    }
    let nft_table = raw.nft_table.unwrap_or_else(|| d::NFT_TABLE.to_owned());
    let ok = !nft_table.is_empty()
        && nft_table.len() <= 63
        && nft_table.starts_with(|c: char| c.is_ascii_alphabetic())
        && nft_table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(invalid(
            "gateway.nft_table",
            quoted(&nft_table),
            "must be 1 to 63 letters, digits or '_', starting with a letter",
        ));
    }
    Ok(Gateway {
        tun,
        mode: raw.mode.unwrap_or_default(),
        table,
        rule_priority,
        fwmark,
        nft_table,
        guard: raw.guard.unwrap_or_default(),
        on_stop: raw.on_stop.unwrap_or_default(),
        tunnel_devices: raw.tunnel_devices,
    })
}

/// `peer[i].selector[j]`: a protocol, and its ports unless it is GRE;
/// never tunsecd's own IKE or ESP port.
pub(super) fn validate_selector(
    i: usize,
    j: usize,
    s: &RawSelector,
    esp: EspSettings,
) -> Result<tunsec_datapath::gateway::GatewaySelector, ConfigError> {
    let field = |name: &str| format!("peer[{i}].selector[{j}].{name}");
    let protocol = match &s.protocol {
        toml::Value::String(p) => match p.as_str() {
            "udp" => 17,
            "tcp" => 6,
            "sctp" => 132,
            "gre" => tunsec_datapath::gateway::GRE,
            _ => {
                return Err(invalid(
                    field("protocol"),
                    quoted(p),
                    "is not \"udp\", \"tcp\", \"sctp\" or \"gre\"",
                ));
            }
        },
        toml::Value::Integer(n @ (6 | 17 | 47 | 132)) => *n as u8,
        other => {
            return Err(invalid(
                field("protocol"),
                other,
                "is not \"udp\", \"tcp\", \"sctp\" or \"gre\" (or 17, 6, 132, 47)",
            ));
        }
    };
    if protocol == tunsec_datapath::gateway::GRE {
        // GRE has no ports: the selector takes the whole protocol.
        if let Some(p) = &s.ports {
            return Err(invalid(
                field("ports"),
                p,
                "cannot be set for GRE, which has no ports",
            ));
        }
        return Ok(tunsec_datapath::gateway::GatewaySelector::whole_protocol(
            protocol,
        ));
    }
    let Some(raw_ports) = &s.ports else {
        return Err(invalid(
            field("ports"),
            "(none)",
            "is required for UDP, TCP and SCTP: a port or a range \"LOW-HIGH\"",
        ));
    };
    let ports = parse_port_range(raw_ports).ok_or_else(|| {
        invalid(
            field("ports"),
            raw_ports,
            "is not a port or a range \"LOW-HIGH\" of ports 1 to 65535",
        )
    })?;
    // tunsecd's own IKE and ESP must never match a selector: the
    // inbound guard would drop the peer's ESP.
    let own: [u16; 2] = [500, esp.port];
    if protocol == 17 {
        if let Some(p) = own.iter().find(|&&p| ports.contains(&p)) {
            return Err(invalid(
                field("ports"),
                raw_ports,
                format!("covers UDP port {p}, which tunsecd's own IKE or ESP uses"),
            ));
        }
    }
    Ok(tunsec_datapath::gateway::GatewaySelector { protocol, ports })
}

/// `peer[i].selector[j]`'s policy by VNI, if it names a `tunnel`: its
/// default `policy` (`require` unless set) and its
/// `[[peer.selector.vni]]` rules, sorted, none overlapping another.
pub(super) fn validate_vni_policy(
    i: usize,
    j: usize,
    s: &RawSelector,
    selector: &tunsec_datapath::gateway::GatewaySelector,
) -> Result<Option<VniPolicy>, ConfigError> {
    let field = |name: &str| format!("peer[{i}].selector[{j}].{name}");
    let Some(tunnel) = &s.tunnel else {
        if let Some(p) = &s.policy {
            return Err(invalid(
                field("policy"),
                quoted(p),
                "needs tunnel = \"vxlan\" or \"geneve\": the policy is chosen by VNI",
            ));
        }
        if !s.vni.is_empty() {
            return Err(invalid(
                field("vni[0]"),
                "[[peer.selector.vni]]",
                "needs tunnel = \"vxlan\" or \"geneve\" on the selector",
            ));
        }
        return Ok(None);
    };
    let tunnel = match tunnel.as_str() {
        "vxlan" => TunnelKind::Vxlan,
        "geneve" => TunnelKind::Geneve,
        other => {
            return Err(invalid(
                field("tunnel"),
                quoted(other),
                "is not \"vxlan\" or \"geneve\"",
            ));
        }
    };
    if selector.protocol != 17 {
        return Err(invalid(
            field("tunnel"),
            quoted(tunnel.name()),
            "needs protocol = \"udp\": VXLAN and Geneve travel in UDP",
        ));
    }
    let default = match &s.policy {
        Some(p) => vni_action(field("policy"), p)?,
        None => VniAction::Require,
    };
    let mut policy = VniPolicy::new(tunnel, selector.ports.clone(), default);
    let mut rules: Vec<(usize, VniRule)> = Vec::with_capacity(s.vni.len());
    for (k, v) in s.vni.iter().enumerate() {
        let vnis = parse_vni_range(&v.vnis).ok_or_else(|| {
            invalid(
                field(&format!("vni[{k}].vnis")),
                &v.vnis,
                "is not a VNI or a range \"LOW-HIGH\" of VNIs 0 to 16777215",
            )
        })?;
        let action = vni_action(field(&format!("vni[{k}].policy")), &v.policy)?;
        rules.push((k, VniRule::new(vnis, action)));
    }
    rules.sort_by_key(|(_, r)| *r.vnis.start());
    for pair in rules.windows(2) {
        let ((ka, a), (kb, b)) = (&pair[0], &pair[1]);
        if b.vnis.start() <= a.vnis.end() {
            // Named by the later of the two in the file.
            let (k, other) = if ka > kb { (*ka, b) } else { (*kb, a) };
            return Err(invalid(
                field(&format!("vni[{k}].vnis")),
                &s.vni[k].vnis,
                format!(
                    "overlaps the rule for {}-{}",
                    other.vnis.start(),
                    other.vnis.end()
                ),
            ));
        }
    }
    policy.rules = rules.into_iter().map(|(_, r)| r).collect();
    Ok(Some(policy))
}

/// `require`, `clear` or `discard`.
fn vni_action(field: String, p: &str) -> Result<VniAction, ConfigError> {
    match p {
        "require" => Ok(VniAction::Require),
        "clear" => Ok(VniAction::Clear),
        "discard" => Ok(VniAction::Discard),
        other => Err(invalid(
            field,
            quoted(other),
            "is not \"require\", \"clear\" or \"discard\"",
        )),
    }
}

/// `100` or `"100-199"`, within 24 bits.
fn parse_vni_range(v: &toml::Value) -> Option<std::ops::RangeInclusive<u32>> {
    let (lo, hi) = raw_range(v)?;
    let (lo, hi) = (u32::try_from(lo).ok()?, u32::try_from(hi).ok()?);
    (lo <= hi && hi <= 0xff_ffff).then_some(lo..=hi)
}

/// `4789` or `"16384-16400"`.
fn parse_port_range(v: &toml::Value) -> Option<std::ops::RangeInclusive<u16>> {
    let (lo, hi) = raw_range(v)?;
    let (lo, hi) = (u16::try_from(lo).ok()?, u16::try_from(hi).ok()?);
    (lo >= 1 && lo <= hi).then_some(lo..=hi)
}

/// The bounds of an integer or a string `"LOW-HIGH"` (or `"N"`), as
/// written; the callers check them against their own range.
fn raw_range(v: &toml::Value) -> Option<(i64, i64)> {
    match v {
        toml::Value::Integer(n) => Some((*n, *n)),
        toml::Value::String(s) => {
            let (lo, hi) = s.split_once('-').unwrap_or((s, s));
            Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod test {
    use super::super::testing::*;
    use super::*;

    const GATEWAY: &str = r#"
[node]
name = "host-a"
underlay = "192.0.2.1"

[gateway]
tunnel_devices = ["vxlan0"]

[[peer]]
name = "host-b"
underlay = "192.0.2.2"

[[peer.selector]]
protocol = "udp"
ports = 4789

[[peer.selector]]
protocol = "tcp"
ports = "16385-16390"

[peer.sa]
spi_in = 0x100
spi_out = 0x200
suite = "aes128gcm16"
key_in = "b.in"
key_out = "b.out"
"#;

    #[test]
    fn gateway_parses_with_defaults() {
        let c = parse(GATEWAY).unwrap();
        let g = c.gateway.as_ref().unwrap();
        assert_eq!(g.tun, gateway_defaults::TUN);
        assert_eq!(g.mode, ChildMode::Transport);
        assert_eq!(g.table, gateway_defaults::TABLE);
        assert_eq!(g.rule_priority, gateway_defaults::RULE_PRIORITY);
        assert_eq!(g.fwmark, gateway_defaults::FWMARK);
        assert_eq!(g.nft_table, "tunsec_gw");
        assert_eq!(g.guard, GuardScopeKind::All);
        assert_eq!(g.tunnel_devices, ["vxlan0"]);
        let sel = &c.peers[0].selectors;
        assert_eq!((sel[0].protocol, sel[0].ports.clone()), (17, 4789..=4789));
        assert_eq!((sel[1].protocol, sel[1].ports.clone()), (6, 16385..=16390));
        assert!(c.peers[0].networks.is_empty());
        let c = parse(&GATEWAY.replace(
            "[gateway]\n",
            "[gateway]\nmode = \"tunnel\"\ntun = \"gw0\"\ntable = 100\nrule_priority = 1000\nfwmark = 7\nnft_table = \"gw\"\n",
        ))
        .unwrap();
        let g = c.gateway.unwrap();
        assert_eq!(
            (
                g.mode,
                g.tun.as_str(),
                g.table,
                g.rule_priority,
                g.fwmark,
                g.nft_table.as_str()
            ),
            (ChildMode::Tunnel, "gw0", 100, 1000, 7, "gw")
        );
    }

    /// `tunnel`, `policy` and `[[peer.selector.vni]]`: rules sorted, the
    /// default `require` unless set.
    #[test]
    fn gateway_vni_policy_parses() {
        let c = parse(&GATEWAY.replacen(
            "ports = 4789\n",
            "ports = 4789\ntunnel = \"vxlan\"\n\
             [[peer.selector.vni]]\nvnis = \"300-399\"\npolicy = \"discard\"\n\
             [[peer.selector.vni]]\nvnis = 200\npolicy = \"clear\"\n",
            1,
        ))
        .unwrap();
        let v = &c.peers[0].vnis;
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].tunnel, v[0].ports.clone()),
            (TunnelKind::Vxlan, 4789..=4789)
        );
        assert_eq!(v[0].default.action, VniAction::Require);
        let rules: Vec<_> = v[0]
            .rules
            .iter()
            .map(|r| (r.vnis.clone(), r.action))
            .collect();
        assert_eq!(
            rules,
            [
                (200..=200, VniAction::Clear),
                (300..=399, VniAction::Discard)
            ]
        );
        let c = parse(&GATEWAY.replacen(
            "ports = 4789\n",
            "ports = 4789\ntunnel = \"geneve\"\npolicy = \"clear\"\n",
            1,
        ))
        .unwrap();
        assert_eq!(c.peers[0].vnis[0].default.action, VniAction::Clear);
        assert!(parse(GATEWAY).unwrap().peers[0].vnis.is_empty());
    }

    #[test]
    fn gateway_vni_policy_errors_name_the_field_and_value() {
        let with =
            |extra: &str| GATEWAY.replacen("ports = 4789\n", &format!("ports = 4789\n{extra}"), 1);
        let rule = |vnis: &str, policy: &str| {
            format!(
                "tunnel = \"vxlan\"\n[[peer.selector.vni]]\nvnis = {vnis}\npolicy = \"{policy}\"\n"
            )
        };
        assert_invalid(
            &with("tunnel = \"gue\"\n"),
            "peer[0].selector[0].tunnel",
            "\"gue\"",
        );
        assert_invalid(
            &with("policy = \"clear\"\n"),
            "peer[0].selector[0].policy",
            "\"clear\"",
        );
        assert_invalid(
            &with("[[peer.selector.vni]]\nvnis = 1\npolicy = \"clear\"\n"),
            "peer[0].selector[0].vni[0]",
            "[[peer.selector.vni]]",
        );
        assert_invalid(
            &with(&rule("16777216", "clear")),
            "peer[0].selector[0].vni[0].vnis",
            "16777216",
        );
        assert_invalid(
            &with(&rule("\"9-3\"", "clear")),
            "peer[0].selector[0].vni[0].vnis",
            "\"9-3\"",
        );
        assert_invalid(
            &with(&rule("7", "prefer")),
            "peer[0].selector[0].vni[0].policy",
            "\"prefer\"",
        );
        let overlap = format!(
            "{}[[peer.selector.vni]]\nvnis = \"5-9\"\npolicy = \"discard\"\n",
            rule("7", "clear")
        );
        assert_invalid(
            &with(&overlap),
            "peer[0].selector[0].vni[1].vnis",
            "\"5-9\"",
        );
        // A tunnel header is read from UDP only.
        let tcp = GATEWAY.replacen(
            "ports = \"16385-16390\"\n",
            "ports = \"16385-16390\"\ntunnel = \"vxlan\"\n",
            1,
        );
        assert_invalid(&tcp, "peer[0].selector[1].tunnel", "\"vxlan\"");
    }

    #[test]
    fn gateway_gre_selector_takes_the_whole_protocol() {
        let c =
            parse(&GATEWAY.replacen("protocol = \"udp\"\nports = 4789", "protocol = \"gre\"", 1))
                .unwrap();
        let s = &c.peers[0].selectors[0];
        assert_eq!(s.protocol, 47);
        assert_eq!(s.ports, 0..=u16::MAX);
        assert!(!s.has_ports());
    }

    #[test]
    fn gateway_errors_name_the_field_and_value() {
        let with = |from: &str, to: &str| GATEWAY.replacen(from, to, 1);
        assert_invalid(
            &with("ports = 4789", "ports = \"4000-5000\""),
            "peer[0].selector[0].ports",
            "\"4000-5000\"",
        );
        assert_invalid(
            &with("ports = 4789", "ports = 0"),
            "peer[0].selector[0].ports",
            "0",
        );
        assert_invalid(
            &with("ports = 4789", "ports = \"9-3\""),
            "peer[0].selector[0].ports",
            "\"9-3\"",
        );
        assert_invalid(
            &with("protocol = \"udp\"", "protocol = \"icmp\""),
            "peer[0].selector[0].protocol",
            "\"icmp\"",
        );
        // GRE has no ports; UDP, TCP and SCTP need them.
        assert_invalid(
            &with("protocol = \"udp\"", "protocol = \"gre\""),
            "peer[0].selector[0].ports",
            "4789",
        );
        assert_invalid(
            &with("ports = 4789\n", ""),
            "peer[0].selector[0].ports",
            "(none)",
        );
        assert_invalid(
            &with("[gateway]\n", "[gateway]\ntable = 254\n"),
            "gateway.table",
            "254",
        );
        assert_invalid(
            &with("[gateway]\n", "[gateway]\nrule_priority = 32766\n"),
            "gateway.rule_priority",
            "32766",
        );
        assert_invalid(
            &with("[gateway]\n", "[gateway]\nfwmark = 0\n"),
            "gateway.fwmark",
            "0",
        );
        assert_invalid(
            &with("[gateway]\n", "[gateway]\ntun = \"much-too-long-name\"\n"),
            "gateway.tun",
            "\"much-too-long-name\"",
        );
        assert_invalid(
            &with("[gateway]\n", "[gateway]\nnft_table = \"bad-name\"\n"),
            "gateway.nft_table",
            "\"bad-name\"",
        );
        assert_invalid(
            &with(
                "underlay = \"192.0.2.2\"\n",
                "underlay = \"192.0.2.2\"\npolicy = \"prefer\"\n",
            ),
            "peer[0].policy",
            "\"prefer\"",
        );
        assert_invalid(
            &with(
                "underlay = \"192.0.2.2\"\n",
                "underlay = \"192.0.2.2\"\nnetworks = [\"blue\"]\n",
            ),
            "peer[0].networks[0]",
            "\"blue\"",
        );
        // Selectors are required in gateway mode...
        let no_selectors = GATEWAY
            .replace("[[peer.selector]]\nprotocol = \"udp\"\nports = 4789\n", "")
            .replace(
                "[[peer.selector]]\nprotocol = \"tcp\"\nports = \"16385-16390\"\n",
                "",
            );
        assert_invalid(&no_selectors, "peer[0].selector", "[]");
        // ...and refused in overlay mode, where networks are.
        let overlay = BASE.replacen(
            "[peer.sa]",
            "[[peer.selector]]\nprotocol = \"udp\"\nports = 4789\n\n[peer.sa]",
            1,
        );
        assert_invalid(&overlay, "peer[0].selector[0]", "[[peer.selector]]");
        // IKE in gateway mode: selectors and mode come from [gateway].
        let ike = |extra: &str| {
            GATEWAY.replacen(
                "[peer.sa]\nspi_in = 0x100\nspi_out = 0x200\nsuite = \"aes128gcm16\"\nkey_in = \"b.in\"\nkey_out = \"b.out\"\n",
                &format!("[peer.ike]\npsk_file = \"b.in\"\n{extra}"),
                1,
            )
        };
        let c = parse(&ike("")).unwrap();
        assert_eq!(c.peers[0].ike.as_ref().unwrap().mode, ChildMode::Transport);
        let c = parse(&ike("").replace("[gateway]\n", "[gateway]\nmode = \"tunnel\"\n")).unwrap();
        assert_eq!(c.peers[0].ike.as_ref().unwrap().mode, ChildMode::Tunnel);
        assert_invalid(
            &ike("mode = \"tunnel\"\n"),
            "peer[0].ike.mode",
            "\"tunnel\"",
        );
        assert_invalid(
            &ike("selectors = \"ports\"\n"),
            "peer[0].ike.selectors",
            "\"ports\"",
        );
        // The Child SA layout: single by default, split for the stock
        // stack, an unknown one refused by name.
        assert_eq!(c.peers[0].ike.as_ref().unwrap().layout, ChildLayout::Single);
        let c = parse(&ike("layout = \"split\"\n")).unwrap();
        assert_eq!(c.peers[0].ike.as_ref().unwrap().layout, ChildLayout::Split);
        let e = parse(&ike("layout = \"stock\"\n")).unwrap_err().to_string();
        assert!(e.contains("layout") && e.contains("stock"), "{e}");
        // Keys per network need networks: `require` VNI rules, which
        // become keyed; not with the split layout.
        assert_invalid(
            &ike("keys = \"per_network\"\n"),
            "peer[0].ike.keys",
            "\"per_network\"",
        );
        parse(&ike("keys = \"shared\"\n")).unwrap();
        let vnis = |extra: &str| {
            ike(extra).replacen(
                "ports = 4789\n",
                "ports = 4789\ntunnel = \"vxlan\"\n[[peer.selector.vni]]\nvnis = 100\npolicy = \"require\"\n\
                 [[peer.selector.vni]]\nvnis = 200\npolicy = \"clear\"\n",
                1,
            )
        };
        let c = parse(&vnis("keys = \"per_network\"\n")).unwrap();
        let keyed: Vec<bool> = c.peers[0].vnis[0].rules.iter().map(|r| r.keyed).collect();
        assert_eq!(
            keyed,
            [true, false],
            "only the require rule has keys of its own"
        );
        assert!(!parse(&vnis("")).unwrap().peers[0].vnis[0].rules[0].keyed);
        assert_invalid(
            &vnis("keys = \"per_network\"\nlayout = \"split\"\n"),
            "peer[0].ike.layout",
            "\"split\"",
        );
        // Networks and [gateway] do not mix.
        let both = format!(
            "{GATEWAY}\n[[network]]\nname = \"blue\"\nvni = 1\nencapsulation = \"vxlan\"\n"
        );
        assert_invalid(&both, "network[0].name", "\"blue\"");
    }
}
