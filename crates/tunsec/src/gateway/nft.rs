//! The inbound guard of gateway mode: an nftables table (family `inet`)
//! that drops cleartext packets matching a `require` peer's selectors
//! unless they came in through tunsecd's TUN device, e.g. forged VXLAN
//! sent straight to the kernel's port 4789. Each peer has a named
//! counter (`peer<i>`) that `tunsec status` shows, for packets with its
//! source address. With [`GuardScope::All`] (the default) the selectors'
//! ports are guarded against every other source too (counter `others`):
//! a kernel vxlan device takes VXLAN from any address, and its socket is
//! shared by every vxlan device on the port, so a forger needs no peer's
//! address to reach the tenant.
//!
//! An `output` chain is the last line of fail-closed on send: a packet
//! to a peer matching its selectors that is about to leave through any
//! device but the TUN device (and is not tunsecd's own, by its mark) is
//! dropped and counted (`clear_out`). Policy routing alone cannot
//! promise that: a kernel tunnel bound to a lower device (a vxlan device
//! with `dev eth0`) looks its routes up with a fixed output device, and
//! when no route matches the kernel assumes the destination is on that
//! link (`ip_route_output_key_hash_rcu`), sending in the clear.
//!
//! It is driven through the `nft` tool of Debian's nftables package. The
//! whole table is replaced in one atomic transaction (`table ...` +
//! `delete table ...` + the new table), so a stale table from a killed
//! daemon goes away in the same step and there is never a moment without
//! the guard once it is installed.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use tunsec_datapath::gateway::vni::range_text;
use tunsec_datapath::gateway::{GatewaySelector, TunnelKind, VniAction, VniPolicy};

/// One peer's part of the guard.
#[derive(Debug, Clone)]
pub struct GuardPeer {
    /// Its slot (see `crate::peers`): its counter is `peer<slot>`.
    pub slot: usize,
    /// Its underlay address.
    pub underlay: IpAddr,
    /// What must come through the TUN device.
    pub selectors: Vec<GatewaySelector>,
    /// Its policies by VNI: the cleartext of a `clear` VNI passes.
    pub vnis: Vec<VniPolicy>,
}

/// Which cleartext sources the guard drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuardScope {
    /// Every source: what matches any peer's selector ports must come
    /// through the TUN device, whoever sent it.
    #[default]
    All,
    /// Only the peers' own addresses (other hosts may still talk to the
    /// kernel's tunnels in the clear).
    Peers,
}

/// The counter of sources that are no peer.
pub const OTHERS: &str = "others";
/// The counter of cleartext packets stopped on their way out.
pub const CLEAR_OUT: &str = "clear_out";

fn ports_text(sel: &GatewaySelector) -> String {
    range_text(&sel.ports)
}

/// What matches a selector's traffic: its protocol and, for a protocol
/// with ports, the destination port and (in a second match) the source
/// port; a protocol without ports (GRE) is matched whole.
fn matches(sel: &GatewaySelector) -> Vec<String> {
    if !sel.has_ports() {
        return vec![format!("meta l4proto {}", sel.protocol)];
    }
    ["dport", "sport"]
        .map(|dir| format!("meta l4proto {} th {dir} {}", sel.protocol, ports_text(sel)))
        .to_vec()
}

/// The guard's ruleset, as `nft -f` reads it; `fwmark` is the mark of
/// tunsecd's own sockets.
pub fn ruleset(
    table: &str,
    tun: &str,
    fwmark: u32,
    peers: &[GuardPeer],
    scope: GuardScope,
    carry: &Counters,
) -> String {
    let mut s = String::new();
    // Create (if missing) and delete: removes a stale table atomically.
    let _ = writeln!(s, "table inet {table} {{}}");
    let _ = writeln!(s, "delete table inet {table}");
    let _ = writeln!(s, "table inet {table} {{");
    // The counters start where the replaced table's stood (a peer
    // changed at run time replaces the whole table).
    let mut slots: Vec<usize> = peers.iter().map(|p| p.slot).collect();
    slots.sort_unstable();
    slots.dedup();
    let start = |packets: u64| format!("{{ packets {packets} bytes 0 }}");
    for i in slots {
        let packets = carry.peers.get(i).copied().unwrap_or(0);
        let _ = writeln!(s, "  counter peer{i} {}", start(packets));
    }
    let _ = writeln!(s, "  counter {OTHERS} {}", start(carry.others));
    let _ = writeln!(s, "  counter {CLEAR_OUT} {}", start(carry.clear_out));
    let _ = writeln!(s, "  chain input {{");
    let _ = writeln!(
        s,
        "    type filter hook input priority filter - 10; policy accept;"
    );
    let _ = writeln!(s, "    iifname \"{tun}\" accept");
    write_clear_vnis(&mut s, peers);
    write_peer_drops(&mut s, peers, "saddr", |p| format!("peer{}", p.slot));
    if scope == GuardScope::All {
        // After the peers' rules: anyone else, on any peer's ports.
        let mut seen = Vec::new();
        for sel in peers.iter().flat_map(|p| &p.selectors) {
            if seen.contains(&sel) {
                continue;
            }
            seen.push(sel);
            for m in matches(sel) {
                let _ = writeln!(s, "    {m} counter name \"{OTHERS}\" drop");
            }
        }
    }
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "  chain output {{");
    let _ = writeln!(
        s,
        "    type filter hook output priority filter - 10; policy accept;"
    );
    let _ = writeln!(s, "    oifname \"{tun}\" accept");
    let _ = writeln!(s, "    meta mark {fwmark:#x} accept");
    write_peer_drops(&mut s, peers, "daddr", |_| CLEAR_OUT.to_owned());
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    s
}

/// A drop rule for each peer's selectors, with the peer's underlay
/// address as the packet's `saddr` or `daddr` (`address`), counted in the
/// counter that `counter` names.
fn write_peer_drops(
    s: &mut String,
    peers: &[GuardPeer],
    address: &str,
    counter: impl Fn(&GuardPeer) -> String,
) {
    for p in peers {
        let family = if p.underlay.is_ipv4() { "ip" } else { "ip6" };
        for sel in &p.selectors {
            for m in matches(sel) {
                let _ = writeln!(
                    s,
                    "    {family} {address} {} {m} counter name \"{}\" drop",
                    p.underlay,
                    counter(p)
                );
            }
        }
    }
}

/// Before the drops: each peer's cleartext of its `clear` VNIs is
/// accepted, matched by the VNI in the tunnel header (a raw payload
/// expression, `@th,96,24`, the VNI's bits counted from the UDP header).
/// Under a `clear` default, the VNIs of the `require` and `discard`
/// rules are dropped first (counted for the peer) and the rest accepted.
fn write_clear_vnis(s: &mut String, peers: &[GuardPeer]) {
    for p in peers {
        let family = if p.underlay.is_ipv4() { "ip" } else { "ip6" };
        for policy in &p.vnis {
            let port = format!(
                "{family} saddr {} meta l4proto 17 th dport {}",
                p.underlay,
                range_text(&policy.ports)
            );
            let vni = |r: &std::ops::RangeInclusive<u32>| {
                format!("@th,{},24 {}", TunnelKind::VNI_BIT_OFFSET, range_text(r))
            };
            let default_clear = policy.default.action == VniAction::Clear;
            for r in &policy.rules {
                match (r.action == VniAction::Clear, default_clear) {
                    (true, false) => {
                        let _ = writeln!(s, "    {port} {} accept", vni(&r.vnis));
                    }
                    (false, true) => {
                        let _ = writeln!(
                            s,
                            "    {port} {} counter name \"peer{}\" drop",
                            vni(&r.vnis),
                            p.slot
                        );
                    }
                    _ => {}
                }
            }
            if default_clear {
                let _ = writeln!(s, "    {port} accept");
            }
        }
    }
}

fn nft(args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "cannot run nft: gateway mode needs the nft tool (Debian package nftables) for its inbound guard",
        )?;
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs (or replaces) the guard of `table`, as its [`ruleset`]
/// (which replaces a table of that name atomically).
pub fn install(table: &str, ruleset: &str) -> anyhow::Result<()> {
    nft(&["-f", "-"], Some(ruleset))
        .with_context(|| format!("gateway.nft_table: cannot install table inet {table}"))?;
    Ok(())
}

/// Removes the guard; `Ok(false)` if there was none.
pub fn remove(table: &str) -> anyhow::Result<bool> {
    let script = format!("table inet {table} {{}}\ndelete table inet {table}\n");
    let existed = nft(&["list", "table", "inet", table], None).is_ok();
    nft(&["-f", "-"], Some(&script))
        .with_context(|| format!("gateway.nft_table: cannot remove table inet {table}"))?;
    Ok(existed)
}

/// What the guard's counters have counted (packets).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Cleartext from each peer's address, by slot.
    pub peers: Vec<u64>,
    /// Cleartext from other sources.
    pub others: u64,
    /// Cleartext stopped on its way out.
    pub clear_out: u64,
}

/// Reads the guard's counters, for `slots` slots.
pub fn counters(table: &str, slots: usize) -> anyhow::Result<Counters> {
    let text = nft(&["-j", "list", "counters", "table", "inet", table], None)?;
    let json: serde_json::Value = serde_json::from_str(&text).context("nft -j printed no JSON")?;
    let mut out = Counters {
        peers: vec![0; slots],
        ..Counters::default()
    };
    for item in json["nftables"].as_array().into_iter().flatten() {
        let c = &item["counter"];
        let (Some(name), Some(packets)) = (c["name"].as_str(), c["packets"].as_u64()) else {
            continue;
        };
        match name {
            OTHERS => out.others = packets,
            CLEAR_OUT => out.clear_out = packets,
            _ => {}
        }
        if let Some(i) = name
            .strip_prefix("peer")
            .and_then(|i| i.parse::<usize>().ok())
        {
            if let Some(slot) = out.peers.get_mut(i) {
                *slot = packets;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_all_guards_every_source_after_the_peers() {
        let sel = GatewaySelector {
            protocol: 17,
            ports: 4789..=4789,
        };
        let peer = |slot, a: &str| GuardPeer {
            slot,
            underlay: a.parse().unwrap(),
            selectors: vec![sel.clone()],
            vnis: Vec::new(),
        };
        let text = ruleset(
            "t",
            "tun0",
            0x7453,
            &[peer(0, "192.0.2.2"), peer(2, "192.0.2.3")],
            GuardScope::All,
            &Counters {
                peers: vec![0, 0, 7],
                others: 3,
                clear_out: 0,
            },
        );
        let any = "    meta l4proto 17 th dport 4789 counter name \"others\" drop";
        // Once, though two peers share the selector, and after both
        // peers' own rules.
        assert_eq!(text.matches(any).count(), 1, "{text}");
        assert!(text.find(any).unwrap() > text.find("192.0.2.3").unwrap());
        // The counters carry over; a vacant slot has none.
        assert!(
            text.contains("counter others { packets 3 bytes 0 }"),
            "{text}"
        );
        assert!(
            text.contains("counter peer2 { packets 7 bytes 0 }"),
            "{text}"
        );
        assert!(!text.contains("counter peer1 "), "{text}");
        assert!(
            text.contains("saddr 192.0.2.3 meta l4proto 17 th dport 4789 counter name \"peer2\"")
        );
    }

    #[test]
    fn ruleset_drops_selectors_not_from_the_tun() {
        let text = ruleset(
            "tunsec_gw",
            "tunsec-gw",
            0x7453,
            &[GuardPeer {
                slot: 0,
                underlay: "192.0.2.2".parse().unwrap(),
                selectors: vec![
                    GatewaySelector {
                        protocol: 17,
                        ports: 4789..=4789,
                    },
                    GatewaySelector {
                        protocol: 6,
                        ports: 16385..=16390,
                    },
                ],
                vnis: Vec::new(),
            }],
            GuardScope::Peers,
            &Counters::default(),
        );
        assert!(!text.contains("others\" drop"), "peers only");
        assert!(text.starts_with("table inet tunsec_gw {}\ndelete table inet tunsec_gw\n"));
        assert!(text.contains("counter peer0 { packets 0 bytes 0 }"));
        assert!(text.contains("iifname \"tunsec-gw\" accept"));
        assert!(text.contains(
            "ip saddr 192.0.2.2 meta l4proto 17 th dport 4789 counter name \"peer0\" drop"
        ));
        assert!(text.contains(
            "ip saddr 192.0.2.2 meta l4proto 6 th sport 16385-16390 counter name \"peer0\" drop"
        ));
        // The accept of the TUN's packets comes before any drop.
        assert!(text.find("accept").unwrap() < text.find("drop").unwrap());
        // On the way out: the TUN and tunsecd's own marked packets pass,
        // the selectors' traffic to the peer through anything else is
        // dropped.
        let out = &text[text.find("chain output").unwrap()..];
        assert!(out.contains("oifname \"tunsec-gw\" accept"));
        assert!(out.contains("meta mark 0x7453 accept"));
        assert!(out.contains(
            "ip daddr 192.0.2.2 meta l4proto 17 th dport 4789 counter name \"clear_out\" drop"
        ));
        assert!(out.find("accept").unwrap() < out.find("drop").unwrap());
    }

    /// GRE has no ports: one match for the whole protocol, in and out.
    #[test]
    fn gre_is_matched_whole() {
        let text = ruleset(
            "t",
            "tun0",
            0x7453,
            &[GuardPeer {
                slot: 0,
                underlay: "192.0.2.2".parse().unwrap(),
                selectors: vec![GatewaySelector::whole_protocol(47)],
                vnis: Vec::new(),
            }],
            GuardScope::All,
            &Counters::default(),
        );
        assert!(text.contains("ip saddr 192.0.2.2 meta l4proto 47 counter name \"peer0\" drop"));
        assert!(text.contains("    meta l4proto 47 counter name \"others\" drop"));
        assert!(
            text.contains("ip daddr 192.0.2.2 meta l4proto 47 counter name \"clear_out\" drop")
        );
        assert!(!text.contains("l4proto 47 th"), "{text}");
    }

    #[test]
    fn ipv6_peers_match_ip6() {
        let text = ruleset(
            "t",
            "tun0",
            0x7453,
            &[GuardPeer {
                slot: 0,
                underlay: "2001:db8::2".parse().unwrap(),
                selectors: vec![GatewaySelector {
                    protocol: 17,
                    ports: 6081..=6081,
                }],
                vnis: Vec::new(),
            }],
            GuardScope::Peers,
            &Counters::default(),
        );
        assert!(text.contains("ip6 saddr 2001:db8::2 meta l4proto 17 th dport 6081"));
    }

    /// A `clear` VNI's cleartext from the peer passes, matched by its
    /// VNI before the drops; under a `clear` default the other rules'
    /// VNIs are dropped first and the rest passes.
    #[test]
    fn clear_vnis_pass_before_the_drops() {
        use tunsec_datapath::gateway::VniRule;
        let vxlan = GatewaySelector {
            protocol: 17,
            ports: 4789..=4789,
        };
        let mut policy = VniPolicy::new(TunnelKind::Vxlan, 4789..=4789, VniAction::Require);
        policy.rules = vec![
            VniRule::new(200..=200, VniAction::Clear),
            VniRule::new(300..=399, VniAction::Discard),
        ];
        let mut peer = GuardPeer {
            slot: 1,
            underlay: "192.0.2.2".parse().unwrap(),
            selectors: vec![vxlan],
            vnis: vec![policy],
        };
        let text = |p: &GuardPeer| {
            ruleset(
                "t",
                "tun0",
                0x7453,
                std::slice::from_ref(p),
                GuardScope::All,
                &Counters::default(),
            )
        };
        let t = text(&peer);
        let accept = "ip saddr 192.0.2.2 meta l4proto 17 th dport 4789 @th,96,24 200 accept";
        assert!(t.contains(accept), "{t}");
        assert!(t.find(accept).unwrap() < t.find("drop").unwrap(), "{t}");
        assert!(
            !t.contains("300-399"),
            "discard is dropped with the rest: {t}"
        );

        peer.vnis[0].default = VniRule::new(0..=0xff_ffff, VniAction::Clear);
        let t = text(&peer);
        let discard = "th dport 4789 @th,96,24 300-399 counter name \"peer1\" drop";
        let rest = "ip saddr 192.0.2.2 meta l4proto 17 th dport 4789 accept";
        assert!(t.contains(discard), "{t}");
        assert!(t.find(discard).unwrap() < t.find(rest).unwrap(), "{t}");
        assert!(
            !t.contains("@th,96,24 200 accept"),
            "covered by the default: {t}"
        );
    }
}
