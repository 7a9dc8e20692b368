//! End-to-end test of encryption chosen per virtual network in gateway
//! mode, in network namespaces. Two hosts on an underlay bridge
//! (192.0.2.0/24) each run three kernel vxlan devices on UDP 4789: VNI
//! 100 (10.100.0.0/24), VNI 200 (10.200.0.0/24) and VNI 300
//! (10.30.0.0/24), and `tunsecd` in gateway mode whose `udp/4789`
//! selector reads the VNI (`tunnel = "vxlan"`): 100 `require` (the
//! default), 200 `clear`, 300 `discard`. A third namespace on the
//! underlay forges traffic. It proves that:
//!
//! - VNI 100 pings both ways and moves 8 MiB intact (SHA-256), and the
//!   capture of the underlay shows it only as ESP: not one VXLAN frame of
//!   VNI 100;
//! - VNI 200 pings both ways and moves 8 MiB intact each way, and the
//!   capture shows it as VXLAN with VNI 200 in the clear, sent by
//!   tunsecd's raw socket on both hosts;
//! - VNI 300 carries nothing: no reply, no frame of it on the underlay,
//!   and both hosts count it `discarded`;
//! - forged cleartext VXLAN of VNI 100 with the peer's source address is
//!   dropped by the guard (counted for the peer) and never reaches
//!   vxlan100, while forged VNI 200 (cleartext is its policy) reaches
//!   vxlan200;
//! - status and metrics show each VNI rule with its policy and counters.
//!
//! `gateway_vni_keys_per_network` adds keys per network (IKEv2 with a
//! PSK, `keys = "per_network"`, VNIs 100 and 101 `require`): each host
//! has three Child SAs with its peer, labelled `vxlan/100`, `vxlan/101`
//! and one shared; pings of VNI 100 move only `vxlan/100`'s SA counters
//! and those of VNI 101 only `vxlan/101`'s, the capture shows their two
//! SPI pairs, and nothing is dropped as `network_mismatch`.
//!
//! It needs root, iproute2, nftables, ping, tshark and Debian's
//! python3-scapy; it fails, never skips, when something is missing.

use anyhow::{Context, ensure};

mod common;
mod gateway;
use gateway::*;

const BYTES: usize = 8 << 20;

/// The `udp/4789` selector's policy by VNI.
const POLICY: &str = "tunnel = \"vxlan\"\n\
    [[peer.selector.vni]]\nvnis = 200\npolicy = \"clear\"\n\
    [[peer.selector.vni]]\nvnis = \"300-309\"\npolicy = \"discard\"\n";

/// The networks: VNI, and the overlay prefix of its devices.
const NETS: [(u32, &str); 3] = [(100, "10.100.0"), (200, "10.200.0"), (300, "10.30.0")];

/// Adds `vxlan<vni>` on host `n` towards `peer` (over IPv6 with `v6`),
/// at `prefix.<n>/24`.
#[allow(clippy::too_many_arguments)]
fn add_net(
    lab: &tunsec_lab::Lab,
    ns: &str,
    n: u8,
    peer: u8,
    v6: bool,
    vni: u32,
    prefix: &str,
    mtu: u16,
) -> anyhow::Result<()> {
    let dev = format!("vxlan{vni}");
    let (vni, mtu) = (vni.to_string(), mtu.to_string());
    let addr = if v6 { host_addr6 } else { host_addr };
    let (local, remote) = (addr(n), addr(peer));
    let addr = format!("{prefix}.{n}/24");
    let steps: [&[&str]; 4] = [
        &[
            "link", "add", &dev, "type", "vxlan", "id", &vni, "remote", &remote, "local", &local,
            "dstport", "4789",
        ],
        &["link", "set", &dev, "mtu", &mtu],
        &["addr", "add", &addr, "dev", &dev],
        &["link", "set", &dev, "up"],
    ];
    for args in steps {
        lab.exec(ns, "ip", args)?;
    }
    Ok(())
}

/// Three cleartext VXLAN datagrams from `ns` to host 1 with host 2's
/// source address: an ICMP echo for host 1's address on VNI `vni`.
fn forge(ns: &str, vni: u32, dst: &str) -> anyhow::Result<()> {
    let script = format!(
        "from scapy.all import IP, UDP, Ether, ICMP, Raw, send\n\
         from scapy.layers.vxlan import VXLAN\n\
         p = IP(src='{h2}', dst='{h1}')/UDP(sport=40000, dport=4789)/VXLAN(vni={vni}, flags=8)/\
         Ether(src='02:00:00:00:00:99', dst='ff:ff:ff:ff:ff:ff')/IP(src='{src}', dst='{dst}')/ICMP()/Raw(b'FORGED')\n\
         send(p, count=3, verbose=False)\n",
        h2 = host_addr(2),
        h1 = host_addr(1),
        src = dst
            .rsplit_once('.')
            .map_or(String::new(), |(p, _)| format!("{p}.99")),
    );
    let out = exec_output(ns, PYTHON, &["-c", &script])?;
    ensure!(
        out.status.success(),
        "scapy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The VNIs of the captured VXLAN frames (tshark's VXLAN dissector, on
/// UDP 4789 by default), and the number of ESP frames.
fn captured(pcap: &std::path::Path) -> anyhow::Result<(Vec<u32>, usize)> {
    let vnis = tshark_fields(pcap, Some("vxlan"), &["vxlan.vni"])?
        .lines()
        .map(|l| {
            l.trim()
                .parse::<u32>()
                .with_context(|| format!("vxlan.vni {l:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let esp = tshark_fields(pcap, Some("esp"), &["esp.spi"])?
        .lines()
        .count();
    Ok((vnis, esp))
}

#[test]
fn gateway_vni_policy() {
    with_lab("gwvni", |lab| {
        let opts = Opts {
            vxlan_extra: POLICY,
            ..Opts::default()
        };
        let hosts = prepare(lab, opts)?;
        let (h1, h2, h3) = (&hosts.h1, &hosts.h2, &hosts.h3);
        start_daemon(lab, "h1", h1, 1)?;
        start_daemon(lab, "h2", h2, 2)?;
        let mtu = gw_status(&status(lab, 1)?)?.tunnel_mtu_advice;
        for (vni, prefix) in NETS {
            add_net(lab, h1, 1, 2, false, vni, prefix, mtu)?;
            add_net(lab, h2, 2, 1, false, vni, prefix, mtu)?;
        }
        let addr = |prefix: &str, n: u8| format!("{prefix}.{n}");

        let pcap = start_capture(lab, &hosts.ul, "capture")?;
        for (_, prefix) in &NETS[..2] {
            ping_ok(h1, &addr(prefix, 2))?;
            ping_ok(h2, &addr(prefix, 1))?;
        }
        transfer(lab, "vni100", h1, h2, &addr("10.100.0", 2), 5001, BYTES)?;
        transfer(lab, "vni200", h1, h2, &addr("10.200.0", 2), 5002, BYTES)?;
        transfer(
            lab,
            "vni200-back",
            h2,
            h1,
            &addr("10.200.0", 1),
            5003,
            BYTES,
        )?;
        let discarded = ping(h1, &addr("10.30.0", 2), 3)?;
        ensure!(
            discarded == 0,
            "VNI 300 (discard) answered {discarded} pings"
        );
        stop_capture(lab, "capture");

        let (vnis, esp) = captured(&pcap)?;
        let count = |v: u32| vnis.iter().filter(|&&x| x == v).count();
        eprintln!(
            "  capture: {esp} ESP frames; VXLAN in the clear: VNI 100 {}, VNI 200 {}, VNI 300 {}, others {}",
            count(100),
            count(200),
            count(300),
            vnis.len() - count(100) - count(200) - count(300)
        );
        ensure!(esp > 0, "no ESP on the underlay");
        ensure!(
            count(100) == 0,
            "{} VXLAN frames of VNI 100 (require) in the clear",
            count(100)
        );
        ensure!(
            count(300) == 0,
            "{} VXLAN frames of VNI 300 (discard) on the wire",
            count(300)
        );
        // 8 MiB each way at most 1,400 bytes a frame (GSO may join them on
        // the bridge, so not a frame count): VNI 200 went in the clear.
        ensure!(
            count(200) > 100,
            "only {} VXLAN frames of VNI 200 (clear)",
            count(200)
        );
        ensure!(
            vnis.len() == count(200),
            "VXLAN of other VNIs in the clear: {vnis:?}"
        );

        // Forged cleartext from h3 with h2's address: VNI 100 meets the
        // guard, VNI 200 (clear by policy) passes.
        let guard_before = gw_status(&status(lab, 1)?)?.policies[0]
            .guard_drops
            .unwrap_or(0);
        let rx100 = link_rx(h1, "vxlan100")?;
        let rx200 = link_rx(h1, "vxlan200")?;
        forge(h3, 100, &addr("10.100.0", 1))?;
        forge(h3, 200, &addr("10.200.0", 1))?;
        lab.wait_for(
            "the forged VNI 200 frames",
            std::time::Duration::from_secs(5),
            || link_rx(h1, "vxlan200").is_ok_and(|n| n >= rx200 + 3),
        )?;
        let s1 = status(lab, 1)?;
        let gw = gw_status(&s1)?;
        let guard_after = gw.policies[0].guard_drops.unwrap_or(0);
        let rx100_after = link_rx(h1, "vxlan100")?;
        eprintln!(
            "  forged: guard drops {guard_before} -> {guard_after}, vxlan100 rx {rx100} -> {rx100_after}"
        );
        ensure!(rx100_after == rx100, "forged VNI 100 reached vxlan100");
        ensure!(
            guard_after >= guard_before + 3,
            "the guard did not count the forged VNI 100"
        );

        // Status: each rule, its policy and what it carried.
        let rows = &gw.policies[0].vnis;
        eprintln!(
            "{}",
            s1.render()
                .lines()
                .filter(|l| l.contains("vni "))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let row = |v: &str| {
            rows.iter()
                .find(|r| r.vnis == v)
                .with_context(|| format!("no status row for VNIs {v}: {rows:?}"))
        };
        let (default, clear, discard) = (row("default")?, row("200")?, row("300-309")?);
        ensure!(
            default.policy == "require" && clear.policy == "clear" && discard.policy == "discard"
        );
        ensure!(
            default.sealed > 0 && default.opened > 0 && default.clear == 0,
            "{default:?}"
        );
        ensure!(clear.clear > 0 && clear.sealed == 0, "{clear:?}");
        ensure!(
            discard.discarded >= 3 && discard.sealed + discard.clear == 0,
            "{discard:?}"
        );
        ensure!(
            s1.drops.get("discarded").copied().unwrap_or(0) >= 3,
            "drops: {:?}",
            s1.drops
        );

        let samples = metrics(lab, 1, MetricsFrom::Cli)?;
        let clear_metric = samples.iter().find(|(name, l, _)| {
            name == "tunsec_gateway_vni_packets_total"
                && l.get("vnis").map(String::as_str) == Some("200")
                && l.get("outcome").map(String::as_str) == Some("clear")
        });
        ensure!(
            clear_metric.is_some_and(|(_, _, v)| *v > 0.0),
            "no tunsec_gateway_vni_packets_total for VNI 200 sent in the clear: {clear_metric:?}"
        );
        Ok(())
    });
}

/// The same policy over an IPv6 underlay (2001:db8::/64): the `clear`
/// VNI leaves through the IPv6 raw socket, header included, and pings
/// both ways; the `require` VNI pings as ESP only; the `discard` VNI
/// carries nothing.
#[test]
fn gateway_vni_policy_ipv6() {
    with_lab("gwvni6", |lab| {
        let opts = Opts {
            vxlan_extra: POLICY,
            ipv6: true,
            ..Opts::default()
        };
        let hosts = prepare(lab, opts)?;
        let (h1, h2) = (&hosts.h1, &hosts.h2);
        // The lab turns IPv6 off; it is turned on again here.
        for (ns, n) in [(h1, 1), (h2, 2)] {
            for key in ["all", "default", "eth0"] {
                let sysctl = format!("net.ipv6.conf.{key}.disable_ipv6=0");
                lab.exec(ns, "sysctl", &["-qw", &sysctl])?;
            }
            let addr = format!("{}/64", host_addr6(n));
            lab.exec(ns, "ip", &["addr", "add", &addr, "dev", "eth0", "nodad"])?;
        }
        start_daemon(lab, "h1", h1, 1)?;
        start_daemon(lab, "h2", h2, 2)?;
        let mtu = gw_status(&status(lab, 1)?)?.tunnel_mtu_advice;
        for (vni, prefix) in NETS {
            add_net(lab, h1, 1, 2, true, vni, prefix, mtu)?;
            add_net(lab, h2, 2, 1, true, vni, prefix, mtu)?;
        }
        let pcap = start_capture(lab, &hosts.ul, "capture")?;
        for (_, prefix) in &NETS[..2] {
            ping_ok(h1, &format!("{prefix}.2"))?;
            ping_ok(h2, &format!("{prefix}.1"))?;
        }
        let discarded = ping(h1, "10.30.0.2", 3)?;
        stop_capture(lab, "capture");
        ensure!(
            discarded == 0,
            "VNI 300 (discard) answered {discarded} pings"
        );
        let (vnis, esp) = captured(&pcap)?;
        let count = |v: u32| vnis.iter().filter(|&&x| x == v).count();
        eprintln!("  capture: {esp} ESP frames; VXLAN in the clear: {vnis:?}");
        ensure!(esp >= 6, "{esp} ESP frames for 6 pings of VNI 100");
        ensure!(
            count(200) >= 12,
            "{} VXLAN frames of VNI 200 for 6 pings",
            count(200)
        );
        ensure!(
            vnis.len() == count(200),
            "other VNIs in the clear: {vnis:?}"
        );
        Ok(())
    });
}

/// The policy of `gateway_vni_keys_per_network`: VNI 101 `require` too.
const KEYED_POLICY: &str = "tunnel = \"vxlan\"\n\
    [[peer.selector.vni]]\nvnis = 100\npolicy = \"require\"\n\
    [[peer.selector.vni]]\nvnis = 101\npolicy = \"require\"\n\
    [[peer.selector.vni]]\nvnis = 200\npolicy = \"clear\"\n";

#[test]
fn gateway_vni_keys_per_network() {
    with_lab("gwvnik", |lab| {
        let opts = Opts {
            vxlan_extra: KEYED_POLICY,
            ike: true,
            ike_extra: "keys = \"per_network\"\n",
            ..Opts::default()
        };
        let hosts = prepare(lab, opts)?;
        let (h1, h2) = (&hosts.h1, &hosts.h2);
        start_daemon(lab, "h1", h1, 1)?;
        start_daemon(lab, "h2", h2, 2)?;
        let mtu = gw_status(&status(lab, 1)?)?.tunnel_mtu_advice;
        let nets = [(100, "10.100.0"), (101, "10.101.0"), (200, "10.200.0")];
        for (vni, prefix) in nets {
            add_net(lab, h1, 1, 2, false, vni, prefix, mtu)?;
            add_net(lab, h2, 2, 1, false, vni, prefix, mtu)?;
        }
        // Three Child SAs on each side: one per keyed VNI, one shared.
        let labels = |n: u8| -> Vec<Option<String>> {
            status(lab, n)
                .ok()
                .and_then(|s| {
                    let ike = s.peers.first()?.ike.clone()?;
                    let mut l: Vec<_> = ike.children.into_iter().map(|c| c.network).collect();
                    l.sort();
                    Some(l)
                })
                .unwrap_or_default()
        };
        let want = vec![
            None,
            Some("vxlan/100".to_owned()),
            Some("vxlan/101".to_owned()),
        ];
        for n in [1, 2] {
            lab.wait_for(
                &format!("h{n}'s three Child SAs"),
                std::time::Duration::from_secs(20),
                || labels(n) == want,
            )?;
        }
        let ike = status(lab, 1)?.peers[0]
            .ike
            .clone()
            .context("h1's IKE status")?;
        ensure!(
            ike.keys.as_deref() == Some("per network"),
            "keys: {:?}",
            ike.keys
        );

        // Outbound packets per SPI of h1, and the SPI of each label.
        let out_packets = |s: &tunsec::status::Status| -> std::collections::BTreeMap<String, u64> {
            s.peers[0]
                .sas
                .iter()
                .filter(|sa| sa.direction == "out")
                .map(|sa| (sa.spi.clone(), sa.packets))
                .collect()
        };
        let spi_out = |label: Option<&str>| {
            ike.children
                .iter()
                .find(|c| c.network.as_deref() == label)
                .map(|c| c.spi_out.clone())
                .context("no such Child SA")
        };
        let pcap = start_capture(lab, &hosts.ul, "capture")?;
        for (vni, prefix) in [(100, "10.100.0"), (101, "10.101.0")] {
            let before = out_packets(&status(lab, 1)?);
            ping_ok(h1, &format!("{prefix}.2"))?;
            ping_ok(h2, &format!("{prefix}.1"))?;
            let after = out_packets(&status(lab, 1)?);
            let own = spi_out(Some(&format!("vxlan/{vni}")))?;
            let moved: Vec<_> = after
                .iter()
                .filter(|(spi, n)| before.get(*spi).is_some_and(|b| *n > b))
                .map(|(spi, _)| spi.clone())
                .collect();
            eprintln!("  VNI {vni}: h1's outbound SAs that moved: {moved:?} (its own {own})");
            ensure!(
                moved == [own.clone()],
                "VNI {vni} moved {moved:?}, not only {own}"
            );
        }
        ping_ok(h1, "10.200.0.2")?;
        stop_capture(lab, "capture");
        let spis: std::collections::BTreeSet<String> =
            tshark_fields(&pcap, Some("esp"), &["esp.spi"])?
                .lines()
                .map(str::to_owned)
                .collect();
        eprintln!("  capture: ESP SPIs {spis:?}");
        ensure!(
            spis.len() == 4,
            "two SPI pairs expected on the wire: {spis:?}"
        );
        for n in [1, 2] {
            let s = status(lab, n)?;
            assert_no_drops(&s, &["network_mismatch", "no_sa", "policy"])?;
        }
        Ok(())
    });
}
