//! End-to-end tests of keys per network (`[peer.ike] keys =
//! "per_network"`) between two `tunsecd`, in network namespaces (helpers
//! in `ike/`): networks `blue` (VXLAN, VNI 100) and `green` (Geneve, VNI
//! 200).
//!
//! - `ike_keys_per_network`: both hosts share both networks. Each side
//!   shows two Child SAs, one bound to each network, and `keys per
//!   network`; tenants of both networks ping, each network's frames on its
//!   own SA pair (every SA counts packets); a rekey keeps each pair on its
//!   network; nothing is dropped as `network_mismatch`, and the underlay
//!   carries only IKE, ESP in UDP and ARP.
//! - `ike_keys_per_network_unshared_network`: h1 carries both networks to
//!   h2, h2 carries only `blue` to h1. h2 refuses h1's Child SA for
//!   `green` (NO_PROPOSAL_CHOSEN), so it never holds keys for it: each
//!   side has the `blue` Child SA alone, `blue`'s tenants ping, and h1
//!   drops `green`'s frames to h2 as `no_sa` rather than send them under
//!   `blue`'s keys.
//! - `ike_keys_per_network_forged_network_is_dropped`: a frame of
//!   `green` sealed under `blue`'s SA, as a peer that holds only `blue`'s
//!   keys (or a demultiplexing bug) would send it, crafted in Python from
//!   the keys `tunsec keys export` gives: h2 opens it and drops it as
//!   `network_mismatch`; the same packet with `blue`'s VXLAN header
//!   instead is delivered into `blue`, so nothing but the network differs.
//! - `ike_keys_per_network_three_vxlan_networks`: three hosts, three VXLAN
//!   networks on port 4789 (`red` 100, `blue` 200, `green` 300), h3 a
//!   member of `blue` and `green` only. The capture between h1 and h2
//!   holds exactly three SPI pairs, one per network; h3 has exactly two
//!   SA pairs with each peer; `tunsec rekey h2 --network red` changes only
//!   `red`'s SPIs, and the same for h3 (which has no `red`) is refused.
//!
//! They need root, iproute2, ping, tshark (dumpcap), nftables and
//! python3-cryptography; they fail, never skip, when something is missing.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use tunsec::control::{self, Request, Response};
use tunsec::status::Status;

mod common;
mod ike;
use ike::*;

const PER_NETWORK: &str = "keys = \"per_network\"\n";

/// Adds network `green` (Geneve, VNI 200) to a config written by
/// [`write_config_with`]; the peer carries it too if `carried`.
fn add_green(config: &Path, carried: bool) -> anyhow::Result<()> {
    let mut text = std::fs::read_to_string(config)?;
    ensure!(text.contains("networks = [\"blue\"]"), "{text}");
    if carried {
        text = text.replace("networks = [\"blue\"]", "networks = [\"blue\", \"green\"]");
    }
    text += "\n[[network]]\nname = \"green\"\nvni = 200\nencapsulation = \"geneve\"\n";
    std::fs::write(config, text)?;
    Ok(())
}

/// Starts h1 and h2 with keys per network and both networks; h2 carries
/// `green` to h1 only if `green_shared`.
fn start_per_network(
    lab: &mut tunsec_lab::Lab,
    pair: &Pair,
    green_shared: bool,
) -> anyhow::Result<()> {
    let c1 = write_config_with(lab, 1, 2, "per-network", PER_NETWORK)?;
    let c2 = write_config_with(lab, 2, 1, "per-network", PER_NETWORK)?;
    add_green(&c1, true)?;
    add_green(&c2, green_shared)?;
    start_tunsecd(lab, &pair.h1, 1, &c1)?;
    start_tunsecd(lab, &pair.h2, 2, &c2)
}

/// The networks of `peer`'s Child SAs in `s`, sorted (`-` for a shared
/// one), and the keys line.
fn child_networks(s: &Status, peer: &str) -> anyhow::Result<(Vec<String>, Option<String>)> {
    let ike = ike_of(s, peer)?;
    let mut nets: Vec<String> = ike
        .children
        .iter()
        .map(|c| c.network.clone().unwrap_or_else(|| "-".to_owned()))
        .collect();
    nets.sort();
    Ok((nets, ike.keys))
}

#[test]
fn ike_keys_per_network() {
    with_lab("tsike-net", |lab| {
        let t0 = Instant::now();
        let pair = two_hosts(lab)?;
        let pcap = start_capture(lab, &pair.ul, "capture")?;
        start_per_network(lab, &pair, true)?;
        let both = vec!["blue".to_owned(), "green".to_owned()];
        let per_network = Some("per network".to_owned());
        wait_status(lab, "a Child SA per network on both sides", |s1, s2| {
            Ok(
                child_networks(s1, "h2")? == (both.clone(), per_network.clone())
                    && child_networks(s2, "h1")? == (both.clone(), per_network.clone()),
            )
        })?;
        let rendered = status(lab, 1)?.render();
        eprintln!("{rendered}");
        ensure!(
            rendered.contains("keys per network") && rendered.contains("network green"),
            "status does not show keys per network:\n{rendered}"
        );
        phase(lab, "IKE up, a Child SA per network", t0);

        let t1 = add_tenant(lab, &pair.h1, 1, TAP)?;
        let t2 = add_tenant(lab, &pair.h2, 2, TAP)?;
        let g1 = add_tenant_on(lab, &pair.h1, "g1", "g", "ts-green", "203.0.113.1")?;
        let g2 = add_tenant_on(lab, &pair.h2, "g2", "g", "ts-green", "203.0.113.2")?;
        ping_ok(&t1, &tenant_addr(2))?;
        ping_ok(&t2, &tenant_addr(1))?;
        ping_ok(&g1, "203.0.113.2")?;
        ping_ok(&g2, "203.0.113.1")?;
        phase(lab, "pings on both networks", t0);

        // A rekey of both Child SAs: each stays on its network.
        let before = spis(&status(lab, 1)?, "h2");
        let request = Request::Rekey {
            peer: "h2".to_owned(),
            ike: false,
            network: None,
        };
        match control::call(&socket_path(lab, 1), &request)? {
            Response::Done { .. } => {}
            other => bail!("rekey: {other:?}"),
        }
        wait_status(lab, "both Child SAs rekeyed", |s1, s2| {
            let now = spis(s1, "h2");
            Ok(child_networks(s1, "h2")?.0 == both
                && child_networks(s2, "h1")?.0 == both
                && now.len() == 4
                && now.iter().all(|spi| !before.contains(spi)))
        })?;
        ping_ok(&t1, &tenant_addr(2))?;
        ping_ok(&g1, "203.0.113.2")?;
        phase(lab, "rekeyed, pings on both networks", t0);
        stop_capture(lab, "capture");

        let (s1, s2) = (status(lab, 1)?, status(lab, 2)?);
        for (s, peer) in [(&s1, "h2"), (&s2, "h1")] {
            assert_no_drops(s, &["network_mismatch", "selector", "policy", "no_sa"])?;
            let p = s.peers.iter().find(|p| p.name == peer).unwrap();
            ensure!(p.sas.len() == 4, "{}: {:?}", s.node.name, p.sas);
            for sa in &p.sas {
                ensure!(
                    sa.packets > 0 && sa.drops.values().all(|&d| d == 0),
                    "{}: an SA of one network carried nothing: {sa:?}",
                    s.node.name
                );
            }
        }
        let frames = frames(&pcap)?;
        let other: Vec<&Frame> = frames
            .iter()
            .filter(|f| !f.is_arp() && !f.is_esp_in_udp() && !f.is_ike())
            .collect();
        ensure!(
            other.is_empty(),
            "{} captured frames are neither IKE, ESP in UDP nor ARP:{}",
            other.len(),
            describe(&other)
        );
        Ok(())
    });
}

#[test]
fn ike_keys_per_network_unshared_network() {
    with_lab("tsike-nets", |lab| {
        let pair = two_hosts(lab)?;
        start_per_network(lab, &pair, false)?;
        let blue = vec!["blue".to_owned()];
        wait_status(lab, "the blue Child SA alone", |s1, s2| {
            Ok(child_networks(s1, "h2")?.0 == blue
                && child_networks(s2, "h1")?.0 == blue
                && ike_of(s1, "h2")?.state == "established")
        })?;
        let t1 = add_tenant(lab, &pair.h1, 1, TAP)?;
        let t2 = add_tenant(lab, &pair.h2, 2, TAP)?;
        let g1 = add_tenant_on(lab, &pair.h1, "g1", "g", "ts-green", "203.0.113.1")?;
        ping_ok(&t1, &tenant_addr(2))?;
        ping_ok(&t2, &tenant_addr(1))?;
        // green's frames from h1 to h2 have no SA of their own: dropped,
        // never sent under blue's.
        let _ = exec_output(
            &g1,
            "ping",
            &["-c", "3", "-i", "0.2", "-W", "1", "203.0.113.2"],
        );
        let (s1, s2) = (status(lab, 1)?, status(lab, 2)?);
        let no_sa = s1.drops.get("no_sa").copied().unwrap_or(0);
        eprintln!("  h1 dropped {no_sa} of green's frames as no_sa");
        ensure!(
            no_sa > 0,
            "h1 sent green's frames somewhere:\n{}",
            s1.render()
        );
        assert_no_drops(&s2, &["network_mismatch", "policy"])?;
        let (nets, _) = child_networks(&s2, "h1")?;
        ensure!(nets == blue, "h2 holds Child SAs for {nets:?}");
        Ok(())
    });
}

/// Seals a tunnel datagram under an AES-GCM ESP SA and sends it as ESP in
/// UDP: `forge.py SPI SEQ KEYHEX DST PORT VNI ENCAP` (ENCAP `vxlan` or
/// `geneve`). The inner frame is an Ethernet broadcast (ARP-typed bytes).
const FORGE: &str = r#"
import os, socket, struct, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
spi, seq, keyhex, dst, port, vni, encap = sys.argv[1:8]
spi, seq, port, vni = int(spi, 0), int(seq), int(port), int(vni)
key = bytes.fromhex(keyhex)
salt, key = key[-4:], key[:-4]
if encap == "vxlan":
    tunnel = struct.pack("!BBHI", 0x08, 0, 0, vni << 8)
else:
    tunnel = struct.pack("!BBHI", 0, 0, 0x6558, vni << 8)
frame = b"\xff" * 6 + bytes([2, 0, 0, 0, 0, 0x66]) + b"\x08\x06" + bytes(46)
payload = tunnel + frame
udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
pad = (-(len(udp) + 2)) % 4
plain = udp + bytes(range(1, pad + 1)) + bytes([pad, 17])
iv = os.urandom(8)
head = struct.pack("!II", spi, seq)
sealed = AESGCM(key).encrypt(salt + iv, plain, head)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(head + iv + sealed, (dst, 4500))
"#;

#[test]
fn ike_keys_per_network_forged_network_is_dropped() {
    with_lab("tsike-netf", |lab| {
        let pair = two_hosts(lab)?;
        start_per_network(lab, &pair, true)?;
        let both = vec!["blue".to_owned(), "green".to_owned()];
        wait_status(lab, "a Child SA per network on both sides", |s1, s2| {
            Ok(child_networks(s1, "h2")?.0 == both && child_networks(s2, "h1")?.0 == both)
        })?;
        // h1's outbound SA of blue, and its keys.
        let ike = ike_of(&status(lab, 1)?, "h2")?;
        let blue_out = ike
            .children
            .iter()
            .find(|c| c.network.as_deref() == Some("blue"))
            .map(|c| c.spi_out.clone())
            .context("no blue Child SA")?;
        let spi = u32::from_str_radix(blue_out.trim_start_matches("0x"), 16)?;
        let keys = match control::call(&socket_path(lab, 1), &Request::ExportKeys)? {
            Response::Keys(k) => k,
            other => bail!("keys: {other:?}"),
        };
        let sa = keys
            .esp
            .iter()
            .find(|k| k.spi == spi && k.direction == "out")
            .context("no keys for blue's outbound SA")?;
        ensure!(sa.suite.starts_with("aes"), "suite {}", sa.suite);
        let forge = lab.dir.path().join("forge.py");
        std::fs::write(&forge, FORGE)?;
        let send = |seq: u64, port: &str, vni: &str, encap: &str| -> anyhow::Result<()> {
            let out = exec_output(
                &pair.h1,
                "python3",
                &[
                    &forge.to_string_lossy(),
                    &format!("{spi:#x}"),
                    &seq.to_string(),
                    sa.encryption_key.expose(),
                    &host_addr(2),
                    port,
                    vni,
                    encap,
                ],
            )?;
            ensure!(
                out.status.success(),
                "forge.py: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        let rx = |s: &Status, net: &str| {
            s.networks
                .iter()
                .find(|n| n.name == net)
                .map_or(0, |n| n.rx_frames)
        };
        let drops = |s: &Status| s.drops.get("network_mismatch").copied().unwrap_or(0);
        let before = status(lab, 2)?;
        // green's frame (Geneve, VNI 200) under blue's SA.
        send(1_000_000, "6081", "200", "geneve")?;
        // The control: blue's own frame (VXLAN, VNI 100), the same way.
        send(1_000_001, "4789", "100", "vxlan")?;
        let mut after = status(lab, 2)?;
        for _ in 0..50 {
            if drops(&after) > drops(&before) && rx(&after, "blue") > rx(&before, "blue") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            after = status(lab, 2)?;
        }
        eprintln!(
            "  h2: network_mismatch {} -> {}, blue rx {} -> {}, green rx {} -> {}",
            drops(&before),
            drops(&after),
            rx(&before, "blue"),
            rx(&after, "blue"),
            rx(&before, "green"),
            rx(&after, "green")
        );
        ensure!(
            drops(&after) == drops(&before) + 1,
            "the forged green frame was not dropped as network_mismatch:\n{}",
            after.render()
        );
        ensure!(
            rx(&after, "green") == rx(&before, "green"),
            "the forged frame reached green"
        );
        ensure!(
            rx(&after, "blue") > rx(&before, "blue"),
            "the control frame did not reach blue (the forgery itself is broken):\n{}",
            after.render()
        );
        Ok(())
    });
}

/// Three VXLAN networks on port 4789, `red` (VNI 100), `blue` (200) and
/// `green` (300); h1 and h2 carry all three to each other, h3 only `blue`
/// and `green` (it has no `red` at all).
fn write_three_networks(lab: &tunsec_lab::Lab, n: u8) -> anyhow::Result<std::path::PathBuf> {
    use std::fmt::Write as _;
    let psk = lab.dir.path().join(format!("h{n}.psk"));
    tunsec::config::write_secret(&psk, "three networks, one key\n")?;
    let nets: &[(&str, u32)] = if n == 3 {
        &[("blue", 200), ("green", 300)]
    } else {
        &[("red", 100), ("blue", 200), ("green", 300)]
    };
    let mut c = format!(
        "[node]\nname = \"h{n}\"\nunderlay = \"{}\"\ncontrol_socket = \"{}\"\n\n",
        host_addr(n),
        socket_path(lab, n).display()
    );
    for (name, vni) in nets {
        writeln!(
            c,
            "[[network]]\nname = \"{name}\"\nvni = {vni}\nencapsulation = \"vxlan\"\n"
        )?;
    }
    for peer in (1..=3).filter(|&p| p != n) {
        let carried = if n == 3 || peer == 3 {
            "\"blue\", \"green\""
        } else {
            "\"red\", \"blue\", \"green\""
        };
        writeln!(
            c,
            "[[peer]]\nname = \"h{peer}\"\nunderlay = \"{}\"\nnetworks = [{carried}]\npolicy = \"require\"\n\n\
             [peer.ike]\npsk_file = \"{}\"\n{PER_NETWORK}",
            host_addr(peer),
            psk.display()
        )?;
    }
    let path = lab.dir.path().join(format!("h{n}.toml"));
    std::fs::write(&path, c)?;
    Ok(path)
}

/// The (inbound, outbound) SPIs of `peer`'s Child SA of `network` in `s`.
fn child_spis(s: &Status, peer: &str, network: &str) -> anyhow::Result<(String, String)> {
    ike_of(s, peer)?
        .children
        .into_iter()
        .find(|c| c.network.as_deref() == Some(network))
        .map(|c| (c.spi_in, c.spi_out))
        .with_context(|| format!("{}: no Child SA of {network} with {peer}", s.node.name))
}

/// Three hosts and three VXLAN networks on port 4789 (`write_three_networks`):
/// - between h1 and h2, the capture shows three distinct SPI pairs, one
///   per network, each carrying its tenants' pings;
/// - h3, a member of `blue` and `green` only, has exactly two SA pairs
///   with each peer, and h1 and h2 two with it;
/// - rekeying `red` alone (`tunsec rekey h2 --network red`) changes only
///   `red`'s SPIs; `blue`'s and `green`'s stay.
#[test]
fn ike_keys_per_network_three_vxlan_networks() {
    with_lab("tsike-3net", |lab| {
        let ul = add_underlay(lab)?;
        let hosts: Vec<String> = (1..=3)
            .map(|n| add_host(lab, &ul, &format!("h{n}"), n))
            .collect::<anyhow::Result<_>>()?;
        let pcap = start_capture(lab, &ul, "capture")?;
        for n in 1..=3u8 {
            let c = write_three_networks(lab, n)?;
            start_tunsecd(lab, &hosts[usize::from(n) - 1], n, &c)?;
        }
        let nets = |s: &Status, peer: &str| child_networks(s, peer).map(|(n, _)| n);
        let all3 = vec!["blue".to_owned(), "green".to_owned(), "red".to_owned()];
        let two = vec!["blue".to_owned(), "green".to_owned()];
        lab.wait_for(
            "every Child SA of the three hosts",
            std::time::Duration::from_secs(30),
            || {
                let (Ok(s1), Ok(s2), Ok(s3)) = (status(lab, 1), status(lab, 2), status(lab, 3))
                else {
                    return false;
                };
                [
                    (nets(&s1, "h2"), &all3),
                    (nets(&s2, "h1"), &all3),
                    (nets(&s1, "h3"), &two),
                    (nets(&s2, "h3"), &two),
                    (nets(&s3, "h1"), &two),
                    (nets(&s3, "h2"), &two),
                ]
                .iter()
                .all(|(got, want)| got.as_ref().is_ok_and(|g| g == *want))
            },
        )?;
        // h3: exactly two SA pairs with each peer.
        let s3 = status(lab, 3)?;
        for peer in ["h1", "h2"] {
            let sas = sa_count(&s3, peer);
            ensure!(sas == 4, "h3 has {sas} SAs with {peer}, not two pairs");
        }

        // A tenant of each network on h1 and h2; each pings across.
        let prefixes = [("red", "10.1.0"), ("blue", "10.2.0"), ("green", "10.3.0")];
        for (name, prefix) in prefixes {
            let tap = format!("ts-{name}");
            let a = add_tenant_on(
                lab,
                &hosts[0],
                &format!("{name}1"),
                &format!("{name}a"),
                &tap,
                &format!("{prefix}.1"),
            )?;
            add_tenant_on(
                lab,
                &hosts[1],
                &format!("{name}2"),
                &format!("{name}b"),
                &tap,
                &format!("{prefix}.2"),
            )?;
            ping_ok(&a, &format!("{prefix}.2"))?;
        }
        stop_capture(lab, "capture");
        // ESP between h1 and h2: one SPI per direction and network.
        let filter = format!(
            "esp && ((ip.src == {a} && ip.dst == {b}) || (ip.src == {b} && ip.dst == {a}))",
            a = host_addr(1),
            b = host_addr(2)
        );
        let seen: std::collections::BTreeSet<String> =
            tshark_fields(&pcap, Some(&filter), &["esp.spi"])?
                .lines()
                .map(|l| l.trim().to_owned())
                .collect();
        let s1 = status(lab, 1)?;
        let mut want = std::collections::BTreeSet::new();
        for (name, _) in prefixes {
            let (i, o) = child_spis(&s1, "h2", name)?;
            want.insert(i);
            want.insert(o);
        }
        eprintln!("  h1<->h2 ESP SPIs on the wire: {seen:?}; h1's Child SAs: {want:?}");
        ensure!(
            want.len() == 6,
            "three distinct SPI pairs expected: {want:?}"
        );
        ensure!(
            seen == want,
            "the capture's SPIs {seen:?} are not the three pairs {want:?}"
        );

        // Rekey red alone.
        let before: Vec<_> = prefixes
            .iter()
            .map(|(n, _)| child_spis(&s1, "h2", n))
            .collect::<anyhow::Result<_>>()?;
        let request = Request::Rekey {
            peer: "h2".to_owned(),
            ike: false,
            network: Some("red".to_owned()),
        };
        match control::call(&socket_path(lab, 1), &request)? {
            Response::Done { .. } => {}
            other => bail!("rekey red: {other:?}"),
        }
        lab.wait_for("red rekeyed", std::time::Duration::from_secs(20), || {
            status(lab, 1)
                .is_ok_and(|s| child_spis(&s, "h2", "red").is_ok_and(|spis| spis != before[0]))
        })?;
        let s1 = status(lab, 1)?;
        let after: Vec<_> = prefixes
            .iter()
            .map(|(n, _)| child_spis(&s1, "h2", n))
            .collect::<anyhow::Result<_>>()?;
        eprintln!("  before the rekey of red: {before:?}\n  after: {after:?}");
        ensure!(after[0] != before[0], "red's SPIs did not change");
        ensure!(after[1..] == before[1..], "blue's or green's SPIs changed");
        // A network the peer does not carry with h3 is refused by name.
        let refused = control::call(
            &socket_path(lab, 1),
            &Request::Rekey {
                peer: "h3".to_owned(),
                ike: false,
                network: Some("red".to_owned()),
            },
        )?;
        ensure!(
            matches!(&refused, Response::Error { message } if message.contains("\"red\"")),
            "rekey of red with h3: {refused:?}"
        );
        Ok(())
    });
}
