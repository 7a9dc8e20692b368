//! End-to-end test of the Encrypted VXLAN layout (`[[network]] layout =
//! "encrypted_vxlan"`) between two `tunsecd`, in network namespaces
//! (helpers in `ike/`): network `blue` (VXLAN, VNI 100) with keys per
//! network negotiated by IKEv2.
//!
//! - `encrypted_vxlan_layout`: tenants ping both ways and move 3 s of
//!   TCP whose SHA-256 matches on both sides. The underlay capture holds
//!   IKE and UDP 4789 only, no ESP in UDP 4500; tshark's VXLAN dissector
//!   shows every UDP 4789 datagram with VNI 100 and the I flag, and the
//!   payload behind it does not decode as Ethernet carrying the tenants'
//!   IP (the tenant addresses appear nowhere in the capture). A datagram
//!   of `blue` whose VNI is rewritten in flight to that of `red` (VNI
//!   200, in the same layout; forged here from a captured one, with Scapy)
//!   opens under `blue`'s SA and is dropped as `network_mismatch`, never
//!   delivered into `red`.
//!
//! They need root, iproute2, ping, tshark (dumpcap), nftables and
//! python3-scapy; they fail, never skip, when something is missing.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};

mod common;
mod ike;
use ike::*;

const PER_NETWORK: &str = "keys = \"per_network\"\n";
/// Debian's Python, which has python3-scapy.
const PYTHON: &str = "/usr/bin/python3";

/// Starts h1 and h2 with keys per network, `blue` in the Encrypted VXLAN
/// layout.
fn start_encrypted(lab: &mut tunsec_lab::Lab, pair: &Pair) -> anyhow::Result<()> {
    let mut configs = Vec::new();
    for (n, peer) in [(1, 2), (2, 1)] {
        let c = write_config_with(lab, n, peer, "evx", PER_NETWORK)?;
        let text = std::fs::read_to_string(&c)?;
        let blue = "vni = 100\nencapsulation = \"vxlan\"\n";
        ensure!(text.contains(blue), "{text}");
        ensure!(text.contains("networks = [\"blue\"]"), "{text}");
        // `red` (VNI 200) too, so that a rewritten VNI names a network.
        let text = text
            .replace(blue, &format!("{blue}layout = \"encrypted_vxlan\"\n"))
            .replace("networks = [\"blue\"]", "networks = [\"blue\", \"red\"]")
            + "\n[[network]]\nname = \"red\"\nvni = 200\nencapsulation = \"vxlan\"\nlayout = \"encrypted_vxlan\"\n";
        std::fs::write(&c, text)?;
        configs.push(c);
    }
    start_tunsecd(lab, &pair.h1, 1, &configs[0])?;
    start_tunsecd(lab, &pair.h2, 2, &configs[1])
}

/// Sends TCP from tenant `from` to `to` for `secs` seconds; fails unless
/// the receiver's byte count and SHA-256 are the sender's.
fn tcp_transfer(lab: &mut tunsec_lab::Lab, from: &str, to: &str, secs: u32) -> anyhow::Result<u64> {
    let server = lab.dir.path().join("server.py");
    let client = lab.dir.path().join("client.py");
    std::fs::write(&server, TCP_SERVER)?;
    std::fs::write(&client, TCP_CLIENT)?;
    let log = lab.spawn(
        "server",
        to,
        Path::new("python3"),
        &[&server.to_string_lossy()],
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let out = exec_output(
        from,
        "python3",
        &[&client.to_string_lossy(), &secs.to_string()],
    )?;
    ensure!(
        out.status.success(),
        "the sender failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    lab.wait_for("the receiver's digest", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|s| !s.trim().is_empty())
    })?;
    let received = std::fs::read_to_string(&log)?.trim().to_owned();
    eprintln!("  TCP: sent {sent}, received {received}");
    ensure!(sent == received, "sent {sent}, received {received}");
    sent.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("the sender's byte count")
}

#[test]
fn encrypted_vxlan_layout() {
    require(
        "encrypted VXLAN test",
        &[(PYTHON, &["-c", "import scapy.all"], "python3-scapy")],
    );
    with_lab("evx", |lab| {
        let pair = two_hosts(lab)?;
        let pcap = start_capture(lab, &pair.ul, "capture")?;
        start_encrypted(lab, &pair)?;
        wait_status(lab, "a Child SA per network on both sides", |s1, s2| {
            let nets = |s, peer| {
                ike_of(s, peer).is_ok_and(|i| {
                    let mut n: Vec<_> = i.children.iter().map(|c| c.network.clone()).collect();
                    n.sort();
                    n == [Some("blue".to_owned()), Some("red".to_owned())]
                })
            };
            Ok(nets(s1, "h2") && nets(s2, "h1"))
        })?;
        let t1 = add_tenant(lab, &pair.h1, 1, TAP)?;
        let t2 = add_tenant(lab, &pair.h2, 2, TAP)?;
        ping_ok(&t1, &tenant_addr(2))?;
        ping_ok(&t2, &tenant_addr(1))?;
        let bytes = tcp_transfer(lab, &t1, &t2, 3)?;
        ensure!(bytes > 1 << 20, "only {bytes} bytes in 3 s");
        stop_capture(lab, "capture");

        // What the fabric sees: VXLAN with VNI 100 on port 4789, and a
        // payload that is no Ethernet frame of the tenants.
        let vxlan = tshark_fields(
            &pcap,
            Some("udp.dstport == 4789"),
            &["vxlan.vni", "vxlan.flags", "frame.len"],
        )?;
        let rows: Vec<Vec<&str>> = vxlan.lines().map(|l| l.split('\t').collect()).collect();
        let esp_in_udp = tshark_fields(&pcap, Some("udp.port == 4500 && esp"), &["esp.spi"])?
            .lines()
            .count();
        let tenant_ip = tshark_fields(
            &pcap,
            Some(&format!(
                "ip.addr == {} || ip.addr == {}",
                tenant_addr(1),
                tenant_addr(2)
            )),
            &["frame.number"],
        )?
        .lines()
        .count();
        let vnis: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[0]).collect();
        eprintln!(
            "  capture: {} VXLAN datagrams (VNIs {vnis:?}, first flags {:?}), {esp_in_udp} ESP in UDP 4500, {tenant_ip} frames with a tenant address",
            rows.len(),
            rows.first().map(|r| r[1])
        );
        ensure!(rows.len() > 100, "only {} VXLAN datagrams", rows.len());
        ensure!(
            vnis.len() == 1 && vnis.contains("100"),
            "VNIs on the wire: {vnis:?}"
        );
        ensure!(
            rows.iter().all(|r| r[1] == "0x0800"),
            "a VXLAN header without (only) the I flag: {:?}",
            rows.iter().find(|r| r[1] != "0x0800")
        );
        ensure!(
            esp_in_udp == 0,
            "{esp_in_udp} ESP-in-UDP packets: the layout was not used"
        );
        ensure!(
            tenant_ip == 0,
            "{tenant_ip} frames decode to a tenant's IP packet"
        );

        // A datagram of `blue` that h2 never received (dropped on its way
        // in while captured; so its sequence number is fresh for h2's
        // replay window), its VNI rewritten to `red`'s, sent again.
        let guard = [
            "add table inet evx",
            "add chain inet evx pre { type filter hook prerouting priority -300; }",
            "add rule inet evx pre udp dport 4789 drop",
        ];
        for cmd in guard {
            lab.exec(&pair.h2, "nft", &cmd.split(' ').collect::<Vec<_>>())?;
        }
        let held = start_capture(lab, &pair.ul, "held")?;
        let answered = ping(&t1, &tenant_addr(2), 1)?;
        stop_capture(lab, "held");
        lab.exec(&pair.h2, "nft", &["delete", "table", "inet", "evx"])?;
        ensure!(answered == 0, "the ping crossed the drop rule");
        let s_before = status(lab, 2)?;
        let mismatch =
            |s: &tunsec::status::Status| s.drops.get("network_mismatch").copied().unwrap_or(0);
        let script = format!(
            "from scapy.all import rdpcap, IP, UDP, Raw, send\n\
             for p in rdpcap('{pcap}'):\n\
             \x20   if UDP in p and p[UDP].dport == 4789 and p[IP].dst == '{h2}':\n\
             \x20       b = bytearray(bytes(p[UDP].payload))\n\
             \x20       b[4:7] = (200).to_bytes(3, 'big')\n\
             \x20       send(IP(src=p[IP].src, dst=p[IP].dst)/UDP(sport=4789, dport=4789)/Raw(bytes(b)), verbose=False)\n\
             \x20       break\n\
             else:\n\
             \x20   raise SystemExit('no datagram to h2 captured')\n",
            pcap = held.display(),
            h2 = host_addr(2)
        );
        // Sent from h1's namespace, with h1's address, as the peer would.
        let out = exec_output(&pair.h1, PYTHON, &["-c", &script])?;
        ensure!(
            out.status.success(),
            "scapy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab.wait_for("the rewritten VNI counted", Duration::from_secs(5), || {
            status(lab, 2).is_ok_and(|s| mismatch(&s) > mismatch(&s_before))
        })?;
        let s_after = status(lab, 2)?;
        let red_rx = |s: &tunsec::status::Status| {
            s.networks
                .iter()
                .find(|n| n.name == "red")
                .map(|n| n.rx_frames)
        };
        eprintln!(
            "  rewritten VNI: network_mismatch {} -> {}, red rx {:?} -> {:?}",
            mismatch(&s_before),
            mismatch(&s_after),
            red_rx(&s_before),
            red_rx(&s_after)
        );
        ensure!(
            red_rx(&s_after) == red_rx(&s_before),
            "the frame reached red"
        );
        let red = s_after
            .networks
            .iter()
            .find(|n| n.name == "red")
            .context("red")?;
        ensure!(
            red.network_mismatch == 1,
            "red's network_mismatch: {}",
            red.network_mismatch
        );
        ensure!(
            s_after
                .render()
                .contains("network_mismatch 1: frames under another network's SA"),
            "status does not show red's drop:\n{}",
            s_after.render()
        );
        Ok(())
    });
}
