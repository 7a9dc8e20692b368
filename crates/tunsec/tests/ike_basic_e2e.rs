//! End-to-end tests of `tunsecd` with IKEv2 (pre-shared keys), in network
//! namespaces: establishment, tunnel mode and NAT. Two hosts on an underlay
//! bridge run the real `tunsecd` with `[peer.ike]` and no manual keys
//! (helpers in `ike/`).
//!
//! - `ike_psk_establishes`: with the same PSK, both daemons report the IKE
//!   SA established and a Child SA pair within seconds, tenants ping each
//!   other, and the underlay capture holds IKE on UDP 500, ESP in UDP 4500
//!   and ARP only, without one copy of the tenant marker.
//! - `ike_wrong_psk_fails_closed`: with different PSKs, no SA comes up,
//!   status names the authentication failure, pings fail, and nothing but
//!   IKE and ARP leaves the hosts.
//! - `ike_tunnel_mode`: both daemons with `mode = "tunnel"` (one reading
//!   its PSK from `psk_env`) bring up tunnel-mode Child SAs; pings (also
//!   full-size with DF) and a TCP transfer get through, the capture holds
//!   only IKE, ESP in UDP and ARP, and the ESP packets carry the 20 bytes
//!   of the inner IPv4 header.
//! - `ike_mixed_modes_agree_on_tunnel`: one side configured for tunnel
//!   mode, the other for transport: both end in tunnel mode and traffic
//!   flows.
//! - `ike_behind_nat`: h1 behind an nftables masquerade: NAT detection on
//!   both sides, IKE on port 4500, ESP in UDP through the NAT, tenants
//!   ping, h1 sends NAT keepalives, nothing in the clear.
//!
//! They need root, iproute2, ping, tshark (dumpcap), nftables and python3;
//! they fail, never skip, when something is missing.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use tunsec::control::{self, Request, Response};
use tunsec::status::Status;

mod common;
mod ike;
use ike::*;

#[test]
fn ike_psk_establishes() {
    with_lab("tsike-ok", |lab| {
        let t0 = Instant::now();
        let (pair, pcap) = ike_pair(lab, "same-secret-for-both", "same-secret-for-both")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (s1, s2) = (status(lab, 1)?, status(lab, 2)?);
            let up = |s: &Status, peer: &str| -> anyhow::Result<bool> {
                let ike = ike_of(s, peer)?;
                let sas = &s.peers.iter().find(|p| p.name == peer).unwrap().sas;
                Ok(ike.state == "established"
                    && ike.child_sas >= 1
                    && sas.iter().any(|sa| sa.direction == "in")
                    && sas.iter().any(|sa| sa.direction == "out"))
            };
            if up(&s1, "h2")? && up(&s2, "h1")? {
                let (i1, i2) = (ike_of(&s1, "h2")?, ike_of(&s2, "h1")?);
                eprintln!("  h1: {i1:?}\n  h2: {i2:?}");
                ensure!(
                    i1.role == "initiator" && i2.role == "responder",
                    "roles: {i1:?} {i2:?}"
                );
                ensure!(
                    i1.spi_i.is_some() && i1.spi_i == i2.spi_i && i1.spi_r == i2.spi_r,
                    "the two sides disagree on the IKE SPIs: {i1:?} {i2:?}"
                );
                ensure!(i1.suite.is_some(), "no IKE suite: {i1:?}");
                // A plain link: neither host is behind a NAT, and the UDP
                // encapsulation is said to be forced, not a NAT's doing.
                for (i, who) in [(&i1, "h1"), (&i2, "h2")] {
                    ensure!(
                        i.nat_local == Some(false) && i.udp_encap_forced == Some(true),
                        "{who}: NAT detection on a plain link: {i:?}"
                    );
                    ensure!(
                        i.nat.as_deref().is_some_and(|n| {
                            n.contains("this host is not behind a NAT")
                                && n.contains("UDP encapsulation forced by this host")
                        }),
                        "{who}: the NAT summary: {:?}",
                        i.nat
                    );
                }
                // The SPIs cross: h1's outbound is h2's inbound.
                let spi = |s: &Status, peer: &str, dir: &str| {
                    s.peers
                        .iter()
                        .find(|p| p.name == peer)
                        .and_then(|p| p.sas.iter().find(|sa| sa.direction == dir))
                        .map(|sa| sa.spi.clone())
                };
                ensure!(
                    spi(&s1, "h2", "out") == spi(&s2, "h1", "in")
                        && spi(&s1, "h2", "in") == spi(&s2, "h1", "out"),
                    "Child SA SPIs do not match:\n{}\n{}",
                    s1.render(),
                    s2.render()
                );
                break;
            }
            if Instant::now() > deadline {
                bail!("no IKE SA within 10 s:\n{}\n{}", s1.render(), s2.render());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        phase(lab, "IKE up", t0);

        let t1 = add_tenant(lab, &pair.h1, 1, TAP)?;
        let t2 = add_tenant(lab, &pair.h2, 2, TAP)?;
        ping_ok(&t1, &tenant_addr(2))?;
        ping_ok(&t2, &tenant_addr(1))?;
        phase(lab, "pings", t0);
        stop_capture(lab, "capture");

        let raw = std::fs::read(&pcap)?;
        let leaked = count_marker(&raw);
        let frames = frames(&pcap)?;
        let other: Vec<&Frame> = frames
            .iter()
            .filter(|f| !f.is_arp() && !f.is_esp_in_udp() && !f.is_ike())
            .collect();
        let ike = frames.iter().filter(|f| f.is_ike()).count();
        let esp = frames.iter().filter(|f| f.is_esp_in_udp()).count();
        eprintln!(
            "  [{}] capture: {} frames, {ike} IKE, {esp} ESP, {} other, marker {leaked} times",
            pair.ul,
            frames.len(),
            other.len()
        );
        ensure!(
            other.is_empty(),
            "{} captured frames are neither IKE on UDP 500, ESP in UDP 4500 nor ARP:{}",
            other.len(),
            describe(&other)
        );
        ensure!(
            ike >= 4,
            "only {ike} IKE frames: IKE_SA_INIT and IKE_AUTH need 4"
        );
        ensure!(esp >= 12, "only {esp} ESP frames for 6 pings each way");
        ensure!(
            leaked == 0,
            "the marker appears {leaked} times in the underlay capture: tenant bytes in the clear"
        );

        // SIGTERM: h1 deletes its IKE SA on the way out, and h2 removes
        // the SAs at once (no waiting for dead-peer detection).
        ensure!(lab.stop("h1"), "tunsecd h1 did not exit cleanly on SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let s2 = status(lab, 2)?;
            let i2 = ike_of(&s2, "h1")?;
            let no_sas = s2.peers.iter().all(|p| p.sas.is_empty());
            if no_sas && i2.state.contains("deleted by the peer") {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "h2 did not drop the SAs after h1's DELETE:\n{}",
                    s2.render()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let got = ping(&t2, &tenant_addr(1), 1)?;
        ensure!(got == 0, "a ping was answered after the SAs were deleted");
        Ok(())
    });
}

#[test]
fn ike_wrong_psk_fails_closed() {
    with_lab("tsike-bad", |lab| {
        let t0 = Instant::now();
        let (pair, pcap) = ike_pair(lab, "the-first-secret", "another-secret")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let (e1, e2) = loop {
            let (s1, s2) = (status(lab, 1)?, status(lab, 2)?);
            let (i1, i2) = (ike_of(&s1, "h2")?, ike_of(&s2, "h1")?);
            if let (Some(e1), Some(e2)) = (&i1.last_error, &i2.last_error) {
                break (e1.clone(), e2.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "no failure reported within 10 s:\n{}\n{}",
                    s1.render(),
                    s2.render()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        eprintln!("  h1: {e1}\n  h2: {e2}");
        ensure!(
            e2.contains("authentication failed"),
            "h2 (responder) does not name the authentication failure: {e2}"
        );
        ensure!(
            e1.to_lowercase().contains("authentication"),
            "h1 (initiator) does not name the authentication failure: {e1}"
        );
        phase(lab, "IKE failed", t0);

        let t1 = add_tenant(lab, &pair.h1, 1, TAP)?;
        let _t2 = add_tenant(lab, &pair.h2, 2, TAP)?;
        let got = ping(&t1, &tenant_addr(2), 3)?;
        ensure!(got == 0, "{got} pings answered without an SA");
        for (n, peer) in [(1, "h2"), (2, "h1")] {
            let s = status(lab, n)?;
            let p = s.peers.iter().find(|p| p.name == peer).unwrap();
            ensure!(p.sas.is_empty(), "h{n} has SAs:\n{}", s.render());
            ensure!(
                ike_of(&s, peer)?.state != "established",
                "h{n}: IKE SA established with the wrong PSK:\n{}",
                s.render()
            );
        }
        let s1 = status(lab, 1)?;
        ensure!(
            s1.drops.get("no_sa").copied().unwrap_or(0) > 0,
            "h1 dropped nothing as no_sa:\n{}",
            s1.render()
        );
        stop_capture(lab, "capture");

        let raw = std::fs::read(&pcap)?;
        let leaked = count_marker(&raw);
        let frames = frames(&pcap)?;
        let other: Vec<&Frame> = frames
            .iter()
            .filter(|f| !f.is_arp() && !f.is_ike())
            .collect();
        ensure!(
            other.is_empty(),
            "{} captured frames are neither IKE nor ARP:{}",
            other.len(),
            describe(&other)
        );
        ensure!(
            leaked == 0,
            "the marker appears {leaked} times in the clear"
        );
        Ok(())
    });
}

/// The UDP lengths of the ESP-in-UDP frames in a capture.
fn esp_udp_lengths(pcap: &Path) -> anyhow::Result<Vec<u16>> {
    let text = tshark_fields(pcap, Some("udpencap && esp"), &["udp.length"])?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Both daemons ask for tunnel mode (`[peer.ike] mode = "tunnel"`; h2 reads
/// its PSK from the environment, `psk_env`): the Child SAs come up in
/// tunnel mode, the TAP MTU leaves room for the inner IP header, tenants
/// ping each other (full-size, DF, too) and move data over TCP, and the
/// underlay carries only IKE, ESP in UDP and ARP, unfragmented, with the
/// ESP packets 20 bytes longer than transport mode's: the inner IPv4
/// header.
#[test]
fn ike_tunnel_mode() {
    const PSK_VAR: &str = "TSE2E_TUNNEL_PSK";
    with_lab("tsike-tun", |lab| {
        let t0 = Instant::now();
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        let h2 = add_host(lab, &ul, "h2", 2)?;
        let pcap = start_capture(lab, &ul, "capture")?;
        let psk = "tunnel-mode-secret";
        let mode = "mode = \"tunnel\"\n";
        let c1 = write_config_with(lab, 1, 2, psk, mode)?;
        let c2 = write_config_with(lab, 2, 1, "unused", mode)?;
        let text = std::fs::read_to_string(&c2)?;
        ensure!(text.contains("psk_file = \"h2.psk\""), "{text}");
        std::fs::write(
            &c2,
            text.replace("psk_file = \"h2.psk\"", &format!("psk_env = \"{PSK_VAR}\"")),
        )?;
        start_tunsecd(lab, &h1, 1, &c1)?;
        // h2's daemon with the PSK in its environment only.
        let c2s = c2.to_string_lossy().into_owned();
        let var = format!("{PSK_VAR}={psk}");
        lab.spawn(
            "h2",
            &h2,
            Path::new("/usr/bin/env"),
            &[&var, TUNSECD, "--config", &c2s],
        )?;
        let sock = socket_path(lab, 2);
        lab.wait_for("tunsecd h2 to answer", Duration::from_secs(20), || {
            matches!(
                control::call(&sock, &Request::Status),
                Ok(Response::Status(_))
            )
        })?;

        let tunnel_sas = |s: &Status, peer: &str| -> bool {
            s.peers.iter().find(|p| p.name == peer).is_some_and(|p| {
                p.sas.len() == 2
                    && p.sas.iter().any(|sa| sa.direction == "in")
                    && p.sas.iter().any(|sa| sa.direction == "out")
                    && p.sas.iter().all(|sa| sa.mode.as_deref() == Some("tunnel"))
            })
        };
        wait_status(lab, "tunnel-mode Child SAs", |s1, s2| {
            Ok(ike_of(s1, "h2")?.state == "established"
                && ike_of(s2, "h1")?.state == "established"
                && tunnel_sas(s1, "h2")
                && tunnel_sas(s2, "h1"))
        })?;
        phase(lab, "IKE up in tunnel mode", t0);

        // The TAP MTU: 1500 - 121 (IPv4, ESP in UDP, inner IPv4, VXLAN)
        // - 14 (Ethernet) = 1365, 20 below transport mode's 1385.
        let mtu = link_mtu(lab, &h1, TAP)?;
        ensure!(mtu == 1365, "TAP MTU {mtu}, expected 1365");

        let t1 = add_tenant(lab, &h1, 1, TAP)?;
        let t2 = add_tenant(lab, &h2, 2, TAP)?;
        ping_ok(&t1, &tenant_addr(2))?;
        ping_ok(&t2, &tenant_addr(1))?;
        // Full-size packets with DF: they fit the underlay unfragmented.
        let size = (mtu - 28).to_string();
        let out = exec_output(
            &t1,
            "ping",
            &[
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "2",
                "-M",
                "do",
                "-s",
                &size,
                "-p",
                &marker_hex(),
                &tenant_addr(2),
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            text.contains(" 3 received"),
            "full-size pings through the tunnel: {text}"
        );
        phase(lab, "pings", t0);
        stop_capture(lab, "capture");

        // TCP through the tunnel, intact.
        let server = lab.dir.path().join("server.py");
        let client = lab.dir.path().join("client.py");
        std::fs::write(&server, TCP_SERVER)?;
        std::fs::write(&client, TCP_CLIENT)?;
        let server_log = lab.spawn(
            "server",
            &t2,
            Path::new("python3"),
            &[&server.to_string_lossy()],
        )?;
        std::thread::sleep(Duration::from_millis(500));
        let out = exec_output(&t1, "python3", &[&client.to_string_lossy(), "3"])?;
        ensure!(
            out.status.success(),
            "client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sent = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        lab.wait_for("the server's digest", Duration::from_secs(30), || {
            std::fs::read_to_string(&server_log).is_ok_and(|s| !s.trim().is_empty())
        })?;
        let received = std::fs::read_to_string(&server_log)?.trim().to_owned();
        eprintln!("  TCP: sent {sent}; received {received}");
        ensure!(received == sent, "sent {sent}, received {received}");
        phase(lab, "TCP", t0);

        // tunsec status: tunnel-mode SAs that carried the traffic, and no
        // drops on the way.
        let (s1, s2) = (status(lab, 1)?, status(lab, 2)?);
        for (s, peer) in [(&s1, "h2"), (&s2, "h1")] {
            let rendered = s.render();
            ensure!(
                rendered.contains(" tunnel esn="),
                "{}: status does not show tunnel mode:\n{rendered}",
                s.node.name
            );
            let p = s.peers.iter().find(|p| p.name == peer).unwrap();
            for sa in &p.sas {
                ensure!(
                    sa.packets > 100 && sa.drops.values().all(|&d| d == 0),
                    "{}: {sa:?}",
                    s.node.name
                );
            }
            assert_no_drops(
                s,
                &["inner_header", "policy", "no_sa", "too_big", "malformed"],
            )?;
        }

        let raw = std::fs::read(&pcap)?;
        let leaked = count_marker(&raw);
        let frames = frames(&pcap)?;
        let other: Vec<&Frame> = frames
            .iter()
            .filter(|f| !f.is_arp() && !f.is_esp_in_udp() && !f.is_ike())
            .collect();
        ensure!(
            other.is_empty(),
            "{} captured frames are neither IKE, ESP in UDP nor ARP (cleartext VXLAN? fragments?):{}",
            other.len(),
            describe(&other)
        );
        ensure!(
            leaked == 0,
            "the marker appears {leaked} times in the underlay capture"
        );
        // A 200-byte ping is a 242-byte frame; under aes128gcm16 (IV 8,
        // ICV 16) transport mode makes it UDP 8 + ESP 8 + IV 8 + (UDP 8 +
        // VXLAN 8 + 242 + trailer 2) + ICV 16 = 300 bytes of UDP; tunnel
        // mode adds the 20-byte inner IPv4 header: 320.
        let lengths = esp_udp_lengths(&pcap)?;
        let tunnel = lengths.iter().filter(|&&l| l == 320).count();
        let transport = lengths.iter().filter(|&&l| l == 300).count();
        eprintln!(
            "  capture: {} frames, {} ESP, {tunnel} of 320 bytes (tunnel), {transport} of 300 (transport)",
            frames.len(),
            lengths.len()
        );
        ensure!(
            tunnel >= 12 && transport == 0,
            "ESP lengths do not show the inner IP header: {lengths:?}"
        );
        Ok(())
    });
}

/// Mixed configs end in tunnel mode on both sides, and traffic flows: a
/// transport-configured responder follows an initiator that does not ask
/// for transport mode, and a tunnel-configured responder declines an
/// initiator's USE_TRANSPORT_MODE (RFC 7296 section 1.3.1).
#[test]
fn ike_mixed_modes_agree_on_tunnel() {
    for (prefix, extra1, extra2) in [
        ("tsike-mx1", "mode = \"tunnel\"\n", ""),
        ("tsike-mx2", "", "mode = \"tunnel\"\n"),
    ] {
        with_lab(prefix, |lab| {
            let pair = two_hosts(lab)?;
            start_pair(lab, &pair, ("mixed-modes", extra1), ("mixed-modes", extra2))?;
            let Pair { h1, h2, .. } = pair;
            let tunnel = |s: &Status, peer: &str| {
                s.peers.iter().find(|p| p.name == peer).is_some_and(|p| {
                    p.sas.len() == 2 && p.sas.iter().all(|sa| sa.mode.as_deref() == Some("tunnel"))
                })
            };
            wait_status(lab, "tunnel-mode Child SAs", |s1, s2| {
                Ok(tunnel(s1, "h2") && tunnel(s2, "h1"))
            })?;
            let t1 = add_tenant(lab, &h1, 1, TAP)?;
            let t2 = add_tenant(lab, &h2, 2, TAP)?;
            ping_ok(&t1, &tenant_addr(2))?;
            ping_ok(&t2, &tenant_addr(1))?;
            Ok(())
        });
    }
}

/// A real NAT (nftables masquerade in a router namespace) between h1
/// (10.0.0.1, private) and h2: NAT detection finds it (RFC 7296 section
/// 2.23), IKE moves to port 4500, ESP travels in UDP through the NAT's
/// mapping, tenants ping across, and h1, behind the NAT, sends NAT
/// keepalives (RFC 3948 section 2.3: one byte, 0xFF) every
/// `nat_keepalive` second. Nothing leaves the router in the clear.
#[test]
fn ike_behind_nat() {
    with_lab("tsike-nat", |lab| {
        let t0 = Instant::now();
        let ul = add_underlay(lab)?;
        let h2 = add_host(lab, &ul, "h2", 2)?;
        // The router: 192.0.2.1 outside, 10.0.0.254 inside, masquerading.
        let nat = add_host(lab, &ul, "nat", 1)?;
        let h1 = lab.add_ns("h1")?;
        lab.veth(&nat, "in0", &h1, "eth0")?;
        lab.exec(&nat, "ip", &["addr", "add", "10.0.0.254/24", "dev", "in0"])?;
        lab.exec(&h1, "ip", &["addr", "add", "10.0.0.1/24", "dev", "eth0"])?;
        lab.exec(&h1, "ip", &["route", "add", "default", "via", "10.0.0.254"])?;
        lab.exec(&nat, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        let rules = "table ip masq {\n chain post {\n  type nat hook postrouting priority 100;\n  \
                     oifname \"eth0\" masquerade\n }\n}\n";
        let rules_file = lab.dir.path().join("nat.nft");
        std::fs::write(&rules_file, rules)?;
        lab.exec(&nat, "nft", &["-f", &rules_file.to_string_lossy()])?;
        let pcap = start_capture(lab, &ul, "capture")?;

        let psk = "behind-the-nat";
        tunsec::config::write_secret(lab.dir.path().join("h1.psk"), psk)?;
        tunsec::config::write_secret(lab.dir.path().join("h2.psk"), psk)?;
        let config = |n: u8, underlay: &str, peer: u8, peer_underlay: &str, extra: &str| {
            format!(
                "[node]\nname = \"h{n}\"\nunderlay = \"{underlay}\"\ncontrol_socket = \"{}\"\n\n\
                 [[network]]\nname = \"blue\"\nvni = 100\nencapsulation = \"vxlan\"\n\n\
                 [[peer]]\nname = \"h{peer}\"\nunderlay = \"{peer_underlay}\"\n\
                 networks = [\"blue\"]\npolicy = \"require\"\n\n\
                 [peer.ike]\npsk_file = \"h{n}.psk\"\n{extra}",
                socket_path(lab, n).display()
            )
        };
        // h1 knows h2 by its address; h2 knows h1 by the NAT's, and h1
        // proves its own (private) address as its identity.
        let c1 = lab.dir.path().join("h1.toml");
        let c2 = lab.dir.path().join("h2.toml");
        std::fs::write(
            &c1,
            config(1, "10.0.0.1", 2, "192.0.2.2", "nat_keepalive = 1\n"),
        )?;
        std::fs::write(
            &c2,
            config(2, "192.0.2.2", 1, "192.0.2.1", "remote_id = \"10.0.0.1\"\n"),
        )?;
        start_tunsecd(lab, &h1, 1, &c1)?;
        start_tunsecd(lab, &h2, 2, &c2)?;
        wait_status(lab, "IKE through the NAT", |s1, s2| {
            Ok(sa_count(s1, "h2") == 2 && sa_count(s2, "h1") == 2)
        })?;
        let (i1, i2) = (
            ike_of(&status(lab, 1)?, "h2")?,
            ike_of(&status(lab, 2)?, "h1")?,
        );
        eprintln!("  h1: {:?}\n  h2: {:?}", i1.nat, i2.nat);
        ensure!(
            i1.nat_local == Some(true)
                && i1.udp_encap_forced == Some(true)
                && i1
                    .nat
                    .as_deref()
                    .is_some_and(|n| n.contains("this host is behind a NAT")),
            "h1 did not find itself behind the NAT: {i1:?}"
        );
        ensure!(
            i2.nat_local == Some(false)
                && i2.nat_peer_mismatch == Some(true)
                && i2.udp_encap_forced == Some(true),
            "h2 did not find h1's address translated: {i2:?}"
        );
        phase(lab, "IKE up through the NAT", t0);

        let t1 = add_tenant(lab, &h1, 1, TAP)?;
        let t2 = add_tenant(lab, &h2, 2, TAP)?;
        ping_ok(&t1, &tenant_addr(2))?;
        ping_ok(&t2, &tenant_addr(1))?;
        std::thread::sleep(Duration::from_secs(3));
        stop_capture(lab, "capture");

        // Keepalives: UDP 192.0.2.1:4500 -> 192.0.2.2:4500 with one byte.
        let keepalives = tshark_fields(
            &pcap,
            Some("ip.src == 192.0.2.1 && udp.srcport == 4500 && udp.length == 9"),
            &["udp.payload"],
        )?
        .lines()
        .filter(|l| l.trim() == "ff")
        .count();
        let raw = std::fs::read(&pcap)?;
        let leaked = count_marker(&raw);
        let frames = frames(&pcap)?;
        let ike_4500 = frames
            .iter()
            .filter(|f| f.is_ike() && f.sport == Some(ESP_PORT))
            .count();
        let other: Vec<&Frame> = frames
            .iter()
            .filter(|f| !f.is_arp() && !f.is_esp_in_udp() && !f.is_ike())
            .filter(|f| !(f.sport == Some(ESP_PORT) && f.dport == Some(ESP_PORT)))
            .collect();
        eprintln!(
            "  capture: {} frames, {ike_4500} IKE on 4500, {keepalives} keepalives, marker {leaked} times",
            frames.len()
        );
        ensure!(ike_4500 >= 2, "IKE never moved to port 4500");
        ensure!(
            keepalives >= 2,
            "only {keepalives} NAT keepalives from h1 in 3 s"
        );
        ensure!(
            other.is_empty() && leaked == 0,
            "cleartext through the NAT (marker {leaked} times):{}",
            describe(&other)
        );
        Ok(())
    });
}
