//! Interoperability with strongSwan 5.9.8 (Debian 12's charon with
//! kernel-libipsec), in network namespaces: tunsecd in gateway mode. The
//! lab (charon in its own mount namespace, tunsecd in tunnel mode with ESP
//! in UDP 4500) is described in `strongswan/mod.rs`, which holds the
//! helpers. The cases (each its own lab, prefix `tsss-`):
//!
//! - `sswan_gateway_vxlan`: tunsecd in gateway mode (tunnel mode,
//!   selectors `[udp/4789]`) against charon: the two hosts' kernel vxlan
//!   devices (source port pinned to 4789) ping each other and move data
//!   with iperf3; only IKE and ESP on the underlay.
//! - `sswan_stock_ovs_layout`: tunsecd in gateway mode with `layout =
//!   "split"` against charon loaded by `starter` from the ipsec.conf that
//!   ovs-monitor-ipsec 3.1 writes for a vxlan tunnel (`vx0-in-1`:
//!   `leftprotoport=udp/4789 rightprotoport=udp`, `vx0-out-1`: the
//!   reverse; `aes256gcm16-sha256-modp2048`, `aes256gcm16-modp2048`,
//!   `auto=route`), changed to `type=tunnel` because kernel-libipsec has
//!   no transport mode: both Child SAs, vxlan devices with per-flow source
//!   ports both ways, ping and iperf3 --bidir, only IKE and ESP.
//!
//! TUNSEC_E2E_LOGS=1 prints every log (charon's too) also on success. They
//! need root, iproute2, ping, tshark, iperf3, nftables and strongSwan
//! (strongswan-charon, strongswan-swanctl, libcharon-extra-plugins,
//! libstrongswan-standard-plugins, strongswan-pki: `scripts/deps.sh`
//! installs them); they fail, never skip, when something is missing.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

mod common;
mod strongswan;
use strongswan::*;

/// Gateway mode against charon: tunsecd (192.0.2.1) initiates with the
/// selectors `[udp/4789]` in tunnel mode; the kernel vxlan devices of the
/// two hosts ping each other and move data with iperf3; the capture holds
/// only IKE and ESP in UDP 4500.
#[test]
fn sswan_gateway_vxlan() {
    with_lab("tsss-gw", |lab| {
        let p = Params::new(1, 2, "aes128gcm16-prfsha256-x25519", "aes128gcm16");
        let x = interop_with(lab, p, true)?;
        let pair = x.wait_up(lab, "tunsecd initiating", Duration::from_secs(15))?;
        let st = x.status(lab)?;
        let sa = st.peers[0]
            .sas
            .iter()
            .find(|sa| sa.direction == "out")
            .context("no outbound SA")?;
        let ts = sa.selectors.as_deref().unwrap_or("");
        ensure!(
            ts.contains("192.0.2.1/32[udp/4789]") && ts.contains("192.0.2.2/32[udp/4789]"),
            "tunsecd's Child SA selectors: {ts}"
        );
        let sas = x.charon.list_sas()?;
        eprintln!("  Child SA: {pair}\n  charon:\n{}", sas.text);
        ensure!(
            sas.text.contains("192.0.2.2/32[udp/4789]") && sas.text.contains("TUNNEL-in-UDP"),
            "charon's Child SA:\n{}",
            sas.text
        );
        x.ping_both_ways(3)?;
        let bytes = x.iperf(lab)?;
        ensure!(bytes > 1_000_000, "iperf3 moved {bytes} bytes");
        let st = x.status(lab)?;
        let drops: u64 = st.drops.values().sum();
        ensure!(drops == 0, "tunsecd dropped packets:\n{}", st.render());
        let g = st.gateway.as_ref().context("no gateway status")?;
        ensure!(
            g.policies[0].tx_packets > 100 && g.policies[0].rx_packets > 100,
            "gateway counters: {:?}",
            g.policies[0]
        );
        check_capture(lab, &x, 100)?;
        Ok(())
    });
}

/// tunsecd in gateway mode with `layout = "split"` against a chassis of
/// the stock OVS stack: charon loaded by `starter` from the ipsec.conf
/// that ovs-monitor-ipsec writes for one vxlan tunnel (PSK), changed to
/// tunnel mode ([`stock_ipsec_conf`]). That is ipsec.conf syntax through
/// stroke rather than a swanctl rendering, so that the connections are
/// the script's own words: stroke merges `vx0-in-1` and `vx0-out-1` (the
/// same peer) into one peer config with two children, which is what a
/// stock chassis runs. `auto=route` stays, although kernel-libipsec
/// sends charon no acquires (its outbound path logs "could not find an
/// outbound IPsec SA" and drops): charon never initiates here, so
/// tunsecd (the lower address) does.
///
/// Shows: tunsecd offers the stock layout with the stock proposals, the
/// one it sends with in IKE_AUTH (charon picks `vx0-in-1`) and the other
/// by CREATE_CHILD_SA with PFS (modp2048, `vx0-out-1`); both are
/// installed on both sides with the selectors crossing; kernel vxlan
/// devices with per-flow source ports (none pinned) ping both ways and
/// move TCP both ways (iperf3 --bidir); the TUN device shows those
/// source ports in both directions; charon counts packets in on
/// `vx0-in-1` and out on `vx0-out-1`; the underlay carries only IKE and
/// ESP.
#[test]
fn sswan_stock_ovs_layout() {
    with_lab("stk1-ovs", |lab| {
        let mut p = Params::new(
            1,
            2,
            "aes256gcm16-prfsha256-modp2048",
            "aes256gcm16-modp2048",
        );
        p.stock = true;
        p.ike_extra = "layout = \"split\"\n";
        let x = interop_with(lab, p, true)?;
        let (me, peer) = (host_addr(p.tunsec), host_addr(p.charon));
        let t0 = Instant::now();
        let both_up = || -> anyhow::Result<bool> {
            let st = x.status(lab)?;
            let outs = spi_of(&st, "out");
            let ins = spi_of(&st, "in");
            let sas = x.charon.list_sas()?;
            let crossed = sas
                .installed()
                .iter()
                .filter(|c| outs.contains(&c.spi_in) && ins.contains(&c.spi_out))
                .count();
            Ok(outs.len() == 2 && crossed == 2)
        };
        lab.wait_for("both stock Child SAs", Duration::from_secs(20), || {
            both_up().unwrap_or(false)
        })
        .with_context(|| x.describe(lab))?;
        phase(lab, "two Child SAs up", t0);
        let st = x.status(lab)?;
        let mut ts: Vec<String> = st.peers[0]
            .sas
            .iter()
            .filter(|sa| sa.direction == "out")
            .map(|sa| sa.selectors.clone().unwrap_or_default())
            .collect();
        ts.sort();
        eprintln!("  tunsecd's outbound SAs: {ts:?}");
        let want = [
            format!("{me}/32[udp/4789] === {peer}/32[udp]"),
            format!("{me}/32[udp] === {peer}/32[udp/4789]"),
        ];
        for w in &want {
            ensure!(ts.iter().any(|t| t == w), "no outbound SA {w}: {ts:?}");
        }
        let sas = x.charon.list_sas()?;
        eprintln!("  charon:\n{}", sas.text);
        for (conn, local, remote) in [
            (
                STOCK_IN,
                format!("{peer}/32[udp/4789]"),
                format!("{me}/32[udp]"),
            ),
            (
                STOCK_OUT,
                format!("{peer}/32[udp]"),
                format!("{me}/32[udp/4789]"),
            ),
        ] {
            let child = sas
                .installed()
                .into_iter()
                .find(|c| c.state.starts_with(&format!("{conn}:")))
                .with_context(|| format!("charon has no {conn} Child SA:\n{}", sas.text))?;
            ensure!(
                child.state.contains("TUNNEL-in-UDP") && child.state.contains("AES_GCM_16-256"),
                "{conn}: {}",
                child.state
            );
            // The child's block: "local  X" and "remote Y" after its line.
            let block: Vec<&str> = sas
                .text
                .lines()
                .map(str::trim)
                .skip_while(|l| !(l.starts_with(&format!("{conn}: #")) && l.contains(", reqid ")))
                .collect();
            let line = |key: &str| {
                block
                    .iter()
                    .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
                    .unwrap_or_default()
            };
            ensure!(
                line("local ") == local && line("remote ") == remote,
                "charon's {conn} selectors are not {local} === {remote}:\n{}",
                sas.text
            );
        }
        ensure!(
            sas.text.contains("MODP_2048"),
            "no PFS group on the CREATE_CHILD_SA Child SA:\n{}",
            sas.text
        );
        // The decrypted and to-be-encrypted vxlan packets, on tunsecd's TUN.
        let tun_pcap = lab.dir.path().join("tun.pcap");
        let tun_pcap_s = tun_pcap.to_string_lossy().into_owned();
        lab.spawn(
            "capture-tun",
            &x.t,
            Path::new("dumpcap"),
            &["-q", "-i", "tunsec-gw", "-P", "-w", &tun_pcap_s],
        )?;
        lab.wait_for("the TUN capture", Duration::from_secs(10), || {
            std::fs::metadata(&tun_pcap).is_ok_and(|m| m.len() > 0)
        })?;
        x.ping_both_ways(3)?;
        let client = x.iperf_start(lab, 3, true)?;
        let io = x.iperf_finish(lab, client)?;
        ensure!(
            io.received > 1_000_000 && io.received_back > 1_000_000,
            "iperf3 --bidir: {io:?}"
        );
        stop_capture(lab, "capture-tun");
        let text = tshark_fields(
            &tun_pcap,
            Some("udp.port == 4789"),
            &["ip.src", "udp.srcport", "udp.dstport"],
        )?;
        let mut sports = [
            std::collections::BTreeSet::new(),
            std::collections::BTreeSet::new(),
        ];
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            let (Some(src), Some(Ok(sport)), Some(dport)) =
                (f.first(), f.get(1).map(|p| p.parse::<u16>()), f.get(2))
            else {
                continue;
            };
            ensure!(*dport == "4789", "vxlan to port {dport}: {line}");
            let side = usize::from(*src != me);
            sports[side].insert(sport);
        }
        eprintln!(
            "  vxlan source ports on tunsecd's TUN: sent {:?}, received {:?}",
            sports[0], sports[1]
        );
        for (what, set) in ["sent", "received"].iter().zip(&sports) {
            ensure!(
                set.iter().filter(|p| **p != 4789).count() >= 2,
                "{what}: per-flow source ports expected, got {set:?}"
            );
        }
        let sas = x.charon.list_sas()?;
        let count = |conn: &str| {
            sas.installed()
                .into_iter()
                .find(|c| c.state.starts_with(&format!("{conn}:")))
                .map(|c| (c.packets_in, c.packets_out))
                .unwrap_or_default()
        };
        let (inn, out) = (count(STOCK_IN), count(STOCK_OUT));
        eprintln!("  charon packets: {STOCK_IN} in/out {inn:?}, {STOCK_OUT} in/out {out:?}");
        ensure!(
            inn.0 > 100 && out.1 > 100,
            "charon's {STOCK_IN} should carry tunsecd's packets in, {STOCK_OUT} its own out:\n{}",
            sas.text
        );
        let st = x.status(lab)?;
        let drops: u64 = st.drops.values().sum();
        ensure!(drops == 0, "tunsecd dropped packets:\n{}", st.render());
        check_capture(lab, &x, 100)?;
        Ok(())
    });
}
