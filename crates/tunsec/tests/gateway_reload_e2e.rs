//! End-to-end tests of `tunsecd` in gateway mode, in network namespaces:
//! `tunsec reload` with IKE. Two hosts on an underlay bridge (192.0.2.0/24)
//! each run a kernel vxlan device (VNI 42, UDP 4789, 10.42.0.0/24 inside)
//! and a plain TCP service on port 16385, and `tunsecd` in gateway mode
//! with selectors `udp/4789` and `tcp/16385`; a third namespace on the
//! underlay forges traffic (helpers in `gateway/`). They prove that:
//!
//! - `gateway_ike_reload`: `tunsec reload` in gateway mode, under pings:
//!   a config that does not load names the field and changes nothing; a
//!   new PSK on one side makes a re-authentication fail (AUTHENTICATION_
//!   FAILED, the old IKE SA stays); on both, `tunsec reauth` makes a new
//!   IKE SA; no ping lost.
//! - `gateway_peers_at_run_time`: `tunsec reload` adds a peer (IKE SA,
//!   Child SA, steering rules, guard entries, pings) and removes it (the
//!   peer sees the DELETE; rules and guard entries go), while pings to
//!   the other peer lose nothing and its IKE SA stays the same.
//!
//! They need root, iproute2, nftables, ping, tshark (dumpcap) and Debian's
//! python3-scapy; they fail, never skip, when something is missing.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tunsec::control::{self, Request, Response};
use tunsec_lab::Lab;

mod common;
mod gateway;
use gateway::*;

/// Host `n`'s IKE SA, by its SPIs, when established.
fn ike_spis(lab: &Lab, n: u8) -> anyhow::Result<Option<(String, String)>> {
    let s = status(lab, n)?;
    Ok(s.peers.first().and_then(|p| p.ike.as_ref()).and_then(|i| {
        (i.state == "established")
            .then(|| i.spi_i.clone().zip(i.spi_r.clone()))
            .flatten()
    }))
}

fn reload(lab: &Lab, n: u8) -> anyhow::Result<Response> {
    Ok(control::call(&socket_path(lab, n), &Request::Reload)?)
}

/// `tunsec reload` in gateway mode, with pings running through all of
/// it: a configuration that does not load names the field and changes
/// nothing; a new PSK on h1 alone is taken up (a re-authentication then
/// fails, because h2 still has the old one, and the old IKE SA carries
/// on); with the new PSK on both, `tunsec reauth` makes a new IKE SA. No
/// ping is lost.
#[test]
fn gateway_ike_reload() {
    with_lab("gwr", |lab| {
        let Hosts { h1, .. } = setup_with(
            lab,
            Opts {
                ike: true,
                ..Opts::default()
            },
        )?;
        wait_child_sa(lab, 1)?;
        wait_child_sa(lab, 2)?;
        let before = ike_spis(lab, 1)?.context("h1 has no IKE SA")?;
        eprintln!("  IKE SA before: {before:?}");
        let pinger = pings(&h1, &vxlan_addr(2), 150)?;
        std::thread::sleep(Duration::from_millis(500));

        // A configuration that does not load.
        let config = lab.dir.path().join("h1.toml");
        let psk1 = lab.dir.path().join("h1.psk");
        let good = std::fs::read_to_string(&config)?;
        let missing = lab.dir.path().join("missing.psk");
        std::fs::write(
            &config,
            good.replace(&*psk1.to_string_lossy(), &missing.to_string_lossy()),
        )?;
        let answer = reload(lab, 1)?;
        std::fs::write(&config, &good)?;
        let Response::Error { message } = answer else {
            bail!("a reload with a missing PSK file was accepted: {answer:?}");
        };
        eprintln!("  h1 (bad reload): {message}");
        ensure!(
            message.contains("psk_file")
                && message.contains("missing.psk")
                && message.contains("nothing changed"),
            "{message}"
        );

        // A new PSK on h1 only: taken up, so h2 refuses the new IKE SA.
        tunsec::config::write_secret(&psk1, "the next gateway test key, long enough\n")?;
        let Response::Done { message } = reload(lab, 1)? else {
            bail!("h1's reload failed");
        };
        eprintln!("  h1: {message}");
        ensure!(message.contains("new credentials for h2"), "{message}");
        ensure!(
            ike_spis(lab, 1)? == Some(before.clone()),
            "the reload changed the IKE SA"
        );
        control::call(&socket_path(lab, 1), &Request::Reauth { peer: "h2".into() })?;
        lab.wait_for(
            "h2 to refuse the new IKE SA",
            Duration::from_secs(10),
            || {
                status(lab, 1).is_ok_and(|s| {
                    s.peers[0]
                        .ike
                        .as_ref()
                        .and_then(|i| i.last_error.as_deref())
                        .is_some_and(|e| e.contains("AUTHENTICATION_FAILED"))
                })
            },
        )?;
        ensure!(
            ike_spis(lab, 1)? == Some(before.clone()),
            "a re-authentication with a PSK that h2 does not have changed the IKE SA:\n{}\n{}",
            status(lab, 1)?.render(),
            status(lab, 2)?.render()
        );

        // The same PSK on h2: the re-authentication goes through.
        tunsec::config::write_secret(
            lab.dir.path().join("h2.psk"),
            "the next gateway test key, long enough\n",
        )?;
        let Response::Done { message } = reload(lab, 2)? else {
            bail!("h2's reload failed");
        };
        eprintln!("  h2: {message}");
        ensure!(message.contains("new credentials for h1"), "{message}");
        control::call(&socket_path(lab, 1), &Request::Reauth { peer: "h2".into() })?;
        let mut after = None;
        lab.wait_for("a new IKE SA", Duration::from_secs(10), || {
            after = ike_spis(lab, 1).ok().flatten().filter(|s| *s != before);
            after.is_some()
        })?;
        eprintln!("  IKE SA after: {after:?}");
        wait_child_sa(lab, 1)?;
        wait_child_sa(lab, 2)?;
        let received = pings_received(pinger)?;
        eprintln!("  pings across the reloads and re-authentications: {received} of 150");
        ensure!(received == 150, "{} pings lost", 150 - received);
        ping_ok(&h1, &vxlan_addr(2))?;
        Ok(())
    });
}

/// Waits until host `n` has an established IKE SA and a Child SA pair
/// with its peer `peer`.
fn wait_peer_child_sa(lab: &Lab, n: u8, peer: &str) -> anyhow::Result<()> {
    lab.wait_for(
        &format!("h{n}'s Child SA with {peer}"),
        Duration::from_secs(20),
        || {
            status(lab, n).is_ok_and(|s| {
                s.peers.iter().any(|p| {
                    p.name == peer
                        && p.ike.as_ref().is_some_and(|i| i.state == "established")
                        && p.sas.len() == 2
                })
            })
        },
    )
}

/// The guard's rules in `ns` that name `addr`.
fn guard_rules_for(ns: &str, addr: &str) -> anyhow::Result<usize> {
    let out = exec_output(ns, "nft", &["list", "table", "inet", NFT_TABLE])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(addr))
        .count())
}

/// Peers that come and go at run time, by `tunsec reload` of a changed
/// file: h1 starts with h2 as its only peer; h3 is added (its IKE SA,
/// Child SA, four steering rules and guard entries come, its pings
/// answer) and removed again (h3 sees the DELETE, the rules and guard
/// entries go), while pings between h1 and h2 run through all of it and
/// lose nothing, h2's IKE SA stays the same one, and the underlay
/// carries no protected cleartext.
#[test]
fn gateway_peers_at_run_time() {
    with_lab("gwp", |lab| {
        let ike = Opts {
            ike: true,
            ..Opts::default()
        };
        let ul = add_underlay(lab)?;
        let h1 = add_host(lab, &ul, "h1", 1)?;
        let h2 = add_host(lab, &ul, "h2", 2)?;
        let h3 = add_host(lab, &ul, "h3", 3)?;
        write_config(lab, 1, &[2], ike)?;
        write_config(lab, 2, &[1], ike)?;
        write_config(lab, 3, &[1], ike)?;
        let pcap = start_capture(lab, &ul, "capture")?;
        for (n, ns) in [(1, &h1), (2, &h2), (3, &h3)] {
            start_daemon(lab, &format!("h{n}"), ns, n)?;
        }
        let advice = gw_status(&status(lab, 1)?)?.tunnel_mtu_advice;
        add_vxlan(lab, &h2, 2, 1, advice)?;
        add_vxlan(lab, &h3, 3, 1, advice)?;
        // h1's vxlan0 replicates to its peers (the kernel's FDB): h2 now,
        // h3 while it is a peer.
        let fdb = |op: &str, peer: u8| {
            lab.exec(
                &h1,
                "bridge",
                &[
                    "fdb",
                    op,
                    "00:00:00:00:00:00",
                    "dev",
                    "vxlan0",
                    "dst",
                    &host_addr(peer),
                ],
            )
        };
        lab.exec(
            &h1,
            "ip",
            &[
                "link",
                "add",
                "vxlan0",
                "type",
                "vxlan",
                "id",
                "42",
                "local",
                "192.0.2.1",
                "dstport",
                "4789",
            ],
        )?;
        fdb("append", 2)?;
        let cidr = format!("{}/24", vxlan_addr(1));
        lab.exec(
            &h1,
            "ip",
            &["link", "set", "vxlan0", "mtu", &advice.to_string()],
        )?;
        lab.exec(&h1, "ip", &["addr", "add", &cidr, "dev", "vxlan0"])?;
        lab.exec(&h1, "ip", &["link", "set", "vxlan0", "up"])?;
        wait_peer_child_sa(lab, 1, "h2")?;
        ensure!(rule_count(&h1)? == 5, "rules on h1 with one peer");
        ensure!(
            guard_rules_for(&h1, &host_addr(3))? == 0,
            "h3 in h1's guard"
        );
        let h2_ike = ike_spis(lab, 1)?.context("h1 has no IKE SA with h2")?;
        // Not a peer yet: h1's guard drops what h3 sends, h3's is kept
        // from leaving in the clear by h3's own.
        ensure!(
            ping(&h3, &vxlan_addr(1), 2)? == 0,
            "h3 reached h1 before it was a peer"
        );

        let pinger = pings(&h1, &vxlan_addr(2), 200)?;
        std::thread::sleep(Duration::from_millis(300));

        // h3 added.
        write_config(lab, 1, &[2, 3], ike)?;
        let Response::Done { message } = reload(lab, 1)? else {
            bail!("h1's reload with h3 added failed");
        };
        eprintln!("  h1: {message}");
        ensure!(message.contains("added: h3"), "{message}");
        wait_peer_child_sa(lab, 1, "h3")?;
        wait_peer_child_sa(lab, 3, "h1")?;
        fdb("append", 3)?;
        let n = rule_count(&h1)?;
        ensure!(n == 9, "{n} rules on h1 with two peers, want 1 + 2 x 4");
        ensure!(
            guard_rules_for(&h1, &host_addr(3))? > 0,
            "h3 not in h1's guard"
        );
        ping_ok(&h1, &vxlan_addr(3))?;
        ping_ok(&h3, &vxlan_addr(1))?;
        let g = status(lab, 1)?;
        let policies: Vec<&str> = gw_status(&g)?
            .policies
            .iter()
            .map(|p| p.peer.as_str())
            .collect();
        ensure!(policies == ["h2", "h3"], "h1's policies: {policies:?}");

        // h3 removed: first from the vxlan device, then from tunsecd (as
        // OVS removes a tunnel port and its IPsec together).
        fdb("del", 3)?;
        write_config(lab, 1, &[2], ike)?;
        let Response::Done { message } = reload(lab, 1)? else {
            bail!("h1's reload with h3 removed failed");
        };
        eprintln!("  h1: {message}");
        ensure!(message.contains("removed: h3"), "{message}");
        lab.wait_for("h3 to see h1's DELETE", Duration::from_secs(5), || {
            status(lab, 3).is_ok_and(|s| {
                s.peers.iter().all(|p| {
                    p.sas.is_empty() && p.ike.as_ref().is_none_or(|i| i.state != "established")
                })
            })
        })?;
        let n = rule_count(&h1)?;
        ensure!(n == 5, "{n} rules on h1 after h3 went, want 5");
        ensure!(
            guard_rules_for(&h1, &host_addr(3))? == 0,
            "h3 still in h1's guard"
        );
        let s1 = status(lab, 1)?;
        ensure!(
            s1.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>() == ["h2"],
            "h1's peers after the removal:\n{}",
            s1.render()
        );

        let received = pings_received(pinger)?;
        eprintln!("  pings h1 -> h2 across the add and the removal: {received} of 200");
        ensure!(received == 200, "{} pings to h2 lost", 200 - received);
        ensure!(
            ike_spis(lab, 1)? == Some(h2_ike),
            "h2's IKE SA changed while h3 came and went"
        );
        stop_capture(lab, "capture");
        let frames = capture_summary(&pcap)?;
        let clear: Vec<_> = frames
            .iter()
            .filter(|f| (f.1 == Some(4789) || f.2 == Some(4789)) && !f.0.contains("esp"))
            .collect();
        // h3 has h1 as a peer all along, so its own vxlan0 never sends in
        // the clear either (before h1 knew it, its traffic met no SA).
        ensure!(
            clear.is_empty(),
            "{} VXLAN frames in the clear: {:?}",
            clear.len(),
            &clear[..clear.len().min(5)]
        );
        Ok(())
    });
}
