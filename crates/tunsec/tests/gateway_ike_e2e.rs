//! End-to-end tests of `tunsecd` in gateway mode, in network namespaces:
//! keys from IKEv2. Two hosts on an underlay bridge (192.0.2.0/24) each run
//! a kernel vxlan device (VNI 42, UDP 4789, 10.42.0.0/24 inside) and a
//! plain TCP service on port 16385, and `tunsecd` in gateway mode with
//! selectors `udp/4789` and `tcp/16385`; a third namespace on the underlay
//! forges traffic (helpers in `gateway/`). They prove that:
//!
//! - `gateway_ike`: the same with keys from IKEv2 (PSK): both hosts
//!   establish an IKE SA and a Child SA whose traffic selectors are the
//!   gateway selectors (`[udp/4789]`, `[tcp/16385]`), in transport mode;
//!   ping, 8 MiB over VXLAN and 1 MiB on TCP 16385 intact; the capture
//!   shows IKE and ESP, nothing protected in the clear; a Child SA rekey
//!   by request (`tunsec rekey`) keeps the tunnel working.
//! - `gateway_ike_keys_export`: `tunsec keys export --wireshark` in
//!   gateway mode: tshark decrypts the capture's ESP with h1's table down
//!   to VNI 42 and the pings, and without it reads none.
//! - `gateway_ike_wrong_psk`: with different PSKs no SA comes up; the
//!   vxlan pings are dropped in the TUN device (`no_sa`), and the capture
//!   holds IKE attempts but no cleartext VXLAN.
//! - `gateway_child_sa_stops_at_its_hard_lifetime`: the housekeeping
//!   tick runs in gateway mode: with IKE cut, the ESP SAs expire at
//!   `child_lifetime` and the vxlan pings fail, nothing in the clear.
//!
//! They need root, iproute2, nftables, ping, tshark (dumpcap) and Debian's
//! python3-scapy; they fail, never skip, when something is missing.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tunsec::control::{self, Request, Response};
use tunsec_lab::Lab;

mod common;
mod gateway;
use gateway::*;

#[test]
fn gateway_ike_wrong_psk() {
    with_lab("gw8", |lab| {
        // Different PSKs: no SA ever comes up, and the steered traffic is
        // dropped in the TUN device, never sent in the clear.
        let hosts = prepare(
            lab,
            Opts {
                ike: true,
                ..Opts::default()
            },
        )?;
        tunsec::config::write_secret(lab.dir.path().join("h2.psk"), "another key entirely\n")?;
        let pcap = start_capture(lab, &hosts.ul, "capture")?;
        start_hosts(lab, &hosts)?;
        let Hosts { h1, .. } = hosts;
        let got = ping(&h1, &vxlan_addr(2), 3)?;
        ensure!(got == 0, "{got} pings answered without an SA");
        stop_capture(lab, "capture");
        let frames = capture_summary(&pcap)?;
        let ike_frames = frames.iter().filter(|f| f.0.contains("isakmp")).count();
        let clear = frames
            .iter()
            .filter(|f| f.1 == Some(4789) || f.2 == Some(4789))
            .count();
        ensure!(ike_frames >= 2, "{ike_frames} IKE frames: nobody tried");
        ensure!(
            clear == 0,
            "{clear} UDP 4789 frames in the clear without an SA"
        );
        let s1 = status(lab, 1)?;
        ensure!(
            s1.peers[0].sas.is_empty(),
            "h1 has SAs with a wrong PSK:\n{}",
            s1.render()
        );
        let no_sa = s1.drops.get("no_sa").copied().unwrap_or(0);
        ensure!(no_sa >= 3, "no_sa {no_sa}: the pings were not counted");
        Ok(())
    });
}

#[test]
fn gateway_ike() {
    with_lab("gw4", |lab| {
        let Hosts { ul, h1, h2, .. } = setup_with(
            lab,
            Opts {
                ike: true,
                metrics: true,
                ..Opts::default()
            },
        )?;
        let pcap = start_capture(lab, &ul, "capture")?;
        wait_child_sa(lab, 1)?;
        wait_child_sa(lab, 2)?;
        ping_ok(&h1, &vxlan_addr(2))?;
        ping_ok(&h2, &vxlan_addr(1))?;
        transfer(lab, "vxlan", &h1, &h2, &vxlan_addr(2), 5001, 8 << 20)?;
        transfer(
            lab,
            "service",
            &h2,
            &h1,
            &host_addr(1),
            SERVICE_PORT,
            1 << 20,
        )?;
        // A Child SA rekey (CREATE_CHILD_SA) while the capture runs; the
        // tunnel goes on working with the new SAs.
        match control::call(
            &socket_path(lab, 1),
            &Request::Rekey {
                peer: "h2".into(),
                ike: false,
                network: None,
            },
        )? {
            Response::Done { .. } => {}
            other => bail!("rekey: {other:?}"),
        }
        lab.wait_for("the rekeyed Child SA", Duration::from_secs(10), || {
            status(lab, 1).is_ok_and(|s| s.peers[0].ike.as_ref().is_some_and(|i| i.child_sas >= 2))
        })?;
        std::thread::sleep(Duration::from_millis(500));
        ping_ok(&h1, &vxlan_addr(2))?;
        stop_capture(lab, "capture");
        let s1 = status(lab, 1)?;
        let out = s1.peers[0]
            .sas
            .iter()
            .find(|sa| sa.direction == "out")
            .context("no outbound SA")?;
        let ts = out.selectors.as_deref().unwrap_or("");
        ensure!(
            ts.contains("[udp/4789]") && ts.contains(&format!("[tcp/{SERVICE_PORT}]")),
            "the Child SA's selectors are {ts:?}"
        );
        ensure!(
            out.mode.as_deref() == Some("transport"),
            "mode {:?}",
            out.mode
        );
        ensure!(out.packets >= 3, "{} packets on the new SA", out.packets);
        let frames = capture_summary(&pcap)?;
        let ike = frames.iter().filter(|f| f.0.contains("isakmp")).count();
        let esp = bytes_of(&frames, |f| f.0.contains("esp"));
        let clear = frames
            .iter()
            .filter(|f| {
                f.1 == Some(4789)
                    || f.2 == Some(4789)
                    || f.3 == Some(SERVICE_PORT)
                    || f.4 == Some(SERVICE_PORT)
            })
            .count();
        eprintln!("  capture: {ike} IKE, {esp} bytes of ESP, {clear} protected ports in the clear");
        ensure!(ike >= 2, "{ike} IKE frames (the rekey is 2 or more)");
        ensure!(
            esp > 8 << 20 && clear == 0,
            "{esp} bytes of ESP, {clear} in the clear"
        );
        check_metrics(lab, 1, MetricsFrom::Cli)?;
        let addr = format!("{}:9464", host_addr(1));
        check_metrics(
            lab,
            1,
            MetricsFrom::Http {
                ns: &h1,
                addr: &addr,
            },
        )?;
        Ok(())
    });
}

/// `tunsec keys export --wireshark` in gateway mode (the IKE side is
/// `ike_e2e.rs`'s `ike_keys_export_for_wireshark`): tshark, given h1's
/// `esp_sa`, decrypts every ESP frame of the capture (good ICV) down to
/// the kernel vxlan device's VNI 42 and the pings between the vxlan
/// addresses; without it, none.
#[test]
fn gateway_ike_keys_export() {
    with_lab("key2", |lab| {
        let Hosts { ul, h1, .. } = setup_with(
            lab,
            Opts {
                ike: true,
                ..Opts::default()
            },
        )?;
        wait_child_sa(lab, 1)?;
        wait_child_sa(lab, 2)?;
        let pcap = start_capture(lab, &ul, "capture")?;
        ping_ok(&h1, &vxlan_addr(2))?;
        let dir = lab.dir.path().join("keys-h1");
        let out = Command::new(TUNSEC)
            .args(["keys", "export", "--wireshark"])
            .arg(&dir)
            .arg("--socket")
            .arg(socket_path(lab, 1))
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success() && stderr.contains("WARNING: SECRET KEYS WRITTEN"),
            "tunsec keys export: {}: {stderr}",
            out.status
        );
        stop_capture(lab, "capture");
        let empty = lab.dir.path().join("no-keys");
        std::fs::create_dir_all(&empty)?;
        let (a, b) = (vxlan_addr(1), vxlan_addr(2));
        for (config, keyed) in [(&empty, false), (&dir, true)] {
            let rows = tshark_decrypt(lab, &pcap, config)?;
            let esp: Vec<&Dissected> = rows
                .iter()
                .filter(|r| !r.get("esp.spi").is_empty())
                .collect();
            let decoded = esp
                .iter()
                .filter(|r| r.has("vxlan.vni", "42") && r.has("esp.icv_good", "1"))
                .count();
            let echo = |src: &str, t: &str, dst: &str| {
                esp.iter()
                    .filter(|r| {
                        r.get("ip.src").split(',').nth(1) == Some(src)
                            && r.get("ip.dst").split(',').nth(1) == Some(dst)
                            && r.has("icmp.type", t)
                    })
                    .count()
            };
            let (requests, replies) = (echo(&a, "8", &b), echo(&b, "0", &a));
            eprintln!(
                "  keys {keyed}: {} ESP frames, {decoded} decoded, {requests} echo requests, {replies} replies",
                esp.len()
            );
            ensure!(esp.len() >= 6, "{} ESP frames for 3 pings", esp.len());
            if keyed {
                ensure!(
                    decoded == esp.len() && requests >= 3 && replies >= 3,
                    "with the keys: {decoded} of {} ESP frames decoded, {requests} requests, {replies} replies",
                    esp.len()
                );
            } else {
                ensure!(
                    decoded == 0 && requests == 0 && replies == 0,
                    "tshark read the ESP without the keys"
                );
            }
        }
        Ok(())
    });
}

/// `tunsec metrics` on host `n` against its status taken before and
/// after: the IKE SA established, one Child SA pair, and each SA's
/// packets, each gateway peer's packets, within the two snapshots.
fn check_metrics(lab: &Lab, n: u8, from: MetricsFrom<'_>) -> anyhow::Result<()> {
    let before = status(lab, n)?;
    let samples = metrics(lab, n, from)?;
    let after = status(lab, n)?;
    let value = |name: &str, labels: &[(&str, &str)]| -> anyhow::Result<f64> {
        samples
            .iter()
            .find(|(s, l, _)| {
                s == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
            .with_context(|| format!("no {name} {labels:?} in tunsec metrics"))
    };
    let peer = &before.peers[0].name;
    ensure!(value("tunsec_peer_ike_established", &[("peer", peer)])? == 1.0);
    ensure!(value("tunsec_peer_child_sas", &[("peer", peer)])? >= 1.0);
    for sa in &before.peers[0].sas {
        let Some(later) = after.peers[0].sas.iter().find(|s| s.spi == sa.spi) else {
            continue;
        };
        let labels = [
            ("peer", peer.as_str()),
            ("direction", &sa.direction),
            ("spi", &sa.spi),
        ];
        let got = value("tunsec_sa_packets_total", &labels)?;
        ensure!(
            (sa.packets as f64..=later.packets as f64).contains(&got),
            "SA {}: {got} packets in the metrics, {} then {} in the status",
            sa.spi,
            sa.packets,
            later.packets
        );
    }
    let (gw_before, gw_after) = (gw_status(&before)?, gw_status(&after)?);
    let got = value("tunsec_gateway_tx_packets_total", &[("peer", peer)])?;
    let range = gw_before.policies[0].tx_packets as f64..=gw_after.policies[0].tx_packets as f64;
    ensure!(
        range.contains(&got),
        "gateway tx packets {got}, status {range:?}"
    );
    let how = match from {
        MetricsFrom::Cli => "tunsec metrics".to_owned(),
        MetricsFrom::Http { addr, .. } => format!("http://{addr}/metrics"),
    };
    eprintln!(
        "  {how}: {} samples, parsed by prometheus_client",
        samples.len()
    );
    Ok(())
}

/// Gateway mode runs the housekeeping tick too: with IKE cut after the
/// first Child SA, the ESP SAs stop at `child_lifetime` (status shows
/// them expired without a packet having to hit them), and the kernel's
/// vxlan pings fail instead of leaving in the clear.
#[test]
fn gateway_child_sa_stops_at_its_hard_lifetime() {
    with_lab("gwhl", |lab| {
        let Hosts { ul, h1, h2, .. } = setup_with(
            lab,
            Opts {
                ike: true,
                ike_extra: "child_lifetime = 8\n",
                ..Opts::default()
            },
        )?;
        wait_child_sa(lab, 1)?;
        ping_ok(&h1, &vxlan_addr(2))?;
        let pcap = start_capture(lab, &ul, "capture")?;
        cut_ike(lab, &[&h1, &h2])?;
        let expired = |n: u8| {
            status(lab, n).is_ok_and(|s| {
                s.peers.first().is_some_and(|p| {
                    !p.sas.is_empty() && p.sas.iter().all(|sa| sa.state == "expired")
                })
            })
        };
        lab.wait_for("the Child SAs to expire", Duration::from_secs(20), || {
            expired(1) && expired(2)
        })?;
        let got = ping(&h1, &vxlan_addr(2), 3)?;
        ensure!(got == 0, "{got} vxlan pings answered over expired SAs");
        stop_capture(lab, "capture");
        let clear = capture_summary(&pcap)?
            .iter()
            .filter(|f| f.1 == Some(4789) || f.2 == Some(4789))
            .count();
        ensure!(clear == 0, "{clear} cleartext VXLAN frames");
        Ok(())
    });
}
